"""The comparison's two plots as inline SVG: pass rate per arm and category with its 95% interval, and training loss
per arm. Hand-drawn like the dataset report's charts (``factory/report/svg.py``): a few lines and circles, the same
bytes for the same data, no matplotlib import; these need interval whiskers and line series, which that module lacks.
"""

from __future__ import annotations

from html import escape
from typing import Any

PALETTE = ("#7f7f7f", "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf")
FONT = 'font-family="DejaVu Sans, Arial, sans-serif" font-size="11" fill="#222"'
WIDTH = 760


def colors(arms: list[str]) -> dict[str, str]:
    return {arm: PALETTE[i % len(PALETTE)] for i, arm in enumerate(arms)}


def _text(x: float, y: float, text: str, anchor: str = "start", extra: str = "") -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" {FONT}{extra}>{escape(text)}</text>'


def _legend(arms: list[str], palette: dict[str, str], y: float, x0: float = 200) -> list[str]:
    parts, x = [], x0
    for arm in arms:
        parts.append(f'<rect x="{x:.1f}" y="{y - 9:.1f}" width="10" height="10" fill="{palette[arm]}"/>')
        parts.append(_text(x + 14, y, arm))
        x += 24 + 7 * len(arm)
    return parts


def rate_plot(groups: list[dict[str, Any]], arms: list[str], element_id: str = "plot-rates") -> str:
    """One band per suite/category, one row per arm: a dot at the pass rate, a bar from the interval's low to high."""
    palette = colors(arms)
    left, right, top, row, gap = 200, 30, 40, 12, 10
    band = row * len(arms) + gap
    height = top + band * len(groups) + 30
    x0, x1 = left, WIDTH - right

    def sx(v: float) -> float:
        return x0 + (x1 - x0) * v

    parts = [f'<svg id="{element_id}" class="plot" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" '
             f'height="{height}" viewBox="0 0 {WIDTH} {height}" role="img">',
             _text(WIDTH / 2, 16, "Pass rate per arm (dot) with its 95% Wilson interval (bar)", "middle",
                   ' font-weight="bold"'), *_legend(arms, palette, 32)]
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        parts.append(f'<line x1="{sx(tick):.1f}" y1="{top}" x2="{sx(tick):.1f}" y2="{height - 24}" '
                     f'stroke="#ddd"/>')
        parts.append(_text(sx(tick), height - 10, f"{tick:.0%}", "middle"))
    for g_index, group in enumerate(groups):
        y_band = top + g_index * band + gap / 2
        weight = ' font-weight="bold"' if group["category"] is None else ""
        parts.append(_text(left - 8, y_band + band / 2, group["label"], "end", weight))
        for a_index, arm in enumerate(arms):
            r = group["arms"].get(arm, {})
            if r.get("rate") is None:
                continue
            y = y_band + a_index * row + row / 2
            c = palette[arm]
            parts.append(f'<line x1="{sx(r["low"]):.1f}" y1="{y:.1f}" x2="{sx(r["high"]):.1f}" y2="{y:.1f}" '
                         f'stroke="{c}" stroke-width="3" opacity="0.55"/>')
            parts.append(f'<circle cx="{sx(r["rate"]):.1f}" cy="{y:.1f}" r="3.5" fill="{c}">'
                         f'<title>{escape(arm)} {escape(group["label"])}: {r["passed"]}/{r["n"]} = {r["rate"]:.1%} '
                         f'[{r["low"]:.1%}, {r["high"]:.1%}]</title></circle>')
    parts.append("</svg>")
    return "\n".join(parts)


def loss_plot(curves: dict[str, dict[str, list[list[float]]]], arms: list[str], element_id: str = "plot-loss") -> str:
    """Train loss (solid) and eval loss (dashed, dots) against the optimiser step, one colour per arm."""
    palette = colors(arms)
    height, left, right, top, bottom = 320, 60, 20, 44, 40
    points = [p for c in curves.values() for series in c.values() for p in series]
    parts = [f'<svg id="{element_id}" class="plot" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" '
             f'height="{height}" viewBox="0 0 {WIDTH} {height}" role="img">',
             _text(WIDTH / 2, 16, "Training loss per arm (solid: train, dashed: eval)", "middle",
                   ' font-weight="bold"'), *_legend([a for a in arms if a in curves], palette, 32, left)]
    if not points:
        parts += [_text(WIDTH / 2, height / 2, "no training curves (no arm was trained here)", "middle"), "</svg>"]
        return "\n".join(parts)
    x_hi = max(p[0] for p in points) or 1.0
    y_lo, y_hi = min(p[1] for p in points), max(p[1] for p in points)
    y_lo, y_hi = (y_lo - 0.05, y_hi + 0.05) if y_hi - y_lo < 1e-9 else (y_lo, y_hi)

    def sx(v: float) -> float:
        return left + (WIDTH - left - right) * v / x_hi

    def sy(v: float) -> float:
        return height - bottom - (height - top - bottom) * (v - y_lo) / (y_hi - y_lo)

    for i in range(5):
        v = y_lo + (y_hi - y_lo) * i / 4
        parts.append(f'<line x1="{left}" y1="{sy(v):.1f}" x2="{WIDTH - right}" y2="{sy(v):.1f}" stroke="#eee"/>')
        parts.append(_text(left - 6, sy(v) + 4, f"{v:.2f}", "end"))
    parts.append(_text(left + (WIDTH - left) / 2, height - 8, f"optimiser step (0 to {x_hi:g})", "middle"))
    for arm in arms:
        for name, dash in (("train", ""), ("eval", ' stroke-dasharray="5 4"')):
            series = curves.get(arm, {}).get(name) or []
            if not series:
                continue
            path = " ".join(f"{sx(s):.1f},{sy(v):.1f}" for s, v in series)
            parts.append(f'<polyline points="{path}" fill="none" stroke="{palette[arm]}" stroke-width="1.6"{dash}>'
                         f'<title>{escape(arm)} {name} loss</title></polyline>')
            if name == "eval" or len(series) == 1:
                parts += [f'<circle cx="{sx(s):.1f}" cy="{sy(v):.1f}" r="2.5" fill="{palette[arm]}"/>'
                          for s, v in series]
    parts.append("</svg>")
    return "\n".join(parts)
