"""Field expressions: how a config names the part of an input record that holds the text, label...

Three forms, chosen for what real exports look like:
  `review`            a column (or key) name
  `meta.rating`       a dotted path into nested JSON (list items by index: `turns.0.text`)
  `{title}. {body}`   a template joining several fields into one text
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

_REF = re.compile(r"\{([^{}]+)\}")
ABSENT = object()  # the record has no such field at all (as opposed to an empty value)


def _lookup(record: Any, path: str) -> Any:
    if isinstance(record, dict) and path in record:  # column names may themselves contain dots
        return record[path]
    node = record
    for part in path.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return ABSENT
    return node


class FieldExpr:
    def __init__(self, expr: str) -> None:
        self.expr = expr
        self.refs = [r.strip() for r in _REF.findall(expr)]
        self.is_template = bool(self.refs)
        if not self.is_template:
            self.refs = [expr]

    @property
    def columns(self) -> set[str]:
        """Top-level columns the expression reads (for checking a file's header up front)."""
        return {r.split(".")[0] for r in self.refs}

    def present_in(self, columns: list[str]) -> bool:
        return all(r in columns or r.split(".")[0] in columns for r in self.refs)

    def __call__(self, record: dict[str, Any], missing: Callable[[Any], bool] | None = None) -> Any:
        """The value; a template's text. `missing`: what else counts as no value in a template's part (the
        data.missing.na_values markers): a part missing reads as nothing, and all of them missing, so is the field.
        An R export's "NA" or a pandas NaN had been trained on as the words "NA" and "nan"."""
        if not self.is_template:
            return _lookup(record, self.expr)
        values = {r: _lookup(record, r) for r in self.refs}
        gone = {r for r, v in values.items() if _no_value(v) or (missing is not None and missing(v))}
        if len(gone) == len(values):
            return ABSENT if all(v is ABSENT for v in values.values()) else None
        return _REF.sub(lambda m: "" if m.group(1).strip() in gone else _text(values[m.group(1).strip()]), self.expr)

    def absent_refs(self, record: dict[str, Any]) -> list[str]:
        """The placeholders `record` has no field for."""
        return [r for r in self.refs if _lookup(record, r) is ABSENT]

    def __repr__(self) -> str:
        return f"FieldExpr({self.expr!r})"


def _no_value(value: Any) -> bool:
    return value is ABSENT or value is None or value == "" or (isinstance(value, float) and math.isnan(value))


def _text(value: Any) -> str:
    return "" if value is ABSENT or value is None else str(value)
