"""HF folder -> f16 GGUF -> quantized GGUFs + Modelfile + verification report, with no llama.cpp build.

Why this route: Unsloth's ``save_pretrained_gguf`` clones and compiles llama.cpp (and breaks offline). Here the
converter is llama.cpp's own ``convert_hf_to_gguf.py`` taken from the pinned llama-cpp-python source archive
(fetched once with pip, sha256-checked, cached), run as a subprocess; quantization is ``llama_model_quantize``
from the already-installed llama-cpp-python. Every file is written under a temporary name in its final folder and
renamed on success, so a failed export never leaves a half-written file under a final name.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.errors import FormaError
from common.hashing import sha256_file
from common.model_paths import cache_root
from common.outdir import output_folder

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
#: sha256 of llama_cpp_python-0.3.36.tar.gz as served by PyPI (pip verified it against the index on download).
LLAMA_CPP_SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
SDIST_NAME = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}"
#: Members of the archive the export needs: the converter, its packages, and the vocab-only GGUFs (tests use Qwen2's).
_SDIST_MEMBERS = ("vendor/llama.cpp/convert_hf_to_gguf.py", "vendor/llama.cpp/conversion/",
                  "vendor/llama.cpp/gguf-py/", "vendor/llama.cpp/models/", "vendor/llama.cpp/LICENSE")

#: Quant names accepted on the command line -> llama.cpp's ``LLAMA_FTYPE_*`` attribute.
QUANT_TYPES = {
    "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "q6_k": "LLAMA_FTYPE_MOSTLY_Q6_K",
    "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M", "q5_k_s": "LLAMA_FTYPE_MOSTLY_Q5_K_S",
    "q5_0": "LLAMA_FTYPE_MOSTLY_Q5_0", "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "q4_k_s": "LLAMA_FTYPE_MOSTLY_Q4_K_S", "q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
    "q3_k_m": "LLAMA_FTYPE_MOSTLY_Q3_K_M", "q2_k": "LLAMA_FTYPE_MOSTLY_Q2_K",
}


#: What counts as weights in an HF folder; a folder without any is refused before anything is written.
WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin", "*.pth")

# --------------------------------------------------------------------------- the pinned converter source



def llama_sdist(cache: Path | None = None, *, fetch: bool = True) -> Path:
    """The ``vendor/llama.cpp`` folder of the pinned llama-cpp-python source archive, fetched and checked if missing.

    The archive lives in ``cache_root()/llama-cpp-sdist``; it is fetched with ``pip download`` (the ordinary client
    of the package registry), its sha256 must equal :data:`LLAMA_CPP_SDIST_SHA256`, and only the members the export
    needs are unpacked. A stamp file records the verified hash, so later calls cost a stat.
    """
    root = (cache or cache_root()) / "llama-cpp-sdist"
    tree = root / SDIST_NAME
    llama_dir = tree / "vendor" / "llama.cpp"
    stamp = tree / ".sha256"
    if stamp.is_file() and stamp.read_text().strip() == LLAMA_CPP_SDIST_SHA256 and \
            (llama_dir / "convert_hf_to_gguf.py").is_file():
        return llama_dir
    archive = root / f"{SDIST_NAME}.tar.gz"
    if not archive.is_file():
        if not fetch:
            raise FormaError("the llama-cpp-python source archive is not cached", path=archive,
                             hint="run scripts/setup.sh, or python -m export.gguf_export --fetch")
        _download_sdist(root)
    digest = sha256_file(archive)
    if digest != LLAMA_CPP_SDIST_SHA256:
        bad = archive.with_name(archive.name + ".bad")
        archive.replace(bad)
        raise FormaError(f"sha256 mismatch: got {digest}, want {LLAMA_CPP_SDIST_SHA256}", path=bad,
                         hint="the archive was moved aside; re-run to fetch it again")
    tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=root))
    try:
        with tarfile.open(archive) as tar:
            prefix = f"{SDIST_NAME}/"
            members = [m for m in tar.getmembers()
                       if m.name.startswith(prefix) and m.name[len(prefix):].startswith(_SDIST_MEMBERS)]
            tar.extractall(tmp, members=members, filter="data")
        (tmp / SDIST_NAME / ".sha256").write_text(LLAMA_CPP_SDIST_SHA256 + "\n")
        shutil.rmtree(tree, ignore_errors=True)
        (tmp / SDIST_NAME).rename(tree)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return llama_dir


def _download_sdist(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=root) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               "--no-cache-dir", "-d", tmp, f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}"]
        done = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / f"{SDIST_NAME}.tar.gz"
        if not got.is_file():
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise FormaError(f"pip could not download the llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} source archive: "
                             f"{tail[0]}", hint="the package registry must be reachable once; then it is cached")
        got.replace(root / got.name)


# --------------------------------------------------------------------------- results

@dataclass
class QuantInfo:
    """One GGUF: its path, size, tensor types read back from the file, and what llama.cpp said it fell back on."""

    name: str
    path: Path
    seconds: float
    size_bytes: int
    tensor_types: dict[str, int]
    fallbacks: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "path": str(self.path), "seconds": round(self.seconds, 2),
                "size_mib": round(self.size_bytes / 2**20, 1), "tensor_types": self.tensor_types,
                "fallbacks": self.fallbacks}


@dataclass
class ExportResult:
    """What ``export_gguf`` wrote. ``ggufs`` maps "f16" and each quant name to its file."""

    model_dir: Path
    out_dir: Path
    ggufs: dict[str, Path]
    modelfile: Path
    report: Path
    verification: dict[str, Any]
    quants: dict[str, QuantInfo]

    @property
    def passed(self) -> bool:
        return bool(self.verification.get("passed"))


# --------------------------------------------------------------------------- atomic writes

@contextlib.contextmanager
def _atomic_path(final: Path) -> Iterator[Path]:
    """A temporary path beside ``final``; renamed onto it when the block succeeds, removed when it fails."""
    fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        mask = os.umask(0)
        os.umask(mask)
        tmp.chmod(0o666 & ~mask)  # mkstemp makes 0600; the final file gets the usual permissions
        tmp.replace(final)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    with _atomic_path(path) as tmp:
        tmp.write_text(text)


# --------------------------------------------------------------------------- checks on the inputs

def check_model_dir(model_dir: Path) -> dict[str, Any]:
    """The model folder must exist and hold an HF config naming its architecture; returns the config."""
    if not model_dir.exists():
        raise FormaError("model folder not found", path=model_dir)
    if not model_dir.is_dir():
        raise FormaError("not a folder (give the merged HF model folder)", path=model_dir)
    cfg_path = model_dir / "config.json"
    if not cfg_path.is_file():
        raise FormaError("no config.json: not a Hugging Face model folder", path=model_dir,
                         hint="give the merged 16-bit folder that `forma train` writes")
    try:
        config = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise FormaError(f"not valid JSON: {exc}", path=cfg_path) from None
    archs = config.get("architectures")
    if not archs or not isinstance(archs, list):
        raise FormaError("config.json names no architecture", path=cfg_path, where="architectures",
                         hint='e.g. ["LlamaForCausalLM"]; save the model with save_pretrained')
    if not any((model_dir / n).is_file() for n in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        raise FormaError("no tokenizer files in the model folder", path=model_dir,
                         hint="save the tokenizer beside the model")
    if not any(any(model_dir.glob(pattern)) for pattern in WEIGHT_FILES):
        raise FormaError("no weights in the model folder (no *.safetensors or pytorch_model*.bin)", path=model_dir,
                         hint="give the merged 16-bit folder that `forma train` writes (save_merged: true)")
    return dict(config)


def check_out_dir(out_dir: Path) -> None:
    """Create the output folder and prove it writable before spending minutes converting."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise FormaError(f"output folder is not writable: {exc.strerror or exc}", path=out_dir) from None


def parse_quants(quants: str | Sequence[str]) -> list[str]:
    names = [q.strip().lower() for q in (quants.split(",") if isinstance(quants, str) else quants) if q.strip()]
    for q in names:
        if q not in QUANT_TYPES and q != "f16":
            raise FormaError(f"unknown quant type {q!r}", where="--quant", hint="one of: " + ", ".join(QUANT_TYPES))
    return [q for i, q in enumerate(names) if q != "f16" and q not in names[:i]]


# --------------------------------------------------------------------------- conversion and quantization

def convert_to_f16(model_dir: Path, out_path: Path, sdist: Path | None = None) -> float:
    """Run llama.cpp's converter on ``model_dir``; returns seconds. Output appears at ``out_path`` only on success."""
    llama_dir = sdist or llama_sdist()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(llama_dir / "gguf-py"), str(llama_dir)]),
               NO_LOCAL_GGUF="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    start = time.perf_counter()
    with _atomic_path(out_path) as tmp:
        cmd = [sys.executable, str(llama_dir / "convert_hf_to_gguf.py"), str(model_dir), "--outfile", str(tmp),
               "--outtype", "f16"]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            log = done.stderr + done.stdout
            unsupported = re.search(r"Model (\S+) is not supported", log)
            if unsupported:
                raise FormaError(f"llama.cpp's converter does not know the architecture {unsupported.group(1)}",
                                 path=model_dir / "config.json", where="architectures",
                                 hint="run `python convert_hf_to_gguf.py --print-supported-models` from the sdist")
            lines = [ln for ln in log.strip().splitlines() if ln.strip()]
            raise FormaError(f"llama.cpp's converter failed: {lines[-1] if lines else 'no output'}", path=model_dir)
    return time.perf_counter() - start


def tensor_types(gguf_path: Path) -> dict[str, int]:
    """Count tensors by stored type, read back from the file with gguf-py's GGUFReader."""
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf_path))
    return dict(sorted(Counter(t.tensor_type.name for t in reader.tensors).items()))


@contextlib.contextmanager
def _capture_llama_log() -> Iterator[list[str]]:
    """Collect llama.cpp's log lines (it reports quant fallbacks there) instead of printing them."""
    import llama_cpp
    import llama_cpp._logger as llama_logger

    lines: list[str] = []

    @llama_cpp.llama_log_callback  # type: ignore[misc]
    def _collect(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        lines.append(text.decode("utf-8", errors="replace"))

    llama_cpp.llama_log_set(_collect, ctypes.c_void_p(0))
    try:
        yield lines
    finally:
        llama_cpp.llama_log_set(llama_logger.llama_log_callback, ctypes.c_void_p(0))


_FALLBACK = re.compile(r"(?:blk\.\d+\.)?(\S+)\s+- ncols\s+(\d+) not divisible by (\d+) \(required for type\s+(\w+)\)"
                       r" -> falling back to\s+(\w+)")


def _fallback_lines(log: list[str]) -> list[str]:
    """Summarise llama.cpp's per-tensor fallback warnings as one line per (tensor kind, wanted -> used type)."""
    counts: Counter[tuple[str, str, str, str, str]] = Counter()
    other: list[str] = []
    for line in "".join(log).splitlines():
        m = _FALLBACK.search(line)
        if m:
            counts[(m.group(1), m.group(4), m.group(5), m.group(2), m.group(3))] += 1
        elif "fallback" in line.lower():
            other.append(" ".join(line.split()))
    out = [f"{name}: {want} -> {used} x{n} (row length {cols} not divisible by {block})"
           for (name, want, used, cols, block), n in sorted(counts.items())]
    return out + other


def quantize(src: Path, dst: Path, quant: str, n_threads: int = 2) -> QuantInfo:
    """Quantize ``src`` (f16 GGUF) to ``dst`` with llama.cpp's ``llama_model_quantize``; reports fallbacks."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANT_TYPES[quant])
    params.nthread = n_threads
    start = time.perf_counter()
    with _atomic_path(dst) as tmp, _capture_llama_log() as log:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
        if rc != 0:
            tail = [ln.strip() for ln in "".join(log).splitlines() if ln.strip()][-1:] or ["no log"]
            raise FormaError(f"llama_model_quantize failed for {quant} (code {rc}): {tail[0]}", path=src)
    seconds = time.perf_counter() - start
    return QuantInfo(quant, dst, seconds, dst.stat().st_size, tensor_types(dst), _fallback_lines(log))


# --------------------------------------------------------------------------- the whole export

def _stem(model_dir: Path) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", model_dir.resolve().name).strip("-.") or "model"


def export_gguf(model_dir: str | Path, out_dir: str | Path, quants: Sequence[str] = ("q4_k_m",),
                system_prompt: str | None = None, *, modelfile_config: Any = None, verify: bool = True,
                n_threads: int = 2, sdist: Path | None = None, overwrite: bool = True) -> ExportResult:
    """Convert ``model_dir`` (merged 16-bit HF folder) to f16 + ``quants`` GGUFs, write a Modelfile and a
    verification report beside them, and return their paths.

    ``system_prompt`` overrides the release config's (default ``DEFAULT_SYSTEM_PROMPT``); ``modelfile_config`` is a
    :class:`export.modelfile.ModelfileConfig`. The Modelfile points at the first quant (f16 when none is asked for).
    The chat template is translated (or refused) before anything slow runs. The folder goes through
    :func:`common.outdir.output_folder`: it appears only when complete; an earlier export there is replaced as a
    whole only with ``overwrite``.
    """
    from transformers import AutoTokenizer

    from export.modelfile import ModelfileConfig, build_modelfile, end_tokens, translate_chat_template

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    quant_names = parse_quants(quants)
    check_model_dir(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    translation = translate_chat_template(tokenizer)
    stops = end_tokens(tokenizer, model_dir)
    config = modelfile_config or ModelfileConfig()
    if system_prompt is not None:
        config = config.model_copy(update={"system_prompt": system_prompt})
    llama_dir = sdist or llama_sdist()
    served = quant_names[0] if quant_names else "f16"
    with output_folder(out_dir, "gguf", overwrite=overwrite, inputs=[model_dir]) as work:
        check_out_dir(work)
        infos = _convert_all(model_dir, work, quant_names, llama_dir, n_threads)
        write_text_atomic(work / "Modelfile", build_modelfile(infos[served].path.name, translation, stops, config))
        report: dict[str, Any] = {
            "model_dir": str(model_dir), "converter": f"llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} sdist",
            "ggufs": {k: {**v.to_json(), "path": str(out_dir / v.path.name)} for k, v in infos.items()},
            "modelfile": str(out_dir / "Modelfile"), "served_quant": served,
            "template_family": translation.family, "end_tokens": stops,
        }
        if verify:
            from export.gguf_verify import verify_export

            report.update(verify_export(model_dir, {k: v.path for k, v in infos.items()}, tokenizer, stops,
                                        n_threads=n_threads))
        else:
            report["passed"] = None
        write_text_atomic(work / "verification.json", json.dumps(report, indent=2) + "\n")
    for info in infos.values():
        info.path = out_dir / info.path.name
    return ExportResult(model_dir, out_dir, {k: v.path for k, v in infos.items()}, out_dir / "Modelfile",
                        out_dir / "verification.json", report, infos)


def _convert_all(model_dir: Path, work: Path, quant_names: list[str], llama_dir: Path,
                 n_threads: int) -> dict[str, QuantInfo]:
    stem = _stem(model_dir)
    f16 = work / f"{stem}-f16.gguf"
    seconds = convert_to_f16(model_dir, f16, llama_dir)
    infos = {"f16": QuantInfo("f16", f16, seconds, f16.stat().st_size, tensor_types(f16))}
    if not infos["f16"].tensor_types:
        raise FormaError("the converter wrote a GGUF with no tensors", path=model_dir,
                         hint="the folder's weights are empty or unreadable")
    for q in quant_names:
        infos[q] = quantize(f16, work / f"{stem}-{q}.gguf", q, n_threads)
    return infos


if __name__ == "__main__":  # `python -m export.gguf_export --fetch`: used by scripts/setup.sh
    if sys.argv[1:] == ["--fetch"]:
        print(llama_sdist())
    else:
        sys.exit("usage: python -m export.gguf_export --fetch")
