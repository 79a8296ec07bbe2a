"""Turn a recipe into generation slots with exact per-category and per-behaviour quotas.

Quotas use the largest-remainder method, so the shares hold for any total (2,000 gives 600/400/500/200/200/100, and
a total that does not divide evenly still sums exactly). Languages (``languages: {en: 70, ar: 30}``) are allocated
first, and the categories inside each language the same way, so every language has the recipe's category mix; a
slot of a language draws only on facts and behaviour items with text in it (for the template generator).
Behaviours (answer, escalate, decline, reassure) are then allocated the same way inside each category, so the
category shares stay exact and every category carries its own safety cases. Each slot fixes everything a generator
needs: category, behaviour and the red flag, harmful request or benign phrasing it uses, persona, user-turn count,
language and the facts it rests on, so any backend fills the same plan.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from factory.recipe_loader import LoadedRecipe
from schemas.knowledge import Category, Fact
from schemas.recipe import Persona


@dataclass(frozen=True)
class Slot:
    """One conversation to generate. ``index`` is unique in a build and seeds the generator for this slot."""

    index: int
    category: Category
    persona: Persona
    user_turns: int
    language: str
    facts: tuple[Fact, ...]
    seed: int
    behaviour: str = "answer"
    item: Any = None  # the RedFlag, HarmfulRequest or BenignAlarming of a behaviour slot (schemas.behaviour)
    #: How many slots used the item, and each fact, before this one: the generator rotates wordings by it, so no
    #: wording of a popular fact or item comes up far more often than the others.
    item_use: int = 0
    fact_uses: tuple[int, ...] = ()


K = TypeVar("K", bound=Hashable)

#: A quota cell: (language, category, behaviour).
Cell = tuple[str, Category, str]

#: How many more times a persona's own facts may be used than the category's least-used fact.
POPULATION_SLACK = 2


def largest_remainder(shares: dict[K, float], total: int) -> dict[K, int]:
    """Integer quotas proportional to ``shares`` that sum to exactly ``total`` (Hamilton's method)."""
    weight = sum(shares.values())
    exact = {c: total * s / weight for c, s in shares.items()}
    quotas = {c: math.floor(v) for c, v in exact.items()}
    left = total - sum(quotas.values())
    # ties broken by the recipe's category order, so the result is deterministic
    order = sorted(exact, key=lambda c: (-(exact[c] - quotas[c]), list(shares).index(c)))
    for category in order[:left]:
        quotas[category] += 1
    return quotas


def _weighted_sequence(rng: random.Random, options: Sequence[tuple[object, float]], n: int) -> list[object]:
    """``n`` draws whose counts follow the weights exactly (largest remainder), in a shuffled order.

    Sampling independently would let a 1,000-slot plan drift from its turn mix by a few percent; this does not.
    """
    total = sum(w for _, w in options)
    exact = [n * w / total for _, w in options]
    counts = [math.floor(x) for x in exact]
    for i in sorted(range(len(options)), key=lambda i: -(exact[i] - counts[i]))[: n - sum(counts)]:
        counts[i] += 1
    out = [value for (value, _), c in zip(options, counts, strict=True) for _ in range(c)]
    rng.shuffle(out)
    return out


class Planner:
    """Makes slots for a loaded recipe; :meth:`extra` makes more for one category when filters left a deficit."""

    def __init__(self, loaded: LoadedRecipe, seed: int | None = None) -> None:
        self.loaded = loaded
        self.recipe = loaded.recipe
        self.seed = self.recipe.seed if seed is None else seed
        self._next_index = 0
        self._fact_cursor: dict[tuple[str, Category], int] = {}
        self._fact_orders: dict[tuple[str, Category], list[Fact]] = {}
        self._item_orders: dict[tuple[str, Category, str], list[Any]] = {}
        self._uses: Counter[str] = Counter()  # how often each fact was planned, to spread later turns evenly
        self._item_cursor: dict[tuple[str, Category, str], int] = {}
        for language in self.recipe.language_shares:
            # English keeps the seed string it always had, so an English-only plan is the same as before languages
            rng = random.Random(f"{self.seed}:facts" if language == "en" else f"{self.seed}:facts:{language}")
            for category in self.recipe.categories:
                facts = list(loaded.facts_for(category, language))
                rng.shuffle(facts)
                self._fact_orders[(language, category)] = facts

    def language_quotas(self, total: int | None = None) -> dict[str, int]:
        return largest_remainder(self.recipe.language_shares, self.recipe.total if total is None else total)

    def cell_quotas(self, total: int | None = None) -> dict[Cell, int]:
        """Quotas per (language, category, behaviour): each language's quota split by the category shares, each
        category's by the behaviour shares (largest remainder at every level, so every level sums exactly)."""
        out: dict[Cell, int] = {}
        for language, l_quota in self.language_quotas(total).items():
            for category, quota in largest_remainder(self.recipe.categories, l_quota).items():
                for behaviour, n in largest_remainder(dict(self.recipe.behaviours), quota).items():
                    if n > 0:
                        out[(language, category, behaviour)] = n
        return out

    def quotas(self, total: int | None = None) -> dict[Category, int]:
        """Quotas per category, over all languages."""
        out = dict.fromkeys(self.recipe.categories, 0)
        for (_, category, _), n in self.cell_quotas(total).items():
            out[category] += n
        return out

    def behaviour_quotas(self, total: int | None = None) -> dict[tuple[Category, str], int]:
        """Quotas per (category, behaviour), over all languages."""
        out: dict[tuple[Category, str], int] = {}
        for (_, category, behaviour), n in self.cell_quotas(total).items():
            out[(category, behaviour)] = out.get((category, behaviour), 0) + n
        return out

    def plan(self, total: int | None = None) -> list[Slot]:
        slots: list[Slot] = []
        for (language, category, behaviour), quota in self.cell_quotas(total).items():
            slots.extend(self.extra(category, quota, behaviour, language))
        return slots

    def _next_items(self, category: Category, behaviour: str, n: int, language: str) -> list[tuple[Any, int]]:
        """Behaviour items round-robin over a seeded order (every item is used before any is used twice), each with
        how many times it was used before."""
        if behaviour == "answer":
            return [(None, 0)] * n
        key = (language, category, behaviour)
        if key not in self._item_orders:
            items = list(self.loaded.items_for(category, behaviour, language))
            salt = "" if language == "en" else f":{language}"
            random.Random(f"{self.seed}:{category.value}:{behaviour}{salt}").shuffle(items)
            self._item_orders[key] = items
        order = self._item_orders[key]
        start = self._item_cursor.get(key, 0)
        self._item_cursor[key] = start + n
        return [(order[(start + i) % len(order)], (start + i) // len(order)) for i in range(n)]

    def extra(self, category: Category, n: int, behaviour: str = "answer", language: str | None = None) -> list[Slot]:
        """``n`` new slots for ``category``, ``behaviour`` and ``language`` (default: the recipe's first), with
        indices never used before in this plan."""
        if n <= 0:
            return []
        language = language or next(iter(self.recipe.language_shares))
        chat_language: str = language
        rng = random.Random(f"{self.seed}:{category.value}:{self._next_index}")
        items = self._next_items(category, behaviour, n, language)
        personas = _weighted_sequence(rng, [(p, p.weight) for p in self.recipe.personas], n)
        turns = _weighted_sequence(rng, list(self.recipe.turn_mix.items()), n)
        # one language per call; the draw is kept so the random stream is the one an English-only plan always had
        languages = _weighted_sequence(rng, [(language, 1.0)], n)
        slots = []
        for persona, user_turns, drawn, (item, item_use) in zip(personas, turns, languages, items, strict=True):
            assert isinstance(persona, Persona) and isinstance(user_turns, int) and drawn == chat_language
            persona = self._persona_for(item, persona)
            index = self._next_index
            self._next_index += 1
            facts = tuple(self._pick_facts(category, persona, user_turns, rng, chat_language))
            slots.append(Slot(index=index, category=category, persona=persona, user_turns=user_turns,
                              language=chat_language, facts=facts, seed=hash_seed(self.seed, index),
                              behaviour=behaviour,
                              item=item, item_use=item_use, fact_uses=tuple(self._uses[f.id] - 1 for f in facts)))
        return slots

    def _persona_for(self, item: Any, drawn: Persona) -> Persona:
        """A red flag for a population (pregnancy warning signs, say) goes to a persona of that population."""
        wanted = set(getattr(item, "populations", None) or ["general"]) - {"general"}
        if not wanted or wanted & set(drawn.populations):
            return drawn
        return next((p for p in self.recipe.personas if wanted & set(p.populations)), drawn)

    def _pick_facts(self, category: Category, persona: Persona, user_turns: int, rng: random.Random,
                    language: str = "en") -> Iterator[Fact]:
        """Facts for one slot: the least-used fact of the category first (even coverage), then related ones.

        A persona's populations are preferred for the primary fact while those facts are not used more than the
        category's least-used fact (plus ``POPULATION_SLACK``): a population with two facts must not put the same
        two answers into every chat of that persona.
        """
        order = self._fact_orders[(language, category)]
        cursor = self._fact_cursor.get((language, category), 0)
        self._fact_cursor[(language, category)] = cursor + 1
        position = {f.id: (i - cursor) % len(order) for i, f in enumerate(order)}
        floor = min(self._uses[f.id] for f in order)
        wanted = set(persona.populations) - {"general"}
        candidates = [f for f in order if wanted & set(f.populations) and self._uses[f.id] <= floor + POPULATION_SLACK]
        primary = min(candidates or order, key=lambda f: (self._uses[f.id], position[f.id]))
        yield primary
        # later turns: the primary's follow-ups first (the generator uses them), then the facts it links to, then
        # facts on the same topic; never an unrelated topic, so a chat does not jump from squat depth to curls
        # (the least used first, so a small topic's facts are not served in every chat that reaches them)
        extra_needed = max(0, user_turns - 1)
        related = [f for f in order if f.id in primary.related]
        same_topic = [f for f in order if f.topic == primary.topic and f.id != primary.id and f not in related]
        rng.shuffle(same_topic)
        same_topic.sort(key=lambda f: self._uses[f.id])
        chosen = (related + same_topic)[:extra_needed]
        for fact in (primary, *chosen):
            self._uses[fact.id] += 1
        yield from chosen


def hash_seed(seed: int, index: int) -> int:
    """A per-slot seed that does not depend on Python's randomized ``hash``."""
    return (seed * 1_000_003 + index * 7_919) % (2**31 - 1)
