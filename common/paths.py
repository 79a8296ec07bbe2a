"""Where Forma reads and writes by default: the repository root and the reports folder."""

from __future__ import annotations

import os
from pathlib import Path

#: The repository root (the folder holding ``recipes/`` and ``eval/``).
REPO_ROOT = Path(__file__).resolve().parents[1]


def reports_root() -> Path:
    """``$FORMA_REPORTS`` or ``reports/`` under the working directory (the repository's reports folder)."""
    return Path(os.environ.get("FORMA_REPORTS", "reports"))
