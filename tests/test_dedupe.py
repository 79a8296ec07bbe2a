"""Dedupe stages on a planted corpus (per-stage precision and recall), state across calls, the out-of-core store,
and the build's balance loop refilling exactly what the filters dropped."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import yaml

from common.errors import FormaError
from factory.build import build_dataset
from factory.recipe_loader import load_recipe
from factory.stages.base import RejectWriter, Stage
from factory.stages.exact import ExactDedupe
from factory.stages.near import NearDedupe, SqliteStore, pair_jaccard, shingle_sets, shingles
from factory.stages.semantic import SemanticDedupe
from schemas.sample import Reject, Sample
from tests.helpers.dedupe import RECIPE, Planted, planted_corpus


class ListWriter(RejectWriter):
    """Keeps every reject (the build's writer keeps only examples)."""

    def __init__(self) -> None:
        super().__init__()
        self.all: list[Reject] = []

    def write(self, reject: Reject) -> None:
        super().write(reject)
        self.all.append(reject)


@pytest.fixture(scope="module")
def corpus() -> list[Planted]:
    return planted_corpus(load_recipe(RECIPE).training_facts)


def run_chain(stages: list[Stage], samples: list[Sample]) -> tuple[list[Sample], ListWriter]:
    writer = ListWriter()
    stream = iter(samples)
    for stage in stages:
        stage.bind(writer)
        stream = stage.run(stream)  # type: ignore[assignment]
    return list(stream), writer


def scores(corpus: list[Planted], rejects: list[Reject], stage: str, kinds: tuple[str, ...]) -> tuple[float, float]:
    """Precision of ``stage``'s drops (a planted copy, naming a sample of its own group) and recall of ``kinds``
    by this stage or an earlier one."""
    group = {p.sample.id: p.original for p in corpus}
    kind = {p.sample.id: p.kind for p in corpus}
    mine = [r for r in rejects if r.stage == stage]
    correct = sum(kind[r.sample_id] != "original" and group.get(r.related_id or "") == group[r.sample_id]  # type: ignore[index]
                  for r in mine)
    precision = correct / len(mine) if mine else 1.0
    dropped = {r.sample_id for r in rejects}
    targets = [p for p in corpus if p.kind in kinds]
    recall = sum(p.sample.id in dropped for p in targets) / len(targets)
    return precision, recall


@pytest.mark.parametrize("backend", ["minilm", "onnx"])
def test_planted_corpus_precision_and_recall_per_stage(corpus: list[Planted], backend: str) -> None:
    """MiniLM, and the int8 ONNX export of it that is the CPU default, both catch the planted paraphrases."""
    stages: list[Stage] = [ExactDedupe(), NearDedupe(threshold=0.8),
                           SemanticDedupe(threshold=0.87, text="user", backend=backend)]  # type: ignore[arg-type]
    kept, writer = run_chain(stages, [p.sample for p in corpus])
    assert Counter(p.kind for p in corpus) == {"original": len(corpus) - 120, "exact": 40, "near": 40,
                                               "paraphrase": 40}
    for stage, kinds in (("dedupe_exact", ("exact",)), ("dedupe_near", ("exact", "near")),
                         ("dedupe_semantic", ("exact", "near", "paraphrase"))):
        precision, recall = scores(corpus, writer.all, stage, kinds)
        assert precision >= 0.95, (stage, precision)
        assert recall >= 0.95, (stage, recall)
    originals = {p.sample.id for p in corpus if p.kind == "original"}
    lost = originals - {s.id for s in kept}  # distinct chats lost (a few KB questions are close in meaning)
    assert len(lost) <= 0.02 * len(originals), len(lost)
    assert all(r.related_id for r in writer.all)


def test_near_state_persists_across_runs(corpus: list[Planted]) -> None:
    samples = [p.sample for p in corpus]
    whole, w1 = run_chain([NearDedupe()], samples)
    stage = NearDedupe(batch_size=7)
    half = len(samples) // 2
    w2 = ListWriter()
    stage.bind(w2)
    parts = list(stage.run(samples[:half])) + list(stage.run(samples[half:]))
    assert [s.id for s in parts] == [s.id for s in whole]
    assert [(r.sample_id, r.related_id) for r in w2.all] == [(r.sample_id, r.related_id) for r in w1.all]


def test_sqlite_store_matches_memory_and_streams(corpus: list[Planted], tmp_path: Path) -> None:
    samples = [p.sample for p in corpus]
    memory, w1 = run_chain([NearDedupe(batch_size=50)], samples)
    store = tmp_path / "near.sqlite"
    stage = NearDedupe(batch_size=50, storage=store)
    disk, w2 = run_chain([stage], iter(samples))  # type: ignore[arg-type]
    assert [s.id for s in disk] == [s.id for s in memory]
    assert [(r.sample_id, r.related_id) for r in w2.all] == [(r.sample_id, r.related_id) for r in w1.all]
    stage.unload()
    # the index lives on disk: a fresh stage on the same file treats every sample as already seen
    again = NearDedupe(batch_size=50, storage=store)
    kept, _ = run_chain([again], samples[:20])
    assert kept == [] and len(SqliteStore(store, 128)) == len(memory)


def test_hashed_shingle_sets_give_the_exact_jaccard_of_the_string_shingles() -> None:
    """The numpy byte tokenizer and hashed 5-shingles must agree with the plain string definition, including case,
    punctuation, accents, ligatures (NFKC), a text shorter than one shingle and an empty one."""
    import random

    import numpy as np

    rng = random.Random(7)
    vocab = ["Protein", "protein", "EAT", "meal", "per", "day", "Élan", "élan", "straße", "STRASSE", "x_y", "20",
             "kg!", "über", "\ufb01ne", "fine", "a", "—", "Sets:"]
    texts = ["", "!!", "one", "Two words.", "A B C D E", "a b c d e"]
    texts += [" ".join(rng.choice(vocab) + rng.choice(["", ",", ".", " \n", "!!"]) for _ in range(k))
              for k in (rng.choice([1, 3, 5, 6, 9, 20, 60]) for _ in range(400))]
    sets = shingle_sets(texts, 5)

    def reference(text: str) -> set[str]:
        return set(shingles(text.replace("_", " "), 5))  # our words split at "_" like the stage's tokenizer

    pairs = [(i, j) for i in range(6) for j in range(6)] + [(rng.randrange(len(texts)), rng.randrange(len(texts)))
                                                            for _ in range(2000)]
    left, right = (np.array(side, dtype=np.int64) for side in zip(*pairs, strict=True))
    got = pair_jaccard(sets, left, sets, right)
    for (i, j), jaccard in zip(pairs, got.tolist(), strict=True):
        a, b = reference(texts[i]), reference(texts[j])
        assert abs(jaccard - len(a & b) / len(a | b)) < 1e-9, (texts[i], texts[j])
    assert got[0] == 1.0 and got[6 * 4 + 5] == 1.0  # two empty texts match; case does not matter


def test_near_drops_on_exact_jaccard_and_refuses_a_foreign_store(tmp_path: Path) -> None:
    """A copy with one word changed in a long text is dropped and names its original; a different text is kept;
    an sqlite file from another scheme is refused with a clear error instead of silently mismatching."""
    originals = [p.sample for p in planted_corpus(load_recipe(RECIPE).training_facts) if p.kind == "original"]
    long = [s for s in originals
            if " the " in s.conversation.turns[-1].content and len(s.conversation.text().split()) > 80]
    base = [long[0], *[s for s in originals if s.id != long[0].id][:2]]
    turns = base[0].conversation.turns
    edited = turns[-1].model_copy(update={"content": turns[-1].content.replace(" the ", " a ", 1)})
    copy = base[0].model_copy(update={"id": "s-near-copy", "conversation": base[0].conversation.model_copy(
        update={"turns": [*turns[:-1], edited]})})
    stage = NearDedupe(record_similarity=True)
    kept, writer = run_chain([stage], [*base, copy])
    assert [s.id for s in kept] == [s.id for s in base]
    assert [(r.sample_id, r.related_id) for r in writer.all] == [("s-near-copy", base[0].id)]
    assert 0.8 <= stage.best_similarity[-1] < 1.0
    store = tmp_path / "near.sqlite"
    other = NearDedupe(storage=store, num_perm=64)
    assert list(other.run([base[0]])) == [base[0]]
    other.unload()
    with pytest.raises(FormaError, match="another version or setting"):
        SqliteStore(store, 128)


def test_semantic_state_persists_and_names_original(corpus: list[Planted]) -> None:
    stage = SemanticDedupe(threshold=0.999, text="user", backend="static")
    writer = ListWriter()
    stage.bind(writer)
    first = corpus[0].sample
    assert list(stage.run([first])) == [first]
    copy = first.model_copy(update={"id": "s-copy"})
    assert list(stage.run([copy])) == []
    assert writer.all[0].related_id == first.id and writer.all[0].reason == "semantic_duplicate"


def test_balance_refills_exactly_when_filters_drop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A strict near threshold drops many template chats; the quotas still hold exactly, with no resampling."""
    monkeypatch.setenv("FORMA_REPORTS", str(tmp_path / "reports"))
    data = yaml.safe_load(RECIPE.read_text())
    data["knowledge"] = [str(RECIPE.parent / k) for k in data.get("knowledge", ["knowledge/"])]
    data["behaviour_knowledge"] = [str(RECIPE.parent / k) for k in data.get("behaviour_knowledge", [])]
    data["dedupe"] = {**data.get("dedupe", {}), "near_threshold": 0.2}
    recipe = tmp_path / "strict.yaml"
    recipe.write_text(yaml.safe_dump(data))
    result = build_dataset(recipe, tmp_path / "strict", total=400)
    assert result.counts == result.quotas
    near = next(s for s in result.stats if s.stage == "dedupe_near")
    assert near.dropped > 20
    samples = [Sample.model_validate_json(line) for line in (tmp_path / "strict" / "samples.jsonl").open()]
    assert len({s.id for s in samples}) == len(samples) == 400
    assert len({s.lineage.slot for s in samples}) == 400  # every sample its own slot: generated, not resampled
    rejects = [json.loads(line) for line in (tmp_path / "strict" / "rejects.jsonl").open()]
    assert sum(r["reason"] == "near_duplicate" for r in rejects) == near.dropped
    assert all(r["related_id"] for r in rejects if r["stage"].startswith("dedupe"))


def test_static_encoder_gives_model2vecs_own_vectors(corpus: list[Planted]) -> None:
    """Our batched mean (one sparse product) must equal StaticModel.encode, the loop it replaces."""
    import numpy as np

    from factory.embed import StaticEncoder, _normalize

    encoder = StaticEncoder()
    texts = [p.sample.conversation.text() for p in corpus[:300]]
    texts += ["", "   ", "squat", "Squat depth? " * 400, "Wie viel Protein brauche ich?", "🏋️ 5x5 @ 80% 1RM"]
    ours = encoder.encode(texts)
    reference = _normalize(encoder.model.encode(texts, show_progress_bar=False))
    assert ours.shape == (len(texts), reference.shape[1])
    np.testing.assert_allclose(ours, reference, atol=1e-5)
    assert np.abs(ours[:300] - ours[:300].mean(axis=0)).max() > 0.1  # distinct texts give distinct vectors


def test_onnx_encoder_tracks_sentence_transformers_minilm(corpus: list[Planted]) -> None:
    """The int8 ONNX export gives MiniLM's vectors within quantisation error, padding and truncation included."""
    import numpy as np

    from factory.embed import MiniLMEncoder, get_encoder

    texts = [p.sample.conversation.turns[0].content for p in corpus[:120]]
    texts += [p.sample.conversation.text() for p in corpus[:20]]
    texts += ["", "squat", "Squat depth? " * 400, "Wie viel Protein brauche ich?", "🏋️ 5x5 @ 80% 1RM"]
    ours = get_encoder("onnx").encode(texts)
    reference = MiniLMEncoder(device="cpu").encode(texts)
    assert ours.shape == reference.shape == (len(texts), 384)
    cosine = (ours * reference).sum(axis=1)
    assert cosine.min() >= 0.97, (cosine.min(), texts[int(cosine.argmin())][:80])  # measured min 0.975 (empty)
    assert cosine.mean() >= 0.99, cosine.mean()
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-4)
    assert get_encoder("onnx").encode([]).shape == (0, 384)


def test_cascade_drops_a_human_paraphrase_with_its_pair_and_score_and_keeps_a_hard_negative(
        corpus: list[Planted], tmp_path: Path) -> None:
    """The cascade backend with the real encoders (static candidates, MiniLM int8 ONNX, fp32 re-check near the
    threshold) on hand-written pairs from bench/data/paraphrases.jsonl among real KB chats: the person's rewording is
    dropped naming its original, with MiniLM's and the static cosine in rejects.jsonl; the hard negative (same words,
    another question), which the static encoder does propose as a candidate, is kept because MiniLM scores it low."""
    import re

    from tests.helpers.dedupe import make_sample

    rows = {r["id"]: r for r in map(json.loads, (RECIPE.parents[1] / "bench" / "data" / "paraphrases.jsonl")
                                    .read_text().splitlines())}
    para, neg = rows["par19"], rows["neg05"]  # MiniLM fp32: 0.88 and 0.72; static: 0.50 and 0.85
    assert para["a"] == neg["a"] == "Why do my knees hurt when I squat?"
    background = [p.sample for p in corpus if p.kind == "original"][:60]
    category = background[0].category
    original = make_sample(para["a"], "Usually knee position or depth; film a set.", 900, category)
    reworded = make_sample(para["b"], "Often a technique issue; check where your knees travel.", 901, category)
    other = make_sample(neg["b"], "Wrist mobility and the rack position.", 902, category)
    samples = [*background[:30], original, *background[30:], other, reworded]
    stage = SemanticDedupe(threshold=0.85, text="user", backend="cascade", batch_size=16)  # default loose 0.4
    with RejectWriter(tmp_path / "rejects.jsonl") as writer:
        stage.bind(writer)
        kept = {s.id for s in stage.run(samples)}
    rejects = [json.loads(line) for line in (tmp_path / "rejects.jsonl").open()]
    mine = [r for r in rejects if r["sample_id"] == reworded.id]
    assert len(mine) == 1 and mine[0]["related_id"] == original.id and mine[0]["reason"] == "semantic_duplicate"
    minilm, static = map(float, re.findall(r"cosine (\d\.\d+)", mine[0]["detail"]))
    assert 0.85 <= minilm < 0.95 and stage.candidate_threshold <= static < 0.6, mine[0]["detail"]
    assert other.id in kept and original.id in kept
    assert reworded.id not in kept
    assert 0 < stage.minilm_encoded < len(samples)  # MiniLM ran on candidate pairs only
    from factory.embed import get_encoder

    assert get_encoder("cascade") is get_encoder("static")  # decontamination and the report use its candidate encoder
