"""The parts of a build that both engines share: the recipe's generator, its filter chain, and generation by slot.

``factory.build`` runs them in-process; ``factory.distilabel_pipeline`` wraps the same objects as distilabel steps.
Both import this module and neither imports the other's internals, so the two engines cannot drift apart.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

from common.errors import FormaError
from factory.planner import Slot
from factory.recipe_loader import LoadedRecipe
from factory.stages.base import RejectWriter, Stage, StageStats
from factory.stages.exact import ExactDedupe
from schemas.sample import Sample


class Generator(Protocol):
    name: str

    def generate(self, slot: Slot, attempt: int = 0) -> Sample: ...


def make_generator(loaded: LoadedRecipe, out: Path | None = None, resume: bool = False) -> Generator:
    """The recipe's generator; LLM backends keep their reply cache under ``out`` (reused only with ``resume``)."""
    backend = loaded.recipe.generator.backend
    if backend == "template":
        from factory.generators.template import PHRASES, TemplateGenerator

        unsupported = [lang for lang in loaded.recipe.language_shares if lang not in PHRASES]
        if unsupported:
            raise FormaError(f"the template generator writes {', '.join(PHRASES)} only; {unsupported} need an LLM "
                             "backend", path=loaded.path, where="languages")
        return TemplateGenerator(loaded.recipe, loaded.recipe.content_hash())
    try:
        from factory.generators.llm import make_llm_generator  # type: ignore[import-not-found,unused-ignore]
    except ModuleNotFoundError as exc:
        raise FormaError(f"generator backend {backend!r} is not available in this build", path=loaded.path,
                         where="generator.backend") from exc
    generator: Generator = make_llm_generator(loaded, out_dir=out, resume=resume)
    return generator


def filter_stages(loaded: LoadedRecipe) -> list[Stage]:
    """The filters every generated sample passes through, in order. State persists across balance rounds."""
    # Cheap and record-local first; validate before dedupe so an invalid sample never becomes the "original" that a
    # valid duplicate is dropped for; decontaminate before dedupe so the dedupe indexes hold only clean samples.
    from factory.stages.decontaminate import Decontaminate, eval_prompts
    from factory.stages.near import NearDedupe
    from factory.stages.semantic import SemanticDedupe
    from factory.stages.validate import Validate

    recipe = loaded.recipe
    dd, dc, va = recipe.dedupe, recipe.decontamination, recipe.validation
    stages: list[Stage] = [Validate(min_turn_chars=va.min_turn_chars, max_turn_chars=va.max_turn_chars,
                                    max_total_chars=va.max_total_chars, check_language=va.check_language,
                                    check_numbers=va.check_numbers, facts={f.id: f for f in loaded.facts})]
    stages.append(Decontaminate(prompts=eval_prompts(loaded), ngram=dc.ngram, semantic_threshold=dc.semantic_threshold,
                                backend=dd.embedding_backend, model_path=dd.embedding_model,
                                semantic_languages=frozenset(dd.semantic_languages)
                                if dd.semantic_languages is not None else None))
    if dd.exact:
        stages.append(ExactDedupe())
    stages.append(NearDedupe(threshold=dd.near_threshold, num_perm=dd.num_perm, shingle_words=dd.shingle_words,
                             text=dd.near_text))
    if dd.semantic_threshold is not None:
        semantic: Stage = SemanticDedupe(threshold=dd.semantic_threshold, text=dd.semantic_text,
                                         backend=dd.embedding_backend, model_path=dd.embedding_model)
        if dd.semantic_languages is not None:  # an English-only encoder must not judge Arabic (language_gate.py)
            from factory.stages.language_gate import LanguageGate

            semantic = LanguageGate(inner=semantic, languages=frozenset(dd.semantic_languages))
        stages.append(semantic)
    return stages


class _Timed:
    """An iterator that adds up the time spent producing its items (its upstream's time included)."""

    def __init__(self, items: Iterable[Sample]) -> None:
        self._items = iter(items)
        self.seconds = 0.0

    def __iter__(self) -> _Timed:
        return self

    def __next__(self) -> Sample:
        start = time.perf_counter()
        try:
            return next(self._items)
        finally:
            self.seconds += time.perf_counter() - start


def chain_stages(samples: Iterable[Sample], stages: list[Stage], gen_stats: StageStats) -> Iterator[Sample]:
    """Run ``samples`` through ``stages`` lazily, charging each stage (and generation) its own time."""
    timed = [_Timed(samples)]
    for stage in stages:
        timed.append(_Timed(stage.run(timed[-1])))
    before = [t.seconds for t in timed]
    try:
        yield from timed[-1]
    finally:
        spent = [t.seconds - b for t, b in zip(timed, before, strict=True)]
        gen_stats.seconds += spent[0]
        for i, stage in enumerate(stages, start=1):
            stage.stats.seconds += spent[i] - spent[i - 1]


GENERATE_BATCH = 16


def generate_slots(generator: Generator, slots: list[Slot], rejects: RejectWriter,
                   stats: StageStats) -> Iterator[Sample]:
    """Samples for ``slots``; a slot the generator rejects (bad reply, failed grounding or judge) becomes a reject.

    Generators with ``generate_batch`` (LLM backends) get slots in batches, so a server sees concurrent requests.
    """
    from factory.generators.llm import GenerationRejected
    from schemas.sample import Reject

    batch_fn = getattr(generator, "generate_batch", None)
    size = GENERATE_BATCH if batch_fn is not None else 1
    for start in range(0, len(slots), size):
        chunk = slots[start:start + size]
        results: list[Sample | GenerationRejected] = []
        if batch_fn is not None:
            results = batch_fn(chunk)
        else:
            for slot in chunk:
                try:
                    results.append(generator.generate(slot))
                except GenerationRejected as exc:
                    results.append(exc)
        for result in results:
            stats.seen += 1
            if isinstance(result, GenerationRejected):
                stats.dropped += 1
                stats.reasons[result.reason] = stats.reasons.get(result.reason, 0) + 1
                rejects.write(Reject(stage=result.stage, reason=result.reason, detail=result.detail,
                                     record=result.record))
            else:
                stats.kept += 1
                yield result


