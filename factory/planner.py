"""Turn a recipe into generation slots with exact per-category quotas.

Quotas use the largest-remainder method, so the shares hold for any total (2,000 gives 600/400/500/200/200/100, and
a total that does not divide evenly still sums exactly). Each slot fixes everything a generator needs: category,
persona, user-turn count, language and the facts it rests on, so any backend fills the same plan.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

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


def largest_remainder(shares: dict[Category, float], total: int) -> dict[Category, int]:
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
        self._fact_cursor: dict[Category, int] = {}
        self._fact_orders: dict[Category, list[Fact]] = {}
        rng = random.Random(f"{self.seed}:facts")
        for category in self.recipe.categories:
            facts = list(loaded.facts_for(category))
            rng.shuffle(facts)
            self._fact_orders[category] = facts

    def quotas(self, total: int | None = None) -> dict[Category, int]:
        return largest_remainder(self.recipe.categories, self.recipe.total if total is None else total)

    def plan(self, total: int | None = None) -> list[Slot]:
        slots: list[Slot] = []
        for category, quota in self.quotas(total).items():
            slots.extend(self.extra(category, quota))
        return slots

    def extra(self, category: Category, n: int) -> list[Slot]:
        """``n`` new slots for ``category``, with indices never used before in this plan."""
        if n <= 0:
            return []
        rng = random.Random(f"{self.seed}:{category.value}:{self._next_index}")
        personas = _weighted_sequence(rng, [(p, p.weight) for p in self.recipe.personas], n)
        turns = _weighted_sequence(rng, list(self.recipe.turn_mix.items()), n)
        languages = _weighted_sequence(rng, [(lang, 1.0) for lang in self.recipe.languages], n)
        slots = []
        for persona, user_turns, language in zip(personas, turns, languages, strict=True):
            assert isinstance(persona, Persona) and isinstance(user_turns, int) and isinstance(language, str)
            index = self._next_index
            self._next_index += 1
            slots.append(Slot(index=index, category=category, persona=persona, user_turns=user_turns,
                              language=language, facts=tuple(self._pick_facts(category, persona, user_turns, rng)),
                              seed=hash_seed(self.seed, index)))
        return slots

    def _pick_facts(self, category: Category, persona: Persona, user_turns: int, rng: random.Random) -> Iterator[Fact]:
        """Facts for one slot: the primary one round-robin over the category (even coverage), then related ones.

        A persona's populations are preferred for the primary fact when the category has facts for them.
        """
        order = self._fact_orders[category]
        cursor = self._fact_cursor.get(category, 0)
        wanted = set(persona.populations) - {"general"}
        primary = order[cursor % len(order)]
        if wanted:
            for step in range(len(order)):
                candidate = order[(cursor + step) % len(order)]
                if wanted & set(candidate.populations):
                    primary = candidate
                    break
        self._fact_cursor[category] = cursor + 1
        yield primary
        # later turns: the primary's follow-ups first (the generator uses them), then facts on the same topic
        extra_needed = max(0, user_turns - 1 - len(primary.follow_ups))
        same_topic = [f for f in order if f.topic == primary.topic and f.id != primary.id]
        others = [f for f in order if f.topic != primary.topic]
        rng.shuffle(same_topic)
        rng.shuffle(others)
        yield from (same_topic + others)[:extra_needed]


def hash_seed(seed: int, index: int) -> int:
    """A per-slot seed that does not depend on Python's randomized ``hash``."""
    return (seed * 1_000_003 + index * 7_919) % (2**31 - 1)
