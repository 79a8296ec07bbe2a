"""The pipeline's unit of work: a small step with a single ``run`` generator (datatrove's shape).

A stage reads samples and yields the ones it keeps. Every drop goes through :meth:`Stage.drop`, which counts it
and hands a :class:`~schemas.sample.Reject` (stage, reason, related sample) to the exclusion writer, so nothing
leaves the pipeline without a trace. Stages hold typed pydantic settings (distilabel's shape) and load heavy
resources in :meth:`load`, not at import or construction time.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from common.jsonl import json_line
from schemas.sample import Reject, Sample


class StageStats(BaseModel):
    """What a stage saw, kept and dropped, by reason."""

    stage: str
    seen: int = 0
    kept: int = 0
    dropped: int = 0
    reasons: dict[str, int] = Field(default_factory=dict)
    seconds: float = Field(default=0.0, description="Time spent in this stage itself (upstream time excluded).")


class RejectWriter:
    """Appends every reject as one JSON line. Opened once per build; flushes per line so a killed build keeps them.

    In memory it keeps only a count and the first few examples per (stage, reason), for reports: a build that
    drops millions of samples must not hold them all.
    """

    def __init__(self, path: Path | None = None, examples_per_reason: int = 5) -> None:
        self.path = path
        self._fh: IO[bytes] | None = None
        self.count = 0
        self.examples: dict[tuple[str, str], list[Reject]] = {}
        self.examples_per_reason = examples_per_reason

    def __enter__(self) -> RejectWriter:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = self.path.open("wb")
        return self

    def write(self, reject: Reject) -> None:
        self.count += 1
        examples = self.examples.setdefault((reject.stage, reject.reason), [])
        if len(examples) < self.examples_per_reason:
            examples.append(reject)
        if self._fh is not None:
            self._fh.write(json_line(reject.model_dump(mode="json")))
            self._fh.flush()

    def __exit__(self, *exc: object) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class Stage(BaseModel, ABC):
    """One pipeline step. Subclasses implement :meth:`run`; they call :meth:`keep` / :meth:`drop` as they go."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    name: ClassVar[str] = "stage"

    _stats: StageStats = PrivateAttr()
    _rejects: RejectWriter = PrivateAttr()

    def model_post_init(self, __context: Any) -> None:
        self._stats = StageStats(stage=self.name)
        self._rejects = RejectWriter()

    # lifecycle -----------------------------------------------------------------------------------------------
    def load(self) -> None:
        """Load heavy resources (models, indexes). Called once before :meth:`run`."""

    def unload(self) -> None:
        """Release what :meth:`load` took."""

    # bookkeeping ---------------------------------------------------------------------------------------------
    @property
    def stats(self) -> StageStats:
        return self._stats

    def bind(self, rejects: RejectWriter) -> Stage:
        self._rejects = rejects
        return self

    def keep(self, sample: Sample) -> Sample:
        self._stats.seen += 1
        self._stats.kept += 1
        return sample

    def drop(self, sample: Sample | None, reason: str, *, detail: str = "", related_id: str | None = None,
             record: dict[str, Any] | None = None) -> None:
        self._stats.seen += 1
        self._stats.dropped += 1
        self._stats.reasons[reason] = self._stats.reasons.get(reason, 0) + 1
        self._rejects.write(Reject(
            stage=self.name, reason=reason, detail=detail, related_id=related_id,
            sample_id=sample.id if sample is not None else None,
            record=record if record is not None else (sample.model_dump(mode="json") if sample is not None else None),
        ))

    # work ----------------------------------------------------------------------------------------------------
    @abstractmethod
    def run(self, samples: Iterable[Sample]) -> Iterator[Sample]:
        """Yield the samples this stage keeps; call :meth:`drop` for the others."""


class BatchedStage(Stage):
    """A stage that works a batch at a time (vectorized hashing, embedding, table checks).

    ``run`` groups the stream into batches of ``batch_size`` and hands each to :meth:`process_batch`, which yields
    the kept samples (calling :meth:`keep` / :meth:`drop` as :meth:`Stage.run` implementations do).
    """

    batch_size: int = Field(default=1000, ge=1)

    def run(self, samples: Iterable[Sample]) -> Iterator[Sample]:
        self.load()
        for batch in self.batches(samples):
            yield from self.process_batch(batch)

    def batches(self, samples: Iterable[Sample]) -> Iterator[list[Sample]]:
        """The stream in lists of ``batch_size`` (the last one shorter), read lazily."""
        batch: list[Sample] = []
        for sample in samples:
            batch.append(sample)
            if len(batch) >= self.batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    @abstractmethod
    def process_batch(self, batch: list[Sample]) -> Iterator[Sample]:
        """Yield the samples of ``batch`` this stage keeps."""
