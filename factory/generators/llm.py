"""LLM generation through distilabel's LLM classes: a llama.cpp GGUF in-process, or any OpenAI-compatible server.

Shape of a conversation: for each user turn of a slot, a *user simulator* call writes the user's message in the
persona's voice about a question the knowledge base holds, then a *teacher* call answers it with the slot's facts
(claim, numbers, expert answer, safety note) in its system prompt. Every reply is parsed strictly and every answer
grounding-checked (grounding.py); an optional judge (judge.py) scores the finished chat. Any failure rejects the
whole slot with a reason (:class:`GenerationRejected`), and the build refills the category's quota with new slots.

Batches run turn-synchronously across slots, so an OpenAI-compatible server sees ``concurrency`` requests at once.
Every call goes through :class:`~factory.generators.cache.LLMCache` (keyed by model, messages and parameters,
committed per call), which is what makes ``forma build --resume`` pay only for calls not yet made.

Determinism: each call carries its own seed (from the slot's seed, the attempt and the turn), and the in-process
model's state is reset before each call, so a prompt gives the same reply whatever ran before it: a resumed build
equals an uninterrupted one.

Heavy imports (distilabel, llama_cpp, openai) happen inside functions so importing this module stays cheap.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.arabic import to_arabic_digits
from common.errors import FormaError
from factory.generators.cache import LLMCache, Reply, request_key
from factory.generators.grounding import check_answer
from factory.generators.judge import Judge
from factory.generators.prompts import (
    PROMPT_LANGUAGES,
    MalformedReply,
    TurnPlan,
    assistant_system,
    on_topic,
    parse_assistant,
    parse_user,
    plan_turns,
    user_simulator_messages,
)
from factory.planner import Slot
from factory.recipe_loader import LoadedRecipe
from schemas.conversation import Conversation, Role, Turn
from schemas.recipe import GeneratorConfig, JudgeConfig
from schemas.sample import Lineage, Sample

Messages = list[dict[str, str]]
Request = tuple[Messages, dict[str, Any]]


class GenerationRejected(Exception):
    """A slot the generator could not fill acceptably; the build records it as a reject and refills the quota."""

    def __init__(self, stage: str, reason: str, detail: str, record: dict[str, Any] | None = None) -> None:
        super().__init__(f"{stage}: {reason}: {detail}")
        self.stage = stage
        self.reason = reason
        self.detail = detail
        self.record = record


# teachers ------------------------------------------------------------------------------------------------------
class Teacher(ABC):
    """One model endpoint behind the cache. ``chat_many`` answers requests in order, paying only for cache misses."""

    backend: str = ""

    def __init__(self, cache: LLMCache | None) -> None:
        self.cache = cache
        self.model_id = ""
        self.label = ""
        self.calls = 0
        self.output_tokens = 0
        self.call_seconds = 0.0

    def chat_many(self, requests: list[Request]) -> list[Reply]:
        results: list[Reply | None] = [None] * len(requests)
        misses: list[tuple[int, str, Messages, dict[str, Any]]] = []
        for i, (messages, params) in enumerate(requests):
            key = request_key(self.model_id, messages, params)
            hit = self.cache.get(key) if self.cache is not None else None
            if hit is not None:
                results[i] = hit
            else:
                misses.append((i, key, messages, params))

        def done(i: int, key: str, reply: Reply) -> None:
            self.calls += 1
            self.output_tokens += reply.output_tokens or 0
            self.call_seconds += reply.seconds or 0.0
            if self.cache is not None:
                messages, params = requests[i]
                self.cache.put(key, self.model_id, {"messages": messages, "params": params}, reply)
            results[i] = reply

        if misses:
            self._call_many(misses, done)
        assert all(r is not None for r in results)
        return [r for r in results if r is not None]

    @abstractmethod
    def _call_many(self, items: list[tuple[int, str, Messages, dict[str, Any]]],
                   done: Callable[[int, str, Reply], None]) -> None:
        """Make the calls; report each through ``done`` as soon as it finishes (so it is cached at once)."""

    def close(self) -> None:
        return None


def resolve_model_path(model: str | None, recipe_path: Path, where: str = "generator.model") -> Path:
    """A GGUF path from the recipe: relative paths are read from the recipe's folder; none means the shipped SmolLM2."""
    if model is None:
        from common.model_paths import smollm2_gguf

        return smollm2_gguf()
    path = Path(os.path.expanduser(model))
    if not path.is_absolute():
        path = (recipe_path.parent / path).resolve()
    if not path.is_file():
        raise FormaError(f"model file not found: {path}", path=recipe_path, where=where,
                         hint="give the path of a GGUF file (relative paths start at the recipe's folder), "
                              "or leave model out to use the shipped SmolLM2-135M-Instruct")
    return path


class LlamaCppTeacher(Teacher):
    """A GGUF run in-process through distilabel's :class:`LlamaCppLLM` (llama-cpp-python)."""

    backend = "llama_cpp"

    def __init__(self, model_path: Path, *, n_ctx: int, n_threads: int | None, cache: LLMCache | None,
                 recipe_path: Path) -> None:
        super().__init__(cache)
        with warnings.catch_warnings():  # distilabel's pydantic models warn at import and construction
            warnings.simplefilter("ignore")
            from distilabel.models.llms import LlamaCppLLM

        extra: dict[str, Any] = {}
        if n_threads is not None:
            extra.update(n_threads=n_threads, n_threads_batch=n_threads)
        digest = cache.file_digest(model_path) if cache is not None else _quick_digest(model_path)
        self.model_id = f"gguf:{digest}:ctx{n_ctx}"
        self.label = f"{model_path.name}@{digest[:12]}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.llm = LlamaCppLLM(model_path=str(model_path), n_ctx=n_ctx, n_gpu_layers=-1, verbose=False,
                                   extra_kwargs=extra)
        try:
            self.llm.load()
        except (ValueError, RuntimeError, OSError) as exc:
            raise FormaError(f"llama.cpp cannot load {model_path.name}: {exc}", path=recipe_path,
                             where="generator.model",
                             hint="is it a GGUF file this llama-cpp-python can read?") from None

    def _call_many(self, items: list[tuple[int, str, Messages, dict[str, Any]]],
                   done: Callable[[int, str, Reply], None]) -> None:
        model = self.llm._model
        for i, key, messages, params in items:
            model.reset()  # no prefix reuse from the previous prompt: same prompt, same reply, whatever ran before
            started = time.perf_counter()
            out = self.llm.generate(inputs=[messages], max_new_tokens=params["max_new_tokens"],
                                    temperature=params["temperature"], top_p=params.get("top_p", 1.0),
                                    extra_generation_kwargs={"seed": params["seed"],
                                                             "repeat_penalty": params.get("repeat_penalty", 1.0)})[0]
            stats = out.get("statistics", {})
            text = out["generations"][0] or ""
            done(i, key, Reply(text=text, input_tokens=_first(stats.get("input_tokens")),
                               output_tokens=_first(stats.get("output_tokens")),
                               seconds=time.perf_counter() - started))

    def close(self) -> None:
        model = getattr(self.llm, "_model", None)
        if model is not None and hasattr(model, "close"):
            model.close()


class OpenAICompatibleTeacher(Teacher):
    """Any OpenAI-compatible server (llama-cpp-python's, Ollama, vLLM, a hosted API) via distilabel's OpenAILLM.

    ``concurrency`` requests run at once on distilabel's event loop; the openai client retries connection errors
    and 5xx answers with exponential backoff (``max_retries``), then the build stops with a clear error, keeping
    every reply that arrived in the cache.
    """

    backend = "openai_compatible"

    def __init__(self, *, model: str | None, base_url: str | None, api_key_env: str, max_retries: int,
                 timeout: float, concurrency: int, cache: LLMCache | None, recipe_path: Path,
                 where: str = "generator") -> None:
        super().__init__(cache)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from distilabel.models.llms import OpenAILLM

        if not model:
            raise FormaError("openai_compatible needs a model name", path=recipe_path, where=f"{where}.model")
        key = os.environ.get(api_key_env)
        if not key:
            if base_url is None:
                raise FormaError(f"no API key: set the environment variable {api_key_env}", path=recipe_path,
                                 where=f"{where}.api_key_env")
            key = "sk-no-key-needed"  # local servers (llama-cpp-python, Ollama, vLLM) ignore it
        self.base_url = base_url or "https://api.openai.com/v1"
        self.model_id = f"openai:{self.base_url.rstrip('/')}:{model}"
        self.label = model
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.recipe_path = recipe_path
        self.llm = OpenAILLM(model=model, base_url=self.base_url, api_key=key, max_retries=max_retries,
                             timeout=int(timeout))
        self.llm.load()

    def _call_many(self, items: list[tuple[int, str, Messages, dict[str, Any]]],
                   done: Callable[[int, str, Reply], None]) -> None:
        sem = asyncio.Semaphore(self.concurrency)

        async def one(i: int, key: str, messages: Messages, params: dict[str, Any]) -> None:
            async with sem:
                started = time.perf_counter()
                out = await self.llm.agenerate(input=messages, max_new_tokens=params["max_new_tokens"],
                                               temperature=params["temperature"], top_p=params.get("top_p", 1.0),
                                               extra_body={"seed": params["seed"],
                                                           "repeat_penalty": params.get("repeat_penalty", 1.0)})
                stats = out.get("statistics", {})
                done(i, key, Reply(text=out["generations"][0] or "", input_tokens=_first(stats.get("input_tokens")),
                                   output_tokens=_first(stats.get("output_tokens")),
                                   seconds=time.perf_counter() - started))

        async def all_of() -> list[BaseException | None]:
            return await asyncio.gather(*(one(*item) for item in items), return_exceptions=True)

        outcomes = self.llm.event_loop.run_until_complete(all_of())
        errors = [e for e in outcomes if isinstance(e, BaseException)]
        if errors:
            raise self._explain(errors[0], failed=len(errors), total=len(items)) from errors[0]

    def _explain(self, exc: BaseException, *, failed: int, total: int) -> FormaError:
        import openai

        kept = f"{len(self.cache)} replies are cached in {self.cache.path}" if self.cache is not None else "no cache"
        if isinstance(exc, openai.APIConnectionError):
            what = (f"cannot reach the server at {self.base_url} after {self.max_retries} retries with backoff "
                    f"({type(exc).__name__})")
            hint = "start the server (or fix generator.base_url), then rerun with --resume"
        elif isinstance(exc, openai.APIStatusError):
            what = f"the server at {self.base_url} answered HTTP {exc.status_code}: {_short(str(exc))}"
            hint = "check generator.model and the server's log, then rerun with --resume"
        else:
            what = f"the request failed: {type(exc).__name__}: {_short(str(exc))}"
            hint = "rerun with --resume once fixed"
        return FormaError(f"{what}; {failed} of {total} requests failed; {kept}", path=self.recipe_path,
                          where="generator.base_url", hint=hint)

    def close(self) -> None:
        client = getattr(self.llm, "_aclient", None)
        if client is not None:  # close it on its own loop, or httpx complains at exit that the loop is closed
            self.llm.event_loop.run_until_complete(client.close())
        self.llm.unload()


def _first(values: Any) -> int | None:
    if isinstance(values, list) and values:
        return int(values[0])
    return None


def _short(text: str, n: int = 160) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."


def _quick_digest(path: Path) -> str:
    from common.hashing import sha256_file

    return sha256_file(path)


def make_teacher(cfg: GeneratorConfig | JudgeConfig, *, loaded: LoadedRecipe, cache: LLMCache | None,
                 base: GeneratorConfig, where: str = "generator") -> Teacher:
    """A teacher for a generator or judge config; a judge inherits threads, context and retries from ``base``."""
    if cfg.backend == "llama_cpp":
        path = resolve_model_path(cfg.model, loaded.path, where=f"{where}.model")
        return LlamaCppTeacher(path, n_ctx=base.n_ctx, n_threads=base.n_threads, cache=cache, recipe_path=loaded.path)
    if cfg.backend == "openai_compatible":
        return OpenAICompatibleTeacher(model=cfg.model, base_url=cfg.base_url, api_key_env=cfg.api_key_env,
                                       max_retries=base.max_retries, timeout=base.timeout,
                                       concurrency=base.concurrency, cache=cache, recipe_path=loaded.path,
                                       where=where)
    raise FormaError(f"backend {cfg.backend!r} is not an LLM backend", path=loaded.path, where=f"{where}.backend")


# the generator -------------------------------------------------------------------------------------------------
@dataclass
class _Chat:
    """One slot in flight."""

    slot: Slot
    attempt: int
    intro: str
    goal: str
    plans: list[TurnPlan]
    turns: list[Turn] = field(default_factory=list)
    grounding: list[dict[str, Any]] = field(default_factory=list)
    rejected: GenerationRejected | None = None

    def messages(self) -> Messages:
        return [{"role": t.role.value, "content": t.content} for t in self.turns]

    def record(self, raw: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"slot": self.slot.index, "category": self.slot.category.value,
                               "persona": self.slot.persona.id, "fact_ids": [f.id for f in self.slot.facts],
                               "messages": self.messages()}
        if raw is not None:
            out["raw_reply"] = raw
        return out

    def reject(self, stage: str, reason: str, detail: str, raw: str | None = None) -> None:
        self.rejected = GenerationRejected(stage, reason, detail, self.record(raw))

    def call_seed(self, k: int) -> int:
        return (self.slot.seed + 7_919 * self.attempt + 104_729 * k) % (2**31 - 1)


class LLMGenerator:
    """Fills slots with conversations written by an LLM teacher; see the module docstring."""

    def __init__(self, loaded: LoadedRecipe, teacher: Teacher, judge: Judge | None = None) -> None:
        self.loaded = loaded
        self.recipe = loaded.recipe
        self.cfg = loaded.recipe.generator
        self.teacher = teacher
        self.judge = judge
        self.name: str = self.cfg.backend
        self.recipe_hash = loaded.recipe.content_hash()

    # the Generator protocol ----------------------------------------------------------------------------------
    def generate(self, slot: Slot, attempt: int = 0) -> Sample:
        result = self.generate_batch([slot], attempt)[0]
        if isinstance(result, GenerationRejected):
            raise result
        return result

    def generate_batch(self, slots: list[Slot], attempt: int = 0) -> list[Sample | GenerationRejected]:
        """Conversations for ``slots`` (in order), or the reason each could not be made."""
        chats = [self._start(slot, attempt) for slot in slots]
        for turn in range(max((len(c.plans) for c in chats), default=0)):
            live = [c for c in chats if c.rejected is None and turn < len(c.plans)]
            self._user_turn(live, turn)
            live = [c for c in live if c.rejected is None]
            self._assistant_turn(live, turn)
        done = [c for c in chats if c.rejected is None]
        judged = self._judge(done) if self.judge is not None and done else {}
        return [c.rejected if c.rejected is not None else self._sample(c, judged.get(id(c))) for c in chats]

    def close(self) -> None:
        self.teacher.close()
        if self.judge is not None and self.judge.teacher is not self.teacher:
            self.judge.teacher.close()

    # steps -----------------------------------------------------------------------------------------------------
    def _start(self, slot: Slot, attempt: int) -> _Chat:
        rng = random.Random(slot.seed * 31 + attempt)
        words = slot.persona if slot.language not in PROMPT_LANGUAGES else (
            (slot.persona.translations or {}).get(slot.language) or slot.persona)  # the persona's own words in it
        return _Chat(slot=slot, attempt=attempt, intro=rng.choice(words.intro),
                     goal=rng.choice(words.goals), plans=plan_turns(slot, rng))

    def _params(self, max_new_tokens: int, seed: int) -> dict[str, Any]:
        """Sampling parameters of one call; they are part of its cache key."""
        return {"temperature": self.cfg.temperature, "max_new_tokens": max_new_tokens, "seed": seed,
                "repeat_penalty": self.cfg.repeat_penalty}

    def _language_note(self, chat: _Chat) -> str:
        """For a language without its own prompt templates: the English prompt plus a note to write in it."""
        language = chat.slot.language
        return "" if language in PROMPT_LANGUAGES else f"\nWrite in the language with code {language!r}."

    def _user_turn(self, chats: list[_Chat], turn: int) -> None:
        requests: list[Request] = []
        for c in chats:
            last = c.turns[-1].content if c.turns else None
            messages = user_simulator_messages(c.slot.persona, c.intro, c.goal, c.plans[turn], last,
                                               language=c.slot.language)
            messages[0]["content"] += self._language_note(c)
            requests.append((messages, self._params(self.cfg.user_max_new_tokens, c.call_seed(2 * turn))))
        for c, reply in zip(chats, self.teacher.chat_many(requests), strict=True):
            truncated = (reply.output_tokens or 0) >= self.cfg.user_max_new_tokens
            try:
                text = parse_user(reply.text, truncated=truncated)
            except MalformedReply as exc:
                c.reject("generate", exc.reason, f"user turn {turn + 1}: {exc.detail}", reply.text)
                continue
            if not on_topic(text, c.plans[turn]):
                c.reject("generate", "user_off_topic",
                         f"user turn {turn + 1} does not ask about {c.plans[turn].question!r}", reply.text)
                continue
            c.turns.append(Turn(role=Role.USER, content=text))

    def _assistant_turn(self, chats: list[_Chat], turn: int) -> None:
        requests: list[Request] = []
        for c in chats:
            system = assistant_system(self.recipe.system_prompt_for(c.slot.language), c.slot.persona,
                                      c.slot.category.value, c.plans[turn], turn, len(c.plans),
                                      language=c.slot.language, intro=c.intro) + self._language_note(c)
            messages = [{"role": "system", "content": system}, *c.messages()]
            requests.append((messages, self._params(self.cfg.max_new_tokens, c.call_seed(2 * turn + 1))))
        for c, reply in zip(chats, self.teacher.chat_many(requests), strict=True):
            truncated = (reply.output_tokens or 0) >= self.cfg.max_new_tokens
            try:
                text = parse_assistant(reply.text, truncated=truncated)
            except MalformedReply as exc:
                c.reject("generate", exc.reason, f"assistant turn {turn + 1}: {exc.detail}", reply.text)
                continue
            plan = c.plans[turn]
            user_context = " ".join(t.content for t in c.turns if t.role == Role.USER)
            verdict = check_answer(text, list(c.slot.facts), plan.safety_notes, context=user_context,
                                   mode=self.cfg.grounding)
            c.grounding.append({"turn": turn + 1, "fact": plan.fact.id, **verdict.as_check()})
            if not verdict.passed:
                assert verdict.reason is not None
                c.turns.append(Turn(role=Role.ASSISTANT, content=text))
                record_chat = c.record()
                record_chat["checks"] = {"grounding": c.grounding}
                c.rejected = GenerationRejected("grounding", verdict.reason,
                                                f"assistant turn {turn + 1}: {verdict.detail}", record_chat)
                continue
            c.turns.append(Turn(role=Role.ASSISTANT, content=text))

    def _judge(self, chats: list[_Chat]) -> dict[int, dict[str, Any]]:
        assert self.judge is not None
        verdicts = self.judge.score_many([c.messages() for c in chats], [list(c.slot.facts) for c in chats],
                                         [c.call_seed(99) for c in chats])
        checks: dict[int, dict[str, Any]] = {}
        for c, v in zip(chats, verdicts, strict=True):
            checks[id(c)] = v.as_check()
            if not v.passed:
                assert v.reason is not None
                record = c.record()
                record["checks"] = {"grounding": c.grounding, "judge": v.as_check()}
                c.rejected = GenerationRejected("judge", v.reason, v.detail, record)
        return checks

    def _sample(self, chat: _Chat, judge: dict[str, Any] | None) -> Sample:
        checks: dict[str, Any] = {"grounding": chat.grounding, "llm_calls": 2 * len(chat.plans)}
        if judge is not None:
            checks["judge"] = judge
        if chat.attempt:
            checks["attempt"] = chat.attempt
        slot = chat.slot
        lineage = Lineage(recipe=self.recipe.name, recipe_hash=self.recipe_hash, generator=self.name,
                          model=self.teacher.label, seed=slot.seed, slot=slot.index,
                          fact_ids=[f.id for f in slot.facts], checks=checks)
        turns = chat.turns
        if self.recipe.digits_for(slot.language) == "arabic_indic":  # the recipe's digits for answers in it
            turns = [Turn(role=t.role, content=to_arabic_digits(t.content)) if t.role == Role.ASSISTANT else t
                     for t in turns]
        return Sample.create(category=slot.category, persona=slot.persona.id,
                             conversation=Conversation(system=self.recipe.system_prompt_for(slot.language),
                                                       turns=turns),
                             lineage=lineage, language=slot.language)


def cache_path(out_dir: Path) -> Path:
    """Where a build folder keeps its LLM replies."""
    return out_dir / "cache" / "llm.sqlite"


def make_llm_generator(loaded: LoadedRecipe, *, out_dir: Path | None = None, resume: bool = True,
                       cache: LLMCache | None = None) -> LLMGenerator:
    """The generator for a recipe's LLM backend, with its cache under ``out_dir`` (or the one given).

    Without ``resume``, a cache that already holds replies is an error rather than something silently reused or
    thrown away: the user chooses (``--resume``, or delete the folder).
    """
    cfg = loaded.recipe.generator
    if cache is None and out_dir is not None:
        from factory.generators.cache import count_replies

        path = cache_path(out_dir)
        held = count_replies(path)
        if held and not resume:
            raise FormaError(f"the output folder holds {held} cached LLM replies from an earlier build",
                             path=path, hint="pass --resume to reuse them, or delete the folder to start afresh")
        cache = LLMCache(path)
    teacher = make_teacher(cfg, loaded=loaded, cache=cache, base=cfg)
    judge = None
    if cfg.judge_threshold is not None:
        judge_teacher = teacher if cfg.judge is None else make_teacher(cfg.judge, loaded=loaded, cache=cache,
                                                                       base=cfg, where="generator.judge")
        judge = Judge(judge_teacher, cfg.judge_threshold,
                      max_new_tokens=cfg.judge.max_new_tokens if cfg.judge is not None else 48)
    return LLMGenerator(loaded, teacher, judge)
