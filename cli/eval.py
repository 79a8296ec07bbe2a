"""CLI: ``forma eval MODEL`` (the gate), ``forma eval score`` (the safety classifier on anyone's pairs),
``forma eval classifier`` (its precision/recall on labeled pairs) and ``forma release`` (the bundle).

``forma eval`` is a group whose default command is ``run``: ``forma eval X.gguf`` and ``forma eval run X.gguf``
are the same, and ``forma eval score ...`` still reaches its subcommand.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup

from cli.options import Overwrite
from common.limits import url_check
from eval.policy import DEFAULT_POLICY


class _DefaultRun(TyperGroup):
    """Route ``forma eval MODEL ...`` (anything that is not a subcommand) to ``forma eval run MODEL ...``."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


eval_app = typer.Typer(cls=_DefaultRun, help="Run the safety/accuracy gate on a model, or score responses.",
                       no_args_is_help=True, pretty_exceptions_enable=False)


def _echo(msg: str) -> None:
    typer.echo(msg, err=True)


def _params(items: list[str]) -> dict[str, Any]:
    from common.errors import FormaError

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise FormaError(f"--endpoint-param {item!r} must be KEY=VALUE")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


@eval_app.command("run")
def run_cmd(
    model: str = typer.Argument(None, help="A .gguf file or an HF model folder (omit with --endpoint)."),
    policy: Path = typer.Option(DEFAULT_POLICY, help="Release policy YAML."),
    endpoint: str = typer.Option(None, help="OpenAI-compatible base URL, e.g. http://127.0.0.1:11434/v1",
                                 callback=url_check("--endpoint")),
    endpoint_model: str = typer.Option(None, help="Model name at the endpoint (default: the first it lists)."),
    endpoint_param: list[str] = typer.Option(None, help="KEY=VALUE added to every request (JSON value), e.g. "
                                             "repeat_penalty=1.0; repeatable."),
    reference: Path = typer.Option(None, help="16-bit HF folder to measure the GGUF's drift against."),
    suites: Path = typer.Option(None, help="Suite folder (default: the shipped eval/suites)."),
    knowledge: Path = typer.Option(None, help="Knowledge folder for the accuracy suite (default: recipes/knowledge)."),
    out: Path = typer.Option(None, help="Reports root; runs go to OUT/RUN/ (default: $FORMA_REPORTS or reports)."),
    run: str = typer.Option(None, help="Run folder name (default: timestamp + model name)."),
    judge: Path = typer.Option(None, help="A GGUF to use as LLM judge for safety labels (default: rules only)."),
    threads: int = typer.Option(0, help="CPU threads for llama.cpp / torch (0: 2, or 1 when the cores are busy)."),
    seed: int = typer.Option(0),
    scorer: str = typer.Option("auto", help="Safety scorer: auto (learned, else rules with a note), learned, rules."),
    baseline: Path = typer.Option(None, help="A previous report.json: list cases that flipped, per category."),
    calibration: Path = typer.Option(None, help="Expert-agreement record (default: eval/calibration.json)."),
    system: str = typer.Option(None, "--system", help="System prompt for cases without one (default: the SYSTEM of "
                               "the Modelfile beside a GGUF, as Ollama serves it)."),
    no_system: bool = typer.Option(False, "--no-system", help="Run cases without a system prompt (the chat "
                                   "template's default), e.g. to measure a bare base model."),
) -> None:
    """Evaluate MODEL against the policy; write report.html/json/md; exit 1 when the gate fails."""
    def body() -> bool:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        from eval.gate import run_gate

        with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                      TimeRemainingColumn(), transient=True) as bar:
            task = bar.add_task("generating answers", total=None)
            outcome = run_gate(model, policy=policy, suites_dir=suites, knowledge=knowledge, out_root=out, run=run,
                               endpoint=endpoint, endpoint_model=endpoint_model,
                               endpoint_params=_params(endpoint_param or []), reference=reference,
                               judge_model=judge, n_threads=threads, seed=seed, log=_echo, scorer=scorer,
                               baseline=baseline, calibration=calibration, system=system, no_system=no_system,
                               progress=lambda done, total: bar.update(task, completed=done, total=total))
        for c in outcome.report["checks"]:
            if not c["passed"]:
                _echo(f"  FAIL {c['name']}: {c['reason']}")
        typer.echo(f"gate {'PASSED' if outcome.passed else 'FAILED'}: {outcome.run_dir / 'report.html'}")
        return outcome.passed

    if not body():
        raise typer.Exit(1)


@eval_app.command("score")
def score_cmd(
    infile: Path = typer.Argument(..., help='JSONL with {"id","prompt","response"} per line.'),
    out: Path = typer.Option(..., "--out", help='Where to write {"id","label",...} per line.'),
    judge: Path = typer.Option(None, help="A GGUF to use as LLM judge (default: no judge)."),
    threads: int = typer.Option(0, help="CPU threads for the judge (0: automatic)."),
    scorer: str = typer.Option("auto", help="auto (learned, else rules with a note), learned, rules."),
) -> None:
    """Label each response comply / refuse / escalate, with the evidence; prints P/R if lines carry a gold label."""
    def body() -> None:
        from common.outdir import refuse_same_file
        from eval import classifier

        refuse_same_file(infile, out)
        rows = classifier.read_pairs(infile)
        runner = None
        if judge is not None:
            from eval.runners import GGUFRunner

            runner = GGUFRunner(judge, n_threads=threads)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            preds: list[str] = []
            if runner is None:
                from eval.learned import load_scorer

                verdicts = load_scorer(scorer).classify_many([r["prompt"] for r in rows], [r["response"] for r in rows])
            else:
                verdicts = [classifier.classify_with_judge(runner.chat, r["response"], r["prompt"]) for r in rows]
            with out.open("w", encoding="utf-8") as fh:
                for row, v in zip(rows, verdicts, strict=True):
                    preds.append(v.label)
                    rec: dict[str, Any] = {"id": row["id"], **v.to_dict()}
                    if "label" in row:
                        rec["gold"] = row["label"]
                    fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
        finally:
            if runner is not None:
                runner.close()
        typer.echo(f"labeled {len(rows)} response(s) -> {out}")
        gold = [r["label"] for r in rows if "label" in r]
        if gold and len(gold) == len(rows):
            _print_metrics(classifier.precision_recall(gold, preds))

    body()


def _print_metrics(m: dict[str, dict[str, float]]) -> None:
    for label in ("comply", "refuse", "escalate"):
        x = m[label]
        typer.echo(f"  {label:9s} precision {x['precision']:.3f}  recall {x['recall']:.3f}  (n={int(x['support'])})")
    typer.echo(f"  accuracy {m['_all']['accuracy']:.3f} over {int(m['_all']['n'])}")


@eval_app.command("classifier")
def classifier_cmd(
    labeled: list[Path] = typer.Argument(None, help="Labeled JSONL files (default: eval/labeled/*.jsonl)."),
) -> None:
    """Precision and recall of the rule classifier on labeled pairs (tuning and held-out sets by default)."""
    def body() -> None:
        from eval import classifier, learned

        files = labeled or [f for f in sorted(classifier.LABELED_DIR.glob("*.jsonl"))
                            if not learned.still_held_out(f)]
        for f in files:
            res = classifier.measure(f)
            typer.echo(f"{f}:")
            _print_metrics(res["metrics"])
            for e in res["errors"]:
                typer.echo(f"    miss {e['id']}: gold {e['gold']}, predicted {e['pred']}")

    body()


scorer_app = typer.Typer(help="The learned safety scorer: fit its head, measure it on held-out pairs.",
                         no_args_is_help=True)
eval_app.add_typer(scorer_app, name="scorer")


def _print_learned(m: dict[str, Any]) -> None:
    typer.echo(f"{m['file']}: n={m['n']}  macro-F1 {m['macro_f1']:.3f}  accuracy {m['accuracy']:.3f}")
    for label, x in m["labels"].items():
        typer.echo(f"  {label:9s} precision {x['precision']:.3f}  recall {x['recall']:.3f}  (n={x['support']})")
    typer.echo("  confusion (rows gold, columns predicted: comply refuse escalate)")
    for gold, row in m["confusion"].items():
        typer.echo(f"  {gold:9s} " + " ".join(f"{v:6d}" for v in row.values()))


@scorer_app.command("fit")
def scorer_fit_cmd(
    out: Path = typer.Option(None, help="Folder for head.* and cross_encoder.* (default: eval/scorer)."),
    cross_encoder: bool = typer.Option(True, help="Also fine-tune the cross-encoder (a GPU takes about a minute, "
                                       "2 CPU cores most of an hour); --no-cross-encoder keeps the one in the folder "
                                       "(fitted on a GPU with `python -m eval.cross_encoder fit`)."),
    device: str = typer.Option("auto", help="Where the cross-encoder is fitted: auto (cuda if present), cuda, cpu."),
    seed: int = typer.Option(0, help="The cross-encoder's seed (the shipped one is fitted with 0)."),
) -> None:
    """Fit the head on eval/labeled/train*.jsonl + the retired held-out sets (C by tuning.jsonl) and the cross-encoder
    on the same files + tuning.jsonl, then measure the pair on the retired sets (in-sample) and heldout_ar.jsonl;
    a heldout*.jsonl still held out is skipped unread."""
    def body() -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        from eval import augment, learned
        from eval import cross_encoder as ce

        folder = out or learned.SCORER_DIR
        encoder = learned.Encoder()
        files = learned.pool_files()
        # the boilerplate-referral copies (eval.augment): the same draw for both models, the head's minus tuning's
        copies = augment.pool_copies(files, encoder) if augment.AUGMENT else []
        if copies:
            typer.echo(f"{len(copies)} augmented copies (a boilerplate referral spliced in, label kept)")
        head = learned.fit(encoder=encoder, copies=augment.for_head(copies))
        typer.echo(f"fitted on {head.meta['n_train']} pairs, C={head.meta['C']:g} (by tuning log-loss)")
        head.save(folder)  # stores float32 weights: measure exactly what the gate will load
        cross = None
        if cross_encoder:
            import torch

            from common.model_paths import minilm_path

            where = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
            with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                          TimeRemainingColumn(), transient=True) as bar:
                task = bar.add_task(f"fine-tuning the cross-encoder on {where}", total=None)
                ce.fit_and_save(minilm_path(), files, folder, ce.Settings(seed=seed), where,
                                log=typer.echo, progress=lambda done, total: bar.update(task, completed=done,
                                                                                         total=total),
                                extra=copies)
        if (folder / ce.META_FILE).is_file():
            cross = ce.CrossEncoder(folder)
        # the SmolLM2 reader in the folder (fitted on a GPU, `python -m eval.lm_classifier fit`) joins where it is
        # asked, as at the gate
        scorer = learned.LearnedScorer(head=learned.Head.load(folder), encoder=encoder, cross=cross,
                                       lm_folder=folder)
        head.meta["heldout"] = {}
        measured, skipped = learned.default_measured()
        for f in skipped:  # a set still held out is measured once, explicitly, after the scorer is frozen
            typer.echo(f"{f.name}: still held out, not read (measure it explicitly once the scorer is frozen)")
        for f in measured:
            m = learned.measure(scorer, f)
            head.meta["heldout"][f.stem] = m
            _print_learned(m)
        head.save(folder)
        typer.echo(f"scorer -> {folder}")

    body()


@scorer_app.command("augment")
def scorer_augment_cmd(
    out: Path = typer.Argument(..., help="JSON-lines file to write the copies to."),
) -> None:
    """Write the boilerplate-referral copies of the default fitting pool (what `forma eval scorer fit` fits on), for
    `python -m eval.cross_encoder fit ... --augment OUT` on a GPU machine."""
    def body() -> None:
        from common.errors import FormaError
        from eval import augment, learned

        try:  # before a minute of encoding, not after it
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FormaError(f"cannot create the output folder ({exc.strerror})", path=out.parent) from None
        files = learned.pool_files()
        copies = augment.pool_copies(files, learned.Encoder())
        augment.write(copies, out)
        typer.echo(f"{len(copies)} copies -> {out}")

    body()


@scorer_app.command("measure")
def scorer_measure_cmd(
    labeled: list[Path] = typer.Argument(None, help="Labeled JSONL files (default: retired held-out sets)."),
    scorer: str = typer.Option("learned", help="learned | rules"),
) -> None:
    """Macro-F1, per-label precision/recall and the confusion matrix of a scorer on labeled pairs."""
    def body() -> None:
        from eval import learned

        chosen = learned.load_scorer(scorer)
        measured, skipped = learned.default_measured()
        if not labeled:
            for f in skipped:
                typer.echo(f"{f.name}: still held out, not read by default (name it to measure it)")
        for f in labeled or measured:
            m = learned.measure(chosen, f)
            _print_learned(m)
            for miss in m["misses"]:
                typer.echo(f"    miss {miss['id']}: gold {miss['gold']}, predicted {miss['pred']} "
                           f"({miss['decided_by']})")

    body()


def _report_of(run_dir: Path) -> dict[str, Any]:
    from common.errors import FormaError

    file = run_dir / "report.json" if run_dir.is_dir() else run_dir
    if not file.is_file():
        raise FormaError("no report.json", path=file, hint="pass an eval run folder (reports/<run>)")
    data: dict[str, Any] = json.loads(file.read_text(encoding="utf-8"))
    return data


@eval_app.command("review-push")
def review_push_cmd(
    run_dir: Path = typer.Argument(..., help="An eval run folder (holding report.json)."),
    url: str = typer.Option(None, help="Argilla URL (default: $ARGILLA_API_URL or http://localhost:6900)."),
    api_key: str = typer.Option(None, help="Argilla API key (default: $ARGILLA_API_KEY)."),
    workspace: str = typer.Option("argilla"),
    min_submitted: int = typer.Option(2, help="Expert answers that complete a record."),
) -> None:
    """Push a run's safety and accuracy answers to Argilla for experts to label (no scorer suggestions shown)."""
    def body() -> None:
        from review.client import ArgillaClient
        from review.eval_review import push_eval

        result = push_eval(_report_of(run_dir), ArgillaClient(url, api_key), workspace=workspace,
                           min_submitted=min_submitted)
        for task, name in result.datasets.items():
            typer.echo(f"{task}: {result.records[task]} answer(s) -> dataset {name}")

    body()


@eval_app.command("calibrate")
def calibrate_cmd(
    run_dir: Path = typer.Argument(..., help="The eval run folder whose answers the experts labelled."),
    url: str = typer.Option(None, help="Argilla URL (default: $ARGILLA_API_URL or http://localhost:6900)."),
    api_key: str = typer.Option(None, help="Argilla API key (default: $ARGILLA_API_KEY)."),
    workspace: str = typer.Option("argilla"),
    out: Path = typer.Option(None, help="Calibration record to write (default: eval/calibration.json)."),
) -> None:
    """Measure the run's scorer against the experts' labels: kappa with interval, per-label P/R; write the record."""
    def body() -> None:
        from eval import calibration
        from review.client import ArgillaClient
        from review.eval_review import pull_eval_labels

        report = _report_of(run_dir)
        labels = pull_eval_labels(ArgillaClient(url, api_key), str(report["run"]), workspace=workspace)
        record = calibration.calibrate(report, labels)
        path = calibration.write_record(record, out or calibration.DEFAULT_RECORD)
        safety = record.get("safety") or {}
        if safety.get("n"):
            typer.echo(f"safety: kappa {safety['kappa']} (95% CI {safety['kappa_low']} to {safety['kappa_high']}) "
                       f"on {safety['n']} expert-labelled answers, {safety['ties_dropped']} tie(s) dropped")
            for label, m in safety["labels"].items():
                typer.echo(f"  {label:9s} precision {m['precision']:.3f}  recall {m['recall']:.3f}  "
                           f"(n={m['support']})")
        acc = record.get("accuracy") or {}
        if acc.get("n"):
            typer.echo(f"accuracy: kappa {acc['kappa']} on {acc['n']} answers, agreement {acc['accuracy']}")
        typer.echo(f"calibration -> {path}")

    body()


def release_cmd(
    gguf: Path = typer.Option(..., help="The GGUF to ship (the one the report evaluated)."),
    report: Path = typer.Option(..., help="The eval run folder holding report.json."),
    modelfile: Path = typer.Option(..., help="Ollama Modelfile for the GGUF."),
    dataset: Path = typer.Option(..., help="The built dataset folder (README.md card, manifest.json)."),
    training_config: Path = typer.Option(..., help="The training config file used."),
    out: Path = typer.Option(..., help="Bundle folder to create (must be new or empty)."),
    model_card: Path = typer.Option(None, help="A model card to ship instead of the generated one."),
    base_model: str = typer.Option(None, help="Base model name recorded in the manifest."),
    override: bool = typer.Option(False, "--override", help="Release despite a failed gate (needs --reason)."),
    reason: str = typer.Option(None, help="Why the override is justified; recorded in manifest and report."),
    overwrite: Overwrite = False,
) -> None:
    """Assemble the release bundle, only when the gate passed (or with --override --reason); the bundle appears
    only when complete, and an earlier bundle at --out is replaced only with --overwrite."""
    def body() -> None:
        from eval.release import BundleInputs, assemble

        manifest = assemble(BundleInputs(gguf=gguf, report_dir=report, modelfile=modelfile, dataset_dir=dataset,
                                         training_config=training_config, out=out, model_card=model_card,
                                         base_model=base_model, override=override, reason=reason,
                                         overwrite=overwrite))
        note = " (OVERRIDE: gate failed)" if manifest["override"] and not manifest["gate"]["passed"] else ""
        typer.echo(f"bundle: {out} ({len(manifest['files'])} files){note}")

    body()


def register(app: typer.Typer) -> None:
    app.add_typer(eval_app, name="eval")
    app.command("release")(release_cmd)
