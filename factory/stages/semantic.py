"""Semantic dedupe: drop a sample whose embedding is within a cosine threshold of an earlier kept sample.

Embeddings come from :mod:`factory.embed` (a static model distilled from MiniLM on CPU, MiniLM itself on a GPU).
Kept embeddings go into a faiss inner-product index; each batch is searched against it (nearest neighbour) and
against its own earlier kept rows, so the result equals one-by-one processing in input order. The index keeps
``dims * 4`` bytes per kept sample (1 KB at 256 dims): 10,000,000 kept samples would need ~10 GB, which is why the
out-of-core path for huge corpora is the near-duplicate stage (docs/dedupe.md).

``backend: cascade`` (issue #17, docs/dedupe.md "CPU paraphrase recall"): the static encoder proposes candidates,
the ``candidate_k`` nearest earlier kept samples at static cosine >= ``candidate_threshold`` (a loose threshold), and
MiniLM (int8 ONNX) is run only on samples that are in a candidate pair; a sample is dropped when its best MiniLM
cosine to a kept candidate is >= ``threshold``. int8 moves a cosine by up to ~0.02, so a best score within
``recheck_margin`` of the threshold is re-scored with fp32 MiniLM (ONNX, equal to sentence-transformers), which
decides: the result is plain MiniLM's decision wherever MiniLM's nearest kept sample is among the candidates. The
reject names that kept sample, its MiniLM cosine (and which precision gave it) and its static cosine.

``backend: onnx_recheck`` (issue #17, ``factory/stages/semantic_recheck.py``): no static stage; int8 MiniLM on every
record, exact search over the kept records' int8 vectors, fp32 MiniLM deciding within ``recheck_margin`` of the
threshold. For data where every record has a static candidate (this project's user texts), so ``cascade`` would run
MiniLM on everything anyway and pay its static search on top.

``backend: openvino_recheck``: the same with the first pass on OpenVINO (int8 weights, activations quantised per
token: ``factory/embed_openvino.py``), whose cosines sit ~3x closer to fp32 MiniLM's, so its margin is 0.006.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, ClassVar

import numpy as np
from pydantic import Field, PrivateAttr

from factory.embed import EncoderKind, get_encoder
from factory.embed_onnx import DIMS
from factory.stages.base import BatchedStage
from factory.stages.near import TextField, sample_text
from schemas.sample import Sample

CASCADE_MARGIN = 0.02
RECHECK_MARGIN = 0.015
OPENVINO_RECHECK_MARGIN = 0.006
RECHECKING = ("onnx_recheck", "openvino_recheck")


class SemanticDedupe(BatchedStage):
    """Keeps the first of each group of samples whose compared text embeds within ``threshold`` cosine."""

    name: ClassVar[str] = "dedupe_semantic"

    threshold: float = Field(default=0.95, gt=0, le=1)
    text: TextField = "user"
    backend: EncoderKind = "auto"
    model_path: str | None = None
    candidate_threshold: float = Field(default=0.4, gt=-1, le=1,
                                       description="cascade: static cosine at which a kept sample is a candidate.")
    candidate_k: int = Field(default=32, ge=1, le=1024,
                             description="cascade: at most this many nearest kept samples are candidates.")
    recheck_margin: float | None = Field(default=None, ge=0, le=1,
                                         description="cascade, *_recheck: an int8 MiniLM cosine this close to the "
                                                     "threshold is re-scored with fp32 MiniLM, which decides "
                                                     "(default: cascade 0.02, onnx_recheck "
                                                     f"{RECHECK_MARGIN:g}, openvino_recheck "
                                                     f"{OPENVINO_RECHECK_MARGIN:g}, chosen on the tuning split).")
    record_similarity: bool = False
    best_similarity: list[float] = Field(default_factory=list, exclude=True,
                                         description="Nearest kept neighbour's cosine for each seen sample (cascade: "
                                                     "MiniLM cosine to the best candidate, 0 without one).")
    minilm_encoded: int = Field(default=0, exclude=True,
                                description="cascade, *_recheck: samples MiniLM embedded so far.")
    rechecked: int = Field(default=0, exclude=True,
                           description="cascade, *_recheck: decisions re-scored with fp32 MiniLM.")

    _encoder: Any = PrivateAttr(default=None)
    _exact: Any = PrivateAttr(default=None)
    _index: Any = PrivateAttr(default=None)
    _ids: list[str] = PrivateAttr(default_factory=list)
    _texts: list[str] = PrivateAttr(default_factory=list)  # cascade: kept samples' text (for a late MiniLM pass)
    _exact_rows: Any = PrivateAttr(default=None)  # cascade: MiniLM vectors of kept samples, NaN until computed
    _fp32_cache: dict[str, np.ndarray] = PrivateAttr(default_factory=dict)

    _recheck: Any = PrivateAttr(default=None)  # onnx_recheck: a semantic_recheck.RecheckIndex

    @property
    def margin(self) -> float:
        """The re-check margin in force: ``recheck_margin`` or the backend's default."""
        if self.recheck_margin is not None:
            return self.recheck_margin
        return {"onnx_recheck": RECHECK_MARGIN, "openvino_recheck": OPENVINO_RECHECK_MARGIN}.get(self.backend,
                                                                                                   CASCADE_MARGIN)

    def load(self) -> None:
        if self.backend in RECHECKING:
            if self._recheck is None:
                from factory.embed import get_openvino_encoder, get_parallel_encoder
                from factory.stages.semantic_recheck import RecheckIndex

                fast = (get_openvino_encoder(self.model_path) if self.backend == "openvino_recheck"
                        else get_parallel_encoder(self.model_path))
                self._recheck = RecheckIndex(fast, get_parallel_encoder(self.model_path, "fp32"), self.threshold,
                                             self.margin)
            return
        if self._encoder is None:
            self._encoder = get_encoder(self.backend, self.model_path)
        if self.backend == "cascade" and self._exact is None:
            self._exact = get_encoder("onnx", self.model_path)

    def unload(self) -> None:
        self._index = None

    def _fp32(self, texts: list[str]) -> np.ndarray:
        """MiniLM fp32 vectors (ONNX, exact to sentence-transformers) for a near-threshold re-check, remembered."""
        from factory.embed import get_exact_encoder

        self.rechecked += 1
        missing = [t for t in dict.fromkeys(texts) if t not in self._fp32_cache]
        if missing:
            if len(self._fp32_cache) > 100_000:
                self._fp32_cache.clear()
            self._fp32_cache.update(zip(missing, get_exact_encoder(self.model_path).encode(missing), strict=True))
        return np.stack([self._fp32_cache[t] for t in texts])

    def run(self, samples: Iterable[Sample]) -> Iterator[Sample]:
        """The ``*_recheck`` backends encode one batch ahead: while batch k is searched, re-checked and decided on this
        thread, batch k+1's first-pass vectors are computed on the encoder's threads, so the cores do not wait for
        the (serial) search. Output order and decisions are those of one batch at a time."""
        if self.backend not in RECHECKING:
            yield from super().run(samples)
            return
        self.load()
        pending: tuple[list[Sample], Future[np.ndarray]] | None = None
        with ThreadPoolExecutor(1, thread_name_prefix="semantic-encode") as ahead:
            for batch in self.batches(samples):
                if pending is not None:
                    yield from self._recheck_batch(pending[0], pending[1].result())
                pending = (batch, ahead.submit(self._encode_ahead, batch))
            if pending is not None:
                yield from self._recheck_batch(pending[0], pending[1].result())

    def _encode_ahead(self, batch: list[Sample]) -> np.ndarray:
        return np.asarray(self._recheck.fast.encode([sample_text(s, self.text) for s in batch]))

    def process_batch(self, batch: list[Sample]) -> Iterator[Sample]:
        if self.backend == "cascade":
            yield from self._cascade_batch(batch)
            return
        if self.backend in RECHECKING:
            yield from self._recheck_batch(batch)
            return
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

    def _recheck_batch(self, batch: list[Sample], vectors: np.ndarray | None = None) -> Iterator[Sample]:
        """int8 MiniLM on every sample, fp32 near the threshold (``semantic_recheck.RecheckIndex``)."""
        index = self._recheck
        decisions = index.decide([s.id for s in batch], [sample_text(s, self.text) for s in batch], vectors)
        self.minilm_encoded, self.rechecked = index.encoded, index.rechecked
        for sample, decision in zip(batch, decisions, strict=True):
            if self.record_similarity:
                self.best_similarity.append(max(decision.cosine, 0.0))
            if decision.duplicate_of is None:
                yield self.keep(sample)
                continue
            int8 = "" if decision.how == "int8" else f"; int8 cosine {decision.int8:.3f} within {self.margin:g}"
            self.drop(sample, "semantic_duplicate", related_id=decision.duplicate_of,
                      detail=f"MiniLM cosine {decision.cosine:.3f} ({decision.how}) >= {self.threshold:g} on "
                             f"{self.text} text{int8}")

    def _cascade_batch(self, batch: list[Sample]) -> Iterator[Sample]:
        """Static candidates, MiniLM on the samples in candidate pairs only, decisions in input order."""
        import faiss

        texts = [sample_text(s, self.text) for s in batch]
        static = self._encoder.encode(texts)
        if self._index is None:
            self._index = faiss.IndexFlatIP(static.shape[1])
        loose = self.candidate_threshold
        prior, prior_static, inner, local = self._static_candidates(static)

        # MiniLM for: every sample with a candidate, every earlier sample of this batch that is one, and every kept
        # candidate not embedded yet (a group's first sample had no candidate when it was kept).
        need = {i for i in range(len(batch)) if len(prior[i]) or len(local[i])}
        need.update(int(j) for i in list(need) for j in local[i])
        old_rows = sorted({int(r) for i in need for r in prior[i]
                           if np.isnan(self._exact_rows[r, 0])}) if self._exact_rows is not None else []
        order = sorted(need)
        encoded = self._exact.encode([texts[i] for i in order] + [self._texts[r] for r in old_rows]) \
            if order or old_rows else np.zeros((0, 0), dtype=np.float32)
        self.minilm_encoded += len(order) + len(old_rows)
        exact_of = {i: encoded[k] for k, i in enumerate(order)}
        if old_rows:
            self._exact_rows[np.asarray(old_rows)] = encoded[len(order):]

        kept: list[int] = []
        kept_set: set[int] = set()
        for i, sample in enumerate(batch):
            # candidates: (id, text, static cosine, int8 MiniLM cosine)
            cands: list[tuple[str, str, float, float]] = []
            if i in exact_of:
                if len(prior[i]):
                    scores = self._exact_rows[prior[i]] @ exact_of[i]
                    cands += [(self._ids[r], self._texts[r], float(st), float(sc))
                              for r, st, sc in zip(prior[i].tolist(), prior_static[i], scores, strict=True)]
                mates = [int(j) for j in local[i] if int(j) in kept_set]
                if mates:
                    scores = np.stack([exact_of[j] for j in mates]) @ exact_of[i]
                    cands += [(batch[j].id, texts[j], float(inner[i, j]), float(sc))
                              for j, sc in zip(mates, scores, strict=True)]
            best_sim, best_id, best_static, how = -1.0, None, 0.0, "int8"
            if cands:
                best_id, _, best_static, best_sim = max(cands, key=lambda c: c[3])
                if abs(best_sim - self.threshold) < self.margin:  # too close for int8: MiniLM fp32 decides
                    close = [c for c in cands if c[3] >= self.threshold - self.margin]
                    vectors = self._fp32([texts[i], *(c[1] for c in close)])
                    scores = vectors[1:] @ vectors[0]
                    j = int(np.argmax(scores))
                    best_id, _, best_static, _ = close[j]
                    best_sim, how = float(scores[j]), "fp32"
            if self.record_similarity:
                self.best_similarity.append(max(best_sim, 0.0))
            if best_id is not None and best_sim >= self.threshold:
                self.drop(sample, "semantic_duplicate", related_id=best_id,
                          detail=f"MiniLM cosine {best_sim:.3f} ({how}) >= {self.threshold:g} on {self.text} text; "
                                 f"static candidate cosine {best_static:.3f} >= {loose:g}")
                continue
            kept.append(i)
            kept_set.add(i)
            yield self.keep(sample)
        if kept:
            self._remember_kept(batch, kept, static, texts, exact_of)

    def _static_candidates(self, static: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray,
                                                               list[np.ndarray]]:
        """Per sample of the batch: kept rows within ``candidate_threshold`` (and their static cosines), and earlier
        samples of this batch within it, each capped at the nearest ``candidate_k``."""
        n, loose = len(static), self.candidate_threshold
        prior: list[np.ndarray] = [np.zeros(0, dtype=np.int64)] * n
        prior_static: list[np.ndarray] = [np.zeros(0, dtype=np.float32)] * n
        if self._index is not None and self._index.ntotal:
            sims, rows = self._index.search(static, min(self.candidate_k, self._index.ntotal))
            for i in range(n):
                hit = sims[i] >= loose
                prior[i], prior_static[i] = rows[i][hit], sims[i][hit]
        inner = np.tril(static @ static.T, -1)  # earlier rows of this batch only
        local = [np.nonzero(inner[i] >= loose)[0] for i in range(n)]
        for i, rows_i in enumerate(local):  # the same cap as for kept samples: the nearest candidate_k
            if len(rows_i) > self.candidate_k:
                local[i] = rows_i[np.argsort(-inner[i, rows_i], kind="stable")[: self.candidate_k]]
        return prior, prior_static, inner, local

    def _remember_kept(self, batch: list[Sample], kept: list[int], static: np.ndarray, texts: list[str],
                       exact_of: dict[int, np.ndarray]) -> None:
        """Add the batch's kept samples to the index, with their MiniLM vectors where they were computed."""
        assert self._index is not None
        self._index.add(np.ascontiguousarray(static[kept]))
        self._ids.extend(batch[i].id for i in kept)
        self._texts.extend(texts[i] for i in kept)
        start, end = len(self._ids) - len(kept), len(self._ids)
        if self._exact_rows is None or len(self._exact_rows) < end:  # grow by doubling: amortised copies
            grown = np.full((max(2 * end, 1024), DIMS), np.nan, dtype=np.float32)
            if self._exact_rows is not None:
                grown[:start] = self._exact_rows[:start]
            self._exact_rows = grown
        for k, i in enumerate(kept):
            if i in exact_of:
                self._exact_rows[start + k] = exact_of[i]
