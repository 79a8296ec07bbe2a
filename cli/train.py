"""``forma train CONFIG.yaml [--resume]``: the CLI face of :func:`train.sft.train`.

Kept light at import time: the config module needs only pydantic and PyYAML; torch, Unsloth and TRL load inside.
"""

from __future__ import annotations

from pathlib import Path

import typer


def _train(config_path: Path, resume: bool, dataset: Path | None, output_dir: Path | None,
           max_steps: int | None) -> None:
    from rich.console import Console

    from train.config import load_config
    from train.sft import train

    config = load_config(config_path, dataset=str(dataset) if dataset else None,
                         output_dir=str(output_dir) if output_dir else None, max_steps=max_steps)
    result = train(config, resume=resume)
    m = result.metrics
    console = Console(soft_wrap=True)
    console.print(f"[bold green]trained[/] {m['steps']} steps: train loss {m['train_loss_first']:.3f} -> "
                  f"{m['train_loss_last']:.3f}, eval loss {m['eval_loss_first'] or float('nan'):.3f} -> "
                  f"{m['eval_loss_last'] or float('nan'):.3f}; {m['tokens_per_s']:.0f} tokens/s; "
                  f"{100 * (m['non_padding_share'] or 0):.1f}% non-padding")
    console.print(f"adapter: {result.adapter_dir}")
    if result.merged_dir:
        console.print(f"merged:  {result.merged_dir}")
    console.print(f"report:  {result.report}")


def register(app: typer.Typer) -> None:
    @app.command("train")
    def train_command(
        config: Path = typer.Argument(..., help="Training config YAML (see train/configs/smollm2-cpu.yaml)."),
        resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint in output_dir."),
        dataset: Path | None = typer.Option(None, help="Override the config's dataset folder."),
        output_dir: Path | None = typer.Option(None, help="Override the config's output_dir."),
        max_steps: int | None = typer.Option(None, help="Override the config's max_steps."),
    ) -> None:
        """Fine-tune a LoRA adapter on a `forma build` dataset (Unsloth + TRL), merge it, and write a report."""
        _train(config, resume, dataset, output_dir, max_steps)
