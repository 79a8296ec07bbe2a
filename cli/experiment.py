"""``forma experiment EXPERIMENT.yaml``: arms built, trained, exported and gated alike, then compared.

The work is :func:`experiment.runner.run_experiment`; this module parses options and prints one line per step.
"""

from __future__ import annotations

from pathlib import Path

import typer


def experiment(
    file: Path = typer.Argument(..., help="Experiment YAML (see recipes/experiments/behaviours.yaml)."),
    only: list[str] = typer.Option(None, "--only", help="Run only this step (build, train, export, eval, compare); "
                                   "repeatable. Steps already done are reused either way."),
    out_dir: Path = typer.Option(None, "--out", "-o", help="Override the experiment's out folder."),
) -> None:
    """Build, train, export and evaluate every arm (the untrained base first), then compare them case by case."""
    from rich.console import Console

    from experiment.runner import run_experiment
    from experiment.spec import STEPS

    console = Console(highlight=False, soft_wrap=True)
    result = run_experiment(file, only=only or STEPS, out=out_dir, log=console.print)
    pending = [name for name, steps in result.arms.items() if "eval" not in steps]
    console.print(f"arms finished now: {', '.join(result.finished_now) or 'none'}; done before: "
                  f"{', '.join(result.skipped_done) or 'none'}; not finished: {', '.join(pending) or 'none'}")
    if result.comparison is not None:
        console.print(f"comparison: {result.comparison.with_suffix('.md')}")


def register(app: typer.Typer) -> None:
    app.command("experiment")(experiment)
