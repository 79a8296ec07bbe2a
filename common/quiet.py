"""Quiet by default: what third-party libraries print goes to a log file, not the user's terminal.

Loading the scorer or a model pulls in torch, transformers, sentence-transformers, bitsandbytes and torchao, and they
print on import and on load: torchao's "Failed to load ... .so" for CUDA kernels a CPU machine cannot load,
torch's pytree deprecation notices, bitsandbytes' "pip install kernels" hint, transformers' "Loading weights" bars
and advisory warnings. All are harmless here and none is ours, so a user should see our progress bars and messages
only. Two mechanisms, because the noise comes from both Python and C code:

- :func:`setup` (called once by the CLI root) sets the libraries' own switches through the environment before they
  are imported (progress bars of the Hugging Face libraries off, transformers' advisory warnings off), and routes
  Python ``warnings`` and the third-party loggers' records to ``<cache>/logs/third-party.log``;
- the same call installs an import hook: when one of the heavy libraries is first imported (wherever that happens,
  and only if it happens), its import runs with the process's stderr file descriptor pointed at that log, which
  also catches what C extensions and import-time handlers write; the terminal handlers they attach to their loggers
  are then swapped for the log. Commands that never load a model never pay for any of it.

``FORMA_DEBUG=1`` or ``FORMA_VERBOSE=1`` turns all of this off. The log's path is in the crash message and docs.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import logging
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType
from typing import Any

#: Loggers of libraries whose records belong in the log file, not on the terminal.
THIRD_PARTY_LOGGERS = ("torch", "torchao", "transformers", "sentence_transformers", "bitsandbytes", "datasets",
                       "huggingface_hub", "accelerate", "peft", "trl", "unsloth", "llama_cpp", "onnxruntime",
                       "model2vec", "argilla", "httpx", "urllib3", "py.warnings")
#: Top-level packages whose import is noisy (C extensions, import-time warnings): imported with stderr on the log.
HEAVY_MODULES = frozenset({"torch", "transformers", "sentence_transformers", "bitsandbytes", "torchao", "peft",
                           "unsloth", "unsloth_zoo", "trl", "llama_cpp", "onnxruntime"})

_state: dict[str, Path | None] = {"log": None}


def enabled() -> bool:
    return not (os.environ.get("FORMA_DEBUG") or os.environ.get("FORMA_VERBOSE"))


def log_path() -> Path:
    from common.model_paths import cache_root

    folder = cache_root() / "logs"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / "third-party.log"


def setup() -> Path | None:
    """Environment switches and log routing; returns the log file (None when turned off)."""
    if not enabled():
        return None
    if _state["log"] is not None:
        return _state["log"]
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # also transformers' "Loading weights" bars
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        path = log_path()
        handler: logging.Handler = logging.FileHandler(path, encoding="utf-8", delay=True)
    except OSError:
        return None  # an unwritable cache must not stop a command; the noise then shows
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.captureWarnings(True)
    for name in THIRD_PARTY_LOGGERS:
        lib = logging.getLogger(name)
        lib.addHandler(handler)
        lib.propagate = False
    sys.meta_path.insert(0, _QuietFinder(path))
    _state["log"] = path
    return path


class _QuietLoader(importlib.abc.Loader):
    """Runs the wrapped loader's ``exec_module`` with fd 2 on the log; everything else is the wrapped loader's."""

    def __init__(self, inner: importlib.abc.Loader, log: Path) -> None:
        self._inner, self._log = inner, log

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self._inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        with _stderr_to(self._log, f"importing {module.__name__}"):
            self._inner.exec_module(module)
        _silence_stream_handlers()

    def __getattr__(self, name: str) -> Any:  # resource readers, is_package, get_code...: the real loader's
        return getattr(self._inner, name)


class _QuietFinder(importlib.abc.MetaPathFinder):
    """Finds the heavy top-level packages as usual, then wraps their loader in :class:`_QuietLoader`."""

    def __init__(self, log: Path) -> None:
        self._log = log

    def find_spec(self, name: str, path: Any = None, target: ModuleType | None = None) -> ModuleSpec | None:
        if name not in HEAVY_MODULES or name in sys.modules:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _QuietLoader(spec.loader, self._log)
        return spec


@contextmanager
def _stderr_to(path: Path, what: str) -> Iterator[None]:
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with path.open("a", encoding="utf-8") as fh:
            fh.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} forma {' '.join(sys.argv[1:])}: {what}\n")
            fh.flush()
            os.dup2(fh.fileno(), 2)
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def _silence_stream_handlers() -> None:
    """Remove terminal handlers that libraries attached to their own loggers on import."""
    for name in THIRD_PARTY_LOGGERS:
        lib = logging.getLogger(name)
        for h in list(lib.handlers):
            if type(h) is logging.StreamHandler:
                lib.removeHandler(h)
    transformers = sys.modules.get("transformers")  # only once it is loaded: never import it for this
    if transformers is not None and hasattr(transformers, "logging"):
        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
