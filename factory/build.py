"""``forma build``: recipe -> plan -> generate -> filter -> balance -> split -> export.

Balancing never resamples: when filters drop samples, the planner makes new slots for the categories in deficit and
the generator fills them, until every category holds its quota exactly (or the generator cannot find anything new,
which is an error naming the category).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from common import __version__
from common.errors import FormaError, from_validation_error
from common.hashing import sha256_file
from common.jsonl import write_jsonl
from common.outdir import output_folder
from factory import quality
from factory.assembly import Generator, chain_stages, filter_stages, generate_slots, make_generator
from factory.card import write_card
from factory.export import (
    SPLITS,
    alpaca_record,
    dataset_hash,
    flat_rows,
    sharegpt_record,
    write_hf,
    write_parquet,
)
from factory.planner import Cell, Planner, Slot
from factory.recipe_loader import LoadedRecipe, load_recipe
from factory.stages.base import RejectWriter, Stage, StageStats
from schemas.knowledge import Category
from schemas.recipe import Recipe
from schemas.sample import Sample

MAX_BALANCE_ROUNDS = 20


@dataclass
class BuildResult:
    out: Path
    samples: list[Sample]
    counts: dict[str, int]
    quotas: dict[str, int]
    behaviour_quotas: dict[str, int]
    behaviour_counts: dict[str, int]
    stats: list[StageStats]
    rejects: int
    seconds: float
    quality: dict[str, Any] = field(default_factory=dict)
    #: Figures that missed the recipe's ``quality:`` thresholds; ``forma build`` exits 1 when there are any.
    quality_misses: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    dataset_hash: str = ""
    #: Per language (only for recipes not all English): shares, quotas, counts and the exact cells.
    languages: dict[str, Any] = field(default_factory=dict)
    #: Wall seconds per phase: setup (recipe, plan, stage loading), rounds (generate + filter + balance), split,
    #: export (data files, card, manifest), report. Not written to the manifest (it must be byte-identical).
    phases: dict[str, float] = field(default_factory=dict)


def assign_splits(samples: list[Sample], test_share: float) -> list[Sample]:
    """Stratified by category; which samples go to test depends only on their ids (stable across rebuilds)."""
    out: list[Sample] = []
    by_category: dict[Category, list[Sample]] = {}
    for s in samples:
        by_category.setdefault(s.category, []).append(s)
    for items in by_category.values():
        n_test = round(len(items) * test_share)
        test_ids = {s.id for s in sorted(items, key=lambda s: s.id)[:n_test]}
        out.extend(s.model_copy(update={"split": "test" if s.id in test_ids else "train"}) for s in items)
    return sorted(out, key=lambda s: s.lineage.slot)


class _PhaseClock:
    """Wall seconds per build phase, each measured from the end of the previous one."""

    def __init__(self) -> None:
        self.started = self._mark = time.perf_counter()
        self.phases: dict[str, float] = {}

    def done(self, name: str) -> None:
        now = time.perf_counter()
        self.phases[name] = now - self._mark
        self._mark = now


def _check_options(loaded: LoadedRecipe, total: int | None, engine: str, ray_address: str | None) -> int | None:
    """The command line's overrides go through the recipe's own validation (``--total`` cannot pass its cap)."""
    if total is not None:
        try:
            Recipe.__pydantic_validator__.validate_assignment(loaded.recipe.model_copy(), "total", total)
        except ValidationError as exc:
            raise from_validation_error(exc, where="--total") from None
        check_memory(total)
    if engine not in ("local", "distilabel"):
        raise FormaError(f"unknown engine {engine!r}", hint="use --engine local or --engine distilabel")
    if ray_address is not None and engine != "distilabel":
        raise FormaError("--ray-address needs --engine distilabel")
    return total


#: Peak memory per conversation of a template build: 2,000 -> 10,000 conversations of the default recipe raised the
#: peak resident memory from 486 to 772 MiB (/usr/bin/time), about 37 KB each; rounded up.
BYTES_PER_SAMPLE = 40_000
#: Totals below this never check memory (a few hundred MiB at most).
MEMORY_CHECK_FROM = 50_000


def check_memory(total: int, available: int | None = None) -> None:
    """Refuse, before any work, a total whose conversations cannot fit in the memory that is free now."""
    if total < MEMORY_CHECK_FROM:
        return
    free = available if available is not None else _available_memory()
    need = total * BYTES_PER_SAMPLE
    if free is not None and need > free:
        raise FormaError(f"a build of {total:,} conversations needs about {need / 2**30:.1f} GiB of memory and "
                         f"{free / 2**30:.1f} GiB is free", where="--total",
                         hint="lower --total, or build in parts")


def _available_memory() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


@dataclass
class _Rounds:
    """What the generate -> filter -> balance rounds need: the plan, the machinery, where rejects go."""

    loaded: LoadedRecipe
    planner: Planner
    quotas: dict[Cell, int]
    generator: Generator | None
    stages: list[Stage]
    out: Path
    resume: bool
    ray_address: str | None
    gen_stats: StageStats = field(default_factory=lambda: StageStats(stage="generate"))

    def survivors(self, pending: list[Slot], rejects: RejectWriter) -> Iterable[Sample]:
        if self.generator is None:
            from factory.distilabel_pipeline import run_round  # imported only for --engine distilabel

            return run_round(self.loaded, pending, self.stages, rejects, self.gen_stats, out=self.out,
                             resume=self.resume, ray_address=self.ray_address)
        return chain_stages(generate_slots(self.generator, pending, rejects, self.gen_stats), self.stages,
                            self.gen_stats)

    def fill(self, pending: list[Slot], rejects: RejectWriter, bar: Any) -> dict[Cell, list[Sample]]:
        """Generate and filter until every (language, category, behaviour) quota is full; deficits get new slots,
        never resampled duplicates."""
        kept: dict[Cell, list[Sample]] = {cell: [] for cell in self.quotas}
        task = bar.add_task("generating", total=sum(self.quotas.values()))
        deficits: dict[Cell, int] = {}
        for round_no in range(MAX_BALANCE_ROUNDS):
            for sample in self.survivors(pending, rejects):
                cell = (sample.language, sample.category, sample.behaviour)
                bucket = kept.get(cell)
                if bucket is not None and len(bucket) < self.quotas[cell]:
                    bucket.append(sample)
                    bar.advance(task)
            deficits = {c: self.quotas[c] - len(kept[c]) for c in self.quotas if len(kept[c]) < self.quotas[c]}
            if not deficits:
                return kept
            bar.update(task, description=f"balancing (round {round_no + 2})")
            pending = [slot for (lang, c, b), n in deficits.items() for slot in self.planner.extra(c, n, b, lang)]
        short = ", ".join(f"{_cell_name(cell)} short by {n}" for cell, n in deficits.items())
        raise FormaError(f"could not fill the quotas after {MAX_BALANCE_ROUNDS} rounds ({short}); "
                         "the knowledge base is too small for this total, or the filters too strict",
                         path=self.loaded.path, where="total")


def build_dataset(recipe_path: str | Path, out_dir: str | Path, *, seed: int | None = None,
                  total: int | None = None, progress: bool = False, console: Console | None = None,
                  resume: bool = False, engine: str = "local", ray_address: str | None = None,
                  filters: bool = True, overwrite: bool = True) -> BuildResult:
    """Build the dataset a recipe describes into ``out_dir``; see the module docstring for the flow.

    ``resume`` reuses the LLM replies cached in ``out_dir`` by an earlier (perhaps killed) build. ``engine``
    "distilabel" runs generation and filters as a distilabel Pipeline (on Ray when ``ray_address`` is given).
    ``filters=False`` skips validation, decontamination and dedupe: for measuring the pipeline's own cost
    (``bench/build.py``), never for data anyone trains on, so the CLI does not offer it.
    The folder goes through :func:`common.outdir.output_folder`: it appears only when complete, an earlier dataset
    there is replaced as a whole (only with ``overwrite`` or ``resume``), anything else there is refused.
    """
    clock = _PhaseClock()
    loaded = load_recipe(recipe_path)
    total = _check_options(loaded, total, engine, ray_address)
    final = Path(out_dir)
    # a failed LLM build keeps its paid-for reply cache (for --resume) and its rejects (each malformed reply, for
    # inspection) in the partial folder; a template build is cheap and deterministic, so it leaves nothing behind
    keep = ("cache",) if loaded.recipe.generator.backend == "template" else ("cache", "rejects.jsonl")
    with output_folder(final, "dataset", overwrite=overwrite or resume, keep=keep, carry=resume) as out:
        result = _build_into(out, loaded, clock, seed=seed, total=total, progress=progress, console=console,
                             resume=resume, engine=engine, ray_address=ray_address, filters=filters)
    result.out = final
    from factory.report import publish_report  # reports/<dataset>/: a copy of the report inside the dataset

    publish_report(final / "report", final.name)
    clock.done("report")
    result.seconds = time.perf_counter() - clock.started
    return result


def _build_into(out: Path, loaded: LoadedRecipe, clock: _PhaseClock, *, seed: int | None, total: int | None,
                progress: bool, console: Console | None, resume: bool, engine: str, ray_address: str | None,
                filters: bool) -> BuildResult:
    planner = Planner(loaded, seed=seed)
    quotas = planner.quotas(total)
    rounds = _Rounds(loaded=loaded, planner=planner, quotas=planner.cell_quotas(total), out=out, resume=resume,
                     ray_address=ray_address,
                     generator=make_generator(loaded, out, resume) if engine == "local" else None,
                     stages=filter_stages(loaded) if filters else [])
    with RejectWriter(out / "rejects.jsonl") as rejects, _progress(progress, console) as bar:
        for stage in rounds.stages:
            stage.bind(rejects)
            stage.load()
        clock.done("setup")
        kept = rounds.fill(planner.plan(total), rejects, bar)
        for stage in rounds.stages:
            stage.unload()
        if rounds.generator is not None and hasattr(rounds.generator, "close"):
            rounds.generator.close()
        n_rejects = rejects.count
        clock.done("rounds")
    samples = assign_splits([s for cell in rounds.quotas for s in kept[cell]], loaded.recipe.splits.test)
    behaviour_quotas = planner.behaviour_quotas(total)
    result = BuildResult(out=out, samples=samples,
                         counts={c.value: sum(len(v) for (_, k, _), v in kept.items() if k == c) for c in quotas},
                         quotas={c.value: n for c, n in quotas.items()},
                         behaviour_quotas={f"{c.value}/{b}": n for (c, b), n in behaviour_quotas.items()},
                         behaviour_counts={f"{c.value}/{b}": sum(len(v) for (_, k, j), v in kept.items()
                                                                 if (k, j) == (c, b)) for c, b in behaviour_quotas},
                         stats=[rounds.gen_stats, *(s.stats for s in rounds.stages)], rejects=n_rejects, seconds=0.0,
                         dataset_hash=dataset_hash(samples), phases=clock.phases,
                         languages=_language_figures(loaded, planner, rounds.quotas, kept))
    clock.done("split")
    result.quality = quality.figures(samples, loaded, result.behaviour_quotas, result.languages)
    result.quality_misses = [m.render() for m in quality.misses(result.quality, loaded.recipe.quality)]
    _write_outputs(result, loaded, planner.seed)
    clock.done("export")
    from factory.report import write_report  # out/report/: report.html + report.json

    write_report(out, out / "report", backend=loaded.recipe.dedupe.embedding_backend,
                 model_path=loaded.recipe.dedupe.embedding_model)
    return result


def _cell_name(cell: Cell) -> str:
    language, category, behaviour = cell
    return f"{language}/{category.value}/{behaviour}"


def _language_figures(loaded: LoadedRecipe, planner: Planner, quotas: dict[Cell, int],
                      kept: dict[Cell, list[Sample]]) -> dict[str, Any]:
    """Per-language shares, quotas, counts and exact cells; empty for an all-English recipe (its manifest keeps the
    shape it always had)."""
    shares = loaded.recipe.language_shares
    if list(shares) == ["en"]:
        return {}
    return {"shares": shares, "quotas": planner.language_quotas(sum(quotas.values())),
            "counts": {lang: sum(len(v) for (k, _, _), v in kept.items() if k == lang) for lang in shares},
            "cells": {_cell_name(c): {"target": n, "actual": len(kept[c])} for c, n in quotas.items()},
            "knowledge": quality.translation_figures(loaded, [lang for lang in shares if lang != "en"])}


def _write_outputs(result: BuildResult, loaded: LoadedRecipe, seed: int) -> None:
    out, samples, formats = result.out, result.samples, loaded.recipe.formats
    by_split = {split: [s for s in samples if s.split == split] for split in SPLITS}
    written: list[Path] = [out / "rejects.jsonl"]
    write_jsonl(out / "samples.jsonl", (s.model_dump(mode="json") for s in samples))
    written.append(out / "samples.jsonl")
    for split, items in by_split.items():
        if "sharegpt" in formats:
            written.append(out / "sharegpt" / f"{split}.jsonl")
            write_jsonl(written[-1], (sharegpt_record(s) for s in items))
        if "alpaca" in formats:
            written.append(out / "alpaca" / f"{split}.jsonl")
            write_jsonl(written[-1], (alpaca_record(s) for s in items))
    rows_by_split = {split: flat_rows(items) for split, items in by_split.items()} \
        if {"parquet", "hf"} & set(formats) else {}
    if "parquet" in formats:
        written.extend(write_parquet(out / "parquet", rows_by_split))
    if "hf" in formats:
        write_hf(out / "hf", rows_by_split, result.dataset_hash)
    result.files = {str(p.relative_to(out)): sha256_file(p) for p in written}
    manifest: dict[str, Any] = {
        "recipe": loaded.recipe.name, "recipe_hash": loaded.recipe.content_hash(), "recipe_file": str(loaded.path),
        "seed": seed, "pipeline_version": __version__, "generator": loaded.recipe.generator.backend,
        "dataset_hash": result.dataset_hash, "total": len(samples),
        "splits": {k: len(v) for k, v in by_split.items()}, "quotas": result.quotas, "counts": result.counts,
        "turns": dict(sorted(Counter(s.conversation.user_turns for s in samples).items())),
        # stage timings vary from run to run, and these files must be byte-identical for the same recipe and seed
        "stages": [s.model_dump(exclude={"seconds"}) for s in result.stats],
        "rejects": result.rejects, "files": result.files,
        "behaviours": {"shares": dict(loaded.recipe.behaviours), "quotas": result.behaviour_quotas,
                       "counts": result.behaviour_counts},
        "quality": result.quality,
    }
    if result.languages:
        manifest["languages"] = result.languages
    write_card(out / "README.md", manifest, loaded)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")


class _NullProgress:
    def __enter__(self) -> _NullProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_task(self, *args: Any, **kwargs: Any) -> int:
        return 0

    def advance(self, *args: Any, **kwargs: Any) -> None:
        return None

    def update(self, *args: Any, **kwargs: Any) -> None:
        return None


def _progress(enabled: bool, console: Console | None) -> Any:
    if not enabled:
        return _NullProgress()
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console or Console(stderr=True), transient=False)
