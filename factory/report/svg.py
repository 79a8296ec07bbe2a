"""Small SVG charts for the dataset report: grouped bars, histograms, stacked horizontal bars.

Hand-written rather than matplotlib because the report is part of every ``forma build``: importing matplotlib and
drawing five figures took ~0.9 s of a 10,000-conversation build (a tenth of it), while these charts are a few
rectangles, ticks and labels that string formatting draws in about a millisecond. The training and eval reports,
which run once per model, keep matplotlib. Output is deterministic: the same data gives the same bytes.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

WIDTH, HEIGHT = 640, 320
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 28, 62
AXIS = "#444"
FONT = 'font-family="DejaVu Sans, Arial, sans-serif" font-size="11" fill="#222"'


@dataclass(frozen=True)
class Series:
    label: str
    values: Sequence[float]
    color: str


def nice_ticks(high: float, count: int = 5) -> list[float]:
    """Tick values from 0 to at least ``high`` in 1-2-2.5-5 steps (what a reader expects on an axis)."""
    if high <= 0:
        return [0.0, 1.0]
    raw = high / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw * (1 - 1e-9))
    return [round(i * step, 10) for i in range(math.ceil(high / step - 1e-9) + 1)]


def _num(value: float) -> str:
    return f"{value:.6g}"


def _text(x: float, y: float, text: str, anchor: str = "middle", extra: str = "") -> str:
    lines = text.split("\n")
    if len(lines) == 1:
        return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" {FONT}{extra}>{escape(text)}</text>'
    spans = "".join(f'<tspan x="{x:.1f}" dy="{0 if i == 0 else 1.15}em">{escape(line)}</tspan>'
                    for i, line in enumerate(lines))
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" {FONT}{extra}>{spans}</text>'


class _Plot:
    """A plot area with a linear value axis (vertical or horizontal) and a label axis."""

    def __init__(self, value_high: float, horizontal: bool = False) -> None:
        self.ticks = nice_ticks(value_high)
        self.top_value = self.ticks[-1]
        self.horizontal = horizontal
        self.x0, self.x1 = LEFT + (60 if horizontal else 0), WIDTH - RIGHT
        self.y0, self.y1 = HEIGHT - BOTTOM, TOP
        self.parts: list[str] = []

    def value(self, v: float) -> float:
        """Pixel position of value ``v`` on the value axis."""
        share = v / self.top_value
        return self.x0 + share * (self.x1 - self.x0) if self.horizontal else self.y0 - share * (self.y0 - self.y1)

    def axes(self, value_label: str, band_label: str) -> None:
        for t in self.ticks:
            p = self.value(t)
            if self.horizontal:
                self.parts.append(f'<line x1="{p:.1f}" y1="{self.y1}" x2="{p:.1f}" y2="{self.y0}" stroke="#e5e5e5"/>')
                self.parts.append(_text(p, self.y0 + 14, _num(t)))
            else:
                self.parts.append(f'<line x1="{self.x0}" y1="{p:.1f}" x2="{self.x1}" y2="{p:.1f}" stroke="#e5e5e5"/>')
                self.parts.append(_text(self.x0 - 6, p + 4, _num(t), anchor="end"))
        self.parts.append(f'<line x1="{self.x0}" y1="{self.y0}" x2="{self.x1}" y2="{self.y0}" stroke="{AXIS}"/>')
        self.parts.append(f'<line x1="{self.x0}" y1="{self.y0}" x2="{self.x0}" y2="{self.y1}" stroke="{AXIS}"/>')
        below, side = (value_label, band_label) if self.horizontal else (band_label, value_label)
        self.parts.append(_text((self.x0 + self.x1) / 2, HEIGHT - 8, below))
        if side:
            cy = (self.y0 + self.y1) / 2
            self.parts.append(_text(14, cy, side, extra=f' transform="rotate(-90 14 {cy:.1f})"'))

    def rect(self, x: float, y: float, w: float, h: float, color: str, title: str) -> None:
        self.parts.append(f'<rect x="{x:.2f}" y="{y:.2f}" width="{max(w, 0):.2f}" height="{max(h, 0):.2f}" '
                          f'fill="{color}"><title>{escape(title)}</title></rect>')

    def legend(self, series: Sequence[Series]) -> None:
        x = self.x1 - 110
        for i, s in enumerate(series):
            y = self.y1 - 18 + 14 * i
            self.parts.append(f'<rect x="{x}" y="{y}" width="10" height="10" fill="{s.color}"/>')
            self.parts.append(_text(x + 14, y + 9, s.label, anchor="start"))

    def svg(self) -> str:
        return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
                f'viewBox="0 0 {WIDTH} {HEIGHT}"><rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>'
                + "".join(self.parts) + "</svg>")


def grouped_bars(labels: Sequence[str], series: Sequence[Series], *, xlabel: str = "", ylabel: str = "") -> str:
    """Vertical bars, one group per label and one bar per series in each group."""
    plot = _Plot(max((v for s in series for v in s.values), default=0))
    plot.axes(ylabel, xlabel)
    band = (plot.x1 - plot.x0) / max(len(labels), 1)
    width = band * 0.8 / max(len(series), 1)
    for i, label in enumerate(labels):
        left = plot.x0 + i * band + band * 0.1
        for j, s in enumerate(series):
            top = plot.value(s.values[i])
            plot.rect(left + j * width, top, width, plot.y0 - top, s.color, f"{label}: {_num(s.values[i])}")
        plot.parts.append(_text(plot.x0 + (i + 0.5) * band, plot.y0 + 14, label))
    if len(series) > 1:
        plot.legend(series)
    return plot.svg()


def histogram(edges: Sequence[float], counts: Sequence[float], *, color: str, xlabel: str, ylabel: str) -> str:
    """Adjacent bars over bin ``edges`` (len(counts) + 1 of them), with the bin edges' range as the x axis."""
    plot = _Plot(max(counts, default=0))
    plot.axes(ylabel, "")
    plot.parts.append(_text((plot.x0 + plot.x1) / 2, HEIGHT - 24, xlabel))
    lo, hi = (edges[0], edges[-1]) if edges else (0.0, 1.0)
    span = (hi - lo) or 1.0

    def x(v: float) -> float:
        return plot.x0 + (v - lo) / span * (plot.x1 - plot.x0)

    for a, b, n in zip(edges, edges[1:], counts, strict=False):
        top = plot.value(n)
        plot.rect(x(a), top, x(b) - x(a) - 0.5, plot.y0 - top, color, f"{_num(a)}-{_num(b)}: {_num(n)}")
    step = nice_ticks(span)[1]
    for i in range(math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9) + 1):
        plot.parts.append(_text(x(i * step), plot.y0 + 14, _num(round(i * step, 10))))
    return plot.svg()


def stacked_hbars(labels: Sequence[str], series: Sequence[Series], *, xlabel: str) -> str:
    """Horizontal bars, one row per label (top to bottom), the series stacked left to right."""
    plot = _Plot(max((sum(vals) for vals in zip(*(s.values for s in series), strict=True)), default=0),
                 horizontal=True)
    plot.axes(xlabel, "")
    band = (plot.y0 - plot.y1) / max(len(labels), 1)
    for i, label in enumerate(labels):
        y, start = plot.y1 + i * band + band * 0.15, 0.0
        for s in series:
            v = s.values[i]
            plot.rect(plot.value(start), y, plot.value(start + v) - plot.value(start), band * 0.7, s.color,
                      f"{label} {s.label}: {_num(v)}")
            start += v
        plot.parts.append(_text(plot.x0 - 6, y + band * 0.35 + 4, label, anchor="end"))
    plot.legend(series)
    return plot.svg()


def data_uri(svg: str) -> str:
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode("utf-8")).decode("ascii")
