"""Triton kernels of train/fused_residual.py: RMSNorm whose backward also adds the residual stream's gradient.

Arithmetic and rounding follow Unsloth's ``_rms_layernorm_forward`` and its default backward, from the saved input
(not its opt-in ``FROM_Y``, which rebuilds the normalised row as ``Y / W``: a first build here did that and its loss
curve left Unsloth's on the H200, docs/train.md), so the loss curve stays Unsloth's within bf16 noise. In a
module of their own because Triton resolves a kernel's helpers through the module's globals, and so that importing
train.fused_residual does not import Triton.
"""

# no `from __future__ import annotations`: Triton reads the `tl.constexpr` annotations as objects

import triton
import triton.language as tl


@triton.jit
def rms_norm_fwd(Y, X, W, RSTD, N, eps, BLOCK: tl.constexpr):
    """One row: Y = (X rstd, rounded to W's dtype) * W, rstd = 1 / sqrt(mean(X^2) + eps) kept for the backward."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < N
    x = tl.load(X + row * N + cols, mask=mask, other=0.0).to(tl.float32)
    w = tl.load(W + cols, mask=mask, other=0.0)
    rstd = tl.math.rsqrt(tl.sum(x * x, axis=0) / N + eps)
    tl.store(RSTD + row, rstd)
    normed = (x * rstd).to(w.dtype)
    # the product of two bf16 values is exact in float32 and rounded once by the store: what a bf16 multiply gives
    # (written so because Triton's interpreter gets some bf16 products wrong, NaN, on the CPU)
    tl.store(Y + row * N + cols, normed.to(tl.float32) * w.to(tl.float32), mask=mask)


@triton.jit
def rms_norm_bwd(DX, DY, X, W, RSTD, DP, N, HAS_PASS: tl.constexpr, BLOCK: tl.constexpr):
    """One row: DX = the RMSNorm gradient from DY and the saved input X + DP, the gradient that reached the same
    activation through the residual stream (what autograd would add in a pass of its own)."""
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < N
    dy = tl.load(DY + row * N + cols, mask=mask, other=0.0).to(tl.float32)
    x = tl.load(X + row * N + cols, mask=mask, other=0.0).to(tl.float32)
    w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
    rstd = tl.load(RSTD + row)
    normed = x * rstd
    dyw = dy * w
    dx = rstd / N * (N * dyw - normed * tl.sum(dyw * normed, axis=0))
    if HAS_PASS:
        dx += tl.load(DP + row * N + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(DX + row * N + cols, dx, mask=mask)
