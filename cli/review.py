"""``forma review``: serve, users, push, pull (journal + merge), merge, status.

Argilla, requests and sentence-transformers are imported inside the command bodies so ``forma --help`` stays
instant. The API key comes from ``--api-key`` or ``ARGILLA_API_KEY`` and is never printed.
"""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from cli.options import ArgillaKey, ArgillaName, ArgillaUrl, ArgillaWorkspace, MergedOut, ReviewJournal
from common.limits import batch_size_check, check_port

review_app = typer.Typer(name="review", help="Expert review in Argilla: serve, users, push, pull and merge, status.",
                         no_args_is_help=True)
users_app = typer.Typer(name="users", help="Annotator logins: one per expert, never the owner's.",
                        no_args_is_help=True)
review_app.add_typer(users_app, name="users")
console = Console(soft_wrap=True)  # no hard wraps: a printed path or command must copy and paste whole


def register(app: typer.Typer) -> None:
    app.add_typer(review_app, name="review")


def default_journal(dataset_dir: Path) -> Path:
    return dataset_dir / "review" / "journal.jsonl"


def default_merged(dataset_dir: Path) -> Path:
    return dataset_dir.parent / f"{dataset_dir.name}-reviewed"


@review_app.command("serve")
def serve_cmd(
    home: Path = typer.Option(None, help="Where Argilla keeps its data (default: <forma cache>/argilla-home)."),
    port: int = typer.Option(6900, help="HTTP port of the API and UI (0: any free port).", callback=check_port),
    worker: bool = typer.Option(True, help="Run the background worker (needed to change min submissions later)."),
) -> None:
    """Start a local Argilla (server + noida-db for search and Redis) until Ctrl-C."""

    def body() -> None:
        import signal

        from common.model_paths import cache_root
        from review.server import LocalArgilla, ServerConfig

        stopping = False

        def _interrupt(signum: int, frame: object) -> None:
            if not stopping:  # a second Ctrl-C while stopping must not cut the clean-up short
                raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops the stack as cleanly as Ctrl-C
        signal.signal(signal.SIGINT, _interrupt)  # also when started in the background, where SIGINT is ignored

        stack = LocalArgilla(ServerConfig(home=home or cache_root() / "argilla-home", port=port, worker=worker))
        console.print("starting Argilla (first run installs the server venv, about 75 s) ...")
        started = time.perf_counter()
        try:
            with stack:
                # the whole body is inside the try: a Ctrl-C may arrive between any two lines, not only in the loop
                try:
                    console.print(f"[green]Argilla is up[/] in {time.perf_counter() - started:.0f} s at "
                                  f"[bold]{stack.url}[/]")
                    console.print(f"credentials (user 'argilla', password, API key): {stack.credentials_file}")
                    console.print(f"  use them with: set -a; . {stack.credentials_file}; set +a")
                    console.print("press Ctrl-C to stop")
                    while all(p.poll() is None for n, p in stack.procs.items() if n != "migrate"):
                        time.sleep(1)
                    console.print("[red]a server process exited[/]; logs in " + str(stack.logs))
                except KeyboardInterrupt:
                    pass
                stopping = True
                console.print("stopping ...")
        except KeyboardInterrupt:  # interrupted while starting: the context manager has stopped what it started
            pass
        console.print("stopped")

    body()


@review_app.command("push")
def push_cmd(
    dataset_dir: Path = typer.Argument(..., help="A `forma build` output folder."),
    url: ArgillaUrl = None,
    api_key: ArgillaKey = None,
    name: ArgillaName = None,
    workspace: ArgillaWorkspace = "argilla",
    sample: int = typer.Option(None, help="Route only N samples, stratified by category."),
    seed: int = typer.Option(0, help="Seed of the stratified sample."),
    min_submitted: int = typer.Option(None, help="Submissions that complete a record (new dataset: 2; "
                                      "default keeps an existing dataset's)."),
    vectors: bool = typer.Option(True, help="Add MiniLM vectors for 'find similar'."),
    batch_size: int = typer.Option(250, help="Records per request (at most 500).",
                                   callback=batch_size_check(500)),
) -> None:
    """Create or update the Argilla dataset for a dataset version (records keyed by sample id)."""

    def body() -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        from review.client import ArgillaClient
        from review.dataset import load_version
        from review.push import PushOptions, push

        version = load_version(dataset_dir)
        options = PushOptions(name=name, workspace=workspace, sample=sample, seed=seed, min_submitted=min_submitted,
                              vectors=vectors, batch_size=batch_size)
        client = ArgillaClient(url, api_key)
        with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                      TimeRemainingColumn(), console=console, transient=True) as bar:
            task = bar.add_task("pushing records", total=None)
            result = push(version, client, options,
                          progress=lambda done, total: bar.update(task, completed=done, total=total))
        console.print(f"[green]pushed[/] {result.dataset} to {result.url}: {result.created} new, {result.updated} "
                      f"updated, {result.unchanged} unchanged (of {result.selected}) in {result.seconds:.1f} s")

    body()


@review_app.command("pull")
def pull_cmd(
    dataset_dir: Path = typer.Argument(..., help="The dataset folder that was pushed."),
    url: ArgillaUrl = None,
    api_key: ArgillaKey = None,
    name: ArgillaName = None,
    workspace: ArgillaWorkspace = "argilla",
    journal: ReviewJournal = None,
    out: MergedOut = None,
    all_records: bool = typer.Option(False, "--all", help="Also fetch responses of records not yet completed."),
    approved_only: bool = typer.Option(False, help="Leave unreviewed samples out of the merged version."),
) -> None:
    """Fetch submitted responses into the journal, then merge them into a new dataset version."""

    def body() -> None:
        from review.client import ArgillaClient
        from review.dataset import load_version
        from review.pull import pull

        version = load_version(dataset_dir)
        journal_path = journal or default_journal(dataset_dir)
        client = ArgillaClient(url, api_key)
        result = pull(client, name or version.argilla_name, journal_path, workspace=workspace,
                      include_pending=all_records)
        console.print(f"fetched {result.responses_fetched} responses from {result.records_fetched} of "
                      f"{result.records_seen} records; {result.responses_new} new in {result.journal}")
        _merge_and_report(dataset_dir, journal_path, out or default_merged(dataset_dir), approved_only)

    body()


@review_app.command("merge")
def merge_cmd(
    dataset_dir: Path = typer.Argument(..., help="The dataset folder that was pushed."),
    journal: ReviewJournal = None,
    out: MergedOut = None,
    approved_only: bool = typer.Option(False, help="Leave unreviewed samples out of the merged version."),
) -> None:
    """Merge the journal into a new dataset version, offline (no server needed)."""
    _merge_and_report(dataset_dir, journal or default_journal(dataset_dir), out or default_merged(dataset_dir),
                      approved_only)


def _merge_and_report(dataset_dir: Path, journal: Path, out: Path, approved_only: bool) -> None:
    from review.merge import merge_reviews

    result = merge_reviews(dataset_dir, journal, out, approved_only=approved_only)
    counts = ", ".join(f"{k} {v}" for k, v in result.counts.items())
    console.print(f"[green]merged[/] {result.kept} of {result.total} samples into {result.out_dir} ({counts})")
    if result.corrections:
        done = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in result.corrections.items())
        console.print(f"corrections: {done} (each listed in review/corrections.jsonl)")
    table = Table("question", "records", "% agree", "Krippendorff α", "Cohen κ (mean)", title="agreement")
    for q in result.agreement.values():
        table.add_row(q.question, str(q.records), _fmt(q.percent_agreement), _fmt(q.krippendorff_alpha),
                      _fmt(q.cohen_kappa_mean))
    console.print(table)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


@review_app.command("status")
def status_cmd(
    dataset_dir: Path = typer.Argument(None, help="The dataset folder that was pushed (or give --name)."),
    url: ArgillaUrl = None,
    api_key: ArgillaKey = None,
    name: ArgillaName = None,
    workspace: ArgillaWorkspace = "argilla",
) -> None:
    """Review progress per category and per annotator."""

    def body() -> None:
        from common.errors import FormaError
        from review.client import ArgillaClient
        from review.dataset import load_version
        from review.status import review_status

        if name is None and dataset_dir is None:
            raise FormaError("give a dataset folder or --name")
        report = review_status(ArgillaClient(url, api_key), name or load_version(dataset_dir).argilla_name,
                               workspace=workspace)
        console.print(f"{report.dataset}: {report.completed} of {report.total} records completed "
                      f"(minimum {report.min_submitted} submissions each)")
        cats = Table("category", "records", "completed", "pending", title="per category")
        for c, v in report.by_category.items():
            cats.add_row(c, str(v["records"]), str(v["completed"]), str(v["pending"]))
        console.print(cats)
        users = Table("annotator", "submitted", "discarded", "draft", title="per annotator")
        for u, v in report.by_annotator.items():
            users.add_row(u, str(v["submitted"]), str(v["discarded"]), str(v["draft"]))
        console.print(users)
        _print_reasons(report.reasons)

    body()


def _print_reasons(reasons: object) -> None:
    from review.reasons import ReasonSummary

    assert isinstance(reasons, ReasonSummary)
    console.print(f"rejections: {reasons.rejects} ({reasons.rejects_without_reason} without a reason)")
    if reasons.by_tag:
        console.print("reasons: " + ", ".join(f"{t} {n}" for t, n in reasons.by_tag.items()))
    for title, group in (("fact", reasons.by_fact), ("persona", reasons.by_persona),
                         ("generator", reasons.by_generator)):
        if not group:
            continue
        table = Table(title, "rejects", "reasons", title=f"rejections per {title}")
        for key, counts in list(group.items())[:15]:
            tags = ", ".join(f"{t} {n}" for t, n in sorted(counts.items()) if t != "rejects")
            table.add_row(key, str(counts["rejects"]), tags)
        console.print(table)
    for c in reasons.comments[:10]:
        console.print(f"  {c['sample_id']} ({c['user']}, {c['verdict']}): {c['comment']}")


@users_app.command("add")
def users_add_cmd(
    username: str = typer.Argument(..., help="The expert's login (lowercase letters, digits, '.', '_', '-')."),
    url: ArgillaUrl = None,
    api_key: ArgillaKey = None,
    workspace: ArgillaWorkspace = "argilla",
    role: str = typer.Option("annotator", help="annotator (answers only) or admin."),
    password_file: Path = typer.Option(None, help="Write the generated password here (mode 600) instead of "
                                       "printing it once."),
) -> None:
    """Create an annotator login in the workspace (password from FORMA_ANNOTATOR_PASSWORD, else generated)."""

    def body() -> None:
        import os

        from review.client import ArgillaClient
        from review.users import add_user

        owner = ArgillaClient(url, api_key)
        info, generated = add_user(owner, username, os.environ.get("FORMA_ANNOTATOR_PASSWORD") or None,
                                   workspace=workspace, role=role)
        state = "created" if info.created else "already existed"
        console.print(f"{info.username} ({info.role}) {state}; workspaces: {', '.join(info.workspaces)}")
        if generated and password_file:
            password_file.touch(mode=0o600, exist_ok=True)
            os.chmod(password_file, 0o600)
            password_file.write_text(generated + "\n")
            console.print(f"password written to {password_file}: give it to {username} only")
        elif generated:
            console.print(f"password for {username} (shown once, give it to them only): {generated}")
        console.print(f"sign in at {owner.url}")

    body()


@users_app.command("list")
def users_list_cmd(url: ArgillaUrl = None, api_key: ArgillaKey = None) -> None:
    """Every login on the server with its role and workspaces."""

    def body() -> None:
        from review.client import ArgillaClient
        from review.users import list_users

        table = Table("user", "role", "workspaces")
        for user in list_users(ArgillaClient(url, api_key)):
            table.add_row(user.username, user.role, ", ".join(user.workspaces))
        console.print(table)

    body()
