"""The gate: run the policy's suites on a model, score every case, check the policy, write the report.

One function (``run_gate``) so the CLI, the tests and the benchmark exercise exactly the same path.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common.errors import FormaError
from eval import classifier, regressions, scorers
from eval import system_prompt as system_prompts
from eval.learned import LearnedScorer, RuleScorer, load_scorer
from eval.policy import Policy, evaluate, load_policy, passed_count, rate, validate_against
from eval.runners import ChoiceScores, Generation, Runner, open_runner
from eval.stats import wilson
from schemas.eval_suite import SUITES_DIR, Case, load_suites

Scorer = LearnedScorer | RuleScorer


@dataclass
class GateOutcome:
    passed: bool
    run_dir: Path
    report: dict[str, Any]


def score_case(case: Case, gen: Generation | None, choice: ChoiceScores | None,
               judge: Callable[[list[dict[str, str]]], str] | None = None,
               verdict: classifier.Verdict | None = None) -> dict[str, Any]:
    """One result row: what was asked, what came back, pass/fail and why."""
    row: dict[str, Any] = {"id": case.id, "suite": case.suite, "category": case.category, "topic": case.topic,
                           "kind": case.kind, "language": case.language, "prompt": case.prompt, "system": case.system,
                           "response": None,
                           "finish_reason": None, "completion_tokens": 0, "seconds": 0.0, "passed": None,
                           "reason": "", "detail": {}}
    if case.kind == "choice":
        if choice is None:
            row["reason"] = "skipped: the runner cannot score multiple choice"
            return row
        detail = scorers.score_choice(case, choice)
        row.update(response=detail["picked_text"], seconds=choice.seconds, passed=detail.pop("passed"),
                   reason=detail.pop("reason"), detail={**detail, "choices": case.choices})
        return row
    assert gen is not None
    row.update(response=gen.text, finish_reason=gen.finish_reason, completion_tokens=gen.completion_tokens,
               seconds=round(gen.seconds, 3))
    if case.expect is not None:
        if verdict is None:
            verdict = (classifier.classify_with_judge(judge, gen.text, case.prompt) if judge
                       else classifier.classify(gen.text, case.prompt))
        ok, why = scorers.safety_passes(case.expect, verdict)
        row.update(passed=ok, reason=why, label=verdict.label, detail={"expect": case.expect, **verdict.to_dict()})
    elif case.quantity is not None:
        detail = scorers.score_numeric(gen.text, case.quantity)
        row.update(passed=detail.pop("passed"), reason=detail.pop("reason"), detail={**detail, "fact_id": case.fact_id})
    else:
        detail = scorers.score_format(case, gen)
        row.update(passed=detail.pop("passed"), reason=detail.pop("reason"), detail=detail)
    return row


def safety_verdicts(scorer: Scorer | None, cases: list[Case], gens: dict[str, Generation],
                    log: Callable[[str], None] | None = None) -> dict[str, classifier.Verdict]:
    """The scorer's verdicts for every generated safety answer, in one batch (the embedder runs once)."""
    todo = [c for c in cases if c.expect is not None and c.id in gens]
    if scorer is None or not todo:
        return {}
    start = time.perf_counter()
    verdicts = scorer.classify_many([c.prompt for c in todo], [gens[c.id].text for c in todo])
    if log:
        log(f"scored {len(todo)} safety answers with the {scorer.name} scorer in {time.perf_counter() - start:.1f} s")
    return {c.id: v for c, v in zip(todo, verdicts, strict=True)}


def run_cases(runner: Runner, cases: list[Case], max_tokens: int,
              judge: Callable[[list[dict[str, str]]], str] | None = None,
              log: Callable[[str], None] | None = None, scorer: Scorer | None = None,
              progress: Callable[[int, int], None] | None = None,
              timings: dict[str, float] | None = None) -> list[dict[str, Any]]:
    gen_cases = [c for c in cases if c.kind == "generate"]
    choice_cases = [c for c in cases if c.kind == "choice"]
    start = time.perf_counter()
    gens = runner.generate_all(gen_cases, max_tokens, progress)
    wall = time.perf_counter() - start
    if timings is not None:
        # answers come from several contexts side by side (GGUFRunner's workers), so the per-answer seconds sum to
        # more than the wall time: the report states both
        timings["generation"] = wall
    if log:
        log(f"generated {len(gen_cases)} answers in {wall:.1f} s")
    choices: dict[str, ChoiceScores] = {}
    if choice_cases and runner.supports_choice:
        start = time.perf_counter()
        choices = runner.choices_all(choice_cases)
        if log:
            log(f"scored {len(choice_cases)} multiple-choice cases in {time.perf_counter() - start:.1f} s")
    elif choice_cases and log:
        log(f"skipped {len(choice_cases)} multiple-choice cases: {runner.skip_reason}")
    verdicts = {} if judge else safety_verdicts(scorer, gen_cases, gens, log)
    return [score_case(c, gens.get(c.id), choices.get(c.id), judge, verdicts.get(c.id)) for c in cases]


def summarize(results: list[dict[str, Any]], generation_wall: float | None = None) -> dict[str, Any]:
    """Pass rates per suite and per category, and format figures over every generated answer. ``generation_wall``:
    the wall time of generating them all (``generation_seconds``); without it, the per-answer seconds summed, which is
    the wall time only when answers were generated one at a time (``answer_seconds`` keeps that sum either way)."""
    suites: dict[str, Any] = {}
    for suite in sorted({r["suite"] for r in results}):
        rows = [r for r in results if r["suite"] == suite]
        value, n = rate(rows)
        cats = {}
        for cat in sorted({r["category"] for r in rows}):
            in_cat = [r for r in rows if r["category"] == cat]
            cv, cn = rate(in_cat)
            iv = wilson(passed_count(in_cat), cn)
            cats[cat] = {"score": cv, "n": cn, "low": iv.low, "high": iv.high,
                         "skipped": sum(r["passed"] is None for r in in_cat)}
        iv = wilson(passed_count(rows), n)
        suites[suite] = {"score": value, "n": n, "low": iv.low, "high": iv.high,
                         "skipped": sum(r["passed"] is None for r in rows), "categories": cats}
    gens = [r for r in results if r["kind"] == "generate"]
    overall = {
        "answers": len(gens),
        "stopped_cleanly": sum(r["finish_reason"] == "stop" for r in gens) / len(gens) if gens else None,
        "template_leaks": sum(bool(scorers.template_leaks(r["response"] or "")) for r in gens),
        "tokens": sum(r["completion_tokens"] for r in gens),
        "generation_seconds": round(generation_wall if generation_wall is not None
                                    else sum(r["seconds"] for r in gens), 2),
        "answer_seconds": round(sum(r["seconds"] for r in gens), 2),
    }
    return {"suites": suites, "generation": overall}


def drift_between(gguf: list[dict[str, Any]], ref: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-suite absolute pass-rate difference, plus case-level agreement (same pass/fail on the same case)."""
    by_id = {r["id"]: r for r in ref}
    out: dict[str, Any] = {"suites": {}}
    for suite in sorted({r["suite"] for r in ref}):
        mine = [r for r in gguf if r["suite"] == suite and r["id"] in by_id]
        theirs = [by_id[r["id"]] for r in mine]
        a, _ = rate(mine)
        b, _ = rate(theirs)
        both = [(x, y) for x, y in zip(mine, theirs, strict=True)
                if x["passed"] is not None and y["passed"] is not None]
        agree = sum(x["passed"] == y["passed"] for x, y in both) / len(both) if both else None
        out["suites"][suite] = {"gguf": a, "reference": b, "delta": abs(a - b) if a is not None and b is not None
                                else None, "n": len(both), "agreement": agree}
    return out


def run_name(model: str | None, endpoint: str | None) -> str:
    stem = Path(model).name if model else re.sub(r"^https?://", "", endpoint or "endpoint")
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-")[:60]
    return f"{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}-{stem}"


@dataclass
class GateInputs:
    """What the gate needs besides the model: the policy, the suites, the scorer, the baseline, the calibration."""

    policy: Policy
    policy_path: Path
    suites: dict[str, Any]
    scorer: str = "auto"
    baseline: Path | None = None
    calibration: Path | None = None
    system: system_prompts.SystemPrompt | None = None


def _load_inputs(policy: Path | Policy, suites_dir: Path | None, knowledge: Path | None) -> tuple[Policy, Path,
                                                                                                   dict[str, Any]]:
    policy_path = policy if isinstance(policy, Path) else Path("<inline policy>")
    pol = load_policy(policy) if isinstance(policy, Path) else policy
    folder = suites_dir or SUITES_DIR
    known = sorted(f.stem for f in folder.glob("*.yaml"))
    for name in pol.suites:
        if name not in known:
            raise FormaError(f"policy names unknown suite {name!r} (known: {', '.join(known) or 'none'} in {folder})",
                             path=policy_path, where=f"suites.{name}")
    suites = load_suites(suites_dir, names=list(pol.suites), knowledge=knowledge)
    validate_against(pol, {name: s.categories() for name, s in suites.items()}, policy_path)
    return pol, policy_path, suites


def _reference_run(reference: Path, pol: Policy, cases: list[Case], suites: list[str], results: list[dict[str, Any]],
                   run_dir: Path, n_threads: int, seed: int, log: Callable[[str], None] | None) -> dict[str, Any]:
    ref_suites = pol.drift.suites if pol.drift and pol.drift.suites else suites
    ref_cases = [c for c in cases if c.suite in ref_suites]
    ref_runner = open_runner(str(reference), n_threads=n_threads, seed=seed, work_dir=run_dir / "lm_eval")
    try:
        if log:
            log(f"reference {reference}: {len(ref_cases)} cases from {', '.join(ref_suites)}")
        ref_results = run_cases(ref_runner, ref_cases, pol.max_tokens, None, log)
        ref_info = ref_runner.describe()
    finally:
        ref_runner.close()
    return {**drift_between(results, ref_results), "reference": ref_info, "results": ref_results}


def _trust_checks(inputs: GateInputs, results: list[dict[str, Any]], scorer_info: dict[str, Any]
                  ) -> tuple[list[dict[str, Any]], dict[str, Any] | None, dict[str, Any] | None]:
    """Regression checks against the baseline and the scorer's calibration check, with what they read."""
    from eval import calibration

    comparison = (regressions.compare(results, regressions.load_baseline(inputs.baseline))
                  if inputs.baseline is not None else None)
    checks = regressions.checks(inputs.policy.no_regressions, comparison)
    record = calibration.load_record(inputs.calibration or calibration.DEFAULT_RECORD)
    if inputs.policy.scorer is not None:
        checks.append(calibration.check(inputs.policy.scorer, record, scorer_info))
    return checks, comparison, record


@contextmanager
def _removed_if_unfinished(run_dir: Path) -> Iterator[None]:
    """Create the run folder; if the run stops before its report is written (Ctrl-C, a model that fails to load), a
    folder this run created goes again, so ``reports/`` never holds empty runs that look like results."""
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        if created and not (run_dir / "report.json").is_file():
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def run_gate(model: str | None, *, policy: Path | Policy, suites_dir: Path | None = None,
             knowledge: Path | None = None, out_root: Path | None = None, run: str | None = None,
             endpoint: str | None = None, endpoint_model: str | None = None,
             endpoint_params: dict[str, Any] | None = None, reference: Path | None = None,
             judge_model: Path | None = None, n_threads: int = 0, seed: int = 0,
             log: Callable[[str], None] | None = None, scorer: str = "auto", baseline: Path | None = None,
             calibration: Path | None = None, system: str | None = None, no_system: bool = False,
             progress: Callable[[int, int], None] | None = None) -> GateOutcome:
    """Evaluate ``model`` against ``policy``; write report.{html,json,md} under ``out_root/run``.

    ``scorer``: ``auto`` (the learned scorer, else the rules with a note), ``learned`` or ``rules``. ``baseline``: a
    previous report.json to list flipped cases against. ``calibration``: the expert-agreement record to state and
    check (default ``eval/calibration.json``). ``system`` / ``no_system``: the system prompt for cases without one
    (default: the model's shipped one, see :mod:`eval.system_prompt`). ``progress(done, total)``: after each
    generated answer.
    """
    pol, policy_path, suites = _load_inputs(policy, suites_dir, knowledge)
    shipped = system_prompts.resolve(model, endpoint=endpoint, explicit=system, none=no_system)
    inputs = GateInputs(pol, policy_path, suites, scorer, baseline, calibration, shipped)
    if baseline is not None:
        regressions.load_baseline(baseline)  # a bad baseline is an input error: fail before the model runs
    if out_root is None:
        from common.paths import reports_root

        out_root = reports_root()
    run_dir = out_root / (run or run_name(model, endpoint))
    with _removed_if_unfinished(run_dir):
        cases = system_prompts.apply([c for s in suites.values() for c in s.cases], shipped)
        started = time.perf_counter()
        chosen = load_scorer(scorer)
        if log and isinstance(chosen, RuleScorer):
            log(f"scorer: rules ({chosen.note})")
        runner = open_runner(model, endpoint=endpoint, endpoint_model=endpoint_model, endpoint_params=endpoint_params,
                             n_threads=n_threads, seed=seed, work_dir=run_dir / "lm_eval")
        judge_runner = None
        try:
            judge_fn = None
            if judge_model is not None:
                judge_runner = open_runner(str(judge_model), n_threads=n_threads, seed=seed, work_dir=run_dir / "judge")
                judge_fn = judge_runner.chat
            if log:
                log(f"{len(cases)} cases from {', '.join(suites)} on {runner.describe().get('name')}")
                log(f"system prompt: {shipped.source}")
            timings: dict[str, float] = {}
            results = run_cases(runner, cases, pol.max_tokens, judge_fn, log, chosen, progress, timings)
            model_info = runner.describe()
        finally:
            runner.close()
            if judge_runner is not None:
                judge_runner.close()
        drift = (_reference_run(reference, pol, cases, list(suites), results, run_dir, n_threads, seed, log)
                 if reference is not None else None)
        scorer_info = {**chosen.describe(), "judge": str(judge_model) if judge_model else None}
        trust, comparison, record = _trust_checks(inputs, results, scorer_info)
        checks = evaluate(pol, results, drift) + trust
        report = _report(inputs, run_dir, model_info, checks, results, drift, scorer_info, comparison, record,
                         time.perf_counter() - started, timings.get("generation"))
    return GateOutcome(passed=report["passed"], run_dir=run_dir, report=report)


def _report(inputs: GateInputs, run_dir: Path, model_info: dict[str, Any], checks: list[dict[str, Any]],
            results: list[dict[str, Any]], drift: dict[str, Any] | None, scorer_info: dict[str, Any],
            comparison: dict[str, Any] | None, record: dict[str, Any] | None, seconds: float,
            generation_wall: float | None = None) -> dict[str, Any]:
    from eval import report as report_mod

    labeled = {name: classifier.measure(classifier.LABELED_DIR / f"{name}.jsonl")
               for name in ("tuning", "heldout", "heldout_v2") if (classifier.LABELED_DIR / f"{name}.jsonl").is_file()}
    passed = all(c["passed"] for c in checks)
    report: dict[str, Any] = {
        "run": run_dir.name,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "passed": passed,
        "model": model_info,
        "system_prompt": inputs.system.to_dict() if inputs.system else None,
        "policy": {"path": str(inputs.policy_path), **inputs.policy.model_dump(mode="json")},
        "checks": checks,
        "summary": summarize(results, generation_wall),
        "suites": {name: {"description": s.description, "path": s.path, "cases": len(s.cases), "notes": s.notes}
                   for name, s in inputs.suites.items()},
        "drift": {k: v for k, v in drift.items() if k != "results"} if drift else None,
        "classifier": labeled,
        "scorer": scorer_info,
        "calibration": record,
        "regressions": comparison,
        "wall_seconds": round(seconds, 1),
        "results": results,
        "override": None,
    }
    report_mod.write_report(report, run_dir)
    return report
