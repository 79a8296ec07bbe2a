"""Small-sample statistics for gate decisions: intervals on pass rates, paired tests between runs, agreement.

A suite of 60 cases moves 1.7 points per case, so every rate the gate or an experiment reports carries its 95%
interval, and a difference between two models on the same cases is judged with a paired test (cases flip between
pass and fail), not by comparing two rates. SciPy supplies the distributions; the formulas are short and written
out here so the report can say exactly what was computed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Z95 = 1.959963984540054


@dataclass(frozen=True)
class Interval:
    """A rate with its 95% Wilson score interval (sound at small n and at rates near 0 or 1, unlike Wald's)."""

    rate: float | None
    low: float | None
    high: float | None
    n: int

    def as_dict(self) -> dict[str, float | int | None]:
        return {"rate": self.rate, "low": self.low, "high": self.high, "n": self.n}


def wilson(passed: int, n: int, z: float = Z95) -> Interval:
    """Wilson score interval for ``passed`` successes out of ``n``."""
    if n <= 0:
        return Interval(None, None, None, 0)
    p = passed / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half), n)


def cases_for_half_width(half_width: float, rate: float = 0.5, z: float = Z95) -> int:
    """How many cases a rate needs so that its 95% interval is at most ``half_width`` either side (normal
    approximation at ``rate``; 0.5 is the worst case). A policy derives its ``min_cases`` from this."""
    if not 0 < half_width < 1:
        raise ValueError("half_width must lie between 0 and 1")
    return math.ceil(z * z * rate * (1 - rate) / (half_width * half_width))


@dataclass(frozen=True)
class PairedComparison:
    """Two runs over the same cases: how many flipped each way, the exact McNemar p-value, and a verdict."""

    n: int
    a_only: int  # passed in A, failed in B
    b_only: int  # passed in B, failed in A
    difference: float  # rate(B) - rate(A)
    p_value: float
    verdict: Literal["better", "worse", "not distinguishable"]

    def as_dict(self) -> dict[str, float | int | str]:
        return {"n": self.n, "a_only": self.a_only, "b_only": self.b_only, "difference": self.difference,
                "p_value": self.p_value, "verdict": self.verdict}


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar test: a binomial test of the discordant pairs against 1/2."""
    from scipy.stats import binomtest

    discordant = a_only + b_only
    if discordant == 0:
        return 1.0
    return float(binomtest(b_only, discordant, 0.5, alternative="two-sided").pvalue)


def compare_paired(a: Sequence[bool], b: Sequence[bool], alpha: float = 0.05) -> PairedComparison:
    """Is B better than A on the same cases? ``a[i]`` and ``b[i]`` are case i's pass/fail in each run."""
    if len(a) != len(b):
        raise ValueError(f"paired runs need the same cases ({len(a)} vs {len(b)})")
    a_only = sum(x and not y for x, y in zip(a, b, strict=True))
    b_only = sum(y and not x for x, y in zip(a, b, strict=True))
    n = len(a)
    diff = (sum(b) - sum(a)) / n if n else 0.0
    p = mcnemar_exact(a_only, b_only)
    verdict: Literal["better", "worse", "not distinguishable"] = "not distinguishable"
    if p < alpha:
        verdict = "better" if b_only > a_only else "worse"
    return PairedComparison(n=n, a_only=a_only, b_only=b_only, difference=diff, p_value=p, verdict=verdict)


def cohen_kappa(x: Sequence[str], y: Sequence[str]) -> float | None:
    """Cohen's kappa between two labelings of the same items (None when undefined)."""
    if len(x) != len(y) or not x:
        return None
    labels = sorted(set(x) | set(y))
    n = len(x)
    observed = sum(i == j for i, j in zip(x, y, strict=True)) / n
    expected = sum((x.count(k) / n) * (y.count(k) / n) for k in labels)
    if expected >= 1:
        return None
    return (observed - expected) / (1 - expected)


def bootstrap_interval(x: Sequence[str], y: Sequence[str], statistic: str = "kappa", rounds: int = 2000,
                       seed: int = 0) -> tuple[float | None, float | None]:
    """Percentile bootstrap 95% interval of kappa (``statistic="kappa"``) or accuracy over paired labels."""
    import random

    if not x:
        return None, None
    rng = random.Random(seed)
    n = len(x)
    values: list[float] = []
    for _ in range(rounds):
        idx = [rng.randrange(n) for _ in range(n)]
        xs, ys = [x[i] for i in idx], [y[i] for i in idx]
        v = cohen_kappa(xs, ys) if statistic == "kappa" else sum(a == b for a, b in zip(xs, ys, strict=True)) / n
        if v is not None:
            values.append(v)
    if not values:
        return None, None
    values.sort()
    return values[int(0.025 * (len(values) - 1))], values[int(0.975 * (len(values) - 1))]
