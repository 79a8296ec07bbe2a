"""Load a recipe and its knowledge base, turning every problem into one line naming the file, field and line.

Reading and the error translation live in ``common.yaml_io``; this module knows what a recipe refers to (its
knowledge folders) and what must hold across files (every category with a share has training facts).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.errors import FormaError
from common.yaml_io import read_yaml, validate_yaml
from schemas.knowledge import Category, Fact, load_facts
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


def merge_include(base: Any, child: Any) -> Any:
    """``child`` over ``base``: mappings merge key by key (recursively); anything else in ``child`` replaces."""
    if isinstance(base, dict) and isinstance(child, dict):
        return {**base, **{k: merge_include(base.get(k), v) if k in base else v for k, v in child.items()}}
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
    loaded = LoadedRecipe(path=recipe_path, recipe=recipe, facts=facts)
    for category, share in recipe.categories.items():
        if share > 0 and not loaded.facts_for(category):
            raise FormaError(f"category {category.value!r} has a share of {share:g}% but no training facts",
                             path=recipe_path, where=f"categories.{category.value}")
    return loaded
