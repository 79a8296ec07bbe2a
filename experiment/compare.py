"""The figures of a comparison: per suite and category, each arm's pass rate with its 95% Wilson interval, and each
arm against the base and against the control with the exact McNemar test over the cases both scored.

Only the eval reports' per-case rows are read (``results``: id, suite, category, passed), so the figures can be
checked against those reports line by line. A case a runner skipped (``passed: null``) counts in no rate and no pair.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from eval.stats import compare_paired, wilson

#: case id -> passed, per (suite, category); category None is the whole suite
Rows = dict[str, bool]


def read_results(report: str | Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(Path(report).read_text(encoding="utf-8"))["results"]
    return rows


def group_keys(results: dict[str, list[dict[str, Any]]]) -> list[tuple[str, str | None]]:
    """Every suite, then its categories, in a stable order (the union over the arms)."""
    pairs = {(r["suite"], r["category"]) for rows in results.values() for r in rows}
    out: list[tuple[str, str | None]] = []
    for suite in sorted({s for s, _ in pairs}):
        out.append((suite, None))
        out.extend((suite, c) for c in sorted(c for s, c in pairs if s == suite))
    return out


def scored(rows: list[dict[str, Any]], suite: str, category: str | None) -> Rows:
    return {r["id"]: bool(r["passed"]) for r in rows if r["suite"] == suite and r["passed"] is not None
            and (category is None or r["category"] == category)}


def rate_of(rows: Rows) -> dict[str, Any]:
    passed = sum(rows.values())
    return {"passed": passed, **wilson(passed, len(rows)).as_dict()}


def paired(reference: Rows, arm: Rows, alpha: float) -> dict[str, Any]:
    """``arm`` against ``reference`` over the case ids both scored: better / worse / not distinguishable."""
    ids = sorted(set(reference) & set(arm))
    result = compare_paired([reference[i] for i in ids], [arm[i] for i in ids], alpha=alpha).as_dict()
    return {**result, "verdict": result["verdict"] if ids else "no common cases"}


def label(suite: str, category: str | None) -> str:
    return suite if category is None else f"{suite}/{category}"


def compare(results: dict[str, list[dict[str, Any]]], base: str, control: str, alpha: float) -> list[dict[str, Any]]:
    """One entry per suite and category: rates per arm, differences against the base and the control."""
    groups = []
    for suite, category in group_keys(results):
        rows = {arm: scored(r, suite, category) for arm, r in results.items()}
        groups.append({
            "suite": suite, "category": category, "label": label(suite, category),
            "arms": {arm: rate_of(x) for arm, x in rows.items()},
            "vs_base": {arm: paired(rows[base], x, alpha) for arm, x in rows.items() if arm != base},
            "vs_control": {arm: paired(rows[control], x, alpha) for arm, x in rows.items()
                           if arm not in (base, control)},
        })
    return groups
