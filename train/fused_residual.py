"""The decoder block's residual adds folded into work that runs anyway: the RMSNorm backward and the MLP's last product.

Why this exists: a pre-norm block (Llama, Qwen2) reads its input ``x`` twice, once through the RMSNorm and once as the
residual, so autograd sums the two gradients of ``x`` in an ``add`` of its own, and the forward adds the block's
output to the residual in another: four passes over a tokens x hidden matrix a layer, ~13 ms of a ~0.81 s step in
the H200 trace of `forma train` (docs/train.md, "other": the ``CUDAFunctor_add`` rows), plus their launch gaps.

Here, in training, each block runs this forward instead of Unsloth's ``LlamaDecoderLayer_fast_forward`` (same
calls, same order):

* each RMSNorm is a Function that also hands its input on unchanged (``x, norm(x)``); its backward receives both
  gradients and its kernel writes ``d_norm + d_x`` in the one pass that reads ``d_norm`` anyway, so autograd has no
  gradient to sum (the ``+`` of the residual passes its gradient through without a kernel);
* the MLP's residual add is the ``beta = 1`` term of the down projection's product (train/fused_mlp.py), where
  cuBLAS reads it in the epilogue instead of a separate pass;
* the attention's residual add stays a plain add (Unsloth's o_proj Function owns that product).

The norm saves its input, as Unsloth's does by default (its opt-in ``FROM_Y`` saves the output and rebuilds the
normalised row as ``Y / W``; a first build here did that, and on the H200 its loss curve left Unsloth's by up to
0.054). The arithmetic follows Unsloth's RMSNorm kernels (train/fused_residual_kernels.py), so the loss
curve stays within bf16 noise.

Installed by `forma train` in speed mode on CUDA, where the fused MLP runs; ``FORMA_FUSED_RESIDUAL=0`` turns it
off. Generation, evaluation (no gradient), ``output_attentions`` and ``use_cache`` calls run Unsloth's forward.
``tests/test_fused_residual.py`` checks a whole tiny Qwen2 against transformers' own blocks (loss and every
gradient) and the kernels in Triton's interpreter.
"""

from __future__ import annotations

import types
from typing import Any

from train import switched_off

#: What :func:`install` did: layers whose forward was swapped, and why none were where that applies.
STATE: dict[str, Any] = {}
_CACHE: dict[str, Any] = {}
#: The attribute of a layer that holds the forward it had before :func:`install`.
ORIGINAL = "forma_original_forward"
#: Whether that forward returns a tuple (Unsloth's) rather than the hidden states alone (transformers' 4.5x blocks).
TUPLE = "forma_returns_tuple"
#: The training forward of Unsloth's Llama/Qwen2 blocks, whose calls :func:`layer_forward` makes in the same order.
UNSLOTH_FORWARD = "LlamaDecoderLayer_fast_forward"


def _use_triton(t: Any, use_triton: bool | None) -> bool:
    return t.is_cuda if use_triton is None else use_triton


def _block(n: int) -> tuple[int, int]:
    """A row per program: the power of two that holds the row, and warps to match (8 values a thread or more)."""
    import triton

    block = triton.next_power_of_2(n)
    return block, max(1, min(16, block // 256))


def rms_norm_forward(X: Any, W: Any, eps: float, use_triton: bool | None = None) -> tuple[Any, Any]:
    """``(Y, rstd)`` of a contiguous [T, N] ``X``: ``Y = (X rstd, rounded to W's dtype) * W`` in X's dtype."""
    import torch

    T, N = X.shape
    if _use_triton(X, use_triton):
        from train import fused_residual_kernels as k

        Y = torch.empty_like(X)
        rstd = torch.empty(T, device=X.device, dtype=torch.float32)
        block, warps = _block(N)
        k.rms_norm_fwd[(T,)](Y, X, W, rstd, N, float(eps), BLOCK=block, num_warps=warps)
        return Y, rstd
    acc = torch.promote_types(X.dtype, torch.float32)
    x = X.to(acc)
    rstd = torch.rsqrt(x.pow(2).mean(-1) + eps)
    return ((x * rstd[:, None]).to(W.dtype) * W).to(X.dtype), rstd


def rms_norm_backward(dY: Any, X: Any, W: Any, rstd: Any, dP: Any = None,
                      use_triton: bool | None = None) -> Any:
    """The gradient of the norm's input from the gradient of its output ``dY`` and the saved input ``X``, plus
    ``dP`` (the same activation's gradient through the residual stream) when given; all contiguous [T, N]."""
    import torch

    T, N = dY.shape
    if _use_triton(dY, use_triton):
        from train import fused_residual_kernels as k

        dX = torch.empty_like(dY)
        block, warps = _block(N)
        k.rms_norm_bwd[(T,)](dX, dY, X, W, rstd, dY if dP is None else dP, N, HAS_PASS=dP is not None,
                             BLOCK=block, num_warps=warps)
        return dX
    acc = torch.promote_types(dY.dtype, torch.float32)
    w = W.to(acc)
    normed = X.to(acc) * rstd.to(acc)[:, None]
    dyw = dY.to(acc) * w
    dx = rstd.to(acc)[:, None] / N * (N * dyw - normed * (dyw * normed).sum(-1, keepdim=True))
    if dP is not None:
        dx = dx + dP.to(acc)
    return dx.to(dY.dtype)


def _norm_function() -> Any:
    """The autograd Function, built on first use so importing this module does not import torch."""
    import torch

    class RMSNormPassThrough(torch.autograd.Function):
        """``(x, rmsnorm(x) * w)``: the input handed on as it is, so its two gradients meet in this backward."""

        @staticmethod
        def forward(ctx: Any, X: Any, W: Any, eps: float) -> tuple[Any, Any]:
            ctx.set_materialize_grads(False)
            shape = X.shape
            X2 = X.reshape(-1, shape[-1]).contiguous()
            Y, rstd = rms_norm_forward(X2, W, eps)
            ctx.save_for_backward(X2, W, rstd)
            return X, Y.view(shape)

        @staticmethod
        def backward(ctx: Any, d_pass: Any, dY: Any) -> tuple[Any, None, None]:
            X2, W, rstd = ctx.saved_tensors
            if dY is None:
                return d_pass, None, None
            shape = dY.shape
            dP = None if d_pass is None else d_pass.reshape(-1, shape[-1]).contiguous()
            dX = rms_norm_backward(dY.reshape(-1, shape[-1]).contiguous(), X2, W, rstd, dP)
            return dX.view(shape), None, None

    return RMSNormPassThrough


def norm_pass_through(norm: Any, X: Any) -> tuple[Any, Any]:
    """``(X, norm(X))`` through the Function; ``norm`` is a Llama/Qwen2 RMSNorm module."""
    if "function" not in _CACHE:
        _CACHE["function"] = _norm_function()
    return _CACHE["function"].apply(X, norm.weight, _eps(norm))


def _eps(norm: Any) -> float:
    return float(norm.variance_epsilon if hasattr(norm, "variance_epsilon") else norm.eps)


def layer_forward(self: Any, hidden_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
    """A decoder block's training forward with the residual adds folded (module doc). The model calls its blocks
    with keywords (Unsloth's ``causal_mask``, ``position_ids``, ..., or transformers' own); they go to the attention
    as they came, as both blocks' own forwards pass them. Any other call (positional arguments, as checkpointing
    makes; a cache; attention weights; no gradient) runs the forward the block had, with the same arguments."""
    import torch

    from train import fused_mlp

    if args or kwargs.get("use_cache") or kwargs.get("output_attentions") or \
            not (self.training and torch.is_grad_enabled()):
        return self.__dict__[ORIGINAL](hidden_states, *args, **kwargs)
    STATE["calls"] = STATE.get("calls", 0) + 1
    residual, hidden = norm_pass_through(self.input_layernorm, hidden_states)
    hidden = self.self_attn(hidden_states=hidden, **kwargs)[0]
    residual, hidden = norm_pass_through(self.post_attention_layernorm, residual + hidden)
    out = fused_mlp.apply_fused_mlp(self.mlp, hidden, residual)
    return (out,) if self.__dict__[TUPLE] else out  # Unsloth's blocks return a tuple, transformers' a tensor


def _frozen_norm(norm: Any) -> bool:
    """Whether ``norm`` is an RMSNorm with a frozen weight: the Function returns no weight gradient."""
    W = getattr(norm, "weight", None)
    return W is not None and not W.requires_grad and (hasattr(norm, "variance_epsilon") or hasattr(norm, "eps"))


def install(model: Any, *, force: bool = False) -> int:
    """Give every decoder block that runs Unsloth's forward, with a fused MLP and frozen norms, the forward
    above; the count. Only on CUDA unless ``force`` (the tests, which also take transformers' own blocks)."""
    import torch

    from train import fused_mlp

    uninstall(model)
    STATE.clear()
    if switched_off("FORMA_FUSED_RESIDUAL"):
        STATE.update({"layers": 0, "why": "off (FORMA_FUSED_RESIDUAL=0)"})
        return 0
    if not force and not torch.cuda.is_available():
        return 0
    count, seen, skipped = 0, set(), {"forward": 0, "mlp": 0, "norms": 0}
    for module in model.modules():
        mlp = getattr(module, "mlp", None)
        if mlp is None or not hasattr(module, "self_attn"):
            continue
        # by name: Unsloth assigns its function to the block class, and the object there is not always the one its
        # module exports (seen on the H200: an identity check found no block)
        name = getattr(type(module).forward, "__name__", "?")
        seen.add(name)
        if not force and name != UNSLOTH_FORWARD:
            skipped["forward"] += 1
            continue
        if getattr(mlp.__dict__.get("forward"), "__func__", None) is not fused_mlp.apply_fused_mlp:
            skipped["mlp"] += 1
            continue
        if not all(_frozen_norm(getattr(module, n, None))
                   for n in ("input_layernorm", "post_attention_layernorm")):
            skipped["norms"] += 1
            continue
        module.__dict__[ORIGINAL] = module.forward
        module.__dict__[TUPLE] = name == UNSLOTH_FORWARD
        module.forward = types.MethodType(layer_forward, module)
        count += 1
    if any(skipped.values()):  # why blocks kept their forward: another forward, an unfused MLP, a trained norm
        STATE["skipped"] = {k: v for k, v in skipped.items() if v}
        STATE["forwards"] = sorted(seen)
    STATE.update({"layers": count, "calls": 0})
    return count


def uninstall(model: Any) -> int:
    """Give every block the forward it had before :func:`install`; the count."""
    restored = 0
    for module in model.modules():
        original = module.__dict__.pop(ORIGINAL, None)
        module.__dict__.pop(TUPLE, None)
        if original is not None:
            module.__dict__.pop("forward", None)
            restored += 1
    return restored
