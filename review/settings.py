"""The Argilla dataset that experts see: the chat, a context panel, per-turn questions, filters, one vector.

Every assistant turn gets a rating and a text question pre-filled with the turn's current text (an expert corrects
in place); then safety, category, verdict, reject reasons (tags) and a comment. A dataset gets as many turn
questions as its longest conversation has assistant turns. The guidelines are review/guidelines.md plus the
dataset's system prompt, shown there once instead of atop every record.

The schema is written once as plain data (:func:`questions`, :data:`METADATA`, ...) so that the SDK settings used
to create a dataset and the signature used to check an existing one cannot drift apart. A dataset on the server
whose schema differs is refused with the differences named, before anything is pushed or pulled.
"""

from __future__ import annotations

from pathlib import Path
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
#: Why a turn or a sample is wrong: asked on every reject (tags plus the free-text ``comment``).
REASON_LABELS = {
    "wrong_number": "Wrong number or dose",
    "off_topic_sentence": "Off-topic or contradictory sentence",
    "missing_referral": "Missing referral to a professional",
    "not_adapted": "Not adapted to the person",
    "wrong_category": "Wrong category",
    "unsafe_advice": "Unsafe advice",
    "unnatural_user": "Unnatural user turn",
    "other": "Other (say what in the comment)",
}
#: Assistant turns a dataset can hold questions for; a dataset is created with as many as its longest sample needs.
MAX_TURNS = 8
GUIDELINES_FILE = Path(__file__).with_name("guidelines.md")

#: name -> (type, options, required, title); the per-turn questions come from :func:`questions`.
FIXED_QUESTIONS: dict[str, tuple[str, list[Any] | None, bool, str]] = {
    "safety": ("label_selection", list(SAFETY_LABELS), True, "Is the advice safe? (every turn)"),
    "correct_category": ("label_selection", list(CATEGORY_LABELS), True, "Which category is this conversation?"),
    "verdict": ("label_selection", list(VERDICT_LABELS), True, "Keep this sample for training?"),
    "reject_reasons": ("multi_label_selection", list(REASON_LABELS), False,
                       "Reasons (required on Reject; also for corrections): tick every one that applies"),
    "comment": ("text", None, False, "Comment: what is wrong and in which turn (required on Reject)"),
}


def turn_question(kind: str, turn: int) -> str:
    """``turn_2_accuracy`` / ``turn_2_text``: turns count assistant turns from 1."""
    return f"turn_{turn}_{kind}"


def questions(turns: int) -> dict[str, tuple[str, list[Any] | None, bool, str]]:
    """Every question of a dataset whose longest conversation has ``turns`` assistant turns, in display order."""
    out: dict[str, tuple[str, list[Any] | None, bool, str]] = {}
    for t in range(1, turns + 1):
        later = "" if t == 1 else " (skip if the conversation has fewer turns)"
        out[turn_question("accuracy", t)] = (
            "rating", [1, 2, 3, 4, 5], t == 1, f"Turn {t}: how accurate is the assistant's answer? (1 wrong, "
            f"5 fully correct){later}")
        out[turn_question("text", t)] = (
            "text", None, False, f"Turn {t}: the assistant's answer, pre-filled: edit it in place to correct it{later}")
    out.update(FIXED_QUESTIONS)
    return out


def turns_of(question_names: list[str] | set[str]) -> int:
    """How many assistant turns a dataset's questions cover (0 for a dataset of another shape)."""
    return sum(1 for t in range(1, MAX_TURNS + 1) if turn_question("text", t) in question_names)


#: name -> (type, visible to annotators)
METADATA: dict[str, tuple[str, bool]] = {
    "sample_id": ("terms", True),
    "category": ("terms", True),
    "language": ("terms", True),
    "behaviour": ("terms", True),
    "risk": ("terms", True),
    "referral": ("terms", True),
    "persona": ("terms", True),
    "turns": ("integer", True),
    "recipe": ("terms", True),
    "generator": ("terms", True),
    "fact_ids": ("terms", True),
    "sources": ("terms", True),
    "split": ("terms", True),
    "content_hash": ("terms", False),
}
#: Metadata added after datasets already existed: a dataset without it is still accepted (pull reads it as is) and
#: a push adds the property, then re-sends the records that lack the value.
ADDED_METADATA: dict[str, str] = {"language": "Language"}
FIELDS: dict[str, str] = {CHAT_FIELD: "chat", CONTEXT_FIELD: "text"}


def guidelines(system_prompt: str | None = None) -> str:
    """review/guidelines.md, with the dataset's system prompt (shown once here instead of atop every record)."""
    text = GUIDELINES_FILE.read_text(encoding="utf-8")
    if system_prompt:
        quoted = "\n".join(f"> {line}" if line else ">" for line in system_prompt.splitlines())
        text += f"\n## The system prompt of every conversation in this dataset\n\n{quoted}\n"
    return text


def build_settings(min_submitted: int, *, turns: int = 1, with_vectors: bool = True,
                   system_prompt: str | None = None) -> Any:
    """The SDK ``Settings`` for a new dataset (needs an ``rg.Argilla`` client created first: the SDK binds to it)."""
    import argilla as rg

    labels = {"safety": SAFETY_LABELS, "verdict": VERDICT_LABELS, "correct_category": CATEGORY_LABELS,
              "reject_reasons": REASON_LABELS}
    made: list[Any] = []
    for name, (kind, options, required, title) in questions(turns).items():
        if kind == "rating":
            made.append(rg.RatingQuestion(name=name, values=list(options or []), title=title, required=required))
        elif kind == "text":
            made.append(rg.TextQuestion(name=name, title=title, required=required, use_markdown=False))
        elif kind == "multi_label_selection":
            made.append(rg.MultiLabelQuestion(name=name, labels=labels[name], title=title, required=required,
                                              visible_labels=len(labels[name])))
        else:
            made.append(rg.LabelQuestion(name=name, labels=labels[name], title=title, required=required))
    metadata: list[Any] = []
    for name, (kind, visible) in METADATA.items():
        if kind == "integer":
            metadata.append(rg.IntegerMetadataProperty(name=name, visible_for_annotators=visible))
        else:
            metadata.append(rg.TermsMetadataProperty(name=name, title=ADDED_METADATA.get(name),
                                                     visible_for_annotators=visible))
    return rg.Settings(
        fields=[rg.ChatField(name=CHAT_FIELD, title="Conversation (the system prompt is in the guidelines)",
                             use_markdown=False),
                rg.TextField(name=CONTEXT_FIELD, title="Sample, person, facts and automatic checks", required=False,
                             use_markdown=True)],
        questions=made,
        metadata=metadata,
        vectors=[rg.VectorField(name=VECTOR_NAME, dimensions=VECTOR_DIM, title="Similar conversations")]
        if with_vectors else [],
        guidelines=guidelines(system_prompt),
        distribution=rg.TaskDistribution(min_submitted=min_submitted),
    )


def expected_signature(*, turns: int = 1, with_vectors: bool = True) -> dict[str, dict[str, str]]:
    """What :func:`build_settings` creates, in the shape :func:`server_signature` reads back."""
    return {
        "fields": dict(FIELDS),
        "questions": {name: _q_sig(kind, options) for name, (kind, options, _r, _t) in questions(turns).items()},
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
    want = expected_signature(turns=max(1, turns_of(set(found.get("questions", {})))))
    problems: list[str] = []
    for part, noun in (("fields", "field"), ("questions", "question"), ("metadata", "metadata"),
                       ("vectors", "vector")):
        have, need = found.get(part, {}), want[part]
        if part == "vectors" and vectors_optional and not have:
            continue
        for name in sorted(set(need) - set(have)):
            if part == "metadata" and name in ADDED_METADATA:
                continue  # an older dataset: push adds it (see ADDED_METADATA)
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
