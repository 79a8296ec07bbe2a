"""Annotator accounts: each expert signs in with a login of their own, never the owner's.

Two experts sharing one login overwrite each other's responses (Argilla keeps one response per user and record),
and the majority of two annotators can never happen. ``forma review users add NAME`` creates an ``annotator``
(who can answer but not change datasets or settings) in the workspace; ``list`` shows every account.
"""

from __future__ import annotations

import re
import secrets
from typing import Any

from pydantic import BaseModel

from common.errors import FormaError
from review.client import ArgillaClient

OWNER = "argilla"  # the account `forma review serve` creates; its key runs push and pull
_NAME = re.compile(r"^[a-z0-9_.-]{2,60}$")


class UserInfo(BaseModel):
    username: str
    role: str
    workspaces: list[str]
    created: bool = False


def _users(owner: ArgillaClient) -> dict[str, dict[str, Any]]:
    return {u["username"]: u for u in owner.request("GET", "/users")["items"]}


def add_user(owner: ArgillaClient, username: str, password: str | None = None, *, workspace: str = "argilla",
             role: str = "annotator") -> tuple[UserInfo, str | None]:
    """Create ``username`` (or find it) and make it a member of ``workspace``.

    Returns the user and the password when one was generated for a new user (None when it existed or was given).
    """
    if not _NAME.match(username):
        raise FormaError(f"{username!r} is not a valid user name", where="NAME",
                         hint="2 to 60 lowercase letters, digits, '.', '_' or '-'")
    if username == OWNER:
        raise FormaError("the owner's login is for push and pull, not for reviewing", where=username,
                         hint="give each expert a login of their own")
    if role not in {"annotator", "admin"}:
        raise FormaError(f"role {role!r} is not one of annotator, admin", where="--role")
    if password is not None and len(password) < 8:
        raise FormaError("the password must be at least 8 characters", where="--password")
    owner.me()
    existing = _users(owner).get(username)
    generated = None
    if existing is None:
        generated = None if password else secrets.token_urlsafe(12)
        existing = owner.request("POST", "/users", json={
            "username": username, "password": password or generated, "first_name": username, "role": role})
    ws_id = owner.workspace_id(workspace)
    members = {u["username"] for u in owner.request("GET", f"/workspaces/{ws_id}/users")["items"]}
    if username not in members:
        owner.request("POST", f"/workspaces/{ws_id}/users", json={"user_id": existing["id"]})
    info = next(u for u in list_users(owner) if u.username == username)
    return info.model_copy(update={"created": generated is not None or password is not None}), generated


def list_users(owner: ArgillaClient) -> list[UserInfo]:
    owner.me()
    out = []
    for user in sorted(_users(owner).values(), key=lambda u: u["username"]):
        spaces = owner.request("GET", f"/users/{user['id']}/workspaces")["items"]
        out.append(UserInfo(username=user["username"], role=user["role"],
                            workspaces=sorted(w["name"] for w in spaces)))
    return out


def login(url: str, username: str, password: str) -> ArgillaClient:
    """A client holding the user's own bearer token (``POST /api/v1/token``), as the UI signs in."""
    import requests

    answer = requests.post(f"{url}/api/v1/token", data={"username": username, "password": password}, timeout=30)
    if answer.status_code in (401, 403):
        raise FormaError(f"Argilla at {url} refused the login of {username!r}", hint="check the password")
    answer.raise_for_status()
    return ArgillaClient(url, answer.json()["access_token"], bearer=True)
