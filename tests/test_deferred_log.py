"""train/deferred_log.py: the deferred log lines are exactly the ones transformers' Trainer writes itself.

A real Trainer trains a tiny Llama built from a config on the CPU, once as it is and once with the lines deferred;
the log histories (losses, gradient norms, learning rates, steps, epochs, the evaluation's place among them) and the
final training loss must be the same. On the CPU the values are on the host at once, so a subclass that holds
every line until the trainer must write it (evaluation, checkpoint, end) stands in for a GPU that is behind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from train import deferred_log

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


class HeldLogs(deferred_log.DeferredLogs):
    """Every line stays pending until the trainer has to write it: the GPU that is always a step behind."""

    def _ready(self, pending: Any) -> bool:
        return False


def _trainer(out: Path) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64))
    ids = torch.randint(0, 64, (24, 16), generator=torch.Generator().manual_seed(1))
    rows = [{"input_ids": row, "labels": row} for row in ids]
    args = TrainingArguments(output_dir=str(out), per_device_train_batch_size=4, max_steps=7, logging_steps=1,
                             eval_strategy="steps", eval_steps=3, save_strategy="steps", save_steps=5,
                             learning_rate=1e-2, max_grad_norm=1.0, report_to="none", use_cpu=True, seed=0,
                             data_seed=0, disable_tqdm=True)
    return Trainer(model=model, args=args, train_dataset=rows, eval_dataset=rows[:8])


def _history(trainer: Any) -> list[dict[str, Any]]:
    """The log history without wall-clock figures (runtime, samples per second), which differ run to run."""
    return [{k: v for k, v in line.items() if "runtime" not in k and "per_second" not in k}
            for line in trainer.state.log_history]


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict[str, Any]], float]:
    trainer = _trainer(tmp_path_factory.mktemp("plain"))
    output = trainer.train()
    return _history(trainer), output.training_loss


@pytest.mark.parametrize("held", [False, True], ids=["ready-at-once", "gpu-behind"])
def test_deferred_lines_are_the_trainers_own(tmp_path: Path, plain: tuple[list[dict[str, Any]], float],
                                             held: bool) -> None:
    history, training_loss = plain
    trainer = _trainer(tmp_path)
    logs = HeldLogs(trainer) if held else deferred_log.install(trainer)
    assert logs is not None
    output = trainer.train()
    assert _history(trainer) == history  # same values, steps, epochs, and the evaluations in the same places
    assert output.training_loss == training_loss
    train_lines = [line for line in history if "loss" in line]
    assert len(train_lines) == 7 and any("eval_loss" in line for line in history)
    assert logs.written == 7 and not logs.pending
    # held: lines wait for the evaluations at steps 3 and 6, the checkpoint at 5 and the end at 7 (1, 2, 4 late)
    assert logs.written_late == (3 if held else 0)


def test_checkpoints_carry_every_line_before_them(tmp_path: Path) -> None:
    import json

    trainer = _trainer(tmp_path)
    HeldLogs(trainer)
    trainer.train()
    saved = json.loads((tmp_path / "checkpoint-5" / "trainer_state.json").read_text())["log_history"]
    assert [line["step"] for line in saved if "loss" in line] == [1, 2, 3, 4, 5]


def test_switched_off_by_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORMA_DEFERRED_LOGS", "0")
    trainer = _trainer(tmp_path)
    original = trainer._maybe_log_save_evaluate
    assert deferred_log.install(trainer) is None
    assert trainer._maybe_log_save_evaluate == original
