"""``forma diff OLD_BUILD NEW_BUILD``: what differs between two dataset builds, for people and for JSON.

Samples are matched by id (the id is a hash of the conversation, so the same chat has the same id in both); the same
id under other labels (category, behaviour, persona, facts) is *changed*. A sample only in NEW is *changed* when OLD
has a sample of its own in the same plan slot (``lineage.slot``): the slot was filled differently. Otherwise it is
*added*; a sample only in OLD with no counterpart is *removed*. Each is broken down by category, behaviour
(``answer`` when a sample has none), persona and fact. Beside them: the filter funnel of both builds
(``manifest.json`` stages), the recipe fields that differ (the manifest names the recipe file and hash;
the file is read when it is still there and still hashes the same), and the lineage of each build.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.errors import FormaError
from common.jsonl import read_jsonl
from experiment.spec import rebase_recipe_paths

DIMENSIONS = ("category", "behaviour", "persona", "fact")
#: Rows a Markdown breakdown shows per dimension (the JSON has them all).
MAX_ROWS = 25


@dataclass(frozen=True)
class Build:
    folder: Path
    manifest: dict[str, Any]
    samples: list[dict[str, Any]]


def load_build(folder: str | Path) -> Build:
    """A `forma build` folder: its manifest and samples (one line naming the file when one is missing)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FormaError("build folder not found", path=folder)
    manifest_path = folder / "manifest.json"
    if not manifest_path.is_file():
        raise FormaError("not a `forma build` folder (no manifest.json)", path=folder)
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    return Build(folder=folder, manifest=manifest, samples=read_jsonl(folder / "samples.jsonl", what="samples file"))


def values_of(sample: dict[str, Any], dimension: str) -> list[str]:
    """The sample's value(s) along a dimension (a sample may rest on several facts)."""
    if dimension == "fact":
        return [str(f) for f in sample.get("lineage", {}).get("fact_ids", [])] or ["(none)"]
    if dimension == "behaviour":
        return [str(sample.get("behaviour") or "answer")]
    return [str(sample.get(dimension))]


def _labels(sample: dict[str, Any]) -> tuple[tuple[str, ...], ...]:
    return tuple(tuple(values_of(sample, d)) for d in DIMENSIONS)


def match_samples(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """``added``, ``changed`` and ``kept`` (new samples), ``removed`` and ``replaced`` (old samples; replaced = the old
    side of a change).

    Kept = the same id *and* the same category, behaviour, persona and facts: the id hashes the conversation's text,
    and a chat that never states its persona (a red-flag report, say) can be the same text under another persona. Such
    a pair is a change (its labels moved), so every breakdown adds up: new = old + added - removed + to - from.
    """
    old_by_id = {s["id"]: s for s in old}
    new_ids = {s["id"] for s in new}
    relabelled = [(old_by_id[s["id"]], s) for s in new if s["id"] in old_by_id
                  and _labels(old_by_id[s["id"]]) != _labels(s)]
    old_only = {s["lineage"]["slot"]: s for s in old if s["id"] not in new_ids}
    new_only = [s for s in new if s["id"] not in old_by_id]
    changed_slots = {s["lineage"]["slot"] for s in new_only} & set(old_only)
    moved = {s["id"] for _, s in relabelled}
    return {"added": [s for s in new_only if s["lineage"]["slot"] not in changed_slots],
            "removed": [s for slot, s in old_only.items() if slot not in changed_slots],
            "changed": [s for s in new_only if s["lineage"]["slot"] in changed_slots] + [n for _, n in relabelled],
            "replaced": [s for slot, s in old_only.items() if slot in changed_slots] + [o for o, _ in relabelled],
            "kept": [s for s in new if s["id"] in old_by_id and s["id"] not in moved]}


def _count(samples: Iterable[dict[str, Any]], dimension: str) -> Counter[str]:
    return Counter(v for s in samples for v in values_of(s, dimension))


def breakdown(old: list[dict[str, Any]], new: list[dict[str, Any]], matched: dict[str, list[dict[str, Any]]],
              dimension: str) -> list[dict[str, Any]]:
    """Per value of ``dimension``: how many samples each build holds, how many were added and removed, and how many
    changed from this value (old side of a changed slot) and to it (new side)."""
    counts = {"old": _count(old, dimension), "new": _count(new, dimension),
              **{k: _count(matched[k], dimension) for k in ("added", "removed")},
              "changed_from": _count(matched["replaced"], dimension),
              "changed_to": _count(matched["changed"], dimension)}
    values = sorted(set().union(*counts.values()))
    rows = [{"value": v, **{k: c[v] for k, c in counts.items()}} for v in values]
    return sorted(rows, key=lambda r: (-(r["added"] + r["removed"] + r["changed_from"] + r["changed_to"]),
                                       r["value"]))


def funnel(old: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
    """The filter stages side by side (stage order as the new build ran them, then any only the old one had)."""
    a = {s["stage"]: s for s in old.get("stages", [])}
    b = {s["stage"]: s for s in new.get("stages", [])}
    order = [*b, *(k for k in a if k not in b)]
    keys = ("seen", "kept", "dropped")
    return [{"stage": st, "old": {k: a[st][k] for k in keys} if st in a else None,
             "new": {k: b[st][k] for k in keys} if st in b else None,
             "reasons_old": a.get(st, {}).get("reasons", {}), "reasons_new": b.get(st, {}).get("reasons", {})}
            for st in order]


def recipe_fields(manifest: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """The build's recipe as flat dotted fields, and a note on where it came from (or why it is unavailable)."""
    from factory.recipe_loader import read_recipe_data
    from schemas.recipe import Recipe

    name = manifest.get("recipe_file")
    path = Path(name) if name else None
    if path is None or not path.is_file():
        return None, f"recipe file {name} is not there any more; only its hash {manifest.get('recipe_hash')} is known"
    try:
        recipe = Recipe.model_validate(read_recipe_data(path)[0])
    except (FormaError, ValueError) as exc:
        return None, f"recipe file {path} no longer reads as a recipe ({str(exc).splitlines()[0]})"
    if recipe.content_hash() != manifest.get("recipe_hash"):
        return None, (f"recipe file {path} has changed since the build (hash {recipe.content_hash()}, build "
                      f"{manifest.get('recipe_hash')})")
    # knowledge folders are compared as the folders they name, wherever each recipe file sits
    return flatten(rebase_recipe_paths(recipe.model_dump(mode="json"), path.parent, None)), str(path)


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def recipe_diff(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    a, note_a = recipe_fields(old)
    b, note_b = recipe_fields(new)
    same_hash = old.get("recipe_hash") == new.get("recipe_hash")
    if a is None or b is None:
        return {"same_hash": same_hash, "old": note_a, "new": note_b, "fields": None}
    fields = [{"field": k, "old": a.get(k), "new": b.get(k)} for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return {"same_hash": same_hash, "old": note_a, "new": note_b, "fields": fields}


def lineage(build: Build) -> dict[str, Any]:
    m = build.manifest
    lin = [s.get("lineage", {}) for s in build.samples]
    return {"folder": str(build.folder), "recipe": m.get("recipe"), "recipe_hash": m.get("recipe_hash"),
            "recipe_file": m.get("recipe_file"), "seed": m.get("seed"), "generator": m.get("generator"),
            "pipeline_version": m.get("pipeline_version"), "dataset_hash": m.get("dataset_hash"),
            "total": m.get("total", len(build.samples)), "splits": m.get("splits"), "rejects": m.get("rejects"),
            "models": dict(Counter(str(x.get("model")) for x in lin if x.get("model"))),
            "reviewed": sum(1 for x in lin if x.get("review"))}


def diff_builds(old_dir: str | Path, new_dir: str | Path) -> dict[str, Any]:
    """Everything ``forma diff`` reports, as one JSON-able mapping."""
    old, new = load_build(old_dir), load_build(new_dir)
    matched = match_samples(old.samples, new.samples)
    return {
        "old": str(old.folder), "new": str(new.folder),
        "same_dataset": old.manifest.get("dataset_hash") == new.manifest.get("dataset_hash"),
        "samples": {"old": len(old.samples), "new": len(new.samples),
                    **{k: len(v) for k, v in matched.items() if k != "replaced"}},
        "breakdown": {d: breakdown(old.samples, new.samples, matched, d) for d in DIMENSIONS},
        "funnel": funnel(old.manifest, new.manifest),
        "recipe": recipe_diff(old.manifest, new.manifest),
        "lineage": {"old": lineage(old), "new": lineage(new)},
    }


# --------------------------------------------------------------------------- Markdown

def markdown_table(header: list[str], rows: Iterable[Iterable[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def _cell(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if isinstance(value, list | dict) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")[:120]


def _stage(side: dict[str, Any] | None) -> str:
    return "-" if side is None else f"{side['seen']} / {side['kept']} / {side['dropped']}"


def render_markdown(diff: dict[str, Any], heading: str = "#") -> list[str]:
    """The diff as Markdown lines (``heading`` sets the level, so a report can nest it)."""
    s = diff["samples"]
    out = [f"{heading} Dataset diff", "", f"old: `{diff['old']}`  ", f"new: `{diff['new']}`", "",
           f"{s['old']} -> {s['new']} samples: {s['kept']} in both, {s['added']} added, {s['removed']} removed, "
           f"{s['changed']} changed (same plan slot, different conversation)"
           + ("; the same dataset hash." if diff["same_dataset"] else "."), ""]
    for dim in DIMENSIONS:
        rows = [r for r in diff["breakdown"][dim]
                if r["added"] or r["removed"] or r["changed_from"] or r["changed_to"] or r["old"] != r["new"]]
        out += [f"{heading}# By {dim}", ""]
        if not rows:
            out += ["No difference.", ""]
            continue
        out += markdown_table([dim, "old", "new", "added", "removed", "changed from", "changed to"],
                              ([r["value"], r["old"], r["new"], r["added"], r["removed"], r["changed_from"],
                                r["changed_to"]] for r in rows[:MAX_ROWS]))
        out += ([f"... and {len(rows) - MAX_ROWS} more (--json lists all)", ""] if len(rows) > MAX_ROWS else [""])
    out += [f"{heading}# Filter funnel (seen / kept / dropped)", ""]
    out += markdown_table(["stage", "old", "new"],
                          ([f["stage"], _stage(f["old"]), _stage(f["new"])] for f in diff["funnel"]))
    out += ["", *render_recipe(diff["recipe"], heading), *render_lineage(diff["lineage"], heading)]
    return out


def render_recipe(recipe: dict[str, Any], heading: str) -> list[str]:
    out = [f"{heading}# Recipe", ""]
    if recipe["fields"] is None:
        same = "the same" if recipe["same_hash"] else "different"
        return [*out, f"Recipe hashes are {same}; fields cannot be compared:", f"- old: {recipe['old']}",
                f"- new: {recipe['new']}", ""]
    if not recipe["fields"]:
        return [*out, "No field differs.", ""]
    rows = ([f["field"], f["old"], f["new"]] for f in recipe["fields"])
    return [*out, *markdown_table(["field", "old", "new"], rows), ""]


def render_lineage(lineage_: dict[str, Any], heading: str) -> list[str]:
    keys = ("recipe", "recipe_hash", "recipe_file", "seed", "generator", "models", "pipeline_version",
            "dataset_hash", "total", "splits", "rejects", "reviewed")
    old, new = lineage_["old"], lineage_["new"]
    rows = ([k, old.get(k), new.get(k)] for k in keys)
    return [f"{heading}# Lineage", "", *markdown_table(["", "old", "new"], rows), ""]
