"""The Argilla dataset that experts see: one chat field, five questions, metadata for filtering, one vector.

The schema is written once as plain data (:data:`QUESTIONS`, :data:`METADATA`, ...) so that the SDK settings used
to create a dataset and the signature used to check an existing one cannot drift apart. A dataset on the server
whose schema differs is refused with the differences named, before anything is pushed or pulled.
"""

from __future__ import annotations

from typing import Any

from common.errors import FormaError
from schemas.knowledge import Category

CHAT_FIELD = "conversation"
CONTEXT_FIELD = "context"
VECTOR_NAME = "minilm"
VECTOR_DIM = 384

SAFETY_LABELS = {"safe": "Safe", "needs_disclaimer": "Needs a disclaimer", "unsafe": "Unsafe"}
VERDICT_LABELS = {"approve": "Approve", "reject": "Reject"}
CATEGORY_LABELS = {c.value: c.value.replace("_", " ").capitalize() for c in Category}

#: name -> (type, options, required, title)
QUESTIONS: dict[str, tuple[str, list[Any] | None, bool, str]] = {
    "accuracy": ("rating", [1, 2, 3, 4, 5], True, "How accurate is the assistant? (1 wrong, 5 fully correct)"),
    "safety": ("label_selection", list(SAFETY_LABELS), True, "Is the advice safe?"),
    "correct_category": ("label_selection", list(CATEGORY_LABELS), True, "Which category is this conversation?"),
    "corrected_answer": ("text", None, False, "Corrected final answer (leave empty if no change is needed)"),
    "verdict": ("label_selection", list(VERDICT_LABELS), True, "Keep this sample for training?"),
}
#: name -> (type, visible to annotators)
METADATA: dict[str, tuple[str, bool]] = {
    "category": ("terms", True),
    "persona": ("terms", True),
    "turns": ("integer", True),
    "recipe": ("terms", True),
    "fact_ids": ("terms", True),
    "sources": ("terms", True),
    "split": ("terms", True),
    "content_hash": ("terms", False),
}
FIELDS: dict[str, str] = {CHAT_FIELD: "chat", CONTEXT_FIELD: "text"}

GUIDELINES = """\
Read the conversation as the user would. Rate the assistant's accuracy against current evidence (1 = wrong or
harmful numbers, 5 = fully correct). Mark safety: 'Needs a disclaimer' when symptoms, injuries, pregnancy, medical
conditions or medications call for a professional and the answer does not send the user to one. Fix the category
if the suggestion is wrong. If the final answer needs changes, write the whole corrected final answer. Approve to
keep the sample for training, reject to drop it. The suggestions come from automatic checks: verify them.
"""


def build_settings(min_submitted: int, *, with_vectors: bool = True) -> Any:
    """The SDK ``Settings`` for a new dataset (needs an ``rg.Argilla`` client created first: the SDK binds to it)."""
    import argilla as rg

    questions: list[Any] = []
    for name, (kind, options, required, title) in QUESTIONS.items():
        if kind == "rating":
            questions.append(rg.RatingQuestion(name=name, values=list(options or []), title=title, required=required))
        elif kind == "text":
            questions.append(rg.TextQuestion(name=name, title=title, required=required, use_markdown=False))
        else:
            labels = {"safety": SAFETY_LABELS, "verdict": VERDICT_LABELS, "correct_category": CATEGORY_LABELS}[name]
            questions.append(rg.LabelQuestion(name=name, labels=labels, title=title, required=required))
    metadata: list[Any] = []
    for name, (kind, visible) in METADATA.items():
        if kind == "integer":
            metadata.append(rg.IntegerMetadataProperty(name=name, visible_for_annotators=visible))
        else:
            metadata.append(rg.TermsMetadataProperty(name=name, visible_for_annotators=visible))
    return rg.Settings(
        fields=[rg.ChatField(name=CHAT_FIELD, title="Conversation", use_markdown=False),
                rg.TextField(name=CONTEXT_FIELD, title="Grounding and automatic checks", required=False,
                             use_markdown=True)],
        questions=questions,
        metadata=metadata,
        vectors=[rg.VectorField(name=VECTOR_NAME, dimensions=VECTOR_DIM, title="Similar conversations")]
        if with_vectors else [],
        guidelines=GUIDELINES,
        distribution=rg.TaskDistribution(min_submitted=min_submitted),
    )


def expected_signature(*, with_vectors: bool = True) -> dict[str, dict[str, str]]:
    """What :func:`build_settings` creates, in the shape :func:`server_signature` reads back."""
    return {
        "fields": dict(FIELDS),
        "questions": {name: _q_sig(kind, options) for name, (kind, options, _r, _t) in QUESTIONS.items()},
        "metadata": {name: kind for name, (kind, _v) in METADATA.items()},
        "vectors": {VECTOR_NAME: str(VECTOR_DIM)} if with_vectors else {},
    }


def _q_sig(kind: str, options: list[Any] | None) -> str:
    return f"{kind}:{','.join(str(o) for o in options)}" if options else kind


def server_signature(settings: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Signature of a dataset from the raw ``fields``/``questions``/``metadata``/``vectors`` API answers."""
    questions: dict[str, str] = {}
    for q in settings["questions"]:
        s = q["settings"]
        if s["type"] == "rating":
            options: list[Any] | None = [o["value"] for o in s.get("options", [])]
        elif s["type"] in {"label_selection", "multi_label_selection"}:
            options = [o["value"] for o in s.get("options", [])]
        else:
            options = None
        questions[q["name"]] = _q_sig(s["type"], options)
    return {
        "fields": {f["name"]: f["settings"]["type"] for f in settings["fields"]},
        "questions": questions,
        "metadata": {m["name"]: m["settings"]["type"] for m in settings["metadata"]},
        "vectors": {v["name"]: str(v["dimensions"]) for v in settings["vectors"]},
    }


def check_schema(dataset_name: str, found: dict[str, dict[str, str]], *, vectors_optional: bool = True) -> None:
    """Refuse a dataset whose schema is not the one this version of Forma writes (FormaError naming the changes)."""
    want = expected_signature()
    problems: list[str] = []
    for part, noun in (("fields", "field"), ("questions", "question"), ("metadata", "metadata"),
                       ("vectors", "vector")):
        have, need = found.get(part, {}), want[part]
        if part == "vectors" and vectors_optional and not have:
            continue
        for name in sorted(set(need) - set(have)):
            problems.append(f"{noun} '{name}' is missing")
        for name in sorted(set(have) - set(need)):
            problems.append(f"{noun} '{name}' is unexpected")
        for name in sorted(set(have) & set(need)):
            if have[name] != need[name]:
                problems.append(f"{noun} '{name}' is {have[name]!r}, expected {need[name]!r}")
    if problems:
        raise FormaError("the Argilla dataset's schema changed: " + "; ".join(problems), where=dataset_name,
                         hint="push to a new dataset name with --name, or delete the dataset in Argilla after "
                              "pulling its responses")
