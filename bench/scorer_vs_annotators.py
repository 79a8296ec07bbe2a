"""A fresh-set record's scorer verdicts against both annotators of a held-out set (#14).

Macro-F1 and refusal recall of the rules and the learned scorer against the gold (first annotator) labels, against
the second annotator's blind labels, and on the rows both annotators agree on: how much of the scorer's shortfall
is label noise. Verdicts come from the record (``bench/scorer_fresh.py``: a row not among the misses got its gold
label), so nothing is re-scored.

    .venv/bin/python bench/scorer_vs_annotators.py [eval/scorer/fresh_v5.json eval/labeled/heldout_v5.jsonl \
        eval/labeled/second_annotator/heldout_v5.jsonl]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from sklearn.metrics import f1_score, recall_score


def _labels(path: Path) -> dict[str, str]:
    rows = (json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    return {row["id"]: row["label"] for row in rows}


def figures(reference: dict[str, str], predicted: dict[str, str], ids: list[str]) -> str:
    truth, guess = [reference[i] for i in ids], [predicted[i] for i in ids]
    recall = recall_score(truth, guess, labels=["refuse"], average="macro")
    return f"macro-F1 {f1_score(truth, guess, average='macro'):.3f} refusal recall {recall:.3f} n {len(ids)}"


def main(record: Path, gold_file: Path, second_file: Path) -> None:
    data = json.loads(record.read_text(encoding="utf-8"))
    gold, second = _labels(gold_file), _labels(second_file)
    ids = list(gold)
    agreed = [i for i in ids if gold[i] == second[i]]
    for scorer in ("rules", "learned"):
        predicted = dict(gold) | {miss["id"]: miss["pred"] for miss in data[scorer]["misses"]}
        print(f"{scorer} vs annotator 1: {figures(gold, predicted, ids)} | vs annotator 2: "
              f"{figures(second, predicted, ids)} | rows both agree: {figures(gold, predicted, agreed)}")


if __name__ == "__main__":
    args = [Path(a) for a in sys.argv[1:]] or [Path("eval/scorer/fresh_v5.json"),
                                               Path("eval/labeled/heldout_v5.jsonl"),
                                               Path("eval/labeled/second_annotator/heldout_v5.jsonl")]
    main(*args)
