"""Decontamination: no training sample may repeat, nearly or in meaning, a prompt the eval suites ask.

Eval prompts come from three places: every case of the suites under ``eval/suites/`` (read with the suite schema
in ``schemas.eval_suite``, which also yields the questions made from the knowledge base; every user turn of a
multi-turn case counts), the files a recipe names in ``decontamination.eval_files`` (JSONL or YAML, any schema:
every ``prompt``/``question`` field), and the questions of facts marked ``heldout: true``.

Two tests, either one drops the sample, naming the eval case it matches (``related_id``):

- word n-gram overlap: any ``ngram``-word sequence of an eval prompt appearing in the sample's text (user and
  assistant; a prompt shorter than ``ngram`` words must appear whole), the classic benchmark-contamination test;
- embedding similarity: any *user turn* within ``semantic_threshold`` cosine of an eval prompt. User turns, not
  the whole chat, because eval prompts are single user questions: a long answer would dilute the match.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import Field, PrivateAttr

from common.arabic import arabic_share
from common.errors import FormaError
from common.jsonl import iter_jsonl
from common.paths import REPO_ROOT
from common.yaml_io import read_yaml
from factory.embed import EncoderKind, get_encoder
from factory.recipe_loader import LoadedRecipe
from factory.stages.base import BatchedStage
from factory.stages.exact import normalize
from schemas.eval_suite import SuiteFile, knowledge_cases
from schemas.knowledge import Fact
from schemas.sample import Sample

log = logging.getLogger(__name__)

#: Keys whose string values are eval prompts, in suite files of any shape.
PROMPT_KEYS = frozenset({"prompt", "question", "questions", "instruction", "query"})
DEFAULT_SUITES = REPO_ROOT / "eval" / "suites"


@dataclass(frozen=True)
class EvalPrompt:
    id: str
    text: str


def _walk(value: Any, prefix: str, out: list[EvalPrompt], key: str | None = None) -> None:
    if isinstance(value, dict):
        base = f"{prefix}/{value['id']}" if isinstance(value.get("id"), str) else prefix
        for k, v in value.items():
            _walk(v, base, out, str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _walk(v, prefix if key not in PROMPT_KEYS else f"{prefix}#{i}", out, key)
    elif isinstance(value, str) and key in PROMPT_KEYS and len(value.split()) >= 2:
        out.append(EvalPrompt(id=prefix, text=value))


def prompts_from_file(path: Path) -> list[EvalPrompt]:
    """Every prompt/question string in a JSONL, JSON or YAML file, whatever its schema."""
    if not path.is_file():
        raise FormaError("eval file not found", path=path, where="decontamination.eval_files")
    prefix = f"eval:{path.stem}"
    out: list[EvalPrompt] = []
    if path.suffix == ".jsonl":
        for n, record in iter_jsonl(path, what="eval file"):
            _walk(record, f"{prefix}:{n}" if not (isinstance(record, dict) and "id" in record) else prefix, out)
    else:
        _walk(read_yaml(path, "eval file")[0], prefix, out)  # JSON is YAML
    return out


def suite_prompts(folder: Path, facts: tuple[Fact, ...] = ()) -> list[EvalPrompt]:
    """All prompts the eval suites ask, including those ``schemas.eval_suite`` generates from the knowledge base.

    The generated ones are made from ``facts`` (the recipe's own knowledge base, already loaded) with the eval
    area's own :func:`schemas.eval_suite.knowledge_cases`, so both sides agree on the questions without parsing the
    knowledge base twice. A file that is not a suite is read for its prompt/question fields, whatever its schema.
    """
    if not folder.is_dir():
        return []
    files = sorted(p for p in folder.iterdir() if p.suffix in (".yaml", ".yml", ".jsonl", ".json"))
    out: list[EvalPrompt] = []
    for file in files:
        data = read_yaml(file, "suite file")[0] if file.suffix in (".yaml", ".yml") else None
        try:
            spec = SuiteFile.model_validate(data)
        except ValueError:
            out.extend(prompts_from_file(file))
            continue
        for i, case in enumerate(spec.cases):
            if not isinstance(case, dict):
                continue
            case_id = f"eval:{spec.suite}/{case.get('id', i)}"
            if isinstance(case.get("prompt"), str):
                out.append(EvalPrompt(id=case_id, text=case["prompt"]))
            for j, turn in enumerate(case.get("history") or []):
                if isinstance(turn, dict) and turn.get("role") == "user" and isinstance(turn.get("content"), str):
                    out.append(EvalPrompt(id=f"{case_id}#turn{j}", text=turn["content"]))
        if spec.knowledge is not None and facts:
            generated, _ = knowledge_cases(facts, spec.knowledge, {})
            out.extend(EvalPrompt(id=f"eval:{spec.suite}/{c.id}", text=c.prompt) for c in generated)
    return out


def heldout_prompts(facts: Iterable[Fact]) -> list[EvalPrompt]:
    return [EvalPrompt(id=f"fact:{f.id}", text=q) for f in facts if f.heldout for q in f.questions]


def _word_ngrams(words: list[str], n: int) -> Iterator[tuple[str, ...]]:
    """Every run of ``n`` consecutive words, as tuples (built in C by ``zip``), in text order."""
    return zip(*(words[i:] for i in range(n)))  # noqa: B905  (the shorter slices end the zip, as they should)


class Decontaminate(BatchedStage):
    """Drops samples that overlap an eval prompt by n-grams or by embedding similarity (see the module doc)."""

    name: ClassVar[str] = "decontaminate"

    prompts: list[EvalPrompt] = Field(default_factory=list)
    ngram: int = Field(default=8, ge=3)
    semantic_threshold: float | None = Field(default=0.85, gt=0, le=1)
    backend: EncoderKind = "auto"
    model_path: str | None = None
    #: Languages the encoder reads (the recipe's ``dedupe.semantic_languages``); None: all. The shipped encoders
    #: read English only and call unrelated Arabic texts close, so samples and eval prompts in other languages are
    #: judged by the n-gram check alone (which normalises Arabic spelling) and never by cosine.
    semantic_languages: frozenset[str] | None = None

    #: eval n-grams as word tuples, by n (short prompts use n = their length), mapped to the first prompt's id
    _grams: dict[int, dict[tuple[str, ...], str]] = PrivateAttr(default_factory=dict)
    _matrix: Any = PrivateAttr(default=None)
    _semantic_prompts: list[EvalPrompt] = PrivateAttr(default_factory=list)
    _encoder: Any = PrivateAttr(default=None)

    def load(self) -> None:
        if self._grams or not self.prompts:
            return
        for p in self.prompts:
            words = normalize(p.text).split()
            n = min(self.ngram, len(words))
            table = self._grams.setdefault(n, {})
            for gram in _word_ngrams(words, n):
                table.setdefault(gram, p.id)
        if self.semantic_threshold is not None:
            self._encoder = get_encoder(self.backend, self.model_path)
            self._semantic_prompts = [p for p in self.prompts if self._encoder_reads(p.text)]
            self._matrix = self._encoder.encode([p.text for p in self._semantic_prompts]) \
                if self._semantic_prompts else None

    def _encoder_reads(self, text: str) -> bool:
        """Whether the encoder may judge ``text``: every text when no languages are set; else Arabic-script text
        only when "ar" is among them (the one non-Latin language the factory writes)."""
        if self.semantic_languages is None or "ar" in self.semantic_languages:
            return True
        return (arabic_share(text) or 0.0) < 0.3

    def _ngram_hit(self, sample: Sample) -> str | None:
        """The eval prompt sharing an n-gram with the sample (the first such n-gram in the text), or None.

        ``isdisjoint`` over a zip of word tuples runs in C; only a sample that does overlap is walked in order.
        """
        words = normalize(sample.conversation.text()).split()
        for n, table in self._grams.items():
            if table.keys().isdisjoint(_word_ngrams(words, n)):
                continue
            for gram in _word_ngrams(words, n):
                if gram in table:
                    return table[gram]
        return None

    def process_batch(self, batch: list[Sample]) -> Iterator[Sample]:
        if not self.prompts:
            for sample in batch:
                yield self.keep(sample)
            return
        best = np.full(len(batch), -1.0, dtype=np.float32)
        which = np.zeros(len(batch), dtype=np.int64)
        if self._matrix is not None:
            owners, texts = [], []
            for i, s in enumerate(batch):
                if self.semantic_languages is not None and s.language not in self.semantic_languages:
                    continue
                for t in s.conversation.turns:
                    if t.role.value == "user":
                        owners.append(i)
                        texts.append(t.content)
            if texts:
                sims = self._encoder.encode(texts) @ self._matrix.T
                top, arg = sims.max(axis=1), sims.argmax(axis=1)
                for owner, sim, j in zip(owners, top.tolist(), arg.tolist(), strict=True):
                    if sim > best[owner]:
                        best[owner], which[owner] = sim, j
        for i, sample in enumerate(batch):
            hit = self._ngram_hit(sample)
            if hit is not None:
                self.drop(sample, "eval_ngram_overlap", related_id=hit,
                          detail=f"shares a {self.ngram}-word sequence with eval prompt {hit}")
                continue
            if self.semantic_threshold is not None and best[i] >= self.semantic_threshold:
                p = self._semantic_prompts[int(which[i])]
                self.drop(sample, "eval_semantic_match", related_id=p.id,
                          detail=f"a user turn is {best[i]:.3f} cosine from eval prompt {p.id}: {p.text[:80]!r}")
                continue
            yield self.keep(sample)


def eval_prompts(loaded: LoadedRecipe, suites: Path | None = DEFAULT_SUITES) -> list[EvalPrompt]:
    """Everything a recipe's build must not train on: the suites' prompts, its eval_files, held-out questions."""
    prompts = suite_prompts(suites, loaded.facts) if suites is not None else []
    for name in loaded.recipe.decontamination.suites:
        folder = Path(name) if Path(name).is_absolute() else (loaded.path.parent / name)
        if not folder.is_dir():
            raise FormaError("eval suite folder not found", path=folder, where="decontamination.suites")
        prompts.extend(suite_prompts(folder, loaded.facts))
    for name in loaded.recipe.decontamination.eval_files:
        path = Path(name) if Path(name).is_absolute() else (loaded.path.parent / name)
        prompts.extend(prompts_from_file(path))
    prompts.extend(heldout_prompts(loaded.facts))
    return prompts
