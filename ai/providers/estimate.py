"""A conservative token estimate from text, for reservations and for providers that send
no usage (docs/api.md#quota).

BPE tokenizers (OpenAI's cl100k/o200k, Anthropic's) spend about one token per four
characters of English, but far more on other scripts: a CJK, Hangul or Kana character is
about one token (often more), an emoji two to four, code about one per punctuation mark.
Counting every character at a quarter of a token would make such text nearly free, so the
estimate counts by kind of character:

- ASCII letters, spaces and tabs: a quarter of a token each (rounded up at the end);
- ASCII digits and line breaks: half a token each (numbers split into short groups);
- ASCII punctuation: one token each (code is mostly punctuation);
- a switch between lower and upper case or between letters and digits inside a word
  (identifiers, hex, base64, keys): one more token each;
- CJK ideographs, Hangul, Kana and full-width forms: 1.25 tokens each;
- characters outside the Basic Multilingual Plane (emoji, rare ideographs): 3 each;
- accented Latin letters: 3/4 of a token each; other letters (Cyrillic, Greek, Arabic,
  Hebrew, Thai, Devanagari, ...): one each;
- other symbols, marks and joiners (variation selectors, ZWJ, arrows): one each.

``tests/ai/test_token_estimate.py`` checks it against real tokenizer counts: it never
undercounts them by more than a few percent.
"""

from __future__ import annotations

import math
import re
import unicodedata

#: ASCII punctuation (a token each).
_ASCII_PUNCT = re.compile(r"[!-/:-@\[-`{-~]")
#: ASCII digits and line breaks (half a token each).
_ASCII_HALF = re.compile(r"[0-9\n]")
#: A case or letter/digit switch inside a word (a token boundary in random-looking text).
_SWITCH = re.compile(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Za-z])(?=[0-9])|(?<=[0-9])(?=[A-Za-z])")
#: CJK ideographs, Hangul, Kana, CJK punctuation and full-width forms (BMP).
_WIDE_RANGES = (
    (0x1100, 0x11FF),  # Hangul Jamo
    (0x2E80, 0x9FFF),  # CJK radicals, punctuation, Kana, ideographs
    (0xA960, 0xA97F),  # Hangul Jamo extended A
    (0xAC00, 0xD7FF),  # Hangul syllables, Jamo extended B
    (0xF900, 0xFAFF),  # CJK compatibility ideographs
    (0xFE30, 0xFE4F),  # CJK compatibility forms
    (0xFF00, 0xFFEF),  # half- and full-width forms
)

# Weights in quarter tokens (the sum is divided by 4, rounded up).
_ASCII_WORD = 1
_ASCII_HALF_WEIGHT = 2
_ASCII_PUNCT_WEIGHT = 4
_SWITCH_WEIGHT = 4
_WIDE = 5
_ASTRAL = 12
_LATIN_LETTER = 3
_OTHER = 4
#: The end of Latin Extended-B: letters below it are accented Latin.
_LATIN_END = 0x024F


def _is_wide(code: int) -> bool:
    return any(low <= code <= high for low, high in _WIDE_RANGES)


def _non_ascii_quarters(char: str) -> int:
    """Quarter tokens one non-ASCII character counts for."""
    code = ord(char)
    if code > 0xFFFF:
        return _ASTRAL
    if _is_wide(code):
        return _WIDE
    if code <= _LATIN_END and unicodedata.category(char).startswith("L"):
        return _LATIN_LETTER
    return _OTHER


def estimate_tokens(text: str) -> int:
    """A conservative token count of ``text`` (at least 1 for a non-empty text).

    Latin text at about four characters a token, code by its punctuation, and never
    CJK text or emoji at a quarter of their length (see the module docstring).
    """
    if not text:
        return 0
    punct = len(_ASCII_PUNCT.findall(text))
    half = len(_ASCII_HALF.findall(text))
    quarters = (
        punct * _ASCII_PUNCT_WEIGHT
        + half * _ASCII_HALF_WEIGHT
        + len(_SWITCH.findall(text)) * _SWITCH_WEIGHT
    )
    if text.isascii():
        quarters += (len(text) - punct - half) * _ASCII_WORD
    else:
        for char in text:
            if not char.isascii():
                quarters += _non_ascii_quarters(char)
            elif not (_ASCII_PUNCT.match(char) or _ASCII_HALF.match(char)):
                quarters += _ASCII_WORD
    return max(1, math.ceil(quarters / 4))
