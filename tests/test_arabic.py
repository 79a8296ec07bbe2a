"""Arabic end to end (#15): language quotas, Arabic numbers and units, normalisation for dedupe, per-turn language
validation, the translation schema, and the Arabic recipe's deterministic build with exact quotas."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.arabic import fold_digits, normalize_arabic, to_arabic_digits
from common.errors import FormaError
from factory.build import build_dataset
from factory.generators.grounding import check_numbers, mentions
from factory.personal import allowed_values, stated_days, stated_mass
from factory.planner import Planner, largest_remainder
from factory.recipe_loader import LoadedRecipe, load_recipe
from factory.stages.base import RejectWriter
from factory.stages.exact import ExactDedupe, normalize
from factory.stages.near import shingles
from factory.stages.validate import Validate, numbers
from schemas.conversation import Conversation, Role, Turn
from schemas.recipe import Recipe
from schemas.sample import Lineage, Sample

ROOT = Path(__file__).resolve().parents[1]
AR_RECIPE = ROOT / "recipes" / "forma-fitness-ar.yaml"


@pytest.fixture(scope="module")
def loaded() -> LoadedRecipe:
    return load_recipe(AR_RECIPE)


def chat(turns: list[str], *, facts: list[str] | None = None, language: str = "ar") -> Sample:
    roles = [Role.USER, Role.ASSISTANT]
    conv = Conversation(turns=[Turn(role=roles[i % 2], content=t) for i, t in enumerate(turns)])
    lineage = Lineage(recipe="t", recipe_hash="t", generator="t", seed=0, slot=0, fact_ids=facts or [])
    return Sample.create(category="nutrition", persona="p", conversation=conv, lineage=lineage,  # type: ignore[arg-type]
                         language=language)


# -- recipes: language shares -------------------------------------------------------------------------------------
@pytest.mark.parametrize("total", [1, 7, 333, 2001])
def test_language_quotas_hold_category_and_behaviour_shares_at_odd_totals(loaded: LoadedRecipe, total: int) -> None:
    planner = Planner(loaded)
    languages = planner.language_quotas(total)
    assert languages == largest_remainder({"en": 70, "ar": 30}, total) and sum(languages.values()) == total
    cells = planner.cell_quotas(total)
    recipe = loaded.recipe
    for lang, quota in languages.items():
        per_category = largest_remainder(recipe.categories, quota)
        for category, n in per_category.items():
            split = {b: cells.get((lang, category, b), 0) for b in recipe.behaviours}
            assert sum(split.values()) == n
            assert split == {b: v for b, v in largest_remainder(dict(recipe.behaviours), n).items()}
    assert sum(cells.values()) == total


def test_list_form_is_equal_shares_and_en_alone_is_everything(loaded: LoadedRecipe) -> None:
    data = loaded.recipe.model_dump()
    assert Recipe.model_validate({**data, "languages": ["en"]}).language_shares == {"en": 100}
    assert Recipe.model_validate({**data, "languages": ["en", "ar"]}).language_shares == {"en": 50, "ar": 50}
    with pytest.raises(ValueError, match="must sum to 100"):
        Recipe.model_validate({**data, "languages": {"en": 70, "ar": 20}})


def test_arabic_slots_only_use_facts_and_items_with_arabic_text(loaded: LoadedRecipe) -> None:
    slots = [s for s in Planner(loaded).plan(600) if s.language == "ar"]
    assert slots and all(f.text_in("ar") is not None for s in slots for f in s.facts)
    assert all(s.item.text_in("ar") is not None for s in slots if s.item is not None)


# -- numbers and units --------------------------------------------------------------------------------------------
def test_arabic_digits_decimal_separator_ranges_and_units_are_read() -> None:
    assert fold_digits("١٫٦ – ٢٫٢") == "1.6 – 2.2" and to_arabic_digits("1.6 to 2") == "١٫٦ to ٢"
    found = [(m.value, m.unit) for m in mentions("من ١٫٤ إلى ٢٫٠ غرام، و150 دقيقة، و٣ مجموعات، ٨–١٢ تكرارًا، ٢ لتر")]
    assert found == [(1.4, "g"), (2.0, "g"), (150, "min"), (3, "set"), (8, "rep"), (12, "rep"), (2, "l")]
    assert numbers("خذ ٣ إلى ٥ غرامات و1.5 لتر") == [3, 5, 1.5]
    assert stated_mass("وزني ٧٠ كغ.") == 70 and stated_days("أستطيع التدرب ٣ أيام في الأسبوع.") == 3
    assert stated_days("أستطيع التدرب يومين في الأسبوع.") == 2


def test_arabic_number_grounded_and_a_wrong_one_rejected(loaded: LoadedRecipe) -> None:
    facts = {f.id: f for f in loaded.facts}
    protein = [facts["nut-protein-issn-range"]]
    assert check_numbers("تحتاج من ١٫٤ إلى ٢٫٠ غرام لكل كيلوغرام يوميًا.", protein).passed
    wrong = check_numbers("تحتاج ٣٫٥ غرام لكل كيلوغرام يوميًا.", protein)
    assert not wrong.passed and wrong.reason == "number_contradicts_fact" and "3.5" in wrong.detail
    # a personal number: 1.4-2.0 g/kg/day x 70 kg = 98 to 140 g, said in Arabic-Indic digits
    assert {98.0, 140.0} <= allowed_values(protein, "وزني ٧٠ كغ.")
    stage = Validate(facts=facts)
    good = chat(["كم بروتينًا أحتاج؟ وزني 70 كغ.", "من ١٫٤ إلى ٢٫٠ غرام لكل كيلوغرام يوميًا، أي من ٩٨ إلى ١٤٠ غرام."],
                facts=["nut-protein-issn-range"])
    bad = chat(["كم بروتينًا أحتاج؟ وزني 70 كغ.", "تحتاج ٥٫٥ غرام لكل كيلوغرام يوميًا، أي ٣٨٥ غرامًا."],
               facts=["nut-protein-issn-range"])
    assert stage.record_failures(good) == []
    failures = dict(stage.record_failures(bad))
    assert "5.5" in failures["ungrounded_number"] and "385" in failures["ungrounded_number"]


def test_translation_must_keep_the_english_numbers(tmp_path: Path) -> None:
    (tmp_path / "ar").mkdir()
    (tmp_path / "ar" / "t.yaml").write_text(
        "language: ar\nfacts:\n  nut-protein-issn-range:\n    questions: ['كم بروتينًا؟']\n"
        "    answer: 'تحتاج من 1.4 إلى 2.5 غرام لكل كيلوغرام يوميًا.'\n", encoding="utf-8")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"include: {AR_RECIPE}\ntranslations: [{tmp_path / 'ar'}]\n"
                      f"knowledge: [{ROOT}/recipes/knowledge/]\nbehaviour_knowledge: [{ROOT}/recipes/behaviours/]\n",
                      encoding="utf-8")
    with pytest.raises(FormaError, match=r"states 2\.5, which the English fact does not give"):
        load_recipe(recipe)


# -- filters ------------------------------------------------------------------------------------------------------
def test_normalisation_makes_spelling_variants_exact_duplicates() -> None:
    plain = "احمد يتدرب في الصالة الى المدرسة على مستوى عال"
    variant = "أَحْمَدُ يَتَدَرَّبُ في الصالـــة إلى المدرسه على مستوى عالٍ"
    assert normalize_arabic("إِلى آخِرِ مدرسةٍ أو مستشفى") == "الي اخر مدرسه او مستشفي"
    assert normalize(plain) == normalize(variant) and shingles(plain, 3) == shingles(variant, 3)
    stage = ExactDedupe().bind(RejectWriter())
    kept = list(stage.run([chat([plain, "نعم."]), chat([variant, "نَعَم."])]))
    assert len(kept) == 1 and stage.stats.reasons == {"exact_duplicate": 1}
    assert normalize("Ready? Set 3 – go!") == "ready set 3 go"  # English is unchanged


def test_english_answer_in_an_arabic_chat_is_rejected_with_its_reason() -> None:
    stage = Validate()
    arabic = chat(["كم ساعة أحتاج أن أنام كل ليلة؟", "يحتاج البالغ إلى سبع ساعات نوم أو أكثر في الليلة بانتظام."])
    mixed = chat(["كم ساعة أحتاج أن أنام كل ليلة؟",
                  "Adults should sleep seven or more hours per night on a regular basis, even when training hard."])
    assert stage.record_failures(arabic) == []
    failures = stage.record_failures(mixed)
    assert {r for r, _ in failures} == {"wrong_language"}
    per_turn = [d for _, d in failures if d.startswith("turn ")]
    assert per_turn == [per_turn[0]] and per_turn[0].startswith("turn 1 (assistant) is 0% Arabic script, detected en")
    assert per_turn[0].endswith("declared ar")
    english_chat = chat(["How long should I sleep?", "يحتاج البالغ إلى سبع ساعات نوم أو أكثر في الليلة بانتظام."],
                        language="en")
    assert any("Arabic script" in d and "declared en" in d for _, d in stage.record_failures(english_chat))


# -- the Arabic recipe builds ---------------------------------------------------------------------------------------
def test_arabic_recipe_builds_exact_quotas_deterministically(tmp_path: Path) -> None:
    """The recipe as written (2,000 conversations: its quality thresholds are set for that size), built twice."""
    first = build_dataset(AR_RECIPE, tmp_path / "a")
    second = build_dataset(AR_RECIPE, tmp_path / "b")
    assert first.dataset_hash == second.dataset_hash
    assert (tmp_path / "a" / "samples.jsonl").read_bytes() == (tmp_path / "b" / "samples.jsonl").read_bytes()
    assert first.quality_misses == []
    langs = first.languages
    assert langs["quotas"] == {"en": 1400, "ar": 600} and langs["counts"] == langs["quotas"]
    assert all(c["actual"] == c["target"] for c in langs["cells"].values())
    arabic = [s for s in first.samples if s.language == "ar"]
    assert arabic and all(s.conversation.system.startswith("أنت Forma AI") for s in arabic)
    answers = " ".join(t.content for s in arabic for t in s.conversation.turns if t.role == Role.ASSISTANT)
    assert "٫" in answers or any(d in answers for d in "٠١٢٣٤٥٦٧٨٩")  # answer_digits: arabic_indic
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["languages"]["knowledge"]["ar"]["facts"] == 51
    card = (tmp_path / "a" / "README.md").read_text(encoding="utf-8")
    assert "## Languages: target versus actual" in card and "expert-approved: 0 facts" in card
    assert "| Arabic (MSA) | facts | 51 | 0 | 51 | 0.0% |" in card


def test_arabic_text_covers_every_category_and_sub_topic(loaded: LoadedRecipe) -> None:
    """Training facts with Arabic text in each of the 24 (category, sub-topic) pairs of the knowledge base (two or
    more in the seven the first drafts left out), each a draft or an expert-approved text."""
    pairs: dict[tuple[str, str], int] = {}
    for fact in loaded.training_facts:
        key = (fact.category.value, fact.topic)
        pairs[key] = pairs.get(key, 0) + ("ar" in fact.translations)
    assert len(pairs) == 24
    assert {k: n for k, n in pairs.items() if n < 1} == {}
    added = [("nutrition", "meal_timing"), ("exercise_technique", "progressions_regressions"),
             ("exercise_technique", "equipment_alternatives"), ("recovery", "active_recovery"),
             ("programming", "progressive_overload"), ("programming", "deloads"), ("motivation", "plateaus")]
    assert all(pairs[k] >= 2 for k in added)
    assert {t.review_state for f in loaded.facts for t in f.translations.values()} <= {"draft", "approved"}


def test_card_reports_the_expert_approved_share_per_language() -> None:
    """The card's language section: entries, approved and draft per language and kind, and the approved share."""
    from factory.card import _language_section

    manifest = {
        "languages": {"shares": {"en": 70, "ar": 30}, "quotas": {"en": 7, "ar": 3}, "counts": {"en": 7, "ar": 3},
                      "cells": {"ar/nutrition/answer": {"actual": 3, "target": 3}},
                      "knowledge": {"ar": {"facts": 40, "facts_total": 257, "facts_approved": 10,
                                           "behaviour_items": 8, "behaviour_items_total": 103,
                                           "behaviour_items_approved": 0}}},
        "quality": {"by_language": {"ar": {"facts_used": 3, "facts_available": 40,
                                           "most_repeated_assistant_turn": 2}}},
    }
    section = _language_section(manifest)
    assert "| Arabic (MSA) | facts | 40 | 10 | 30 | 25.0% |" in section
    assert "| Arabic (MSA) | behaviour items | 8 | 0 | 8 | 0.0% |" in section
    assert "10 of 48 entries (20.8%; the rest are the team's drafts)" in section
    assert _language_section({}) == ""
