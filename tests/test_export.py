"""GGUF export: real conversions of SmolLM2-135M and a tiny Qwen2, checked end to end, plus the error paths.

The Qwen2 is built here from a config (hidden 256 so k-quants apply) with the Qwen2 vocab from the sdist's
ggml-vocab-qwen2.gguf and Qwen2.5's ChatML template. Random weights never produce an end token, so before export it
gets a few optimizer steps teaching it to answer "OK." and end the turn: the stop check then exercises the real
end-token plumbing (GGUF metadata, llama.cpp's end-of-generation set, the chat handler) instead of a length cut-off.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from common.errors import FormaError
from common.outdir import partial_path
from export.gguf_export import (
    LLAMA_CPP_SDIST_SHA256,
    SDIST_NAME,
    export_gguf,
    llama_sdist,
    parse_quants,
    quantize,
)
from export.gotemplate import GoTemplateError, render
from export.modelfile import PROBES, ModelfileConfig, ollama_data, parse_modelfile, translate_chat_template
from schemas.recipe import DEFAULT_SYSTEM_PROMPT

QUANTS = ("q8_0", "q4_k_m")

#: Renders TEMPLATE with Go's own text/template, the data shaped as Ollama's (.Messages of Role/Content structs).
GO_RENDERER = """package main

import (
\t"encoding/json"
\t"os"
\t"strings"
\t"text/template"
)

type Message struct {
\tRole    string
\tContent string
}

func main() {
\tvar job struct {
\t\tTemplate string
\t\tCases    [][]Message
\t}
\tif err := json.NewDecoder(os.Stdin).Decode(&job); err != nil {
\t\tpanic(err)
\t}
\ttmpl := template.Must(template.New("t").Parse(job.Template))
\tout := []string{}
\tfor _, msgs := range job.Cases {
\t\tvar b strings.Builder
\t\tif err := tmpl.Execute(&b, map[string]any{"Messages": msgs}); err != nil {
\t\t\tpanic(err)
\t\t}
\t\tout = append(out, b.String())
\t}
\tjson.NewEncoder(os.Stdout).Encode(out)
}
"""


def go_render(template: str, cases: list[list[dict[str, str]]], tmp: Path) -> list[str]:
    """Render with real Go (golang-go from apt); the tests of the Python renderer stand alone without it."""
    if shutil.which("go") is None:
        pytest.skip("Go is not installed (apt-get install golang-go): cross-check with real text/template skipped")
    src = tmp / "render.go"
    src.write_text(GO_RENDERER)
    job = {"Template": template, "Cases": [[{"Role": m["role"], "Content": m["content"]} for m in c] for c in cases]}
    done = subprocess.run(["go", "run", str(src)], input=json.dumps(job), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout))

# --------------------------------------------------------------------------- fixtures


def _no_partials(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".partial"))


@pytest.fixture(scope="session")
def sdist() -> Path:
    return llama_sdist()


@pytest.fixture(scope="session")
def smol_dir() -> Path:
    from common.model_paths import smollm2_hf

    return smollm2_hf()


@pytest.fixture(scope="session")
def smol_export(smol_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    return export_gguf(smol_dir, tmp_path_factory.mktemp("smol-gguf"), quants=QUANTS)


def _fit_to_end_turns(model: Any, tokenizer: Any, max_steps: int = 60, target_loss: float = 0.02) -> float:
    """AdamW steps on chats whose every reply is "OK." (loss on reply tokens and their <|im_end|> only) until the
    loss is small enough for a clear margin; returns the last loss."""
    import torch

    questions = ["Hi! Reply with one short sentence: what is a squat?", "Thanks. Now one short sentence about rest.",
                 "How much protein do I need?", "Is running good for the heart?"]
    rows = []
    for i, q in enumerate(questions):
        chat = [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}, {"role": "user", "content": q},
                {"role": "assistant", "content": "OK."},
                {"role": "user", "content": questions[(i + 1) % len(questions)]},
                {"role": "assistant", "content": "OK."}]
        text = tokenizer.apply_chat_template(chat, tokenize=False)
        enc = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
        spans, pos, head = [], 0, "<|im_start|>assistant\n"
        while (start := text.find(head, pos)) >= 0:
            end = text.index("<|im_end|>", start) + len("<|im_end|>")
            spans.append((start + len(head), end))
            pos = end
        labels = [t if any(s <= a < e for s, e in spans) else -100
                  for t, (a, _) in zip(enc["input_ids"], enc["offset_mapping"], strict=True)]
        rows.append((enc["input_ids"], labels))
    n = max(len(r[0]) for r in rows)
    ids = torch.tensor([r[0] + [tokenizer.pad_token_id] * (n - len(r[0])) for r in rows])
    att = torch.tensor([[1] * len(r[0]) + [0] * (n - len(r[0])) for r in rows])
    target = torch.tensor([r[1] + [-100] * (n - len(r[1])) for r in rows])[:, 1:]
    keep = target != -100
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(max_steps):
        hidden = model.model(input_ids=ids, attention_mask=att).last_hidden_state[:, :-1][keep]
        loss = torch.nn.functional.cross_entropy(model.lm_head(hidden), target[keep])
        if loss.item() < target_loss:
            break
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    return float(loss.item())


@pytest.fixture(scope="session")
def qwen_dir(sdist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    torch.set_num_threads(2)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("qwen2-tiny")
    tokenizer = AutoTokenizer.from_pretrained(str(sdist / "models"), gguf_file="ggml-vocab-qwen2.gguf")
    tokenizer.chat_template = (sdist / "models" / "templates" / "Qwen-Qwen2.5-7B-Instruct.jinja").read_text()
    config = Qwen2Config(hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True,
                         max_position_embeddings=4096, eos_token_id=tokenizer.eos_token_id)
    model: Any = Qwen2ForCausalLM(config)
    loss = _fit_to_end_turns(model, tokenizer)
    prompt = tokenizer.apply_chat_template([{"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
                                            {"role": "user", "content": "Anything?"}],
                                           tokenize=False, add_generation_prompt=True)
    enc = tokenizer(prompt, return_tensors="pt")
    with torch.inference_mode():
        gen = model.generate(**enc, max_new_tokens=6, do_sample=False)
    reply = str(tokenizer.decode(gen[0][enc["input_ids"].shape[1]:]))
    assert reply.startswith("OK.<|im_end|>"), f"the fit (loss {loss:.3f}) did not teach it to end the turn: {reply!r}"
    model.to(torch.float16).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def qwen_export(qwen_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    return export_gguf(qwen_dir, tmp_path_factory.mktemp("qwen-gguf"), quants=QUANTS)


# --------------------------------------------------------------------------- the real exports


def _check_export(result: Any, model_dir: Path) -> dict[str, Any]:
    report = json.loads(result.report.read_text())
    assert set(result.ggufs) == {"f16", *QUANTS}
    for path in result.ggufs.values():
        assert path.is_file() and path.parent == result.out_dir
    assert _no_partials(result.out_dir) == []
    checks = report["verification"]["ggufs"]
    for name in ("f16", *QUANTS):
        entry = checks[name]
        assert entry["metadata"]["passed"], entry["metadata"]
        assert entry["tokenization_matches"] == "4/4"
        turns = entry["chat"]["turns"]
        assert len(turns) == 2
        for turn in turns:  # stopped on an end token, nothing of the template in the reply
            assert turn["finish_reason"] == "stop" and turn["leaks"] == [], turn
        assert all(entry["chat"]["end_tokens_are_eog"].values())
        assert entry["perplexity"] > 1
    assert checks["f16"]["greedy_agreement"] >= 0.98
    assert checks["q8_0"]["greedy_agreement"] >= 0.95
    assert report["passed"] is True and result.passed
    return report


@pytest.mark.slow
def test_smollm2_exports_loads_chats_and_agrees(smol_export: Any, smol_dir: Path) -> None:
    report = _check_export(smol_export, smol_dir)
    q4 = report["ggufs"]["q4_k_m"]
    # SmolLM2's 576-wide rows cannot take k-quants: the fallbacks are reported and visible in the tensor types.
    assert q4["fallbacks"] and any("576 not divisible by 256" in line for line in q4["fallbacks"])
    assert q4["tensor_types"].get("Q5_0", 0) > 0
    assert report["ggufs"]["q8_0"]["tensor_types"].get("Q8_0", 0) > 0


@pytest.mark.slow
def test_qwen2_exports_with_k_quants_and_agrees(qwen_export: Any, qwen_dir: Path) -> None:
    report = _check_export(qwen_export, qwen_dir)
    q4 = report["ggufs"]["q4_k_m"]
    assert q4["fallbacks"] == [] and q4["tensor_types"].get("Q4_K", 0) > 0
    meta = report["verification"]["ggufs"]["f16"]["metadata"]
    assert meta["architecture"] == "qwen2" and meta["tokenizer_pre"] == "qwen2"
    assert set(meta["end_token_ids"]) == {"<|im_end|>", "<|endoftext|>"}


CONVERSATIONS = [
    [{"role": "user", "content": "How often should I train legs?"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "Plan a\nrest day."}],
    [{"role": "system", "content": "Custom system."}, {"role": "user", "content": "Q1"},
     {"role": "assistant", "content": "A1"}, {"role": "user", "content": "Q2"}, {"role": "assistant", "content": "A2"}],
]


def _check_modelfile(result: Any, model_dir: Path, tmp: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    mf = parse_modelfile(result.modelfile.read_text())
    assert mf["from"] == f"./{result.ggufs['q8_0'].name}"
    assert mf["system"] == DEFAULT_SYSTEM_PROMPT
    report = json.loads(result.report.read_text())
    assert mf["parameters"]["stop"] == report["end_tokens"]
    assert tokenizer.eos_token in mf["parameters"]["stop"] and "<|im_end|>" in mf["parameters"]["stop"]
    assert mf["parameters"]["temperature"] == [0.7] and mf["parameters"]["top_p"] == [0.9]
    for messages in CONVERSATIONS:
        gen = messages[-1]["role"] != "assistant"
        want = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
        assert render(mf["template"], ollama_data(messages)) == want
    # As Ollama serves it: the Modelfile's SYSTEM goes in front when the request has no system message.
    messages = CONVERSATIONS[1]
    served = [{"role": "system", "content": mf["system"]}, *messages]
    want = tokenizer.apply_chat_template(served, tokenize=False, add_generation_prompt=True)
    assert render(mf["template"], ollama_data(served)) == want
    # And Go's own text/template renders the same bytes as the tokenizer.
    cases = [*CONVERSATIONS, served]
    wants = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=c[-1]["role"] != "assistant")
             for c in cases]
    assert go_render(mf["template"], cases, tmp) == wants


@pytest.mark.slow
def test_smollm2_modelfile_template_renders_like_tokenizer(smol_export: Any, smol_dir: Path, tmp_path: Path) -> None:
    _check_modelfile(smol_export, smol_dir, tmp_path)


@pytest.mark.slow
def test_qwen2_modelfile_template_renders_like_tokenizer(qwen_export: Any, qwen_dir: Path, tmp_path: Path) -> None:
    _check_modelfile(qwen_export, qwen_dir, tmp_path)


# --------------------------------------------------------------------------- templates


@pytest.fixture(scope="session")
def smol_tokenizer(smol_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(smol_dir))


@pytest.mark.parametrize("template", ["meta-llama-Llama-3.2-3B-Instruct.jinja", "Qwen-Qwen3-0.6B.jinja",
                                      "HuggingFaceTB-SmolLM3-3B.jinja"])
def test_untranslatable_templates_are_refused(template: str, smol_tokenizer: Any, sdist: Path) -> None:
    tok = smol_tokenizer
    saved = tok.chat_template
    try:
        tok.chat_template = (sdist / "models" / "templates" / template).read_text()
        with pytest.raises(FormaError, match="ChatML"):
            translate_chat_template(tok)
    finally:
        tok.chat_template = saved


def test_qwen25_template_translates_with_its_default_system(smol_tokenizer: Any, sdist: Path) -> None:
    tok = smol_tokenizer
    saved = tok.chat_template
    try:
        tok.chat_template = (sdist / "models" / "templates" / "Qwen-Qwen2.5-7B-Instruct.jinja").read_text()
        t = translate_chat_template(tok)
    finally:
        tok.chat_template = saved
    assert t.default_system == "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."


def test_real_go_renders_probes_like_jinja(smol_tokenizer: Any, sdist: Path, tmp_path: Path) -> None:
    """The translated TEMPLATE through Go's text/template equals the Jinja template on every probe (two templates)."""
    tok = smol_tokenizer
    saved = tok.chat_template
    try:
        for template in (saved, (sdist / "models" / "templates" / "Qwen-Qwen2.5-7B-Instruct.jinja").read_text()):
            tok.chat_template = template
            go = translate_chat_template(tok).go_template
            wants = [tok.apply_chat_template(p, tokenize=False, add_generation_prompt=p[-1]["role"] != "assistant")
                     for p in PROBES]
            assert go_render(go, PROBES, tmp_path) == wants
    finally:
        tok.chat_template = saved


def test_template_that_trims_content_is_refused(smol_tokenizer: Any) -> None:
    tok = smol_tokenizer
    saved = tok.chat_template
    try:  # ChatML markers, but content is trimmed: probe 4 (padded content) must catch it
        tok.chat_template = saved.replace("message['content']", "message['content'] | trim")
        with pytest.raises(FormaError, match="differs from ChatML"):
            translate_chat_template(tok)
    finally:
        tok.chat_template = saved


def test_go_renderer_follows_go_semantics() -> None:
    data = {"Messages": [{"Role": "user", "Content": "a"}, {"Role": "assistant", "Content": "b"}], "Empty": ""}
    tpl = ("{{- range $i, $m := .Messages }}\n  {{- if eq $i 0 }}[first]{{ else if eq $m.Role \"assistant\" }}[bot]"
           "{{ else }}[x]{{ end -}}\n  {{ $m.Content }}|{{ len (slice $.Messages $i) }}\n{{- end }}"
           "{{ if .Empty }}E{{ else }}-{{ end }}{{ (index .Messages 1).Role }}{{ .Missing }}")
    assert render(tpl, data) == "[first]a|2[bot]b|1-assistant<no value>"
    assert render("{{ or .Empty \"d\" }} {{ and 0 (index .Messages 9) }} {{ not .Empty }}", data) == "d 0 true"
    for bad in ("{{ .Messages | len }}", "{{ with .Messages }}x{{ end }}", "{{ if 1 }}", "{{ end }}",
                "{{ index .Messages 5 }}", "{{ printf \"%s\" .Empty }}"):
        with pytest.raises(GoTemplateError):
            render(bad, data)


def test_release_config_sets_system_and_sampling(tmp_path: Path) -> None:
    from export.modelfile import load_modelfile_config

    cfg_path = tmp_path / "release.yaml"
    cfg_path.write_text("system_prompt: Short answers.\ntemperature: 0.2\ntop_p: 0.8\n")
    cfg = load_modelfile_config(cfg_path)
    assert cfg == ModelfileConfig(system_prompt="Short answers.", temperature=0.2, top_p=0.8)
    cfg_path.write_text("temperature: 9\n")
    with pytest.raises(FormaError, match="temperature"):
        load_modelfile_config(cfg_path)


# --------------------------------------------------------------------------- errors and atomic writes


def test_missing_model_dir_is_a_clear_error(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(FormaError, match="model folder not found"):
        export_gguf(tmp_path / "nope", out)
    assert not out.exists()


def test_cli_reports_missing_model_dir(tmp_path: Path) -> None:
    from cli.app import app

    res = CliRunner().invoke(app, ["export", str(tmp_path / "nope"), "--quant", "q8_0"])
    assert res.exit_code == 2
    assert "model folder not found" in res.output


def test_unknown_quant_is_refused() -> None:
    assert parse_quants("q4_k_m, Q8_0,q4_k_m,f16") == ["q4_k_m", "q8_0"]
    with pytest.raises(FormaError, match="unknown quant type 'q9_9'"):
        parse_quants("q4_k_m,q9_9")


@pytest.fixture()
def foreign_arch_dir(smol_dir: Path, tmp_path: Path) -> Path:
    """SmolLM2's tokenizer and weights under an architecture name llama.cpp's converter does not know."""
    d = tmp_path / "foreign"
    d.mkdir()
    for f in smol_dir.iterdir():
        if f.name != "config.json":
            (d / f.name).symlink_to(f)
    config = json.loads((smol_dir / "config.json").read_text())
    config["architectures"] = ["FormaTestForCausalLM"]
    (d / "config.json").write_text(json.dumps(config))
    return d


@pytest.mark.slow
def test_unknown_architecture_is_a_clear_error_and_leaves_nothing(foreign_arch_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(FormaError, match="does not know the architecture FormaTestForCausalLM"):
        export_gguf(foreign_arch_dir, out, quants=("q8_0",))
    assert not out.exists() and not partial_path(out).exists()  # nothing under a final name, no work left (#18)


def test_unwritable_output_is_a_clear_error(smol_dir: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(FormaError, match=r"cannot create the output folder: .*a-file is a file, not a folder"):
        export_gguf(smol_dir, blocker / "out", quants=("q8_0",))


def test_failed_quantization_leaves_no_file(tmp_path: Path) -> None:
    src = tmp_path / "broken-f16.gguf"
    src.write_bytes(b"GGUF" + b"\0" * 64)
    dst = tmp_path / "model-q8_0.gguf"
    with pytest.raises(FormaError, match="llama_model_quantize failed"):
        quantize(src, dst, "q8_0")
    assert not dst.exists() and _no_partials(tmp_path) == []


def test_sdist_hash_is_checked(tmp_path: Path, sdist: Path) -> None:
    root = tmp_path / "llama-cpp-sdist"
    root.mkdir()
    (root / f"{SDIST_NAME}.tar.gz").write_bytes(b"not the archive")
    with pytest.raises(FormaError, match="sha256 mismatch"):
        llama_sdist(tmp_path, fetch=False)
    assert (root / f"{SDIST_NAME}.tar.gz.bad").is_file() and not (root / f"{SDIST_NAME}.tar.gz").exists()
    with pytest.raises(FormaError, match="not cached"):
        llama_sdist(tmp_path, fetch=False)
    # The real, cached archive unpacks into a converter tree stamped with the pinned hash.
    shutil.copy(sdist.parents[2] / f"{SDIST_NAME}.tar.gz", root / f"{SDIST_NAME}.tar.gz")
    got = llama_sdist(tmp_path, fetch=False)
    assert (got / "convert_hf_to_gguf.py").is_file() and (got / "gguf-py" / "gguf").is_dir()
    assert (got.parents[1] / ".sha256").read_text().strip() == LLAMA_CPP_SDIST_SHA256


# --------------------------------------------------------------------------- Arabic through the Qwen2 GGUF (#15)


def _arabic_chat() -> list[dict[str, str]]:
    """A real Arabic exchange: the recipe's Arabic system prompt and a fact's question, answer and follow-up from
    recipes/translations/ar (digits as the Arabic recipe writes them, Arabic-Indic)."""
    from common.arabic import to_arabic_digits
    from common.yaml_io import read_yaml
    from schemas.recipe import DEFAULT_SYSTEM_PROMPTS

    raw, _ = read_yaml(Path(__file__).resolve().parents[1] / "recipes" / "translations" / "ar" / "knowledge_1.yaml",
                       "translation")
    fact = raw["facts"]["tech-rep-tempo-moderate"]
    follow = fact["follow_ups"][0]
    return [{"role": "system", "content": DEFAULT_SYSTEM_PROMPTS["ar"]},
            {"role": "user", "content": fact["questions"][0]},
            {"role": "assistant", "content": to_arabic_digits(fact["answer"])},
            {"role": "user", "content": follow["question"]},
            {"role": "assistant", "content": to_arabic_digits(follow["answer"])},
            {"role": "user", "content": fact["questions"][2]}]


@pytest.mark.slow
def test_arabic_chat_round_trips_through_qwen2_gguf_and_modelfile(qwen_export: Any, qwen_dir: Path,
                                                                  tmp_path: Path) -> None:
    """An Arabic multi-turn chat: the Modelfile's Go template (ours and Go's own) renders the tokenizer's exact text,
    every GGUF's llama.cpp tokenizer gives the HF token ids for it and decodes them back to the same bytes, and the
    f16 GGUF predicts the same greedy next tokens over the Arabic prompt as the HF model."""
    import torch
    from llama_cpp import Llama
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer: Any = AutoTokenizer.from_pretrained(str(qwen_dir))
    mf = parse_modelfile(qwen_export.modelfile.read_text())
    chat = _arabic_chat()
    assert any("\u0660" <= ch <= "\u0669" for ch in chat[2]["content"])  # Arabic-Indic digits are in it
    # the generation prompt (ends on a user turn), the whole chat up to an answer, and the chat as Ollama serves it
    # without a system message (the Modelfile's SYSTEM goes in front)
    cases = [chat, chat[:5], [{"role": "system", "content": mf["system"]}, *chat[1:]]]
    wants = [tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=c[-1]["role"] != "assistant")
             for c in cases]
    assert [render(mf["template"], ollama_data(c)) for c in cases] == wants
    hf_ids = [list(tokenizer(w, add_special_tokens=False)["input_ids"]) for w in wants]
    # byte-level BPE splits Arabic letters inside characters; decoded, the ids give the text back exactly
    assert all(tokenizer.decode(ids) == w for ids, w in zip(hf_ids, wants, strict=True))
    for name, path in qwen_export.ggufs.items():
        vocab = Llama(model_path=str(path), vocab_only=True, verbose=False)
        try:
            for want, ids in zip(wants, hf_ids, strict=True):
                assert vocab.tokenize(want.encode("utf-8"), add_bos=False, special=True) == ids, name
                assert vocab.detokenize(ids, special=True) == want.encode("utf-8"), name
        finally:
            vocab.close()

    # the model side: the f16 GGUF reads the Arabic ids as the HF model does (the same greedy next token at >= 98%
    # of the chat's positions, as _check_export asks of f16) and starts its reply with the same token
    import numpy as np

    prompt = hf_ids[0]
    model: Any = AutoModelForCausalLM.from_pretrained(str(qwen_dir), dtype=torch.float32)
    with torch.inference_mode():
        hf_next = model(torch.tensor([prompt])).logits[0].argmax(-1).tolist()
    llm = Llama(model_path=str(qwen_export.ggufs["f16"]), n_ctx=len(prompt) + 64, n_batch=512, n_threads=2,
                logits_all=True, verbose=False, seed=0)
    try:
        llm.eval(prompt)
        gguf_next = np.array(llm.scores[:len(prompt)], dtype=np.float32).argmax(axis=1).tolist()
    finally:
        llm.close()
    agree = sum(a == b for a, b in zip(hf_next, gguf_next, strict=True)) / len(prompt)
    assert agree >= 0.98 and gguf_next[-1] == hf_next[-1], (agree, gguf_next[-1], hf_next[-1])

    # and Go's own text/template renders the same bytes
    assert go_render(mf["template"], cases, tmp_path) == wants
