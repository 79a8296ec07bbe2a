"""One arm's steps: build -> train -> export -> eval, each the same code its own command (and ``forma loop``) runs.

Every finished step is recorded in the arm's ``state.json`` with a key: a hash of everything the step depends on
(the recipe after overrides, the dataset hash, the training config, the quant, the GGUF's SHA-256, the suites and
the policy). A re-run reuses a step whose key still matches and redoes one whose inputs changed, so a run killed in
the middle of an arm's eval does not train again, and ``--only build`` now, ``--only eval`` later works. When the
eval is recorded the arm writes ``done.json``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from common.errors import FormaError
from common.hashing import sha256_file
from common.jsonl import atomic_write_text
from experiment.spec import (
    BASE_ARM,
    ArmSpec,
    Experiment,
    eval_definition,
    eval_system_prompt,
    rebase_recipe_paths,
    recipe_data,
    stable_hash,
    train_config_data,
)

STATE = "state.json"
DONE = "done.json"


@dataclass
class ArmState:
    """``state.json``: each finished step with the key of its inputs and what it produced."""

    name: str
    folder: Path
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, name: str, folder: Path) -> ArmState:
        path = folder / STATE
        steps = json.loads(path.read_text(encoding="utf-8"))["steps"] if path.is_file() else {}
        return cls(name=name, folder=folder, steps=steps)

    def get(self, step: str, key: str) -> dict[str, Any] | None:
        """The step's record when it finished with these inputs (and its files are still there), else None."""
        record = self.steps.get(step)
        if record is None or record.get("key") != key:
            return None
        if any(not Path(record[k]).exists() for k in ("dataset", "gguf", "report") if record.get(k)):
            return None
        return record

    def record(self, step: str, key: str, **outputs: Any) -> dict[str, Any]:
        self.steps[step] = {"key": key, **outputs}
        atomic_write_text(self.folder / STATE, json.dumps({"arm": self.name, "steps": self.steps}, indent=2,
                                                          sort_keys=True, default=str) + "\n")
        return self.steps[step]


@dataclass
class Context:
    """What every step needs: the experiment, which steps this run may do, and where progress lines go."""

    exp: Experiment
    only: frozenset[str]
    log: Callable[[str], None]


@dataclass
class ArmRun:
    """One arm during a run: its spec (None for the base arm), state, position for progress lines."""

    ctx: Context
    spec: ArmSpec | None
    state: ArmState
    label: str

    @property
    def name(self) -> str:
        return self.state.name

    @property
    def folder(self) -> Path:
        return self.state.folder

    def say(self, step: str, text: str) -> None:
        self.ctx.log(f"[{self.label}] {step}: {text}")

    def step(self, step: str, key: str, work: Callable[[], dict[str, Any]],
             show: Callable[[dict[str, Any]], str]) -> dict[str, Any] | None:
        """Reuse the step's record when its key matches; else run it (when this run may) and record it."""
        found = self.state.get(step, key)
        if found is not None:
            self.say(step, f"reused ({show(found)})")
            return found
        if step not in self.ctx.only:
            self.say(step, "not done; not in --only, skipped")
            return None
        started = time.perf_counter()
        outputs = work()
        outputs["seconds"] = round(time.perf_counter() - started, 1)
        record = self.state.record(step, key, **outputs)
        self.say(step, f"{show(record)} ({record['seconds']} s)")
        return record


# --------------------------------------------------------------------------- build

def _show_build(r: dict[str, Any]) -> str:
    return f"{r['samples']} samples, dataset {str(r['dataset_hash'])[:12]} -> {r['dataset']}"


def build_step(run: ArmRun, definition: dict[str, str]) -> dict[str, Any] | None:
    """The arm's dataset: built from its recipe with the overrides, or an existing build folder as it is."""
    spec, exp = run.spec, run.ctx.exp
    assert spec is not None
    if spec.build is not None:
        folder = exp.resolve(spec.build)
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
        record = {"dataset": str(folder), "dataset_hash": manifest.get("dataset_hash"),
                  "samples": manifest.get("total"), "seconds": 0.0}
        if run.state.get("build", definition["build"]) is None:
            run.state.record("build", definition["build"], **record)
        run.say("build", f"existing build ({_show_build(record)})")
        return record
    if spec.recipe is None:
        return None

    def work() -> dict[str, Any]:
        from factory.build import build_dataset

        recipe = write_arm_recipe(run.ctx.exp, spec, run.folder)
        built = build_dataset(recipe, run.folder / "dataset", progress=False)
        misses = list(getattr(built, "quality_misses", []))  # figures under the recipe's quality thresholds
        if misses:
            run.say("build", "quality thresholds missed (recorded, the arm goes on): " + "; ".join(misses))
        return {"dataset": str(built.out), "dataset_hash": built.dataset_hash, "samples": len(built.samples),
                "recipe": str(recipe), "quality_misses": misses}

    return run.step("build", definition["recipe"], work, _show_build)


def write_arm_recipe(exp: Experiment, spec: ArmSpec, folder: Path) -> Path:
    """``recipe.yaml`` in the arm's folder: the recipe with its include resolved and the overrides applied."""
    assert spec.recipe is not None
    source = exp.resolve(spec.recipe)
    data = rebase_recipe_paths(recipe_data(exp, spec), source.parent, folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "recipe.yaml"
    header = (f"# Written by `forma experiment` for arm {spec.name!r} of {exp.path}:\n"
              f"# {source} with overrides {json.dumps(spec.overrides, sort_keys=True)}\n")
    atomic_write_text(path, header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return path


# --------------------------------------------------------------------------- train

def _show_train(r: dict[str, Any]) -> str:
    def num(v: Any) -> str:
        return "?" if v is None else f"{v:.3f}"

    return (f"{r['steps']} steps, train loss {num(r['train_loss_first'])} -> {num(r['train_loss_last'])}, "
            f"eval loss {num(r['eval_loss_first'])} -> {num(r['eval_loss_last'])}, config {r['config_hash']}")


def train_step(run: ArmRun, build: dict[str, Any]) -> dict[str, Any] | None:
    """LoRA training on the arm's dataset with the experiment's one config (``train.sft.train``)."""
    exp = run.ctx.exp
    data = train_config_data(exp)
    key = stable_hash({"dataset": build["dataset_hash"], "config": data})

    def work() -> dict[str, Any]:
        from train.config import load_config
        from train.sft import train

        path = run.folder / "train-config.yaml"
        full = {**data, "dataset": build["dataset"], "output_dir": str(run.folder / "train")}
        atomic_write_text(path, f"# Written by `forma experiment` for arm {run.name!r} of {exp.path}\n"
                          + yaml.safe_dump(full, sort_keys=False))
        result = train(load_config(path), run_name=f"{exp.spec.name}-{run.name}")
        m = result.metrics
        return {"config_hash": load_config(path).digest(), "merged_dir": str(result.merged_dir),
                "report": str(result.report), "steps": m.get("steps"), "train_loss_first": m.get("train_loss_first"),
                "train_loss_last": m.get("train_loss_last"), "eval_loss_first": m.get("eval_loss_first"),
                "eval_loss_last": m.get("eval_loss_last")}

    return run.step("train", key, work, _show_train)


# --------------------------------------------------------------------------- export

def _show_export(r: dict[str, Any]) -> str:
    return f"{Path(r['gguf']).name}, {r['size'] / 1e6:.0f} MB, sha256 {r['gguf_sha256'][:12]}"


def export_step(run: ArmRun, model_dir: Path, key: str) -> dict[str, Any] | None:
    """GGUF at the experiment's one quant (``export.gguf_export.export_gguf``, verification included)."""
    quant = run.ctx.exp.spec.quant

    def work() -> dict[str, Any]:
        from export.gguf_export import export_gguf

        if not model_dir.is_dir():
            raise FormaError("no merged model to export (save_merged: false in the training config?)",
                             path=model_dir, where=f"arm {run.name}")
        exported = export_gguf(model_dir, run.folder / "gguf", quants=(quant,))
        gguf = exported.ggufs[quant]
        return {"gguf": str(gguf), "gguf_sha256": sha256_file(gguf), "size": gguf.stat().st_size,
                "verified": exported.verification.get("passed")}

    return run.step("export", stable_hash({"model": key, "quant": quant}), work, _show_export)


def given_gguf(run: ArmRun, path: Path) -> dict[str, Any]:
    """A GGUF trained elsewhere (``gguf:`` in the arm, or the builtin base model): recorded, not exported."""
    sha = sha256_file(path)
    record = run.state.get("export", sha) or run.state.record(
        "export", sha, gguf=str(path), gguf_sha256=sha, size=path.stat().st_size, given=True, seconds=0.0)
    run.say("export", f"given GGUF ({_show_export(record)})")
    return record


# --------------------------------------------------------------------------- eval

def _show_eval(r: dict[str, Any]) -> str:
    scores = ", ".join(f"{k} {'-' if v is None else f'{v:.1%}'}" for k, v in r["scores"].items())
    return f"{scores}; gate {'passed' if r['passed'] else 'failed'}; {r['report']}"


def eval_step(run: ArmRun, export: dict[str, Any]) -> dict[str, Any] | None:
    """The policy's suites on the arm's GGUF (``eval.gate.run_gate``), report under the arm's ``eval/``."""
    exp = run.ctx.exp
    key = stable_hash({"gguf": export["gguf_sha256"], **eval_definition(exp)})

    def work() -> dict[str, Any]:
        from eval.gate import run_gate

        outcome = run_gate(export["gguf"], policy=exp.policy, out_root=run.folder, run="eval", suites_dir=exp.suites,
                           log=lambda line: run.say("eval", line), system=eval_system_prompt(exp))
        suites = outcome.report["summary"]["suites"]
        return {"report": str(outcome.run_dir / "report.json"), "passed": outcome.passed,
                "scores": {name: s["score"] for name, s in suites.items()}}

    return run.step("eval", key, work, _show_eval)


def write_done(run: ArmRun, definition: dict[str, str]) -> None:
    """``done.json``: the arm is finished; a re-run skips it, or refuses when its definition has changed."""
    steps = run.state.steps
    done = {"arm": run.name, "definition": definition, "finished": datetime.now(UTC).isoformat(timespec="seconds"),
            "dataset_hash": steps.get("build", {}).get("dataset_hash"),
            "config_hash": steps.get("train", {}).get("config_hash"),
            "gguf": steps["export"]["gguf"], "gguf_sha256": steps["export"]["gguf_sha256"],
            "report": steps["eval"]["report"], "train_report": steps.get("train", {}).get("report"),
            "seconds": {k: v.get("seconds") for k, v in steps.items()}}
    atomic_write_text(run.folder / DONE, json.dumps(done, indent=2, sort_keys=True) + "\n")


def read_done(folder: Path) -> dict[str, Any] | None:
    path = folder / DONE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def is_base(run: ArmRun) -> bool:
    return run.name == BASE_ARM
