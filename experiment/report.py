"""``comparison.json``, ``comparison.md`` and ``comparison.html`` in the experiment's ``out`` folder.

The JSON holds every figure (rates with intervals, paired tests, arms' identities, loss curves, dataset diffs); the
Markdown is that JSON for people; the HTML is the Markdown (tables, converted here) with the two plots above it, one
self-contained file that needs no network.
"""

from __future__ import annotations

import html
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common.jsonl import atomic_write_text
from experiment import compare, diff, svg
from experiment.arms import read_done
from experiment.spec import BASE_ARM, Experiment

METHOD = ("Rates are pass rates over the cases the arm's runner scored, with 95% Wilson score intervals. A difference "
          "is arm minus reference in points over the cases both scored; the verdict comes from the exact two-sided "
          "McNemar test on the cases that flipped (better or worse at p < {alpha}, otherwise not distinguishable at "
          "this number of cases). Each arm's own eval report holds the per-case answers.")


def _train_report(exp: Experiment, name: str, steps: dict[str, Any]) -> dict[str, Any] | None:
    from train.report import read_report

    path = steps.get("train", {}).get("report")
    if path is None and name != BASE_ARM and exp.arm(name).train_report:
        path = str(exp.resolve(str(exp.arm(name).train_report)))
    return read_report(Path(path)) if path and Path(path).exists() else None


def arm_info(exp: Experiment, name: str, steps: dict[str, Any]) -> dict[str, Any]:
    spec = None if name == BASE_ARM else exp.arm(name)
    report = json.loads(Path(steps["eval"]["report"]).read_text(encoding="utf-8"))
    trained = _train_report(exp, name, steps)
    metrics = (trained or {}).get("metrics", {})
    return {
        "name": name, "role": "base" if spec is None else "control" if name == exp.spec.control else "arm",
        "recipe": spec.recipe if spec else None, "build": spec.build if spec else None,
        "overrides": spec.overrides if spec else {}, "base_model": exp.spec.base_model,
        "dataset": steps.get("build", {}).get("dataset"), "dataset_hash": steps.get("build", {}).get("dataset_hash"),
        "config_hash": (trained or {}).get("config_hash"), "train_steps": metrics.get("steps"),
        "eval_loss_first": metrics.get("eval_loss_first"), "eval_loss_last": metrics.get("eval_loss_last"),
        "train_device": (trained or {}).get("device"), "train_seconds": metrics.get("train_runtime_s"),
        "gguf": steps["export"]["gguf"], "gguf_sha256": steps["export"]["gguf_sha256"],
        "report": steps["eval"]["report"], "gate_passed": report.get("passed"),
        "finished": (read_done(exp.arm_dir(name)) or {}).get("finished"),
        "loss_curves": (trained or {}).get("loss_curves"),
    }


def build_document(exp: Experiment, arms: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Everything the three files show, from the arms' recorded steps and their eval reports."""
    results = {name: compare.read_results(steps["eval"]["report"]) for name, steps in arms.items()}
    infos = [arm_info(exp, name, steps) for name, steps in arms.items()]
    control_ds = arms[exp.spec.control].get("build", {}).get("dataset")
    diffs = {}
    for name, steps in arms.items():
        dataset = steps.get("build", {}).get("dataset")
        if name not in (BASE_ARM, exp.spec.control) and dataset and control_ds:
            diffs[name] = diff.diff_builds(control_ds, dataset)
    return {
        "experiment": exp.spec.name, "description": exp.spec.description, "file": str(exp.path),
        "created": datetime.now(UTC).isoformat(timespec="seconds"), "base": BASE_ARM, "control": exp.spec.control,
        "alpha": exp.spec.alpha, "quant": exp.spec.quant, "suites": str(exp.suites), "policy": str(exp.policy),
        "arms": infos, "groups": compare.compare(results, BASE_ARM, exp.spec.control, exp.spec.alpha),
        "diffs": diffs,
    }


def write_comparison(exp: Experiment, arms: dict[str, dict[str, Any]]) -> dict[str, Path]:
    doc = build_document(exp, arms)
    paths = {k: exp.out / f"comparison.{k}" for k in ("json", "md", "html")}
    atomic_write_text(paths["json"], json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    lines = render_md(doc)
    atomic_write_text(paths["md"], "\n".join(lines) + "\n")
    atomic_write_text(paths["html"], render_html(doc, lines))
    return paths


# --------------------------------------------------------------------------- Markdown

def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.1%}"


def _rate(r: dict[str, Any]) -> str:
    if r.get("rate") is None:
        return "-"
    return f"{_pct(r['rate'])} [{_pct(r['low'])}, {_pct(r['high'])}] ({r['passed']}/{r['n']})"


def _delta(p: dict[str, Any]) -> str:
    if not p["n"]:
        return "no common cases"
    return f"{100 * p['difference']:+.1f} pts, {p['b_only']} up / {p['a_only']} down, p={p['p_value']:.3g}: " \
           f"**{p['verdict']}**"


def _loss(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def _arms_table(doc: dict[str, Any]) -> list[str]:
    rows = []
    for a in doc["arms"]:
        data = a["recipe"] or a["build"] or ("(untrained)" if a["role"] == "base" else "(given GGUF)")
        rows.append([a["name"], a["role"], f"`{data}`", json.dumps(a["overrides"]) if a["overrides"] else "",
                     (a["dataset_hash"] or "-")[:12], a["config_hash"] or "-", a["train_steps"] or "-",
                     f"{_loss(a['eval_loss_first'])} -> {_loss(a['eval_loss_last'])}",
                     f"`{a['gguf_sha256'][:12]}`", "passed" if a["gate_passed"] else "failed"])
    return diff.markdown_table(["arm", "role", "data", "overrides", "dataset", "config", "steps", "eval loss",
                                "GGUF sha256", "gate"], rows)


def render_md(doc: dict[str, Any]) -> list[str]:
    names = [a["name"] for a in doc["arms"]]
    others = [n for n in names if n != doc["base"]]
    challengers = [n for n in others if n != doc["control"]]
    out = [f"# Experiment: {doc['experiment']}", "", doc["description"] or "", "",
           f"File `{doc['file']}`; suites `{doc['suites']}`; policy `{doc['policy']}`; GGUF {doc['quant']}; "
           f"control **{doc['control']}**.", "", "## Arms", "", *_arms_table(doc), "", "## Pass rates", ""]
    out += diff.markdown_table(["suite / category", *names], ([g["label"], *(_rate(g["arms"][n]) for n in names)]
                                                      for g in doc["groups"]))
    out += ["", f"## Against the untrained base ({doc['base']})", ""]
    out += diff.markdown_table(["suite / category", *others], ([g["label"], *(_delta(g["vs_base"][n]) for n in others)]
                                                       for g in doc["groups"]))
    if challengers:
        out += ["", f"## Against the control ({doc['control']})", ""]
        out += diff.markdown_table(["suite / category", *challengers],
                           ([g["label"], *(_delta(g["vs_control"][n]) for n in challengers)] for g in doc["groups"]))
    out += ["", METHOD.format(alpha=doc["alpha"]), ""]
    for name, d in doc["diffs"].items():
        out += [f"## Data: {name} against {doc['control']}", ""]
        out += diff.render_markdown(d, heading="##")[1:]
    return out


# --------------------------------------------------------------------------- HTML

def _inline(text: str) -> str:
    escaped = html.escape(text)
    escaped = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escaped)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", escaped)


def md_to_html(lines: list[str]) -> str:
    """The subset of Markdown this module and :mod:`experiment.diff` write: headings, tables, items, paragraphs."""
    out: list[str] = []
    table: list[list[str]] = []
    for line in [*lines, ""]:
        if line.startswith("|"):
            if not re.fullmatch(r"\|(---\|)+", line):
                table.append([c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]])
            continue
        if table:
            head, *body = table
            out.append("<table><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr>"
                       + "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in body)
                       + "</table>")
            table = []
        heading = re.match(r"(#+) (.*)", line)
        if heading:
            level = min(len(heading.group(1)), 6)
            out.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
        elif line.startswith("- "):
            out.append(f"<ul><li>{_inline(line[2:])}</li></ul>")
        elif line.strip():
            out.append(f"<p>{_inline(line.rstrip())}</p>")
    return "\n".join(out)


STYLE = """body { font: 14px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222;
padding: 0 1rem; } h1 { font-size: 1.6rem; } h2 { font-size: 1.15rem; margin-top: 2rem;
border-bottom: 1px solid #ddd; } table { border-collapse: collapse; margin: .5rem 0; font-size: .9rem; }
td, th { padding: .25rem .6rem; border-bottom: 1px solid #eee; text-align: left; } th { background: #f5f7fa; }
code { font-size: .85rem; } figure { margin: 1rem 0; } strong { font-weight: 600; }"""

SCRIPT = """<script>
 // Marks how many plots laid out with a size, so a headless browser test can check that they render.
 window.addEventListener("load", function () {
   var plots = document.querySelectorAll("svg.plot"), ok = 0;
   plots.forEach(function (p) { var b = p.getBBox(); if (b.width > 0 && b.height > 0) { ok += 1; } });
   document.body.setAttribute("data-plots", String(plots.length));
   document.body.setAttribute("data-plots-rendered", String(ok));
 });
</script>"""


def render_html(doc: dict[str, Any], lines: list[str]) -> str:
    names = [a["name"] for a in doc["arms"]]
    curves = {a["name"]: a["loss_curves"] for a in doc["arms"] if a["loss_curves"]}
    plots = (f'<figure>{svg.rate_plot(doc["groups"], names)}</figure>\n'
             f'<figure>{svg.loss_plot(curves, names)}</figure>')
    body = md_to_html(lines)
    first_section = body.find("<h2>")
    body = body[:first_section] + plots + "\n" + body[first_section:] if first_section >= 0 else body + plots
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>Experiment: {html.escape(doc['experiment'])}</title>\n<style>\n{STYLE}\n</style>\n</head>\n"
            f"<body>\n{body}\n{SCRIPT}\n</body>\n</html>\n")
