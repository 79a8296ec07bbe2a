"""Training data: read a `forma build` folder, check the tokenizer's chat template, tokenize with an assistant mask.

Why our own masking instead of Unsloth's ``train_on_responses_only``: that helper labels everything from the
assistant header to the next user header, which includes the newline after ``<|im_end|>`` and, on the last turn,
the EOS that TRL appends. Here the chat is rendered once by the tokenizer's own template (the one the Modelfile will
carry), tokenized once (so the token ids are exactly those seen at inference), and a token is a label iff its
characters lie inside an assistant message's content or its closing ``<|im_end|>``. The result is a pre-tokenized
``input_ids``/``labels`` dataset that TRL's ``SFTTrainer`` uses as is.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from common.errors import FormaError, validation_detail
from schemas.conversation import Conversation
from schemas.sample import Sample

IGNORE_INDEX = -100
IM_START, IM_END = "<|im_start|>", "<|im_end|>"


@dataclass(frozen=True)
class ChatData:
    """The chats a run trains and evaluates on, and the hash that names them in reports and manifests."""

    train: list[Conversation]
    test: list[Conversation]
    source: Path
    dataset_hash: str


@dataclass
class TokenizedChats:
    """Token ids with labels (-100 outside assistant turns), plus what was dropped for being too long."""

    input_ids: list[list[int]] = field(default_factory=list)
    labels: list[list[int]] = field(default_factory=list)
    too_long: int = 0

    @property
    def tokens(self) -> int:
        return sum(len(ids) for ids in self.input_ids)

    @property
    def label_tokens(self) -> int:
        return sum(sum(1 for t in lab if t != IGNORE_INDEX) for lab in self.labels)


def _sha256(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(path.read_bytes())
    return h.hexdigest()


def _read_jsonl(path: Path) -> list[tuple[int, Any]]:
    rows = []
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rows.append((number, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise FormaError(f"not valid JSON: {exc.msg}", path=path, where=f"line {number}") from None
    return rows


def _first_error(exc: ValidationError) -> str:
    loc, message = validation_detail(exc)
    return f"{loc}: {message}" if loc else message


def _samples(path: Path) -> tuple[list[Conversation], list[Conversation]]:
    train: list[Conversation] = []
    test: list[Conversation] = []
    for number, row in _read_jsonl(path):
        try:
            sample = Sample.model_validate(row)
        except ValidationError as exc:
            raise FormaError(f"not a Forma sample ({_first_error(exc)})", path=path, where=f"line {number}",
                             hint="expected one schemas.sample.Sample JSON per line, as `forma build` writes") from None
        (train if sample.split == "train" else test).append(sample.conversation)
    return train, test


def _sharegpt(path: Path) -> list[Conversation]:
    chats = []
    for number, row in _read_jsonl(path):
        turns = row.get("conversations") if isinstance(row, dict) else None
        if not isinstance(turns, list):
            raise FormaError("not a ShareGPT record (no 'conversations' list)", path=path, where=f"line {number}")
        try:
            chats.append(Conversation.from_sharegpt(turns))
        except (ValidationError, KeyError, TypeError, ValueError) as exc:
            detail = _first_error(exc) if isinstance(exc, ValidationError) else f"{type(exc).__name__}: {exc}"
            raise FormaError(f"not a valid ShareGPT chat ({detail})", path=path, where=f"line {number}") from None
    return chats


def load_chats(dataset: Path) -> ChatData:
    """Read DIR/samples.jsonl (preferred: it carries the split) or DIR/sharegpt/{train,test}.jsonl.

    The dataset hash is the builder's ``manifest.json`` ``dataset_hash`` when there is one (so the report names the
    same hash as the dataset card), else the SHA-256 of the files read.
    """
    if not dataset.exists():
        raise FormaError("dataset folder not found", path=dataset,
                         hint="point `dataset` at a `forma build` --out folder")
    if not dataset.is_dir():
        raise FormaError("dataset must be a `forma build` output folder, not a file", path=dataset,
                         hint="expected DIR/samples.jsonl or DIR/sharegpt/train.jsonl inside it")
    samples = dataset / "samples.jsonl"
    sharegpt = dataset / "sharegpt" / "train.jsonl"
    if samples.is_file():
        train, test = _samples(samples)
        read = [samples]
    elif sharegpt.is_file():
        train = _sharegpt(sharegpt)
        test_path = sharegpt.with_name("test.jsonl")
        test = _sharegpt(test_path) if test_path.is_file() else []
        read = [sharegpt] + ([test_path] if test_path.is_file() else [])
    else:
        raise FormaError("no samples.jsonl or sharegpt/train.jsonl in the dataset folder", path=dataset,
                         hint="build one with `forma build RECIPE --out DIR`")
    if not train:
        raise FormaError("the dataset has no training chats", path=read[0])
    digest = None
    manifest = dataset / "manifest.json"
    if manifest.is_file():
        try:
            digest = json.loads(manifest.read_text(encoding="utf-8")).get("dataset_hash")
        except json.JSONDecodeError:
            digest = None
    return ChatData(train=train, test=test, source=read[0], dataset_hash=str(digest or _sha256(read)))


def chatml(messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
    """The ChatML text of a chat: what the Modelfile's template renders, and what training must see."""
    text = "".join(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in messages)
    return text + (f"{IM_START}assistant\n" if add_generation_prompt else "")


_PROBE = [{"role": "system", "content": "You are a coach."}, {"role": "user", "content": "How many sets?"},
          {"role": "assistant", "content": "Ten per week."}, {"role": "user", "content": "And reps?"},
          {"role": "assistant", "content": "Six to twelve."}]


def check_chat_template(tokenizer: Any, where: Path | None = None) -> None:
    """Fail unless the tokenizer's own template renders exactly ChatML (the Modelfile's) and its markers are tokens.

    Checked, not assumed: a template that differs from what Ollama will be given makes a model that never stops or
    repeats itself in serving, with no error anywhere (the most-reported problem with fine-tuned GGUFs).
    """
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        raise FormaError("the tokenizer has no chat template", path=where,
                         hint="the base model must ship the ChatML template (tokenizer_config.json chat_template)")
    try:
        rendered = tokenizer.apply_chat_template(_PROBE, tokenize=False)
        prompt = tokenizer.apply_chat_template(_PROBE[:4], tokenize=False, add_generation_prompt=True)
    except Exception as exc:  # a template is user data: any jinja failure is a bad template
        raise FormaError(f"the chat template does not render ({type(exc).__name__}: {exc})", path=where) from None
    expected, expected_prompt = chatml(_PROBE), chatml(_PROBE[:4], add_generation_prompt=True)
    if rendered != expected or prompt != expected_prompt:
        got = rendered if rendered != expected else prompt
        raise FormaError(f"the tokenizer's chat template is not ChatML: it renders {got[:120]!r}...", path=where,
                         hint="the Modelfile carries ChatML; use a ChatML model (Qwen2.5, SmolLM2) or fix its template")
    for marker in (IM_START, IM_END):
        ids = tokenizer.convert_tokens_to_ids(marker)
        if ids is None or ids == tokenizer.unk_token_id or tokenizer.decode([ids]) != marker:
            raise FormaError(f"{marker} is not a single token in this tokenizer", path=where)


def assistant_spans(text: str, messages: list[dict[str, str]]) -> list[tuple[int, int]]:
    """Character spans of each assistant message's content plus its closing ``<|im_end|>`` in ``text``."""
    spans, cursor = [], 0
    for m in messages:
        block = f"{IM_START}{m['role']}\n{m['content']}{IM_END}"
        at = text.find(block, cursor)
        if at < 0:
            raise FormaError(f"the rendered chat does not contain the {m['role']} turn as ChatML",
                             hint="the tokenizer's chat template changes message content")
        if m["role"] == "assistant":
            start = at + len(IM_START) + len("assistant\n")
            spans.append((start, at + len(block)))
        cursor = at + len(block)
    return spans


def tokenize_chat(tokenizer: Any, conversation: Conversation) -> tuple[list[int], list[int]]:
    """Token ids of the rendered chat, and labels that keep exactly the assistant content + ``<|im_end|>`` tokens."""
    messages = conversation.messages()
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    spans = assistant_spans(text, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(enc["input_ids"])
    labels = [IGNORE_INDEX] * len(ids)
    for i, (start, end) in enumerate(enc["offset_mapping"]):
        if end > start and any(s <= start and end <= e for s, e in spans):
            labels[i] = ids[i]
    return ids, labels


def tokenize_chats(tokenizer: Any, chats: list[Conversation], max_seq_length: int) -> TokenizedChats:
    """Tokenize every chat; chats longer than ``max_seq_length`` are dropped (and counted), never cut mid-answer."""
    out = TokenizedChats()
    for chat in chats:
        ids, labels = tokenize_chat(tokenizer, chat)
        if len(ids) > max_seq_length:
            out.too_long += 1
            continue
        out.input_ids.append(ids)
        out.labels.append(labels)
    return out
