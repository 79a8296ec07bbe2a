"""A thin client for the Argilla v1 HTTP API, with errors a user can act on.

The SDK creates datasets (its settings classes are the documented way); records and responses go over plain HTTP
because SDK 2.8.0 crashes reading a record that holds a discarded response with null values, and because a bulk
upsert per batch gives exact control over batching, progress and resumption. The API key is sent in a header and
never formatted into a message, a log line or a report.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from pydantic import SecretStr

from common.errors import FormaError

DEFAULT_URL = "http://localhost:6900"
PAGE = 1000  # the server's maximum page size for record listings
MAX_BULK = 500  # the server's maximum records per bulk upsert


def resolve_credentials(url: str | None, api_key: str | SecretStr | None) -> tuple[str, SecretStr]:
    """Flag first, then ``ARGILLA_API_URL`` / ``ARGILLA_API_KEY``; a missing key is a clear error."""
    url = (url or os.environ.get("ARGILLA_API_URL") or DEFAULT_URL).rstrip("/")
    if isinstance(api_key, SecretStr):
        key = api_key
    else:
        raw = api_key or os.environ.get("ARGILLA_API_KEY")
        if not raw:
            raise FormaError("no Argilla API key", where="ARGILLA_API_KEY",
                             hint="set ARGILLA_API_KEY or pass --api-key (`forma review serve` writes one to its "
                                  "credentials file)")
        key = SecretStr(raw)
    return url, key


class ArgillaClient:
    """One session against one server. Every failure becomes a :class:`FormaError` that names the URL only."""

    def __init__(self, url: str | None = None, api_key: str | SecretStr | None = None, *, timeout: float = 60,
                 bearer: bool = False) -> None:
        import requests

        self.url, self._key = resolve_credentials(url, api_key)
        self.timeout = timeout
        self.session = requests.Session()
        if bearer:  # an annotator's token from POST /api/v1/token
            self.session.headers["Authorization"] = f"Bearer {self._key.get_secret_value()}"
        else:
            self.session.headers["X-Argilla-Api-Key"] = self._key.get_secret_value()

    # -- plumbing ---------------------------------------------------------------------------------------------
    def request(self, method: str, path: str, *, ok: tuple[int, ...] = (200, 201, 204), **kwargs: Any) -> Any:
        import requests

        try:
            answer = self.session.request(method, f"{self.url}/api/v1{path}", timeout=self.timeout, **kwargs)
        except requests.ConnectionError:
            raise FormaError(f"cannot reach Argilla at {self.url}", hint="is the server running? "
                             "start one with `forma review serve`, or set --url / ARGILLA_API_URL") from None
        except requests.Timeout:
            raise FormaError(f"Argilla at {self.url} did not answer within {self.timeout:.0f} s") from None
        if answer.status_code == 401:
            raise FormaError(f"Argilla at {self.url} rejected the API key (401 Unauthorized)",
                             hint="check ARGILLA_API_KEY or --api-key")
        if answer.status_code == 403:
            raise FormaError(f"the API key's user may not do this on {self.url} (403 Forbidden)",
                             where=f"{method} {path}", hint="use an owner or admin key")
        if answer.status_code not in ok:
            detail = _detail(answer)
            raise FormaError(f"Argilla answered {answer.status_code}: {detail}", where=f"{method} {path}")
        if answer.status_code == 204 or not answer.content:
            return None
        try:
            return answer.json()
        except ValueError:
            raise FormaError(f"{self.url} does not look like an Argilla server (the answer is not JSON)",
                             where=f"{method} {path}") from None

    def sdk(self) -> Any:
        """An SDK client on the same server and key (it becomes the SDK's default client)."""
        import argilla as rg

        return rg.Argilla(api_url=self.url, api_key=self._key.get_secret_value(), retries=0)

    # -- reads ------------------------------------------------------------------------------------------------
    def me(self) -> dict[str, Any]:
        answer: dict[str, Any] = self.request("GET", "/me")
        return answer

    def workspace_id(self, name: str) -> str:
        for ws in self.request("GET", "/me/workspaces")["items"]:
            if ws["name"] == name:
                return str(ws["id"])
        raise FormaError(f"no workspace named {name!r} on {self.url}", where="--workspace",
                         hint="create it in Argilla or pick an existing one")

    def find_dataset(self, name: str, workspace: str) -> dict[str, Any] | None:
        ws_id = self.workspace_id(workspace)
        for ds in self.request("GET", "/me/datasets", params={"name": name, "workspace_id": ws_id})["items"]:
            if ds["name"] == name:
                return dict(ds)
        return None

    def get_dataset(self, name: str, workspace: str) -> dict[str, Any]:
        found = self.find_dataset(name, workspace)
        if found is None:
            raise FormaError(f"no dataset named {name!r} in workspace {workspace!r} on {self.url}",
                             hint="push it first with `forma review push`, or pass --name")
        return found

    def dataset_settings(self, dataset_id: str) -> dict[str, Any]:
        return {
            "fields": self.request("GET", f"/datasets/{dataset_id}/fields")["items"],
            "questions": self.request("GET", f"/datasets/{dataset_id}/questions")["items"],
            "metadata": self.request("GET", f"/me/datasets/{dataset_id}/metadata-properties")["items"],
            "vectors": self.request("GET", f"/datasets/{dataset_id}/vectors-settings")["items"],
        }

    def iter_records(self, dataset_id: str, include: tuple[str, ...] = ("responses",)) -> Iterator[dict[str, Any]]:
        """Every record of a dataset, in insertion order, a page at a time (no search engine involved)."""
        offset = 0
        while True:
            page = self.request("GET", f"/datasets/{dataset_id}/records",
                                params={"include": list(include), "offset": offset, "limit": PAGE})
            items = page["items"]
            yield from items
            offset += len(items)
            if not items or offset >= page.get("total", offset):
                return

    def usernames(self) -> dict[str, str]:
        return {str(u["id"]): u["username"] for u in self.request("GET", "/users")["items"]}

    # -- writes -----------------------------------------------------------------------------------------------
    def bulk_upsert(self, dataset_id: str, items: list[dict[str, Any]]) -> int:
        """Create or update records by ``external_id`` in one transaction; returns how many were updates."""
        answer = self.request("PUT", f"/datasets/{dataset_id}/records/bulk", json={"items": items})
        return len(answer.get("updated_item_ids", []))


def _detail(answer: Any) -> str:
    try:
        body = answer.json()
    except ValueError:
        return answer.text[:200] or answer.reason
    detail = body.get("detail", body) if isinstance(body, dict) else body
    if isinstance(detail, dict):
        detail = detail.get("params", {}).get("message") or detail.get("message") or detail
    return str(detail)[:300]
