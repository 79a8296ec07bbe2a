"""How should the cross-encoder's probabilities reach a verdict? Grouped CV on the fitting pool only (#14).

Reads the cross-encoder's out-of-fold probabilities (``python -m eval.cross_encoder fit ... --cv-out OOF.npz``, run
on a GPU) and refits the logistic head on the same folds (``eval.cross_encoder.fold_of``: CRC-32 of the case id or
prompt), then scores a fixed list of ways to decide, all on out-of-fold probabilities:

- ``ce``: the cross-encoder's most probable label;
- ``ce+rules``: its probabilities through ``LearnedScorer._verdict`` (a decline phrase with no dose is ``refuse`` by
  rule; an unexpressed refusal in an answer that reads as one is overruled), as the head's were;
- ``head+rules``: the shipped head alone (its refuse / escalate weights), for comparison;
- ``mean+rules``: the mean of the two models' probabilities, through the same rules.

The choice is the best macro-F1 over the whole pool; nothing here reads a set still held out.

    nice -n 10 .venv/bin/python -m bench.scorer_combine OOF.npz
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.scorer_cv import CachedEncoder, in_fold_referral_block
from eval import cross_encoder, learned


def head_oof(rows: list[dict[str, Any]], y: list[int], extra: list[dict[str, Any]] | None = None) -> Any:
    """The shipped head's out-of-fold probabilities (features, referral model and logistic fit inside each fold),
    with the refuse / escalate weights the scorer applies. ``extra`` rows (augmented copies, ``eval.augment``) join
    the training side of the folds their group is not held out in and are never scored."""
    from sklearn.linear_model import LogisticRegression

    enc = CachedEncoder()
    extra = extra or []
    every = [*rows, *extra]
    prompts, responses = [r["prompt"] for r in every], [r["response"] for r in every]
    x_base = learned.features(enc, prompts, responses)  # type: ignore[arg-type]
    y_arr = np.array([*y, *(cross_encoder.LABELS.index(r["label"]) for r in extra)])
    groups = [cross_encoder.group_of(r) for r in every]
    fold = np.array([cross_encoder.fold_of(r) for r in every])
    scored = np.arange(len(every)) < len(rows)
    probs = np.zeros((len(rows), 3))
    for k in range(cross_encoder.FOLDS):
        tr, te = np.flatnonzero(fold != k), np.flatnonzero((fold == k) & scored)
        x = np.hstack([x_base, in_fold_referral_block(enc, prompts, responses, y_arr, groups, tr, te)])
        model = LogisticRegression(C=learned.C_GRID[0], max_iter=10000, class_weight="balanced")
        probs[te] = model.fit(x[tr], y_arr[tr]).predict_proba(x[te])
    probs[:, learned.LABELS.index("refuse")] *= learned.REFUSE_WEIGHT
    probs[:, learned.LABELS.index("escalate")] *= learned.ESCALATE_WEIGHT
    return probs / probs.sum(axis=1, keepdims=True)


def figures(rows: list[dict[str, Any]], pred: list[str]) -> dict[str, float]:
    gold = [r["label"] for r in rows]
    real = [i for i, r in enumerate(rows) if r.get("source", "written") != "written"]
    whole = learned.metrics(gold, pred)
    part = learned.metrics([gold[i] for i in real], [pred[i] for i in real])
    return {"macro_f1": whole["macro_f1"], "refuse_recall": whole["labels"]["refuse"]["recall"],
            "escalate_recall": whole["labels"]["escalate"]["recall"],
            "comply_as_escalate": whole["confusion"]["comply"]["escalate"],
            "real_macro_f1": part["macro_f1"], "real_refuse_recall": part["labels"]["refuse"]["recall"]}


def main(argv: list[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.scorer_combine")
    parser.add_argument("oof", nargs="+", help="cross-encoder out-of-fold probabilities (.npz), one per variant")
    parser.add_argument("--augment", help="augmented copies (eval.augment) to fit the head on as well, in a second "
                        "run of the head")
    args = parser.parse_args(argv)
    files = learned.pool_files()
    assert not any(learned.still_held_out(f) for f in files)
    rows = cross_encoder.read_rows(files)
    ids = [f"{r['_file']}:{r.get('id', i)}" for i, r in enumerate(rows)]
    ces = {}
    for oof_file in args.oof:
        with np.load(oof_file) as z:
            if list(z["ids"]) != ids:
                raise SystemExit(f"{oof_file}: its rows are not the pool's (refit with the same files)")
            ces[Path(oof_file).stem] = z["proba"].astype(np.float64)
    y = [cross_encoder.LABELS.index(r["label"]) for r in rows]
    heads = {"head": head_oof(rows, y)}
    if args.augment:
        heads["head_aug"] = head_oof(rows, y, cross_encoder.read_rows([Path(args.augment)]))
    decide: Callable[..., Any] = functools.partial(learned.LearnedScorer._verdict, spare_opening_decline=True,
                                                  wider_spare=True)

    def ruled(p: Any) -> list[str]:
        return [decide(r["response"], q, r["prompt"]).label for r, q in zip(rows, p, strict=True)]

    ways: dict[str, Callable[[], list[str]]] = {}
    for hname, head in heads.items():
        ways[f"{hname}+rules"] = functools.partial(ruled, head)
    for cname, ce in ces.items():
        ways[f"{cname}"] = functools.partial(lambda c: [cross_encoder.LABELS[i] for i in c.argmax(axis=1)], ce)
        ways[f"{cname}+rules"] = functools.partial(ruled, ce)
        for hname, head in heads.items():
            ways[f"mean({cname},{hname})+rules"] = functools.partial(ruled, (ce + head) / 2)
    print(f"pool: {len(rows)} rows from {len(files)} files")
    for name, way in ways.items():
        print(f"{name:34s}", {k: round(v, 4) for k, v in figures(rows, way()).items()}, flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
