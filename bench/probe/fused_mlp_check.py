"""GPU check of train/fused_mlp.py's Triton kernels: values against the torch arithmetic they replace, and time
against what Unsloth runs in their place (two ``addmm_`` LoRA epilogues over tokens x 11,008 then its SwiGLU kernel;
in the backward one ``addmm_`` then its SwiGLU backward kernel), at a 16-row packed step's shape.

Prints the largest differences (relative to the largest value) and the times; exits 1 past bf16 noise.
Run on the GPU machine: python3 bench/probe/fused_mlp_check.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import unsloth  # noqa: F401  (patches first, as train() does)

# isort: split
import torch
from triton.testing import do_bench
from unsloth.kernels.swiglu import swiglu_DWf_DW_dfg_kernel, swiglu_fg_kernel

from train import fused_mlp

T, N, R = 32768, 11008, 16
TOLERANCE = 2e-2  # a few bf16 ulps, relative to the largest value


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12))


def torch_path(fn, *args):  # the same arithmetic on the GPU through torch (the kernels' reference)
    cuda = fused_mlp._use_triton
    fused_mlp._use_triton = lambda t: False  # type: ignore[assignment]
    try:
        return fn(*args)
    finally:
        fused_mlp._use_triton = cuda  # type: ignore[assignment]


def main() -> int:
    torch.manual_seed(0)
    bf = dict(device="cuda", dtype=torch.bfloat16)
    e0, g0, DW = (torch.randn(T, N, **bf) * 2 for _ in range(3))
    XA, dYB = torch.randn(T, 2 * R, **bf), torch.randn(T, R, **bf)
    Bg, Bu, Ad = torch.randn(N, R, **bf) * 0.05, torch.randn(N, R, **bf) * 0.05, torch.randn(R, N, **bf) * 0.05
    sg, su, sd = 1.0, 1.0, 1.0
    h = fused_mlp.swiglu_forward(e0, g0, XA, Bg, Bu, sg, su)
    h_ref = torch_path(fused_mlp.swiglu_forward, e0, g0, XA, Bg, Bu, sg, su)
    worst = {"forward h": rel(h, h_ref)}
    got = fused_mlp.swiglu_backward(DW.clone(), e0.clone(), g0.clone(), dYB, Ad, XA, Bg, Bu, sd, sg, su)
    ref = torch_path(fused_mlp.swiglu_backward, DW.clone(), e0.clone(), g0.clone(), dYB, Ad, XA, Bg, Bu, sd, sg, su)
    worst.update({f"backward {n}": rel(a, b) for n, a, b in zip(("h", "d_up", "d_gate"), got, ref, strict=True)})
    for name, r in worst.items():
        print(f"{name}: largest difference {r:.2e} of the largest value")

    e, g, w = e0.clone(), g0.clone(), DW.clone()

    def unsloth_forward() -> None:
        e.copy_(e0).addmm_(XA[:, :R], Bg.t())
        g.copy_(g0).addmm_(XA[:, R:], Bu.t())
        swiglu_fg_kernel(e.view(1, T, N), g.view(1, T, N))

    def unsloth_backward() -> None:
        w.addmm_(dYB, Ad)
        swiglu_DWf_DW_dfg_kernel(w, e, g)

    copies = do_bench(lambda: (e.copy_(e0), g.copy_(g0)))  # the two copies unsloth_forward needs to stay repeatable
    ms = {"unsloth forward (addmm_ x2 + SwiGLU)": do_bench(unsloth_forward) - copies,
          "fused forward": do_bench(lambda: fused_mlp.swiglu_forward(e0, g0, XA, Bg, Bu, sg, su)),
          "unsloth backward (addmm_ + SwiGLU backward)": do_bench(unsloth_backward),
          "fused backward": do_bench(lambda: fused_mlp.swiglu_backward(w, e, g, dYB, Ad, XA, Bg, Bu, sd, sg, su))}
    for name, t in ms.items():
        print(f"{name}: {t:.3f} ms per layer")
    saved = (ms["unsloth forward (addmm_ x2 + SwiGLU)"] - ms["fused forward"]
             + ms["unsloth backward (addmm_ + SwiGLU backward)"] - ms["fused backward"])
    print(f"saved per layer {saved:.3f} ms; x36 layers {36 * saved:.1f} ms a step")
    fwd, bwd, _ = fused_mlp._triton_kernels()
    print(f"tiles the autotuner chose: forward {getattr(fwd, 'best_config', '?')}, "
          f"backward {getattr(bwd, 'best_config', '?')}")
    moved = 3 * T * N * 2 / 1e9  # GB a forward reads and writes (e0, g0 in; h out); the backward moves twice that
    print(f"bandwidth: fused forward {moved / ms['fused forward']:.2f} TB/s, backward "
          f"{2 * moved / ms['fused backward']:.2f} TB/s (the rank-16 operands left out)")
    return 0 if max(worst.values()) < TOLERANCE else 1


if __name__ == "__main__":
    raise SystemExit(main())
