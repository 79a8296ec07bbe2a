"""Review progress per category and per annotator, and why experts reject, read live from Argilla (nothing is
written)."""

from __future__ import annotations

from collections import Counter, defaultdict

from pydantic import BaseModel

from review.client import ArgillaClient
from review.reasons import ReasonRow, ReasonSummary, row, summarise


class StatusReport(BaseModel):
    dataset: str
    total: int
    completed: int
    min_submitted: int | None
    by_category: dict[str, dict[str, int]]  # category -> {"records", "completed", "pending"}
    by_annotator: dict[str, dict[str, int]]  # user -> {"submitted", "discarded", "draft"}
    reasons: ReasonSummary  # over submitted responses, pending records included


def review_status(client: ArgillaClient, name: str, *, workspace: str = "argilla") -> StatusReport:
    client.me()
    dataset = client.get_dataset(name, workspace)
    users = client.usernames()
    by_category: dict[str, Counter[str]] = defaultdict(Counter)
    by_annotator: dict[str, Counter[str]] = defaultdict(Counter)
    total = completed = 0
    rows: list[ReasonRow] = []
    for record in client.iter_records(dataset["id"], include=("responses",)):
        total += 1
        category = str((record.get("metadata") or {}).get("category", "unknown"))
        status = str(record.get("status", "pending"))
        completed += status == "completed"
        by_category[category]["records"] += 1
        by_category[category][status] += 1
        for response in record.get("responses") or []:
            user_id = str(response["user_id"])
            user = users.get(user_id, user_id)
            by_annotator[user][str(response["status"])] += 1
            values = {k: (v or {}).get("value") for k, v in (response.get("values") or {}).items()}
            found = row(record["external_id"], user, values, record.get("metadata") or {})
            if response["status"] == "submitted" and found is not None:
                rows.append(found)
    return StatusReport(
        dataset=name, total=total, completed=completed,
        min_submitted=(dataset.get("distribution") or {}).get("min_submitted"),
        by_category={c: {k: v.get(k, 0) for k in ("records", "completed", "pending")}
                     for c, v in sorted(by_category.items())},
        by_annotator={u: {k: v.get(k, 0) for k in ("submitted", "discarded", "draft")}
                      for u, v in sorted(by_annotator.items())},
        reasons=summarise(rows))
