"""Semantic dedupe: drop a sample whose embedding is within a cosine threshold of an earlier kept sample.

Embeddings come from :mod:`factory.embed` (a static model distilled from MiniLM on CPU, MiniLM itself on a GPU).
Kept embeddings go into a faiss inner-product index; each batch is searched against it (nearest neighbour) and
against its own earlier kept rows, so the result equals one-by-one processing in input order. The index keeps
``dims * 4`` bytes per kept sample (1 KB at 256 dims): 10,000,000 kept samples would need ~10 GB, which is why the
out-of-core path for huge corpora is the near-duplicate stage (docs/dedupe.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
from pydantic import Field, PrivateAttr

from factory.embed import EncoderKind, get_encoder
from factory.stages.base import BatchedStage
from factory.stages.near import TextField, sample_text
from schemas.sample import Sample


class SemanticDedupe(BatchedStage):
    """Keeps the first of each group of samples whose compared text embeds within ``threshold`` cosine."""

    name: ClassVar[str] = "dedupe_semantic"

    threshold: float = Field(default=0.95, gt=0, le=1)
    text: TextField = "user"
    backend: EncoderKind = "auto"
    model_path: str | None = None
    record_similarity: bool = False
    best_similarity: list[float] = Field(default_factory=list, exclude=True,
                                         description="Nearest kept neighbour's cosine for each seen sample.")

    _encoder: Any = PrivateAttr(default=None)
    _index: Any = PrivateAttr(default=None)
    _ids: list[str] = PrivateAttr(default_factory=list)

    def load(self) -> None:
        if self._encoder is None:
            self._encoder = get_encoder(self.backend, self.model_path)

    def unload(self) -> None:
        self._index = None

    def process_batch(self, batch: list[Sample]) -> Iterator[Sample]:
        import faiss

        vectors = self._encoder.encode([sample_text(s, self.text) for s in batch])
        if self._index is None:
            self._index = faiss.IndexFlatIP(vectors.shape[1])
        prior_sim = np.full(len(batch), -1.0, dtype=np.float32)
        prior_row = np.full(len(batch), -1, dtype=np.int64)
        if self._index.ntotal:
            sims, rows = self._index.search(vectors, 1)
            prior_sim, prior_row = sims[:, 0], rows[:, 0]
        inner = vectors @ vectors.T
        kept: list[int] = []
        for i, sample in enumerate(batch):
            best_sim, best_id = float(prior_sim[i]), (self._ids[prior_row[i]] if prior_row[i] >= 0 else None)
            if kept:
                local = inner[i, kept]
                j = int(np.argmax(local))
                if local[j] > best_sim:
                    best_sim, best_id = float(local[j]), batch[kept[j]].id
            if self.record_similarity:
                self.best_similarity.append(max(best_sim, 0.0))
            if best_id is not None and best_sim >= self.threshold:
                self.drop(sample, "semantic_duplicate", related_id=best_id,
                          detail=f"cosine {best_sim:.3f} >= {self.threshold:g} on {self.text} text")
                continue
            kept.append(i)
            yield self.keep(sample)
        if kept:
            self._index.add(np.ascontiguousarray(vectors[kept]))
            self._ids.extend(batch[i].id for i in kept)
