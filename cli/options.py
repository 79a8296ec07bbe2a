"""Options several commands share, declared once as ``Annotated`` aliases (distilabel's CLI habit).

A command writes ``url: ArgillaUrl = None`` and gets the same flag name, help and default as every other command.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from common.limits import check_url

ArgillaUrl = Annotated[str | None, typer.Option(
    "--url", help="Argilla URL (default: $ARGILLA_API_URL, else http://localhost:6900).", callback=check_url)]
ArgillaKey = Annotated[str | None, typer.Option(
    "--api-key", help="Argilla API key (default: $ARGILLA_API_KEY). Never printed.", show_default=False)]
ArgillaName = Annotated[str | None, typer.Option(
    "--name", help="Argilla dataset name (default: <recipe>-<dataset hash>, from the dataset folder).")]
ArgillaWorkspace = Annotated[str, typer.Option("--workspace", help="Argilla workspace.")]
ReviewJournal = Annotated[Path | None, typer.Option(
    "--journal", help="Journal of fetched responses (default: DATASET_DIR/review/journal.jsonl).")]
MergedOut = Annotated[Path | None, typer.Option(
    "--out", help="Merged dataset version (default: DATASET_DIR-reviewed next to it).")]
Overwrite = Annotated[bool, typer.Option(
    "--overwrite", help="Replace an earlier output of this command in the output folder, as a whole (the new one "
                        "is built beside it and swapped in when complete). Without it an existing output is refused.")]
