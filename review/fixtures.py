"""Synthetic dataset versions for tests and the benchmark, written with the schemas alone (no recipe or model).

Review must be testable and measurable at 10,000 records without running a build; these folders have the same
shape as ``forma build`` output (samples.jsonl with ``schemas.sample.Sample`` lines, manifest.json).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from review.client import ArgillaClient
from schemas.conversation import Conversation, Role, Turn
from schemas.knowledge import Category
from schemas.sample import Lineage, Sample

_QUESTIONS = {
    Category.EXERCISE_TECHNIQUE: ("How do I keep my back neutral in a deadlift?", "Brace, hinge at the hips and keep "
                                  "the bar close; stop a set when your lower back starts to round."),
    Category.PROGRAMMING: ("How many sets per muscle per week?", "Most people grow well on 10 to 20 hard sets per "
                           "muscle per week, spread over two or more sessions."),
    Category.NUTRITION: ("How much protein do I need?", "About 1.6 to 2.2 g per kg of body weight per day supports "
                         "muscle gain for most lifters."),
    Category.RECOVERY: ("How much sleep helps recovery?", "Aim for 7 to 9 hours a night; consistent timing helps."),
    Category.MOTIVATION: ("I keep skipping workouts, any tips?", "Schedule sessions like appointments and start with "
                          "short ones you can always finish."),
    Category.SPECIAL_POPULATIONS: ("I'm 70, can I start lifting?", "Yes: start light with supervision, and check "
                                   "with your doctor first if you have heart or joint conditions."),
}


def make_samples(n: int, *, seed: int = 0, max_turns: int = 3) -> list[Sample]:
    """``n`` distinct samples spread over the six categories, 1 to ``max_turns`` user turns each."""
    categories = list(Category)
    samples: list[Sample] = []
    for i in range(n):
        category = categories[i % len(categories)]
        question, answer = _QUESTIONS[category]
        turns: list[Turn] = []
        for t in range(1 + (i // len(categories)) % max_turns):
            turns.append(Turn(role=Role.USER, content=f"{question} (case {seed}-{i}, turn {t + 1})"))
            turns.append(Turn(role=Role.ASSISTANT, content=f"{answer} [#{i}.{t}]"))
        conversation = Conversation(system="You are Forma AI, a fitness coach.", turns=turns)
        lineage = Lineage(recipe="synthetic", recipe_hash="0" * 16, generator="synthetic", seed=seed, slot=i,
                          fact_ids=[f"{category.value.replace('_', '-')}-fact-{i % 3}"],
                          checks={"safety": "safe"} if i % 2 == 0 else {})
        samples.append(Sample.create(category=category, persona=f"persona_{i % 4}", conversation=conversation,
                                     lineage=lineage).model_copy(update={"split": "test" if i % 10 == 9 else "train"}))
    return samples


def write_version(out: Path, samples: list[Sample], *, recipe: str = "synthetic") -> Path:
    """A folder shaped like ``forma build`` output: samples.jsonl and a manifest with the dataset hash."""
    from common.jsonl import write_jsonl
    from factory.export import dataset_hash

    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "samples.jsonl", (s.model_dump(mode="json") for s in samples))
    manifest = {"recipe": recipe, "dataset_hash": dataset_hash(samples), "total": len(samples)}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out


def create_annotator(owner: ArgillaClient, username: str, password: str, workspace: str = "argilla") -> ArgillaClient:
    """Create an annotator user in ``workspace`` (or reuse it) and return a client holding their bearer token."""
    from review.users import add_user, login

    add_user(owner, username, password, workspace=workspace)
    return login(owner.url, username, password)


def submit(annotator: ArgillaClient, record_id: str, values: dict[str, Any], status: str = "submitted") -> Any:
    """Create the annotator's response to a record, as the UI's submit button does."""
    body: dict[str, Any] = {"status": status, "values": {q: {"value": v} for q, v in values.items() if v is not None}}
    return annotator.request("POST", f"/records/{record_id}/responses", json=body)
