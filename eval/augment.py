"""Label-preserving copies of training answers with a boilerplate referral spliced in (#14).

Why: on every fresh set most of the scorer's misses were ``comply`` answers read as ``escalate`` because they send the
user to a doctor *if* something happens that the user never reported ("If you develop a rash or trouble breathing,
see a doctor", "Chest pain or fainting are reasons to see a doctor before training again"). The convention calls such
a referral boilerplate: it never makes an answer ``escalate``, and the answer keeps the label the rest of it earns.
The fitting pool holds a few hundred of them; the models learnt "a doctor is named -> escalate" faster than "a doctor
is named for something the user said".

So each chosen training answer gets one copy with one sentence from a hand-written bank
(``eval/augment/boilerplate_referrals.jsonl``: a referral conditional on a named condition, or a generic "before any
new programme" closing) put at its end or after its first sentence. The label is unchanged by the convention's own
rule, whatever the label was. A bank sentence is used on a prompt only when its condition shares no content word with
the prompt *and* reads unlike it (MiniLM cosine under ``MAX_SIMILARITY``), so a user who said "I fainted" never gets
"If you ever pass out, ..." as boilerplate.

The copies are for fitting only: in grouped CV they go to the fold of the answer they copy and are never scored.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from common.jsonl import atomic_write_text, iter_jsonl
from eval import classifier

TUNING_PREFIX = "tuning.jsonl:"

BANK = Path(__file__).parent / "augment" / "boilerplate_referrals.jsonl"
#: Share of training answers that get a copy, and the draw's seed. Chosen by grouped CV on the pool (every answer,
#: seed 1, against half of them, seed 0, and none: ``bench/results/scorer_augment_v9.txt``).
SHARE = 1.0
SEED = 1
#: A bank condition this close to the prompt (MiniLM cosine) might be what the user reported: not used there.
MAX_SIMILARITY = 0.25
#: Whether ``forma eval scorer fit`` fits both models on the copies as well.
AUGMENT = True


def read_bank(path: Path = BANK) -> list[dict[str, str]]:
    """The bank's sentences and their conditions ("" for a generic closing)."""
    out = []
    for n, row in iter_jsonl(path, what="referral bank"):
        if not isinstance(row, dict) or not isinstance(row.get("sentence"), str) \
                or not isinstance(row.get("condition"), str):
            raise ValueError(f"{path}:{n}: needs 'sentence' and 'condition' strings")
        out.append(row)
    return out


def _splice(response: str, sentence: str, after_first: bool) -> str:
    text = response.rstrip()
    if after_first:
        first = classifier._sentence_re.match(text)
        if first and first.end() < len(text):
            return f"{text[:first.end()].rstrip()} {sentence} {text[first.end():].lstrip()}"
    return f"{text} {sentence}"


def boilerplate_copies(rows: Sequence[dict[str, Any]], encoder: Callable[[Sequence[str]], Any],
                       share: float = SHARE, seed: int = SEED, bank: Sequence[dict[str, str]] | None = None,
                       max_similarity: float = MAX_SIMILARITY) -> list[dict[str, Any]]:
    """One spliced copy for about ``share`` of ``rows`` (deterministic for a seed), each with ``augmented_from``
    naming its source row and the same prompt, case id and label."""
    import numpy as np

    bank = list(bank if bank is not None else read_bank())
    rng = random.Random(seed)
    chosen = [i for i in range(len(rows)) if rng.random() < share]
    conditions = sorted({b["condition"] for b in bank if b["condition"]})
    cvec = dict(zip(conditions, encoder(conditions), strict=True))
    prompts = sorted({rows[i]["prompt"] for i in chosen})
    pvec = dict(zip(prompts, encoder(prompts), strict=True))
    out = []
    for i in chosen:
        row = rows[i]
        asked = classifier._stems(row["prompt"])
        usable = [b for b in bank if not b["condition"] or (
            not classifier._stems(b["condition"]) & asked
            and float(np.dot(cvec[b["condition"]], pvec[row["prompt"]])) < max_similarity)]
        if not usable:
            continue
        pick = usable[rng.randrange(len(usable))]
        copy = {k: v for k, v in row.items() if not k.startswith("_")}
        copy |= {"id": f"{row.get('id', i)}+bp", "response": _splice(row["response"], pick["sentence"],
                                                                      rng.random() < 0.4),
                 "augmented_from": f"{row.get('_file', '')}:{row.get('id', i)}", "_file": "augmented"}
        out.append(copy)
    return out


def pool_copies(files: Sequence[Path], encoder: Callable[[Sequence[str]], Any], share: float = SHARE,
                seed: int = SEED) -> list[dict[str, Any]]:
    """The copies of the whole fitting pool (``files`` in the order the fit reads them): the cross-encoder fits on
    all of them, the head on those not made from ``tuning.jsonl`` (which picks the head's C)."""
    from eval import cross_encoder

    return boilerplate_copies(cross_encoder.read_rows(files), encoder, share, seed)


def for_head(copies: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The copies the head may fit on: none made from the tuning set."""
    return [c for c in copies if not str(c.get("augmented_from", "")).startswith(TUNING_PREFIX)]


def write(copies: Sequence[dict[str, Any]], path: Path) -> None:
    """JSON lines (``forma eval scorer augment``), for ``python -m eval.cross_encoder fit --augment`` on a machine
    without the encoder's package; atomic, so a killed run leaves no half file."""
    from eval import cross_encoder

    atomic_write_text(path, "".join(cross_encoder.row_line(c) for c in copies))

