"""``forma filter`` (run the build's filter stages over an existing JSONL) and ``forma report`` (the HTML report).

``forma filter`` is for data that did not come from ``forma build``: imported chats, or an LLM's output. It reads
the file line by line (bad lines are quarantined with their reason), runs the same stages a build would
(validate, decontaminate, exact / near / semantic dedupe, configured by the recipe), and writes ``samples.jsonl``,
``rejects.jsonl``, ``manifest.json`` and the report. ``--near-store FILE`` keeps the near-duplicate index in sqlite
so a corpus far larger than memory streams through.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from cli.options import Overwrite

out = Console(markup=False, highlight=False, soft_wrap=True)  # paths and messages print as written (brackets survive)


def filter_file(source: Path, recipe_path: Path, out_dir: Path, *, near_store: Path | None = None,
                report: bool = True, overwrite: bool = False) -> dict[str, Any]:
    """Filter ``source`` into ``out_dir``; returns the manifest written. Streams: one batch in memory at a time.

    The folder appears only when complete (common.outdir); an earlier filter output there is replaced as a whole
    only with ``overwrite``; a source inside the folder, or a folder of another kind, is refused before any work.
    """
    from common.outdir import output_folder
    from factory.recipe_loader import load_recipe
    from factory.report import publish_report, write_report

    loaded = load_recipe(recipe_path)
    with output_folder(out_dir, "filtered", overwrite=overwrite, inputs=[source, near_store]) as work:
        manifest = _filter_into(source, loaded, work, near_store)
        if report and manifest["total"]:
            write_report(work, work / "report", backend=loaded.recipe.dedupe.embedding_backend,
                         model_path=loaded.recipe.dedupe.embedding_model)
    if report and manifest["total"]:
        publish_report(out_dir / "report", out_dir.name)
    return manifest


def _filter_into(source: Path, loaded: Any, out_dir: Path, near_store: Path | None) -> dict[str, Any]:
    from factory.build import filter_stages
    from factory.stages.base import RejectWriter
    from factory.stages.near import NearDedupe
    from factory.stages.reader import JsonlReader

    reader = JsonlReader(recipe=loaded.recipe.name, recipe_hash=loaded.recipe.content_hash())
    stages = filter_stages(loaded)
    for stage in stages:
        if isinstance(stage, NearDedupe) and near_store is not None:
            stage.storage = near_store
    kept: Counter[str] = Counter()
    with RejectWriter(out_dir / "rejects.jsonl") as rejects, \
            (out_dir / "samples.jsonl").open("w", encoding="utf-8") as sink:
        for stage in (reader, *stages):
            stage.bind(rejects)
            stage.load()
        stream = reader.read(source)
        for stage in stages:
            stream = stage.run(stream)
        for sample in stream:
            kept[sample.category.value] += 1
            sink.write(json.dumps(sample.model_dump(mode="json"), ensure_ascii=False, sort_keys=True) + "\n")
        for stage in stages:
            stage.unload()
        n_rejects = rejects.count
    manifest: dict[str, Any] = {
        "recipe": loaded.recipe.name, "recipe_hash": loaded.recipe.content_hash(), "source": str(source),
        "total": sum(kept.values()), "counts": dict(sorted(kept.items())), "rejects": n_rejects,
        "stages": [s.stats.model_dump() for s in (reader, *stages)],
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return manifest


def filter_command(source: Path = typer.Argument(..., help="JSONL of samples (Sample records, or chats with a "
                                                           "category: messages or ShareGPT conversations)."),
                   recipe: Path = typer.Option(..., "--recipe", "-r", help="Recipe whose filter settings apply."),
                   out_dir: Path = typer.Option(..., "--out", "-o", help="Output folder."),
                   near_store: Path = typer.Option(None, help="sqlite file for the near-duplicate index "
                                                              "(out of core, for corpora larger than memory)."),
                   no_report: bool = typer.Option(False, "--no-report", help="Skip the HTML report."),
                   overwrite: Overwrite = False) -> None:
    """Run validation, decontamination and dedupe over an existing JSONL; every drop goes to rejects.jsonl.

    OUT appears only when complete. An existing filter output there is refused unless --overwrite (then replaced
    as a whole); a folder of anything else, or one holding the input, is always refused.
    """

    def body() -> None:
        manifest = filter_file(source, recipe, out_dir, near_store=near_store, report=not no_report,
                               overwrite=overwrite)
        table = Table(title=f"{manifest['total']} kept -> {out_dir}")
        for column in ("stage", "seen", "kept", "dropped", "reasons"):
            table.add_column(column)
        for s in manifest["stages"]:
            table.add_row(s["stage"], str(s["seen"]), str(s["kept"]), str(s["dropped"]),
                          ", ".join(f"{k}: {v}" for k, v in s["reasons"].items()))
        out.print(table)
        out.print(f"rejects: {manifest['rejects']} (see {out_dir / 'rejects.jsonl'})")

    body()


def report_command(dataset: Path = typer.Argument(..., help="A dataset folder (the --out of build or filter)."),
                   out_dir: Path = typer.Option(None, "--out", "-o", help="Default: reports/<folder name>/."),
                   backend: str = typer.Option("auto", help="Encoder for the similarity plot: auto, static, minilm."),
                   no_similarity: bool = typer.Option(False, "--no-similarity",
                                                      help="Skip the nearest-neighbour plot (no embedding)."),
                   overwrite: Overwrite = False) -> None:
    """Write report.html (plots inline) and report.json for a dataset folder.

    The report folder appears only when complete; an earlier report there is replaced only with --overwrite.
    """

    def body() -> None:
        from common.errors import FormaError
        from common.paths import reports_root
        from factory.report import write_report_folder

        if backend not in ("auto", "static", "minilm"):
            raise FormaError(f"unknown backend {backend!r}", where="--backend", hint="auto, static or minilm")
        target = out_dir or reports_root() / dataset.resolve().name
        data = write_report_folder(dataset, target, overwrite=overwrite, similarity=not no_similarity,
                                   backend=backend)
        out.print(f"ok {target / 'report.html'} ({data['total']} samples)")

    body()


def register(app: typer.Typer) -> None:
    app.command("filter")(filter_command)
    app.command("report")(report_command)
