"""Expert review in Argilla: push samples, pull the experts' verdicts, merge them into a new dataset version.

The round trip is built so that nothing is lost: records are keyed by sample id (a second push updates, never
duplicates), every fetched response is appended to a local journal before anything else happens, and the merge
is a pure function of the dataset and the journal (pulling twice gives the same merge).
"""

from __future__ import annotations

from typing import Any

__all__ = ["MergeResult", "merge_reviews"]


def __getattr__(name: str) -> Any:
    # Lazy, so importing review.server does not pull in the merge code (and the other way round).
    if name in __all__:
        from review import merge

        return getattr(merge, name)
    raise AttributeError(name)
