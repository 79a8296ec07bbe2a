"""The words the template generator wraps around the experts' text, as one bundle per language.

English's bundle is built from the phrase banks in ``template.py``; Arabic's lives in ``phrases_ar.py``, written for
Arabic rather than translated line by line. A bundle holds no digits: every number comes from a fact or from the
user (the grounding rule of ``template.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Phrases:
    openers: tuple[str, ...]
    connectives: tuple[str, ...]
    turn_leads: tuple[str, ...]
    instead_questions: tuple[str, ...]
    instead_leads: tuple[str, ...]
    acknowledgements: tuple[str, ...]
    follow_acks: tuple[str, ...]
    safety_leads: tuple[str, ...]
    closers: tuple[str, ...]
    personal_leads: tuple[str, ...]
    days_leads: tuple[str, ...]
    profile_notes: Mapping[str, tuple[str, ...]]
    topic_words: dict[str, str]
    #: What the user adds so an answer can be made personal, and how the answer finds it in the user's words.
    mass_detail: str
    days_detail: str
    mass_said: str
    days_said: str
    default_topic: str
    #: Sentence end for an intro before a question ("I'm new to the gym. ...").
    intro_end: str = ". "
