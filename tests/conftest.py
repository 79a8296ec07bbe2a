"""Session-wide test settings: reports and Unsloth's compiled-code cache go to temporary folders, never into the
repository (Unsloth writes ./unsloth_compiled_cache when it is imported)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest


def pytest_configure(config: pytest.Config) -> None:
    if "FORMA_REPORTS" not in os.environ:
        os.environ["FORMA_REPORTS"] = tempfile.mkdtemp(prefix="forma-test-reports-")
    if "UNSLOTH_COMPILE_LOCATION" not in os.environ:
        os.environ["UNSLOTH_COMPILE_LOCATION"] = tempfile.mkdtemp(prefix="forma-unsloth-cache-")


@pytest.fixture(scope="session")
def llm_reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The uninterrupted SmolLM2 build that the resume and LLM tests compare against (built once per session)."""
    from tests.helpers.llm import reference_build

    return reference_build(tmp_path_factory.mktemp("llm-reference"))
