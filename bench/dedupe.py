"""Benchmark: this project's near-duplicate stage versus distilabel's ``MinHashDedup``, and the semantic stage.

    python bench/dedupe.py near [--n 100000]       # both near-dup implementations, one process, same records
    python bench/dedupe.py semantic [--n 100000]   # static encoder semantic stage: time, peak memory, P/R
    python bench/dedupe.py agreement [--n 2000]    # static versus plain MiniLM drop decisions on one subset

The corpus is made from the knowledge base's sentences (fitness language, ~100 words per record): 90% distinct
records, 5% exact copies, 5% near copies (one or two words changed). Both near-dup implementations see the same
records, the same word 5-shingles, 128 permutations, threshold 0.8 and batches of 1,000; F1 is on the planted copies.
distilabel 1.5.3 needs two workarounds (docs/dedupe.md): its "words" tokenizer needs nltk's
punkt_tab data (absent offline) and is a bag of single words, so the word-shingle tokenizer is swapped in; with
datasketch 2.x its LSH subclass lacks ``_require_bytes_keys`` (set after load; we pin datasketch<2 anyway).
"""

from __future__ import annotations

import argparse
import random
import re
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from factory.recipe_loader import load_recipe  # noqa: E402
from factory.stages.base import RejectWriter  # noqa: E402
from factory.stages.near import NearDedupe, shingles  # noqa: E402
from schemas.conversation import Conversation, Role, Turn  # noqa: E402
from schemas.knowledge import Category  # noqa: E402
from schemas.sample import Lineage, Sample  # noqa: E402

THRESHOLD, NUM_PERM, SHINGLE, BATCH = 0.8, 128, 5, 1000


def corpus(n: int, seed: int = 0) -> tuple[list[str], set[int]]:
    """``n`` texts and the indices of planted copies (exact and near)."""
    facts = load_recipe(ROOT / "recipes" / "forma-fitness.yaml").facts
    pool = sorted({s for f in facts for t in (f.answer, f.claim, *(u.answer for u in f.follow_ups))
                   for s in re.split(r"(?<=[.!?])\s+", t.strip()) if len(s.split()) >= 6})
    questions = sorted({q for f in facts for q in f.questions})
    rng = random.Random(seed)
    n_copy = n // 20
    texts = [f"{rng.choice(questions)} " + " ".join(rng.sample(pool, 5)) for _ in range(n - 2 * n_copy)]
    planted: set[int] = set()
    for kind in ("exact", "near"):
        for _ in range(n_copy):
            words = texts[rng.randrange(len(texts) - 2 * n_copy)].split()
            if kind == "near":
                for _ in range(rng.choice((1, 2))):
                    words[rng.randrange(len(words))] = rng.choice(["really", "quite", "very", "also", "just"])
            planted.add(len(texts))
            texts.append(" ".join(words))
    return texts, planted  # copies come after all originals: the first of each group is the original


def f1(predicted: set[int], actual: set[int]) -> tuple[float, float, float]:
    tp = len(predicted & actual)
    p = tp / len(predicted) if predicted else 1.0
    r = tp / len(actual) if actual else 1.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)


def as_samples(texts: list[str]) -> list[Sample]:
    lineage = Lineage(recipe="bench", recipe_hash="bench", generator="bench", seed=0, slot=0)
    out = []
    for i, t in enumerate(texts):
        conv = Conversation(turns=[Turn(role=Role.USER, content=t[:60]), Turn(role=Role.ASSISTANT, content=t[60:])])
        out.append(Sample(id=f"r{i}", category=Category.NUTRITION, persona="bench", conversation=conv,
                          lineage=lineage))
    return out


def run_ours(texts: list[str]) -> tuple[float, set[int]]:
    samples = as_samples(texts)
    stage = NearDedupe(threshold=THRESHOLD, num_perm=NUM_PERM, shingle_words=SHINGLE, batch_size=BATCH)
    stage.bind(RejectWriter())
    started = time.perf_counter()
    kept = {s.id for s in stage.run(samples)}
    seconds = time.perf_counter() - started
    return seconds, {i for i in range(len(texts)) if f"r{i}" not in kept}


def run_distilabel(texts: list[str]) -> tuple[float, set[int]]:
    from distilabel.steps import MinHashDedup

    step = MinHashDedup(threshold=THRESHOLD, num_perm=NUM_PERM, tokenizer="ngrams", n=SHINGLE, storage="dict")
    step.load()
    if not hasattr(step._lsh, "_require_bytes_keys"):  # datasketch 2.x crash workaround (notes/dedupe.md)
        step._lsh._require_bytes_keys = False
    step._tokenizer = lambda batch: [{s.encode("utf-8") for s in shingles(t, SHINGLE)} for t in batch]
    rows = [{"text": t} for t in texts]
    started = time.perf_counter()
    flagged: set[int] = set()
    for start in range(0, len(rows), BATCH):
        for out in step.process(rows[start:start + BATCH]):
            for offset, row in enumerate(out):
                if not row["keep_row_after_minhash_filtering"]:
                    flagged.add(start + offset)
    seconds = time.perf_counter() - started
    return seconds, flagged


def near(n: int) -> None:
    texts, planted = corpus(n)
    actual = planted
    print(f"corpus: {len(texts)} records, {len(actual)} planted duplicates, "
          f"mean {sum(len(t.split()) for t in texts) / len(texts):.0f} words")
    ours_s, ours = run_ours(texts)
    dl_s, dl = run_distilabel(texts)
    for name, secs, pred in (("forma NearDedupe", ours_s, ours), ("distilabel MinHashDedup", dl_s, dl)):
        p, r, f = f1(pred, actual)
        print(f"{name:28s} {secs:8.1f} s  P {p:.4f}  R {r:.4f}  F1 {f:.4f}")
    print(f"speed-up: {dl_s / ours_s:.1f}x")


def semantic(n: int) -> None:
    from factory.embed import get_encoder
    from factory.stages.semantic import SemanticDedupe

    texts, planted = corpus(n)
    actual = planted
    samples = as_samples(texts)
    get_encoder("static")  # load outside the timing
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    stage = SemanticDedupe(threshold=0.95, text="conversation", backend="static", batch_size=BATCH)
    stage.bind(RejectWriter())
    started = time.perf_counter()
    kept = {s.id for s in stage.run(samples)}
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    pred = {i for i in range(len(texts)) if f"r{i}" not in kept}
    p, r, f = f1(pred, actual)
    print(f"semantic (static, cosine 0.95, {len(texts)} records): {seconds:.1f} s, "
          f"{len(texts) / seconds:.0f} records/s,"
          f" peak RSS {peak / 1024:.0f} MB (before the stage {before / 1024:.0f} MB); P {p:.4f} R {r:.4f} F1 {f:.4f}")


def agreement(n: int) -> None:
    """Static encoder's drops scored against plain MiniLM's on the same records (MiniLM as the reference)."""
    import numpy as np

    from factory.embed import get_encoder

    rng = random.Random(1)
    facts = load_recipe(ROOT / "recipes" / "forma-fitness.yaml").facts
    questions = sorted({q for f in facts for q in f.questions})
    intros = ["", "Hi! ", "Quick question: ", "Hey coach, ", "I'm new to the gym. ", "I'm over sixty. "]
    texts = [rng.choice(intros) + rng.choice(questions) for _ in range(n)]
    for threshold in (0.9, 0.95):
        drops = {}
        for kind in ("minilm", "static"):
            v = get_encoder(kind).encode(texts)  # type: ignore[arg-type]
            sims = v @ v.T
            np.fill_diagonal(sims, -1)
            drops[kind] = {i for i in range(n) if (sims[i, :i] >= threshold).any()}
        p, r, f = f1(drops["static"], drops["minilm"])
        print(f"user questions, cosine {threshold}: MiniLM drops {len(drops['minilm'])}, static drops "
              f"{len(drops['static'])}; static vs MiniLM P {p:.3f} R {r:.3f} F1 {f:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["near", "semantic", "agreement"])
    parser.add_argument("--n", type=int, default=None)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(2)
    if args.what == "near":
        near(args.n or 100_000)
    elif args.what == "semantic":
        semantic(args.n or 100_000)
    else:
        agreement(args.n or 2000)


if __name__ == "__main__":
    main()
