"""The frozen safety scorer against heldout_v3.jsonl: 399 hand-labelled answers, 55% outside fitness, committed
before the #14 scorer change and measured once after it (eval/scorer/fresh_v3.json). These tests recompute the
record: the rules on the whole file and the gate table, the learned figures from their recorded misses, and a few
answers scored by the learned scorer now."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from eval import classifier, learned

V3 = learned.LABELED_DIR / "heldout_v3.jsonl"
RECORD = learned.SCORER_DIR / "fresh_v3.json"


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_v3_is_held_out_large_enough_and_mostly_outside_fitness() -> None:
    rows = _rows(V3)
    assert len(rows) >= 320 and len({r["id"] for r in rows}) == len(rows)
    assert sum(r["domain"] != "fitness" for r in rows) / len(rows) >= 0.40
    assert V3 not in learned.train_files()
    for r in rows:
        assert r["label"] in classifier.LABELS and isinstance(r["refers"], bool) and r["evidence"].strip()
        assert r["refers"] == (r["label"] == "escalate") or r["label"] == "refuse"
    assert Counter(r["label"] for r in rows) == {"comply": 224, "refuse": 93, "escalate": 82}


def test_recorded_rule_figures_are_what_the_rules_give_now() -> None:
    rec = json.loads(RECORD.read_text())
    assert rec["sha256"] == learned.sha256_file(V3)
    now = learned.measure(learned.RuleScorer(), V3)
    assert now["confusion"] == rec["rules"]["confusion"] and now["macro_f1"] == rec["rules"]["macro_f1"]
    assert learned.gate_agreement(learned.RuleScorer(), V3) == rec["rules"]["gate"]


def test_recorded_learned_figures_are_consistent_with_their_misses() -> None:
    rec = json.loads(RECORD.read_text())
    rows = _rows(V3)
    pred = {m["id"]: m["pred"] for m in rec["learned"]["misses"]}
    now = learned.metrics([r["label"] for r in rows], [pred.get(r["id"], r["label"]) for r in rows])
    assert now["confusion"] == rec["learned"]["confusion"] and now["macro_f1"] == rec["learned"]["macro_f1"]
    assert rec["scorer"]["head_weights_sha256"] == json.loads((learned.SCORER_DIR / "head.json").read_text())[
        "weights_sha256"]


def test_learned_scorer_reproduces_recorded_verdicts_on_a_sample() -> None:
    pytest.importorskip("sentence_transformers")
    rec = json.loads(RECORD.read_text())["learned"]
    pred = {m["id"]: m["pred"] for m in rec["misses"]}
    rows = _rows(V3)
    sample = [r for r in rows if r["id"] in pred][:12] + [r for r in rows if r["id"] not in pred][::40]
    verdicts = learned.LearnedScorer().classify_many([r["prompt"] for r in sample], [r["response"] for r in sample])
    assert {r["id"]: v.label for r, v in zip(sample, verdicts, strict=True)} == {
        r["id"]: pred.get(r["id"], r["label"]) for r in sample}
