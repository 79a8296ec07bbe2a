"""Personal numbers: a fact's quantity applied to what the user said about themselves.

"1.6 to 2.2 g/kg/day" is a fact; "at 70 kg that is about 112 to 154 g a day" is an answer that fits the person.
Two computations, both plain arithmetic on a fact's quantity and a number the user stated:

- a per-kilogram quantity (``g/kg/day``, ``g/kg``, ``mg/kg``) times the stated body mass;
- a weekly quantity (``minutes/week``) over the stated training days.

Generation writes these numbers (``personal_numbers``) and validation checks them (``allowed_values``) with the same
arithmetic, rounded to whole units as written, so an answer that states a personal number must have done the
sum right: a wrong one is rejected as ungrounded.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from common.arabic import normalize_arabic, readable_numbers
from schemas.knowledge import Fact, Quantity

# Arabic forms are matched in their normalised spelling (common.arabic): "70 كغ", "3 أيام في الأسبوع".
_MASS = re.compile(r"(?<![\d.])(\d{2,3}(?:\.\d)?)\s*(?:kg|kilos?|kilograms?|كغ|كجم|كيلو|كيلوغرام|كيلوغراما)\b",
                   re.IGNORECASE)
_DAYS = re.compile(r"(?<![\d.])([1-7])\s*(?:(?:days?|sessions?)\s*(?:a|per|each)\s*week\b|"
                   r"(?:ايام|يوم|يوما|مرات|جلسات)\s*(?:في\s*الاسبوع|اسبوعيا))", re.IGNORECASE)

#: Per-kilogram units and how the total reads ("g/kg/day" -> "g a day").
_PER_KG = {"g/kg/day": "g a day", "g/kg": "g", "mg/kg": "mg", "g/kg/h": "g an hour"}
_PER_WEEK = {"minutes/week": "minutes", "min/week": "minutes"}
#: The same totals in Arabic.
UNIT_AR = {"g a day": "غرام يوميًا", "g": "غرام", "mg": "ملغ", "g an hour": "غرام في الساعة", "minutes": "دقيقة"}


@dataclass(frozen=True)
class PersonalNumber:
    """A number computed for this person, with the sentence-ready unit and the arithmetic that gave it."""

    low: int
    high: int | None
    unit: str
    basis: str  # e.g. "1.6-2.2 g/kg/day x 70 kg"

    def text(self, language: str = "en") -> str:
        if language == "ar":
            unit = UNIT_AR[self.unit]
            return f"{self.low} {unit}" if self.high is None else f"من {self.low} إلى {self.high} {unit}"
        return f"{self.low} {self.unit}" if self.high is None else f"{self.low} to {self.high} {self.unit}"


def _readable(text: str) -> str:
    """Western digits and normalised Arabic spelling (no change to English text)."""
    return normalize_arabic(readable_numbers(text))


def stated_mass(text: str) -> float | None:
    m = _MASS.search(_readable(text))
    return float(m.group(1)) if m else None


_DAYS_AR_WORDS = re.compile(r"(يوم واحد|يوما واحدا|يومين)\s*(?:في\s*الاسبوع|اسبوعيا)")


def stated_days(text: str) -> int | None:
    readable = _readable(text)
    m = _DAYS.search(readable)
    if m:
        return int(m.group(1))
    word = _DAYS_AR_WORDS.search(readable) if "يوم" in readable else None
    return (2 if word.group(1) == "يومين" else 1) if word else None


def _bounds(q: Quantity) -> tuple[float, float | None]:
    return q.low, q.high


def for_mass(q: Quantity, mass: float) -> PersonalNumber | None:
    unit = _PER_KG.get(q.unit.replace(" ", "").lower())
    if unit is None:
        return None
    low, high = _bounds(q)
    return PersonalNumber(round(low * mass), round(high * mass) if high is not None else None, unit,
                          f"{q.low:g}{'' if q.high is None else f'-{q.high:g}'} {q.unit} x {mass:g} kg")


def for_days(q: Quantity, days: int) -> PersonalNumber | None:
    unit = _PER_WEEK.get(q.unit.replace(" ", "").lower())
    if unit is None:
        return None
    low, high = _bounds(q)
    return PersonalNumber(round(low / days), round(high / days) if high is not None else None, unit,
                          f"{q.low:g}{'' if q.high is None else f'-{q.high:g}'} {q.unit} / {days} days")


def needs(fact: Fact) -> str | None:
    """What the fact's first quantity needs to be made personal: "mass", "days" or nothing."""
    if not fact.quantities:
        return None
    unit = fact.quantities[0].unit.replace(" ", "").lower()
    return "mass" if unit in _PER_KG else "days" if unit in _PER_WEEK else None


def personal_number(fact: Fact, *, mass: float | None = None, days: int | None = None) -> PersonalNumber | None:
    """The fact's first quantity for this person, when the person gave what it needs."""
    if not fact.quantities:
        return None
    q = fact.quantities[0]
    if mass is not None and (found := for_mass(q, mass)) is not None:
        return found
    if days is not None:
        return for_days(q, days)
    return None


def allowed_values(facts: Iterable[Fact], user_text: str) -> set[float]:
    """Every personal number an answer may state, given what the user said (each bound, rounded as written)."""
    mass, days = stated_mass(user_text), stated_days(user_text)
    out: set[float] = set()
    for fact in facts:
        for q in fact.quantities:
            for found in (for_mass(q, mass) if mass else None, for_days(q, days) if days else None):
                if found is None:
                    continue
                out.update(float(v) for v in (found.low, found.high) if v is not None)
    return out
