"""JSON Schema export of every record type, for annotators' tools and services outside Python."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

from schemas.conversation import Conversation
from schemas.knowledge import Fact, KnowledgeFile
from schemas.recipe import Recipe
from schemas.sample import Lineage, Reject, Sample

MODELS: dict[str, type[BaseModel]] = {
    "conversation": Conversation,
    "sample": Sample,
    "lineage": Lineage,
    "reject": Reject,
    "recipe": Recipe,
    "fact": Fact,
    "knowledge_file": KnowledgeFile,
}


def export_json_schemas(directory: str | Path) -> list[Path]:
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, model in MODELS.items():
        path = out / f"{name}.schema.json"
        path.write_text(json.dumps(model.model_json_schema(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
        paths.append(path)
    return paths
