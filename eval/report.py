"""Write the gate's report three ways: report.json (everything), report.md (for a PR or a terminal), and
report.html (self-contained: inline CSS and inline SVG plots, no network, for the release manager).

Rendering works from the JSON alone, so ``forma release --override`` can re-render the report with the override
recorded without re-running the model.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

TEMPLATE_DIR = Path(__file__).parent / "templates"


def _svg(fig: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    return text[text.index("<svg"):]


def _bars(labels: list[str], values: list[float], thresholds: list[float | None], title: str,
          xlabel: str = "pass rate (black tick: policy threshold; grey: not gated)") -> str:
    """Horizontal bars of pass rates with the policy's threshold as a tick on each bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.fonttype"] = "none"  # keep text as text: searchable, and checkable in a headless browser
    fig, ax = plt.subplots(figsize=(7.5, 0.42 * len(labels) + 1.0))
    colors = ["#78909c" if t is None else "#2e7d32" if v >= t else "#c62828"
              for v, t in zip(values, thresholds, strict=True)]
    y = list(range(len(labels)))
    ax.barh(y, values, color=colors, height=0.6)
    for yi, t in zip(y, thresholds, strict=True):
        if t is not None:
            ax.plot([t, t], [yi - 0.4, yi + 0.4], color="#111", linewidth=2)
    for yi, v in zip(y, values, strict=True):
        ax.text(min(v + 0.01, 0.93), yi, f"{v:.0%}", va="center", fontsize=8)
    ax.set_yticks(y, labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    return _svg(fig)


def _plots(report: dict[str, Any]) -> dict[str, str]:
    plots: dict[str, str] = {}
    thresholds = {c["name"]: c["threshold"] for c in report["checks"]}
    labels, values, ts = [], [], []
    for suite, s in report["summary"]["suites"].items():
        for cat, c in s["categories"].items():
            if c["score"] is not None:
                labels.append(f"{suite}/{cat}")
                values.append(c["score"])
                ts.append(thresholds.get(f"{suite}/{cat}"))
    if labels:
        plots["categories"] = _bars(labels, values, ts, "Pass rate per category")
    suites = [(k, v["score"]) for k, v in report["summary"]["suites"].items() if v["score"] is not None]
    if suites:
        plots["suites"] = _bars([k for k, _ in suites], [v for _, v in suites], [thresholds.get(k) for k, _ in suites],
                                "Pass rate per suite")
    held = report.get("classifier", {}).get("heldout")
    if held:
        m = held["metrics"]
        lab = [f"{k} {metric}" for k in ("comply", "refuse", "escalate") for metric in ("precision", "recall")]
        val = [m[k][metric] for k in ("comply", "refuse", "escalate") for metric in ("precision", "recall")]
        plots["classifier"] = _bars(lab, val, [None] * len(val), "Safety classifier on the held-out labeled set",
                                    xlabel=f"precision / recall over {int(m['_all']['n'])} labeled pairs")
    return plots


def check_value(check: dict[str, Any], key: str = "value") -> str:
    """A check's value or threshold as its unit reads: a pass rate in %, a kappa as a number, flips as a count."""
    v = check.get(key)
    unit = check.get("unit")
    if v is None:
        return "n/a"
    if unit == "kappa":
        return f"{v:.3f}"
    if unit == "cases":
        return f"{int(v)}"
    return f"{v:.1%}"


def interval(row: dict[str, Any]) -> str:
    """``[low, high]`` of a rate's 95% Wilson interval (or of kappa's bootstrap interval), '' when absent."""
    if row.get("low") is None or row.get("high") is None:
        return ""
    if row.get("unit") == "kappa":
        return f"[{row['low']:.2f}, {row['high']:.2f}]"
    return f"[{row['low']:.1%}, {row['high']:.1%}]"


def render_html(report: dict[str, Any]) -> str:
    from jinja2 import Environment, FileSystemLoader, select_autoescape
    from markupsafe import Markup

    from common.textdir import USER_TEXT_CSS, dir_attrs

    env = Environment(loader=FileSystemLoader(str(TEMPLATE_DIR)), autoescape=select_autoescape(["html", "j2"]))
    env.filters["pct"] = lambda v: "n/a" if v is None else f"{v:.1%}"
    env.filters["checkval"] = check_value
    env.filters["interval"] = interval
    env.filters["dir"] = lambda language: Markup(dir_attrs(language))
    failures = [r for r in report["results"] if r["passed"] is False]
    skipped = [r for r in report["results"] if r["passed"] is None]
    return env.get_template("report.html.j2").render(r=report, plots=_plots(report), failures=failures,
                                                     skipped=skipped, scorer_line=scorer_line(report),
                                                     system_line=system_line(report),
                                                     languages=by_language(report["results"]),
                                                     user_text_css=Markup(USER_TEXT_CSS))


def by_language(results: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Pass rate per case language (rows from before results recorded a language count as English)."""
    out: dict[str, dict[str, Any]] = {}
    for row in results:
        lang = row.get("language") or "en"
        cell = out.setdefault(lang, {"cases": 0, "scored": 0, "passed": 0, "score": None})
        cell["cases"] += 1
        if row["passed"] is not None:
            cell["scored"] += 1
            cell["passed"] += bool(row["passed"])
    for cell in out.values():
        cell["score"] = cell["passed"] / cell["scored"] if cell["scored"] else None
    return dict(sorted(out.items()))


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1%}"


def render_md(report: dict[str, Any]) -> str:
    lines = [f"# Eval report: {report['run']}", "",
             f"**Gate: {'PASSED' if report['passed'] else 'FAILED'}** (policy `{report['policy']['name']}`, "
             f"{report['policy']['path']})", "",
             f"Model: `{report['model'].get('name')}` ({report['model'].get('kind')})"
             + (f", sha256 `{report['model']['sha256'][:16]}…`" if report["model"].get("sha256") else ""),
             system_line(report),
             f"Wall time: {report['wall_seconds']} s", ""]
    if report.get("override"):
        o = report["override"]
        lines += [f"> **Released with override** by `{o.get('by')}` at {o.get('at')}: {o.get('reason')}", ""]
    lines += ["## Checks", "", "| check | value | 95% interval | threshold | cases | result |",
              "|---|---|---|---|---|---|"]
    for c in report["checks"]:
        op = c.get("op", ">=")
        lines.append(f"| {c['name']} | {check_value(c)} | {interval(c)} | {op} {check_value(c, 'threshold')} | "
                     f"{c['n']} | {'pass' if c['passed'] else 'FAIL: ' + c['reason']} |")
    lines += ["", "## Per category", "", "| suite | category | pass rate | 95% interval | cases | skipped |",
              "|---|---|---|---|---|---|"]
    for suite, s in report["summary"]["suites"].items():
        lines.append(f"| {suite} | (all) | {_pct(s['score'])} | {interval(s)} | {s['n']} | {s['skipped']} |")
        for cat, c in s["categories"].items():
            lines.append(f"| {suite} | {cat} | {_pct(c['score'])} | {interval(c)} | {c['n']} | {c['skipped']} |")
    g = report["summary"]["generation"]
    lines += ["", f"Answers: {g['answers']}, stopped cleanly: {_pct(g['stopped_cleanly'])}, "
              f"with template text: {g['template_leaks']}, tokens: {g['tokens']} in {g['generation_seconds']} s"
              + (f" ({g['answer_seconds']} s summed over answers generated side by side)"
                 if g.get("answer_seconds", g["generation_seconds"]) != g["generation_seconds"] else ""), ""]
    if report.get("drift"):
        lines += ["## Drift from the 16-bit reference", "", "| suite | GGUF | reference | delta | agreement | cases |",
                  "|---|---|---|---|---|---|"]
        for suite, d in report["drift"]["suites"].items():
            lines.append(f"| {suite} | {_pct(d['gguf'])} | {_pct(d['reference'])} | {_pct(d['delta'])} | "
                         f"{_pct(d['agreement'])} | {d['n']} |")
        lines.append("")
    if report.get("classifier"):
        lines += ["## Safety classifier (rules) on labeled pairs", "",
                  "| set | n | accuracy | comply P/R | refuse P/R | escalate P/R |", "|---|---|---|---|---|---|"]
        for name, m in report["classifier"].items():
            mm = m["metrics"]
            cells = " | ".join(f"{mm[k]['precision']:.2f} / {mm[k]['recall']:.2f}" for k in ("comply", "refuse",
                                                                                            "escalate"))
            lines.append(f"| {name} | {int(mm['_all']['n'])} | {mm['_all']['accuracy']:.2f} | {cells} |")
        lines.append("")
    lines += _md_scorer(report) + _md_regressions(report)
    lines += ["## Per language", "", "| language | cases | scored | passed | pass rate |", "|---|---|---|---|---|"]
    lines += [f"| {lang} | {c['cases']} | {c['scored']} | {c['passed']} | {_pct(c['score'])} |"
              for lang, c in by_language(report["results"]).items()]
    failures = [r for r in report["results"] if r["passed"] is False]
    lines += ["", f"## Failures ({len(failures)})", ""]
    for r in failures:
        lines += [f"### {r['suite']}/{r['category']}: `{r['id']}`", f"*{r['reason']}*", "", f"**User:** {r['prompt']}",
                  "", "**Model:**", "", "```text", (r["response"] or "").strip(), "```", ""]
    return "\n".join(lines)


def system_line(report: dict[str, Any]) -> str:
    """Which system prompt the cases ran under: a gate run under another prompt measures another product."""
    sp = report.get("system_prompt")
    if not sp:
        return "System prompt: not recorded (a report from before the gate recorded it)."
    shown = f"\"{sp['text'][:120]}{'…' if len(sp['text']) > 120 else ''}\"" if sp.get("text") else "none"
    return f"System prompt: {shown} ({sp['source']})."


def scorer_line(report: dict[str, Any]) -> str:
    """One sentence: which scorer labelled the safety answers, and how far experts have confirmed it."""
    sc = report.get("scorer") or {"kind": "rules"}
    ce = sc.get("cross_encoder")
    what = (f"learned head on {sc.get('embedding_model')}"
            + (" and a fine-tuned cross-encoder (mean of the two)" if ce else "")
            + f" (weights {str(sc.get('weights_sha256'))[:12]}, fitted {(ce or sc).get('fitted')}) with rule overrides"
            if sc.get("kind") == "learned" else f"transparent rules{': ' + sc['note'] if sc.get('note') else ''}")
    held = (sc.get("heldout") or {}).get("heldout_v2")
    if held:
        what += (f"; on the independent held-out set: macro-F1 {held['macro_f1']:.3f}, refuse recall "
                 f"{held['labels']['refuse']['recall']:.3f} (n={held['n']})")
    cal = (report.get("calibration") or {}).get("safety")
    if not cal:
        return f"Safety scorer: {what}. Not calibrated against expert labels."
    rec = report["calibration"]
    iv = f" (95% CI {cal['kappa_low']:.2f} to {cal['kappa_high']:.2f})" if cal.get("kappa_low") is not None else ""
    kappa = "n/a" if cal.get("kappa") is None else f"{cal['kappa']:.3f}"
    return (f"Safety scorer: {what}. Agreement with expert labels: Cohen's kappa {kappa}{iv} on {cal['n']} "
            f"comply/refuse/escalate labels (majority of {len(cal.get('annotators', []))} annotators) from run "
            f"{rec.get('run')}, measured {rec.get('created')}.")


def _md_scorer(report: dict[str, Any]) -> list[str]:
    return ["## Safety scorer", "", scorer_line(report), ""]


def _md_regressions(report: dict[str, Any]) -> list[str]:
    reg = report.get("regressions")
    if not reg:
        return ["## Regressions", "", "No baseline given (--baseline PREVIOUS_REPORT.json).", ""]
    b = reg["baseline"]
    lines = ["## Regressions against the baseline", "", f"Baseline: run `{b['run']}` ({b['model']}, {b['created']})",
             "", "| category | paired | pass -> fail | fail -> pass | McNemar p | verdict |",
             "|---|---|---|---|---|---|"]
    for cat, c in reg["categories"].items():
        lines.append(f"| {cat} | {c['paired']} | {', '.join(c['pass_to_fail']) or '-'} | "
                     f"{', '.join(c['fail_to_pass']) or '-'} | {c['p_value']:.3g} | {c['verdict']} |")
    return [*lines, ""]


def write_report(report: dict[str, Any], run_dir: Path) -> dict[str, Path]:
    """Write report.json, report.md and report.html into ``run_dir``; return their paths."""
    run_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": run_dir / "report.json", "md": run_dir / "report.md", "html": run_dir / "report.html"}
    paths["json"].write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    paths["md"].write_text(render_md(report), encoding="utf-8")
    paths["html"].write_text(render_html(report), encoding="utf-8")
    return paths
