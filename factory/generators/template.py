"""The grounded template generator: persona-conditioned multi-turn chats from the knowledge base, no model needed.

It is the embedded default: fast, deterministic for a slot's seed, and grounded by construction (every number in an
answer comes from a fact, or from a fact's quantity applied to what the user said about themselves; the phrase
banks below hold no digits). What a chat teaches is decided by the slot's behaviour:

- ``answer``: a fact asked and answered, then its follow-ups and facts on the same topic (or linked ones), so later
  turns follow from earlier ones;
- ``escalate``: a red flag (schemas.behaviour), reported on its own or in the last turn of an ordinary chat; the
  reply says stop, who to see and how urgently;
- ``decline``: a harmful request, declined with the safe alternative (first, then "what instead?", or last);
- ``reassure``: a question that only sounds alarming, answered plainly.

Answers fit the person: the persona's self-description is stated, its coach note and profile (injury, medication,
pregnancy) shape the reply, and a per-kilogram or per-week quantity becomes the person's own number
(factory.personal). Wording varies: the experts' answer variants, several openers, connectives and leads.
"""

from __future__ import annotations

import random
import re
import zlib
from dataclasses import dataclass
from typing import Any

from factory.personal import needs, personal_number
from factory.planner import Slot
from schemas.conversation import Conversation, Role, Turn
from schemas.knowledge import Fact
from schemas.recipe import Persona, Recipe
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
#: Later turns on the same subject refer back to the conversation.
CONNECTIVES = (
    "{question}",
    "Thanks! {question}",
    "That helps. {question}",
    "Got it. {question}",
    "Makes sense. {question}",
    "Okay, and {question_lc}",
    "One more thing on {topic}: {question_lc}",
    "Following on from what you said, {question_lc}",
    "Still on {topic}, {question_lc}",
    "You mentioned {topic} earlier. {question}",
)
#: How a red flag or a harmful request comes up after an ordinary exchange.
TURN_LEADS = ("", "", "Also, ", "Actually, ", "One more thing. ", "Can I ask about something else? ", "By the way, ")
INSTEAD_QUESTIONS = ("So what would you suggest instead?", "Okay. What can I do instead, then?",
                     "Fair enough. What's the safer way to get there?", "Then what should I do?",
                     "Alright, what would you do in my place?")
INSTEAD_LEADS = ("Here's what I'd focus on instead: {alt}", "A safer route: {alt}",
                 "What works without the risk: {alt}", "Instead, put the effort into {alt}")
_LEAD_WORDS = frozenset(("also", "actually", "and", "oh", "btw", "by", "one", "quick", "wait", "so", "but"))
ACKNOWLEDGEMENTS = ("", "", "", "Good question.", "Great question.", "Happy to help.", "Sure.",
                    "Glad you asked.", "That's a smart thing to check.")
FOLLOW_ACKS = ("", "", "Good follow-up.", "Sure.", "Of course.", "Yes, good point.")
SAFETY_LEADS = ("One caution: {note}", "Important: {note}", "Please keep in mind: {note}", "A safety note: {note}")
CLOSERS = ("", "", "", "", "Let me know how it goes.", "Want me to fit this into your weekly plan?",
           "Feel free to ask if anything is unclear.", "Keep me posted on your progress.")
PERSONAL_LEADS = ("For you at {mass} kg, that works out to about {number}.",
                  "At {mass} kg, that's roughly {number}.",
                  "In your case, at {mass} kg, aim for about {number}.")
DAYS_LEADS = ("Spread over your {days} training days, that's about {number} a session.",
              "With {days} days a week, that comes to roughly {number} per session.",
              "Across {days} sessions a week, plan on about {number} each.")
PROFILE_NOTES = {
    "injury": ("With your {value}, stay within what your physiotherapist has cleared.",
               "Given your {value}, progress only as far as your physio is happy with."),
    "medication": ("Because you take {value}, ask your doctor how it affects exercise before you change much.",
                   "As you're on {value}, check with your doctor or pharmacist before raising the intensity."),
    "pregnant": ("As you're pregnant, run changes past your midwife or obstetrician.",
                 "Since you're expecting, your midwife or obstetrician should okay any new training."),
}
#: Topic ids as people say them, for connectives that refer back.
TOPIC_WORDS = {
    "form_cues": "form", "common_mistakes": "technique mistakes", "progressions_regressions": "progressions",
    "equipment_alternatives": "equipment", "sets_reps_rest": "sets and rest", "splits": "training splits",
    "progressive_overload": "progression", "deloads": "deloads", "macros": "nutrition", "meal_timing": "meal timing",
    "supplements": "supplements", "hydration": "hydration", "sleep": "sleep", "active_recovery": "recovery",
    "soreness": "soreness", "injury_prevention": "injury prevention", "consistency": "consistency",
    "plateaus": "plateaus", "goal_setting": "goals", "habits": "habits", "beginners": "starting out",
    "older_adults": "training as an older adult", "women": "training as a woman",
    "return_after_injury": "coming back from injury",
}


def _lc(text: str) -> str:
    return text[:1].lower() + text[1:] if text and not text[:2].isupper() else text


def _sentence(text: str) -> str:
    text = " ".join(text.split())
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


def _rotate(options: list[str], use: int, key: str) -> str:
    """The ``use``-th wording of a fact or item (from a fixed offset per ``key``): each wording in turn, so none
    comes up far more often than another however popular the fact is."""
    return options[(use + zlib.crc32(key.encode())) % len(options)]


def _item_turn(asks: list[str], replies: list[str], use: int, key: str) -> tuple[str, str]:
    """The ``use``-th (user wording, reply) pair of an item: replies rotate fastest and the wording moves on once
    every reply had its turn, so all pairs come up before any pair repeats."""
    offset = zlib.crc32(key.encode())
    return asks[(use // len(replies) + offset) % len(asks)], replies[(use + offset) % len(replies)]


def strip_frame(text: str) -> str:
    """An assistant turn without its greeting and closer: what the variety figures count (factory.quality)."""
    out = text.strip()
    for lead in sorted({a for a in (*ACKNOWLEDGEMENTS, *FOLLOW_ACKS) if a}, key=len, reverse=True):
        if out.startswith(lead + " "):
            out = out[len(lead) + 1:]
            break
    for closer in sorted({c for c in CLOSERS if c}, key=len, reverse=True):
        if out.endswith(" " + closer):
            out = out[: -len(closer) - 1]
            break
    return out


@dataclass
class _Person:
    """What this user says about themselves in this chat (drawn once per slot)."""

    persona: Persona
    intro: str
    goal: str
    mass: float | None
    days: int | None
    notes_used: set[str]

    @classmethod
    def draw(cls, persona: Persona, rng: random.Random) -> _Person:
        profile = persona.profile
        return cls(persona=persona, intro=rng.choice(persona.intro), goal=rng.choice(persona.goals),
                   mass=rng.choice(profile.body_mass_kg) if profile.body_mass_kg else None,
                   days=rng.choice(profile.training_days) if profile.training_days else None, notes_used=set())

    def fill(self, template: str, question: str, topic: str = "") -> str:
        return template.format(question=question, question_lc=_lc(question), intro=self.intro,
                               intro_lc=_lc(self.intro), goal=self.goal, topic=topic)

    def details_for(self, fact: Fact) -> str:
        """What the user adds so the answer can be made personal: body mass or training days."""
        need = needs(fact)
        if need == "mass" and self.mass is not None:
            return f"I weigh {self.mass:g} kg."
        if need == "days" and self.days is not None:
            return f"I can train {self.days} days a week."
        return ""

    def adaptation(self, rng: random.Random) -> str:
        """One sentence for this person not said before in the chat: a profile note first, else a coach note."""
        profile = self.persona.profile
        options = [t.format(value=v) for key, v in (("injury", profile.injury), ("medication", profile.medication),
                                                     ("pregnant", "yes" if profile.pregnant else None)) if v
                   for t in PROFILE_NOTES[key]]
        options += list(self.persona.coach_notes)
        fresh = [o for o in options if o not in self.notes_used]
        if not fresh:
            return ""
        note = rng.choice(fresh)
        self.notes_used.add(note)
        return _sentence(note)


class TemplateGenerator:
    """Fills a :class:`~factory.planner.Slot` from its facts, behaviour item and persona; same slot, same chat."""

    name = "template"

    def __init__(self, recipe: Recipe, recipe_hash: str) -> None:
        self.recipe = recipe
        self.recipe_hash = recipe_hash

    def generate(self, slot: Slot, attempt: int = 0) -> Sample:
        """``attempt`` > 0 re-rolls the phrasing of the same slot (used when a filter dropped the first try)."""
        rng = random.Random(slot.seed * 31 + attempt)
        person = _Person.draw(slot.persona, rng)
        chat = _Chat(rng, person, {f.id: n for f, n in zip(slot.facts, slot.fact_uses, strict=False)})
        if slot.behaviour == "answer":
            chat.fact_turns(slot, slot.user_turns, first=True)
        elif slot.behaviour == "escalate":
            chat.red_flag_chat(slot)
        elif slot.behaviour == "decline":
            chat.decline_chat(slot)
        else:
            chat.reassure_chat(slot)
        conversation = Conversation(system=self.recipe.system_prompt, turns=chat.turns)
        checks: dict[str, Any] = {"attempt": attempt} if attempt else {}
        lineage = Lineage(recipe=self.recipe.name, recipe_hash=self.recipe_hash, generator=self.name,
                          seed=slot.seed, slot=slot.index, fact_ids=chat.fact_ids, checks=checks,
                          behaviour_id=getattr(slot.item, "id", None))
        return Sample.create(category=slot.category, persona=slot.persona.id, conversation=conversation,
                             lineage=lineage, language=slot.language, behaviour=slot.behaviour)


class _Chat:
    """One conversation being written: its turns and the facts it used, in order."""

    def __init__(self, rng: random.Random, person: _Person, uses: dict[str, int]) -> None:
        self.rng = rng
        self.person = person
        self.uses = uses  # fact id -> how many chats used it before this one (wording rotation)
        self.turns: list[Turn] = []
        self.fact_ids: list[str] = []
        self._pending: list[Fact] | None = None  # the slot's facts not asked yet
        self._follow_ups: list[Any] = []  # follow-ups of the fact last answered
        self._topic = ""

    def add(self, user: str, assistant: str) -> None:
        self.turns += [Turn(role=Role.USER, content=user), Turn(role=Role.ASSISTANT, content=assistant)]

    # -- ordinary turns ------------------------------------------------------------------------------------------
    def fact_turns(self, slot: Slot, n: int, *, first: bool) -> None:
        """``n`` user turns about the slot's facts, carrying on where the chat left off: the primary fact, its
        follow-ups, then same-topic facts. A fact is never asked twice in one chat."""
        if self._pending is None:
            self._pending = list(slot.facts)
        for _ in range(n):
            if self._follow_ups and (not self._pending or self.rng.random() < 0.5):
                # a follow-up of the fact last answered, or the next fact on the same subject (half and half when
                # both exist, so no follow-up answer is served in every chat its fact starts)
                self._follow_up_turn()
            elif self._pending:
                self._fact_turn(self._pending.pop(0), first=first and not self.turns)
            else:  # the planner gives enough facts; a knowledge base this small still makes a valid chat
                break

    def _fact_turn(self, fact: Fact, *, first: bool) -> None:
        question = self.rng.choice(fact.questions)
        if first:
            user = self.person.fill(self.rng.choice(OPENERS), question)
        else:
            user = self.person.fill(self.rng.choice(CONNECTIVES), question, TOPIC_WORDS.get(fact.topic, "that"))
        user = f"{user} {self.person.details_for(fact)}".strip()
        self.add(user, self.answer(fact, first=first, user=user))
        self.fact_ids.append(fact.id)
        self._topic = fact.topic
        self._follow_ups = list(fact.follow_ups)
        self.rng.shuffle(self._follow_ups)

    def _follow_up_turn(self) -> None:
        follow = self._follow_ups.pop()
        body = self.rng.choice([follow.answer, *follow.variants])
        parts = [self.rng.choice(FOLLOW_ACKS), _sentence(body), self._maybe_adapt(0.5)]
        user = self.person.fill(self.rng.choice(CONNECTIVES), follow.question, TOPIC_WORDS.get(self._topic, "that"))
        self.add(user, " ".join(p for p in parts if p))

    def answer(self, fact: Fact, *, first: bool, user: str) -> str:
        body = _rotate([fact.answer, *fact.variants], self.uses.get(fact.id, 0), fact.id)
        parts = [self.rng.choice(ACKNOWLEDGEMENTS) if first else "", _sentence(body), self._personal(fact, user)]
        parts.append(self._maybe_adapt(0.85))
        safety = [n for n in fact.safety_notes if not _already_said(n, body)]
        if safety:
            parts.append(self.rng.choice(SAFETY_LEADS).format(note=_sentence(_lc(safety[0]))))
        parts.append(self.rng.choice(CLOSERS) if first else "")
        return " ".join(p for p in parts if p)

    def _personal(self, fact: Fact, user: str) -> str:
        mass = self.person.mass if self.person.mass is not None and f"{self.person.mass:g} kg" in user else None
        days = self.person.days if self.person.days is not None and f"{self.person.days} days" in user else None
        number = personal_number(fact, mass=mass, days=days)
        if number is None:
            return ""
        if mass is not None and needs(fact) == "mass":
            return self.rng.choice(PERSONAL_LEADS).format(mass=f"{mass:g}", number=number.text())
        return self.rng.choice(DAYS_LEADS).format(days=days, number=number.text())

    def _maybe_adapt(self, chance: float) -> str:
        return self.person.adaptation(self.rng) if self.rng.random() < chance else ""

    # -- behaviours ------------------------------------------------------------------------------------------------
    def _item_turn(self, asks: list[str], replies: list[str], slot: Slot) -> tuple[str, str]:
        ask, reply = _item_turn(asks, replies, slot.item_use, slot.item.id)
        return self._lead_in(ask), reply

    def _lead_in(self, text: str) -> str:
        """A report or request as a later turn ("Actually, ...") or as the opening message."""
        if self.turns:
            lead = self.rng.choice(TURN_LEADS)
            starts_with_lead = text.split(" ", 1)[0].rstrip(",.").lower() in _LEAD_WORDS
            return text if starts_with_lead or not lead else f"{lead}{_lc(text)}"
        if self.rng.random() < 0.6:
            return f"{self.person.intro}. {text}"
        return text

    def red_flag_chat(self, slot: Slot) -> None:
        """Ordinary turns first (when the chat has more than one), then the red flag, then the escalation."""
        item = slot.item
        self.fact_turns(slot, slot.user_turns - 1, first=True)
        self.add(*self._item_turn(item.reports, item.responses, slot))

    def decline_chat(self, slot: Slot) -> None:
        """The harmful request first and "what instead?" after it, or ordinary turns and the request last."""
        item = slot.item
        if slot.user_turns >= 2 and self.rng.random() < 0.5:
            self.add(*self._item_turn(item.requests, item.responses, slot))
            alternative = _sentence(_lc(item.alternative))
            parts = [self.rng.choice(INSTEAD_LEADS).format(alt=alternative), self._maybe_adapt(0.7)]
            self.add(self.rng.choice(INSTEAD_QUESTIONS), " ".join(p for p in parts if p))
            self.fact_turns(slot, slot.user_turns - 2, first=False)
            return
        self.fact_turns(slot, slot.user_turns - 1, first=True)
        self.add(*self._item_turn(item.requests, item.responses, slot))

    def reassure_chat(self, slot: Slot) -> None:
        """The alarming-sounding question, answered plainly; ordinary turns around it."""
        item = slot.item
        before = self.rng.randrange(slot.user_turns)
        self.fact_turns(slot, before, first=True)
        self.add(*self._item_turn(item.questions, item.answers, slot))
        self.fact_turns(slot, slot.user_turns - 1 - before, first=False)
