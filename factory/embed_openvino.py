"""MiniLM on a CPU through OpenVINO: int8 weights, activations quantised per token at run time (#17).

The ``openvino_recheck`` semantic-dedupe backend's first pass. Same model and graph as :mod:`factory.embed_onnx`
(the fp32 ONNX export of the shipped all-MiniLM-L6-v2, mean pooling and normalisation inside), with every weight
matrix of a MatMul stored as int8 per output channel behind a ``DequantizeLinear``. OpenVINO's CPU plugin reads that
pattern as compressed weights and, with ``DYNAMIC_QUANTIZATION_GROUP_SIZE``, quantises the activations to 8 bits in
groups of that many input features of each token and runs the product on the CPU's integer units (VNNI here).

Why not ONNX Runtime's int8 (``onnx_recheck``): ONNX Runtime's dynamic quantisation scales activations per tensor,
one scale for a whole batch, so MiniLM's outlier features flatten every other token's precision: pair cosines move
by up to 0.04-0.05 against fp32. Per-token groups move them by ~0.01-0.02 at the same speed (docs/dedupe.md, "Issue
17, third pass"), so far fewer decisions need the fp32 re-check. The weights are quantised by hand (30 lines below)
because ORT's quantiser writes ``com.microsoft`` operators OpenVINO cannot read, and NNCF (OpenVINO's own
compressor) would pull in a dozen packages for one loop over the weight matrices.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.errors import FormaError
from factory.embed_onnx import DIMS, MAX_TOKENS, export_onnx_fp32, length_sorted_batches

log = logging.getLogger(__name__)
#: Input features per activation scale. 384 is one scale per token for MiniLM's 384-wide products (four per token
#: for the 1,536-wide FFN output); chosen on the tuning split with the re-check margin (docs/dedupe.md).
GROUP_SIZE = 384
#: Precision of the operators that stay floating point (attention, LayerNorm, GELU). bf16 where the CPU has it
#: natively (AVX-512 BF16, AMX; OpenVINO keeps f32 elsewhere): ~8% more texts per CPU-second here, and on the tuning
#: split no less agreement with fp32 MiniLM than f32 (docs/dedupe.md).
PRECISION = "bf16"
_INSTALL_HINT = "pip install -e '.[embed]' (openvino) or set dedupe.embedding_backend: onnx_recheck or static"


def openvino_available() -> bool:
    """Whether OpenVINO and the ONNX tools the export needs are installed (checked without importing them)."""
    import importlib.util

    return all(importlib.util.find_spec(name) is not None for name in ("openvino", "onnx", "tokenizers"))


def openvino_model_file(source: Path) -> Path:
    """Where the int8-weight OpenVINO model made from the sentence-transformers folder ``source`` is cached."""
    from common.model_paths import cache_root

    return cache_root() / "openvino" / f"{source.parent.name}_{source.name}-w8.xml"


def quantise_weights(onnx_fp32: Path, target: Path) -> int:
    """Write ``onnx_fp32`` with each 2-D MatMul weight as symmetric int8 per output column plus ``DequantizeLinear``
    (scale = column max / 127); returns how many matrices were quantised. Embeddings, LayerNorms and biases stay fp32.
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(onnx_fp32))
    graph = model.graph
    weights = {init.name: init for init in graph.initializer}
    nodes: list[Any] = []
    quantised = 0
    for node in graph.node:
        name = node.input[1] if node.op_type == "MatMul" and len(node.input) > 1 else ""
        matrix = numpy_helper.to_array(weights[name]) if name in weights else None
        if matrix is not None and matrix.ndim == 2:
            scale = (np.abs(matrix).max(axis=0) / 127.0).astype(np.float32)
            scale[scale == 0] = 1.0
            values = np.clip(np.rint(matrix / scale), -127, 127).astype(np.int8)
            graph.initializer.remove(weights.pop(name))
            graph.initializer.extend([numpy_helper.from_array(values, f"{name}_int8"),
                                      numpy_helper.from_array(scale, f"{name}_scale"),
                                      numpy_helper.from_array(np.zeros(len(scale), np.int8), f"{name}_zero")])
            nodes.append(helper.make_node("DequantizeLinear", [f"{name}_int8", f"{name}_scale", f"{name}_zero"],
                                          [f"{name}_dequantised"], axis=1))
            node.input[1] = f"{name}_dequantised"
            quantised += 1
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.save(model, str(target))
    return quantised


def export_openvino(source: Path) -> Path:
    """The int8-weight model for ``source``, made once from the fp32 ONNX export and cached as OpenVINO IR (~25 MB);
    written under a temporary name and renamed into place, so concurrent exporters cannot leave half a file."""
    target = openvino_model_file(source)
    if target.is_file() and target.with_suffix(".bin").is_file():
        return target
    if not openvino_available():
        raise FormaError("the openvino_recheck embedding backend needs openvino and onnx", hint=_INSTALL_HINT)
    import openvino as ov

    fp32 = export_onnx_fp32(source)
    log.warning("quantising %s weights to int8 for OpenVINO (once, ~5 s)", source)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.stem}.tmp{os.getpid()}")
    onnx_tmp = tmp.with_suffix(".onnx")
    try:
        quantise_weights(fp32, onnx_tmp)
        ov.save_model(ov.Core().read_model(str(onnx_tmp)), str(tmp.with_suffix(".xml")), compress_to_fp16=False)
    finally:
        onnx_tmp.unlink(missing_ok=True)
    tmp.with_suffix(".bin").replace(target.with_suffix(".bin"))
    tmp.with_suffix(".xml").replace(target)
    return target


class OpenVinoEncoder:
    """all-MiniLM-L6-v2 with int8 weights and per-token int8 activations on OpenVINO's CPU plugin.

    Length-sorted batches of ``batch_size`` go to an ``AsyncInferQueue`` of ``workers`` requests, one CPU stream
    (one thread) each: whole batches in parallel, as :class:`factory.embed_onnx.OnnxEncoder` does with threads.
    """

    def __init__(self, source: Path, *, batch_size: int = 16, workers: int | None = None,
                 group_size: int = GROUP_SIZE, precision: str = PRECISION) -> None:
        if not openvino_available():
            raise FormaError("the openvino_recheck embedding backend needs openvino and onnx", hint=_INSTALL_HINT)
        import openvino as ov
        from tokenizers import Tokenizer

        model_file = export_openvino(source)
        self.name = f"openvino:{model_file.name}:g{group_size}:{precision}"
        self.batch_size = batch_size
        self.workers = max(1, workers or min(os.cpu_count() or 1, 8))
        self.tokenizer = Tokenizer.from_file(str(source / "tokenizer.json"))
        self.tokenizer.no_padding()  # the shipped tokenizer.json pads every text to 128 tokens
        self.tokenizer.enable_truncation(MAX_TOKENS)
        config = {"PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": self.workers,
                  "INFERENCE_NUM_THREADS": self.workers, "INFERENCE_PRECISION_HINT": precision,
                  "DYNAMIC_QUANTIZATION_GROUP_SIZE": group_size, "ENABLE_CPU_PINNING": False}
        self.compiled = ov.Core().compile_model(str(model_file), "CPU", config)
        self._queue = ov.AsyncInferQueue(self.compiled, self.workers)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), DIMS), dtype=np.float32)

        def collect(request: Any, rows: np.ndarray) -> None:
            out[rows] = request.get_output_tensor(0).data  # copied: the request's buffer is reused

        self._queue.set_callback(collect)
        for rows, ids, mask in length_sorted_batches(self.tokenizer, texts, self.batch_size):
            self._queue.start_async({"input_ids": ids, "attention_mask": mask}, rows)
        self._queue.wait_all()
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out
