"""GPU check: packed causal attention through torch's FlexAttention (a Triton kernel compiled by Inductor, which
uses Hopper's warpgroup matrix instructions) against aten's flash varlen kernel (FlashAttention-2, what forma runs).

Why: attention is ~73 ms of a ~0.84 s step in the H200 trace of `forma train` (FlashAttention-2 at ~119 TFLOP/s on
chats of ~320 tokens). FlashAttention-3 is not in the GPU image and cuDNN's varlen path fails in torch 2.11, so
FlexAttention, which ships with torch, is the remaining candidate. A packed row becomes one sequence with a
document-causal block mask (a key is seen by a query of the same chat at or after it); blocks outside every chat
are skipped, partial blocks are masked.

Same shapes and chats as `attention_backends_check.py` (16 query heads, 2 K/V heads, head size 128, 32,768 tokens
in chats of mean ~320). For each setting: forward, and forward + backward through autograd, timed with
triton's do_bench; output and the three input gradients compared with flash's; the block mask's build time too,
since a training step would make one per packed row.

Run on the GPU machine (torch only): python3 bench/probe/flex_attention_check.py
"""

from __future__ import annotations

import json
import sys
import traceback
from pathlib import Path
from typing import Any

import torch
from torch.nn.attention.flex_attention import create_block_mask, flex_attention
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attention_backends_check import TOKENS, D, flash, packed_case, rel


def main() -> int:
    print("torch", torch.__version__, torch.cuda.get_device_name(0))
    lengths, cu, max_len, fwd_flops, q, k, v, grad = packed_case()
    doc = torch.repeat_interleave(torch.arange(len(lengths), device="cuda"),
                                  torch.tensor(lengths, device="cuda"))

    def document_causal(b: Any, h: Any, q_idx: Any, kv_idx: Any) -> Any:
        return (doc[q_idx] == doc[kv_idx]) & (q_idx >= kv_idx)

    ref = flash(q, k, v, cu, max_len, grad)
    t_fwd = do_bench(lambda: flash(q, k, v, cu, max_len, None), warmup=10, rep=200)
    t_all = do_bench(lambda: flash(q, k, v, cu, max_len, grad), warmup=10, rep=200)
    results: dict[str, Any] = {"flash varlen (FlashAttention-2)": {
        "forward_ms": round(t_fwd, 4), "forward_backward_ms": round(t_all, 4),
        "forward_tflops": round(fwd_flops / t_fwd / 1e9, 1)}}
    print(f"flash varlen: forward {t_fwd:.3f} ms ({fwd_flops / t_fwd / 1e9:.0f} TFLOP/s), forward + backward "
          f"{t_all:.3f} ms; x 36 = {36 * t_all:.1f} ms a step")

    flex = torch.compile(flex_attention, dynamic=False)
    settings: list[tuple[str, int, dict[str, Any]]] = [
        ("mask blocks 128, default kernel options", 128, {}),
        ("mask blocks 64, default kernel options", 64, {}),
        ("mask blocks 128, BLOCK_M 128 BLOCK_N 64, 8 warps, 3 stages", 128,
         {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3}),
        ("mask blocks 128, BLOCK_M 128 BLOCK_N 128, 8 warps, 2 stages", 128,
         {"BLOCK_M": 128, "BLOCK_N": 128, "num_warps": 8, "num_stages": 2}),
        ("mask blocks 64, BLOCK_M 64 BLOCK_N 64, 4 warps, 3 stages", 64,
         {"BLOCK_M": 64, "BLOCK_N": 64, "num_warps": 4, "num_stages": 3}),
        ("mask blocks 128, TMA", 128, {"USE_TMA": True}),
    ]
    for name, block, options in settings:
        try:
            t_mask = do_bench(lambda block=block: create_block_mask(  # type: ignore[misc]
                document_causal, 1, None, TOKENS, TOKENS, device="cuda", BLOCK_SIZE=block), warmup=5, rep=50)
            mask = create_block_mask(document_causal, 1, None, TOKENS, TOKENS, device="cuda", BLOCK_SIZE=block)
            sparsity = float(mask.sparsity())

            def run(gr: torch.Tensor | None, mask: Any = mask, options: dict[str, Any] = options
                    ) -> tuple[torch.Tensor, ...]:
                # [T, H, D] -> [1, H, T, D] views, as a projection's output would be handed over
                leaves = [x.unsqueeze(0).transpose(1, 2) for x in (q, k, v)]
                if gr is None:
                    with torch.no_grad():
                        out = flex(*leaves, block_mask=mask, scale=D ** -0.5, enable_gqa=True,
                                   kernel_options=options or None)
                    return (out[0].transpose(0, 1),)
                leaves = [x.detach().requires_grad_() for x in leaves]
                out = flex(*leaves, block_mask=mask, scale=D ** -0.5, enable_gqa=True,
                           kernel_options=options or None)
                out.backward(gr.unsqueeze(0).transpose(1, 2))
                grads = [x.grad[0].transpose(0, 1) for x in leaves]  # type: ignore[index]
                return (out.detach()[0].transpose(0, 1), *grads)

            got = run(grad)
            diffs = {n: float(f"{rel(a, b):.2e}") for n, a, b in zip(("out", "dq", "dk", "dv"), got, ref,
                                                                      strict=True)}
            f_ms = do_bench(lambda run=run: run(None), warmup=10, rep=200)  # type: ignore[misc]
            a_ms = do_bench(lambda run=run: run(grad), warmup=10, rep=200)  # type: ignore[misc]
        except Exception as exc:  # a setting that fails is a result: print why
            results[name] = {"error": f"{type(exc).__name__}: {exc}"[:400]}
            print(f"{name}: FAILED {results[name]['error']}")
            traceback.print_exc(limit=3, file=sys.stdout)
            continue
        results[name] = {"forward_ms": round(f_ms, 4), "forward_backward_ms": round(a_ms, 4),
                         "forward_tflops": round(fwd_flops / f_ms / 1e9, 1), "mask_build_ms": round(t_mask, 3),
                         "mask_sparsity_pct": round(sparsity, 1), "diff": diffs}
        print(f"{name}: forward {f_ms:.3f} ms ({fwd_flops / f_ms / 1e9:.0f} TFLOP/s), forward + backward "
              f"{a_ms:.3f} ms ({t_all / a_ms:.2f}x flash); x 36 = {36 * a_ms:.1f} ms a step; mask build "
              f"{t_mask:.2f} ms, {sparsity:.1f}% of blocks skipped; largest difference from flash {diffs}")
    print("RESULT " + json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
