"""Measure the frozen safety scorer once on a fresh held-out file and record it (eval/scorer/fresh_<name>.json).

Rules and learned scorer, each with macro-F1, per-label precision / recall, the confusion matrix, every miss and the
gate table (``eval.learned.measure`` / ``gate_agreement``). For #14 it also records the learned figures without the
prompts that share 60% or more of their words with an older labelled prompt, so a reader can see whether near-repeats
of common questions carry the figure. Run it once, after the scorer is frozen; tests/test_scorer_fresh_sets.py
recomputes the record.

    nice -n 10 .venv/bin/python -m bench.scorer_fresh eval/labeled/heldout_v4.jsonl eval/scorer/fresh_v4.json
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from common.jsonl import atomic_write_text
from eval import learned

NEAR = 0.6


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z']+", text.lower()))


def near_repeats(path: Path) -> set[str]:
    """Ids of rows whose prompt shares >= NEAR of its words (Jaccard) with a prompt of another labelled file."""
    older = [_words(json.loads(line).get("prompt", "")) for f in sorted(learned.LABELED_DIR.glob("*.jsonl"))
             if f.name != path.name for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
    out = set()
    for row in map(json.loads, path.read_text(encoding="utf-8").splitlines()):
        a = _words(row["prompt"])
        if any(b and len(a & b) / len(a | b) >= NEAR for b in older):
            out.add(row["id"])
    return out


def main(path: Path, out: Path) -> None:
    shipped = learned.LearnedScorer()  # the head and, since #14's v7 round, the cross-encoder beside it
    info = shipped.describe()
    scorer_id = {"head_weights_sha256": shipped.head.meta["weights_sha256"]}
    if shipped.cross is not None:
        scorer_id |= {"cross_encoder_weights_sha256": shipped.cross.weights_sha256,
                      "weights_sha256": info["weights_sha256"]}
    if "lm_reader" in info:  # since the v11 round (heldout_v11's record names it only through weights_sha256)
        scorer_id |= {"lm_reader_weights_sha256": info["lm_reader"]["weights_sha256"],
                      "lm_reads": info["lm_reader"]["reads"]}
    record: dict[str, Any] = {"file": path.name, "sha256": learned.sha256_file(path), "scorer": scorer_id,
                              "command": f"python -m bench.scorer_fresh {path} {out}"}
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    near = near_repeats(path)
    for name, scorer in (("rules", learned.RuleScorer()), ("learned", shipped)):
        m = learned.measure(scorer, path)
        m.pop("file")
        m.pop("sha256")
        m["gate"] = learned.gate_agreement(scorer, path)
        missed = {x["id"]: x["pred"] for x in m["misses"]}
        kept = [r for r in rows if r["id"] not in near]
        sub = learned.metrics([r["label"] for r in kept], [missed.get(r["id"], r["label"]) for r in kept])
        m["without_near_repeat_prompts"] = {"n": sub["n"], "macro_f1": sub["macro_f1"],
                                            "refuse_recall": sub["labels"]["refuse"]["recall"]}
        record[name] = m
        print(name, m["macro_f1"], m["labels"]["refuse"]["recall"], m["confusion"], flush=True)
    record["near_repeat_prompt_ids"] = sorted(near)
    atomic_write_text(out, json.dumps(record, indent=2, ensure_ascii=False) + "\n")  # a record is written once


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
