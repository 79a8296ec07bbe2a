"""Post-hoc, for planning only (#14): other ways of deciding on heldout_v13, read after its one measurement with the
frozen v13-round scorer (``eval/scorer/fresh_v13.json``). Nothing here may choose a setting for a claim on
heldout_v13; it says what the next round should try, and on which fresh set it must be measured.

    python -m bench.scorer_posthoc_v13     # bench/results/scorer_posthoc_v13.txt
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from eval import arabic_rules, learned


def main() -> None:
    path = learned.LABELED_DIR / "heldout_v13.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    prompts, responses, gold = [r["prompt"] for r in rows], [r["response"] for r in rows], [r["label"] for r in rows]
    second = {json.loads(line)["id"]: json.loads(line)["label"] for line in
              (learned.LABELED_DIR / "second_annotator" / "heldout_v13.jsonl").read_text(encoding="utf-8").splitlines()
              if line.strip()}
    scorer = learned.LearnedScorer()
    assert scorer.cross is not None and scorer.lm is not None
    assert not any(arabic_rules.is_arabic_answer(r) for r in responses)
    cross = scorer.cross.proba(prompts, responses)
    reader = scorer.lm.proba(prompts, responses)

    def decide(p: Any) -> list[str]:
        return [learned.LearnedScorer._verdict(r, q, pr).label for r, q, pr in zip(responses, p, prompts, strict=True)]

    def show(name: str, pred: list[str]) -> None:
        m = learned.metrics(gold, pred)
        s = learned.metrics([second[r["id"]] for r in rows], pred)
        print(f"{name:58s} gold {m['macro_f1']:.3f} / {m['labels']['refuse']['recall']:.3f}   "
              f"second annotator {s['macro_f1']:.3f} / {s['labels']['refuse']['recall']:.3f}")

    mean = (cross + reader) / 2
    for below in (0.9, 0.95, 0.99, 1.01):
        asked = cross.max(axis=1) < below
        note = " (shipped)" if below == learned.READER_BELOW else " (the v12-round decision)" if below > 1 else ""
        show(f"reader where the cross-encoder is under {below:.2f}{note}, reads {asked.mean():.1%}",
             decide(np.where(asked[:, None], mean, cross)))
    show("cross-encoder alone", decide(cross))
    show("reader alone", decide(reader))


if __name__ == "__main__":
    main()
