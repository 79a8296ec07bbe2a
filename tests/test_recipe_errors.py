"""Bad input to `forma recipe check` / `forma build`: exit code 2 and one line naming the file and field or line."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "forma-fitness.yaml"


def forma(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli.app", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, timeout=120)


@pytest.fixture()
def workdir(tmp_path: Path) -> Path:
    """A copy of the default recipe and its knowledge base, free to break."""
    shutil.copy(RECIPE, tmp_path / "recipe.yaml")
    shutil.copytree(ROOT / "recipes" / "knowledge", tmp_path / "knowledge")
    shutil.copytree(ROOT / "recipes" / "behaviours", tmp_path / "behaviours")
    return tmp_path


def edit_recipe(workdir: Path, **changes: object) -> Path:
    path = workdir / "recipe.yaml"
    data = yaml.safe_load(path.read_text())
    data.update(changes)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def assert_clean_error(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    message = " ".join(result.stderr.split())
    assert message.startswith("error:"), message
    for needle in needles:
        assert needle in message, (needle, message)


def test_default_recipe_checks_clean() -> None:
    result = forma("recipe", "check", str(RECIPE))
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


def test_yaml_syntax_error_names_line(workdir: Path) -> None:
    path = workdir / "recipe.yaml"
    lines = path.read_text().splitlines()
    lines[5] = "total: [2000"  # unclosed flow sequence
    path.write_text("\n".join(lines) + "\n")
    assert_clean_error(forma("recipe", "check", str(path)), "recipe.yaml", "YAML syntax error", "line")


def test_unknown_category(workdir: Path) -> None:
    path = edit_recipe(workdir, categories={"exercise_technique": 30, "programming": 20, "nutrition": 25,
                                            "recovery": 10, "motivation": 10, "yoga": 5})
    assert_clean_error(forma("recipe", "check", str(path)), "recipe.yaml", "categories", "unknown category 'yoga'")


def test_shares_must_sum_to_100(workdir: Path) -> None:
    path = edit_recipe(workdir, categories={"exercise_technique": 30, "programming": 20, "nutrition": 25,
                                            "recovery": 10, "motivation": 10, "special_populations": 10})
    assert_clean_error(forma("recipe", "check", str(path)), "recipe.yaml", "categories", "sum to 100, got 105")


@pytest.mark.parametrize("total", [-5, 0, 10**9])
def test_negative_or_absurd_size(workdir: Path, total: int) -> None:
    path = edit_recipe(workdir, total=total)
    assert_clean_error(forma("recipe", "check", str(path)), "recipe.yaml", "total")


def test_missing_knowledge_file(workdir: Path) -> None:
    path = edit_recipe(workdir, knowledge=["knowledge/does-not-exist.yaml"])
    assert_clean_error(forma("recipe", "check", str(path)), "recipe.yaml", "knowledge", "not found")


def test_malformed_knowledge_file(workdir: Path) -> None:
    target = sorted((workdir / "knowledge").glob("*.yaml"))[0]
    target.write_text("facts:\n  - id: x\n    claim: [unclosed\n")
    assert_clean_error(forma("recipe", "check", str(workdir / "recipe.yaml")), target.name, "YAML syntax error")


def test_fact_without_source(workdir: Path) -> None:
    target = workdir / "knowledge" / "nutrition.yaml"
    data = yaml.safe_load(target.read_text())
    del data["facts"][2]["source"]
    target.write_text(yaml.safe_dump(data, sort_keys=False))
    assert_clean_error(forma("recipe", "check", str(workdir / "recipe.yaml")), "nutrition.yaml",
                       "facts[2].source", "required field is missing", "line")


def test_missing_recipe_file(tmp_path: Path) -> None:
    assert_clean_error(forma("build", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "o")), "nope.yaml",
                       "file not found")


def test_unknown_language_and_population_name_the_accepted_values(workdir: Path) -> None:
    path = edit_recipe(workdir, languages=["en", "xx"])
    assert_clean_error(forma("recipe", "check", str(path)), "recipe.yaml", "languages", "unknown language 'xx'",
                       "accepted:")
    data = yaml.safe_load((workdir / "recipe.yaml").read_text())
    personas = data["personas"]
    personas[0]["populations"] = ["beginers"]
    path = edit_recipe(workdir, languages=["en"], personas=personas)
    assert_clean_error(forma("recipe", "check", str(path)), "personas[0].populations", "unknown population 'beginers'",
                       "beginners")
