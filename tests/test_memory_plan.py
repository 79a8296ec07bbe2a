"""The checkpointing plan and the MFU count: the card and the job shape decide, the config can force."""

from __future__ import annotations

import pytest

from train.memory_plan import choose, estimate, mfu, with_extras

QWEN_3B = {"layers": 36, "hidden": 2048, "params": 3.09e9}


def test_the_estimate_matches_the_measured_h200_run() -> None:
    est = estimate(**QWEN_3B, tokens=16 * 2048, weight_bytes=0.56)
    assert est["none"] == pytest.approx(79.1, rel=0.1)  # measured peak without checkpointing, 16 packed rows
    assert est["offload"] < 8  # measured 5.8 GiB offloaded


def test_a_big_card_skips_checkpointing_and_a_small_one_does_not() -> None:
    big = choose(**QWEN_3B, tokens=16 * 2048, quantization="4bit", free_gib=139)
    assert big.mode == "none" and "fit" in big.why
    mid = choose(**QWEN_3B, tokens=16 * 2048, quantization="4bit", free_gib=40)
    assert mid.mode == "gpu"
    card_24gb = choose(**QWEN_3B, tokens=16 * 2048, quantization="4bit", free_gib=22)  # bench's memory mode
    assert card_24gb.mode == "gpu"  # estimate 8.2 GiB; measured 9.83 GiB on the H200 (docs/train.md)
    small = choose(**QWEN_3B, tokens=16 * 2048, quantization="4bit", free_gib=8)
    assert small.mode == "offload"
    unknown = choose(**QWEN_3B, tokens=16 * 2048, quantization="4bit", free_gib=None)
    assert unknown.mode == "offload"


def test_the_config_forces_a_mode() -> None:
    for forced, mode in (("unsloth", "offload"), (True, "gpu"), (False, "none")):
        plan = choose(**QWEN_3B, tokens=2048, quantization="4bit", free_gib=139, forced=forced)
        assert plan.mode == mode and plan.why == "set in the config"


def test_mfu_counts_four_flops_per_parameter_per_token() -> None:
    found = mfu(3.09e9, 34_246, "NVIDIA H200")
    assert found["model_tflops"] == pytest.approx(4 * 3.09e9 * 34_246 / 1e12, rel=1e-3)
    assert found["mfu"] == pytest.approx(found["model_tflops"] / 790, rel=1e-3)
    assert mfu(3.09e9, 1000, "cpu")["mfu"] is None


def test_a_micro_batch_too_big_for_the_card_is_split_keeping_the_tokens_per_step() -> None:
    # 16 rows of 2,048 need ~3.7 GiB even offloaded; 3.5 GiB free (2.8 GiB budget) takes 8 rows x 2 accumulated
    plan = choose(**QWEN_3B, tokens=16 * 2048, quantization="4bit", free_gib=3.5, batch_size=16)
    assert plan.micro_batch * plan.accumulation_factor == 16 and plan.micro_batch < 16
    assert plan.tokens_per_step == plan.micro_batch * 2048
    assert plan.estimate_gib[plan.mode] <= 3.5 * 0.8
    assert f"16 -> {plan.micro_batch}" in plan.why
    bigger = choose(**QWEN_3B, tokens=16 * 2048, quantization="4bit", free_gib=3.5, batch_size=16,
                    forced="unsloth")
    assert (bigger.micro_batch, bigger.accumulation_factor) == (16, 1)  # a forced mode keeps the micro-batch
    fits = choose(**QWEN_3B, tokens=16 * 2048, quantization="4bit", free_gib=139, batch_size=16)
    assert (fits.micro_batch, fits.accumulation_factor) == (16, 1)


#: Qwen2.5-3B's linear parameters (no embedding) and MLP width, as train/sft.py's plan counts them
EXTRAS = {"quantization": "4bit", "linear_params": 3.09e9 - 151_936 * 2048, "layers": 36, "intermediate": 11_008}


def test_the_speed_extras_are_taken_where_the_budget_holds_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FORMA_DENSE_BASE", raising=False)
    monkeypatch.delenv("FORMA_KEEP_MLP_H", raising=False)
    h200 = with_extras(choose(**QWEN_3B, tokens=16 * 2048, quantization="4bit", free_gib=139), **EXTRAS)
    assert h200.mode == "none" and h200.dense_base and h200.keep_mlp_h, h200.extras_why
    assert "dense_base: ~5.2 GiB" in h200.extras_why and "keep_mlp_h: ~24.2 GiB" in h200.extras_why
    # 105 GiB free: the 84 GiB budget holds the ~75 GiB of no checkpointing and the dense base, not h as well
    mid = with_extras(choose(**QWEN_3B, tokens=16 * 2048, quantization="4bit", free_gib=105), **EXTRAS)
    assert mid.mode == "none" and mid.dense_base and not mid.keep_mlp_h
    assert "keep_mlp_h: would need ~24.2 GiB more than the budget holds" in mid.extras_why
    for free in (22, None):  # a 24 GB card checkpoints; unknown memory offloads: no extras either way
        plan = with_extras(choose(**QWEN_3B, tokens=16 * 2048, quantization="4bit", free_gib=free), **EXTRAS)
        assert not plan.dense_base and not plan.keep_mlp_h and plan.extras_why == ""
    forced = with_extras(choose(**QWEN_3B, tokens=16 * 2048, quantization="4bit", free_gib=139, forced=True),
                         **EXTRAS)
    assert forced.mode == "gpu" and not forced.dense_base  # a forced checkpointing mode saves memory: no extras
    bf16 = with_extras(choose(**QWEN_3B, tokens=16 * 2048, quantization="16bit", free_gib=139),
                       **{**EXTRAS, "quantization": "16bit"})
    assert not bf16.dense_base and "no 4-bit base" in bf16.extras_why
    monkeypatch.setenv("FORMA_DENSE_BASE", "0")
    off = with_extras(choose(**QWEN_3B, tokens=16 * 2048, quantization="4bit", free_gib=139), **EXTRAS)
    assert not off.dense_base and off.keep_mlp_h and "dense_base: off (FORMA_DENSE_BASE=0)" in off.extras_why


def test_parameter_counts_follow_grouped_kv_heads() -> None:
    """Qwen2.5-3B's published shape: 3.0857 B weights (the bench's model reports 3.086 B with norms and biases), of
    which the decoder's linear layers are 2.7745 B: 5.17 GiB in bf16, what the dense base measured on the H200."""
    from train.sft import parameter_counts

    qwen25_3b = {"num_hidden_layers": 36, "hidden_size": 2048, "intermediate_size": 11008,
                 "num_attention_heads": 16, "num_key_value_heads": 2, "vocab_size": 151936}
    linear, total = parameter_counts(qwen25_3b)
    assert total == pytest.approx(3.0857e9, rel=1e-4) and linear == pytest.approx(2.7745e9, rel=1e-4)
    assert linear * 2 / 2**30 == pytest.approx(5.17, abs=0.01)
