"""Push and pull throughput (records/s) of the review round trip against a local Argilla.

Starts its own stack (argilla-server 2.8.0 + noida-db) unless --url is given, pushes N synthetic samples
(vectors off by default: this measures the Argilla round trip, not MiniLM), has two annotators submit a response
to every record through the bulk responses endpoint, then pulls (journal) and merges. Prints JSON.

    .venv/bin/python bench/review.py --records 10000 [--vectors] [--url URL]   (key: $ARGILLA_API_KEY)
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def report(figures: dict[str, Any]) -> None:
    print(json.dumps(figures), file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--vectors", action="store_true", help="include MiniLM vectors (embedding time counted)")
    parser.add_argument("--annotate", type=int, default=200,
                        help="records that two annotators answer (noida-db makes each response slow on a big index)")
    parser.add_argument("--url", default=None, help="an existing server (default: start a local one)")
    args = parser.parse_args()

    from review.client import ArgillaClient
    from review.dataset import load_version
    from review.fixtures import create_annotator, make_samples, write_version
    from review.merge import merge_reviews
    from review.pull import pull
    from review.push import PushOptions, push
    from review.server import LocalArgilla, ServerConfig

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        stack = None
        figures: dict[str, Any] = {"records": args.records, "vectors": args.vectors, "batch_size": args.batch_size}
        if args.url is None:
            t = time.perf_counter()
            stack = LocalArgilla(ServerConfig(home=root / "home")).start()
            figures["server_start_s"] = round(time.perf_counter() - t, 1)
            owner = ArgillaClient(stack.url, stack.api_key, timeout=600)
        else:
            owner = ArgillaClient(args.url, timeout=600)
        try:
            version = load_version(write_version(root / "bench", make_samples(args.records, seed=11)))
            name = f"bench-{int(time.time())}"
            options = PushOptions(name=name, vectors=args.vectors, batch_size=args.batch_size, min_submitted=2)
            marks: list[tuple[int, float]] = []
            t = time.perf_counter()
            result = push(version, owner, options,
                          progress=lambda done, total: marks.append((done, time.perf_counter())))
            figures["push_s"] = round(time.perf_counter() - t, 2)
            figures["push_batches_records_per_s"] = [round((d1 - d0) / (t1 - t0), 1) for (d0, t0), (d1, t1)
                                                     in itertools.pairwise(marks)]
            figures["push_records_per_s"] = round(args.records / figures["push_s"], 1)
            report(figures)
            t = time.perf_counter()
            again = push(version, owner, options)
            figures["repush_unchanged_s"] = round(time.perf_counter() - t, 2)
            assert again.unchanged == args.records

            report(figures)
            ids = [r["id"] for r in owner.iter_records(result.dataset_id, include=())][: args.annotate]
            t = time.perf_counter()
            for n, user in enumerate(("bench_ann1", "bench_ann2")):
                annotator = create_annotator(owner, user, f"{user}-password")
                annotator.timeout = 600
                for start in range(0, len(ids), 100):
                    items = [{"record_id": rid, "status": "submitted", "values": {
                        "accuracy": {"value": 4 + (n and i % 2)}, "safety": {"value": "safe"},
                        "correct_category": {"value": "nutrition"}, "verdict": {"value": "approve"}}}
                        for i, rid in enumerate(ids[start:start + 100])]
                    annotator.request("POST", "/me/responses/bulk", json={"items": items})
            figures["annotated_records"] = len(ids)
            figures["annotate_2x_s"] = round(time.perf_counter() - t, 2)
            figures["responses_per_s"] = round(2 * len(ids) / figures["annotate_2x_s"], 1)
            report(figures)

            journal = root / "journal.jsonl"
            t = time.perf_counter()
            pulled = pull(owner, name, journal)
            figures["pull_s"] = round(time.perf_counter() - t, 2)
            figures["pull_records_read"] = pulled.records_seen
            figures["pull_records_read_per_s"] = round(pulled.records_seen / figures["pull_s"], 1)
            figures["pull_responses"] = pulled.responses_fetched
            t = time.perf_counter()
            merged = merge_reviews(version.path, journal, root / "merged")
            figures["merge_s"] = round(time.perf_counter() - t, 2)
            figures["merge_counts"] = merged.counts
            figures["accuracy_kappa"] = merged.agreement["accuracy"].cohen_kappa_mean
        finally:
            if stack is not None:
                stack.stop()
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
