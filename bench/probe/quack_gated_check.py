"""GPU check: quack's CUTLASS (CuTe DSL) products with SwiGLU as their epilogue, against cuBLAS + the tile kernels.

Why: the Triton kernels of bench/probe/gemm_swiglu_check.py showed that SwiGLU's backward as the epilogue of the
down projection's input-gradient product saves ~0.46 ms a layer, but Triton's main loops stay under cuBLAS's speed
(the forward's dual product at ~590 TFLOP/s against 681). quack-kernels (BSD-3-Clause, Tri Dao; carried in
bench/pack_fa4.sh's archive, FlashAttention-4 depends on it) has Hopper products with a gated-activation epilogue
(``gemm_gated``: writes the interleaved pre-activation and ``silu(gate) * up``) and its backward (``gemm_dgated``:
the product's output is the gradient of ``h``, the epilogue writes the interleaved (d_gate, d_up) and h), with
TMA, warp-specialised persistent main loops. This times them at one layer of Qwen2.5-3B at 32,768 tokens with the
default tile (``tuned=False``: autotuning compiles every candidate), with the rank-16 LoRA terms as 16 or 32 more
columns of K (the way forma would add them), next to what forma runs today.

Run on the GPU machine with the archive unpacked on PYTHONPATH: python3 bench/probe/quack_gated_check.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch
import triton

from bench.probe.gemm_swiglu_check import med, rel, report  # the same difference, timing and table
from train import fused_mlp_kernels as k

T, D, N, R = 32768, 2048, 11008, 16


def main() -> int:
    from quack.gemm_interface import gemm_dgated_out, gemm_gated_out

    torch.manual_seed(0)
    dev = {"device": "cuda", "dtype": torch.bfloat16}
    X, dY = torch.randn(T, D, **dev), torch.randn(T, D, **dev)
    Wg, Wu = torch.randn(N, D, **dev) * D ** -0.5, torch.randn(N, D, **dev) * D ** -0.5
    Wd = torch.randn(D, N, **dev) * N ** -0.5
    XA, dYB = torch.randn(T, 2 * R, **dev), torch.randn(T, R, **dev)
    Bg, Bu, Ad = torch.randn(N, R, **dev) * 0.05, torch.randn(N, R, **dev) * 0.05, torch.randn(R, N, **dev) * 0.05
    rows: list[tuple[str, float, str, float]] = []  # name, median ms, notes, largest difference (NaN: none)
    nan = float("nan")
    flops = 2 * T * D * N

    # today's forward: two cuBLAS products and the tile kernel (LoRA terms added inside it)
    e0, g0, h_t = X @ Wg.t(), X @ Wu.t(), torch.empty(T, N, **dev)

    def tiles_fwd() -> None:
        k.lora_swiglu_fwd[(triton.cdiv(T, 16), triton.cdiv(N, 256))](
            e0, g0, h_t, XA, Bg, Bu, T, N, XA.stride(0), 1.0, 1.0, R=R, BM=16, BN=256, num_warps=8, num_stages=2)

    base_f = med(lambda: (torch.mm(X, Wg.t(), out=e0), torch.mm(X, Wu.t(), out=g0), tiles_fwd()))
    rows.append(("fwd today: cuBLAS x2 + tile kernel", base_f, "", nan))
    # quack: B as (K, 2N) with gate and up columns interleaved; optionally the LoRA terms as 32 more rows of K
    Wgu = torch.stack([Wg, Wu], dim=1).reshape(2 * N, D)  # rows g0, u0, g1, u1, ...
    Bgu = torch.zeros(2 * N, 2 * R, **dev)
    Bgu[0::2, :R], Bgu[1::2, R:] = Bg, Bu
    preact, post = torch.empty(T, 2 * N, **dev), torch.empty(T, N, **dev)
    name = "fwd quack gated, K 2080 (LoRA in K)"
    A, B = torch.cat([X, XA], 1), torch.cat([Wgu, Bgu], 1).t()
    try:
        gemm_gated_out(A, B, preact, post, activation="swiglu", tuned=False)
        torch.cuda.synchronize()
        e_ref = A.float() @ B.float()
        diff = max(rel(preact[:, 0::2], e_ref[:, 0::2]), rel(preact[:, 1::2], e_ref[:, 1::2]), rel(post, h_t))
        t = med(lambda: gemm_gated_out(A, B, preact, post, activation="swiglu", tuned=False))
        rows.append((name, t, f"{2 * flops / t / 1e9:.0f} TF/s diff {diff:.1e} vs today {t - base_f:+.3f}", diff))
    except Exception as exc:
        rows.append((name, nan, f"{type(exc).__name__}: {str(exc)[:300]}", nan))

    # today's backward: cuBLAS dY W_d and the tile kernel, without and with h written
    e_keep, g_keep, DW = e0.clone(), g0.clone(), dY @ Wd

    def tiles_bwd(store_h: bool) -> None:
        e0.copy_(e_keep)
        g0.copy_(g_keep)
        k.lora_swiglu_bwd[(triton.cdiv(T, 16), triton.cdiv(N, 128))](
            DW, e0, g0, dYB, Ad, XA, Bg, Bu, T, N, XA.stride(0), 1.0, 1.0, 1.0, R=R, STORE_H=store_h, BM=16, BN=128,
            num_warps=8, num_stages=2)

    copy_t = med(lambda: (e0.copy_(e_keep), g0.copy_(g_keep)))
    for store_h in (False, True):
        t = med(lambda store_h=store_h: (torch.mm(dY, Wd, out=DW), tiles_bwd(store_h))) - copy_t
        rows.append((f"bwd today: cuBLAS + tile kernel{' (h written)' if store_h else ''}", t, "", nan))
    base_b = rows[-1][1]
    torch.mm(dY, Wd, out=DW)  # the timing's last kernel wrote h over DW (the 2026-12-03 run missed this line)
    tiles_bwd(True)
    d_gate_ref, d_up_ref = g0.clone(), e0.clone()  # the tile kernel writes d_up over e0, d_gate over g0
    # quack's backward reads the interleaved pre-activation (e, g with LoRA terms: from the tile design's arithmetic)
    pre = torch.empty(T, 2 * N, **dev)
    pre[:, 0::2] = (e_keep.float() + XA[:, :R].float() @ Bg.float().t()).to(torch.bfloat16)
    pre[:, 1::2] = (g_keep.float() + XA[:, R:].float() @ Bu.float().t()).to(torch.bfloat16)
    dx, h_q = torch.empty(T, 2 * N, **dev), torch.empty(T, N, **dev)
    # B as a (K, N) view of a K-major (N, K) copy, the layout quack's kernels read (the dense base could keep one)
    name = "bwd quack dgated, K 2064 (LoRA in K)"
    A, B = torch.cat([dY, dYB], 1), torch.cat([Wd, Ad], 0).t().contiguous().t()
    try:
        gemm_dgated_out(A, B, pre, dx, h_q, activation="swiglu", tuned=False)
        torch.cuda.synchronize()
        diff = max(rel(dx[:, 0::2], d_gate_ref), rel(dx[:, 1::2], d_up_ref), rel(h_q, h_t))
        t = med(lambda: gemm_dgated_out(A, B, pre, dx, h_q, activation="swiglu", tuned=False))
        rows.append((name, t, f"{flops / t / 1e9:.0f} TF/s diff {diff:.1e} vs today (h written) {t - base_b:+.3f}",
                     diff))
    except Exception as exc:
        rows.append((name, nan, f"{type(exc).__name__}: {str(exc)[:300]}", nan))
    # what the interleaved layout costs downstream: dX as one product over (d_gate, d_up) interleaved
    t2 = med(lambda: (torch.mm(g0, Wg), torch.mm(e0, Wu)))
    t1 = med(lambda: torch.mm(dx, Wgu))
    rows.append(("dX today: two products", t2, "", nan))
    rows.append(("dX from the interleaved gradient: one product", t1, f"{t1 - t2:+.3f}", nan))
    report(rows)  # printed; the exit status stays 0, as the H200 run's did
    return 0


if __name__ == "__main__":
    sys.exit(main())
