"""One fused LoRA Q/K/V projection for attention layers whose base projections carry a bias (Qwen2, Qwen2.5).

Why this exists: Unsloth 2026.10 fuses the LoRA Q/K/V projections into one autograd Function only when the base
``q_proj`` / ``k_proj`` / ``v_proj`` have no bias. Qwen2's do, so on our default model family every layer falls back
to PEFT's ``Linear4bit`` forward, three times a layer: the 4-bit matmul, a defensive ``clone`` of its output, the
two LoRA products, a scale and an add, each its own kernel, and autograd's own adds of three ``dX`` contributions in
the backward (the H200 profile in docs/train.md: ~34 ms a step of bf16 adds and ~30 ms of small LoRA products). This
Function computes the same thing with the base bias in the matmul epilogue and the LoRA term added there too
(``addmm``), reads X once for all three LoRA ``A`` products (their ``A`` matrices stacked, as the three projections
share their input), keeps ``X @ A`` from the forward so the backward does not recompute it, and sums ``dX`` in place.

It runs only where PEFT's result is plain LoRA (one active adapter, no dropout, no DoRA, no LoRA bias, frozen base
bias): Unsloth's own guard (``_lora_dropout_and_bias``) decides that at every call, and anything else keeps PEFT's
path. Off with ``FORMA_FUSED_QKV=0``. ``tests/test_fused_qkv.py`` checks outputs and every gradient against PEFT.
"""

from __future__ import annotations

from typing import Any

from train import lora_guard, switched_off


def _qkv_function() -> Any:
    """The autograd Function, built on first use so importing this module imports neither torch nor Unsloth."""
    import torch
    from unsloth.kernels.utils import fast_dequantize, torch_amp_custom_bwd, torch_amp_custom_fwd

    class LoRAQKVWithBias(torch.autograd.Function):
        """Q, K, V = X W^T + b + s (X A^T) B^T for the three projections, in one forward and one backward.

        Backward (G_p = s_p dY_p B_p, stacked as G = [G_q | G_k | G_v], A = [A_q; A_k; A_v]):
        dX = sum_p dY_p W_p + G A;  dA = G^T X;  dB_p = s_p dY_p^T (X A_p^T).
        """

        @staticmethod
        @torch_amp_custom_fwd
        def forward(ctx: Any, X: Any, weights: tuple[Any, ...], quants: tuple[Any, ...], biases: tuple[Any, ...],
                    Aq: Any, Ak: Any, Av: Any, Bq: Any, Bk: Any, Bv: Any, scales: tuple[float, ...]) -> Any:
            dtype = X.dtype
            X2 = X.reshape(-1, X.shape[-1])
            A = torch.cat([Aq, Ak, Av]).to(dtype)
            XA = X2 @ A.t()  # [tokens, 3r]: one read of X for the three LoRA branches
            r = Aq.shape[0]
            outs = []
            for i, (W, quant, bias, B) in enumerate(zip(weights, quants, biases, (Bq, Bk, Bv), strict=True)):
                Wd = fast_dequantize(W, quant, dtype=dtype)
                out = X2 @ Wd.t() if bias is None else torch.addmm(bias.to(dtype), X2, Wd.t())
                del Wd
                out.addmm_(XA[:, i * r:(i + 1) * r], B.to(dtype).t(), alpha=scales[i])
                outs.append(out.view(*X.shape[:-1], out.shape[-1]))
            ctx.weights, ctx.quants, ctx.scales, ctx.r = weights, quants, scales, r
            ctx.save_for_backward(X, XA, A, Bq, Bk, Bv)
            return tuple(outs)

        @staticmethod
        @torch_amp_custom_bwd
        def backward(ctx: Any, dQ: Any, dK: Any, dV: Any) -> Any:
            X, XA, A, Bq, Bk, Bv = ctx.saved_tensors
            r, scales = ctx.r, ctx.scales
            dtype = X.dtype
            X2 = X.reshape(-1, X.shape[-1])
            dYs = [d.reshape(-1, d.shape[-1]).to(dtype) for d in (dQ, dK, dV)]
            Gs, dBs = [], []
            for i, (dY, B) in enumerate(zip(dYs, (Bq, Bk, Bv), strict=True)):
                G = dY @ B.to(dtype)  # [tokens, r]
                Gs.append(G if scales[i] == 1 else G.mul_(scales[i]))
                dB = dY.t() @ XA[:, i * r:(i + 1) * r]  # [out, r], B's own layout
                dBs.append(dB if scales[i] == 1 else dB.mul_(scales[i]))
            G = torch.cat(Gs, dim=1)  # [tokens, 3r]
            dA = G.t() @ X2  # [3r, in]: one read of X for the three A gradients
            dX = G @ A  # the three LoRA terms at once; the base terms are summed into it in place
            for dY, W, quant in zip(dYs, ctx.weights, ctx.quants, strict=True):
                Wd = fast_dequantize(W, quant, dtype=dtype)
                dX.addmm_(dY, Wd)
                del Wd
            dAq, dAk, dAv = dA[:r], dA[r:2 * r], dA[2 * r:]
            return (dX.view(X.shape), None, None, None, dAq, dAk, dAv, dBs[0], dBs[1], dBs[2], None)

    return LoRAQKVWithBias


_FUNCTION: Any = None


def apply_qkv_with_bias(self: Any, X: Any) -> tuple[Any, Any, Any]:
    """Unsloth's ``apply_qkv`` hook for one attention layer: the fused Function where PEFT's result is plain LoRA."""
    global _FUNCTION
    from unsloth.models.llama import original_apply_qkv

    projs = (self.q_proj, self.k_proj, self.v_proj)
    params = lora_guard.plain_lora(projs, X)
    biases = tuple(getattr(getattr(p, "base_layer", p), "bias", None) for p in projs)
    if params is None or any(b is not None and b.requires_grad for b in biases):
        return original_apply_qkv(self, X)  # type: ignore[no-any-return]
    if _FUNCTION is None:
        _FUNCTION = _qkv_function()
    (Wq, Qq, Aq, Bq, Sq), (Wk, Qk, Ak, Bk, Sk), (Wv, Qv, Av, Bv, Sv) = params
    return lora_guard.fast_lora()._apply(  # type: ignore[no-any-return]
        _FUNCTION, X, (Wq, Wk, Wv), (Qq, Qk, Qv), biases, Aq, Ak, Av, Bq, Bk, Bv, (float(Sq), float(Sk), float(Sv)))


def install(model: Any) -> int:
    """Hook every attention layer that Unsloth left on PEFT's Q/K/V path because of a base bias; the count hooked.

    A layer Unsloth fused itself (no base bias) keeps Unsloth's Function.
    """
    if switched_off("FORMA_FUSED_QKV"):
        return 0
    if lora_guard.fast_lora() is None:  # no Unsloth, or another one: keep its own path
        return 0
    from unsloth.models.llama import original_apply_qkv

    hooked = 0
    for module in model.modules():
        projs = [getattr(module, name, None) for name in ("q_proj", "k_proj", "v_proj")]
        if any(p is None or not hasattr(p, "lora_A") for p in projs):
            continue
        if getattr(module, "apply_qkv", original_apply_qkv) is not original_apply_qkv:
            continue  # Unsloth's own fused Function (no base bias), or someone else's hook
        if all(getattr(getattr(p, "base_layer", p), "bias", None) is None for p in projs):
            continue
        module.apply_qkv = apply_qkv_with_bias
        hooked += 1
    return hooked
