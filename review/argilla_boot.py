"""Start argilla-server with its response queries made nested, so the queue and progress work on noida-db.

Run by the server's own venv (``python review/argilla_boot.py HOST PORT``), never imported by Forma: it imports
only argilla_server and uvicorn. Argilla maps ``responses`` as ``nested`` with ``include_in_root: true`` and then
asks two questions of the root-level copy that ``include_in_root`` makes: the annotator's Pending queue
(``must_not: term responses.user_id``) and "My progress" (a terms aggregation on ``responses.status``).
noida-db keeps nested documents but not that root copy, so the queue held every record and progress said 0.
Both are rewritten here as the nested query and the nested aggregation that ask the same thing; they give the
same answers on Elasticsearch and OpenSearch, so this changes nothing where the root copy exists.
"""

from __future__ import annotations

import sys
from typing import Any


def _pending_filter(original: Any) -> Any:
    from argilla_server.search_engine.base import ResponseStatusFilter
    from argilla_server.search_engine.commons import (
        es_bool_query,
        es_exists_field_query,
        es_nested_query,
        es_term_query,
    )

    def patched(self: Any, filter: Any) -> dict[str, Any]:
        if ResponseStatusFilter.pending not in filter.values:
            return dict(original(self, filter))
        if filter.scope.user:  # records this user has not answered: no nested response of theirs
            mine = es_term_query("responses.user_id", str(filter.scope.user.id))
        else:  # records nobody has answered
            mine = es_exists_field_query("responses.id")
        es_filter = es_bool_query(must_not=es_nested_query(path="responses", query=mine))
        filter.values.remove(ResponseStatusFilter.pending)
        if not filter.values:
            return dict(es_filter)
        return dict(es_bool_query(should=[es_filter, patched(self, filter)], minimum_should_match=1))

    return patched


async def _user_progress(self: Any, dataset: Any, user: Any) -> dict[str, Any]:
    """The user's responses by status, counted with a nested aggregation (one request)."""
    from argilla_server.search_engine.commons import es_index_name_for_dataset

    if dataset.is_draft:
        return {}
    aggregations = {"responses": {"nested": {"path": "responses"}, "aggs": {
        "mine": {"filter": {"term": {"responses.user_id": str(user.id)}},
                 "aggs": {"status": {"terms": {"field": "responses.status", "size": 10}}}}}}}
    answer = await self._index_search_request(es_index_name_for_dataset(dataset), query={"match_all": {}},
                                              aggregations=aggregations, size=0)
    mine = answer["aggregations"]["responses"]["mine"]
    return {"total": mine["doc_count"], **{b["key"]: b["doc_count"] for b in mine["status"]["buckets"]}}


def patch() -> None:
    from argilla_server.search_engine.commons import BaseElasticAndOpenSearchEngine as Engine

    Engine._response_status_filter_to_es_filter = _pending_filter(  # type: ignore[method-assign]
        Engine._response_status_filter_to_es_filter)
    Engine.get_dataset_user_progress = _user_progress  # type: ignore[method-assign]


def main(argv: list[str]) -> None:
    import uvicorn

    host, port = argv[0], int(argv[1])
    patch()
    from argilla_server import app

    uvicorn.run(app, host=host, port=port, log_level="warning")


if __name__ == "__main__":
    main(sys.argv[1:])
