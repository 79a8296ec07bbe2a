"""Benchmark: the whole `forma build` pipeline against the bare template generator, same recipe, same run.

Each variant runs in its own subprocess so its wall time and peak memory (ru_maxrss) are its own.
Usage: .venv/bin/python bench/build.py [--total 10000]
Targets (issue 2): 10,000 conversations in at most 60 s; pipeline at most 2x the bare generator. The filters
(validation, decontamination, three dedupe levels) are issue 3's work and are timed separately inside the run.
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


def pipeline(total: int) -> dict[str, float]:
    from factory.build import build_dataset

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        result = build_dataset(RECIPE, Path(tmp) / "out", total=total)
    stages = {f"stage_{st.stage}_s": round(st.seconds, 3) for st in result.stats}
    return {"seconds": time.perf_counter() - t0, "samples": len(result.samples), "rejects": result.rejects, **stages}


def run_variant(name: str, total: int) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--variant", name, "--total", str(total)], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--total", type=int, default=10_000)
    parser.add_argument("--variant", choices=["bare", "pipeline"])
    args = parser.parse_args()
    if args.variant:
        result = (bare if args.variant == "bare" else pipeline)(args.total)
        result["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return
    results = {name: run_variant(name, args.total) for name in ("bare", "pipeline")}
    b, p = results["bare"], results["pipeline"]
    print(f"conversations: {args.total}")
    print(f"bare generator : {b['seconds']:7.2f} s  peak {b['peak_mb']:7.1f} MB")
    print(f"forma build    : {p['seconds']:7.2f} s  peak {p['peak_mb']:7.1f} MB  (rejects {p.get('rejects', 0)})")
    print(f"pipeline / bare: {p['seconds'] / b['seconds']:.2f}x time, {p['peak_mb'] / b['peak_mb']:.2f}x memory")
    stage_times = {k[6:-2]: v for k, v in p.items() if k.startswith("stage_")}
    filters = sum(v for k, v in stage_times.items() if k != "generate")
    print("inside the pipeline: " + ", ".join(f"{k} {v:.2f} s" for k, v in stage_times.items()))
    machinery = p["seconds"] - filters
    print(f"pipeline without the filters' own work (plan, generate, balance, split, export, report): "
          f"{machinery:.2f} s = {machinery / b['seconds']:.2f}x the bare generator")
    print(json.dumps({"total": args.total, **{f"{k}_{m}": v[m] for k, v in results.items() for m in v}}))


if __name__ == "__main__":
    main()
