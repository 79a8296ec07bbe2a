"""``--engine distilabel``: generation and the filter stages as a distilabel Pipeline give the local engine's dataset;
the same pipeline runs on a local Ray cluster."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from common.errors import FormaError
from factory.build import build_dataset
from tests.helpers.llm import free_port, recipe_dict, write_recipe

TEMPLATE = {"backend": "template"}


def _recipe(folder: Path, total: int = 40) -> Path:
    # a total large enough that exact duplicates appear and balancing needs a second round
    return write_recipe(folder, recipe_dict("engine-check", generator=TEMPLATE, total=total,
                                            turn_mix={1: 0.7, 2: 0.3}))


def _rejects(out: Path) -> list[str]:
    return sorted(line for line in (out / "rejects.jsonl").read_text().splitlines() if line.strip())


def test_distilabel_engine_gives_the_local_engines_dataset(tmp_path: Path) -> None:
    folder = tmp_path
    recipe = _recipe(folder)
    local = build_dataset(recipe, folder / "local")
    distilabel = build_dataset(recipe, folder / "distilabel", engine="distilabel")
    assert distilabel.dataset_hash == local.dataset_hash
    for name in ("samples.jsonl", "sharegpt/train.jsonl", "alpaca/test.jsonl"):
        assert (folder / "distilabel" / name).read_bytes() == (folder / "local" / name).read_bytes(), name
    assert _rejects(folder / "distilabel") == _rejects(folder / "local")
    assert [s.model_dump(exclude={"seconds"}) for s in distilabel.stats] == [
        s.model_dump(exclude={"seconds"}) for s in local.stats]  # timings differ between engines
    manifest = json.loads((folder / "distilabel" / "manifest.json").read_text())
    assert manifest["counts"] == local.counts


def test_ray_address_needs_the_distilabel_engine(tmp_path: Path) -> None:
    with pytest.raises(FormaError, match="--engine distilabel"):
        build_dataset(_recipe(tmp_path, total=6), tmp_path / "o", ray_address="127.0.0.1:1")


@pytest.mark.slow
def test_the_same_recipe_runs_on_a_local_ray_cluster(tmp_path: Path) -> None:
    folder = tmp_path
    recipe = _recipe(folder, total=12)
    port = free_port()
    ray = str(Path(sys.executable).parent / "ray")
    # Ray puts Unix sockets under its temp dir and refuses paths over 107 bytes; pytest's tmp_path under a CI
    # runner's numbered base is long enough to cross that, so the cluster gets a short folder of its own.
    ray_tmp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    log = folder / "ray-head.log"
    # --block keeps the head in this process group: stopping it stops only the cluster this test started
    head = subprocess.Popen([ray, "start", "--head", "--block", "--port", str(port), "--num-cpus", "2",
                             "--disable-usage-stats", "--include-dashboard", "false",
                             "--temp-dir", str(ray_tmp)],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 120
        while True:
            assert head.poll() is None, "ray start failed:\n" + log.read_text()[-3000:]
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert time.time() < deadline, "the Ray head did not open its port"
            time.sleep(0.5)
        script = (f"from factory.build import build_dataset; "
                  f"r = build_dataset({str(recipe)!r}, {str(folder / 'ray-out')!r}, engine='distilabel', "
                  f"ray_address='127.0.0.1:{port}'); print('HASH', r.dataset_hash)")
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        print(f"ray build: {time.perf_counter() - started:.1f} s")
    finally:
        head.terminate()
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    local = build_dataset(recipe, folder / "local-out")
    assert f"HASH {local.dataset_hash}" in proc.stdout
    assert (folder / "ray-out" / "samples.jsonl").read_bytes() == (folder / "local-out" / "samples.jsonl").read_bytes()
