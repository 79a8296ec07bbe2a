"""Exact dedupe: drop a sample whose normalized text was seen before, naming the sample it repeats."""

from __future__ import annotations

import functools
import hashlib
import re
import unicodedata
from collections.abc import Iterable, Iterator
from typing import ClassVar

from pydantic import PrivateAttr

from common.arabic import normalize_arabic
from factory.stages.base import Stage
from schemas.sample import Sample

#: Runs of anything that is not a word character (punctuation and whitespace alike) become one space: the same
#: result as blanking punctuation and then collapsing whitespace, in one regex pass instead of two.
_NON_WORD = re.compile(r"\W+")


@functools.lru_cache(maxsize=4096)
def normalize(text: str) -> str:
    """Case-, accent-, punctuation- and whitespace-insensitive form, so trivial edits still count as exact copies.

    Arabic spelling variants (diacritics, tatweel, alef, yaa and taa marbuta forms) are made one by
    ``common.arabic.normalize_arabic``, the one definition near dedupe uses too. Cached: decontamination, exact and
    near dedupe each normalize the same conversation text one after another.
    """
    text = normalize_arabic(unicodedata.normalize("NFKC", text)).casefold()
    return _NON_WORD.sub(" ", text).strip()


def text_hash(text: str) -> str:
    return hashlib.blake2b(normalize(text).encode("utf-8"), digest_size=16).hexdigest()


class ExactDedupe(Stage):
    """Keeps the first sample of each normalized text. State persists across :meth:`run` calls (balance rounds)."""

    name: ClassVar[str] = "dedupe_exact"
    _seen: dict[str, str] = PrivateAttr(default_factory=dict)

    def run(self, samples: Iterable[Sample]) -> Iterator[Sample]:
        for sample in samples:
            key = text_hash(sample.conversation.text())
            first = self._seen.get(key)
            if first is not None:
                self.drop(sample, "exact_duplicate", related_id=first, detail="same normalized text")
                continue
            self._seen[key] = sample.id
            yield self.keep(sample)
