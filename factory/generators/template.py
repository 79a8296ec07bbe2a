"""The grounded template generator: persona-conditioned multi-turn chats from the knowledge base, no model needed.

It is the embedded default: fast, deterministic for a slot's seed, and grounded by construction (every number in an
answer comes from a fact; the phrase banks below hold no digits). Variety comes from the fact's several question
phrasings, the persona's self-descriptions and goals, and the openers, connectives and closers here.
"""

from __future__ import annotations

import random
import re

from factory.planner import Slot
from schemas.conversation import Conversation, Role, Turn
from schemas.knowledge import Fact
from schemas.recipe import Recipe
from schemas.sample import Lineage, Sample

OPENERS = (
    "{question}",
    "{question}",
    "Hi! {intro}. {question}",
    "{intro} and I'm trying to {goal}. {question}",
    "Hey coach, {question_lc}",
    "Quick question: {question_lc}",
    "{question} For context, {intro_lc}.",
    "{intro}. My goal is to {goal}. {question}",
    "Hello. {question}",
    "Can I ask you something? {question}",
    "{intro}, so I want to get this right: {question_lc}",
)
CONNECTIVES = (
    "{question}",
    "Thanks! {question}",
    "That helps. {question}",
    "Got it. {question}",
    "Makes sense. {question}",
    "Okay, and {question_lc}",
    "One more thing: {question_lc}",
    "Interesting. {question}",
    "Follow-up: {question_lc}",
)
ACKNOWLEDGEMENTS = ("", "", "", "Good question.", "Great question.", "Happy to help.", "Sure.",
                    "Glad you asked.", "That's a smart thing to check.")
FOLLOW_ACKS = ("", "", "Good follow-up.", "Sure.", "Of course.", "Yes, good point.")
SAFETY_LEADS = ("One caution: {note}", "Important: {note}", "Please keep in mind: {note}", "A safety note: {note}")
CLOSERS = ("", "", "", "", "Let me know how it goes.", "Want me to fit this into your weekly plan?",
           "Feel free to ask if anything is unclear.", "Keep me posted on your progress.")


def _lc(text: str) -> str:
    return text[:1].lower() + text[1:] if text and not text[:2].isupper() else text


def _sentence(text: str) -> str:
    text = text.strip()
    return text if text.endswith((".", "!", "?")) else text + "."


_WORD = re.compile(r"[a-z']+")
_STOP = frozenset((
    "a", "an", "and", "are", "as", "at", "be", "by", "for", "from", "has", "have", "if", "in", "is", "it", "of",
    "on", "or", "should", "that", "the", "their", "them", "they", "this", "to", "with", "you", "your",
))


def _already_said(note: str, answer: str) -> bool:
    """True when most of a safety note's content words are already in the answer (the expert wrote it in)."""
    words = {w for w in _WORD.findall(note.lower()) if w not in _STOP}
    return bool(words) and len(words & set(_WORD.findall(answer.lower()))) / len(words) >= 0.6


class TemplateGenerator:
    """Fills a :class:`~factory.planner.Slot` from its facts and persona; the same slot always gives the same chat."""

    name = "template"

    def __init__(self, recipe: Recipe, recipe_hash: str) -> None:
        self.recipe = recipe
        self.recipe_hash = recipe_hash

    def generate(self, slot: Slot, attempt: int = 0) -> Sample:
        """``attempt`` > 0 re-rolls the phrasing of the same slot (used when a filter dropped the first try)."""
        rng = random.Random(slot.seed * 31 + attempt)
        persona = slot.persona
        primary = slot.facts[0]
        intro = rng.choice(persona.intro)
        goal = rng.choice(persona.goals)
        turns: list[Turn] = []

        question = rng.choice(primary.questions)
        user = rng.choice(OPENERS).format(question=question, question_lc=_lc(question), intro=intro,
                                          intro_lc=_lc(intro), goal=goal)
        turns += [Turn(role=Role.USER, content=user),
                  Turn(role=Role.ASSISTANT, content=self._answer(primary, rng, first=True, notes=persona.coach_notes))]

        follow_ups = list(primary.follow_ups)
        rng.shuffle(follow_ups)
        later_facts = list(slot.facts[1:])
        for _ in range(slot.user_turns - 1):
            if follow_ups:
                follow = follow_ups.pop()
                q, answer = follow.question, _sentence(follow.answer)
                lead = rng.choice(FOLLOW_ACKS)
                a = f"{lead} {answer}".strip()
            elif later_facts:
                fact = later_facts.pop(0)
                q = rng.choice(fact.questions)
                a = self._answer(fact, rng, first=False)
            else:  # the planner gives enough facts; a knowledge base this small still makes a valid chat
                break
            turns += [Turn(role=Role.USER, content=rng.choice(CONNECTIVES).format(question=q, question_lc=_lc(q))),
                      Turn(role=Role.ASSISTANT, content=a)]

        conversation = Conversation(system=self.recipe.system_prompt, turns=turns)
        lineage = Lineage(recipe=self.recipe.name, recipe_hash=self.recipe_hash, generator=self.name,
                          seed=slot.seed, slot=slot.index, fact_ids=[f.id for f in slot.facts],
                          checks={"attempt": attempt} if attempt else {})
        return Sample.create(category=slot.category, persona=persona.id, conversation=conversation,
                             lineage=lineage, language=slot.language)

    def _answer(self, fact: Fact, rng: random.Random, *, first: bool, notes: list[str] | None = None) -> str:
        parts = [rng.choice(ACKNOWLEDGEMENTS) if first else "", _sentence(fact.answer)]
        if notes and rng.random() < 0.6:
            parts.append(_sentence(rng.choice(notes)))
        safety = [n for n in fact.safety_notes if not _already_said(n, fact.answer)]
        if safety:
            parts.append(rng.choice(SAFETY_LEADS).format(note=_sentence(_lc(safety[0]))))
        parts.append(rng.choice(CLOSERS) if first else "")
        return " ".join(p for p in parts if p)
