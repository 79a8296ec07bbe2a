"""``forma build --engine distilabel``: generation and the filter stages assembled as a distilabel Pipeline.

Each balance round becomes one pipeline run: ``LoadDataFromDicts`` (the round's slots) >> ``GenerateSamples``
(our generator) >> one ``StageStep`` per filter stage (our :class:`~factory.stages.base.Stage` objects, wrapped).
The same pipeline runs on an existing Ray cluster through distilabel's ``pipeline.ray()`` when given an address.

Why rows carry JSON and are never removed: distilabel moves batches between processes (or Ray actors) as rows
of plain columns, so a sample travels as its JSON; a step that drops a sample marks the row (``dropped_by``) and
records the reject in it, and the driver writes rejects and stage statistics in slot order. The result is the
local engine's output, byte for byte (tested for the template backend).

Why stages are primed: a dedupe stage's memory (what it kept in earlier rounds) lives in the worker that ran it,
and workers do not outlive a run. The driver keeps, per stage, the samples it kept so far (``prime-K.jsonl``); the
next round's worker replays them through the stage before the new rows, which rebuilds the same state.

This module is imported only for ``--engine distilabel`` (it imports distilabel at the top, and has no
``from __future__ import annotations``: distilabel reads ``process``'s ``StepInput`` type hint at run time).
"""

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from distilabel.steps import Step, StepInput
from distilabel.typing import StepColumns, StepOutput
from pydantic import PrivateAttr

from common.errors import FormaError
from factory.planner import Slot
from factory.recipe_loader import LoadedRecipe
from factory.stages.base import RejectWriter, Stage, StageStats
from schemas.sample import Reject, Sample

KEPT = -1  # dropped_by value of a row whose sample survived every step


def slot_row(slot: Slot, order: int) -> dict[str, Any]:
    """A slot as a row of plain columns (facts and persona by id; the worker's recipe resolves them)."""
    data = {"index": slot.index, "category": slot.category.value, "persona": slot.persona.id,
            "user_turns": slot.user_turns, "language": slot.language, "facts": [f.id for f in slot.facts],
            "seed": slot.seed, "behaviour": slot.behaviour, "item": getattr(slot.item, "id", None),
            "item_use": slot.item_use, "fact_uses": list(slot.fact_uses)}
    return {"order": order, "slot": json.dumps(data)}


def slot_from_row(text: str, loaded: LoadedRecipe) -> Slot:
    from schemas.knowledge import Category

    data = json.loads(text)
    persona = next(p for p in loaded.recipe.personas if p.id == data["persona"])
    facts = {f.id: f for f in loaded.facts}
    behaviour = data.get("behaviour", "answer")
    item = next((i for i in loaded.items_for(Category(data["category"]), behaviour) if i.id == data.get("item")), None)
    return Slot(index=data["index"], category=Category(data["category"]), persona=persona,
                user_turns=data["user_turns"], language=data["language"],
                facts=tuple(facts[i] for i in data["facts"]), seed=data["seed"], behaviour=behaviour, item=item,
                item_use=data.get("item_use", 0), fact_uses=tuple(data.get("fact_uses", ())))


class _Collect(RejectWriter):
    """Keeps every reject in memory, in order, for the step to put into its rows."""

    def __init__(self) -> None:
        super().__init__(None)
        self.items: list[Reject] = []

    def write(self, reject: Reject) -> None:
        self.items.append(reject)


class GenerateSamples(Step):
    """Our generator as a distilabel step: ``slot`` in, ``sample`` (JSON, or "" when rejected) out."""

    recipe_path: str
    out_dir: str | None = None

    _loaded: Any = PrivateAttr(default=None)
    _generator: Any = PrivateAttr(default=None)

    @property
    def inputs(self) -> StepColumns:
        return ["order", "slot"]

    @property
    def outputs(self) -> StepColumns:
        return ["order", "slot", "sample", "rejects", "dropped_by"]

    def load(self) -> None:
        super().load()
        from factory.assembly import make_generator
        from factory.recipe_loader import load_recipe

        self._loaded = load_recipe(self.recipe_path)
        # the driver already refused a stale cache without --resume; later rounds must reuse this build's replies
        self._generator = make_generator(self._loaded, Path(self.out_dir) if self.out_dir else None, True)

    def unload(self) -> None:
        if self._generator is not None and hasattr(self._generator, "close"):
            self._generator.close()
        self._generator = None
        super().unload()

    def process(self, inputs: StepInput) -> StepOutput:  # type: ignore[override]
        from factory.assembly import generate_slots

        slots = [slot_from_row(row["slot"], self._loaded) for row in inputs]
        collect = _Collect()
        stats = StageStats(stage="generate")
        by_slot: dict[int, Sample] = {s.lineage.slot: s for s in generate_slots(self._generator, slots, collect,
                                                                                stats)}
        rejects = iter(collect.items)
        rows = []
        for row, slot in zip(inputs, slots, strict=True):
            sample = by_slot.get(slot.index)
            out = {**row, "sample": sample.model_dump_json() if sample is not None else "", "rejects": "[]",
                   "dropped_by": KEPT}
            if sample is None:
                out["rejects"] = json.dumps([next(rejects).model_dump(mode="json")])
                out["dropped_by"] = 0
            rows.append(out)
        yield rows


class StageStep(Step):
    """One of our filter stages as a distilabel step; dropped samples are emptied and their reject recorded."""

    recipe_path: str
    stage_index: int
    prime_path: str | None = None

    _stage: Any = PrivateAttr(default=None)
    _collect: Any = PrivateAttr(default=None)

    @property
    def inputs(self) -> StepColumns:
        return ["order", "sample", "rejects", "dropped_by"]

    @property
    def outputs(self) -> StepColumns:
        return ["order", "sample", "rejects", "dropped_by"]

    def load(self) -> None:
        super().load()
        from factory.assembly import filter_stages
        from factory.recipe_loader import load_recipe

        stage: Stage = filter_stages(load_recipe(self.recipe_path))[self.stage_index]
        self._collect = _Collect()
        stage.bind(self._collect)
        stage.load()
        if self.prime_path and Path(self.prime_path).is_file():
            with Path(self.prime_path).open(encoding="utf-8") as fh:
                for _ in stage.run(Sample.model_validate_json(line) for line in fh if line.strip()):
                    pass
            self._collect.items.clear()
        self._stage = stage

    def unload(self) -> None:
        if self._stage is not None:
            self._stage.unload()
        super().unload()

    def process(self, inputs: StepInput) -> StepOutput:  # type: ignore[override]
        live = [(i, Sample.model_validate_json(row["sample"])) for i, row in enumerate(inputs)
                if row["dropped_by"] == KEPT]
        self._collect.items.clear()
        kept = {id(s) for s in self._stage.run(s for _, s in live)}
        dropped = [i for i, s in live if id(s) not in kept]
        rows = [dict(row) for row in inputs]
        if len(dropped) != len(self._collect.items):
            raise RuntimeError(f"stage {self._stage.name} dropped {len(dropped)} samples but wrote "
                               f"{len(self._collect.items)} rejects")
        for i, reject in zip(dropped, self._collect.items, strict=True):
            rows[i].update(dropped_by=self.stage_index + 1,
                           rejects=json.dumps([*json.loads(rows[i]["rejects"]), reject.model_dump(mode="json")]))
        yield rows


def build_pipeline(loaded: LoadedRecipe, slots: list[Slot], n_stages: int, *, work: Path, out: Path | None,
                   batch_size: int = 50) -> Any:
    """The distilabel Pipeline for one round: load the slots, generate, then every filter stage in order."""
    from distilabel.pipeline import Pipeline
    from distilabel.steps import LoadDataFromDicts

    recipe_path = str(loaded.path.resolve())
    with Pipeline(name=f"forma-{loaded.recipe.name}", cache_dir=work / "distilabel-cache") as pipeline:
        node: Any = LoadDataFromDicts(name="slots", data=[slot_row(s, i) for i, s in enumerate(slots)],
                                      batch_size=batch_size)
        gen = GenerateSamples(name="generate", recipe_path=recipe_path,
                              out_dir=str(out.resolve()) if out is not None else None, input_batch_size=batch_size)
        node = node >> gen
        for k in range(n_stages):
            step = StageStep(name=f"stage_{k}", recipe_path=recipe_path, stage_index=k,
                             prime_path=str(work / f"prime-{k}.jsonl"), input_batch_size=batch_size)
            node = node >> step
    return pipeline


def run_pipeline(pipeline: Any, ray_address: str | None) -> list[dict[str, Any]]:
    """Run it locally, or on the Ray cluster at ``ray_address``; the leaf step's rows."""
    for name in ("distilabel", "distilabel.pipeline"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if ray_address is not None:
        try:
            import ray
        except ImportError as exc:
            raise FormaError("--ray-address needs the 'ray' package",
                             hint="pip install -c constraints.txt ray") from exc
        if not ray.is_initialized():
            try:
                ray.init(address=None if ray_address == "local" else ray_address, log_to_driver=False,
                         include_dashboard=False)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise FormaError(f"cannot connect to the Ray cluster at {ray_address}: {exc}",
                                 hint="start it with `ray start --head` or give its address as host:port") from None
        pipeline = pipeline.ray()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        distiset = pipeline.run(use_cache=False)
    finally:  # distilabel leaves a queue handler on the root logger whose queue it has closed
        root.handlers[:] = handlers
        root.setLevel(level)
    if distiset is None:
        raise FormaError("the distilabel pipeline produced no output (see its log above)")
    subset = next(iter(distiset.values()))
    return list(subset["train"])


def run_round(loaded: LoadedRecipe, slots: list[Slot], stages: list[Stage], rejects: RejectWriter,
              gen_stats: StageStats, *, out: Path, resume: bool, ray_address: str | None) -> Iterator[Sample]:
    """One balance round on distilabel: the samples that passed every stage, in slot order (the local engine's)."""
    work = out / ".distilabel"
    if gen_stats.seen == 0:  # first round: a fresh build starts from clean stage memory and honours --resume
        work.mkdir(parents=True, exist_ok=True)
        for old in work.glob("prime-*.jsonl"):
            old.unlink()
        if loaded.recipe.generator.backend != "template":
            from factory.generators.cache import count_replies
            from factory.generators.llm import cache_path

            held = count_replies(cache_path(out))
            if held and not resume:
                raise FormaError(f"the output folder holds {held} cached LLM replies from an earlier build",
                                 path=cache_path(out), hint="pass --resume to reuse them, or delete the folder")
    if not slots:
        return
    rows = run_isolated(loaded, slots, len(stages), work=work, out=out, ray_address=ray_address)
    rows.sort(key=lambda r: r["order"])
    primes: dict[int, list[str]] = {k: [] for k in range(len(stages))}
    survivors: list[Sample] = []
    for row in rows:
        for item in json.loads(row["rejects"]):
            rejects.write(Reject.model_validate(item))
        dropped_by = int(row["dropped_by"])
        _count(gen_stats, dropped_by == 0, row)
        for k, stage in enumerate(stages):
            if dropped_by != KEPT and dropped_by <= k:
                break
            _count(stage.stats, dropped_by == k + 1, row)
            if dropped_by != k + 1:
                primes[k].append(str(row["sample"]))
        if dropped_by == KEPT:
            survivors.append(Sample.model_validate_json(row["sample"]))
    for k, lines in primes.items():
        if lines:
            with (work / f"prime-{k}.jsonl").open("a", encoding="utf-8") as fh:
                fh.write("".join(line + "\n" for line in lines))
    yield from survivors


def _count(stats: StageStats, dropped: bool, row: dict[str, Any]) -> None:
    stats.seen += 1
    if dropped:
        stats.dropped += 1
        reason = json.loads(row["rejects"])[-1]["reason"]
        stats.reasons[reason] = stats.reasons.get(reason, 0) + 1
    else:
        stats.kept += 1


def run_isolated(loaded: LoadedRecipe, slots: list[Slot], n_stages: int, *, work: Path, out: Path,
                 ray_address: str | None) -> list[dict[str, Any]]:
    """Run one round's pipeline in a fresh Python process and read its rows back.

    distilabel forks its step workers; forked from a process that has already run a build (threads of tqdm's
    monitor, BLAS pools, a loaded model), they hung (measured here, every time, under pytest and in scripts). A fresh
    process has none of that, and costs a few seconds per round.
    """
    import subprocess
    import sys

    spec = work / "round.json"
    rows_file = work / "round-rows.jsonl"
    rows_file.unlink(missing_ok=True)
    spec.write_text(json.dumps({"recipe": str(loaded.path.resolve()), "n_stages": n_stages, "out": str(out.resolve()),
                                "work": str(work.resolve()), "ray_address": ray_address,
                                "slots": [slot_row(s, i) for i, s in enumerate(slots)]}), encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "factory.distilabel_pipeline", str(spec), str(rows_file)],
                          capture_output=True, text=True)
    if proc.returncode == FormaError.exit_code:
        raise FormaError(proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "distilabel round failed")
    if proc.returncode != 0 or not rows_file.is_file():
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise FormaError(f"the distilabel pipeline failed (exit {proc.returncode}):\n{tail}")
    with rows_file.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _child(spec_path: str, rows_path: str) -> int:
    """The fresh process of :func:`run_isolated`: build the round's pipeline, run it, write its rows."""
    from factory.recipe_loader import load_recipe

    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    try:
        loaded = load_recipe(spec["recipe"])
        slots = [slot_from_row(row["slot"], loaded) for row in spec["slots"]]
        pipeline = build_pipeline(loaded, slots, spec["n_stages"], work=Path(spec["work"]), out=Path(spec["out"]))
        rows = run_pipeline(pipeline, spec["ray_address"])
    except FormaError as exc:
        print(exc.render())
        return FormaError.exit_code
    with Path(rows_path).open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps({k: row[k] for k in ("order", "sample", "rejects", "dropped_by")}) + "\n")
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(_child(sys.argv[1], sys.argv[2]))
