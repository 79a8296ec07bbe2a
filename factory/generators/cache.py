"""A content-addressed cache of LLM calls, in SQLite, so a killed build resumes without paying for a call twice.

Why SQLite: one file, safe for several readers while a build writes (WAL), and every reply is committed the moment
it arrives, so a ``SIGKILL`` loses at most the call in flight. The key is a hash of everything that decides a
reply: the model's identity (a GGUF's content hash, or a server URL plus model name), the messages and the
sampling parameters (temperature, max tokens, seed). A changed recipe therefore changes only the keys of the calls
it really changes, and a rebuild pays only for those (distilabel's own cache keys whole batches by step signature,
which is why its users report caches that do not resume: distilabel #1065).

Every real call is also appended to a ``calls`` log (key, time, run id), which is how tests prove that a resumed
build repeated no call.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.errors import FormaError
from common.hashing import sha256_file

SCHEMA = """
CREATE TABLE IF NOT EXISTS replies (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    request TEXT NOT NULL,
    text TEXT NOT NULL,
    input_tokens INTEGER,
    output_tokens INTEGER,
    seconds REAL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS calls (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    run TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS digests (
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    digest TEXT NOT NULL,
    PRIMARY KEY (path, size, mtime_ns)
);
"""


@dataclass(frozen=True)
class Reply:
    """One model reply as the cache keeps it."""

    text: str
    input_tokens: int | None = None
    output_tokens: int | None = None
    seconds: float | None = None
    cached: bool = False


def request_key(model_id: str, messages: list[dict[str, str]], params: dict[str, Any]) -> str:
    """The cache key of one call: sha256 of the canonical JSON of model, messages and sampling parameters."""
    payload = json.dumps({"model": model_id, "messages": messages, "params": params}, sort_keys=True,
                         ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class LLMCache:
    """The reply cache of one build folder. Thread-safe: concurrent server requests write through one connection."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.run_id = uuid.uuid4().hex[:12]
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(path), check_same_thread=False, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(SCHEMA)
            self._db.commit()
        except sqlite3.DatabaseError as exc:
            raise FormaError(f"cannot open the LLM cache: {exc}", path=path,
                             hint="delete the file to start the cache afresh") from None
        self.hits = 0
        self.misses = 0

    # replies ---------------------------------------------------------------------------------------------------
    def get(self, key: str) -> Reply | None:
        with self._lock:
            row = self._db.execute("SELECT text, input_tokens, output_tokens, seconds FROM replies WHERE key = ?",
                                   (key,)).fetchone()
        if row is None:
            return None
        self.hits += 1
        return Reply(text=row[0], input_tokens=row[1], output_tokens=row[2], seconds=row[3], cached=True)

    def put(self, key: str, model_id: str, request: dict[str, Any], reply: Reply) -> None:
        """Store a fresh reply and log the call; committed at once so a killed build keeps it."""
        self.misses += 1
        now = time.time()
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO replies (key, model, request, text, input_tokens, output_tokens, seconds, "
                "created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (key, model_id, json.dumps(request, ensure_ascii=False, sort_keys=True), reply.text,
                 reply.input_tokens, reply.output_tokens, reply.seconds, now))
            self._db.execute("INSERT INTO calls (key, run, created) VALUES (?, ?, ?)", (key, self.run_id, now))
            self._db.commit()

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM replies").fetchone()[0])

    def call_log(self) -> list[tuple[str, str]]:
        """``(key, run id)`` of every real call ever made into this cache, oldest first."""
        with self._lock:
            return [(r[0], r[1]) for r in self._db.execute("SELECT key, run FROM calls ORDER BY id")]

    # model identity --------------------------------------------------------------------------------------------
    def file_digest(self, path: Path) -> str:
        """sha256 of a model file, memoized by (path, size, mtime) so a multi-GB GGUF is hashed once."""
        st = path.stat()
        ident = (str(path.resolve()), st.st_size, st.st_mtime_ns)
        with self._lock:
            row = self._db.execute("SELECT digest FROM digests WHERE path = ? AND size = ? AND mtime_ns = ?",
                                   ident).fetchone()
        if row is not None:
            return str(row[0])
        digest = sha256_file(path)
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO digests VALUES (?, ?, ?, ?)", (*ident, digest))
            self._db.commit()
        return digest

    def close(self) -> None:
        with self._lock:
            self._db.close()




def count_replies(path: Path) -> int:
    """Replies stored in a cache file (0 when there is none); used to refuse clobbering a cache without --resume."""
    if not path.is_file():
        return 0
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30) as db:
            return int(db.execute("SELECT COUNT(*) FROM replies").fetchone()[0])
    except sqlite3.DatabaseError:
        return 0
