"""Session-wide test settings: reports go to a temporary folder, never into the repository's reports/."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest


def pytest_configure(config: pytest.Config) -> None:
    if "FORMA_REPORTS" not in os.environ:
        os.environ["FORMA_REPORTS"] = tempfile.mkdtemp(prefix="forma-test-reports-")


@pytest.fixture(scope="session")
def llm_reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The uninterrupted SmolLM2 build that the resume and LLM tests compare against (built once per session)."""
    from tests.helpers.llm import reference_build

    return reference_build(tmp_path_factory.mktemp("llm-reference"))
