"""Merge the journal's verdicts into a new dataset version: a pure function of the dataset and the journal.

Rules, per sample, over the latest submitted response of each annotator:
- fewer submissions than the dataset's minimum: ``unreviewed`` (kept unless ``approved_only``);
- the verdict is decided by strict majority; a tie is a ``disagreement`` (held out, written for adjudication);
- ``reject`` wins: the sample leaves the dataset (listed with its reasons);
- ``approve`` with a majority safety of ``unsafe`` contradicts itself: a ``disagreement``;
- corrections from approving annotators that differ from each other: a ``disagreement``; one agreed correction
  replaces the final answer (``corrected``; the new content gets a new content id, the old id is kept in
  ``lineage.review.original_id``); otherwise ``approved``;
- a majority category other than the sample's recategorises it (the original is kept in the lineage);
- non-unanimous answers are flagged in ``lineage.review.flags`` without blocking.
The output folder holds samples.jsonl, sharegpt/ and alpaca/ exports, review/decisions.jsonl,
review/disagreements.jsonl, review/agreement.json and manifest.json; no timestamps, so the same inputs give the
same bytes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from common.errors import FormaError
from review.agreement import QuestionAgreement, agreement
from review.dataset import load_version
from review.journal import JournalEntry, latest_responses, read_journal
from schemas.conversation import Conversation, Role, Turn
from schemas.knowledge import Category
from schemas.sample import Sample, content_id

Status = Literal["approved", "corrected", "rejected", "disagreement", "unreviewed"]


class Decision(BaseModel):
    sample_id: str
    status: Status
    new_id: str | None = None
    reasons: list[str] = Field(default_factory=list)
    flags: list[str] = Field(default_factory=list)
    annotators: list[str] = Field(default_factory=list)


class MergeResult(BaseModel):
    out_dir: Path
    dataset_hash: str
    parent_dataset_hash: str
    total: int
    kept: int
    counts: dict[str, int]
    recategorized: int
    agreement: dict[str, QuestionAgreement]
    decisions: dict[str, Decision]


def _majority(values: list[Any]) -> tuple[Any, bool]:
    """(the strict-majority value or None on a tie, whether everyone agreed)."""
    if not values:
        return None, True
    counts = Counter(values).most_common()
    if len(counts) > 1 and counts[0][1] == counts[1][1]:
        return None, False
    return counts[0][0], len(counts) == 1


def decide(sample: Sample, responses: list[JournalEntry], min_submitted: int) -> tuple[Decision, Sample | None]:
    """The decision for one sample and the sample to keep (or None), with ``lineage.review`` filled in."""
    submitted = sorted((r for r in responses if r.status == "submitted"), key=lambda r: r.user)
    users = [r.user for r in submitted]
    if len(submitted) < min_submitted:
        pending = {"status": "unreviewed", "submitted": len(submitted)}
        return Decision(sample_id=sample.id, status="unreviewed", annotators=users), _with_review(sample, pending)
    flags: list[str] = []
    verdict, unanimous = _majority([r.values.get("verdict") for r in submitted])
    if not unanimous:
        flags.append("verdict_split")
    safety, safety_unanimous = _majority([r.values.get("safety") for r in submitted])
    if not safety_unanimous:
        flags.append("safety_split")
    category, category_unanimous = _majority([r.values.get("correct_category") for r in submitted])
    if not category_unanimous:
        flags.append("category_split")
    ratings = [int(r.values["accuracy"]) for r in submitted if r.values.get("accuracy") is not None]
    if ratings and max(ratings) - min(ratings) >= 2:
        flags.append("accuracy_spread")
    base = Decision(sample_id=sample.id, status="disagreement", annotators=users, flags=flags)
    if verdict is None:
        return base.model_copy(update={"reasons": ["verdict tie"]}), None
    if verdict == "reject":
        return base.model_copy(update={"status": "rejected", "reasons": ["rejected by majority"]}), None
    if safety == "unsafe":
        return base.model_copy(update={"reasons": ["approved but judged unsafe"]}), None
    corrections = sorted({str(r.values["corrected_answer"]).strip() for r in submitted
                          if r.values.get("verdict") == "approve" and (r.values.get("corrected_answer") or "").strip()})
    if len(corrections) > 1:
        return base.model_copy(update={"reasons": ["different corrections"]}), None

    review: dict[str, Any] = {
        "status": "approved", "annotators": users, "flags": flags, "safety": safety,
        "accuracy_mean": round(sum(ratings) / len(ratings), 3) if ratings else None,
        "verdicts": dict(Counter(str(r.values.get("verdict")) for r in submitted)),
    }
    kept = sample
    if category is not None and category != sample.category.value and category in {c.value for c in Category}:
        review["original_category"] = sample.category.value
        kept = kept.model_copy(update={"category": Category(category)})
    status: Status = "approved"
    new_id = None
    if corrections:
        turns = list(sample.conversation.turns)
        review["original_answer"] = turns[-1].content
        turns[-1] = Turn(role=Role.ASSISTANT, content=corrections[0])
        conversation = Conversation(system=sample.conversation.system, turns=turns)
        new_id = content_id(conversation)
        review.update(status="corrected", original_id=sample.id)
        kept = kept.model_copy(update={"conversation": conversation, "id": new_id})
        status = "corrected"
    decision = base.model_copy(update={"status": status, "new_id": new_id})
    return decision, _with_review(kept, review)


def _with_review(sample: Sample, review: dict[str, Any]) -> Sample:
    lineage = sample.lineage.model_copy(update={"review": review})
    return sample.model_copy(update={"lineage": lineage})


def merge_reviews(dataset_dir: str | Path, journal: str | Path, out_dir: str | Path, *,
                  min_submitted: int | None = None, approved_only: bool = False) -> MergeResult:
    """Write a new dataset version from ``dataset_dir`` and the verdicts in ``journal``; see the module rules."""
    from common.hashing import sha256_file
    from common.jsonl import write_jsonl
    from factory.export import alpaca_record, dataset_hash, sharegpt_record

    version = load_version(dataset_dir)
    journal = Path(journal)
    entries = read_journal(journal)
    if not entries and not journal.is_file():
        raise FormaError("no journal: pull the responses first", path=journal, hint="forma review pull DATASET_DIR")
    latest = latest_responses(entries)
    unknown = sorted(set(latest) - {s.id for s in version.samples})
    if unknown:
        raise FormaError(f"{len(unknown)} reviewed record(s) are not in this dataset version, e.g. {unknown[0]}",
                         path=journal, hint="merge the journal with the dataset version it was pushed from")
    need = min_submitted or max((e.min_submitted or 1 for e in entries), default=1)

    decisions: dict[str, Decision] = {}
    kept: list[Sample] = []
    for sample in version.samples:
        decision, result = decide(sample, list(latest.get(sample.id, {}).values()), need)
        decisions[sample.id] = decision
        if result is not None and not (approved_only and decision.status == "unreviewed"):
            kept.append(result)
    ids = Counter(s.id for s in kept)
    clash = [i for i, n in ids.items() if n > 1]
    if clash:
        raise FormaError(f"a correction made sample {clash[0]} identical to another kept sample", path=journal)

    submitted = {sid: {u: e for u, e in per.items() if e.status == "submitted"} for sid, per in latest.items()}
    figures = agreement(submitted)
    out = Path(out_dir)
    if out.resolve() == version.path.resolve() or out.resolve() in version.path.resolve().parents:
        raise FormaError("the merged version must go to a new folder, not over its parent", path=out)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write_jsonl(tmp / "samples.jsonl", (s.model_dump(mode="json") for s in kept))
    for split in ("train", "test"):
        part = [s for s in kept if s.split == split]
        write_jsonl(tmp / "sharegpt" / f"{split}.jsonl", (sharegpt_record(s) for s in part))
        write_jsonl(tmp / "alpaca" / f"{split}.jsonl", (alpaca_record(s) for s in part))
    write_jsonl(tmp / "review" / "decisions.jsonl", (d.model_dump(mode="json") for d in decisions.values()))
    write_jsonl(tmp / "review" / "disagreements.jsonl",
                ({**d.model_dump(mode="json"), "responses": {e.user: e.values for e in latest[d.sample_id].values()
                                                            if e.status == "submitted"}}
                 for d in decisions.values() if d.status == "disagreement"))
    (tmp / "review" / "agreement.json").write_text(
        json.dumps({q: a.model_dump(mode="json") for q, a in figures.items()}, indent=2, sort_keys=True) + "\n")
    counts = dict(sorted(Counter(d.status for d in decisions.values()).items()))
    used = sorted(json.dumps(e.model_dump(mode="json", exclude={"fetched_at", "record_id"}), sort_keys=True)
                  for per in latest.values() for e in per.values())
    new_hash = dataset_hash(kept)
    files = {str(p.relative_to(tmp)): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
    manifest = {
        "recipe": version.manifest.get("recipe"), "parent_dataset_hash": version.dataset_hash,
        "parent_dir": str(version.path), "dataset_hash": new_hash, "total": len(kept),
        "splits": dict(sorted(Counter(s.split for s in kept).items())), "review": {
            "counts": counts, "min_submitted": need, "approved_only": approved_only,
            "responses": len(used), "responses_sha256": hashlib.sha256("\n".join(used).encode()).hexdigest()},
        "files": files,
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return MergeResult(out_dir=out, dataset_hash=new_hash, parent_dataset_hash=version.dataset_hash,
                       total=len(version.samples), kept=len(kept), counts=counts,
                       recategorized=sum(1 for s in kept if (s.lineage.review or {}).get("original_category")),
                       agreement=figures, decisions=decisions)
