"""Render the report's data as one self-contained HTML page: SVG plots inlined as base64 images, no network.

The plots come from ``factory.report.svg`` (no date, no random ids), so the same data gives the same bytes (the
build is byte-reproducible, report included).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from common.textdir import USER_TEXT_CSS, dir_attrs
from factory.card import LANGUAGE_NAMES
from factory.report.svg import Series, data_uri, grouped_bars, histogram, stacked_hbars

TEMPLATE = Path(__file__).with_name("template.html.jinja")
LIGHT, DARK, RED, GREEN = "#9db4d6", "#2b5d9c", "#d9534f", "#5a9c2b"


def plot_categories(data: dict[str, Any]) -> str:
    rows = data["categories"]
    labels = [r["category"].replace("_", "\n") for r in rows]
    return data_uri(grouped_bars(labels, [Series("target", [100 * r["target_share"] for r in rows], LIGHT),
                                          Series("actual", [100 * r["actual_share"] for r in rows], DARK)],
                                 ylabel="share of samples (%)"))


def plot_turns(data: dict[str, Any]) -> str:
    turns = data["turns"]
    return data_uri(grouped_bars(list(turns), [Series("samples", list(turns.values()), DARK)],
                                 xlabel="user turns per conversation", ylabel="samples"))


def plot_lengths(data: dict[str, Any]) -> str:
    hist = data["lengths"]["chars"]
    return data_uri(histogram(hist["edges"], hist["counts"], color=DARK,
                              xlabel="characters per conversation (user + assistant)", ylabel="samples"))


def plot_funnel(data: dict[str, Any]) -> str:
    stages = data["funnel"]
    return data_uri(stacked_hbars([s["stage"] for s in stages],
                                  [Series("kept", [s["kept"] for s in stages], DARK),
                                   Series("dropped", [s["dropped"] for s in stages], RED)],
                                  xlabel="samples seen by the stage"))


def plot_similarity(data: dict[str, Any]) -> str:
    hist = data["nearest_neighbour"]["cosine"]
    return data_uri(histogram(hist["edges"], hist["counts"], color=GREEN,
                              xlabel="cosine similarity to the nearest other sample (user text)", ylabel="samples"))


def render(data: dict[str, Any]) -> str:
    import jinja2
    import markupsafe

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
    env.filters["dir"] = lambda language: markupsafe.Markup(dir_attrs(language))
    template = env.from_string(TEMPLATE.read_text(encoding="utf-8"))
    return template.render(data=data, plots=plots, user_text_css=markupsafe.Markup(USER_TEXT_CSS),
                           language_names=LANGUAGE_NAMES)
