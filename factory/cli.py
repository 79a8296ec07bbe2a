"""The ``forma`` command line. One entry point; each area registers its own commands.

Heavy libraries (torch, transformers, llama.cpp, argilla) are imported inside command bodies, so ``forma --help``
and ``forma recipe check`` stay instant.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console

from factory.errors import FormaError

app = typer.Typer(name="forma", help="Forma Data Factory: build, review, train, export and gate a fitness chat model.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
err = Console(stderr=True)

#: Modules that add commands: each defines ``register(app: typer.Typer) -> None``.
COMMAND_MODULES = (
    "factory.commands",
    "factory.filter_commands",
    "factory.review.commands",
    "train.commands",
    "train.export_commands",
    "eval.commands",
)


def _register_all() -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(app)


def run_guarded(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a command body; a :class:`FormaError` becomes one red line on stderr and exit code 2."""
    try:
        return fn(*args, **kwargs)
    except FormaError as exc:
        err.print(f"[bold red]error:[/] {exc.render()}", highlight=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None


def main() -> None:
    _register_all()
    try:
        app()
    except FormaError as exc:  # raised outside run_guarded, e.g. while parsing options
        err.print(f"[bold red]error:[/] {exc.render()}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
