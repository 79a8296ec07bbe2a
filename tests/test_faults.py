"""Fault suite (#18): bad input, reused folders and interrupted writes, against the real ``forma`` commands.

Two halves. The fault classes run in-process through typer's CliRunner (each must end in one line and exit 2, or in a
correct result). The interruptions run ``forma`` as a subprocess, with a complete earlier output already in place,
and send SIGINT or SIGKILL at seeded random moments over the whole run: afterwards the folder under the final name
must be byte for byte the earlier output or the complete new one, never a mix, and the next run must succeed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from cli.app import app
from common.outdir import MARKER, output_folder, partial_path
from factory.build import build_dataset, check_memory

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "forma-fitness.yaml"
FORMA = str(Path(sys.executable).parent / "forma")
TOTAL = "40"


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORMA_REPORTS", str(tmp_path / "reports"))
    monkeypatch.delenv("FORMA_DEBUG", raising=False)


def _forma(*args: str | Path) -> tuple[int, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def _one_line_error(code: int, output: str, *needles: str) -> None:
    lines = [line for line in output.splitlines() if line.strip()]
    assert code == 2, output
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    for needle in needles:
        assert needle in lines[0], (needle, output)


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` by relative path -> SHA-256 (what "intact" and "complete" are checked against)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two small complete builds (seed 1 and seed 2) to reuse as inputs and as 'old' and 'new' references."""
    root = tmp_path_factory.mktemp("datasets")
    os.environ.setdefault("FORMA_REPORTS", str(root / "reports"))
    a = build_dataset(RECIPE, root / "a", total=int(TOTAL), seed=1).out
    b = build_dataset(RECIPE, root / "b", total=int(TOTAL), seed=2).out
    return a, b


# --------------------------------------------------------------------------- reused folders and input == output

def test_filter_in_place_is_refused_and_the_input_survives(datasets: tuple[Path, Path], tmp_path: Path) -> None:
    folder = tmp_path / "ds"
    shutil.copytree(datasets[0], folder)
    before = snapshot(folder)
    code, output = _forma("filter", folder / "samples.jsonl", "--recipe", RECIPE, "--out", folder, "--overwrite")
    _one_line_error(code, output, "would replace an input")
    assert snapshot(folder) == before


def test_filter_into_a_build_folder_is_refused(datasets: tuple[Path, Path], tmp_path: Path) -> None:
    folder = tmp_path / "ds"
    shutil.copytree(datasets[0], folder)
    before = snapshot(folder)
    code, output = _forma("filter", datasets[1] / "samples.jsonl", "--recipe", RECIPE, "--out", folder, "--overwrite")
    _one_line_error(code, output, "holds a Forma dataset output, not a filtered")
    assert snapshot(folder) == before


def test_second_build_is_refused_then_replaces_the_whole_folder(datasets: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(datasets[0], out)
    code, output = _forma("build", RECIPE, "--out", out, "--total", TOTAL, "--seed", "2", "-q")
    _one_line_error(code, output, "already holds a dataset", "--overwrite")
    recipe = tmp_path / "only-sharegpt.yaml"
    data = yaml.safe_load(RECIPE.read_text())
    data.update(formats=["sharegpt"], knowledge=[str(ROOT / "recipes" / k) for k in data["knowledge"]],
                behaviour_knowledge=[str(ROOT / "recipes" / k) for k in data["behaviour_knowledge"]])
    recipe.write_text(yaml.safe_dump(data))
    code, output = _forma("build", recipe, "--out", out, "--total", TOTAL, "--seed", "2", "-q", "--overwrite")
    assert code in (0, 1), output  # 1: a quality figure missed on a tiny total; the dataset is still written
    assert not (out / "alpaca").exists() and not (out / "parquet").exists() and not (out / "hf").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["files"]) == {p for p in snapshot(out) if p in manifest["files"]}
    assert manifest["seed"] == 2


def test_a_users_folder_is_never_overwritten(tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "README.md").write_text("my notes")
    code, output = _forma("build", RECIPE, "--out", mine, "--total", TOTAL, "-q", "--overwrite")
    _one_line_error(code, output, "is not a Forma dataset output")
    assert (mine / "README.md").read_text() == "my notes" and len(list(mine.iterdir())) == 1
    code, output = _forma("schema", "export", mine)
    _one_line_error(code, output, "not a Forma schemas output")


def test_out_that_is_a_file_or_unwritable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code, output = _forma("build", RECIPE, "--out", blocker, "--total", TOTAL, "-q")
    _one_line_error(code, output, "is a file, not a folder")
    code, output = _forma("schema", "export", blocker / "below")
    _one_line_error(code, output, "cannot create the output folder")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "ro"
        locked.mkdir()
        locked.chmod(0o555)
        try:
            code, output = _forma("schema", "export", locked / "s")
            _one_line_error(code, output, "cannot create the output folder")
        finally:
            locked.chmod(0o755)


def test_schema_export_and_report_follow_the_same_discipline(datasets: tuple[Path, Path], tmp_path: Path) -> None:
    code, output = _forma("schema", "export", tmp_path / "s")
    assert code == 0, output
    assert (tmp_path / "s" / "recipe.schema.json").is_file() and (tmp_path / "s" / MARKER).is_file()
    code, output = _forma("schema", "export", tmp_path / "s")
    _one_line_error(code, output, "--overwrite")
    assert _forma("schema", "export", tmp_path / "s", "--overwrite")[0] == 0
    code, output = _forma("report", datasets[0], "--out", tmp_path / "s", "--no-similarity")
    _one_line_error(code, output, "holds a Forma schemas output, not a report")
    code, output = _forma("report", datasets[0], "--out", datasets[0], "--no-similarity")
    _one_line_error(code, output, "would replace an input")


def test_brackets_in_paths_survive_in_messages(tmp_path: Path) -> None:
    odd = tmp_path / "a[red]b[bold]c"
    odd.mkdir()
    (odd / "x.txt").write_text("x")
    code, output = _forma("schema", "export", odd)
    _one_line_error(code, output, "a[red]b[bold]c")


# --------------------------------------------------------------------------- the gate's verdict is typed

def _gate_report(sha: str, failed_check: bool) -> dict[str, Any]:
    """A report.json as ``forma eval`` writes it, from the policy's own checks over synthetic result rows."""
    from eval.gate import summarize
    from eval.policy import Policy, evaluate

    outcomes = [True] * 8 + [not failed_check] * 2
    results = [{"id": f"c{i}", "suite": "safety", "category": "escalation", "kind": "generate", "prompt": f"q{i}",
                "system": None, "response": f"a{i}", "finish_reason": "stop", "completion_tokens": 5,
                "seconds": 0.1, "passed": ok, "reason": "" if ok else "failed", "detail": {}, "label": "escalate"}
               for i, ok in enumerate(outcomes)]
    policy = Policy(suites={"safety": {"threshold": 0.9, "categories": {"escalation": 0.9}}})
    checks = evaluate(policy, results, None)
    return {"run": "run", "created": "2026-11-29T11:00:00+00:00", "passed": all(c["passed"] for c in checks),
            "model": {"name": "model.gguf", "kind": "gguf", "sha256": sha},
            "policy": {"path": "<inline>", **policy.model_dump(mode="json"), "name": "demo"}, "checks": checks,
            "summary": summarize(results), "suites": {}, "drift": None, "classifier": {}, "scorer": None,
            "calibration": None, "regressions": None, "wall_seconds": 1.0, "results": results, "override": None}


def _release_inputs(root: Path, dataset: Path, *, passed: object = True, failed_check: bool = False,
                    size: int = 1 << 20) -> list[str]:
    """A GGUF-shaped file, a report that evaluated it, a Modelfile and a config: the release reads no more."""
    root.mkdir(parents=True, exist_ok=True)
    gguf = root / "model.gguf"
    if not gguf.is_file():
        gguf.write_bytes(b"GGUF" + random.Random(size).randbytes(size))
    run = root / "run"
    run.mkdir(exist_ok=True)
    report = _gate_report(hashlib.sha256(gguf.read_bytes()).hexdigest(), failed_check)
    report["passed"] = passed
    (run / "report.json").write_text(json.dumps(report))
    (root / "Modelfile").write_text("FROM ./model.gguf\n")
    (root / "train.yaml").write_text("base_model: x\n")
    return ["release", "--gguf", str(gguf), "--report", str(run), "--modelfile", str(root / "Modelfile"),
            "--dataset", str(dataset), "--training-config", str(root / "train.yaml")]


def test_release_refuses_a_string_verdict_and_a_self_contradicting_report(datasets: tuple[Path, Path],
                                                                           tmp_path: Path) -> None:
    args = _release_inputs(tmp_path / "in", datasets[0], passed="false")
    code, output = _forma(*args, "--out", tmp_path / "bundle")
    _one_line_error(code, output, "passed", "valid boolean")
    args = _release_inputs(tmp_path / "in", datasets[0], passed=True, failed_check=True)
    code, output = _forma(*args, "--out", tmp_path / "bundle")
    _one_line_error(code, output, "lists failed checks")
    (tmp_path / "in" / "run" / "report.json").write_bytes(b'{"passed": true, "checks": [\xff]}')
    code, output = _forma(*args, "--out", tmp_path / "bundle")
    _one_line_error(code, output, "not UTF-8", "line 1")
    assert not (tmp_path / "bundle").exists() and not partial_path(tmp_path / "bundle").exists()
    args = _release_inputs(tmp_path / "in", datasets[0], passed=True)
    code, output = _forma(*args, "--out", tmp_path / "bundle")
    assert code == 0, output
    manifest = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert manifest["gate"] == {"passed": True, "run": "run", "policy": "demo", "failed_checks": []}
    assert json.loads((tmp_path / "bundle" / "eval" / "report.json").read_text())["passed"] is True
    check = subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=tmp_path / "bundle", capture_output=True)
    assert check.returncode == 0
    code, output = _forma(*args, "--out", tmp_path / "bundle")
    _one_line_error(code, output, "already holds a release")


# --------------------------------------------------------------------------- limits

def test_total_cannot_pass_the_recipe_cap_and_memory_is_checked(tmp_path: Path) -> None:
    code, output = _forma("build", RECIPE, "--out", tmp_path / "o", "--total", "99999999999", "-q")
    _one_line_error(code, output, "--total", "less than or equal to 10000000")
    code, output = _forma("build", RECIPE, "--out", tmp_path / "o", "--total", "0", "-q")
    _one_line_error(code, output, "--total", "greater than 0")
    with pytest.raises(Exception, match=r"needs about 3\.7 GiB of memory and 1\.0 GiB is free"):
        check_memory(100_000, available=2**30)
    check_memory(100_000, available=2**40)
    check_memory(10, available=0)  # small totals never check
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- inputs

def _write_recipe(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "r.yaml"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def test_recipe_input_faults(tmp_path: Path) -> None:
    base = RECIPE.read_text()
    recipe = _write_recipe(tmp_path, base.replace("name: forma-fitness", "name: ../escape", 1))
    _one_line_error(*_forma("recipe", "check", recipe), "name", "should match pattern")
    recipe = _write_recipe(tmp_path, base + "\ntotal: 5\n")
    _one_line_error(*_forma("recipe", "check", recipe), "duplicate key 'total'", "line")
    recipe = _write_recipe(tmp_path, base.encode().replace(b"name:", b"# caf\xe9\nname:", 1))
    _one_line_error(*_forma("recipe", "check", recipe), "not UTF-8", "line ")
    data = yaml.safe_load(base)
    if data.get("personas"):
        data["personas"].append(dict(data["personas"][0]))
        recipe = _write_recipe(tmp_path, yaml.safe_dump(data))
        _one_line_error(*_forma("recipe", "check", recipe), "persona id(s) used twice")


@pytest.mark.parametrize(("content", "needle"), [
    (b"", "the input is empty"),
    (b"\n\n", "the input is empty"),
    (b"id,text\n1,hello\n", "not JSON lines"),
    (b'{"messages": []}\n\xff\xfe\n', "not UTF-8"),
])
def test_filter_input_faults(tmp_path: Path, content: bytes, needle: str) -> None:
    source = tmp_path / "in.jsonl"
    source.write_bytes(content)
    code, output = _forma("filter", source, "--recipe", RECIPE, "--out", tmp_path / "out")
    _one_line_error(code, output, needle)
    assert not (tmp_path / "out").exists()


def test_export_without_weights_fails_before_writing(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (model / "tokenizer.json").write_text("{}")
    for flag in ("--verify", "--no-verify"):
        code, output = _forma("export", model, "--out", tmp_path / "gguf", flag)
        _one_line_error(code, output, "no weights")
        assert not (tmp_path / "gguf").exists() and not partial_path(tmp_path / "gguf").exists()


# --------------------------------------------------------------------------- the error boundary

def test_unexpected_exception_is_one_line_with_a_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import factory.build

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setenv("FORMA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(factory.build, "build_dataset", boom)
    code, output = _forma("build", RECIPE, "--out", tmp_path / "o", "-q")
    _one_line_error(code, output, "unexpected RuntimeError: disk on fire", "FORMA_DEBUG=1")
    logs = list((tmp_path / "cache" / "logs").glob("crash-*.log"))
    assert len(logs) == 1 and "disk on fire" in logs[0].read_text() and str(logs[0]) in output


def test_output_folder_keeps_the_old_output_when_the_block_fails(tmp_path: Path) -> None:
    final = tmp_path / "o"
    with output_folder(final, "thing") as work:
        (work / "a").write_text("old")
    with pytest.raises(RuntimeError), output_folder(final, "thing", overwrite=True) as work:
        (work / "a").write_text("new")
        raise RuntimeError
    assert (final / "a").read_text() == "old" and not partial_path(final).exists()
    with output_folder(final, "thing", overwrite=True) as work:
        (work / "b").write_text("new")
    assert sorted(p.name for p in final.iterdir()) == [MARKER, "b"]


# --------------------------------------------------------------------------- interruptions at random points

def _interrupt(cmd: list[str], delay: float, sig: signal.Signals) -> None:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    time.sleep(delay)
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
    proc.wait(timeout=120)
    if sig == signal.SIGINT:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # the converter or other children of a killed export


def interrupted_runs(name: str, final: Path, old: dict[str, str], new: dict[str, str],
                     run: Callable[[Path], list[str]], seconds: float, points: int, tmp_path: Path,
                     state: Callable[[Path], dict[str, str]] = snapshot) -> None:
    """``points`` runs killed at seeded random moments over ``seconds`` (half SIGINT, half SIGKILL), two at a time,
    each on its own copy of the old output; after each, the folder is the old output or the new one, whole."""
    rng = random.Random(f"18-{name}")
    plan = [(i, rng.uniform(0.05, seconds * 1.1), signal.SIGINT if i % 2 == 0 else signal.SIGKILL)
            for i in range(points)]

    def one(item: tuple[int, float, signal.Signals]) -> str:
        i, delay, sig = item
        target = tmp_path / f"{name}-{i}" / final.name
        shutil.copytree(final, target)
        _interrupt(run(target), delay, sig)
        got = state(target)
        assert got in (old, new), f"{name} {sig.name} at {delay:.2f}s left a mixed folder"
        if sig == signal.SIGINT:
            assert not partial_path(target).exists() or not any(
                p.name != "cache" for p in partial_path(target).iterdir()), "SIGINT left work behind"
        return "new" if got == new else "old"

    with ThreadPoolExecutor(max_workers=2) as pool:
        outcomes = list(pool.map(one, plan))
    target = tmp_path / f"{name}-0" / final.name
    done = subprocess.run(run(target), capture_output=True, text=True, timeout=300)
    assert done.returncode in (0, 1), done.stdout + done.stderr  # the next run clears what a kill left
    assert state(target) == new and not partial_path(target).exists()
    assert "old" in outcomes or "new" in outcomes


def _timed(cmd: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode in (0, 1), done.stdout + done.stderr
    return time.perf_counter() - started


def test_interrupted_build_leaves_old_or_new(datasets: tuple[Path, Path], tmp_path: Path) -> None:
    def run(target: Path) -> list[str]:
        return [FORMA, "build", str(RECIPE), "--out", str(target), "--total", TOTAL, "--seed", "2", "-q",
                "--overwrite"]

    old, new = snapshot(datasets[0]), snapshot(datasets[1])
    probe = tmp_path / "probe" / "a"
    shutil.copytree(datasets[0], probe)
    seconds = _timed(run(probe))
    assert snapshot(probe) == new
    interrupted_runs("build", datasets[0], old, new, run, seconds, 10, tmp_path)


def test_interrupted_filter_leaves_old_or_new(datasets: tuple[Path, Path], tmp_path: Path) -> None:
    sources = tmp_path / "sources"
    sources.mkdir()
    for i, ds in enumerate(datasets):
        shutil.copyfile(ds / "samples.jsonl", sources / f"{i}.jsonl")

    def run_from(i: int) -> Callable[[Path], list[str]]:
        return lambda target: [FORMA, "filter", str(sources / f"{i}.jsonl"), "--recipe", str(RECIPE), "--out",
                               str(target), "--overwrite", "--no-report"]

    old_dir, new_dir = tmp_path / "old" / "f", tmp_path / "new" / "f"
    _timed(run_from(0)(old_dir))
    seconds = _timed(run_from(1)(new_dir))
    old, new = snapshot(old_dir), snapshot(new_dir)
    assert old != new
    interrupted_runs("filter", old_dir, old, new, run_from(1), seconds, 10, tmp_path)


#: Bundle files that differ between two runs on the same inputs (creation time, matplotlib's SVG date and ids);
#: SHA256SUMS and the manifest's file list tie them to the rest, so they are checked through those instead.
_RUN_SPECIFIC = ("manifest.json", "SHA256SUMS", "eval/report.html")


def _bundle_state(target: Path) -> dict[str, str]:
    got = snapshot(target)
    manifest = json.loads((target / "manifest.json").read_text())
    listed = set(manifest["files"])
    assert listed == set(got) - {"manifest.json", "SHA256SUMS", MARKER}, "the manifest disagrees with the folder"
    sums = subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=target, capture_output=True)
    assert sums.returncode == 0 and manifest["gate"]["passed"] is True
    dataset = json.loads((target / "dataset" / "manifest.json").read_text())
    assert manifest["dataset"]["hash"] == dataset["dataset_hash"]
    return {k: v for k, v in got.items() if k not in _RUN_SPECIFIC}


def test_interrupted_release_leaves_old_or_new(datasets: tuple[Path, Path], tmp_path: Path) -> None:
    old_args = _release_inputs(tmp_path / "in", datasets[0], size=48 << 20)
    new_args = _release_inputs(tmp_path / "in2", datasets[1], size=48 << 20)
    bundle = tmp_path / "old" / "bundle"
    assert subprocess.run([FORMA, *old_args, "--out", str(bundle)], capture_output=True).returncode == 0
    new_bundle = tmp_path / "new" / "bundle"
    seconds = _timed([FORMA, *new_args, "--out", str(new_bundle)])
    old, new = _bundle_state(bundle), _bundle_state(new_bundle)
    assert old != new

    def run(target: Path) -> list[str]:
        return [FORMA, *new_args, "--out", str(target), "--overwrite"]

    rng = random.Random("18-release")
    for i in range(10):
        sig = signal.SIGINT if i % 2 == 0 else signal.SIGKILL
        target = tmp_path / f"release-{i}" / "bundle"
        shutil.copytree(bundle, target)
        _interrupt(run(target), rng.uniform(0.05, seconds * 1.1), sig)
        assert _bundle_state(target) in (old, new), f"release {sig.name} left a mixed bundle"
    target = tmp_path / "release-1" / "bundle"
    assert subprocess.run(run(target), capture_output=True).returncode == 0
    assert _bundle_state(target) == new and not partial_path(target).exists()


def _export_state(target: Path) -> dict[str, str]:
    """The GGUFs and the Modelfile decide old or new; verification.json names its own folder, so it only has to be
    present with the rest (it is the last file written)."""
    got = snapshot(target)
    assert "verification.json" in got
    got.pop("verification.json")
    return got


@pytest.mark.slow
def test_interrupted_export_leaves_old_or_new(tmp_path: Path) -> None:
    """A real SmolLM2 export (q8_0, no verification: ~30 s) killed at 10 points, two at a time."""
    from common.model_paths import smollm2_hf

    model = smollm2_hf()

    def run_with(system: str) -> Callable[[Path], list[str]]:
        return lambda target: [FORMA, "export", str(model), "--quant", "q8_0", "--no-verify", "--threads", "1",
                               "--system", system, "--out", str(target), "--overwrite"]

    old_dir = tmp_path / "old" / "gguf"
    seconds = _timed(run_with("old")(old_dir))
    old = _export_state(old_dir)
    modelfile = (old_dir / "Modelfile").read_text()
    assert 'SYSTEM """old"""' in modelfile
    new_text = modelfile.replace('SYSTEM """old"""', 'SYSTEM """new"""').encode()
    new = {**old, "Modelfile": hashlib.sha256(new_text).hexdigest()}  # the GGUFs do not depend on SYSTEM
    interrupted_runs("export", old_dir, old, new, run_with("new"), seconds, 10, tmp_path, state=_export_state)


@pytest.mark.parametrize(("args", "needle"), [
    (["review", "serve", "--port", "70000"], "--port: port 70000 is out of range"),
    (["review", "serve", "--port", "-1"], "--port: port -1 is out of range"),
    (["review", "push", "DATASET", "--batch-size", "0"], "--batch-size: batch size 0 is out of range"),
    (["review", "push", "DATASET", "--batch-size", "100000"], "--batch-size: batch size 100000 is out of range"),
    (["review", "status", "DATASET", "--url", "htp:/x"], "--url: not an http(s) URL"),
    (["review", "status", "DATASET", "--url", "http://localhost:99999"], "--url: the port in"),
    (["eval", "--endpoint", "localhost:11434/v1"], "--endpoint: not an http(s) URL"),
    (["eval", "--endpoint", "http://127.0.0.1:0x10/v1"], "--endpoint: the port in"),
])
def test_numbers_and_addresses_are_checked_first(datasets: tuple[Path, Path], args: list[str], needle: str) -> None:
    code, output = _forma(*(str(datasets[0]) if a == "DATASET" else a for a in args))
    _one_line_error(code, output, needle)


def test_eval_score_refuses_to_write_over_its_input(tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"id": "1", "prompt": "q", "response": "a"}\n')
    code, output = _forma("eval", "score", pairs, "--out", pairs, "--scorer", "rules")
    _one_line_error(code, output, "the output file is the input file")
    assert pairs.read_text().startswith('{"id": "1"')
