"""Validation: whole-table checks with pandera on polars frames, then per-record content checks.

Table checks (pandera, ``lazy=True`` so one pass collects every failure of a batch): id shape and uniqueness,
known category, even turn count, user-turn count, turn and total length bounds. Record checks: roles alternate and
start with the user, no empty turn, the declared language, no chat-template tokens, no personal data (emails,
phone numbers), and every number an assistant states is grounded in a cited fact.

Number grounding rule (why it does not reject the template data): a number in an assistant turn passes when it
lies within a quantity of a fact the sample cites (``lineage.fact_ids``, ``Quantity.accepts``: the range widened by
its tolerance), equals a cited fact's source year, or repeats a number the user wrote in the same chat. Numbers
that are part of a word (``Q4``, ``B12``, ``omega-3``, ``1st``, ``2x``) and list markers (``1.`` or ``2)`` at a
line start) are not claims and are ignored. A sample citing no facts (imported data) skips this check.

Language: a stopword-share heuristic (no dependency, ~20 µs) decides; only when it disagrees with the declared
language does ``langdetect`` (~2 ms per text, too slow for every sample of a 10,000-sample build) confirm before a
reject, so a short or number-heavy text is never dropped on the heuristic alone. Then every turn is checked on its
own by script: in a chat declared Arabic, a turn whose letters are mostly not Arabic (an English answer in an
Arabic chat) is rejected, with the share and what langdetect takes it for; in a chat declared in a Latin-script
language, a mostly-Arabic turn is rejected the same way. Numbers are read in Western or Arabic-Indic digits.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, ClassVar

from pydantic import Field, PrivateAttr

from common.arabic import arabic_share, normalize_arabic, readable_numbers
from factory.personal import allowed_values
from factory.stages.base import BatchedStage
from schemas.knowledge import Category, Fact
from schemas.sample import Sample

TEMPLATE_TOKENS = re.compile(
    r"<\|[a-z_]{2,30}\|>|\[/?INST\]|<</?SYS>>|</?s>|<start_of_turn>|<end_of_turn>|<bos>|<eos>|"
    r"^#{2,3} ?(?:Instruction|Response|Input):", re.MULTILINE | re.IGNORECASE)
EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[a-z]{2,}", re.IGNORECASE)
PHONE = re.compile(r"(?<![\w.])\+?\(?\d[\d\s().-]{7,}\d(?![\w.])")
#: A number: integer with optional thousands separators and decimals; the lookbehind excludes parts of words.
NUMBER = re.compile(r"(?<![A-Za-z0-9_.,])(?<![A-Za-z]-)(\d{1,3}(?:,\d{3})+|\d+)(?:\.(\d+))?(?![A-Za-z0-9_])")
LIST_END = re.compile(r"[.)]\s")
YEAR_MIN, YEAR_MAX = 1900, 2100

_STOPWORDS_TEXT = {
    "en": "a and are as at be can do for have how i if in is "
          "it my not of on or should that the this to what with you your",
    "es": "como con de el en es la las lo los mi "
          "más no para pero por que qué se su un una y",
    "fr": "avec ce dans de des du en est et je la "
          "le les mon pas pour que qui sur un une vous",
    "de": "auf das dem den der die ein eine es für "
          "ich ist mein mit nicht sich sie und wie zu",
    "pt": "a as com como da de do e em eu mais "
          "meu na no não o os para que se um uma é",
    "it": "che come con del della di e il io la "
          "ma mi non per più si sono un una è",
    "nl": "dat de een en het hoe ik is je "
          "maar met mijn niet op te van voor wat zijn",
    "ar": "في من على إلى عن أن إن هذا هذه ما لا هل مع كل أو ثم قد كان التي الذي هو هي "
          "بين عند كيف لكن إذا أنا أنت لك لي",
}
STOPWORDS: dict[str, frozenset[str]] = {k: frozenset(normalize_arabic(v).split()) for k, v in _STOPWORDS_TEXT.items()}
#: Languages written in Arabic script, and the share of a turn's letters that must be in its script.
ARABIC_SCRIPT = frozenset({"ar", "fa", "ur"})
MIN_SCRIPT_SHARE = 0.6
MIN_SCRIPT_LETTERS = 12
_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)


def numbers(text: str) -> list[float]:
    """Numbers stated in ``text`` (see the module doc for what is skipped)."""
    out: list[float] = []
    text = readable_numbers(text)
    for m in NUMBER.finditer(text):
        line_start = text.rfind("\n", 0, m.start()) + 1
        if not text[line_start:m.start()].strip() and LIST_END.match(text, m.end()):
            continue  # "1. Squat" / "2) Rest": a list marker, not a claim
        whole = m.group(1).replace(",", "")
        out.append(float(f"{whole}.{m.group(2)}") if m.group(2) else float(whole))
    return out


def language_scores(text: str) -> dict[str, float]:
    """Share of the words that are each language's stopwords (first 2,000 characters: enough to decide)."""
    words = Counter(_WORD.findall(normalize_arabic(text[:2000].lower())))
    total = sum(words.values())
    if not total:
        return {}
    return {lang: sum(words[w] for w in stop if w in words) / total for lang, stop in STOPWORDS.items()}


def language_ok(text: str, declared: str) -> tuple[bool, str]:
    """True unless both the heuristic and langdetect say the text is not in ``declared``."""
    scores = language_scores(text)
    if not scores or declared not in scores:
        guess = None
    else:
        top = max(scores, key=lambda k: scores[k])
        if top == declared or scores[top] < 0.05:
            return True, ""
        guess = top
    if len(text) < 20:
        return True, ""
    try:
        from langdetect import DetectorFactory, LangDetectException, detect_langs
    except ImportError:
        return (guess is None), f"looks like {guess}"
    DetectorFactory.seed = 0
    try:
        found = detect_langs(text)
    except LangDetectException:
        return True, ""
    if any(c.lang.split("-")[0] == declared and c.prob >= 0.2 for c in found):
        return True, ""
    return False, f"detected {found[0].lang} ({found[0].prob:.2f}), declared {declared}"


def _detected(text: str) -> str:
    """What langdetect takes ``text`` for, for a reject's reason ("" when it cannot say)."""
    try:
        from langdetect import DetectorFactory, LangDetectException, detect_langs
    except ImportError:
        return ""
    DetectorFactory.seed = 0
    try:
        found = detect_langs(text)
    except LangDetectException:
        return ""
    return f", detected {found[0].lang} ({found[0].prob:.2f})" if found else ""


def turn_language_failures(contents: Iterable[tuple[str, str]], declared: str) -> list[str]:
    """Per turn (role, text): a turn not in the declared language's script, with its share and what it looks like.

    Turns with fewer than ``MIN_SCRIPT_LETTERS`` letters are not judged (a "70 kg" or an "RPE" decides nothing).
    """
    out: list[str] = []
    for i, (role, text) in enumerate(contents):
        share = arabic_share(text)
        if share is None or sum(c.isalpha() for c in text) < MIN_SCRIPT_LETTERS:
            continue
        arabic = declared in ARABIC_SCRIPT
        if (arabic and share < MIN_SCRIPT_SHARE) or (not arabic and share > 1 - MIN_SCRIPT_SHARE):
            out.append(f"turn {i} ({role}) is {share:.0%} Arabic script{_detected(text)}, declared {declared}")
    return out


def grounded(value: float, facts: Iterable[Fact], user_numbers: set[float]) -> bool:
    for fact in facts:
        if any(q.accepts(value) or abs(q.low - value) < 1e-9 for q in fact.quantities):
            return True
        if value == fact.source.year:
            return True
    return any(abs(value - u) < 1e-9 for u in user_numbers)


class Validate(BatchedStage):
    """Drops samples that fail a table or record check; the reject names every failed check, not just the first."""

    name: ClassVar[str] = "validate"

    min_turn_chars: int = 2
    max_turn_chars: int = 4000
    max_total_chars: int = 16000
    max_user_turns: int = 8
    check_language: bool = True
    check_numbers: bool = True
    facts: Mapping[str, Fact] = Field(default_factory=dict, description="Fact id -> fact, for number grounding.")

    _schema: Any = PrivateAttr(default=None)

    def load(self) -> None:
        if self._schema is None:
            self._schema = self.table_schema()

    def table_schema(self) -> Any:
        import pandera.polars as pa
        import polars as pl

        return pa.DataFrameSchema(
            {
                "id": pa.Column(str, [pa.Check.str_matches(r"^[A-Za-z0-9][\w.:-]{0,127}$")]),
                "category": pa.Column(str, pa.Check.isin([c.value for c in Category])),
                "language": pa.Column(str, pa.Check.str_matches(r"^[a-z]{2,3}(-[A-Za-z]{2,4})?$")),
                "n_turns": pa.Column(int, [pa.Check.ge(2), pa.Check(lambda d: d.lazyframe.select(
                    pl.col(d.key) % 2 == 0), name="even")]),
                "user_turns": pa.Column(int, pa.Check.in_range(1, self.max_user_turns)),
                "shortest_turn": pa.Column(int, pa.Check.ge(self.min_turn_chars)),
                "longest_turn": pa.Column(int, pa.Check.le(self.max_turn_chars)),
                "total_chars": pa.Column(int, pa.Check.le(self.max_total_chars)),
            },
            # whole-table: turn counts agree (uniqueness is left to the exact stage, which names the original)
            checks=[pa.Check(lambda d: d.lazyframe.select(pl.col("n_turns") == 2 * pl.col("user_turns")),
                             name="turns_match_user_turns")],
            strict=True,
        )

    def table_failures(self, batch: list[Sample]) -> dict[int, list[str]]:
        """Row index -> failed table checks (``column:check``), from one lazy pandera validation."""
        import pandera.errors as pe
        import polars as pl

        rows = []
        for s in batch:
            lengths = [len(t.content.strip()) for t in s.conversation.turns]
            rows.append({"id": s.id, "category": s.category.value, "language": s.language,
                         "n_turns": len(lengths), "user_turns": s.conversation.user_turns,
                         "shortest_turn": min(lengths), "longest_turn": max(lengths), "total_chars": sum(lengths)})
        frame = pl.DataFrame(rows)
        failures: dict[int, list[str]] = {}
        self.load()
        try:
            self._schema.validate(frame, lazy=True)
        except pe.SchemaErrors as exc:
            cases = exc.failure_cases
            for row in cases.iter_rows(named=True):
                index = row.get("index")
                label = f"{row.get('column')}:{row.get('check')}"
                if index is None:  # a column-level failure (e.g. wrong dtype): every row fails it
                    for i in range(len(batch)):
                        failures.setdefault(i, []).append(label)
                else:
                    failures.setdefault(int(index), []).append(label)
        return failures

    def record_failures(self, sample: Sample) -> list[tuple[str, str]]:
        """(reason, detail) for every per-record check the sample fails."""
        out: list[tuple[str, str]] = []
        turns = sample.conversation.turns
        for i, turn in enumerate(turns):
            expected = "user" if i % 2 == 0 else "assistant"
            if turn.role.value != expected:
                out.append(("role_order", f"turn {i} is {turn.role.value}, expected {expected}"))
                break
            if not turn.content.strip():
                out.append(("empty_turn", f"turn {i} ({turn.role.value}) is empty"))
        every = "\n".join([sample.conversation.system, *(t.content for t in turns)])
        token = TEMPLATE_TOKENS.search(every) if any(c in every for c in "<[#") else None
        if token:
            out.append(("template_token", f"chat-template text {token.group(0)!r} inside the conversation"))
        text = sample.conversation.text()
        if "@" in text and EMAIL.search(text):
            out.append(("personal_data", "an email address"))
        for m in PHONE.finditer(text):
            if 9 <= sum(c.isdigit() for c in m.group(0)) <= 15:
                out.append(("personal_data", "a phone number"))
                break
        if self.check_language:
            ok, why = language_ok(text, sample.language)
            if not ok:
                out.append(("wrong_language", why))
            out.extend(("wrong_language", why) for why in
                       turn_language_failures(((t.role.value, t.content) for t in turns), sample.language))
        if self.check_numbers and sample.lineage.fact_ids and self.facts:
            out.extend(self._number_failures(sample))
        return out

    def _number_failures(self, sample: Sample) -> list[tuple[str, str]]:
        cited = [self.facts[f] for f in sample.lineage.fact_ids if f in self.facts]
        user_text = "\n".join(t.content for t in sample.conversation.turns if t.role.value == "user")
        # numbers the user said, and personal numbers computed from them (checked arithmetic, factory.personal)
        user_numbers = set(numbers(user_text)) | allowed_values(cited, user_text)
        bad = sorted({v for t in sample.conversation.turns if t.role.value == "assistant" for v in numbers(t.content)
                      if not grounded(v, cited, user_numbers)})
        if not bad:
            return []
        shown = ", ".join(f"{v:g}" for v in bad[:5])
        return [("ungrounded_number", f"{shown} not within any quantity of cited facts {sample.lineage.fact_ids}")]

    def process_batch(self, batch: list[Sample]) -> Iterator[Sample]:
        table = self.table_failures(batch)
        for i, sample in enumerate(batch):
            problems = [("table_check", label) for label in table.get(i, [])] + self.record_failures(sample)
            if problems:
                reason = problems[0][0]
                detail = "; ".join(f"{r}: {d}" for r, d in problems)
                self.drop(sample, reason, detail=detail)
                continue
            yield self.keep(sample)
