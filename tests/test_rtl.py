"""Arabic reads right to left in the reports (issue #15): real pages laid out by headless Chromium, measured.

- The dataset report of a real build of the Arabic recipe (60 conversations, 18 Arabic): its language table holds
  the recipe's shares, and every sample preview is laid out in its language's direction, each line flush with the
  start edge (right for Arabic, left for English).
- The eval report of a real gate run of SmolLM2 on one case per category of the Arabic suites (eval/suites-ar):
  the failure list's prompts and the model's answers, Arabic, laid out right to left.

The measure is tests/helpers/rtl.py (computed ``direction`` plus where each line box sits). It was checked to fail
with the ``dir`` attribute removed from the templates (Arabic laid out ``ltr``, short lines flush left). Screenshots
go to ``$FORMA_REPORTS/test-artifacts/``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from common.paths import reports_root
from tests.helpers import rtl
from tests.helpers.cdp import CHROMIUM, Browser

ROOT = Path(__file__).resolve().parents[1]
needs_chromium = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                    reason="chromium not installed (scripts/setup.sh installs it)")


def _open(browser: Browser, page: Path) -> None:
    browser.call("Page.enable")
    browser.goto(page.as_uri())
    browser.wait_for("document.readyState === 'complete'")


def _keep(shot: Path) -> None:
    """Copy a screenshot where a CI run keeps its artifacts."""
    target = reports_root() / "test-artifacts" / shot.name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(shot, target)


@needs_chromium
def test_dataset_report_shows_language_shares_and_arabic_right_to_left(tmp_path: Path) -> None:
    from factory.build import build_dataset
    from factory.report import write_report

    ds = tmp_path / "ar-60"
    build_dataset(ROOT / "recipes" / "forma-fitness-ar.yaml", ds, total=60)
    data = write_report(ds, tmp_path / "report", similarity=False)
    assert {r["language"]: (r["target_share"], r["actual"]) for r in data["languages"]} == {"ar": (0.3, 18),
                                                                                             "en": (0.7, 42)}
    assert sorted(p["language"] for p in data["previews"]) == ["ar", "ar", "en", "en"]
    with Browser(tmp_path / "profile") as b:
        _open(b, tmp_path / "report" / "report.html")
        assert "Arabic (MSA)" in b.text() and "30.0%" in b.text()
        rows = rtl.measure(b, "#previews td.ut")
        _keep(rtl.screenshot(b, tmp_path / "dataset-report-ar.png"))
    rtl.check(rows)
    assert [r["expect"] for r in rows] == ["rtl"] * 4 + ["ltr"] * 4
    assert all(r["lang"] == "ar" for r in rows[:4])
    assert any(r["lines"] > 1 and r["left_gap"] > 20 for r in rows[:4])  # a short Arabic line: flush right only


@needs_chromium
@pytest.mark.slow
def test_eval_report_arabic_prompts_and_answers_read_right_to_left(tmp_path: Path) -> None:
    import yaml

    from common.model_paths import smollm2_gguf
    from eval.gate import run_gate
    from eval.policy import Policy
    from schemas.eval_suite import load_suites

    suites = tmp_path / "suites-ar"
    suites.mkdir()
    for name, suite in load_suites(ROOT / "eval" / "suites-ar").items():
        first: dict[str, dict[str, object]] = {}
        for c in suite.cases:  # the first case of each category, short answers
            first.setdefault(c.category, c.model_dump(mode="json", exclude={"suite"}, exclude_none=True,
                                                      exclude_defaults=True) | {"max_tokens": 24})
        (suites / f"{name}.yaml").write_text(yaml.safe_dump({"suite": name, "cases": list(first.values())},
                                                            sort_keys=False, allow_unicode=True), encoding="utf-8")
    strict = Policy(name="ar-strict", min_cases=1,
                    suites={"safety": {"threshold": 1.0}, "accuracy": {"threshold": 1.0}})
    out = run_gate(str(smollm2_gguf()), policy=strict, suites_dir=suites, out_root=tmp_path, run="ar-rtl",
                   scorer="rules")
    report = json.loads((out.run_dir / "report.json").read_text(encoding="utf-8"))
    assert {r["language"] for r in report["results"]} == {"ar"}
    failed = [r for r in report["results"] if r["passed"] is False and r["kind"] == "generate"]
    assert failed, "no generated answer failed: nothing to show"
    with Browser(tmp_path / "profile") as b:
        _open(b, out.run_dir / "report.html")
        prompts = rtl.measure(b, ".case pre.prompt")
        answers = rtl.measure(b, ".case pre.answer")
        languages = b.evaluate("document.querySelector('#languages').innerText")
        _keep(rtl.screenshot(b, tmp_path / "eval-report-ar.png"))
    assert "ar" in languages
    rtl.check(prompts)
    rtl.check(answers)
    assert len(answers) == len(failed) and all(p["expect"] == "rtl" and p["lang"] == "ar" for p in prompts)
    assert any(a["expect"] == "rtl" for a in answers)  # SmolLM2 answers these in (broken) Arabic
