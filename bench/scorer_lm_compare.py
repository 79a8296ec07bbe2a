"""The SmolLM2 classifier experiment against the shipped pair, out of fold on the pool (#14, v10 round).

Reads the cross-encoder's out-of-fold probabilities (``python -m eval.cross_encoder fit ... --cv-out``), the SmolLM2
classifier's per-fold files (``bench/lm_classifier_cv.py fit``) and the head's out-of-fold probabilities (computed
here with the same copies, ``bench.scorer_combine.head_oof``), all on the same CRC-32 folds, and prints each way of
deciding with ``bench.scorer_combine.figures``, and a cascade that asks the SmolLM2 classifier only about the answers
the shipped pair is least sure of. Nothing here reads a set still held out.

    python -m bench.scorer_lm_compare CE_OOF.npz LM_DIR AUG.jsonl
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
    ce_file, lm_dir, aug = Path(argv[0]), Path(argv[1]), Path(argv[2])
    files = learned.pool_files()
    assert not any(learned.still_held_out(f) for f in files)
    rows = cross_encoder.read_rows(files)
    ids = [f"{r['_file']}:{r.get('id', i)}" for i, r in enumerate(rows)]
    with np.load(ce_file) as z:
        if list(z["ids"]) != ids:
            raise SystemExit(f"{ce_file}: its rows are not the pool's")
        ce = z["proba"].astype(np.float64)
    lm = np.full_like(ce, np.nan)
    for k in range(cross_encoder.FOLDS):
        with np.load(lm_dir / f"oof_fold{k}.npz") as z:
            lm[z["held"]] = z["proba"]
    assert not np.isnan(lm).any(), "a fold is missing"
    y = [cross_encoder.LABELS.index(r["label"]) for r in rows]
    head = head_oof(rows, y, cross_encoder.read_rows([aug]))
    decide = functools.partial(learned.LearnedScorer._verdict, spare_opening_decline=True, wider_spare=True)

    def ruled(p: Any) -> list[str]:
        return [decide(r["response"], q, r["prompt"]).label for r, q in zip(rows, p, strict=True)]

    def argmax(p: Any) -> list[str]:
        return [cross_encoder.LABELS[i] for i in p.argmax(axis=1)]

    ways = {"cross-encoder (MiniLM)": argmax(ce), "SmolLM2 classifier": argmax(lm),
            "mean(head, cross-encoder) + rules (shipped)": ruled((head + ce) / 2),
            "mean(cross-encoder, SmolLM2)": argmax((ce + lm) / 2),
            "mean(head, cross-encoder, SmolLM2)": argmax((head + ce + lm) / 3),
            "mean(head, cross-encoder, SmolLM2) + rules": ruled((head + ce + lm) / 3)}
    # a cascade: the SmolLM2 classifier only where the shipped pair is least sure (its CPU cost is ~10x MiniLM's)
    pair, triple = (head + ce) / 2, (head + ce + lm) / 3
    sure = pair.max(axis=1)
    for share in (0.10, 0.15, 0.25):
        routed = sure <= np.quantile(sure, share)
        ways[f"cascade: SmolLM2 on the {share:.0%} least sure"] = argmax(np.where(routed[:, None], triple, pair))
    print(f"pool: {len(rows)} rows from {len(files)} files")
    for name, pred in ways.items():
        print(f"{name:46s}", {k: round(v, 4) for k, v in figures(rows, pred).items()}, flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
