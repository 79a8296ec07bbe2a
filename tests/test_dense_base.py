"""The frozen 4-bit base kept dequantised (train/dense_base.py) on a real QLoRA model: a two-layer Qwen2 whose
projections are bitsandbytes NF4 layers (quantised on the CPU), wrapped by PEFT; and the fused MLP
(train/fused_mlp.py) on that dense base, with and without the forward's h kept for the backward."""

from __future__ import annotations

from typing import Any

import pytest

from tests.helpers.lora import outputs_and_grads

torch = pytest.importorskip("torch")
bnb = pytest.importorskip("bitsandbytes")
pytest.importorskip("peft")
pytest.importorskip("unsloth")

PROJS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
R = 16


def _qlora() -> Any:
    """A tiny Qwen2 with NF4 projections and LoRA (random B, scale 2) on all seven, in training mode."""
    from train.unsloth_compat import import_unsloth

    import_unsloth()
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=128, max_position_embeddings=64)
    model = Qwen2ForCausalLM(config)
    for layer in model.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name in PROJS:
                linear = getattr(parent, name, None)
                if linear is None:
                    continue
                q = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=linear.bias is not None,
                                      compute_dtype=torch.float32, quant_type="nf4")
                q.weight = bnb.nn.Params4bit(linear.weight.data.clone(), requires_grad=False, quant_type="nf4")
                if linear.bias is not None:
                    q.bias = torch.nn.Parameter(linear.bias.data.clone(), requires_grad=False)
                setattr(parent, name, q.to("cpu"))  # bitsandbytes quantises on the move
    model = get_peft_model(model, LoraConfig(r=R, lora_alpha=2 * R, target_modules=list(PROJS),
                                             init_lora_weights=False))
    model.train()
    return model


def test_install_swaps_in_the_dequantised_weights_and_restore_puts_the_4bit_ones_back() -> None:
    from bitsandbytes.functional import dequantize_4bit

    from train import dense_base

    model = _qlora()
    ids = torch.randint(0, 128, (1, 12))
    before = model(input_ids=ids).logits.detach()
    bases = [m.base_layer for n, m in model.named_modules() if n.rsplit(".", 1)[-1] in PROJS]
    originals = [b.weight for b in bases]
    assert len(bases) == 14 and all(w.quant_state is not None for w in originals)

    assert dense_base.install(model, torch.float32) == 14
    assert dense_base.STATE["layers"] == 14
    for base, original in zip(bases, originals, strict=True):
        W = base.weight
        assert getattr(W, "quant_state", None) is None and not W.requires_grad and W.dtype == torch.float32
        assert torch.equal(W, dequantize_4bit(original.data, original.quant_state))
    during = model(input_ids=ids).logits.detach()  # PEFT's path: the dense base layer answers with F.linear
    torch.testing.assert_close(during, before, rtol=1e-5, atol=1e-5)

    assert dense_base.restore(model) == 14
    assert all(b.weight is w for b, w in zip(bases, originals, strict=True))
    assert all("forward" not in b.__dict__ for b in bases)
    torch.testing.assert_close(model(input_ids=ids).logits.detach(), before, rtol=0, atol=0)
    assert dense_base.restore(model) == 0


@pytest.mark.parametrize("keep_h", [False, True])
def test_fused_mlp_on_the_dense_base_matches_peft(keep_h: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fused MLP on the dense base, with and without the forward's h kept for the backward (the kernel then
    writes no h), gives PEFT's outputs and every gradient; and with h kept, h is what the backward used."""
    from train import dense_base, fused_mlp

    model = _qlora()
    mlp = model.base_model.model.model.layers[1].mlp
    dense_base.install(model, torch.float32)
    monkeypatch.setitem(fused_mlp.OPTIONS, "keep_h", keep_h)
    calls = []
    real_backward = fused_mlp.swiglu_backward
    monkeypatch.setattr(fused_mlp, "swiglu_backward", lambda *a, **k: calls.append(k) or real_backward(*a, **k))
    X = torch.randn(2, 9, 64)
    grad = torch.randn(2, 9, 64)

    def peft(m: Any, x: Any) -> Any:
        return m.down_proj(torch.nn.functional.silu(m.gate_proj(x)) * m.up_proj(x))

    ours = outputs_and_grads(fused_mlp.apply_fused_mlp, mlp, X, grad)
    theirs = outputs_and_grads(peft, mlp, X, grad)
    assert calls == [{"store_h": not keep_h}]
    assert sorted(ours) == sorted(theirs) and len([k for k in theirs if "lora_" in k]) == 6
    for key in theirs:
        torch.testing.assert_close(ours[key], theirs[key], rtol=2e-4, atol=2e-5, msg=key)
    dense_base.restore(model)
