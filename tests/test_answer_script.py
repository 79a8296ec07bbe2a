"""bench/heldout_v4_answers.py makes the real model answers of every fresh #14 set; helpers run it as a plain script,
where bench/ is sys.path[0] and bench/eval.py could shadow the eval/ package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_runs_as_a_plain_script_and_resumes(tmp_path: Path) -> None:
    prompts, out = tmp_path / "prompts.jsonl", tmp_path / "answers.jsonl"
    prompts.write_text('{"pid": "p1", "prompt": "How many push-ups a day?"}\n', encoding="utf-8")
    # every (prompt, model) pair already answered: the script imports what it needs, loads no model, adds nothing
    done = '{"pid": "p1", "prompt": "How many push-ups a day?", "model": "smollm2-instruct", "response": "ten"}\n'
    out.write_text(done, encoding="utf-8")
    run = subprocess.run([sys.executable, "bench/heldout_v4_answers.py", str(prompts), str(out), "smollm2-instruct"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert out.read_text(encoding="utf-8") == done


def test_an_unknown_model_is_named() -> None:
    run = subprocess.run([sys.executable, "bench/heldout_v4_answers.py", "p.jsonl", "o.jsonl", "gpt-9"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode != 0 and "unknown model(s) gpt-9" in run.stderr
