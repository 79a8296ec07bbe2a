"""Robust JSONL reader for imported or LLM-written samples: bad lines are quarantined with a reason, never lost.

Each line becomes a :class:`~schemas.sample.Sample` or a reject (``stage=read``) carrying the line number and the
raw text. Accepted shapes: a full ``Sample`` record (what ``forma build`` writes to samples.jsonl), or a chat with a
category: ``{"category": ..., "messages": [{"role", "content"}, ...]}`` or ShareGPT ``{"category": ...,
"conversations": [{"from", "value"}, ...]}``; those get a content id and ``generator: import`` lineage.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, ClassVar

from pydantic import PrivateAttr, ValidationError

from common.errors import FormaError
from common.text import decode_utf8
from factory.stages.base import Stage
from schemas.conversation import Conversation
from schemas.sample import Lineage, Sample


def _reason(exc: ValidationError) -> tuple[str, str]:
    first = exc.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(record)"
    message = first["msg"]
    if first["type"] == "missing":
        return "missing_field", f"{loc}: required field is missing"
    if "roles must alternate" in message or "last turn must be the assistant" in message:
        return "wrong_role_order", message.removeprefix("Value error, ")
    return "invalid_record", f"{loc}: {message}"


class JsonlReader(Stage):
    """Reads a JSONL file line by line (streaming: memory holds one line at a time)."""

    name: ClassVar[str] = "read"
    recipe: str = "import"
    recipe_hash: str = "import"
    _objects: int = PrivateAttr(default=0)  # lines that held a JSON object: none at all means the input is not JSONL

    def run(self, samples: Iterable[Sample]) -> Iterator[Sample]:
        """Pass-through, so the reader can sit in a stage list; reading happens in :meth:`read`."""
        for sample in samples:
            yield self.keep(sample)

    def read(self, path: Path) -> Iterator[Sample]:
        if not path.is_file():
            raise FormaError("input file not found", path=path)
        lines = 0
        self._objects = 0
        with path.open("rb") as fh:
            for number, raw in enumerate(fh, 1):
                if not raw.strip():
                    continue
                lines += 1
                line = decode_utf8(raw, path, first_line=number)  # a bad byte stops the run: strict UTF-8
                sample = self.parse(line, number)
                if sample is not None:
                    yield self.keep(sample)
        if not lines:
            raise FormaError("the input is empty", path=path, hint="give a JSONL file with one record per line")
        if not self._objects:
            raise FormaError(f"not JSON lines: none of its {lines} line(s) is a JSON object", path=path,
                             hint="give a JSONL file with one record per line")

    def parse(self, line: str, number: int) -> Sample | None:
        raw = {"line": number, "raw": line.rstrip("\n")[:20_000]}
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            self.drop(None, "malformed_json", detail=f"line {number}: {exc.msg} at column {exc.colno}", record=raw)
            return None
        if not isinstance(record, dict):
            self.drop(None, "invalid_record", detail=f"line {number}: expected a JSON object, got "
                                                     f"{type(record).__name__}", record=raw)
            return None
        self._objects += 1
        try:
            return self._sample(record, number)
        except ValidationError as exc:
            reason, detail = _reason(exc)
            self.drop(None, reason, detail=f"line {number}: {detail}", record=raw)
        except KeyError as exc:
            self.drop(None, "missing_field", detail=f"line {number}: a message lacks the field {exc}", record=raw)
        except (TypeError, ValueError) as exc:
            self.drop(None, "invalid_record", detail=f"line {number}: {exc}", record=raw)
        return None

    def _sample(self, record: dict[str, Any], number: int) -> Sample:
        if "conversation" in record or "lineage" in record:
            return Sample.model_validate(record)
        if "messages" in record:
            conversation = Conversation.from_messages(record["messages"])
        elif "conversations" in record:
            conversation = Conversation.from_sharegpt(record["conversations"])
        else:
            raise ValidationError.from_exception_data("Sample", [
                {"type": "missing", "loc": ("conversation",), "input": record}])
        if "category" not in record:
            raise ValidationError.from_exception_data("Sample", [
                {"type": "missing", "loc": ("category",), "input": record}])
        lineage = Lineage(recipe=self.recipe, recipe_hash=self.recipe_hash, generator="import",
                          model=record.get("model"), seed=0, slot=number - 1,
                          fact_ids=list(record.get("fact_ids", [])))
        return Sample.create(category=record["category"], persona=str(record.get("persona", "unknown")),
                             conversation=conversation, lineage=lineage, language=str(record.get("language", "en")))
