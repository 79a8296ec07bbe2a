"""Why experts reject: reasons (tags and comments) summarised per tag, fact, persona and generator.

The team fixes the knowledge base when rejections pile up on one fact, the persona text when they pile up on one
persona, and the generator when they pile up on one generator. ``forma review status`` builds the summary live from
Argilla; :func:`dataset_reasons` builds it from a dataset folder's journal, for the dataset report.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from review.journal import latest_responses, read_journal


class ReasonRow(BaseModel):
    """One submitted reject (or any submitted response that gave tags or a comment)."""

    sample_id: str
    user: str
    verdict: str | None
    tags: list[str] = Field(default_factory=list)
    comment: str = ""
    fact_ids: list[str] = Field(default_factory=list)
    persona: str = ""
    generator: str = ""


class ReasonSummary(BaseModel):
    rejects: int = 0
    rejects_without_reason: int = 0
    by_tag: dict[str, int] = Field(default_factory=dict)
    #: group name -> key -> {"rejects": n, "<tag>": n, ...}
    by_fact: dict[str, dict[str, int]] = Field(default_factory=dict)
    by_persona: dict[str, dict[str, int]] = Field(default_factory=dict)
    by_generator: dict[str, dict[str, int]] = Field(default_factory=dict)
    comments: list[dict[str, str]] = Field(default_factory=list)  # sample_id, user, verdict, comment


def row(sample_id: str, user: str, values: dict[str, Any], meta: dict[str, Any]) -> ReasonRow | None:
    """A row for a response that carries a reason or rejects; None for a plain approval."""
    tags = sorted(str(t) for t in (values.get("reject_reasons") or []))
    comment = str(values.get("comment") or "").strip()
    verdict = values.get("verdict")
    if not tags and not comment and verdict != "reject":
        return None
    return ReasonRow(sample_id=sample_id, user=user, verdict=verdict, tags=tags, comment=comment,
                     fact_ids=list(meta.get("fact_ids") or []), persona=str(meta.get("persona") or ""),
                     generator=str(meta.get("generator") or ""))


def summarise(rows: Iterable[ReasonRow]) -> ReasonSummary:
    out = ReasonSummary()
    tags: Counter[str] = Counter()
    groups: dict[str, dict[str, Counter[str]]] = {"fact": {}, "persona": {}, "generator": {}}
    for r in rows:
        if r.comment:
            out.comments.append({"sample_id": r.sample_id, "user": r.user, "verdict": str(r.verdict),
                                 "comment": r.comment})
        if r.verdict != "reject":
            continue
        out.rejects += 1
        out.rejects_without_reason += not r.tags and not r.comment
        tags.update(r.tags or ["(no tag)"])
        keys = {"fact": r.fact_ids or ["(no fact)"], "persona": [r.persona], "generator": [r.generator]}
        for group, names in keys.items():
            for name in names:
                counter = groups[group].setdefault(name, Counter())
                counter["rejects"] += 1
                counter.update(r.tags)
    out.by_tag = dict(tags.most_common())
    out.by_fact, out.by_persona, out.by_generator = (
        {k: dict(v) for k, v in sorted(groups[g].items(), key=lambda kv: (-kv[1]["rejects"], kv[0]))}
        for g in ("fact", "persona", "generator"))
    return out


def dataset_reasons(dataset_dir: str | Path, journal: str | Path | None = None) -> ReasonSummary | None:
    """The reasons in a dataset folder's review journal (``review/journal.jsonl``), or None when nothing was pulled.

    For the dataset report: it reads the folder's samples for the fact, persona and generator of each record.
    """
    from review.dataset import load_version

    path = Path(journal) if journal else Path(dataset_dir) / "review" / "journal.jsonl"
    if not path.is_file():
        return None
    version = load_version(dataset_dir)
    meta = {s.id: {"fact_ids": s.lineage.fact_ids, "persona": s.persona, "generator": s.lineage.generator}
            for s in version.samples}
    rows = [r for sid, per in sorted(latest_responses(read_journal(path)).items()) for e in per.values()
            if e.status == "submitted" and (r := row(sid, e.user, e.values, meta.get(sid, {}))) is not None]
    return summarise(rows)
