"""Let Unsloth run packed (padding-free) attention through one flash varlen call per layer on torch 2.11.

Why this exists: with packing, a batch reaches the model as one long row of many chats. Unsloth 2026.10 computes its
attention with torch's flash varlen kernel (one call per layer) only when ``torch.nn.attention.varlen.varlen_attn``
accepts ``enable_gqa``, which arrived in torch 2.12. On torch 2.11 (the GPU image's) it falls back to one SDPA call
per run of equal-length chats: about a hundred calls per layer, forward, recompute and backward, for a 16-row
packed batch of our chats, which makes the step launch-bound. Unsloth's own "lean" varlen path does not need
``enable_gqa`` at all: it calls aten's flash varlen kernels directly, and FlashAttention-2 takes grouped-query K/V
heads natively. So only Unsloth's entry check is in the way; :func:`enable` hands it a ``varlen_attn`` that accepts
``enable_gqa`` (repeating K/V heads itself, for the non-lean route) and turns the lean path on.

It changes nothing where Unsloth already uses varlen (torch >= 2.12), where there is no CUDA or no flash kernel, or
when ``FORMA_TORCH_VARLEN=0``. ``bench/probe/packed_attention_check.py`` compares it with Unsloth's per-segment path
on the GPU (outputs and gradients); the bench reports both paths' losses.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from train import switched_off


def with_gqa(varlen_attn: Callable[..., Any]) -> Callable[..., Any]:
    """``varlen_attn`` with torch 2.12's ``enable_gqa``: K/V heads are repeated so query head h reads K/V head
    h // (query heads / K/V heads), grouped-query attention's pairing (tested against SDPA's ``enable_gqa``)."""

    def varlen_attn_gqa(query: Any, key: Any, value: Any, cu_seq_q: Any, cu_seq_k: Any, max_q: int, max_k: int,
                        *, enable_gqa: bool = False, **kwargs: Any) -> Any:
        if enable_gqa and key.shape[1] != query.shape[1]:
            groups = query.shape[1] // key.shape[1]
            key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
        return varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, **kwargs)

    return varlen_attn_gqa


def enable() -> bool:
    """Switch Unsloth's packed attention to torch's flash varlen kernel where it fell back; True if it did."""
    if switched_off("FORMA_TORCH_VARLEN"):
        return False
    import torch

    if not torch.cuda.is_available() or torch.version.hip is not None:
        return False
    try:
        import torch.nn.attention.varlen as varlen_module
        from unsloth.utils import attention_dispatch as dispatch
    except ImportError:
        return False
    if dispatch._TORCH_VARLEN_ATTN is not None:  # Unsloth uses varlen already (torch >= 2.12)
        return False
    if switched_off("UNSLOTH_TORCH_VARLEN"):  # the user turned varlen off in Unsloth
        return False
    varlen_attn = varlen_module.varlen_attn
    if "window_size" not in inspect.signature(varlen_attn).parameters:  # torch < 2.11
        return False
    if not getattr(torch.backends.cuda, "is_flash_attention_available", lambda: True)():
        return False

    dispatch._TORCH_VARLEN_ATTN = with_gqa(varlen_attn)
    if not switched_off("UNSLOTH_LEAN_VARLEN"):
        # The lean path runs unless cuDNN would take the call; torch 2.11 sends varlen to cuDNN only on sm_100+.
        should_use_cudnn = getattr(varlen_module, "_should_use_cudnn", None)

        def can_use_cudnn(query: Any, *_: Any, **__: Any) -> bool:
            return bool(should_use_cudnn and query.is_cuda and should_use_cudnn(query.device.index))

        dispatch._varlen_can_use_cudnn = can_use_cudnn
        dispatch._LEAN_VARLEN = True
    return True
