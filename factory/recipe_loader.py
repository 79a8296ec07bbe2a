"""Load a recipe and its knowledge base, turning every problem into one line naming the file, field and line.

PyYAML parses; pydantic validates. Errors from either are translated here (not in the schemas) because only the
loader knows the file and can map a pydantic location such as ``categories.strength`` back to a YAML line.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from factory.errors import FormaError
from schemas.knowledge import Category, Fact, KnowledgeFile
from schemas.recipe import Recipe


@dataclass(frozen=True)
class LoadedRecipe:
    """A validated recipe with the facts it is grounded in."""

    path: Path
    recipe: Recipe
    facts: tuple[Fact, ...]

    @property
    def training_facts(self) -> tuple[Fact, ...]:
        """Facts generation may use: everything not held out for the accuracy suite."""
        return tuple(f for f in self.facts if not f.heldout)

    def facts_for(self, category: Category) -> tuple[Fact, ...]:
        return tuple(f for f in self.training_facts if f.category == category)


_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: ~10x faster on the knowledge base


def read_yaml(path: Path, what: str = "file") -> tuple[Any, str]:
    """Parse ``path``; return the data and the text (composed into nodes only if validation needs a line number).

    The one YAML reader for every file users edit (recipes, knowledge, policies, suites, training configs), so each
    gets the same one-line errors with line and column.
    """
    if not path.is_file():
        raise FormaError(f"{what} not found", path=path)
    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.load(text, Loader=_Loader)  # a safe loader, C or Python
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else None
        raise FormaError(f"YAML syntax error: {exc.problem or exc}", path=path, where=where) from None
    except yaml.YAMLError as exc:
        raise FormaError(f"YAML syntax error: {exc}", path=path) from None
    return data, text


def _line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """Follow a pydantic error location through the YAML node tree; return the deepest line found (1-based)."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next((v for k, v in node.value if str(k.value) == str(part)), None)
            if match is None:
                key = next((k for k, _ in node.value if str(k.value) == str(part)), None)
                return key.start_mark.line + 1 if key is not None else line
            node = match
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            break
        line = node.start_mark.line + 1
    return line


def _dotted(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if part == "[key]":
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _validate(model: type[BaseModel], data: Any, path: Path, text: str) -> Any:
    if not isinstance(data, dict):
        raise FormaError(f"expected a mapping at the top level, got {type(data).__name__}", path=path)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = tuple(first["loc"])
        line = _line_of(yaml.compose(text, Loader=_Loader), loc)
        message = first["msg"]
        if first["type"] == "enum" and "categories" in loc:
            known = ", ".join(c.value for c in Category)
            message = f"unknown category {first.get('input')!r} (expected one of {known})"
        elif first["type"] == "missing":
            message = "required field is missing"
        where = _dotted(loc) + (f" (line {line})" if line else "")
        more = len(exc.errors()) - 1
        raise FormaError(message + (f"; and {more} more problem(s)" if more else ""), path=path, where=where) from None


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


def load_facts(files: list[Path]) -> tuple[Fact, ...]:
    facts: list[Fact] = []
    seen: dict[str, Path] = {}
    for file in files:
        data, text = read_yaml(file)
        knowledge: KnowledgeFile = _validate(KnowledgeFile, data, file, text)
        for fact in knowledge.facts:
            if fact.id in seen:
                raise FormaError(f"duplicate fact id {fact.id!r} (also in {seen[fact.id]})", path=file, where="facts")
            seen[fact.id] = file
            facts.append(fact)
    return tuple(facts)


def load_recipe(path: str | Path) -> LoadedRecipe:
    """Parse and validate ``path`` and the knowledge it names; raise :class:`FormaError` on the first problem."""
    recipe_path = Path(path)
    data, text = read_yaml(recipe_path)
    recipe: Recipe = _validate(Recipe, data, recipe_path, text)
    facts = load_facts(_knowledge_files(recipe_path.parent, recipe.knowledge, recipe_path))
    loaded = LoadedRecipe(path=recipe_path, recipe=recipe, facts=facts)
    for category, share in recipe.categories.items():
        if share > 0 and not loaded.facts_for(category):
            raise FormaError(f"category {category.value!r} has a share of {share:g}% but no training facts",
                             path=recipe_path, where=f"categories.{category.value}")
    return loaded
