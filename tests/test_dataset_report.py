"""The dataset report: written by a build, self-contained, and its plots render in headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from factory.build import build_dataset
from tests.helpers.dedupe import RECIPE

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("report")
    mp = pytest.MonkeyPatch()
    mp.setenv("FORMA_REPORTS", str(root / "reports"))
    try:
        build_dataset(RECIPE, root / "ds", total=300)
    finally:
        mp.undo()
    return root / "ds", root / "reports" / "ds"


def test_report_files_and_content(built: tuple[Path, Path]) -> None:
    dataset, reports = built
    for folder in (dataset / "report", reports):
        assert (folder / "report.html").is_file() and (folder / "report.json").is_file()
    data = json.loads((reports / "report.json").read_text())
    assert sum(c["actual"] for c in data["categories"]) == 300
    assert all(c["actual"] == c["target"] for c in data["categories"])
    assert [s["stage"] for s in data["funnel"]][-3:] == ["dedupe_exact", "dedupe_near", "dedupe_semantic"]
    assert data["nearest_neighbour"]["cosine"]["counts"] and sum(data["turns"].values()) == 300
    html = (reports / "report.html").read_text()
    assert "http://" not in html.replace("http://www.w3.org", "") and "https://" not in html  # self-contained


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed (scripts/setup.sh installs it)")
def test_plots_render_in_headless_chromium(built: tuple[Path, Path], tmp_path: Path) -> None:
    _, reports = built
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", (reports / "report.html").as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout
    body = re.search(r"<body[^>]*>", dom)
    assert body, dom[:500]
    plots = re.search(r'data-plots="(\d+)"', body.group(0))
    rendered = re.search(r'data-plots-rendered="(\d+)"', body.group(0))
    assert plots and rendered and int(plots.group(1)) == int(rendered.group(1)) == 5
