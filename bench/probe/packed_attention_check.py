"""GPU check of train/packed_attention.py: Unsloth's per-segment SDPA path against the flash varlen path it enables.

Same random packed row (grouped-query heads as in Qwen2.5-3B: 16 query, 2 key/value heads, head size 128), same
upstream gradient: prints the largest output and gradient differences and exits 1 if they exceed bf16 noise.
Run on the GPU machine: python3 bench/probe/packed_attention_check.py
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import unsloth  # noqa: F401  (patches first, as train() does)

# isort: split
import torch
from torch.nn.attention.varlen import varlen_attn
from unsloth.utils import attention_dispatch as dispatch

from train import packed_attention


def main() -> int:
    print("torch", torch.__version__, torch.cuda.get_device_name(0))
    print("varlen_attn", inspect.signature(varlen_attn))
    print("unsloth varlen before:", dispatch._TORCH_VARLEN_ATTN)
    torch.manual_seed(0)
    lengths = [300, 517, 2, 1000, 229]
    total, heads, kv_heads, dim = sum(lengths), 16, 2, 128
    q = torch.randn(1, heads, total, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(1, kv_heads, total, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(1, kv_heads, total, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    grad = torch.randn(total, heads, dim, device="cuda", dtype=torch.bfloat16)

    ref = dispatch._sdpa_packed_segments(q, k, v, tuple(lengths), n_groups=heads // kv_heads, is_causal=True,
                                         sliding_window=None, sdpa_kwargs={}, training=True)[0]
    ref.backward(grad)
    ref_grads = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None

    print("shim enabled:", packed_attention.enable(), "lean:", dispatch._LEAN_VARLEN)
    print("dispatch takes varlen:", dispatch._torch_varlen_takes(q, k, v, {}, True, None),
          "beats segments:", dispatch._torch_varlen_beats_segments(q, k, tuple(lengths), heads // kv_heads, True))
    flat = [t.squeeze(0).transpose(0, 1).contiguous() for t in (q, k, v)]
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], device="cuda", dtype=torch.int32)
    out = dispatch._varlen_attn_call(*flat, cu, max(lengths), scale=None, window_size=(-1, 0), enable_gqa=True)
    out.backward(grad)
    diffs = {"out": (out - ref).abs().max().item()}
    for name, t, r in zip("qkv", (q, k, v), ref_grads, strict=True):
        diffs[f"d{name}"] = (t.grad - r).abs().max().item() / max(r.abs().max().item(), 1e-6)
    print("max |varlen - segments|: out", f"{diffs['out']:.4g}", "grads (relative to max):",
          {k: f"{v:.4g}" for k, v in diffs.items() if k != "out"})
    ok = diffs["out"] < 2e-2 and all(diffs[f"d{n}"] < 2e-2 for n in "qkv")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
