"""Quality figures of a built dataset, and the recipe's thresholds on them.

A build that runs is not a dataset that teaches. These figures say whether it does: how varied the assistant's
words are (a model memorises a string it sees twenty times), how much of the knowledge base is used, whether the
behaviour mix hit its target, whether multi-turn chats stay on one subject, and whether every red flag, harmful
request and benign phrasing of the knowledge reached the data. The card and the report show them; a recipe's
``quality:`` block turns them into gates (``forma build`` exits 1 naming the figure that missed).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from factory.generators.template import strip_frame
from factory.recipe_loader import LoadedRecipe
from schemas.recipe import QualityThresholds
from schemas.sample import Sample

_WORDS = re.compile(r"[a-z0-9']+")


@dataclass(frozen=True)
class QualityMiss:
    figure: str
    value: float
    threshold: float

    def render(self) -> str:
        return f"quality figure {self.figure} is {self.value:g}, threshold {self.threshold:g}"


def _normalised(text: str) -> str:
    return " ".join(strip_frame(text).lower().split())


def _topic_switches(samples: Sequence[Sample], loaded: LoadedRecipe) -> tuple[int, int]:
    """(multi-turn chats that jump to an unrelated topic, multi-turn chats that use two or more facts or turns)."""
    facts = {f.id: f for f in loaded.facts}
    switched = multi = 0
    for s in samples:
        if s.conversation.user_turns < 2:
            continue
        multi += 1
        used = [facts[i] for i in s.lineage.fact_ids if i in facts]
        if any(b.topic != a.topic and b.id not in a.related and a.id not in b.related
               for a, b in pairwise(used)):
            switched += 1
    return switched, multi


def figures(samples: Sequence[Sample], loaded: LoadedRecipe, behaviour_quotas: dict[str, int],
            languages: dict[str, Any] | None = None) -> dict[str, Any]:
    """Every quality figure of ``samples``, deterministic for the same samples (they go into the manifest).

    ``languages`` (a build's per-language figures; empty for an all-English recipe) adds a ``by_language`` block:
    the exact cells and each language's own repeats and fact coverage, since a small Arabic slice can hide behind
    a large English one in the overall figures."""
    out = _figures(samples, loaded, behaviour_quotas)
    if languages:
        out["by_language"] = {lang: _language_figures([s for s in samples if s.language == lang], loaded, lang)
                              for lang in languages["shares"]}
        out["language_mix"] = languages["cells"]
    return out


def _language_figures(samples: Sequence[Sample], loaded: LoadedRecipe, language: str) -> dict[str, Any]:
    turns = Counter(_normalised(t.content) for s in samples for t in s.conversation.turns
                    if t.role.value == "assistant")
    speaking = {f.id for f in loaded.training_facts if f.text_in(language) is not None}
    used = {i for s in samples for i in s.lineage.fact_ids} & speaking
    return {"conversations": len(samples), "assistant_turns": sum(turns.values()),
            "most_repeated_assistant_turn": max(turns.values(), default=0),
            "facts_used": len(used), "facts_available": len(speaking),
            "fact_coverage": round(len(used) / len(speaking), 4) if speaking else 1.0}


def translation_figures(loaded: LoadedRecipe, languages: Sequence[str]) -> dict[str, Any]:
    """Per language: how much of the knowledge has text in it, and how much of that an expert approved."""
    items: list[Any] = [*loaded.behaviours.red_flags, *loaded.behaviours.harmful_requests, *loaded.behaviours.benign]
    out: dict[str, Any] = {}
    for lang in languages:
        facts = [f.translations[lang] for f in loaded.facts if lang in f.translations]
        texts = [i.translations[lang] for i in items if lang in i.translations]
        out[lang] = {"facts": len(facts), "facts_total": len(loaded.facts),
                     "facts_approved": sum(t.review_state == "approved" for t in facts),
                     "behaviour_items": len(texts), "behaviour_items_total": len(items),
                     "behaviour_items_approved": sum(t.review_state == "approved" for t in texts)}
    return out


def _figures(samples: Sequence[Sample], loaded: LoadedRecipe, behaviour_quotas: dict[str, int]) -> dict[str, Any]:
    turns = [_normalised(t.content) for s in samples for t in s.conversation.turns if t.role.value == "assistant"]
    counts = Counter(turns)
    top, top_n = counts.most_common(1)[0] if counts else ("", 0)
    bigrams = [pair for t in turns for pair in zip(_WORDS.findall(t), _WORDS.findall(t)[1:], strict=False)]
    training = {f.id for f in loaded.training_facts}
    used_facts = {i for s in samples for i in s.lineage.fact_ids} & training
    items = set(loaded.behaviours.ids()) if loaded.recipe.behaviour_knowledge else set()
    needed = {i for i in items if _item_wanted(i, loaded)}
    used_items = {s.lineage.behaviour_id for s in samples if s.lineage.behaviour_id}
    switched, multi = _topic_switches(samples, loaded)
    actual = Counter(f"{s.category.value}/{s.behaviour}" for s in samples)
    return {
        "assistant_turns": len(turns),
        "distinct_assistant_turns": len(counts),
        "most_repeated_assistant_turn": {"count": top_n, "text": top[:200]},
        "facts_used": len(used_facts), "facts_available": len(training),
        "fact_coverage": round(len(used_facts) / len(training), 4) if training else 1.0,
        "behaviour_items_used": len(needed & used_items), "behaviour_items_available": len(needed),
        "behaviour_items_missing": sorted(needed - used_items),
        "behaviour_mix": {cell: {"target": n, "actual": actual.get(cell, 0)} for cell, n in behaviour_quotas.items()},
        "multi_turn_chats": multi, "topic_switch_chats": switched,
        "topic_switch_share": round(switched / multi, 4) if multi else 0.0,
        "distinct_bigram_share": round(len(set(bigrams)) / len(bigrams), 4) if bigrams else 1.0,
    }


def _item_wanted(item_id: str, loaded: LoadedRecipe) -> bool:
    """An item counts only when its behaviour has a share (a recipe with no declines needs no harmful requests)."""
    kind = {"rf": "escalate", "hr": "decline", "bn": "reassure"}.get(item_id.split("-", 1)[0], "")
    return loaded.recipe.behaviours.get(kind, 0) > 0  # type: ignore[call-overload]


def misses(found: dict[str, Any], thresholds: QualityThresholds | None) -> list[QualityMiss]:
    """The figures that miss the recipe's thresholds (none when the recipe sets no ``quality:`` block)."""
    if thresholds is None:
        return []
    out: list[QualityMiss] = []
    t = thresholds
    repeats = found["most_repeated_assistant_turn"]["count"]
    if t.max_assistant_turn_repeats is not None and repeats > t.max_assistant_turn_repeats:
        out.append(QualityMiss("most_repeated_assistant_turn", repeats, t.max_assistant_turn_repeats))
    if t.min_fact_coverage is not None and found["fact_coverage"] < t.min_fact_coverage:
        out.append(QualityMiss("fact_coverage", found["fact_coverage"], t.min_fact_coverage))
    if t.max_topic_switch_share is not None and found["topic_switch_share"] > t.max_topic_switch_share:
        out.append(QualityMiss("topic_switch_share", found["topic_switch_share"], t.max_topic_switch_share))
    if t.min_distinct_bigram_share is not None and found["distinct_bigram_share"] < t.min_distinct_bigram_share:
        out.append(QualityMiss("distinct_bigram_share", found["distinct_bigram_share"], t.min_distinct_bigram_share))
    if t.require_every_behaviour_item and found["behaviour_items_missing"]:
        out.append(QualityMiss("behaviour_items_used", found["behaviour_items_used"],
                               found["behaviour_items_available"]))
    for cell, mix in found["behaviour_mix"].items():
        if mix["actual"] != mix["target"]:
            out.append(QualityMiss(f"behaviour_mix[{cell}]", mix["actual"], mix["target"]))
    for cell, mix in found.get("language_mix", {}).items():
        if mix["actual"] != mix["target"]:
            out.append(QualityMiss(f"language_mix[{cell}]", mix["actual"], mix["target"]))
    return out + _language_misses(found.get("by_language", {}), t)


def _language_misses(by_language: dict[str, Any], t: QualityThresholds) -> list[QualityMiss]:
    """Each language's own repeats and fact coverage against the same thresholds."""
    out: list[QualityMiss] = []
    for lang, f in by_language.items():
        repeats = f["most_repeated_assistant_turn"]
        if t.max_assistant_turn_repeats is not None and repeats > t.max_assistant_turn_repeats:
            out.append(QualityMiss(f"by_language[{lang}].most_repeated_assistant_turn", repeats,
                                   t.max_assistant_turn_repeats))
        if t.min_fact_coverage is not None and f["fact_coverage"] < t.min_fact_coverage:
            out.append(QualityMiss(f"by_language[{lang}].fact_coverage", f["fact_coverage"], t.min_fact_coverage))
    return out
