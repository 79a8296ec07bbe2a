"""GPU check of train/fused_mlp.py's Triton kernels at a 16-row packed step's shape (tokens x 11,008, rank 16).

1. Values: the kernels against the same arithmetic in torch (``use_triton=False``).
2. Time against what Unsloth runs in their place: in the forward two ``addmm_`` LoRA epilogues over tokens x 11,008,
   its SwiGLU kernel and the ``h A_d^T`` product; in the backward one ``addmm_``, its SwiGLU backward kernel and the
   ``d_gate B_g`` and ``d_up B_u`` products (each design's time includes whichever of those products it leaves to
   cuBLAS), for both kernel designs (train/fused_mlp_kernels.py: tiles, the default; rows). Next to them, the time
   a plain pass over the same matrices takes (``torch.add``): the memory-bound floor.
3. A tile sweep of both designs: every (BM, BN, warps, stages) in SWEEP, timed on the raw kernels, best first, with
   the registers and spills a thread the compiler reports.

Prints the largest differences (relative to the largest value) and the times; exits 1 past bf16 noise.
Run on the GPU machine: python3 bench/probe/fused_mlp_check.py [--no-sweep]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from train.unsloth_compat import import_unsloth

import_unsloth()  # patches first, as train() does
# isort: split
import torch  # noqa: E402
import triton  # noqa: E402
from triton.testing import do_bench  # noqa: E402
from unsloth.kernels.swiglu import swiglu_DWf_DW_dfg_kernel, swiglu_fg_kernel  # noqa: E402

from train import fused_mlp, fused_mlp_kernels  # noqa: E402
from train.kernel_checks import max_rel_diff  # noqa: E402

T, N, R = 32768, 11008, 16
TOLERANCE = 2e-2  # a few bf16 ulps, relative to the largest value
KINDS = ("tiles", "rows")
#: Tiles the sweep times, per design: the autotuner's candidates and a few neighbours (BM, BN, warps, stages).
SWEEP = {"tiles": sorted({(c.kwargs["BM"], c.kwargs["BN"], c.num_warps, c.num_stages)
                          for c in fused_mlp_kernels.CONFIGS}
                         | {(16, 64, 4, 2), (16, 256, 8, 2), (64, 128, 8, 2), (128, 64, 8, 2), (32, 256, 8, 2)}),
         "rows": sorted({(c.kwargs["BM"], c.kwargs["BN"], c.num_warps, c.num_stages)
                         for c in fused_mlp_kernels.CONFIGS_ROWS}
                        | {(16, 32, 4, 2), (32, 32, 4, 2), (32, 64, 8, 2), (64, 64, 8, 2), (32, 32, 8, 1)})}


def _sweep(kind: str, e0: torch.Tensor, g0: torch.Tensor, w: torch.Tensor, e: torch.Tensor, g: torch.Tensor,
           XA: torch.Tensor, dYB: torch.Tensor, Bg: torch.Tensor, Bu: torch.Tensor, Ad: torch.Tensor,
           scales: tuple[float, float, float]) -> None:
    """Time design ``kind``'s raw kernels at every tile in SWEEP (the tile design without the cuBLAS products it
    leaves to train/fused_mlp.py); print the best eight of each, the worst, and registers and spills a thread."""
    sd, sg, su = scales
    hA = torch.empty(T, R, device="cuda", dtype=torch.bfloat16)
    G = torch.empty(T, 2 * R, device="cuda", dtype=torch.bfloat16)
    k = fused_mlp_kernels
    results: dict[str, list[tuple[float, tuple[int, int, int, int], str]]] = {"forward": [], "backward": []}
    for bm, bn, nw, ns in SWEEP[kind]:
        grid = (triton.cdiv(T, bm),) if kind == "rows" else (triton.cdiv(T, bm), triton.cdiv(N, bn))
        kw = {"R": R, "BM": bm, "BN": bn, "num_warps": nw, "num_stages": ns}

        def fwd(grid: tuple[int, ...] = grid, kw: dict[str, int] = kw) -> Any:
            if kind == "rows":
                return k.lora_swiglu_fwd_rows[grid](e0, g0, w, hA, XA, Bg, Bu, Ad, T, N, XA.stride(0), sg, su, **kw)
            return k.lora_swiglu_fwd[grid](e0, g0, w, XA, Bg, Bu, T, N, XA.stride(0), sg, su, **kw)

        def bwd(grid: tuple[int, ...] = grid, kw: dict[str, int] = kw) -> Any:
            if kind == "rows":
                return k.lora_swiglu_bwd_rows[grid](w, e, g, G, dYB, Ad, XA, Bg, Bu, T, N, XA.stride(0), sd, sg, su,
                                                    **kw)
            return k.lora_swiglu_bwd[grid](w, e, g, dYB, Ad, XA, Bg, Bu, T, N, XA.stride(0), sd, sg, su, **kw)

        for name, launch in (("forward", fwd), ("backward", bwd)):
            try:
                compiled = launch()
                regs = f"{getattr(compiled, 'n_regs', '?')}r/{getattr(compiled, 'n_spills', '?')}sp"
                results[name].append((do_bench(launch), (bm, bn, nw, ns), regs))
            except Exception as exc:  # out of shared memory or registers: not a candidate
                print(f"  {kind} {name} BM={bm} BN={bn} warps={nw} stages={ns}: {type(exc).__name__}")
    for name, rows in results.items():
        rows.sort()
        print(f"sweep {kind} {name} (ms; BM, BN, warps, stages; registers/spills): "
              + "; ".join(f"{t:.3f} {c} {r}" for t, c, r in rows[:8])
              + f"; worst {rows[-1][0]:.3f} {rows[-1][1]} {rows[-1][2]}")


def main(sweep: bool) -> int:
    torch.manual_seed(0)
    bf: dict[str, Any] = {"device": "cuda", "dtype": torch.bfloat16}
    e0, g0, DW = (torch.randn(T, N, **bf) * 2 for _ in range(3))
    XA, dYB = torch.randn(T, 2 * R, **bf), torch.randn(T, R, **bf)
    Bg, Bu, Ad = torch.randn(N, R, **bf) * 0.05, torch.randn(N, R, **bf) * 0.05, torch.randn(R, N, **bf) * 0.05
    sg, su, sd = 1.0, 1.0, 1.0
    fwd_args = (XA, Bg, Bu, Ad, sg, su)
    bwd_args = (dYB, Ad, XA, Bg, Bu, sd, sg, su)
    worst: dict[str, float] = {}
    for kind in KINDS:
        got_f = fused_mlp.swiglu_forward(e0, g0, *fwd_args, kind=kind)
        ref_f = fused_mlp.swiglu_forward(e0, g0, *fwd_args, use_triton=False)
        worst.update({f"{kind} forward {n}": max_rel_diff((a,), (b,))
                      for n, a, b in zip(("h", "hA"), got_f, ref_f, strict=True)})
        del got_f, ref_f
        got = fused_mlp.swiglu_backward(DW.clone(), e0.clone(), g0.clone(), *bwd_args, kind=kind)
        ref = fused_mlp.swiglu_backward(DW.clone(), e0.clone(), g0.clone(), *bwd_args, use_triton=False)
        worst.update({f"{kind} backward {n}": max_rel_diff((a,), (b,))
                      for n, a, b in zip(("h", "d_up", "d_gate", "G"), got, ref, strict=True)})
        del got, ref
    for name, r in worst.items():
        print(f"{name}: largest difference {r:.2e} of the largest value")

    e, g, w = e0.clone(), g0.clone(), DW.clone()

    def unsloth_forward() -> None:
        e.copy_(e0).addmm_(XA[:, :R], Bg.t())
        g.copy_(g0).addmm_(XA[:, R:], Bu.t())
        h = swiglu_fg_kernel(e.view(1, T, N), g.view(1, T, N))
        h.view(T, N) @ Ad.t()

    def unsloth_backward() -> None:
        w.addmm_(dYB, Ad)
        swiglu_DWf_DW_dfg_kernel(w, e, g)
        torch.cat([g @ Bg, e @ Bu], dim=1)

    copies = do_bench(lambda: (e.copy_(e0), g.copy_(g0)))  # the two copies unsloth_forward needs to stay repeatable
    ms = {"unsloth forward": do_bench(unsloth_forward) - copies,
          "unsloth backward": do_bench(unsloth_backward),
          "floor forward": do_bench(lambda: torch.add(e0, g0, out=w)),
          "floor backward": do_bench(lambda: (torch.add(e0, g0, out=w), torch.add(g0, DW, out=e),
                                              torch.add(DW, e0, out=g)))}
    for kind in KINDS:
        ms[f"{kind} forward"] = do_bench(lambda k=kind: fused_mlp.swiglu_forward(e0, g0, *fwd_args, kind=k))
        ms[f"{kind} backward"] = do_bench(lambda k=kind: fused_mlp.swiglu_backward(w, e, g, *bwd_args, kind=k))
    print("ms per layer; unsloth = addmm_ LoRA epilogues + its SwiGLU kernel + the rank-16 products over the "
          "width (forward h Ad^T; backward d_gate Bg, d_up Bu); floor = torch.add over the same matrices "
          "(forward 2 reads 1 write, backward 3 and 3)")
    moved = 3 * T * N * 2 / 1e9  # GB a forward reads and writes (e0, g0 in; h out); the backward moves twice that
    for path in ("unsloth", "floor", *KINDS):
        f, b = ms[f"{path} forward"], ms[f"{path} backward"]
        saved = ms["unsloth forward"] + ms["unsloth backward"] - f - b
        print(f"{path}: forward {f:.3f} ({moved / f:.2f} TB/s), backward {b:.3f} ({2 * moved / b:.2f} TB/s); "
              f"against unsloth {36 * saved:+.1f} ms a step over 36 layers")
    for kind in KINDS:
        fwd, bwd, _ = fused_mlp._triton_kernels(kind)
        print(f"{kind}: tiles the autotuner chose: forward {getattr(fwd, 'best_config', '?')}, "
              f"backward {getattr(bwd, 'best_config', '?')}")
    if sweep:
        for kind in KINDS:
            _sweep(kind, e0, g0, w, e, g, XA, dYB, Bg, Bu, Ad, (sd, sg, su))
    return 0 if max(worst.values()) < TOLERANCE else 1


if __name__ == "__main__":
    raise SystemExit(main("--no-sweep" not in sys.argv))
