"""The SmolLM2 reader against the shipped pair, out of fold on the pool (#14, v10 and v11 rounds).

Reads the cross-encoder's out-of-fold probabilities (``python -m eval.cross_encoder fit ... --cv-out``), the SmolLM2
reader's per-fold files (``python -m eval.lm_classifier cv``, or the v10 experiment's ``bench/lm_classifier_cv.py
fit``: ``oof_fold{K}.npz`` with ``held`` and ``proba``) and the head's out-of-fold probabilities (computed here with
the same copies, ``bench.scorer_combine.head_oof``, cached in ``--head-cache``), all on the same CRC-32 folds. It
prints each way of deciding with ``bench.scorer_combine.figures``: the models alone and in means, with the rules'
two interventions on or off (``learned.DECLINE_RULE``, ``learned.OVERRULE_ANSWERS``), and cascades that ask the
reader only where the pair's top probability is under a threshold (the share of the pool asked is printed beside
each). Nothing here reads a set still held out.

    python -m bench.scorer_lm_compare CE_OOF.npz AUG.jsonl LM_DIR [LM_DIR ...] [--head-cache H.npy]
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path
from typing import Any

import numpy as np

from bench.scorer_combine import figures, head_oof
from eval import cross_encoder, learned

#: the rules' interventions compared: (decline rule, overrule of "reads as an answer")
RULES = {"rules": (True, True), "decline rule only": (True, False), "no rules": (False, False)}
THRESHOLDS = (0.6, 0.65, 0.7, 0.75, 0.8, 0.9, 1.01)


def load_lm_oof(lm_dir: Path, n: int) -> Any:
    """The SmolLM2 reader's out-of-fold probabilities (n, 3) from its per-fold files (``oof_fold{K}.npz``)."""
    lm = np.full((n, len(cross_encoder.LABELS)), np.nan)
    for k in range(cross_encoder.FOLDS):
        path = lm_dir / f"oof_fold{k}.npz"
        if not path.is_file():
            raise SystemExit(f"{path}: no such file (the reader's CV folds come from bench/gpu/scorer_round.sh lm)")
        with np.load(path) as z:
            lm[z["held"]] = z["proba"]
    if np.isnan(lm).any():
        raise SystemExit(f"{lm_dir}: a fold is missing")
    return lm


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.scorer_lm_compare")
    parser.add_argument("ce_oof", type=Path)
    parser.add_argument("augment", type=Path)
    parser.add_argument("lm_dirs", nargs="+", type=Path)
    parser.add_argument("--head-cache", type=Path, help="the head's OOF probabilities (.npy), made once and reused")
    args = parser.parse_args(argv)
    files = learned.pool_files()
    assert not any(learned.still_held_out(f) for f in files)
    rows = cross_encoder.read_rows(files)
    ids = [f"{r['_file']}:{r.get('id', i)}" for i, r in enumerate(rows)]
    with np.load(args.ce_oof) as z:
        if list(z["ids"]) != ids:
            raise SystemExit(f"{args.ce_oof}: its rows are not the pool's")
        ce = z["proba"].astype(np.float64)
    y = [cross_encoder.LABELS.index(r["label"]) for r in rows]
    if args.head_cache and args.head_cache.is_file():
        head = np.load(args.head_cache)
    else:
        head = head_oof(rows, y, cross_encoder.read_rows([args.augment]))
        if args.head_cache:
            np.save(args.head_cache, head)
    assert head.shape == ce.shape, "the head cache is not of this pool"

    def ruled(p: Any, rules: str) -> list[str]:
        decline, overrule = RULES[rules]
        decide = functools.partial(learned.LearnedScorer._verdict, spare_opening_decline=True, wider_spare=True,
                                   decline_rule=decline, overrule=overrule)
        return [decide(r["response"], q, r["prompt"]).label for r, q in zip(rows, p, strict=True)]

    pair = (head + ce) / 2
    sure = pair.max(axis=1)
    print(f"pool: {len(rows)} rows from {len(files)} files", flush=True)

    def show(name: str, pred: list[str]) -> None:
        print(f"{name:72s}", {k: round(v, 4) for k, v in figures(rows, pred).items()}, flush=True)

    show("cross-encoder (MiniLM)", ruled(ce, "no rules"))
    for rules in RULES:
        show(f"mean(head, cross-encoder), {rules}", ruled(pair, rules))
    for lm_dir in args.lm_dirs:
        lm = load_lm_oof(lm_dir, len(rows))
        name = lm_dir.name
        show(f"{name} alone", ruled(lm, "no rules"))
        show(f"mean(cross-encoder, {name})", ruled((ce + lm) / 2, "no rules"))
        for t in THRESHOLDS:
            asked = sure < t
            mixed = np.where(asked[:, None], (head + ce + lm) / 3, pair)
            for rules in RULES:
                show(f"cascade below {t:.2f} (asks {asked.mean():.1%}), {rules}", ruled(mixed, rules))


if __name__ == "__main__":
    main(sys.argv[1:])
