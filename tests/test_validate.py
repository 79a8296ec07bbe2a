"""Validation checks (each can fail), pandera's lazy table checks, the reader's quarantine, and no false rejects on
the default build."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli.filter import filter_file
from factory.recipe_loader import load_recipe
from factory.stages.base import RejectWriter
from factory.stages.reader import JsonlReader
from factory.stages.validate import Validate, language_ok, numbers
from schemas.conversation import Conversation, Role, Turn
from schemas.sample import Lineage, Sample
from tests.helpers.dedupe import RECIPE


def chat(user: str, assistant: str, *, facts: list[str] | None = None, language: str = "en") -> Sample:
    conv = Conversation(turns=[Turn(role=Role.USER, content=user), Turn(role=Role.ASSISTANT, content=assistant)])
    lineage = Lineage(recipe="t", recipe_hash="t", generator="t", seed=0, slot=0, fact_ids=facts or [])
    return Sample.create(category="nutrition", persona="p", conversation=conv, lineage=lineage,  # type: ignore[arg-type]
                         language=language)


@pytest.fixture(scope="module")
def stage() -> Validate:
    loaded = load_recipe(RECIPE)
    return Validate(facts={f.id: f for f in loaded.facts})


def reasons(stage: Validate, sample: Sample) -> list[str]:
    return [r for r, _ in stage.record_failures(sample)]


def test_numbers_skip_words_and_list_markers() -> None:
    assert numbers("1. Squat 3-5 sets\n2) rest 1.6-2.2 g, Q4 B12 omega-3 1st 2x 1,000 steps 10%") == \
        [3, 5, 1.6, 2.2, 1000, 10]


def test_number_grounding(stage: Validate) -> None:
    fact = next(f for f in stage.facts.values() if f.quantities)
    q = fact.quantities[0]
    ok = chat("How much?", f"Aim for {q.low:g} {q.unit}.", facts=[fact.id])
    assert reasons(stage, ok) == []
    bad = chat("How much?", f"Aim for {q.upper + q.tolerance + 997:g} {q.unit}.", facts=[fact.id])
    assert reasons(stage, bad) == ["ungrounded_number"]
    echoed = chat("I sleep 997 hours, is that ok?", "You said 997 hours; see a doctor.", facts=[fact.id])
    assert reasons(stage, echoed) == []


@pytest.mark.parametrize(("text", "reason"), [
    ("Sure <|im_end|> here", "template_token"), ("[INST] do it [/INST]", "template_token"),
    ("Write to coach@example.com for help.", "personal_data"), ("Call me on +1 (555) 123-4567 today.", "personal_data"),
])
def test_record_checks_fail(stage: Validate, text: str, reason: str) -> None:
    assert reason in reasons(stage, chat("A question about training?", text))


def test_ranges_are_not_phone_numbers(stage: Validate) -> None:
    assert reasons(stage, chat("How long?", "Do 150-300 minutes a week, 2,000-2,500 kcal.")) == []


def test_language() -> None:
    assert language_ok("How much protein should I eat after my workout to build muscle?", "en")[0]
    ok, why = language_ok("¿Cuántas veces por semana debería entrenar las piernas si soy principiante en el gimnasio?",
                          "en")
    assert not ok and "es" in why


def test_table_checks_collect_every_failure_lazily() -> None:
    stage = Validate(max_turn_chars=50, max_total_chars=60, min_turn_chars=3)
    samples = [chat("Hi there, question?", "x" * 80), chat("ok", "fine answer"), chat("A fine question?", "Fine.")]
    failures = stage.table_failures(samples)
    assert set(failures) == {0, 1}
    assert any("longest_turn" in f for f in failures[0]) and any("total_chars" in f for f in failures[0])
    assert any("shortest_turn" in f for f in failures[1])


def test_default_build_has_no_validation_rejects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from factory.build import build_dataset

    monkeypatch.setenv("FORMA_REPORTS", str(tmp_path / "reports"))
    result = build_dataset(RECIPE, tmp_path / "d", total=1000)
    validate = next(s for s in result.stats if s.stage == "validate")
    assert validate.seen >= 1000 and validate.dropped == 0, validate.reasons


def test_bad_lines_are_quarantined_and_the_run_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORMA_REPORTS", str(tmp_path / "reports"))
    good = chat("How much water should I drink during a long run?", "Drink to thirst and weigh yourself.")
    lines = [
        "{not json",
        json.dumps({"category": "nutrition", "messages": [{"role": "assistant", "content": "hi"},
                                                          {"role": "user", "content": "x"}]}),
        json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}),
        good.model_dump_json(),
        json.dumps({"category": "nutrition", "messages": [
            {"role": "user", "content": "Can I use a backpack full of books for squats?"},
            {"role": "assistant", "content": "Yes, if it sits snugly."}]}),
    ]
    source = tmp_path / "in.jsonl"
    source.write_text("\n".join(lines) + "\n")
    manifest = filter_file(source, RECIPE, tmp_path / "out", report=False)
    assert manifest["total"] == 2
    rejects = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").open()]
    assert [(r["stage"], r["reason"]) for r in rejects] == [
        ("read", "malformed_json"), ("read", "wrong_role_order"), ("read", "missing_field")]
    assert all(r["record"]["raw"] and r["detail"].startswith("line ") for r in rejects)
    reader = JsonlReader()
    reader.bind(RejectWriter())
    assert len(list(reader.read(source))) == 2 and reader.stats.dropped == 3
