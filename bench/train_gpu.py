"""GPU bench: `forma train` (Unsloth 4-bit QLoRA, packed) against plain transformers + PEFT QLoRA, same data.

Model: a Qwen2.5-3B architecture with random weights, built from its published config (speed and memory do not
depend on the weights' values), saved in bf16, then loaded in 4-bit by each path. Tokenizer: the Qwen2 vocabulary
GGUF that llama.cpp ships for its tokenizer tests, with the Qwen2.5 ChatML template (both from the
llama-cpp-python 0.3.36 source archive).

Steps:
  here (CPU):  python bench/train_gpu.py prepare --sdist llama_cpp_python-0.3.36.tar.gz --out .benchdata
               (tokenizer folder + a samples.jsonl dataset; .benchdata is git-ignored and carried to the GPU)
  GPU:         python bench/train_gpu.py run --data .benchdata --out $OUT
               (makes the model, then runs each path in its own process, so none sees another's memory or
               Unsloth's patches of transformers: `forma train` as it plans on this card (speed mode), as it plans
               on a 24 GB card (memory mode, forced) and plain transformers + PEFT; prints the figures, the ratios
               and MFU)

Qwen2.5-7B on Arabic chats (issue 15): `--arch qwen25-7b` makes the published Qwen2.5-7B architecture instead
(7.62 B parameters, untied embeddings, ~15 GB in bf16: made on the GPU machine by `run`, never carried), and
`prepare --recipe R --language ar` takes the dataset from a real build of the Arabic recipe (Arabic chats only).
  here (CPU, ~1 min each; check needs ~7 GB of RAM):
      S=~/.cache/forma/llama-cpp-sdist/llama_cpp_python-0.3.36.tar.gz R=recipes/forma-fitness-ar.yaml
      python bench/train_gpu.py prepare --sdist $S --data .benchdata/ar --recipe $R --language ar
      python bench/train_gpu.py check --arch qwen25-7b --layers 1 --data .benchdata/ar --out /tmp/bench-check
      (check = the GPU code path on the CPU: full-depth parameter count against the published one, make_model at
      1 layer, reloaded from its folder, forward and backward on a prepared chat)
  GPU: carry .gpu/site.tgz and .benchdata/ar (45 MB). Two commands of under 10 minutes each; the model and
  forma.json stay in the git-ignored out/b7 between them (where there is no time limit, leave out --paths
  and run both paths in one command):
      d=$(mktemp -d); tar xzf .gpu/site.tgz -C $d; export PYTHONPATH=$d/site:$PWD HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
      A="--arch qwen25-7b --gc unsloth --steps 20 --data .benchdata/ar --model out/b7/model --out out/b7/run"
      python3 bench/train_gpu.py run $A --paths forma; cp out/b7/run/*.* out/b7/run/forma-run/*.json $OUT/
    then, with the same first two lines:
      python3 bench/train_gpu.py run $A --paths baseline; cp out/b7/run/*.* $OUT/
  The baseline's micro-batch is 32 chats for the 7B (ARCH_BASE_MICRO, an estimate; `--base-micro` changes it).
  `--gc unsloth` (offloaded checkpointing, ~7.5 GiB by train/memory_plan.py's estimate) because the target is speed
  at <= 30% of the baseline's memory: `auto` would pick no checkpointing on a 139 GiB H200 (~104 GiB estimated).
  For the speed of `auto` alone, run `run $A --gc auto --paths forma` with another --out.

Figures: tokens/s counts real (non-padding) tokens only, over the steps after the first 20% (compile and warm-up
left out), and over the whole run; peak memory is torch's peak allocated CUDA memory during training (weights
included). Both paths see the same chats, LoRA settings, learning rate and about the same tokens per step.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

QWEN25_3B: dict[str, Any] = dict(hidden_size=2048, num_hidden_layers=36, num_attention_heads=16, num_key_value_heads=2,
                 intermediate_size=11008, vocab_size=151936, tie_word_embeddings=True,
                 max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6, hidden_act="silu",
                 bos_token_id=151643, eos_token_id=151645, pad_token_id=151643, use_sliding_window=False)
#: The published Qwen2.5-7B(-Instruct) config.json: 7,615,616,512 parameters (6.53 B outside the two untied
#: 152,064 x 3,584 embedding matrices). About 15 GB in bf16: `run` makes it on the GPU machine, never carried there.
QWEN25_7B: dict[str, Any] = dict(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                 intermediate_size=18944, vocab_size=152064, tie_word_embeddings=False,
                 max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6, hidden_act="silu",
                 bos_token_id=151643, eos_token_id=151645, pad_token_id=151643, use_sliding_window=False)
ARCHS: dict[str, dict[str, Any]] = {"qwen25-3b": QWEN25_3B, "qwen25-7b": QWEN25_7B}
ARCH_NAMES = {"qwen25-3b": "Qwen2.5-3B", "qwen25-7b": "Qwen2.5-7B"}
#: Parameter counts of the published models, checked against the configs above by `check`.
ARCH_PARAMS = {"qwen25-3b": 3_085_938_688, "qwen25-7b": 7_615_616_512}
LORA: dict[str, Any] = dict(r=16, alpha=16, dropout=0.0,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
SEQ, PACKED_ROWS, STEPS, LR = 2048, 16, 25, 2e-4
#: The baseline's largest micro-batch (chats). On an H100 it peaked at 37 GiB with 28 chats a batch, 51 GiB with 36
#: and 63 GiB with 45 (the logits over a 151,936-token vocabulary dominate), so it reaches the packed run's tokens
#: per optimiser step by gradient accumulation.
BASE_MICRO = 52
#: The same for the 7B, not measured: the baseline's memory per chat is mostly the logits (same vocabulary), the 7B's
#: weights take ~3.5 GB more, and the prepared Arabic chats are ~1.5x as long (mean 500 tokens against 325 in the
#: default bench data), so 32 chats a micro-batch should stay near the 3B's 51-63 GiB. `--base-micro` overrides it.
ARCH_BASE_MICRO = {"qwen25-3b": BASE_MICRO, "qwen25-7b": 32}
GC: bool | str = "auto"  # train/memory_plan.py picks the mode from the card (offloaded, on the GPU, or none)
#: The optimiser of both paths (a transformers `optim` name).
OPTIM = "adamw_torch_fused"  # forma's "auto" on CUDA, and transformers' own default on torch >= 2.8


def prepare(sdist: Path, out: Path, chats: int, recipe: Path | None = None, language: str | None = None) -> None:
    """Tokenizer folder (Qwen2 vocab GGUF + Qwen2.5 template) and the dataset, written to ``out``.

    The dataset is ``small_dataset`` (the default recipe's build) unless ``recipe`` is given: then that recipe's real
    `forma build` output, with ``chats`` chats of ``language`` when it is given (e.g. the Arabic slice of
    recipes/forma-fitness-ar.yaml), else ``chats`` chats of every language.
    """
    from transformers import AutoTokenizer

    from tests.helpers.train import small_dataset

    out.mkdir(parents=True, exist_ok=True)
    base = "llama_cpp_python-0.3.36/vendor/llama.cpp/models/"
    with tarfile.open(sdist) as tar:
        for name, target in (("ggml-vocab-qwen2.gguf", "vocab.gguf"),
                             ("templates/Qwen-Qwen2.5-7B-Instruct.jinja", "chat_template.jinja")):
            member = tar.extractfile(base + name)
            assert member is not None, name
            (out / target).write_bytes(member.read())
    tok = AutoTokenizer.from_pretrained(str(out), gguf_file="vocab.gguf")
    tok.chat_template = (out / "chat_template.jinja").read_text(encoding="utf-8")
    tok.eos_token, tok.pad_token = "<|im_end|>", "<|endoftext|>"
    tok.model_max_length = QWEN25_3B["max_position_embeddings"]
    tok.save_pretrained(str(out / "tokenizer"))
    (out / "vocab.gguf").unlink()
    if recipe is None:
        small_dataset(out / "dataset", n=chats, seed=0)
    else:
        build_chats(recipe, out / "dataset", chats, language)
    print(f"prepared {out}: tokenizer + {sum(1 for _ in (out / 'dataset' / 'samples.jsonl').open())} chats")


def build_chats(recipe: Path, out: Path, chats: int, language: str | None) -> None:
    """``chats`` chats from a real `forma build` of ``recipe``, only those in ``language`` when it is given.

    A language's slice is built as the recipe builds it: the recipe's own language shares, over a total large enough
    to hold ``chats`` of that language; the other languages' chats are then left out (samples.jsonl keeps the split).
    """
    from factory.build import build_dataset
    from factory.planner import Planner
    from factory.recipe_loader import load_recipe

    total = chats
    if language is not None:
        planner = Planner(load_recipe(recipe))
        per_1000 = planner.language_quotas(1000)
        if not per_1000.get(language):
            raise SystemExit(f"{recipe} has no {language!r} chats (languages: {', '.join(per_1000)})")
        total = max(chats, chats * 1000 // per_1000[language])
        while planner.language_quotas(total).get(language, 0) < chats:
            total += 1
    work = out.with_name(out.name + "-build")
    shutil.rmtree(work, ignore_errors=True)
    build_dataset(recipe, work, seed=0, total=total)
    rows = [line for line in (work / "samples.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    if language is not None:
        rows = [r for r in rows if json.loads(r).get("language") == language]
    out.mkdir(parents=True, exist_ok=True)
    (out / "samples.jsonl").write_text("".join(r + "\n" for r in rows[:chats]), encoding="utf-8")
    shutil.rmtree(work)
    print(f"built {recipe.name} ({total} chats), kept {min(chats, len(rows))}"
          f"{f' in {language!r}' if language else ''}", flush=True)


def make_model(data: Path, model_dir: Path, arch: str = "qwen25-3b", layers: int | None = None,
               device: str = "cuda") -> None:
    """Random-init ``arch`` (default Qwen2.5-3B) in bf16 on the GPU, saved with the tokenizer beside it.

    ``layers`` and ``device`` are for `check` only (the same code at a few layers on the CPU). A folder this made
    before for the same architecture (its ``bench_arch.json``) is reused, so a run split over several commands makes
    the 15 GB 7B once.
    """
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    settings = {**ARCHS[arch], **({"num_hidden_layers": layers} if layers else {})}
    stamp = model_dir / "bench_arch.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == {"arch": arch, "config": settings, "seed": 0}:
        print(f"model: reusing {model_dir} ({arch})", flush=True)
        return
    t = time.time()
    config = Qwen2Config(**settings, dtype="bfloat16")
    config.architectures = ["Qwen2ForCausalLM"]
    torch.manual_seed(0)
    with torch.device(device):
        model: Any = Qwen2ForCausalLM(config).to(torch.bfloat16)  # type: ignore[arg-type]
    model.save_pretrained(str(model_dir))
    for f in (data / "tokenizer").iterdir():
        shutil.copy(f, model_dir / f.name)
    stamp.write_text(json.dumps({"arch": arch, "config": settings, "seed": 0}) + "\n")
    params = sum(p.numel() for p in model.parameters())
    del model
    if device == "cuda":  # give the cached blocks back: the runs that follow plan from the card's free memory
        torch.cuda.empty_cache()
    print(f"model: {params / 1e9:.3f} B parameters, made and saved in {time.time() - t:.1f} s", flush=True)


def check(data: Path, arch: str, layers: int, work: Path) -> None:
    """A CPU dry run of the GPU code path for ``arch``: the full config's parameter count equals the published
    model's (built on the meta device, no memory), then `make_model` at ``layers`` layers on the CPU, reloaded from
    its folder as both paths load it, runs forward and backward on a prepared chat, and the prepared chats tokenize
    within the sequence length and the model's vocabulary."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from train.data import IGNORE_INDEX, load_chats, tokenize_chats

    with torch.device("meta"):
        full: Any = Qwen2ForCausalLM(Qwen2Config(**ARCHS[arch]))
    params = sum(p.numel() for p in full.parameters())
    assert params == ARCH_PARAMS[arch], (params, ARCH_PARAMS[arch])
    print(f"{arch}: {params:,} parameters at full depth (published {ARCH_PARAMS[arch]:,}), "
          f"{params * 2 / 1e9:.1f} GB in bf16", flush=True)
    model_dir = work / f"{arch}-{layers}layers"
    shutil.rmtree(model_dir, ignore_errors=True)
    make_model(data, model_dir, arch, layers=layers, device="cpu")
    make_model(data, model_dir, arch, layers=layers, device="cpu")  # the second call reuses the folder
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    chats = load_chats(data / "dataset")
    toks = tokenize_chats(tok, chats.train, SEQ)
    lengths = sorted(len(ids) for ids in toks.input_ids)
    print(f"data: {len(chats.train)} train chats, {toks.too_long} longer than {SEQ}; tokens mean "
          f"{toks.tokens / len(lengths):.0f}, median {lengths[len(lengths) // 2]}, max {lengths[-1]}; "
          f"{toks.label_tokens / toks.tokens:.1%} of them trained on", flush=True)
    assert toks.too_long == 0 and max(max(ids) for ids in toks.input_ids) < ARCHS[arch]["vocab_size"]
    model: Any = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.bfloat16)
    config = model.config
    assert (config.hidden_size, config.num_attention_heads, config.num_key_value_heads, config.intermediate_size,
            config.vocab_size, config.tie_word_embeddings, config.num_hidden_layers) == (
        ARCHS[arch]["hidden_size"], ARCHS[arch]["num_attention_heads"], ARCHS[arch]["num_key_value_heads"],
        ARCHS[arch]["intermediate_size"], ARCHS[arch]["vocab_size"], ARCHS[arch]["tie_word_embeddings"], layers)
    ids, labels = torch.tensor([toks.input_ids[0]]), torch.tensor([toks.labels[0]])
    assert (labels != IGNORE_INDEX).any()
    model.get_input_embeddings().requires_grad_(False)  # gradients for the blocks only: 1 GB less on this CPU
    model.get_output_embeddings().requires_grad_(False)
    loss = model(input_ids=ids, labels=labels).loss
    loss.backward()
    print(f"model: {sum(p.numel() for p in model.parameters()):,} parameters at {layers} layers; loss on one chat "
          f"{loss.item():.3f} (ln vocab = {torch.log(torch.tensor(float(config.vocab_size))).item():.3f}); "
          f"backward ran", flush=True)
    assert torch.isfinite(loss) and abs(loss.item() - torch.log(torch.tensor(float(config.vocab_size))).item()) < 2
    shutil.rmtree(model_dir)


def _phase_clock(counter: Any, phases: bool = True) -> Any:
    """`train.sft.step_clock` plus, with ``phases``, CUDA-synchronised marks at step begin, before and after
    optimizer.step.

    Splits each optimiser step into: gap (data loading, logging and callbacks between steps), forward+backward (with
    gradient clipping), optimizer.step, and the rest (scheduler, zero_grad). The four syncs per step stop the host
    from running ahead of the GPU, so they hide what a sync-free step loop gains: off unless the variant asks.
    """
    import torch

    from train import sft

    clock = sft._bench_step_clock(counter)  # type: ignore[attr-defined]  # the original, saved by run_forma
    marks: dict[str, list[float]] = {"begin": [], "pre_opt": [], "opt": [], "end": []}
    if not phases:
        clock.marks = {}
        _PHASE_CLOCKS.append(clock)
        return clock

    def mark(name: str) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        marks[name].append(time.perf_counter())

    inner_end = clock.on_step_end
    clock.on_step_begin = lambda *a, **k: mark("begin")
    clock.on_pre_optimizer_step = lambda *a, **k: mark("pre_opt")
    clock.on_optimizer_step = lambda *a, **k: mark("opt")

    def on_step_end(*a: Any, **k: Any) -> None:
        mark("end")
        inner_end(*a, **k)

    clock.on_step_end = on_step_end
    clock.marks = marks
    _PHASE_CLOCKS.append(clock)
    return clock


_PHASE_CLOCKS: list[Any] = []


def _phases(marks: dict[str, list[float]], skip: float = 0.2) -> dict[str, float]:
    """Median seconds per phase over the steps after the first ``skip`` share (as the steady tokens/s)."""
    import statistics

    if not marks:
        return {}
    n = min(len(v) for v in marks.values())
    first = max(1, int(n * skip))
    steps = range(first, n)
    if not steps:
        return {}
    med = statistics.median
    return {"gap_s": med(marks["begin"][i] - marks["end"][i - 1] for i in steps),
            "fwd_bwd_clip_s": med(marks["pre_opt"][i] - marks["begin"][i] for i in steps),
            "optimizer_s": med(marks["opt"][i] - marks["pre_opt"][i] for i in steps),
            "after_s": med(marks["end"][i] - marks["opt"][i] for i in steps),
            "step_s": med(marks["end"][i] - marks["end"][i - 1] for i in steps)}


def _override_sft_args(overrides: dict[str, Any]) -> None:
    """Make every `trl.SFTConfig` built after this call take ``overrides`` (bench settings search only)."""
    import unsloth  # noqa: F401  (patches trl first, as train() does)
    # isort: split
    import trl

    original = trl.SFTConfig

    def patched(*a: Any, **k: Any) -> Any:
        return original(*a, **{**k, **overrides})

    trl.SFTConfig = patched  # type: ignore[misc,assignment]


def run_forma(model_dir: Path, data: Path, out: Path, variant: dict[str, Any] | None = None) -> dict[str, Any]:
    """The `forma train` code path: TrainConfig -> train.sft.train (Unsloth, packed, 4-bit).

    Variant keys: gc, packing, rows, steps, optim (a transformers `optim` name), logging_steps, quant (4bit or
    16bit: the base in NF4 or in bf16), profile (steps to profile, bench/step_profile.py; profile_at: the first
    profiled step, 10 unless given; trace: host ops and GPU idle time too), phases (CUDA-synchronised phase marks,
    off unless true), env (environment for the child, e.g. FORMA_FUSED_QKV=0), and args (raw
    SFTConfig overrides such as dataloader_num_workers: a settings search, not a `forma train` setting; with
    workers > 0 the counting collator runs in the workers, so token counts read 0 and only the phases hold).
    """
    v = {"gc": GC, "packing": True, "rows": PACKED_ROWS, "steps": STEPS, "optim": OPTIM, "logging_steps": 1,
         "quant": "4bit", **(variant or {})}
    if v.get("args"):
        _override_sft_args(v["args"])
    import train.sft as sft
    from train.config import LoraSettings, TrainConfig
    from train.sft import train

    if not hasattr(sft, "_bench_step_clock"):
        sft._bench_step_clock = sft.step_clock  # type: ignore[attr-defined]
    phases = bool(v.get("phases", False))
    sft.step_clock = lambda counter: _phase_clock(counter, phases)  # type: ignore[assignment]
    if v.get("profile"):  # {"profile": N}: torch.profiler over N steady steps (from step 10), kernels grouped
        import step_profile  # bench/ is sys.path[0] when this file runs as a script

        def profiled_clock(counter: Any) -> Any:
            clock = _phase_clock(counter, phases)
            step_profile.attach(clock, start=int(v.get("profile_at", 10)), steps=int(v["profile"]), out=out,
                                trace=bool(v.get("trace")))
            return clock

        sft.step_clock = profiled_clock  # type: ignore[assignment]

    config = TrainConfig(base_model=str(model_dir), dataset=data / "dataset", output_dir=out / "forma-run",
                         quantization=v["quant"], max_seq_length=SEQ, lora=LoraSettings(**LORA), learning_rate=LR,
                         max_steps=v["steps"], batch_size=v["rows"], gradient_accumulation=1,
                         packing=v["packing"], gradient_checkpointing=v["gc"],
                         eval_split="test", eval_max_samples=32, eval_on_start=False, eval_steps=10_000,
                         save_steps=10_000, save_merged=False, device="cuda", optimizer=v["optim"],
                         logging_steps=v["logging_steps"])
    result = train(config, run_name="bench-forma")
    report = json.loads(result.report.read_text())
    m = report["metrics"]
    path = "forma (Unsloth QLoRA, packed)" if v["quant"] == "4bit" else "forma (Unsloth LoRA, bf16 base, packed)"
    return {"path": path, "variant": v, "tokens_per_s": m["tokens_per_s"],
            "tokens_per_s_steady": m["tokens_per_s_steady"], "peak_gib": m["peak_gpu_allocated_gib"],
            "peak_reserved_gib": m["peak_gpu_reserved_gib"], "non_padding_share": m["non_padding_share"],
            "trained_tokens": m["trained_tokens"], "steps": m["steps"], "train_s": m["train_runtime_s"],
            "loss_first": m["train_loss_first"], "loss_last": m["train_loss_last"],
            "loss_curve": [round(loss, 5) for _, loss in report["loss_curves"]["train"]],
            "fused": {k: report.get(k) for k in ("fused_qkv_layers", "fused_mlp_layers", "fused_mlp",
                                                    "rope_grad_layout", "flash_attention_4", "dense_base")},
            "tokens_per_step": m["trained_tokens"] / max(1, m["steps"]), "versions": report["versions"],
            "packed_attention": report.get("packed_attention"), "memory_plan": report.get("memory_plan"),
            "deferred_logging": report.get("deferred_logging"),
            "mfu": report.get("mfu"), "step_s": _step_seconds(_PHASE_CLOCKS[-1].points) if _PHASE_CLOCKS else [],
            "phases": _phases(_PHASE_CLOCKS[-1].marks) if _PHASE_CLOCKS else {}}


def _step_seconds(points: list[list[float]]) -> list[list[float]]:
    """[seconds, real tokens] of each optimiser step, from the step clock's cumulative points (to see which steps
    are slow and whether a step's time follows its tokens)."""
    out, last_s, last_tok = [], 0.0, 0.0
    for _, seconds, tokens in points:
        out.append([round(seconds - last_s, 4), tokens - last_tok])
        last_s, last_tok = seconds, tokens
    return out


def run_baseline(model_dir: Path, data: Path, out: Path, batch: int, accum: int = 1,
                 steps: int = STEPS, optim: str = OPTIM) -> dict[str, Any]:
    """Plain transformers + PEFT QLoRA (bitsandbytes NF4, double quant, bf16 compute), the usual recipe."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, Trainer, TrainingArguments

    from train.data import IGNORE_INDEX, load_chats, tokenize_chats
    from train.report import steady_tokens_per_s
    from train.sft import CountingCollator, step_clock

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    chats = load_chats(data / "dataset")
    toks = tokenize_chats(tok, chats.train, SEQ)
    ds = Dataset.from_dict({"input_ids": toks.input_ids, "labels": toks.labels})
    bnb = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=torch.bfloat16)
    model: Any = AutoModelForCausalLM.from_pretrained(str(model_dir), quantization_config=bnb, dtype=torch.bfloat16,
                                                 device_map={"": 0}, attn_implementation="sdpa")
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    model = get_peft_model(model, LoraConfig(r=LORA["r"], lora_alpha=LORA["alpha"], lora_dropout=LORA["dropout"],
                                             target_modules=LORA["target_modules"], task_type="CAUSAL_LM"))
    pad = tok.pad_token_id

    def collate(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        width = max(len(e["input_ids"]) for e in examples)
        ids = torch.full((len(examples), width), pad)
        labels = torch.full((len(examples), width), IGNORE_INDEX)
        mask = torch.zeros((len(examples), width), dtype=torch.long)
        for i, e in enumerate(examples):
            n = len(e["input_ids"])
            ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(e["input_ids"]), torch.tensor(e["labels"]), 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    counter = CountingCollator(collate)
    args = TrainingArguments(output_dir=str(out / "baseline-run"), per_device_train_batch_size=batch,
                             gradient_accumulation_steps=accum, learning_rate=LR, max_steps=steps, bf16=True,
                             gradient_checkpointing=True, optim=optim, logging_steps=1, save_strategy="no",
                             report_to="none", seed=3407, remove_unused_columns=False, dataloader_num_workers=0)
    trainer = Trainer(model=model, args=args, train_dataset=ds, data_collator=counter)
    clock = step_clock(counter)
    trainer.add_callback(clock)
    torch.cuda.reset_peak_memory_stats()
    t = time.time()
    trainer.train()
    seconds = time.time() - t
    real, slots = counter.counts["train"]
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return {"path": "plain transformers + PEFT QLoRA", "tokens_per_s": real / seconds,
            "tokens_per_s_steady": steady_tokens_per_s(clock.points),
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
            "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30, "non_padding_share": real / slots,
            "trained_tokens": real, "steps": trainer.state.global_step, "train_s": seconds,
            "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
            "tokens_per_step": real / max(1, trainer.state.global_step), "batch_chats": batch,
            "gradient_accumulation": accum, "optim": optim}


def _child(which: str, data: Path, model_dir: Path, out: Path, batch: int,
           variant: dict[str, Any] | None = None) -> dict[str, Any]:
    cmd = [sys.executable, __file__, which, "--data", str(data), "--model", str(model_dir), "--out", str(out),
           "--batch", str(batch), "--variant", json.dumps(variant or {})]
    t = time.time()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(variant or {}).get("env", {})}
    proc = subprocess.run(cmd, text=True, capture_output=True, env=env)
    tag = re.sub(r"[^A-Za-z0-9._-]", "", "-".join(f"{k}{v}" for k, v in (variant or {}).items()))
    (out / f"{which}{'-' + tag if tag else ''}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        print((proc.stdout + proc.stderr)[-6000:])
        raise SystemExit(f"{which} failed with exit code {proc.returncode}")
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    result: dict[str, Any] = json.loads(line[len("RESULT "):])
    result["process_s"] = time.time() - t
    return result


#: The card "memory mode" stands for: what `forma train` plans on a 24 GB card (free memory as torch reports it there).
MEMORY_CARD_FREE_GIB = 22.0
PATHS = ("forma", "forma-memory", "baseline")


def memory_mode(arch: str, rows: int) -> tuple[bool | str, str]:
    """The checkpointing `forma train` picks for this job on a 24 GB card (train/memory_plan.py), as a --gc value."""
    from train.memory_plan import UNSLOTH_VALUE, choose

    cfg = ARCHS[arch]
    plan = choose(layers=cfg["num_hidden_layers"], hidden=cfg["hidden_size"], params=ARCH_PARAMS[arch],
                  tokens=rows * SEQ, quantization="4bit", free_gib=MEMORY_CARD_FREE_GIB)
    return UNSLOTH_VALUE[plan.mode], plan.why


def _mfu(arch: str, result: dict[str, Any]) -> dict[str, float]:
    """MFU by the issue's count (4 FLOPs per base parameter per token, recomputation not counted, 790 TFLOP/s),
    over the steady window and at the median steady step."""
    import statistics

    from train.memory_plan import PEAK_TFLOPS

    peak = PEAK_TFLOPS["H200"] * 1e12  # the one peak figure of train/memory_plan.py
    flops = 4 * ARCH_PARAMS[arch]
    steps = result.get("step_s") or []
    steady = steps[max(1, int(len(steps) * 0.2)):]
    median_rate = statistics.median(tok / s for s, tok in steady) if steady else 0.0
    return {"steady": round(flops * result["tokens_per_s_steady"] / peak, 4),
            "median_step": round(flops * median_rate / peak, 4)}


def run_all(data: Path, out: Path, model_dir: Path, rows: int, steps: int, optim: str = OPTIM,
            gc: bool | str = GC, arch: str = "qwen25-3b", paths: tuple[str, ...] = PATHS,
            base_micro: int | None = None) -> None:
    """Make the model, run the paths, write train_gpu.json once the results are in ``out``.

    ``forma`` is `forma train` as it plans on this card (speed mode with ``--gc auto``); ``forma-memory`` forces what
    it plans on a 24 GB card (memory mode); ``baseline`` is plain transformers + PEFT at the same real tokens per
    optimiser step. ``paths`` lets a run be split over commands (each under a time limit): the forma paths write
    out/forma*.json, ``baseline`` reads forma.json (its batch follows the forma run's tokens per step) and then
    writes the summary.
    """
    import torch

    out.mkdir(parents=True, exist_ok=True)
    make_model(data, model_dir, arch)
    torch.cuda.empty_cache()
    if "forma" in paths:
        forma = _child("forma", data, model_dir, out, 0, {"rows": rows, "steps": steps, "optim": optim, "gc": gc})
        (out / "forma.json").write_text(json.dumps(forma, indent=2) + "\n")
    if "forma-memory" in paths:
        mem_gc, why = memory_mode(arch, rows)
        print(f"memory mode: gradient checkpointing {mem_gc!r} (on a 24 GB card: {why})", flush=True)
        mem = _child("forma", data, model_dir, out, 0, {"rows": rows, "steps": steps, "optim": optim, "gc": mem_gc})
        mem["card_plan"] = why
        (out / "forma-memory.json").write_text(json.dumps(mem, indent=2) + "\n")
    if "baseline" not in paths:
        return
    forma = json.loads((out / "forma.json").read_text())
    # the same real tokens per optimiser step as the packed run: chats per batch = packed tokens / mean chat length
    from transformers import AutoTokenizer

    from train.data import load_chats, tokenize_chats

    toks = tokenize_chats(AutoTokenizer.from_pretrained(str(model_dir)), load_chats(data / "dataset").train, SEQ)
    mean_len = toks.tokens / len(toks.input_ids)
    per_step = max(1, round(forma["tokens_per_step"] / mean_len))
    accum = -(-per_step // (base_micro or ARCH_BASE_MICRO[arch]))
    base = _child("baseline", data, model_dir, out, round(per_step / accum), {"accum": accum, "steps": steps,
                                                                             "optim": optim})
    summary: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0), "model": f"{ARCH_NAMES[arch]} architecture, random init, 4-bit NF4",
        "lora": LORA, "max_seq_length": SEQ, "steps": steps, "packed_rows": rows, "mean_chat_tokens": mean_len,
        "optimizer": optim, "gradient_checkpointing": gc,
        "forma": forma, "baseline": base,
        "speedup_steady": forma["tokens_per_s_steady"] / base["tokens_per_s_steady"],
        "speedup_whole_run": forma["tokens_per_s"] / base["tokens_per_s"],
        "memory_ratio": forma["peak_gib"] / base["peak_gib"],
        "mfu": _mfu(arch, forma),
    }
    sides = ["forma", "baseline"]
    if (out / "forma-memory.json").is_file():
        mem = json.loads((out / "forma-memory.json").read_text())
        summary["forma_memory"] = mem
        summary["memory_mode"] = {"speedup_steady": mem["tokens_per_s_steady"] / base["tokens_per_s_steady"],
                                  "speedup_whole_run": mem["tokens_per_s"] / base["tokens_per_s"],
                                  "memory_ratio": mem["peak_gib"] / base["peak_gib"], "mfu": _mfu(arch, mem)}
        sides.insert(1, "forma_memory")
    (out / "train_gpu.json").write_text(json.dumps(summary, indent=2) + "\n")
    for side in sides:
        r = summary[side]
        label = r["path"] + (f" [gc {r['variant']['gc']}]" if "variant" in r else "")
        print(f"{label:48s} tokens/s {r['tokens_per_s_steady']:9.0f} steady, {r['tokens_per_s']:9.0f} whole run;"
              f" peak {r['peak_gib']:6.2f} GiB; non-padding {100 * r['non_padding_share']:5.1f}%;"
              f" {r['tokens_per_step']:.0f} tokens/step; loss {r['loss_first']:.3f} -> {r['loss_last']:.3f}")
    mfu = summary["mfu"]
    print(f"speed mode: {summary['speedup_steady']:.2f}x steady ({summary['speedup_whole_run']:.2f}x whole run); "
          f"memory {100 * summary['memory_ratio']:.1f}% of the baseline's peak; MFU {100 * mfu['steady']:.1f}% "
          f"steady, {100 * mfu['median_step']:.1f}% at the median step")
    if "memory_mode" in summary:
        m = summary["memory_mode"]
        print(f"memory mode: {m['speedup_steady']:.2f}x steady ({m['speedup_whole_run']:.2f}x whole run); memory "
              f"{100 * m['memory_ratio']:.1f}% of the baseline's peak; MFU {100 * m['mfu']['steady']:.1f}% steady")


def sweep(data: Path, out: Path, model_dir: Path, variants: list[dict[str, Any]], arch: str = "qwen25-3b") -> None:
    """Run the forma path once per variant (settings search; one line each)."""
    out.mkdir(parents=True, exist_ok=True)
    make_model(data, model_dir, arch)
    results: list[dict[str, Any]] = []
    for variant in variants:
        try:
            r = _child("forma", data, model_dir, out, 0, variant)
        except SystemExit as exc:
            print(f"{variant}: {exc}")
            continue
        ph = " ".join(f"{k[:-2]} {v:.3f}" for k, v in r.get("phases", {}).items())
        ph += " | step s " + " ".join(f"{s:.2f}" for s, _ in r.get("step_s", []))
        mfu = _mfu(arch, r)
        ph += f" | MFU {100 * mfu['steady']:.1f}% steady, {100 * mfu['median_step']:.1f}% at the median step"
        ph += f" | fused {r.get('fused')} | loss {r.get('loss_curve')}"
        print(f"{variant}: tokens/s {r['tokens_per_s_steady']:.0f} steady, {r['tokens_per_s']:.0f} whole; "
              f"peak {r['peak_gib']:.2f} GiB; non-padding {100 * (r['non_padding_share'] or 0):.1f}%; "
              f"{r['tokens_per_step']:.0f} tokens/step; {r['process_s']:.0f} s; median s: {ph}", flush=True)
        results.append(r)
        (out / "sweep.json").write_text(json.dumps(results, indent=2) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=["prepare", "check", "run", "sweep", "forma", "baseline"])
    ap.add_argument("--arch", choices=sorted(ARCHS), default="qwen25-3b",
                    help="the random-init architecture run and check make (default qwen25-3b)")
    ap.add_argument("--recipe", type=Path, help="prepare: the dataset is this recipe's real `forma build` output")
    ap.add_argument("--language", help="prepare with --recipe: keep only this language's chats (e.g. ar)")
    ap.add_argument("--layers", type=int, default=1, help="check only: build the model at this many layers")
    ap.add_argument("--paths", default=",".join(PATHS),
                    help="run: a subset of forma (speed mode: the plan for this card), forma-memory (the plan for a "
                         "24 GB card, forced) and baseline; a split run runs forma first, with the same --out")
    ap.add_argument("--base-micro", type=int, default=None,
                    help="run: the baseline's largest micro-batch in chats (default per arch: "
                         + ", ".join(f"{k} {v}" for k, v in ARCH_BASE_MICRO.items()) + ")")
    ap.add_argument("--variant", default="{}", help="JSON: forma settings (gc, packing, rows, steps); "
                    "for sweep, a JSON list of them")
    ap.add_argument("--sdist", type=Path)
    ap.add_argument("--data", type=Path, default=ROOT / ".benchdata")
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "bench-train")
    ap.add_argument("--model", type=Path, default=None, help="where run makes the model (default /tmp/ARCH-random)")
    ap.add_argument("--chats", type=int, default=2400)
    ap.add_argument("--batch", type=int, default=0)
    ap.add_argument("--rows", type=int, default=PACKED_ROWS, help="packed rows of max_seq_length per step")
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--optim", default=OPTIM, help="optimizer of both paths (a transformers `optim` name)")
    ap.add_argument("--gc", choices=["auto", "unsloth", "true", "false"], default=None,
                    help=f"forma's gradient checkpointing: unsloth (offloaded to CPU) or true (plain, on the GPU); "
                         f"default {GC!r}. The baseline always uses HF gradient checkpointing.")
    a = ap.parse_args()
    if a.model is None:
        a.model = Path(f"/tmp/{a.arch}-random")
    if a.step == "prepare":
        prepare(a.sdist, a.data, a.chats, a.recipe, a.language)
    elif a.step == "check":
        check(a.data, a.arch, a.layers, a.out)
    elif a.step == "run":  # default: all three paths in one command
        paths = tuple(p.strip() for p in a.paths.split(",") if p.strip())
        if not paths or set(paths) - set(PATHS):
            ap.error(f"--paths takes a comma-separated subset of {','.join(PATHS)}")
        run_all(a.data, a.out, a.model, a.rows, a.steps, a.optim,
                GC if a.gc is None else {"true": True, "false": False}.get(a.gc, a.gc), a.arch, paths, a.base_micro)
    elif a.step == "sweep":
        sweep(a.data, a.out, a.model, json.loads(a.variant), a.arch)
    else:
        result = run_forma(a.model, a.data, a.out, json.loads(a.variant)) if a.step == "forma" \
            else run_baseline(a.model, a.data, a.out, a.batch, json.loads(a.variant).get("accum", 1),
                              json.loads(a.variant).get("steps", STEPS), json.loads(a.variant).get("optim", OPTIM))
        print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
