"""Supervised fine-tuning with Unsloth's ``FastLanguageModel`` and TRL's ``SFTTrainer``: LoRA or QLoRA, then merge.

The order matters and is the point of this module: everything that can be wrong with the user's input (config,
base model folder, context length, dataset format, chat template, chats that fit) is checked before any weights
are loaded, so a bad run fails in seconds with one line, not after minutes of loading.

CPU: Unsloth 2026.10 trains text LoRA on CPU (``load_in_4bit=False``, float32, no gradient checkpointing,
``use_cpu=True``); 4-bit QLoRA needs bitsandbytes' CUDA kernels, so ``quantization: 4bit`` on CPU is an error.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.errors import FormaError
from train import (
    deferred_log,
    dense_base,
    flash_attention4,
    fused_mlp,
    fused_mlp_gated,
    fused_qkv,
    rope_layout,
    unsloth_compat,
)
from train.config import TrainConfig
from train.data import ChatData, check_chat_template, load_chats, tokenize_chats
from train.memory_plan import UNSLOTH_VALUE, MemoryPlan, choose, mfu, with_extras
from train.report import loss_curves, steady_tokens_per_s, write_report

CHECKPOINTS = "checkpoints"
#: Fields a resumed run may change: how long it runs and how often it logs and saves, nothing that shapes the model.
RESUMABLE_CHANGES = {"max_steps", "num_epochs", "save_steps", "eval_steps", "logging_steps", "save_total_limit",
                     "reports_dir", "save_merged"}


@dataclass(frozen=True)
class TrainResult:
    """Where a finished run put its outputs. Stable API: the eval and export code read these paths."""

    output_dir: Path
    adapter_dir: Path
    merged_dir: Path | None
    report: Path
    metrics: dict[str, Any]


@dataclass(frozen=True)
class Preflight:
    """What the cheap checks found: the model folder, its context length, the device and the chats."""

    base_model: Path
    model_type: str
    max_position_embeddings: int
    device: str
    chats: ChatData


def _model_config(base: Path) -> dict[str, Any]:
    if not base.exists():
        raise FormaError("base model folder not found", path=base, where="base_model",
                         hint="a local HF folder (config.json + weights + tokenizer); nothing is downloaded")
    config_file = base / "config.json"
    if not base.is_dir() or not config_file.is_file():
        raise FormaError("not an HF model folder (no config.json)", path=base, where="base_model")
    if not any(base.glob("*.safetensors")) and not any(base.glob("*.bin")):
        raise FormaError("the model folder has no weights (*.safetensors or *.bin)", path=base, where="base_model")
    try:
        data: dict[str, Any] = json.loads(config_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise FormaError(f"config.json is not valid JSON: {exc.msg}", path=config_file) from None
    return data


def resolve_device(wanted: str) -> str:
    """``auto`` is CUDA when torch sees a GPU, else CPU."""
    import torch

    if wanted == "cuda" and not torch.cuda.is_available():
        raise FormaError("device: cuda was asked for but torch sees no GPU", where="device")
    if wanted == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return wanted


def preflight(config: TrainConfig) -> Preflight:
    """The checks that need no model weights and no Unsloth import: they take seconds."""
    base = config.base_model_path()
    model_config = _model_config(base)
    limit = model_config.get("max_position_embeddings")
    if isinstance(limit, int) and config.max_seq_length > limit:
        raise FormaError(f"max_seq_length {config.max_seq_length} is longer than the model's context ({limit} "
                         "max_position_embeddings)", where="max_seq_length", hint=f"use at most {limit}")
    device = resolve_device(config.device)
    fused_mlp.setting()  # a bad FORMA_FUSED_MLP is an error now, not after the model has loaded
    fused_mlp.gated.tile_candidates()  # and so is a FORMA_QUACK_TILES file that cannot be read
    if config.quantization == "4bit" and device != "cuda":
        raise FormaError("quantization: 4bit (QLoRA) needs a CUDA GPU (bitsandbytes)", where="quantization",
                         hint="use quantization: 16bit on CPU")
    if config.packing and device != "cuda":
        raise FormaError("packing needs a GPU attention kernel that keeps packed chats apart", where="packing",
                         hint="set packing: false on CPU (batches are grouped by length instead)")
    chats = load_chats(config.dataset)
    if config.eval_split == "test" and not chats.test:
        raise FormaError("eval_split is 'test' but the dataset has no test chats", path=chats.source,
                         where="eval_split", hint="use eval_split: fraction")
    return Preflight(base_model=base, model_type=str(model_config.get("model_type", "?")),
                     max_position_embeddings=int(limit or 0), device=device, chats=chats)


def _split(config: TrainConfig, chats: ChatData) -> tuple[list[Any], list[Any]]:
    import random

    if config.eval_split == "test":
        train, evals = list(chats.train), list(chats.test)
    else:
        order = list(range(len(chats.train)))
        random.Random(config.seed).shuffle(order)
        n_eval = max(1, round(len(order) * config.eval_fraction))
        if n_eval >= len(order):
            raise FormaError("too few chats to hold out an eval fraction", path=chats.source, where="eval_fraction")
        evals = [chats.train[i] for i in order[:n_eval]]
        train = [chats.train[i] for i in order[n_eval:]]
    if config.eval_max_samples is not None:
        evals = evals[: config.eval_max_samples]
    return train, evals


def _check_resume(config: TrainConfig, resume: bool) -> str | None:
    """The checkpoint to resume from; a resumed run must not change what shapes the model or the data."""
    ckpt_root = config.output_dir / CHECKPOINTS
    saved = config.output_dir / "train_config.json"
    if not resume:
        return None
    found = sorted(ckpt_root.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1])) \
        if ckpt_root.is_dir() else []
    if not found:
        raise FormaError("--resume: no checkpoint to resume from", path=ckpt_root,
                         hint="run without --resume first (checkpoints are written every save_steps)")
    if saved.is_file():
        before = json.loads(saved.read_text(encoding="utf-8")).get("config", {})
        now = config.model_dump(mode="json")
        changed = sorted(k for k in now if k not in RESUMABLE_CHANGES and before.get(k) != now[k])
        if changed:
            raise FormaError(f"--resume with a changed config ({', '.join(changed)})", path=saved,
                             hint="resume with the same config, or train afresh into another output_dir")
    return str(found[-1])


class CountingCollator:
    """Wraps the trainer's collator to count real and padded token slots of the training batches.

    The non-padding share is measured on the batches the model actually saw, whatever built them (padding to the
    longest in a length-grouped batch, or padding-free packing). Evaluation batches are counted apart.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.phase = "train"
        self.counts = {"train": [0, 0], "eval": [0, 0]}

    def __call__(self, examples: list[dict[str, Any]]) -> Any:
        batch = self.inner(examples)
        real = sum(len(e["input_ids"]) for e in examples)
        self.counts[self.phase][0] += real
        self.counts[self.phase][1] += int(batch["input_ids"].numel())
        return batch


def step_clock(counter: CountingCollator) -> Any:
    """A callback that records (step, seconds since training began, tokens so far) after every optimiser step.

    The bench reads these to give a steady-state tokens/s that leaves out the first steps' compile and warm-up. On a
    GPU each step's end is a CUDA event, read once when training ends: a ``synchronize`` per step would stall the
    GPU while the host collates the next batch (on the H200 ~2% of a step), so the clock must not cause one.
    """
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.start = time.perf_counter()
            self.points: list[list[float]] = []
            self._events: list[tuple[int, Any, int]] = []
            self._start_event: Any = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            import torch

            self.points, self._events = [], []
            if torch.cuda.is_available():
                torch.cuda.synchronize()
                self._start_event = torch.cuda.Event(enable_timing=True)
                self._start_event.record()
            self.start = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            tokens = counter.counts["train"][0]
            if self._start_event is not None:
                import torch

                event = torch.cuda.Event(enable_timing=True)
                event.record()
                self._events.append((state.global_step, event, tokens))
            else:
                self.points.append([state.global_step, time.perf_counter() - self.start, tokens])

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self._start_event is None or not self._events:
                return
            self._events[-1][1].synchronize()
            self.points = [[step, self._start_event.elapsed_time(event) / 1000, tokens]
                           for step, event, tokens in self._events]
            self._events = []

    return StepClock()


def _peak_memory(device: str) -> dict[str, float]:
    if device == "cuda":
        import torch

        return {"peak_gpu_allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
                "peak_gpu_reserved_gib": torch.cuda.max_memory_reserved() / 2**30}
    # ru_maxrss is KiB on Linux: the process's peak resident memory, weights and activations together
    return {"peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


@dataclass
class _Run:
    """What one training run holds between its phases (load, train, save, report)."""

    config: TrainConfig
    pre: Any
    model: Any
    tokenizer: Any
    trainer: Any
    counter: CountingCollator
    train_tok: Any
    eval_tok: Any
    has_eval: bool
    flash_varlen_shim: bool
    load_seconds: float
    plan: MemoryPlan


def parameter_counts(shape: dict[str, Any]) -> tuple[int, int]:
    """(the decoder's linear weights, those plus the embedding) of a Llama/Qwen2-shaped ``config.json``: what the
    memory plan sizes the weights and the dense base by. Norms and biases are left out (~0.01%)."""
    layers, hidden = int(shape.get("num_hidden_layers", 0)), int(shape.get("hidden_size", 0))
    inter = int(shape.get("intermediate_size", 4 * hidden))
    heads = int(shape.get("num_attention_heads", 1)) or 1
    kv_width = int(shape.get("num_key_value_heads", heads)) * int(shape.get("head_dim", hidden // heads))
    # q and o are hidden x hidden; k and v hidden x (K/V heads x head size): grouped K/V makes them narrower
    linear = layers * (2 * hidden * hidden + 2 * hidden * kv_width + 3 * hidden * inter)
    return linear, linear + int(shape.get("vocab_size", 0)) * hidden


def memory_plan(config: TrainConfig, pre: Any) -> MemoryPlan:
    """Checkpointing mode for this card and job (train/memory_plan.py); what the config forces wins."""
    shape = _model_config(pre.base_model)
    layers, hidden = int(shape.get("num_hidden_layers", 0)), int(shape.get("hidden_size", 0))
    inter = int(shape.get("intermediate_size", 4 * hidden))
    linear, params = parameter_counts(shape)
    tokens = config.batch_size * config.max_seq_length  # one micro-batch: packed rows, or padded chats at most
    free = None
    if pre.device == "cuda":
        import torch

        free = torch.cuda.mem_get_info()[0] / 2**30
    plan = choose(layers=layers, hidden=hidden, params=params, tokens=tokens, quantization=config.quantization,
                  free_gib=free, forced=None if config.gradient_checkpointing == "auto"
                  else config.gradient_checkpointing, batch_size=config.batch_size)
    return with_extras(plan, quantization=config.quantization, linear_params=linear, layers=layers,
                       intermediate=inter)


def _param_count(model: Any) -> float:
    """Base parameters (LoRA's own excluded): what the model-FLOPs count multiplies."""
    total = 0
    for name, p in model.named_parameters():
        if "lora_" not in name:
            total += p.numel() * (2 if p.dtype.itemsize == 1 and "4bit" in type(p).__name__.lower() else 1)
    return float(total)


def optimizer_name(optimizer: str, device: str) -> str:
    """The transformers ``optim`` for ``optimizer``: ``auto`` is AdamW fused into one kernel on CUDA (what
    transformers itself defaults to on torch >= 2.8; ``optimizer.step`` took 10 ms per-tensor against 4 ms fused in
    the H100 phases of docs/train.md, noise at a 2.9 s step then, ~1% of the 0.83 s step now) and the plain
    per-tensor AdamW on the CPU, where the tests' reference runs were made with it."""
    if optimizer != "auto":
        return optimizer
    return "adamw_torch_fused" if device == "cuda" else "adamw_torch"


def _dtype(device: str) -> Any:
    """float32 on the CPU; bf16 where the GPU has it, else fp16."""
    import torch

    if device == "cpu":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def _load(config: TrainConfig, pre: Any, plan: MemoryPlan) -> tuple[Any, Any, Any, Any, float]:
    """Tokenize the chats, then load the base model with its LoRA adapter (Unsloth)."""
    from transformers import AutoTokenizer
    from unsloth import FastLanguageModel

    tokenizer = AutoTokenizer.from_pretrained(str(pre.base_model))
    check_chat_template(tokenizer, where=pre.base_model)
    train_chats, eval_chats = _split(config, pre.chats)
    train_tok = tokenize_chats(tokenizer, train_chats, config.max_seq_length)
    eval_tok = tokenize_chats(tokenizer, eval_chats, config.max_seq_length)
    if not train_tok.input_ids:
        raise FormaError(f"every training chat is longer than max_seq_length {config.max_seq_length} tokens",
                         path=pre.chats.source, where="max_seq_length")
    cpu = pre.device == "cpu"
    dtype = _dtype(pre.device)
    checkpointing = False if cpu else UNSLOTH_VALUE[plan.mode]
    load_started = time.time()
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=str(pre.base_model), max_seq_length=config.max_seq_length, dtype=dtype,
        load_in_4bit=config.quantization == "4bit", local_files_only=True,
        use_gradient_checkpointing=checkpointing)
    if tokenizer.pad_token is None:  # pad with a token that is never trained on; labels mask it anyway
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    model = FastLanguageModel.get_peft_model(
        model, r=config.lora.r, lora_alpha=config.lora.alpha, lora_dropout=config.lora.dropout,
        target_modules=list(config.lora.target_modules), bias="none", random_state=config.seed,
        use_gradient_checkpointing=checkpointing, max_seq_length=config.max_seq_length)
    qkv = fused_qkv.install(model)  # Qwen2's biased q/k/v: one fused LoRA Function where Unsloth leaves PEFT's path
    # on CUDA: the MLP's LoRA terms added inside the SwiGLU kernels, tuned on the micro-batch's tokens (at most
    # 32,768: the tuning's copies are transient memory at load time, ~4 GB there for Qwen2.5-3B)
    fused_mlp.OPTIONS["keep_h"] = plan.keep_mlp_h  # before install: its warm-up tunes the kernel variant that runs
    fused_mlp.OPTIONS["dense_base"] = plan.dense_base and not cpu  # quack's products need the dense base
    mlp = fused_mlp.install(model, dtype=dtype, tokens=min(32768, plan.micro_batch * config.max_seq_length))
    if qkv or mlp:
        print(f"fused LoRA: q/k/v with a bias in {qkv} layers, SwiGLU MLP in {mlp} layers{_mlp_choice(mlp)}",
              file=sys.stderr, flush=True)
    forced = fused_mlp.CHOICE.get("forced")
    if forced and not cpu and not fused_mlp.CHOICE.get("design"):  # forced by name, cannot run here: say why
        why = fused_mlp.CHOICE.get("left_out", {}).get(forced, "it did not run")
        print(f"FORMA_FUSED_MLP={forced}: not used, Unsloth's MLP runs instead ({why})", file=sys.stderr, flush=True)
    dense_base.STATE.clear()
    if plan.dense_base and not cpu:
        dense_base.install(model, dtype)
        fused_mlp.pack(model)  # where the warm-up chose quack: the dense gate/up/down into its products' layout
    if plan.extras_why and not cpu:  # what the room on the card bought, and why the rest was not taken
        taken = [f"frozen base kept dequantised ({dense_base.STATE['layers']} projections, "
                 f"{dense_base.STATE['gib']} GiB)"] if dense_base.STATE.get("layers") else []
        taken += ["MLP outputs kept for the backward"] if plan.keep_mlp_h and mlp else []
        print(f"speed extras: {', '.join(taken) or 'none'} ({plan.extras_why})", file=sys.stderr, flush=True)
    return model, tokenizer, train_tok, eval_tok, time.time() - load_started


def _mlp_choice(layers: int) -> str:
    """The fused MLP's kernel design and what its warm-up measured, for the stderr line."""
    choice = fused_mlp.CHOICE
    if not layers or not choice.get("design"):
        return ""
    ms = ", ".join(f"{kind} {t:.2f} ms" for kind, t in choice["ms_per_layer"].items())
    how = "forced by FORMA_FUSED_MLP" if choice.get("forced") else "the faster on this card"
    tiles = choice.get("quack_tiles") if choice["design"] == "quack" else None
    picked = "; tiles: " + ", ".join(f"{name} {found['tile']}" for name, found in tiles.items()) if tiles else ""
    return (f" ({choice['design']} kernels, {how}; forward + backward a layer at {choice['tokens']:,} tokens: {ms}"
            + picked + "".join(f"; {kind} left out: {why}" for kind, why in choice["left_out"].items()) + ")")


def _deferred_logging(trainer: Any) -> dict[str, int] | None:
    """How many log lines train/deferred_log.py wrote, and how many a step or more late; None where not installed."""
    logs = getattr(trainer, "forma_deferred_logs", None)
    return None if logs is None else {"lines": logs.written, "written_late": logs.written_late}


def _make_trainer(config: TrainConfig, pre: Any, model: Any, tokenizer: Any, train_tok: Any, eval_tok: Any,
                  resume_from: str | None, plan: MemoryPlan) -> tuple[Any, CountingCollator]:
    """TRL's SFTTrainer on pre-tokenized chats (labels already masked), with a collator that counts real tokens."""
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    cpu = pre.device == "cpu"
    dtype = _dtype(pre.device)
    train_ds = Dataset.from_dict({"input_ids": train_tok.input_ids, "labels": train_tok.labels})
    eval_ds = Dataset.from_dict({"input_ids": eval_tok.input_ids, "labels": eval_tok.labels}) if eval_tok.input_ids \
        else None
    args = SFTConfig(
        output_dir=str(config.output_dir / CHECKPOINTS), max_length=config.max_seq_length, packing=config.packing,
        packing_strategy="bfd", padding_free=config.packing,
        # the plan may split the micro-batch (same tokens per optimiser step) when the card is too small for it
        per_device_train_batch_size=plan.micro_batch, per_device_eval_batch_size=plan.micro_batch,
        gradient_accumulation_steps=config.gradient_accumulation * plan.accumulation_factor,
        learning_rate=config.learning_rate, lr_scheduler_type=config.lr_scheduler, warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay, optim=optimizer_name(config.optimizer, pre.device),
        max_steps=config.max_steps or -1, num_train_epochs=config.num_epochs or 1.0,
        train_sampling_strategy="group_by_length" if config.group_by_length and not config.packing else "random",
        logging_steps=config.logging_steps, eval_strategy="steps" if eval_ds is not None else "no",
        eval_on_start=eval_ds is not None and resume_from is None and config.eval_on_start,
        eval_steps=config.eval_steps, save_strategy="steps", save_steps=config.save_steps,
        save_total_limit=config.save_total_limit, seed=config.seed, data_seed=config.seed,
        use_cpu=cpu, bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16,
        report_to="none", dataloader_num_workers=0, dataset_num_proc=None, disable_tqdm=not sys.stderr.isatty(),
        # A token count that is a multiple of 64 keeps every matrix whose leading dimension is the token count
        # 16-byte aligned, so cuBLAS takes its tensor-core kernels (the H200 profile showed ~37 ms a step of
        # "align1" CUTLASS kernels for an odd packed length). TRL and Unsloth give the padding its own segment.
        pad_to_multiple_of=None if cpu else 64 if config.packing else 8,
        # The trainer's NaN filter reads the loss on the host after every micro-batch: a GPU sync that idles the
        # card while the host launches the optimiser and collates the next batch. A NaN loss is logged as NaN.
        logging_nan_inf_filter=False)
    trainer = SFTTrainer(model=model, processing_class=tokenizer, train_dataset=train_ds, eval_dataset=eval_ds,
                         args=args)
    counter = CountingCollator(trainer.data_collator)
    trainer.data_collator = counter
    evaluate = trainer.evaluate

    def counted_evaluate(*a: Any, **k: Any) -> Any:
        counter.phase = "eval"
        try:
            return evaluate(*a, **k)
        finally:
            counter.phase = "train"

    trainer.evaluate = counted_evaluate  # type: ignore[method-assign]
    trainer.add_callback(step_clock(counter))
    # the per-step loss without a GPU sync per step (train/deferred_log.py); None leaves Trainer's own logging
    trainer.forma_deferred_logs = deferred_log.install(trainer)  # type: ignore[attr-defined]
    return trainer, counter


def _save(run: _Run) -> tuple[Path, Path | None]:
    """The adapter, and (when the config asks) the merged 16-bit model that GGUF export reads."""
    config = run.config
    dense_base.restore(run.model)  # the 4-bit base back before saving and merging: the model as it was loaded
    fused_mlp_gated.unpack(run.model)  # and quack's packed buffers (if any) let go
    adapter_dir = config.output_dir / "adapter"
    run.model.save_pretrained(str(adapter_dir))
    run.tokenizer.save_pretrained(str(adapter_dir))
    merged_dir: Path | None = None
    if config.save_merged:
        merged_dir = config.output_dir / "merged"
        shutil.rmtree(merged_dir, ignore_errors=True)
        run.model.save_pretrained_merged(str(merged_dir), run.tokenizer, save_method="merged_16bit")
    return adapter_dir, merged_dir


def _metrics(run: _Run, output: Any, final_eval: dict[str, Any], train_seconds: float, started: float
             ) -> tuple[dict[str, Any], dict[str, Any], list[list[float]]]:
    real, slots = run.counter.counts["train"]
    callbacks = run.trainer.callback_handler.callbacks
    clock: list[list[float]] = next((cb.points for cb in callbacks if hasattr(cb, "points")), [])
    curves = loss_curves(run.trainer.state.log_history)
    metrics: dict[str, Any] = {
        "train_loss_first": curves["train"][0][1] if curves["train"] else None,
        "train_loss_last": curves["train"][-1][1] if curves["train"] else None,
        "eval_loss_first": curves["eval"][0][1] if curves["eval"] else None,
        "eval_loss_last": final_eval.get("eval_loss"),
        "train_runtime_s": train_seconds,
        "load_s": run.load_seconds,
        "wall_s": time.time() - started,
        "steps": run.trainer.state.global_step,
        "trained_tokens": real,
        "tokens_per_s": real / train_seconds if train_seconds > 0 else None,
        "tokens_per_s_steady": steady_tokens_per_s(clock),
        "non_padding_share": real / slots if slots else None,
        "train_loss_mean": output.training_loss,
        **_peak_memory(run.pre.device),
    }
    return metrics, curves, clock


def _report(run: _Run, metrics: dict[str, Any], curves: dict[str, Any], clock: list[list[float]],
            resume_from: str | None, outputs: dict[str, str | None], run_name: str | None) -> dict[str, Any]:
    import torch

    config, pre = run.config, run.pre
    return {
        "run_name": run_name or config.output_dir.name,
        "config": config.model_dump(mode="json"),
        "config_hash": config.digest(),
        "dataset": str(config.dataset),
        "dataset_hash": pre.chats.dataset_hash,
        "base_model": str(pre.base_model),
        "model_type": pre.model_type,
        "device": pre.device if pre.device == "cpu" else torch.cuda.get_device_name(0),
        "resumed_from": resume_from,
        "optimizer": optimizer_name(config.optimizer, pre.device),
        "deferred_logging": _deferred_logging(run.trainer),
        "packed_attention": ("torch flash varlen (train/packed_attention.py)" if run.flash_varlen_shim
                             else "Unsloth's choice" if config.packing else None),
        "data": {"train_chats": len(run.train_tok.input_ids), "eval_chats": len(run.eval_tok.input_ids),
                 "dropped_too_long": run.train_tok.too_long + run.eval_tok.too_long,
                 "train_tokens": run.train_tok.tokens, "train_label_tokens": run.train_tok.label_tokens},
        "metrics": metrics,
        "fused_qkv_layers": sum(getattr(m, "apply_qkv", None) is fused_qkv.apply_qkv_with_bias
                                for m in run.model.modules()),
        "fused_mlp_layers": sum(getattr(m.__dict__.get("forward"), "__func__", None) is fused_mlp.apply_fused_mlp
                                for m in run.model.modules()),
        "fused_mlp": dict(fused_mlp.CHOICE) or None,  # the kernel design warm-up chose, and its timings
        "rope_grad_layout": rope_layout.installed(),
        "dense_base": dict(dense_base.STATE) or None,  # the 4-bit base kept dequantised (speed extra), and its size
        "flash_attention_4": dict(flash_attention4.STATE) if config.packing and pre.device == "cuda" else None,
        "memory_plan": run.plan.as_dict(),
        "mfu": mfu(_param_count(run.model), metrics.get("tokens_per_s_steady"),
                   pre.device if pre.device == "cpu" else torch.cuda.get_device_name(0)),
        "loss_curves": curves,
        "step_clock": clock,
        "versions": _versions(),
        "outputs": outputs,
    }


def train(config: TrainConfig, *, resume: bool = False, run_name: str | None = None) -> TrainResult:
    """Train a LoRA adapter on the dataset's assistant turns, save it and the merged 16-bit model, and report."""
    pre = preflight(config)
    resume_from = _check_resume(config, resume)
    started = time.time()
    # Unsloth patches transformers and TRL when imported, so it must come before them.
    unsloth_compat.import_unsloth()
    import torch

    from train import packed_attention

    # packed batches: one flash varlen call per layer where Unsloth would loop over the chats (see the module)
    flash_varlen_shim = packed_attention.enable() if pre.device == "cuda" and config.packing else False
    # packed RoPE's gradients in Q's and K's own layout: no copy of dQ and dK per layer (see the module)
    if pre.device == "cuda" and config.packing:
        rope_layout.install()
        # packed attention through FlashAttention-4's Hopper kernels where flash-attn-4 is installed (see the module)
        flash_attention4.install()
        print("packed attention: " + ("FlashAttention-4 (flash_attn.cute)" if flash_attention4.STATE["installed"]
                                      else f"bundled flash kernel; FlashAttention-4 not used: "
                                           f"{flash_attention4.STATE['reason']}"), file=sys.stderr, flush=True)
    if config.torch_threads:
        torch.set_num_threads(config.torch_threads)
    plan = memory_plan(config, pre)
    if pre.device == "cuda":  # say what was picked before the long part starts (the report keeps it too)
        print(f"memory plan: checkpointing {plan.mode}, micro-batch {plan.micro_batch} x gradient accumulation "
              f"{config.gradient_accumulation * plan.accumulation_factor} ({plan.why})", file=sys.stderr, flush=True)
    model, tokenizer, train_tok, eval_tok, load_seconds = _load(config, pre, plan)
    trainer, counter = _make_trainer(config, pre, model, tokenizer, train_tok, eval_tok, resume_from, plan)
    run = _Run(config=config, pre=pre, model=model, tokenizer=tokenizer, trainer=trainer, counter=counter,
               train_tok=train_tok, eval_tok=eval_tok, has_eval=bool(eval_tok.input_ids),
               flash_varlen_shim=flash_varlen_shim, load_seconds=load_seconds, plan=plan)
    config.output_dir.mkdir(parents=True, exist_ok=True)
    (config.output_dir / "train_config.json").write_text(json.dumps(
        {"config": config.model_dump(mode="json"), "config_hash": config.digest(),
         "dataset_hash": pre.chats.dataset_hash}, indent=2) + "\n", encoding="utf-8")
    if pre.device != "cpu":
        torch.cuda.reset_peak_memory_stats()
    train_started = time.time()
    output = trainer.train(resume_from_checkpoint=resume_from)
    train_seconds = time.time() - train_started
    evals = [e for e in trainer.state.log_history if "eval_loss" in e]
    final_eval = evals[-1] if evals and evals[-1].get("step") == trainer.state.global_step else {}
    if run.has_eval and not final_eval:
        final_eval = trainer.evaluate()
    adapter_dir, merged_dir = _save(run)
    metrics, curves, clock = _metrics(run, output, final_eval, train_seconds, started)
    outputs = {"adapter_dir": str(adapter_dir), "merged_dir": str(merged_dir) if merged_dir else None}
    report = _report(run, metrics, curves, clock, resume_from, outputs, run_name)
    report_path = write_report(report, config.output_dir / "report", copy_to=config.reports_dir)
    return TrainResult(output_dir=config.output_dir, adapter_dir=adapter_dir, merged_dir=merged_dir,
                       report=report_path, metrics=metrics)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("torch", "transformers", "trl", "peft", "unsloth", "bitsandbytes"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            continue
    out["python"] = sys.version.split()[0]
    out["threads"] = str(os.cpu_count())
    return out
