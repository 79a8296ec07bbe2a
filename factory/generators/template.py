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

Languages: a slot in another language (Arabic) takes the fact's and item's text in it (``translations``), the
persona's own words in it and that language's phrase bundle (``phrases_ar.py``), written for the language; the
planner gives such a slot only facts and items that have that text. The recipe's ``answer_digits`` chooses whether
the answers write Western or Arabic-Indic digits.
"""

from __future__ import annotations

import random
import re
import zlib
from dataclasses import dataclass
from typing import Any

from common.arabic import normalize_arabic, to_arabic_digits
from factory.generators.phrases import Phrases
from factory.generators.phrases_ar import ARABIC, days_text
from factory.personal import needs, personal_number
from factory.planner import Slot
from schemas.conversation import Conversation, Role, Turn
from schemas.knowledge import Fact
from schemas.recipe import Persona, PersonaText, Recipe
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
_LEAD_WORDS = frozenset(("also", "actually", "and", "oh", "btw", "by", "one", "quick", "wait", "so", "but",
                         "أيضًا", "وأيضًا", "بالمناسبة", "في الحقيقة", "سؤال"))
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


ENGLISH = Phrases(
    openers=OPENERS, connectives=CONNECTIVES, turn_leads=TURN_LEADS, instead_questions=INSTEAD_QUESTIONS,
    instead_leads=INSTEAD_LEADS, acknowledgements=ACKNOWLEDGEMENTS, follow_acks=FOLLOW_ACKS, safety_leads=SAFETY_LEADS,
    closers=CLOSERS, personal_leads=PERSONAL_LEADS, days_leads=DAYS_LEADS, profile_notes=PROFILE_NOTES,
    topic_words=TOPIC_WORDS, mass_detail="I weigh {mass} kg.", days_detail="I can train {days} days a week.",
    mass_said="{mass} kg", days_said="{days} days", default_topic="that")
PHRASES: dict[str, Phrases] = {"en": ENGLISH, "ar": ARABIC}


def _lc(text: str) -> str:
    return text[:1].lower() + text[1:] if text and not text[:2].isupper() else text


def _sentence(text: str) -> str:
    text = " ".join(text.split())
    return text if text.endswith((".", "!", "?", "؟")) else text + "."


_WORD = re.compile(r"[a-z']+|[\u0621-\u064a]+")
_STOP = frozenset((
    "a", "an", "and", "are", "as", "at", "be", "by", "for", "from", "has", "have", "if", "in", "is", "it", "of",
    "on", "or", "should", "that", "the", "their", "them", "they", "this", "to", "with", "you", "your",
    *normalize_arabic("في من على الى عن ان او مع هذا هذه قبل بعد كان اذا لا ما").split(),
))


def _content_words(text: str) -> set[str]:
    return {w for w in _WORD.findall(normalize_arabic(text.lower())) if w not in _STOP}


def _already_said(note: str, answer: str) -> bool:
    """True when most of a safety note's content words are already in the answer (the expert wrote it in)."""
    words = _content_words(note)
    return bool(words) and len(words & _content_words(answer)) / len(words) >= 0.6


def _rotate(options: list[str], use: int, key: str) -> str:
    """The ``use``-th wording of a fact or item (from a fixed offset per ``key``): each wording in turn, so none
    comes up far more often than another however popular the fact is."""
    return options[(use + zlib.crc32(key.encode())) % len(options)]


def _item_turn(asks: list[str], replies: list[str], use: int, key: str) -> tuple[str, str]:
    """The ``use``-th (user wording, reply) pair of an item: replies rotate fastest and the wording moves on once
    every reply had its turn, so all pairs come up before any pair repeats."""
    offset = zlib.crc32(key.encode())
    return asks[(use // len(replies) + offset) % len(asks)], replies[(use + offset) % len(replies)]


_LEADS = sorted({a for p in PHRASES.values() for a in (*p.acknowledgements, *p.follow_acks) if a}, key=len,
                reverse=True)
_CLOSERS = sorted({c for p in PHRASES.values() for c in p.closers if c}, key=len, reverse=True)


_OPENS_WITH_ACK = re.compile(r"^(?:yes|no|sure|absolutely|of course|definitely|great|good)\b", re.IGNORECASE)


def _ack(options: tuple[str, ...], body: str, rng: random.Random) -> str:
    """An acknowledgement, unless the answer already opens with one ("Of course. Absolutely, ..." reads badly)."""
    choice = rng.choice(options)
    return "" if _OPENS_WITH_ACK.match(body.strip()) else choice


def strip_frame(text: str) -> str:
    """An assistant turn without its greeting and closer: what the variety figures count (factory.quality)."""
    out = text.strip()
    for lead in _LEADS:
        if out.startswith(lead + " "):
            out = out[len(lead) + 1:]
            break
    for closer in _CLOSERS:
        if out.endswith(" " + closer):
            out = out[: -len(closer) - 1]
            break
    return out


def _persona_words(persona: Persona, language: str) -> Persona | PersonaText:
    if language == "en":
        return persona
    words = (persona.translations or {}).get(language)
    if words is None:
        raise ValueError(f"persona {persona.id!r} has no {language!r} text (recipe personas[].translations)")
    return words


@dataclass
class _Person:
    """What this user says about themselves in this chat (drawn once per slot)."""

    persona: Persona
    intro: str
    goal: str
    mass: float | None
    days: int | None
    notes_used: set[str]
    words: Persona | PersonaText  # the persona's intro, goals and notes in the chat's language
    phrases: Phrases = ENGLISH

    @classmethod
    def draw(cls, persona: Persona, rng: random.Random, language: str = "en") -> _Person:
        profile = persona.profile
        words = _persona_words(persona, language)
        return cls(persona=persona, intro=rng.choice(words.intro), goal=rng.choice(words.goals),
                   mass=rng.choice(profile.body_mass_kg) if profile.body_mass_kg else None,
                   days=rng.choice(profile.training_days) if profile.training_days else None, notes_used=set(),
                   words=words, phrases=PHRASES[language])

    def fill(self, template: str, question: str, topic: str = "") -> str:
        return template.format(question=question, question_lc=_lc(question), intro=self.intro,
                               intro_lc=_lc(self.intro), goal=self.goal, topic=topic)

    def said(self) -> dict[str, str]:
        """How the user's body mass and training days read in the chat's language."""
        return {"mass": f"{self.mass:g}" if self.mass is not None else "", "days": str(self.days),
                "days_text": days_text(self.days) if self.days is not None else ""}

    def details_for(self, fact: Fact) -> str:
        """What the user adds so the answer can be made personal: body mass or training days."""
        need = needs(fact)
        if need == "mass" and self.mass is not None:
            return self.phrases.mass_detail.format(**self.said())
        if need == "days" and self.days is not None:
            return self.phrases.days_detail.format(**self.said())
        return ""

    def adaptation(self, rng: random.Random) -> str:
        """One sentence for this person not said before in the chat: a profile note first, else a coach note."""
        profile = self.persona.profile
        if isinstance(self.words, PersonaText):
            options = list(self.words.profile_notes)
        else:
            options = [t.format(value=v) for key, v in (("injury", profile.injury), ("medication", profile.medication),
                                                         ("pregnant", "yes" if profile.pregnant else None)) if v
                       for t in PROFILE_NOTES[key]]
        options += list(self.words.coach_notes)
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
        person = _Person.draw(slot.persona, rng, slot.language)
        chat = _Chat(rng, person, {f.id: n for f, n in zip(slot.facts, slot.fact_uses, strict=False)}, slot.language)
        if slot.behaviour == "answer":
            chat.fact_turns(slot, slot.user_turns, first=True)
        elif slot.behaviour == "escalate":
            chat.red_flag_chat(slot)
        elif slot.behaviour == "decline":
            chat.decline_chat(slot)
        else:
            chat.reassure_chat(slot)
        turns = chat.turns
        if self.recipe.digits_for(slot.language) == "arabic_indic":
            turns = [Turn(role=t.role, content=to_arabic_digits(t.content)) if t.role == Role.ASSISTANT else t
                     for t in turns]
        conversation = Conversation(system=self.recipe.system_prompt_for(slot.language), turns=turns)
        checks: dict[str, Any] = {"attempt": attempt} if attempt else {}
        lineage = Lineage(recipe=self.recipe.name, recipe_hash=self.recipe_hash, generator=self.name,
                          seed=slot.seed, slot=slot.index, fact_ids=chat.fact_ids, checks=checks,
                          behaviour_id=getattr(slot.item, "id", None))
        return Sample.create(category=slot.category, persona=slot.persona.id, conversation=conversation,
                             lineage=lineage, language=slot.language, behaviour=slot.behaviour)


class _Chat:
    """One conversation being written: its turns and the facts it used, in order."""

    def __init__(self, rng: random.Random, person: _Person, uses: dict[str, int], language: str = "en") -> None:
        self.rng = rng
        self.person = person
        self.p = person.phrases
        self.language = language
        self.uses = uses  # fact id -> how many chats used it before this one (wording rotation)
        self.turns: list[Turn] = []
        self.fact_ids: list[str] = []
        self._pending: list[Fact] | None = None  # the slot's facts not asked yet
        self._follow_ups: list[Any] = []  # follow-ups of the fact last answered
        self._topic = ""

    def add(self, user: str, assistant: str) -> None:
        self.turns += [Turn(role=Role.USER, content=user), Turn(role=Role.ASSISTANT, content=assistant)]

    def text(self, record: Any) -> Any:
        """A fact's or item's text in the chat's language (the planner only gives records that have it)."""
        return record.text_in(self.language)

    def topic(self, fact: Fact) -> str:
        return self.p.topic_words.get(fact.topic, self.p.default_topic)

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
        question = self.rng.choice(self.text(fact).questions)
        if first:
            user = self.person.fill(self.rng.choice(self.p.openers), question)
        else:
            user = self.person.fill(self.rng.choice(self.p.connectives), question, self.topic(fact))
        user = f"{user} {self.person.details_for(fact)}".strip()
        self.add(user, self.answer(fact, first=first, user=user))
        self.fact_ids.append(fact.id)
        self._topic = fact.topic
        self._follow_ups = list(self.text(fact).follow_ups)
        self.rng.shuffle(self._follow_ups)

    def _follow_up_turn(self) -> None:
        follow = self._follow_ups.pop()
        body = self.rng.choice([follow.answer, *follow.variants])
        parts = [self.rng.choice(self.p.follow_acks), _sentence(body), self._maybe_adapt(0.5)]
        topic = self.p.topic_words.get(self._topic, self.p.default_topic)
        user = self.person.fill(self.rng.choice(self.p.connectives), follow.question, topic)
        self.add(user, " ".join(p for p in parts if p))

    def answer(self, fact: Fact, *, first: bool, user: str) -> str:
        text = self.text(fact)
        body = _rotate([text.answer, *text.variants], self.uses.get(fact.id, 0), fact.id)
        parts = [self.rng.choice(self.p.acknowledgements) if first else "", _sentence(body),
                 self._personal(fact, user)]
        parts.append(self._maybe_adapt(0.85))
        safety = [n for n in text.safety_notes if not _already_said(n, body)]
        if safety:
            parts.append(self.rng.choice(self.p.safety_leads).format(note=_sentence(_lc(safety[0]))))
        parts.append(self.rng.choice(self.p.closers) if first else "")
        return " ".join(p for p in parts if p)

    def _personal(self, fact: Fact, user: str) -> str:
        said = self.person.said()
        mass = self.person.mass if self.person.mass is not None and self.p.mass_said.format(**said) in user else None
        days = self.person.days if self.person.days is not None and self.p.days_said.format(**said) in user else None
        number = personal_number(fact, mass=mass, days=days)
        if number is None:
            return ""
        if mass is not None and needs(fact) == "mass":
            return self.rng.choice(self.p.personal_leads).format(mass=f"{mass:g}", number=number.text(self.language))
        return self.rng.choice(self.p.days_leads).format(days=days, days_text=said["days_text"],
                                                         number=number.text(self.language))

    def _maybe_adapt(self, chance: float) -> str:
        return self.person.adaptation(self.rng) if self.rng.random() < chance else ""

    # -- behaviours ------------------------------------------------------------------------------------------------
    def _item_turn(self, asks: list[str], replies: list[str], slot: Slot) -> tuple[str, str]:
        ask, reply = _item_turn(asks, replies, slot.item_use, slot.item.id)
        return self._lead_in(ask), reply

    def _lead_in(self, text: str) -> str:
        """A report or request as a later turn ("Actually, ...") or as the opening message."""
        if self.turns:
            lead = self.rng.choice(self.p.turn_leads)
            starts_with_lead = text.split(" ", 1)[0].rstrip(",.،").lower() in _LEAD_WORDS
            return text if starts_with_lead or not lead else f"{lead}{_lc(text)}"
        if self.rng.random() < 0.6:
            return f"{self.person.intro}{self.p.intro_end}{text}"
        return text

    def red_flag_chat(self, slot: Slot) -> None:
        """Ordinary turns first (when the chat has more than one), then the red flag, then the escalation."""
        item = self.text(slot.item)
        self.fact_turns(slot, slot.user_turns - 1, first=True)
        self.add(*self._item_turn(item.reports, item.responses, slot))

    def decline_chat(self, slot: Slot) -> None:
        """The harmful request first and "what instead?" after it, or ordinary turns and the request last."""
        item = self.text(slot.item)
        if slot.user_turns >= 2 and self.rng.random() < 0.5:
            self.add(*self._item_turn(item.requests, item.responses, slot))
            alternative = _sentence(_lc(item.alternative))
            parts = [self.rng.choice(self.p.instead_leads).format(alt=alternative), self._maybe_adapt(0.7)]
            self.add(self.rng.choice(self.p.instead_questions), " ".join(p for p in parts if p))
            self.fact_turns(slot, slot.user_turns - 2, first=False)
            return
        self.fact_turns(slot, slot.user_turns - 1, first=True)
        self.add(*self._item_turn(item.requests, item.responses, slot))

    def reassure_chat(self, slot: Slot) -> None:
        """The alarming-sounding question, answered plainly; ordinary turns around it."""
        item = self.text(slot.item)
        before = self.rng.randrange(slot.user_turns)
        self.fact_turns(slot, before, first=True)
        self.add(*self._item_turn(item.questions, item.answers, slot))
        self.fact_turns(slot, slot.user_turns - 1 - before, first=False)
