"""From a raw input record to one canonical example, or a rejection that says where and why.

Canonical columns: id, source, line, group, split_hint, and per task `text` + `label` / `labels` /
`score`, or `messages` for chat. Everything here is row-local, so it runs while the file streams.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import xxhash

from tunesmith.config import ProjectConfig, SourceSpec, TaskType
from tunesmith.data.chat_formats import ChatFormatError, validate_messages
from tunesmith.data.clean import TextCleaner, dedup_key
from tunesmith.data.fields import ABSENT, FieldExpr
from tunesmith.data.sources import Raw
from tunesmith.errors import DataError

_NUMBER = re.compile(r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$")

MESSAGE_TYPE = pa.struct([("role", pa.string()), ("content", pa.string()), ("weight", pa.int8())])
TARGET_TYPES: dict[TaskType, tuple[str, pa.DataType]] = {
    TaskType.single_label: ("label", pa.string()),
    TaskType.multi_label: ("labels", pa.list_(pa.string())),
    TaskType.regression: ("score", pa.float64()),
    TaskType.chat: ("messages", pa.list_(MESSAGE_TYPE)),
}


def canonical_schema(task: TaskType) -> pa.Schema:
    target, target_type = TARGET_TYPES[task]
    fields = [("id", pa.string()), ("source", pa.string()), ("line", pa.int64()), ("group", pa.string())]
    if task != TaskType.chat:
        fields.append(("text", pa.string()))
    fields += [(target, target_type), ("split_hint", pa.string()), ("key", pa.uint64())]
    return pa.schema(fields)


@dataclass
class Rejection:
    stage: str  # read | validate | clean | length | exact_duplicate | conflict | near_duplicate | leakage
    source: str
    line: int
    reason: str
    field: str | None = None
    id: str | None = None
    kind: str = "rejected"  # rejected: bad input; removed: dropped by a cleaning policy
    record: Any = None

    def location(self) -> str:
        where = f"{self.source}:{self.line}"
        return f"{where}: field '{self.field}'" if self.field else where

    def to_json(self) -> str:
        return json.dumps(vars(self), ensure_ascii=False, default=str)  # vars, not asdict: no deep copy


class Corrections:
    """Relabelling by example id, from a CSV or JSONL file with `id` and `label` (or `score`)."""

    def __init__(self, path: Path | None, target: str) -> None:
        self.values: dict[str, Any] = {}
        self.lines: dict[str, int] = {}
        self.applied: set[str] = set()
        self.path = path
        if path is None:
            return
        from tunesmith.config import SourceSpec as _Spec
        from tunesmith.data.fields import FieldExpr as _Expr
        from tunesmith.data.sources import read_source

        column = "score" if target == "score" else "label"
        spec = _Spec(path=path)
        for raw in read_source(spec, {"id": _Expr("id"), column: _Expr(column)}):
            if raw.record is None:
                raise DataError(f"{raw.source}:{raw.line}: corrections file: {raw.error}")
            key, value = raw.record.get("id"), raw.record.get(column)
            if key in (None, "") or value in (None, ""):
                raise DataError(f"{raw.source}:{raw.line}: corrections need both `id` and `{column}`")
            key = str(key)
            if key in self.values:
                raise DataError(f"{raw.source}:{raw.line}: id '{key}' corrected twice (also line {self.lines[key]})")
            self.values[key], self.lines[key] = value, raw.line

    def get(self, example_id: str) -> Any:
        if example_id in self.values:
            self.applied.add(example_id)
            return self.values[example_id]
        return ABSENT

    def unused(self) -> list[str]:
        return sorted(set(self.values) - self.applied)


class Canonicalizer:
    def __init__(self, cfg: ProjectConfig, corrections: Corrections) -> None:
        self.cfg = cfg
        self.task = cfg.task.type
        self.cleaner = TextCleaner(cfg.data.clean)
        self.corrections = corrections
        self.labels = set(cfg.task.labels) if cfg.task.labels else None
        self.na = set(cfg.data.missing.na_values)
        self.seen_ids: dict[str, str] = {}
        self.prefixes: dict[str, str] = {}
        self.absent: Counter[str] = Counter()  # field -> rows of the current source without it
        self.keys_seen: set[str] = set()  # keys seen in the current source, for the error message
        self.label_changes: Counter[str] = Counter()  # "old -> new" from label_map
        self.missing: Counter[str] = Counter()  # "field: policy" -> rows with that field missing

    def fields_for(self, spec: SourceSpec) -> dict[str, FieldExpr]:
        task, t = self.cfg.task, self.task
        names = ["messages"] if t == TaskType.chat else ["text", "score" if t == TaskType.regression else "label"]
        exprs = {n: FieldExpr(spec.fields.get(n, getattr(task, n))) for n in names}
        for optional, default in (("id", task.id), ("group", self.cfg.data.split.group_by)):
            expr = spec.fields.get(optional, default)
            if expr:
                exprs[optional] = FieldExpr(expr)
        return exprs

    # -- one row ---------------------------------------------------------------------------

    def id_prefix(self, source: str, spec: SourceSpec) -> str:
        """Short, unique prefix for generated ids: the file's name (or path inside a folder source)."""
        if source not in self.prefixes:
            base = spec.path.parent if spec.path is not None else None
            if base is not None and Path(source.split("[")[0]).is_relative_to(base):
                short = str(Path(source).relative_to(base))
            else:
                short = source.rsplit(":", 1)[-1].rsplit("/", 1)[-1]
            if short in self.prefixes.values():
                short = f"{short}#{len(self.prefixes)}"
            self.prefixes[source] = short
        return self.prefixes[source]

    def row(self, raw: Raw, exprs: dict[str, FieldExpr], spec: SourceSpec) -> dict[str, Any] | Rejection:
        if raw.record is None:
            return Rejection("read", raw.source, raw.line, raw.error or "unreadable", record=raw.text)
        record = raw.record
        reject = _rejecter(raw)
        if len(self.keys_seen) < 50:
            self.keys_seen.update(list(record)[:50])

        example_id = self._id(record, exprs, raw, self.id_prefix(raw.source, spec))
        if isinstance(example_id, Rejection):
            return example_id
        out: dict[str, Any] = {"id": example_id, "source": raw.source, "line": raw.line, "split_hint": spec.split}
        group = exprs["group"](record) if "group" in exprs else None
        out["group"] = None if self._is_missing(group) else str(group)

        for name, expr in exprs.items():
            if name in ("id", "group"):
                continue
            value = expr(record)
            if value is ABSENT:
                self.absent[name] += 1
            if name in ("label", "score"):
                corrected = self.corrections.get(example_id)
                if corrected is not ABSENT:
                    value = corrected
            if self._is_missing(value):
                policy = self.cfg.data.missing.policy(name)
                self.missing[f"{name}: {policy}"] += 1
                what = f"no value for '{name}' (from '{expr.expr}')"
                if policy == "fail":
                    raise DataError(f"{raw.source}:{raw.line}: {what}, and data.missing.fields.{name} is 'fail'")
                if policy == "drop":
                    return reject("validate", f"missing value: {what}", name, example_id)
                value = self.cfg.data.missing.fill[name]
            try:
                out[name if name != "label" or self.task != TaskType.multi_label else "labels"] = self._convert(name, value)
            except ChatFormatError as err:
                return reject("validate", str(err), err.field, example_id)
            except ValueError as err:
                return reject("validate", str(err), name, example_id)

        if self.task == TaskType.chat:
            messages = out["messages"]
            for m in messages:
                m["content"] = self.cleaner(m["content"]) if self.cfg.data.clean.strip_html else m["content"].strip()
            if any(not m["content"] for m in messages):
                return reject("clean", "a message is empty after cleaning", "messages", example_id)
            key_text = "\n".join(f"{m['role']}: {dedup_key(m['content'])}" for m in messages)
        else:
            out["text"] = self.cleaner(out["text"])
            if not out["text"]:
                return reject("clean", "text is empty after cleaning (markup or whitespace only)", "text", example_id)
            key_text = dedup_key(out["text"])
        out["key"] = xxhash.xxh3_64_intdigest(key_text.encode("utf-8", "surrogatepass"))
        return out

    def _id(self, record: dict[str, Any], exprs: dict[str, FieldExpr], raw: Raw, prefix: str) -> str | Rejection:
        if "id" in exprs:
            value = exprs["id"](record)
            if self._is_missing(value):
                return Rejection("validate", raw.source, raw.line, "missing id", "id", record=record)
            example_id = str(value)
        else:
            example_id = f"{prefix}:{raw.line}"
        first = self.seen_ids.get(example_id)
        if first is not None:
            return Rejection("validate", raw.source, raw.line, f"duplicate id '{example_id}' (first seen at {first})",
                             "id", example_id, record=record)
        self.seen_ids[example_id] = f"{raw.source}:{raw.line}"
        return example_id

    def _is_missing(self, value: Any) -> bool:
        if value is ABSENT or value is None:
            return True
        if isinstance(value, float) and math.isnan(value):
            return True
        if isinstance(value, str) and value.strip() in self.na:
            return True
        return isinstance(value, list | tuple) and len(value) == 0

    def _convert(self, name: str, value: Any) -> Any:
        if name == "text":
            return _as_text(value)
        if name == "score":
            return _as_number(value)
        if name == "messages":
            return validate_messages(value)
        if self.task == TaskType.multi_label:
            items = value.split(self.cfg.task.label_separator) if isinstance(value, str) else value
            if not isinstance(items, list | tuple):
                raise ValueError(f"expected a list of labels or a '{self.cfg.task.label_separator}'-separated string, got {value!r}")
            labels = sorted({self._label(v) for v in items if str(v).strip()})
            if not labels:
                raise ValueError("no labels")
            return labels
        return self._label(value)

    def _label(self, value: Any) -> str:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ValueError(f"label must be a class name, got {type(value).__name__} {value!r}")
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        label = str(value).strip()
        mapped = self.cfg.data.annotate.label_map.get(label, label)
        if mapped != label:
            self.label_changes[f"{label} -> {mapped}"] += 1
        if self.labels is not None and mapped not in self.labels:
            raise ValueError(f"label '{mapped}' is not one of task.labels {sorted(self.labels)}")
        return mapped

    def start_source(self) -> None:
        self.absent.clear()
        self.keys_seen.clear()

    def check_columns_present(self, spec: SourceSpec, exprs: dict[str, FieldExpr], rows: int) -> None:
        """A field missing from *every* record of a source is a mapping error, not missing data."""
        for name, expr in exprs.items():
            if name not in ("id", "group") and rows > 0 and self.absent[name] >= rows:
                raise DataError(
                    f"{spec.describe()}: no record has '{expr.expr}' (for {name}); keys found: "
                    f"{sorted(self.keys_seen)[:20]}. Map it with task.{name} or the source's `fields:`"
                )


def _rejecter(raw: Raw):  # noqa: ANN202 - small closure keeps row() readable
    def reject(stage: str, reason: str, field: str | None, example_id: str | None) -> Rejection:
        return Rejection(stage, raw.source, raw.line, reason, field, example_id, record=raw.record)

    return reject


def _as_text(value: Any) -> str:
    if isinstance(value, bool) or isinstance(value, int | float):
        raise ValueError(f"expected text, got a number ({value!r}); is the column mapping right?")
    if not isinstance(value, str):
        raise ValueError(f"expected text, got {type(value).__name__}")
    if _NUMBER.match(value):
        raise ValueError(f"expected text, got a number ('{value.strip()}'); is the column mapping right?")
    return value


def _as_number(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"score must be a number, got a boolean ({value})")
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str) and _NUMBER.match(value):
        number = float(value)
    else:
        raise ValueError(f"score must be a number, got {value!r}")
    if not math.isfinite(number):
        raise ValueError(f"score must be finite, got {value!r}")
    return number
