"""Review logic that needs no server: decisions, the journal's crash safety, agreement, sampling, schema checks."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from common.errors import FormaError
from review.agreement import agreement
from review.fixtures import make_samples, write_version
from review.journal import JournalEntry, append_journal, latest_responses, read_journal
from review.merge import decide, merge_reviews
from review.push import stratified_sample
from review.settings import check_schema, expected_signature

OK = {"accuracy": 5, "safety": "safe", "correct_category": "nutrition", "verdict": "approve"}


def entry(sample_id: str, user: str, values: dict[str, Any], *, status: str = "submitted",
          updated_at: str = "2026-01-01T00:00:00") -> JournalEntry:
    return JournalEntry(sample_id=sample_id, user=user, user_id=f"id-{user}", status=status, values=values,
                        updated_at=updated_at, dataset="d", record_id=f"r-{sample_id}", record_status="completed",
                        min_submitted=2, fetched_at="2026-01-02T00:00:00")


def test_majority_of_three_rejects_and_flags_the_split() -> None:
    sample = make_samples(1)[0]
    votes = [entry(sample.id, u, dict(OK, verdict=v)) for u, v in (("a", "reject"), ("b", "reject"), ("c", "approve"))]
    decision, kept = decide(sample, votes, 2)
    assert decision.status == "rejected" and kept is None and "verdict_split" in decision.flags


def test_tie_is_a_disagreement_and_too_few_is_unreviewed() -> None:
    sample = make_samples(1)[0]
    tie = [entry(sample.id, "a", OK), entry(sample.id, "b", dict(OK, verdict="reject"))]
    assert decide(sample, tie, 2)[0].status == "disagreement"
    decision, kept = decide(sample, tie[:1], 2)
    assert decision.status == "unreviewed" and kept is not None and kept.lineage.review == {
        "status": "unreviewed", "submitted": 1}


def test_approved_but_unsafe_is_held_out() -> None:
    sample = make_samples(1)[0]
    votes = [entry(sample.id, u, dict(OK, safety="unsafe")) for u in ("a", "b")]
    decision, kept = decide(sample, votes, 2)
    assert decision.status == "disagreement" and decision.reasons == ["approved but judged unsafe"] and kept is None


def test_latest_response_per_user_wins() -> None:
    old = entry("s1", "a", dict(OK, verdict="reject"), updated_at="2026-01-01T00:00:00")
    new = entry("s1", "a", OK, updated_at="2026-01-03T00:00:00")
    assert latest_responses([new, old])["s1"]["id-a"].values["verdict"] == "approve"


def test_journal_skips_known_entries_and_survives_a_torn_line(tmp_path: Path) -> None:
    journal = tmp_path / "journal.jsonl"
    first = [entry("s1", "a", OK), entry("s1", "b", OK)]
    assert len(append_journal(journal, first)) == 2
    assert append_journal(journal, first) == []
    with journal.open("a") as fh:
        fh.write('{"sample_id": "s2", "user": "a", "us')  # a writer killed mid-line
    assert len(read_journal(journal)) == 2
    assert len(append_journal(journal, [entry("s2", "a", OK)])) == 1
    assert [e.sample_id for e in read_journal(journal)] == ["s1", "s1", "s2"]
    with journal.open("a") as fh:
        fh.write("not json\n" + json.dumps(first[0].model_dump()) + "\n")
    with pytest.raises(FormaError, match=r"line 4"):
        read_journal(journal)


def test_merge_refuses_foreign_journals_and_its_own_parent(tmp_path: Path) -> None:
    version = write_version(tmp_path / "v", make_samples(6))
    journal = tmp_path / "j.jsonl"
    append_journal(journal, [entry("s-not-in-this-version", "a", OK)])
    with pytest.raises(FormaError, match=r"not in this dataset version"):
        merge_reviews(version, journal, tmp_path / "out")
    journal.write_text("")
    with pytest.raises(FormaError, match=r"new folder"):
        merge_reviews(version, journal, version)
    with pytest.raises(FormaError, match=r"no journal"):
        merge_reviews(version, tmp_path / "missing.jsonl", tmp_path / "out")
    result = merge_reviews(version, journal, tmp_path / "out", min_submitted=1)
    assert result.counts == {"unreviewed": 6} and result.kept == 6
    assert merge_reviews(version, journal, tmp_path / "out2", approved_only=True).kept == 0


def test_agreement_perfect_and_chance() -> None:
    same = {f"s{i}": {u: entry(f"s{i}", u, dict(OK, verdict="approve" if i % 2 else "reject",
                                                     accuracy=1 + i % 5)) for u in ("a", "b")} for i in range(10)}
    figures = agreement(same)
    assert figures["verdict"].cohen_kappa_mean == 1.0 and figures["verdict"].krippendorff_alpha == 1.0
    assert figures["accuracy"].percent_agreement == 1.0
    assert figures["safety"].krippendorff_alpha is None  # one value only: undefined, not 1
    assert figures["corrected_answer"].percent_agreement == 1.0
    opposite = {f"s{i}": {"a": entry(f"s{i}", "a", dict(OK, verdict="approve" if i % 2 else "reject")),
                          "b": entry(f"s{i}", "b", dict(OK, verdict="reject" if i % 2 else "approve"))}
                for i in range(10)}
    assert agreement(opposite)["verdict"].cohen_kappa_mean == -1.0


def test_stratified_sample_keeps_category_shares_and_is_reproducible() -> None:
    samples = make_samples(600)
    picked = stratified_sample(samples, 60, seed=3)
    assert len(picked) == 60 and set(Counter(s.category for s in picked).values()) == {10}
    assert [s.id for s in picked] == [s.id for s in stratified_sample(samples, 60, seed=3)]
    assert [s.id for s in picked] != [s.id for s in stratified_sample(samples, 60, seed=4)]


def test_schema_check_names_each_difference() -> None:
    found = expected_signature()
    check_schema("d", found)
    found["questions"]["verdict"] = "label_selection:yes,no"
    del found["metadata"]["persona"]
    with pytest.raises(FormaError,
                       match=r"question 'verdict' is 'label_selection:yes,no'.*metadata 'persona' is missing"):
        check_schema("d", found)


def _turns(sample_id: str, texts: list[str], **values: Any) -> dict[str, Any]:
    """A response as the UI sends it: every turn's text (pre-filled or edited) plus the answers."""
    out: dict[str, Any] = {f"turn_{k}_text": t for k, t in enumerate(texts, start=1)}
    out.update(turn_1_accuracy=5, safety="safe", correct_category="nutrition", verdict="approve")
    out.update(values)
    return out


def test_per_turn_corrections_are_applied_or_kept_never_dropped() -> None:
    sample = next(s for s in make_samples(30) if s.conversation.user_turns == 3)
    texts = [t.content for t in sample.conversation.turns if t.role.value == "assistant"]
    fixed = texts[0].replace("[#", "[fixed #")
    # both approve; one fixes turn 1 (an earlier turn), the other leaves the pre-filled texts alone
    votes = [entry(sample.id, "a", _turns(sample.id, [fixed, *texts[1:]])),
             entry(sample.id, "b", _turns(sample.id, texts))]
    decision, kept = decide(sample, votes, 2)
    assert decision.status == "corrected" and kept is not None
    assert kept.conversation.turns[1].content == fixed and kept.conversation.turns[3:] == sample.conversation.turns[3:]
    assert [(c.user, c.turn, c.action) for c in decision.corrections] == [("a", 1, "applied")]
    assert kept.lineage.review is not None and kept.lineage.review["original_turns"] == {"1": texts[0]}
    # a correction typed with Reject: the sample leaves, the correction is kept and says so
    reject = {"verdict": "reject", "reject_reasons": ["wrong_number"], "comment": "turn 2 says 20 per day"}
    votes = [entry(sample.id, u, _turns(sample.id, [texts[0], texts[1] + " per week", texts[2]], **reject))
             for u in ("a", "b")]
    decision, kept = decide(sample, votes, 2)
    assert decision.status == "rejected" and kept is None
    assert [(c.turn, c.action) for c in decision.corrections] == [(2, "kept_sample_rejected")] * 2
    assert [f.tags for f in decision.feedback] == [["wrong_number"]] * 2
    assert "reject_without_reason" not in decision.flags
    # approved by the majority: the rejecting reviewer's correction is listed, not applied
    votes = [entry(sample.id, "a", _turns(sample.id, texts)), entry(sample.id, "b", _turns(sample.id, texts)),
             entry(sample.id, "c", _turns(sample.id, [texts[0], "Other text", texts[2]], verdict="reject"))]
    decision, kept = decide(sample, votes, 2)
    assert decision.status == "approved" and "reject_without_reason" in decision.flags
    assert [(c.user, c.action) for c in decision.corrections] == [("c", "not_applied_reviewer_rejected")]


def test_different_corrections_of_one_turn_are_held_and_a_missing_turn_is_reported() -> None:
    sample = next(s for s in make_samples(30) if s.conversation.user_turns == 2)
    texts = [t.content for t in sample.conversation.turns if t.role.value == "assistant"]
    votes = [entry(sample.id, "a", _turns(sample.id, ["A", texts[1]])),
             entry(sample.id, "b", _turns(sample.id, ["B", texts[1]]))]
    decision, _ = decide(sample, votes, 2)
    assert decision.status == "disagreement" and decision.reasons == ["different corrections on turn 1"]
    assert {c.action for c in decision.corrections} == {"held_for_adjudication"}
    votes = [entry(sample.id, u, _turns(sample.id, [*texts, "a third turn"])) for u in ("a", "b")]
    decision, _ = decide(sample, votes, 2)
    assert decision.status == "approved"
    assert {(c.turn, c.action) for c in decision.corrections} == {(3, "not_applied_no_such_turn")}
