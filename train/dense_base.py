"""Keep a QLoRA run's frozen 4-bit base dequantised once, on a card with room to spare.

Why this exists: the base of a QLoRA run never changes, yet every LoRA projection dequantises its NF4 weight to the
compute dtype again at each use: forward and backward, seven projections a layer, 252 kernels a step for
Qwen2.5-3B (~5 ms of a ~0.82 s step on the H200, plus the launch gaps between them; docs/train.md). On a card
where the step's plan leaves room (``memory_plan.choose``: no checkpointing and the dense copy fits the budget,
~5.4 GiB for Qwen2.5-3B), the projections here are dequantised once at load, and each LoRA layer's
``base_layer.weight`` becomes that bf16 copy. Unsloth's ``get_lora_parameters`` then finds no quant state and its
``fast_dequantize`` hands the weight back as it is, so Unsloth's Functions and forma's (train/fused_qkv.py,
train/fused_mlp.py) run unchanged on the same numbers: the copy is exactly what the per-use dequantisation made.
The copy is made with bitsandbytes' ``dequantize_4bit``, the
same NF4 decoding (Unsloth's own kernels are CUDA-only, and this also runs in the CPU tests). The 4-bit weight is
kept aside and put back by :func:`restore` before the adapter is saved and merged, so saving,
merging and GGUF export see the model as loaded. A base layer whose weight is dense answers ``forward`` with a
plain ``F.linear`` (bitsandbytes' forward needs the quant state), so a path that falls back to PEFT still runs.

The gate and up projections can take ``pad`` extra zero columns: train/fused_mlp.py writes its LoRA ``B`` matrices
there so that one cuBLAS product of the backward also yields the rank-16 products ``d_gate B_g`` and ``d_up B_u``
(see that module). The weight is then a view of the first ``in_features`` columns of the padded buffer.
"""

from __future__ import annotations

import types
from typing import Any

#: What :func:`install` did: layers made dense, the bytes the dense copies take, the padding given to gate/up.
STATE: dict[str, Any] = {}
_KEPT: list[tuple[Any, Any]] = []  # (base layer, its 4-bit weight) to put back


def _dense_forward(self: Any, x: Any, *args: Any, **kwargs: Any) -> Any:
    """A dense base layer's forward: bitsandbytes' ``Linear4bit.forward`` needs the quant state it no longer has."""
    import torch.nn.functional as F

    bias = None if self.bias is None else self.bias.to(x.dtype)
    return F.linear(x, self.weight.to(x.dtype), bias)


def _lora_base_layers(model: Any) -> list[tuple[str, Any]]:
    """(projection name, base layer) of every LoRA layer whose base weight is quantised."""
    found = []
    for name, module in model.named_modules():
        base = getattr(module, "base_layer", None)
        if base is None or not hasattr(module, "lora_A"):
            continue
        if getattr(getattr(base, "weight", None), "quant_state", None) is not None:
            found.append((name.rsplit(".", 1)[-1], base))
    return found


def install(model: Any, dtype: Any, pad: dict[str, int] | None = None) -> int:
    """Replace each quantised LoRA base weight with its dequantised copy in ``dtype``; the count replaced.

    ``pad`` maps projection names (``gate_proj``, ``up_proj``) to extra zero columns after ``in_features``.
    """
    import torch
    from bitsandbytes.functional import dequantize_4bit  # bitsandbytes' own: the CPU has it too, Unsloth's not

    restore(model)  # an earlier run in this process left its copies: start from the 4-bit weights
    pad = pad or {}
    count, nbytes = 0, 0
    for proj, base in _lora_base_layers(model):
        W4 = base.weight
        with torch.no_grad():
            dense = dequantize_4bit(W4.data, W4.quant_state).to(dtype)
            extra = int(pad.get(proj, 0))
            if extra:
                full = torch.zeros(dense.shape[0], dense.shape[1] + extra, dtype=dtype, device=dense.device)
                full[:, :dense.shape[1]].copy_(dense)
                del dense
                dense = full[:, :full.shape[1] - extra]
                nbytes += full.numel() * full.element_size()
            else:
                nbytes += dense.numel() * dense.element_size()
        _KEPT.append((base, W4))
        base.weight = torch.nn.Parameter(dense, requires_grad=False)
        base.forward = types.MethodType(_dense_forward, base)
        count += 1
    STATE.clear()
    STATE.update({"layers": count, "gib": round(nbytes / 2**30, 2), "pad": dict(pad) if count else {}})
    return count


def restore(model: Any | None = None) -> int:
    """Put the 4-bit weights back (and bitsandbytes' forward); the count restored. Frees the dense copies."""
    restored = 0
    while _KEPT:
        base, W4 = _KEPT.pop()
        base.weight = W4
        base.__dict__.pop("forward", None)
        restored += 1
    return restored


def padded(W: Any, columns: int) -> Any | None:
    """The padded buffer behind a dense weight view that has at least ``columns`` extra columns, else None."""
    if getattr(W, "quant_state", None) is not None or W.dim() != 2 or W.stride(1) != 1:
        return None
    width = W.stride(0)
    if width < W.shape[1] + columns:
        return None
    return W.as_strided((W.shape[0], width), (width, 1))
