"""The local journal of fetched responses: JSON lines, append-only, written before anything is merged.

Every response a pull fetches lands here first (fsync'd), so a crash, a changed schema or a deleted Argilla dataset
cannot lose an expert's work. A response already in the journal unchanged is not appended again; a changed one
(an expert edited a submission) is appended, and the merge reads the latest per record and annotator.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from common.errors import FormaError


class JournalEntry(BaseModel):
    """One annotator's response to one record, as fetched."""

    model_config = ConfigDict(extra="forbid")

    sample_id: str
    user: str
    user_id: str
    status: str  # submitted | discarded | draft
    values: dict[str, Any]
    updated_at: str
    dataset: str
    record_id: str
    record_status: str
    min_submitted: int | None = None
    fetched_at: str

    def key(self) -> tuple[str, str, str, str, str]:
        """Identity of the response's content: a re-fetch of the same state has the same key."""
        return (self.sample_id, self.user_id, self.updated_at, self.status,
                json.dumps(self.values, sort_keys=True))


def read_journal(path: Path) -> list[JournalEntry]:
    if not path.is_file():
        return []
    entries: list[JournalEntry] = []
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                entries.append(JournalEntry.model_validate_json(line))
            except ValueError:
                if number == _line_count(path) and not line.endswith("\n"):
                    break  # a torn last line from a killed writer: the next pull fetches that response again
                raise FormaError("not a journal entry", path=path, where=f"line {number}") from None
    return entries


def _line_count(path: Path) -> int:
    with path.open("rb") as fh:
        return sum(1 for _ in fh)


def append_journal(path: Path, entries: list[JournalEntry]) -> list[JournalEntry]:
    """Append the entries not already journaled; fsync before returning. Returns what was appended."""
    known = {e.key() for e in read_journal(path)}
    fresh: list[JournalEntry] = []
    for entry in entries:
        if entry.key() not in known:
            known.add(entry.key())
            fresh.append(entry)
    if not fresh:
        return []
    path.parent.mkdir(parents=True, exist_ok=True)
    _heal_torn_tail(path)
    with path.open("a", encoding="utf-8") as fh:
        for entry in fresh:
            fh.write(json.dumps(entry.model_dump(mode="json"), ensure_ascii=False, sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return fresh


def _heal_torn_tail(path: Path) -> None:
    """Cut an unterminated last line (a writer killed mid-line) so appends start on a line of their own."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return
    cut = data.rfind(b"\n") + 1
    with path.open("r+b") as fh:
        fh.truncate(cut)


def latest_responses(entries: list[JournalEntry]) -> dict[str, dict[str, JournalEntry]]:
    """sample id -> user -> the user's latest response (by ``updated_at``, then journal order)."""
    out: dict[str, dict[str, JournalEntry]] = {}
    for entry in entries:
        per_user = out.setdefault(entry.sample_id, {})
        have = per_user.get(entry.user_id)
        if have is None or entry.updated_at >= have.updated_at:
            per_user[entry.user_id] = entry
    return out
