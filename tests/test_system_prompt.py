"""The gate runs cases under the system prompt the model ships with (the Modelfile's SYSTEM), as Ollama serves it."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.errors import FormaError
from common.model_paths import smollm2_gguf
from eval import system_prompt
from eval.gate import run_gate
from eval.policy import Policy
from schemas.eval_suite import Case

SHIPPED = "You are Forma AI, a fitness coach. Refer people with symptoms to a doctor."
MODELFILE = (f'FROM ./model.gguf\nTEMPLATE """{{{{ .Prompt }}}}"""\nSYSTEM """{SHIPPED}"""\n'
             'PARAMETER stop "<|im_end|>"\n')
SUITE = """suite: mini
defaults: {max_tokens: 8}
cases:
  - {id: gen-squat, category: stop, checks: [no_template], prompt: "In one sentence: what is a squat?"}
  - {id: gen-own, category: stop, checks: [no_template], prompt: "Say hi.", system: "You are terse."}
"""


def _model_with_modelfile(folder: Path, modelfile: str | None = MODELFILE) -> Path:
    gguf = folder / "model.gguf"
    gguf.symlink_to(smollm2_gguf())
    if modelfile is not None:
        (folder / "Modelfile").write_text(modelfile, encoding="utf-8")
    return gguf


def test_the_modelfile_beside_a_gguf_gives_the_system_prompt(tmp_path: Path) -> None:
    chosen = system_prompt.resolve(str(_model_with_modelfile(tmp_path)))
    assert chosen.text == SHIPPED
    assert "Modelfile" in chosen.source


def test_explicit_none_endpoint_and_missing_modelfile(tmp_path: Path) -> None:
    gguf = _model_with_modelfile(tmp_path)
    assert system_prompt.resolve(str(gguf), explicit="Be brief.").text == "Be brief."
    assert system_prompt.resolve(str(gguf), none=True).text is None
    assert system_prompt.resolve(None, endpoint="http://127.0.0.1:11434/v1").text is None
    bare = tmp_path / "bare"
    bare.mkdir()
    lonely = system_prompt.resolve(str(_model_with_modelfile(bare, None)))
    assert lonely.text is None and "no Modelfile" in lonely.source
    with pytest.raises(FormaError, match="exclude each other"):
        system_prompt.resolve(str(gguf), explicit="x", none=True)
    with pytest.raises(FormaError, match="empty"):
        system_prompt.resolve(str(gguf), explicit="  ")


def test_a_broken_modelfile_is_named(tmp_path: Path) -> None:
    gguf = _model_with_modelfile(tmp_path, 'FROM ./model.gguf\nSYSTEM """never closed\n')
    with pytest.raises(FormaError) as err:
        system_prompt.resolve(str(gguf))
    assert "Modelfile" in str(err.value)


def test_a_case_keeps_its_own_system_prompt() -> None:
    cases = [Case(id="a", suite="s", category="c", prompt="Say hi.", checks=["no_template"]),
             Case(id="b", suite="s", category="c", prompt="Say hi.", system="own", checks=["no_template"])]
    out = system_prompt.apply(cases, system_prompt.SystemPrompt("shipped", "test"))
    assert [c.system for c in out] == ["shipped", "own"]
    assert system_prompt.apply(cases, system_prompt.SystemPrompt(None, "none")) == cases


def test_the_gate_sends_the_shipped_prompt_to_the_model_and_reports_it(tmp_path: Path) -> None:
    """A real run on SmolLM2: the prompt the model saw is longer by the shipped SYSTEM, and the report says which."""
    from eval.runners import GGUFRunner

    gguf = _model_with_modelfile(tmp_path)
    suites = tmp_path / "suites"
    suites.mkdir()
    (suites / "mini.yaml").write_text(SUITE, encoding="utf-8")
    policy = Policy(name="t", min_cases=1, suites={"mini": {"threshold": 0.0}})
    outcome = run_gate(str(gguf), policy=policy, suites_dir=suites, out_root=tmp_path / "r", run="r")
    rows = {r["id"]: r for r in outcome.report["results"]}
    assert rows["gen-squat"]["system"] == SHIPPED and rows["gen-own"]["system"] == "You are terse."
    assert outcome.report["system_prompt"]["text"] == SHIPPED
    assert SHIPPED[:40] in (tmp_path / "r" / "r" / "report.md").read_text(encoding="utf-8")
    runner = GGUFRunner(gguf, n_threads=2)
    try:
        bare = Case(id="x", suite="mini", category="stop", prompt="Say hi.", checks=["no_template"])
        with_shipped = system_prompt.apply([bare], system_prompt.resolve(str(gguf)))[0]
        assert SHIPPED in runner.render(with_shipped.messages())
        assert "SmolLM" in runner.render(bare.messages())  # the template's own default, what the gate used to test
    finally:
        runner.close()


def test_cli_eval_finds_its_default_policy_and_names_a_broken_modelfile(tmp_path: Path) -> None:
    """`forma eval run MODEL` with no --policy reads the shipped policy (it once looked for cli/policy.yaml)."""
    from typer.testing import CliRunner

    from cli.app import app

    gguf = _model_with_modelfile(tmp_path, 'FROM ./model.gguf\nSYSTEM """never closed\n')
    result = CliRunner().invoke(app, ["eval", "run", str(gguf), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2, result.output
    assert "policy file not found" not in result.output
    assert "Modelfile" in result.output and "--no-system" in result.output
