"""GPU check: packed (varlen) causal attention through aten's flash kernels (what Unsloth's lean path and forma run)
against aten's cuDNN attention kernels, at a 16-row packed step's shape (Qwen2.5-3B: 16 query heads, 2 K/V heads,
head size 128; ~32,768 tokens in chats of the bench's length distribution).

Why: in the H200 trace of `forma train` attention is ~70 ms of a 0.83 s step (FlashAttention-2 at ~100 TFLOP/s on
chats of ~320 tokens), the largest piece of a step outside the model's own matrix products. torch 2.11 leaves cuDNN
out of varlen attention on Hopper; this measures whether its kernels, called directly with the same cumulative
sequence lengths, would be faster, and whether they agree with flash.

For each backend: forward, and forward + backward, timed with triton's do_bench; outputs and the three input
gradients compared with flash's (largest difference relative to the largest value). cuDNN is tried with the
grouped-query K/V as they are and with K/V heads repeated to 16 (gradients summed back), since torch's varlen
wrapper refuses GQA on cuDNN. A backend that raises is reported with its error, not hidden.

Then the dense route: chats grouped by length (rounded up to 64 or 128 tokens), each group a right-padded batch
through SDPA's cuDNN or flash kernel, with the gathers into the batches and the scatter back timed too (forward and
backward through autograd), so the figure is what a training step would pay.

Run on the GPU machine (torch only, no Unsloth): python3 bench/probe/attention_backends_check.py
"""

from __future__ import annotations

import functools
import json
import sys
import traceback
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from triton.testing import do_bench

TOKENS, HQ, HKV, D = 32768, 16, 2, 128
MEAN_CHAT = 320  # the bench dataset's mean chat length in tokens (bench/results: mean_chat_tokens 318.6)


def chat_lengths(total: int, mean: int, seed: int = 0) -> list[int]:
    """Chat lengths (lognormal around ``mean``, 24..2048) that add up to exactly ``total`` tokens."""
    g = torch.Generator().manual_seed(seed)
    lengths: list[int] = []
    while sum(lengths) < total:
        n = int(torch.empty(1).log_normal_(mean=0.0, std=0.6, generator=g).item() * mean * 0.84)
        lengths.append(max(24, min(2048, n)))
    lengths[-1] -= sum(lengths) - total
    if lengths[-1] < 1:
        lengths.pop()
        lengths[-1] += total - sum(lengths)
    return lengths


def flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor, max_len: int,
          grad: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    out, lse, seed, offset, _ = torch.ops.aten._flash_attention_forward(
        q, k, v, cu, cu, max_len, max_len, 0.0, True, False, scale=D ** -0.5)
    if grad is None:
        return (out,)
    dq, dk, dv = torch.ops.aten._flash_attention_backward(
        grad, q, k, v, out, lse, cu, cu, max_len, max_len, 0.0, True, seed, offset, scale=D ** -0.5)
    return out, dq, dk, dv


def cudnn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor, max_len: int,
          grad: torch.Tensor | None, repeat: bool) -> tuple[torch.Tensor, ...]:
    groups = q.shape[1] // k.shape[1]
    if repeat:
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    res = torch.ops.aten._cudnn_attention_forward(
        query=q, key=k, value=v, attn_bias=None, cum_seq_q=cu, cum_seq_k=cu, max_q=max_len, max_k=max_len,
        compute_log_sumexp=True, dropout_p=0.0, is_causal=True, return_debug_mask=False, scale=D ** -0.5)
    out, lse, seed, offset = res[0], res[1], res[6], res[7]
    if grad is None:
        return (out,)
    dq, dk, dv = torch.ops.aten._cudnn_attention_backward(
        grad_out=grad, query=q, key=k, value=v, out=out, logsumexp=lse, philox_seed=seed, philox_offset=offset,
        attn_bias=torch.empty(0, device=q.device), cum_seq_q=cu, cum_seq_k=cu, max_q=max_len, max_k=max_len,
        dropout_p=0.0, is_causal=True, scale=D ** -0.5)
    if repeat:
        dk = dk.unflatten(1, (-1, groups)).sum(2)
        dv = dv.unflatten(1, (-1, groups)).sum(2)
    return out, dq, dk, dv


class Buckets:
    """Chats grouped by length rounded up to ``step`` tokens, each group a right-padded dense batch.

    Right padding is exact under a causal mask: a chat's tokens never attend to the pad after them, pad rows are
    dropped from the output (so their gradient is zero), and pad keys are seen only by pad rows. Pad slots
    therefore read any token (token 0) instead of a zero row, which would need a copy of Q.
    """

    def __init__(self, lengths: list[int], step: int, device: str = "cuda") -> None:
        starts = [0]
        for n in lengths:
            starts.append(starts[-1] + n)
        groups: dict[int, list[int]] = {}
        for i, n in enumerate(lengths):
            groups.setdefault(-(-n // step) * step, []).append(i)
        self.buckets = []
        tokens_real, slots_real, offset = [], [], 0
        for width, chats in sorted(groups.items()):
            idx = torch.zeros(len(chats), width, dtype=torch.long)
            for row, c in enumerate(chats):
                n = lengths[c]
                idx[row, :n] = torch.arange(starts[c], starts[c] + n)
                tokens_real.append(torch.arange(starts[c], starts[c] + n))
                slots_real.append(offset + row * width + torch.arange(n))
            self.buckets.append((len(chats), width, idx.flatten().to(device)))
            offset += len(chats) * width
        self.tokens = torch.cat(tokens_real).to(device)
        self.slots = torch.cat(slots_real).to(device)
        self.padded = offset

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: Any,
                  gqa: bool) -> torch.Tensor:
        import torch.nn.functional as F
        from torch.nn.attention import sdpa_kernel

        outs = []
        groups = q.shape[1] // k.shape[1]
        for n, width, idx in self.buckets:
            qb, kb, vb = (x.index_select(0, idx).view(n, width, x.shape[1], D).transpose(1, 2) for x in (q, k, v))
            if not gqa:
                kb, vb = kb.repeat_interleave(groups, dim=1), vb.repeat_interleave(groups, dim=1)
            with sdpa_kernel(backend):
                ob = F.scaled_dot_product_attention(qb, kb, vb, is_causal=True, scale=D ** -0.5, enable_gqa=gqa)
            outs.append(ob.transpose(1, 2).reshape(n * width, q.shape[1], D))
        flat = torch.cat(outs)
        return flat.new_zeros(q.shape).index_put((self.tokens,), flat.index_select(0, self.slots))


def bucketed(buckets: Buckets, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grad: torch.Tensor | None,
             backend: Any, gqa: bool) -> tuple[torch.Tensor, ...]:
    """Forward (and backward through autograd) of the bucketed dense path, gathers and scatters included."""
    if grad is None:
        with torch.no_grad():
            return (buckets.attention(q, k, v, backend, gqa),)
    leaves = [x.detach().requires_grad_() for x in (q, k, v)]
    out = buckets.attention(leaves[0], leaves[1], leaves[2], backend, gqa)
    out.backward(grad)
    grads = [x.grad for x in leaves]
    assert all(g is not None for g in grads)
    return (out.detach(), *grads)  # type: ignore[arg-type]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12))


class PackedCase(NamedTuple):
    """The 16-row packed step's attention inputs, shared by the attention probes."""

    lengths: list[int]
    cu: torch.Tensor  # cumulative chat lengths, int32
    max_len: int
    fwd_flops: float  # causal forward FLOPs a layer; the backward is ~2.5x
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    grad: torch.Tensor  # an upstream gradient for the output


def packed_case(device: str = "cuda") -> PackedCase:
    """Chats of the bench's length distribution adding up to TOKENS, random bf16 Q, K, V and output gradient
    (seed 0, so every probe times the same row); prints one line about the row."""
    lengths = chat_lengths(TOKENS, MEAN_CHAT)
    cu = torch.tensor([0, *lengths], device=device).cumsum(0).to(torch.int32)
    # causal attention FLOPs (QK^T and PV, 2 FLOPs a multiply-add, half the square)
    fwd_flops = sum(2 * 2 * n * (n + 1) / 2 * D * HQ for n in lengths)
    print(f"{len(lengths)} chats, mean {TOKENS / len(lengths):.0f}, max {max(lengths)} tokens; "
          f"forward {fwd_flops / 1e9:.1f} GFLOP a layer")
    g = torch.Generator(device=device).manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=device, dtype=torch.bfloat16, generator=g)

    q, k, v, grad = rand(TOKENS, HQ, D), rand(TOKENS, HKV, D), rand(TOKENS, HKV, D), rand(TOKENS, HQ, D)
    return PackedCase(lengths, cu, max(lengths), fwd_flops, q, k, v, grad)


def main() -> int:
    print("torch", torch.__version__, "cuDNN", torch.backends.cudnn.version(), torch.cuda.get_device_name(0))
    print(torch.ops.aten._cudnn_attention_forward.default._schema)
    print(torch.ops.aten._cudnn_attention_backward.default._schema)
    lengths, cu, max_len, fwd_flops, q, k, v, grad = packed_case()
    ref = flash(q, k, v, cu, max_len, grad)
    backends: dict[str, Callable[[torch.Tensor | None], tuple[torch.Tensor, ...]]] = {
        "flash (aten, FlashAttention-2)": lambda gr: flash(q, k, v, cu, max_len, gr),
        "cudnn, grouped K/V as they are": lambda gr: cudnn(q, k, v, cu, max_len, gr, repeat=False),
        "cudnn, K/V heads repeated to 16": lambda gr: cudnn(q, k, v, cu, max_len, gr, repeat=True),
    }
    from torch.nn.attention import SDPBackend

    for step in (64, 128):
        b = Buckets(lengths, step)
        print(f"buckets of {step}: {len(b.buckets)} dense batches, {b.padded} slots for {TOKENS} tokens "
              f"({b.padded / TOKENS - 1:.1%} padding)")
        for label, backend in (("cuDNN", SDPBackend.CUDNN_ATTENTION), ("flash dense", SDPBackend.FLASH_ATTENTION)):
            for gqa in (True, False):
                name = f"{label} SDPA, chats in buckets of {step}, " + ("enable_gqa" if gqa else "K/V repeated")
                backends[name] = functools.partial(bucketed, b, q, k, v, backend=backend, gqa=gqa)
    results: dict[str, Any] = {}
    for name, fn in backends.items():
        try:
            got = fn(grad)
            diffs = {n: rel(a, b) for n, a, b in zip(("out", "dq", "dk", "dv"), got, ref, strict=True)}
            t_fwd = do_bench(lambda fn=fn: fn(None), warmup=10, rep=200)  # type: ignore[misc]
            t_all = do_bench(lambda fn=fn: fn(grad), warmup=10, rep=200)  # type: ignore[misc]
        except Exception as exc:  # a backend that fails is a result: print why
            results[name] = {"error": f"{type(exc).__name__}: {exc}"[:400]}
            print(f"{name}: FAILED {results[name]['error']}")
            traceback.print_exc(limit=2, file=sys.stdout)
            continue
        results[name] = {"forward_ms": round(t_fwd, 4), "forward_backward_ms": round(t_all, 4),
                         "forward_tflops": round(fwd_flops / t_fwd / 1e9, 1),
                         "all_tflops": round(3.5 * fwd_flops / t_all / 1e9, 1),
                         "diff": {n: float(f"{d:.2e}") for n, d in diffs.items()}}
        r = results[name]
        print(f"{name}: forward {t_fwd:.3f} ms ({r['forward_tflops']} TFLOP/s), forward + backward {t_all:.3f} ms "
              f"({r['all_tflops']} TFLOP/s); x 36 layers = {36 * t_all:.1f} ms a step; largest difference from "
              f"flash {r['diff']}")
    print("RESULT " + json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
