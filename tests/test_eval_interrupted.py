"""A gate run that stops before its report (Ctrl-C, a model that cannot load) leaves no run folder behind: an empty
``reports/RUN/`` would read as a run that happened."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

FORMA = str(Path(sys.executable).with_name("forma"))


def test_a_model_that_cannot_load_leaves_no_run_folder(tmp_path: Path) -> None:
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"GGUF" + b"\0" * 64)
    proc = subprocess.run([FORMA, "eval", "run", str(junk), "--out", str(tmp_path / "reports"), "--run", "r1",
                           "--scorer", "rules"], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert not (tmp_path / "reports" / "r1").exists(), proc.stderr


def test_ctrl_c_during_a_run_leaves_no_run_folder(tmp_path: Path) -> None:
    from common.model_paths import smollm2_gguf

    run_dir = tmp_path / "reports" / "r2"
    proc = subprocess.Popen([FORMA, "eval", "run", str(smollm2_gguf()), "--out", str(tmp_path / "reports"),
                             "--run", "r2", "--scorer", "rules", "--threads", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while not run_dir.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert run_dir.exists(), "the run never started"
    time.sleep(1.0)
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert not run_dir.exists()


def test_ctrl_c_while_two_contexts_generate_stops_at_once(tmp_path: Path) -> None:
    """With the gate's answers over two 1-thread contexts side by side (#14's v13 round), Ctrl-C during generation
    drops the answers not yet started: the command exits with 130 well before the 465 answers would be done, and
    leaves no run folder."""
    from common.model_paths import smollm2_gguf

    run_dir = tmp_path / "reports" / "r3"
    proc = subprocess.Popen([FORMA, "eval", "run", str(smollm2_gguf()), "--out", str(tmp_path / "reports"),
                             "--run", "r3", "--scorer", "rules", "--threads", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert proc.stderr is not None
    for line in proc.stderr:  # the last line the gate logs before it starts generating
        if line.startswith("system prompt"):
            break
    time.sleep(3.0)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)  # all 465 answers take minutes: a run that went on would time out here
    assert proc.returncode == 130, err
    assert "interrupted" in err
    assert not run_dir.exists()
