"""What the fused LoRA Functions (train/fused_qkv.py, train/fused_mlp.py) need from Unsloth, and where they may run.

Both lean on the same Unsloth 2026.10 internals: the checks its own fused Functions make at each call (several
adapters, DoRA, activation fake-quantisation, dropout, a LoRA bias) and ``get_lora_parameters``. Keeping those
checks in one place keeps the two Functions' notion of "plain LoRA" the same as Unsloth's.
"""

from __future__ import annotations

from typing import Any

from train import unsloth_compat

#: Unsloth's fast_lora helpers the guard calls; an Unsloth without them keeps its own paths (nothing is hooked).
NEEDED = ("_has_multiple_active_adapters", "_has_active_dora_adapter", "_has_activation_fake_quantizer",
          "_lora_dropout_and_bias", "_apply")


def fast_lora(*also: str) -> Any:
    """Unsloth's ``fast_lora`` module when it has every helper the guard needs (and ``also``), else None."""
    try:
        from unsloth.kernels import fast_lora as module
    except ImportError:
        return None
    unsloth_compat.relax_alias_check()
    return module if all(hasattr(module, name) for name in NEEDED + also) else None


def plain_lora(projs: tuple[Any, ...], X: Any, rank_multiple: int = 1) -> list[tuple[Any, ...]] | None:
    """``get_lora_parameters`` of each projection (W, quant state, A, B, scale) where their LoRA is plain at this
    call (one active adapter, no DoRA or fake-quantiser, no dropout, no LoRA bias, one shared rank, a multiple of
    ``rank_multiple``), else None: the caller then runs the path Unsloth or PEFT would."""
    from unsloth.kernels.utils import get_lora_parameters

    lora = fast_lora()
    if lora is None or any(lora._has_multiple_active_adapters(p) or lora._has_active_dora_adapter(p)
                           or lora._has_activation_fake_quantizer(p) for p in projs):
        return None
    extras = lora._lora_dropout_and_bias(projs, X)
    if extras is None or extras[0] is not None or any(b is not None for b in extras[1]):
        return None
    params = [get_lora_parameters(p) for p in projs]
    if any(A is None for _, _, A, _, _ in params):
        return None
    ranks = {A.shape[0] for _, _, A, _, _ in params}
    if len(ranks) != 1 or ranks.pop() % rank_multiple:
        return None
    return params
