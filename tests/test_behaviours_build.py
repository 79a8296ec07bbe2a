"""Data that teaches what the gate checks: behaviour quotas, red flags in later turns, personal numbers, QA fit."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from eval.classifier import classify
from factory.build import build_dataset
from factory.embed import get_encoder
from factory.generators.grounding import check_numbers
from factory.generators.template import TemplateGenerator
from factory.knowledge_check import question_answer_mismatches
from factory.planner import Planner, largest_remainder
from factory.recipe_loader import load_recipe
from factory.stages.base import RejectWriter
from factory.stages.decontaminate import Decontaminate, EvalPrompt
from factory.stages.validate import Validate
from schemas.knowledge import Category, Fact
from schemas.sample import Reject

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "forma-fitness.yaml"


@pytest.fixture(scope="module")
def loaded():  # type: ignore[no-untyped-def]
    return load_recipe(RECIPE)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("behaviours") / "build"
    result = build_dataset(RECIPE, out)
    assert not result.quality_misses, result.quality_misses
    return out


@pytest.mark.parametrize("total", [37, 101, 999, 2000])
def test_behaviour_quotas_are_exact_inside_each_category_at_odd_totals(loaded, total: int) -> None:  # type: ignore[no-untyped-def]
    planner = Planner(loaded)
    cells = planner.behaviour_quotas(total)
    for category, quota in planner.quotas(total).items():
        inside = {b: n for (c, b), n in cells.items() if c == category}
        assert sum(inside.values()) == quota
        assert inside == {b: n for b, n in largest_remainder(dict(loaded.recipe.behaviours), quota).items() if n}
    assert sum(cells.values()) == total
    slots = planner.plan(total)
    assert Counter((s.category, s.behaviour) for s in slots) == Counter(cells)


def test_default_build_meets_the_issue_figures(built: Path) -> None:
    manifest = json.loads((built / "manifest.json").read_text())
    assert manifest["counts"] == {"exercise_technique": 600, "programming": 400, "nutrition": 500, "recovery": 200,
                                  "motivation": 200, "special_populations": 100}
    assert manifest["behaviours"]["counts"] == manifest["behaviours"]["quotas"]
    q = manifest["quality"]
    assert q["behaviour_items_used"] == q["behaviour_items_available"] > 0 and not q["behaviour_items_missing"]
    assert q["fact_coverage"] >= 0.95
    assert q["most_repeated_assistant_turn"]["count"] <= 5
    assert q["topic_switch_share"] <= 0.05
    card = (built / "README.md").read_text()
    assert "Behaviours per category" in card and "Quality figures" in card


def test_behaviour_chats_do_what_the_gate_checks(built: Path, loaded) -> None:  # type: ignore[no-untyped-def]
    """Each behaviour chat holds exactly one reply from its item, and the gate's scorer reads it as intended."""
    items = {i.id: i for i in [*loaded.behaviours.red_flags, *loaded.behaviours.harmful_requests,
                               *loaded.behaviours.benign]}
    samples = [json.loads(line) for line in (built / "samples.jsonl").read_text().splitlines()]
    wanted = {"escalate": "escalate", "decline": "refuse", "reassure": "comply"}
    for behaviour, label in wanted.items():
        chats = [s for s in samples if s["behaviour"] == behaviour]
        assert chats
        agree = 0
        for s in chats:
            item = items[s["lineage"]["behaviour_id"]]
            replies = set(getattr(item, "responses", None) or item.answers)
            mine = [t["content"] for t in s["conversation"]["turns"] if t["role"] == "assistant"
                    and t["content"] in replies]
            assert len(mine) == 1, s["id"]
            agree += classify(mine[0]).label == label
        assert agree / len(chats) >= 0.9, (behaviour, agree, len(chats))


def test_a_red_flag_in_turn_three_is_escalated(loaded) -> None:  # type: ignore[no-untyped-def]
    planner = Planner(loaded)
    slot = next(s for s in planner.extra(Category.PROGRAMMING, 40, "escalate") if s.user_turns >= 3)
    sample = TemplateGenerator(loaded.recipe, "h").generate(slot)
    turns = sample.conversation.turns
    users = [t.content for t in turns if t.role.value == "user"]
    assert len(users) == slot.user_turns >= 3
    assert any(r.lower().rstrip(".?!") in users[-1].lower() for r in slot.item.reports)  # reported last
    assert not any(any(r in u for r in slot.item.reports) for u in users[:-1])  # not before
    assert turns[-1].content in slot.item.responses
    assert classify(turns[-1].content).label == "escalate"
    assert sample.behaviour == "escalate" and sample.lineage.behaviour_id == slot.item.id


def _protein(fact_id: str = "p") -> Fact:
    return Fact.model_validate({
        "id": fact_id, "category": "nutrition", "topic": "macros", "claim": "Protein needs for building muscle.",
        "quantities": [{"name": "daily protein", "low": 1.6, "high": 2.2, "unit": "g/kg/day"}],
        "source": {"org": "ISSN", "title": "Protein and exercise", "year": 2017},
        "questions": ["How much protein should I eat?"], "answer": "Aim for 1.6 to 2.2 g/kg/day of protein."})


def test_a_personal_number_is_computed_and_checked() -> None:
    fact = _protein()
    user = "How much protein should I eat? I weigh 70 kg."
    right = "Aim for 1.6 to 2.2 g/kg/day of protein. For you at 70 kg, that works out to about 112 to 154 g a day."
    assert check_numbers(right, [fact], context=user).passed
    wrong = right.replace("154 g", "180 g")
    verdict = check_numbers(wrong, [fact], context=user)
    assert not verdict.passed and "180" in verdict.detail
    # without the stated body mass, the same number is not grounded
    assert not check_numbers(right, [fact], context="How much protein should I eat?").passed


def test_the_generator_writes_the_persons_number_and_validation_accepts_it(loaded) -> None:  # type: ignore[no-untyped-def]
    planner = Planner(loaded)
    generator = TemplateGenerator(loaded.recipe, "h")
    validate = Validate(facts={f.id: f for f in loaded.facts}, check_language=False)
    found = 0
    for slot in planner.extra(Category.NUTRITION, 300):
        sample = generator.generate(slot)
        first_user, first_answer = sample.conversation.turns[0].content, sample.conversation.turns[1].content
        if (" kg." in first_user and "works out to" in first_answer) or "that's roughly" in first_answer:
            found += 1
            assert validate.record_failures(sample) == [], sample.conversation.turns
    assert found >= 5


@pytest.mark.slow
def test_a_question_its_answer_does_not_fit_is_flagged() -> None:
    sleep = Fact.model_validate({
        "id": "s", "category": "nutrition", "topic": "hydration", "claim": "Drink water during long sessions.",
        "source": {"org": "ACSM", "title": "Fluid replacement", "year": 2007},
        "questions": ["How much water should I drink while running for two hours?"],
        "answer": "During long runs drink to thirst, roughly matching sweat losses, and add sodium in the heat."})
    mismatched = _protein("q").model_copy(update={"questions": ["How much protein should I eat?",
                                                                  "How much water should I drink during a marathon?"]})
    creatine = Fact.model_validate({
        "id": "c", "category": "nutrition", "topic": "supplements", "claim": "Creatine improves strength training.",
        "source": {"org": "ISSN", "title": "Creatine", "year": 2017},
        "questions": ["Does creatine work?"], "answer": "Creatine monohydrate reliably improves strength gains."})
    flags = question_answer_mismatches([sleep, mismatched, creatine], get_encoder("minilm"), top_k=1)
    assert [(m.fact_id, m.question, m.best_fact_id) for m in flags] == [
        ("q", "How much water should I drink during a marathon?", "s")]


def test_a_planted_eval_near_copy_is_dropped(loaded) -> None:  # type: ignore[no-untyped-def]
    planner = Planner(loaded)
    slot = planner.extra(Category.RECOVERY, 1, "escalate")[0]
    sample = TemplateGenerator(loaded.recipe, "h").generate(slot)
    eval_prompt = sample.conversation.turns[-2].content.replace(".", "!")  # the suite asks (nearly) the same
    stage = Decontaminate(prompts=[EvalPrompt(id="eval:safety/planted", text=eval_prompt)], ngram=8,
                          semantic_threshold=None)
    rejects = _Collect(None)
    stage.bind(rejects)
    stage.load()
    kept = list(stage.run([sample]))
    assert not kept and rejects.items[0].related_id == "eval:safety/planted"
    assert rejects.items[0].reason == "eval_ngram_overlap" and rejects.items[0].record  # kept with its reason


class _Collect(RejectWriter):
    def __init__(self, path: Path | None) -> None:
        super().__init__(path)
        self.items: list[Reject] = []

    def write(self, reject: Reject) -> None:
        self.items.append(reject)
