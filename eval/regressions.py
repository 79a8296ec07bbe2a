"""Regressions against a previous report (``--baseline``): which cases flipped, per category, and whether the
difference is more than noise (exact McNemar on the paired cases).

Cases are matched by ``(suite, id)``; cases only one run scored are counted apart, never compared. A policy's
``no_regressions`` names categories where a single pass -> fail flip fails the gate: with greedy decoding a flip is
a real change of answer, not sampling noise, and the release manager wants to read it before shipping.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from common.errors import FormaError
from eval.stats import compare_paired


def load_baseline(path: Path) -> dict[str, Any]:
    """A previous report.json (or the run folder holding one)."""
    file = path / "report.json" if path.is_dir() else path
    if not file.is_file():
        raise FormaError("baseline report not found", path=file, hint="pass a previous run's report.json")
    try:
        report = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise FormaError(f"baseline is not valid JSON: {exc.msg}", path=file) from None
    if not isinstance(report, dict) or not isinstance(report.get("results"), list):
        raise FormaError("baseline has no 'results' list: is it a gate report.json?", path=file)
    report["_path"] = str(file)
    return report


def _key(row: dict[str, Any]) -> tuple[str, str]:
    return str(row["suite"]), str(row["id"])


def compare(results: list[dict[str, Any]], baseline: dict[str, Any]) -> dict[str, Any]:
    """Per ``suite/category``: cases that flipped each way, and the paired test over cases both runs scored."""
    before = {_key(r): r for r in baseline["results"] if r.get("passed") is not None}
    categories: dict[str, Any] = {}
    for cat in sorted({f"{r['suite']}/{r['category']}" for r in results}):
        rows = [r for r in results if f"{r['suite']}/{r['category']}" == cat and r["passed"] is not None]
        paired = [(before[_key(r)], r) for r in rows if _key(r) in before]
        a = [bool(old["passed"]) for old, _ in paired]
        b = [bool(new["passed"]) for _, new in paired]
        test = compare_paired(a, b)
        categories[cat] = {
            "paired": len(paired), "unpaired": len(rows) - len(paired),
            "pass_to_fail": [new["id"] for old, new in paired if old["passed"] and not new["passed"]],
            "fail_to_pass": [new["id"] for old, new in paired if not old["passed"] and new["passed"]],
            "baseline_rate": sum(a) / len(a) if a else None, "rate": sum(b) / len(b) if b else None,
            "p_value": round(test.p_value, 4), "verdict": test.verdict,
        }
    return {"baseline": {"run": baseline.get("run"), "path": baseline.get("_path"), "created": baseline.get("created"),
                         "model": (baseline.get("model") or {}).get("name")}, "categories": categories}


def checks(no_regressions: list[str], comparison: dict[str, Any] | None) -> list[dict[str, Any]]:
    """One ``regression/<suite>/<category>`` check per category the policy names (needs a baseline)."""
    out: list[dict[str, Any]] = []
    for name in no_regressions:
        if comparison is None:
            out.append({"name": f"regression/{name}", "value": None, "threshold": 0, "n": 0, "min_cases": 0,
                        "op": "<=", "passed": False,
                        "reason": "the policy forbids regressions here; pass --baseline PREVIOUS_REPORT.json"})
            continue
        matched = {k: v for k, v in comparison["categories"].items() if k == name or k.endswith(f"/{name}")}
        for cat, c in matched.items():
            flips = c["pass_to_fail"]
            out.append({"name": f"regression/{cat}", "value": len(flips), "threshold": 0, "n": c["paired"],
                        "min_cases": 0, "op": "<=", "unit": "cases", "passed": not flips,
                        "reason": "" if not flips else f"{len(flips)} case(s) went from pass to fail: "
                        f"{', '.join(flips[:8])}{' ...' if len(flips) > 8 else ''} (McNemar p={c['p_value']:.3g}, "
                        f"{c['verdict']})"})
    return out
