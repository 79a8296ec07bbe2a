"""Inter-annotator agreement per question: Krippendorff's alpha over all annotators, Cohen's kappa per pair.

Alpha (the ``krippendorff`` package) handles any number of annotators and records that not everyone reviewed;
Cohen's kappa (scikit-learn) is reported per annotator pair and averaged, the figure most reviewers know. The
accuracy rating is ordinal (alpha ordinal, kappa with quadratic weights); the labels are nominal; the corrected
answer is scored as "corrected or not".
"""

from __future__ import annotations

import itertools
import math
import warnings
from typing import Any, Literal

from pydantic import BaseModel

from review.journal import JournalEntry
from review.settings import CATEGORY_LABELS, SAFETY_LABELS, VERDICT_LABELS

#: question -> (level of measurement, ordered codes for the question's values)
SCALES: dict[str, tuple[Literal["nominal", "ordinal"], list[Any]]] = {
    "accuracy": ("ordinal", [1, 2, 3, 4, 5]),
    "safety": ("nominal", list(SAFETY_LABELS)),
    "correct_category": ("nominal", list(CATEGORY_LABELS)),
    "verdict": ("nominal", list(VERDICT_LABELS)),
    "corrected_answer": ("nominal", [False, True]),
}


class QuestionAgreement(BaseModel):
    question: str
    level: str
    records: int  # records with at least two submitted answers to this question
    annotators: int
    percent_agreement: float | None
    krippendorff_alpha: float | None
    cohen_kappa_mean: float | None
    cohen_kappa_pairs: dict[str, float | None]


def _code(question: str, value: Any) -> Any:
    if question == "corrected_answer":
        return bool(value and str(value).strip())
    return value


def _finite(x: float) -> float | None:
    return None if x is None or math.isnan(x) else round(float(x), 4)


def agreement(responses: dict[str, dict[str, JournalEntry]]) -> dict[str, QuestionAgreement]:
    """Agreement per question over the submitted responses (``latest_responses`` output)."""
    import krippendorff
    import numpy as np
    from sklearn.metrics import cohen_kappa_score

    users = sorted({e.user for per in responses.values() for e in per.values() if e.status == "submitted"})
    units = sorted(responses)
    out: dict[str, QuestionAgreement] = {}
    for question, (level, codes) in SCALES.items():
        index = {c: i for i, c in enumerate(codes)}
        table: dict[str, dict[str, Any]] = {u: {} for u in users}  # user -> sample -> coded value
        for sample_id in units:
            for entry in responses[sample_id].values():
                if entry.status != "submitted":
                    continue
                if question != "corrected_answer" and entry.values.get(question) is None:
                    continue
                value = _code(question, entry.values.get(question))
                if value in index:
                    table[entry.user][sample_id] = value
        shared = [s for s in units if sum(s in table[u] for u in users) >= 2]
        observed = [len({table[u][s] for u in users if s in table[u]}) == 1 for s in shared]
        alpha: float | None = None
        if shared:
            data = np.array([[index[table[u][s]] if s in table[u] else np.nan for s in shared] for u in users],
                            dtype=float)
            distinct = {v for v in data.flatten().tolist() if not math.isnan(v)}
            if len(distinct) > 1:  # alpha is undefined when only one value was ever given
                alpha = _finite(krippendorff.alpha(reliability_data=data, level_of_measurement=level,
                                                   value_domain=list(range(len(codes)))))
        pairs: dict[str, float | None] = {}
        for a, b in itertools.combinations(users, 2):
            common = [s for s in shared if s in table[a] and s in table[b]]
            if len(common) < 2:
                continue
            ya = [index[table[a][s]] for s in common]
            yb = [index[table[b][s]] for s in common]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # undefined kappa (one label only) is reported as None
                kappa = cohen_kappa_score(ya, yb, labels=list(range(len(codes))),
                                          weights="quadratic" if level == "ordinal" else None)
            pairs[f"{a}|{b}"] = _finite(kappa)
        defined = [k for k in pairs.values() if k is not None]
        out[question] = QuestionAgreement(
            question=question, level=level, records=len(shared), annotators=len(users),
            percent_agreement=round(sum(observed) / len(observed), 4) if observed else None,
            krippendorff_alpha=alpha,
            cohen_kappa_mean=round(sum(defined) / len(defined), 4) if defined else None,
            cohen_kappa_pairs=pairs)
    return out
