"""Every command the README names exists and answers ``--help``: the docs and the CLI cannot drift apart."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.app import app

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[list[str]]:
    """The command words of each `forma ...` the README shows (up to the first argument or option)."""
    found: set[tuple[str, ...]] = set()
    for snippet in re.findall(r"`(forma [^`]+)`", (ROOT / "README.md").read_text(encoding="utf-8")):
        for alternative in snippet.split(" | "):
            words = alternative.removeprefix("forma ").split()
            command = []
            for w in words:
                if not re.fullmatch(r"[a-z][a-z-]*", w):
                    break
                command.append(w)
            if command:
                found.add(tuple(command))
    return [list(c) for c in sorted(found)]


def test_the_readme_names_commands() -> None:
    assert ["build"] in readme_commands() and ["eval", "run"] in readme_commands()


@pytest.mark.parametrize("command", readme_commands(), ids=" ".join)
def test_every_readme_command_answers_help(command: list[str]) -> None:
    result = CliRunner().invoke(app, [*command, "--help"])
    assert result.exit_code == 0, f"forma {' '.join(command)} --help: {result.output}"
    assert "Usage" in result.output


def test_an_unknown_command_fails() -> None:
    """The check above can fail: a command that does not exist exits non-zero."""
    assert CliRunner().invoke(app, ["no-such-command", "--help"]).exit_code != 0
