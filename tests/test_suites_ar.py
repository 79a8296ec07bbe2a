"""The Arabic eval suites (eval/suites-ar) and their policy (eval/policy-ar.yaml): they load the way the gate loads
them, every case is Arabic, ids are unique and prefixed, cited facts exist, and no suite prompt shares an 8-word
sequence with the Arabic training text (the factory's decontamination test, on the text Arabic chats are built
from). Fast: no model, no encoder, no build."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common.arabic import arabic_share, has_arabic
from common.paths import REPO_ROOT
from common.yaml_io import read_yaml
from eval.policy import load_policy, validate_against
from factory.stages.decontaminate import suite_prompts
from factory.stages.exact import normalize
from schemas.eval_suite import Suite, load_suites
from schemas.knowledge import load_facts

SUITES = REPO_ROOT / "eval" / "suites-ar"
POLICY = REPO_ROOT / "eval" / "policy-ar.yaml"
KNOWLEDGE = REPO_ROOT / "recipes" / "knowledge"
AR_TEXT = [*sorted((REPO_ROOT / "recipes" / "translations" / "ar").glob("*.yaml")),
           REPO_ROOT / "recipes" / "forma-fitness-ar.yaml"]
NGRAM = 8  # the recipe default (schemas.recipe.DecontaminationConfig.ngram)


@pytest.fixture(scope="module")
def suites() -> dict[str, Suite]:
    """Loaded as eval.gate._load_inputs does: the policy's suites by name, then the policy checked against them."""
    policy = load_policy(POLICY)
    loaded = load_suites(SUITES, names=list(policy.suites))
    validate_against(policy, {name: s.categories() for name, s in loaded.items()}, POLICY)
    return loaded


def _texts(case: Any) -> list[str]:
    """Everything a case says to the model or offers it: prompt, earlier turns, choices."""
    return [case.prompt, *(t.content for t in case.history), *(case.choices or [])]


def test_sizes_match_the_brief(suites: dict[str, Suite]) -> None:
    safety = suites["safety"].cases
    count = {cat: sum(c.category == cat for c in safety) for cat in ("escalation", "harmful", "over_refusal")}
    assert count["escalation"] >= 20 and count["harmful"] >= 20 and count["over_refusal"] >= 24, count
    assert sum(bool(c.history) and c.category == "escalation" for c in safety) >= 5
    accuracy = suites["accuracy"].cases
    assert len(accuracy) >= 30
    assert {c.kind for c in accuracy} == {"generate", "choice"}
    assert all(c.quantity is not None for c in accuracy if c.kind == "generate")


def test_every_case_is_arabic(suites: dict[str, Suite]) -> None:
    for case in (c for s in suites.values() for c in s.cases):
        assert case.language == "ar", case.id
        for text in _texts(case):
            share = arabic_share(text)
            # Latin letters are allowed for names with no Arabic form (DNP), never for the sentence itself
            assert has_arabic(text) and share is not None and share >= 0.9, (case.id, text, share)


def test_ids_unique_and_prefixed(suites: dict[str, Suite]) -> None:
    ids = [c.id for s in suites.values() for c in s.cases]
    assert len(ids) == len(set(ids))
    assert all(i.startswith("ar-") for i in ids), [i for i in ids if not i.startswith("ar-")]


def test_cited_facts_exist(suites: dict[str, Suite]) -> None:
    facts = {f.id: f for f in load_facts(sorted(KNOWLEDGE.glob("*.yaml")))}
    for case in suites["accuracy"].cases:
        assert case.fact_id in facts, case.id
        assert case.id.endswith(case.fact_id), case.id
        if case.quantity is not None:  # the number is the fact's own, not a copy that could drift
            assert case.quantity == facts[case.fact_id].quantities[0], case.id


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _grams(text: str, n: int) -> set[tuple[str, ...]]:
    words = normalize(text).split()
    n = min(n, len(words))
    return set(zip(*(words[i:] for i in range(n)), strict=False))


def test_no_ngram_shared_with_arabic_training_text() -> None:
    """Every Arabic string the Arabic recipe builds chats from (facts, follow-ups, behaviours, personas) against every
    suite prompt, earlier user turn included, with the decontamination stage's own reader and normaliser: a shared
    8-gram (or a whole short prompt) would make a build drop training chats, or leak a case into training."""
    train: set[tuple[str, ...]] = set()
    sources = [s for path in AR_TEXT for s in _strings(read_yaml(path, "Arabic text")[0]) if has_arabic(s)]
    assert len(sources) > 500  # the translations are really read
    for text in sources:
        words = normalize(text).split()
        for n in range(1, NGRAM + 1):  # short prompts match whole, so index shorter runs too
            train.update(zip(*(words[i:] for i in range(n)), strict=False))
    prompts = suite_prompts(SUITES)
    assert len(prompts) >= 100
    hits = [(p.id, gram) for p in prompts for gram in _grams(p.text, NGRAM) if gram in train]
    assert not hits, hits[:5]


def test_policy_is_product_like() -> None:
    english = load_policy(REPO_ROOT / "eval" / "policy.yaml")
    arabic = load_policy(POLICY)
    for suite, rule in arabic.suites.items():
        assert rule.threshold == english.suites[suite].threshold, suite
        mine, theirs = rule.category_rules(), english.suites[suite].category_rules()
        assert {k: v.threshold for k, v in mine.items()} == {k: theirs[k].threshold for k in mine}, suite


def test_suite_folder_is_apart_from_the_english_gate() -> None:
    english = load_suites(REPO_ROOT / "eval" / "suites")
    assert not any(c.id.startswith("ar-") for s in english.values() for c in s.cases)
    assert Path(SUITES).resolve() != (REPO_ROOT / "eval" / "suites").resolve()


def test_numeric_scoring_reads_arabic_digits_and_decimal_sign() -> None:
    """"١٫٦ g/kg/day" is 1.6 (it read as 1 before), a glued "و" prefix does not hide a number; English unchanged."""
    from eval import scorers
    from schemas.knowledge import Quantity

    q = Quantity(name="protein", low=1.6, high=2.2, unit="g/kg/day", tolerance=0.05)
    assert scorers.score_numeric("تناول ١٫٦ g/kg/day يوميًا", q)["passed"]
    assert scorers.score_numeric("تناول و١٫٨ g/kg/day", q)["passed"]
    assert not scorers.score_numeric("تناول ١ g/kg/day", q)["passed"]
    assert scorers.score_numeric("Eat 1.6 g/kg/day.", q)["passed"]
