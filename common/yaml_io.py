"""The one YAML reader for every file users edit, and the one translation of a validation error into a line.

PyYAML parses; pydantic validates. Errors from either are translated here (not in the schemas) because only the
reader knows the file and can map a pydantic location such as ``categories.strength`` back to a YAML line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from common.errors import FormaError, from_validation_error
from common.text import read_utf8

M = TypeVar("M", bound=BaseModel)

_BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: ~10x faster on the knowledge base


class _Loader(_BaseLoader):  # type: ignore[misc, valid-type]
    """The safe loader, refusing a key written twice in one mapping (PyYAML would silently keep the last)."""


def _unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        if isinstance(key, list | dict):
            continue  # an unhashable key: the safe constructor reports it below
        if key in seen:
            raise yaml.constructor.ConstructorError("while reading a mapping", node.start_mark,
                                                    f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def read_yaml(path: Path, what: str = "file") -> tuple[Any, str]:
    """Parse ``path``; return the data and the text (composed into nodes only if validation needs a line number).

    The one YAML reader for every file users edit (recipes, knowledge, policies, suites, training configs), so each
    gets the same one-line errors with line and column.
    """
    if not path.is_file():
        raise FormaError(f"{what} not found", path=path)
    text = read_utf8(path)
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


def validate_yaml(model: type[BaseModel], data: Any, path: Path, text: str) -> Any:
    """Validate parsed YAML against ``model``; the first problem becomes a FormaError naming its line."""
    if not isinstance(data, dict):
        raise FormaError(f"expected a mapping at the top level, got {type(data).__name__}", path=path)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        line = _line_of(yaml.compose(text, Loader=_Loader), tuple(exc.errors()[0]["loc"]))
        raise from_validation_error(exc, path=path, line=line) from None


def load_yaml_model(model: type[M], path: Path, what: str = "file") -> M:
    """Read ``path`` and validate it as ``model``: the reader for policies, configs, suites and recipes."""
    data, text = read_yaml(path, what)
    result: M = validate_yaml(model, data, path, text)
    return result
