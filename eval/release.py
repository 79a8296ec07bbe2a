"""Assemble the release bundle, only behind a passed gate (or an override with a reason, recorded everywhere).

The bundle is a plain folder a person can audit with ``sha256sum -c SHA256SUMS``: the GGUF, its Modelfile, a model
card, the eval report that passed the gate, the dataset card and manifest, the training config, and manifest.json
tying them together (every file's SHA-256, the dataset hash, the gate's verdict and any override).
"""

from __future__ import annotations

import getpass
import json
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, model_validator

from common.errors import FormaError, from_validation_error
from common.hashing import sha256_file
from common.outdir import LOCK, output_folder
from common.text import read_utf8


class GateFailedError(FormaError):
    """The gate failed and no override was given: exit 1, like ``forma eval`` on a failed gate."""

    exit_code = 1


@dataclass
class BundleInputs:
    gguf: Path
    report_dir: Path
    modelfile: Path
    dataset_dir: Path
    training_config: Path
    out: Path
    model_card: Path | None = None
    base_model: str | None = None
    override: bool = False
    reason: str | None = None
    #: Replace an earlier bundle at ``out`` as a whole (never mixed); without it an existing bundle is refused.
    overwrite: bool = False


def _need(path: Path, what: str, *, folder: bool = False) -> None:
    ok = path.is_dir() if folder else path.is_file()
    if not ok:
        raise FormaError(f"{what} not found", path=path)


class GateCheck(BaseModel):
    """One check of the gate as report.json records it; ``passed`` must be a JSON boolean (``"false"`` is refused)."""

    model_config = ConfigDict(extra="allow")

    name: str
    passed: StrictBool | None
    value: float | None = None
    threshold: float
    op: str = ">="


class GateReport(BaseModel):
    """The part of an eval run's report.json the release trusts: the verdict, its checks, the model evaluated."""

    model_config = ConfigDict(extra="allow")

    passed: StrictBool
    checks: list[GateCheck] = Field(min_length=1)
    policy: dict[str, Any]
    model: dict[str, Any] = Field(default_factory=dict)
    run: str | None = None

    @model_validator(mode="after")
    def _verdict_matches_checks(self) -> GateReport:
        failed = [c.name for c in self.checks if c.passed is not True]
        if self.passed and failed:
            raise ValueError(f"the report says the gate passed but lists failed checks: {', '.join(failed[:6])}")
        return self

    def failed_checks(self) -> list[str]:
        return [c.name for c in self.checks if c.passed is not True]


def read_report(report_dir: Path) -> dict[str, Any]:
    """report.json, validated as a :class:`GateReport` (the release never reads a verdict it has not typed)."""
    path = report_dir / "report.json" if report_dir.is_dir() else report_dir
    if not path.is_file():
        raise FormaError("no report.json here", path=report_dir, hint="run `forma eval MODEL` first")
    try:
        data: dict[str, Any] = json.loads(read_utf8(path))
    except json.JSONDecodeError as exc:
        raise FormaError(f"report.json is not valid JSON: {exc.msg} (line {exc.lineno})", path=path) from None
    if not isinstance(data, dict) or "passed" not in data or "checks" not in data:
        raise FormaError("report.json has no gate verdict ('passed', 'checks')", path=path)
    try:
        GateReport.model_validate(data)
    except ValidationError as exc:
        raise from_validation_error(exc, path=path, hint="the release trusts only a report `forma eval` wrote"
                                    ) from None
    return data


def model_card(report: dict[str, Any], inputs: BundleInputs, dataset_hash: str | None, gguf_sha: str) -> str:
    rows = "\n".join(f"| {c['name']} | {'n/a' if c['value'] is None else format(c['value'], '.1%')} | "
                     f"{c.get('op', '>=')} {c['threshold']:.0%} | {'pass' if c['passed'] else 'FAIL'} |"
                     for c in report["checks"])
    override = report.get("override")
    lines = [f"# {inputs.gguf.stem}", "",
             "A fitness chat assistant for offline use (GGUF, llama.cpp / Ollama). It gives general training, "
             "nutrition and recovery guidance and is meant to send medical questions to a professional.", "",
             "## Files", f"- `{inputs.gguf.name}` (SHA-256 `{gguf_sha}`)",
             "- `Modelfile`: chat template and stop tokens",
             "- `eval/report.html`: the release gate's report", "", "## Provenance",
             f"- Base model: {inputs.base_model or 'see training/ config'}",
             f"- Dataset hash: `{dataset_hash or 'unknown'}` (card under `dataset/`)",
             f"- Eval run: `{report.get('run')}`, policy `{report['policy'].get('name')}`", "",
             "## Release gate", "", f"**{'PASSED' if report['passed'] else 'FAILED'}**", "",
             "| check | score | threshold | result |", "|---|---|---|---|", rows, ""]
    if override:
        lines += [f"**Released with an override** by {override['by']} ({override['at']}): {override['reason']}", ""]
    lines += ["## Limitations", "- Not a medical device and not medical advice. Chest pain, fainting, pregnancy, "
              "eating-disorder signs, injuries and medication questions belong with a professional.",
              "- Scores above come from Forma's own suites (see the report); they are not general benchmarks.", ""]
    return "\n".join(lines)


def _check_inputs(inputs: BundleInputs) -> tuple[dict[str, Any], str]:
    """Everything the bundle needs, checked before anything is written; returns the typed report and the GGUF hash."""
    _need(inputs.gguf, "GGUF")
    _need(inputs.modelfile, "Modelfile")
    _need(inputs.training_config, "training config")
    _need(inputs.dataset_dir, "dataset folder", folder=True)
    if inputs.model_card is not None:
        _need(inputs.model_card, "model card")
    if not (inputs.dataset_dir / "README.md").is_file():
        raise FormaError("the dataset folder has no README.md (dataset card)", path=inputs.dataset_dir)
    report = read_report(inputs.report_dir)
    gguf_sha = sha256_file(inputs.gguf)
    evaluated = report.get("model", {}).get("sha256")
    if evaluated and evaluated != gguf_sha:
        raise FormaError(f"the report evaluated a different GGUF (sha256 {evaluated[:12]}…, this file "
                         f"{gguf_sha[:12]}…)", path=inputs.gguf, hint="run `forma eval` on this file")
    if not evaluated:
        raise FormaError("the report did not evaluate a GGUF file (an endpoint or HF run cannot vouch for one)",
                         path=inputs.report_dir, hint="run `forma eval MODEL.gguf`")
    if inputs.override and not (inputs.reason or "").strip():
        raise FormaError("--override needs --reason TEXT (it is recorded in the manifest and the report)")
    if report["passed"] is not True and not inputs.override:
        failed = GateReport.model_validate(report).failed_checks()
        raise GateFailedError(f"the release gate failed ({len(failed)} check(s): {', '.join(failed[:6])}"
                              f"{'…' if len(failed) > 6 else ''}); refusing to assemble the bundle",
                              path=inputs.report_dir, hint="fix the model, or pass --override --reason TEXT")
    return report, gguf_sha


def assemble(inputs: BundleInputs) -> dict[str, Any]:
    """Copy everything into ``inputs.out`` and write manifest.json and SHA256SUMS; return the manifest.

    The bundle is assembled in a hidden folder beside ``out`` and takes its name only when complete
    (:func:`common.outdir.output_folder`): a failed or killed release leaves nothing that blocks the retry. An
    existing bundle there is replaced only with ``overwrite``; a folder holding anything else is refused.
    """
    report, gguf_sha = _check_inputs(inputs)
    ds_manifest_path = inputs.dataset_dir / "manifest.json"
    ds_manifest: dict[str, Any] = {}
    if ds_manifest_path.is_file():
        ds_manifest = json.loads(ds_manifest_path.read_text(encoding="utf-8"))
    override = None
    if inputs.override:
        override = {"by": getpass.getuser(), "at": datetime.now(UTC).isoformat(timespec="seconds"),
                    "reason": (inputs.reason or "").strip(), "gate_passed": report["passed"]}
        report["override"] = override
    sources = [inputs.gguf, inputs.modelfile, inputs.training_config, inputs.dataset_dir, inputs.report_dir,
               inputs.model_card]
    with output_folder(inputs.out, "release", overwrite=inputs.overwrite, inputs=sources) as work:
        _copy_parts(inputs, work, report, ds_manifest.get("dataset_hash"), gguf_sha)
        files = {str(p.relative_to(work)): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
                 for p in sorted(work.rglob("*")) if p.is_file() and p.name != LOCK}
        gate = GateReport.model_validate(report)
        manifest = {
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "model": {"file": inputs.gguf.name, "sha256": gguf_sha, "base_model": inputs.base_model},
            "gate": {"passed": gate.passed, "run": gate.run, "policy": gate.policy.get("name"),
                     "failed_checks": gate.failed_checks()},
            "override": override,
            "dataset": {"hash": ds_manifest.get("dataset_hash"), "recipe": ds_manifest.get("recipe"),
                        "recipe_hash": ds_manifest.get("recipe_hash"), "seed": ds_manifest.get("seed"),
                        "card": "dataset/README.md"},
            "training_config": f"training/{inputs.training_config.name}",
            "files": files,
        }
        (work / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        sums = "".join(f"{v['sha256']}  {k}\n" for k, v in files.items())
        (work / "SHA256SUMS").write_text(sums, encoding="utf-8")
    return manifest


def _copy_parts(inputs: BundleInputs, work: Path, report: dict[str, Any], dataset_hash: str | None,
                gguf_sha: str) -> None:
    from eval.report import write_report

    shutil.copy2(inputs.gguf, work / inputs.gguf.name)
    shutil.copy2(inputs.modelfile, work / "Modelfile")
    write_report(report, work / "eval")
    (work / "dataset").mkdir()
    for name in ("README.md", "manifest.json"):
        if (inputs.dataset_dir / name).is_file():
            shutil.copy2(inputs.dataset_dir / name, work / "dataset" / name)
    (work / "training").mkdir()
    shutil.copy2(inputs.training_config, work / "training" / inputs.training_config.name)
    if inputs.model_card is not None:
        shutil.copy2(inputs.model_card, work / "README.md")
    else:
        (work / "README.md").write_text(model_card(report, inputs, dataset_hash, gguf_sha), encoding="utf-8")
