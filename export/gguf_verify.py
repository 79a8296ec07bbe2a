"""Checks run after every export, so a GGUF that drifts from the trained model is caught before release.

1. Metadata: each GGUF's architecture, chat template and end tokens agree with the HF config and tokenizer.
2. Chat: a two-turn chat through llama-cpp-python (the GGUF's own template, greedy) ends because an end token was
   produced (finish_reason "stop"), with no template text leaking into the reply.
3. Drift: teacher-forced greedy next-token agreement with the HF model over fixed rendered chats (the argmax of HF
   logits against the argmax of llama.cpp logits at every position, same token ids fed to both), plus perplexity
   per GGUF and for the HF model, and whether llama.cpp tokenizes the rendered text to the same ids.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from schemas.recipe import DEFAULT_SYSTEM_PROMPT

#: Minimum greedy agreement with the HF model per GGUF kind; kinds not listed are reported, not gated.
AGREEMENT_THRESHOLDS = {"f16": 0.98, "q8_0": 0.95}

#: Fixed chats for the drift figures: short fitness exchanges in the shape the model is trained and served on.
DRIFT_CHATS: list[list[dict[str, str]]] = [
    [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
     {"role": "user", "content": "How many rest days should a beginner take each week?"},
     {"role": "assistant", "content": "Most beginners do well with two or three rest days a week, spread between "
                                      "training days, so muscles have time to recover and adapt."},
     {"role": "user", "content": "And how long should each workout be?"},
     {"role": "assistant", "content": "Thirty to sixty minutes is plenty. Start with the shorter end and add time "
                                      "as the sessions start to feel easy."}],
    [{"role": "user", "content": "What is a good protein target for building muscle?"},
     {"role": "assistant", "content": "A common evidence-based target is 1.6 grams of protein per kilogram of body "
                                      "weight per day, split over three or four meals."}],
    [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT},
     {"role": "user", "content": "My knee hurts when I squat. Should I keep going?"},
     {"role": "assistant", "content": "Stop the exercise that causes the pain. If it persists or there is swelling, "
                                      "see a doctor or physiotherapist before you train it again."},
     {"role": "user", "content": "Can I still train my upper body?"},
     {"role": "assistant", "content": "Yes, as long as it does not hurt the knee: seated presses, rows and pull-downs "
                                      "keep you active while it heals."}],
    [{"role": "user", "content": "Give me one tip for sleeping better after evening workouts."},
     {"role": "assistant", "content": "Finish hard training at least two hours before bed and keep the bedroom "
                                      "cool and dark."}],
]

#: The chat used for the stop test: two user turns; the reply to the first is fed back before the second.
CHAT_TURNS = ["Hi! Reply with one short sentence: what is a squat?", "Thanks. Now one short sentence about rest."]

LEAK_MARKERS = ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|im_sep|>", "im_start|>", "<|im_")


def _ids(tokenizer: Any, messages: list[dict[str, str]]) -> tuple[str, list[int]]:
    text = str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False))
    return text, [int(i) for i in tokenizer(text, add_special_tokens=False)["input_ids"]]


def _nll(logits: Any, ids: list[int]) -> tuple[float, int]:
    """Summed negative log-likelihood of ids[1:] given the logits at positions [:-1] (numpy, float64)."""
    import numpy as np

    x = np.asarray(logits[:len(ids) - 1], dtype=np.float64)
    x = x - x.max(axis=1, keepdims=True)
    logz = np.log(np.exp(x).sum(axis=1))
    picked = x[np.arange(len(ids) - 1), ids[1:]]
    return float((logz - picked).sum()), len(ids) - 1


def _gguf_metadata(path: Path) -> dict[str, Any]:
    from gguf import GGUFReader

    reader = GGUFReader(str(path))

    def field(name: str) -> Any:
        f = reader.fields.get(name)
        return f.contents() if f is not None else None

    return {"architecture": field("general.architecture"), "chat_template": field("tokenizer.chat_template"),
            "tokenizer_model": field("tokenizer.ggml.model"), "tokenizer_pre": field("tokenizer.ggml.pre"),
            "eos_token_id": field("tokenizer.ggml.eos_token_id"), "bos_token_id": field("tokenizer.ggml.bos_token_id"),
            "tokens": field("tokenizer.ggml.tokens")}


#: HF ``model_type`` -> the GGUF ``general.architecture`` llama.cpp's converter writes for it.
_ARCH_NAMES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "mistral": "llama", "gemma": "gemma",
               "gemma2": "gemma2", "phi3": "phi3"}


def expected_tokenizer_model(model_dir: Path) -> str | None:
    """"gpt2" for a byte-level BPE tokenizer.json (SmolLM2, Qwen2): llama.cpp must not read it as SentencePiece,
    which happens when tokenizer.json carries byte_fallback, and makes llama.cpp abort on the first tokenization."""
    import json

    path = model_dir / "tokenizer.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    if data.get("model", {}).get("type") == "BPE" and '"ByteLevel"' in json.dumps(data.get("pre_tokenizer")):
        return "gpt2"
    return None


def check_metadata(path: Path, tokenizer: Any, model_type: str, stops: list[str],
                   tokenizer_model: str | None = None) -> dict[str, Any]:
    meta = _gguf_metadata(path)
    tokens: list[str] = meta["tokens"] or []
    want_arch = _ARCH_NAMES.get(model_type, model_type)
    end_ids = {s: int(tokenizer.convert_tokens_to_ids(s)) for s in stops}
    end_ok = {s: (0 <= i < len(tokens) and tokens[i] == s) for s, i in end_ids.items()}
    checks = {
        "architecture": meta["architecture"] == want_arch,
        "chat_template": meta["chat_template"] == tokenizer.chat_template,
        "eos_token": meta["eos_token_id"] == tokenizer.eos_token_id,
        "end_tokens_in_vocab": all(end_ok.values()),
        "vocab_size": len(tokens) >= len(tokenizer),
        "tokenizer_model": tokenizer_model is None or meta["tokenizer_model"] == tokenizer_model,
    }
    return {"architecture": meta["architecture"], "expected_architecture": want_arch,
            "tokenizer_model": meta["tokenizer_model"], "tokenizer_pre": meta["tokenizer_pre"],
            "eos_token_id": meta["eos_token_id"], "end_token_ids": end_ids, "checks": checks,
            "passed": all(checks.values())}


def _chat_check(llm: Any, stops: list[str], end_ids: list[int], system_prompt: str) -> dict[str, Any]:
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    eog = {str(i): bool(llama_cpp.llama_vocab_is_eog(vocab, i)) for i in end_ids}
    messages: list[dict[str, str]] = [{"role": "system", "content": system_prompt}]
    turns = []
    for user in CHAT_TURNS:
        messages.append({"role": "user", "content": user})
        out = llm.create_chat_completion(messages=messages, max_tokens=64, temperature=0.0, seed=0)
        choice = out["choices"][0]
        reply = choice["message"]["content"] or ""
        leaks = [m for m in (*LEAK_MARKERS, *stops) if m in reply]
        turns.append({"reply": reply, "finish_reason": choice["finish_reason"],
                      "completion_tokens": out["usage"]["completion_tokens"], "leaks": leaks})
        messages.append({"role": "assistant", "content": reply})
    stopped = all(t["finish_reason"] == "stop" and not t["leaks"] for t in turns)
    return {"turns": turns, "end_tokens_are_eog": eog, "passed": stopped and all(eog.values())}


def verify_export(model_dir: Path, ggufs: Mapping[str, Path], tokenizer: Any, stops: list[str], *,
                  n_threads: int = 2, system_prompt: str = DEFAULT_SYSTEM_PROMPT) -> dict[str, Any]:
    """Run all checks on every GGUF; returns the report's ``verification`` section and an overall ``passed``."""
    import json

    import numpy as np
    import torch
    from llama_cpp import Llama
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(n_threads)
    model_type = json.loads((model_dir / "config.json").read_text()).get("model_type", "")
    rendered = [_ids(tokenizer, chat) for chat in DRIFT_CHATS]
    end_ids = [int(tokenizer.convert_tokens_to_ids(s)) for s in stops]
    tok_model = expected_tokenizer_model(model_dir)

    # The HF reference: the 16-bit weights computed in float32 (CPU half matmuls are slow and not what we compare).
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model.eval()
    hf_argmax: list[Any] = []
    hf_nll, n_pred = 0.0, 0
    with torch.inference_mode():
        for _, ids in rendered:
            logits = model(torch.tensor([ids])).logits[0].float().numpy()
            hf_argmax.append(logits[:-1].argmax(axis=1))
            s, n = _nll(logits, ids)
            hf_nll, n_pred = hf_nll + s, n_pred + n
    del model
    hf_ppl = math.exp(hf_nll / n_pred)

    n_ctx = max(len(ids) for _, ids in rendered) + 16
    results: dict[str, Any] = {}
    for name, path in ggufs.items():
        entry: dict[str, Any] = {"metadata": check_metadata(path, tokenizer, model_type, stops, tok_model)}
        if not entry["metadata"]["passed"]:  # loading a GGUF with a wrong vocab can abort the process
            entry.update(passed=False, skipped="llama.cpp checks skipped: metadata disagrees with the tokenizer")
            results[name] = entry
            continue
        llm = Llama(model_path=str(path), n_ctx=max(n_ctx, 1024), n_batch=512, n_threads=n_threads,
                    logits_all=True, verbose=False, seed=0)
        try:
            agree, total, nll, same_tok = 0, 0, 0.0, 0
            for (text, ids), ref in zip(rendered, hf_argmax, strict=True):
                same_tok += int(llm.tokenize(text.encode("utf-8"), add_bos=False, special=True) == ids)
                llm.reset()
                llm.eval(ids)
                scores = np.array(llm.scores[:len(ids)], dtype=np.float32)
                agree += int((scores[:-1].argmax(axis=1) == ref).sum())
                total += len(ids) - 1
                nll += _nll(scores, ids)[0]
            entry["greedy_agreement"] = round(agree / total, 4)
            entry["positions"] = total
            entry["perplexity"] = round(math.exp(nll / total), 4)
            entry["tokenization_matches"] = f"{same_tok}/{len(rendered)}"
            entry["chat"] = _chat_check(llm, stops, end_ids, system_prompt)
        finally:
            llm.close()
        threshold = AGREEMENT_THRESHOLDS.get(name)
        entry["agreement_threshold"] = threshold
        entry["passed"] = bool(entry["metadata"]["passed"] and entry["chat"]["passed"]
                               and (threshold is None or entry["greedy_agreement"] >= threshold)
                               and same_tok == len(rendered))
        results[name] = entry
    return {"verification": {"hf_perplexity": round(hf_ppl, 4), "positions": n_pred, "chats": len(rendered),
                             "ggufs": results},
            "passed": all(r["passed"] for r in results.values())}
