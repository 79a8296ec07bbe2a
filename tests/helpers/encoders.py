"""A deterministic stand-in for MiniLM in tests of the scorer's fitting logic (the head, its features, its files),
where the embedder is not what is under test; the tests that measure the scorer use the real MiniLM."""

from __future__ import annotations

from typing import Any

import numpy as np


class HashedBagEncoder:
    """A hashed bag of words in MiniLM's 384 dimensions, L2-normalised: same texts, same vectors."""

    def __call__(self, texts: list[str]) -> Any:
        out = np.zeros((len(texts), 384))
        for i, t in enumerate(texts):
            for w in t.lower().split():
                out[i, sum(map(ord, w)) % 384] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1, norms)
