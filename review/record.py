"""What one Argilla record shows an expert: the chat, the context panel, filters and the pre-filled turn texts.

The context panel carries what a judgement needs and the chat does not: the sample id (to cite it), the person
(description and attributes), each fact with its source link, safety notes and the turns that use it, and what
the automatic checks found (or that none ran). Risk flags (injury, pregnancy, medication, symptoms, older adult)
and whether the assistant refers the user to a professional become metadata to filter on.

Suggestions pre-fill each turn's text (so a correction starts from the current answer) and the safety label only
when a check measured it; no verdict and no category are suggested, so nothing is pre-selected.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from common.textdir import rtl_html, text_dir
from review.dataset import DatasetVersion
from review.settings import CHAT_FIELD, CONTEXT_FIELD, SAFETY_LABELS, VECTOR_NAME, turn_question
from schemas.conversation import Role
from schemas.knowledge import Fact, numbers_in
from schemas.sample import Sample

_RISK_WORDS = {
    "injury": r"injur|sprain|strain|tendon|surgery|operation|rehab|herniat|disc\b|torn|tear\b",
    "pregnancy": r"pregnan|postpartum|trimester|breastfeed|gave birth",
    "medication": r"medicat|pills?\b|prescri|insulin|statin|blood thinner|beta.?blocker|steroid",
    "symptoms": r"chest pain|dizz|faint|short(ness)? of breath|numb|tingl|palpitat|swell|sharp pain|worse pain",
}
_REFERRAL = re.compile(r"doctor|physio|physician|dietitian|\bGP\b|midwife|medical (team|professional|advice)|"
                       r"health ?care|cardiolog|obstetric|see a professional|specialist", re.IGNORECASE)


def content_hash(sample: Sample) -> str:
    """What the record shows: changes when the conversation, category, persona or lineage facts change."""
    payload = json.dumps(sample.model_dump(mode="json", exclude={"lineage": {"review"}}), sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def assistant_turns(sample: Sample) -> list[str]:
    return [t.content for t in sample.conversation.turns if t.role == Role.ASSISTANT]


def chat_messages(sample: Sample) -> list[dict[str, str]]:
    """The conversation without its system prompt: the prompt is the same for every record and is shown once, in
    the guidelines (atop every record it made keyword search match everything).

    Argilla 2.8 shows a plain (non-markdown) chat message as HTML in a left-to-right bubble and, unlike its text
    fields and text questions, does not detect right-to-left text there; so a message of a right-to-left sample
    (Arabic) goes as escaped text in ``<div lang="ar" dir="rtl">`` and reads right to left. English messages go
    as they are."""
    rtl = text_dir(sample.language) == "rtl"
    return [{"role": t.role.value, "content": rtl_html(t.content, sample.language) if rtl else t.content}
            for t in sample.conversation.turns]


def risk_flags(sample: Sample, version: DatasetVersion) -> list[str]:
    """Why this conversation deserves care: from the persona's profile and from what the user says."""
    flags: set[str] = set()
    persona = version.personas.get(sample.persona)
    if persona is not None:
        profile = persona.profile
        flags.update(name for name, on in (("pregnancy", profile.pregnant), ("injury", profile.injury),
                                           ("medication", profile.medication),
                                           ("older_adult", (profile.age_band or "").startswith(("6", "7"))))
                     if on)
    said = " ".join(t.content for t in sample.conversation.turns if t.role == Role.USER)
    flags.update(name for name, pattern in _RISK_WORDS.items() if re.search(pattern, said, re.IGNORECASE))
    if sample.behaviour in {"escalate", "decline"}:
        flags.add(f"behaviour_{sample.behaviour}")
    return sorted(flags) or ["none"]


def refers(sample: Sample) -> bool:
    """Whether any assistant turn sends the user to a professional."""
    return any(_REFERRAL.search(text) for text in assistant_turns(sample))


def fact_turns(sample: Sample, fact: Fact) -> list[int]:
    """Assistant turns (from 1) that use ``fact``: the grounding check's record when there is one, else the turns
    that state one of the fact's numbers or most of the words of its answer."""
    grounding = sample.lineage.checks.get("grounding")
    if isinstance(grounding, list):
        found = sorted({int(g["turn"]) for g in grounding if isinstance(g, dict) and g.get("fact") == fact.id})
        if found:
            return found
    numbers = {n for n in fact.numbers() if n not in {0.0, 1.0}}
    words = set(re.findall(r"[a-z]{5,}", fact.answer.lower()))
    out = []
    for i, text in enumerate(assistant_turns(sample), start=1):
        shared = words & set(re.findall(r"[a-z]{5,}", text.lower()))
        if numbers & numbers_in(text) or (words and len(shared) >= 0.4 * len(words)):
            out.append(i)
    return out


def _source(fact: Fact) -> str:
    s = fact.source
    label = f"{s.org} {s.year}: {s.title}"
    return f"[{label}]({s.url})" if s.url else f"{label} (no link in the knowledge base)"


def _person(sample: Sample, version: DatasetVersion) -> list[str]:
    persona = version.personas.get(sample.persona)
    if persona is None:
        return [f"**Person:** `{sample.persona}` (the recipe is not on disk: no description)"]
    profile = persona.profile.model_dump(exclude_defaults=True)
    attributes = "; ".join(f"{k.replace('_', ' ')}: {', '.join(map(str, v)) if isinstance(v, list) else v}"
                           for k, v in profile.items()) or "none recorded"
    return [f"**Person:** {persona.description} (`{persona.id}`)  ", f"**Attributes:** {attributes}"]


def _facts(sample: Sample, version: DatasetVersion) -> list[str]:
    if not sample.lineage.fact_ids:
        return ["**Facts:** none (this conversation rests on no knowledge-base fact)"]
    lines = ["**Facts:**"]
    for fact_id in sample.lineage.fact_ids:
        fact = version.facts.get(fact_id)
        if fact is None:
            lines.append(f"- `{fact_id}` (not in the recipe on disk)")
            continue
        turns = fact_turns(sample, fact)
        used = f"used in turn {', '.join(map(str, turns))}" if turns else "no turn states it directly"
        lines.append(f"- `{fact_id}` ({used}): {fact.claim} Source: {_source(fact)}.")
        lines.extend(f"  - Safety note: {note}" for note in fact.safety_notes)
    return lines


def _checks(sample: Sample) -> list[str]:
    checks = sample.lineage.checks
    lines = ["**Automatic checks:**"]
    for entry in checks.get("grounding") or []:
        if isinstance(entry, dict):
            verdict = "passed" if entry.get("passed") else f"failed ({entry.get('reason')}: {entry.get('detail', '')})"
            lines.append(f"- grounding, turn {entry.get('turn')} against `{entry.get('fact')}`: {verdict}")
    judge = checks.get("judge")
    if isinstance(judge, dict):
        scores = ", ".join(f"{k} {v}" for k, v in sorted(judge.items()) if isinstance(v, int | float)
                           and not isinstance(v, bool))
        reason = f"; {judge['reason']}: {judge.get('detail', '')}" if judge.get("reason") else ""
        lines.append(f"- LLM judge: {'passed' if judge.get('passed') else 'failed'} ({scores}){reason}")
    for key in ("safety", "judge_score", "attempt"):
        if key in checks:
            lines.append(f"- {key.replace('_', ' ')}: {checks[key]}")
    if len(lines) == 1:
        lines.append(f"- none ran on this sample (generator `{sample.lineage.generator}`): judge it yourself; every "
                     "pushed sample passed the build's filters (format, length, language, duplicates)")
    return lines


def context(sample: Sample, version: DatasetVersion) -> str:
    head = [f"**Sample:** `{sample.id}` · **category** {sample.category.value} · **behaviour** {sample.behaviour}"
            f" · **split** {sample.split}  ", f"**Generator:** {sample.lineage.generator}"
            + (f" ({sample.lineage.model})" if sample.lineage.model else "")
            + f" · recipe {sample.lineage.recipe}"]
    if sample.lineage.behaviour_id:
        head[-1] += f" · behaviour item `{sample.lineage.behaviour_id}`"
    flags = ", ".join(risk_flags(sample, version))
    head.append(f"  \n**Risk flags:** {flags} · **referral in the answer:** {'yes' if refers(sample) else 'no'}")
    return "\n".join([*head, "", *_person(sample, version), "", *_facts(sample, version), "", *_checks(sample)])


def suggestions(sample: Sample, question_ids: dict[str, str]) -> list[dict[str, Any]]:
    """Each turn's current text (the starting point of a correction) and a measured safety label; nothing else."""
    out = [{"question_id": question_ids[turn_question("text", i)], "value": text, "agent": "current-text",
            "type": "human"} for i, text in enumerate(assistant_turns(sample), start=1)]
    safety = sample.lineage.checks.get("safety")
    if isinstance(safety, str) and safety in SAFETY_LABELS:
        out.append({"question_id": question_ids["safety"], "value": safety, "agent": "safety-check",
                    "type": "model"})
    return out


def metadata(sample: Sample, version: DatasetVersion) -> dict[str, Any]:
    sources = sorted({f"{f.source.org} {f.source.year}" for fid in sample.lineage.fact_ids
                      if (f := version.facts.get(fid)) is not None})
    out: dict[str, Any] = {
        "sample_id": sample.id, "category": sample.category.value, "language": sample.language,
        "behaviour": sample.behaviour,
        "risk": risk_flags(sample, version), "referral": "yes" if refers(sample) else "no",
        "persona": sample.persona, "turns": sample.conversation.user_turns, "recipe": sample.lineage.recipe,
        "generator": sample.lineage.generator, "split": sample.split, "content_hash": content_hash(sample),
    }
    if sample.lineage.fact_ids:
        out["fact_ids"] = list(sample.lineage.fact_ids)
    if sources:
        out["sources"] = sources
    return out


def record_item(sample: Sample, version: DatasetVersion, question_ids: dict[str, str],
                vector: list[float] | None) -> dict[str, Any]:
    """The bulk-upsert body of one record."""
    item: dict[str, Any] = {
        "external_id": sample.id,
        "fields": {CHAT_FIELD: chat_messages(sample), CONTEXT_FIELD: context(sample, version)},
        "metadata": metadata(sample, version),
        "suggestions": suggestions(sample, question_ids),
    }
    if vector is not None:
        item["vectors"] = {VECTOR_NAME: vector}
    return item
