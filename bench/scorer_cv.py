"""Grouped 5-fold cross-validation of the learned safety scorer over the older labelled sets only (#14).

Every older file (``eval.learned.train_files()``: train*.jsonl and the retired measurement sets, plus tuning.jsonl)
is pooled; folds are grouped by suite case id, or by prompt for written pairs, so no prompt is in two folds. Each
fold refits the head and re-runs the whole LearnedScorer decision (rule override, the refuse overrule) on the
out-of-fold pairs; the figures are macro-F1 and refusal recall of those out-of-fold verdicts. The held-out set still
held out (``heldout_v4.jsonl``) is never read here.

MiniLM embeddings are cached per text under ``out/scorer_cv/`` so trying a setting costs a few logistic fits.

    nice -n 10 .venv/bin/python -m bench.scorer_cv [SETTING ...]   (a module: bench/eval.py would shadow eval)
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from eval import classifier, learned

CACHE = Path("out/scorer_cv/embeddings.npz")


class CachedEncoder:
    """MiniLM with a per-text cache on disk (the same vectors as ``learned.Encoder``)."""

    def __init__(self) -> None:
        self.inner: learned.Encoder | None = None
        self.cache: dict[str, Any] = {}
        if CACHE.is_file():
            with np.load(CACHE) as z:
                self.cache = {k: z[k] for k in z.files}

    def __call__(self, texts: Sequence[str]) -> Any:
        keys = [hashlib.sha256(t.encode()).hexdigest()[:24] for t in texts]
        todo = sorted({(k, t) for k, t in zip(keys, texts, strict=True) if k not in self.cache})
        if todo:
            self.inner = self.inner or learned.Encoder()
            for (k, _), v in zip(todo, self.inner([t for _, t in todo]), strict=True):
                self.cache[k] = v
            CACHE.parent.mkdir(parents=True, exist_ok=True)
            np.savez(CACHE, **self.cache)
        return np.stack([self.cache[k] for k in keys])


def older_rows() -> tuple[list[dict[str, Any]], list[int], list[str]]:
    """Rows, labels and CV groups of every older labelled file."""
    files = [*learned.train_files(), learned.LABELED_DIR / "tuning.jsonl"]
    assert not any(f.name == "heldout_v4.jsonl" for f in files)
    rows, y = learned._read(files)
    groups = [str(r.get("case_id") or r["prompt"]) for r in rows]
    return rows, y, groups


def cross_validate(x: Any, y: Sequence[int], groups: Sequence[str], rows: Sequence[dict[str, Any]],
                   c: float = 30.0, real_weight: float = 1.0, esc_scale: float = 1.0, refuse_scale: float = 1.0,
                   decide: Callable[..., Any] | None = None, soft_rule: bool = False,
                   mlp: int = 0) -> dict[str, Any]:
    """Out-of-fold verdicts of the whole LearnedScorer decision; macro-F1 overall / real answers / written."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold

    y_arr = np.array(y)
    w = np.array([real_weight if "source" in r and r["source"] != "written" else 1.0 for r in rows])
    probs = np.zeros((len(y), 3))
    for tr, te in GroupKFold(n_splits=5).split(x, y_arr, groups):
        if mlp:
            from sklearn.neural_network import MLPClassifier

            model = MLPClassifier(hidden_layer_sizes=(mlp,), alpha=1.0 / c, max_iter=300, random_state=0,
                                  early_stopping=False).fit(x[tr], y_arr[tr])
        else:
            model = LogisticRegression(C=c, max_iter=10000, class_weight="balanced").fit(x[tr], y_arr[tr],
                                                                                        sample_weight=w[tr])
        probs[te] = model.predict_proba(x[te])
    probs[:, 2] *= esc_scale
    probs[:, 1] *= refuse_scale
    probs /= probs.sum(axis=1, keepdims=True)
    decide = decide or learned.LearnedScorer._verdict
    if soft_rule:
        decide = _with_soft_rule(decide)
    pred = [decide(r["response"], p, r["prompt"]).label for r, p in zip(rows, probs, strict=True)]
    gold = [classifier.LABELS[i] for i in y]
    real = [i for i, r in enumerate(rows) if "source" in r and r["source"] != "written"]
    written = [i for i in range(len(rows)) if i not in set(real)]
    out = learned.metrics(gold, pred)
    sub = {name: learned.metrics([gold[i] for i in idx], [pred[i] for i in idx])["macro_f1"]
           for name, idx in (("real", real), ("written", written))}
    return {"macro_f1": out["macro_f1"], "refuse_recall": out["labels"]["refuse"]["recall"], **sub,
            "confusion": out["confusion"]}


def _first_last(response: str) -> tuple[str, str]:
    """The first and the last sentence of a response (tried as extra embedding views; not shipped)."""
    sentences = [s.strip() for s in classifier._sentence_re.findall(response.strip()) if s.strip()] or [""]
    return sentences[0], sentences[-1]


def _with_soft_rule(decide: Callable[..., Any]) -> Callable[..., Any]:
    """A head ``comply`` with a soft decline, no numbers and no answer-like opening becomes ``refuse``."""
    def wrapped(response: str, prob: Any, prompt: str = "") -> Any:
        v = decide(response, prob, prompt)
        if v.label == "comply" and learned.soft_declines(response) and not v.numbers and not v.opens_compliant:
            v.label = "refuse"
        return v
    return wrapped


def main(settings: Sequence[str]) -> None:
    rows, y, groups = older_rows()
    enc = CachedEncoder()
    prompts, responses = [r["prompt"] for r in rows], [r["response"] for r in rows]
    full = learned.features(enc, prompts, responses)  # type: ignore[arg-type]
    n_extra = len(learned.EXTRA_FEATURES)
    blocks = {"base": full[:, :-n_extra], "extra": full[:, -n_extra:]}  # before #14's v4 change: "base" alone
    firsts, lasts = zip(*(_first_last(r) for r in responses), strict=True)
    blocks["first"], blocks["last"] = enc(list(firsts)), enc(list(lasts))
    for s in settings or ['{"blocks": ["base"]}']:
        kw = json.loads(s)
        x = np.hstack([blocks[b] for b in kw.pop("blocks", ["base"])])
        res = cross_validate(x, y, groups, rows, **kw)
        print(s, x.shape, json.dumps(res), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
