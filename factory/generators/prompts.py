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

from factory.planner import Slot
from schemas.knowledge import Fact, Quantity
from schemas.recipe import Persona

#: Pieces of chat templates (ChatML, Llama, Mistral, Gemma, Phi) that must never appear in a reply.
TEMPLATE_TOKENS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|start_header_id|>",
                   "<|end_header_id|>", "<|assistant|>", "<|user|>", "<|system|>", "<|end|>", "[INST]", "[/INST]",
                   "<<SYS>>", "<</SYS>>", "<s>", "</s>", "<start_of_turn>", "<end_of_turn>", "<|begin_of_text|>")
#: A line that starts another speaker's turn: the model is writing both sides of the chat.
ROLE_LINE = re.compile(r"^\s*(?:#+\s*)?(user|human|assistant|coach|client|person|system|me|you|ai)\s*:",
                       re.IGNORECASE | re.MULTILINE)
_LEADING_LABEL = re.compile(r"^\s*(?:#+\s*)?(?:user|human|person|client|me|message|assistant|coach|answer|reply|"
                            r"rewritten question|question)"
                            r"\s*:\s*", re.IGNORECASE)
_USER_OPENING = re.compile(r"^\s*(?:#+\s*)?(?:user|human|person|client|me)\s*:", re.IGNORECASE)
_SENTENCE_END = re.compile(r"[.!?](?=[\s\"')\]]|$)")
_WORD = re.compile(r"[A-Za-z]+")


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
    plans = [TurnPlan(question=rng.choice(primary.questions), fact=primary, reference=primary.answer,
                      safety_notes=tuple(primary.safety_notes))]
    follow_ups = list(primary.follow_ups)
    rng.shuffle(follow_ups)
    later = list(slot.facts[1:])
    for _ in range(slot.user_turns - 1):
        if follow_ups:
            f = follow_ups.pop()
            plans.append(TurnPlan(question=f.question, fact=primary, reference=f.answer, safety_notes=()))
        elif later:
            fact = later.pop(0)
            plans.append(TurnPlan(question=rng.choice(fact.questions), fact=fact, reference=fact.answer,
                                  safety_notes=tuple(fact.safety_notes)))
        else:
            break
    return plans


def format_quantity(q: Quantity) -> str:
    value = f"{q.low:g}" if q.high is None else f"{q.low:g} to {q.high:g}"
    return f"{q.name}: {value} {q.unit}"


def assistant_system(system_prompt: str, persona: Persona, category: str, plan: TurnPlan, turn: int,
                     total_turns: int) -> str:
    """The teacher's system prompt for one answer: the recipe's coach persona plus the facts it must rest on."""
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
                            last_answer: str | None) -> list[dict[str, str]]:
    """Messages that make the teacher write the user's next turn, in the persona's voice, about ``plan.question``.

    A rewrite task rather than role-play: small teachers (SmolLM2-135M) asked to "be the user" answer the question
    themselves, while asked to rewrite a question as someone they mostly stay on it (measured; docs/generation.md).
    """
    context = "" if last_answer is None else f'The coach just said: "{_clip(last_answer, 240)}"\n'
    user = (f"{context}Rewrite this question as if you were {persona.description} ({intro}; goal: {goal}). "
            f'Keep it short, first person.\nQuestion: "{plan.question}"\nRewritten question:')
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


def content_words(text: str) -> set[str]:
    return {w.lower() for w in _WORD.findall(text) if len(w) > 2 and w.lower() not in _STOP}


def on_topic(user_text: str, plan: TurnPlan) -> bool:
    """Whether a simulated user turn shares a content word with what it was asked to ask about."""
    target = content_words(plan.question) | content_words(plan.fact.claim)
    return bool(content_words(user_text) & target)
