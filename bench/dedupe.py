"""Benchmark: this project's near-duplicate stage versus distilabel's ``MinHashDedup``, and the semantic stage.

    python bench/dedupe.py near [--n 100000]       # both near-dup implementations, one process, same records
    python bench/dedupe.py semantic [--n 100000] [--backends static,onnx,cascade] [--text user|conversation]
                                    [--threshold 0.95]
                                                   # semantic stage per encoder: time, CPU time, peak memory
    python bench/dedupe.py agreement [--n 2000] [--backends static,onnx,cascade] [--split tune|heldout]
                                     [--corpus questions|user] [--threshold 0.9] [--loose 0.5,0.6,0.7]
                                                   # each backend's semantic-stage drops versus plain MiniLM's on
                                                   # the same records, with bench/data/paraphrases.jsonl planted
    python bench/dedupe.py margins --split tune --corpus user [--n 5000] [--margins 0.005,0.01]
                                   [--backends onnx_recheck,openvino_recheck]
                                                   # the re-check margin: decisions vs fp32 MiniLM

The corpus is made from the knowledge base's sentences (fitness language, ~100 words per record): 90% distinct
records, 5% exact copies, 5% near copies (one or two words changed). Both near-dup implementations see the same
records, the same word 5-shingles, 128 permutations, threshold 0.8 and batches of 1,000; F1 is on the planted copies.
distilabel 1.5.3 needs two workarounds (docs/dedupe.md): its "words" tokenizer needs nltk's
punkt_tab data (absent offline) and is a bag of single words, so the word-shingle tokenizer is swapped in; with
datasketch 2.x its LSH subclass lacks ``_require_bytes_keys`` (set after load; we pin datasketch<2 anyway).
"""

from __future__ import annotations

import argparse
import json
import os
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


def as_samples(texts: list[str], user_chars: int | None = 60) -> list[Sample]:
    """One chat per text: its first ``user_chars`` characters as the user turn (``None``: up to " | ")."""
    lineage = Lineage(recipe="bench", recipe_hash="bench", generator="bench", seed=0, slot=0)
    out = []
    for i, t in enumerate(texts):
        cut = t.index(" | ") if user_chars is None else user_chars
        conv = Conversation(turns=[Turn(role=Role.USER, content=t[:cut]),
                                   Turn(role=Role.ASSISTANT, content=t[cut:] or "ok")])
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


def user_corpus(n: int, seed: int = 0) -> list[str]:
    """``n`` user-side texts like the build's (a greeting or none, a KB question, a sentence of context), ~30 words."""
    facts = load_recipe(ROOT / "recipes" / "forma-fitness.yaml").facts
    pool = sorted({s for f in facts for t in (f.answer, f.claim) for s in re.split(r"(?<=[.!?])\s+", t.strip())
                   if 6 <= len(s.split()) <= 25})
    questions = sorted({q for f in facts for q in f.questions})
    rng = random.Random(seed)
    return [f"{rng.choice(INTROS)}{rng.choice(questions)} I read that {rng.choice(pool)}" for _ in range(n)]


def semantic(n: int, backends: list[str], text: str, threshold: float = 0.95) -> None:
    """The semantic stage on ``n`` records per backend, one after another in this process: time, CPU time, memory.

    ``--text conversation``: whole records (~100 words) with planted exact and near copies (P/R on those);
    ``--text user``: the build's case, user-side texts of ~30 words (no planted copies; drops are reported).
    """
    from factory.stages.semantic import SemanticDedupe

    if text == "user":
        users = user_corpus(n)
        samples, planted = as_samples([u + " | " for u in users], user_chars=None), set[int]()
    else:
        texts, planted = corpus(n)
        samples = as_samples(texts)
    for backend in backends:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        stage = SemanticDedupe(threshold=threshold, text=text, backend=backend,  # type: ignore[arg-type]
                               batch_size=BATCH)
        stage.bind(RejectWriter())
        _warm(stage)
        load = os.getloadavg()
        started, cpu = time.perf_counter(), time.process_time()
        kept = {s.id for s in stage.run(samples)}
        seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        pred = {i for i in range(len(samples)) if f"r{i}" not in kept}
        p, r, f = f1(pred, planted)
        scores = f"; P {p:.4f} R {r:.4f} F1 {f:.4f} on planted copies" if planted else ""
        extra = (f"; MiniLM ran on {stage.minilm_encoded} records ({stage.minilm_encoded / len(samples):.1%}), "
                 f"{stage.rechecked} fp32 re-checks (margin {stage.margin:g})" if backend in RECHECKING else "")
        if backend == "cascade":
            extra += f", candidates at static cosine >= {stage.candidate_threshold:g}"
        print(f"semantic {backend} ({text} text, cosine {threshold:g}, {len(samples)} records): {seconds:.1f} s wall, "
              f"{cpu:.1f} s CPU, {len(samples) / seconds:.0f} records/s; dropped {len(pred)}; peak RSS "
              f"{peak / 1024:.0f} MB (before {before / 1024:.0f} MB){scores}{extra}; load average "
              f"{load[0]:.2f} before, {os.getloadavg()[0]:.2f} after (1 min)", flush=True)


RECHECKING = ("cascade", "onnx_recheck", "openvino_recheck")


def _warm(stage: object) -> None:
    """Load (export, distil) the stage's encoders and run each once, outside the timing: the first ONNX Runtime
    call of a session plans its memory."""
    from factory.embed import get_encoder, get_exact_encoder, get_openvino_encoder, get_parallel_encoder

    backend = stage.backend  # type: ignore[attr-defined]
    get_encoder(backend)
    if backend == "cascade":
        get_encoder("onnx").encode(["warm up"])
    if backend in RECHECKING:
        get_exact_encoder().encode(["warm up"])
    if backend in ("onnx_recheck", "openvino_recheck"):
        (get_openvino_encoder() if backend == "openvino_recheck" else get_parallel_encoder()).encode(["warm up"] * 64)
        get_parallel_encoder(None, "fp32").encode(["warm up"] * 64)
    stage.load()  # type: ignore[attr-defined]


INTROS = ["", "Hi! ", "Quick question: ", "Hey coach, ", "I'm new to the gym. ", "I'm over sixty. "]


def _drops(vectors: object, threshold: float) -> set[int]:
    import numpy as np

    sims = np.tril(np.asarray(vectors) @ np.asarray(vectors).T, -1)
    return {int(i) for i in np.nonzero((sims >= threshold).any(axis=1))[0]}


def _planted_paraphrases(backend: str) -> tuple[int, int, int]:
    """The semantic stage alone (cosine 0.87, user text) on tests/helpers/dedupe.py's originals and 40 paraphrases:
    paraphrases dropped naming their own original, and distinct originals lost."""
    from factory.stages.semantic import SemanticDedupe
    from tests.helpers.dedupe import planted_corpus

    planted = [p for p in planted_corpus(load_recipe(ROOT / "recipes" / "forma-fitness.yaml").training_facts)
               if p.kind in ("original", "paraphrase")]
    writer = RejectWriter()
    rejects: list = []
    writer.write = rejects.append  # type: ignore[method-assign,assignment]
    stage = SemanticDedupe(threshold=0.87, text="user", backend=backend)  # type: ignore[arg-type]
    stage.bind(writer)
    list(stage.run([p.sample for p in planted]))
    group = {p.sample.id: p.original for p in planted}
    kind = {p.sample.id: p.kind for p in planted}
    found = sum(kind[r.sample_id] == "paraphrase" and group.get(r.related_id) == group[r.sample_id] for r in rejects)
    lost = sum(kind[r.sample_id] == "original" for r in rejects)
    return found, sum(k == "paraphrase" for k in kind.values()), lost


PAIRS = ROOT / "bench" / "data" / "paraphrases.jsonl"


def planted_subset(n: int, split: str, corpus_kind: str) -> tuple[list[str], list[dict]]:
    """``n`` background user texts plus the hand-written pairs of ``split`` (bench/data/paraphrases.jsonl): each
    pair's first text at a random position, its second later. Returns the texts and the pairs with their indices."""
    rng = random.Random({"tune": 11, "heldout": 12}[split])
    if corpus_kind == "user":
        texts = user_corpus(100_000)[{"tune": 0, "heldout": 50_000}[split]:][:n]
    else:
        facts = load_recipe(ROOT / "recipes" / "forma-fitness.yaml").facts
        questions = sorted({q for f in facts for q in f.questions})
        texts = [rng.choice(INTROS) + rng.choice(questions) for _ in range(n)]
    pairs = [row for row in map(json.loads, PAIRS.read_text().splitlines()) if row["split"] == split]
    for row in pairs:
        first = rng.randrange(len(texts) + 1)
        texts.insert(first, row["a"])
        texts.insert(rng.randrange(first + 1, len(texts) + 1), row["b"])
    for row in pairs:  # positions after all inserts (texts are distinct)
        row["ia"], row["ib"] = texts.index(row["a"]), texts.index(row["b"])
    return texts, pairs


def run_stage(texts: list[str], backend: str, threshold: float, loose: float | None = None
              ) -> tuple[dict[int, int], float, float, int, int, list]:
    """The semantic stage on ``texts`` (user text): {dropped index: index it duplicates}, wall s, CPU s, MiniLM
    encodes and fp32 re-checks (cascade) and the rejects."""
    from factory.stages.semantic import SemanticDedupe

    writer = RejectWriter()
    rejects: list = []
    writer.write = rejects.append  # type: ignore[method-assign,assignment]
    extra = {} if loose is None else {"candidate_threshold": loose}
    stage = SemanticDedupe(threshold=threshold, text="user", backend=backend, **extra)  # type: ignore[arg-type]
    stage.bind(writer)
    _warm(stage)
    started, cpu = time.perf_counter(), time.process_time()
    list(stage.run(as_samples([t + " | " for t in texts], user_chars=None)))
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    drops = {int(r.sample_id[1:]): int(r.related_id[1:]) for r in rejects}
    return drops, wall, cpu, stage.minilm_encoded, stage.rechecked, rejects


def agreement(n: int, backends: list[str], split: str, corpus_kind: str, threshold: float,
              looses: list[float]) -> None:
    """Each backend's semantic-stage drops scored against plain MiniLM's (sentence-transformers fp32, the same
    stage, the same threshold) on the same records: ``n`` user texts plus the hand-written paraphrase pairs and hard
    negatives of one split. Recall = share of MiniLM's drops the backend also drops; precision = share of the
    backend's drops MiniLM also drops; "same pair" = dropped naming the same kept record as MiniLM."""

    texts, pairs = planted_subset(n, split, corpus_kind)
    paraphrases = [p for p in pairs if p["kind"] == "paraphrase"]
    negatives = [p for p in pairs if p["kind"] == "negative"]
    print(f"subset: {split} split, {corpus_kind} corpus, {n} background texts + {len(paraphrases)} paraphrase pairs "
          f"+ {len(negatives)} hard-negative pairs = {len(texts)} records; cosine {threshold:g}; "
          f"load average {os.getloadavg()[0]:.2f}", flush=True)
    runs: list[tuple[str, float | None]] = [("minilm", None)]
    for backend in backends:
        runs += [(backend, loose) for loose in looses] if backend == "cascade" and looses else [(backend, None)]
    reference: dict[int, int] = {}
    for backend, loose in runs:
        drops, wall, cpu, encoded, rechecked, _ = run_stage(texts, backend, threshold, loose)
        if backend == "minilm":
            reference = drops
        both = set(drops) & set(reference)
        p = len(both) / len(drops) if drops else 1.0
        r = len(both) / len(reference) if reference else 1.0
        same = sum(drops[i] == reference[i] for i in both) / len(reference) if reference else 1.0
        found = sum(drops.get(q["ib"]) == q["ia"] for q in paraphrases)
        lost = sum(drops.get(q["ib"]) == q["ia"] for q in negatives)
        ref_found = sum(q["ib"] in reference for q in paraphrases)
        para_r = (sum(q["ib"] in drops for q in paraphrases if q["ib"] in reference) / ref_found) if ref_found else 1.0
        label = backend + (f" (loose {loose:g})" if loose is not None else
                           (" (loose 0.4, default)" if backend == "cascade" else ""))
        more = (f"; MiniLM ran on {encoded} of {len(texts)} ({encoded / len(texts):.0%}), fp32 re-checks {rechecked}"
                if backend in RECHECKING else "")
        print(f"{label}: {wall:.1f} s wall, {cpu:.1f} s CPU; drops {len(drops)} (MiniLM {len(reference)}); vs MiniLM "
              f"P {p:.3f} R {r:.3f} same pair {same:.3f}; paraphrases dropped naming their original {found} of "
              f"{len(paraphrases)} (MiniLM's {ref_found} of them: recall {para_r:.3f}); hard negatives dropped "
              f"{lost} of {len(negatives)}{more}", flush=True)
    for backend in ["minilm", *backends]:
        found, total, lost = _planted_paraphrases(backend)
        print(f"tests/helpers word-swap paraphrases at cosine 0.87 (user text), {backend}: {found} of {total} found, "
              f"{lost} distinct originals lost", flush=True)


def _greedy(fast: object, threshold: float, exact: object = None, margin: float = 0.0
            ) -> tuple[dict[int, int], int, int]:
    """The semantic stage's in-order decisions on precomputed vectors (numpy, one record at a time): ``fast`` decides,
    or, within ``margin`` of the threshold, ``exact`` over the kept records within the margin. Returns {dropped:
    kept it duplicates}, re-checked decisions and texts needing ``exact`` vectors."""
    import numpy as np

    vq, vx = np.asarray(fast), None if exact is None else np.asarray(exact)
    kept: list[int] = []
    drops: dict[int, int] = {}
    rechecks, need = 0, set()
    matrix = np.zeros_like(vq)
    for i in range(len(vq)):
        if kept:
            scores = matrix[:len(kept)] @ vq[i]
            j = int(np.argmax(scores))
            best = float(scores[j])
            if vx is not None and abs(best - threshold) < margin:
                close = np.nonzero(scores >= threshold - margin)[0]
                rechecks += 1
                need.update([i, *(kept[c] for c in close)])
                exact_scores = vx[[kept[c] for c in close]] @ vx[i]
                j, best = int(close[int(np.argmax(exact_scores))]), float(exact_scores.max())
            if best >= threshold:
                drops[i] = kept[j]
                continue
        matrix[len(kept)] = vq[i]
        kept.append(i)
    return drops, rechecks, len(need)


def margins(n: int, split: str, corpus_kind: str, threshold: float, values: list[float], backends: list[str]
            ) -> None:
    """Choosing a ``*_recheck`` backend's margin (tuning split): its first-pass and fp32 MiniLM vectors of the planted
    subset, as the stage computes them (in the stage's batches of 1,000), then the stage's decisions simulated per
    margin and scored against fp32 MiniLM's own decisions (= sentence-transformers'), with the re-check counts."""
    import numpy as np

    from factory.embed import get_exact_encoder, get_openvino_encoder, get_parallel_encoder

    texts, _ = planted_subset(n, split, corpus_kind)
    exact = get_exact_encoder().encode(texts)
    reference, _, _ = _greedy(exact, threshold)
    for backend in backends:
        encoder = get_openvino_encoder() if backend == "openvino_recheck" else get_parallel_encoder()
        fast = np.concatenate([encoder.encode(texts[i:i + BATCH]) for i in range(0, len(texts), BATCH)])
        print(f"margins, {backend}: {split} split, {corpus_kind} corpus, {len(texts)} records, cosine {threshold:g}, "
              f"fp32 MiniLM drops {len(reference)}; per-text cosine first pass vs fp32 min "
              f"{(fast * exact).sum(1).min():.4f}", flush=True)
        for margin in [0.0, *values]:
            drops, rechecks, need = _greedy(fast, threshold, exact, margin)
            both = set(drops) & set(reference)
            print(f"margin {margin:g}: P {len(both) / max(len(drops), 1):.3f} "
                  f"R {len(both) / max(len(reference), 1):.3f}; re-checked decisions {rechecks} "
                  f"({rechecks / len(texts):.1%}), fp32 texts {need} ({need / len(texts):.1%})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["near", "semantic", "agreement", "margins"])
    parser.add_argument("--n", type=int, default=None)
    parser.add_argument("--backends", default=None,
                        help="comma-separated: static, onnx, minilm, cascade, onnx_recheck, openvino_recheck")
    parser.add_argument("--text", choices=["user", "conversation"], default="user", help="semantic: compared text")
    parser.add_argument("--threshold", type=float, default=None, help="cosine (semantic: 0.95, agreement: 0.9)")
    parser.add_argument("--split", choices=["tune", "heldout"], default="heldout", help="agreement: planted pairs")
    parser.add_argument("--corpus", choices=["questions", "user"], default="questions",
                        help="agreement: background texts (KB questions, or the semantic bench's user texts)")
    parser.add_argument("--loose", default="", help="agreement: cascade candidate thresholds to sweep (tuning)")
    parser.add_argument("--margins", default="0.002,0.004,0.006,0.008,0.01,0.015,0.02",
                        help="margins: re-check margins to simulate")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(2)
    if args.what == "near":
        near(args.n or 100_000)
    elif args.what == "semantic":
        semantic(args.n or 100_000, (args.backends or "static,onnx").split(","), args.text, args.threshold or 0.95)
    elif args.what == "margins":
        margins(args.n or 5000, args.split, args.corpus, args.threshold or 0.9,
                [float(x) for x in args.margins.split(",") if x], (args.backends or "onnx_recheck").split(","))
    else:
        agreement(args.n or 2000, (args.backends or "static,onnx,cascade").split(","), args.split, args.corpus,
                  args.threshold or 0.9, [float(x) for x in args.loose.split(",") if x])


if __name__ == "__main__":
    main()
