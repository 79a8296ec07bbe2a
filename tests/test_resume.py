"""A killed LLM build resumes to the same dataset as an uninterrupted one, repeating no LLM call; a changed recipe
pays only for what changed. Real SmolLM2-135M-Instruct GGUF, real ``forma build`` subprocesses, real SIGKILL."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from common.outdir import partial_path
from factory.generators.cache import LLMCache
from tests.helpers.llm import write_recipe

FORMA = str(Path(sys.executable).parent / "forma")
KILL_AFTER_CALLS = 4


def _calls(db_path: Path) -> int:
    if not db_path.is_file():
        return 0
    # a read-write connection: a read-only one cannot read a WAL database while its writer holds it open (it
    # needs the -shm file), and would see nothing until the build ends
    try:
        with sqlite3.connect(str(db_path), timeout=5) as db:
            return int(db.execute("SELECT COUNT(*) FROM calls").fetchone()[0])
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):  # tables not created yet
            return 0
        raise


@pytest.mark.slow
def test_killed_build_resumes_to_the_same_dataset_without_repeating_calls(tmp_path: Path,
                                                                        llm_reference: tuple[Path, Path]) -> None:
    ref_recipe, ref_out = llm_reference
    folder = tmp_path
    recipe = write_recipe(folder, yaml.safe_load(ref_recipe.read_text()))
    out = folder / "out"
    db = partial_path(out) / "cache" / "llm.sqlite"  # a build writes beside --out until it is complete (#18)

    proc = subprocess.Popen([FORMA, "build", str(recipe), "--out", str(out), "-q"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    while _calls(db) < KILL_AFTER_CALLS:
        assert proc.poll() is None, "the build ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    made_before_kill = _calls(db)
    assert made_before_kill >= KILL_AFTER_CALLS
    assert not (out / "samples.jsonl").exists()

    # without --resume the cached replies are neither reused silently nor thrown away
    refused = subprocess.run([FORMA, "build", str(recipe), "--out", str(out), "-q"], capture_output=True, text=True,
                             timeout=300)
    assert refused.returncode == 2 and "--resume" in refused.stdout + refused.stderr
    assert _calls(db) == made_before_kill

    done = subprocess.run([FORMA, "build", str(recipe), "--out", str(out), "--resume", "-q"], capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (out / "samples.jsonl").read_bytes() == (ref_out / "samples.jsonl").read_bytes()
    assert (out / "sharegpt" / "train.jsonl").read_bytes() == (ref_out / "sharegpt" / "train.jsonl").read_bytes()

    assert not partial_path(out).exists()
    log = LLMCache(out / "cache" / "llm.sqlite").call_log()
    keys = [k for k, _ in log]
    assert len(keys) == len(set(keys)), "a resumed build repeated an LLM call"
    runs = {run for _, run in log}
    assert len(runs) == 2  # the killed run and the resumed one; the refused run made no call
    reference_keys = {k for k, _ in LLMCache(ref_out / "cache" / "llm.sqlite").call_log()}
    assert set(keys) == reference_keys  # same calls as the uninterrupted build, each paid for once


@pytest.mark.slow
def test_changed_recipe_recomputes_only_what_changed(tmp_path: Path, llm_reference: tuple[Path, Path]) -> None:
    """Changing the description and formats changes no prompt: a resumed rebuild makes no LLM call at all."""
    ref_recipe, ref_out = llm_reference
    folder = tmp_path
    shutil.copytree(ref_out, folder / "out")
    data = yaml.safe_load(ref_recipe.read_text())
    data["formats"] = ["sharegpt", "alpaca", "parquet"]
    data["description"] = "the same data, described differently"
    recipe = write_recipe(folder, data)
    from factory.build import build_dataset

    before = len(LLMCache(folder / "out" / "cache" / "llm.sqlite").call_log())
    result = build_dataset(recipe, folder / "out", resume=True)
    assert len(LLMCache(folder / "out" / "cache" / "llm.sqlite").call_log()) == before
    assert (folder / "out" / "parquet").is_dir()
    ref_ids = [line for line in (ref_out / "samples.jsonl").read_text().splitlines()]
    assert len(result.samples) == len(ref_ids)
