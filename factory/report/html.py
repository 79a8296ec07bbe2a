"""Render the report's data as one self-contained HTML page: SVG plots inlined as base64 images, no network.

SVGs are written with a fixed hash salt and no date, so the same data gives the same bytes (the build is
byte-reproducible, report included).
"""

from __future__ import annotations

import base64
import io
from itertools import pairwise
from pathlib import Path
from typing import Any

TEMPLATE = Path(__file__).with_name("template.html.jinja")


def _figure() -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.hashsalt"] = "forma"
    plt.rcParams["svg.fonttype"] = "none"
    fig, ax = plt.subplots(figsize=(6.4, 3.2), dpi=100)
    ax.spines[["top", "right"]].set_visible(False)
    return fig, ax


def _svg(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    plt.close(fig)
    return "data:image/svg+xml;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def plot_categories(data: dict[str, Any]) -> str:
    rows = data["categories"]
    fig, ax = _figure()
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [100 * r["target_share"] for r in rows], width=0.4, label="target", color="#9db4d6")
    ax.bar([i + 0.2 for i in x], [100 * r["actual_share"] for r in rows], width=0.4, label="actual", color="#2b5d9c")
    ax.set_xticks(list(x), [r["category"].replace("_", "\n") for r in rows], fontsize=8)
    ax.set_ylabel("share of samples (%)")
    ax.legend(frameon=False)
    return _svg(fig)


def plot_turns(data: dict[str, Any]) -> str:
    fig, ax = _figure()
    turns = data["turns"]
    ax.bar(list(turns), list(turns.values()), color="#2b5d9c")
    ax.set_xlabel("user turns per conversation")
    ax.set_ylabel("samples")
    return _svg(fig)


def _hist(ax: Any, hist: dict[str, list[float]], color: str) -> None:
    edges, counts = hist["edges"], hist["counts"]
    ax.bar(edges[:-1], counts, width=[b - a for a, b in pairwise(edges)], align="edge",
           color=color, edgecolor="white")


def plot_lengths(data: dict[str, Any]) -> str:
    fig, ax = _figure()
    _hist(ax, data["lengths"]["chars"], "#2b5d9c")
    ax.set_xlabel("characters per conversation (user + assistant)")
    ax.set_ylabel("samples")
    return _svg(fig)


def plot_funnel(data: dict[str, Any]) -> str:
    stages = data["funnel"]
    fig, ax = _figure()
    names = [s["stage"] for s in stages]
    ax.barh(names, [s["kept"] for s in stages], color="#2b5d9c", label="kept")
    ax.barh(names, [s["dropped"] for s in stages], left=[s["kept"] for s in stages], color="#d9534f", label="dropped")
    ax.invert_yaxis()
    ax.set_xlabel("samples seen by the stage")
    ax.legend(frameon=False, fontsize=8)
    return _svg(fig)


def plot_similarity(data: dict[str, Any]) -> str:
    fig, ax = _figure()
    _hist(ax, data["nearest_neighbour"]["cosine"], "#5a9c2b")
    ax.set_xlabel("cosine similarity to the nearest other sample (user text)")
    ax.set_ylabel("samples")
    return _svg(fig)


def render(data: dict[str, Any]) -> str:
    import jinja2

    plots: list[tuple[str, str, str]] = [
        ("categories", "Category shares: target versus actual", plot_categories(data)),
        ("turns", "Turns per conversation", plot_turns(data)),
        ("lengths", "Conversation length", plot_lengths(data)),
    ]
    if data["funnel"]:
        plots.append(("funnel", "Filter funnel: kept and dropped per stage", plot_funnel(data)))
    if data["nearest_neighbour"]["cosine"]:
        plots.append(("similarity", "Nearest-neighbour similarity of the kept samples", plot_similarity(data)))
    env = jinja2.Environment(autoescape=True, keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    template = env.from_string(TEMPLATE.read_text(encoding="utf-8"))
    return template.render(data=data, plots=plots)
