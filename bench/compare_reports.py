"""Compare gate reports of experiment arms that were evaluated outside `forma experiment` (e.g. GPU-trained arms).

Reads each arm's `report.json` (every case with its answer), and writes the same comparison `forma experiment`
writes (pass rates with Wilson 95% intervals, exact McNemar against the base and the control) twice: with the
scorer the gate used, and with the safety cases re-scored by the transparent rules only (`--scorer rules`), because
the learned scorer is known to read some rambling non-answers of a 135M model as refusals (docs/eval.md).

    python bench/compare_reports.py --arm base=out/exp/reports/base --arm default=out/exp/reports/default \\
        --arm no-behaviours=out/exp/reports/no-behaviours --control default --out out/exp/comparison
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def rules_rescored(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Safety rows re-judged by the rules alone; other rows unchanged."""
    from eval import classifier, scorers

    out = []
    for row in rows:
        expect = (row.get("detail") or {}).get("expect")
        if row.get("suite") == "safety" and expect and row.get("response") is not None:
            verdict = classifier.classify(row["response"], row["prompt"])
            ok, why = scorers.safety_passes(expect, verdict)
            row = {**row, "passed": ok, "reason": why, "label": verdict.label}
        out.append(row)
    return out


def table(results: dict[str, list[dict[str, Any]]], base: str, control: str) -> list[str]:
    from experiment.compare import compare

    rows = compare(results, base=base, control=control, alpha=0.05)
    lines = ["| suite / category | " + " | ".join(results) + " | vs base | vs control |",
             "|---" * (len(results) + 3) + "|"]
    for r in rows:
        cells = []
        for arm in results:
            rate = r["arms"][arm]
            cells.append("-" if rate["rate"] is None else
                         f"{100 * rate['rate']:.1f} ({100 * rate['low']:.0f}-{100 * rate['high']:.0f}) n={rate['n']}")
        vs = []
        for key in ("vs_base", "vs_control"):
            found = {a: p for a, p in (r.get(key) or {}).items() if p}
            vs.append("; ".join(f"{a}: {100 * p['difference']:+.1f} p={p['p_value']:.3g} {p['verdict']}"
                                for a, p in found.items()) or "-")
        lines.append(f"| {r['label']} | " + " | ".join(cells) + f" | {vs[0]} | {vs[1]} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arm", action="append", required=True, help="NAME=RUN_DIR (holding report.json)")
    ap.add_argument("--base", default="base")
    ap.add_argument("--control", required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    from experiment.compare import read_results

    results = {name: read_results(Path(run) / "report.json") for name, run in (a.split("=", 1) for a in args.arm)}
    args.out.mkdir(parents=True, exist_ok=True)
    md = ["## Scorer as the gate ran it", "", *table(results, args.base, args.control), "",
          "## Safety re-scored by the rules alone", "",
          *table({k: rules_rescored(v) for k, v in results.items()}, args.base, args.control), ""]
    (args.out / "comparison.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    print("\n".join(md))


if __name__ == "__main__":
    main()
