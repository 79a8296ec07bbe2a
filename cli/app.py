"""The ``forma`` command line: the one place that wires every area's commands together, and the one error boundary.

Reading this file lists every command group in the order of the flow (recipes -> build -> filter -> review ->
train -> export -> eval -> release -> loop). Command modules never import this file back. Heavy libraries (torch,
transformers, llama.cpp, argilla) are imported inside command bodies, so ``forma --help`` stays instant.

A :class:`FormaError` anywhere below becomes one red line on stderr and exit code 2; any other exception becomes one
line naming it and the log file that holds its traceback (exit 2); ``FORMA_DEBUG=1`` shows the traceback instead,
for bug reports. Ctrl-C is one line and exit 130. Messages print as plain text: brackets in a path survive.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from typer.core import TyperGroup

from cli import build, diff, experiment, export, review, train
from cli import eval as eval_commands
from cli import filter as filter_commands
from common import quiet
from common.errors import FormaError

DEBUG_ENV = "FORMA_DEBUG"

err = Console(stderr=True, markup=False, highlight=False, soft_wrap=True)


def _error_line(text: str) -> None:
    err.print("error:", style="bold red", end=" ")
    err.print(text)


def _crash_log(exc: BaseException) -> Path:
    """Write the traceback of an unexpected exception to the cache's log folder; return the file."""
    from common.model_paths import cache_root

    folder = cache_root() / "logs"
    text = "".join(traceback.format_exception(exc))
    try:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
        path.write_text(f"forma {' '.join(sys.argv[1:])}\n{text}", encoding="utf-8")
    except OSError:
        path = Path(tempfile.gettempdir()) / f"forma-crash-{os.getpid()}.log"
        path.write_text(text, encoding="utf-8")
    return path


def _is_cli_flow(exc: Exception) -> bool:
    """Exit codes, usage errors and aborts of typer and (its vendored) click: theirs to print, not crashes."""
    return any(cls.__module__.split(".")[0] in ("click", "typer") for cls in type(exc).__mro__)


class _ErrorBoundary(TyperGroup):
    """The root group: every command runs inside its ``invoke``, so this is the one place errors are caught."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except FormaError as exc:
            if os.environ.get(DEBUG_ENV):
                raise
            _error_line(exc.render())
            raise typer.Exit(exc.exit_code) from None
        except BrokenPipeError:
            # the reader went away (``forma ... | head``): nothing left to tell anyone. Point stdout at /dev/null so
            # the interpreter's final flush does not raise again (the Python docs' recipe for SIGPIPE).
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            _error_line("interrupted; nothing was left half-written under an output's name")
            raise typer.Exit(130) from None
        except Exception as exc:
            if os.environ.get(DEBUG_ENV) or _is_cli_flow(exc):
                raise
            log = _crash_log(exc)
            where = traceback.extract_tb(exc.__traceback__)[-1]
            _error_line(f"unexpected {type(exc).__name__}: {exc} (in {Path(where.filename).name}:{where.lineno}; "
                        f"traceback in {log}; {DEBUG_ENV}=1 shows it here)")
            raise typer.Exit(2) from None


app = typer.Typer(cls=_ErrorBoundary, name="forma",
                  help="Forma Data Factory: build, review, train, export and gate a fitness chat model.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)

for module in (build, filter_commands, review, train, export, eval_commands, experiment, diff):
    module.register(app)


@app.callback()
def _quiet_by_default() -> None:
    """Third-party warnings and progress bars go to the cache's logs/third-party.log (FORMA_VERBOSE=1 shows them)."""
    quiet.setup()


def main() -> None:
    """Entry point: run the app; a user-facing error is one line and exit 2 (unless ``FORMA_DEBUG`` is set)."""
    app()


if __name__ == "__main__":
    main()
