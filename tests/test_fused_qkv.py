"""The fused Q/K/V LoRA Function (train/fused_qkv.py) against PEFT's own path on a real Qwen2 attention layer.

A two-layer Qwen2 is built from a config (its q/k/v projections carry a bias, as Qwen2.5's do), wrapped by PEFT
with LoRA on q/k/v, and one attention layer's projections are run both ways on the CPU in float64: outputs and the
gradients of X and of every LoRA matrix must agree.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers.lora import tiny_qwen2_lora
from train.unsloth_compat import import_unsloth

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("unsloth")
import_unsloth()  # as train() does: patches first, and keeps torch's alias check a warning under CI


def _attention(lora_alpha: int, dropout: float = 0.0) -> tuple[Any, Any]:
    model = tiny_qwen2_lora(["q_proj", "k_proj", "v_proj"], 4, lora_alpha, dropout)
    return model, model.base_model.model.model.layers[0].self_attn


def _run(fn: Any, attn: Any, X: Any, grads: tuple[Any, Any, Any]) -> dict[str, Any]:
    for p in attn.parameters():
        p.grad = None
    X = X.detach().clone().requires_grad_(True)
    outs = fn(attn, X)
    torch.autograd.backward(outs, grads)
    result = {"out": [o.detach() for o in outs], "dX": X.grad}
    for name, p in attn.named_parameters():
        if p.requires_grad:
            result[name] = p.grad.detach().clone()
    return result


@pytest.mark.parametrize("lora_alpha", [4, 8])  # LoRA scale 1 and 2
def test_fused_qkv_matches_peft_outputs_and_gradients(lora_alpha: int) -> None:
    from unsloth.models.llama import original_apply_qkv

    from train import fused_qkv

    model, attn = _attention(lora_alpha)
    assert attn.q_proj.base_layer.bias is not None  # the case Unsloth does not fuse
    assert fused_qkv.install(model) == 2
    assert attn.apply_qkv is fused_qkv.apply_qkv_with_bias
    X = torch.randn(2, 9, 64, dtype=torch.float64)
    grads = (torch.randn(2, 9, 64, dtype=torch.float64), torch.randn(2, 9, 32, dtype=torch.float64),
             torch.randn(2, 9, 32, dtype=torch.float64))
    ours = _run(fused_qkv.apply_qkv_with_bias, attn, X, grads)
    peft = _run(original_apply_qkv, attn, X, grads)
    assert set(ours) == set(peft)
    trained = [k for k in peft if "lora_" in k]
    assert len(trained) == 6  # A and B of q, k and v
    for key in peft:
        a, b = ours[key], peft[key]
        pairs = zip(a, b, strict=True) if isinstance(a, list) else [(a, b)]
        for x, y in pairs:
            assert x.shape == y.shape, key
            torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-9, msg=key)


def test_fused_qkv_leaves_dropout_to_peft() -> None:
    """LoRA dropout in training: Unsloth's guard says PEFT, and the hook gives PEFT's result (same RNG draws)."""
    from unsloth.models.llama import original_apply_qkv

    from train import fused_qkv

    model, attn = _attention(4, dropout=0.1)
    fused_qkv.install(model)
    X = torch.randn(1, 5, 64, dtype=torch.float64)
    torch.manual_seed(1)
    ours = fused_qkv.apply_qkv_with_bias(attn, X)
    torch.manual_seed(1)
    peft = original_apply_qkv(attn, X)
    for x, y in zip(ours, peft, strict=True):
        torch.testing.assert_close(x, y)


def test_install_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    from train import fused_qkv

    model, attn = _attention(4)
    monkeypatch.setenv("FORMA_FUSED_QKV", "0")
    assert fused_qkv.install(model) == 0
    assert not hasattr(attn, "apply_qkv")
