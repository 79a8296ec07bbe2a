"""Triton kernels of train/fused_mlp.py: SwiGLU with the gate and up projections' LoRA terms added inside it.

Two designs, the same arithmetic; train/fused_mlp.py's ``warm_up`` times both on the card at load and runs the faster:

* **tiles** (timed on the H200, docs/train.md): one program per [BM, BN] tile of the tokens x N
  matrices. It adds the gate and up LoRA terms (one small tensor-core product each) before SwiGLU. The rank-16
  products that reduce over the width (``h A_d^T`` in the forward, ``d_gate B_g`` and ``d_up B_u`` in the backward)
  stay cuBLAS products in train/fused_mlp.py, each one more read of a tokens x N matrix.
* **rows** (checked on the CPU in Triton's interpreter, not yet timed on a GPU by us): one program per BM token rows
  walks across the width in BN-wide tiles and folds each tile into those rank-16 products as it goes, so their sums
  stay in registers (no atomics, no partial buffers) and three reads of a tokens x N matrix a layer go away.

In a module of their own because Triton resolves a kernel's helper functions through the module's globals, and so
that importing train.fused_mlp does not import Triton (only the GPU path needs it). Arithmetic and rounding follow
Unsloth's ``_fg_kernel`` and ``_DWf_DW_dfg_kernel``; fused_mlp.py's torch functions are the reference the tests hold
these to.
"""

# no `from __future__ import annotations`: Triton reads the `tl.constexpr` annotations as objects

import triton
import triton.language as tl


def _config(bm: int, bn: int, warps: int, stages: int = 2) -> triton.Config:
    return triton.Config({"BM": bm, "BN": bn}, num_warps=warps, num_stages=stages)


#: (BM, BN, warps) of the tiles the 2026-12-01 H200 runs tuned among. Compiled for sm_90 as Triton's JIT
#: specializes them there (aligned pointers, N a multiple of 16), each holds 64 values of each [BM, BN] matrix a
#: thread: the forward takes 178-255 registers a thread (one spills), the backward spills 56-240 bytes to the stack.
#: The likely reason those kernels moved ~2.8 TB/s where Unsloth's 1-D SwiGLU kernels (1,024 values a block of 4
#: warps: 8 a thread) reach ~4.2. Kept among the candidates so that the autotuner, timing on the card, can only do
#: as well as those runs or better.
TILES_MEASURED = ((64, 128, 4), (64, 256, 8), (128, 128, 8), (32, 256, 4))
#: Tiles of 8-16 values a thread: 32-57 registers in the forward, 43-92 in the backward, no spill, 128-bit loads
#: and stores (tests/test_fused_mlp.py compiles them for sm_90 with Triton's own ptxas, no GPU needed, and checks).
TILES = ((32, 64, 8), (64, 32, 8), (16, 128, 8), (32, 32, 4), (64, 64, 8), (32, 128, 8), (16, 256, 8))
#: The row design's: its loop keeps accumulators and the rows' rank-16 operands live (69-127 registers forward,
#: 101-176 backward at these sizes, no spill).
ROWS = ((32, 32, 4), (64, 32, 8), (128, 32, 8), (32, 64, 8), (64, 64, 8))
CONFIGS = [_config(bm, bn, w, 3) for bm, bn, w in TILES_MEASURED] + [_config(*t) for t in TILES]
CONFIGS_ROWS = [_config(*t) for t in ROWS]


@triton.jit
def _rows(XA, T, stride_xa, R: tl.constexpr, BM: tl.constexpr):
    """This program's rows, the rank index, the row mask and the rows' two rank-R halves of X [A_g; A_u]^T."""
    rm = tl.program_id(0) * BM + tl.arange(0, BM)
    rk = tl.arange(0, R)
    in_m = rm < T
    xa_rows = XA + rm[:, None].to(tl.int64) * stride_xa + rk[None, :]
    return rm, rk, in_m, tl.load(xa_rows, mask=in_m[:, None], other=0.0), \
        tl.load(xa_rows + R, mask=in_m[:, None], other=0.0)


@triton.jit
def _columns(T, N, rm, in_m, n0, BN: tl.constexpr):
    """Columns n0 .. n0 + BN: their index, mask, the tile's mask and its offsets in a [T, N] matrix."""
    rn = n0 + tl.arange(0, BN)
    in_n = rn < N
    return rn, in_n, in_m[:, None] & in_n[None, :], rm[:, None].to(tl.int64) * N + rn[None, :]


@triton.jit
def _gate_up(E0, G0, xa_g, xa_u, BG, BU, rn, rk, in_n, mask, offs, SG, SU, R: tl.constexpr):
    """e (float32, rounded to the compute dtype first, as Unsloth's e is) and g (compute dtype), LoRA added."""
    e0 = tl.load(E0 + offs, mask=mask, other=0.0)
    g0 = tl.load(G0 + offs, mask=mask, other=0.0)
    b_cols = rn[None, :] * R + rk[:, None]  # B is [N, R]: this is B^T's [R, BN] tile
    bg = tl.load(BG + b_cols, mask=in_n[None, :], other=0.0)
    bu = tl.load(BU + b_cols, mask=in_n[None, :], other=0.0)
    e = (e0.to(tl.float32) + tl.dot(xa_g, bg) * SG).to(e0.dtype).to(tl.float32)
    g = (g0.to(tl.float32) + tl.dot(xa_u, bu) * SU).to(g0.dtype)
    return e, g


@triton.jit
def _swiglu_grads(DW, E0, G0, dyb, AD, xa_g, xa_u, BG, BU, N, rn, rk, in_n, mask, offs, SD, SG, SU,
                  R: tl.constexpr, STORE_H: tl.constexpr):
    """One tile of the backward: writes (h, d_up, d_gate) over (DW, E0, G0) and returns (d_up, d_gate). Without
    STORE_H, h is not written (the forward kept it) and DW is left as it was: one write of a [T, N] matrix less."""
    dw0 = tl.load(DW + offs, mask=mask, other=0.0)
    ad = tl.load(AD + rk[:, None] * N + rn[None, :], mask=in_n[None, :], other=0.0)  # A_d's [R, BN] tile
    dw = (dw0.to(tl.float32) + tl.dot(dyb, ad) * SD).to(dw0.dtype)
    e, g = _gate_up(E0, G0, xa_g, xa_u, BG, BU, rn, rk, in_n, mask, offs, SG, SU, R)
    se = tl.sigmoid(e)
    f = (se * e).to(dw0.dtype)
    d_up = dw * f
    d_gate = ((dw * g).to(tl.float32) * se * (1.0 + e * (1.0 - se))).to(dw0.dtype)
    if STORE_H:
        tl.store(DW + offs, f * g, mask=mask)  # h, for the down projection's LoRA gradients
    tl.store(E0 + offs, d_up, mask=mask)
    tl.store(G0 + offs, d_gate, mask=mask)
    return d_up, d_gate


@triton.jit
def lora_swiglu_fwd(E0, G0, H, XA, BG, BU, T, N, stride_xa, SG, SU,
                    R: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    """Tile design: H = silu(e) * g on one [BM, BN] tile."""
    rm, rk, in_m, xa_g, xa_u = _rows(XA, T, stride_xa, R, BM)
    rn, in_n, mask, offs = _columns(T, N, rm, in_m, tl.program_id(1) * BN, BN)
    e, g = _gate_up(E0, G0, xa_g, xa_u, BG, BU, rn, rk, in_n, mask, offs, SG, SU, R)
    tl.store(H + offs, (e * tl.sigmoid(e)).to(g.dtype) * g, mask=mask)


@triton.jit
def lora_swiglu_bwd(DW, E0, G0, DYB, AD, XA, BG, BU, T, N, stride_xa, SD, SG, SU,
                    R: tl.constexpr, STORE_H: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    """Tile design: over (DW, E0, G0) writes (h, d_up, d_gate) of one [BM, BN] tile; h's gradient is
    DW + SD DYB A_d."""
    rm, rk, in_m, xa_g, xa_u = _rows(XA, T, stride_xa, R, BM)
    rn, in_n, mask, offs = _columns(T, N, rm, in_m, tl.program_id(1) * BN, BN)
    dyb = tl.load(DYB + rm[:, None].to(tl.int64) * R + rk[None, :], mask=in_m[:, None], other=0.0)
    _swiglu_grads(DW, E0, G0, dyb, AD, xa_g, xa_u, BG, BU, N, rn, rk, in_n, mask, offs, SD, SG, SU, R, STORE_H)


@triton.jit
def lora_swiglu_fwd_rows(E0, G0, H, HA, XA, BG, BU, AD, T, N, stride_xa, SG, SU,
                         R: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    """Row design: H = silu(e) * g; HA = H A_d^T (A_d is [R, N]), summed over the width in registers."""
    rm, rk, in_m, xa_g, xa_u = _rows(XA, T, stride_xa, R, BM)
    ha = tl.zeros((BM, R), dtype=tl.float32)
    for n0 in range(0, N, BN):
        rn, in_n, mask, offs = _columns(T, N, rm, in_m, n0, BN)
        e, g = _gate_up(E0, G0, xa_g, xa_u, BG, BU, rn, rk, in_n, mask, offs, SG, SU, R)
        h = (e * tl.sigmoid(e)).to(g.dtype) * g
        tl.store(H + offs, h, mask=mask)
        ad_t = tl.load(AD + rk[None, :] * N + rn[:, None], mask=in_n[:, None], other=0.0)  # A_d^T's [BN, R] tile
        ha = tl.dot(h, ad_t, ha)
    tl.store(HA + rm[:, None].to(tl.int64) * R + rk[None, :], ha.to(HA.dtype.element_ty), mask=in_m[:, None])


@triton.jit
def lora_swiglu_bwd_rows(DW, E0, G0, GB, DYB, AD, XA, BG, BU, T, N, stride_xa, SD, SG, SU,
                         R: tl.constexpr, STORE_H: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    """Row design: over (DW, E0, G0) writes (h, d_up, d_gate), where h's gradient is DW + SD DYB A_d; GB [T, 2R]
    gets (SG d_gate B_g, SU d_up B_u), summed over the width in registers."""
    rm, rk, in_m, xa_g, xa_u = _rows(XA, T, stride_xa, R, BM)
    dyb = tl.load(DYB + rm[:, None].to(tl.int64) * R + rk[None, :], mask=in_m[:, None], other=0.0)
    gg = tl.zeros((BM, R), dtype=tl.float32)
    gu = tl.zeros((BM, R), dtype=tl.float32)
    for n0 in range(0, N, BN):
        rn, in_n, mask, offs = _columns(T, N, rm, in_m, n0, BN)
        d_up, d_gate = _swiglu_grads(DW, E0, G0, dyb, AD, xa_g, xa_u, BG, BU, N, rn, rk, in_n, mask, offs,
                                     SD, SG, SU, R, STORE_H)
        b_rows = rn[:, None] * R + rk[None, :]  # B's [BN, R] tile
        gg = tl.dot(d_gate, tl.load(BG + b_rows, mask=in_n[:, None], other=0.0), gg)
        gu = tl.dot(d_up, tl.load(BU + b_rows, mask=in_n[:, None], other=0.0), gu)
    out = GB + rm[:, None].to(tl.int64) * (2 * R) + rk[None, :]
    tl.store(out, (gg * SG).to(GB.dtype.element_ty), mask=in_m[:, None])
    tl.store(out + R, (gu * SU).to(GB.dtype.element_ty), mask=in_m[:, None])
