"""Near-duplicate dedupe: MinHash over word shingles, LSH bands for candidates, a Jaccard check before any drop.

Why this shape (measured in /work/shared/notes/dedupe.md and docs/dedupe.md):

- Signatures come from rensa's bulk ``digest_matrix_from_token_sets`` (Rust, one call per batch), which was 5-15x
  faster than datasketch and distilabel's ``MinHashDedup`` on this machine.
- Banding and the candidate check are ours, not rensa's ``RMinHashLSH``: we need the id of the sample a duplicate
  repeats (``related_id``), a Jaccard check so an LSH band hit alone never drops anything, state that persists
  across ``run`` calls (the build's balance loop calls again with new samples), and a store that can live on disk.
- Two stores with one interface: :class:`MemoryStore` (dicts; the build's default) and :class:`SqliteStore` (band
  keys and signatures in an indexed sqlite file), so a 10-million-sample corpus streams through in batches and only
  one batch of samples is in memory at a time. Band keys are 64-bit hashes computed with numpy, identical in both.
"""

from __future__ import annotations

import re
import sqlite3
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

import numpy as np
from pydantic import Field, PrivateAttr

from factory.stages.base import Stage
from factory.stages.exact import normalize
from schemas.sample import Sample

TextField = Literal["conversation", "user", "assistant"]

#: Fixed seed for the MinHash permutations: signatures (and the sqlite store) must agree across processes.
MINHASH_SEED = 1_234_567
_MIX = np.uint64(0x9E3779B97F4A7C15)
_MUL = np.uint64(0xBF58476D1CE4E5B9)


def sample_text(sample: Sample, field: TextField) -> str:
    """The text a dedupe level compares: the whole chat, only what the user wrote, or only the answers."""
    if field == "conversation":
        return sample.conversation.text()
    role = "user" if field == "user" else "assistant"
    return "\n".join(t.content for t in sample.conversation.turns if t.role.value == role)


def shingles(text: str, n: int) -> list[str]:
    """Word n-grams of the normalized text; a text shorter than ``n`` words is one shingle (so it still matches)."""
    words = normalize(text).split()
    if len(words) <= n:
        return [" ".join(words)]
    return [" ".join(words[i:i + n]) for i in range(len(words) - n + 1)]


_TOKEN = re.compile(r"[^\W_]+")
_SHINGLE_MIX = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xC2B2AE3D27D4EB4F), np.uint64(0x165667B19E3779F9),
                np.uint64(0xD6E8FEB86659FD93), np.uint64(0xFF51AFD7ED558CCD))


def _words(text: str) -> list[str]:
    """The same words :func:`shingles` uses (exact.normalize's tokens), without building the normalized string."""
    return _TOKEN.findall((text if text.isascii() else unicodedata.normalize("NFKC", text)).casefold())


def shingle_hashes(texts: Sequence[str], n: int) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hashes of every word n-gram, flat, with row offsets: no shingle string is ever built.

    Words are hashed once in Rust (rensa); an n-gram's hash mixes its words' hashes position by position, computed
    for the whole batch at once with shifted numpy views, then the n-grams that straddle two texts are dropped.
    """
    import rensa

    token_lists = [_words(t) or [""] for t in texts]
    word_hashes = rensa.RMinHash.hash_token_sets(token_lists)
    lengths = np.fromiter((len(w) for w in token_lists), dtype=np.int64, count=len(token_lists))
    flat = np.fromiter((h for row in word_hashes for h in row), dtype=np.uint64, count=int(lengths.sum()))
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    k = np.minimum(lengths, n)  # a text shorter than n words is one shingle of all its words
    total = len(flat)
    out_parts: list[np.ndarray] = []
    counts = np.maximum(lengths - n + 1, 1)
    with np.errstate(over="ignore"):
        if total >= n:
            acc = np.zeros(total - n + 1, dtype=np.uint64)
            for j in range(n):
                acc ^= flat[j: total - n + 1 + j] * _SHINGLE_MIX[j % len(_SHINGLE_MIX)]
                acc = (acc ^ (acc >> np.uint64(29))) * _MUL
            long_rows = lengths >= n
            idx = np.concatenate([np.arange(s, s + c) for s, c, ok in zip(starts, counts, long_rows, strict=True)
                                  if ok]) if long_rows.any() else np.zeros(0, dtype=np.int64)
            full = acc[idx] if len(idx) else np.zeros(0, dtype=np.uint64)
        else:
            full, long_rows = np.zeros(0, dtype=np.uint64), np.zeros(len(texts), dtype=bool)
        pos = 0
        for row in range(len(texts)):
            if long_rows[row]:
                out_parts.append(full[pos: pos + counts[row]])
                pos += int(counts[row])
            else:
                h = np.uint64(0)
                for j in range(int(k[row])):
                    h ^= flat[starts[row] + j] * _SHINGLE_MIX[j % len(_SHINGLE_MIX)]
                    h = (h ^ (h >> np.uint64(29))) * _MUL
                out_parts.append(np.array([h], dtype=np.uint64))
    offsets = np.concatenate(([0], np.cumsum([len(p) for p in out_parts]))).astype(np.uint64)
    return np.concatenate(out_parts) if out_parts else np.zeros(0, dtype=np.uint64), offsets


def signatures(texts: Sequence[str], *, num_perm: int, shingle_words: int) -> np.ndarray:
    """MinHash signatures, shape (len(texts), num_perm), uint32, from rensa's bulk path over hashed shingles."""
    import rensa

    if not texts:
        return np.zeros((0, num_perm), dtype=np.uint32)
    flat, offsets = shingle_hashes(texts, shingle_words)
    matrix = rensa.RMinHash.digest_matrix_from_flat_token_hashes(flat, offsets, num_perm, MINHASH_SEED)
    return np.asarray(matrix.to_rows(), dtype=np.uint32)


def optimal_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) for the threshold, weighting missed duplicates 3:1 over extra candidates.

    Extra candidates only cost a Jaccard check; a band layout that misses a pair loses it for good. Only layouts with
    ``bands * rows == num_perm`` are considered, so every permutation is used.
    """
    from scipy.integrate import quad

    best: tuple[float, int, int] | None = None
    for rows in range(1, num_perm + 1):
        if num_perm % rows:
            continue
        bands = num_perm // rows
        fp, _ = quad(lambda s, b=bands, r=rows: 1 - (1 - s ** r) ** b, 0.0, threshold)
        fn, _ = quad(lambda s, b=bands, r=rows: (1 - s ** r) ** b, threshold, 1.0)
        error = 0.25 * fp + 0.75 * fn
        if best is None or error < best[0]:
            best = (error, bands, rows)
    assert best is not None
    return best[1], best[2]


def band_keys(sigs: np.ndarray, bands: int) -> np.ndarray:
    """One signed 64-bit key per (sample, band); the band index is mixed in so bands never collide."""
    n, num_perm = sigs.shape
    rows = num_perm // bands
    view = sigs.reshape(n, bands, rows).astype(np.uint64)
    keys = np.broadcast_to((np.arange(bands, dtype=np.uint64) + np.uint64(1)) * _MIX, (n, bands)).copy()
    with np.errstate(over="ignore"):
        for j in range(rows):
            keys ^= view[:, :, j]
            keys *= _MUL
            keys ^= keys >> np.uint64(31)
    return keys.view(np.int64)


class BandStore(Protocol):
    """Where kept samples' band keys and signatures live between batches."""

    def candidates(self, keys: np.ndarray) -> list[set[int]]: ...

    def signature(self, rows: Sequence[int]) -> np.ndarray: ...

    def sample_id(self, row: int) -> str: ...

    def add(self, ids: Sequence[str], sigs: np.ndarray, keys: np.ndarray) -> None: ...

    def __len__(self) -> int: ...

    def close(self) -> None: ...


class MemoryStore:
    """Dict of band key -> rows, plus a growing signature matrix. ~0.7 KB per kept sample at 128 permutations."""

    def __init__(self, num_perm: int) -> None:
        self._buckets: dict[int, list[int]] = {}
        self._sigs = np.zeros((0, num_perm), dtype=np.uint32)
        self._n = 0
        self._ids: list[str] = []

    def __len__(self) -> int:
        return self._n

    def candidates(self, keys: np.ndarray) -> list[set[int]]:
        get = self._buckets.get
        return [{r for k in row for r in get(int(k), ())} for row in keys.tolist()]

    def signature(self, rows: Sequence[int]) -> np.ndarray:
        return self._sigs[list(rows)]

    def sample_id(self, row: int) -> str:
        return self._ids[row]

    def add(self, ids: Sequence[str], sigs: np.ndarray, keys: np.ndarray) -> None:
        if not ids:
            return
        if self._n + len(ids) > len(self._sigs):
            grown = np.zeros((max(2 * len(self._sigs), self._n + len(ids), 1024), sigs.shape[1]), dtype=np.uint32)
            grown[: self._n] = self._sigs[: self._n]
            self._sigs = grown
        self._sigs[self._n: self._n + len(ids)] = sigs
        for offset, row in enumerate(keys.tolist()):
            for k in row:
                self._buckets.setdefault(k, []).append(self._n + offset)
        self._ids.extend(ids)
        self._n += len(ids)

    def close(self) -> None:
        self._buckets.clear()


class SqliteStore:
    """Band keys and signatures in an sqlite file: memory stays flat however many samples pass (out of core).

    One indexed ``bands(key, row)`` table answers a whole batch's candidate query in one statement; signatures are
    blobs fetched only for candidates.
    """

    def __init__(self, path: Path, num_perm: int) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.num_perm = num_perm
        self._db = sqlite3.connect(self.path)
        self._db.executescript(
            "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA temp_store=MEMORY;"
            "CREATE TABLE IF NOT EXISTS samples(row INTEGER PRIMARY KEY, id TEXT NOT NULL, sig BLOB NOT NULL);"
            "CREATE TABLE IF NOT EXISTS bands(key INTEGER NOT NULL, row INTEGER NOT NULL);"
            "CREATE INDEX IF NOT EXISTS bands_key ON bands(key);")
        self._n = int(self._db.execute("SELECT COUNT(*) FROM samples").fetchone()[0])

    def __len__(self) -> int:
        return self._n

    def candidates(self, keys: np.ndarray) -> list[set[int]]:
        out: list[set[int]] = [set() for _ in range(len(keys))]
        if not self._n or not len(keys):
            return out
        self._db.execute("CREATE TEMP TABLE IF NOT EXISTS probe(key INTEGER, local INTEGER)")
        self._db.execute("DELETE FROM probe")
        self._db.executemany("INSERT INTO probe VALUES (?, ?)",
                             ((k, i) for i, row in enumerate(keys.tolist()) for k in row))
        for local, row in self._db.execute("SELECT probe.local, bands.row FROM probe JOIN bands ON bands.key = probe.key"):
            out[local].add(row)
        return out

    def signature(self, rows: Sequence[int]) -> np.ndarray:
        found: dict[int, bytes] = {}
        rows = list(rows)
        for start in range(0, len(rows), 900):
            chunk = rows[start:start + 900]
            marks = ",".join("?" * len(chunk))
            found.update(self._db.execute(f"SELECT row, sig FROM samples WHERE row IN ({marks})", chunk))
        return np.stack([np.frombuffer(found[r], dtype=np.uint32) for r in rows]) if rows else \
            np.zeros((0, self.num_perm), dtype=np.uint32)

    def sample_id(self, row: int) -> str:
        return str(self._db.execute("SELECT id FROM samples WHERE row = ?", (row,)).fetchone()[0])

    def add(self, ids: Sequence[str], sigs: np.ndarray, keys: np.ndarray) -> None:
        rows = range(self._n, self._n + len(ids))
        self._db.executemany("INSERT INTO samples VALUES (?, ?, ?)",
                             ((r, i, s.tobytes()) for r, i, s in zip(rows, ids, sigs, strict=True)))
        self._db.executemany("INSERT INTO bands VALUES (?, ?)",
                             ((k, r) for r, row in zip(rows, keys.tolist(), strict=True) for k in row))
        self._db.commit()
        self._n += len(ids)

    def close(self) -> None:
        self._db.close()


class NearDedupe(Stage):
    """Drops a sample whose estimated Jaccard similarity to an earlier kept sample reaches ``threshold``.

    Works in batches of ``batch_size``: one rensa call signs the batch, one store query finds earlier candidates,
    and pairs inside the batch are checked against the batch's own kept samples, so the result equals one-by-one
    processing in input order (the first of a group is kept).
    """

    name: ClassVar[str] = "dedupe_near"

    threshold: float = Field(default=0.8, gt=0, le=1)
    num_perm: int = 128
    shingle_words: int = 5
    text: TextField = "conversation"
    batch_size: int = Field(default=1000, ge=1)
    storage: Path | None = Field(default=None, description="sqlite file for an out-of-core store; None = memory.")

    _store: Any = PrivateAttr(default=None)
    _bands: int = PrivateAttr(default=0)
    best_similarity: list[float] = Field(default_factory=list, exclude=True,
                                         description="Highest Jaccard each seen sample had to a kept one (0: none).")
    record_similarity: bool = False

    def load(self) -> None:
        if self._store is not None:
            return
        self._bands, _ = optimal_bands(self.threshold, self.num_perm)
        self._store = (SqliteStore(self.storage, self.num_perm) if self.storage is not None
                       else MemoryStore(self.num_perm))

    def unload(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def run(self, samples: Iterable[Sample]) -> Iterator[Sample]:
        self.load()
        batch: list[Sample] = []
        for sample in samples:
            batch.append(sample)
            if len(batch) >= self.batch_size:
                yield from self._batch(batch)
                batch = []
        if batch:
            yield from self._batch(batch)

    def _batch(self, batch: list[Sample]) -> Iterator[Sample]:
        store: BandStore = self._store
        sigs = signatures([sample_text(s, self.text) for s in batch], num_perm=self.num_perm,
                          shingle_words=self.shingle_words)
        keys = band_keys(sigs, self._bands)
        earlier = store.candidates(keys)
        local_buckets: dict[int, list[int]] = {}
        kept_local: list[int] = []
        for i, sample in enumerate(batch):
            best_sim, best_id = 0.0, None
            rows = sorted(earlier[i])
            if rows:
                sims = (store.signature(rows) == sigs[i]).mean(axis=1)
                j = int(np.argmax(sims))
                best_sim, best_id = float(sims[j]), store.sample_id(rows[j])
            local = sorted({j for k in keys[i].tolist() for j in local_buckets.get(k, ())})
            if local:
                sims = (sigs[local] == sigs[i]).mean(axis=1)
                j = int(np.argmax(sims))
                if sims[j] > best_sim:
                    best_sim, best_id = float(sims[j]), batch[local[j]].id
            if self.record_similarity:
                self.best_similarity.append(best_sim)
            if best_id is not None and best_sim >= self.threshold:
                self.drop(sample, "near_duplicate", related_id=best_id,
                          detail=f"Jaccard {best_sim:.2f} >= {self.threshold:g} on {self.text} text")
                continue
            for k in keys[i].tolist():
                local_buckets.setdefault(k, []).append(i)
            kept_local.append(i)
            yield self.keep(sample)
        store.add([batch[i].id for i in kept_local], sigs[kept_local], keys[kept_local])
