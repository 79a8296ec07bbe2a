"""A translation file: one language's text for facts and behaviour items, keyed by their ids.

Why beside the English and not inside it: the team drafts a language and experts review it apart from the English
knowledge (one file per language and part, a review state per record), and an all-English recipe never reads it.
A recipe names its translation folders (``translations: [translations/ar/]``); loading merges each record into the
fact's or item's ``translations`` field, where the schema checks it (a translated answer may state only the
English fact's numbers).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from schemas.behaviour import BenignText, HarmfulText, RedFlagText
from schemas.knowledge import FactText


class TranslationFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    language: str = Field(pattern=r"^[a-z]{2,3}$", description="ISO 639 code, e.g. 'ar'.")
    facts: dict[str, FactText] = Field(default_factory=dict, description="Fact id -> its text in the language.")
    red_flags: dict[str, RedFlagText] = Field(default_factory=dict)
    harmful_requests: dict[str, HarmfulText] = Field(default_factory=dict)
    benign: dict[str, BenignText] = Field(default_factory=dict)
