"""Write a built dataset: the internal samples, ShareGPT, Alpaca, a Hugging Face dataset, parquet, card, manifest.

All writers sort keys and fix fingerprints so that the same recipe and seed give byte-identical files.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from schemas.sample import Sample

SPLITS = ("train", "test")


def read_samples(path: Path) -> list[Sample]:
    with path.open(encoding="utf-8") as fh:
        return [Sample.model_validate_json(line) for line in fh if line.strip()]


def sharegpt_record(sample: Sample) -> dict[str, Any]:
    return {"id": sample.id, "category": sample.category.value, "conversations": sample.conversation.to_sharegpt()}


def alpaca_record(sample: Sample) -> dict[str, Any]:
    return {"id": sample.id, "category": sample.category.value, **sample.conversation.to_alpaca()}


def flat_rows(samples: Sequence[Sample]) -> list[dict[str, Any]]:
    """The columns of the parquet and Hugging Face exports (made once per split, shared by both writers)."""
    return [{"id": s.id, "category": s.category.value, "persona": s.persona, "language": s.language,
             "messages": s.conversation.messages(), "conversations": s.conversation.to_sharegpt(),
             "fact_ids": s.lineage.fact_ids, "recipe_hash": s.lineage.recipe_hash, "generator": s.lineage.generator}
            for s in samples]


def write_parquet(out: Path, rows_by_split: dict[str, list[dict[str, Any]]]) -> list[Path]:
    import polars as pl

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for split, rows in rows_by_split.items():
        path = out / f"{split}.parquet"
        tmp = path.with_name(path.name + ".partial")
        pl.DataFrame(rows).write_parquet(tmp, statistics=False)
        tmp.replace(path)
        paths.append(path)
    return paths


def write_hf(out: Path, rows_by_split: dict[str, list[dict[str, Any]]], fingerprint: str) -> Path:
    """A ``datasets.DatasetDict`` on disk. In-memory datasets get random fingerprints; ours derive from the data."""
    from datasets import Dataset, DatasetDict
    from datasets.utils.logging import disable_progress_bar

    disable_progress_bar()
    parts = {}
    for split, rows in rows_by_split.items():
        ds = Dataset.from_list(rows)
        ds._fingerprint = hashlib.sha256(f"{fingerprint}:{split}".encode()).hexdigest()[:16]
        parts[split] = ds
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    DatasetDict(parts).save_to_disk(str(tmp))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def dataset_hash(samples: Sequence[Sample]) -> str:
    """Hash of the dataset's content (ids in order plus splits): what review and release manifests cite."""
    h = hashlib.sha256()
    for s in samples:
        h.update(f"{s.id}:{s.split}\n".encode())
    return h.hexdigest()
