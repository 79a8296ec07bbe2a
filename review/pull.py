"""Pull the experts' responses from Argilla into the local journal (the merge happens after, from the journal).

Only completed records are fetched by default (a record completes when the dataset's minimum number of submissions
is reached), so a merge never acts on half-reviewed records; ``include_pending`` fetches every response. The
schema is checked before anything is read, and the journal is written before anything else is done.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from review.client import ArgillaClient
from review.journal import JournalEntry, append_journal
from review.settings import check_schema, server_signature


class PullResult(BaseModel):
    dataset: str
    records_seen: int
    records_fetched: int
    responses_fetched: int
    responses_new: int
    journal: Path
    seconds: float


def _values(raw: dict[str, Any] | None) -> dict[str, Any]:
    """``{"q": {"value": v}}`` -> ``{"q": v}``; a discarded response may carry null values."""
    return {name: (item or {}).get("value") for name, item in (raw or {}).items()}


def pull(client: ArgillaClient, name: str, journal: Path, *, workspace: str = "argilla",
         include_pending: bool = False) -> PullResult:
    started = time.perf_counter()
    client.me()
    dataset = client.get_dataset(name, workspace)
    check_schema(name, server_signature(client.dataset_settings(dataset["id"])))
    users = client.usernames()
    min_submitted = (dataset.get("distribution") or {}).get("min_submitted")
    fetched_at = datetime.now(UTC).isoformat(timespec="seconds")
    entries: list[JournalEntry] = []
    seen = fetched = 0
    for record in client.iter_records(dataset["id"], include=("responses",)):
        seen += 1
        if not include_pending and record.get("status") != "completed":
            continue
        fetched += 1
        for response in record.get("responses") or []:
            user_id = str(response["user_id"])
            entries.append(JournalEntry(
                sample_id=record["external_id"], user=users.get(user_id, user_id), user_id=user_id,
                status=response["status"], values=_values(response.get("values")),
                updated_at=response.get("updated_at") or response.get("inserted_at") or "", dataset=name,
                record_id=str(record["id"]), record_status=record.get("status", ""), min_submitted=min_submitted,
                fetched_at=fetched_at))
    new = append_journal(journal, entries)
    journal.parent.mkdir(parents=True, exist_ok=True)
    journal.touch()  # an empty journal is a valid answer: nothing completed yet
    return PullResult(dataset=name, records_seen=seen, records_fetched=fetched, responses_fetched=len(entries),
                      responses_new=len(new), journal=journal, seconds=round(time.perf_counter() - started, 3))
