"""Keep a QLoRA run's frozen 4-bit base dequantised once, on a card with room to spare.

Why this exists: the base of a QLoRA run never changes, yet every LoRA projection dequantises its NF4 weight to the
compute dtype again at each use: forward and backward, seven projections a layer, 252 kernels a step for
Qwen2.5-3B (~5 ms of a ~0.82 s step on the H200, plus the launch gaps between them; docs/train.md). On a card
where the step's plan leaves room (``memory_plan.with_extras``: no checkpointing, and the dense copy fits the
budget: 5.2 GiB for Qwen2.5-3B), the projections are dequantised once at load with bitsandbytes' own
``dequantize_4bit`` (the same NF4 decoding; Unsloth's kernels for it are CUDA-only, this also runs in the CPU
tests), and each LoRA layer's ``base_layer.weight`` becomes that copy. Unsloth's ``get_lora_parameters`` then finds
no quant state and its ``fast_dequantize`` hands the weight back as it is, so Unsloth's Functions and forma's
(train/fused_qkv.py, train/fused_mlp.py) run unchanged on the numbers the per-use dequantisation made.

The 4-bit weights are kept aside and put back by :func:`restore` before the adapter is saved and merged, so
saving, merging and GGUF export see the model as loaded. A base layer whose weight is dense answers ``forward``
with a plain ``F.linear`` (bitsandbytes' forward needs the quant state), so a path that falls back to PEFT runs.

Measured on the H200 (docs/train.md, 2026-12-02, third session): +0.6 points of MFU alone in an A/B sweep (61.6%
-> 62.2% at the median step). A variant that padded the gate and up copies with the LoRA ``B`` columns, so that
dX's product would also yield the rank-16 products ``d_gate B_g`` and ``d_up B_u``, gained nothing (the wider
product cost what the two skinny ones had) and was taken out.
"""

from __future__ import annotations

import types
from typing import Any

#: What :func:`install` did: layers made dense and the GiB the dense copies take.
STATE: dict[str, Any] = {}
#: The attribute of a base layer that holds its 4-bit weight while the dense copy is in use.
KEPT = "forma_weight_4bit"


def _dense_forward(self: Any, x: Any) -> Any:
    """A dense base layer's forward: bitsandbytes' ``Linear4bit.forward`` needs the quant state it no longer has."""
    import torch.nn.functional as F

    bias = None if self.bias is None else self.bias.to(x.dtype)
    return F.linear(x, self.weight.to(x.dtype), bias)


def _quantised_lora_bases(model: Any) -> list[Any]:
    """The base layer of every LoRA layer whose base weight is quantised."""
    bases = (getattr(module, "base_layer", None) for module in model.modules() if hasattr(module, "lora_A"))
    return [b for b in bases if getattr(getattr(b, "weight", None), "quant_state", None) is not None]


def install(model: Any, dtype: Any) -> int:
    """Replace each quantised LoRA base weight with its dequantised copy in ``dtype``; the count replaced."""
    import torch
    from bitsandbytes.functional import dequantize_4bit  # bitsandbytes' own: the CPU has it too, Unsloth's not

    restore(model)  # copies an earlier install left: start from the 4-bit weights
    count, nbytes = 0, 0
    for base in _quantised_lora_bases(model):
        W4 = base.weight
        with torch.no_grad():
            dense = dequantize_4bit(W4.data, W4.quant_state).to(dtype)
        nbytes += dense.numel() * dense.element_size()
        base.__dict__[KEPT] = W4  # not through Module.__setattr__: it would register a second parameter
        base.weight = torch.nn.Parameter(dense, requires_grad=False)
        base.forward = types.MethodType(_dense_forward, base)
        count += 1
    STATE.clear()
    STATE.update({"layers": count, "gib": round(nbytes / 2**30, 2)})
    return count


def restore(model: Any) -> int:
    """Put the 4-bit weights back (and bitsandbytes' forward) in ``model``; the count restored. Frees the copies."""
    restored = 0
    for module in model.modules():
        W4 = module.__dict__.pop(KEPT, None)
        if W4 is not None:
            module.weight = W4
            module.__dict__.pop("forward", None)
            restored += 1
    return restored
