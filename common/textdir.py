"""Writing direction of user-supplied text in the HTML Forma writes (reports, Argilla records).

A page of English chrome that shows Arabic samples must mark each piece of sample text with its direction, or the
browser lays it out in the page's left-to-right paragraph: left-aligned, with punctuation, digits and Latin words
at the wrong end. Text whose language is known gets ``lang="ar" dir="rtl"``; text whose language is not known (a
model's answer can be in any language) gets ``dir="auto"``, which picks the direction from its first strong letter.
The CSS the reports use (:data:`USER_TEXT_CSS`) adds ``unicode-bidi: plaintext`` for the ``dir="auto"`` case (so
each paragraph of a mixed answer takes its own direction) and a font stack with Arabic glyphs.
"""

from __future__ import annotations

import html

#: Languages written right to left (ISO 639-1, plus ckb): Arabic, Hebrew, Persian, Urdu, Pashto, Yiddish, Dhivehi,
#: Sorani Kurdish.
RTL_LANGUAGES = frozenset({"ar", "he", "fa", "ur", "ps", "yi", "dv", "ckb"})

#: Class and CSS for an element holding user-supplied text (sample turns, eval prompts and answers).
USER_TEXT_CLASS = "ut"
USER_TEXT_CSS = (
    ".ut { text-align: start; font-family: system-ui, \"Segoe UI\", \"Noto Sans\", \"Noto Sans Arabic\", "
    "\"Noto Naskh Arabic\", \"DejaVu Sans\", Tahoma, sans-serif; }\n"
    ".ut[dir=auto] { unicode-bidi: plaintext; }\n"
    ".ut[dir=rtl] { unicode-bidi: isolate; }\n"
)


def text_dir(language: str | None) -> str:
    """``rtl`` for a right-to-left language, ``ltr`` for another known one, ``auto`` when unknown."""
    if not language:
        return "auto"
    return "rtl" if language.split("-")[0].lower() in RTL_LANGUAGES else "ltr"


def dir_attrs(language: str | None) -> str:
    """The attributes for an element holding text in ``language``: ``lang="ar" dir="rtl"`` or ``dir="auto"``."""
    direction = text_dir(language)
    if direction == "auto":
        return 'dir="auto"'
    return f'lang="{html.escape(str(language), quote=True)}" dir="{direction}"'


def rtl_html(text: str, language: str | None) -> str:
    """``text`` escaped and wrapped in a block marked with its language and direction (for HTML-rendering fields)."""
    return f'<div {dir_attrs(language)} style="text-align: start">{html.escape(text, quote=False)}</div>'
