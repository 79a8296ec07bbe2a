"""Is user text laid out in its own writing direction? Measured in a real (headless Chromium) page.

For every element a selector matches, :data:`MEASURE` takes the element that holds its first text (the element
itself, or a wrapper inside it such as Argilla's chat bubble holds), reads the text's script (Arabic letters
against Latin ones), the host's computed CSS ``direction``, and where each laid-out line of the text sits in the
host's content box: a right-to-left paragraph's lines end at the box's right edge, a left-to-right one's start at
its left edge. :func:`check` asserts both for each element. Without ``dir`` on an Arabic element the computed
direction is ``ltr`` and a short line starts at the left edge, so the check fails (the tests verified that once).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.helpers.cdp import Browser

MEASURE = r"""(selector => Array.from(document.querySelectorAll(selector)).map(el => {
  const walker = document.createTreeWalker(el, NodeFilter.SHOW_TEXT,
    {acceptNode: n => n.textContent.trim() ? NodeFilter.FILTER_ACCEPT : NodeFilter.FILTER_SKIP});
  const first = walker.nextNode();
  let host = first ? first.parentElement : el;
  while (host !== el && getComputedStyle(host).display === 'inline') host = host.parentElement;
  const text = host.innerText.trim();
  const arabic = (text.match(/[\u0600-\u06FF\u0750-\u077F\uFB50-\uFDFF\uFE70-\uFEFF]/g) || []).length;
  const latin = (text.match(/[A-Za-z]/g) || []).length;
  const style = getComputedStyle(host), box = host.getBoundingClientRect();
  const left = box.left + parseFloat(style.borderLeftWidth) + parseFloat(style.paddingLeft);
  const right = box.right - parseFloat(style.borderRightWidth) - parseFloat(style.paddingRight);
  const range = document.createRange(); range.selectNodeContents(host);
  const lines = {};
  for (const r of range.getClientRects()) {
    if (r.width < 1) continue;
    const key = Math.round(r.top / 4);
    const line = lines[key] || (lines[key] = {left: Infinity, right: -Infinity});
    line.left = Math.min(line.left, r.left); line.right = Math.max(line.right, r.right);
  }
  const spans = Object.values(lines);
  return {text: text.slice(0, 60), arabic, latin, expect: arabic > latin ? 'rtl' : 'ltr',
          direction: style.direction, dir: host.getAttribute('dir'), lang: host.closest('[lang]')?.getAttribute('lang'),
          lines: spans.length, width: right - left,
          right_gap: Math.max(...spans.map(s => right - s.right)), left_gap: Math.max(...spans.map(s => s.left - left)),
          shortest: Math.min(...spans.map(s => s.right - s.left))};
}))"""


def measure(browser: Browser, selector: str) -> list[dict[str, Any]]:
    rows = browser.evaluate(f"{MEASURE}({json.dumps(selector)})")
    assert isinstance(rows, list)
    return rows


def check(rows: list[dict[str, Any]], *, tolerance: float = 3.0) -> None:
    """Each element: computed direction as its script wants, and every line flush with the start edge."""
    assert rows, "no element to check"
    for row in rows:
        assert row["lines"] >= 1 and row["width"] > 0, row
        assert row["direction"] == row["expect"], f"laid out {row['direction']}, script says {row['expect']}: {row}"
        gap = row["right_gap"] if row["expect"] == "rtl" else row["left_gap"]
        assert gap <= tolerance, f"a line does not start at the {row['expect']} start edge: {row}"


def screenshot(browser: Browser, path: Path) -> Path:
    """A PNG of the whole page as laid out now."""
    import base64

    metrics = browser.call("Page.getLayoutMetrics")
    size = metrics.get("cssContentSize") or metrics["contentSize"]
    shot = browser.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                        clip={"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 6000),
                              "scale": 1})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(shot["data"]))
    return path
