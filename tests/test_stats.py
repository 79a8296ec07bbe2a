"""The statistics behind gate intervals and experiment verdicts, checked against known values."""

from __future__ import annotations

import pytest

from eval.stats import cases_for_half_width, cohen_kappa, compare_paired, mcnemar_exact, wilson


def test_wilson_matches_the_textbook_value() -> None:
    ci = wilson(8, 10)  # Wilson 95% for 8/10: 0.490 to 0.943 (Newcombe 1998, table I)
    assert ci.rate == 0.8
    assert ci.low == pytest.approx(0.4902, abs=1e-3) and ci.high == pytest.approx(0.9433, abs=1e-3)
    assert wilson(0, 0).rate is None
    edge = wilson(10, 10)
    assert edge.high == pytest.approx(1.0) and edge.low is not None and edge.low == pytest.approx(0.7225, abs=1e-3)


def test_min_cases_from_interval_width() -> None:
    assert cases_for_half_width(0.1) == 97  # 1.96^2 * 0.25 / 0.01
    assert cases_for_half_width(0.05, rate=0.9) == 139
    with pytest.raises(ValueError):
        cases_for_half_width(0)


def test_mcnemar_and_verdicts() -> None:
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(1, 9) == pytest.approx(0.02148, abs=1e-4)  # 2 * P(X <= 1), X ~ Bin(10, 0.5)
    base = [False] * 40 + [True] * 10
    better = [True] * 30 + [False] * 10 + [True] * 10
    verdict = compare_paired(base, better)
    assert verdict.verdict == "better" and verdict.b_only == 30 and verdict.p_value < 0.001
    assert compare_paired(better, base).verdict == "worse"
    noisy = [True, False] * 10
    assert compare_paired(noisy, list(reversed(noisy))).verdict == "not distinguishable"
    with pytest.raises(ValueError):
        compare_paired([True], [True, False])


def test_kappa() -> None:
    assert cohen_kappa(["a", "b", "a", "b"], ["a", "b", "a", "b"]) == 1.0
    assert cohen_kappa(["a", "a", "b", "b"], ["a", "b", "a", "b"]) == 0.0
    assert cohen_kappa([], []) is None
