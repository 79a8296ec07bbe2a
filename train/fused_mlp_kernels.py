"""Triton kernels of train/fused_mlp.py: SwiGLU with the gate and up projections' LoRA terms added per tile.

In a module of their own because Triton resolves a kernel's helper functions through the module's globals, and so
that importing train.fused_mlp does not import Triton (only the GPU path needs it). Arithmetic and rounding follow
Unsloth's ``_fg_kernel`` and ``_DWf_DW_dfg_kernel``; fused_mlp.py's torch functions are the reference the tests hold
these to.
"""

# no `from __future__ import annotations`: Triton reads the `tl.constexpr` annotations as objects

import triton
import triton.language as tl

#: Tiles the autotuner tries (once per MLP width and LoRA rank).
CONFIGS = [triton.Config({"BM": bm, "BN": bn}, num_warps=w)
           for bm, bn, w in ((64, 128, 4), (64, 256, 8), (128, 128, 8), (32, 256, 4))]


@triton.jit
def _tile(T, N, R: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    """This program's rows and columns, the rank index, their masks and the tile's offsets in a [T, N] matrix."""
    rm = tl.program_id(0) * BM + tl.arange(0, BM)
    rn = tl.program_id(1) * BN + tl.arange(0, BN)
    in_m, in_n = rm < T, rn < N
    offs = rm[:, None].to(tl.int64) * N + rn[None, :]
    return rm, rn, tl.arange(0, R), in_m, in_n, in_m[:, None] & in_n[None, :], offs


@triton.jit
def _gate_up(E0, G0, XA, BG, BU, rm, rn, rk, in_m, in_n, mask, offs, stride_xa, SG, SU, R: tl.constexpr):
    """e (float32, rounded to the compute dtype first, as Unsloth's e is) and g (compute dtype), LoRA added."""
    e0 = tl.load(E0 + offs, mask=mask, other=0.0)
    g0 = tl.load(G0 + offs, mask=mask, other=0.0)
    xa_rows = XA + rm[:, None].to(tl.int64) * stride_xa + rk[None, :]
    xa_g = tl.load(xa_rows, mask=in_m[:, None], other=0.0)
    xa_u = tl.load(xa_rows + R, mask=in_m[:, None], other=0.0)
    b_cols = rn[None, :] * R + rk[:, None]  # B is [N, R]: this is B^T's [R, BN] tile
    bg = tl.load(BG + b_cols, mask=in_n[None, :], other=0.0)
    bu = tl.load(BU + b_cols, mask=in_n[None, :], other=0.0)
    e = (e0.to(tl.float32) + tl.dot(xa_g, bg) * SG).to(e0.dtype).to(tl.float32)
    g = (g0.to(tl.float32) + tl.dot(xa_u, bu) * SU).to(g0.dtype)
    return e, g


@triton.jit
def lora_swiglu_fwd(E0, G0, H, XA, BG, BU, T, N, stride_xa, SG, SU,
                     R: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    rm, rn, rk, in_m, in_n, mask, offs = _tile(T, N, R, BM, BN)
    e, g = _gate_up(E0, G0, XA, BG, BU, rm, rn, rk, in_m, in_n, mask, offs, stride_xa, SG, SU, R)
    f = (e * tl.sigmoid(e)).to(g.dtype)
    tl.store(H + offs, f * g, mask=mask)


@triton.jit
def lora_swiglu_bwd(DW, E0, G0, DYB, AD, XA, BG, BU, T, N, stride_xa, SD, SG, SU,
                     R: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    rm, rn, rk, in_m, in_n, mask, offs = _tile(T, N, R, BM, BN)
    dw0 = tl.load(DW + offs, mask=mask, other=0.0)
    dyb = tl.load(DYB + rm[:, None].to(tl.int64) * R + rk[None, :], mask=in_m[:, None], other=0.0)
    ad = tl.load(AD + rk[:, None] * N + rn[None, :], mask=in_n[None, :], other=0.0)  # A_d is [R, N]
    dw = (dw0.to(tl.float32) + tl.dot(dyb, ad) * SD).to(dw0.dtype)
    e, g = _gate_up(E0, G0, XA, BG, BU, rm, rn, rk, in_m, in_n, mask, offs, stride_xa, SG, SU, R)
    se = tl.sigmoid(e)
    f = (se * e).to(dw0.dtype)
    d_up = dw * f
    d_gate = ((dw * g).to(tl.float32) * se * (1.0 + e * (1.0 - se))).to(dw0.dtype)
    tl.store(DW + offs, f * g, mask=mask)  # h, for the down projection's LoRA gradients
    tl.store(E0 + offs, d_up, mask=mask)
    tl.store(G0 + offs, d_gate, mask=mask)

