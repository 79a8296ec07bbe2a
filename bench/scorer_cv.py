"""Grouped 5-fold cross-validation of the learned safety scorer over the older labelled sets only (#14).

Every older file (``eval.learned.train_files()``: train*.jsonl and the retired measurement sets, plus tuning.jsonl)
is pooled; folds are grouped by suite case id, or by prompt for written pairs, so no prompt is in two folds. Each
fold refits the head and re-runs the whole LearnedScorer decision (rule override, the refuse overrule) on the
out-of-fold pairs; the figures are macro-F1 and refusal recall of those out-of-fold verdicts. A held-out set still
held out (any ``heldout*.jsonl`` not in ``eval.learned.RETIRED_HELDOUT``) is never read here.

MiniLM embeddings are cached per text under ``out/scorer_cv/`` so trying a setting costs a few logistic fits.

A setting is a JSON object: ``blocks`` (``base`` = 3 views + rule features, ``extra`` = EXTRA_FEATURES, ``decline`` =
DECLINE_FEATURES, ``first`` / ``last`` / ``sentmax`` / ``sentmean`` = more embedding views), ``c``, ``refuse_scale``
(and ``also_refuse``: more weights scored on the same out-of-fold probabilities), ``spare`` (the overrule spares an
opening decline), ``refpair`` (the referral-relevance model, fitted inside each fold), ``real_weight``, ``esc_scale``,
``stack`` (trees on the head's probabilities, tried in the v5 round), ``scale`` (a block's multiplier) and ``dump``
(a file for the out-of-fold misses); since #14's v6 round also ``withhold`` (WITHHOLD_FEATURES), ``wider`` (the
overrule's spare reads the wider decline phrases) and ``refmore`` (the referral model reads place / test sentences).
The shipped setting since #14's v6 round: ``{"blocks": ["base", "extra", "decline", "withhold"], "c": 1,
"refuse_scale": 2.5, "esc_scale": 0.8, "spare": true, "wider": true, "refpair": true}`` (v5 round: ``{"blocks":
["base", "extra", "decline"], "c": 1, "refuse_scale": 2, "spare": true, "refpair": true}``).

    nice -n 10 .venv/bin/python -m bench.scorer_cv [SETTING ...]   (a module: bench/eval.py would shadow eval)
"""

from __future__ import annotations

import functools
import hashlib
import itertools
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
    assert not any(learned.still_held_out(f) for f in files)
    rows, y = learned._read(files)
    groups = [str(r.get("case_id") or r["prompt"]) for r in rows]
    return rows, y, groups


def in_fold_referral_block(enc: Any, prompts: Sequence[str], responses: Sequence[str], y: Any,
                           groups: Sequence[str], tr: Any, te: Any) -> Any:
    """The referral-relevance features for one fold: the model fitted on the fold's training rows (out-of-fold on
    them, as ``learned.fit_referral_model`` does) and applied to its test rows."""
    block = np.zeros((len(prompts), len(learned.REFERRAL_FEATURES)))
    block[tr], model = learned.fit_referral_model(enc, [prompts[i] for i in tr], [responses[i] for i in tr],
                                                  y[tr].tolist(), [groups[i] for i in tr])
    block[te] = learned.apply_referral_model(model, enc, [prompts[i] for i in te], [responses[i] for i in te])[0]
    return block


def cross_validate(x: Any, y: Sequence[int], groups: Sequence[str], rows: Sequence[dict[str, Any]],
                   c: float = 30.0, real_weight: float = 1.0, esc_scale: float = 1.0, refuse_scale: float = 1.0,
                   decide: Callable[..., Any] | None = None, soft_rule: bool = False,
                   mlp: int = 0, spare: bool = False, stack: dict[str, Any] | None = None,
                   dump: str = "", refpair: tuple[Any, list[str], list[str]] | None = None,
                   also_refuse: Sequence[float] = ()) -> dict[str, Any]:
    """Out-of-fold verdicts of the whole LearnedScorer decision; macro-F1 overall / real answers / written."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold

    y_arr = np.array(y)
    w = np.array([real_weight if "source" in r and r["source"] != "written" else 1.0 for r in rows])
    probs = np.zeros((len(y), 3))
    x_all = x
    for tr, te in GroupKFold(n_splits=5).split(x_all, y_arr, groups):
        if refpair is not None:
            x = np.hstack([x_all, in_fold_referral_block(*refpair, y_arr, groups, tr, te)])
        if mlp:
            from sklearn.neural_network import MLPClassifier

            model = MLPClassifier(hidden_layer_sizes=(mlp,), alpha=1.0 / c, max_iter=300, random_state=0,
                                  early_stopping=False).fit(x[tr], y_arr[tr])
        else:
            model = LogisticRegression(C=c, max_iter=10000, class_weight="balanced").fit(x[tr], y_arr[tr],
                                                                                        sample_weight=w[tr])
        probs[te] = model.predict_proba(x[te])
    if stack is not None:
        probs = _stacked(x, y_arr, groups, w, c, stack)
    if also_refuse:  # the same out-of-fold probabilities under other refuse weights (one fit for the sweep)
        return {f"refuse_scale={s:g}": _scored(rows, y, probs.copy(), esc_scale, s, decide, soft_rule, spare, dump)
                for s in [refuse_scale, *also_refuse]}
    return _scored(rows, y, probs, esc_scale, refuse_scale, decide, soft_rule, spare, dump)


def _scored(rows: Sequence[dict[str, Any]], y: Sequence[int], probs: Any, esc_scale: float, refuse_scale: float,
            decide: Callable[..., Any] | None, soft_rule: bool, spare: bool, dump: str) -> dict[str, Any]:
    """The whole LearnedScorer decision over out-of-fold head probabilities, and its figures."""
    probs[:, 2] *= esc_scale
    probs[:, 1] *= refuse_scale
    probs /= probs.sum(axis=1, keepdims=True)
    decide = decide or functools.partial(learned.LearnedScorer._verdict, spare_opening_decline=spare,
                                         wider_spare=False)
    if soft_rule:
        decide = _with_soft_rule(decide)
    verdicts = [decide(r["response"], p, r["prompt"]) for r, p in zip(rows, probs, strict=True)]
    pred = [v.label for v in verdicts]
    if dump:
        with Path(dump).open("w", encoding="utf-8") as fh:
            for r, v, gi in zip(rows, verdicts, y, strict=True):
                if v.label != classifier.LABELS[gi]:
                    fh.write(json.dumps({"id": r["id"], "gold": classifier.LABELS[gi], "pred": v.label,
                                         "decided_by": v.decided_by, "prompt": r["prompt"],
                                         "response": r["response"], "evidence": v.evidence}) + "\n")
    gold = [classifier.LABELS[i] for i in y]
    real = [i for i, r in enumerate(rows) if "source" in r and r["source"] != "written"]
    written = [i for i in range(len(rows)) if i not in set(real)]
    out = learned.metrics(gold, pred)
    sub = {name: learned.metrics([gold[i] for i in idx], [pred[i] for i in idx])["macro_f1"]
           for name, idx in (("real", real), ("written", written))}
    return {"macro_f1": out["macro_f1"], "refuse_recall": out["labels"]["refuse"]["recall"], **sub,
            "confusion": out["confusion"]}


def _stacked(x: Any, y: Any, groups: Sequence[str], w: Any, c: float, stack: dict[str, Any]) -> Any:
    """Out-of-fold probabilities of a second stage (gradient-boosted trees) over the logistic head's inner
    out-of-fold probabilities and the last ``stack["tail"]`` columns of ``x`` (the hand-made cues)."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold

    groups_arr = np.array(groups)
    tail = x[:, 3 * 384:]  # the rule features and every cue block after the three embedding views
    probs = np.zeros((len(y), 3))
    for tr, te in GroupKFold(n_splits=5).split(x, y, groups):
        inner = np.zeros((len(tr), 3))
        for itr, ite in GroupKFold(n_splits=4).split(x[tr], y[tr], groups_arr[tr]):
            m = LogisticRegression(C=c, max_iter=10000, class_weight="balanced").fit(
                x[tr][itr], y[tr][itr], sample_weight=w[tr][itr])
            inner[ite] = m.predict_proba(x[tr][ite])
        outer = LogisticRegression(C=c, max_iter=10000, class_weight="balanced").fit(x[tr], y[tr], sample_weight=w[tr])
        gb = HistGradientBoostingClassifier(max_iter=stack.get("iters", 200), learning_rate=stack.get("lr", 0.05),
                                            max_leaf_nodes=stack.get("leaves", 15), l2_regularization=1.0,
                                            class_weight="balanced", random_state=0)
        gb.fit(np.hstack([inner, tail[tr]]), y[tr])
        probs[te] = gb.predict_proba(np.hstack([outer.predict_proba(x[te]), tail[te]]))
    return probs


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
    n_extra, n_dec = len(learned.EXTRA_FEATURES), len(learned.DECLINE_FEATURES)
    n_w = len(learned.WITHHOLD_FEATURES) if learned.WITHHOLD_CUES else 0
    full, withhold = full[:, :full.shape[1] - n_w], full[:, full.shape[1] - n_w:]
    # "base" alone before #14's v4 change; "extra" since; "decline" (and the referral model, "refpair") since v5;
    # "withhold" (WITHHOLD_FEATURES) since v6
    blocks = {"base": full[:, :-(n_extra + n_dec)], "extra": full[:, -(n_extra + n_dec):-n_dec],
              "decline": full[:, -n_dec:],
              "withhold": withhold if n_w else np.array([learned.withhold_features(r) for r in responses])}
    def block(name: str) -> Any:
        if name not in blocks:
            if name in ("first", "last"):
                firsts, lasts = zip(*(_first_last(r) for r in responses), strict=True)
                blocks["first"], blocks["last"] = enc(list(firsts)), enc(list(lasts))
            elif name == "opening":  # #14 v5 round: a decline in the first sentence (first patterns only)
                blocks[name] = np.array([[float(bool(learned.opening_decline(r)))] for r in responses])
            elif name in ("sentmax", "sentmean"):
                sents = [[t.strip() for t in classifier._sentence_re.findall(r) if t.strip()] or [""]
                         for r in responses]
                flat = enc([t for ss in sents for t in ss])
                cut = np.cumsum([0] + [len(ss) for ss in sents])
                blocks["sentmax"] = np.stack([flat[a:b].max(axis=0) for a, b in itertools.pairwise(cut)])
                blocks["sentmean"] = np.stack([flat[a:b].mean(axis=0) for a, b in itertools.pairwise(cut)])
        return blocks[name]

    for s in settings or ['{"blocks": ["base"]}']:
        kw = json.loads(s)
        scale = kw.pop("scale", {})  # a cue block's multiplier (a weaker L2 penalty on its weights)
        x = np.hstack([block(b) * scale.get(b, 1.0) for b in kw.pop("blocks", ["base"])])
        learned.REFERRAL_MORE = kw.pop("refmore", False)  # the referral model reads place / test sentences too (v6)
        wider = kw.pop("wider", False)  # the overrule's spare also reads the wider decline phrases (v6)
        if wider:
            kw["decide"] = functools.partial(learned.LearnedScorer._verdict,
                                             spare_opening_decline=kw.get("spare", False), wider_spare=True)
        if kw.pop("refpair", False):
            kw["refpair"] = (enc, prompts, responses)
        res = cross_validate(x, y, groups, rows, **kw)
        print(s, x.shape, json.dumps(res), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
