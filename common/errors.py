"""User-facing errors. The CLI turns each into one line and exit code 2, never a traceback.

Every error names where the problem is (a file, and a field or line within it) so the user can fix it directly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError


class FormaError(Exception):
    """A problem with the user's input or environment, reported as ``file: where: what``."""

    exit_code = 2

    def __init__(self, message: str, *, path: str | Path | None = None, where: str | None = None,
                 hint: str | None = None) -> None:
        self.path = str(path) if path is not None else None
        self.where = where
        self.hint = hint
        self.message = message
        super().__init__(self.render())

    def render(self) -> str:
        parts = [p for p in (self.path, self.where) if p]
        head = ": ".join(parts)
        text = f"{head}: {self.message}" if head else self.message
        return f"{text} ({self.hint})" if self.hint else text


class MissingDependencyError(FormaError):
    """An optional dependency is not installed; says which extra installs it."""

    def __init__(self, package: str, extra: str) -> None:
        super().__init__(f"this needs the '{package}' package", hint=f"install it with: pip install -e '.[{extra}]'")


def require(module: str, extra: str) -> None:
    """Fail early, with an install hint, when an optional heavy dependency is missing (datatrove's habit)."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise MissingDependencyError(module, extra)


def dotted(loc: tuple[Any, ...] | list[Any]) -> str:
    """A pydantic error location as the user wrote it: ``cases[3].expect``, ``suites.safety``."""
    out = ""
    for part in loc:
        if part == "[key]":
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def validation_detail(exc: ValidationError) -> tuple[str, str]:
    """The first problem of a validation error as (location, message), with pydantic's prefixes taken off."""
    first = exc.errors()[0]
    loc = tuple(first["loc"])
    message = first["msg"]
    if first["type"] == "missing":
        message = "required field is missing"
    elif first["type"] == "enum":
        what = "category" if "categories" in loc or "category" in loc else "value"
        message = f"unknown {what} {first.get('input')!r} (expected one of {first.get('ctx', {}).get('expected', '?')})"
    return dotted(loc), message.removeprefix("Value error, ")


def from_validation_error(exc: ValidationError, *, path: str | Path | None = None, where: str | None = None,
                          line: int | None = None, hint: str | None = None) -> FormaError:
    """The one translation of a pydantic error into a FormaError: file, then ``where`` and the field, then line.

    Every reader of user files calls this, so a bad record reads the same whatever file it sits in.
    """
    loc, message = validation_detail(exc)
    more = len(exc.errors()) - 1
    place = ": ".join(p for p in (where, loc) if p) or None
    if line is not None:
        place = f"{place} (line {line})" if place else f"line {line}"
    return FormaError(message + (f"; and {more} more problem(s)" if more else ""), path=path, where=place, hint=hint)
