"""Text normalisation (data.clean): markup, Unicode forms, whitespace, case. Pure functions of one string, applied
alike to training data (data/records.py) and to what a served model is asked (inference/predictor.py)."""

from __future__ import annotations

import html
import re
import unicodedata

from tunesmith.config import CleanSpec

# Tags must start with a letter, '/' or '!' so that "a < b and c > d" survives, and the name must end in a blank, '/'
# or '>' so that "<john@example.com>" does.
_TAG = re.compile(r"<(?:!--.*?--|[/!]?[A-Za-z][A-Za-z0-9:-]*(?:[\s/][^<>]*)?)>", re.DOTALL)
# Entities closed by ';' only: html.unescape also reads HTML4's bare ones, so "?id=3&region=eu" became "?id=3®ion=eu"
# and "Tom&notes" "Tom¬es"
_ENTITY = re.compile(r"&(?:#[0-9]+|#[xX][0-9a-fA-F]+|[A-Za-z][A-Za-z0-9]*);")
_BREAK = re.compile(r"<\s*(?:br\s*/?|/p|/div|/li|/h[1-6])\s*>", re.IGNORECASE)
_BLANKS = re.compile(r"[^\S\n]+")  # whitespace except newlines
_NEWLINES = re.compile(r"\s*\n\s*(?:\n\s*)+")  # paragraph breaks collapse to one blank line


class TextCleaner:
    def __init__(self, spec: CleanSpec) -> None:
        self.spec = spec

    def __call__(self, text: str) -> str:
        spec = self.spec
        if spec.strip_html and ("<" in text or "&" in text):
            text = _ENTITY.sub(lambda m: html.unescape(m.group(0)), _TAG.sub(" ", _BREAK.sub("\n", text)))
        if spec.unicode_form:
            text = unicodedata.normalize(spec.unicode_form, text)
        if spec.normalize_whitespace:
            text = _NEWLINES.sub("\n\n", _BLANKS.sub(" ", text))
            text = "\n".join(line.strip() for line in text.split("\n"))
        text = text.strip()
        return text.lower() if spec.lowercase else text
