"""`forma train`: bad input fails before any weights load; the loss mask is exactly the assistant tokens; a real
SmolLM2-135M LoRA run on CPU lowers the loss, resumes from its checkpoint, and its merged model loads and generates."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from common.errors import FormaError
from tests.helpers.train import schema_samples, small_dataset, write_samples
from train.config import TrainConfig, load_config
from train.data import IGNORE_INDEX, IM_END, load_chats, tokenize_chat


@pytest.fixture(scope="session")
def smollm2() -> Path:
    from common.model_paths import smollm2_hf

    return smollm2_hf()


@pytest.fixture(scope="session")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_dataset(tmp_path_factory.mktemp("train-data") / "ds", n=48, seed=0)


def _config(tmp_path: Path, model: Path | str, data: Path, **extra: object) -> TrainConfig:
    fields: dict[str, object] = dict(base_model=str(model), dataset=data, output_dir=tmp_path / "run", max_steps=2,
                                     torch_threads=2, max_seq_length=512)
    fields.update(extra)
    return TrainConfig.model_validate(fields)


# ---- bad input: each a FormaError before training (and, where possible, before any heavy import) ----

def test_missing_base_model(tmp_path: Path, dataset: Path) -> None:
    from train.sft import train

    started = time.time()
    with pytest.raises(FormaError, match="base model folder not found"):
        train(_config(tmp_path, tmp_path / "no-such-model", dataset))
    assert time.time() - started < 10


def test_dataset_in_wrong_format(tmp_path: Path, smollm2: Path) -> None:
    from train.sft import train

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "samples.jsonl").write_text(json.dumps({"instruction": "hi", "output": "hello"}) + "\n")
    with pytest.raises(FormaError, match=r"not a Forma sample") as info:
        train(_config(tmp_path, smollm2, bad))
    assert info.value.where == "line 1"
    (bad / "samples.jsonl").unlink()
    with pytest.raises(FormaError, match=r"no samples\.jsonl or sharegpt/train\.jsonl"):
        train(_config(tmp_path, smollm2, bad))
    sharegpt = bad / "sharegpt"
    sharegpt.mkdir()
    (sharegpt / "train.jsonl").write_text(json.dumps({"conversations": [{"from": "gpt", "value": "x"}]}) + "\n")
    with pytest.raises(FormaError, match="not a valid ShareGPT chat"):
        train(_config(tmp_path, smollm2, bad, eval_split="fraction"))


def test_sequence_longer_than_the_model_can_take(tmp_path: Path, smollm2: Path, dataset: Path) -> None:
    from train.sft import train

    limit = json.loads((smollm2 / "config.json").read_text())["max_position_embeddings"]
    with pytest.raises(FormaError, match="longer than the model's context") as info:
        train(_config(tmp_path, smollm2, dataset, max_seq_length=limit + 1))
    assert info.value.where == "max_seq_length"


def test_config_errors_name_the_field(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("base_model: m\ndataset: d\noutput_dir: o\nmax_steps: 5\nnum_epochs: 1\n")
    with pytest.raises(FormaError, match="not both"):
        load_config(path)
    path.write_text("base_model: m\ndataset: d\noutput_dir: o\nmax_steps: 5\nlora: {r: 0}\n")
    with pytest.raises(FormaError) as info:
        load_config(path)
    assert info.value.where == "lora.r"
    with pytest.raises(FormaError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_resume_without_checkpoint_and_4bit_on_cpu(tmp_path: Path, smollm2: Path, dataset: Path) -> None:
    import torch

    from train.sft import train

    with pytest.raises(FormaError, match="no checkpoint to resume from"):
        train(_config(tmp_path, smollm2, dataset), resume=True)
    if not torch.cuda.is_available():
        with pytest.raises(FormaError, match="needs a CUDA GPU"):
            train(_config(tmp_path, smollm2, dataset, quantization="4bit"))


def test_a_bad_fused_mlp_setting_is_refused_before_the_model_loads(tmp_path: Path, smollm2: Path, dataset: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from train.sft import preflight

    monkeypatch.setenv("FORMA_FUSED_MLP", "row")
    with pytest.raises(FormaError, match="FORMA_FUSED_MLP='row'") as info:
        preflight(_config(tmp_path, smollm2, dataset))
    assert "tiles, rows or quack" in str(info.value)
    for value in ("0", "auto", "tiles", "rows", "quack"):
        monkeypatch.setenv("FORMA_FUSED_MLP", value)
        preflight(_config(tmp_path, smollm2, dataset))
    # so is a file of quack tiles that cannot be read: named, before the weights load
    tiles = tmp_path / "tiles.json"
    tiles.write_text('{"gate": []}')
    monkeypatch.setenv("FORMA_QUACK_TILES", str(tiles))
    with pytest.raises(FormaError, match=r"tiles\.json") as info:
        preflight(_config(tmp_path, smollm2, dataset))
    assert "expected an object of gated, dgated, down, dgrad" in str(info.value)


def test_chat_template_that_is_not_chatml(tmp_path: Path, smollm2: Path, dataset: Path) -> None:
    """A Zephyr-style template on the same model: refused after the tokenizer loads, before the weights do."""
    from train.sft import train

    model = tmp_path / "zephyr"
    model.mkdir()
    for f in smollm2.iterdir():
        if f.suffix != ".safetensors" and f.name != "chat_template.jinja":
            shutil.copy(f, model / f.name)
    (model / "model.safetensors").write_bytes(b"not weights: the run must stop before reading them")
    (model / "chat_template.jinja").write_text(
        "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
    with pytest.raises(FormaError, match="not ChatML"):
        train(_config(tmp_path, model, dataset))


def test_dataset_hash_is_the_manifests(tmp_path: Path, dataset: Path) -> None:
    chats = load_chats(dataset)
    manifest = dataset / "manifest.json"
    if manifest.is_file():
        assert chats.dataset_hash == json.loads(manifest.read_text())["dataset_hash"]
    assert chats.train and chats.test


# ---- the loss mask, token by token ----

def test_loss_mask_is_exactly_the_assistant_tokens(smollm2: Path) -> None:
    from transformers import AutoTokenizer

    from train.data import check_chat_template

    tok: Any = AutoTokenizer.from_pretrained(str(smollm2))
    check_chat_template(tok)
    chat = next(s.conversation for s in schema_samples(16, seed=3) if len(s.conversation.turns) == 4)
    ids, labels = tokenize_chat(tok, chat)
    assert len(ids) == len(labels)
    im_end = tok.convert_tokens_to_ids(IM_END)
    # what the loss should see, built independently: each assistant reply tokenized alone, then <|im_end|>
    expected: list[int] = []
    for turn in chat.turns:
        if turn.role.value == "assistant":
            expected += tok(turn.content, add_special_tokens=False)["input_ids"] + [im_end]
    kept = [t for t, lab in zip(ids, labels, strict=True) if lab != IGNORE_INDEX]
    assert kept == expected
    # labels equal the input ids where kept, and every kept run starts right after "<|im_start|>assistant\n"
    assert all(lab in (IGNORE_INDEX, t) for t, lab in zip(ids, labels, strict=True))
    text = tok.apply_chat_template(chat.messages(), tokenize=False)
    runs = [i for i in range(len(ids)) if labels[i] != IGNORE_INDEX and (i == 0 or labels[i - 1] == IGNORE_INDEX)]
    assert len(runs) == 2
    for start in runs:
        assert tok.decode(ids[:start]).endswith("<|im_start|>assistant\n")
    assert tok.decode(ids) == text
    # system, user turns, role headers and the newline after <|im_end|> are all masked
    masked = tok.decode([t for t, lab in zip(ids, labels, strict=True) if lab == IGNORE_INDEX])
    assert chat.system in masked and chat.turns[0].content in masked



@pytest.fixture(scope="session")
def qwen25_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Qwen2.5 tokenizer as a model folder holds it: llama.cpp's Qwen2 vocab GGUF + Qwen2.5's ChatML template,
    both from the llama-cpp-python sdist (as tests/test_export.py and bench/train_gpu.py build it)."""
    from transformers import AutoTokenizer

    from export.gguf_export import llama_sdist

    models = llama_sdist() / "models"
    tok: Any = AutoTokenizer.from_pretrained(str(models), gguf_file="ggml-vocab-qwen2.gguf")
    tok.chat_template = (models / "templates" / "Qwen-Qwen2.5-7B-Instruct.jinja").read_text(encoding="utf-8")
    out = tmp_path_factory.mktemp("qwen25-tokenizer")
    tok.save_pretrained(str(out))
    return out


@pytest.fixture(scope="session")
def arabic_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small real build of the Arabic recipe (30% of the chats in Arabic)."""
    from factory.build import build_dataset

    out = tmp_path_factory.mktemp("ar-data") / "ds"
    build_dataset(Path(__file__).resolve().parents[1] / "recipes" / "forma-fitness-ar.yaml", out, seed=0, total=60)
    return out


def test_loss_mask_on_arabic_chats_with_the_qwen25_tokenizer(qwen25_tokenizer_dir: Path,
                                                             arabic_dataset: Path) -> None:
    """Every Arabic chat of a real build renders through Qwen2.5's template as ChatML and is masked token by token:
    the labelled tokens are each assistant reply tokenized alone + <|im_end|>; system, user turns and headers are not.
    None is longer than the 7B Arabic config's max_seq_length."""
    import json as _json

    from transformers import AutoTokenizer

    from schemas.sample import Sample
    from train.data import chatml, check_chat_template, tokenize_chats

    tok: Any = AutoTokenizer.from_pretrained(str(qwen25_tokenizer_dir))  # as `forma train` loads it
    check_chat_template(tok, where=qwen25_tokenizer_dir)
    samples = [Sample.model_validate(_json.loads(line))
               for line in (arabic_dataset / "samples.jsonl").read_text(encoding="utf-8").splitlines() if line]
    arabic = [s.conversation for s in samples if s.language == "ar"]
    assert len(arabic) == 18 and max(len(c.turns) for c in arabic) >= 4  # 30% of 60; two-exchange ones too
    im_end = tok.convert_tokens_to_ids(IM_END)
    for chat in arabic:
        messages = chat.messages()
        text = tok.apply_chat_template(messages, tokenize=False)
        assert text == chatml(messages) and chat.system.startswith("أنت Forma AI")
        ids, labels = tokenize_chat(tok, chat)
        assert tok.decode(ids) == text and all(lab in (IGNORE_INDEX, t) for t, lab in zip(ids, labels, strict=True))
        expected: list[int] = []
        for turn in chat.turns:
            if turn.role.value == "assistant":
                expected += tok(turn.content, add_special_tokens=False)["input_ids"] + [im_end]
        assert [t for t, lab in zip(ids, labels, strict=True) if lab != IGNORE_INDEX] == expected
        runs = [i for i in range(len(ids)) if labels[i] != IGNORE_INDEX and (i == 0 or labels[i - 1] == IGNORE_INDEX)]
        assert len(runs) == len(chat.turns) // 2
        for start in runs:
            assert tok.decode(ids[:start]).endswith("<|im_start|>assistant\n")
        masked = tok.decode([t for t, lab in zip(ids, labels, strict=True) if lab == IGNORE_INDEX])
        assert chat.system in masked and all(t.content in masked for t in chat.turns if t.role.value == "user")
    # the 7B Arabic config's sequence length keeps every chat of the build (none dropped as too long)
    root = Path(__file__).resolve().parents[1]
    seq = load_config(root / "train" / "configs" / "qwen25-7b-ar-gpu.yaml").max_seq_length
    data = load_chats(arabic_dataset)
    assert tokenize_chats(tok, data.train + data.test, seq).too_long == 0

# ---- a real run on CPU ----

@pytest.mark.slow
def test_cpu_training_lowers_loss_resumes_and_merges(tmp_path: Path, smollm2: Path, dataset: Path) -> None:
    from train.report import read_report
    from train.sft import train

    config = _config(tmp_path, smollm2, dataset, max_steps=6, batch_size=4, learning_rate=1e-3,
                     lora={"r": 8, "alpha": 16}, eval_steps=100, eval_max_samples=6, save_steps=3,
                     reports_dir=tmp_path / "reports")
    result = train(config)
    report = read_report(result.report)
    m = report["metrics"]
    losses = [loss for _, loss in report["loss_curves"]["train"]]
    assert len(losses) == 6  # per-step losses come from different batches: the fall is checked below on fixed chats
    assert m["eval_loss_last"] < m["eval_loss_first"], m
    assert 0.5 < m["non_padding_share"] <= 1.0 and m["tokens_per_s"] > 0 and m["peak_rss_gib"] > 0
    assert report["dataset_hash"] == load_chats(dataset).dataset_hash and report["config_hash"] == config.digest()
    assert report["optimizer"] == "adamw_torch"  # "auto" on the CPU
    # every step's loss line went through train/deferred_log.py (on the CPU the values are ready at once)
    assert report["deferred_logging"] == {"lines": 6, "written_late": 0}
    assert report["rope_grad_layout"] is False  # a CUDA-only lever (train/rope_layout.py): the CPU keeps Unsloth's path
    assert report["flash_attention_4"] is None  # CUDA packed runs only (train/flash_attention4.py)
    assert (result.report.parent / "loss.png").stat().st_size > 0
    assert (tmp_path / "reports" / "train-run" / "train_report.json").is_file()
    assert (result.adapter_dir / "adapter_config.json").is_file()

    # --resume continues from the last checkpoint to the new max_steps
    resumed = train(config.model_copy(update={"max_steps": 8}), resume=True)
    again = read_report(resumed.report)
    assert again["resumed_from"].endswith("checkpoint-6") and again["metrics"]["steps"] == 8

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert resumed.merged_dir is not None
    tok: Any = AutoTokenizer.from_pretrained(str(resumed.merged_dir))
    model: Any = AutoModelForCausalLM.from_pretrained(str(resumed.merged_dir), dtype=torch.float32)
    prompt: Any = tok.apply_chat_template([{"role": "user", "content": "How much protein should I eat?"}],
                                     add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    new = out[0, prompt["input_ids"].shape[1]:]
    assert len(new) > 0 and tok.decode(new, skip_special_tokens=True).strip()

    # the training loss fell: the same training chats score a lower loss after training than before it
    base: Any = AutoModelForCausalLM.from_pretrained(str(smollm2), dtype=torch.float32)
    chats = load_chats(dataset).train[:8]

    def mean_loss(lm: Any) -> float:
        losses = []
        with torch.no_grad():
            for chat in chats:
                ids = tok.apply_chat_template(chat.messages(), return_tensors="pt", return_dict=True)["input_ids"]
                losses.append(float(lm(input_ids=ids, labels=ids).loss))
        return sum(losses) / len(losses)

    before, after = mean_loss(base), mean_loss(model)
    assert after < before, (before, after)


def test_schema_samples_round_trip(tmp_path: Path) -> None:
    path = write_samples(schema_samples(10, seed=1), tmp_path / "d")
    chats = load_chats(path)
    assert len(chats.train) + len(chats.test) == 10 and len(chats.dataset_hash) == 64


def test_packed_attention_gqa_wrapper_pairs_heads_as_grouped_query_attention(monkeypatch: pytest.MonkeyPatch) -> None:
    """The torch 2.11 shim: a varlen kernel without GQA, given repeated K/V heads, must equal SDPA's enable_gqa."""
    import itertools

    import torch
    import torch.nn.functional as F

    from train import packed_attention

    def varlen_without_gqa(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1)):  # type: ignore[no-untyped-def]
        assert q.shape[1] == k.shape[1], "a kernel without enable_gqa needs as many K/V heads as query heads"
        bounds = cu_q.tolist()
        return torch.cat([F.scaled_dot_product_attention(q[a:b].transpose(0, 1), k[a:b].transpose(0, 1),
                                                         v[a:b].transpose(0, 1), is_causal=True).transpose(0, 1)
                          for a, b in itertools.pairwise(bounds)])

    torch.manual_seed(0)
    lengths, heads, kv_heads, dim = [5, 9, 2], 8, 2, 16
    q = torch.randn(sum(lengths), heads, dim)
    k, v = torch.randn(sum(lengths), kv_heads, dim), torch.randn(sum(lengths), kv_heads, dim)
    cu = torch.tensor([0, 5, 14, 16], dtype=torch.int32)
    out = packed_attention.with_gqa(varlen_without_gqa)(q, k, v, cu, cu, 9, 9, enable_gqa=True, window_size=(-1, 0))
    expected = torch.cat([F.scaled_dot_product_attention(q[a:b].transpose(0, 1), k[a:b].transpose(0, 1),
                                                         v[a:b].transpose(0, 1), is_causal=True,
                                                         enable_gqa=True).transpose(0, 1)
                          for a, b in ((0, 5), (5, 14), (14, 16))])
    torch.testing.assert_close(out, expected)
    # and the shim stays off where it is not needed: no CUDA here, or switched off by the user
    assert packed_attention.enable() is False
    monkeypatch.setenv("FORMA_TORCH_VARLEN", "0")
    assert packed_attention.enable() is False


def test_shipped_configs_load_and_the_gpu_config_is_what_the_bench_measured() -> None:
    """Every config under train/configs validates; the GPU one keeps the settings bench/train_gpu.py measured."""
    import importlib.util

    from train.config import load_config
    from train.sft import optimizer_name

    root = Path(__file__).resolve().parents[1]
    configs = {p.stem: load_config(p) for p in sorted((root / "train" / "configs").glob("*.yaml"))}
    assert {"smollm2-cpu", "qwen25-3b-gpu", "qwen25-7b-ar-gpu"} <= set(configs)
    spec = importlib.util.spec_from_file_location("bench_train_gpu", root / "bench" / "train_gpu.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    # the 3B config is what `run` measures by default, the 7B Arabic one what `--arch qwen25-7b` measures
    for name in ("qwen25-3b-gpu", "qwen25-7b-ar-gpu"):
        gpu = configs[name]
        assert (gpu.max_seq_length, gpu.batch_size, gpu.gradient_accumulation) == (bench.SEQ, bench.PACKED_ROWS, 1)
        assert (gpu.quantization, gpu.packing, gpu.gradient_checkpointing, gpu.device) == ("4bit", True, bench.GC,
                                                                                          "cuda")
        lora = bench.LORA
        assert (gpu.lora.r, gpu.lora.alpha, gpu.lora.dropout) == (lora["r"], lora["alpha"], lora["dropout"])
        assert list(gpu.lora.target_modules) == bench.LORA["target_modules"]
        assert gpu.learning_rate == bench.LR and optimizer_name(gpu.optimizer, "cuda") == bench.OPTIM
    assert configs["qwen25-7b-ar-gpu"].base_model.endswith("Qwen2.5-7B-Instruct")
    assert configs["qwen25-7b-ar-gpu"].dataset.name == "forma-fitness-ar"
    assert bench.ARCHS["qwen25-7b"] == bench.QWEN25_7B and bench.ARCHS["qwen25-3b"] == bench.QWEN25_3B


def test_bench_7b_architecture_and_arabic_chats(tmp_path: Path) -> None:
    """bench/train_gpu.py --arch qwen25-7b builds the published Qwen2.5-7B (parameter count of its safetensors
    index, 15,231,233,024 bytes in bf16; counted on the meta device, no memory), and prepare --recipe --language ar
    keeps exactly the asked number of real Arabic chats from a build of the Arabic recipe."""
    import importlib.util

    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("bench_train_gpu", root / "bench" / "train_gpu.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    for arch, published in (("qwen25-7b", 7_615_616_512), ("qwen25-3b", 3_085_938_688)):
        with torch.device("meta"):
            model = Qwen2ForCausalLM(Qwen2Config(**bench.ARCHS[arch]))
        assert sum(p.numel() for p in model.parameters()) == published == bench.ARCH_PARAMS[arch], arch
    assert not bench.QWEN25_7B["tie_word_embeddings"] and bench.QWEN25_7B["rope_theta"] == 1e6
    bench.build_chats(root / "recipes" / "forma-fitness-ar.yaml", tmp_path / "ds", 12, "ar")
    chats = load_chats(tmp_path / "ds")
    assert len(chats.train) + len(chats.test) == 12
    rows = [json.loads(line) for line in (tmp_path / "ds" / "samples.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {r["language"] for r in rows} == {"ar"} and not (tmp_path / "ds-build").exists()
