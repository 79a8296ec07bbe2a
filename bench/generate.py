"""Generation throughput: the Forma LLM pipeline against bare llama-cpp-python on the same prompts, and an
OpenAI-compatible server (llama-cpp-python's) at 1, 2 and 4 concurrent requests.

    python bench/generate.py --slots 6 --threads 1 --max-new-tokens 64 --json bench/generate.json

Pipeline: ``LLMGenerator.generate_batch`` (distilabel's LlamaCppLLM, the SQLite cache with a fresh file, strict
parsing, grounding). Bare: ``llama_cpp.Llama.create_chat_completion`` on exactly the requests the pipeline made
(read back from its cache), same sampling parameters, same model settings. The two alternate A-B-B-A so that a
change in machine load during the run weighs on both alike. Tokens/s counts generated tokens over wall time.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common.model_paths import smollm2_gguf  # noqa: E402
from factory.generators.cache import LLMCache  # noqa: E402
from factory.generators.llm import (  # noqa: E402
    LlamaCppTeacher,
    LLMGenerator,
    OpenAICompatibleTeacher,
)
from factory.planner import Planner  # noqa: E402
from factory.recipe_loader import load_recipe  # noqa: E402


def _recipe(tmp: Path, max_new_tokens: int, threads: int) -> Path:
    import yaml

    data = yaml.safe_load((ROOT / "recipes" / "forma-fitness-llm.yaml").read_text())
    data["knowledge"] = [str(ROOT / "recipes" / "knowledge")]
    data["behaviour_knowledge"] = [str(ROOT / "recipes" / "behaviours")]
    data["generator"].update(max_new_tokens=max_new_tokens, user_max_new_tokens=min(40, max_new_tokens),
                             n_threads=threads)
    data["turn_mix"] = {1: 1.0}
    path = tmp / "bench-recipe.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def run_pipeline(loaded: Any, teacher: LlamaCppTeacher, slots: list[Any], cache_file: Path) -> dict[str, Any]:
    teacher.cache = LLMCache(cache_file)
    generator = LLMGenerator(loaded, teacher)
    started = time.perf_counter()
    results = generator.generate_batch(slots)
    wall = time.perf_counter() - started
    rows = teacher.cache._db.execute("SELECT request, output_tokens FROM replies ORDER BY created").fetchall()
    tokens = sum(r[1] or 0 for r in rows)
    return {"wall_s": wall, "tokens": tokens, "calls": len(rows), "tok_s": tokens / wall,
            "kept": sum(1 for r in results if not isinstance(r, Exception)),
            "requests": [json.loads(r[0]) for r in rows]}


def run_bare(llm: Any, requests: list[dict[str, Any]]) -> dict[str, Any]:
    tokens = 0
    started = time.perf_counter()
    for req in requests:
        p = req["params"]
        llm.reset()
        out = llm.create_chat_completion(messages=req["messages"], max_tokens=p["max_new_tokens"],
                                         temperature=p["temperature"], top_p=1.0, seed=p["seed"],
                                         repeat_penalty=p.get("repeat_penalty", 1.0))
        tokens += out["usage"]["completion_tokens"]
    wall = time.perf_counter() - started
    return {"wall_s": wall, "tokens": tokens, "calls": len(requests), "tok_s": tokens / wall}


def bench_local(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from llama_cpp import Llama

    loaded = load_recipe(_recipe(tmp, args.max_new_tokens, args.threads))
    slots = Planner(loaded).plan(args.slots)[: args.slots]
    model = smollm2_gguf()
    teacher = LlamaCppTeacher(model, n_ctx=2048, n_threads=args.threads, cache=None, recipe_path=loaded.path)
    bare = Llama(model_path=str(model), n_ctx=2048, n_threads=args.threads, n_threads_batch=args.threads,
                 n_gpu_layers=-1, verbose=False, seed=4294967295)
    runs: dict[str, list[dict[str, Any]]] = {"pipeline": [], "bare": []}
    first = run_pipeline(loaded, teacher, slots, tmp / "c0.sqlite")
    requests = first.pop("requests")
    runs["pipeline"].append(first)
    runs["bare"].append(run_bare(bare, requests))
    runs["bare"].append(run_bare(bare, requests))
    second = run_pipeline(loaded, teacher, slots, tmp / "c1.sqlite")
    second.pop("requests")
    runs["pipeline"].append(second)
    teacher.close()
    bare.close()
    pipe_tps = sum(r["tokens"] for r in runs["pipeline"]) / sum(r["wall_s"] for r in runs["pipeline"])
    bare_tps = sum(r["tokens"] for r in runs["bare"]) / sum(r["wall_s"] for r in runs["bare"])
    return {"runs": runs, "pipeline_tok_s": pipe_tps, "bare_tok_s": bare_tps,
            "overhead_pct": 100.0 * (1 - pipe_tps / bare_tps), "same_tokens":
            runs["pipeline"][0]["tokens"] == runs["bare"][0]["tokens"], "requests": len(requests)}


def bench_server(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    from tests.helpers.llm import llama_server

    loaded = load_recipe(_recipe(tmp, args.max_new_tokens, args.threads))
    slots = Planner(loaded).plan(args.server_requests)[: args.server_requests]
    import random

    from factory.generators.prompts import assistant_system, plan_turns

    requests = []
    for slot in slots:
        plan = plan_turns(slot, random.Random(slot.seed))[0]
        system = assistant_system(loaded.recipe.system_prompt, slot.persona, slot.category.value, plan, 0, 1)
        requests.append(([{"role": "system", "content": system}, {"role": "user", "content": plan.question}],
                         {"temperature": 0.0, "max_new_tokens": args.max_new_tokens, "seed": slot.seed,
                          "repeat_penalty": 1.1}))
    out: dict[str, Any] = {}
    with llama_server(smollm2_gguf(), n_threads=args.threads, n_ctx=2048) as base_url:
        for concurrency in (1, 2, 4):
            teacher = OpenAICompatibleTeacher(model="smollm2", base_url=base_url, api_key_env="NO_KEY",
                                              max_retries=2, timeout=600, concurrency=concurrency, cache=None,
                                              recipe_path=loaded.path)
            started = time.perf_counter()
            replies = teacher.chat_many(requests)
            wall = time.perf_counter() - started
            tokens = sum(r.output_tokens or 0 for r in replies)
            out[str(concurrency)] = {"wall_s": wall, "tokens": tokens, "tok_s": tokens / wall,
                                     "requests": len(requests)}
            teacher.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slots", type=int, default=6, help="single-turn slots for the pipeline-vs-bare run")
    parser.add_argument("--server-requests", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--skip-server", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        result: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}}
        result["local"] = bench_local(args, tmp)
        loc = result["local"]
        print(f"pipeline {loc['pipeline_tok_s']:.1f} tok/s, bare llama-cpp-python {loc['bare_tok_s']:.1f} tok/s, "
              f"overhead {loc['overhead_pct']:.1f}% over {loc['requests']} requests x2 (A-B-B-A); "
              f"same tokens: {loc['same_tokens']}")
        if not args.skip_server:
            result["server"] = bench_server(args, tmp)
            for c, r in result["server"].items():
                print(f"server, {c} concurrent: {r['tok_s']:.1f} tok/s ({r['tokens']} tokens, {r['wall_s']:.1f} s)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
