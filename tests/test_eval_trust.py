"""Can the gate's verdicts be trusted: intervals and interval-derived case minimums, regressions against a baseline,
the scorer's calibration check, the learned scorer's fit discipline, and the report in headless Chromium."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from common.errors import FormaError
from eval import calibration, learned, regressions
from eval.gate import summarize
from eval.policy import Policy, ScorerRule, evaluate, validate_against
from eval.report import write_report
from eval.stats import cases_for_half_width
from tests.helpers.encoders import HashedBagEncoder

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def rows(suite: str, category: str, outcomes: str, prefix: str = "c") -> list[dict[str, Any]]:
    """Result rows: 'P' passed, 'F' failed, '-' skipped."""
    return [{"id": f"{prefix}{i}", "suite": suite, "category": category, "kind": "generate", "prompt": f"q{i}",
             "system": None, "response": f"a{i}", "finish_reason": "stop", "completion_tokens": 5, "seconds": 0.1,
             "passed": None if o == "-" else o == "P", "reason": "" if o == "P" else "failed", "detail": {},
             "label": "comply"} for i, o in enumerate(outcomes)]


def test_min_cases_derived_from_interval_width_fails_small_categories() -> None:
    need = cases_for_half_width(0.2)  # 25
    pol = Policy(max_interval_half_width=0.2, suites={"safety": {"threshold": 0.5, "categories": {
        "escalation": 0.5, "harmful": {"threshold": 0.5, "min_cases": 3}}}})
    results = rows("safety", "escalation", "P" * 30) + rows("safety", "harmful", "PPPPF", prefix="h")
    checks = {c["name"]: c for c in evaluate(pol, results, None)}
    assert checks["safety/escalation"]["passed"] and checks["safety/escalation"]["min_cases"] == need
    harmful = checks["safety/harmful"]
    assert not harmful["passed"] and harmful["min_cases"] == need
    assert f"needs at least {need}" in harmful["reason"] and "±0.2" in harmful["reason"]
    # every check carries the Wilson interval of its rate
    assert harmful["low"] < 0.8 < harmful["high"]


def test_summary_carries_wilson_intervals() -> None:
    s = summarize(rows("safety", "escalation", "PPPPPPPPPF-"))["suites"]["safety"]
    cat = s["categories"]["escalation"]
    assert cat["n"] == 10 and cat["skipped"] == 1 and cat["score"] == 0.9
    assert cat["low"] == pytest.approx(0.5958, abs=1e-3) and cat["high"] == pytest.approx(0.9821, abs=1e-3)
    assert s["low"] == cat["low"]


def _baseline(results: list[dict[str, Any]], tmp: Path) -> Path:
    path = tmp / "base" / "report.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"run": "base-run", "created": "2026-11-01T00:00:00+00:00",
                                "model": {"name": "old.gguf"}, "results": results}))
    return path


def test_regressions_list_flips_per_category_with_mcnemar(tmp_path: Path) -> None:
    old = rows("safety", "escalation", "PPPPPPPPPP") + rows("safety", "harmful", "FFFFF", prefix="h")
    new = rows("safety", "escalation", "PPPPPPPPFF") + rows("safety", "harmful", "PPPPP", prefix="h")
    comparison = regressions.compare(new, regressions.load_baseline(_baseline(old, tmp_path).parent))
    esc = comparison["categories"]["safety/escalation"]
    assert esc["pass_to_fail"] == ["c8", "c9"] and esc["fail_to_pass"] == [] and esc["paired"] == 10
    assert esc["p_value"] == pytest.approx(0.5) and esc["verdict"] == "not distinguishable"
    assert comparison["categories"]["safety/harmful"]["fail_to_pass"] == [f"h{i}" for i in range(5)]
    checks = {c["name"]: c for c in regressions.checks(["escalation", "safety/harmful"], comparison)}
    assert not checks["regression/safety/escalation"]["passed"]
    assert "c8, c9" in checks["regression/safety/escalation"]["reason"]
    assert checks["regression/safety/harmful"]["passed"]
    # forbidding regressions without a baseline fails rather than passing unseen
    assert not regressions.checks(["escalation"], None)[0]["passed"]


def test_no_regressions_must_name_a_real_category() -> None:
    pol = Policy(suites={"safety": {"threshold": 0.5}}, no_regressions=["escalaton"])
    with pytest.raises(FormaError, match="escalaton"):
        validate_against(pol, {"safety": ["escalation", "harmful"]}, "p.yaml")


def test_bad_baseline_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "report.json").write_text("{}")
    with pytest.raises(FormaError, match="results"):
        regressions.load_baseline(tmp_path)
    with pytest.raises(FormaError, match="not found"):
        regressions.load_baseline(tmp_path / "nope.json")


def _report_with_labels(labels: list[str]) -> dict[str, Any]:
    results = rows("safety", "escalation", "P" * len(labels))
    for r, label in zip(results, labels, strict=True):
        r["label"] = label
    return {"run": "r1", "results": results, "scorer": {"kind": "learned", "weights_sha256": "abc123"}}


def test_calibration_measures_the_scorer_against_expert_majority() -> None:
    scorer = ["comply", "refuse", "escalate", "refuse", "comply", "escalate", "comply", "refuse"]
    report = _report_with_labels(scorer)
    expert = ["comply", "refuse", "escalate", "comply", "comply", "escalate", "comply", "refuse"]
    votes = {f"safety:c{i}": {"ann1": g, "ann2": g} for i, g in enumerate(expert)}
    votes["safety:c7"] = {"ann1": "refuse", "ann2": "comply"}  # a tie: dropped, not counted
    record = calibration.calibrate(report, {"safety": votes})
    s = record["safety"]
    assert s["n"] == 7 and s["ties_dropped"] == 1 and s["annotators"] == ["ann1", "ann2"]
    assert s["labels"]["refuse"]["precision"] == 0.5 and s["labels"]["comply"]["recall"] == 0.75
    assert s["confusion"]["comply"]["refuse"] == 1
    assert 0.5 < s["kappa"] < 1 and s["kappa_low"] <= s["kappa"] <= s["kappa_high"]
    info = {"kind": "learned", "weights_sha256": "abc123"}
    assert calibration.check(ScorerRule(min_kappa=0.5, min_labels=5), record, info)["passed"]
    strict = calibration.check(ScorerRule(min_kappa=0.95, min_labels=5), record, info)
    assert not strict["passed"] and "< 0.95" in strict["reason"]
    few = calibration.check(ScorerRule(min_kappa=0.5, min_labels=50), record, info)
    assert not few["passed"] and "only 7" in few["reason"]
    other = calibration.check(ScorerRule(min_kappa=0.5, min_labels=5), record, {"weights_sha256": "zzz"})
    assert not other["passed"] and "different scorer" in other["reason"]
    none = calibration.check(ScorerRule(), None, info)
    assert not none["passed"] and "calibrate" in none["reason"]




def test_fit_is_deterministic_records_its_inputs_and_refuses_heldout(tmp_path: Path) -> None:
    src = learned.LABELED_DIR
    train = tmp_path / "train.jsonl"
    train.write_text("".join((src / "train.jsonl").read_text().splitlines(keepends=True)[::4]))
    enc: Any = HashedBagEncoder()
    a = learned.fit([train], src / "tuning.jsonl", encoder=enc, grid=(1.0, 10.0))
    b = learned.fit([train], src / "tuning.jsonl", encoder=enc, grid=(1.0, 10.0))
    assert np.array_equal(a.coef, b.coef) and a.meta["C"] == b.meta["C"]
    assert a.meta["train_files"] == {"train.jsonl": learned.sha256_file(train)}
    assert set(a.meta["tuning_log_loss"]) == {"1", "10"}
    a.save(tmp_path / "head")
    loaded = learned.Head.load(tmp_path / "head")
    assert np.allclose(loaded.coef, a.coef, atol=1e-6) and loaded.meta["weights_sha256"]
    # a held-out set not yet retired (a fresh one being written, say) is refused by name, before it is read;
    # heldout_v3 and heldout_v4 are retired since #14
    unseen = tmp_path / "heldout_unseen.jsonl"
    unseen.write_text(train.read_text())
    assert learned.still_held_out(unseen) and not learned.still_held_out(src / "heldout_v4.jsonl")
    with pytest.raises(FormaError, match="training files only"):
        learned.fit([unseen], src / "tuning.jsonl", encoder=enc)
    (tmp_path / "head" / "head.npz").write_bytes(b"tampered")
    with pytest.raises(FormaError, match="SHA-256"):
        learned.Head.load(tmp_path / "head")


def test_shipped_head_matches_the_training_files() -> None:
    meta = json.loads((learned.SCORER_DIR / "head.json").read_text())
    want = {p.name: learned.sha256_file(p) for p in learned.train_files()}
    assert meta["train_files"] == want, "train*.jsonl changed: refit with `forma eval scorer fit`"
    assert meta["embedding_model"] == learned.EMBEDDING_MODEL
    v2 = meta["heldout"]["heldout_v2"]
    assert v2["n"] == 371 and set(v2["confusion"]) == {"comply", "refuse", "escalate"}


def test_rules_fallback_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> None:
        raise FormaError("the learned scorer needs sentence-transformers (sentence_transformers is missing)")

    monkeypatch.setattr(learned, "Encoder", broken)
    scorer = learned.load_scorer("auto")
    assert isinstance(scorer, learned.RuleScorer) and "sentence-transformers" in scorer.note
    assert scorer.classify_many(["q"], ["I can't help with that."])[0].label == "refuse"
    with pytest.raises(FormaError):
        learned.load_scorer("learned")


def _synthetic_report(tmp: Path) -> dict[str, Any]:
    old = rows("safety", "escalation", "PPPPPPPPPP") + rows("safety", "harmful", "FFFFF", prefix="h")
    new = rows("safety", "escalation", "PPPPPPPPFF") + rows("safety", "harmful", "PPPPP", prefix="h")
    pol = Policy(max_interval_half_width=0.25, no_regressions=["escalation"], scorer=ScorerRule(min_labels=5),
                 suites={"safety": {"threshold": 0.5, "categories": {"escalation": 0.5, "harmful": 0.5}}})
    comparison = regressions.compare(new, regressions.load_baseline(_baseline(old, tmp)))
    scorer = {"kind": "learned", "embedding_model": learned.EMBEDDING_MODEL, "weights_sha256": "abc123",
              "fitted": "2026-11-29"}
    record = {"run": "r0", "created": "2026-11-29T10:00:00+00:00", "scorer": scorer,
              "safety": {"n": 60, "kappa": 0.8312, "kappa_low": 0.71, "kappa_high": 0.92, "annotators": ["a", "b"],
                         "labels": {k: {"precision": 0.9, "recall": 0.8, "support": 20} for k in
                                    ("comply", "refuse", "escalate")}}}
    checks = (evaluate(pol, new, None) + regressions.checks(pol.no_regressions, comparison)
              + [calibration.check(pol.scorer, record, scorer)])  # type: ignore[arg-type]
    return {"run": "synthetic", "created": "2026-11-29T11:00:00+00:00", "passed": all(c["passed"] for c in checks),
            "model": {"name": "new.gguf", "kind": "gguf", "decoding": "greedy"},
            "policy": {"path": "<inline>", **pol.model_dump(mode="json")}, "checks": checks,
            "summary": summarize(new), "suites": {}, "drift": None, "classifier": {}, "scorer": scorer,
            "calibration": record, "regressions": comparison, "wall_seconds": 1.0, "results": new, "override": None}


def test_report_shows_intervals_regressions_and_calibration_in_headless_chromium(tmp_path: Path) -> None:
    report = _synthetic_report(tmp_path)
    paths = write_report(report, tmp_path / "run")
    md = paths["md"].read_text()
    assert "| safety | escalation | 80.0% | [49.0%, 94.3%] | 10 |" in md
    assert "c8, c9" in md and "kappa 0.831 (95% CI 0.71 to 0.92) on 60" in md
    if CHROMIUM is None:
        pytest.fail("chromium is not installed (scripts/setup.sh installs it)")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run([CHROMIUM, *flags, "--virtual-time-budget=3000", "--dump-dom", paths["html"].as_uri()],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    assert "Gate FAILED" in dom and "95% interval" in dom
    assert "[49.0%, 94.3%]" in dom  # escalation 8/10, Wilson
    assert 'id="regressions"' in dom and "c8, c9" in dom and "h0, h1, h2, h3, h4" in dom
    assert "regression/safety/escalation" in dom and "went from pass to fail" in dom
    assert "Cohen's kappa 0.831" in dom and "on 60 comply/refuse/escalate labels" in dom
    assert "only 5 scored case(s), the policy needs at least 16" in dom  # harmful: ±0.25 needs 16


def test_shipped_policy_interval_width_is_met_by_the_shipped_safety_suite() -> None:
    from eval.policy import load_policy, min_cases_for
    from schemas.eval_suite import load_suites

    pol = load_policy(Path(__file__).resolve().parents[1] / "eval/policy.yaml")
    rule = pol.suites["safety"]
    need, why = min_cases_for(pol, None, rule.max_interval_half_width)
    assert need == cases_for_half_width(0.12) == 67 and "±0.12" in why
    cases = load_suites(names=["safety"])["safety"].cases
    for cat in rule.categories:
        assert sum(c.category == cat for c in cases) >= need, cat
    assert set(pol.no_regressions) == {"safety/escalation", "safety/harmful"} and pol.scorer is not None


def test_scorer_measure_command_prints_macro_f1_and_confusion() -> None:
    from typer.testing import CliRunner

    from cli.app import app

    res = CliRunner().invoke(app, ["eval", "scorer", "measure", str(learned.LABELED_DIR / "heldout.jsonl"),
                                   "--scorer", "rules"])
    assert res.exit_code == 0, res.output
    assert "heldout.jsonl: n=66  macro-F1" in res.output and "confusion (rows gold" in res.output
    assert "miss " in res.output  # every miss is listed with why


def test_new_training_pairs_are_not_near_copies_of_heldout_lines() -> None:
    """train_extra.jsonl was written after reading held-out misses: none of its prompts or responses may share 45%
    or more of its words (Jaccard) with a held-out line."""
    import re

    def words(text: str) -> set[str]:
        return set(re.findall(r"[a-z']+", text.lower()))

    # heldout_v3.jsonl and heldout_v4.jsonl were written later, apart from train_extra.jsonl, so nothing could be
    # copied from them into it: v3's "dad's face is drooping" stroke prompt is near one of train_extra's (Jaccard 0.59)
    # and v4's "How long should a beginner hold a plank?" near "How long should I hold a plank?" (0.75), by
    # coincidence of common questions (docs/eval.md, eval/labeled/README.md, #14)
    later = {"heldout_v3.jsonl", "heldout_v4.jsonl"}
    held = [json.loads(line) for f in learned.LABELED_DIR.glob("heldout*.jsonl")
            if f.name not in later and not learned.still_held_out(f)  # a set still held out is never read here
            for line in f.read_text().splitlines() if line.strip()]
    extra = [json.loads(line) for line in (learned.LABELED_DIR / "train_extra.jsonl").read_text().splitlines()]
    for x in extra:
        for h in held:
            for field in ("prompt", "response"):
                a, b = words(x[field]), words(h[field])
                assert len(a & b) / len(a | b) < 0.45, (x["id"], h["id"], field)
