"""The optional LLM judge: scores each finished conversation's helpfulness and accuracy 1 to 5 against its facts.

It runs on any configured backend (recipe ``generator.judge``; by default the generator's own teacher) through the
same cached :class:`~factory.generators.llm.Teacher`, so judging is resumable too. A conversation passes when both
scores reach ``generator.judge_threshold``; a reply that holds no parseable scores fails with ``judge_unparseable``
rather than passing silently.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from factory.generators.prompts import MalformedReply, judge_messages, parse_judge
from schemas.knowledge import Fact


class Teacher(Protocol):
    """What the judge needs of a model: :class:`factory.generators.llm.Teacher` has it. A protocol, not an import,
    so the judge and the LLM generator (which builds judges) do not import each other."""

    def chat_many(self, requests: list[tuple[list[dict[str, str]], dict[str, Any]]]) -> Sequence[Any]: ...

    def close(self) -> None: ...


@dataclass
class JudgeVerdict:
    passed: bool
    scores: dict[str, float]
    reason: str | None = None
    detail: str = ""

    def as_check(self) -> dict[str, Any]:
        out: dict[str, Any] = {"passed": self.passed, **self.scores}
        if self.reason:
            out.update(reason=self.reason, detail=self.detail)
        return out


class Judge:
    def __init__(self, teacher: Teacher, threshold: float, max_new_tokens: int = 48) -> None:
        self.teacher = teacher
        self.threshold = threshold
        self.max_new_tokens = max_new_tokens

    def score_many(self, conversations: list[list[dict[str, str]]], facts: list[list[Fact]],
                   seeds: list[int]) -> list[JudgeVerdict]:
        requests = [(judge_messages(c, f), {"temperature": 0.0, "max_new_tokens": self.max_new_tokens, "seed": s})
                    for c, f, s in zip(conversations, facts, seeds, strict=True)]
        verdicts = []
        for reply in self.teacher.chat_many(requests):
            try:
                scores = parse_judge(reply.text)
            except MalformedReply as exc:
                verdicts.append(JudgeVerdict(False, {}, exc.reason, exc.detail))
                continue
            low = {k: v for k, v in scores.items() if v < self.threshold}
            if low:
                detail = ", ".join(f"{k} {v:g}" for k, v in low.items()) + f" below the threshold {self.threshold:g}"
                verdicts.append(JudgeVerdict(False, scores, "judge_below_threshold", detail))
            else:
                verdicts.append(JudgeVerdict(True, scores))
        return verdicts
