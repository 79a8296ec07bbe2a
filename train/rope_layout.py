"""Packed RoPE gradients written in the layout of Q and K themselves, so autograd does not copy them back.

Why this exists: Unsloth 2026.10 views the Q and K projections as ``[batch, heads, tokens, head_dim]`` transposes of
their ``[batch, tokens, heads * head_dim]`` outputs and rotates them with ``Fast_RoPE_Embedding_QK`` when the batch is
packed (position ids given). Its forward keeps that layout, but its backward writes dQ and dK into fresh
*contiguous* ``[batch, heads, tokens, head_dim]`` buffers. The transpose's and the view's backward then have to turn
them back into ``[batch, tokens, heads * head_dim]``: one full copy of dQ and one of dK per layer (on the H200 trace
in docs/train.md, ``aten::copy_`` of ``[1, T, 16, 128]``, ~6.6 ms of an ~830 ms step). Unsloth's own unpacked
function (``Fast_RoPE_Embedding_QK_Positions``) already writes its gradients in the input's layout; this does the
same for the packed one. Same kernel, same arithmetic, same values: only the output strides change (the kernel
takes any strides).

Off with ``FORMA_ROPE_LAYOUT=0``. ``tests/test_rope_layout.py`` runs Unsloth's kernel in Triton's interpreter and
checks that the gradients are bitwise those of Unsloth's function and reach the projection without a copy.
"""

from __future__ import annotations

from typing import Any

from train import switched_off

_INSTALLED: Any = None


def _input_layout(X: Any) -> bool:
    """Whether ``X`` is a ``[batch, heads, tokens, head_dim]`` transpose of a contiguous ``[batch, tokens, ...]``."""
    return X is not None and X.dim() == 4 and X.transpose(1, 2).is_contiguous()


def _function() -> Any:
    """The replacement Function, a subclass of Unsloth's with only the backward's buffers changed."""
    import torch
    from unsloth.kernels import rope_embedding as rope

    base = rope.Fast_RoPE_Embedding_QK

    class RoPEQKGradInInputLayout(base):  # type: ignore[misc, valid-type]
        """Unsloth's packed RoPE on Q and K; dQ and dK come back in the layout Q and K had."""

        @staticmethod
        def forward(ctx: Any, Q: Any, K: Any, cos: Any, sin: Any, rope_indices: Any) -> Any:
            ctx.q_input_layout, ctx.k_input_layout = _input_layout(Q), _input_layout(K)
            return base.forward(ctx, Q, K, cos, sin, rope_indices)

        @staticmethod
        def backward(ctx: Any, dQ: Any, dK: Any) -> Any:
            # Out of place, as Unsloth's: gradients can share storage with each other or another branch.
            def buffer(grad: Any, input_layout: bool) -> Any:
                if input_layout:
                    return rope._bshd_buffer(grad)
                return torch.empty(grad.shape, dtype=grad.dtype, device=grad.device)

            dQ_out, dK_out = buffer(dQ, ctx.q_input_layout), buffer(dK, ctx.k_input_layout)
            with rope.torch_gpu_device(dQ.device):
                rope._rope_qk(dQ, dK, dQ_out, dK_out, ctx.cos, ctx.sin, ctx.rope_indices, ctx.has_indices, True,
                              rope._eager_kernel)
            return dQ_out, dK_out, None, None, None

    return RoPEQKGradInInputLayout


def installed() -> bool:
    """Whether the layout-keeping Function is what Unsloth's packed RoPE calls now (the training report says so)."""
    if _INSTALLED is None:
        return False
    from unsloth.kernels import rope_embedding as rope

    return rope.Fast_RoPE_Embedding_QK is _INSTALLED


def install() -> bool:
    """Put the layout-keeping Function in place of Unsloth's packed RoPE; True if it is (now or already) in place.

    Unsloth's eager RoPE entry looks the Function up in its module at every call, so replacing the module attribute
    is enough. Nothing changes where Unsloth is missing or is a version without these internals.
    """
    global _INSTALLED
    if switched_off("FORMA_ROPE_LAYOUT"):
        return False
    try:
        from unsloth.kernels import rope_embedding as rope
    except ImportError:
        return False
    if _INSTALLED is not None and rope.Fast_RoPE_Embedding_QK is _INSTALLED:
        return True
    needed = ("Fast_RoPE_Embedding_QK", "_bshd_buffer", "_rope_qk", "_eager_kernel", "torch_gpu_device",
              "_fast_rope_embedding_eager")
    if not all(hasattr(rope, name) for name in needed):
        return False
    _INSTALLED = _function()
    rope.Fast_RoPE_Embedding_QK = _INSTALLED
    return True
