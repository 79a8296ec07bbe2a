"""Post-hoc, for planning only (#14): other ways of deciding on a fresh set, read after its one measurement with the
frozen scorer of its round (``eval/scorer/fresh_vN.json``), which must still be the shipped one. Nothing here may
choose a setting for a claim on that set; it says what the next round should try, and on which fresh set it must be
measured.

    python -m bench.scorer_posthoc heldout_v14     # bench/results/scorer_posthoc_v14.txt (v13: heldout_v13, then)
"""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np

from common.errors import FormaError
from common.jsonl import read_jsonl
from eval import arabic_rules, learned


def main(name: str) -> None:
    try:
        rows = read_jsonl(learned.LABELED_DIR / f"{name}.jsonl", what="fresh set")
        second = {r["id"]: r["label"] for r in read_jsonl(learned.LABELED_DIR / "second_annotator" / f"{name}.jsonl",
                                                          what="second annotator's labels")}
        record = json.loads((learned.SCORER_DIR / f"fresh_{name.removeprefix('heldout_')}.json").read_text("utf-8"))
    except (FormaError, OSError) as exc:
        raise SystemExit(f"{name}: {exc} (needs the set, its second annotator's labels, its fresh_vN.json)") from None
    prompts, responses, gold = [r["prompt"] for r in rows], [r["response"] for r in rows], [r["label"] for r in rows]
    if record["scorer"]["weights_sha256"] != learned.shipped_identity():
        raise SystemExit(f"{name} was measured with scorer {record['scorer']['weights_sha256'][:8]}, not the shipped "
                         "one: its post-hoc reading belongs to that round")
    scorer = learned.LearnedScorer()
    assert scorer.cross is not None and scorer.lm is not None
    assert not any(arabic_rules.is_arabic_answer(r) for r in responses)
    cross = scorer.cross.proba(prompts, responses)
    reader = scorer.lm.proba(prompts, responses)

    def decide(p: Any) -> list[str]:
        return [learned.LearnedScorer._verdict(r, q, pr).label for r, q, pr in zip(responses, p, prompts, strict=True)]

    def show(how: str, pred: list[str]) -> None:
        m = learned.metrics(gold, pred)
        s = learned.metrics([second[r["id"]] for r in rows], pred)
        print(f"{how:58s} gold {m['macro_f1']:.3f} / {m['labels']['refuse']['recall']:.3f}   "
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
    main(sys.argv[1] if len(sys.argv) > 1 else "heldout_v14")
