"""``forma build``: recipe -> plan -> generate -> filter -> balance -> split -> export.

Balancing never resamples: when filters drop samples, the planner makes new slots for the categories in deficit and
the generator fills them, until every category holds its quota exactly (or the generator cannot find anything new,
which is an error naming the category).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from factory import __version__
from factory.card import write_card
from factory.errors import FormaError
from factory.export import (
    SPLITS,
    alpaca_record,
    dataset_hash,
    flat_rows,
    sha256_file,
    sharegpt_record,
    write_hf,
    write_jsonl,
    write_parquet,
)
from factory.planner import Planner, Slot
from factory.recipe_loader import LoadedRecipe, load_recipe
from factory.stages.base import RejectWriter, Stage, StageStats
from factory.stages.exact import ExactDedupe
from schemas.knowledge import Category
from schemas.sample import Sample

MAX_BALANCE_ROUNDS = 20


class Generator(Protocol):
    name: str

    def generate(self, slot: Slot, attempt: int = 0) -> Sample: ...


@dataclass
class BuildResult:
    out: Path
    samples: list[Sample]
    counts: dict[str, int]
    quotas: dict[str, int]
    stats: list[StageStats]
    rejects: int
    seconds: float
    files: dict[str, str] = field(default_factory=dict)
    dataset_hash: str = ""
    #: Wall seconds per phase: setup (recipe, plan, stage loading), rounds (generate + filter + balance), split,
    #: export (data files, card, manifest), report. Not written to the manifest (it must be byte-identical).
    phases: dict[str, float] = field(default_factory=dict)


def make_generator(loaded: LoadedRecipe, out: Path | None = None, resume: bool = False) -> Generator:
    """The recipe's generator; LLM backends keep their reply cache under ``out`` (reused only with ``resume``)."""
    backend = loaded.recipe.generator.backend
    if backend == "template":
        from factory.generators.template import TemplateGenerator

        unsupported = [lang for lang in loaded.recipe.languages if lang != "en"]
        if unsupported:
            raise FormaError(f"the template generator writes English only; {unsupported} need an LLM backend",
                             path=loaded.path, where="languages")
        return TemplateGenerator(loaded.recipe, loaded.recipe.content_hash())
    try:
        from factory.generators.llm import make_llm_generator  # type: ignore[import-not-found,unused-ignore]
    except ModuleNotFoundError as exc:
        raise FormaError(f"generator backend {backend!r} is not available in this build", path=loaded.path,
                         where="generator.backend") from exc
    generator: Generator = make_llm_generator(loaded, out_dir=out, resume=resume)
    return generator


def filter_stages(loaded: LoadedRecipe) -> list[Stage]:
    """The filters every generated sample passes through, in order. State persists across balance rounds."""
    # Cheap and record-local first; validate before dedupe so an invalid sample never becomes the "original" that a
    # valid duplicate is dropped for; decontaminate before dedupe so the dedupe indexes hold only clean samples.
    from factory.stages.decontaminate import Decontaminate, eval_prompts
    from factory.stages.near import NearDedupe
    from factory.stages.semantic import SemanticDedupe
    from factory.stages.validate import Validate

    recipe = loaded.recipe
    dd, dc, va = recipe.dedupe, recipe.decontamination, recipe.validation
    stages: list[Stage] = [Validate(min_turn_chars=va.min_turn_chars, max_turn_chars=va.max_turn_chars,
                                    max_total_chars=va.max_total_chars, check_language=va.check_language,
                                    check_numbers=va.check_numbers, facts={f.id: f for f in loaded.facts})]
    stages.append(Decontaminate(prompts=eval_prompts(loaded), ngram=dc.ngram, semantic_threshold=dc.semantic_threshold,
                                backend=dd.embedding_backend, model_path=dd.embedding_model))
    if dd.exact:
        stages.append(ExactDedupe())
    stages.append(NearDedupe(threshold=dd.near_threshold, num_perm=dd.num_perm, shingle_words=dd.shingle_words,
                             text=dd.near_text))
    if dd.semantic_threshold is not None:
        stages.append(SemanticDedupe(threshold=dd.semantic_threshold, text=dd.semantic_text,
                                     backend=dd.embedding_backend, model_path=dd.embedding_model))
    return stages


class _Timed:
    """An iterator that adds up the time spent producing its items (its upstream's time included)."""

    def __init__(self, items: Iterable[Sample]) -> None:
        self._items = iter(items)
        self.seconds = 0.0

    def __iter__(self) -> _Timed:
        return self

    def __next__(self) -> Sample:
        start = time.perf_counter()
        try:
            return next(self._items)
        finally:
            self.seconds += time.perf_counter() - start


def _chain(samples: Iterable[Sample], stages: list[Stage], gen_stats: StageStats) -> Iterator[Sample]:
    """Run ``samples`` through ``stages`` lazily, charging each stage (and generation) its own time."""
    timed = [_Timed(samples)]
    for stage in stages:
        timed.append(_Timed(stage.run(timed[-1])))
    before = [t.seconds for t in timed]
    try:
        yield from timed[-1]
    finally:
        spent = [t.seconds - b for t, b in zip(timed, before, strict=True)]
        gen_stats.seconds += spent[0]
        for i, stage in enumerate(stages, start=1):
            stage.stats.seconds += spent[i] - spent[i - 1]


GENERATE_BATCH = 16


def generate_slots(generator: Generator, slots: list[Slot], rejects: RejectWriter,
                   stats: StageStats) -> Iterator[Sample]:
    """Samples for ``slots``; a slot the generator rejects (bad reply, failed grounding or judge) becomes a reject.

    Generators with ``generate_batch`` (LLM backends) get slots in batches, so a server sees concurrent requests.
    """
    from factory.generators.llm import GenerationRejected
    from schemas.sample import Reject

    batch_fn = getattr(generator, "generate_batch", None)
    size = GENERATE_BATCH if batch_fn is not None else 1
    for start in range(0, len(slots), size):
        chunk = slots[start:start + size]
        results: list[Sample | GenerationRejected] = []
        if batch_fn is not None:
            results = batch_fn(chunk)
        else:
            for slot in chunk:
                try:
                    results.append(generator.generate(slot))
                except GenerationRejected as exc:
                    results.append(exc)
        for result in results:
            stats.seen += 1
            if isinstance(result, GenerationRejected):
                stats.dropped += 1
                stats.reasons[result.reason] = stats.reasons.get(result.reason, 0) + 1
                rejects.write(Reject(stage=result.stage, reason=result.reason, detail=result.detail,
                                     record=result.record))
            else:
                stats.kept += 1
                yield result


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


def build_dataset(recipe_path: str | Path, out_dir: str | Path, *, seed: int | None = None,
                  total: int | None = None, progress: bool = False, console: Console | None = None,
                  resume: bool = False, engine: str = "local", ray_address: str | None = None,
                  filters: bool = True) -> BuildResult:
    """Build the dataset a recipe describes into ``out_dir``; see the module docstring for the flow.

    ``resume`` reuses the LLM replies cached in ``out_dir`` by an earlier (perhaps killed) build. ``engine``
    "distilabel" runs generation and filters as a distilabel Pipeline (on Ray when ``ray_address`` is given).
    ``filters=False`` skips validation, decontamination and dedupe: for measuring the pipeline's own cost
    (``bench/build.py``), never for data anyone trains on, so the CLI does not offer it.
    """
    started = time.perf_counter()
    loaded = load_recipe(recipe_path)
    if total is not None and total <= 0:
        raise FormaError(f"--total must be positive, got {total}")
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FormaError(f"cannot create the output folder: {exc.strerror}", path=out) from None
    planner = Planner(loaded, seed=seed)
    quotas = planner.quotas(total)
    if engine not in ("local", "distilabel"):
        raise FormaError(f"unknown engine {engine!r}", hint="use --engine local or --engine distilabel")
    if ray_address is not None and engine != "distilabel":
        raise FormaError("--ray-address needs --engine distilabel")
    phases: dict[str, float] = {}
    mark = started

    def phase_done(name: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        phases[name] = now - mark
        mark = now

    generator = make_generator(loaded, out, resume) if engine == "local" else None
    stages = filter_stages(loaded) if filters else []
    gen_stats = StageStats(stage="generate")

    kept: dict[Category, list[Sample]] = {c: [] for c in quotas}
    pending: list[Slot] = planner.plan(total)
    with RejectWriter(out / "rejects.jsonl") as rejects, _progress(progress, console) as bar:
        for stage in stages:
            stage.bind(rejects)
            stage.load()
        phase_done("setup")
        task = bar.add_task("generating", total=sum(quotas.values()))
        for round_no in range(MAX_BALANCE_ROUNDS):
            if generator is None:
                from factory.distilabel_pipeline import run_round

                survivors: Iterable[Sample] = run_round(loaded, pending, stages, rejects, gen_stats, out=out,
                                                        resume=resume, ray_address=ray_address)
            else:
                survivors = _chain(generate_slots(generator, pending, rejects, gen_stats), stages, gen_stats)
            for sample in survivors:
                bucket = kept[sample.category]
                if len(bucket) < quotas[sample.category]:
                    bucket.append(sample)
                    bar.advance(task)
            deficits = {c: quotas[c] - len(kept[c]) for c in quotas if len(kept[c]) < quotas[c]}
            if not deficits:
                break
            bar.update(task, description=f"balancing (round {round_no + 2})")
            pending = [slot for c, n in deficits.items() for slot in planner.extra(c, n)]
        else:
            short = ", ".join(f"{c.value} short by {n}" for c, n in deficits.items())
            raise FormaError(f"could not fill the category quotas after {MAX_BALANCE_ROUNDS} rounds ({short}); "
                             "the knowledge base is too small for this total, or the filters too strict",
                             path=loaded.path, where="total")
        for stage in stages:
            stage.unload()
        if generator is not None and hasattr(generator, "close"):
            generator.close()
        n_rejects = rejects.count
        phase_done("rounds")

    samples = assign_splits([s for c in quotas for s in kept[c]], loaded.recipe.splits.test)
    result = BuildResult(out=out, samples=samples, counts={c.value: len(kept[c]) for c in quotas},
                         quotas={c.value: n for c, n in quotas.items()}, stats=[gen_stats, *(s.stats for s in stages)],
                         rejects=n_rejects, seconds=0.0, dataset_hash=dataset_hash(samples), phases=phases)
    phase_done("split")
    _write_outputs(result, loaded, planner.seed)
    phase_done("export")
    from factory.report import write_build_report  # out/report/ and reports/<dataset>/: report.html + report.json

    write_build_report(out, out.name, backend=loaded.recipe.dedupe.embedding_backend,
                       model_path=loaded.recipe.dedupe.embedding_model)
    phase_done("report")
    result.seconds = time.perf_counter() - started
    return result


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
    }
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
