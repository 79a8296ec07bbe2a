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
from review.settings import MAX_TURNS, turn_question
from schemas.conversation import Conversation, Role, Turn
from schemas.knowledge import Category
from schemas.sample import Sample, content_id

Status = Literal["approved", "corrected", "rejected", "disagreement", "unreviewed"]
#: What the merge did with one correction: nothing an expert typed is dropped without saying so.
Action = Literal["applied", "kept_sample_rejected", "held_for_adjudication", "not_applied_reviewer_rejected",
                 "not_applied_unreviewed", "not_applied_no_such_turn"]


class Correction(BaseModel):
    user: str
    turn: int  # assistant turn, from 1
    text: str
    verdict: str | None
    action: Action


class Feedback(BaseModel):
    """One annotator's reasons: the tags and comment of a reject (or of any response that gave some)."""

    user: str
    verdict: str | None
    tags: list[str] = Field(default_factory=list)
    comment: str = ""


class Decision(BaseModel):
    sample_id: str
    status: Status
    new_id: str | None = None
    reasons: list[str] = Field(default_factory=list)
    flags: list[str] = Field(default_factory=list)
    annotators: list[str] = Field(default_factory=list)
    corrections: list[Correction] = Field(default_factory=list)
    feedback: list[Feedback] = Field(default_factory=list)


class MergeResult(BaseModel):
    out_dir: Path
    dataset_hash: str
    parent_dataset_hash: str
    total: int
    kept: int
    counts: dict[str, int]
    recategorized: int
    corrections: dict[str, int]  # action -> corrections
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


def turn_corrections(values: dict[str, Any], originals: list[str]) -> dict[int, str]:
    """Assistant turn -> corrected text, for every turn whose text differs from the original (whitespace aside).

    A turn text equal to the original is the pre-filled text left alone: no correction. The legacy single
    ``corrected_answer`` question (datasets pushed before per-turn review) corrects the last turn.
    """
    out: dict[int, str] = {}
    for turn in range(1, MAX_TURNS + 1):
        text = str(values.get(turn_question("text", turn)) or "").strip()
        original = originals[turn - 1].strip() if turn <= len(originals) else ""
        if text and text != original:
            out[turn] = text
    legacy = str(values.get("corrected_answer") or "").strip()
    if legacy and originals and legacy != originals[-1].strip():
        out.setdefault(len(originals), legacy)
    return out


def overall_accuracy(values: dict[str, Any]) -> int | None:
    """The worst rated turn (accuracy covers every turn); the legacy single ``accuracy`` rating otherwise."""
    ratings = [int(v) for t in range(1, MAX_TURNS + 1) if (v := values.get(turn_question("accuracy", t))) is not None]
    if ratings:
        return min(ratings)
    return int(values["accuracy"]) if values.get("accuracy") is not None else None


def _feedback(submitted: list[JournalEntry]) -> list[Feedback]:
    out = []
    for r in submitted:
        tags = sorted(str(t) for t in (r.values.get("reject_reasons") or []))
        comment = str(r.values.get("comment") or "").strip()
        if tags or comment or r.values.get("verdict") == "reject":
            out.append(Feedback(user=r.user, verdict=r.values.get("verdict"), tags=tags, comment=comment))
    return out


def _flags(submitted: list[JournalEntry]) -> list[str]:
    flags = [name for name, question in (("verdict_split", "verdict"), ("safety_split", "safety"),
                                         ("category_split", "correct_category"))
             if not _majority([r.values.get(question) for r in submitted])[1]]
    ratings = [a for r in submitted if (a := overall_accuracy(r.values)) is not None]
    if ratings and max(ratings) - min(ratings) >= 2:
        flags.append("accuracy_spread")
    if any(f.verdict == "reject" and not f.tags and not f.comment for f in _feedback(submitted)):
        flags.append("reject_without_reason")
    return flags


def _outcomes(submitted: list[JournalEntry], originals: list[str], status: Status,
              applied: dict[int, str]) -> list[Correction]:
    """Every correction of every submitted response, with what the merge did with it."""
    out: list[Correction] = []
    for r in submitted:
        verdict = r.values.get("verdict")
        for turn, text in sorted(turn_corrections(r.values, originals).items()):
            action: Action
            if turn > len(originals):
                action = "not_applied_no_such_turn"
            elif status == "unreviewed":
                action = "not_applied_unreviewed"
            elif status == "rejected":
                action = "kept_sample_rejected"
            elif status == "disagreement":
                action = "held_for_adjudication"
            elif applied.get(turn) == text:
                action = "applied"
            else:
                action = "not_applied_reviewer_rejected"
            out.append(Correction(user=r.user, turn=turn, text=text, verdict=verdict, action=action))
    return out


def _agreed_corrections(submitted: list[JournalEntry], originals: list[str]) -> tuple[dict[int, str], list[int]]:
    """Per turn, the one correction the approving annotators made (and the turns where they made different ones)."""
    by_turn: dict[int, set[str]] = {}
    for r in submitted:
        if r.values.get("verdict") == "approve":
            for turn, text in turn_corrections(r.values, originals).items():
                if turn <= len(originals):
                    by_turn.setdefault(turn, set()).add(text)
    conflicts = sorted(t for t, texts in by_turn.items() if len(texts) > 1)
    return {t: next(iter(texts)) for t, texts in by_turn.items() if len(texts) == 1}, conflicts


def decide(sample: Sample, responses: list[JournalEntry], min_submitted: int) -> tuple[Decision, Sample | None]:
    """The decision for one sample and the sample to keep (or None), with ``lineage.review`` filled in."""
    submitted = sorted((r for r in responses if r.status == "submitted"), key=lambda r: r.user)
    users = [r.user for r in submitted]
    originals = [t.content for t in sample.conversation.turns if t.role == Role.ASSISTANT]
    feedback = _feedback(submitted)
    if len(submitted) < min_submitted:
        pending = {"status": "unreviewed", "submitted": len(submitted)}
        decision = Decision(sample_id=sample.id, status="unreviewed", annotators=users, feedback=feedback,
                            corrections=_outcomes(submitted, originals, "unreviewed", {}))
        return decision, _with_review(sample, pending)
    flags = _flags(submitted)
    verdict = _majority([r.values.get("verdict") for r in submitted])[0]
    safety = _majority([r.values.get("safety") for r in submitted])[0]
    category = _majority([r.values.get("correct_category") for r in submitted])[0]
    applied, conflicts = _agreed_corrections(submitted, originals)
    base = Decision(sample_id=sample.id, status="disagreement", annotators=users, flags=flags, feedback=feedback)
    held: tuple[Status, str] | None = None
    if verdict is None:
        held = ("disagreement", "verdict tie")
    elif verdict == "reject":
        held = ("rejected", "rejected by majority")
    elif safety == "unsafe":
        held = ("disagreement", "approved but judged unsafe")
    elif conflicts:
        held = ("disagreement", "different corrections on turn " + ", ".join(map(str, conflicts)))
    if held is not None:
        return base.model_copy(update={"status": held[0], "reasons": [held[1]],
                                       "corrections": _outcomes(submitted, originals, held[0], {})}), None

    ratings = [a for r in submitted if (a := overall_accuracy(r.values)) is not None]
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
    if applied:
        kept, new_id = _apply(kept, applied, review)
        status = "corrected"
    decision = base.model_copy(update={"status": status, "new_id": new_id,
                                       "corrections": _outcomes(submitted, originals, status, applied)})
    return decision, _with_review(kept, review)


def _apply(sample: Sample, applied: dict[int, str], review: dict[str, Any]) -> tuple[Sample, str]:
    """Replace the corrected assistant turns; a new content id, the old id and texts kept in ``review``."""
    turns = list(sample.conversation.turns)
    positions = [i for i, t in enumerate(turns) if t.role == Role.ASSISTANT]
    review["original_turns"] = {str(k): turns[positions[k - 1]].content for k in sorted(applied)}
    if len(positions) in applied:
        review["original_answer"] = turns[positions[-1]].content
    for k, text in applied.items():
        turns[positions[k - 1]] = Turn(role=Role.ASSISTANT, content=text)
    conversation = Conversation(system=sample.conversation.system, turns=turns)
    new_id = content_id(conversation)
    review.update(status="corrected", original_id=sample.id, corrected_turns=sorted(applied))
    return sample.model_copy(update={"conversation": conversation, "id": new_id}), new_id


def _with_review(sample: Sample, review: dict[str, Any]) -> Sample:
    lineage = sample.lineage.model_copy(update={"review": review})
    return sample.model_copy(update={"lineage": lineage})


def merge_reviews(dataset_dir: str | Path, journal: str | Path, out_dir: str | Path, *,
                  min_submitted: int | None = None, approved_only: bool = False) -> MergeResult:
    """Write a new dataset version from ``dataset_dir`` and the verdicts in ``journal``; see the module rules."""
    from common.hashing import sha256_file
    from factory.export import dataset_hash

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

    originals = {s.id: [t.content for t in s.conversation.turns if t.role == Role.ASSISTANT]
                 for s in version.samples}
    figures = agreement({sid: {u: _for_agreement(e, originals[sid]) for u, e in per.items()
                               if e.status == "submitted"} for sid, per in latest.items()})
    out = Path(out_dir)
    if out.resolve() == version.path.resolve() or out.resolve() in version.path.resolve().parents:
        raise FormaError("the merged version must go to a new folder, not over its parent", path=out)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _write_outputs(tmp, kept, decisions, latest, figures)
    counts = dict(sorted(Counter(d.status for d in decisions.values()).items()))
    used = sorted(json.dumps(e.model_dump(mode="json", exclude={"fetched_at", "record_id"}), sort_keys=True)
                  for per in latest.values() for e in per.values())
    new_hash = dataset_hash(kept)
    files = {str(p.relative_to(tmp)): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
    manifest = {
        "recipe": version.manifest.get("recipe"), "parent_dataset_hash": version.dataset_hash,
        "parent_dir": str(version.path), "dataset_hash": new_hash, "total": len(kept),
        "splits": dict(sorted(Counter(s.split for s in kept).items())), "review": {
            "counts": counts, "corrections": _correction_counts(decisions), "min_submitted": need,
            "approved_only": approved_only,
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
                       corrections=_correction_counts(decisions), agreement=figures, decisions=decisions)


def _correction_counts(decisions: dict[str, Decision]) -> dict[str, int]:
    return dict(sorted(Counter(c.action for d in decisions.values() for c in d.corrections).items()))


def _for_agreement(entry: JournalEntry, originals: list[str]) -> JournalEntry:
    """The response as the agreement figures see it: the sample's accuracy (its worst turn) and whether it was
    corrected at all."""
    values = dict(entry.values)
    values["accuracy"] = overall_accuracy(entry.values)
    values["corrected_answer"] = "yes" if turn_corrections(entry.values, originals) else ""
    return entry.model_copy(update={"values": values})


def _write_outputs(tmp: Path, kept: list[Sample], decisions: dict[str, Decision],
                   latest: dict[str, dict[str, JournalEntry]], figures: dict[str, QuestionAgreement]) -> None:
    """samples, exports, and the review trail: decisions, disagreements, every correction and reason, agreement."""
    from common.jsonl import write_jsonl
    from factory.export import alpaca_record, sharegpt_record

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
    write_jsonl(tmp / "review" / "corrections.jsonl",
                ({"sample_id": d.sample_id, "status": d.status, **c.model_dump(mode="json")}
                 for d in decisions.values() for c in d.corrections))
    write_jsonl(tmp / "review" / "reasons.jsonl",
                ({"sample_id": d.sample_id, "status": d.status, **f.model_dump(mode="json")}
                 for d in decisions.values() for f in d.feedback))
    (tmp / "review" / "agreement.json").write_text(
        json.dumps({q: a.model_dump(mode="json") for q, a in figures.items()}, indent=2, sort_keys=True) + "\n")
