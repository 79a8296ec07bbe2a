"""Strict UTF-8 for every file users hand Forma: a bad byte is an error naming the file, line and column.

Decoding with ``errors="replace"`` would let a mangled recipe or dataset through silently; a bare
``UnicodeDecodeError`` is a traceback. Every reader of user text (YAML, JSON lines, reports) decodes here.
"""

from __future__ import annotations

from pathlib import Path

from common.errors import FormaError


def decode_utf8(raw: bytes, path: Path | str, *, first_line: int = 1) -> str:
    """``raw`` as text; the first byte that is not UTF-8 is a FormaError with its line and column."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = first_line + raw.count(b"\n", 0, exc.start)
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise FormaError(f"not UTF-8: byte 0x{raw[exc.start]:02x} cannot be decoded", path=path,
                         where=f"line {line}, column {column}", hint="save the file as UTF-8") from None


def read_utf8(path: Path) -> str:
    """The whole file as text, strictly UTF-8 (a leading BOM is dropped)."""
    return decode_utf8(path.read_bytes(), path).removeprefix("\ufeff")
