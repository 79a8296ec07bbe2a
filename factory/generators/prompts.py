"""Grounded prompts for the teacher, the user simulator and the judge, and strict parsing of what comes back.

Why the prompts look like this: a small teacher copies what it is shown, so the assistant's system prompt carries
the fact's claim, its numbers with units, the expert's reference answer and the safety note to include, and asks
for no other numbers. The user simulator is told who it is (persona), what to ask (a phrasing from the knowledge
base) and how long to be, so the conversation stays on the slot's facts turn after turn.

Parsing is strict because a weak model's failures are quiet: empty replies, leaked chat-template tokens, a reply
that starts writing the user's next turn, repetition loops, or text cut off by the token limit. Each becomes a
:class:`MalformedReply` with a short reason, which the build records as a reject instead of training on it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from common.arabic import normalize_arabic
from factory.planner import Slot
from schemas.knowledge import Fact, FactText, Quantity
from schemas.recipe import Persona

#: Pieces of chat templates (ChatML, Llama, Mistral, Gemma, Phi) that must never appear in a reply.
TEMPLATE_TOKENS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|start_header_id|>",
                   "<|end_header_id|>", "<|assistant|>", "<|user|>", "<|system|>", "<|end|>", "[INST]", "[/INST]",
                   "<<SYS>>", "<</SYS>>", "<s>", "</s>", "<start_of_turn>", "<end_of_turn>", "<|begin_of_text|>")
#: A line that starts another speaker's turn: the model is writing both sides of the chat.
ROLE_LINE = re.compile(r"^\s*(?:#+\s*)?(user|human|assistant|coach|client|person|system|me|you|ai|"
                       r"المستخدم|المدرب|المساعد|العميل|النظام)\s*:", re.IGNORECASE | re.MULTILINE)
_LEADING_LABEL = re.compile(r"^\s*(?:#+\s*)?(?:user|human|person|client|me|message|assistant|coach|answer|reply|"
                            r"rewritten question|question|السؤال بعد إعادة الصياغة|السؤال|الجواب|الرد|المدرب)"
                            r"\s*:\s*", re.IGNORECASE)
_USER_OPENING = re.compile(r"^\s*(?:#+\s*)?(?:user|human|person|client|me|المستخدم|العميل)\s*:", re.IGNORECASE)
_SENTENCE_END = re.compile(r"[.!?؟](?=[\s\"')\]»]|$)")
#: A word: Latin letters, or Arabic letters (so Arabic replies are counted, checked for loops and matched by topic).
_WORD = re.compile(r"[A-Za-z]+|[\u0621-\u064a]+")


class MalformedReply(ValueError):
    """A reply that cannot be used as a turn; ``reason`` is a short code for the rejects file."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class TurnPlan:
    """What one user turn asks and which fact (or expert follow-up) the answer must rest on."""

    question: str
    fact: Fact
    reference: str
    safety_notes: tuple[str, ...]


def plan_turns(slot: Slot, rng_choice: object) -> list[TurnPlan]:
    """The questions of a slot's turns, in the template generator's order: primary fact, its follow-ups, then more.

    ``rng_choice`` is a ``random.Random`` seeded from the slot, so the plan (and so every prompt) is deterministic.
    """
    import random

    assert isinstance(rng_choice, random.Random)
    rng = rng_choice
    primary = slot.facts[0]
    text = _text_in(primary, slot.language)
    plans = [TurnPlan(question=rng.choice(text.questions), fact=primary, reference=text.answer,
                      safety_notes=_notes(primary, text))]
    follow_ups = list(text.follow_ups)
    rng.shuffle(follow_ups)
    later = list(slot.facts[1:])
    for _ in range(slot.user_turns - 1):
        if follow_ups:
            f = follow_ups.pop()
            plans.append(TurnPlan(question=f.question, fact=primary, reference=f.answer, safety_notes=()))
        elif later:
            fact = later.pop(0)
            other = _text_in(fact, slot.language)
            plans.append(TurnPlan(question=rng.choice(other.questions), fact=fact, reference=other.answer,
                                  safety_notes=_notes(fact, other)))
        else:
            break
    return plans


def _text_in(fact: Fact, language: str) -> Fact | FactText:
    """The fact's questions and answers in the slot's language (the fact itself for English); the planner gives a
    slot in another language only facts that have text in it."""
    text = fact.text_in(language)
    if text is None:
        raise ValueError(f"fact {fact.id!r} has no {language!r} text for a slot in that language")
    return text


def _notes(fact: Fact, text: Fact | FactText) -> tuple[str, ...]:
    """Safety notes in the text's language; the English ones where a translation has none (never drop a note)."""
    return tuple(text.safety_notes or fact.safety_notes)


def format_quantity(q: Quantity) -> str:
    value = f"{q.low:g}" if q.high is None else f"{q.low:g} to {q.high:g}"
    return f"{q.name}: {value} {q.unit}"


def assistant_system(system_prompt: str, persona: Persona, category: str, plan: TurnPlan, turn: int,
                     total_turns: int, *, language: str = "en", intro: str = "") -> str:
    """The teacher's system prompt for one answer: the recipe's coach persona plus the facts it must rest on.

    Written in the slot's language where there is a template for it (:data:`PROMPT_LANGUAGES`; ``intro`` is then how
    the person introduces themselves in that language); English otherwise."""
    if language == "ar":
        return _assistant_system_ar(system_prompt, intro, category, plan, turn, total_turns)
    lines = [system_prompt.strip(), "",
             f"You are talking with {persona.description}. Topic: {category.replace('_', ' ')}. "
             f"This is turn {turn + 1} of {total_turns}.",
             "Base your answer on this expert fact. Use only the numbers it gives and no other numbers.",
             f"Fact: {plan.fact.claim}"]
    if plan.fact.quantities:
        lines.append("Numbers: " + "; ".join(format_quantity(q) for q in plan.fact.quantities) + ".")
    lines.append(f"Expert answer: {' '.join([plan.reference, *plan.safety_notes])}")
    for note in plan.safety_notes:
        lines.append(f"Safety note you must include: {note}")
    lines.append("Reply to the person in 2 to 4 short sentences of plain text.")
    return "\n".join(lines)


def user_simulator_messages(persona: Persona, intro: str, goal: str, plan: TurnPlan,
                            last_answer: str | None, *, language: str = "en") -> list[dict[str, str]]:
    """Messages that make the teacher write the user's next turn, in the persona's voice, about ``plan.question``.

    A rewrite task rather than role-play: small teachers (SmolLM2-135M) asked to "be the user" answer the question
    themselves, while asked to rewrite a question as someone they mostly stay on it (measured; docs/generation.md).
    In the slot's language where there is a template for it (``intro`` and ``goal`` are then in that language).
    """
    if language == "ar":
        return _user_simulator_ar(intro, goal, plan, last_answer)
    context = "" if last_answer is None else f'The coach just said: "{_clip(last_answer, 240)}"\n'
    user = (f"{context}Rewrite this question as if you were {persona.description} ({intro}; goal: {goal}). "
            f'Keep it short, first person.\nQuestion: "{plan.question}"\nRewritten question:')
    return [{"role": "user", "content": user}]


# Arabic (MSA) prompts -------------------------------------------------------------------------------------------
# Written for Arabic rather than translated line by line from the English above: the person is shown by how they
# introduce themselves (the persona's Arabic words), the fact by the expert's Arabic answer (a fact's claim and
# quantity names exist in English only; its numbers are shared), and units read the Arabic way.

#: Languages whose teacher prompts are written in the language itself; others get the English prompts plus a note.
PROMPT_LANGUAGES = frozenset({"en", "ar"})

AR_TOPICS = {
    "exercise_technique": "تقنية أداء التمارين", "programming": "تصميم البرامج التدريبية", "nutrition": "التغذية",
    "recovery": "التعافي", "motivation": "التحفيز والعقلية", "special_populations": "الفئات الخاصة",
}
AR_UNITS = {
    "%": "%", "hours": "ساعات", "minutes": "دقائق", "g/kg/day": "غرام لكل كيلوغرام من وزن الجسم يوميًا",
    "weeks": "أسابيع", "seconds": "ثوانٍ", "reps": "تكرارات", "days/week": "أيام في الأسبوع",
    "days per week": "أيام في الأسبوع", "years": "سنوات", "minutes/week": "دقيقة في الأسبوع", "kg": "كيلوغرام",
    "days": "أيام", "sets": "مجموعات", "points": "نقاط", "% of one-rep max": "% من أقصى وزن لتكرار واحد",
    "% 1RM": "% من أقصى وزن لتكرار واحد", "mg/day": "ملغ يوميًا", "hours/night": "ساعات في الليلة",
    "months": "أشهر", "minutes/day": "دقيقة يوميًا", "mg": "ملغ", "g/kg": "غرام لكل كيلوغرام", "g/day": "غرام يوميًا",
    "times per week": "مرات في الأسبوع", "time per week": "مرة في الأسبوع", "times": "مرات",
    "steps/day": "خطوة يوميًا", "mg/kg": "ملغ لكل كيلوغرام", "g/kg/h": "غرام لكل كيلوغرام في الساعة", "g": "غرام",
}


def format_quantity_ar(q: Quantity) -> str:
    """A fact's number in Arabic: the value or range and the unit in Arabic words (the unit as written when there is
    no Arabic word for it)."""
    value = f"{q.low:g}" if q.high is None else f"{q.low:g} إلى {q.high:g}"
    return f"{value} {AR_UNITS.get(q.unit, q.unit)}"


def _assistant_system_ar(system_prompt: str, intro: str, category: str, plan: TurnPlan, turn: int,
                         total_turns: int) -> str:
    lines = [system_prompt.strip(), "",
             f"تتحدث الآن مع شخص يقول عن نفسه: «{intro}». الموضوع: {AR_TOPICS.get(category, category)}. "
             f"هذه هي الجولة {turn + 1} من {total_turns} في المحادثة.",
             "ابنِ إجابتك على معلومة الخبراء التالية، ولا تذكر من الأرقام إلا ما ورد فيها."]
    if plan.fact.quantities:
        lines.append("الأرقام المعتمدة: " + "؛ ".join(format_quantity_ar(q) for q in plan.fact.quantities) + ".")
    lines.append(f"إجابة الخبير: {' '.join([plan.reference, *plan.safety_notes])}")
    for note in plan.safety_notes:
        lines.append(f"ملاحظة سلامة يجب أن تتضمنها إجابتك: {note}")
    lines.append("اكتب ردك بالعربية الفصحى، موجّهًا الكلام إلى الشخص مباشرة، في جملتين إلى أربع جمل قصيرة من نص عادي "
                 "بلا عناوين أو قوائم.")
    return "\n".join(lines)


def _user_simulator_ar(intro: str, goal: str, plan: TurnPlan, last_answer: str | None) -> list[dict[str, str]]:
    context = "" if last_answer is None else f"قال المدرب للتو: «{_clip(last_answer, 240)}»\n"
    user = (f"{context}أعد كتابة هذا السؤال بالعربية الفصحى كأنك شخص يقول: «{intro}، وهدفي أن {goal}». "
            f"اجعله قصيرًا وبصيغة المتكلم.\nالسؤال: «{plan.question}»\nالسؤال بعد إعادة الصياغة:")
    return [{"role": "user", "content": user}]


def judge_messages(conversation: list[dict[str, str]], facts: list[Fact]) -> list[dict[str, str]]:
    """Messages asking a judge to score helpfulness and accuracy 1 to 5 against the facts, as two numbers."""
    fact_text = "\n".join(f"- {f.claim}" + (" (" + "; ".join(format_quantity(q) for q in f.quantities) + ")"
                                             if f.quantities else "") for f in facts)
    chat = "\n".join(f"{m['role'].upper()}: {m['content']}" for m in conversation if m["role"] != "system")
    system = ("You grade a fitness coach's replies. Score helpfulness (does it answer the question usefully) and "
              "accuracy (does it agree with the facts) from 1 (bad) to 5 (excellent). "
              'Reply with JSON only, like {"helpfulness": 4, "accuracy": 5}.')
    user = f"Facts:\n{fact_text}\n\nConversation:\n{chat}\n\nScores as JSON:"
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


_SCORE = re.compile(r"(helpfulness|accuracy)\W{0,4}(\d(?:\.\d+)?)", re.IGNORECASE)


def parse_judge(text: str) -> dict[str, float]:
    """``{"helpfulness": h, "accuracy": a}`` from a judge reply; both must be present and within 1 to 5."""
    found: dict[str, float] = {}
    for name, value in _SCORE.findall(text):
        found.setdefault(name.lower(), float(value))
    missing = {"helpfulness", "accuracy"} - set(found)
    if missing:
        raise MalformedReply("judge_unparseable", f"no {' or '.join(sorted(missing))} score in {_clip(text, 120)!r}")
    bad = {k: v for k, v in found.items() if not 1 <= v <= 5}
    if bad:
        raise MalformedReply("judge_unparseable", f"scores out of 1..5: {bad}")
    return {"helpfulness": found["helpfulness"], "accuracy": found["accuracy"]}


# parsing -------------------------------------------------------------------------------------------------------
def _clip(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."


def _check_common(text: str) -> str:
    if not text.strip():
        raise MalformedReply("empty_reply", "the model returned no text")
    leaked = [t for t in TEMPLATE_TOKENS if t in text]
    if leaked:
        raise MalformedReply("template_tokens", f"reply contains {', '.join(leaked)}")
    text = _LEADING_LABEL.sub("", text.strip()).strip().strip('"').strip()
    letters = sum(c.isalpha() for c in text)
    if letters < 0.6 * len(text.replace(" ", "")):
        raise MalformedReply("garbled", f"mostly non-letters: {_clip(text, 80)!r}")
    words = [w.lower() for w in _WORD.findall(text)]
    grams = [tuple(words[i:i + 4]) for i in range(len(words) - 3)]
    if len(grams) >= 8 and len(set(grams)) < 0.6 * len(grams):
        raise MalformedReply("repetition", f"repeats itself: {_clip(text, 80)!r}")
    return text


def _complete_sentences(text: str) -> str:
    """``text`` cut after its last sentence end (a reply stopped by the token limit ends mid-sentence)."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    return text[: ends[-1]].strip() if ends else ""


def parse_assistant(text: str, *, truncated: bool) -> str:
    """A usable assistant turn from a raw reply, or :class:`MalformedReply` saying why not."""
    if _USER_OPENING.match(text):
        raise MalformedReply("role_confusion", f"reply opens as the user: {_clip(text, 80)!r}")
    text = _check_common(text)
    role = ROLE_LINE.search(text)
    if role is not None:
        if role.start() == 0:
            raise MalformedReply("role_confusion", f"reply opens as another speaker: {_clip(text, 80)!r}")
        text, truncated = text[: role.start()].strip(), True  # it began writing the next turn: keep what precedes
    if truncated:
        text = _complete_sentences(text)
        if len(text) < 20:
            raise MalformedReply("truncated", "cut off by the token limit before one full sentence")
    if len(_WORD.findall(text)) < 4:
        raise MalformedReply("too_short", f"only {_clip(text, 60)!r}")
    return text


def parse_user(text: str, *, truncated: bool, max_sentences: int = 3) -> str:
    """A usable user turn: first paragraph(s) up to ``max_sentences`` sentences, in the user's voice."""
    text = _check_common(text)
    role = ROLE_LINE.search(text)
    if role is not None and role.start() > 0:
        text = text[: role.start()].strip()
    text = " ".join(text.split())
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    if len(ends) > max_sentences:
        text = text[: ends[max_sentences - 1]]
    elif truncated:
        text = _complete_sentences(text)
    text = text.strip()
    if len(_WORD.findall(text)) < 3:
        raise MalformedReply("user_too_short", f"simulated user wrote {_clip(text, 60)!r}")
    return text


_STOP = frozenset([
    "a", "an", "the", "and", "or", "of", "to", "in", "on", "for", "with", "my", "your", "i", "you", "is", "are",
    "do", "does", "how", "what", "when", "should", "can", "much", "many", "it", "this", "that", "be", "at", "as",
    "by", "from", "about", "me", "am", "if", "any", "get", "per", "day", "week"
])


_STOP_AR = frozenset(normalize_arabic(
    "هل ما ماذا كيف كم متى لماذا في من على الى إلى عن ان أن او أو مع هذا هذه ذلك قبل بعد كان اذا إذا لا انا أنا لي "
    "عندي اريد أريد يجب ينبغي يمكن يمكنني كل اي أي").split())
_AR_PREFIXES = tuple(normalize_arabic(p) for p in ("وال", "بال", "فال", "كال", "لل", "ال", "و"))


def _arabic_stem(word: str) -> str:
    """An Arabic word normalised and without a leading conjunction, preposition or article (so that "والبروتين"
    and "البروتين" match)."""
    word = normalize_arabic(word)
    for prefix in _AR_PREFIXES:
        if word.startswith(prefix) and len(word) - len(prefix) > 2:
            return word[len(prefix):]
    return word


def content_words(text: str) -> set[str]:
    words = _WORD.findall(text)
    out = {w.lower() for w in words if w.isascii() and len(w) > 2 and w.lower() not in _STOP}
    stems = (_arabic_stem(w) for w in words if not w.isascii())
    return out | {w for w in stems if len(w) > 2 and w not in _STOP_AR}


def on_topic(user_text: str, plan: TurnPlan) -> bool:
    """Whether a simulated user turn shares a content word with what it was asked to ask about."""
    target = content_words(plan.question) | content_words(plan.fact.claim)
    return bool(content_words(user_text) & target)
