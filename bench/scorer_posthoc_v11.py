"""Post-hoc, for planning only (#14): other ways of deciding on heldout_v11, read after its one measurement with the
frozen v11-round scorer. Nothing here may choose a setting for a claim on heldout_v11; it says what to try next.

    python -m bench.scorer_posthoc_v11     # bench/results/scorer_posthoc_v11.txt
"""

from __future__ import annotations

import functools
import json
from typing import Any

import numpy as np

from eval import learned


def main() -> None:
    path = learned.LABELED_DIR / "heldout_v11.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    prompts, responses, gold = [r["prompt"] for r in rows], [r["response"] for r in rows], [r["label"] for r in rows]
    scorer = learned.LearnedScorer()
    assert scorer.cross is not None and scorer.lm is not None
    head, _ = scorer.head_proba(prompts, responses)
    cross = scorer.cross.proba(prompts, responses)
    reader = scorer.lm.proba(prompts, responses)
    pair = (head + cross) / 2
    asked = pair.max(axis=1) < learned.V11_ROUTE_BELOW

    def decide(p: Any, decline_rule: bool = False, overrule: bool = False) -> list[str]:
        verdict = functools.partial(learned.LearnedScorer._verdict, decline_rule=decline_rule, overrule=overrule)
        return [verdict(r, q, pr).label for r, q, pr in zip(responses, p, prompts, strict=True)]

    def show(name: str, pred: list[str]) -> None:
        m = learned.metrics(gold, pred)
        print(f"{name:50s} {m['macro_f1']:.3f} {m['labels']['refuse']['recall']:.3f}")

    print("asked", int(asked.sum()), "of", len(rows))
    cascade = np.where(asked[:, None], (head + cross + reader) / 3, pair)
    show("shipped (cascade 0.70, no rules)", decide(cascade))
    show("cascade + both rules (v10-round decision)", decide(cascade, True, True))
    show("cascade + decline rule", decide(cascade, True, False))
    show("pair, no rules", decide(pair))
    show("pair + both rules (v10-round scorer way)", decide(pair, True, True))
    show("cross-encoder alone", decide(cross))
    show("reader alone", decide(reader))
    show("mean(head, CE, reader) on all", decide((head + cross + reader) / 3))
    show("mean(CE, reader) on all", decide((cross + reader) / 2))


if __name__ == "__main__":
    main()
