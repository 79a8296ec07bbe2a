"""GPU check: packed causal attention through FlashAttention-4's CuTe DSL kernels for Hopper (`flash_attn.cute`,
`FlashAttentionForwardSm90` / `FlashAttentionBackwardSm90`, compiled at run time by NVIDIA's CUTLASS DSL) against
aten's flash varlen kernel (FlashAttention-2, what forma runs).

Why: attention is ~73 ms of a ~0.84 s step in the H200 trace of `forma train` (FlashAttention-2 at ~119 TFLOP/s
on chats of ~320 tokens). FlashAttention-2 uses none of Hopper's warpgroup instructions or TMA; FlashAttention-3
has no wheel and needs an hours-long CUDA build, and FlexAttention's backward was slower than FlashAttention-2
here (`flex_attention_check.py`). FlashAttention-4 is Python on top of the CUTLASS DSL, whose compiler ships as
wheels (`nvidia-cutlass-dsl`), so it can be carried to the GPU machine without a build.

Same shapes and chats as `attention_backends_check.py` (16 query heads, 2 K/V heads, head size 128, 32,768
tokens in chats of mean ~320). Forward, and forward + backward through autograd, timed with triton's do_bench
after a first call that compiles (timed separately); output and the three input gradients compared with
FlashAttention-2's (largest difference relative to the largest value).

Run on the GPU machine with FlashAttention-4's sources and its wheels on the path:
    python3 bench/probe/fa4_attention_check.py
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attention_backends_check import D, flash, packed_case, rel


def main() -> int:
    print("torch", torch.__version__, torch.cuda.get_device_name(0))
    from flash_attn.cute import flash_attn_varlen_func

    _, cu, max_len, fwd_flops, q, k, v, grad = packed_case()
    ref = flash(q, k, v, cu, max_len, grad)
    results: dict[str, Any] = {}

    def record(name: str, fn: Any) -> None:
        try:
            t0 = time.perf_counter()
            got = fn(grad)
            torch.cuda.synchronize()
            first_s = time.perf_counter() - t0
            diffs = {n: float(f"{rel(a, b):.2e}") for n, a, b in zip(("out", "dq", "dk", "dv"), got, ref,
                                                                      strict=True)}
            f_ms = do_bench(lambda: fn(None), warmup=10, rep=200)
            a_ms = do_bench(lambda: fn(grad), warmup=10, rep=200)
        except Exception as exc:  # a failure is a result: print why
            results[name] = {"error": f"{type(exc).__name__}: {exc}"[:600]}
            print(f"{name}: FAILED {results[name]['error']}")
            traceback.print_exc(limit=6, file=sys.stdout)
            return
        results[name] = {"forward_ms": round(f_ms, 4), "forward_backward_ms": round(a_ms, 4),
                         "forward_tflops": round(fwd_flops / f_ms / 1e9, 1),
                         "all_tflops": round(3.5 * fwd_flops / a_ms / 1e9, 1),
                         "first_call_s": round(first_s, 2), "diff": diffs}
        print(f"{name}: forward {f_ms:.3f} ms ({fwd_flops / f_ms / 1e9:.0f} TFLOP/s), forward + backward "
              f"{a_ms:.3f} ms ({3.5 * fwd_flops / a_ms / 1e9:.0f} TFLOP/s); x 36 = {36 * a_ms:.1f} ms a step; "
              f"first call {first_s:.1f} s; largest difference from FlashAttention-2 {diffs}", flush=True)

    record("flash varlen (aten, FlashAttention-2)", lambda gr: flash(q, k, v, cu, max_len, gr))

    def fa4(gr: torch.Tensor | None, pack_gqa: bool | None = None) -> tuple[torch.Tensor, ...]:
        if gr is None:
            with torch.no_grad():
                out, _ = flash_attn_varlen_func(q, k, v, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=max_len,
                                                max_seqlen_k=max_len, softmax_scale=D ** -0.5, causal=True,
                                                pack_gqa=pack_gqa)
            return (out,)
        leaves = [x.detach().requires_grad_() for x in (q, k, v)]
        out, _ = flash_attn_varlen_func(*leaves, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=max_len,
                                        max_seqlen_k=max_len, softmax_scale=D ** -0.5, causal=True,
                                        pack_gqa=pack_gqa)
        out.backward(gr)
        return (out.detach(), *[x.grad for x in leaves])  # type: ignore[misc]

    record("FlashAttention-4 varlen (CuTe DSL, sm90), default", fa4)
    record("FlashAttention-4 varlen, pack_gqa=False", lambda gr: fa4(gr, pack_gqa=False))
    record("FlashAttention-4 varlen, pack_gqa=True", lambda gr: fa4(gr, pack_gqa=True))
    record("flash varlen (aten, FlashAttention-2), again", lambda gr: flash(q, k, v, cu, max_len, gr))
    # What Unsloth's packed path would run: the same aten flash ops, with torch's flash impl swapped to FA4
    # (torch.nn.attention.activate_flash_attention_impl, which Unsloth's UNSLOTH_FLASH_ATTENTION_IMPL=auto does
    # inside trainer.train() on sm90 when flash_attn.cute imports).
    try:
        from torch.nn.attention import activate_flash_attention_impl, list_flash_attention_impls

        print("torch flash impls:", list_flash_attention_impls())
        activate_flash_attention_impl("FA4")
        record("aten flash varlen ops with torch's flash impl = FA4", lambda gr: flash(q, k, v, cu, max_len, gr))
    except Exception as exc:  # a failure is a result: print why
        results["aten flash varlen ops with torch's flash impl = FA4"] = {"error": f"{type(exc).__name__}: {exc}"}
        traceback.print_exc(limit=6, file=sys.stdout)
    print("RESULT " + json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
