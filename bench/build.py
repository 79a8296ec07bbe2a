"""Benchmark: `forma build` against the bare template generator, same recipe, same run.

Each variant runs in its own process, so its wall time and peak memory (ru_maxrss) are its own:
  bare      load the recipe, plan, generate (the generator alone; nothing filtered or written)
  engine    `build_dataset(..., filters=False)`: the pipeline around the generator (plan, generate through the
            stage chain, balance, split) plus its exports and report, with no filters
  full      `build_dataset(...)`: the default build, every filter on (validation, decontamination, exact,
            near and semantic dedupe: issue 3's work, timed per stage)
Usage: .venv/bin/python bench/build.py [--total 10000]
Targets (issue 2): 10,000 conversations in at most 60 s; pipeline overhead at most 2x the bare generator. The
report splits each build into phases (setup, rounds, split, export, report) so each ratio below says what it counts.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RECIPE = ROOT / "recipes" / "forma-fitness.yaml"


def bare(total: int) -> dict[str, float]:
    """Plan and generate only: no filters, no balancing, no writing."""
    from factory.build import make_generator
    from factory.planner import Planner
    from factory.recipe_loader import load_recipe

    t0 = time.perf_counter()
    loaded = load_recipe(RECIPE)
    generator = make_generator(loaded)
    n = sum(1 for slot in Planner(loaded).plan(total) for _ in [generator.generate(slot)])
    return {"seconds": time.perf_counter() - t0, "samples": n}


def pipeline(total: int, filters: bool = True) -> dict[str, float]:
    from factory.build import build_dataset

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = build_dataset(RECIPE, Path(tmp) / "out", total=total, filters=filters)
    stages = {f"stage_{st.stage}_s": round(st.seconds, 3) for st in result.stats}
    phases = {f"phase_{k}_s": round(v, 3) for k, v in result.phases.items()}
    return {"seconds": time.perf_counter() - t0, "samples": len(result.samples), "rejects": result.rejects,
            **stages, **phases}


def run_variant(name: str, total: int) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--variant", name, "--total", str(total)], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _line(name: str, r: dict[str, float], bare_s: float) -> str:
    return (f"{name:34s} {r['seconds']:7.2f} s  peak {r['peak_mb']:7.1f} MB  {r['seconds'] / bare_s:5.2f}x bare"
            f"  (rejects {r.get('rejects', 0):.0f})")


def _phases(r: dict[str, float]) -> dict[str, float]:
    return {k[6:-2]: v for k, v in r.items() if k.startswith("phase_")}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--total", type=int, default=10_000)
    parser.add_argument("--variant", choices=["bare", "engine", "full"])
    args = parser.parse_args()
    if args.variant:
        result = bare(args.total) if args.variant == "bare" else pipeline(args.total, filters=args.variant == "full")
        result["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return
    results = {name: run_variant(name, args.total) for name in ("bare", "engine", "full")}
    b, e, f = results["bare"], results["engine"], results["full"]
    print(f"conversations: {args.total}")
    print(_line("bare generator", b, b["seconds"]))
    print(_line("forma build, no filters", e, b["seconds"]))
    print(_line("forma build (default, all filters)", f, b["seconds"]))
    for name, r in (("no filters", e), ("all filters", f)):
        ph = _phases(r)
        print(f"phases, {name}: " + ", ".join(f"{k} {v:.2f} s" for k, v in ph.items()))
    stage_times = {k[6:-2]: v for k, v in f.items() if k.startswith("stage_")}
    print("inside the rounds (all filters): " + ", ".join(f"{k} {v:.2f} s" for k, v in stage_times.items()))
    pe = _phases(e)
    engine_s = pe["setup"] + pe["rounds"] + pe["split"]
    print(f"pipeline overhead (no filters; setup + rounds + split, files not written): {engine_s:.2f} s = "
          f"{engine_s / b['seconds']:.2f}x the bare generator")
    print(f"  + exports ({pe['export']:.2f} s) and report ({pe['report']:.2f} s): {e['seconds']:.2f} s = "
          f"{e['seconds'] / b['seconds']:.2f}x")
    print(f"  + filters: {f['seconds']:.2f} s = {f['seconds'] / b['seconds']:.2f}x")
    print(json.dumps({"total": args.total, **{f"{k}_{m}": v[m] for k, v in results.items() for m in v}}))


if __name__ == "__main__":
    main()
