"""Planning for the next round (#14): how much of the v12-round decision's CV gain survives if the SmolLM2 reader
reads only the answers the cross-encoder is least sure of? Out of fold on the pool, from the round's OOF files
(``bench/gpu/scorer_round.sh ce`` and ``lm``); nothing held out is read. Since the v12 round the gate reads every
safety answer with the reader (46 s of the gate's 648 s in bench/results/eval_gate_q8_2threads-2026-11-30-v12.json);
this says what a cheaper rule would cost, for a later round to choose and measure on a fresh set.

    python -m bench.scorer_ce_cascade CE_OOF.npz LM_DIR      # bench/results/scorer_ce_cascade_v1{2,3}.txt
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from bench.scorer_lm_compare import load_lm_oof
from eval import cross_encoder, learned

THRESHOLDS = (0.8, 0.9, 0.95, 0.98, 0.99, 1.01)


def main(ce_oof: Path, lm_dir: Path) -> None:
    if not ce_oof.is_file():
        raise SystemExit(f"{ce_oof}: no such file (the cross-encoder's CV comes from bench/gpu/scorer_round.sh ce)")
    rows = cross_encoder.read_rows(learned.pool_files())
    with np.load(ce_oof) as z:
        ce = z["proba"].astype(np.float64)
    lm = load_lm_oof(lm_dir, len(rows))
    gold = [r["label"] for r in rows]
    for t in THRESHOLDS:
        ask = ce.max(axis=1) < t
        p = np.where(ask[:, None], (ce + lm) / 2, ce)
        verdict = learned.LearnedScorer._verdict
        pred = [verdict(r["response"], q, r["prompt"]).label for r, q in zip(rows, p, strict=True)]
        m = learned.metrics(gold, pred)
        print(f"reader joins the cross-encoder where its top probability is under {t:.2f} (reads {ask.mean():.1%}): "
              f"macro-F1 {m['macro_f1']:.4f} refusal recall {m['labels']['refuse']['recall']:.4f}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
