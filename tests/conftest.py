"""Session-wide test settings: reports go to a temporary folder, never into the repository's reports/."""

from __future__ import annotations

import os
import tempfile

import pytest


def pytest_configure(config: pytest.Config) -> None:
    if "FORMA_REPORTS" not in os.environ:
        os.environ["FORMA_REPORTS"] = tempfile.mkdtemp(prefix="forma-test-reports-")
