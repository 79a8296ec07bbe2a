"""``forma diff OLD_BUILD NEW_BUILD``: what differs between two dataset builds (Markdown, or ``--json``)."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def diff(old: Path = typer.Argument(..., help="The older `forma build` folder."),
         new: Path = typer.Argument(..., help="The newer `forma build` folder."),
         as_json: bool = typer.Option(False, "--json", help="Print the whole diff as JSON.")) -> None:
    """Samples added, removed and changed by category, behaviour, persona and fact; funnel; recipe; lineage."""
    from experiment.diff import diff_builds, render_markdown

    result = diff_builds(old, new)
    typer.echo(json.dumps(result, indent=2, ensure_ascii=False) if as_json else "\n".join(render_markdown(result)))


def register(app: typer.Typer) -> None:
    app.command("diff")(diff)
