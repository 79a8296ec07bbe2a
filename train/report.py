"""The training report: loss curves (PNG and SVG) and one JSON with the figures a release manifest names.

Kept apart from the training loop so the eval and release code can read and re-plot a report without torch.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

REPORT_NAME = "train_report.json"


def loss_curves(log_history: list[dict[str, Any]]) -> dict[str, list[list[float]]]:
    """``{"train": [[step, loss], ...], "eval": [[step, loss], ...]}`` from a Trainer's ``state.log_history``."""
    train = [[float(e["step"]), float(e["loss"])] for e in log_history if "loss" in e and "step" in e]
    evals = [[float(e["step"]), float(e["eval_loss"])] for e in log_history if "eval_loss" in e and "step" in e]
    return {"train": train, "eval": evals}


def steady_tokens_per_s(points: list[list[float]], skip: float = 0.2) -> float | None:
    """Tokens/s between the step at ``skip`` of the run and the last, from ``[step, seconds, tokens]`` points.

    The first steps carry compilation, autotuning and allocator warm-up; a rate over the rest is what a long run
    sees. ``None`` when there are too few steps to leave some out.
    """
    if len(points) < 3:
        return None
    first = points[min(len(points) - 2, max(1, int(len(points) * skip)))]
    last = points[-1]
    seconds = last[1] - first[1]
    return (last[2] - first[2]) / seconds if seconds > 0 else None


def plot_losses(curves: dict[str, list[list[float]]], out_dir: Path, title: str) -> list[Path]:
    """Draw train and eval loss against the optimiser step; returns the PNG and SVG paths."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers or in CI
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, style in (("train", "-"), ("eval", "o-")):
        points = curves.get(name) or []
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], style, label=f"{name} loss")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("cross-entropy (assistant tokens)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    paths = [out_dir / "loss.png", out_dir / "loss.svg"]
    for path in paths:
        fig.savefig(path)
    plt.close(fig)
    return paths


def write_report(report: dict[str, Any], out_dir: Path, copy_to: Path | None = None) -> Path:
    """Write ``train_report.json`` and the loss plots under ``out_dir``; copy the folder under ``copy_to`` too."""
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = plot_losses(report["loss_curves"], out_dir, f"{report['run_name']}: loss")
    report["plots"] = [p.name for p in plots]
    path = out_dir / REPORT_NAME
    path.write_text(json.dumps(report, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    if copy_to is not None:
        target = copy_to / f"train-{report['run_name']}"
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(out_dir, target)
    return path


def read_report(path: Path) -> dict[str, Any]:
    """Load a report written by :func:`write_report` (a file, or the folder holding it)."""
    if path.is_dir():
        path = path / REPORT_NAME
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data
