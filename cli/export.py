"""``forma export``: merged HF folder -> GGUFs + Modelfile + verification report (see export/gguf_export.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from cli.options import Overwrite


def _summary(result: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(markup=False, highlight=False, soft_wrap=True)
    table = Table(title=f"GGUF export of {result.model_dir}")
    for col in ("gguf", "MiB", "seconds", "tensor types", "greedy agree", "ppl", "chat stops", "ok"):
        table.add_column(col)
    checks = (result.verification.get("verification") or {}).get("ggufs", {})
    for name, info in result.quants.items():
        v = checks.get(name, {})
        chat = v.get("chat", {})
        table.add_row(name, f"{info.size_bytes / 2**20:.1f}", f"{info.seconds:.1f}",
                      " ".join(f"{k}:{n}" for k, n in info.tensor_types.items()),
                      str(v.get("greedy_agreement", "-")), str(v.get("perplexity", "-")),
                      str(chat.get("passed", "-")), str(v.get("passed", "-")))
    console.print(table)
    for name, info in result.quants.items():
        for line in info.fallbacks:
            console.print(f"{name} fallback: {line}")
    for info in result.quants.values():
        console.print(f"{info.name}: {info.path}", highlight=False)
    console.print(f"Modelfile: {result.modelfile}\nreport: {result.report}", highlight=False)


def export_command(
    model_dir: Path = typer.Argument(..., help="Merged 16-bit HF model folder (what `forma train` writes)."),
    quant: str = typer.Option("q4_k_m", "--quant", "-q", help="Comma-separated quant types, e.g. q4_k_m,q8_0."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output folder (default: MODEL_DIR-gguf beside it)."),
    system_prompt: str | None = typer.Option(None, "--system", help="SYSTEM for the Modelfile (overrides config)."),
    release_config: Path | None = typer.Option(None, "--release-config",
                                               help="YAML with system_prompt, temperature, top_p, num_ctx."),
    verify: bool = typer.Option(True, "--verify/--no-verify", help="Run the checks and write verification.json."),
    threads: int = typer.Option(2, "--threads", min=1, help="CPU threads for quantization and llama.cpp."),
    overwrite: Overwrite = False,
) -> None:
    """Convert to f16 GGUF with llama.cpp's converter, quantize, write a Modelfile, and verify against the HF model.

    The output folder appears only when complete; an earlier export there is replaced only with --overwrite.
    """
    def body() -> None:
        from export.gguf_export import export_gguf, parse_quants
        from export.modelfile import load_modelfile_config

        quants = parse_quants(quant)
        config = load_modelfile_config(release_config) if release_config else None
        target = out or model_dir.parent / f"{model_dir.name}-gguf"
        result = export_gguf(model_dir, target, quants, system_prompt, modelfile_config=config, verify=verify,
                             n_threads=threads, overwrite=overwrite)
        _summary(result)
        if verify and not result.passed:
            typer.secho("verification failed: see the report", fg="red", err=True)
            raise typer.Exit(1)

    body()


def register(app: typer.Typer) -> None:
    app.command("export")(export_command)
