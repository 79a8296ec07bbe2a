"""Arabic text helpers every stage shares: digits, normalisation for dedupe, and script share for language checks.

Why in ``common``: the knowledge schema (numbers equal to the English), grounding, validation, the generator and
both dedupe stages must agree on what an Arabic number or an Arabic "same text" is; one definition keeps them so.

- Digits: Arabic text may write Western digits (70) or Arabic-Indic ones (٧٠), with the Arabic decimal separator
  (٫, U+066B) and thousands separator (٬, U+066C); :func:`fold_digits` turns all of them into the Western form the
  number parsers read, :func:`to_arabic_digits` writes a Western-digit text the other way (a recipe option).
- Normalisation (:func:`normalize_arabic`): the spellings Arabic writers vary without changing the word are made
  one, so exact and near dedupe see them as the same: diacritics (tashkeel) and the superscript alef removed,
  tatweel (ـ) removed, alef with hamza or madda (أ إ آ ٱ) to bare alef (ا), alef maqsura (ى) to yaa (ي), taa
  marbuta (ة) to haa (ه). It touches Arabic code points only, so English text comes back unchanged.
"""

from __future__ import annotations

import re

ARABIC_INDIC = "٠١٢٣٤٥٦٧٨٩"
EXTENDED_INDIC = "۰۱۲۳۴۵۶۷۸۹"  # the Persian/Urdu forms, read the same way
ARABIC_DECIMAL = "\u066b"  # ٫
ARABIC_THOUSANDS = "\u066c"  # ٬
ARABIC_PERCENT = "\u066a"  # ٪

_FOLD = str.maketrans({**{a: str(i) for i, a in enumerate(ARABIC_INDIC)},
                       **{a: str(i) for i, a in enumerate(EXTENDED_INDIC)},
                       ARABIC_DECIMAL: ".", ARABIC_THOUSANDS: ",", ARABIC_PERCENT: "%"})
_TO_INDIC = str.maketrans({str(i): a for i, a in enumerate(ARABIC_INDIC)})
_DECIMAL_POINT = re.compile(r"(?<=\d)\.(?=\d)")
_HAS_INDIC = re.compile(f"[{ARABIC_INDIC}{EXTENDED_INDIC}{ARABIC_DECIMAL}{ARABIC_THOUSANDS}{ARABIC_PERCENT}]")

#: Tashkeel (fathatan .. sukun), the dagger alef and the Quranic marks; and tatweel.
_MARKS = re.compile("[\u0610-\u061a\u064b-\u065f\u0670\u06d6-\u06ed\u0640]")
_LETTERS = str.maketrans({"أ": "ا", "إ": "ا", "آ": "ا", "ٱ": "ا", "ى": "ي", "ة": "ه"})
_ARABIC_CHAR = re.compile("[\u0600-\u06ff\u0750-\u077f\u08a0-\u08ff\ufb50-\ufdff\ufe70-\ufeff]")
_ARABIC_LETTER = re.compile("[\u0621-\u064a\u066e-\u06d3\u06fa-\u06ff\u0750-\u077f]")
_LATIN_LETTER = re.compile(r"[A-Za-z\u00c0-\u024f]")


def has_arabic(text: str) -> bool:
    return bool(_ARABIC_CHAR.search(text))


def fold_digits(text: str) -> str:
    """Arabic-Indic digits and separators as Western ones ("١٫٦" -> "1.6"); other text unchanged."""
    return text.translate(_FOLD) if _HAS_INDIC.search(text) else text


def to_arabic_digits(text: str) -> str:
    """Western digits as Arabic-Indic ones, a decimal point between digits as ٫ ("1.6" -> "١٫٦")."""
    return _DECIMAL_POINT.sub(ARABIC_DECIMAL, text).translate(_TO_INDIC)


def normalize_arabic(text: str) -> str:
    """One spelling for the variants of an Arabic word (see the module doc); non-Arabic text is returned as is."""
    if not has_arabic(text):
        return text
    return _MARKS.sub("", text).translate(_LETTERS)


def arabic_share(text: str) -> float | None:
    """Share of the letters (Arabic or Latin) that are Arabic; None when the text has no letters."""
    arabic = len(_ARABIC_LETTER.findall(text))
    latin = len(_LATIN_LETTER.findall(text))
    return arabic / (arabic + latin) if arabic + latin else None


_GLUED = re.compile(r"(?<=[\u0621-\u064a])(?=\d)")


def readable_numbers(text: str) -> str:
    """The text as the number parsers read it: Western digits, and a one-letter Arabic prefix glued to a number
    ("و12", "and 12") set apart from it. English text comes back unchanged."""
    text = fold_digits(text)
    return _GLUED.sub(" ", text) if has_arabic(text) else text
