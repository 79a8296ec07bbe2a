"""Runners: put the suites' prompts to a model and bring back text (and option log-likelihoods).

Three ways in, one interface (``generate_all`` / ``choices_all``):
- ``GGUFRunner``: llama-cpp-python in-process, greedy with a fixed seed. Multiple choice uses a second context with
  ``logits_all`` and scores each option from the logits of the position *before* each token (the off-by-one that
  llama-cpp-python's server gets wrong), reusing the prompt's KV cache across options.
- ``EndpointRunner``: any OpenAI-compatible ``/v1/chat/completions`` (Ollama, llama-cpp-python's server, vLLM).
  Servers give no prompt log-probs, so multiple-choice cases are skipped with that reason.
- ``HFRunner``: an HF folder through lm-eval with our tasks under ``eval/tasks`` (never ``--model gguf``: its
  log-likelihoods are wrong with llama-cpp-python's server). Prompts are rendered with the model's own chat template
  here, so the HF and GGUF runs see byte-identical prompts and the drift check compares like with like.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.errors import FormaError
from common.hashing import sha256_file
from schemas.eval_suite import Case

TASKS_DIR = Path(__file__).parent / "tasks"


@dataclass
class Generation:
    text: str
    finish_reason: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0


@dataclass
class ChoiceScores:
    """Sum of log-probabilities of each option's tokens, and each option's length in bytes (for normalising)."""

    logprobs: list[float]
    lengths: list[int]
    seconds: float = 0.0




def auto_threads(max_threads: int = 2) -> int:
    """Threads for llama.cpp: ``max_threads`` on a quiet machine, 1 when the cores are already busy.

    llama.cpp's threads meet at a barrier for every layer, so one descheduled thread stalls the rest: on this
    2-core machine at load average 10, 32 tokens took 80 s with 2 threads and 4.5 s with 1.
    """
    cpus = os.cpu_count() or 1
    free = cpus - os.getloadavg()[0]
    return max(1, min(max_threads, cpus, int(free + 0.5)))


class Runner:
    """Base: loops over cases with ``generate`` / ``choice``; batch runners override the ``*_all`` methods."""

    kind = "base"
    supports_choice = True
    skip_reason = ""

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind}

    def generate(self, case: Case, max_tokens: int) -> Generation:
        raise NotImplementedError

    def choice(self, case: Case) -> ChoiceScores:
        raise NotImplementedError

    def chat(self, messages: list[dict[str, str]], max_tokens: int = 8) -> str:
        """Free-form chat, used by the LLM judge."""
        raise NotImplementedError

    def generate_all(self, cases: list[Case], default_max_tokens: int,
                     progress: Callable[[int, int], None] | None = None) -> dict[str, Generation]:
        """Every case's answer; ``progress(done, total)`` after each one."""
        out: dict[str, Generation] = {}
        for c in cases:
            out[c.id] = self.generate(c, c.max_tokens or default_max_tokens)
            if progress:
                progress(len(out), len(cases))
        return out

    def choices_all(self, cases: list[Case]) -> dict[str, ChoiceScores]:
        return {c.id: self.choice(c) for c in cases}

    def close(self) -> None:
        return None


def check_gguf(path: Path) -> None:
    """Fail with one clear line before llama.cpp prints pages: missing file, wrong magic, truncated header."""
    if not path.is_file():
        raise FormaError("model file not found", path=path)
    with path.open("rb") as fh:
        head = fh.read(8)
    if head[:4] != b"GGUF":
        raise FormaError("not a GGUF file (its first bytes are not 'GGUF')", path=path,
                         hint="pass a .gguf file, an HF model folder, or --endpoint URL")
    if len(head) < 8 or path.stat().st_size < 1024:
        raise FormaError("GGUF file is truncated", path=path)


class GGUFRunner(Runner):
    """llama-cpp-python in-process: greedy decoding, fixed seed, the GGUF's own chat template and stop tokens."""

    kind = "gguf"

    def __init__(self, path: Path, *, n_threads: int = 0, n_ctx: int = 2048, seed: int = 0, workers: int = 0) -> None:
        check_gguf(path)
        from common.errors import require

        require("llama_cpp", "llm")
        self.path = path
        self.n_threads = n_threads or auto_threads()
        # ``workers``: llama.cpp contexts that generate side by side in ``generate_all`` (0: one per thread)
        self.workers = max(1, min(workers or self.n_threads, self.n_threads))
        self.n_ctx = n_ctx
        self.seed = seed
        self.llm = self._load(logits_all=False)
        self._scorer: Any = None
        self._formatter: Any = None
        self._pool: list[Any] = []

    def _load(self, *, logits_all: bool, threads: int = 0) -> Any:
        from llama_cpp import Llama

        threads = threads or self.n_threads
        try:
            return Llama(model_path=str(self.path), n_ctx=self.n_ctx, n_threads=threads, n_threads_batch=threads,
                         seed=self.seed, logits_all=logits_all, verbose=False)
        except (ValueError, RuntimeError) as exc:
            raise FormaError(f"llama.cpp could not load this GGUF ({exc}); the file is corrupt, truncated or of an "
                             "unsupported architecture", path=self.path) from None

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": str(self.path), "name": self.path.name, "sha256": sha256_file(self.path),
                "size_bytes": self.path.stat().st_size, "n_threads": self.n_threads, "workers": self.workers,
                "seed": self.seed, "decoding": "greedy (temperature 0)"}

    def generate_all(self, cases: list[Case], default_max_tokens: int,
                     progress: Callable[[int, int], None] | None = None) -> dict[str, Generation]:
        """Every case's answer. With ``workers`` > 1 the cases are shared out over that many llama.cpp contexts of
        ``n_threads // workers`` threads each, run from Python threads (llama.cpp's decode releases the GIL).

        Why: a 135M model's decode step is a few hundred small operators, and llama.cpp's threads meet at a barrier
        after each one, so on this 2-core machine one thread per answer beats two threads on one answer: bare
        generation of the gate's 465 answers took 376.3 s over two 1-thread contexts against 564.1 s in one 2-thread
        context, the same 465 answers (``python bench/eval.py --q8 --skip-overhead --gate-vs-bare --threads 2``,
        bench/results/eval_gate_q8_2threads-2026-12-01-v13.json). An answer does not depend
        on the thread count or on which context produced it: each dot product is summed by one thread whatever the
        count, and greedy decoding of one chat at a time reads no other chat's state.
        """
        if self.workers <= 1 or len(cases) <= 1:
            return super().generate_all(cases, default_max_tokens, progress)
        from concurrent.futures import ThreadPoolExecutor
        from queue import SimpleQueue

        threads = max(1, self.n_threads // self.workers)
        while len(self._pool) < self.workers:
            self._pool.append(self._load(logits_all=False, threads=threads))
        free: SimpleQueue[Any] = SimpleQueue()
        for llm in self._pool:
            free.put(llm)
        done = 0
        lock = threading.Lock()

        def one(case: Case) -> Generation:
            nonlocal done
            llm = free.get()
            try:
                gen = self._generate_with(llm, case, case.max_tokens or default_max_tokens)
            finally:
                free.put(llm)
            with lock:
                done += 1
                if progress:
                    progress(done, len(cases))
            return gen

        with ThreadPoolExecutor(self.workers, thread_name_prefix="forma-gguf") as pool:
            answers = list(pool.map(one, cases))
        return {c.id: g for c, g in zip(cases, answers, strict=True)}

    def chat(self, messages: list[dict[str, str]], max_tokens: int = 8) -> str:
        out = self.llm.create_chat_completion(messages=messages, temperature=0.0, max_tokens=max_tokens,
                                              seed=self.seed)
        return str(out["choices"][0]["message"]["content"] or "")

    def generate(self, case: Case, max_tokens: int) -> Generation:
        return self._generate_with(self.llm, case, max_tokens)

    def _generate_with(self, llm: Any, case: Case, max_tokens: int) -> Generation:
        start = time.perf_counter()
        out = llm.create_chat_completion(messages=case.messages(), temperature=0.0, max_tokens=max_tokens,
                                         seed=self.seed)
        choice = out["choices"][0]
        usage = out.get("usage") or {}
        return Generation(text=str(choice["message"]["content"] or ""), finish_reason=str(choice["finish_reason"]),
                          prompt_tokens=int(usage.get("prompt_tokens", 0)),
                          completion_tokens=int(usage.get("completion_tokens", 0)),
                          seconds=time.perf_counter() - start)

    def render(self, messages: list[dict[str, str]]) -> str:
        """The exact prompt text the chat template makes, ending with the assistant's header."""
        if self._formatter is None:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            template = self.llm.metadata.get("tokenizer.chat_template")
            if not template:
                raise FormaError("the GGUF carries no chat template (tokenizer.chat_template)", path=self.path)
            eos = self.llm.detokenize([self.llm.token_eos()], special=True).decode("utf-8", "replace")
            bos = self.llm.detokenize([self.llm.token_bos()], special=True).decode("utf-8", "replace")
            self._formatter = Jinja2ChatFormatter(template=template, eos_token=eos, bos_token=bos)
        return str(self._formatter(messages=messages).prompt)

    def choice(self, case: Case) -> ChoiceScores:
        import numpy as np

        if self._scorer is None:
            self._scorer = self._load(logits_all=True)
        llm = self._scorer
        assert case.choices is not None
        start = time.perf_counter()
        ctx = llm.tokenize(self.render(case.messages()).encode("utf-8"), add_bos=True, special=True)
        llm.reset()
        llm.eval(ctx)
        logprobs: list[float] = []
        for option in case.choices:
            cont = llm.tokenize(option.encode("utf-8"), add_bos=False, special=False)
            llm.n_tokens = len(ctx)  # keep the prompt's KV cache, drop the previous option's tokens
            llm.eval(cont)
            total = 0.0
            for i, tok in enumerate(cont):
                row = np.asarray(llm.scores[len(ctx) + i - 1], dtype=np.float64)  # logits that predicted this token
                m = row.max()
                total += float(row[tok] - m - np.log(np.exp(row - m).sum()))
            logprobs.append(total)
        return ChoiceScores(logprobs=logprobs, lengths=[len(o.encode("utf-8")) for o in case.choices],
                            seconds=time.perf_counter() - start)

    def close(self) -> None:
        for llm in (self.llm, self._scorer, *self._pool):
            if llm is not None:
                llm.close()
        self._pool = []


class EndpointRunner(Runner):
    """Any OpenAI-compatible chat endpoint. Greedy (temperature 0) with a seed where the server honours one."""

    kind = "endpoint"
    supports_choice = False
    skip_reason = "an OpenAI-compatible endpoint gives no prompt log-probs; run multiple choice on the GGUF or HF model"

    def __init__(self, url: str, *, model: str | None = None, api_key: str | None = None, seed: int = 0,
                 timeout: float = 120.0, params: dict[str, Any] | None = None) -> None:
        """``params`` go into every request body as they are: server-specific sampling settings, e.g.
        ``{"repeat_penalty": 1.0}`` (llama-cpp-python's server and Ollama default to 1.1, in-process to 1.0)."""
        import httpx

        base = url.rstrip("/")
        self.base = base if base.endswith("/v1") else base + "/v1"
        self.seed = seed
        self.params = dict(params or {})
        headers = {"Authorization": f"Bearer {api_key or os.environ.get('OPENAI_API_KEY', 'none')}"}
        self.client = httpx.Client(timeout=timeout, headers=headers)
        self.model = model or self._first_model()

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        url = self.base + path
        try:
            resp = self.client.request(method, url, **kwargs)
        except httpx.ConnectError:
            raise FormaError(f"cannot connect to {url}", hint="is the server running? e.g. `ollama serve` or "
                             "`python -m llama_cpp.server --model X.gguf`") from None
        except httpx.TimeoutException:
            raise FormaError(f"{url} did not answer in time") from None
        except httpx.HTTPError as exc:
            raise FormaError(f"request to {url} failed: {exc}") from None
        if resp.status_code >= 400:
            raise FormaError(f"{url} answered HTTP {resp.status_code}: {resp.text[:200]}")
        try:
            return resp.json()
        except ValueError:
            raise FormaError(f"{url} did not answer JSON (is this an OpenAI-compatible /v1 endpoint?)") from None

    def _first_model(self) -> str:
        data = self._request("GET", "/models").get("data") or []
        if not data:
            raise FormaError(f"{self.base}/models lists no model", hint="pass --endpoint-model NAME")
        return str(data[0]["id"])

    def describe(self) -> dict[str, Any]:
        extra = "".join(f", {k}={v}" for k, v in self.params.items())
        return {"kind": self.kind, "url": self.base, "name": self.model, "decoding": f"temperature 0{extra}"}

    def _complete(self, messages: list[dict[str, str]], max_tokens: int) -> tuple[dict[str, Any], dict[str, Any]]:
        body = {"model": self.model, "messages": messages, "temperature": 0.0, "max_tokens": max_tokens,
                "seed": self.seed, **self.params}
        out = self._request("POST", "/chat/completions", json=body)
        try:
            return out["choices"][0], out.get("usage") or {}
        except (KeyError, IndexError, TypeError):
            raise FormaError(f"{self.base}/chat/completions answered without choices: {str(out)[:200]}") from None

    def chat(self, messages: list[dict[str, str]], max_tokens: int = 8) -> str:
        return str(self._complete(messages, max_tokens)[0]["message"].get("content") or "")

    def generate(self, case: Case, max_tokens: int) -> Generation:
        start = time.perf_counter()
        choice, usage = self._complete(case.messages(), max_tokens)
        return Generation(text=str(choice["message"].get("content") or ""),
                          finish_reason=str(choice.get("finish_reason") or "unknown"),
                          prompt_tokens=int(usage.get("prompt_tokens") or 0),
                          completion_tokens=int(usage.get("completion_tokens") or 0),
                          seconds=time.perf_counter() - start)

    def close(self) -> None:
        self.client.close()


class HFRunner(Runner):
    """An HF model folder through lm-eval (``--model hf``) with our tasks, offline, on local JSONL data."""

    kind = "hf"

    def __init__(self, path: Path, *, work_dir: Path, n_threads: int = 2, dtype: str = "float32") -> None:
        if not (path / "config.json").is_file():
            raise FormaError("not an HF model folder (no config.json)", path=path)
        from common.errors import require

        require("lm_eval", "eval")
        self.path = path
        self.work = work_dir
        self.n_threads = n_threads
        self.dtype = dtype
        self._tok: Any = None

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "path": str(self.path), "name": self.path.name, "dtype": self.dtype,
                "runner": "lm-eval --model hf", "decoding": "greedy"}

    def _tokenizer(self) -> Any:
        if self._tok is None:
            from transformers import AutoTokenizer

            self._tok = AutoTokenizer.from_pretrained(str(self.path))
        return self._tok

    def render(self, messages: list[dict[str, str]]) -> str:
        return str(self._tokenizer().apply_chat_template(messages, tokenize=False, add_generation_prompt=True))

    def _lm_eval(self, task: str, docs: list[dict[str, Any]], gen_kwargs: str | None = None) -> list[dict[str, Any]]:
        """Run one of our tasks on ``docs``; return lm-eval's logged samples in doc order."""
        run = self.work / task
        (run / "data").mkdir(parents=True, exist_ok=True)
        with (run / "data" / f"{task}.jsonl").open("w", encoding="utf-8") as fh:
            for d in docs:
                fh.write(json.dumps(d, ensure_ascii=False) + "\n")
        cmd = [sys.executable, "-m", "lm_eval", "run", "--model", "hf", "--model_args",
               f"pretrained={self.path},dtype={self.dtype}", "--device", "cpu", "--tasks", task,
               "--include_path", str(TASKS_DIR), "--batch_size", "1", "--log_samples", "--output_path",
               str(run / "out"), "--seed", "0"]
        if gen_kwargs:
            cmd += ["--gen_kwargs", gen_kwargs]
        env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "OMP_NUM_THREADS": str(self.n_threads), "TOKENIZERS_PARALLELISM": "false"}
        proc = subprocess.run(cmd, cwd=run, env=env, capture_output=True, text=True, check=False)
        (run / "lm_eval.log").write_text(proc.stdout + "\n" + proc.stderr, encoding="utf-8")
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
            raise FormaError(f"lm-eval failed on task {task}: {tail[0][:300]}", path=run / "lm_eval.log")
        files = sorted((run / "out").rglob(f"samples_{task}_*.jsonl"))
        if not files:
            raise FormaError(f"lm-eval wrote no samples for {task}", path=run / "out")
        rows = [json.loads(line) for line in files[-1].read_text(encoding="utf-8").splitlines() if line.strip()]
        return sorted(rows, key=lambda r: int(r["doc_id"]))

    def generate_all(self, cases: list[Case], default_max_tokens: int,
                     progress: Callable[[int, int], None] | None = None) -> dict[str, Generation]:
        # lm-eval runs a whole group at once, so there is no per-answer progress to report
        out: dict[str, Generation] = {}
        by_max: dict[int, list[Case]] = {}
        for c in cases:
            by_max.setdefault(c.max_tokens or default_max_tokens, []).append(c)
        tok = self._tokenizer() if cases else None
        for max_tokens, group in sorted(by_max.items()):
            docs = [{"id": c.id, "text": self.render(c.messages())} for c in group]
            start = time.perf_counter()
            rows = self._lm_eval("forma_generate", docs, gen_kwargs=f"max_gen_toks={max_tokens}")
            per = (time.perf_counter() - start) / max(len(group), 1)
            for c, row in zip(group, rows, strict=True):
                text = str(row["resps"][0][0])
                n = len(tok(text, add_special_tokens=False)["input_ids"]) if tok is not None else 0
                out[c.id] = Generation(text=text, finish_reason="length" if n >= max_tokens else "stop",
                                       completion_tokens=n, seconds=per)
        return out

    def choices_all(self, cases: list[Case]) -> dict[str, ChoiceScores]:
        if not cases:
            return {}
        docs = [{"id": c.id, "text": self.render(c.messages()), "choices": c.choices, "answer": c.answer}
                for c in cases]
        start = time.perf_counter()
        rows = self._lm_eval("forma_choice", docs)
        per = (time.perf_counter() - start) / len(cases)
        out: dict[str, ChoiceScores] = {}
        for c, row in zip(cases, rows, strict=True):
            assert c.choices is not None
            logprobs = [float(r[0][0]) for r in row["resps"]]
            out[c.id] = ChoiceScores(logprobs=logprobs, lengths=[len(o.encode("utf-8")) for o in c.choices],
                                     seconds=per)
        return out


def open_runner(model: str | None, *, endpoint: str | None = None, endpoint_model: str | None = None,
                endpoint_params: dict[str, Any] | None = None, n_threads: int = 0, seed: int = 0,
                work_dir: Path | None = None) -> Runner:
    """Pick the runner from what MODEL is: a .gguf file, an HF folder, or an endpoint URL."""
    if endpoint:
        return EndpointRunner(endpoint, model=endpoint_model, seed=seed, params=endpoint_params)
    if not model:
        raise FormaError("name a model: a .gguf file, an HF model folder, or --endpoint URL")
    path = Path(model)
    if path.is_dir():
        return HFRunner(path, work_dir=work_dir or Path("reports") / "_lm_eval", n_threads=n_threads or 2)
    if not path.exists():
        raise FormaError("model not found", path=path)
    return GGUFRunner(path, n_threads=n_threads, seed=seed)
