"""Pick the memory-saving settings from the card a job runs on and the job's shape, and count the FLOPs it does.

Gradient checkpointing trades compute for memory. On the H200 the same packed QLoRA job (Qwen2.5-3B, 16 rows of
2,048 tokens) ran at 22,747 real tokens/s with Unsloth's offloaded checkpointing in 5.8 GiB, and at 34,246 tokens/s
with none in 79.1 GiB (docs/train.md, ``bench/train_gpu.py sweep``): a card with room to spare should not pay the
offload. The plan estimates the activation memory of a step from the model's shape and picks the fastest mode that
fits with a safety margin:

- ``none``: every activation kept (about ``ACT_BYTES`` bytes per token, per layer, per hidden unit: 79.1 GiB minus
  the weights over 32,768 tokens x 36 layers x 2,048 hidden on that run);
- ``gpu``: plain checkpointing keeps each layer's input (2 bytes per hidden unit in bf16) plus one layer's
  activations while recomputing;
- ``offload``: Unsloth's checkpointing moves those layer inputs to CPU memory: almost nothing stays on the card.

When even offloading does not fit the configured micro-batch (``batch_size`` rows or chats), ``auto`` splits it:
the largest divisor of ``batch_size`` that fits becomes the micro-batch and gradient accumulation grows by the same
factor, so the tokens per optimiser step (and so the training) stay the same; only the memory and the speed change.
A smaller micro-batch is not tried while a checkpointing mode fits the configured one: which of the two is faster
was not measured (issue 17).

With no checkpointing and room left, two speed extras follow, each only if the budget still holds it (in this
order, as the first is small and saves work in every projection): ``dense_base`` keeps the frozen 4-bit base
dequantised once in bf16 (train/dense_base.py; ~2 bytes per linear parameter) and ``keep_mlp_h`` keeps each layer's
SwiGLU output for the backward (train/fused_mlp.py; 2 bytes per token per layer per intermediate unit). A forced
checkpointing mode takes neither: it was chosen to save memory.

A config can force a mode (``gradient_checkpointing: unsloth | true | false``); ``auto`` asks this module, and a
forced mode keeps the configured micro-batch. The training report records the choice, the estimate and why.

MFU counts model FLOPs for LoRA on a frozen base: about 4 per base parameter per token (2 forward, 2 for the
backward pass through the frozen weights, which computes activation gradients but no weight gradients; the LoRA
matrices' own FLOPs are a rounding error next to that); recomputation from checkpointing is not counted, as is usual
for MFU. The peak is the bf16 dense rate the card reaches on plain matrix products.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from train import switched_off

Mode = Literal["none", "gpu", "offload"]

#: Activation bytes per token per layer per hidden unit without checkpointing (Unsloth, bf16, fused loss),
#: measured on the H200: (79.1 - 5.8) GiB / (32,768 tokens x 36 layers x 2,048 hidden).
ACT_BYTES = 32.6
#: Fraction of the card's free memory a plan may fill (allocator fragmentation, the optimiser's spikes, eval).
HEADROOM = 0.80
#: bf16 dense matmul rate reached on plain products (TFLOP/s), by card name; measured on this workplace's H200
#: (KINDS.md: ~790) and taken as the same for the H100 SXM, whose matrix units are the same.
PEAK_TFLOPS = {"H200": 790.0, "H100": 790.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0}
#: The environment variable that turns each speed extra off (for A/B runs: ``bench/train_gpu.py sweep``).
SWITCHES = {"dense_base": "FORMA_DENSE_BASE", "keep_mlp_h": "FORMA_KEEP_MLP_H"}
#: How the config spells each mode for Unsloth's ``use_gradient_checkpointing``.
UNSLOTH_VALUE: dict[Mode, bool | str] = {"none": False, "gpu": True, "offload": "unsloth"}


@dataclass(frozen=True)
class MemoryPlan:
    mode: Mode
    why: str
    tokens_per_step: int
    estimate_gib: dict[str, float]
    free_gib: float | None
    #: rows (packed) or chats per forward pass, and the factor the config's gradient accumulation is multiplied by
    micro_batch: int = 1
    accumulation_factor: int = 1
    #: speed extras (see the module doc) and why they were or were not taken
    dense_base: bool = False
    keep_mlp_h: bool = False
    extras_why: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def estimate(layers: int, hidden: int, params: float, tokens: int, weight_bytes: float) -> dict[str, float]:
    """GiB a step needs in each mode: weights, plus what each mode keeps of the activations."""
    gib = 2.0**30
    weights = params * weight_bytes / gib
    full = tokens * layers * hidden * ACT_BYTES / gib
    one_layer = full / layers
    inputs = tokens * layers * hidden * 2 / gib
    return {"weights": round(weights, 2), "none": round(weights + full, 2),
            "gpu": round(weights + inputs + one_layer, 2), "offload": round(weights + one_layer, 2)}


def with_extras(plan: MemoryPlan, *, quantization: str, linear_params: float, layers: int, intermediate: int
                ) -> MemoryPlan:
    """``plan`` with the speed extras its budget still holds (see the module doc); only without checkpointing."""
    if plan.mode != "none" or plan.free_gib is None or not linear_params:
        return plan
    gib = 2.0**30
    budget = plan.free_gib * HEADROOM
    used = plan.estimate_gib["none"]
    taken: dict[str, bool] = {}
    notes = []
    sizes = {"dense_base": linear_params * 2 / gib,
             "keep_mlp_h": plan.tokens_per_step * layers * intermediate * 2 / gib}
    for name, size in sizes.items():
        if name == "dense_base" and quantization != "4bit":
            notes.append("dense_base: no 4-bit base to dequantise")
            continue
        if switched_off(SWITCHES[name]):
            notes.append(f"{name}: off ({SWITCHES[name]}=0)")
            continue
        taken[name] = used + size <= budget
        if taken[name]:
            used += size
        notes.append(f"{name}: {'~' if taken[name] else 'would need ~'}{size:.1f} GiB"
                     f"{'' if taken[name] else ' more than the budget holds'}")
    why = "; ".join(notes) + f" (~{used:.1f} of {budget:.1f} GiB)"
    return replace(plan, dense_base=taken.get("dense_base", False), keep_mlp_h=taken.get("keep_mlp_h", False),
                   extras_why=why)


def choose(*, layers: int, hidden: int, params: float, tokens: int, quantization: str,
           free_gib: float | None, forced: bool | str | None = None, batch_size: int = 1) -> MemoryPlan:
    """The fastest mode whose estimate fits ``HEADROOM`` of the free memory; ``forced`` (the config) wins.

    ``tokens`` is one micro-batch of ``batch_size`` rows at most; when no mode fits it, the micro-batch is split
    (see the module doc). The speed extras are :func:`with_extras`'s to add.
    """
    weight_bytes = 0.56 if quantization == "4bit" else 2.0  # NF4 with its scales, or bf16
    est = estimate(layers, hidden, params, tokens, weight_bytes)
    if forced is not None and forced != "auto":
        mode: Mode = "offload" if forced == "unsloth" else "gpu" if forced is True else "none"
        return MemoryPlan(mode, "set in the config", tokens, est, free_gib, batch_size)
    if free_gib is None:
        return MemoryPlan("offload", "free memory unknown: the safest mode", tokens, est, None, batch_size)
    budget = free_gib * HEADROOM
    for candidate in ("none", "gpu", "offload"):
        if est[candidate] <= budget:
            why = (f"{candidate}: needs ~{est[candidate]:.1f} GiB of {free_gib:.1f} GiB free "
                   f"(budget {HEADROOM:.0%}: {budget:.1f} GiB); faster modes do not fit" if candidate != "none"
                   else f"none: all activations fit (~{est['none']:.1f} GiB of a {budget:.1f} GiB budget)")
            return MemoryPlan(candidate, why, tokens, est, free_gib, batch_size)  # type: ignore[arg-type]
    for micro in sorted((d for d in range(1, batch_size) if batch_size % d == 0), reverse=True):
        split_tokens = tokens * micro // batch_size
        split = estimate(layers, hidden, params, split_tokens, weight_bytes)
        for candidate in ("none", "gpu", "offload"):
            if split[candidate] <= budget:
                factor = batch_size // micro
                why = (f"{candidate} with the micro-batch split {batch_size} -> {micro} and gradient accumulation "
                       f"x{factor} (same tokens per optimiser step): {batch_size} at once needs ~{est['offload']:.1f}"
                       f" GiB even offloaded; {micro} needs ~{split[candidate]:.1f} GiB of a {budget:.1f} GiB budget")
                return MemoryPlan(candidate, why, split_tokens, split, free_gib, micro, factor)  # type: ignore[arg-type]
    return MemoryPlan("offload", f"even offloaded with a micro-batch of 1 (~{est['offload']:.1f} GiB at "
                      f"{batch_size}) exceeds the budget; trying anyway", tokens, est, free_gib, batch_size)


def peak_tflops(device_name: str) -> float | None:
    for key, value in PEAK_TFLOPS.items():
        if key in device_name:
            return value
    return None


def mfu(params: float, tokens_per_s: float | None, device_name: str) -> dict[str, Any]:
    """Model FLOP utilisation with the count written down (see the module doc)."""
    peak = peak_tflops(device_name)
    if not tokens_per_s or peak is None:
        return {"mfu": None, "flops_per_token": 4 * params, "peak_tflops": peak}
    achieved = 4 * params * tokens_per_s / 1e12
    return {"mfu": round(achieved / peak, 4), "model_tflops": round(achieved, 1), "flops_per_token": 4 * params,
            "peak_tflops": peak, "count": "4 x base parameters per token (forward 2, backward through frozen "
            "weights 2); recomputation not counted"}
