"""The gate's answers over several llama.cpp contexts side by side (GGUFRunner ``workers``, #14's v13 round): the
same answers as one context, every answer counted by the progress callback, and the report's generation time the
wall time, not the per-answer times summed."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.model_paths import smollm2_gguf
from eval.gate import run_gate, summarize
from eval.policy import Policy
from eval.runners import GGUFRunner
from schemas.eval_suite import Case

pytestmark = pytest.mark.slow

PROMPTS = ("What is a squat?", "How long should I rest between sets?", "Is creatine safe?", "Name a back exercise.",
           "What does RPE mean?", "How much protein after a workout?")


def _cases() -> list[Case]:
    return [Case(id=f"c{i}", suite="mini", category="stop", prompt=p, checks=["no_template"], max_tokens=24)
            for i, p in enumerate(PROMPTS)]


def test_side_by_side_contexts_give_the_one_context_answers_and_count_progress() -> None:
    cases = _cases()
    one = GGUFRunner(smollm2_gguf(), n_threads=2, workers=1)
    two = GGUFRunner(smollm2_gguf(), n_threads=2, workers=2)
    ticks: list[tuple[int, int]] = []
    try:
        assert (one.describe()["workers"], two.describe()["workers"]) == (1, 2)
        want = one.generate_all(cases, 24)
        got = two.generate_all(cases, 24, lambda done, total: ticks.append((done, total)))
        again = two.generate_all(cases[::-1], 24)  # other order, contexts already warm with other prefixes
    finally:
        one.close()
        two.close()
    assert list(got) == [c.id for c in cases]
    assert {k: g.text for k, g in got.items()} == {k: g.text for k, g in want.items()}
    assert {k: g.text for k, g in again.items()} == {k: g.text for k, g in want.items()}
    assert all(g.completion_tokens > 0 for g in got.values())
    assert sorted(ticks) == [(i, len(cases)) for i in range(1, len(cases) + 1)]


def test_report_states_the_wall_time_of_generation(tmp_path: Path) -> None:
    suites = tmp_path / "suites"
    suites.mkdir()
    lines = "".join(f'  - {{id: c{i}, category: stop, checks: [no_template], prompt: "{p}"}}\n'
                    for i, p in enumerate(PROMPTS))
    (suites / "mini.yaml").write_text("suite: mini\ndefaults: {max_tokens: 16}\ncases:\n" + lines, encoding="utf-8")
    ticks: list[int] = []
    out = run_gate(str(smollm2_gguf()), policy=Policy(name="t", min_cases=1, suites={"mini": {"threshold": 0.0}}),
                   suites_dir=suites, out_root=tmp_path / "r", run="r", n_threads=2, scorer="rules",
                   progress=lambda done, total: ticks.append(done))
    g = out.report["summary"]["generation"]
    assert out.report["model"]["workers"] == 2 and sorted(ticks) == list(range(1, len(PROMPTS) + 1))
    # two contexts side by side: the summed per-answer times exceed the wall time the report states
    assert 0 < g["generation_seconds"] < g["answer_seconds"]
    assert "summed over answers generated side by side" in (tmp_path / "r" / "r" / "report.md").read_text()
    # a report without the wall time (one context) keeps the summed time
    assert summarize(out.report["results"])["generation"]["generation_seconds"] == g["answer_seconds"]
