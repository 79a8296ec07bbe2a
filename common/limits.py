"""Numbers and addresses from the command line, checked before any work: one line naming the option, never a
traceback from deep inside a client library.

Each check is a typer callback (``callback=check_port``): it returns the value, or raises a FormaError that the
root error boundary prints as one line with exit code 2.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from common.errors import FormaError


def check_port(value: int | None) -> int | None:
    """A TCP port: 0 (any free port) to 65535."""
    if value is not None and not 0 <= value <= 65535:
        raise FormaError(f"port {value} is out of range", where="--port",
                         hint="0 (any free port) to 65535")
    return value


def check_url(value: str | None) -> str | None:
    """An http(s) URL with a host (and a valid port, if it names one), given to ``--url``."""
    return _check_url(value, "--url")


def _check_url(value: str | None, where: str) -> str | None:
    # typer passes a callback's context to any second parameter, so the option's name travels here, not there
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FormaError(f"not an http(s) URL: {value!r}", where=where, hint="e.g. http://localhost:6900")
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number or out of range
    except ValueError:
        raise FormaError(f"the port in {value!r} is not a number from 1 to 65535", where=where) from None
    return value


def url_check(option: str) -> Any:
    """A callback checking an http(s) URL given to ``option`` (e.g. ``--endpoint``), named in the error."""
    def check(value: str | None) -> str | None:
        return _check_url(value, option)

    return check


def batch_size_check(most: int) -> Any:
    """A callback for a batch size from 1 to ``most``."""
    def check(value: int | None) -> int | None:
        if value is not None and not 1 <= value <= most:
            raise FormaError(f"batch size {value} is out of range", where="--batch-size",
                             hint=f"1 to {most}")
        return value

    return check
