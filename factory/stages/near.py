"""Near-duplicate dedupe: MinHash over word shingles, LSH bands for candidates, an exact Jaccard check before any drop.

Why this shape (measured in docs/dedupe.md):

- A whole batch is tokenized and shingled with numpy on its UTF-8 bytes: a byte table marks word characters, a
  polynomial rolling hash (prefix sums) hashes every word, shifted views mix 5 word hashes into a shingle hash, and
  one sort turns them into one sorted set of 32-bit shingle hashes per text. No per-word or per-shingle
  Python object is ever built (the regex tokenizer and dict-of-lists index were 80% of the old stage's time).
- Signatures are one-permutation MinHash with densification (:func:`signatures`): one numpy pass over the sorted
  sets instead of 128 permutations. rensa's bulk digest was fast, but converting its result took as long again.
- Candidates are samples sharing an LSH band key; a drop needs the **exact** Jaccard of the two shingle sets, computed
  for all of a batch's candidate pairs in one sort. An estimate from 128 permutations has a standard error of ~0.03
  near 0.85 (bench recall on planted copies: 0.975 with the estimate, 0.985 exact).
- Banding and the check are ours, not a library's LSH (rensa's ``RMinHashLSH``, datasketch): we need the id of the
  sample a duplicate repeats (``related_id``), state that persists across ``run`` calls (the build's balance loop
  calls again with new samples), and a store that can live on disk.
- Two stores with one interface: :class:`MemoryStore` (sorted numpy arrays of band keys, searched for a whole batch
  with ``searchsorted``; the build's default) and :class:`SqliteStore` (band keys and shingle sets in an indexed
  sqlite file), so a 10-million-sample corpus streams through in batches and only one batch of samples is in memory.
"""

from __future__ import annotations

import re
import sqlite3
import unicodedata
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

import numpy as np
from pydantic import Field, PrivateAttr

from common.arabic import normalize_arabic
from common.errors import FormaError
from factory.stages.base import BatchedStage
from factory.stages.exact import normalize
from schemas.sample import Sample

TextField = Literal["conversation", "user", "assistant"]

#: Fixed seed for the MinHash permutations: signatures (and the sqlite store) must agree across processes.
MINHASH_SEED = 1_234_567
#: Written into the sqlite store: shingle hashing and the stored columns must match the code that reads them.
STORE_SCHEME = "near-v2: word poly hash, 32-bit shingle sets"
_MIX = np.uint64(0x9E3779B97F4A7C15)
_MUL = np.uint64(0xBF58476D1CE4E5B9)
_MUL2 = np.uint64(0x94D049BB133111EB)
_POLY = 0x01000193  # odd, so invertible modulo 2**32: a word's hash can be shifted back to its own start
_POLY_INV = pow(_POLY, -1, 2**32)
_SHINGLE_MIX = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xC2B2AE3D27D4EB4F), np.uint64(0x165667B19E3779F9),
                np.uint64(0xD6E8FEB86659FD93), np.uint64(0xFF51AFD7ED558CCD))
_EMPTY = np.uint64(0x5BD1E9955BD1E995)  # the one shingle of a text without words (so two empty texts still match)
_LOW32 = np.uint64(0xFFFFFFFF)


def sample_text(sample: Sample, field: TextField) -> str:
    """The text a dedupe level compares: the whole chat, only what the user wrote, or only the answers."""
    if field == "conversation":
        return sample.conversation.text()
    role = "user" if field == "user" else "assistant"
    return "\n".join(t.content for t in sample.conversation.turns if t.role.value == role)


def shingles(text: str, n: int) -> list[str]:
    """Word n-grams of the normalized text; a text shorter than ``n`` words is one shingle (so it still matches).

    The reference definition (the bench feeds it to distilabel); :func:`shingle_sets` hashes the same n-grams.
    """
    words = normalize(text).split()
    if len(words) <= n:
        return [" ".join(words)]
    return [" ".join(words[i:i + n]) for i in range(len(words) - n + 1)]


_TOKEN = re.compile(r"[^\W_]+")
#: byte -> its lower-case value for word characters, 0 for separators. Bytes >= 0x80 only occur in rows that
#: :func:`_word_bytes` already tokenized (letters of other scripts, words joined by spaces).
_WORD_BYTE = np.zeros(256, dtype=np.uint32)
_WORD_BYTE[list(b"abcdefghijklmnopqrstuvwxyz0123456789")] = list(b"abcdefghijklmnopqrstuvwxyz0123456789")
_WORD_BYTE[list(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ")] = list(b"abcdefghijklmnopqrstuvwxyz")
_WORD_BYTE[0x80:] = np.arange(0x80, 0x100)
_POW: np.ndarray = np.ones(1, dtype=np.uint32)
_POW_INV: np.ndarray = np.ones(1, dtype=np.uint32)


def _words(text: str) -> list[str]:
    """The same words :func:`shingles` uses (exact.normalize's tokens, Arabic variants made one), without building the
    normalized string."""
    if not text.isascii():
        text = normalize_arabic(unicodedata.normalize("NFKC", text))
    return _TOKEN.findall(text.casefold())


def _word_bytes(text: str) -> bytes:
    """ASCII text goes as is (the byte table finds its words); other text is tokenized here, words joined by spaces."""
    return text.encode("ascii") if text.isascii() else " ".join(_words(text)).encode("utf-8")


def _powers(length: int) -> tuple[np.ndarray, np.ndarray]:
    """POLY**k and POLY**-k modulo 2**32 for k < length, cached and grown geometrically.

    32-bit arithmetic halves the memory traffic of the per-byte passes; a word-hash collision (~1 pair per 10**5
    distinct words squared / 2**33) would only merge two words, and every word hash is then mixed to 64 bits.
    """
    global _POW, _POW_INV
    if len(_POW) < length:
        size = max(length, 2 * len(_POW))
        one = np.ones(1, dtype=np.uint32)
        with np.errstate(over="ignore"):
            _POW = np.cumprod(np.concatenate((one, np.full(size - 1, _POLY, dtype=np.uint32))), dtype=np.uint32)
            _POW_INV = np.cumprod(np.concatenate((one, np.full(size - 1, _POLY_INV, dtype=np.uint32))),
                                  dtype=np.uint32)
    return _POW[:length], _POW_INV[:length]


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: spreads a hash's entropy over all 64 bits (the polynomial hash is linear)."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * _MUL
        x = (x ^ (x >> np.uint64(27))) * _MUL2
        return x ^ (x >> np.uint64(31))


def _gather_index(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Indices of the concatenated ranges ``[start, start + length)``, without a Python loop."""
    total = int(lengths.sum())
    if not total:
        return np.zeros(0, dtype=np.int64)
    shift = starts - (np.cumsum(lengths) - lengths)
    return np.repeat(shift, lengths) + np.arange(total, dtype=np.int64)


def word_hashes(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hashes (32 bits of entropy) of every word of every text, flat, and the text each word belongs to."""
    joined = "\n".join(texts)
    if joined.isascii():  # the usual case: one encode for the batch, byte offsets are character offsets
        raw, sizes = joined.encode("ascii"), [len(t) for t in texts]
    else:
        parts = [_word_bytes(t) for t in texts]
        raw, sizes = b"\n".join(parts), [len(p) for p in parts]
    data = np.frombuffer(raw, dtype=np.uint8)
    row_start = np.zeros(len(sizes), dtype=np.int64)
    np.cumsum(np.asarray(sizes[:-1], dtype=np.int64) + 1, out=row_start[1:])
    values = _WORD_BYTE[data]
    edges = np.diff((values != 0).view(np.int8), prepend=np.int8(0), append=np.int8(0))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    power, inverse = _powers(len(data) + 1)
    with np.errstate(over="ignore"):
        prefix = np.zeros(len(data) + 1, dtype=np.uint32)
        values *= power[:len(data)]
        np.cumsum(values, out=prefix[1:])
        hashes = _mix64(((prefix[ends] - prefix[starts]) * inverse[starts]).astype(np.uint64))
    first_word = np.searchsorted(starts, row_start)  # one probe per text, not one per word
    per_row = np.diff(first_word, append=len(starts))
    return hashes, np.repeat(np.arange(len(row_start), dtype=np.int64), per_row)


def _mix_words(word_hashes: Sequence[np.ndarray]) -> np.ndarray:
    """Hash of consecutive words, position by position (the k-th array holds the k-th word of every shingle)."""
    acc = np.zeros(len(word_hashes[0]), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j, words in enumerate(word_hashes):
            acc ^= words * _SHINGLE_MIX[j % len(_SHINGLE_MIX)]
            acc = (acc ^ (acc >> np.uint64(29))) * _MUL
    return acc


def shingle_sets(texts: Sequence[str], n: int) -> tuple[np.ndarray, np.ndarray]:
    """Each text's set of word n-gram hashes, as sorted unique uint32 values, flat, with int64 row offsets.

    32 bits are plenty for a set of a few hundred shingles (a chance collision moves a Jaccard by 1/|set|, about once
    in 10**5 pairs) and halve the index. A text shorter than ``n`` words is one shingle of all its words.
    """
    count = len(texts)
    if not count:
        return np.zeros(0, dtype=np.uint32), np.zeros(1, dtype=np.int64)
    words, rows = word_hashes(texts)
    per_row = np.bincount(rows, minlength=count)
    row_parts: list[np.ndarray] = []
    hash_parts: list[np.ndarray] = []
    total = len(words)
    if total >= n:
        acc = _mix_words([words[j: total - n + 1 + j] for j in range(n)])
        whole = rows[: total - n + 1] == rows[n - 1:]  # drop n-grams that straddle two texts
        row_parts.append(rows[: total - n + 1][whole])
        hash_parts.append(acc[whole])
    short = np.flatnonzero(per_row < n)
    if len(short):  # rare: texts shorter than one shingle
        first = np.cumsum(per_row) - per_row
        for row in short.tolist():
            k = int(per_row[row])
            h = _mix_words([words[first[row] + j: first[row] + j + 1] for j in range(k)]) if k else \
                np.array([_EMPTY], dtype=np.uint64)
            row_parts.append(np.array([row], dtype=np.int64))
            hash_parts.append(h)
    keyed = _sorted_unique((np.concatenate(row_parts).astype(np.uint64) << np.uint64(32))
                           | (np.concatenate(hash_parts) >> np.uint64(32)))
    offsets = np.zeros(count + 1, dtype=np.int64)
    np.cumsum(np.bincount((keyed >> np.uint64(32)).astype(np.int64), minlength=count), out=offsets[1:])
    return (keyed & _LOW32).astype(np.uint32), offsets


def signatures(flat: np.ndarray, offsets: np.ndarray, num_perm: int) -> np.ndarray:
    """One-permutation MinHash (Li, Owen & Zhang 2012) with rotation densification: shape (rows, num_perm), uint64.

    The shingle hash itself is the permutation: it is split into ``num_perm`` equal ranges (bins), and a bin's value
    is the smallest hash of the set that falls in it. The sets are already sorted, so each bin's minimum is the first
    element of its run: one pass over the shingles instead of ``num_perm`` (rensa's k-permutation digest plus its
    list-of-lists result was 1 s of the 5 s per 100,000 records). An empty bin borrows the next non-empty bin's value
    (circularly), tagged with the distance, so two sets collide on it only if they agree there too. Two identical sets
    get identical signatures; a bin collides with probability about the sets' Jaccard, as in k-permutation MinHash.
    """
    count = len(offsets) - 1
    if count <= 0:
        return np.zeros((0, num_perm), dtype=np.uint64)
    bins = ((flat.astype(np.uint64) * np.uint64(num_perm)) >> np.uint64(32)).astype(np.int64)  # monotone in hash
    first = np.empty(len(flat), dtype=bool)  # first shingle of a (text, bin) run: the bin's minimum
    first[0] = True
    np.not_equal(bins[1:], bins[:-1], out=first[1:])
    first[offsets[:-1]] = True
    where = np.flatnonzero(first)
    cell = np.repeat(np.arange(count, dtype=np.int64) * num_perm, np.diff(offsets))[where] + bins[where]
    flat_sig = np.zeros(count * num_perm, dtype=np.uint64)
    flat_filled = np.zeros(count * num_perm, dtype=bool)
    flat_sig[cell] = flat[where]
    flat_filled[cell] = True
    sig, filled = flat_sig.reshape(count, num_perm), flat_filled.reshape(count, num_perm)
    # index of the next filled bin to the right, circularly: a reverse running minimum over two laps
    lap = np.tile(np.arange(num_perm, dtype=np.int64), 2)
    marks = np.where(np.tile(filled, 2), lap + np.repeat([0, num_perm], num_perm), 4 * num_perm)
    donor = np.minimum.accumulate(marks[:, ::-1], axis=1)[:, ::-1][:, :num_perm]
    distance = (donor - np.arange(num_perm)).astype(np.uint64)
    return np.take_along_axis(sig, donor % num_perm, axis=1) | (distance << np.uint64(32))


def pair_jaccard(a: tuple[np.ndarray, np.ndarray], a_rows: np.ndarray,
                 b: tuple[np.ndarray, np.ndarray], b_rows: np.ndarray) -> np.ndarray:
    """Exact Jaccard of set ``a_rows[p]`` of ``a`` and set ``b_rows[p]`` of ``b`` for every pair p, in one sort.

    Each pair's two sets are tagged with the pair number; after sorting, an equal neighbour is a shared shingle.
    """
    pairs = len(a_rows)
    if not pairs:
        return np.zeros(0)
    (a_flat, a_off), (b_flat, b_off) = a, b
    a_len, b_len = a_off[a_rows + 1] - a_off[a_rows], b_off[b_rows + 1] - b_off[b_rows]
    tag = np.arange(pairs, dtype=np.uint64) << np.uint64(32)
    tagged = np.concatenate((np.repeat(tag, a_len) | a_flat[_gather_index(a_off[a_rows], a_len)],
                             np.repeat(tag, b_len) | b_flat[_gather_index(b_off[b_rows], b_len)]))
    tagged.sort()
    shared = tagged[1:][tagged[1:] == tagged[:-1]] >> np.uint64(32)
    inter = np.bincount(shared.astype(np.int64), minlength=pairs)
    return inter / np.maximum(a_len + b_len - inter, 1)


def optimal_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) for the threshold, weighting missed duplicates 3:1 over extra candidates.

    Extra candidates only cost a Jaccard check; a band layout that misses a pair loses it for good. Only layouts with
    ``bands * rows == num_perm`` are considered, so every permutation is used. Integrated with numpy's trapezoid rule
    (matches scipy's ``quad`` to 1e-6; importing scipy alone took over a second).
    """
    best: tuple[float, int, int] | None = None
    below = np.linspace(0.0, threshold, 2001)
    above = np.linspace(threshold, 1.0, 2001)
    for rows in range(1, num_perm + 1):
        if num_perm % rows:
            continue
        bands = num_perm // rows
        fp = float(np.trapezoid(1 - (1 - below ** rows) ** bands, below))
        fn = float(np.trapezoid((1 - above ** rows) ** bands, above))
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


def _sorted_unique(values: np.ndarray) -> np.ndarray:
    """Sorted distinct values. ``np.unique`` hashes integers in numpy 2.3+, which was 10x slower here than a sort."""
    values = np.sort(values)
    return values[np.r_[True, values[1:] != values[:-1]]] if len(values) else values


def _unique_pairs(first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (first, second) pairs sorted by first then second; both fit in 32 bits."""
    packed = _sorted_unique((first.astype(np.int64) << 32) | second.astype(np.int64))
    return packed >> 32, packed & 0xFFFFFFFF


class BandStore(Protocol):
    """Where kept samples' band keys and shingle sets live between batches."""

    def candidates(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(batch index, stored row) for every stored sample sharing a band key with a batch sample, distinct."""
        ...

    def shingle_sets(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def sample_id(self, row: int) -> str: ...

    def add(self, ids: Sequence[str], sets: tuple[np.ndarray, np.ndarray], keys: np.ndarray) -> None: ...

    def __len__(self) -> int: ...

    def close(self) -> None: ...


class _Growing:
    """A numpy array appended to in place (capacity doubles), so adding a batch never copies the whole index."""

    def __init__(self, dtype: type[np.generic]) -> None:
        self.data = np.zeros(1024, dtype=dtype)
        self.size = 0

    def extend(self, values: np.ndarray) -> None:
        if self.size + len(values) > len(self.data):
            grown = np.zeros(max(2 * len(self.data), self.size + len(values)), dtype=self.data.dtype)
            grown[: self.size] = self.data[: self.size]
            self.data = grown
        self.data[self.size: self.size + len(values)] = values
        self.size += len(values)

    def view(self) -> np.ndarray:
        return self.data[: self.size]


class MemoryStore:
    """Sorted band keys (with their rows) plus every kept sample's shingle set: ~0.9 KB per 130-word sample.

    New keys go to a small sorted buffer that is merged into the main array when it reaches 1/8 of it, so the
    memmove cost of keeping one sorted array stays linear overall.
    """

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._keys = [np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)]  # main, buffer
        self._rows = [np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)]
        self._flat = _Growing(np.uint32)
        self._offsets = _Growing(np.int64)
        self._offsets.extend(np.zeros(1, dtype=np.int64))
        self._ids: list[str] = []

    def __len__(self) -> int:
        return len(self._ids)

    def candidates(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        query = keys.ravel()
        order = np.argsort(query)  # sorted probes walk the index in order: ~5x faster than random ones
        query = query[order]
        owner = order // keys.shape[1]
        found_q, found_r = [], []
        for sorted_keys, rows in zip(self._keys, self._rows, strict=True):
            if not len(sorted_keys):
                continue
            lo = np.searchsorted(sorted_keys, query, side="left")
            hits = (lo < len(sorted_keys)) & (sorted_keys[np.minimum(lo, len(sorted_keys) - 1)] == query)
            if not hits.any():
                continue
            lo, owner_hit, query_hit = lo[hits], owner[hits], query[hits]
            hits = np.searchsorted(sorted_keys, query_hit, side="right") - lo
            found_q.append(np.repeat(owner_hit, hits))
            found_r.append(rows[_gather_index(lo, hits)])
        if not found_q:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        return _unique_pairs(np.concatenate(found_q), np.concatenate(found_r))

    def shingle_sets(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        offsets = self._offsets.view()
        lengths = offsets[rows + 1] - offsets[rows]
        out = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=out[1:])
        return self._flat.view()[_gather_index(offsets[rows], lengths)], out

    def sample_id(self, row: int) -> str:
        return self._ids[row]

    def add(self, ids: Sequence[str], sets: tuple[np.ndarray, np.ndarray], keys: np.ndarray) -> None:
        if not ids:
            return
        flat, offsets = sets
        self._offsets.extend(offsets[1:] + self._flat.size)
        self._flat.extend(flat)
        new_keys = keys.ravel()
        new_rows = np.repeat(np.arange(len(self._ids), len(self._ids) + len(ids), dtype=np.int64), keys.shape[1])
        self._ids.extend(ids)
        self._merge(1, new_keys, new_rows)
        if len(self._keys[1]) * 8 > len(self._keys[0]):
            self._merge(0, self._keys[1], self._rows[1])
            self._keys[1], self._rows[1] = self._keys[1][:0], self._rows[1][:0]

    def _merge(self, level: int, keys: np.ndarray, rows: np.ndarray) -> None:
        order = np.argsort(keys, kind="stable")
        keys, rows = keys[order], rows[order]
        at = np.searchsorted(self._keys[level], keys, side="right")
        self._keys[level] = np.insert(self._keys[level], at, keys)
        self._rows[level] = np.insert(self._rows[level], at, rows)

    def close(self) -> None:
        self._reset()


class SqliteStore:
    """Band keys and shingle sets in an sqlite file: memory stays flat however many samples pass (out of core).

    One indexed ``bands(key, row)`` table answers a whole batch's candidate query in one statement; shingle sets are
    blobs fetched only for candidates.
    """

    def __init__(self, path: Path, num_perm: int) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.num_perm = num_perm
        self._db = sqlite3.connect(self.path)
        self._db.executescript(
            "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA temp_store=MEMORY;"
            "CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);"
            "CREATE TABLE IF NOT EXISTS samples(row INTEGER PRIMARY KEY, id TEXT NOT NULL, shingles BLOB NOT NULL);"
            "CREATE TABLE IF NOT EXISTS bands(key INTEGER NOT NULL, row INTEGER NOT NULL);"
            "CREATE INDEX IF NOT EXISTS bands_key ON bands(key);")
        self._n = int(self._db.execute("SELECT COUNT(*) FROM samples").fetchone()[0])
        expected = f"{STORE_SCHEME}; num_perm={num_perm}"
        found = self._db.execute("SELECT value FROM meta WHERE key = 'scheme'").fetchone()
        columns = {r[1] for r in self._db.execute("PRAGMA table_info(samples)")}
        if (found is None and self._n) or (found is not None and found[0] != expected) or "shingles" not in columns:
            self._db.close()
            raise FormaError("this near-duplicate store was written by another version or setting of the stage",
                             path=self.path, where="dedupe_near",
                             hint=f"delete it (it is rebuilt from the data) or use a new file; expected '{expected}'")
        self._db.execute("INSERT OR IGNORE INTO meta VALUES ('scheme', ?)", (expected,))
        self._db.commit()

    def __len__(self) -> int:
        return self._n

    def candidates(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        empty = np.zeros(0, dtype=np.int64)
        if not self._n or not len(keys):
            return empty, empty
        self._db.execute("CREATE TEMP TABLE IF NOT EXISTS probe(key INTEGER, local INTEGER)")
        self._db.execute("DELETE FROM probe")
        self._db.executemany("INSERT INTO probe VALUES (?, ?)",
                             ((k, i) for i, row in enumerate(keys.tolist()) for k in row))
        query = "SELECT DISTINCT probe.local, bands.row FROM probe JOIN bands ON bands.key = probe.key"
        found = np.array(self._db.execute(query).fetchall(), dtype=np.int64).reshape(-1, 2)
        return _unique_pairs(found[:, 0], found[:, 1]) if len(found) else (empty, empty)

    def shingle_sets(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        found: dict[int, bytes] = {}
        wanted = rows.tolist()
        for start in range(0, len(wanted), 900):
            chunk = wanted[start:start + 900]
            marks = ",".join("?" * len(chunk))
            found.update(self._db.execute(f"SELECT row, shingles FROM samples WHERE row IN ({marks})", chunk))
        sets = [np.frombuffer(found[r], dtype=np.uint32) for r in wanted]
        offsets = np.zeros(len(sets) + 1, dtype=np.int64)
        np.cumsum([len(s) for s in sets], out=offsets[1:])
        return (np.concatenate(sets) if sets else np.zeros(0, dtype=np.uint32)), offsets

    def sample_id(self, row: int) -> str:
        return str(self._db.execute("SELECT id FROM samples WHERE row = ?", (row,)).fetchone()[0])

    def add(self, ids: Sequence[str], sets: tuple[np.ndarray, np.ndarray], keys: np.ndarray) -> None:
        flat, offsets = sets
        rows = range(self._n, self._n + len(ids))
        self._db.executemany("INSERT INTO samples VALUES (?, ?, ?)",
                             ((r, i, flat[offsets[k]:offsets[k + 1]].tobytes())
                              for k, (r, i) in enumerate(zip(rows, ids, strict=True))))
        self._db.executemany("INSERT INTO bands VALUES (?, ?)",
                             ((k, r) for r, row in zip(rows, keys.tolist(), strict=True) for k in row))
        self._db.commit()
        self._n += len(ids)

    def close(self) -> None:
        self._db.close()


class NearDedupe(BatchedStage):
    """Drops a sample whose Jaccard similarity (word shingles) to an earlier kept sample reaches ``threshold``.

    Works in batches of ``batch_size``: numpy shingles and signs the batch, one store query finds
    earlier candidates and one sort checks them all. Pairs inside the batch are checked in input order against the
    batch's own kept samples, so the result equals one-by-one processing (the first of a group is kept), whatever
    the batch size.
    """

    name: ClassVar[str] = "dedupe_near"

    threshold: float = Field(default=0.8, gt=0, le=1)
    num_perm: int = 128
    shingle_words: int = Field(default=5, ge=1)
    text: TextField = "conversation"
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
        self._store = SqliteStore(self.storage, self.num_perm) if self.storage is not None else MemoryStore()

    def unload(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None

    def _earlier(self, sets: tuple[np.ndarray, np.ndarray], keys: np.ndarray) -> tuple[list[float], list[int]]:
        """Per batch sample: the best Jaccard to a stored (earlier kept) candidate and its row (-1: none).

        Ties go to the lowest row, i.e. the earliest kept sample.
        """
        store: BandStore = self._store
        best, best_row = np.zeros(len(keys)), np.full(len(keys), -1, dtype=np.int64)
        local, rows = store.candidates(keys)
        if len(local):
            unique_rows, stored_index = np.unique(rows, return_inverse=True)
            sims = pair_jaccard(sets, local, store.shingle_sets(unique_rows), stored_index)
            order = np.lexsort((rows, -sims, local))
            first = order[np.r_[True, local[order][1:] != local[order][:-1]]]
            best[local[first]], best_row[local[first]] = sims[first], rows[first]
        return best.tolist(), best_row.tolist()

    def process_batch(self, batch: list[Sample]) -> Iterator[Sample]:
        store: BandStore = self._store
        flat, offsets = sets = shingle_sets([sample_text(s, self.text) for s in batch], self.shingle_words)
        keys = band_keys(signatures(flat, offsets, self.num_perm), self._bands)
        best, best_row = self._earlier(sets, keys)
        # band keys two batch samples share: only these need the in-order check against the batch's kept samples
        flat_keys = keys.ravel()
        ordered = np.sort(flat_keys)
        repeated = ordered[1:][ordered[1:] == ordered[:-1]]
        shared = np.isin(flat_keys, repeated).reshape(keys.shape)
        hot: list[bool] = np.asarray(shared.any(axis=1)).tolist()
        local_buckets: dict[int, list[int]] = {}
        kept: list[int] = []
        threshold, record = self.threshold, self.record_similarity
        stats = self.stats  # Stage.keep's bookkeeping, inlined and counted per batch (~12 us a sample otherwise)
        yielded = 0
        try:
            for i, sample in enumerate(batch):
                best_sim, best_id = best[i], (store.sample_id(best_row[i]) if best_row[i] >= 0 else None)
                if hot[i]:
                    my_keys = keys[i][shared[i]].tolist()
                    local = sorted({j for k in my_keys for j in local_buckets.get(k, ())})
                    if local:
                        sims = pair_jaccard(sets, np.full(len(local), i), sets, np.array(local, dtype=np.int64))
                        j = int(np.argmax(sims))
                        if sims[j] > best_sim:
                            best_sim, best_id = float(sims[j]), batch[local[j]].id
                if record:
                    self.best_similarity.append(best_sim)
                if best_id is not None and best_sim >= threshold:
                    self.drop(sample, "near_duplicate", related_id=best_id,
                              detail=f"Jaccard {best_sim:.2f} >= {threshold:g} on {self.text} text")
                    continue
                if hot[i]:
                    for k in my_keys:
                        local_buckets.setdefault(k, []).append(i)
                kept.append(i)
                yielded += 1
                yield sample
        finally:  # also when the consumer stops early: what was yielded is counted
            stats.seen += yielded
            stats.kept += yielded
        if len(kept) == len(batch):
            store.add([s.id for s in batch], sets, keys)
            return
        kept_rows = np.array(kept, dtype=np.int64)
        lengths = offsets[kept_rows + 1] - offsets[kept_rows]
        kept_offsets = np.zeros(len(kept) + 1, dtype=np.int64)
        np.cumsum(lengths, out=kept_offsets[1:])
        store.add([batch[i].id for i in kept], (flat[_gather_index(offsets[kept_rows], lengths)], kept_offsets),
                  keys[kept_rows])
