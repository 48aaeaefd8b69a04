"""`Raw`: one input record as a reader yields it, before any field mapping or validation.

Its own module so that the readers (`sources`), the format converters (`chat_formats`), the
packaged datasets (`packaged`) and the canonicalizer (`records`) can all share it without
importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Raw:
    source: str  # file (or packaged dataset) the record came from
    line: int  # 1-based line in a text file, row in a table, record index in a JSON array
    record: dict[str, Any] | None  # None when the line could not be parsed
    error: str | None = None  # why it could not be parsed
    text: str | None = None  # the raw line, kept for the quarantine file when unparsed
    part: str | None = None  # which of a line's records (a survey answer exploded into examples): their ids differ
