"""The Ollama Modelfile, derived from the tokenizer's own chat template and end tokens.

Why: a Modelfile whose TEMPLATE or stop tokens differ from what the model was trained on makes Ollama repeat itself
or never stop, and Ollama guesses a TEMPLATE when none is given. So the TEMPLATE is not written by hand: it is the
Go-template form of the chat family we recognise (ChatML, used by SmolLM2 and Qwen2/2.5), with the tokenizer's own
default system prompt, and it is *proved* equal to the tokenizer's Jinja template by rendering both on probe
conversations (see ``export.gotemplate``). A template that does not render identically is refused, never guessed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from common.errors import FormaError, from_validation_error
from export.gotemplate import GoTemplateError, render
from schemas.recipe import DEFAULT_SYSTEM_PROMPT

IM_START, IM_END = "<|im_start|>", "<|im_end|>"


class ModelfileConfig(BaseModel):
    """The release's serving settings written into the Modelfile (a release config YAML holds these keys)."""

    model_config = ConfigDict(extra="forbid")

    system_prompt: str = Field(default=DEFAULT_SYSTEM_PROMPT, description="Written as SYSTEM; empty omits it.")
    temperature: float = Field(default=0.7, ge=0, le=2)
    top_p: float = Field(default=0.9, gt=0, le=1)
    num_ctx: int | None = Field(default=None, gt=0, description="PARAMETER num_ctx when set.")


def load_modelfile_config(path: str | Path) -> ModelfileConfig:
    """Read a release config (YAML or JSON mapping of ModelfileConfig's keys)."""
    import yaml
    from pydantic import ValidationError

    p = Path(path)
    if not p.is_file():
        raise FormaError("release config not found", path=p)
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise FormaError(f"not valid YAML: {exc}", path=p) from None
    if not isinstance(data, dict):
        raise FormaError("a release config must be a mapping", path=p)
    try:
        return ModelfileConfig.model_validate(data)
    except ValidationError as exc:
        raise from_validation_error(exc, path=p) from None


def chatml_go_template(default_system: str | None) -> str:
    """Ollama TEMPLATE for ChatML. ``default_system`` is what the Jinja template inserts when no system turn is given.

    The generation prompt follows the last message unless that message is the assistant's (as with
    ``add_generation_prompt=False`` for a finished chat). Only ``.Messages`` is used: Ollama puts the Modelfile's
    SYSTEM in front of the messages as a system message when the request has none.
    """
    head = '{{- "" }}'
    if default_system is not None and ("{{" in default_system or "}}" in default_system):
        raise FormaError("the template's default system prompt contains '{{' or '}}', which Go would parse")
    if default_system is not None:
        head = (f'{{{{- if and (eq $i 0) (ne $m.Role "system") }}}}{IM_START}system\n'
                f"{default_system}{IM_END}\n{{{{ end }}}}")
    return (
        "{{- range $i, $m := .Messages }}\n"
        f"{head}{IM_START}{{{{ $m.Role }}}}\n"
        f"{{{{ $m.Content }}}}{IM_END}\n"
        f'{{{{ if and (eq (len (slice $.Messages $i)) 1) (ne $m.Role "assistant") }}}}{IM_START}assistant\n'
        "{{ end }}\n"
        "{{- end }}"
    )


#: Probe conversations: every shape a served chat can take, plus content that a template might trim, escape or
#: rewrite (whitespace, braces, think tags). Each must render byte-identically through both templates.
PROBES: list[list[dict[str, str]]] = [
    [{"role": "user", "content": "How many rest days a week?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Squat depth?"}],
    [{"role": "system", "content": "S"}, {"role": "user", "content": "U1"}, {"role": "assistant", "content": "A1"},
     {"role": "user", "content": "U2"}],
    [{"role": "user", "content": "U1"}, {"role": "assistant", "content": "A1"}, {"role": "user", "content": "U2"},
     {"role": "assistant", "content": "A2"}],
    [{"role": "user", "content": "  padded\n\nlines  "}, {"role": "assistant", "content": "\n{{ .Content }} {% x %}\n"},
     {"role": "user", "content": "second system next"}, {"role": "system", "content": "late system"},
     {"role": "user", "content": "ok"}],
    [{"role": "user", "content": "Why?"}, {"role": "assistant", "content": "<think>plan</think>Because."},
     {"role": "user", "content": "And?"}],
]


def ollama_data(messages: list[dict[str, str]]) -> dict[str, Any]:
    """What Ollama hands TEMPLATE for a chat request: ``.Messages`` of structs with ``Role`` and ``Content``."""
    return {"Messages": [{"Role": m["role"], "Content": m["content"]} for m in messages]}


def _render_jinja(tokenizer: Any, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    try:
        return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt))
    except Exception as exc:  # the template itself raised (e.g. it demands alternating roles)
        raise FormaError(f"the tokenizer's chat template fails on a probe conversation: {exc}",
                         hint="only ChatML templates (SmolLM2, Qwen2/2.5) can be translated") from None


def _default_system(tokenizer: Any) -> str | None:
    text = _render_jinja(tokenizer, [{"role": "user", "content": "PROBE"}], False)
    prefix = f"{IM_START}system\n"
    if not text.startswith(prefix):
        return None
    end = text.find(f"{IM_END}\n", len(prefix))
    return text[len(prefix):end] if end >= 0 else None


@dataclass(frozen=True)
class TemplateTranslation:
    """The Go TEMPLATE, the family it was recognised as, and the default system prompt found in the Jinja."""

    go_template: str
    family: str
    default_system: str | None
    probes_checked: int


def translate_chat_template(tokenizer: Any) -> TemplateTranslation:
    """Translate the tokenizer's Jinja chat template into Ollama's Go template, or refuse with a FormaError."""
    template = getattr(tokenizer, "chat_template", None)
    if not template or not isinstance(template, str):
        raise FormaError("the tokenizer has no chat template", hint="save the model with its chat template")
    if IM_START not in template or IM_END not in template:
        raise FormaError("the chat template is not ChatML (<|im_start|>/<|im_end|>) and cannot be translated",
                         hint="supported: ChatML templates such as SmolLM2's and Qwen2/2.5's")
    go = chatml_go_template(_default_system(tokenizer))
    for i, messages in enumerate(PROBES):
        generation_prompt = messages[-1]["role"] != "assistant"
        want = _render_jinja(tokenizer, messages, generation_prompt)
        try:
            got = render(go, ollama_data(messages))
        except GoTemplateError as exc:  # pragma: no cover - our own template; a bug here must be loud
            raise FormaError(f"internal Go template error: {exc}") from None
        if got != want:
            at = next((k for k, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), min(len(got), len(want)))
            raise FormaError(
                f"the chat template differs from ChatML on probe {i} at character {at}: "
                f"Jinja gives {want[max(0, at - 20):at + 40]!r}, ChatML gives {got[max(0, at - 20):at + 40]!r}",
                hint="refusing to guess a TEMPLATE; only plain ChatML templates can be translated")
    return TemplateTranslation(go, "chatml", _default_system(tokenizer), len(PROBES))


def end_tokens(tokenizer: Any, model_dir: Path | None = None) -> list[str]:
    """Every token that ends a reply: the turn end of the template, the tokenizer's EOS, generation_config's EOS ids."""
    found: list[str] = []
    template = getattr(tokenizer, "chat_template", "") or ""
    if IM_END in template:
        found.append(IM_END)
    if tokenizer.eos_token:
        found.append(str(tokenizer.eos_token))
    if model_dir is not None and (model_dir / "generation_config.json").is_file():
        ids = json.loads((model_dir / "generation_config.json").read_text()).get("eos_token_id")
        for tid in ([ids] if isinstance(ids, int) else ids or []):
            found.append(str(tokenizer.convert_ids_to_tokens(int(tid))))
    out: list[str] = []
    for tok in found:
        if tok not in out:
            out.append(tok)
    return out


def _quote_block(keyword: str, text: str) -> str:
    if '"""' in text:
        raise FormaError(f'the {keyword} text contains """, which a Modelfile cannot quote')
    return f'{keyword} """{text}"""'


def _quote_param(value: str) -> str:
    if '"' in value or "\n" in value or "\\" in value:
        raise FormaError(f"cannot write the stop token {value!r} into a Modelfile")
    return f'"{value}"'


def build_modelfile(gguf_name: str, translation: TemplateTranslation, stops: list[str],
                    config: ModelfileConfig) -> str:
    """The Modelfile text. ``gguf_name`` is relative to the Modelfile's folder (they are written side by side)."""
    lines = [
        "# Generated by `forma export`. TEMPLATE is the Go form of the tokenizer's chat template, checked to render",
        f"# identically on {translation.probes_checked} probe conversations; stops are the tokenizer's end tokens.",
        f"FROM ./{gguf_name}",
        _quote_block("TEMPLATE", translation.go_template),
    ]
    if config.system_prompt:
        lines.append(_quote_block("SYSTEM", config.system_prompt))
    lines += [f"PARAMETER stop {_quote_param(s)}" for s in stops]
    lines += [f"PARAMETER temperature {config.temperature:g}", f"PARAMETER top_p {config.top_p:g}"]
    if config.num_ctx:
        lines.append(f"PARAMETER num_ctx {config.num_ctx}")
    return "\n".join(lines) + "\n"


def parse_modelfile(text: str) -> dict[str, Any]:
    """Read back FROM, TEMPLATE, SYSTEM and PARAMETERs (the forms build_modelfile writes) for checks and tests."""
    out: dict[str, Any] = {"parameters": {}}
    i = 0
    while i < len(text):
        line_end = text.find("\n", i)
        line_end = len(text) if line_end < 0 else line_end
        line = text[i:line_end]
        keyword, _, rest = line.partition(" ")
        if not line.strip() or line.startswith("#"):
            i = line_end + 1
            continue
        if rest.startswith('"""'):
            close = text.find('"""', i + len(keyword) + 4)
            if close < 0:
                raise FormaError(f"unterminated {keyword} block in Modelfile")
            out[keyword.lower()] = text[i + len(keyword) + 4:close]
            i = close + 3
            continue
        if keyword == "PARAMETER":
            name, _, value = rest.partition(" ")
            val: Any = value[1:-1] if value.startswith('"') else float(value)
            out["parameters"].setdefault(name, []).append(val)
        else:
            out[keyword.lower()] = rest
        i = line_end + 1
    return out
