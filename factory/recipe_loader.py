"""Load a recipe and its knowledge base, turning every problem into one line naming the file, field and line.

Reading and the error translation live in ``common.yaml_io``; this module knows what a recipe refers to (its
knowledge folders) and what must hold across files (every category with a share has training facts).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from common.errors import FormaError
from common.yaml_io import read_yaml, validate_yaml
from schemas.behaviour import BehaviourFile, load_behaviours
from schemas.knowledge import Category, Fact, load_facts
from schemas.recipe import Recipe
from schemas.translation import TranslationFile

#: A behaviour knowledge item: a red flag, a harmful request or a benign-but-alarming phrasing.
BehaviourItem = Any


@dataclass(frozen=True)
class LoadedRecipe:
    """A validated recipe with the facts it is grounded in."""

    path: Path
    recipe: Recipe
    facts: tuple[Fact, ...]
    behaviours: BehaviourFile = field(default_factory=BehaviourFile)

    @property
    def training_facts(self) -> tuple[Fact, ...]:
        """Facts generation may use: everything not held out for the accuracy suite."""
        return tuple(f for f in self.facts if not f.heldout)

    def _speaks(self, record: Any, language: str) -> bool:
        """Whether a fact or item can ground a chat in ``language``: the template generator needs its text in that
        language; an LLM teacher writes in the language itself, from the English."""
        return language == "en" or self.recipe.generator.backend != "template" or record.text_in(language) is not None

    def facts_for(self, category: Category, language: str = "en") -> tuple[Fact, ...]:
        """Training facts of ``category`` a chat in ``language`` may use (see :meth:`_speaks`)."""
        return tuple(f for f in self.training_facts if f.category == category and self._speaks(f, language))

    def items_for(self, category: Category, behaviour: str, language: str = "en") -> tuple[BehaviourItem, ...]:
        """The behaviour knowledge a conversation of this category, behaviour and language can rest on ("answer":
        none)."""
        pools: dict[str, list[Any]] = {"escalate": list(self.behaviours.red_flags),
                                       "decline": list(self.behaviours.harmful_requests),
                                       "reassure": list(self.behaviours.benign)}
        pool = pools.get(behaviour, [])
        return tuple(item for item in pool if item.category == category and self._speaks(item, language))


def _knowledge_files(base: Path, entries: list[str], recipe_path: Path) -> list[Path]:
    files: list[Path] = []
    for entry in entries:
        target = (base / entry).resolve()
        if target.is_dir():
            found = sorted(target.glob("*.yaml")) + sorted(target.glob("*.yml"))
            if not found:
                raise FormaError(f"knowledge folder {target} holds no .yaml files", path=recipe_path, where="knowledge")
            files.extend(found)
        elif target.is_file():
            files.append(target)
        else:
            raise FormaError(f"knowledge path {entry!r} not found (looked for {target})", path=recipe_path,
                             where="knowledge")
    return files


#: Share maps are replaced whole by a variant, never merged: ``behaviours: {answer: 100}`` must mean only answers.
WHOLE_KEYS = frozenset({"categories", "behaviours", "turn_mix"})


def merge_include(base: Any, child: Any) -> Any:
    """``child`` over ``base``: mappings merge key by key (recursively), except the share maps in ``WHOLE_KEYS``;
    anything else in ``child`` replaces."""
    if isinstance(base, dict) and isinstance(child, dict):
        return {**base, **{k: merge_include(base.get(k), v) if k in base and k not in WHOLE_KEYS else v
                           for k, v in child.items()}}
    return child


def read_recipe_data(path: Path, _seen: tuple[Path, ...] = ()) -> tuple[Any, str]:
    """A recipe's YAML with its ``include:`` resolved: a variant recipe holds only what differs from its base.

    The way lm-evaluation-harness task files include a template. ``include`` is a path relative to the including
    file; includes may chain, but not loop.
    """
    data, text = read_yaml(path)
    if not isinstance(data, dict) or "include" not in data:
        return data, text
    target = (path.parent / str(data.pop("include"))).resolve()
    if target in _seen or target == path.resolve():
        raise FormaError(f"include loops back to {target.name}", path=path, where="include")
    if not target.is_file():
        raise FormaError(f"included recipe {target} not found", path=path, where="include")
    base, _ = read_recipe_data(target, (*_seen, path.resolve()))
    if not isinstance(base, dict):
        raise FormaError("included recipe is not a mapping", path=target)
    return merge_include(base, data), text


def load_recipe(path: str | Path) -> LoadedRecipe:
    """Parse and validate ``path`` and the knowledge it names; raise :class:`FormaError` on the first problem."""
    recipe_path = Path(path)
    data, text = read_recipe_data(recipe_path)
    recipe: Recipe = validate_yaml(Recipe, data, recipe_path, text)
    facts = load_facts(_knowledge_files(recipe_path.parent, recipe.knowledge, recipe_path))
    behaviours = _load_behaviour_knowledge(recipe_path, recipe)
    for file in _knowledge_files(recipe_path.parent, recipe.translations or [], recipe_path):
        facts, behaviours = _apply_translation(file, facts, behaviours)
    loaded = LoadedRecipe(path=recipe_path, recipe=recipe, facts=facts, behaviours=behaviours)
    _check_names(loaded)
    for language, l_share in recipe.language_shares.items():
        if l_share > 0:
            _check_coverage(loaded, language)
    return loaded


def _check_names(loaded: LoadedRecipe) -> None:
    """Unknown languages and populations are errors naming the accepted values (a typo must not pass silently)."""
    from factory.stages.validate import STOPWORDS

    languages = sorted(set(STOPWORDS) | {"ar"})
    for language in loaded.recipe.language_shares:
        if language not in languages:
            raise FormaError(f"unknown language {language!r} (accepted: {', '.join(languages)})",
                             path=loaded.path, where="languages")
    known = {"general"} | {p for f in loaded.facts for p in f.populations}
    known |= {p for item in loaded.behaviours.red_flags for p in item.populations}
    for i, persona in enumerate(loaded.recipe.personas):
        for population in persona.populations:
            if population not in known:
                raise FormaError(f"unknown population {population!r} (the knowledge base has: "
                                 f"{', '.join(sorted(known))})", path=loaded.path, where=f"personas[{i}].populations")


def _with_text(record: Any, language: str, text: Any, file: Path, where: str) -> Any:
    """``record`` with ``text`` as its ``language`` translation, validated again (the numbers check runs)."""
    data = record.model_dump()
    data["translations"] = {**data.get("translations", {}), language: text.model_dump()}
    try:
        return type(record).model_validate(data)
    except ValidationError as exc:
        raise FormaError(f"{record.id}: {exc.errors()[0]['msg']}", path=file, where=where) from None


def _apply_translation(file: Path, facts: tuple[Fact, ...],
                       behaviours: BehaviourFile) -> tuple[tuple[Fact, ...], BehaviourFile]:
    """Merge one translation file into the facts and behaviour items it names; an unknown id is an error."""
    data, text = read_yaml(file, "translation file")
    found: TranslationFile = validate_yaml(TranslationFile, data or {}, file, text)
    lang = found.language
    by_id = {f.id: f for f in facts}
    for fact_id, fact_text in found.facts.items():
        if fact_id not in by_id:
            raise FormaError(f"unknown fact id {fact_id!r}", path=file, where="facts")
        by_id[fact_id] = _with_text(by_id[fact_id], lang, fact_text, file, f"facts.{fact_id}")
    kinds = {}
    for kind in ("red_flags", "harmful_requests", "benign"):
        items = {i.id: i for i in getattr(behaviours, kind)}
        for item_id, item_text in getattr(found, kind).items():
            if item_id not in items:
                raise FormaError(f"unknown {kind} id {item_id!r}", path=file, where=kind)
            items[item_id] = _with_text(items[item_id], lang, item_text, file, f"{kind}.{item_id}")
        kinds[kind] = list(items.values())
    return tuple(by_id[f.id] for f in facts), BehaviourFile(**kinds)


def _check_coverage(loaded: LoadedRecipe, language: str) -> None:
    """Every category and behaviour with a share has knowledge in ``language`` to rest on."""
    recipe, recipe_path = loaded.recipe, loaded.path
    if language != "en" and recipe.generator.backend == "template":
        for persona in recipe.personas:
            if language not in (persona.translations or {}):
                raise FormaError(f"persona {persona.id!r} has no {language!r} text", path=recipe_path,
                                 where=f"personas.{persona.id}.translations",
                                 hint="the template generator needs each persona's intro, goals and notes in it")
    in_language = "" if language == "en" else f" with {language!r} text"
    hint = None if language == "en" else f"add translations.{language} to the knowledge, or lower its share"
    for category, share in recipe.categories.items():
        if share > 0 and not loaded.facts_for(category, language):
            raise FormaError(f"category {category.value!r} has a share of {share:g}% but no training facts"
                             f"{in_language}", path=recipe_path, where=f"categories.{category.value}", hint=hint)
        for behaviour, b_share in recipe.behaviours.items():
            if share > 0 and b_share > 0 and behaviour != "answer" and not loaded.items_for(category, behaviour,
                                                                                              language):
                raise FormaError(f"behaviour {behaviour!r} has a share of {b_share:g}% but the behaviour knowledge "
                                 f"holds nothing{in_language} for category {category.value!r}", path=recipe_path,
                                 where="behaviour_knowledge",
                                 hint=hint or "add items, or set the behaviour's share to 0")


def _load_behaviour_knowledge(recipe_path: Path, recipe: Recipe) -> BehaviourFile:
    merged = BehaviourFile()
    for entry in recipe.behaviour_knowledge:
        folder = (recipe_path.parent / entry).resolve()
        if not folder.is_dir():
            raise FormaError(f"behaviour knowledge folder {entry!r} not found (looked for {folder})",
                             path=recipe_path, where="behaviour_knowledge")
        part = load_behaviours(folder)
        merged = BehaviourFile(red_flags=merged.red_flags + part.red_flags,
                               harmful_requests=merged.harmful_requests + part.harmful_requests,
                               benign=merged.benign + part.benign)
    return merged
