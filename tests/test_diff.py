"""``forma diff``: exact counts on hand-made builds, and two real builds whose recipes differ in one field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.app import app
from experiment.diff import diff_builds, match_samples, render_markdown
from experiment.spec import apply_overrides, rebase_recipe_paths

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "forma-fitness.yaml"


def _sample(sid: str, slot: int, category: str, persona: str, facts: list[str], behaviour: str | None = None
            ) -> dict[str, object]:
    s: dict[str, object] = {"id": sid, "category": category, "persona": persona,
                            "lineage": {"slot": slot, "fact_ids": facts, "recipe": "r", "seed": 1}}
    if behaviour is not None:
        s["behaviour"] = behaviour
    return s


def _write_build(folder: Path, samples: list[dict[str, object]], stages: list[dict[str, object]],
                 recipe_hash: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    manifest = {"recipe": "r", "recipe_hash": recipe_hash, "recipe_file": str(folder / "gone.yaml"), "seed": 1,
                "dataset_hash": recipe_hash * 2, "total": len(samples), "stages": stages}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


@pytest.fixture
def two_builds(tmp_path: Path) -> tuple[Path, Path]:
    old = [_sample("a", 0, "nutrition", "beginner", ["n1"]),           # kept
           _sample("b", 1, "nutrition", "beginner", ["n2"]),           # slot 1 refilled: changed
           _sample("c", 2, "recovery", "older_adult", ["r1", "r2"])]   # removed
    new = [_sample("a", 0, "nutrition", "beginner", ["n1"]),
           _sample("b2", 1, "nutrition", "intermediate", ["n3"], behaviour="escalate"),
           _sample("d", 7, "programming", "beginner", ["p1"], behaviour="decline")]  # added
    stages_old = [{"stage": "generate", "seen": 3, "kept": 3, "dropped": 0},
                  {"stage": "dedupe_semantic", "seen": 3, "kept": 3, "dropped": 0}]
    stages_new = [{"stage": "generate", "seen": 4, "kept": 4, "dropped": 0},
                  {"stage": "validate", "seen": 4, "kept": 3, "dropped": 1, "reasons": {"too_short": 1}}]
    return (_write_build(tmp_path / "old", old, stages_old, "h1"),
            _write_build(tmp_path / "new", new, stages_new, "h2"))


def test_added_removed_changed_by_id_and_slot(two_builds: tuple[Path, Path]) -> None:
    d = diff_builds(*two_builds)
    assert d["samples"] == {"old": 3, "new": 3, "kept": 1, "added": 1, "removed": 1, "changed": 1}
    by = {dim: {r["value"]: r for r in rows} for dim, rows in d["breakdown"].items()}
    assert by["category"]["nutrition"] == {"value": "nutrition", "old": 2, "new": 2, "added": 0, "removed": 0,
                                           "changed_from": 1, "changed_to": 1}
    assert by["category"]["recovery"]["removed"] == 1 and by["category"]["programming"]["added"] == 1
    assert by["behaviour"]["answer"]["old"] == 3 and by["behaviour"]["answer"]["new"] == 1  # missing = answer
    assert by["behaviour"]["escalate"]["changed_to"] == 1 and by["behaviour"]["answer"]["changed_from"] == 1
    assert by["behaviour"]["decline"]["added"] == 1
    assert by["persona"]["intermediate"]["changed_to"] == 1 and by["persona"]["beginner"]["changed_from"] == 1
    assert by["fact"]["r2"]["removed"] == 1 and by["fact"]["n3"]["changed_to"] == 1 and by["fact"]["n1"]["old"] == 1
    assert by["fact"]["n2"]["changed_from"] == 1
    funnel = {f["stage"]: f for f in d["funnel"]}
    assert [f["stage"] for f in d["funnel"]] == ["generate", "validate", "dedupe_semantic"]
    assert funnel["validate"]["old"] is None and funnel["validate"]["new"]["dropped"] == 1
    assert funnel["dedupe_semantic"]["new"] is None
    assert d["recipe"]["fields"] is None and not d["recipe"]["same_hash"]  # the recipe file is gone: hashes only
    assert d["lineage"]["old"]["recipe_hash"] == "h1" and d["lineage"]["new"]["total"] == 3
    md = "\n".join(render_markdown(d))
    assert "1 in both, 1 added, 1 removed, 1 changed" in md and "| validate | - | 4 / 3 / 1 |" in md


def test_matching_never_counts_a_sample_twice() -> None:
    old = [_sample(f"o{i}", i, "nutrition", "p", []) for i in range(5)]
    new = [_sample(f"o{i}", i, "nutrition", "p", []) for i in range(2)] + \
          [_sample(f"n{i}", i, "nutrition", "p", []) for i in range(3, 8)]
    m = match_samples(old, new)
    assert [len(m[k]) for k in ("kept", "added", "removed", "changed", "replaced")] == [2, 3, 1, 2, 2]
    assert len(m["kept"]) + len(m["added"]) + len(m["changed"]) == len(new)
    assert len(m["kept"]) + len(m["removed"]) + len(m["changed"]) == len(old)


def test_the_same_chat_under_another_persona_is_a_change() -> None:
    """The id hashes the text; a chat that never states its persona can come back under another one."""
    from experiment.diff import breakdown

    old = [_sample("same", 0, "recovery", "beginner", ["f"], "escalate"), _sample("o1", 1, "recovery", "p", [])]
    new = [_sample("same", 0, "recovery", "older_adult", ["f"], "escalate"), _sample("o1", 1, "recovery", "p", [])]
    m = match_samples(old, new)
    assert [len(m[k]) for k in ("kept", "added", "removed", "changed", "replaced")] == [1, 0, 0, 1, 1]
    rows = {r["value"]: r for r in breakdown(old, new, m, "persona")}
    assert rows["beginner"]["new"] == 0 and rows["beginner"]["changed_from"] == 1
    assert rows["older_adult"]["new"] == 1 and rows["older_adult"]["changed_to"] == 1


def test_cli_markdown_and_json(two_builds: tuple[Path, Path]) -> None:
    result = CliRunner().invoke(app, ["diff", str(two_builds[0]), str(two_builds[1])])
    assert result.exit_code == 0, result.output
    assert "# Dataset diff" in result.output and "## By behaviour" in result.output
    as_json = CliRunner().invoke(app, ["diff", str(two_builds[0]), str(two_builds[1]), "--json"])
    assert json.loads(as_json.output)["samples"]["changed"] == 1
    missing = CliRunner().invoke(app, ["diff", str(two_builds[0]), str(two_builds[0].parent / "nope")])
    assert missing.exit_code == 2 and "build folder not found" in missing.output


def test_two_real_builds_whose_recipes_differ_in_seed(tmp_path: Path) -> None:
    """Builds of the default recipe and a variant with another seed: the recipe diff names exactly that field."""
    from factory.build import build_dataset
    from factory.recipe_loader import read_recipe_data

    data, _ = read_recipe_data(RECIPE)
    variant = tmp_path / "variant" / "recipe.yaml"
    variant.parent.mkdir()
    import yaml

    variant.write_text(yaml.safe_dump(rebase_recipe_paths(apply_overrides(data, {"seed": 7}), RECIPE.parent,
                                                          variant.parent)))
    a = build_dataset(RECIPE, tmp_path / "a", total=40).out
    b = build_dataset(variant, tmp_path / "b", total=40).out
    d = diff_builds(a, b)
    s = d["samples"]
    assert s["kept"] + s["added"] + s["changed"] == s["new"] == 40
    assert s["kept"] + s["removed"] + s["changed"] == s["old"] == 40
    assert s["changed"] > 0
    assert [f["field"] for f in d["recipe"]["fields"]] == ["seed"]
    assert d["recipe"]["fields"][0]["old"] == 42 and d["recipe"]["fields"][0]["new"] == 7
    for dim in ("category", "persona", "behaviour"):  # one value per sample: every count adds up
        rows = d["breakdown"][dim]
        assert sum(r["new"] for r in rows) == 40 and sum(r["changed_to"] for r in rows) == s["changed"]
        for r in rows:
            assert r["new"] == r["old"] + r["added"] - r["removed"] + r["changed_to"] - r["changed_from"], r
    assert d["funnel"][0]["stage"] == "generate" and d["funnel"][0]["old"]["kept"] >= 40
    assert d["lineage"]["old"]["seed"] == 42 and d["lineage"]["new"]["seed"] == 7
