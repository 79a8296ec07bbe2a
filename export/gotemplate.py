"""A renderer for the subset of Go ``text/template`` that the generated Ollama TEMPLATE uses.

Why it exists: the export proves its Modelfile TEMPLATE equivalent to the tokenizer's Jinja chat template by
rendering both on probe conversations. Ollama renders TEMPLATE with Go's ``text/template``; no Go toolchain is
installed here, so this module implements the part of that language we emit, following Go's semantics:
text, ``{{ }}`` actions with ``{{-``/``-}}`` whitespace trimming, ``if``/``else if``/``else``/``end``,
``range $i, $m := PIPE`` / ``range PIPE``, field access (``.A.B``, ``$x.A``, ``$.A``), string and integer literals,
parenthesised calls, and the builtins ``eq ne and or not len slice index`` (``and``/``or`` short-circuit as in
Go 1.18+). Anything else raises ``GoTemplateError`` rather than being guessed at.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


class GoTemplateError(ValueError):
    """The template uses syntax outside the supported subset, or fails at run time as Go's would."""


_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.DOTALL)
_TOKEN = re.compile(r'\s*(?:(\()|(\))|("(?:[^"\\]|\\.)*")|(-?\d+)'
                    r'|(\$[A-Za-z_]\w*|\$|[A-Za-z_]\w*)?((?:\.[A-Za-z_]\w*)+|\.)?)')


@dataclass
class _Text:
    text: str


@dataclass
class _Output:
    expr: Any


@dataclass
class _If:
    branches: list[tuple[Any, list[Any]]] = field(default_factory=list)
    otherwise: list[Any] = field(default_factory=list)


@dataclass
class _Range:
    expr: Any
    key_var: str | None
    value_var: str | None
    body: list[Any] = field(default_factory=list)


def _lex(source: str) -> list[tuple[str, str]]:
    """Split into ('text', s) and ('action', s) pieces, applying Go's trim markers to neighbouring text."""
    pieces: list[tuple[str, str]] = []
    pos = 0
    trim_next = False
    for m in _ACTION.finditer(source):
        text = source[pos:m.start()]
        if trim_next:
            text = text.lstrip(" \t\r\n")
        if m.group(1):
            text = text.rstrip(" \t\r\n")
        if text:
            pieces.append(("text", text))
        body = m.group(2).strip()
        if body.startswith("/*"):
            raise GoTemplateError("comments are not supported")
        pieces.append(("action", body))
        trim_next = bool(m.group(3))
        pos = m.end()
    tail = source[pos:]
    if trim_next:
        tail = tail.lstrip(" \t\r\n")
    if tail:
        pieces.append(("text", tail))
    if "{{" in "".join(t for k, t in pieces if k == "text"):
        raise GoTemplateError("unterminated action")
    return pieces


def _tokens(expr: str) -> list[str]:
    out: list[str] = []
    pos = 0
    expr = expr.strip()
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if not m or m.end() == pos:
            raise GoTemplateError(f"cannot parse expression {expr!r} at {pos}")
        tok = m.group(0).strip()
        if tok:
            out.append(tok)
        pos = m.end()
    return out


def _parse_expr(tokens: list[str]) -> Any:
    """A pipeline without ``|``: either one operand or a call ``fn arg...``; nested calls in parentheses."""

    def operand(i: int) -> tuple[Any, int]:
        tok = tokens[i]
        if tok == "(":
            depth, j = 1, i + 1
            while j < len(tokens) and depth:
                depth += {"(": 1, ")": -1}.get(tokens[j], 0)
                j += 1
            if depth:
                raise GoTemplateError("unbalanced parentheses")
            inner = _parse_expr(tokens[i + 1:j - 1])
            if j < len(tokens) and tokens[j].startswith(".") and tokens[j] != ".":  # (expr).Field.Field
                return ("field", inner, tokens[j][1:].split(".")), j + 1
            return inner, j
        if tok == ")":
            raise GoTemplateError("unexpected ')'")
        if tok.startswith('"'):
            return ("lit", bytes(tok[1:-1], "utf-8").decode("unicode_escape")), i + 1
        if re.fullmatch(r"-?\d+", tok):
            return ("lit", int(tok)), i + 1
        if tok in ("true", "false"):
            return ("lit", tok == "true"), i + 1
        if tok.startswith(".") or tok.startswith("$"):
            return ("ref", tok), i + 1
        return ("fn", tok), i + 1

    if not tokens:
        raise GoTemplateError("empty expression")
    first, i = operand(0)
    if first[0] != "fn":
        if i != len(tokens):
            raise GoTemplateError(f"can't give argument to non-function {tokens[0]!r}")
        return first
    args = []
    while i < len(tokens):
        arg, i = operand(i)
        if arg[0] == "fn":
            raise GoTemplateError(f"function {arg[1]!r} used as an argument without parentheses")
        args.append(arg)
    return ("call", first[1], args)


def _parse(pieces: list[tuple[str, str]]) -> list[Any]:
    root: list[Any] = []
    stack: list[tuple[Any, list[Any]]] = [(None, root)]
    for kind, body in pieces:
        current = stack[-1][1]
        if kind == "text":
            current.append(_Text(body))
            continue
        head, _, rest = body.partition(" ")
        if head == "if":
            node = _If()
            node.branches.append((_parse_expr(_tokens(rest)), []))
            current.append(node)
            stack.append((node, node.branches[-1][1]))
        elif head == "else":
            owner = stack[-1][0]
            if not isinstance(owner, _If):
                raise GoTemplateError("else outside if")
            stack.pop()
            if rest.startswith("if "):
                owner.branches.append((_parse_expr(_tokens(rest[3:])), []))
                stack.append((owner, owner.branches[-1][1]))
            elif rest.strip():
                raise GoTemplateError(f"unsupported else clause {rest!r}")
            else:
                stack.append((owner, owner.otherwise))
        elif head == "range":
            m = re.fullmatch(r"\s*(\$\w+)\s*(?:,\s*(\$\w+)\s*)?:=\s*(.+)", rest, re.DOTALL)
            if m:
                key, value = (m.group(1), m.group(2)) if m.group(2) else (None, m.group(1))
                node_r = _Range(_parse_expr(_tokens(m.group(3))), key, value)
            else:
                node_r = _Range(_parse_expr(_tokens(rest)), None, None)
            current.append(node_r)
            stack.append((node_r, node_r.body))
        elif head == "end":
            if len(stack) == 1:
                raise GoTemplateError("unexpected end")
            stack.pop()
        elif head in ("define", "template", "block", "with", "break", "continue") or ":=" in body or "|" in body:
            raise GoTemplateError(f"unsupported action {body!r}")
        else:
            current.append(_Output(_parse_expr(_tokens(body))))
    if len(stack) != 1:
        raise GoTemplateError("missing end")
    return root


def _truth(value: Any) -> bool:
    """Go's notion of 'empty': false, 0, nil, and empty string/slice/map are false."""
    return bool(value)


def _field(value: Any, name: str) -> Any:
    if isinstance(value, Mapping):
        if name not in value:
            return None  # Go's map lookup of a missing key gives the zero value (<no value> when printed)
        return value[name]
    if hasattr(value, name):
        return getattr(value, name)
    raise GoTemplateError(f"can't evaluate field {name} in {type(value).__name__}")


class _Scope:
    def __init__(self, root: Any) -> None:
        self.root = root
        self.dot = root
        self.vars: dict[str, Any] = {"$": root}


def _resolve(ref: str, scope: _Scope) -> Any:
    if ref == ".":
        return scope.dot
    if ref.startswith("$"):
        name, _, path = ref.partition(".")
        if name not in scope.vars:
            raise GoTemplateError(f"undefined variable {name}")
        value = scope.vars[name]
        parts = path.split(".") if path else []
    else:
        value = scope.dot
        parts = ref[1:].split(".")
    for part in parts:
        value = _field(value, part)
    return value


def _eval(node: Any, scope: _Scope) -> Any:
    kind = node[0]
    if kind == "lit":
        return node[1]
    if kind == "ref":
        return _resolve(node[1], scope)
    if kind == "field":
        value = _eval(node[1], scope)
        for part in node[2]:
            value = _field(value, part)
        return value
    if kind == "fn":
        raise GoTemplateError(f"function {node[1]!r} needs arguments")
    name, args = node[1], node[2]
    if name == "and":
        value = None
        for a in args:
            value = _eval(a, scope)
            if not _truth(value):
                return value
        return value
    if name == "or":
        value = None
        for a in args:
            value = _eval(a, scope)
            if _truth(value):
                return value
        return value
    vals = [_eval(a, scope) for a in args]
    if name == "not" and len(vals) == 1:
        return not _truth(vals[0])
    if name == "eq" and len(vals) >= 2:
        return any(vals[0] == v for v in vals[1:])
    if name == "ne" and len(vals) == 2:
        return vals[0] != vals[1]
    if name == "len" and len(vals) == 1:
        return len(vals[0])
    if name == "index" and len(vals) >= 2:
        value = vals[0]
        for key in vals[1:]:
            try:
                value = value[key]
            except (IndexError, KeyError, TypeError) as exc:
                raise GoTemplateError(f"error calling index: {exc}") from None
        return value
    if name == "slice" and 1 <= len(vals) <= 3:
        seq = vals[0]
        lo = vals[1] if len(vals) > 1 else 0
        hi = vals[2] if len(vals) > 2 else len(seq)
        if not 0 <= lo <= hi <= len(seq):
            raise GoTemplateError(f"error calling slice: index out of range [{lo}:{hi}]")
        return seq[lo:hi]
    raise GoTemplateError(f"unsupported function {name!r} with {len(vals)} arguments")


def _print(value: Any) -> str:
    if value is None:
        return "<no value>"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _run(nodes: list[Any], scope: _Scope, out: list[str]) -> None:
    for node in nodes:
        if isinstance(node, _Text):
            out.append(node.text)
        elif isinstance(node, _Output):
            out.append(_print(_eval(node.expr, scope)))
        elif isinstance(node, _If):
            for cond, body in node.branches:
                if _truth(_eval(cond, scope)):
                    _run(body, scope, out)
                    break
            else:
                _run(node.otherwise, scope, out)
        elif isinstance(node, _Range):
            seq = _eval(node.expr, scope)
            if not isinstance(seq, Sequence) or isinstance(seq, str):
                raise GoTemplateError("range over a non-list")
            saved_dot, saved_vars = scope.dot, dict(scope.vars)
            for i, item in enumerate(seq):
                scope.dot = item
                if node.key_var:
                    scope.vars[node.key_var] = i
                if node.value_var:
                    scope.vars[node.value_var] = item
                _run(node.body, scope, out)
            scope.dot, scope.vars = saved_dot, saved_vars


def render(template: str, data: Any) -> str:
    """Render ``template`` with ``data`` (dicts and lists) as Go's text/template would, for the supported subset."""
    tree = _parse(_lex(template))
    out: list[str] = []
    _run(tree, _Scope(data), out)
    return "".join(out)
