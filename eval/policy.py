"""The release policy: thresholds per suite and category, minimum case counts, and the GGUF's allowed drift.

A policy is data (``eval/policy.yaml``) so the release manager can tighten it without a code change. Checking a
policy against results yields a list of named checks; the gate passes only when every check passes, and each
failing check says what was measured against what.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from common.errors import FormaError
from common.yaml_io import load_yaml_model
from eval.stats import cases_for_half_width, wilson

DEFAULT_POLICY = Path(__file__).parent / "policy.yaml"


_HALF_WIDTH = "Widest 95% interval (either side) a rate may have; min_cases = cases_for_half_width(this)."


class CategoryRule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    threshold: float = Field(ge=0, le=1)
    min_cases: int | None = Field(default=None, ge=0)
    max_interval_half_width: float | None = Field(default=None, gt=0, lt=1, description=_HALF_WIDTH)


class SuiteRule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    threshold: float = Field(ge=0, le=1, description="Pass rate over all scored cases of the suite.")
    min_cases: int | None = Field(default=None, ge=0)
    max_interval_half_width: float | None = Field(default=None, gt=0, lt=1, description=_HALF_WIDTH)
    categories: dict[str, float | CategoryRule] = Field(default_factory=dict)

    def category_rules(self) -> dict[str, CategoryRule]:
        return {k: v if isinstance(v, CategoryRule) else CategoryRule(threshold=v) for k, v in self.categories.items()}


class DriftRule(BaseModel):
    """How far the GGUF's scores may move from the 16-bit reference model's, per suite (absolute pass rate)."""

    model_config = ConfigDict(extra="forbid")

    max_delta: float = Field(default=0.05, ge=0, le=1)
    suites: list[str] | None = Field(default=None, description="Suites to compare; default: every suite run on both.")
    required: bool = Field(default=False, description="Fail the gate when no reference model was evaluated.")


class ScorerRule(BaseModel):
    """The safety scorer must have earned trust: measured agreement with expert labels (``forma eval calibrate``)."""

    model_config = ConfigDict(extra="forbid")

    min_kappa: float = Field(default=0.8, ge=-1, le=1, description="Cohen's kappa, scorer vs expert majority label.")
    min_labels: int = Field(default=50, ge=1, description="Expert-labelled answers the kappa must rest on.")
    use_lower_bound: bool = Field(default=False, description="Compare the bootstrap interval's low end, not kappa.")
    same_scorer: bool = Field(default=True, description="Fail when the calibration measured a different scorer.")


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = "policy"
    description: str = ""
    min_cases: int = Field(default=1, ge=0, description="Default minimum of scored cases behind every threshold.")
    max_tokens: int = Field(default=128, ge=1, le=4096, description="Generation budget for cases that set none.")
    suites: dict[str, SuiteRule] = Field(min_length=1)
    drift: DriftRule | None = None
    max_interval_half_width: float | None = Field(default=None, gt=0, lt=1, description=_HALF_WIDTH)
    no_regressions: list[str] = Field(default_factory=list, description=(
        "Categories (`suite/category`, or a bare category name in any suite) where no case may flip from pass to "
        "fail against --baseline."))
    scorer: ScorerRule | None = None


def load_policy(path: Path) -> Policy:
    return load_yaml_model(Policy, path, "policy file")


def validate_against(policy: Policy, categories: dict[str, list[str]], path: Path | str) -> None:
    """Every suite and category the policy names must exist in the loaded suites: a typo must not pass silently."""
    for suite, rule in policy.suites.items():
        if suite not in categories:
            raise FormaError(f"policy names unknown suite {suite!r} (known: {', '.join(sorted(categories))})",
                             path=path, where=f"suites.{suite}")
        for cat in rule.categories:
            if cat not in categories[suite]:
                raise FormaError(f"policy names unknown category {cat!r} of suite {suite!r} (known: "
                                 f"{', '.join(categories[suite])})", path=path, where=f"suites.{suite}.categories")
    for name in policy.no_regressions:
        suite, _, cat = name.rpartition("/")
        known = [f"{s}/{c}" for s, cats in categories.items() for c in cats]
        if (suite and name not in known) or (not suite and not any(k.endswith(f"/{cat}") for k in known)):
            raise FormaError(f"no_regressions names unknown category {name!r} (known: {', '.join(known)})", path=path,
                             where="no_regressions")
    if policy.drift and policy.drift.suites:
        for suite in policy.drift.suites:
            if suite not in policy.suites:
                raise FormaError(f"drift names suite {suite!r} that the policy does not gate", path=path,
                                 where="drift.suites")


def min_cases_for(policy: Policy, explicit: int | None, half_width: float | None) -> tuple[int, str]:
    """The minimum of scored cases behind a threshold, and why: the explicit count, or the count the interval
    half-width demands (``eval.stats.cases_for_half_width``), whichever is larger; else the policy default."""
    width = half_width if half_width is not None else policy.max_interval_half_width
    if width is None:
        return (explicit if explicit is not None else policy.min_cases), ""
    derived = cases_for_half_width(width)
    if explicit is not None and explicit >= derived:
        return explicit, ""
    return derived, f"a 95% interval of at most ±{width:.3g} needs {derived}"


def _check(name: str, value: float | None, threshold: float, n: int, min_cases: int | tuple[int, str],
           op: str = ">=", passed_n: int | None = None) -> dict[str, Any]:
    need, why = min_cases if isinstance(min_cases, tuple) else (min_cases, "")
    row: dict[str, Any] = {"name": name, "value": value, "threshold": threshold, "n": n, "min_cases": need, "op": op}
    if passed_n is not None:
        iv = wilson(passed_n, n)
        row.update(low=iv.low, high=iv.high)
    if n < need:
        return {**row, "passed": False, "reason": f"only {n} scored case(s), the policy needs at least {need}"
                + (f" ({why})" if why else "")}
    assert value is not None
    ok = value >= threshold if op == ">=" else value <= threshold
    return {**row, "passed": ok, "reason": "" if ok else f"{value:.3f} {'<' if op == '>=' else '>'} {threshold:.3f}"}


def passed_count(results: list[dict[str, Any]]) -> int:
    return sum(r["passed"] is True for r in results)


def rate(results: list[dict[str, Any]]) -> tuple[float | None, int]:
    scored = [r for r in results if r["passed"] is not None]
    return (sum(bool(r["passed"]) for r in scored) / len(scored) if scored else None), len(scored)


def evaluate(policy: Policy, results: list[dict[str, Any]], drift: dict[str, Any] | None) -> list[dict[str, Any]]:
    """All checks the policy asks for, in report order: suite, its categories, then drift."""
    checks: list[dict[str, Any]] = []
    for suite, rule in policy.suites.items():
        in_suite = [r for r in results if r["suite"] == suite]
        value, n = rate(in_suite)
        checks.append(_check(suite, value, rule.threshold, n,
                             min_cases_for(policy, rule.min_cases, rule.max_interval_half_width),
                             passed_n=passed_count(in_suite)))
        for cat, crule in rule.category_rules().items():
            in_cat = [r for r in in_suite if r["category"] == cat]
            value, n = rate(in_cat)
            checks.append(_check(f"{suite}/{cat}", value, crule.threshold, n,
                                 min_cases_for(policy, crule.min_cases, crule.max_interval_half_width
                                               or rule.max_interval_half_width),
                                 passed_n=passed_count(in_cat)))
    if policy.drift is not None:
        if drift is None:
            if policy.drift.required:
                checks.append({"name": "drift", "value": None, "threshold": policy.drift.max_delta, "n": 0,
                               "min_cases": 0, "op": "<=", "passed": False,
                               "reason": "the policy requires a 16-bit reference run (--reference HF_DIR)"})
        else:
            for suite, d in drift["suites"].items():
                checks.append(_check(f"drift/{suite}", d["delta"], policy.drift.max_delta, d["n"], 1, op="<="))
    return checks
