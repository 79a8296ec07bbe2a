"""GPU check: the rank-16 LoRA products that read a whole activation, with the small matrix in either layout.

Why: the H200 trace of `forma train` lists ``d_gate @ B_g`` and ``d_up @ B_u`` ([T, 11,008] x [11,008, 16], B in
PEFT's row-major [out, r] layout) under cuBLAS's ``32x256 ... NNN`` kernel, and ``h @ A_d^T`` (the same bytes, the
small matrix transposed) under ``16x256 ... TNN``. These products are memory-bound (they read T x N bf16 once), so
the small matrix's layout only picks the kernel. This times ``X @ B`` with B as stored and with B handed over
column-major (``B.t().contiguous().t()``, the copy timed too), for every such shape in a step, checks the results
agree, and names the kernels cuBLAS ran.

Result on the H200 (2026-12-02, bench/results/skinny_products_check-h200-2026-12-02.log): B as stored already runs
at 4.03 TB/s for the 11,008-wide case; column-major is no faster there and slower for the narrower ones, so forma
keeps B as stored. (The trace's rows are per step, two products a layer: read per product they looked like 2 TB/s.)

Run on the GPU machine (torch only): python3 bench/probe/skinny_products_check.py
"""

from __future__ import annotations

import json

import torch
from torch.profiler import ProfilerActivity, profile
from triton.testing import do_bench

T = 32576  # a packed 16-row micro-batch's token count, padded to a multiple of 64, from the trace
SHAPES = {  # name: (K, r) of X [T, K] @ B [K, r]
    "d_gate @ B_g, d_up @ B_u (fused MLP backward)": (11008, 16),
    "dY @ B_d (fused MLP backward), dY_q @ B_q (fused Q/K/V backward)": (2048, 16),
    "dY_k @ B_k, dY_v @ B_v (fused Q/K/V backward)": (256, 16),
}


def kernel_name(fn: object) -> str:
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()  # type: ignore[operator]
        torch.cuda.synchronize()
    names = [e.key for e in prof.key_averages() if (getattr(e, "self_device_time_total", 0) or 0) > 0]
    return ", ".join(names)[:120]


def main() -> None:
    torch.manual_seed(0)
    rows = []
    for name, (K, r) in SHAPES.items():
        X = torch.randn(T, K, device="cuda", dtype=torch.bfloat16)
        B = torch.randn(K, r, device="cuda", dtype=torch.bfloat16) * 0.02

        def as_stored(X: torch.Tensor = X, B: torch.Tensor = B) -> torch.Tensor:
            return X @ B

        def column_major(X: torch.Tensor = X, B: torch.Tensor = B) -> torch.Tensor:
            return X @ B.t().contiguous().t()

        a, b = as_stored(), column_major()
        # train.kernel_checks.max_rel_diff's arithmetic, written here: importing train needs pydantic, which the GPU
        # image lacks, and this probe runs there with torch alone
        diff = float((a.float() - b.float()).abs().max() / a.float().abs().max())
        ms_a, ms_b = do_bench(as_stored, warmup=50, rep=300), do_bench(column_major, warmup=50, rep=300)
        gbytes = X.numel() * 2 / 1e9
        rows.append({"product": name, "shape": [T, K, r], "ms_as_stored": round(ms_a, 4),
                     "ms_column_major": round(ms_b, 4), "speedup": round(ms_a / ms_b, 2),
                     "tb_s_as_stored": round(gbytes / ms_a, 2), "tb_s_column_major": round(gbytes / ms_b, 2),
                     "max_rel_diff": diff, "kernel_as_stored": kernel_name(as_stored),
                     "kernel_column_major": kernel_name(column_major), "layout_copy_in_same_call": True})
        del X, B
    print(json.dumps({"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
