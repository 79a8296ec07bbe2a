"""The SmolLM2 classifier experiment against the shipped pair, out of fold on the pool (#14, v10 round).

Reads the cross-encoder's out-of-fold probabilities (``python -m eval.cross_encoder fit ... --cv-out``), the SmolLM2
classifier's per-fold files (``bench/lm_classifier_cv.py fit``) and the head's out-of-fold probabilities (computed
here with the same copies, ``bench.scorer_combine.head_oof``), all on the same CRC-32 folds, and prints each way of
deciding with ``bench.scorer_combine.figures``, and a cascade that asks the SmolLM2 classifier only about the answers
the shipped pair is least sure of. Nothing here reads a set still held out.

    python -m bench.scorer_lm_compare CE_OOF.npz AUG.jsonl LM_DIR [LM_DIR ...]   # e.g. the full fine-tune, a LoRA
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from typing import Any

import numpy as np

from bench.scorer_combine import figures, head_oof
from eval import cross_encoder, learned


def main(argv: list[str]) -> None:
    ce_file, aug, lm_dirs = Path(argv[0]), Path(argv[1]), [Path(a) for a in argv[2:]]
    files = learned.pool_files()
    assert not any(learned.still_held_out(f) for f in files)
    rows = cross_encoder.read_rows(files)
    ids = [f"{r['_file']}:{r.get('id', i)}" for i, r in enumerate(rows)]
    with np.load(ce_file) as z:
        if list(z["ids"]) != ids:
            raise SystemExit(f"{ce_file}: its rows are not the pool's")
        ce = z["proba"].astype(np.float64)
    y = [cross_encoder.LABELS.index(r["label"]) for r in rows]
    head = head_oof(rows, y, cross_encoder.read_rows([aug]))
    decide = functools.partial(learned.LearnedScorer._verdict, spare_opening_decline=True, wider_spare=True)

    def ruled(p: Any) -> list[str]:
        return [decide(r["response"], q, r["prompt"]).label for r, q in zip(rows, p, strict=True)]

    def argmax(p: Any) -> list[str]:
        return [cross_encoder.LABELS[i] for i in p.argmax(axis=1)]

    pair = (head + ce) / 2
    sure = pair.max(axis=1)
    ways = {"cross-encoder (MiniLM)": argmax(ce), "mean(head, cross-encoder) + rules (shipped)": ruled(pair)}
    for lm_dir in lm_dirs:
        lm = np.full_like(ce, np.nan)
        for k in range(cross_encoder.FOLDS):
            with np.load(lm_dir / f"oof_fold{k}.npz") as z:
                lm[z["held"]] = z["proba"]
        assert not np.isnan(lm).any(), f"{lm_dir}: a fold is missing"
        name, triple = lm_dir.name, (head + ce + lm) / 3
        ways |= {f"{name}": argmax(lm), f"mean(cross-encoder, {name})": argmax((ce + lm) / 2),
                 f"mean(head, cross-encoder, {name})": argmax(triple),
                 f"mean(head, cross-encoder, {name}) + rules": ruled(triple)}
        # a cascade: the SmolLM2 classifier only where the shipped pair is least sure (its CPU cost is ~10x MiniLM's)
        for share in (0.10, 0.15, 0.25):
            routed = sure <= np.quantile(sure, share)
            ways[f"cascade: {name} on the {share:.0%} least sure"] = argmax(np.where(routed[:, None], triple, pair))
    print(f"pool: {len(rows)} rows from {len(files)} files")
    for name, pred in ways.items():
        print(f"{name:56s}", {k: round(v, 4) for k, v in figures(rows, pred).items()}, flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
