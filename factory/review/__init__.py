"""Expert review in Argilla: push samples, pull the experts' verdicts, merge them into a new dataset version.

The round trip is built so that nothing is lost: records are keyed by sample id (a second push updates, never
duplicates), every fetched response is appended to a local journal before anything else happens, and the merge
is a pure function of the dataset and the journal (pulling twice gives the same merge).
"""

from factory.review.merge import MergeResult, merge_reviews

__all__ = ["MergeResult", "merge_reviews"]
