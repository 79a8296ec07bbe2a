"""GPU check: the MLP's SwiGLU as the epilogue of the matrix product that feeds it, against cuBLAS + the tile kernels.

Why: in the step's trace the fused SwiGLU kernels take ~74 ms a step and read back matrices a cuBLAS product has
just written. Done as the product's epilogue (``gemm_swiglu_fwd``, ``gemm_swiglu_bwd`` below, operands read through
TMA descriptors), the backward's ``DY W_d`` never goes to memory (one write and one read of a tokens x 11,008 matrix
a layer less) and the forward's e0 and g0 are not read back. That pays only if Triton's main loop keeps up with
cuBLAS. The kernels were a third design of train/fused_mlp.py for one session (2026-12-03) and were taken out
again: the step moved 0.2% (docs/train.md); they stay here so the measurement can be repeated.

Shapes: one layer of Qwen2.5-3B at a 16-row packed step (32,768 tokens, 2,048 -> 11,008, rank 16), bf16.
Prints the largest differences (relative to the largest value) and a table of medians; run on the GPU machine:
python3 bench/probe/gemm_swiglu_check.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch
import triton
import triton.language as tl
from triton.testing import do_bench

from train import fused_mlp_kernels as k

T, D, N, R = 32768, 2048, 11008, 16
DEVICE = "cuda"
if os.environ.get("TRITON_INTERPRET") == "1":  # a dry run of this script on a CPU, in Triton's interpreter
    T, D, N, DEVICE = 200, 128, 384, "cpu"

    def do_bench(fn: Any, **_: Any) -> float:
        """One timed call in milliseconds: the dry run checks the script's flow, not speed."""
        import time

        started = time.perf_counter()
        fn()
        return (time.perf_counter() - started) * 1000

# --- the kernels measured here (tried as a third design of train/fused_mlp.py, taken out: docs/train.md)


@triton.jit
def _grouped_tile(pid, T, N, BM: tl.constexpr, BN: tl.constexpr, GROUP_M: tl.constexpr):
    """Program ``pid``'s (row, column) tile of a [T, N] product, in groups of GROUP_M row tiles so that programs
    running together share the B columns they read through L2 (the ordering of Triton's matmul tutorial)."""
    tiles_n = tl.cdiv(N, BN)
    in_group = GROUP_M * tiles_n
    first_m = (pid // in_group) * GROUP_M
    size_m = min(tl.cdiv(T, BM) - first_m, GROUP_M)
    return first_m + (pid % in_group) % size_m, (pid % in_group) // size_m


@triton.jit
def gemm_swiglu_fwd(x_desc, wg_desc, wu_desc, E, G, H, XA, BG, BU, T, N, K, stride_xa, SG, SU,
                    R: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr):
    """The forward kernel measured here: the gate and up projections with their LoRA terms,
    ``e = X W_g^T + SG XA_g B_g^T`` and ``g = X W_u^T + SU XA_u B_u^T``, as one dual product whose operands the
    tensor copy engine reads (TMA descriptors over X [T, K] and W_g, W_u [N, K]), with SwiGLU as its epilogue:
    writes e and g (what the backward needs, LoRA terms in) and h = silu(e) g. No e0 or g0 goes to memory and
    nothing reads them back."""
    _fwd_tile(tl.program_id(0), x_desc, wg_desc, wu_desc, E, G, H, XA, BG, BU, T, N, K, stride_xa, SG, SU, R, BM, BN,
              BK, GROUP_M)


@triton.jit
def _fwd_tile(tile, x_desc, wg_desc, wu_desc, E, G, H, XA, BG, BU, T, N, K, stride_xa, SG, SU, R: tl.constexpr,
              BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr):
    """One output tile of :func:`gemm_swiglu_fwd` (shared with the persistent variant below)."""
    pid_m, pid_n = _grouped_tile(tile, T, N, BM, BN, GROUP_M)
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    rk = tl.arange(0, R)
    in_m = rm < T
    in_n = rn < N
    xa_rows = XA + rm[:, None].to(tl.int64) * stride_xa + rk[None, :]
    b_cols = rn[None, :] * R + rk[:, None]  # B is [N, R]: B^T's [R, BN] tile
    # the rank-R terms first, as one more step of each product: no second accumulator
    acc_e = tl.dot(tl.load(xa_rows, mask=in_m[:, None], other=0.0),
                   tl.load(BG + b_cols, mask=in_n[None, :], other=0.0)) * SG
    acc_g = tl.dot(tl.load(xa_rows + R, mask=in_m[:, None], other=0.0),
                   tl.load(BU + b_cols, mask=in_n[None, :], other=0.0)) * SU
    for ki in range(0, tl.cdiv(K, BK)):  # past K the copy engine reads zeros
        a = x_desc.load([pid_m * BM, ki * BK])
        acc_e = tl.dot(a, wg_desc.load([pid_n * BN, ki * BK]).T, acc_e)
        acc_g = tl.dot(a, wu_desc.load([pid_n * BN, ki * BK]).T, acc_g)
    mask = in_m[:, None] & in_n[None, :]
    offs = rm[:, None].to(tl.int64) * N + rn[None, :]
    e = acc_e.to(E.dtype.element_ty)
    g = acc_g.to(G.dtype.element_ty)
    tl.store(E + offs, e, mask=mask)
    tl.store(G + offs, g, mask=mask)
    ef = e.to(tl.float32)  # as Unsloth: e in the compute dtype, silu in float32, the product in the compute dtype
    tl.store(H + offs, (ef * tl.sigmoid(ef)).to(g.dtype) * g, mask=mask)


@triton.jit
def gemm_swiglu_bwd(dy_desc, w_desc, H, E, G, DYB, AD, T, N, K, SD,
                    R: tl.constexpr, STORE_H: tl.constexpr, CHUNKS: tl.constexpr,
                    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr):
    """The backward kernel measured here: h's gradient ``DY W_d + SD DYB A_d`` (TMA descriptors over DY [T, K] and W_d
    [K, N]) with the SwiGLU backward as its epilogue, so that gradient never goes to memory. (d_up, d_gate) are
    written over (E, G), which hold e and g as :func:`gemm_swiglu_fwd` wrote them; with STORE_H, h into H. The
    epilogue runs on CHUNKS column pieces of the tile in turn (2 or 4): a whole tile's float32 temporaries spill."""
    _bwd_tile(tl.program_id(0), dy_desc, w_desc, H, E, G, DYB, AD, T, N, K, SD, R, STORE_H, CHUNKS, BM, BN, BK,
              GROUP_M)


@triton.jit
def _bwd_tile(tile, dy_desc, w_desc, H, E, G, DYB, AD, T, N, K, SD, R: tl.constexpr, STORE_H: tl.constexpr,
              CHUNKS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr):
    """One output tile of :func:`gemm_swiglu_bwd` (shared with the persistent variant below)."""
    pid_m, pid_n = _grouped_tile(tile, T, N, BM, BN, GROUP_M)
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    rk = tl.arange(0, R)
    in_m = rm < T
    dyb = tl.load(DYB + rm[:, None].to(tl.int64) * R + rk[None, :], mask=in_m[:, None], other=0.0)
    ad = tl.load(AD + rk[:, None] * N + rn[None, :], mask=(rn < N)[None, :], other=0.0)
    acc = tl.dot(dyb, ad) * SD  # the rank-R term first: one more step of the product
    for ki in range(0, tl.cdiv(K, BK)):
        acc = tl.dot(dy_desc.load([pid_m * BM, ki * BK]), w_desc.load([ki * BK, pid_n * BN]), acc)
    dw = acc.to(H.dtype.element_ty)
    half0, half1 = _halves(dw, BM, BN)
    rn0 = pid_n * BN + tl.arange(0, BN // CHUNKS)
    if CHUNKS == 4:
        q0, q1 = _halves(half0, BM, BN // 2)
        q2, q3 = _halves(half1, BM, BN // 2)
        _swiglu_bwd_chunk(q0, H, E, G, rm, rn0, in_m, N, STORE_H)
        _swiglu_bwd_chunk(q1, H, E, G, rm, rn0 + BN // 4, in_m, N, STORE_H)
        _swiglu_bwd_chunk(q2, H, E, G, rm, rn0 + BN // 2, in_m, N, STORE_H)
        _swiglu_bwd_chunk(q3, H, E, G, rm, rn0 + 3 * (BN // 4), in_m, N, STORE_H)
    else:
        _swiglu_bwd_chunk(half0, H, E, G, rm, rn0, in_m, N, STORE_H)
        _swiglu_bwd_chunk(half1, H, E, G, rm, rn0 + BN // 2, in_m, N, STORE_H)


@triton.jit
def _halves(x, BM: tl.constexpr, BN: tl.constexpr):
    """The left and right column halves of a [BM, BN] tile."""
    return tl.split(tl.permute(tl.reshape(x, (BM, 2, BN // 2)), (0, 2, 1)))


@triton.jit
def _swiglu_bwd_chunk(dw, H, E, G, rm, rn, in_m, N, STORE_H: tl.constexpr):
    """The SwiGLU backward on columns ``rn`` of h's gradient ``dw`` (Unsloth's rounding): (d_up, d_gate) over
    (E, G), h into H with STORE_H."""
    mask = in_m[:, None] & (rn < N)[None, :]
    offs = rm[:, None].to(tl.int64) * N + rn[None, :]
    e = tl.load(E + offs, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(G + offs, mask=mask, other=0.0)
    se = tl.sigmoid(e)
    f = (se * e).to(dw.dtype)
    d_up = dw * f
    d_gate = ((dw * g).to(tl.float32) * se * (1.0 + e * (1.0 - se))).to(dw.dtype)
    if STORE_H:
        tl.store(H + offs, f * g, mask=mask)
    tl.store(E + offs, d_up, mask=mask)
    tl.store(G + offs, d_gate, mask=mask)


#: Measured 2026-12-03 on the H200 and dropped: the same kernels with pointer loads (Triton's main loop at 504-605
#: TFLOP/s against cuBLAS's 656-682), the e and g LoRA terms rebuilt in the backward's epilogue (~1 ms a layer), and
#: a persistent TMA loop (flattened tile loop: 197-284 TFLOP/s). A plain TMA loop, one tile a program: 643-647.
#: (BM, BN, BK, stages, warps) for the forward; the backward adds the epilogue's column chunks.
FWD = [(128, 128, 64, 3, 8), (128, 128, 64, 4, 8), (128, 64, 64, 4, 4), (128, 64, 64, 3, 8)]
BWD = [(128, 256, 64, 3, 8, 4), (128, 256, 64, 4, 8, 4), (128, 128, 64, 4, 8, 2), (128, 128, 64, 4, 8, 4),
       (128, 128, 64, 3, 8, 2)]

#: Persistent variants (one program per multiprocessor walking the tiles; tile loop not flattened), with and
#: without Triton's warp specialization: (BM, BN, BK, stages, warps, chunks, warp_specialize).
BWD_P = [(128, 256, 64, 3, 8, 4, False), (128, 256, 64, 3, 8, 4, True), (128, 128, 64, 3, 8, 2, False),
         (128, 128, 64, 3, 8, 2, True), (128, 128, 64, 3, 4, 2, True)]
FWD_P = [(128, 128, 64, 4, 8, False), (128, 128, 64, 4, 8, True), (128, 128, 64, 3, 4, True)]
SMS = 132 if DEVICE == "cuda" else 3


@triton.jit
def _bwd_persistent(dy_desc, w_desc, H, E, G, DYB, AD, T, N, K, SD, R: tl.constexpr, STORE_H: tl.constexpr,
                    CHUNKS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                    GROUP_M: tl.constexpr, PROGRAMS: tl.constexpr, WS: tl.constexpr):
    """:func:`gemm_swiglu_bwd` with PROGRAMS programs walking the tiles (not flattened: that broke the pipelining)."""
    for tile in tl.range(tl.program_id(0), tl.cdiv(T, BM) * tl.cdiv(N, BN), PROGRAMS, warp_specialize=WS):
        _bwd_tile(tile, dy_desc, w_desc, H, E, G, DYB, AD, T, N, K, SD, R, STORE_H, CHUNKS, BM, BN, BK, GROUP_M)


@triton.jit
def _fwd_persistent(x_desc, wg_desc, wu_desc, E, G, H, XA, BG, BU, T, N, K, stride_xa, SG, SU, R: tl.constexpr,
                    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr,
                    PROGRAMS: tl.constexpr, WS: tl.constexpr):
    """:func:`gemm_swiglu_fwd` with PROGRAMS programs walking the tiles."""
    for tile in tl.range(tl.program_id(0), tl.cdiv(T, BM) * tl.cdiv(N, BN), PROGRAMS, warp_specialize=WS):
        _fwd_tile(tile, x_desc, wg_desc, wu_desc, E, G, H, XA, BG, BU, T, N, K, stride_xa, SG, SU, R, BM, BN, BK,
                  GROUP_M)


def report(rows: list[tuple[str, float, str, float]], tolerance: float = 2e-2) -> int:
    """Print the table (name, median ms, notes); 1 if any row's difference (NaN: none checked) is past bf16 noise."""
    width = max(len(name) for name, *_ in rows)
    print(f"{'what':{width}s} {'ms':>8s}  notes")
    for name, t, note, _ in rows:
        print(f"{name:{width}s} {t:8.3f}  {note}")
    bad = [name for name, _, _, diff in rows if diff == diff and not diff < tolerance]
    if bad:
        print("past bf16 noise:", bad)
    return 1 if bad else 0


def kernel_note(compiled: Any, flops: int, ms: float, diff: float, base_ms: float) -> str:
    """A kernel row's notes: its rate, its difference, registers and spills a thread, and its time against today's."""
    regs = f"{getattr(compiled, 'n_regs', '?')}r/{getattr(compiled, 'n_spills', '?')}sp"
    return f"{flops / ms / 1e9:.0f} TF/s diff {diff:.1e} {regs} vs base {ms - base_ms:+.3f}"


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


def med(fn: Any) -> float:
    return float(do_bench(fn, warmup=50, rep=300, return_mode="median"))


def main() -> int:
    from triton.tools.tensor_descriptor import TensorDescriptor as TD

    torch.manual_seed(0)
    dev = {"device": DEVICE, "dtype": torch.bfloat16 if DEVICE == "cuda" else torch.float32}
    X = torch.randn(T, D, **dev)
    Wg, Wu = torch.randn(N, D, **dev) * D ** -0.5, torch.randn(N, D, **dev) * D ** -0.5
    Wd = torch.randn(D, N, **dev) * N ** -0.5
    dY = torch.randn(T, D, **dev)
    XA = torch.randn(T, 2 * R, **dev)
    Bg, Bu = torch.randn(N, R, **dev) * 0.05, torch.randn(N, R, **dev) * 0.05
    Ad = torch.randn(R, N, **dev) * 0.05
    dYB = torch.randn(T, R, **dev)
    sd, sg, su = 2.0, 2.0, 2.0
    flops = 2 * T * D * N
    rows: list[tuple[str, float, str, float]] = []  # name, median ms, notes, largest difference (NaN: none)
    nan = float("nan")
    sync = torch.cuda.synchronize if DEVICE == "cuda" else (lambda: None)

    # --- forward: cuBLAS e0, g0 + the tile kernel (the tile the autotuner picked on the H200: 16 x 256, 8 warps)
    e0 = X @ Wg.t()
    g0 = X @ Wu.t()
    h_ref = torch.empty_like(e0)

    def tiles_fwd() -> None:
        k.lora_swiglu_fwd[(triton.cdiv(T, 16), triton.cdiv(N, 256))](
            e0, g0, h_ref, XA, Bg, Bu, T, N, XA.stride(0), sg, su, R=R, BM=16, BN=256, num_warps=8, num_stages=2)

    tiles_fwd()
    t_gemm2 = med(lambda: (torch.mm(X, Wg.t(), out=e0), torch.mm(X, Wu.t(), out=g0)))
    t_tf = med(tiles_fwd)
    base_fwd = t_gemm2 + t_tf
    rows.append(("fwd cuBLAS 2 products", t_gemm2, f"{2 * flops / t_gemm2 / 1e9:.0f} TF/s", nan))
    rows.append(("fwd tile kernel", t_tf, "", nan))
    rows.append(("fwd baseline total", base_fwd, "", nan))
    e_ref = (e0.float() + sg * XA[:, :R].float() @ Bg.float().t()).to(X.dtype)
    g_ref = (g0.float() + su * XA[:, R:].float() @ Bu.float().t()).to(X.dtype)
    E, G, H = torch.empty_like(e0), torch.empty_like(e0), torch.empty_like(e0)
    def fwd_row(name: str, launch: Any) -> None:
        """Check ``launch`` against the tile design's forward (outputs poisoned first: all must be written), time it."""
        try:
            for t_ in (E, G, H):
                t_.fill_(float("nan"))
            c = launch()
            sync()
            diff = max(rel(E, e_ref), rel(G, g_ref), rel(H, h_ref))
            t = med(launch)
            rows.append((name, t, kernel_note(c, 2 * flops, t, diff, base_fwd), diff))
        except Exception as exc:
            rows.append((name, nan, f"{type(exc).__name__}: {str(exc)[:80]}", nan))

    def fwd_launch(bm: int, bn: int, bk: int, st: int, nw: int, ws: bool | None = None) -> Any:
        """A launch of the forward kernel at one tile; ``ws`` not None: the persistent variant."""
        args = (TD.from_tensor(X, [bm, bk]), TD.from_tensor(Wg, [bn, bk]), TD.from_tensor(Wu, [bn, bk]), E, G, H, XA,
                Bg, Bu, T, N, D, XA.stride(0), sg, su)
        kw: dict[str, Any] = {"R": R, "BM": bm, "BN": bn, "BK": bk, "GROUP_M": 8, "num_warps": nw, "num_stages": st}
        if ws is not None:
            return lambda: _fwd_persistent[(SMS,)](*args, **kw, PROGRAMS=SMS, WS=ws)
        return lambda: gemm_swiglu_fwd[(triton.cdiv(T, bm) * triton.cdiv(N, bn),)](*args, **kw)

    for bm, bn, bk, st, nw in FWD:
        fwd_row(f"fwd fused {bm}x{bn}x{bk} s{st} w{nw}", fwd_launch(bm, bn, bk, st, nw))
    for bm, bn, bk, st, nw, ws in FWD_P:
        fwd_row(f"fwd persistent {bm}x{bn}x{bk} s{st} w{nw}{' ws' if ws else ''}", fwd_launch(bm, bn, bk, st, nw, ws))
    fwd_launch(*FWD[0])()  # the last row may have failed (its outputs poisoned): the backward's e and g from the first
    e_keep, g_keep = E.clone(), G.clone()  # e and g as the fused forward leaves them, for the backward

    # --- backward: cuBLAS DW + the tile kernel (16 x 128, 8 warps), h kept (no h written); inputs restored
    e0_keep, g0_keep = e0.clone(), g0.clone()
    DW = dY @ Wd

    def restore0() -> None:
        e0.copy_(e0_keep)
        g0.copy_(g0_keep)

    def restore() -> None:
        E.copy_(e_keep)
        G.copy_(g_keep)

    def tiles_bwd() -> None:
        k.lora_swiglu_bwd[(triton.cdiv(T, 16), triton.cdiv(N, 128))](
            DW, e0, g0, dYB, Ad, XA, Bg, Bu, T, N, XA.stride(0), sd, sg, su, R=R, STORE_H=False, BM=16, BN=128,
            num_warps=8, num_stages=2)

    restore0()
    tiles_bwd()
    d_up_ref, d_gate_ref = e0.clone(), g0.clone()
    t_restore = med(restore)
    t_gemm = med(lambda: torch.mm(dY, Wd, out=DW))
    t_tb = med(lambda: (restore0(), tiles_bwd())) - t_restore
    base_bwd = t_gemm + t_tb
    rows.append(("bwd cuBLAS product", t_gemm, f"{flops / t_gemm / 1e9:.0f} TF/s", nan))
    rows.append(("bwd tile kernel", t_tb, "", nan))
    rows.append(("bwd baseline total", base_bwd, "", nan))
    def bwd_row(name: str, launch: Any) -> None:
        """Check ``launch`` against the tile design's gradients (its inputs restored first) and time it."""
        try:
            restore()
            c = launch()
            sync()
            diff = max(rel(E, d_up_ref), rel(G, d_gate_ref))
            t = med(lambda: (restore(), launch())) - t_restore
            rows.append((name, t, kernel_note(c, flops, t, diff, base_bwd), diff))
        except Exception as exc:
            rows.append((name, nan, f"{type(exc).__name__}: {str(exc)[:80]}", nan))

    def bwd_launch(bm: int, bn: int, bk: int, st: int, nw: int, ch: int, ws: bool | None = None) -> Any:
        """A launch of the backward kernel at one tile; ``ws`` not None: the persistent variant."""
        args = (TD.from_tensor(dY, [bm, bk]), TD.from_tensor(Wd, [bk, bn]), DW, E, G, dYB, Ad, T, N, D, sd)
        kw: dict[str, Any] = {"R": R, "STORE_H": False, "CHUNKS": ch, "BM": bm, "BN": bn, "BK": bk, "GROUP_M": 8,
                              "num_warps": nw, "num_stages": st}
        if ws is not None:
            return lambda: _bwd_persistent[(SMS,)](*args, **kw, PROGRAMS=SMS, WS=ws)
        return lambda: gemm_swiglu_bwd[(triton.cdiv(T, bm) * triton.cdiv(N, bn),)](*args, **kw)

    for bm, bn, bk, st, nw, ch in BWD:
        bwd_row(f"bwd fused {bm}x{bn}x{bk} s{st} w{nw} c{ch}", bwd_launch(bm, bn, bk, st, nw, ch))
    for bm, bn, bk, st, nw, ch, ws in BWD_P:
        bwd_row(f"bwd persistent {bm}x{bn}x{bk} s{st} w{nw} c{ch}{' ws' if ws else ''}",
                bwd_launch(bm, bn, bk, st, nw, ch, ws))
    return report(rows)


if __name__ == "__main__":
    sys.exit(main())
