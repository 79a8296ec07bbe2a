"""The safety-behaviour knowledge base (recipes/behaviours/): it loads, covers every category, and its responses
teach what the release gate checks: red flags escalate, harmful requests are declined with no dose, benign
alarming-sounding questions are simply answered. Also the loader's errors: duplicate ids and bad values name the file.
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from common.errors import FormaError
from eval.classifier import classify
from schemas.behaviour import BehaviourFile, RedFlag, load_behaviours
from schemas.knowledge import Category

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "recipes" / "behaviours"
SAFETY_SUITE = ROOT / "eval" / "suites" / "safety.yaml"

MIN_PER_CATEGORY = {"red_flags": 4, "harmful_requests": 3, "benign": 4}
REQUIRED_HARM_TYPES = {
    "steroids", "sarms", "diuretics", "dnp", "clenbuterol", "extreme_deficit", "purging", "dangerous_weight_cut",
    "insulin_misuse", "overtraining_through_injury", "exercise_as_punishment", "minors_supplements",
}

#: a number followed by a dose unit: what a red-flag or harmful response must never contain
DOSE = re.compile(r"\d+(?:[.,]\d+)?\s*(?:-|–|to)?\s*(?:\d+(?:[.,]\d+)?)?\s*"
                  r"(?:mg|ml|mL|IU|iu|mcg|µg|units?|tablets?|pills?|capsules?|scoops?)\b", re.IGNORECASE)
DECLINE = re.compile(
    r"\b(?:I won't|I will not|I can't|I cannot|I'm not going to|I am not going to|I'm not able to|I am not able to"
    r"|I'd rather not|I have to decline|not something I(?:'ll| will| can)|isn't something I(?:'ll| will| can))\b",
    re.IGNORECASE,
)
PROFESSIONAL = re.compile(
    r"\b(?:emergency services|emergency department|doctor|GP|physiotherapist|physio|cardiologist|obstetrician|"
    r"midwife|maternity unit|surgeon|eating-disorder specialist|mental-health professional|crisis line|"
    r"diabetes (?:care )?team|dietitian)\b",
    re.IGNORECASE,
)


@pytest.fixture(scope="module")
def kb() -> BehaviourFile:
    return load_behaviours(FOLDER)


def _suite_prompts(node: Any) -> Iterator[str]:
    """Every user text in the safety suite: ``prompt`` fields and the user turns of any ``history``."""
    if isinstance(node, dict):
        for key, value in node.items():
            is_prompt = key in {"prompt", "question"} or (key == "content" and node.get("role", "user") == "user")
            if is_prompt and isinstance(value, str):
                yield value
            else:
                yield from _suite_prompts(value)
    elif isinstance(node, list):
        for item in node:
            yield from _suite_prompts(item)


def _words(text: str) -> list[str]:
    return re.sub(r"[^\w]+", " ", text.casefold()).split()


def _grams(text: str, n: int) -> set[tuple[str, ...]]:
    words = _words(text)
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def _user_texts(kb: BehaviourFile) -> list[tuple[str, str]]:
    return ([(r.id, t) for r in kb.red_flags for t in r.reports]
            + [(h.id, t) for h in kb.harmful_requests for t in h.requests]
            + [(b.id, t) for b in kb.benign for t in b.questions])


def _responses(kb: BehaviourFile) -> list[tuple[str, str]]:
    return ([(r.id, t) for r in kb.red_flags for t in r.responses]
            + [(h.id, t) for h in kb.harmful_requests for t in h.responses]
            + [(b.id, t) for b in kb.benign for t in b.answers])


# ------------------------------------------------------------------ the shipped files


def test_shipped_files_load_and_hold_all_three_kinds(kb: BehaviourFile) -> None:
    assert sorted(p.name for p in FOLDER.glob("*.yaml")) == ["benign.yaml", "harmful_requests.yaml", "red_flags.yaml"]
    assert len(kb.red_flags) >= 24
    assert len(kb.harmful_requests) >= 18
    assert len(kb.benign) >= 24


@pytest.mark.parametrize("kind", sorted(MIN_PER_CATEGORY))
def test_every_category_has_its_cases(kb: BehaviourFile, kind: str) -> None:
    counts = Counter(item.category for item in getattr(kb, kind))
    short = {c.value: counts[c] for c in Category if counts[c] < MIN_PER_CATEGORY[kind]}
    assert not short, f"{kind}: categories below {MIN_PER_CATEGORY[kind]}: {short}"


def test_harmful_requests_cover_the_required_types(kb: BehaviourFile) -> None:
    missing = REQUIRED_HARM_TYPES - {h.type for h in kb.harmful_requests}
    assert not missing, f"no harmful request of type {sorted(missing)}"


def test_both_urgencies_are_taught(kb: BehaviourFile) -> None:
    assert {r.urgency for r in kb.red_flags} == {"emergency", "see_clinician"}


# ------------------------------------------------------------------ what the responses teach


def test_dose_detector_catches_doses() -> None:
    """The check below is only worth something if it fires on the things it guards against."""
    for text in ("take 50 mg a day", "start at 20mcg", "inject 10 IU", "2 tablets at night", "about 5-10 units",
                 "0.5 ml per shot", "two pills and 3 capsules"):
        assert DOSE.search(text), text
    assert not DOSE.search("see a doctor before you train that again")


def test_no_doses_and_no_digits_in_red_flag_or_harmful_responses(kb: BehaviourFile) -> None:
    texts = [(r.id, t) for r in kb.red_flags for t in r.responses]
    texts += [(h.id, t) for h in kb.harmful_requests for t in h.responses]
    doses = [(i, DOSE.search(t).group(0)) for i, t in texts if DOSE.search(t)]  # type: ignore[union-attr]
    assert not doses, doses
    digits = [(i, t[:60]) for i, t in texts if re.search(r"\d", t)]
    assert not digits, f"digits in responses: {digits}"


def test_every_harmful_response_declines(kb: BehaviourFile) -> None:
    missing = [(h.id, t[:70]) for h in kb.harmful_requests for t in h.responses if not DECLINE.search(t)]
    assert not missing, missing


def test_the_gate_reads_harmful_responses_as_refusals(kb: BehaviourFile) -> None:
    wrong = [(h.id, classify(t).label, t[:70]) for h in kb.harmful_requests for t in h.responses
             if classify(t).label != "refuse"]
    assert not wrong, wrong


def test_every_red_flag_response_names_a_professional(kb: BehaviourFile) -> None:
    missing = [(r.id, t[:70]) for r in kb.red_flags for t in r.responses if not PROFESSIONAL.search(t)]
    assert not missing, missing


def test_emergency_red_flags_send_to_emergency_services(kb: BehaviourFile) -> None:
    missing = [(r.id, t[:70]) for r in kb.red_flags if r.urgency == "emergency" for t in r.responses
               if not re.search(r"\bemergency (?:services|department)\b", t, re.IGNORECASE)]
    assert not missing, missing


def test_the_gate_reads_red_flag_responses_as_escalations(kb: BehaviourFile) -> None:
    wrong = [(r.id, classify(t).label, t[:70]) for r in kb.red_flags for t in r.responses
             if classify(t).label != "escalate"]
    assert not wrong, wrong


def test_benign_answers_neither_refuse_nor_refer(kb: BehaviourFile) -> None:
    wrong = [(b.id, classify(t).label, t[:70]) for b in kb.benign for t in b.answers if classify(t).label != "comply"]
    assert not wrong, wrong
    declines = [(b.id, t[:70]) for b in kb.benign for t in b.answers if DECLINE.search(t)]
    assert not declines, declines


def test_no_response_is_repeated_anywhere(kb: BehaviourFile) -> None:
    counts = Counter(" ".join(_words(t)) for _, t in _responses(kb))
    repeated = [t[:70] for t, n in counts.items() if n > 1]
    assert not repeated, repeated


def test_responses_of_one_item_open_differently(kb: BehaviourFile) -> None:
    same = []
    for item_id, texts in ([(r.id, r.responses) for r in kb.red_flags] + [(h.id, h.responses) for h in
                           kb.harmful_requests] + [(b.id, b.answers) for b in kb.benign]):
        openings = Counter(" ".join(_words(t)[:3]) for t in texts)
        same += [(item_id, o) for o, n in openings.items() if n > 1]
    assert not same, same


def test_no_opening_dominates_the_whole_kb(kb: BehaviourFile) -> None:
    openings = Counter(" ".join(_words(t)[:2]) for _, t in _responses(kb))
    top, count = openings.most_common(1)[0]
    assert count / sum(openings.values()) < 0.15, (top, count)


def test_responses_are_two_to_five_sentences(kb: BehaviourFile) -> None:
    bad = []
    for item_id, text in _responses(kb):
        sentences = len(re.findall(r"[.!?](?=\s|$)", text.strip()))
        if not 2 <= sentences <= 5:
            bad.append((item_id, sentences, text[:60]))
    assert not bad, bad


# ------------------------------------------------------------------ kept apart from the eval suite


def test_no_text_shares_an_eight_word_run_with_a_safety_prompt(kb: BehaviourFile) -> None:
    """The same test decontamination applies to built samples: any such overlap would be dropped there anyway."""
    prompts = list(_suite_prompts(yaml.safe_load(SAFETY_SUITE.read_text(encoding="utf-8"))))
    assert prompts, "found no prompts in the safety suite"
    eval_grams: set[tuple[str, ...]] = set().union(*(_grams(p, 8) for p in prompts))
    hits = [(i, t[:60]) for i, t in _user_texts(kb) + _responses(kb) if _grams(t, 8) & eval_grams]
    assert not hits, hits


def test_user_wordings_do_not_paraphrase_safety_prompts(kb: BehaviourFile) -> None:
    """Word-sequence similarity: a reworded copy of an eval prompt keeps most of its words in order."""
    prompts = [_words(p) for p in _suite_prompts(yaml.safe_load(SAFETY_SUITE.read_text(encoding="utf-8")))]
    close = []
    matcher: difflib.SequenceMatcher[str] = difflib.SequenceMatcher(autojunk=False)
    for prompt in prompts:
        matcher.set_seq2(prompt)  # the side difflib indexes, once per prompt
        for item_id, text in _user_texts(kb):
            matcher.set_seq1(_words(text))
            if matcher.ratio() >= 0.7:
                close.append((item_id, round(matcher.ratio(), 2), text[:50], " ".join(prompt)[:50]))
    assert not close, close


# ------------------------------------------------------------------ loader and schema errors


def _write(folder: Path, name: str, data: dict[str, Any]) -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def _one_red_flag(item_id: str = "rf-test-item", **changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": item_id, "category": "programming", "signs": "test signs", "professional": "doctor",
        "urgency": "see_clinician", "source": {"org": "NICE", "title": "A title", "year": 2017},
        "reports": [f"report number {n}" for n in "abcde"],
        "responses": [f"Please see a doctor, version {n}." for n in "abcd"],
    }
    data.update(changes)
    return data


def test_duplicate_id_across_files_is_rejected_naming_the_file(tmp_path: Path) -> None:
    _write(tmp_path, "a.yaml", {"red_flags": [_one_red_flag()]})
    second = _write(tmp_path, "b.yaml", {"red_flags": [_one_red_flag()]})
    with pytest.raises(FormaError, match="duplicate behaviour id 'rf-test-item'") as err:
        load_behaviours(tmp_path)
    assert str(second) in str(err.value) and "a.yaml" in str(err.value)


def test_duplicate_id_within_a_file_is_rejected_naming_the_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "only.yaml", {"red_flags": [_one_red_flag(), _one_red_flag()]})
    with pytest.raises(FormaError, match="duplicate behaviour id") as err:
        load_behaviours(tmp_path)
    assert str(path) in str(err.value)


def test_bad_urgency_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="urgency"):
        RedFlag.model_validate(_one_red_flag(urgency="whenever"))
    path = _write(tmp_path, "bad.yaml", {"red_flags": [_one_red_flag(urgency="soon")]})
    with pytest.raises(FormaError, match="urgency") as err:
        load_behaviours(tmp_path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("changes", [
    {"id": "hr-wrong-prefix"},
    {"id": "rf-Not_Kebab"},
    {"category": "cardio"},
    {"reports": ["only one"]},
    {"responses": ["Please see a doctor.", "Please see a doctor.", "Call emergency services.", "See a GP."]},
    {"dose": "none"},
])
def test_bad_red_flags_are_rejected(changes: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        RedFlag.model_validate(_one_red_flag(**changes))


def test_empty_or_broken_folders_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(FormaError, match="no behaviour"):
        load_behaviours(tmp_path)
    broken = tmp_path / "broken.yaml"
    broken.write_text("red_flags: [unclosed", encoding="utf-8")
    with pytest.raises(FormaError, match=r"broken\.yaml"):
        load_behaviours(tmp_path)
