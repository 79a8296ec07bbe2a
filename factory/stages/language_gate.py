"""Run a stage only on samples of some languages; the others pass through it unjudged.

Why: semantic dedupe embeds with an English-only encoder (all-MiniLM-L6-v2, or the static model distilled from it).
On Arabic text it gives near-identical vectors for unrelated chats (measured on the Arabic slice of
``recipes/forma-fitness-ar.yaml``: 339 of 600 Arabic chats dropped as "semantic duplicates" at cosine 0.95), so the
recipe's ``dedupe.semantic_languages`` limits it to the languages the encoder reads. Samples of other languages
still pass exact and near dedupe, which normalise Arabic (``common.arabic``). The wrapped stage keeps its own name,
statistics and rejects; its ``seen`` counts only the samples it judged.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import ClassVar

from pydantic import Field

from factory.stages.base import RejectWriter, Stage, StageStats
from schemas.sample import Sample


class LanguageGate(Stage):
    name: ClassVar[str] = "language_gate"

    inner: Stage
    languages: frozenset[str] = Field(description="Languages the inner stage judges.")

    @property
    def stats(self) -> StageStats:
        return self.inner.stats

    def bind(self, rejects: RejectWriter) -> Stage:
        self.inner.bind(rejects)
        return self

    def load(self) -> None:
        self.inner.load()

    def unload(self) -> None:
        self.inner.unload()

    def run(self, samples: Iterable[Sample]) -> Iterator[Sample]:
        size = getattr(self.inner, "batch_size", 1000)
        chunk: list[Sample] = []
        for sample in samples:
            chunk.append(sample)
            if len(chunk) >= size:
                yield from self._chunk(chunk)
                chunk = []
        if chunk:
            yield from self._chunk(chunk)

    def _chunk(self, chunk: list[Sample]) -> Iterator[Sample]:
        yield from self.inner.run([s for s in chunk if s.language in self.languages])
        yield from (s for s in chunk if s.language not in self.languages)
