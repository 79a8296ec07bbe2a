"""Packed attention through FlashAttention-4's Hopper kernels, where the ``flash-attn-4`` package is installed.

Why this exists: on the H200, attention was the largest piece of a packed `forma train` step outside the model's
own matrix products (~74 ms of ~0.84 s). Unsloth's packed path calls torch's bundled flash varlen kernel,
FlashAttention-2, which uses none of Hopper's warpgroup matrix instructions or TMA. FlashAttention-4
(``flash_attn.cute``, Tri Dao's kernels written in NVIDIA's CUTLASS DSL) has Hopper (sm90) forward and backward
kernels, takes grouped-query K/V heads natively and needs no CUDA build: its compiler ships as wheels. On the
H200, at a 16-row packed step's shape (102 chats of mean 321 tokens, 16 query and 2 K/V heads, head size 128),
forward + backward took 1.23 ms a layer against FlashAttention-2's 2.06 (``bench/probe/fa4_attention_check.py``,
``bench/results/fa4_attention_check-h200-2026-12-02.log``).

How: Unsloth's packed attention calls ``attention_dispatch._varlen_attn_call(Q, K, V, cu_seqlens, max_seqlen, *,
scale, window_size, enable_gqa)`` once per layer, with Q, K, V flat ``[tokens, heads, head_dim]``. :func:`install`
wraps it: causal calls with no sliding window in bf16 / fp16 go to ``flash_attn_varlen_func``; anything else, and
every call while torch compiles, goes to Unsloth's call as before. Before the first FlashAttention-4 call for a
head layout, :func:`agreement_error` runs both on a small packed row of that layout (forward and backward) and
keeps Unsloth's call, with the reason, if they differ past bf16 noise: a kernel that compiles but computes
something else never trains a model.

Why not torch's own switch (``activate_flash_attention_impl("FA4")``, which Unsloth's
``UNSLOTH_FLASH_ATTENTION_IMPL`` uses): torch 2.11's glue unpacks two values from ``_flash_attn_fwd``, and the
FlashAttention-4 sources that match the CUTLASS DSL wheels carrying the Python DSL (4.5.x) return four (seen on
the H200: ``ValueError: too many values to unpack``). Calling ``flash_attn_varlen_func`` needs neither.

Off with ``FORMA_FA4=0``. Without the package, without CUDA, or on a card other than Hopper or Blackwell, nothing
changes. The training report's ``flash_attention_4`` says whether it ran and, if not, why.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from train import switched_off
from train.kernel_checks import max_rel_diff

# What install() and the first calls decided; copied into the training report.
STATE: dict[str, Any] = {"installed": False, "reason": None, "layouts": {}}

_PROBE_LENGTHS = (200, 1, 333, 64, 130)  # a packed row with a one-token chat and a ragged tail
_TOLERANCE = 2e-2  # of the largest value: bf16 noise between two correct kernels is ~4e-3 here (probe log)


def agreement_error(candidate: Callable[..., Any], reference: Callable[..., Any], heads: int, kv_heads: int,
                    head_dim: int, dtype: Any, device: Any) -> str | None:
    """Run ``candidate`` and ``reference`` (both ``_varlen_attn_call``-shaped) on one small packed row, forward and
    backward; None if output and all three input gradients agree within :data:`_TOLERANCE`, else why not."""
    import torch

    g = torch.Generator(device=device).manual_seed(1234)
    total = sum(_PROBE_LENGTHS)
    cu = torch.tensor([0, *torch.tensor(_PROBE_LENGTHS).cumsum(0).tolist()], device=device, dtype=torch.int32)
    inputs = [torch.randn(total, h, head_dim, device=device, dtype=dtype, generator=g)
              for h in (heads, kv_heads, kv_heads)]
    grad = torch.randn(total, heads, head_dim, device=device, dtype=dtype, generator=g)
    results = []
    for fn in (reference, candidate):
        leaves = [x.clone().requires_grad_() for x in inputs]
        try:
            # the first packed call may come inside a checkpointed (no-grad) forward: this row has its own graph
            with torch.inference_mode(False), torch.enable_grad():
                out = fn(*leaves, cu, max(_PROBE_LENGTHS), scale=None, window_size=(-1, 0),
                         enable_gqa=heads != kv_heads)
                out.backward(grad)
        except Exception as exc:  # a kernel that fails here would fail in training: keep the reference
            return f"{type(exc).__name__}: {exc}"[:300]
        results.append([out.detach(), *[x.grad for x in leaves]])
    for name, got, ref in zip(("output", "dQ", "dK", "dV"), results[1], results[0], strict=True):
        if got is None or not bool(torch.isfinite(got).all()):
            return f"{name} is missing or not finite"
        diff = max_rel_diff((got,), (ref,))
        if diff > _TOLERANCE:
            return f"{name} differs from the bundled flash kernel by {diff:.3g} of its largest value"
    return None


def routed(original: Callable[..., Any], fa4_varlen: Callable[..., Any],
           check: Callable[[Callable[..., Any], Callable[..., Any], int, int, int, Any, Any], str | None]
           = agreement_error) -> Callable[..., Any]:
    """``original`` (Unsloth's ``_varlen_attn_call``) with causal, window-free, half-precision calls sent to
    ``fa4_varlen`` (``flash_attn_varlen_func``'s signature), once ``check`` passed for the call's head layout."""
    import torch

    verdicts: dict[tuple[int, int, int, Any], str | None] = {}

    def via_fa4(q: Any, k: Any, v: Any, cu_seqlens: Any, max_seqlen: int, *, scale: Any, window_size: Any,
                enable_gqa: bool) -> Any:
        out, _lse = fa4_varlen(q, k, v, cu_seqlens_q=cu_seqlens, cu_seqlens_k=cu_seqlens, max_seqlen_q=max_seqlen,
                               max_seqlen_k=max_seqlen, softmax_scale=scale, causal=True)
        return out

    def varlen_attn_call(q: Any, k: Any, v: Any, cu_seqlens: Any, max_seqlen: int, *, scale: Any,
                         window_size: Any, enable_gqa: bool) -> Any:
        takes = (tuple(window_size) == (-1, 0) and q.dtype in (torch.bfloat16, torch.float16)
                 and not torch.compiler.is_compiling())
        if takes:
            layout = (q.shape[1], k.shape[1], q.shape[2], q.dtype)
            if layout not in verdicts:
                verdicts[layout] = check(via_fa4, original, *layout, q.device)
                STATE["layouts"][f"{layout[0]}q/{layout[1]}kv/{layout[2]}/{str(layout[3]).removeprefix('torch.')}"] = (
                    verdicts[layout] or "FlashAttention-4")
            if verdicts[layout] is None:
                return via_fa4(q, k, v, cu_seqlens, max_seqlen, scale=scale, window_size=window_size,
                               enable_gqa=enable_gqa)
        return original(q, k, v, cu_seqlens, max_seqlen, scale=scale, window_size=window_size,
                        enable_gqa=enable_gqa)

    # install() is idempotent by this mark, and puts the original back when FA4 is off for a later run
    varlen_attn_call.forma_original = original  # type: ignore[attr-defined]
    return varlen_attn_call


def unavailable_reason() -> str | None:
    """Why FlashAttention-4 cannot run here, or None if it can."""
    if switched_off("FORMA_FA4"):
        return "off (FORMA_FA4=0)"
    import torch

    if not torch.cuda.is_available() or torch.version.hip is not None:
        return "no CUDA device"
    major = torch.cuda.get_device_capability()[0]
    if major not in (9, 10):  # FlashAttention-4's Hopper and Blackwell kernels; FlashAttention-2 elsewhere
        return f"compute capability {major}.x (FlashAttention-4 is used on 9.x and 10.x only)"
    try:
        from flash_attn.cute import flash_attn_varlen_func  # noqa: F401
    except Exception as exc:  # not installed, or its CUTLASS DSL does not import
        why = f"{type(exc).__name__}: {exc}"[:160]
        return (f"flash_attn.cute does not import ({why}); to use it, install flash-attn-4 with the pins in "
                "docs/train.md ('FlashAttention-4 on Hopper')")
    return None


def install() -> bool:
    """Send Unsloth's packed attention calls to FlashAttention-4 where it can run; True if installed.

    Where it cannot (or ``FORMA_FA4=0``), a wrapper left by an earlier run in this process is taken out again, so
    the report never says "off" while FlashAttention-4 still runs."""
    reason = unavailable_reason()
    if reason is not None:
        loaded = sys.modules.get("unsloth.utils.attention_dispatch")
        original = getattr(getattr(loaded, "_varlen_attn_call", None), "forma_original", None)
        if original is not None:
            loaded._varlen_attn_call = original  # type: ignore[union-attr]
    else:
        try:
            from unsloth.utils import attention_dispatch as dispatch
        except ImportError as exc:
            reason = f"Unsloth's attention dispatch does not import ({exc})"
        else:
            current = getattr(dispatch, "_varlen_attn_call", None)
            if current is None:
                reason = "this Unsloth has no _varlen_attn_call to route"
            elif getattr(current, "forma_original", None) is None:
                from flash_attn.cute import flash_attn_varlen_func

                dispatch._varlen_attn_call = routed(current, flash_attn_varlen_func)
    STATE.update(installed=reason is None, reason=reason)
    return reason is None
