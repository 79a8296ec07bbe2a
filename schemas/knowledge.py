"""Knowledge-base records: the expert-authored facts that generation is grounded in and accuracy is scored against.

A fact is the unit of ground truth. Generators may only state numbers that a fact carries, and the accuracy
suite scores numeric answers against a fact's quantities within their tolerance.
"""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from common.arabic import fold_digits
from common.errors import FormaError
from common.yaml_io import read_yaml, validate_yaml


class Category(StrEnum):
    """The six data categories, in the order the recipe lists them."""

    EXERCISE_TECHNIQUE = "exercise_technique"
    PROGRAMMING = "programming"
    NUTRITION = "nutrition"
    RECOVERY = "recovery"
    MOTIVATION = "motivation"
    SPECIAL_POPULATIONS = "special_populations"


#: Sub-topics per category: the seed guide's list. Facts must name one of these.
TOPICS: dict[Category, tuple[str, ...]] = {
    Category.EXERCISE_TECHNIQUE: ("form_cues", "common_mistakes", "progressions_regressions", "equipment_alternatives"),
    Category.PROGRAMMING: ("sets_reps_rest", "splits", "progressive_overload", "deloads"),
    Category.NUTRITION: ("macros", "meal_timing", "supplements", "hydration"),
    Category.RECOVERY: ("sleep", "active_recovery", "soreness", "injury_prevention"),
    Category.MOTIVATION: ("consistency", "plateaus", "goal_setting", "habits"),
    Category.SPECIAL_POPULATIONS: ("beginners", "older_adults", "women", "return_after_injury"),
}

FACT_ID = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")


class Quantity(BaseModel):
    """A number the science gives, as a single value or a range, with its unit and scoring tolerance."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, description="What is measured, e.g. 'daily protein intake'.")
    low: float = Field(description="Lower bound (or the value itself when high is omitted).")
    high: float | None = Field(default=None, description="Upper bound of a range; omit for a single value.")
    unit: str = Field(min_length=1, description="Unit as written in answers, e.g. 'g/kg/day', 'sets/week'.")
    tolerance: float = Field(default=0.0, ge=0, description="Absolute slack accepted when scoring an answer.")

    @model_validator(mode="after")
    def _range_ordered(self) -> Quantity:
        if self.high is not None and self.high < self.low:
            raise ValueError(f"high ({self.high}) is below low ({self.low})")
        return self

    @property
    def upper(self) -> float:
        return self.low if self.high is None else self.high

    def accepts(self, value: float) -> bool:
        """True when ``value`` lies in [low - tolerance, upper + tolerance]."""
        return self.low - self.tolerance <= value <= self.upper + self.tolerance


class Source(BaseModel):
    """Where a claim comes from: a position stand, guideline or review."""

    model_config = ConfigDict(extra="forbid")

    org: str = Field(min_length=1, description="ACSM, ISSN, WHO, NSCA, AASM, ...")
    title: str = Field(min_length=1)
    year: int = Field(ge=1950, le=2100)
    url: str | None = None


class FollowUp(BaseModel):
    """A follow-up question a user might ask after the main answer, with the expert's reply."""

    model_config = ConfigDict(extra="forbid")

    question: str = Field(min_length=3)
    answer: str = Field(min_length=3)
    variants: list[str] = Field(default_factory=list,
                                description="Other wordings of the answer: same content, same numbers.")


#: Whether an expert approved a translation (in Argilla); the team's own text is a draft until then.
ReviewState = Literal["draft", "approved"]
_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")


def numbers_in(text: str) -> set[float]:
    """Every number written in ``text``, in Western or Arabic-Indic digits."""
    return {float(x.replace(",", ".")) for x in _NUMBER.findall(fold_digits(text))}


class FactText(BaseModel):
    """A fact in another language (``Fact.translations``): the same content and the same numbers as the English,
    written for that language rather than word for word. The quantities stay on the fact, shared by every
    language."""

    model_config = ConfigDict(extra="forbid")

    questions: list[str] = Field(min_length=1)
    answer: str = Field(min_length=10)
    variants: list[str] = Field(default_factory=list)
    follow_ups: list[FollowUp] = Field(default_factory=list)
    safety_notes: list[str] = Field(default_factory=list)
    review_state: ReviewState = "draft"

    def answer_texts(self) -> list[str]:
        return [self.answer, *self.variants, *(u.answer for u in self.follow_ups), *self.safety_notes]


class Fact(BaseModel):
    """One expert-authored fact. ``heldout`` facts never enter training; the accuracy suite uses them."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="Stable kebab-case id, unique across the knowledge base.")
    category: Category
    topic: str
    claim: str = Field(min_length=10, description="The fact in one or two sentences.")
    quantities: list[Quantity] = Field(default_factory=list)
    source: Source
    safety_notes: list[str] = Field(default_factory=list, description="When a professional should be involved.")
    populations: list[str] = Field(default_factory=lambda: ["general"])
    questions: list[str] = Field(min_length=1, description="Ways a user asks for this fact.")
    answer: str = Field(min_length=20, description="The expert answer; carries the fact's numbers.")
    variants: list[str] = Field(
        default_factory=list,
        description="Other wordings of ``answer`` by the experts: same content and the same numbers, so that a "
        "model trained on the data learns the fact rather than one string.",
    )
    follow_ups: list[FollowUp] = Field(default_factory=list)
    related: list[str] = Field(default_factory=list,
                               description="Ids of facts a conversation may move on to without changing the subject.")
    heldout: bool = Field(default=False, description="Held out of training, kept for the accuracy suite.")
    translations: dict[str, FactText] = Field(
        default_factory=dict, description="Language code -> the fact's questions and answers in that language.")

    def text_in(self, language: str) -> Fact | FactText | None:
        """The questions, answers, follow-ups and notes in ``language`` (None when the fact has no such text)."""
        return self if language == "en" else self.translations.get(language)

    def numbers(self) -> set[float]:
        """Every number the English fact carries: quantities and any number in its texts."""
        texts = [self.claim, self.answer, *self.variants, *self.safety_notes, *(u.answer for u in self.follow_ups)]
        out = {q.low for q in self.quantities} | {q.high for q in self.quantities if q.high is not None}
        return out.union(*(numbers_in(t) for t in texts))

    @field_validator("id")
    @classmethod
    def _id_is_kebab(cls, value: str) -> str:
        if not FACT_ID.match(value):
            raise ValueError(f"fact id {value!r} must be kebab-case (a-z, 0-9, '-')")
        return value

    @model_validator(mode="after")
    def _topic_belongs_to_category(self) -> Fact:
        allowed = TOPICS[self.category]
        if self.topic not in allowed:
            raise ValueError(f"topic {self.topic!r} is not one of {', '.join(allowed)} for {self.category.value}")
        return self

    @model_validator(mode="after")
    def _translations_keep_the_numbers(self) -> Fact:
        """A translation may state only numbers the English fact states: a translated dose must not drift."""
        if not self.translations:
            return self
        english = self.numbers()
        for language, text in self.translations.items():
            for part in text.answer_texts():
                extra = sorted(v for v in numbers_in(part) if not any(abs(v - e) < 1e-9 for e in english))
                if extra:
                    raise ValueError(f"translations.{language} states {', '.join(f'{v:g}' for v in extra)}, which "
                                     f"the English fact does not give (in {part[:60]!r})")
        return self


class KnowledgeFile(BaseModel):
    """One YAML file under ``recipes/knowledge/``: a list of facts."""

    model_config = ConfigDict(extra="forbid")

    facts: list[Fact] = Field(min_length=1)


def load_facts(files: list[Path]) -> tuple[Fact, ...]:
    """Read knowledge files in order; a fact id may appear once across all of them."""
    facts: list[Fact] = []
    seen: dict[str, Path] = {}
    for file in files:
        data, text = read_yaml(file)
        knowledge: KnowledgeFile = validate_yaml(KnowledgeFile, data, file, text)
        for fact in knowledge.facts:
            if fact.id in seen:
                raise FormaError(f"duplicate fact id {fact.id!r} (also in {seen[fact.id]})", path=file, where="facts")
            seen[fact.id] = file
            facts.append(fact)
    return tuple(facts)
