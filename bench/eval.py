"""Benchmark the eval harness on 2 cores.

1. Overhead: the same prompts through bare llama-cpp-python and through the harness (GGUFRunner + scoring), in one
   process, same model, same greedy settings; reports both wall times and the overhead (target <= 10%).
2. The whole gate (every default suite, the demo policy, the learned scorer, report written) on the SmolLM2 GGUF;
   target <= 10 minutes. It uses a q8_0 made by ``export.gguf_export.export_gguf`` when ``--q8`` is given and that
   works, else the shipped Q4_1. ``--gate-vs-bare`` also generates every one of the gate's answers with a bare
   ``Llama.create_chat_completion`` loop (same messages, same max_tokens), once as one context with every thread and
   once laid out as the gate lays it out (one 1-thread context per core, side by side), and reports gate wall / bare
   wall against each: the whole harness (loading, multiple-choice scoring, the scorer, the report) against
   generation alone.

    python bench/eval.py [--prompts 24] [--max-tokens 128] [--q8] [--skip-gate] [--gate-vs-bare] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# bench/export.py would shadow the namespace package export/ (a module beats a namespace package on sys.path)
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _bare(model: Path, prompts: list[str], max_tokens: int, threads: int) -> tuple[float, list[str]]:
    from llama_cpp import Llama

    llm: Any = Llama(model_path=str(model), n_ctx=2048, n_threads=threads, n_threads_batch=threads, seed=0,
                     verbose=False)
    texts = []
    start = time.perf_counter()
    for p in prompts:
        out = llm.create_chat_completion(messages=[{"role": "user", "content": p}], temperature=0.0,
                                         max_tokens=max_tokens, seed=0)
        texts.append(str(out["choices"][0]["message"]["content"] or ""))
    elapsed = time.perf_counter() - start
    llm.close()
    return elapsed, texts


def _harness(model: Path, cases: list, max_tokens: int, threads: int) -> tuple[float, list[str]]:
    from eval.gate import run_cases
    from eval.runners import GGUFRunner

    runner = GGUFRunner(model, n_threads=threads, workers=1)  # the bare loop's layout: overhead alone, like for like
    start = time.perf_counter()
    rows = run_cases(runner, cases, max_tokens)
    elapsed = time.perf_counter() - start
    runner.close()
    return elapsed, [r["response"] for r in rows]


def overhead(model: Path, n: int, max_tokens: int, threads: int, rounds: int) -> dict:
    from schemas.eval_suite import load_suites

    suites = load_suites(names=["safety"])
    cases = [c.model_copy(update={"max_tokens": max_tokens}) for c in suites["safety"].cases[:n]]
    prompts = [c.prompt for c in cases]
    bare_t, harness_t = [], []
    same = True
    for _ in range(rounds):  # alternate order so neither side always runs on a warmer machine
        b, btexts = _bare(model, prompts, max_tokens, threads)
        h, htexts = _harness(model, cases, max_tokens, threads)
        bare_t.append(b)
        harness_t.append(h)
        same = same and btexts == htexts
    b, h = min(bare_t), min(harness_t)
    return {"prompts": n, "max_tokens": max_tokens, "rounds": rounds, "bare_s": round(b, 2), "harness_s": round(h, 2),
            "overhead_pct": round(100 * (h / b - 1), 1), "identical_outputs": same,
            "bare_all_s": [round(x, 2) for x in bare_t], "harness_all_s": [round(x, 2) for x in harness_t]}


def q8_model(work: Path) -> Path | None:
    try:
        from common.model_paths import smollm2_hf
        from export.gguf_export import export_gguf

        result = export_gguf(smollm2_hf(), work / "export", quants=["q8_0"], verify=False)
        found = sorted((work / "export").glob("*q8_0*.gguf")) + sorted((work / "export").glob("*Q8_0*.gguf"))
        del result
        return found[0] if found else None
    except Exception as exc:  # the export area may not be ready; the bench says so and uses the shipped Q4_1
        print(f"q8_0 export unavailable ({type(exc).__name__}: {exc}); using the shipped Q4_1", file=sys.stderr)
        return None


DEMO_POLICY = Path(__file__).resolve().parents[1] / "eval" / "policy-demo.yaml"


def whole_gate(model: Path, threads: int, out: Path) -> dict:
    from eval.gate import run_gate

    lines: list[str] = []

    def log(msg: str) -> None:
        lines.append(f"{time.perf_counter() - start:7.1f} s  {msg}")
        print(lines[-1], file=sys.stderr, flush=True)

    start = time.perf_counter()
    outcome = run_gate(str(model), policy=DEMO_POLICY, out_root=out, run="bench", n_threads=threads, log=log)
    wall = time.perf_counter() - start
    s = outcome.report["summary"]
    return {"model": model.name, "wall_s": round(wall, 1), "cases": len(outcome.report["results"]),
            "answers": s["generation"]["answers"], "tokens": s["generation"]["tokens"],
            "generation_s": s["generation"]["generation_seconds"], "passed_demo_policy": outcome.passed,
            "scorer": outcome.report["scorer"]["kind"], "log": lines,
            "scores": {k: v["score"] for k, v in s["suites"].items()}, "report": str(outcome.run_dir / "report.html"),
            "responses": {r["id"]: r["response"] for r in outcome.report["results"] if r["kind"] == "generate"}}


def bare_gate_answers(model: Path, threads: int, workers: int = 1) -> dict:
    """Every answer the gate generates, by bare llama-cpp-python loops: same messages (the gate's system prompt
    included), max_tokens, greedy, seed. ``workers`` > 1: that many ``Llama`` objects of ``threads // workers``
    threads each, each looping over its share of the cases from a Python thread, the layout the gate's
    ``GGUFRunner`` uses by default since #14's v13 round; 1: one ``Llama`` with ``threads`` threads, the plain loop."""
    from concurrent.futures import ThreadPoolExecutor

    from llama_cpp import Llama

    from eval import system_prompt
    from eval.policy import load_policy
    from schemas.eval_suite import load_suites

    pol = load_policy(DEMO_POLICY)
    # the same messages as the gate: its system prompt (the Modelfile's SYSTEM beside the GGUF) on every case
    shipped = system_prompt.resolve(str(model))
    cases = system_prompt.apply([c for s in load_suites(names=list(pol.suites)).values() for c in s.cases
                                 if c.kind == "generate"], shipped)
    start = time.perf_counter()
    per = max(1, threads // workers)
    llms: list[Any] = [Llama(model_path=str(model), n_ctx=2048, n_threads=per, n_threads_batch=per, seed=0,
                             verbose=False) for _ in range(workers)]

    def loop(w: int) -> tuple[dict[str, str], int]:
        texts: dict[str, str] = {}
        tokens = 0
        for c in cases[w::workers]:
            out = llms[w].create_chat_completion(messages=c.messages(), temperature=0.0,
                                                 max_tokens=c.max_tokens or pol.max_tokens, seed=0)
            texts[c.id] = str(out["choices"][0]["message"]["content"] or "")
            tokens += int((out.get("usage") or {}).get("completion_tokens", 0))
        return texts, tokens

    with ThreadPoolExecutor(workers) as pool:
        parts = list(pool.map(loop, range(workers)))
    wall = time.perf_counter() - start
    for llm in llms:
        llm.close()
    texts = {k: v for part, _ in parts for k, v in part.items()}
    return {"answers": len(cases), "tokens": sum(n for _, n in parts), "wall_s": round(wall, 1),
            "workers": workers, "threads_each": per, "texts": texts}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=24)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=0, help="0: 2, or 1 when the cores are busy (auto_threads)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--q8", action="store_true", help="export a q8_0 with export.gguf_export and gate that")
    ap.add_argument("--skip-gate", action="store_true")
    ap.add_argument("--skip-overhead", action="store_true")
    ap.add_argument("--gate-vs-bare", action="store_true", help="also generate the gate's answers bare and compare")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    from common.model_paths import smollm2_gguf
    from eval.runners import auto_threads

    args.threads = args.threads or auto_threads()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    model = smollm2_gguf()
    result: dict = {"cpu_count": os.cpu_count(), "threads": args.threads, "loadavg_start": os.getloadavg()}
    if not args.skip_overhead:
        result["overhead"] = overhead(model, args.prompts, args.max_tokens, args.threads, args.rounds)
        print(json.dumps(result["overhead"]), flush=True)
    if not args.skip_gate:
        with tempfile.TemporaryDirectory() as tmp:
            gate_model = (q8_model(Path(tmp)) if args.q8 else None) or model
            bares: dict[str, dict] = {}
            if args.gate_vs_bare:
                # the plain loop (one context, every thread) and the gate's own layout (one 1-thread context per
                # core, side by side): the first says what the harness costs against the obvious script, the
                # second what it adds over bare generation laid out as it lays it out
                for name, workers in (("one_context", 1), ("side_by_side", args.threads)):
                    if name == "side_by_side" and workers <= 1:
                        continue
                    bares[name] = bare_gate_answers(gate_model, args.threads, workers)
                    print(json.dumps({name: {k: v for k, v in bares[name].items() if k != "texts"}}), flush=True)
            gate = whole_gate(gate_model, args.threads, Path(tmp) / "reports")
            responses = gate.pop("responses")
            for name, bare in bares.items():
                gate[f"bare_{name}"] = {k: v for k, v in bare.items() if k != "texts"}
                gate[f"identical_answers_{name}"] = sum(responses.get(k) == v for k, v in bare["texts"].items())
                gate[f"ratio_gate_over_bare_{name}"] = round(gate["wall_s"] / bare["wall_s"], 3)
            result["gate"] = gate
            print(json.dumps(result["gate"]), flush=True)
    result["loadavg_end"] = os.getloadavg()
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
