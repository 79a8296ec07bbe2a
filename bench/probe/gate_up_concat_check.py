"""GPU check: the MLP's gate and up projections as one matrix product instead of two, forward and backward.

Why: in the H200 trace of `forma train` (docs/train.md) the MLP's base products run at 690-730 TFLOP/s, each
[T, 2,048] x [2,048, 11,008] (gate, up) or its transpose in the backward (dX += d_gate W_g + d_up W_u). With the two
dequantised weights side by side, the forward is one [T, 2,048] x [2,048, 22,016] product and the backward one
[T, 22,016] x [22,016, 2,048] product (the SwiGLU kernels would then read e and g, and write their gradients, as the
two halves of one [T, 22,016] buffer). This times both ways at the bench's shape, with the same FLOPs, and checks
that the results agree.

Result on the H200 (2026-12-02, bench/results/gate_up_concat_check-h200-2026-12-02.log): one product saves 0.04 ms
a layer (forward 0.09 ms slower, backward 0.13 ms faster), 1.5 ms a step: not worth a second buffer layout in the
SwiGLU kernels, so forma keeps two products.

Run on the GPU machine (torch only): python3 bench/probe/gate_up_concat_check.py
"""

from __future__ import annotations

import json

import torch
from triton.testing import do_bench

T, H, N = 32576, 2048, 11008


def main() -> None:
    torch.manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device="cuda", dtype=torch.bfloat16)

    X = rand(T, H)
    Wg, Wu = rand(N, H) * 0.02, rand(N, H) * 0.02
    Wgu = torch.cat([Wg, Wu])  # [2N, H]: what dequantising both into one buffer gives
    D = rand(T, 2 * N)  # d_gate | d_up, one buffer
    dg, du = D[:, :N].contiguous(), D[:, N:].contiguous()

    def fwd_two() -> tuple[torch.Tensor, torch.Tensor]:
        return X @ Wg.t(), X @ Wu.t()

    def fwd_one() -> torch.Tensor:
        return X @ Wgu.t()

    def bwd_two() -> torch.Tensor:
        dX = dg @ Wg
        return dX.addmm_(du, Wu)

    def bwd_one() -> torch.Tensor:
        return D @ Wgu

    e, g = fwd_two()
    one = fwd_one()
    # train.kernel_checks.max_rel_diff's arithmetic, written here: importing train needs pydantic, which the GPU
    # image lacks, and this probe runs there with torch alone
    rel_f = float(max((e - one[:, :N]).abs().max(), (g - one[:, N:]).abs().max()) / e.abs().max())
    rel_b = float((bwd_two().float() - bwd_one().float()).abs().max() / bwd_two().float().abs().max())
    flops = 2 * T * H * 2 * N
    rows = {}
    for name, fn in (("forward, two products", fwd_two), ("forward, one product", fwd_one),
                     ("backward dX, product + accumulate", bwd_two), ("backward dX, one product", bwd_one)):
        ms = do_bench(fn, warmup=25, rep=400)
        rows[name] = {"ms": round(ms, 4), "tflops": round(flops / ms / 1e9, 1)}
        print(f"{name}: {ms:.3f} ms, {flops / ms / 1e9:.0f} TFLOP/s", flush=True)
    saved = (rows["forward, two products"]["ms"] - rows["forward, one product"]["ms"]
             + rows["backward dX, product + accumulate"]["ms"] - rows["backward dX, one product"]["ms"])
    print("RESULT " + json.dumps({"device": torch.cuda.get_device_name(0), "shape": [T, H, N], "rows": rows,
                                  "max_rel_diff": {"forward": rel_f, "backward": rel_b},
                                  "ms_saved_per_layer": round(saved, 4), "ms_saved_per_step_36_layers":
                                  round(36 * saved, 2)}))


if __name__ == "__main__":
    main()
