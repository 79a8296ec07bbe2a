"""MiniLM's semantic-dedupe decisions on a CPU: int8 MiniLM on every record, fp32 only near the threshold (#17).

The ``onnx_recheck`` backend of :class:`factory.stages.semantic.SemanticDedupe`. Why this shape (docs/dedupe.md,
"Issue 17: MiniLM decisions within 5 minutes"): on this project's user texts every record has a static-encoder
neighbour at any loose threshold that keeps MiniLM's recall, so a static candidate stage prunes nothing and costs
its own search; the time goes into MiniLM. Here:

1. every record is embedded once with int8 MiniLM (ONNX, dynamic per-channel quantisation), whole batches in
   parallel on the CPU's cores (:class:`factory.embed_onnx.OnnxEncoder` ``workers``);
2. its kept records at int8 cosine >= threshold - margin are found by exact search: a Cauchy-Schwarz bound in a
   64-dimensional basis picks the pairs that can reach it, and only those are scored in full (``_search``); the
   batch's own earlier kept rows are compared in full, so the result equals one-by-one processing in input order;
3. int8 moves a pair's cosine by up to ~0.03 against fp32 (measured; docs), so a best score within ``margin`` of the
   threshold is re-scored with fp32 MiniLM (the unquantised ONNX export, equal to sentence-transformers) for the
   record and its kept records within the margin, and fp32 decides. fp32 vectors are computed once per text and
   remembered. Outside the margin int8 decides.

Every decision names the kept record it duplicates, the deciding cosine and its precision (the rejects file).
Memory: 1.5 KB per kept record (int8 MiniLM vector) plus its text, and the fp32 vectors of re-checked texts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from factory.embed_onnx import DIMS

SEARCH_BLOCK = 16_384  # kept rows per matrix product: a 1,000 x 16,384 float32 block is 64 MB
REDUCED_DIMS = 64  # the bound's basis: 65 numbers per vector, ~6x less product than 384 (see _search)
BOUND_SLACK = 1e-4  # float32 rounding of the bound


@dataclass
class Decision:
    """One record's outcome: ``duplicate_of`` is the kept record's id (``None``: kept), ``cosine`` the deciding
    MiniLM cosine (-1 when nothing was kept before it), ``how`` "int8" or "fp32", ``int8`` the best int8 cosine."""

    duplicate_of: str | None
    cosine: float
    how: str
    int8: float


@dataclass
class RecheckIndex:
    """Kept records' int8 MiniLM vectors, ids and texts, searched exactly; fp32 re-scores near the threshold.

    ``fast`` embeds with int8 MiniLM, ``exact`` with fp32 MiniLM (both ``encode(texts) -> unit rows``).
    """

    fast: Any
    exact: Any
    threshold: float
    margin: float
    encoded: int = 0
    rechecked: int = 0
    _vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, DIMS), dtype=np.float32))
    _size: int = 0
    _basis: np.ndarray | None = None
    _reduced: np.ndarray = field(default_factory=lambda: np.zeros((0, REDUCED_DIMS + 1), dtype=np.float32))
    _ids: list[str] = field(default_factory=list)
    _texts: list[str] = field(default_factory=list)
    _fp32: dict[str, np.ndarray] = field(default_factory=dict)

    def decide(self, ids: Sequence[str], texts: Sequence[str], vectors: np.ndarray | None = None) -> list[Decision]:
        """Decisions for one batch in input order; the batch's kept records join the index. ``vectors``: the batch's
        ``fast`` vectors when the caller encoded them ahead (the stage overlaps the next batch's encoding with this
        batch's search and re-checks)."""
        vectors = self.fast.encode(list(texts)) if vectors is None else vectors
        self.encoded += len(texts)
        low = self.threshold - self.margin
        prior_best, prior_row, prior_close = self._search(vectors, low)
        inner = vectors @ vectors.T
        self._prefetch(texts, prior_best, prior_close, inner)
        decisions: list[Decision] = []
        kept: list[int] = []
        for i in range(len(texts)):
            best, best_id = float(prior_best[i]), (self._ids[prior_row[i]] if prior_row[i] >= 0 else None)
            local = inner[i, kept] if kept else np.zeros(0, dtype=np.float32)
            if len(local) and float(local.max()) > best:
                j = int(np.argmax(local))
                best, best_id = float(local[j]), ids[kept[j]]
            decision = Decision(best_id, best, "int8", best)
            if best_id is not None and abs(best - self.threshold) < self.margin:
                close = [(self._ids[r], self._texts[r]) for r in prior_close.get(i, ())]
                close += [(ids[kept[j]], texts[kept[j]]) for j in np.nonzero(local >= low)[0]]
                decision = self._recheck(texts[i], close, best)
            if decision.duplicate_of is not None and decision.cosine >= self.threshold:
                decisions.append(decision)
                continue
            decisions.append(Decision(None, decision.cosine, decision.how, best))
            kept.append(i)
        self._add([ids[i] for i in kept], [texts[i] for i in kept], vectors[kept])
        return decisions

    def _search(self, vectors: np.ndarray, low: float) -> tuple[np.ndarray, np.ndarray, dict[int, list[int]]]:
        """Per batch row: best int8 cosine to a kept record if one is >= ``low`` (else -1), its row (-1: none), and
        the kept rows at >= ``low``.

        Exact, but without a full matrix product against every kept vector (quadratic in the corpus: ~80 s of CPU
        at 100,000 records). Each vector is split into its coordinates in a ``REDUCED_DIMS`` basis fitted on the
        first batch (uncentred SVD) and the norm of the rest; by Cauchy-Schwarz the reduced product plus the product
        of the rest's norms bounds the cosine from above, so one product in ``REDUCED_DIMS + 1`` dimensions finds
        every pair that can reach ``low`` (on MiniLM vectors of user texts, ~2x the pairs that do), and only those
        are scored in full."""
        n = len(vectors)
        best = np.full(n, -1.0, dtype=np.float32)
        row = np.full(n, -1, dtype=np.int64)
        close: dict[int, list[int]] = {}
        if self._basis is None:  # zero rows pad a basis from fewer rows: the bound stays exact, only looser
            self._basis = np.zeros((REDUCED_DIMS, DIMS), dtype=np.float32)
            top = np.linalg.svd(vectors, full_matrices=False)[2][:REDUCED_DIMS]
            self._basis[:len(top)] = top
        reduced = self._reduce(vectors)
        for start in range(0, self._size, SEARCH_BLOCK):
            end = min(start + SEARCH_BLOCK, self._size)
            rows, cols = np.nonzero(reduced @ self._reduced[start:end].T >= low - BOUND_SLACK)
            if not len(rows):
                continue
            cols += start
            scores = np.einsum("ij,ij->i", vectors[rows], self._vectors[cols])
            hit = scores >= low
            for i, j, score in zip(rows[hit].tolist(), cols[hit].tolist(), scores[hit].tolist(), strict=True):
                close.setdefault(i, []).append(j)
                if score > best[i]:
                    best[i], row[i] = score, j
        return best, row, close

    def _reduce(self, vectors: np.ndarray) -> np.ndarray:
        """[coordinates in the basis, norm of the rest]: a dot product of two of these bounds the cosine."""
        assert self._basis is not None
        part = vectors @ self._basis.T
        rest = np.sqrt(np.maximum((vectors * vectors).sum(axis=1) - (part * part).sum(axis=1), 0.0))
        return np.concatenate([part, rest[:, None]], axis=1)

    def _prefetch(self, texts: Sequence[str], prior_best: np.ndarray, prior_close: dict[int, list[int]],
                  inner: np.ndarray) -> None:
        """fp32 vectors, in one parallel call, for the rows likely to be re-checked and their close records.

        A row's best cosine to the kept records is at most its best over the kept records and *all* earlier rows of
        the batch; the rows where that is within the margin, with their records at >= threshold - margin, are what
        the in-order loop will re-check (nearly always: a row whose best earlier row is dropped can fall into the
        margin too, and is then encoded there). Encoding them together runs fp32 in full batches on every core
        instead of a few texts per call."""
        low, high = self.threshold - self.margin, self.threshold + self.margin
        earlier = np.where(np.tri(len(texts), k=-1, dtype=bool), inner, np.float32(-1.0))
        best = np.maximum(prior_best, earlier.max(axis=1, initial=-1.0))
        rows = np.nonzero((best >= low) & (best < high))[0]
        wanted: list[str] = []
        for i in rows.tolist():
            wanted.append(texts[i])
            wanted += [self._texts[r] for r in prior_close.get(i, ())]
            wanted += [texts[j] for j in np.nonzero(earlier[i] >= low)[0].tolist()]
        if wanted:
            self._exact_vectors(wanted)

    def _recheck(self, text: str, close: list[tuple[str, str]], int8: float) -> Decision:
        """fp32 MiniLM decides between ``text`` and its kept records within the margin (their ids and texts)."""
        self.rechecked += 1
        vectors = self._exact_vectors([text, *(t for _, t in close)])
        scores = vectors[1:] @ vectors[0]
        j = int(np.argmax(scores))
        return Decision(close[j][0], float(scores[j]), "fp32", int8)

    def _exact_vectors(self, texts: list[str]) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if t not in self._fp32]
        if missing:
            if len(self._fp32) > 200_000:  # bounded: ~300 MB of vectors
                self._fp32.clear()
            self._fp32.update(zip(missing, self.exact.encode(missing), strict=True))
        return np.stack([self._fp32[t] for t in texts])

    def _add(self, ids: list[str], texts: list[str], vectors: np.ndarray) -> None:
        end = self._size + len(ids)
        if end > len(self._vectors):  # grow by doubling: amortised copies
            grown = np.zeros((max(2 * end, 4096), DIMS), dtype=np.float32)
            grown[:self._size] = self._vectors[:self._size]
            self._vectors = grown
            grown = np.zeros((len(grown), REDUCED_DIMS + 1), dtype=np.float32)
            grown[:self._size] = self._reduced[:self._size]
            self._reduced = grown
        self._vectors[self._size:end] = vectors
        self._reduced[self._size:end] = self._reduce(vectors)
        self._size = end
        self._ids.extend(ids)
        self._texts.extend(texts)
