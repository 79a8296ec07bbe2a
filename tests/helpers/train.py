"""Small training datasets for the train tests and the GPU bench: `forma build` output when it can run, else chats
made from the schemas (deterministic, fitness-flavoured, one to two exchanges each)."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

from schemas.conversation import Conversation
from schemas.knowledge import Category
from schemas.sample import Lineage, Sample

SYSTEM = "You are Forma, a careful fitness coach. Give safe, evidence-based answers."
_QUESTIONS = [
    ("How much protein should I eat to build muscle?", "Aim for about 1.6 g of protein per kg of body weight per "
     "day, spread over three or four meals.", Category.NUTRITION),
    ("How many sets per week should I do for each muscle?", "Most people grow well on 10 to 20 hard sets per muscle "
     "per week, split over at least two sessions.", Category.PROGRAMMING),
    ("How long should I rest between heavy squat sets?", "Rest 2 to 5 minutes between heavy sets so you can keep "
     "your form and your load.", Category.PROGRAMMING),
    ("How much sleep do I need to recover from training?", "Most adults recover best on 7 to 9 hours of sleep a "
     "night; keep a regular bedtime.", Category.RECOVERY),
    ("What is a good cue for the deadlift?", "Keep the bar close to your shins, brace your trunk, and push the "
     "floor away rather than pulling with your back.", Category.EXERCISE_TECHNIQUE),
    ("I keep skipping workouts. Any tips?", "Schedule short sessions at fixed times, track them, and make the "
     "first step tiny: put your shoes on and start.", Category.MOTIVATION),
    ("Is it safe to lift weights after 60?", "Yes, for most people it is; start light, progress slowly, and check "
     "with your doctor if you have a heart condition.", Category.SPECIAL_POPULATIONS),
    ("How much water should I drink when training?", "Drink to thirst, and about 0.4 to 0.8 litres per hour of "
     "hard exercise, more in the heat.", Category.NUTRITION),
]
_OPENERS = ["", "Quick question: ", "Hi! ", "As a beginner, ", "Coach, "]
_FOLLOW = [("Thanks! Anything else?", "Be consistent for eight weeks before you judge the results."),
           ("Can I do that every day?", "Leave at least one easy day between hard sessions for the same muscles.")]


def schema_samples(n: int, seed: int = 0, test_share: float = 0.2) -> list[Sample]:
    """``n`` valid Samples (lineage names the schema maker), shuffled with ``seed``, the last share as test."""
    rng = random.Random(seed)
    combos = list(itertools.product(range(len(_QUESTIONS)), range(len(_OPENERS)), range(len(_FOLLOW) + 1)))
    rng.shuffle(combos)
    out = []
    for slot, (q, o, f) in enumerate(itertools.islice(itertools.cycle(combos), n)):
        question, answer, category = _QUESTIONS[q]
        turns = [{"role": "user", "content": _OPENERS[o] + question}, {"role": "assistant", "content": answer}]
        if f < len(_FOLLOW):
            turns += [{"role": "user", "content": _FOLLOW[f][0]}, {"role": "assistant", "content": _FOLLOW[f][1]}]
        chat = Conversation.from_messages([{"role": "system", "content": SYSTEM}, *turns])
        lineage = Lineage(recipe="schema-test", recipe_hash="0" * 16, generator="tests.train_fixtures", seed=seed,
                          slot=slot)
        sample = Sample.create(category=category, persona="tester", conversation=chat, lineage=lineage)
        out.append(sample.model_copy(update={"split": "test" if slot >= n * (1 - test_share) else "train"}))
    return out


def write_samples(samples: list[Sample], out_dir: Path) -> Path:
    """Write ``out_dir/samples.jsonl`` as `forma build` does."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "samples.jsonl").open("w", encoding="utf-8") as fh:
        for s in samples:
            fh.write(json.dumps(s.model_dump(mode="json"), ensure_ascii=False) + "\n")
    return out_dir


def small_dataset(out_dir: Path, n: int = 48, seed: int = 0) -> Path:
    """A dataset folder: the real builder's output when its recipe builds here, else schema-made samples."""
    try:
        from factory.build import build_dataset

        build_dataset(Path(__file__).resolve().parents[2] / "recipes" / "forma-fitness.yaml", out_dir,
                      seed=seed, total=n)
        return out_dir
    except Exception:  # builder or its knowledge base not ready in this checkout: use the schema-made chats
        return write_samples(schema_samples(n, seed), out_dir)
