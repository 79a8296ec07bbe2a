"""`forma build` on the embedded default: exact quotas, byte-identical rebuilds, loadable exports."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest

from factory.build import build_dataset
from factory.planner import Planner, largest_remainder
from factory.recipe_loader import load_recipe
from schemas.conversation import Conversation
from schemas.knowledge import Category
from schemas.sample import Sample

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "forma-fitness.yaml"
SHARES = {Category.EXERCISE_TECHNIQUE: 30, Category.PROGRAMMING: 20, Category.NUTRITION: 25,
          Category.RECOVERY: 10, Category.MOTIVATION: 10, Category.SPECIAL_POPULATIONS: 5}


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def default_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("build") / "forma-fitness"
    build_dataset(RECIPE, out)
    return out


def test_largest_remainder_exact_for_2000() -> None:
    quotas = largest_remainder(SHARES, 2000)
    assert [quotas[c] for c in SHARES] == [600, 400, 500, 200, 200, 100]


@pytest.mark.parametrize("total", [1, 7, 19, 101, 999, 2001, 12_345])
def test_largest_remainder_sums_exactly(total: int) -> None:
    quotas = largest_remainder(SHARES, total)
    assert sum(quotas.values()) == total
    for category, share in SHARES.items():  # each quota within one of its exact share
        assert abs(quotas[category] - total * share / 100) < 1


def test_plan_follows_turn_mix_exactly() -> None:
    loaded = load_recipe(RECIPE)
    slots = Planner(loaded).plan(1000)
    by_category = Counter(s.category for s in slots)
    assert by_category[Category.EXERCISE_TECHNIQUE] == 300
    weights = loaded.recipe.turn_mix
    cells = Planner(loaded).behaviour_quotas(1000)
    for (category, behaviour), quota in cells.items():  # exact inside every (category, behaviour) cell
        turns = Counter(s.user_turns for s in slots if s.category == category and s.behaviour == behaviour)
        for n, w in weights.items():
            assert abs(turns[n] - quota * w / sum(weights.values())) < 1
    assert len({s.index for s in slots}) == len(slots)
    heldout = {f.id for f in loaded.facts if f.heldout}
    assert heldout and not heldout & {f.id for s in slots for f in s.facts}


def test_counts_equal_quotas(default_build: Path) -> None:
    manifest = json.loads((default_build / "manifest.json").read_text())
    assert manifest["total"] == 2000
    assert manifest["counts"] == {"exercise_technique": 600, "programming": 400, "nutrition": 500,
                                  "recovery": 200, "motivation": 200, "special_populations": 100}
    samples = [Sample.model_validate_json(line) for line in (default_build / "samples.jsonl").open()]
    assert Counter(s.category.value for s in samples) == Counter(manifest["counts"])
    assert len({s.id for s in samples}) == 2000
    assert set(Counter(s.conversation.user_turns for s in samples)) == {1, 2, 3, 4}
    for name in ("sharegpt/train.jsonl", "sharegpt/test.jsonl", "alpaca/train.jsonl", "parquet/train.parquet",
                 "hf/dataset_dict.json", "rejects.jsonl", "README.md"):
        assert (default_build / name).is_file(), name
    card = (default_build / "README.md").read_text()
    assert card.startswith("---\n") and "| Exercise technique | 30% | 600 | 600 | 30.0% |" in card


def test_same_recipe_and_seed_are_byte_identical(default_build: Path, tmp_path: Path) -> None:
    again = tmp_path / "forma-fitness"
    build_dataset(RECIPE, again)
    assert tree_digest(again) == tree_digest(default_build)


def test_other_seed_differs(tmp_path: Path) -> None:
    a = build_dataset(RECIPE, tmp_path / "a", total=60, seed=1)
    b = build_dataset(RECIPE, tmp_path / "b", total=60, seed=2)
    assert a.dataset_hash != b.dataset_hash


def test_exports_load_with_datasets(default_build: Path) -> None:
    from datasets import load_dataset, load_from_disk

    sharegpt = load_dataset("json", data_files={"train": str(default_build / "sharegpt/train.jsonl"),
                                                "test": str(default_build / "sharegpt/test.jsonl")})
    assert sharegpt["train"].num_rows + sharegpt["test"].num_rows == 2000
    first = sharegpt["train"][0]["conversations"]
    assert first[0]["from"] == "system" and first[1]["from"] == "human" and first[2]["from"] == "gpt"
    alpaca = load_dataset("json", data_files=str(default_build / "alpaca/train.jsonl"))["train"]
    row = next(r for r in alpaca if r["history"])
    assert row["instruction"] and row["output"] and row["system"] and len(row["history"][0]) == 2
    hf = load_from_disk(str(default_build / "hf"))
    assert hf["train"].num_rows == sharegpt["train"].num_rows


def test_alpaca_and_sharegpt_round_trip(default_build: Path) -> None:
    samples = [Sample.model_validate_json(line) for line in (default_build / "samples.jsonl").open()]
    for s in samples[:200]:
        assert Conversation.from_sharegpt(s.conversation.to_sharegpt()) == s.conversation
        alpaca = s.conversation.to_alpaca()
        assert len(alpaca["history"]) == s.conversation.user_turns - 1


@pytest.mark.slow
def test_every_conversation_renders_with_smollm2_template(default_build: Path) -> None:
    from transformers import AutoTokenizer

    from common.model_paths import smollm2_hf

    tokenizer = AutoTokenizer.from_pretrained(str(smollm2_hf()))
    samples = [Sample.model_validate_json(line) for line in (default_build / "samples.jsonl").open()]
    for s in samples:
        text = tokenizer.apply_chat_template(s.conversation.messages(), tokenize=False)
        assert text.count("<|im_start|>assistant\n") == s.conversation.user_turns
        assert text.count("<|im_start|>") == len(s.conversation.messages())
        assert s.conversation.turns[-1].content in text
