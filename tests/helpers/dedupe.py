"""A planted corpus for the dedupe and decontamination tests: distinct chats plus known exact copies, near copies
(a few words changed) and paraphrases (clauses reordered, synonyms swapped, fillers changed), built from the
knowledge base so the text is real fitness language. Every planted copy records the original it copies."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

from schemas.conversation import Conversation, Role, Turn
from schemas.knowledge import Fact
from schemas.sample import Lineage, Sample

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "forma-fitness.yaml"

SYNONYMS = {"how": "in what way", "much": "a lot of", "should": "ought to", "need": "require", "get": "obtain",
            "is": "would be", "do": "should", "what": "which", "my": "my own", "best": "ideal", "good": "fine",
            "enough": "sufficient", "train": "work out", "start": "begin", "week": "7 days", "help": "assist",
            "make": "create", "can": "could", "bad": "harmful", "the": "that"}
INTROS = ("Hi coach!", "Hello there.", "Quick one:", "Hey,", "Question for you:", "Okay so,")
OUTROS = ("Thanks!", "Thanks a lot.", "Appreciate it.", "Cheers.", "Any tips?", "What do you think?")


@dataclass(frozen=True)
class Planted:
    sample: Sample
    kind: str  # original | exact | near | paraphrase
    original: str  # id of the sample it copies (its own id for originals)


def make_sample(user: str, assistant: str, slot: int, category: object) -> Sample:
    turns = [Turn(role=Role.USER, content=user), Turn(role=Role.ASSISTANT, content=assistant)]
    conversation = Conversation(turns=turns)
    lineage = Lineage(recipe="planted", recipe_hash="planted", generator="planted", seed=0, slot=slot)
    return Sample.create(category=category, persona="planted", conversation=conversation,  # type: ignore[arg-type]
                         lineage=lineage)


def exact_copy(text: str, rng: random.Random) -> str:
    """Same words: case, punctuation and spacing changed only (what exact dedupe normalizes away)."""
    out = text.upper() if rng.random() < 0.3 else text.lower()
    return "  " + re.sub(r"[.,!?](?=\s|$)", lambda m: rng.choice([m.group(0), "", " ;"]), out) + " "


def near_copy(text: str, rng: random.Random, edits: int) -> str:
    words = text.split()
    for _ in range(edits):
        i = rng.randrange(len(words))
        op = rng.random()
        if op < 0.4:
            words[i] = rng.choice(["really", "quite", "very", "also", "just"])
        elif op < 0.7 and len(words) > 10:
            del words[i]
        else:
            words.insert(i, rng.choice(["honestly", "basically", "generally"]))
    return " ".join(words)


def paraphrase_question(text: str, rng: random.Random) -> str:
    """Up to two words swapped for synonyms, and a greeting or a thanks added: the same question, reworded."""
    words = text.split()
    swappable = [i for i, w in enumerate(words) if w.lower() in SYNONYMS]
    for i in rng.sample(swappable, min(2, len(swappable))):
        words[i] = SYNONYMS[words[i].lower()]
    body = " ".join(words)
    return f"{rng.choice(INTROS)} {body}" if rng.random() < 0.5 else f"{body} {rng.choice(OUTROS)}"


def paraphrase_answer(text: str, rng: random.Random) -> str:
    sentences = re.split(r"(?<=[.!?])\s+", text.strip())
    rng.shuffle(sentences)
    return " ".join(sentences)


def planted_corpus(facts: tuple[Fact, ...], *, seed: int = 0, copies: int = 40) -> list[Planted]:
    """Originals (one per fact and question set), then ``copies`` each of exact, near and paraphrase copies."""
    rng = random.Random(seed)
    seen: set[str] = set()
    originals: list[Planted] = []
    for fact in facts:  # one chat per fact, on a question no other fact asks (the knowledge base repeats a few)
        question = next((q for q in fact.questions if q.lower() not in seen), None)
        if question is None:
            continue
        seen.add(question.lower())
        sample = make_sample(question, fact.answer, len(originals), fact.category)
        originals.append(Planted(sample, "original", sample.id))
    out = list(originals)
    slot = len(out)
    for kind in ("exact", "near", "paraphrase"):
        for p in rng.sample(originals, min(copies, len(originals))):
            turns = p.sample.conversation.turns
            user, answer = turns[0].content, turns[1].content
            if kind == "exact":
                user, answer = exact_copy(user, rng), exact_copy(answer, rng)
            elif kind == "near":
                answer = near_copy(answer, rng, edits=1)
            else:
                user, answer = paraphrase_question(user, rng), paraphrase_answer(answer, rng)
            out.append(Planted(make_sample(user, answer, slot, p.sample.category), kind, p.sample.id))
            slot += 1
    rng.shuffle(out)
    # originals first within each group, so "keep the first" keeps the original
    out.sort(key=lambda p: p.kind != "original")
    return out
