"""The tree reads as the flow: imports only go down the layers, no file cycles, no giant folder or function.

Layers, bottom to top: shared helpers and record schemas, then the flow itself (recipes are data, so the first code
layer is the factory), then the command line that wires everything. A file may import its own layer or lower ones.
The figures these tests hold are in docs/architecture.md, with the command that prints them.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("common", "schemas", "factory", "review", "train", "export", "eval", "experiment", "cli")
MAX_FOLDER_SHARE = 0.40
MAX_FUNCTION_LINES = 80


def _sources() -> dict[str, Path]:
    """Module name -> file, for every production module."""
    out = {}
    for layer in LAYERS:
        for path in sorted((ROOT / layer).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _imports(path: Path, name: str, known: dict[str, Path]) -> set[str]:
    """Production modules a file imports (any depth, lazy imports included: a lazy import is still a dependency)."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    known = _sources()
    return {name: _imports(path, name, known) for name, path in known.items()}


def _layer(module: str) -> int:
    return LAYERS.index(module.split(".")[0])


def test_imports_only_go_down_the_layers() -> None:
    upward = sorted(f"{a} -> {b}" for a, deps in import_graph().items() for b in deps if _layer(b) > _layer(a))
    assert not upward, "imports from a lower layer to a higher one:\n" + "\n".join(upward)


def test_no_import_cycle_between_files() -> None:
    graph = import_graph()
    # Package __init__ files re-export nothing here; a cycle through one is still a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []
    counter = [0]

    def strongconnect(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    assert not cycles, f"import cycles: {cycles}"


def folder_shares() -> dict[str, float]:
    lines: dict[str, int] = defaultdict(int)
    for layer in LAYERS:
        for path in (ROOT / layer).rglob("*.py"):
            lines[layer] += sum(1 for _ in path.open(encoding="utf-8"))
    total = sum(lines.values())
    return {k: v / total for k, v in lines.items()}


def test_no_folder_holds_more_than_forty_percent_of_the_code() -> None:
    big = {k: round(v, 3) for k, v in folder_shares().items() if v > MAX_FOLDER_SHARE}
    assert not big, f"folders over {MAX_FOLDER_SHARE:.0%} of the non-test code: {big}"


def long_functions() -> list[tuple[int, str]]:
    out = []
    for path in _sources().values():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    out.append((n, f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"))
    return sorted(out, reverse=True)


def test_no_function_over_eighty_lines() -> None:
    assert not long_functions(), f"functions over {MAX_FUNCTION_LINES} lines: {long_functions()}"


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    """The layer test can fail: a factory file importing eval is reported."""
    probe = tmp_path / "factory" / "probe.py"
    probe.parent.mkdir()
    probe.write_text("from eval.gate import run_gate\nimport cli.app\n")
    known = {**_sources(), "factory.probe": probe}
    deps = _imports(probe, "factory.probe", known)
    assert {"eval.gate", "cli.app"} <= deps
    assert all(_layer(d) > _layer("factory.probe") for d in deps)


if __name__ == "__main__":  # the figures for docs/architecture.md
    for k, v in sorted(folder_shares().items(), key=lambda kv: -kv[1]):
        print(f"{k:8s} {v:6.1%}")
    print("longest functions:", long_functions()[:3] or "none over the limit")
