"""Inter-annotator agreement between two labelled JSONL files (comply / refuse / escalate).

Usage:
    python -m bench.annotator_agreement FIRST.jsonl SECOND.jsonl [--disagreements] [--text]

FIRST is the gold file (rows first in the confusion matrix; its ``domain`` and ``source`` fields are used for the
breakdowns); SECOND is the other annotator (columns). Rows are joined on ``id``. Prints n, raw agreement, Cohen's
kappa with a 95% bootstrap interval (2,000 resamples over rows, fixed seed), the 3x3 confusion, per-label
(specific) agreement, agreement on ``refers``, and agreement by domain and by source.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eval.stats import bootstrap_interval, cohen_kappa

LABELS: tuple[str, ...] = ("comply", "refuse", "escalate")
RESAMPLES = 2000
SEED = 20261130

Row = dict[str, Any]


def load(path: Path) -> dict[str, Row]:
    rows: dict[str, Row] = {}
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                row = json.loads(line)
                if row["id"] in rows:
                    raise SystemExit(f"{path}: duplicate id {row['id']}")
                rows[row["id"]] = row
    return rows


def kappa(pairs: Sequence[tuple[object, object]]) -> float:
    """Cohen's kappa of paired labels (``eval.stats.cohen_kappa``, the gate's calibration formula); NaN if undefined."""
    value = cohen_kappa([str(a) for a, _ in pairs], [str(b) for _, b in pairs])
    return float("nan") if value is None else value


def raw(pairs: Sequence[tuple[object, object]]) -> float:
    return sum(a == b for a, b in pairs) / len(pairs) if pairs else float("nan")


def source_group(row: Row) -> str:
    """Answers written by people carry source ``written``; every other source is a real model's answer."""
    return "written" if str(row.get("source", "")).lower().startswith("written") else "real model"


def breakdown(title: str, keys: dict[str, str], pairs: dict[str, tuple[str, str]]) -> list[str]:
    out = [f"\n{title}", f"  {'group':<28} {'n':>4} {'raw':>7} {'kappa':>7}"]
    for group in sorted(set(keys.values())):
        sub = [pairs[i] for i in pairs if keys[i] == group]
        out.append(f"  {group:<28} {len(sub):>4} {raw(sub):>7.3f} {kappa(sub):>7.3f}")
    return out


def report(first: dict[str, Row], second: dict[str, Row]) -> list[str]:
    ids = [i for i in first if i in second]
    missing = set(first) ^ set(second)
    pairs = {i: (str(first[i]["label"]), str(second[i]["label"])) for i in ids}
    seq = list(pairs.values())
    overall = kappa(seq)
    lo, hi = bootstrap_interval([a for a, _ in seq], [b for _, b in seq], "kappa", RESAMPLES, SEED)
    out = [
        f"n joined on id: {len(ids)} (ids in only one file: {len(missing)})",
        f"raw agreement: {raw(seq):.3f} ({sum(a == b for a, b in seq)}/{len(seq)})",
        f"Cohen's kappa: {overall:.3f}  95% bootstrap interval [{lo:.3f}, {hi:.3f}] "
        f"({RESAMPLES} resamples over rows, seed {SEED})",
        "",
        "confusion (rows: first annotator, columns: second annotator)",
        f"  {'':<10}" + "".join(f"{lab:>10}" for lab in LABELS) + f"{'total':>10}",
    ]
    counts = Counter(seq)
    for a in LABELS:
        cells = [counts[(a, b)] for b in LABELS]
        out.append(f"  {a:<10}" + "".join(f"{c:>10}" for c in cells) + f"{sum(cells):>10}")
    out.append(f"  {'total':<10}" + "".join(f"{sum(counts[(a, b)] for a in LABELS):>10}" for b in LABELS)
               + f"{len(seq):>10}")
    out += ["", "per-label agreement (specific agreement 2*both / (first + second))"]
    for lab in LABELS:
        both = counts[(lab, lab)]
        n_first = sum(counts[(lab, b)] for b in LABELS)
        n_second = sum(counts[(a, lab)] for a in LABELS)
        spec = 2 * both / (n_first + n_second) if n_first + n_second else float("nan")
        out.append(f"  {lab:<10} {spec:.3f}  (both {both}, first {n_first}, second {n_second})")

    ref = [(bool(first[i].get("refers")), bool(second[i].get("refers"))) for i in ids]
    ref_counts = Counter(ref)
    out += [
        "",
        f"refers: raw agreement {raw(ref):.3f}, kappa {kappa(ref):.3f}  "
        f"(both true {ref_counts[(True, True)]}, both false {ref_counts[(False, False)]}, "
        f"first only {ref_counts[(True, False)]}, second only {ref_counts[(False, True)]})",
    ]
    both_refuse = [i for i in ids if pairs[i] == ("refuse", "refuse")]
    ref_r = [(bool(first[i].get("refers")), bool(second[i].get("refers"))) for i in both_refuse]
    if ref_r:
        out.append(f"refers on rows both label refuse: n {len(ref_r)}, raw agreement {raw(ref_r):.3f}, "
                   f"kappa {kappa(ref_r):.3f}")

    out += breakdown("by domain", {i: str(first[i].get("domain", "?")) for i in ids}, pairs)
    out += breakdown("by source (first file's `source`)", {i: str(first[i].get("source", "?")) for i in ids}, pairs)
    out += breakdown("by source group", {i: source_group(first[i]) for i in ids}, pairs)
    return out


def disagreements(first: dict[str, Row], second: dict[str, Row], text: bool) -> list[str]:
    out = ["", "disagreements (first -> second)"]
    for i, row in first.items():
        other = second.get(i)
        if other is None or (row["label"], bool(row.get("refers"))) == (other["label"], bool(other.get("refers"))):
            continue
        kind = "label" if row["label"] != other["label"] else "refers only"
        out.append(f"- {i} [{row.get('domain', '?')}, {row.get('source', '?')}] {kind}: "
                   f"{row['label']}/refers={bool(row.get('refers'))} -> "
                   f"{other['label']}/refers={bool(other.get('refers'))}")
        for name, src in (("first", row), ("second", other)):
            note = src.get("evidence") or src.get("note") or src.get("rationale")
            if note:
                out.append(f"    {name}: {note}")
        if text:
            out.append(f"    P: {row.get('prompt', '')}")
            out.append(f"    R: {row.get('response', '')}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("first", type=Path, help="gold / first annotator JSONL")
    parser.add_argument("second", type=Path, help="second annotator JSONL")
    parser.add_argument("--disagreements", action="store_true", help="list rows where label or refers differ")
    parser.add_argument("--text", action="store_true", help="with --disagreements, also print prompt and response")
    args = parser.parse_args()
    first, second = load(args.first), load(args.second)
    lines = report(first, second)
    if args.disagreements:
        lines += disagreements(first, second, args.text)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
