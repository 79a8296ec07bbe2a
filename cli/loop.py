"""``forma loop``: the whole path on the embedded default, as the README's main command runs it.

build the dataset -> train SmolLM2-135M briefly on CPU -> export GGUF + Modelfile -> eval suites and release gate
-> reports -> (only when the gate passed) the release bundle. Each step is the same code its own command runs; this
module only wires their outputs together, so there is one implementation of each step. A rerun replaces the
previous run's dataset, GGUF folder and bundle under ``out`` as a whole (each through ``common.outdir``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TRAIN_CONFIG = ROOT / "train" / "configs" / "smollm2-cpu.yaml"
DEMO_POLICY = ROOT / "eval" / "policy-demo.yaml"


@dataclass
class LoopResult:
    dataset: Path
    merged_model: Path | None = None
    gguf: Path | None = None
    modelfile: Path | None = None
    report_dir: Path | None = None
    gate_passed: bool = False
    bundle: Path | None = None
    seconds: dict[str, float] = field(default_factory=dict)


def run_loop(recipe: Path, out: Path, *, train_config: Path = DEFAULT_TRAIN_CONFIG, policy: Path = DEMO_POLICY,
             max_steps: int | None = None, quant: str = "q4_k_m", reports: Path | None = None,
             drift: bool = False, suites: Path | None = None, total: int | None = None,
             log: Callable[[str], None] = print) -> LoopResult:
    """Build, train, export, gate and (when the gate passes) bundle; ``suites`` and ``total`` make a small run."""
    from common.paths import reports_root
    from factory.build import build_dataset

    reports = reports or reports_root()

    def timed(name: str, started: float) -> None:
        result.seconds[name] = round(time.perf_counter() - started, 1)
        log(f"[{name}] done in {result.seconds[name]} s")

    t = time.perf_counter()
    built = build_dataset(recipe, out / "dataset", progress=True, total=total)
    result = LoopResult(dataset=built.out)
    for miss in built.quality_misses:
        log(f"dataset quality: {miss} (see {built.out / 'README.md'})")
    timed("build", t)

    from train.config import load_config
    from train.sft import train

    t = time.perf_counter()
    overrides: dict[str, object] = {"dataset": built.out, "output_dir": out / "train", "reports_dir": reports}
    if max_steps is not None:
        overrides["max_steps"] = max_steps
    trained = train(load_config(train_config, **overrides))
    result.merged_model = trained.merged_dir
    timed("train", t)
    if trained.merged_dir is None:
        log("training wrote no merged model (save_merged: false); stopping before export")
        return result

    from export.gguf_export import export_gguf

    t = time.perf_counter()
    exported = export_gguf(trained.merged_dir, out / "gguf", quants=(quant,))
    result.gguf, result.modelfile = exported.ggufs[quant], exported.modelfile
    timed("export", t)

    from eval.gate import run_gate

    t = time.perf_counter()
    outcome = run_gate(str(result.gguf), policy=policy, out_root=reports, suites_dir=suites,
                       reference=trained.merged_dir if drift else None, log=log)
    result.report_dir, result.gate_passed = outcome.run_dir, outcome.passed
    timed("eval", t)
    if not outcome.passed:
        log(f"release gate FAILED: see {outcome.run_dir / 'report.html'}; no bundle assembled")
        return result

    from eval.release import BundleInputs, assemble

    config_copy = out / "train" / "train-config.yaml"
    config_copy.write_text(Path(train_config).read_text(encoding="utf-8"), encoding="utf-8")
    bundle = out / "release"
    assemble(BundleInputs(gguf=result.gguf, report_dir=outcome.run_dir, modelfile=exported.modelfile,
                          dataset_dir=built.out, training_config=config_copy, out=bundle,
                          base_model=str(trained.output_dir), overwrite=True))
    result.bundle = bundle
    log(f"release bundle: {bundle}")
    return result
