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

DEFAULT_POLICY = Path(__file__).parent / "policy.yaml"


class CategoryRule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    threshold: float = Field(ge=0, le=1)
    min_cases: int | None = Field(default=None, ge=0)


class SuiteRule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    threshold: float = Field(ge=0, le=1, description="Pass rate over all scored cases of the suite.")
    min_cases: int | None = Field(default=None, ge=0)
    categories: dict[str, float | CategoryRule] = Field(default_factory=dict)

    def category_rules(self) -> dict[str, CategoryRule]:
        return {k: v if isinstance(v, CategoryRule) else CategoryRule(threshold=v) for k, v in self.categories.items()}


class DriftRule(BaseModel):
    """How far the GGUF's scores may move from the 16-bit reference model's, per suite (absolute pass rate)."""

    model_config = ConfigDict(extra="forbid")

    max_delta: float = Field(default=0.05, ge=0, le=1)
    suites: list[str] | None = Field(default=None, description="Suites to compare; default: every suite run on both.")
    required: bool = Field(default=False, description="Fail the gate when no reference model was evaluated.")


class Policy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = "policy"
    description: str = ""
    min_cases: int = Field(default=1, ge=0, description="Default minimum of scored cases behind every threshold.")
    max_tokens: int = Field(default=128, ge=1, le=4096, description="Generation budget for cases that set none.")
    suites: dict[str, SuiteRule] = Field(min_length=1)
    drift: DriftRule | None = None


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
    if policy.drift and policy.drift.suites:
        for suite in policy.drift.suites:
            if suite not in policy.suites:
                raise FormaError(f"drift names suite {suite!r} that the policy does not gate", path=path,
                                 where="drift.suites")


def _check(name: str, value: float | None, threshold: float, n: int, min_cases: int, op: str = ">=") -> dict[str, Any]:
    if n < min_cases:
        return {"name": name, "value": value, "threshold": threshold, "n": n, "min_cases": min_cases, "op": op,
                "passed": False, "reason": f"only {n} scored case(s), the policy needs at least {min_cases}"}
    assert value is not None
    ok = value >= threshold if op == ">=" else value <= threshold
    return {"name": name, "value": value, "threshold": threshold, "n": n, "min_cases": min_cases, "op": op,
            "passed": ok, "reason": "" if ok else f"{value:.3f} {'<' if op == '>=' else '>'} {threshold:.3f}"}


def rate(results: list[dict[str, Any]]) -> tuple[float | None, int]:
    scored = [r for r in results if r["passed"] is not None]
    return (sum(bool(r["passed"]) for r in scored) / len(scored) if scored else None), len(scored)


def evaluate(policy: Policy, results: list[dict[str, Any]], drift: dict[str, Any] | None) -> list[dict[str, Any]]:
    """All checks the policy asks for, in report order: suite, its categories, then drift."""
    checks: list[dict[str, Any]] = []
    for suite, rule in policy.suites.items():
        in_suite = [r for r in results if r["suite"] == suite]
        value, n = rate(in_suite)
        checks.append(_check(suite, value, rule.threshold, n, rule.min_cases if rule.min_cases is not None
                             else policy.min_cases))
        for cat, crule in rule.category_rules().items():
            value, n = rate([r for r in in_suite if r["category"] == cat])
            checks.append(_check(f"{suite}/{cat}", value, crule.threshold, n,
                                 crule.min_cases if crule.min_cases is not None else policy.min_cases))
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
