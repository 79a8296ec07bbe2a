"""The dataset report people read: ``report.html`` (self-contained, plots inline) and ``report.json``.

Everything comes from the files a build (or ``forma filter``) wrote, so ``forma report DIR`` works on any dataset
folder: ``manifest.json`` (quotas, counts, the per-stage funnel), ``samples.jsonl`` (turns, lengths, texts) and
``rejects.jsonl`` (examples of each drop reason). The nearest-neighbour similarity histogram embeds the kept
samples' user text with the same encoder as the semantic stage (:mod:`factory.embed`) and searches each sample's
nearest other sample, so it shows how close the survivors still are to each other.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson

from common.errors import FormaError
from common.outdir import output_folder
from common.paths import reports_root

MAX_EXAMPLES = 3
PREVIEWS_PER_LANGUAGE = 2
PREVIEW_CHARS = 300


def _jsonl(path: Path) -> Iterator[dict[str, Any]]:
    if not path.is_file():
        return
    with path.open("rb") as fh:
        for line in fh:
            line = line.strip()
            if line:
                try:
                    yield orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue  # a truncated line from a killed build: the report still renders the rest


def _histogram(values: Sequence[float], bins: list[float]) -> dict[str, list[float]]:
    import numpy as np

    counts, edges = np.histogram(np.asarray(values, dtype=float), bins=bins)
    return {"edges": [round(float(e), 4) for e in edges], "counts": [int(c) for c in counts]}


def nearest_neighbour_similarity(texts: list[str], backend: str = "auto", model_path: str | None = None
                                 ) -> list[float]:
    """Cosine of each text to its nearest *other* text (faiss flat inner product on normalized embeddings)."""
    if len(texts) < 2:
        return []
    import faiss

    from factory.embed import get_encoder

    vectors = get_encoder(backend, model_path).encode(texts)  # type: ignore[arg-type]
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    sims, rows = index.search(vectors, 2)
    out: list[float] = []
    for i in range(len(texts)):
        other = [float(s) for s, r in zip(sims[i], rows[i], strict=True) if r != i]
        out.append(max(-1.0, min(1.0, other[0] if other else float(sims[i][1]))))
    return out


def collect(dataset: Path, *, similarity: bool = True, backend: str = "auto",
            model_path: str | None = None) -> dict[str, Any]:
    """The report's data, as ``report.json`` holds it."""
    manifest_path = dataset / "manifest.json"
    samples_path = dataset / "samples.jsonl"
    if not samples_path.is_file():
        raise FormaError("not a dataset folder: samples.jsonl is missing", path=dataset,
                         hint="point at the --out folder of `forma build` or `forma filter`")
    manifest: dict[str, Any] = json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.is_file() else {}
    samples = list(_jsonl(samples_path))
    counts = Counter(s.get("category", "?") for s in samples)
    quotas: dict[str, int] = manifest.get("quotas") or dict(counts)
    total = max(len(samples), 1)
    target_total = max(sum(quotas.values()), 1)
    categories = [{"category": c, "target": q, "target_share": q / target_total, "actual": counts.get(c, 0),
                   "actual_share": counts.get(c, 0) / total} for c, q in quotas.items()]
    turns = Counter(len(s["conversation"]["turns"]) // 2 for s in samples)
    user_texts = ["\n".join(t["content"] for t in s["conversation"]["turns"] if t["role"] == "user") for s in samples]
    chars = [sum(len(t["content"]) for t in s["conversation"]["turns"]) for s in samples]
    examples: dict[str, list[dict[str, Any]]] = defaultdict(list)
    reject_counts: Counter[str] = Counter()
    for r in _jsonl(dataset / "rejects.jsonl"):
        key = f"{r.get('stage')}/{r.get('reason')}"
        reject_counts[key] += 1
        if len(examples[key]) < MAX_EXAMPLES:
            record = r.get("record") or {}
            turns_ = (record.get("conversation") or {}).get("turns") or []
            first = next((t.get("content", "") for t in turns_ if t.get("role") == "user"), "")
            examples[key].append({"sample_id": r.get("sample_id"), "related_id": r.get("related_id"),
                                  "detail": r.get("detail", ""),
                                  "language": record.get("language") if first else None,
                                  "text": (first or json.dumps(record, ensure_ascii=False))[:300]})
    stages = manifest.get("stages", [])
    nn = nearest_neighbour_similarity(user_texts, backend, model_path) if similarity else []
    bins = [round(-0.2 + 0.05 * i, 2) for i in range(25)]
    return {
        "dataset": manifest.get("recipe", dataset.name), "total": len(samples),
        "dataset_hash": manifest.get("dataset_hash"), "categories": categories,
        "turns": {str(k): v for k, v in sorted(turns.items())},
        "lengths": {"chars": _histogram(chars, _length_bins(chars)),
                    "mean_chars": sum(chars) / total, "max_chars": max(chars, default=0)},
        "languages": _languages(samples, manifest), "previews": _previews(samples),
        "funnel": stages, "rejects": dict(sorted(reject_counts.items())),
        "examples": {k: v for k, v in sorted(examples.items())},
        "nearest_neighbour": {"text": "user", "cosine": _histogram(nn, bins) if nn else None,
                              "mean": sum(nn) / len(nn) if nn else None, "max": max(nn) if nn else None},
    }


def _languages(samples: list[dict[str, Any]], manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """Each language's target share (the recipe's, when it names languages) and actual count and share."""
    counts = Counter(s.get("language") or "en" for s in samples)
    shares: dict[str, float] = (manifest.get("languages") or {}).get("shares") or {}
    total = max(len(samples), 1)
    return [{"language": lang, "target_share": (shares[lang] / 100 if lang in shares else None),
             "actual": counts.get(lang, 0), "actual_share": counts.get(lang, 0) / total}
            for lang in [*shares, *sorted(set(counts) - set(shares))]]


def _previews(samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The first samples of each language (file order: the same build gives the same page): first user turn and
    first answer, cut to :data:`PREVIEW_CHARS`."""
    out: list[dict[str, Any]] = []
    seen: Counter[str] = Counter()
    for s in samples:
        lang = s.get("language") or "en"
        if seen[lang] >= PREVIEWS_PER_LANGUAGE:
            continue
        seen[lang] += 1
        turns = s["conversation"]["turns"]
        first = {role: next((t["content"] for t in turns if t["role"] == role), "") for role in ("user", "assistant")}
        cut = {k: v if len(v) <= PREVIEW_CHARS else v[:PREVIEW_CHARS].rstrip() + "…" for k, v in first.items()}
        out.append({"sample_id": s.get("id"), "language": lang, "category": s.get("category"), **cut})
    return sorted(out, key=lambda p: p["language"])


def _length_bins(values: list[int]) -> list[float]:
    top = max(values, default=1)
    step = max(50, int(top / 30 / 50 + 1) * 50)
    return [float(step * i) for i in range(int(top / step) + 2)]


def write_report(dataset: Path, out_dir: Path, *, similarity: bool = True, backend: str = "auto",
                 model_path: str | None = None) -> dict[str, Any]:
    """Write ``report.json`` and ``report.html`` into ``out_dir`` (a folder its caller owns); returns the data."""
    from factory.report.html import render

    data = collect(dataset, similarity=similarity, backend=backend, model_path=model_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    (out_dir / "report.html").write_text(render(data), encoding="utf-8")
    return data


def write_report_folder(dataset: Path, target: Path, *, overwrite: bool, similarity: bool = True,
                        backend: str = "auto", model_path: str | None = None) -> dict[str, Any]:
    """``forma report``: the report as its own output folder, written whole or not at all (see common.outdir)."""
    with output_folder(target, "report", overwrite=overwrite, inputs=[dataset]) as work:
        return write_report(dataset, work, similarity=similarity, backend=backend, model_path=model_path)


def publish_report(inside: Path, name: str) -> Path:
    """After a build or filter: copy the report inside the dataset to ``reports/<name>/`` (replaced as a whole)."""
    import shutil

    with output_folder(reports_root() / name, "report", overwrite=True) as work:
        for file in ("report.html", "report.json"):
            shutil.copyfile(inside / file, work / file)
    return reports_root() / name / "report.html"
