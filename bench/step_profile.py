"""Where a training step's GPU time goes: torch.profiler over a few steady steps, kernels grouped by what they do.

Used by ``bench/train_gpu.py`` (variant key ``profile``): the step clock's callbacks start the profiler at the
beginning of step ``start`` and stop it at the end of step ``start + steps - 1``; kernels are then summed by their
own GPU time into groups (matrix products, attention, 4-bit dequantisation, the loss over the vocabulary, norms,
activations, rotary embedding, the optimiser, copies, other). Names are matched by substring because the kernels
come from cuBLAS, FlashAttention, bitsandbytes, Triton (Unsloth's and torch.compile's) and aten, which share no
naming scheme; anything unmatched is reported under ``other`` with its top names so nothing hides.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

#: group -> name fragments (lower case), tried in this order; the first that matches wins.
GROUPS: list[tuple[str, tuple[str, ...]]] = [
    ("dequant_4bit", ("dequant", "kgemm_4bit", "4bit")),
    ("attention", ("flash", "fmha", "attention", "sdpa")),
    ("loss_vocab", ("cross_entropy", "crossentropy", "logsumexp", "_ce_", "log_softmax", "nll_loss")),
    ("matmul", ("gemm", "cutlass", "xmma", "nvjet", "cublas", "matmul", "wgmma")),
    ("optimizer", ("adam", "multi_tensor", "foreach")),
    ("norm", ("rms", "layernorm", "layer_norm")),
    ("rope", ("rope", "rotary")),
    ("activation", ("swiglu", "geglu", "silu", "gelu", "_fg_kernel", "dfg_kernel")),
    ("copy_fill", ("memcpy", "memset", "copy_", "fill", "cat_", "transpose", "contiguous")),
]


def group_of(name: str) -> str:
    low = name.lower()
    for group, fragments in GROUPS:
        if any(f in low for f in fragments):
            return group
    return "other"


def summarize(prof: Any, steps: int, wall_s: float) -> dict[str, Any]:
    """Per-group GPU milliseconds per step and share of the summed kernel time, plus the top kernels."""
    by_group: dict[str, float] = defaultdict(float)
    kernels: list[tuple[float, str, str]] = []
    for evt in prof.key_averages():
        us = float(getattr(evt, "self_device_time_total", 0.0) or getattr(evt, "self_cuda_time_total", 0.0) or 0.0)
        if us <= 0:
            continue
        group = group_of(evt.key)
        by_group[group] += us
        kernels.append((us, group, evt.key[:120]))
    total = sum(by_group.values()) or 1.0
    kernels.sort(reverse=True)
    return {
        "steps": steps, "wall_ms_per_step": round(1000 * wall_s / steps, 1),
        "kernel_ms_per_step": round(total / 1000 / steps, 1),
        "groups": {g: {"ms_per_step": round(us / 1000 / steps, 1), "share": round(us / total, 4)}
                   for g, us in sorted(by_group.items(), key=lambda kv: -kv[1])},
        "top_kernels": [{"ms_per_step": round(us / 1000 / steps, 2), "group": g, "name": n}
                        for us, g, n in kernels[:25]],
        "other_top": [n for _, g, n in kernels if g == "other"][:10],
    }


def attach(clock: Any, start: int, steps: int, out: Path) -> None:
    """Wrap ``clock``'s step callbacks so steps ``start .. start + steps - 1`` run under the profiler."""
    import time

    import torch
    from torch.profiler import ProfilerActivity, profile

    state: dict[str, Any] = {"n": 0, "prof": None, "t": 0.0}
    begin, end = clock.on_step_begin, clock.on_step_end

    def on_step_begin(*a: Any, **k: Any) -> Any:
        if state["n"] == start and state["prof"] is None:
            torch.cuda.synchronize()
            prof = profile(activities=[ProfilerActivity.CUDA])
            prof.__enter__()
            state["prof"] = prof
            state["t"] = time.perf_counter()
        return begin(*a, **k)

    def on_step_end(*a: Any, **k: Any) -> Any:
        result = end(*a, **k)
        state["n"] += 1
        if state["prof"] is not None and state["n"] == start + steps:
            torch.cuda.synchronize()
            wall = time.perf_counter() - state["t"]
            state["prof"].__exit__(None, None, None)
            summary = summarize(state["prof"], steps, wall)
            out.mkdir(parents=True, exist_ok=True)
            (out / "step_profile.json").write_text(json.dumps(summary, indent=1) + "\n")
            print("PROFILE " + json.dumps({g: v["ms_per_step"] for g, v in summary["groups"].items()}), flush=True)
            state["prof"] = False  # done; never again
        return result

    clock.on_step_begin = on_step_begin
    clock.on_step_end = on_step_end
