"""Question-answer fit: flag facts whose answer does not answer one of their questions, for expert review.

A fact's answer is served for every question it lists, so a question that asks something the answer does not cover
teaches the model to answer the wrong thing ("When is it not safe to exercise in pregnancy?" answered with advice on
placenta previa alone). The check is retrieval-shaped: embed every question and every answer of the category; a
question whose own answer is not among the ``top_k`` answers most similar to it is flagged, with the answer it
matched best. Cheap (the static encoder embeds the whole knowledge base in about a second) and explainable; the
experts make the call in review.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from schemas.knowledge import Fact


@dataclass(frozen=True)
class Mismatch:
    fact_id: str
    question: str
    own_similarity: float
    best_fact_id: str
    best_similarity: float
    rank: int

    def render(self) -> str:
        return (f"{self.fact_id}: {self.question!r} fits its answer at {self.own_similarity:.2f} (rank {self.rank}); "
                f"{self.best_fact_id}'s answer fits it better ({self.best_similarity:.2f})")


def question_answer_mismatches(facts: Sequence[Fact], encoder: object, *, top_k: int = 3) -> list[Mismatch]:
    """Questions whose own answer ranks below ``top_k`` among the answers of the same category."""
    encode = getattr(encoder, "encode")  # noqa: B009 - any factory.embed encoder
    out: list[Mismatch] = []
    by_category: dict[str, list[Fact]] = {}
    for fact in facts:
        by_category.setdefault(fact.category.value, []).append(fact)
    for group in by_category.values():
        answers = _unit(np.asarray(encode([f.answer for f in group]), dtype=np.float32))
        questions = [(i, q) for i, f in enumerate(group) for q in f.questions]
        q_vecs = _unit(np.asarray(encode([q for _, q in questions]), dtype=np.float32))
        sims = q_vecs @ answers.T
        for row, (own, question) in enumerate(questions):
            order = np.argsort(-sims[row], kind="stable")
            rank = int(np.where(order == own)[0][0]) + 1
            if rank > top_k:
                best = int(order[0])
                out.append(Mismatch(group[own].id, question, float(sims[row, own]), group[best].id,
                                    float(sims[row, best]), rank))
    return out


def _unit(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms == 0, 1, norms)
