"""Expert review against a real local Argilla (argilla-server 2.8.0 + noida-db), started once for this module.

Two annotator users answer over the HTTP API the way the UI does; push, pull and merge are checked record by
record, with the agreement figures, idempotence (push twice, pull twice), a server killed mid-push, and the clear
errors for a wrong URL, a wrong key and a changed schema.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from common.errors import FormaError
from review.client import ArgillaClient
from review.dataset import DatasetVersion, load_version
from review.fixtures import create_annotator, make_samples, submit, write_version
from review.merge import merge_reviews
from review.pull import pull
from review.push import PushOptions, push
from review.server import LocalArgilla, ServerConfig, free_port
from review.status import review_status
from schemas.knowledge import Category
from schemas.sample import Sample, content_id
from tests.helpers.cdp import Browser

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]

OTHER_CATEGORY = {c: list(Category)[(i + 1) % len(Category)] for i, c in enumerate(Category)}


@pytest.fixture(scope="module")
def argilla(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalArgilla]:
    stack = LocalArgilla(ServerConfig(home=tmp_path_factory.mktemp("argilla-home")))
    with stack:
        yield stack


@pytest.fixture(scope="module")
def owner(argilla: LocalArgilla) -> ArgillaClient:
    return ArgillaClient(argilla.url, argilla.api_key)


@pytest.fixture(scope="module")
def version(tmp_path_factory: pytest.TempPathFactory) -> DatasetVersion:
    """A real `forma build` of 100 samples from the shipped recipe (template generator, no model)."""
    from factory.build import build_dataset

    out = tmp_path_factory.mktemp("v") / "forma-100"
    build_dataset(ROOT / "recipes" / "forma-fitness.yaml", out, total=100)
    return load_version(out)


def plan(i: int, sample: Sample) -> tuple[dict[str, Any] | None, dict[str, Any] | None, str]:
    """(ann1's answer, ann2's answer, expected status) for sample ``i``: every case of the merge rules."""
    cat = sample.category.value
    last = f"turn_{sample.conversation.user_turns}_text"
    ok = {"turn_1_accuracy": 5, "safety": "safe", "correct_category": cat, "verdict": "approve"}
    if i >= 90:  # only one submission: the record stays pending (ann2 discards one, with null values)
        return ok, ({"status": "discarded"} if i == 95 else None), "unreviewed"
    case = i % 10
    if case in (0, 1, 2):
        return ok, dict(ok, turn_1_accuracy=4), "approved"
    if case == 3:
        return dict(ok, safety="needs_disclaimer", turn_1_accuracy=3), dict(ok, turn_1_accuracy=2), "approved"
    if case == 4:  # both move it to another category
        other = OTHER_CATEGORY[sample.category].value
        return dict(ok, correct_category=other), dict(ok, correct_category=other), "approved"
    if case == 5:  # the same correction from both
        fix = f"Corrected answer for sample {i}: see a professional first."
        return dict(ok, **{last: fix}), dict(ok, **{last: fix}), "corrected"
    if case == 6:  # one corrects, the other approves as is
        return dict(ok, **{last: f"Better answer {i}."}), ok, "corrected"
    if case == 7:
        reason = {"reject_reasons": ["wrong_number"], "comment": f"turn 1 number wrong ({i})"}
        return (dict(ok, verdict="reject", turn_1_accuracy=1, **reason),
                dict(ok, verdict="reject", turn_1_accuracy=2, **reason), "rejected")
    if case == 8:  # verdicts differ
        return ok, dict(ok, verdict="reject", safety="unsafe", turn_1_accuracy=1,
                        reject_reasons=["unsafe_advice"]), "disagreement"
    return dict(ok, **{last: f"Fix A {i}"}), dict(ok, **{last: f"Fix B {i}"}), "disagreement"


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def reviewed(argilla: LocalArgilla, owner: ArgillaClient, version: DatasetVersion,
             tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Push 100 samples (with vectors), two annotators answer, one pull, one merge."""
    first = push(version, owner, PushOptions(min_submitted=2, batch_size=40))
    ann1 = create_annotator(owner, "expert_ana", "ana-password-1")
    ann2 = create_annotator(owner, "expert_ben", "ben-password-2")
    ids = {r["external_id"]: r["id"] for r in owner.iter_records(first.dataset_id, include=())}
    for i, sample in enumerate(version.samples):
        a, b, _ = plan(i, sample)
        for who, answer in ((ann1, a), (ann2, b)):
            if answer is None:
                continue
            answer = dict(answer)
            status = answer.pop("status", "submitted")
            submit(who, ids[sample.id], answer, status=status)
    journal = version.path / "review" / "journal.jsonl"
    pulled = pull(owner, first.dataset, journal)
    out = tmp_path_factory.mktemp("merged") / "forma-100-reviewed"
    merged = merge_reviews(version.path, journal, out)
    return {"push": first, "pull": pulled, "merged": merged, "journal": journal, "out": out}


def test_push_creates_one_record_per_sample(owner: ArgillaClient, version: DatasetVersion,
                                            reviewed: dict[str, Any]) -> None:
    result = reviewed["push"]
    assert (result.created, result.updated, result.unchanged) == (100, 0, 0)
    records = list(owner.iter_records(result.dataset_id, include=("suggestions", "vectors")))
    assert sorted(r["external_id"] for r in records) == sorted(s.id for s in version.samples)
    by_id = {r["external_id"]: r for r in records}
    sample = version.samples[3]
    record = by_id[sample.id]
    assert record["fields"]["conversation"] == sample.conversation.messages()[1:]  # the system prompt is not there
    assert record["metadata"]["category"] == sample.category.value
    assert record["metadata"]["turns"] == sample.conversation.user_turns
    assert record["metadata"]["fact_ids"] == sample.lineage.fact_ids
    assert len(record["vectors"]["minilm"]) == 384
    assert record["metadata"]["sample_id"] == sample.id and f"`{sample.id}`" in record["fields"]["context"]
    # suggestions: each turn's current text, nothing pre-selected (no verdict, no category)
    texts = [t.content for t in sample.conversation.turns if t.role.value == "assistant"]
    assert sorted(s["value"] for s in record["suggestions"]) == sorted(texts)


def test_merge_record_by_record(version: DatasetVersion, reviewed: dict[str, Any]) -> None:
    merged = reviewed["merged"]
    assert reviewed["pull"].records_fetched == 90  # completed records only: 90..99 have one submission
    kept = {json.loads(line)["lineage"]["review"].get("original_id") or json.loads(line)["id"]: json.loads(line)
            for line in (reviewed["out"] / "samples.jsonl").read_text().splitlines()}
    expected_counts: dict[str, int] = {}
    for i, sample in enumerate(version.samples):
        a, _b, status = plan(i, sample)
        expected_counts[status] = expected_counts.get(status, 0) + 1
        decision = merged.decisions[sample.id]
        assert decision.status == status, (i, decision)
        if status in ("rejected", "disagreement"):
            assert sample.id not in kept
            continue
        row = Sample.model_validate(kept[sample.id])
        review = row.lineage.review or {}
        assert review["status"] == status
        if status == "corrected":
            assert a is not None
            assert row.conversation.turns[-1].content == a[f"turn_{sample.conversation.user_turns}_text"]
            assert row.conversation.turns[:-1] == sample.conversation.turns[:-1]
            assert review["original_answer"] == sample.conversation.turns[-1].content
            assert row.id == content_id(row.conversation) != sample.id
        else:
            assert row.id == sample.id and row.conversation == sample.conversation
        if i < 90 and i % 10 == 4:
            assert row.category == OTHER_CATEGORY[sample.category]
            assert review["original_category"] == sample.category.value
        elif status != "unreviewed":
            assert row.category == sample.category
    assert merged.counts == dict(sorted(expected_counts.items()))
    assert merged.kept == 100 - expected_counts["rejected"] - expected_counts["disagreement"]
    flags = {d.sample_id: d.flags for d in merged.decisions.values()}
    assert "safety_split" in flags[version.samples[3].id] and "accuracy_spread" not in flags[version.samples[3].id]
    assert "verdict_split" in flags[version.samples[8].id]
    disagreements = (reviewed["out"] / "review" / "disagreements.jsonl").read_text().splitlines()
    assert len(disagreements) == expected_counts["disagreement"]
    # the exports are views of the merged samples
    train = [json.loads(x) for x in (reviewed["out"] / "sharegpt" / "train.jsonl").read_text().splitlines()]
    test = [json.loads(x) for x in (reviewed["out"] / "alpaca" / "test.jsonl").read_text().splitlines()]
    assert len(train) + len(test) == merged.kept
    corrected = next(r for r in kept.values() if r["lineage"]["review"]["status"] == "corrected")
    if corrected["split"] == "train":
        row = next(t for t in train if t["id"] == corrected["id"])
        assert row["conversations"][-1]["value"] == corrected["conversation"]["turns"][-1]["content"]


def test_agreement_figures(version: DatasetVersion, reviewed: dict[str, Any]) -> None:
    import krippendorff
    from sklearn.metrics import cohen_kappa_score

    verdict_a, verdict_b, acc_a, acc_b = [], [], [], []
    for i, sample in enumerate(version.samples[:90]):
        a, b, _ = plan(i, sample)
        assert a is not None and b is not None
        verdict_a.append(a["verdict"])
        verdict_b.append(b["verdict"])
        acc_a.append(a["turn_1_accuracy"])
        acc_b.append(b["turn_1_accuracy"])
    figures = reviewed["merged"].agreement
    verdict = figures["verdict"]
    assert verdict.records == 90 and verdict.annotators == 2
    assert verdict.percent_agreement == pytest.approx(81 / 90, abs=1e-4)
    assert verdict.cohen_kappa_mean == pytest.approx(cohen_kappa_score(verdict_a, verdict_b), abs=1e-4)
    codes = {"approve": 0, "reject": 1}
    alpha = krippendorff.alpha(reliability_data=[[codes[v] for v in verdict_a], [codes[v] for v in verdict_b]],
                               level_of_measurement="nominal", value_domain=[0, 1])
    assert verdict.krippendorff_alpha == pytest.approx(alpha, abs=1e-4)
    accuracy = figures["accuracy"]
    assert accuracy.cohen_kappa_mean == pytest.approx(
        cohen_kappa_score(acc_a, acc_b, labels=[1, 2, 3, 4, 5], weights="quadratic"), abs=1e-4)
    assert 0 < accuracy.cohen_kappa_mean < 1
    saved = json.loads((reviewed["out"] / "review" / "agreement.json").read_text())
    assert saved["verdict"]["cohen_kappa_mean"] == verdict.cohen_kappa_mean


def test_pull_twice_gives_the_same_merge(owner: ArgillaClient, version: DatasetVersion,
                                         reviewed: dict[str, Any], tmp_path: Path) -> None:
    before = reviewed["journal"].read_bytes()
    again = pull(owner, reviewed["push"].dataset, reviewed["journal"])
    assert again.responses_fetched == reviewed["pull"].responses_fetched and again.responses_new == 0
    assert reviewed["journal"].read_bytes() == before
    second = merge_reviews(version.path, reviewed["journal"], tmp_path / "again")
    assert tree_digest(tmp_path / "again") == tree_digest(reviewed["out"])
    assert second.dataset_hash == reviewed["merged"].dataset_hash


def test_push_twice_gives_no_duplicates_and_keeps_responses(owner: ArgillaClient, version: DatasetVersion,
                                                             reviewed: dict[str, Any]) -> None:
    again = push(version, owner, PushOptions(min_submitted=2))
    assert (again.created, again.updated, again.unchanged) == (0, 0, 100)
    # a changed sample is updated in place, its responses kept
    changed = version.samples[0].model_copy(update={"persona": "persona_changed"})
    edited = DatasetVersion(path=version.path, samples=[changed, *version.samples[1:]], manifest=version.manifest)
    third = push(edited, owner, PushOptions(min_submitted=2, vectors=False))
    assert (third.created, third.updated, third.unchanged) == (0, 1, 99)
    records = list(owner.iter_records(again.dataset_id, include=("responses",)))
    assert len(records) == 100 and len({r["external_id"] for r in records}) == 100
    row = next(r for r in records if r["external_id"] == changed.id)
    assert row["metadata"]["persona"] == "persona_changed" and len(row["responses"]) == 2
    push(version, owner, PushOptions(min_submitted=2, vectors=False))  # put it back for the other tests


def test_status_per_category_and_annotator(owner: ArgillaClient, reviewed: dict[str, Any]) -> None:
    report = review_status(owner, reviewed["push"].dataset)
    assert report.total == 100 and report.completed == 90 and report.min_submitted == 2
    assert sum(v["records"] for v in report.by_category.values()) == 100
    assert report.by_annotator["expert_ana"]["submitted"] == 100
    assert report.by_annotator["expert_ben"] == {"submitted": 90, "discarded": 1, "draft": 0}


def test_pull_all_journals_pending_and_discarded(owner: ArgillaClient, reviewed: dict[str, Any],
                                                 tmp_path: Path) -> None:
    journal = tmp_path / "journal.jsonl"
    result = pull(owner, reviewed["push"].dataset, journal, include_pending=True)
    assert result.records_fetched == 100 and result.responses_fetched == 191
    lines = [json.loads(x) for x in journal.read_text().splitlines()]
    assert sum(1 for x in lines if x["status"] == "discarded") == 1


def test_killed_server_mid_push_then_push_again(argilla: LocalArgilla, owner: ArgillaClient,
                                                tmp_path: Path) -> None:
    version = load_version(write_version(tmp_path / "v300", make_samples(300, seed=7)))
    options = PushOptions(name="kill-test", vectors=False, batch_size=10, min_submitted=1)
    killer: list[threading.Thread] = []

    def progress(done: int, total: int) -> None:
        if done >= 50 and not killer:  # kill the API process while the next batches are in flight
            killer.append(threading.Thread(target=argilla.kill_http))
            killer[0].start()

    try:
        with pytest.raises(FormaError, match=r"cannot reach Argilla|answered 5"):
            push(version, owner, options, progress=progress)
        killer[0].join()
    finally:
        argilla.start_http()
    dataset = owner.get_dataset("kill-test", "argilla")
    partial = [r["external_id"] for r in owner.iter_records(dataset["id"], include=())]
    assert 50 <= len(partial) < 300 and len(partial) % 10 == 0  # whole batches only
    resumed = push(version, owner, options)
    assert resumed.unchanged == len(partial) and resumed.created == 300 - len(partial)
    final = [r["external_id"] for r in owner.iter_records(dataset["id"], include=())]
    assert len(final) == 300 and sorted(final) == sorted(s.id for s in version.samples)


def test_wrong_url_is_a_clear_error(version: DatasetVersion) -> None:
    client = ArgillaClient(f"http://127.0.0.1:{free_port()}", "some-key")
    with pytest.raises(FormaError, match=r"cannot reach Argilla at http://127.0.0.1"):
        push(version, client)


def test_wrong_key_is_a_clear_error_that_hides_the_key(argilla: LocalArgilla, version: DatasetVersion,
                                                       reviewed: dict[str, Any]) -> None:
    secret = "wrong-key-0123456789"
    journal = reviewed["journal"]
    before = journal.read_bytes()
    for action in (lambda c: push(version, c), lambda c: pull(c, reviewed["push"].dataset, journal)):
        with pytest.raises(FormaError, match=r"rejected the API key") as info:
            action(ArgillaClient(argilla.url, secret))
        assert secret not in str(info.value)
    assert journal.read_bytes() == before


def test_changed_schema_is_refused_and_nothing_is_lost(owner: ArgillaClient, version: DatasetVersion,
                                                       reviewed: dict[str, Any]) -> None:
    import argilla as rg

    sdk = owner.sdk()
    settings = rg.Settings(fields=[rg.ChatField(name="conversation")],
                           questions=[rg.LabelQuestion(name="verdict", labels=["yes", "no"])])
    rg.Dataset(name="changed-schema", workspace="argilla", settings=settings, client=sdk).create()
    with pytest.raises(FormaError, match=r"schema changed.*question 'comment' is missing"):
        push(version, owner, PushOptions(name="changed-schema", vectors=False))
    journal = reviewed["journal"]
    before = journal.read_bytes()
    with pytest.raises(FormaError, match=r"schema changed.*'verdict' is 'label_selection:yes,no'"):
        pull(owner, "changed-schema", journal)
    assert journal.read_bytes() == before
    assert not any(r for r in owner.iter_records(owner.get_dataset("changed-schema", "argilla")["id"]))


def test_cli_push_status_pull_hide_the_key(argilla: LocalArgilla, version: DatasetVersion, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from cli.app import app

    monkeypatch.setenv("ARGILLA_API_URL", argilla.url)
    monkeypatch.setenv("ARGILLA_API_KEY", argilla.api_key)
    runner = CliRunner()
    small = write_version(tmp_path / "cli-v", make_samples(12, seed=3))
    pushed = runner.invoke(app, ["review", "push", str(small), "--no-vectors", "--sample", "6", "--min-submitted",
                                 "1"])
    assert pushed.exit_code == 0, pushed.output
    assert "6 new" in pushed.output
    status = runner.invoke(app, ["review", "status", str(small)])
    assert status.exit_code == 0 and "0 of 6 records completed" in " ".join(status.output.split())
    pulled = runner.invoke(app, ["review", "pull", str(small), "--out", str(tmp_path / "merged")])
    assert pulled.exit_code == 0, pulled.output
    assert (tmp_path / "merged" / "samples.jsonl").is_file()
    bad = runner.invoke(app, ["review", "push", str(small), "--api-key", "not-the-key-42", "--no-vectors"])
    assert bad.exit_code == 2 and "rejected the API key" in bad.output
    for result in (pushed, status, pulled, bad):
        assert argilla.api_key not in result.output and "not-the-key-42" not in result.output
    for log in argilla.logs.glob("*.log"):
        assert argilla.api_key not in log.read_text(errors="replace")


def test_cli_serve_starts_prints_and_stops_cleanly(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    env = {**os.environ, "FORMA_CACHE": str(Path.home() / ".cache" / "forma")}
    proc = subprocess.Popen([sys.executable, "-m", "cli.app", "review", "serve", "--home", str(tmp_path / "h"),
                             "--port", "0", "--no-worker"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, start_new_session=True)
    lines: list[str] = []
    assert proc.stdout is not None
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        if "press Ctrl-C" in line or not line:
            break
    out = "".join(lines)
    assert "Argilla is up" in out and "credentials.env" in out, out
    key = next(x.split("=", 1)[1] for x in (tmp_path / "h" / "credentials.env").read_text().splitlines()
               if x.startswith("ARGILLA_API_KEY="))
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "stopped" in rest
    assert key not in out + rest
    children = subprocess.run(["pgrep", "-f", str(tmp_path / "h")], capture_output=True, text=True).stdout
    assert children.strip() == ""


# -- what the expert sees: the queue, progress, per-turn corrections and reasons (issue #19) -------------------------

PENDING = {"filters": {"and": [{"type": "terms", "scope": {"entity": "response", "property": "status"},
                                "values": ["pending"]},
                               {"type": "terms", "scope": {"entity": "record", "property": "status"},
                                "values": ["pending"]}]}}


def ui_queue(who: ArgillaClient, dataset_id: str, limit: int = 1) -> dict[str, Any]:
    """The search the UI's Pending queue sends (request body copied from Argilla 2.8's frontend bundle)."""
    answer: dict[str, Any] = who.request("POST", f"/me/datasets/{dataset_id}/records/search", json=PENDING,
                                         params={"include": ["responses", "suggestions"], "offset": 0,
                                                 "limit": limit})
    return answer


def ui_progress(who: ArgillaClient, dataset_id: str) -> dict[str, int]:
    """"My progress" in the UI: GET /me/datasets/{id}/metrics."""
    return dict(who.request("GET", f"/me/datasets/{dataset_id}/metrics")["responses"])


def test_pending_queue_and_progress_through_the_ui_calls(argilla: LocalArgilla, owner: ArgillaClient,
                                                         reviewed: dict[str, Any]) -> None:
    """Records stay pending until two submissions, so the queue must drop what *this* annotator answered."""
    dataset_id = reviewed["push"].dataset_id
    ben = create_annotator(owner, "expert_ben", "ben-password-2")
    ana = create_annotator(owner, "expert_ana", "ana-password-1")
    # ben answered 90 records and discarded one; records 90..99 (one submission each) are still pending
    assert ui_queue(ben, dataset_id)["total"] == 9
    assert ui_progress(ben, dataset_id) == {"total": 100, "submitted": 90, "discarded": 1, "draft": 0,
                                           "pending": 9}
    assert ui_queue(ana, dataset_id)["total"] == 0
    assert ui_progress(ana, dataset_id)["submitted"] == 100


@pytest.fixture(scope="module")
def small_multiturn(tmp_path_factory: pytest.TempPathFactory) -> DatasetVersion:
    """Ten synthetic samples of two and three assistant turns."""
    samples = [s for s in make_samples(60, seed=19) if s.conversation.user_turns >= 2][:10]
    return load_version(write_version(tmp_path_factory.mktemp("mt") / "mt-10", samples, recipe="multiturn"))


def test_queue_moves_on_and_stays_moved_after_a_new_sign_in(argilla: LocalArgilla, owner: ArgillaClient,
                                                            small_multiturn: DatasetVersion) -> None:
    from review.users import add_user, login

    pushed = push(small_multiturn, owner, PushOptions(name="queue-test", vectors=False, min_submitted=2))
    add_user(owner, "expert_cleo", "cleo-password-3")
    cleo = login(argilla.url, "expert_cleo", "cleo-password-3")
    seen: list[str] = []
    for done in range(3):
        queue = ui_queue(cleo, pushed.dataset_id)
        assert queue["total"] == 10 - done
        record = queue["items"][0]["record"]
        assert record["id"] not in seen
        assert len(record["suggestions"]) >= 2  # every turn's text, pre-filled
        submit(cleo, record["id"], {"turn_1_accuracy": 5, "safety": "safe", "correct_category": "nutrition",
                                    "verdict": "approve"})
        seen.append(record["id"])
    again = login(argilla.url, "expert_cleo", "cleo-password-3")  # a reload: a new session, same user
    rest = ui_queue(again, pushed.dataset_id, limit=50)
    assert rest["total"] == 7 and not {r["record"]["id"] for r in rest["items"]} & set(seen)
    assert ui_progress(again, pushed.dataset_id) == {"total": 10, "submitted": 3, "discarded": 0, "draft": 0,
                                                     "pending": 7}


def _answers(who: str, i: int, sample: Sample) -> dict[str, Any]:
    """What each expert submits for record ``i``: the UI sends every turn's text, pre-filled or edited."""
    texts = [t.content for t in sample.conversation.turns if t.role.value == "assistant"]
    values: dict[str, Any] = {f"turn_{k}_text": t for k, t in enumerate(texts, start=1)}
    values.update({f"turn_{k}_accuracy": 5 for k in range(1, len(texts) + 1)},
                  safety="safe", correct_category=sample.category.value, verdict="approve")
    if i < 4:  # both fix the same number in turn 1 (an earlier turn)
        values.update(turn_1_text=texts[0].replace("[#", "[fixed #"), turn_1_accuracy=3,
                      reject_reasons=["wrong_number"])
    elif i < 6:  # both reject, with reasons, and one also corrects turn 2: kept, not applied
        values.update(verdict="reject", reject_reasons=["off_topic_sentence", "not_adapted"],
                      comment=f"{who}: turn 2 ignores the person ({i})", turn_2_accuracy=2)
        if who == "ana":
            values["turn_2_text"] = texts[1] + " Adapted for you."
    elif i == 6:  # ana approves with a fix on turn 1, ben rejects with a fix on turn 2: a tie
        if who == "ana":
            values["turn_1_text"] = texts[0] + " (ana)"
        else:
            values.update(verdict="reject", reject_reasons=["missing_referral"], comment="needs a doctor",
                          turn_2_text=texts[1] + " See your doctor first.")
    return values


def test_two_annotators_ten_records_keep_every_correction_and_reason(
        argilla: LocalArgilla, owner: ArgillaClient, small_multiturn: DatasetVersion, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from cli.app import app

    monkeypatch.setenv("ARGILLA_API_URL", argilla.url)
    monkeypatch.setenv("ARGILLA_API_KEY", argilla.api_key)
    runner = CliRunner()
    for user in ("ana_ui", "ben_ui"):
        added = runner.invoke(app, ["review", "users", "add", user, "--password-file", str(tmp_path / user)])
        assert added.exit_code == 0 and "created" in added.output, added.output
        assert (tmp_path / user).stat().st_mode & 0o777 == 0o600
    listed = runner.invoke(app, ["review", "users", "list"])
    assert "ana_ui" in listed.output and "annotator" in listed.output
    assert runner.invoke(app, ["review", "users", "add", "argilla"]).exit_code == 2  # never the owner's login
    pushed = runner.invoke(app, ["review", "push", str(small_multiturn.path), "--no-vectors", "--min-submitted", "2"])
    assert pushed.exit_code == 0, pushed.output
    dataset = owner.get_dataset(small_multiturn.argilla_name, "argilla")
    assert dataset["name"] == "multiturn-10-samples-" + small_multiturn.dataset_hash[:8]
    index = {s.id: (i, s) for i, s in enumerate(small_multiturn.samples)}
    from review.users import login

    for user in ("ana_ui", "ben_ui"):
        who = login(argilla.url, user, (tmp_path / user).read_text().strip())
        for _ in range(10):  # through the queue, as the UI serves it
            record = ui_queue(who, dataset["id"])["items"][0]["record"]
            i, sample = index[record["external_id"]]
            submit(who, record["id"], _answers(user.split("_")[0], i, sample))
        assert ui_queue(who, dataset["id"])["total"] == 0
        assert ui_progress(who, dataset["id"])["submitted"] == 10
    status = runner.invoke(app, ["review", "status", str(small_multiturn.path)])
    text = " ".join(status.output.split())
    assert "10 of 10 records completed" in text and "rejections: 5 (0 without a reason)" in text, status.output
    assert "off_topic_sentence 4" in text and "rejections per fact" in text and "rejections per persona" in text
    pulled = runner.invoke(app, ["review", "pull", str(small_multiturn.path), "--out", str(tmp_path / "merged")])
    assert pulled.exit_code == 0, pulled.output
    _check_every_correction_and_reason(small_multiturn, tmp_path / "merged")


def _check_every_correction_and_reason(version: DatasetVersion, merged: Path) -> None:
    from review.reasons import dataset_reasons

    rows = [json.loads(x) for x in (merged / "review" / "corrections.jsonl").read_text().splitlines()]
    expected = []
    for i, sample in enumerate(version.samples):
        for who in ("ana", "ben"):
            texts = [t.content for t in sample.conversation.turns if t.role.value == "assistant"]
            answer = _answers(who, i, sample)
            for k, original in enumerate(texts, start=1):
                if answer[f"turn_{k}_text"] != original:
                    expected.append((sample.id, f"{who}_ui", k, answer[f"turn_{k}_text"]))
    assert sorted((r["sample_id"], r["user"], r["turn"], r["text"]) for r in rows) == sorted(expected)
    actions = Counter(r["action"] for r in rows)
    assert actions == {"applied": 8, "kept_sample_rejected": 2, "held_for_adjudication": 2}
    kept = {json.loads(x)["lineage"]["review"].get("original_id") or json.loads(x)["id"]: json.loads(x)
            for x in (merged / "samples.jsonl").read_text().splitlines()}
    for i, sample in enumerate(version.samples[:4]):
        turns = kept[sample.id]["conversation"]["turns"]
        assert turns[1]["content"] == _answers("ana", i, sample)["turn_1_text"]  # turn 1 (an earlier turn)
        assert turns[3:] == [t.model_dump(mode="json") for t in sample.conversation.turns[3:]]
        assert kept[sample.id]["lineage"]["review"]["corrected_turns"] == [1]
    reasons = [json.loads(x) for x in (merged / "review" / "reasons.jsonl").read_text().splitlines()]
    assert len([r for r in reasons if r["verdict"] == "reject"]) == 5
    assert all(r["tags"] and r["comment"] for r in reasons if r["verdict"] == "reject")
    summary = dataset_reasons(version.path)
    assert summary is not None and summary.rejects == 5 and summary.by_tag["not_adapted"] == 4
    assert sum(v["rejects"] for v in summary.by_persona.values()) == 5


SHOWN_ID = "(document.body.innerText.match(/Sample: (s-[0-9a-f]{16})/) || [])[1]"
BUTTON = "(t => Array.from(document.querySelectorAll('button')).find(x => x.innerText.includes(t)).click())"
CHOOSE = """(id => { const i = document.getElementById(id);
  if (!i.checked) document.querySelector(`label[for="${id}"]`).click(); return true; })"""


def _submitted_shown(text: str) -> int:
    import re

    found = re.search(r"Submitted\s+(\d+)", text)
    assert found, text[-500:]
    return int(found.group(1))


def _sign_in(b: Browser, url: str, user: str, password: str) -> None:
    """Sign in through Argilla's own form, as an annotator does (typed input events, the Sign in button)."""
    b.call("Page.enable")
    b.goto(f"{url}/sign-in")
    b.wait_for("document.querySelectorAll('input').length >= 2")
    for name, value in (("Username", user), ("Password", password)):
        b.evaluate(f"document.querySelector('input[name=\"{name}\"]').focus()")
        b.call("Input.insertText", text=value)
    b.evaluate(BUTTON + "('Sign in')")
    b.wait_for("!location.pathname.includes('sign-in')")


def test_browser_annotator_queue_progress_and_a_turn_correction(argilla: LocalArgilla, owner: ArgillaClient,
                                                                tmp_path: Path) -> None:
    """Headless Chromium against the real server: sign in through the form, answer by clicking, edit a turn."""
    import time

    from review.users import add_user

    samples = [s for s in make_samples(60, seed=23) if s.conversation.user_turns >= 2][:4]
    version = load_version(write_version(tmp_path / "ui-4", samples, recipe="browser"))
    pushed = push(version, owner, PushOptions(vectors=False, min_submitted=1))
    add_user(owner, "expert_dana", "dana-password-4")
    answered: list[str] = []
    with Browser(tmp_path / "chromium-profile") as b:
        _sign_in(b, argilla.url, "expert_dana", "dana-password-4")
        b.goto(f"{argilla.url}/dataset/{pushed.dataset_id}/annotation-mode")
        for n in range(2):
            shown = b.wait_for(SHOWN_ID, 60)
            assert shown not in answered and f"Sample: {shown}" in b.text()
            time.sleep(0.5)
            chosen = ["turn_1_accuracy_3", "turn_2_accuracy_5", "safety_safe", "correct_category_nutrition"]
            chosen += ["verdict_approve"] if n == 0 else ["verdict_reject", "reject_reasons_wrong_number"]
            for element in chosen:
                b.evaluate(CHOOSE + f"('{element}')")
            if n == 0:  # correct turn 1 (an earlier turn) by editing its pre-filled text
                b.evaluate("""(() => { const p = document.querySelectorAll('p.content__text')[0]; p.focus();
                  const r = document.createRange(); r.selectNodeContents(p); r.collapse(false);
                  getSelection().removeAllRanges(); getSelection().addRange(r); return true; })()""")
                b.call("Input.insertText", text=" Fixed in the browser.")
            else:
                b.evaluate("""(() => { const p = document.querySelectorAll('p.content__text');
                  const c = p[p.length - 1]; c.focus(); return true; })()""")
                b.call("Input.insertText", text="turn 1 gives the wrong number")
            b.evaluate(BUTTON + "('Submit')")
            answered.append(shown)
            b.wait_for(f"{SHOWN_ID} && {SHOWN_ID} !== '{shown}'", 30)  # the queue moved on
        b.wait_for("/Submitted\\s+2/.test(document.body.innerText)", 30)
        # a reload keeps the UI's ?page=N, an offset into the shrinking queue (stock Argilla): it shows a later record
        # or none, never a submitted one; coming back to the dataset starts at the first record not yet answered
        for reopen in (lambda: b.call("Page.reload"),
                       lambda: b.goto(f"{argilla.url}/dataset/{pushed.dataset_id}/annotation-mode")):
            reopen()
            time.sleep(1)
            b.wait_for(f"{SHOWN_ID} || document.body.innerText.includes('no pending records')", 60)
            b.wait_for("/Submitted\\s+2/.test(document.body.innerText)", 30)
            assert b.evaluate(SHOWN_ID) not in answered and _submitted_shown(b.text()) == 2
        assert b.evaluate(SHOWN_ID) in {s.id for s in samples} - set(answered)
    journal = tmp_path / "journal.jsonl"
    pull(owner, pushed.dataset, journal)
    merged = merge_reviews(version.path, journal, tmp_path / "merged")
    first, second = (merged.decisions[sid] for sid in answered)
    assert first.status == "corrected" and [(c.turn, c.action) for c in first.corrections] == [(1, "applied")]
    row = next(json.loads(x) for x in (tmp_path / "merged" / "samples.jsonl").read_text().splitlines()
               if json.loads(x)["id"] == first.new_id)
    assert row["conversation"]["turns"][1]["content"].endswith("Fixed in the browser.")
    assert second.status == "rejected" and second.feedback[0].tags == ["wrong_number"]
    assert second.feedback[0].comment == "turn 1 gives the wrong number"


def test_arabic_records_read_right_to_left_in_the_ui_and_filter_by_language(argilla: LocalArgilla,
                                                                             owner: ArgillaClient,
                                                                             tmp_path: Path) -> None:
    """Issue #15: Arabic chats laid out right to left in the real annotation UI (headless Chromium, measured and
    screenshotted), English ones as they were, and a ``language`` metadata filter for the experts.

    The check (tests/helpers/rtl.py) fails without the ``dir="rtl"`` wrapper push puts on Arabic chat messages:
    Argilla 2.8 lays plain chat messages out left to right whatever their script (checked once)."""
    import dataclasses
    import time

    from factory.build import build_dataset
    from tests.helpers import rtl
    from tests.test_rtl import _keep

    build_dataset(ROOT / "recipes" / "forma-fitness-ar.yaml", tmp_path / "ar-20", total=20)
    full = load_version(tmp_path / "ar-20")
    arabic = [s for s in full.samples if s.language == "ar"][:2]
    english = [s for s in full.samples if s.language == "en"][:1]
    pushed = push(dataclasses.replace(full, samples=arabic + english), owner,
                  PushOptions(name="arabic-rtl", vectors=False, min_submitted=1))
    expert = create_annotator(owner, "expert_layla", "layla-password-5")
    records = {r["external_id"]: r for r in owner.iter_records(pushed.dataset_id, include=())}
    assert records[english[0].id]["fields"]["conversation"] == english[0].conversation.messages()[1:]
    assert records[arabic[0].id]["fields"]["conversation"][0]["content"].startswith('<div lang="ar" dir="rtl"')
    by_language = {"type": "terms", "scope": {"entity": "metadata", "metadata_property": "language"}}
    found = expert.request("POST", f"/me/datasets/{pushed.dataset_id}/records/search",
                           json={"filters": {"and": [{**by_language, "values": ["ar"]}]}})
    assert found["total"] == 2 and {i["record"]["external_id"] for i in found["items"]} == {s.id for s in arabic}

    with Browser(tmp_path / "chromium-profile") as b:
        _sign_in(b, argilla.url, "expert_layla", "layla-password-5")
        ids = {s.id: s for s in arabic}
        for page in (1, 2, 3):  # the queue's order is Argilla's: find an Arabic record (?page=N, as the UI does)
            b.goto(f"{argilla.url}/dataset/{pushed.dataset_id}/annotation-mode?page={page}")
            b.wait_for(f"document.body.innerText.includes('Sample: s-') && {SHOWN_ID}", 60)
            if (shown := ids.get(b.evaluate(SHOWN_ID))) is not None:
                break
        assert shown is not None
        b.wait_for("document.querySelectorAll('.chat__bubble').length >= 2", 30)
        time.sleep(0.5)
        bubbles = rtl.measure(b, ".chat__bubble")
        corrections = [r for r in rtl.measure(b, "p.content__text") if r["text"]]  # Argilla's own detection
        assert shown.conversation.turns[0].content[:40] in b.text()
        _keep(rtl.screenshot(b, tmp_path / "argilla-arabic-record.png"))
        b.evaluate(BUTTON + "('Filters')")  # the experts' filter menu: Metadata lists the language property
        b.wait_for("document.body.innerText.includes('Metadata')", 15)
        b.evaluate("Array.from(document.querySelectorAll('button, li, a, span'))"
                   ".filter(x => x.innerText && x.innerText.trim() === 'Metadata').pop().click()")
        b.wait_for("document.body.innerText.includes('Language')", 15)
    assert len(bubbles) == len(shown.conversation.turns)
    rtl.check(bubbles)
    assert all(r["expect"] == "rtl" and r["lang"] == "ar" for r in bubbles)
    rtl.check(corrections)
    assert corrections and all(r["expect"] == "rtl" for r in corrections)
