"""User-facing errors. The CLI turns each into one line and exit code 2, never a traceback.

Every error names where the problem is (a file, and a field or line within it) so the user can fix it directly.
"""

from __future__ import annotations

from pathlib import Path


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
