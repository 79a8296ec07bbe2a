"""A two-layer Qwen2 built from a config (q/k/v with a bias, as Qwen2.5's), wrapped by PEFT with LoRA, in float64:
the model the fused LoRA Functions' tests compare against PEFT's own path."""

from __future__ import annotations

from typing import Any


def tiny_qwen2_lora(targets: list[str], r: int, lora_alpha: int, dropout: float = 0.0) -> Any:
    """The PEFT model in training mode; B is random too (``init_lora_weights=False``), so every LoRA term counts."""
    from train.unsloth_compat import import_unsloth

    import_unsloth()  # patches transformers first, as train() does
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=128, max_position_embeddings=64)
    model = get_peft_model(Qwen2ForCausalLM(config).to(torch.float64),
                           LoraConfig(r=r, lora_alpha=lora_alpha, lora_dropout=dropout, target_modules=targets,
                                      init_lora_weights=False))
    model.train()
    return model


def outputs_and_grads(fn: Any, module: Any, X: Any, grad: Any) -> dict[str, Any]:
    """``fn(module, X)`` and its backward from ``grad``: the output, X's gradient and every trainable parameter's,
    by name (the gradients of one call only: earlier ones are cleared first)."""
    for p in module.parameters():
        p.grad = None
    X = X.detach().clone().requires_grad_(True)
    out = fn(module, X)
    out.backward(grad)
    result = {"out": out.detach(), "dX": X.grad}
    result.update({name: p.grad.detach().clone() for name, p in module.named_parameters() if p.requires_grad})
    return result
