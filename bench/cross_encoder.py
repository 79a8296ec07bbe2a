"""Would a fine-tuned (prompt, answer) cross-encoder generalise where the shipped head does not? (#14, an experiment)

The shipped scorer is a logistic head over frozen MiniLM sentence embeddings plus cue features; on three fresh
held-out sets it fell 0.06-0.08 below its own grouped CV (docs/eval.md, "heldout_v6 measured once"). This script
fine-tunes the same MiniLM end to end as a 3-way classifier over "prompt [SEP] answer" on exactly the head's fit
pool, and reports (1) grouped 5-fold CV on that pool, (2) one measurement on a set the head never fitted on, for the
same comparison the head got. Settings are fixed up front (below), not tuned on either figure. Runs on a GPU in a
minute or two (CPU: tens of minutes); nothing here is shipped.

    python bench/cross_encoder.py --model MINILM_DIR --test eval/labeled/heldout_v6.jsonl \
        --train eval/labeled/train.jsonl ... --out result.json
"""

from __future__ import annotations

import argparse
import json
import random
import time
import zlib
from pathlib import Path
from typing import Any

LABELS = ("comply", "refuse", "escalate")
#: fixed before any run: a small model, a few thousand pairs
EPOCHS, LR, BATCH, MAX_LEN, WARMUP, SEED, FOLDS = 4, 5e-5, 32, 320, 0.1, 0, 5


def read(paths: list[Path]) -> list[dict[str, Any]]:
    rows = []
    for path in paths:
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                row["_file"] = path.name
                rows.append(row)
    return rows


def metrics(gold: list[str], pred: list[str]) -> dict[str, Any]:
    """Macro-F1, refusal recall and the confusion matrix (rows gold, columns predicted). The same figures as
    ``eval.learned.metrics``, written out here because this script runs alone on the GPU machine, whose image lacks
    the packages ``eval.learned`` imports."""
    f1s = []
    for label in LABELS:
        tp = sum(g == p == label for g, p in zip(gold, pred, strict=True))
        precision = tp / max(sum(p == label for p in pred), 1)
        recall = tp / max(sum(g == label for g in gold), 1)
        f1s.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    refuse = [p for g, p in zip(gold, pred, strict=True) if g == "refuse"]
    confusion = {g: {p: sum(a == g and b == p for a, b in zip(gold, pred, strict=True)) for p in LABELS}
                 for g in LABELS}
    return {"n": len(gold), "macro_f1": round(sum(f1s) / 3, 4),
            "refuse_recall": round(sum(p == "refuse" for p in refuse) / max(len(refuse), 1), 4),
            "confusion": confusion}


def train(model_dir: str, rows: list[dict[str, Any]], seed: int = SEED) -> Any:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

    torch.manual_seed(seed)
    random.seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=3, torch_dtype=torch.float32)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01)
    steps = EPOCHS * ((len(rows) + BATCH - 1) // BATCH)
    schedule = get_linear_schedule_with_warmup(optimiser, int(WARMUP * steps), steps)
    order = list(range(len(rows)))
    for _ in range(EPOCHS):
        random.shuffle(order)
        for start in range(0, len(order), BATCH):
            batch = [rows[i] for i in order[start:start + BATCH]]
            enc = tokenizer([r["prompt"] for r in batch], [r["response"] for r in batch], truncation="longest_first",
                            max_length=MAX_LEN, padding=True, return_tensors="pt").to(device)
            target = torch.tensor([LABELS.index(r["label"]) for r in batch], device=device)
            with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
                loss = torch.nn.functional.cross_entropy(model(**enc).logits.float(), target)
            loss.backward()
            optimiser.step()
            schedule.step()
            optimiser.zero_grad()
    return model.eval(), tokenizer


def predict(trained: Any, rows: list[dict[str, Any]]) -> list[str]:
    import torch

    model, tokenizer = trained
    device = next(model.parameters()).device
    out: list[str] = []
    with torch.no_grad():
        for start in range(0, len(rows), 128):
            batch = rows[start:start + 128]
            enc = tokenizer([r["prompt"] for r in batch], [r["response"] for r in batch], truncation="longest_first",
                            max_length=MAX_LEN, padding=True, return_tensors="pt").to(device)
            out += [LABELS[i] for i in model(**enc).logits.argmax(-1).tolist()]
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--train", nargs="+", type=Path, required=True)
    parser.add_argument("--test", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=SEED, help="every seed run is reported, none chosen")
    args = parser.parse_args()
    pool, test = read(args.train), read([args.test])
    groups = [str(r.get("case_id") or r["prompt"]) for r in pool]
    fold = [zlib.crc32(g.encode()) % FOLDS for g in groups]  # grouped: no prompt or case in two folds
    started = time.time()
    oof: list[str] = [""] * len(pool)
    for k in range(FOLDS):
        trained = train(args.model, [r for r, f in zip(pool, fold, strict=True) if f != k], args.seed)
        held = [i for i, f in enumerate(fold) if f == k]
        for i, label in zip(held, predict(trained, [pool[i] for i in held]), strict=True):
            oof[i] = label
        print(f"fold {k}: {len(held)} rows, {time.time() - started:.0f} s", flush=True)
    gold = [r["label"] for r in pool]
    real = [i for i, r in enumerate(pool) if "written" not in str(r.get("source", "written"))]
    result: dict[str, Any] = {"settings": {"epochs": EPOCHS, "lr": LR, "batch": BATCH, "max_len": MAX_LEN,
                                           "warmup": WARMUP, "seed": args.seed, "folds": FOLDS},
                              "pool": [p.name for p in args.train], "cv": metrics(gold, oof),
                              "cv_real": metrics([gold[i] for i in real], [oof[i] for i in real])}
    trained = train(args.model, pool, args.seed)
    pred = predict(trained, test)
    result["test_file"] = args.test.name
    result["test"] = metrics([r["label"] for r in test], pred)
    result["test_predictions"] = {r["id"]: p for r, p in zip(test, pred, strict=True)}
    result["seconds"] = round(time.time() - started, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1), encoding="utf-8")
    print(json.dumps({k: v for k, v in result.items() if k != "test_predictions"}, indent=1))


if __name__ == "__main__":
    main()
