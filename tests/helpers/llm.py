"""Shared, expensive things for the LLM generation tests: recipes, a real llama-cpp-python server, one reference build.

The reference build is memoized in-process (not a pytest fixture) so test_llm_generation.py and test_resume.py share
it whatever order they run in. Everything runs the real SmolLM2-135M-Instruct GGUF on one thread: on this 2-core
machine, under other load, llama.cpp with 2 threads ran ~20x slower than with 1 (docs/generation.md).
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
KNOWLEDGE = ROOT / "recipes" / "knowledge"
N_THREADS = 1

PERSONAS = [
    {"id": "beginner", "description": "someone new to training", "intro": ["I'm new to the gym"],
     "goals": ["build some muscle"], "populations": ["beginners"]},
    {"id": "busy_professional", "description": "a professional with little time to train",
     "intro": ["I work long hours"], "goals": ["stay in shape with little time"]},
]


def recipe_dict(name: str, *, generator: dict[str, Any], total: int = 6, turn_mix: dict[int, float] | None = None,
                **extra: Any) -> dict[str, Any]:
    """A small recipe over the real knowledge base; filters that load embedding models are off to save CPU."""
    data: dict[str, Any] = {
        "name": name, "total": total, "seed": 7,
        "categories": {"exercise_technique": 50, "programming": 50, "nutrition": 0, "recovery": 0,
                       "motivation": 0, "special_populations": 0},
        "personas": PERSONAS, "turn_mix": turn_mix or {1: 0.5, 2: 0.5},
        "knowledge": [str(KNOWLEDGE)],
        "generator": generator,
        "dedupe": {"exact": True, "semantic_threshold": None},
        "decontamination": {"semantic_threshold": None},
        "splits": {"train": 0.8, "test": 0.2},
        "formats": ["sharegpt", "alpaca"],
    }
    data.update(extra)
    return data


def llama_generator(**over: Any) -> dict[str, Any]:
    gen = {"backend": "llama_cpp", "temperature": 0.0, "max_new_tokens": 80, "user_max_new_tokens": 40,
           "n_threads": N_THREADS, "n_ctx": 1024}
    gen.update(over)
    return gen


def write_recipe(folder: Path, data: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def reference_build(folder: Path) -> tuple[Path, Path]:
    """The uninterrupted in-process build every resume test compares against: (recipe, out folder)."""
    from factory.build import build_dataset

    recipe = write_recipe(folder, recipe_dict("llm-reference", generator=llama_generator()))
    build_dataset(recipe, folder / "out")
    return recipe, folder / "out"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def llama_server(model: Path, *, n_threads: int = N_THREADS, n_ctx: int = 1024) -> Iterator[str]:
    """A real ``python -m llama_cpp.server`` on a free loopback port; yields its /v1 base URL, stops it after."""
    port = free_port()
    log = Path(tempfile.mkdtemp(prefix="forma-llama-server-")) / f"server-{port}.log"
    with log.open("w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host",
                                 "127.0.0.1", "--port", str(port), "--n_threads", str(n_threads),
                                 "--n_threads_batch", str(n_threads), "--n_ctx", str(n_ctx)],
                                stdout=fh, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.time() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited: {log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{base}/models", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError("llama_cpp.server did not come up in 120 s")
            time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    import json

    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
