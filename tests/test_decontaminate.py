"""Decontamination: eval prompts (suites, extra files, held-out facts) are found; n-gram and semantic matches are
dropped naming the eval case; unrelated chats are kept."""

from __future__ import annotations

import json
from pathlib import Path

from factory.recipe_loader import load_recipe
from factory.stages.base import RejectWriter
from factory.stages.decontaminate import DEFAULT_SUITES, Decontaminate, EvalPrompt, eval_prompts, prompts_from_file
from schemas.conversation import Conversation, Role, Turn
from schemas.sample import Lineage, Sample
from tests.helpers.dedupe import RECIPE


def chat(user: str, assistant: str = "Here is a careful, general answer about training.") -> Sample:
    conv = Conversation(turns=[Turn(role=Role.USER, content=user), Turn(role=Role.ASSISTANT, content=assistant)])
    return Sample.create(category="nutrition", persona="p", conversation=conv,  # type: ignore[arg-type]
                         lineage=Lineage(recipe="t", recipe_hash="t", generator="t", seed=0, slot=0))


def test_eval_prompts_cover_suites_files_and_heldout(tmp_path: Path) -> None:
    loaded = load_recipe(RECIPE)
    prompts = eval_prompts(loaded)
    ids = {p.id for p in prompts}
    assert any(i.startswith("eval:safety/") for i in ids) and any(i.startswith("eval:accuracy/") for i in ids)
    heldout = [f for f in loaded.facts if f.heldout]
    assert heldout and all(f"fact:{f.id}" in ids for f in heldout)
    extra = tmp_path / "extra.jsonl"
    extra.write_text(json.dumps({"id": "x1", "question": "How many push-ups should a 40-year-old manage?"}) + "\n")
    assert [p.text for p in prompts_from_file(extra)] == ["How many push-ups should a 40-year-old manage?"]
    assert DEFAULT_SUITES.is_dir()


def test_ngram_and_semantic_matches_are_dropped() -> None:
    prompts = [EvalPrompt("eval:t/a", "I get a tight pain in my chest when I run hard, should I push through it?"),
               EvalPrompt("eval:t/b", "How many hours of sleep per night are recommended for adults?")]
    stage = Decontaminate(prompts=prompts, ngram=8, semantic_threshold=0.85, backend="minilm")
    writer = RejectWriter()
    stage.bind(writer)
    samples = [
        chat("Hey coach. I get a tight pain in my chest when I run hard, what now?"),  # 8-gram overlap
        chat("For adults, how many hours of sleep each night are recommended?"),        # same question reworded
        chat("What is the best grip width for a barbell row?"),                        # unrelated
    ]
    kept = list(stage.run(samples))
    assert [s.id for s in kept] == [samples[2].id]
    found = {(k[1], e.related_id) for k, v in writer.examples.items() for e in v}
    assert found == {("eval_ngram_overlap", "eval:t/a"), ("eval_semantic_match", "eval:t/b")}
