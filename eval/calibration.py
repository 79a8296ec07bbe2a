"""Calibration: the safety scorer measured against expert labels, and the gate check that says whether it is trusted.

``forma eval review-push RUN_DIR`` sends a run's answers to Argilla; experts label them; ``forma eval calibrate
RUN_DIR`` pulls the labels, takes the majority label per answer (ties are dropped: an unresolved disagreement is no
yardstick), and compares the scorer's label from report.json with it: per-label precision and recall, Cohen's kappa
with a percentile-bootstrap 95% interval, the confusion matrix, the experts' own agreement, and how many answers it
rests on. The record (default ``eval/calibration.json``) names the scorer it measured (its weights' SHA-256), so a
refitted scorer does not inherit a calibration it never earned. Every later gate report states the record; a
policy's ``scorer: {min_kappa, min_labels}`` fails the gate when the record falls short.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common.errors import FormaError
from eval.learned import metrics
from eval.policy import ScorerRule
from eval.stats import bootstrap_interval, cohen_kappa
from review.eval_review import majority

DEFAULT_RECORD = Path(__file__).parent / "calibration.json"


def _pairwise_kappa(votes: dict[str, dict[str, str]]) -> dict[str, float | None]:
    users = sorted({u for v in votes.values() for u in v})
    out: dict[str, float | None] = {}
    for a, b in itertools.combinations(users, 2):
        both = [v for v in votes.values() if a in v and b in v]
        k = cohen_kappa([v[a] for v in both], [v[b] for v in both])
        out[f"{a}|{b}"] = None if k is None else round(k, 4)
    return out


def _agreement(scorer: list[str], expert: list[str]) -> dict[str, Any]:
    kappa = cohen_kappa(scorer, expert)
    low, high = bootstrap_interval(scorer, expert, "kappa")
    return {"n": len(expert), "kappa": None if kappa is None else round(kappa, 4),
            "kappa_low": None if low is None else round(low, 4), "kappa_high": None if high is None else round(high, 4),
            "accuracy": round(sum(a == b for a, b in zip(scorer, expert, strict=True)) / len(expert), 4)
            if expert else None}


def _paired_labels(results: dict[str, dict[str, Any]], votes: dict[str, dict[str, str]],
                   scorer_label: Callable[[dict[str, Any]], str | None]) -> tuple[list[str], list[str], int]:
    """(scorer labels, expert majority labels, ties dropped) over the cases both the scorer and experts labelled."""
    scorer, expert, ties = [], [], 0
    for key, v in sorted(votes.items()):
        gold = majority(v)
        row = results.get(key)
        label = scorer_label(row) if row is not None else None
        if label is None:
            continue
        if gold is None:
            ties += 1
            continue
        scorer.append(label)
        expert.append(gold)
    return scorer, expert, ties


def _safety(results: dict[str, dict[str, Any]], votes: dict[str, dict[str, str]]) -> dict[str, Any]:
    scorer, expert, ties = _paired_labels(results, votes,
                                          lambda r: None if r.get("label") is None else str(r["label"]))
    out = {**_agreement(scorer, expert), "ties_dropped": ties, "annotators": sorted({u for x in votes.values()
                                                                                      for u in x}),
           "annotator_kappa": _pairwise_kappa(votes)}
    if expert:
        m = metrics(expert, scorer)
        out.update(labels=m["labels"], confusion=m["confusion"], macro_f1=m["macro_f1"])
    return out


def _accuracy(results: dict[str, dict[str, Any]], votes: dict[str, dict[str, str]]) -> dict[str, Any]:
    scorer, expert, ties = _paired_labels(
        results, votes, lambda r: None if r.get("passed") is None else ("correct" if r["passed"] else "incorrect"))
    return {**_agreement(scorer, expert), "ties_dropped": ties, "annotator_kappa": _pairwise_kappa(votes)}


def calibrate(report: dict[str, Any], labels: dict[str, dict[str, dict[str, str]]]) -> dict[str, Any]:
    """The calibration record for one run's report and the experts' labels (``review.eval_review`` output)."""
    results = {f"{r['suite']}:{r['id']}": r for r in report["results"]}
    record: dict[str, Any] = {"created": datetime.now(UTC).isoformat(timespec="seconds"), "run": report["run"],
                              "scorer": report.get("scorer") or {"kind": "rules"}}
    if "safety" in labels:
        record["safety"] = _safety(results, labels["safety"])
    if "accuracy" in labels:
        record["accuracy"] = _accuracy(results, labels["accuracy"])
    return record


def write_record(record: dict[str, Any], path: Path = DEFAULT_RECORD) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def load_record(path: Path = DEFAULT_RECORD) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise FormaError(f"calibration record is not valid JSON: {exc.msg}", path=path) from None
    return data if isinstance(data, dict) else None


def scorer_id(info: dict[str, Any]) -> str:
    return str(info.get("weights_sha256") or info.get("kind") or "rules")


def check(rule: ScorerRule, record: dict[str, Any] | None, scorer_info: dict[str, Any]) -> dict[str, Any]:
    """``scorer/agreement``: kappa (or its lower bound) on enough expert labels, for this very scorer."""
    base: dict[str, Any] = {"name": "scorer/agreement", "threshold": rule.min_kappa, "op": ">=", "unit": "kappa",
                            "min_cases": rule.min_labels}
    rec = record or {}
    safety = rec.get("safety")
    if not safety:
        return {**base, "value": None, "n": 0, "passed": False,
                "reason": "no calibration against expert labels (forma eval review-push, then forma eval calibrate)"}
    value = safety.get("kappa_low") if rule.use_lower_bound else safety.get("kappa")
    row = {**base, "value": value, "n": safety["n"], "low": safety.get("kappa_low"), "high": safety.get("kappa_high")}
    measured = scorer_id(rec.get("scorer") or {})
    if rule.same_scorer and measured != scorer_id(scorer_info):
        return {**row, "passed": False, "reason": f"the calibration measured a different scorer ({measured[:12]}, "
                f"now {scorer_id(scorer_info)[:12]}): recalibrate"}
    if safety["n"] < rule.min_labels:
        return {**row, "passed": False,
                "reason": f"only {safety['n']} expert-labelled answer(s), the policy needs at least {rule.min_labels}"}
    ok = value is not None and value >= rule.min_kappa
    what = "kappa lower bound" if rule.use_lower_bound else "kappa"
    return {**row, "passed": ok, "reason": "" if ok else f"{what} {value if value is None else round(value, 3)} < "
            f"{rule.min_kappa}"}
