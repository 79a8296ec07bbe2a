"""The safety scorer against the #14 held-out sets, each hand-labelled, committed before the scorer change it measures
and measured once after it: heldout_v3.jsonl (399 answers, eval/scorer/fresh_v3.json), heldout_v4.jsonl (364
answers under the written labelling convention, eval/scorer/fresh_v4.json), heldout_v5.jsonl (449 answers, a
second blind annotator beside it, eval/scorer/fresh_v5.json), heldout_v6.jsonl (386 answers, also with a second
annotator, eval/scorer/fresh_v6.json), heldout_v7.jsonl (384 answers, a second annotator, eval/scorer/fresh_v7.json),
heldout_v8.jsonl (384 answers, eval/scorer/fresh_v8.json), heldout_v9.jsonl (384 answers, a second annotator,
eval/scorer/fresh_v9.json), heldout_v10.jsonl (384 answers, a second annotator, eval/scorer/fresh_v10.json),
heldout_v11.jsonl (320 answers, a second annotator, eval/scorer/fresh_v11.json), heldout_v12.jsonl (320 answers, a
second annotator, eval/scorer/fresh_v12.json), heldout_v13.jsonl (320 answers, a second annotator,
eval/scorer/fresh_v13.json), heldout_v14.jsonl (320 answers, a second annotator, eval/scorer/fresh_v14.json) and
heldout_v15.jsonl (320 answers, a second annotator, eval/scorer/fresh_v15.json).

v3 to v14 have since been read and retired (v3 in the v4 round ... v14 in the v15 round: the scorer is now fitted on
them), so their records are history: the rule figures still hold and the learned figures still match their misses,
but the recorded learned verdicts were the earlier scorers' (v3: ``c6b49a29...``, v4: ``372b2200...``, v5:
``11bc449a...``, v6: ``1003976a...``, heads alone; v7: ``6b65148b...``, v8: ``066becb1...``, v9: ``228c392f...``,
v10: ``62aed8f4...``, head and cross-encoder; v11: ``5fcac70f...``, head, cross-encoder and SmolLM2 reader; v12:
``e9e11407...``, cross-encoder and reader on every answer; v13: ``e7867b5a...``, the reader only where the
cross-encoder is under 0.99; v14: ``c40fee53...``). heldout_v15 is still held out: the shipped scorer (head,
cross-encoder and SmolLM2 reader, one identity over all three) is the one measured on it and must reproduce its
recorded verdicts."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from eval import classifier, learned

#: file -> (record, gold label counts, minimum share outside fitness, held out still)
SETS = {
    "heldout_v3.jsonl": ("fresh_v3.json", {"comply": 224, "refuse": 93, "escalate": 82}, 0.40, False),
    "heldout_v4.jsonl": ("fresh_v4.json", {"comply": 182, "refuse": 89, "escalate": 93}, 0.45, False),
    "heldout_v5.jsonl": ("fresh_v5.json", {"comply": 210, "refuse": 128, "escalate": 111}, 0.55, False),
    "heldout_v6.jsonl": ("fresh_v6.json", {"comply": 192, "refuse": 100, "escalate": 94}, 0.55, False),
    "heldout_v7.jsonl": ("fresh_v7.json", {"comply": 179, "refuse": 110, "escalate": 95}, 0.60, False),
    "heldout_v8.jsonl": ("fresh_v8.json", {"comply": 183, "refuse": 111, "escalate": 90}, 0.60, False),
    "heldout_v9.jsonl": ("fresh_v9.json", {"comply": 166, "refuse": 124, "escalate": 94}, 0.60, False),
    "heldout_v10.jsonl": ("fresh_v10.json", {"comply": 164, "refuse": 121, "escalate": 99}, 0.60, False),
    "heldout_v11.jsonl": ("fresh_v11.json", {"comply": 182, "refuse": 84, "escalate": 54}, 0.60, False),
    "heldout_v12.jsonl": ("fresh_v12.json", {"comply": 188, "refuse": 89, "escalate": 43}, 0.60, False),
    "heldout_v13.jsonl": ("fresh_v13.json", {"comply": 189, "refuse": 91, "escalate": 40}, 0.60, False),
    "heldout_v14.jsonl": ("fresh_v14.json", {"comply": 183, "refuse": 94, "escalate": 43}, 0.60, False),
    "heldout_v15.jsonl": ("fresh_v15.json", {"comply": 176, "refuse": 95, "escalate": 49}, 0.60, True),
}
RETIRED = [name for name, spec in SETS.items() if not spec[3]]
#: the one set still held out: the shipped scorer is the one measured on it
(CURRENT,) = [name for name, spec in SETS.items() if spec[3]]


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _record(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((learned.SCORER_DIR / SETS[name][0]).read_text(encoding="utf-8"))
    return data


@pytest.mark.parametrize("name", SETS)
def test_set_is_large_enough_mostly_outside_fitness_and_labelled(name: str) -> None:
    path = learned.LABELED_DIR / name
    rows = _rows(path)
    _, counts, outside, held = SETS[name]
    assert len(rows) >= 300 and len({r["id"] for r in rows}) == len(rows)
    assert sum(r["domain"] != "fitness" for r in rows) / len(rows) >= outside
    assert (path not in learned.train_files()) == held
    for r in rows:
        assert r["label"] in classifier.LABELS and isinstance(r["refers"], bool) and r["evidence"].strip()
        assert r["refers"] == (r["label"] == "escalate") or r["label"] == "refuse"
    assert Counter(r["label"] for r in rows) == counts


@pytest.mark.parametrize("name", SETS)
def test_recorded_rule_figures_are_what_the_rules_give_now(name: str) -> None:
    rec, path = _record(name), learned.LABELED_DIR / name
    assert rec["sha256"] == learned.sha256_file(path)
    now = learned.measure(learned.RuleScorer(), path)
    assert now["confusion"] == rec["rules"]["confusion"] and now["macro_f1"] == rec["rules"]["macro_f1"]
    assert learned.gate_agreement(learned.RuleScorer(), path) == rec["rules"]["gate"]


@pytest.mark.parametrize("name", SETS)
def test_recorded_learned_figures_are_consistent_with_their_misses(name: str) -> None:
    rec = _record(name)["learned"]
    rows = _rows(learned.LABELED_DIR / name)
    pred = {m["id"]: m["pred"] for m in rec["misses"]}
    now = learned.metrics([r["label"] for r in rows], [pred.get(r["id"], r["label"]) for r in rows])
    assert now["confusion"] == rec["confusion"] and now["macro_f1"] == rec["macro_f1"]
    assert now["labels"]["refuse"]["recall"] == rec["labels"]["refuse"]["recall"]


def test_records_are_of_the_earlier_heads_for_the_retired_sets() -> None:
    shipped = learned.shipped_identity()
    assert _record("heldout_v4.jsonl")["scorer"]["head_weights_sha256"].startswith("372b2200")
    assert _record("heldout_v5.jsonl")["scorer"]["head_weights_sha256"].startswith("11bc449a")
    assert _record("heldout_v6.jsonl")["scorer"]["head_weights_sha256"].startswith("1003976a")
    assert _record("heldout_v7.jsonl")["scorer"]["weights_sha256"].startswith("6b65148b")
    assert _record("heldout_v8.jsonl")["scorer"]["weights_sha256"].startswith("066becb1")
    assert _record("heldout_v9.jsonl")["scorer"]["weights_sha256"].startswith("228c392f")
    assert _record("heldout_v10.jsonl")["scorer"]["weights_sha256"].startswith("62aed8f4")
    assert _record("heldout_v11.jsonl")["scorer"]["weights_sha256"].startswith("5fcac70f")
    assert _record("heldout_v12.jsonl")["scorer"]["weights_sha256"].startswith("e9e11407")
    assert _record("heldout_v13.jsonl")["scorer"]["weights_sha256"].startswith("e7867b5a")
    assert _record("heldout_v14.jsonl")["scorer"]["weights_sha256"].startswith("c40fee53")
    for name in RETIRED:  # measured once with the scorer of their round; the shipped scorer is fitted on them
        assert _record(name)["scorer"].get("weights_sha256", _record(name)["scorer"]["head_weights_sha256"]) != shipped
        assert learned.LABELED_DIR / name in learned.train_files()
        assert not learned.still_held_out(learned.LABELED_DIR / name)


def test_shipped_scorer_is_the_one_measured_on_the_set_still_held_out() -> None:
    assert [name for name in SETS if name != CURRENT] == RETIRED
    scorer = _record(CURRENT)["scorer"]
    assert scorer["weights_sha256"] == learned.shipped_identity()
    assert scorer["head_weights_sha256"] == json.loads((learned.SCORER_DIR / "head.json").read_text())["weights_sha256"]
    # since the v11 round the identity covers the SmolLM2 reader too
    lm_meta = json.loads((learned.SCORER_DIR / "lm_classifier.json").read_text())
    assert scorer["weights_sha256"] == learned.scorer_identity(
        scorer["head_weights_sha256"], scorer["cross_encoder_weights_sha256"], lm_meta["weights_sha256"])
    assert learned.still_held_out(learned.LABELED_DIR / CURRENT)


def test_learned_scorer_reproduces_recorded_verdicts_on_a_sample() -> None:
    pytest.importorskip("sentence_transformers")
    rec = _record(CURRENT)["learned"]
    pred = {m["id"]: m["pred"] for m in rec["misses"]}
    rows = _rows(learned.LABELED_DIR / CURRENT)
    sample = [r for r in rows if r["id"] in pred][:12] + [r for r in rows if r["id"] not in pred][::40]
    verdicts = learned.LearnedScorer().classify_many([r["prompt"] for r in sample], [r["response"] for r in sample])
    assert {r["id"]: v.label for r, v in zip(sample, verdicts, strict=True)} == {
        r["id"]: pred.get(r["id"], r["label"]) for r in sample}
