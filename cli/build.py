"""The factory's commands: ``forma recipe check``, ``forma build``, ``forma schema export``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from cli.options import Overwrite

out = Console(markup=False, highlight=False, soft_wrap=True)  # paths and messages print as written (brackets survive)


def recipe_check(file: Path = typer.Argument(..., help="Recipe YAML."),
                 qa: bool = typer.Option(False, "--qa", help="Also flag questions their fact's answer does not fit "
                                                             "(MiniLM; about half a minute)."),
                 qa_out: Path = typer.Option(None, help="Write the flagged questions as JSON lines here.")) -> None:
    """Validate a recipe and its knowledge base; print the plan's category and behaviour quotas."""
    from factory.planner import Planner
    from factory.recipe_loader import load_recipe

    loaded = load_recipe(file)
    planner = Planner(loaded)
    quotas, cells = planner.quotas(), planner.behaviour_quotas()
    behaviours = list(loaded.recipe.behaviours)
    table = Table(title=f"{loaded.recipe.name}: {loaded.recipe.total} conversations")
    for column in ("category", "share", "quota", *behaviours, "training facts"):
        table.add_column(column)
    for category, share in loaded.recipe.categories.items():
        table.add_row(category.value, f"{share:g}%", str(quotas[category]),
                      *(str(cells.get((category, b), 0)) for b in behaviours), str(len(loaded.facts_for(category))))
    out.print(table)
    if list(loaded.recipe.language_shares) != ["en"]:
        out.print(_language_table(loaded, planner))
    out.print(f"ok {file}: {len(loaded.facts)} facts ({sum(f.heldout for f in loaded.facts)} held out), "
              f"{len(loaded.behaviours.ids())} behaviour items")
    if qa:
        _question_answer_check(loaded.facts, qa_out)


def _language_table(loaded: Any, planner: Any) -> Table:
    """Quotas per language and category (behaviour split inside), and the facts each language can draw on."""
    cells, behaviours = planner.cell_quotas(), list(loaded.recipe.behaviours)
    lang_quotas = planner.language_quotas()
    table = Table(title="per language (" + ", ".join(f"{lang} {share:g}%: {lang_quotas[lang]}"
                                                     for lang, share in loaded.recipe.language_shares.items()) + ")")
    for column in ("language", "category", "quota", *behaviours, "facts in language"):
        table.add_column(column)
    for lang in loaded.recipe.language_shares:
        for category in loaded.recipe.categories:
            row = [cells.get((lang, category, b), 0) for b in behaviours]
            table.add_row(lang, category.value, str(sum(row)), *map(str, row),
                          str(len(loaded.facts_for(category, lang))))
    return table


def _question_answer_check(facts: Any, qa_out: Path | None) -> None:
    from common.jsonl import write_jsonl
    from factory.embed import get_encoder
    from factory.knowledge_check import question_answer_mismatches

    found = question_answer_mismatches(facts, get_encoder("minilm"), top_k=5)
    for m in found[:20]:
        out.print(f"check {m.render()}")
    out.print(f"{len(found)} question(s) to review: their fact's answer ranks below 5th for them"
              + ("" if len(found) <= 20 else " (first 20 shown)"))
    if qa_out is not None:
        write_jsonl(qa_out, (m.__dict__ for m in found))
        out.print(f"wrote {qa_out}")


def build(file: Path = typer.Argument(..., help="Recipe YAML."),
          out_dir: Path = typer.Option(None, "--out", "-o", help="Output folder (default: out/<recipe name>)."),
          seed: int = typer.Option(None, help="Override the recipe's seed."),
          total: int = typer.Option(None, help="Override the recipe's total."),
          quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
          resume: bool = typer.Option(False, "--resume",
                                      help="Reuse the LLM replies an earlier build cached in --out."),
          engine: str = typer.Option("local", "--engine", help="local, or distilabel (a distilabel Pipeline)."),
          ray_address: str = typer.Option(None, "--ray-address",
                                          help="Run the distilabel pipeline on this Ray cluster (needs --engine "
                                               "distilabel)."),
          overwrite: Overwrite = False) -> None:
    """Build the dataset a recipe describes: ShareGPT, Alpaca, HF dataset, parquet, rejects, card, manifest.

    The dataset is built in a hidden folder beside --out and takes its name only when complete. An earlier dataset
    in --out is refused unless --overwrite or --resume (then replaced as a whole, never mixed); a folder holding
    anything else is always refused.
    """

    def body() -> None:
        from factory.build import build_dataset
        from factory.recipe_loader import load_recipe

        target = out_dir or Path("out") / load_recipe(file).recipe.name
        result = build_dataset(file, target, seed=seed, total=total, progress=not quiet, resume=resume,
                               engine=engine, ray_address=ray_address, overwrite=overwrite)
        table = Table(title=f"{len(result.samples)} conversations in {result.seconds:.1f} s -> {result.out}")
        for column in ("category", "quota", "actual"):
            table.add_column(column)
        for category, quota in result.quotas.items():
            table.add_row(category, str(quota), str(result.counts[category]))
        out.print(table)
        funnel = Table(title="filter funnel")
        for column in ("stage", "seen", "kept", "dropped", "seconds"):
            funnel.add_column(column)
        for stats in result.stats:
            funnel.add_row(stats.stage, str(stats.seen), str(stats.kept), str(stats.dropped), f"{stats.seconds:.2f}")
        out.print(funnel)
        out.print(f"rejects: {result.rejects} (see {result.out / 'rejects.jsonl'}); "
                  f"dataset hash {result.dataset_hash[:16]}")
        out.print("time: " + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in result.phases.items()))
        _report_quality(result.quality, result.quality_misses)

    body()


def _report_quality(figures: dict[str, Any], misses: list[str]) -> None:
    """The quality figures in one line; a figure that missed the recipe's threshold fails the build (exit 1)."""
    if figures:
        top = figures["most_repeated_assistant_turn"]["count"]
        out.print(f"quality: {figures['distinct_assistant_turns']} distinct assistant turns (most repeated x{top}), "
                  f"facts {figures['facts_used']}/{figures['facts_available']}, behaviour items "
                  f"{figures['behaviour_items_used']}/{figures['behaviour_items_available']}, topic switches "
                  f"{100 * figures['topic_switch_share']:.1f}%")
    for miss in misses:
        out.print(f"quality: {miss}", style="bold red")
    if misses:
        raise typer.Exit(1)


def schema_export(directory: Path = typer.Argument(..., help="Folder to write JSON Schema files into."),
                  overwrite: Overwrite = False) -> None:
    """Write JSON Schema for every record type, for tools outside Python (the folder appears only when complete)."""

    def body() -> None:
        from common.outdir import output_folder
        from schemas.jsonschema import export_json_schemas

        with output_folder(directory, "schemas", overwrite=overwrite) as work:
            names = [path.name for path in export_json_schemas(work)]
        for name in names:
            out.print(f"wrote {directory / name}")

    body()


def loop(file: Path = typer.Argument(Path("recipes/forma-fitness.yaml"), help="Recipe YAML."),
         out_dir: Path = typer.Option(Path("out/loop"), "--out", "-o", help="Where every step writes."),
         max_steps: int = typer.Option(None, help="Override the training config's max_steps."),
         quant: str = typer.Option("q4_k_m", help="GGUF quantization to ship and evaluate."),
         policy: Path = typer.Option(None, help="Release policy (default: eval/policy-demo.yaml)."),
         drift: bool = typer.Option(False, help="Also run the suites on the 16-bit model and gate on drift.")) -> None:
    """The whole loop on the embedded default: build, train briefly on CPU, export, eval, gate, report.

    Each run replaces the dataset, GGUF folder and release bundle of the previous run under --out as a whole.
    """

    def body() -> None:
        from cli.loop import DEMO_POLICY, run_loop

        result = run_loop(file, out_dir, max_steps=max_steps, quant=quant, policy=policy or DEMO_POLICY,
                          drift=drift, log=out.print)
        out.print(f"dataset {result.dataset} | model {result.merged_model} | gguf {result.gguf}")
        out.print(f"report {result.report_dir} | gate {'PASSED' if result.gate_passed else 'FAILED'} | "
                  f"steps {result.seconds}")
        if not result.gate_passed:
            raise typer.Exit(1)

    body()


def register(app: typer.Typer) -> None:
    recipe = typer.Typer(help="Work with recipes.", no_args_is_help=True)
    recipe.command("check")(recipe_check)
    app.add_typer(recipe, name="recipe")
    app.command("build")(build)
    app.command("loop")(loop)
    schema = typer.Typer(help="Record schemas.", no_args_is_help=True)
    schema.command("export")(schema_export)
    app.add_typer(schema, name="schema")
