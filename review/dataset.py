"""A dataset version on disk (a ``forma build`` output folder) as review sees it: samples, manifest, facts.

The Argilla dataset name is derived from the version (recipe name and dataset hash), so each version gets its own
Argilla dataset and a second push of the same version finds the one it made.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.errors import FormaError
from schemas.knowledge import Fact
from schemas.recipe import Persona
from schemas.sample import Sample


@dataclass
class DatasetVersion:
    path: Path
    samples: list[Sample]
    manifest: dict[str, Any] = field(default_factory=dict)
    facts: dict[str, Fact] = field(default_factory=dict)
    personas: dict[str, Persona] = field(default_factory=dict)

    @property
    def dataset_hash(self) -> str:
        from factory.export import dataset_hash

        return str(self.manifest.get("dataset_hash") or dataset_hash(self.samples))

    @property
    def argilla_name(self) -> str:
        """``<recipe>-<N>-samples-<hash8>``, e.g. ``forma-fitness-60-samples-284ae9bf``: readable in Argilla's list,
        and still one dataset per version (the hash). Letters, digits, '-' and '_' only."""
        recipe = re.sub(r"[^A-Za-z0-9_-]+", "-", str(self.manifest.get("recipe") or self.path.name)).strip("-")[:60]
        return f"{recipe}-{len(self.samples)}-samples-{self.dataset_hash[:8]}"


def load_version(path: str | Path) -> DatasetVersion:
    """Read DIR/samples.jsonl (each line a Sample) and, when present, DIR/manifest.json and the recipe's facts."""
    path = Path(path)
    samples_file = path / "samples.jsonl"
    if not samples_file.is_file():
        raise FormaError("no samples.jsonl here: not a `forma build` output folder", path=path)
    samples: list[Sample] = []
    seen: set[str] = set()
    with samples_file.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                sample = Sample.model_validate_json(line)
            except ValueError as exc:
                first = str(exc).splitlines()[0]
                raise FormaError(f"not a valid sample: {first}", path=samples_file, where=f"line {number}") from None
            if sample.id in seen:
                raise FormaError(f"duplicate sample id {sample.id}", path=samples_file, where=f"line {number}")
            seen.add(sample.id)
            samples.append(sample)
    manifest: dict[str, Any] = {}
    if (path / "manifest.json").is_file():
        manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    facts, personas = _recipe_context(manifest, path)
    return DatasetVersion(path=path, samples=samples, manifest=manifest, facts=facts, personas=personas)


def _recipe_context(manifest: dict[str, Any], path: Path) -> tuple[dict[str, Fact], dict[str, Persona]]:
    """The recipe's facts and personas, for the experts' context; a recipe no longer on disk just means less context.

    The manifest names the recipe as it was given to the build (often relative to where the build ran), so it is
    looked up from here and from the dataset folder's parents.
    """
    recipe_file = manifest.get("recipe_file")
    if not recipe_file:
        return {}, {}
    candidates = [Path(recipe_file), *(parent / recipe_file for parent in path.resolve().parents)]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        return {}, {}
    from factory.recipe_loader import load_recipe

    try:
        recipe = load_recipe(found)
    except FormaError:
        return {}, {}
    return {f.id: f for f in recipe.facts}, {p.id: p for p in recipe.recipe.personas}
