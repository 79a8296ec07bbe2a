"""Safety-behaviour records: the expert-authored cases that teach the three behaviours the release gate checks.

Facts (``schemas.knowledge``) teach *what is true*; behaviours teach *what to do* when a message is not an ordinary
fitness question. The safety suite scores three things, so the knowledge comes in three kinds:

- :class:`RedFlag`: a medical warning sign. The model must escalate: say stop, name who to see and how urgently,
  and still help with what can safely be said. Without these the model learns to coach through chest pain.
- :class:`HarmfulRequest`: a request for something dangerous (drugs for physique, starvation, purging, ...). The
  model must decline clearly, say why in a sentence, and offer the safe alternative, never a dose or protocol.
- :class:`BenignAlarming`: a harmless question that only *sounds* risky ("suicide sprints", "cutting", "go to
  failure"). The model must simply answer: a model trained only on the first two kinds learns to over-refuse.

Each record carries several user wordings and several expert responses so that a model trained on the data learns
the behaviour rather than one string. Responses in red flags and harmful requests carry no digits at all: any number
near a drug or a symptom is a risk, and the gate fails an answer that looks like a dose.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from common.errors import FormaError
from common.yaml_io import read_yaml, validate_yaml
from schemas.knowledge import Category, ReviewState, Source

_KEBAB = r"[a-z0-9]+(?:-[a-z0-9]+)*"


def _check_id(value: str, prefix: str) -> str:
    if not re.fullmatch(f"{prefix}-{_KEBAB}", value):
        raise ValueError(f"id {value!r} must be kebab-case (a-z, 0-9, '-') and start with {prefix + '-'!r}")
    return value


def _distinct(values: list[str], what: str) -> list[str]:
    """Reject repeated wordings: a copy adds no variety, only weight to one string."""
    seen: set[str] = set()
    for value in values:
        key = " ".join(value.split()).casefold()
        if key in seen:
            raise ValueError(f"{what} repeated: {value!r}")
        seen.add(key)
    return values


class _Worded(BaseModel):
    """A model whose ``_worded`` list fields are wordings of one thing: none may repeat (English items and their
    translations share this one check)."""

    model_config = ConfigDict(extra="forbid")

    _worded: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="after")
    def _no_repeats(self) -> _Worded:
        for name in self._worded:
            _distinct(getattr(self, name), "wording")
        return self


class _Item(_Worded):
    """What every behaviour item shares: a prefixed kebab-case id, and no wording given twice."""

    _prefix: ClassVar[str] = ""

    @field_validator("id", check_fields=False)
    @classmethod
    def _id(cls, value: str) -> str:
        return _check_id(value, cls._prefix)

    def text_in(self, language: str) -> Any:
        """The item's text in ``language``: itself for English, else its translation (None when there is none)."""
        translations: dict[str, Any] = getattr(self, "translations", {})
        return self if language == "en" else translations.get(language)


class _Text(_Worded):
    """An item in another language (``translations``), written for that language; a draft until an expert approves.
    Fewer wordings are required than in English (three of each), and none may repeat."""

    review_state: ReviewState = "draft"


class RedFlagText(_Text):
    _worded: ClassVar[tuple[str, ...]] = ("reports", "responses")
    reports: list[str] = Field(min_length=3)
    responses: list[str] = Field(min_length=3, description="No digits, as in English.")


class HarmfulText(_Text):
    _worded: ClassVar[tuple[str, ...]] = ("requests", "responses")
    requests: list[str] = Field(min_length=3)
    responses: list[str] = Field(min_length=3, description="No digits, as in English.")
    alternative: str = Field(min_length=10)


class BenignText(_Text):
    _worded: ClassVar[tuple[str, ...]] = ("questions", "answers")
    questions: list[str] = Field(min_length=3)
    answers: list[str] = Field(min_length=3)


class RedFlag(_Item):
    """A warning sign that needs a clinician, not a coach: the model must escalate and say how urgently."""

    _prefix: ClassVar[str] = "rf"
    _worded: ClassVar[tuple[str, ...]] = ('reports', 'responses')

    id: str = Field(description="Stable kebab-case id starting with 'rf-', unique across the behaviour files.")
    category: Category = Field(description="The data category whose conversations this red flag turns up in.")
    signs: str = Field(min_length=3, description="The symptom or condition, in a few words.")
    professional: str = Field(
        min_length=2,
        description="Who to see, as named in the responses: 'emergency services', 'doctor', 'physiotherapist', ...",
    )
    urgency: Literal["emergency", "see_clinician"] = Field(
        description="emergency: stop now and call emergency services. see_clinician: stop that training and see the "
        "named clinician before doing it again."
    )
    source: Source
    reports: list[str] = Field(
        min_length=5,
        description="First-person ways a user reports it: standalone questions and short lines that make sense "
        "mid-conversation after an ordinary fitness question.",
    )
    responses: list[str] = Field(
        min_length=4,
        description="Escalation answers: acknowledge, say stop, name the professional and the urgency, then help with "
        "what can safely be said. Never a drug dose; never a diagnosis stated as certain.",
    )
    populations: list[str] = Field(default_factory=lambda: ["general"])
    translations: dict[str, RedFlagText] = Field(default_factory=dict, description="Language code -> its text.")



class HarmfulRequest(_Item):
    """A request the model must decline, with the reason and a safe alternative it then helps with."""

    _prefix: ClassVar[str] = "hr"
    _worded: ClassVar[tuple[str, ...]] = ('requests', 'responses')

    id: str = Field(description="Stable kebab-case id starting with 'hr-', unique across the behaviour files.")
    category: Category = Field(description="The data category whose conversations this request turns up in.")
    type: str = Field(min_length=2, description="Kind of harm: steroids, sarms, diuretics, dnp, purging, ...")
    why: str = Field(min_length=10, description="Why it is declined, in a sentence.")
    alternative: str = Field(min_length=10, description="The safe thing offered instead.")
    source: Source
    requests: list[str] = Field(min_length=5, description="Varied ways a user asks for it.")
    responses: list[str] = Field(
        min_length=4,
        description="Varied declines: decline clearly, say briefly why, offer the alternative and help with it. Never "
        "a dose, amount, cycle length or protocol of the harmful thing.",
    )
    translations: dict[str, HarmfulText] = Field(default_factory=dict, description="Language code -> its text.")



class BenignAlarming(_Item):
    """A harmless question in alarming words: the model must answer it plainly, not refuse or refer."""

    _prefix: ClassVar[str] = "bn"
    _worded: ClassVar[tuple[str, ...]] = ('questions', 'answers')

    id: str = Field(description="Stable kebab-case id starting with 'bn-', unique across the behaviour files.")
    category: Category = Field(description="The data category whose conversations this question turns up in.")
    phrase: str = Field(min_length=2, description="The risky-sounding words, e.g. 'suicide sprints', 'cutting'.")
    meaning: str = Field(min_length=5, description="What the phrase means in a gym.")
    source: Source | None = Field(default=None, description="Where the answers' content comes from, when it matters.")
    questions: list[str] = Field(min_length=4, description="Varied user questions using the phrase.")
    answers: list[str] = Field(
        min_length=4,
        description="Helpful ordinary answers: no refusal, and no referral unless truly warranted.",
    )
    translations: dict[str, BenignText] = Field(default_factory=dict, description="Language code -> its text.")



class BehaviourFile(BaseModel):
    """One YAML file under ``recipes/behaviours/``; any of the three lists may be empty."""

    model_config = ConfigDict(extra="forbid")

    red_flags: list[RedFlag] = Field(default_factory=list)
    harmful_requests: list[HarmfulRequest] = Field(default_factory=list)
    benign: list[BenignAlarming] = Field(default_factory=list)

    def ids(self) -> list[str]:
        return [r.id for r in self.red_flags] + [h.id for h in self.harmful_requests] + [b.id for b in self.benign]

    @model_validator(mode="after")
    def _unique_ids(self) -> BehaviourFile:
        seen: set[str] = set()
        for item_id in self.ids():
            if item_id in seen:
                raise ValueError(f"duplicate behaviour id {item_id!r}")
            seen.add(item_id)
        return self


def load_behaviours(folder: Path) -> BehaviourFile:
    """Read every ``*.yaml`` under ``folder`` (sorted), validate each and merge them into one :class:`BehaviourFile`.

    Every problem is a :class:`FormaError` naming the file (and the field and line, through the shared YAML reader):
    unreadable YAML, a schema error, or an id that another file already uses (ids must be unique across files,
    since review and lineage refer to behaviours by id).
    """
    files = sorted(Path(folder).glob("*.yaml"))
    if not files:
        raise FormaError("no behaviour .yaml files found", path=folder)
    merged = BehaviourFile()
    owner: dict[str, Path] = {}
    for file in files:
        data, text = read_yaml(file, "behaviour file")
        part: BehaviourFile = validate_yaml(BehaviourFile, data or {}, file, text)
        for item_id in part.ids():
            if item_id in owner:
                raise FormaError(f"duplicate behaviour id {item_id!r} (also in {owner[item_id]})", path=file)
            owner[item_id] = file
        merged.red_flags.extend(part.red_flags)
        merged.harmful_requests.extend(part.harmful_requests)
        merged.benign.extend(part.benign)
    return merged
