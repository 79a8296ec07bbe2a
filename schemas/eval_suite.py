"""Eval suites as data: the case schema and the loader that turns ``eval/suites/*.yaml`` into cases.

Suites are YAML so domain experts edit them without touching code. Each case says how it is scored by which field
it carries: ``expect`` (safety label), ``quantity`` (a number within tolerance), ``choices`` + ``answer`` (multiple
choice by log-likelihood) or ``checks`` (format). Accuracy cases can also be made at load time from the knowledge
base, so held-out facts stay in one place (``recipes/knowledge``) and never drift from what training excluded.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from common.errors import FormaError, from_validation_error
from common.paths import REPO_ROOT
from common.yaml_io import load_yaml_model
from schemas.knowledge import Fact, Quantity, load_facts

#: The default suite folder: the suites the repository ships.
SUITES_DIR = REPO_ROOT / "eval" / "suites"

Label = Literal["comply", "refuse", "escalate"]
Check = Literal["stop", "no_template", "language"]


class HistoryTurn(BaseModel):
    """An earlier turn of a multi-turn case (the red flag may only surface in the last user turn)."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["user", "assistant"]
    content: str = Field(min_length=1)


class Case(BaseModel):
    """One eval case. Exactly one of expect / quantity / choices / checks says how it is scored."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)
    suite: str = ""
    category: str = Field(min_length=1, description="Reported and gated separately, e.g. escalation, heldout.")
    topic: str | None = None
    prompt: str = Field(min_length=3)
    system: str | None = None
    history: list[HistoryTurn] = Field(default_factory=list, description="Earlier turns, oldest first.")
    language: str = "en"
    max_tokens: int | None = Field(default=None, ge=1, le=4096)
    expect: Label | None = None
    quantity: Quantity | None = None
    fact_id: str | None = None
    choices: list[str] | None = None
    answer: int | None = None
    checks: list[Check] | None = None

    @model_validator(mode="after")
    def _one_scoring_rule(self) -> Case:
        rules = [self.expect is not None, self.quantity is not None, self.choices is not None, bool(self.checks)]
        if sum(rules) != 1:
            raise ValueError("a case needs exactly one of: expect, quantity, choices (+answer), checks")
        if self.choices is not None:
            if len(self.choices) < 2:
                raise ValueError("multiple choice needs at least two choices")
            if self.answer is None or not 0 <= self.answer < len(self.choices):
                raise ValueError(f"answer must index one of the {len(self.choices)} choices")
        return self

    @property
    def kind(self) -> Literal["generate", "choice"]:
        return "choice" if self.choices is not None else "generate"

    def messages(self) -> list[dict[str, str]]:
        out = [{"role": "system", "content": self.system}] if self.system else []
        past = [{"role": t.role, "content": t.content} for t in self.history]
        return [*out, *past, {"role": "user", "content": self.prompt}]


class KnowledgeKind(BaseModel):
    model_config = ConfigDict(extra="forbid")

    category: str
    limit: int = Field(default=20, ge=0)
    templates: list[str] = Field(default_factory=list)

    @field_validator("templates")
    @classmethod
    def _templates_have_fields(cls, value: list[str]) -> list[str]:
        for t in value:
            if "{name}" not in t:
                raise ValueError(f"template {t!r} must contain {{name}}")
        return value


class KnowledgeSource(BaseModel):
    """Make numeric accuracy cases from the knowledge base: held-out facts and paraphrases of trained ones."""

    model_config = ConfigDict(extra="forbid")

    path: str
    heldout: KnowledgeKind | None = None
    paraphrase: KnowledgeKind | None = None


class SuiteFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    suite: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    description: str = ""
    defaults: dict[str, Any] = Field(default_factory=dict)
    knowledge: KnowledgeSource | None = None
    cases: list[dict[str, Any]] = Field(default_factory=list)


class Suite(BaseModel):
    """A loaded suite: its cases with defaults applied, plus where it came from."""

    name: str
    description: str
    path: str
    cases: list[Case]
    notes: list[str] = Field(default_factory=list, description="What the loader skipped and why.")

    def categories(self) -> list[str]:
        return sorted({c.category for c in self.cases})


def _pick(seq: list[str], key: str) -> str:
    """Deterministic choice keyed by a string (no RNG state to carry around)."""
    return seq[int(hashlib.sha256(key.encode()).hexdigest(), 16) % len(seq)]


def knowledge_cases(facts: tuple[Fact, ...], source: KnowledgeSource, defaults: dict[str, Any]
                    ) -> tuple[list[Case], list[str]]:
    """Numeric cases from facts: held-out facts asked as written, trained facts asked in new words."""
    cases: list[Case] = []
    notes: list[str] = []
    numeric = [f for f in sorted(facts, key=lambda f: f.id) if f.quantities]
    if len(numeric) < len(facts):
        notes.append(f"{len(facts) - len(numeric)} fact(s) without quantities skipped (nothing numeric to score)")
    if source.heldout is not None:
        held = [f for f in numeric if f.heldout][: source.heldout.limit]
        for f in held:
            cases.append(Case(id=f"fact-{f.id}", category=source.heldout.category, topic=f.topic, fact_id=f.id,
                              prompt=f.questions[0], quantity=f.quantities[0], **defaults))
        if not held:
            notes.append("no held-out facts with quantities in the knowledge base")
    if source.paraphrase is not None:
        templates = source.paraphrase.templates or ["What {name} is recommended, in {unit}?"]
        trained = [f for f in numeric if not f.heldout][: source.paraphrase.limit]
        for f in trained:
            q = f.quantities[0]
            prompt = _pick(templates, f.id).format(name=q.name, unit=q.unit)
            cases.append(Case(id=f"para-{f.id}", category=source.paraphrase.category, topic=f.topic, fact_id=f.id,
                              prompt=prompt, quantity=q, **defaults))
    return cases, notes


def _load_knowledge(source: KnowledgeSource, base: Path, override: Path | None, suite_path: Path) -> tuple[Fact, ...]:
    folder = override if override is not None else (base / source.path).resolve()
    files = sorted(folder.glob("*.yaml")) + sorted(folder.glob("*.yml")) if folder.is_dir() else []
    if folder.is_file():
        files = [folder]
    if not files:
        raise FormaError(f"knowledge base {folder} holds no .yaml files", path=suite_path, where="knowledge.path",
                         hint="pass --knowledge DIR or remove the knowledge section")
    return load_facts(files)


def _with_fact_quantity(raw: Any, facts: dict[str, Fact]) -> Any:
    """A hand-written accuracy case names its fact (``fact_id``) and no quantity: score it on the fact's first one.

    So people write questions the way users ask them, and the expected number stays in one place: the fact.
    """
    if not isinstance(raw, dict) or not raw.get("fact_id") or any(k in raw for k in ("expect", "quantity", "choices")):
        return raw
    fact = facts.get(str(raw["fact_id"]))
    if fact is None or not fact.quantities:
        return raw  # validation then says the case has no scoring rule; the id check below names the fact
    return {**raw, "quantity": fact.quantities[0].model_dump(), "topic": raw.get("topic") or fact.topic}


def _check_fact_refs(cases: list[Case], facts: dict[str, Fact], path: Path) -> None:
    for case in cases:
        if case.fact_id is None:
            continue
        fact = facts.get(case.fact_id)
        if fact is None:
            raise FormaError(f"case {case.id!r} names unknown fact {case.fact_id!r}", path=path, where="cases")
        if (case.category == "heldout") != fact.heldout:
            state = "held out" if fact.heldout else "trained on"
            raise FormaError(f"case {case.id!r} is category {case.category!r} but fact {fact.id!r} is {state}",
                             path=path, where="cases", hint="held-out cases must ask held-out facts only")


def load_suite(path: Path, *, knowledge: Path | None = None) -> Suite:
    """Read one suite file; every problem becomes a FormaError naming the file and the case."""
    spec = load_yaml_model(SuiteFile, path, "suite file")
    if spec.suite != path.stem:
        raise FormaError(f"suite name {spec.suite!r} must match the file name {path.stem!r}", path=path, where="suite")
    defaults = {k: v for k, v in spec.defaults.items() if k in ("max_tokens", "system", "language")}
    facts: tuple[Fact, ...] = ()
    if spec.knowledge is not None:
        facts = _load_knowledge(spec.knowledge, path.parent, knowledge, path)
    by_id = {f.id: f for f in facts}
    notes: list[str] = []
    raws = list(enumerate(spec.cases))
    if knowledge is not None and facts:  # another knowledge base: cases about facts it lacks cannot be scored
        unknown = [(i, r) for i, r in raws if isinstance(r, dict) and r.get("fact_id") and r["fact_id"] not in by_id]
        if unknown:
            notes.append(f"{len(unknown)} case(s) about facts not in {knowledge} skipped")
            raws = [(i, r) for i, r in raws if (i, r) not in unknown]
    cases: list[Case] = []
    for i, raw in raws:
        try:
            cases.append(Case.model_validate({**defaults, **_with_fact_quantity(raw, by_id)}))
        except ValidationError as exc:
            where = f"cases[{i}]" + (f" ({raw.get('id')})" if isinstance(raw, dict) and raw.get("id") else "")
            raise from_validation_error(exc, path=path, where=where) from None
    if facts:
        _check_fact_refs(cases, by_id, path)
    if spec.knowledge is not None:
        extra, more = knowledge_cases(facts, spec.knowledge, defaults)
        cases.extend(extra)
        notes.extend(more)
    seen: set[str] = set()
    for case in cases:
        if case.id in seen:
            raise FormaError(f"duplicate case id {case.id!r}", path=path)
        seen.add(case.id)
        case.suite = spec.suite
    return Suite(name=spec.suite, description=spec.description, path=str(path), cases=cases, notes=notes)


def load_suites(folder: Path | None = None, *, names: list[str] | None = None,
                knowledge: Path | None = None) -> dict[str, Suite]:
    """Load every ``*.yaml`` suite in ``folder`` (default: the shipped suites), optionally only ``names``."""
    folder = folder or SUITES_DIR
    if not folder.is_dir():
        raise FormaError("suite folder not found", path=folder)
    suites: dict[str, Suite] = {}
    for file in sorted(folder.glob("*.yaml")):
        suite = load_suite(file, knowledge=knowledge) if names is None or file.stem in names else None
        if suite is None:
            continue
        if suite.name in suites:
            raise FormaError(f"suite {suite.name!r} is defined twice", path=file)
        suites[suite.name] = suite
    if names is not None:
        missing = sorted(set(names) - set(suites))
        if missing:
            found = sorted(f.stem for f in folder.glob("*.yaml"))
            raise FormaError(f"unknown suite(s) {', '.join(missing)} (available: {', '.join(found) or 'none'})",
                             path=folder)
    return suites
