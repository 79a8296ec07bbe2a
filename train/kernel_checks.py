"""The two measurements every load-time kernel choice makes (train/fused_mlp.py's designs, train/fused_mlp_gated.py's
tiles, train/flash_attention4.py's check): how far a kernel's outputs are from a reference, and how long it takes.
One module, so the choices agree on what "differs" and "faster" mean."""

from __future__ import annotations

from typing import Any


def max_rel_diff(got: tuple[Any, ...], ref: tuple[Any, ...]) -> float:
    """The largest difference of any output, relative to the largest value of that output in ``ref``."""
    return max(float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12))
               for a, b in zip(got, ref, strict=True))


def timed_ms(fn: Any, reps: int, cuda: bool) -> float:
    """Milliseconds a call of ``fn`` takes, over ``reps`` calls (the caller has made the first, which compiles)."""
    import time

    import torch

    if cuda:
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(reps):
        fn()
    if cuda:
        torch.cuda.synchronize()
    return (time.perf_counter() - started) * 1000 / reps
