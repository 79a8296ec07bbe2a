"""Which system prompt the gate's cases run under: the one the model ships with.

Why this matters: the product calls Ollama's ``/api/chat`` with role/content messages and no system message, so
Ollama puts the Modelfile's ``SYSTEM`` in front. Training data carries the recipe's system prompt on every chat.
A gate that sends the bare messages to the GGUF gets the chat template's default instead (SmolLM2's template
inserts "You are a helpful AI assistant named SmolLM"), so it measures a configuration nobody ships and the
trained behaviours, learned under Forma's prompt, partly do not show. The gate therefore uses, for every case
that has no system message of its own:

1. ``--system TEXT`` when given (``--no-system`` for the template's default, to measure the bare model);
2. for a GGUF file, the ``SYSTEM`` of the ``Modelfile`` beside it (what ``forma export`` writes);
3. for an endpoint, nothing: the server applies its own (Ollama: the Modelfile's ``SYSTEM``);
4. otherwise nothing, and the report says so.

The choice and where it came from go into the report, so a release manager can see what was measured.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from common.errors import FormaError
from schemas.eval_suite import Case


@dataclass(frozen=True)
class SystemPrompt:
    """The system prompt cases without their own ran under (``None``: the chat template's default), and why."""

    text: str | None
    source: str

    def to_dict(self) -> dict[str, str | None]:
        return {"text": self.text, "source": self.source}


def modelfile_system(gguf: Path) -> tuple[str | None, Path] | None:
    """``SYSTEM`` of the Modelfile beside ``gguf`` (``None`` text when it has none); ``None`` when there is no file."""
    from export.modelfile import parse_modelfile

    path = gguf.parent / "Modelfile"
    if not path.is_file():
        return None
    try:
        parsed = parse_modelfile(path.read_text(encoding="utf-8"))
    except (FormaError, UnicodeDecodeError, ValueError) as exc:
        raise FormaError(f"cannot read the Modelfile beside the model ({exc})", path=path,
                         hint="fix it, or pass --system TEXT / --no-system") from None
    text = parsed.get("system")
    return (str(text) if text else None), path


def resolve(model: str | None, *, endpoint: str | None = None, explicit: str | None = None,
            none: bool = False) -> SystemPrompt:
    """The system prompt for ``model`` by the rules in the module docstring."""
    if explicit is not None and none:
        raise FormaError("--system and --no-system exclude each other")
    if explicit is not None:
        if not explicit.strip():
            raise FormaError("--system is empty", hint="use --no-system for the chat template's default")
        return SystemPrompt(explicit, "given (--system)")
    if none:
        return SystemPrompt(None, "none (--no-system): the chat template's default")
    if endpoint:
        return SystemPrompt(None, "the endpoint's own (Ollama puts the Modelfile's SYSTEM in front)")
    if model and Path(model).is_file():
        found = modelfile_system(Path(model))
        if found is not None:
            text, path = found
            if text:
                return SystemPrompt(text, f"SYSTEM of {path}")
            return SystemPrompt(None, f"none: {path} has no SYSTEM; the chat template's default")
    return SystemPrompt(None, "none: no Modelfile beside the model and no --system; the chat template's default")


def apply(cases: list[Case], prompt: SystemPrompt) -> list[Case]:
    """Cases with ``prompt`` as their system message where they have none (a case's own system wins)."""
    if prompt.text is None:
        return cases
    return [c if c.system else c.model_copy(update={"system": prompt.text}) for c in cases]
