"""The one internal form of a chat, and the export forms derived from it.

ShareGPT (``conversations`` of ``from``/``value``) and Alpaca (``instruction``/``input``/``output`` with ``system``
and ``history``, as LLaMA-Factory reads it) are views of :class:`Conversation`; nothing else defines a chat.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Role(StrEnum):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"


#: ShareGPT's names for the roles.
SHAREGPT_FROM = {Role.SYSTEM: "system", Role.USER: "human", Role.ASSISTANT: "gpt"}


class Turn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Role
    content: str


class Conversation(BaseModel):
    """A system prompt followed by user/assistant turns that alternate, start with the user and end with the assistant.

    Structural rules are enforced here so that no malformed chat can exist in memory; content rules (language,
    template tokens, personal data, lengths) are the validation stage's job, so they can be reported as rejects.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    system: str = ""
    turns: list[Turn] = Field(min_length=2)

    @model_validator(mode="after")
    def _alternates(self) -> Conversation:
        for index, turn in enumerate(self.turns):
            expected = Role.USER if index % 2 == 0 else Role.ASSISTANT
            if turn.role != expected:
                raise ValueError(f"turn {index} is {turn.role.value!r}, expected {expected.value!r} "
                                 "(roles must alternate, user first)")
        if self.turns[-1].role != Role.ASSISTANT:
            raise ValueError("the last turn must be the assistant's")
        return self

    @property
    def user_turns(self) -> int:
        return len(self.turns) // 2

    def messages(self) -> list[dict[str, str]]:
        """Role/content messages, as Ollama's /api/chat and ``apply_chat_template`` take them."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + [{"role": t.role.value, "content": t.content} for t in self.turns]

    def text(self) -> str:
        """All user and assistant text, for hashing and dedupe (the shared system prompt is left out)."""
        return "\n".join(t.content for t in self.turns)

    def to_sharegpt(self) -> list[dict[str, str]]:
        head = [{"from": "system", "value": self.system}] if self.system else []
        return head + [{"from": SHAREGPT_FROM[t.role], "value": t.content} for t in self.turns]

    def to_alpaca(self) -> dict[str, Any]:
        pairs = [(self.turns[i].content, self.turns[i + 1].content) for i in range(0, len(self.turns), 2)]
        *history, (instruction, output) = pairs
        return {
            "instruction": instruction,
            "input": "",
            "output": output,
            "system": self.system,
            "history": [list(pair) for pair in history],
        }

    @classmethod
    def from_messages(cls, messages: list[dict[str, str]]) -> Conversation:
        system = ""
        if messages and messages[0].get("role") == "system":
            system, messages = messages[0].get("content", ""), messages[1:]
        return cls(system=system, turns=[Turn(role=Role(m["role"]), content=m["content"]) for m in messages])

    @classmethod
    def from_sharegpt(cls, conversations: list[dict[str, str]]) -> Conversation:
        names = {v: k.value for k, v in SHAREGPT_FROM.items()}
        return cls.from_messages([{"role": names[c["from"]], "content": c["value"]} for c in conversations])
