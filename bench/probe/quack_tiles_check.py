"""GPU check: which tile each of the ``quack`` MLP design's four products runs fastest with on this card.

Why: train/fused_mlp_gated.py runs quack's gated products with quack's default Hopper tile (128 x 192, pingpong,
cluster 2 x 1) and the two plain products (``h dn``, ``dx gu``) with cuBLAS. At one layer of Qwen2.5-3B at 32,768
tokens the backward's ``gemm_dgated`` ran at ~487 TFLOP/s against ~720 for a plain product of its shape (its epilogue
reads the pre-activation and writes two gradients and h: ~3.6 GB), and the forward's ``gemm_gated`` at ~652: the
tile decides how well the epilogue's memory traffic hides behind the main loop. The plain products have N = 2,064
and 2,080 (the LoRA columns), which a 256-wide tile covers with a ninth, mostly empty column of tiles.

This runs quack's own autotuner on each product at the real shapes (it compiles every Hopper candidate in parallel
worker processes), then times every candidate again here with ``triton.testing.do_bench`` (medians), next to the
default tile and cuBLAS, and writes the fastest few per product as JSON that ``FORMA_QUACK_TILES`` reads (the
warm-up then times them against the default on the model's own shapes and keeps the fastest).

Run on the GPU machine with bench/pack_fa4.sh's archive on PYTHONPATH (quack's autotuner took ~200 s a product on
the H200 with QUACK_COMPILE_WORKERS=14, so name a few products per command under a 10-minute limit):
    python3 bench/probe/quack_tiles_check.py OUT.json [gated dgated down dgrad]
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch
from triton.testing import do_bench

from train import fused_mlp_gated as gq

T, D, N, R = 32768, 2048, 11008, 16
KEEP = 3  # candidates per product written out


def med(fn: Any) -> float:
    return float(do_bench(fn, warmup=10, rep=100, return_mode="median"))


def hopper_configs(epilogue: str | None) -> list[Any]:
    from quack.gemm_config import get_all_configs

    return [c for c in get_all_configs(epilogue) if c.device_capacity == 9]


def main() -> int:
    from quack.gemm_interface import default_config, gemm_dgated_tuned, gemm_gated_tuned, gemm_tuned

    out_path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("quack_tiles.json")
    wanted = sys.argv[2:] or list(gq.PRODUCTS)
    if set(wanted) - set(gq.PRODUCTS):
        unknown = ", ".join(sorted(set(wanted) - set(gq.PRODUCTS)))
        raise SystemExit(f"products are {', '.join(gq.PRODUCTS)}, not {unknown}")
    torch.manual_seed(0)
    dev = {"device": "cuda", "dtype": torch.bfloat16}
    Wg, Wu = torch.randn(N, D, **dev) * D ** -0.5, torch.randn(N, D, **dev) * D ** -0.5
    Wd = torch.randn(D, N, **dev) * N ** -0.5
    gu, dn = gq.packed_weights(Wg, Wu, Wd, R)
    gq.refresh(gu, dn, torch.randn(N, R, **dev) * 0.05, torch.randn(N, R, **dev) * 0.05,
               torch.randn(R, N, **dev) * 0.05, (1.0, 1.0, 1.0))
    K = gu.shape[2]
    Xc = torch.randn(T, K, **dev)  # [X, X A_gu^T]
    dYc = torch.randn(T, D + R, **dev)  # [dY, dY B_d]
    pre, h = torch.empty(T, 2 * N, **dev), torch.empty(T, N, **dev)
    dx, h2 = torch.empty(T, 2 * N, **dev), torch.empty(T, N, **dev)
    full_dn, full_gu = torch.empty(T, D + R, **dev), torch.empty(T, K, **dev)
    B_gated, B_dgated, B_gu = gu.view(2 * N, K).t(), dn.t(), gu.view(2 * N, K)
    gemm_gated_tuned.fn(Xc, B_gated, pre, h, activation="swiglu", config=None)  # a real pre-activation for dgated
    hsrc = h.clone()

    products: dict[str, tuple[Any, list[Any], Any, float]] = {
        # name: (call with a config, candidates, the baseline (cuBLAS or the default tile), FLOPs)
        "gated": (lambda c: gemm_gated_tuned.fn(Xc, B_gated, pre, h, activation="swiglu", config=c),
                  hopper_configs("gated"), None, 2.0 * T * K * 2 * N),
        "dgated": (lambda c: gemm_dgated_tuned.fn(dYc, B_dgated, pre, dx, h2, activation="swiglu", config=c),
                   hopper_configs("dgated"), None, 2.0 * T * (D + R) * N),
        "down": (lambda c: gemm_tuned.fn(hsrc, dn, full_dn, config=c), hopper_configs(None),
                 lambda: torch.mm(hsrc, dn, out=full_dn), 2.0 * T * N * (D + R)),
        "dgrad": (lambda c: gemm_tuned.fn(dx, B_gu, full_gu, config=c), hopper_configs(None),
                  lambda: torch.mm(dx, B_gu, out=full_gu), 2.0 * T * 2 * N * K),
    }
    # what the LoRA columns cost the plain products: cuBLAS on the same products without them
    extra = {"down": lambda: torch.mm(hsrc, dn[:, :D]), "dgrad": lambda: torch.mm(dx, B_gu[:, :D])}
    found: dict[str, list[dict[str, Any]]] = {}
    summary: dict[str, Any] = {"device": torch.cuda.get_device_name(), "tokens": T, "products": {}}
    for name, (call, configs, cublas, flops) in products.items():
        if name not in wanted:  # its inputs are still made above: dgated reads gated's pre-activation
            continue
        started = time.perf_counter()
        call(default_config(Xc.device))
        torch.cuda.synchronize()
        first_compile = time.perf_counter() - started
        # quack's autotuner compiles the candidates in parallel worker processes into its object cache; the loop
        # below then loads each from there and times it the same way as the baselines
        tuned = {"gated": lambda: gemm_gated_tuned(Xc, B_gated, pre, h, activation="swiglu"),
                 "dgated": lambda: gemm_dgated_tuned(dYc, B_dgated, pre, dx, h2, activation="swiglu"),
                 "down": lambda: gemm_tuned(hsrc, dn, full_dn),
                 "dgrad": lambda: gemm_tuned(dx, B_gu, full_gu)}[name]
        started = time.perf_counter()
        try:
            tuned()
            torch.cuda.synchronize()
        except Exception as exc:
            print(f"{name}: quack's autotuner failed: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
        tune_s = time.perf_counter() - started
        rows: list[tuple[float, Any]] = []
        for config in configs:
            try:
                rows.append((med(lambda c=config, run=call: run(c)), config))
            except Exception as exc:
                print(f"{name} {config}: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
        rows.sort(key=lambda row: row[0])
        default_tile = None if name in ("gated", "dgated") else default_config(Xc.device)
        default_ms = med(lambda c=default_tile, run=call: run(c))
        base_ms = med(cublas) if cublas else default_ms
        print(f"\n{name}: first compile {first_compile:.1f} s, quack's autotune {tune_s:.1f} s; "
              f"{'cuBLAS' if cublas else 'default tile'} {base_ms:.3f} ms ({flops / base_ms / 1e9:.0f} TF/s)",
              flush=True)
        if name in extra:
            no_lora = med(extra[name])
            print(f"  cuBLAS without the LoRA columns: {no_lora:.3f} ms", flush=True)
        for ms, config in rows:
            print(f"  {ms:7.3f} ms {flops / ms / 1e9:5.0f} TF/s {ms / base_ms - 1:+6.1%}  {config}", flush=True)
        found[name] = [dataclasses.asdict(config) for ms, config in rows[:KEEP] if ms < base_ms]
        summary["products"][name] = {
            "baseline": "cuBLAS" if cublas else "quack default tile", "baseline_ms": round(base_ms, 4),
            "default_tile_ms": round(default_ms, 4), "first_compile_s": round(first_compile, 1),
            "autotune_s": round(tune_s, 1),
            "best": [{"ms": round(ms, 4), "config": dataclasses.asdict(c)} for ms, c in rows[:KEEP]]}
        # written after each product, so a run cut short still leaves what it found
        out_path.write_text(json.dumps(found, indent=1) + "\n")
        summary_path = out_path.with_name(out_path.stem + "-summary.json")
        summary_path.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"\nwrote {out_path} and {summary_path}; QUACK_COMPILE_WORKERS={os.environ.get('QUACK_COMPILE_WORKERS')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
