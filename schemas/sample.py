"""A generated sample: a conversation plus the lineage that makes it traceable and reproducible."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.conversation import Conversation
from schemas.knowledge import Category

PIPELINE_VERSION = "0.1.0"


def content_id(conversation: Conversation) -> str:
    """Stable id from the conversation's content alone: the same chat always gets the same id."""
    payload = json.dumps(conversation.model_dump(mode="json"), sort_keys=True, ensure_ascii=False)
    return "s-" + hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


class Lineage(BaseModel):
    """Where a sample came from. Review verdicts and release manifests point back through this."""

    model_config = ConfigDict(extra="forbid")

    recipe: str
    recipe_hash: str
    generator: str
    model: str | None = None
    seed: int
    slot: int = Field(ge=0, description="The plan slot this sample fills.")
    fact_ids: list[str] = Field(default_factory=list)
    behaviour_id: str | None = Field(default=None, description="The red flag, harmful request or benign phrase used.")
    pipeline_version: str = PIPELINE_VERSION
    checks: dict[str, Any] = Field(default_factory=dict, description="Verdicts of automatic checks and judges.")
    review: dict[str, Any] | None = Field(default=None, description="Expert review outcome, once merged.")


class Sample(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    category: Category
    persona: str
    language: str = "en"
    behaviour: str = Field(default="answer", description="answer, escalate, decline or reassure (schemas.recipe).")
    split: Literal["train", "test"] = "train"
    conversation: Conversation
    lineage: Lineage

    @classmethod
    def create(cls, *, category: Category, persona: str, conversation: Conversation, lineage: Lineage,
               language: str = "en", behaviour: str = "answer") -> Sample:
        return cls(id=content_id(conversation), category=category, persona=persona, language=language,
                   conversation=conversation, lineage=lineage, behaviour=behaviour)


class Reject(BaseModel):
    """A dropped sample, kept with the stage and reason that dropped it (and the sample it duplicates, if any)."""

    model_config = ConfigDict(extra="forbid")

    stage: str
    reason: str
    detail: str = ""
    related_id: str | None = None
    sample_id: str | None = None
    record: dict[str, Any] | None = Field(default=None, description="The dropped sample or raw line, as it was.")
