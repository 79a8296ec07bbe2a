"""LLM generation: strict parsing, the grounding check, the reply cache, and real builds with SmolLM2-135M-Instruct
in-process (llama.cpp) and through llama-cpp-python's OpenAI-compatible server; failures give clear errors and
lose nothing."""

from __future__ import annotations

import json
import random
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from common.arabic import arabic_share
from common.errors import FormaError
from factory.generators.cache import LLMCache, Reply, request_key
from factory.generators.grounding import check_answer, check_numbers, mentions, note_honoured
from factory.generators.llm import LLMGenerator, Teacher
from factory.generators.prompts import (
    MalformedReply,
    assistant_system,
    parse_assistant,
    parse_judge,
    parse_user,
    plan_turns,
)
from factory.planner import Slot
from factory.recipe_loader import load_recipe
from schemas.knowledge import Fact
from tests.helpers.llm import (
    ROOT,
    llama_generator,
    llama_server,
    read_jsonl,
    recipe_dict,
    write_recipe,
)

PROTEIN = Fact.model_validate({
    "id": "protein-daily", "category": "nutrition", "topic": "macros",
    "claim": "People who lift to build muscle do well on 1.6 to 2.2 g of protein per kg of body weight per day.",
    "quantities": [{"name": "daily protein", "low": 1.6, "high": 2.2, "unit": "g/kg/day", "tolerance": 0.1}],
    "source": {"org": "ISSN", "title": "Position stand: protein and exercise", "year": 2017},
    "safety_notes": ["People with kidney disease should ask their doctor before raising protein intake."],
    "questions": ["How much protein should I eat?"],
    "answer": "Aim for 1.6 to 2.2 g of protein per kg of body weight per day, spread over 3 to 4 meals.",
})


# parsing -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("raw", "truncated", "reason"), [
    ("", False, "empty_reply"),
    ("   \n ", False, "empty_reply"),
    ("Sure!<|im_end|><|im_start|>user\nthanks", False, "template_tokens"),
    ("[INST] answer me [/INST] ok", False, "template_tokens"),
    ("User: how many sets should I do?", False, "role_confusion"),
    ("Rest well. Rest well. Rest well. Rest well. Rest well. Rest well. Rest well. Rest well.", False, "repetition"),
    ("1.6 2.2 3 4 5 6 7 8 9 10 11 12 13 ## ## !!", False, "garbled"),
    ("Protein matters because the body uses it to", True, "truncated"),
])
def test_malformed_assistant_replies_are_rejected_with_a_reason(raw: str, truncated: bool, reason: str) -> None:
    with pytest.raises(MalformedReply) as info:
        parse_assistant(raw, truncated=truncated)
    assert info.value.reason == reason
    assert info.value.detail


def test_parsing_keeps_good_text_and_trims_what_it_must() -> None:
    text = "Aim for 1.6 to 2.2 g per kg a day. Spread it over meals. And then you also want to"
    assert parse_assistant(text, truncated=True) == "Aim for 1.6 to 2.2 g per kg a day. Spread it over meals."
    # a reply that starts writing the user's next turn keeps only the coach's part
    assert parse_assistant("Sleep 7 to 9 hours a night.\nUser: and naps?", truncated=False) == \
        "Sleep 7 to 9 hours a night."
    assert parse_user('Rewritten question: "How much protein do I need as a beginner?"', truncated=False) == \
        "How much protein do I need as a beginner?"
    with pytest.raises(MalformedReply, match="user_too_short"):
        parse_user("Hi!", truncated=False)


def test_judge_scores_parse_strictly() -> None:
    assert parse_judge('{"helpfulness": 4, "accuracy": 5}') == {"helpfulness": 4.0, "accuracy": 5.0}
    assert parse_judge("Helpfulness: 3\nAccuracy: 2") == {"helpfulness": 3.0, "accuracy": 2.0}
    with pytest.raises(MalformedReply, match="judge_unparseable"):
        parse_judge("This answer is great!")
    with pytest.raises(MalformedReply, match="judge_unparseable"):
        parse_judge('{"helpfulness": 9, "accuracy": 5}')


# grounding -----------------------------------------------------------------------------------------------------
def test_numbers_are_read_with_their_units() -> None:
    found = [(m.value, m.unit) for m in mentions("Eat 1.6-2.2 g/kg daily, rest 90 seconds, 3 sets, step 1")]
    assert (1.6, "g") in found and (2.2, "g") in found
    assert (90.0, "s") in found and (3.0, "set") in found
    assert (1.0, None) in found  # "step 1": no unit after it, so it is never judged


def test_grounding_rejects_a_contradicting_number() -> None:
    verdict = check_numbers("Most people need about 0.8 g of protein per kg.", [PROTEIN])
    assert not verdict.passed and verdict.reason == "number_contradicts_fact"
    assert "0.8" in verdict.detail and "1.6 to 2.2" in verdict.detail
    assert check_numbers("Aim for 2 g per kg each day.", [PROTEIN]).passed  # inside the range
    assert check_numbers("Aim for 2.3 g per kg each day.", [PROTEIN]).passed  # inside the tolerance


def test_strict_mode_rejects_numbers_the_facts_lack_and_user_numbers_are_allowed() -> None:
    strict = check_numbers("Also walk for 45 minutes.", [PROTEIN], mode="strict")
    assert strict.reason == "ungrounded_number"
    assert check_numbers("Also walk for 45 minutes.", [PROTEIN], mode="contradictions").passed
    assert check_numbers("At 68 years you can still do it.", [PROTEIN], context="I am 68 years old").passed


def test_grounding_requires_the_safety_note() -> None:
    note = PROTEIN.safety_notes[0]
    missing = check_answer("Aim for 1.6 to 2.2 g per kg per day.", [PROTEIN], [note])
    assert missing.reason == "missing_safety_note"
    assert check_answer("Aim for 2 g per kg a day; if your kidneys are a concern, see your physician first.",
                        [PROTEIN], [note]).passed
    assert note_honoured("Stop when the pain is sharp.", "Stop if you feel sharp pain.")
    assert not note_honoured("Keep going.", "Stop if you feel sharp pain.")


# cache ---------------------------------------------------------------------------------------------------------
def test_cache_keys_and_storage(tmp_path: Path) -> None:
    messages = [{"role": "user", "content": "hi"}]
    key = request_key("m", messages, {"temperature": 0.0, "seed": 1})
    assert key == request_key("m", messages, {"seed": 1, "temperature": 0.0})  # order-insensitive
    assert key != request_key("m", messages, {"temperature": 0.0, "seed": 2})
    assert key != request_key("other", messages, {"temperature": 0.0, "seed": 1})
    cache = LLMCache(tmp_path / "c.sqlite")
    assert cache.get(key) is None
    cache.put(key, "m", {"messages": messages}, Reply(text="hello", output_tokens=1))
    again = LLMCache(tmp_path / "c.sqlite")  # another process would see it: committed, WAL
    hit = again.get(key)
    assert hit is not None and hit.text == "hello" and hit.cached
    with sqlite3.connect(tmp_path / "c.sqlite") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert [k for k, _ in again.call_log()] == [key]


# real builds ---------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_in_process_build_with_smollm2_catches_real_mistakes(llm_reference: tuple[Path, Path]) -> None:
    _recipe, out = llm_reference
    samples = read_jsonl(out / "samples.jsonl")
    assert len(samples) == 6
    for s in samples:
        lineage = s["lineage"]
        assert lineage["generator"] == "llama_cpp" and lineage["model"].startswith("SmolLM2-135M-Instruct")
        assert all(g["passed"] for g in lineage["checks"]["grounding"])
        turns = s["conversation"]["turns"]
        assert turns and all(t["content"].strip() for t in turns)
        assert not any("<|im_" in t["content"] for t in turns)
    rejects = read_jsonl(out / "rejects.jsonl")
    grounding = [r for r in rejects if r["stage"] == "grounding"]
    assert grounding, "the weak model should make mistakes the grounding check catches"
    for r in grounding:
        assert r["reason"] in {"number_contradicts_fact", "ungrounded_number", "missing_safety_note"}
        assert r["record"]["checks"]["grounding"][-1]["passed"] is False
    manifest = json.loads((out / "manifest.json").read_text())
    generate_stats = next(s for s in manifest["stages"] if s["stage"] == "generate")
    assert generate_stats["dropped"] == len([r for r in rejects if r["stage"] in {"generate", "grounding", "judge"}])


@pytest.mark.slow
def test_build_through_the_openai_compatible_server_and_a_server_that_goes_down(tmp_path: Path) -> None:
    from common.model_paths import smollm2_gguf
    from factory.build import build_dataset

    folder = tmp_path
    with llama_server(smollm2_gguf()) as base_url:
        gen = {"backend": "openai_compatible", "model": "smollm2", "base_url": base_url, "temperature": 0.0,
               "max_new_tokens": 80, "user_max_new_tokens": 40, "concurrency": 2, "max_retries": 2}
        recipe = write_recipe(folder, recipe_dict("llm-server", generator=gen, total=4, turn_mix={1: 1.0}))
        result = build_dataset(recipe, folder / "out")
    assert len(result.samples) == 4
    assert {s.lineage.model for s in result.samples} == {"smollm2"}
    cache = LLMCache(folder / "out" / "cache" / "llm.sqlite")
    held = len(cache)
    assert held >= 8 and len(cache.call_log()) == held
    # the server is gone now: asking for more retries with backoff, then stops with a clear error, keeping the cache
    started = time.perf_counter()
    with pytest.raises(FormaError) as info:
        build_dataset(recipe, folder / "out", total=8, resume=True)
    message = str(info.value)
    assert "cannot reach the server" in message and "2 retries" in message and "--resume" in message
    assert time.perf_counter() - started > 0.5  # it backed off before giving up
    assert len(LLMCache(folder / "out" / "cache" / "llm.sqlite")) == held


def test_missing_model_file_is_a_clear_error(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, recipe_dict("llm-missing", generator=llama_generator(model="models/nope.gguf")))
    proc = subprocess.run([sys.executable, "-m", "cli.app", "build", str(recipe), "--out", str(tmp_path / "o"),
                           "-q"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "model file not found" in proc.stderr + proc.stdout
    assert "nope.gguf" in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr


def test_stale_cache_without_resume_is_refused(tmp_path: Path) -> None:
    from factory.build import build_dataset

    recipe = write_recipe(tmp_path, recipe_dict("llm-stale", generator=llama_generator(model="nope.gguf")))
    cache = LLMCache(tmp_path / "o" / "cache" / "llm.sqlite")
    cache.put("k", "m", {}, Reply(text="x"))
    # refused before any call: a folder holding only a reply cache is not a finished Forma output (#18), and a
    # finished one with a cache needs --resume; either way the cached replies stay untouched
    with pytest.raises(FormaError, match=r"pass --resume|refusing to touch it"):
        build_dataset(recipe, tmp_path / "o")
    assert len(LLMCache(tmp_path / "o" / "cache" / "llm.sqlite")) == 1


@pytest.mark.slow
def test_malformed_replies_become_rejects_and_nothing_is_lost(tmp_path: Path) -> None:
    """A token limit too small for any sentence: every reply is malformed, each is recorded, all stay cached."""
    from factory.build import MAX_BALANCE_ROUNDS, build_dataset

    folder = tmp_path
    gen = llama_generator(user_max_new_tokens=2)
    recipe = write_recipe(folder, recipe_dict("llm-malformed", generator=gen, total=1, turn_mix={1: 1.0},
                                              categories={"exercise_technique": 100, "programming": 0,
                                                          "nutrition": 0, "recovery": 0, "motivation": 0,
                                                          "special_populations": 0}))
    with pytest.raises(FormaError, match="could not fill the quotas"):
        build_dataset(recipe, folder / "out")
    # a failed build never takes the final name (#18): its work, rejects and reply cache included, stays in the
    # hidden partial folder beside it, where --resume picks it up
    work = folder / ".out.partial"
    assert not (folder / "out").exists()
    rejects = read_jsonl(work / "rejects.jsonl")
    assert len(rejects) == MAX_BALANCE_ROUNDS
    assert {r["reason"] for r in rejects} <= {"user_too_short", "truncated", "empty_reply", "garbled"}
    assert all(r["record"]["raw_reply"] is not None and r["detail"] for r in rejects)
    cache = LLMCache(work / "cache" / "llm.sqlite")
    assert len(cache) == MAX_BALANCE_ROUNDS
    # rerunning pays for nothing: every reply comes from the cache
    with pytest.raises(FormaError):
        build_dataset(recipe, folder / "out", resume=True)
    assert len(LLMCache(work / "cache" / "llm.sqlite").call_log()) == MAX_BALANCE_ROUNDS


def test_cli_exposes_resume_engine_and_ray_address() -> None:
    proc = subprocess.run([sys.executable, "-m", "cli.app", "build", "--help"], capture_output=True, text=True,
                          timeout=60, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0
    for flag in ("--resume", "--engine", "--ray-address"):
        assert flag in proc.stdout


# teacher prompts in the slot's language ---------------------------------------------------------------------------
class _ScriptedTeacher(Teacher):
    """Records every request and answers from a script (no model): the prompts are what is under test."""

    def __init__(self, replies: list[str]) -> None:
        super().__init__(cache=None)
        self.model_id = self.label = "scripted"
        self.replies = replies
        self.requests: list[list[dict[str, str]]] = []

    def _call_many(self, items: list[tuple[int, str, list[dict[str, str]], dict[str, Any]]],
                   done: Callable[[int, str, Reply], None]) -> None:
        for i, key, messages, _params in items:
            self.requests.append(messages)
            done(i, key, Reply(text=self.replies[len(self.requests) - 1], output_tokens=10))


def test_teacher_prompts_for_an_arabic_slot_are_arabic_and_carry_the_arabic_fact() -> None:
    """An Arabic slot's user-simulator and teacher prompts are written in Arabic (not English plus a note), carry the
    fact's Arabic question, answer and numbers, and the chat comes back with the recipe's Arabic system prompt and
    Arabic-Indic digits; an English slot's prompts are unchanged."""
    loaded = load_recipe(ROOT / "recipes" / "forma-fitness-ar.yaml")
    fact = next(f for f in loaded.facts if f.id == "nut-presleep-casein")
    arabic = fact.translations["ar"]
    persona = next(p for p in loaded.recipe.personas if p.id == "beginner")
    slot = Slot(index=0, category=fact.category, persona=persona, user_turns=1, language="ar", facts=(fact,), seed=7)
    teacher = _ScriptedTeacher(["هل أتناول الكازين قبل النوم لبناء العضلات؟",
                                "نعم، تناول نحو 30 إلى 40 غرامًا من الكازين قبل النوم يدعم بناء العضلات ليلًا."])
    sample = LLMGenerator(loaded, teacher).generate(slot)

    user_prompt, (system, *_rest) = teacher.requests[0][0]["content"], teacher.requests[1]
    teacher_prompt = system["content"]
    for prompt in (user_prompt, teacher_prompt):
        share = arabic_share(prompt.replace("Forma AI", ""))
        assert share is not None and share > 0.95, prompt
        assert "Write in the language" not in prompt
    assert any(q in user_prompt for q in arabic.questions)
    assert arabic.answer in teacher_prompt and "30 إلى 40 غرام" in teacher_prompt
    assert any(intro in teacher_prompt for intro in persona.translations["ar"].intro)  # type: ignore[index]
    assert teacher_prompt.startswith(loaded.recipe.system_prompt_for("ar").strip())
    assert sample.conversation.system == loaded.recipe.system_prompt_for("ar")
    assert "٣٠ إلى ٤٠" in sample.conversation.turns[-1].content

    # English slots: the English prompt, as before (no Arabic, no note)
    plan = plan_turns(replace(slot, language="en"), random.Random(1))[0]
    english = assistant_system(loaded.recipe.system_prompt, persona, "nutrition", plan, 0, 1)
    assert f"Fact: {fact.claim}" in english and "Numbers: pre-sleep casein dose: 30 to 40 g." in english
    assert arabic_share(english.replace("Forma AI", "")) == 0.0
