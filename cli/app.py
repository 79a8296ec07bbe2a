"""The ``forma`` command line: the one place that wires every area's commands together, and the one error boundary.

Reading this file lists every command group in the order of the flow (recipes -> build -> filter -> review ->
train -> export -> eval -> release -> loop). Command modules never import this file back. Heavy libraries (torch,
transformers, llama.cpp, argilla) are imported inside command bodies, so ``forma --help`` stays instant.

A :class:`FormaError` anywhere below becomes one red line on stderr and exit code 2; ``FORMA_DEBUG=1`` shows the
traceback instead, for bug reports.
"""

from __future__ import annotations

import os
from typing import Any

import typer
from rich.console import Console
from typer.core import TyperGroup

from cli import build, diff, experiment, export, review, train
from cli import eval as eval_commands
from cli import filter as filter_commands
from common.errors import FormaError

DEBUG_ENV = "FORMA_DEBUG"

err = Console(stderr=True)


class _ErrorBoundary(TyperGroup):
    """The root group: every command runs inside its ``invoke``, so this is the one place errors are caught."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except FormaError as exc:
            if os.environ.get(DEBUG_ENV):
                raise
            err.print(f"[bold red]error:[/] {exc.render()}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None


app = typer.Typer(cls=_ErrorBoundary, name="forma",
                  help="Forma Data Factory: build, review, train, export and gate a fitness chat model.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)

for module in (build, filter_commands, review, train, export, eval_commands, experiment, diff):
    module.register(app)


def main() -> None:
    """Entry point: run the app; a user-facing error is one line and exit 2 (unless ``FORMA_DEBUG`` is set)."""
    app()


if __name__ == "__main__":
    main()
