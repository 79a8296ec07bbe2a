"""The grounding check: an answer may state only the numbers its facts give, and must carry their safety notes.

Why rule-based: the teacher is often a small local model, and the facts are structured (quantities with units and
tolerances), so a check that reads numbers with their units catches the errors that matter in a fitness chat
(a wrong protein dose, a wrong number of sets) cheaply, deterministically, and with a reason a person can read
("says 0.8 g where the fact gives 1.6 to 2.2 g/kg/day"). An optional LLM judge (judge.py) covers what rules cannot.

Modes (recipe ``generator.grounding``):
- ``contradictions``: reject a measured number whose unit matches one of the facts' quantities but whose value lies
  outside every such quantity (within its tolerance) and appears nowhere in the facts' text.
- ``strict`` (default): also reject a measured number (one with a unit) that the facts do not contain at all.
- ``off``: only the safety-note check.
Numbers without a unit (list markers, "a 3-day split" is a unit: days) are not judged.

Arabic: digits may be Western or Arabic-Indic (١٫٦ is 1.6), ranges read "من 1.6 إلى 2.2" or "1.6–2.2", and the unit
words are Arabic (غرام، كغ، دقيقة، سعرة ...); ``common.arabic.readable_numbers`` folds the digits and unit words are
looked up in their normalised spelling, so the same check holds for an Arabic answer against the same facts.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from common.arabic import normalize_arabic, readable_numbers
from factory.personal import allowed_values
from schemas.knowledge import Fact

UNITS: dict[str, str] = {}
for canonical, words in {
    "g": "g gram grams gr", "kg": "kg kgs kilo kilos kilogram kilograms", "mg": "mg milligram milligrams",
    "mcg": "mcg µg microgram micrograms", "iu": "iu", "lb": "lb lbs pound pounds",
    "ml": "ml millilitre millilitres milliliter milliliters", "l": "l litre litres liter liters",
    "oz": "oz ounce ounces", "kcal": "kcal cal calorie calories kilocalories",
    "s": "s sec secs second seconds", "min": "min mins minute minutes", "h": "h hr hrs hour hours",
    "day": "day days daily", "week": "week weeks wk wks weekly", "month": "month months", "year": "year years",
    "set": "set sets", "rep": "rep reps repetition repetitions", "%": "% percent per-cent",
    "session": "session sessions workout workouts", "time": "times x", "step": "step steps",
    "bpm": "bpm", "rpe": "rpe", "rir": "rir", "km": "km kilometre kilometres kilometer kilometers",
    "mile": "mile miles", "cm": "cm", "degree": "degree degrees °",
}.items():
    for w in words.split():
        UNITS[w] = canonical
#: Arabic unit words (singular, dual, plural and accusative forms), stored in their normalised spelling.
ARABIC_UNITS = {
    "g": "غرام غراما غرامات غ جرام جم", "kg": "كغ كيلوغرام كيلوغراما كيلوغرامات كيلو كجم كيلوجرام",
    "mg": "ملغ مليغرام ملليغرام مغ", "mcg": "ميكروغرام مكغ", "iu": "وحدة وحدات", "ml": "مل مليلتر ملليلتر",
    "l": "لتر لترا لترات", "kcal": "سعرة سعرات كيلوكالوري حريرة", "s": "ثانية ثوان ثواني ثانيه",
    "min": "دقيقة دقائق دقيقتين", "h": "ساعة ساعات ساعتين", "day": "يوم يوما أيام يوميا يومين",
    "week": "أسبوع أسبوعا أسابيع أسبوعيا أسبوعين", "month": "شهر شهرا أشهر شهور", "year": "سنة سنوات عام عاما أعوام",
    "set": "مجموعة مجموعات", "rep": "تكرار تكرارا تكرارات", "%": "بالمئة بالمائة",
    "session": "جلسة جلسات حصة حصص", "time": "مرة مرات مرتين", "step": "خطوة خطوات", "bpm": "نبضة نبضات",
    "km": "كم كيلومتر كيلومترات", "cm": "سم سنتيمتر", "degree": "درجة درجات",
}
for canonical, words in ARABIC_UNITS.items():
    for w in words.split():
        UNITS[normalize_arabic(w)] = canonical

_NUM = r"\d+(?:[.,]\d+)?"
_NUMBER = re.compile(
    rf"(?<![\w.])(?P<a>{_NUM})(?:\s*(?:-|–|—|to|إلى|الى|حتى|و)\s*(?P<b>{_NUM}))?\s*"
    r"(?P<unit>%|°|[A-Za-zµ][A-Za-z\-]*|[\u0621-\u064a\u0640\u064b-\u0652]+)?")
_WORDS = re.compile(r"[A-Za-z]+")
_ANY_NUMBER = re.compile(_NUM)

#: Words naming a professional; a safety note that names one is honoured by an answer that names any.
PROFESSIONALS = frozenset([
    "doctor", "doctors", "physician", "physicians", "gp", "physiotherapist", "physiotherapists", "physio",
    "therapist", "therapists", "physical", "dietitian", "dietitians", "dietician", "nutritionist", "midwife",
    "obstetrician", "gynecologist", "gynaecologist", "cardiologist", "healthcare", "health-care", "medical",
    "clinician", "professional", "professionals", "specialist", "specialists", "nurse", "pharmacist", "provider",
    "consultant", "obgyn"
])
_STOP = frozenset([
    "a", "an", "the", "and", "or", "of", "to", "in", "on", "for", "with", "your", "you", "is", "are", "be", "if",
    "any", "before", "after", "this", "that", "it", "as", "at", "by", "from", "should", "can", "may", "not", "do",
    "does", "have", "has", "more", "less", "than", "who", "whose", "when", "which", "their", "them", "they"
])


@dataclass(frozen=True)
class Mention:
    """A number the answer states, with its canonical unit (None when it has none)."""

    value: float
    unit: str | None
    text: str


@dataclass
class GroundingVerdict:
    passed: bool
    reason: str | None = None
    detail: str = ""
    checked: list[str] = field(default_factory=list)

    def as_check(self) -> dict[str, Any]:
        out: dict[str, Any] = {"passed": self.passed, "numbers": self.checked}
        if self.reason:
            out.update(reason=self.reason, detail=self.detail)
        return out


def _to_float(text: str) -> float:
    return float(text.replace(",", "."))


def _unit(word: str | None) -> str | None:
    if not word:
        return None
    word = normalize_arabic(word.lower().strip("-"))
    head = re.split(r"[/\-]", word)[0]
    return UNITS.get(word) or UNITS.get(head)


def mentions(text: str) -> list[Mention]:
    """Numbers in ``text`` with their units; a range "1.6-2.2 g" gives two mentions in g."""
    out: list[Mention] = []
    for m in _NUMBER.finditer(readable_numbers(text)):
        unit = _unit(m.group("unit"))
        for part in ("a", "b"):
            if m.group(part):
                out.append(Mention(_to_float(m.group(part)), unit, m.group(0).strip()))
    return out


def fact_numbers(facts: Iterable[Fact]) -> set[float]:
    """Every number the facts carry: quantities, and any number in their claim, answers and notes."""
    values: set[float] = set()
    for f in facts:
        texts = [f.claim, f.answer, *f.variants, *f.safety_notes, *(u.answer for u in f.follow_ups)]
        for t in texts:
            values.update(_to_float(x) for x in _ANY_NUMBER.findall(t))
        for q in f.quantities:
            values.add(q.low)
            if q.high is not None:
                values.add(q.high)
    return values


def _quantity_units(facts: Iterable[Fact]) -> dict[str, list[tuple[float, float, str]]]:
    by_unit: dict[str, list[tuple[float, float, str]]] = {}
    for f in facts:
        for q in f.quantities:
            unit = _unit(q.unit.split()[0]) or q.unit.lower()
            span = f"{q.low:g}" if q.high is None else f"{q.low:g} to {q.high:g}"
            by_unit.setdefault(unit, []).append((q.low - q.tolerance, q.upper + q.tolerance,
                                                 f"{span} {q.unit} ({q.name})"))
    return by_unit


def check_numbers(answer: str, facts: list[Fact], *, context: str = "",
                  mode: Literal["strict", "contradictions", "off"] = "strict") -> GroundingVerdict:
    """Judge the measured numbers of ``answer`` against ``facts``; numbers the user said (``context``) are allowed."""
    found = [m for m in mentions(answer) if m.unit is not None]
    checked = [m.text for m in found]
    if mode == "off" or not found:
        return GroundingVerdict(True, checked=checked)
    allowed = fact_numbers(facts) | {m.value for m in mentions(context)}
    by_unit = _quantity_units(facts)
    personal = allowed_values(facts, context)  # personal numbers: the arithmetic must be right (factory.personal)
    for m in found:
        if any(abs(m.value - v) < 1e-9 for v in allowed):
            continue
        if m.value in personal:
            continue
        ranges = by_unit.get(m.unit or "", [])
        if any(lo <= m.value <= hi for lo, hi, _ in ranges):
            continue
        if ranges:
            expected = "; ".join(desc for _, _, desc in ranges)
            return GroundingVerdict(False, "number_contradicts_fact",
                                    f"says {m.text!r} where the facts give {expected}", checked)
        if mode == "strict":
            return GroundingVerdict(False, "ungrounded_number",
                                    f"says {m.text!r}, a number none of the cited facts "
                                    f"({', '.join(f.id for f in facts)}) gives", checked)
    return GroundingVerdict(True, checked=checked)


def note_honoured(answer: str, note: str) -> bool:
    """Whether ``answer`` carries a safety note: the same kind of professional, or most of the note's key words."""
    answer_words = {w.lower() for w in _WORDS.findall(answer)}
    note_words = {w.lower() for w in _WORDS.findall(note)}
    if note_words & PROFESSIONALS:
        return bool(answer_words & PROFESSIONALS)
    key = {w for w in note_words if len(w) > 3 and w not in _STOP}
    return not key or len(key & answer_words) >= max(1, len(key) // 2)


def check_safety(answer: str, notes: Iterable[str]) -> GroundingVerdict:
    for note in notes:
        if not note_honoured(answer, note):
            return GroundingVerdict(False, "missing_safety_note", f"omits the safety note {note!r}")
    return GroundingVerdict(True)


def check_answer(answer: str, facts: list[Fact], notes: Iterable[str], *, context: str = "",
                 mode: Literal["strict", "contradictions", "off"] = "strict") -> GroundingVerdict:
    """Numbers first, then safety notes; the first failure is the verdict."""
    numbers = check_numbers(answer, facts, context=context, mode=mode)
    if not numbers.passed:
        return numbers
    safety = check_safety(answer, notes)
    if not safety.passed:
        safety.checked = numbers.checked
        return safety
    return numbers
