"""From a raw input record to one canonical example, or a rejection that says where and why.

Canonical columns: id, source, line, group, per task `text` + `label` / `labels` / `score`,
`messages` for chat, or `messages` (the prompt) + `chosen` + `rejected` for preference, then
`provenance` (a collected record's origin as JSON, null for plain files) and `synthetic`; and the
working columns split_hint, no_test and key, which never reach the written splits.
Everything here is row-local, so it runs while the file streams.
"""

from __future__ import annotations

import ast
import json
import math
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import xxhash

from tunesmith.config import ProjectConfig, SourceSpec, TaskType
from tunesmith.data.chat_formats import (
    OPENAI_PREFERENCE_KEYS,
    ChatFormatError,
    Unconverted,
    validate_answer,
    validate_messages,
    validate_prompt,
)
from tunesmith.data.clean import dedup_key
from tunesmith.data.fields import ABSENT, FieldExpr
from tunesmith.data.raw import Raw
from tunesmith.data.sources import read_source
from tunesmith.errors import DataError
from tunesmith.tasks.text import TextCleaner

PROVENANCE_KEY = "_provenance"  # collect/sink.py writes it; a record's origin, never one of its fields
GROUP_KEY = "_group"  # a collector's grouping (a survey's respondent): the group when the config names none
RESERVED_KEYS = (PROVENANCE_KEY, GROUP_KEY)
# A character someone can see: not whitespace, a control character, or an invisible format character
# (zero-width space/joiners, BOM, soft hyphen, word joiner, bidi marks). Searched, so it stops at the first.
VISIBLE = re.compile(r"[^\s\x00-\x1f\x7f-\x9f\u00ad\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff]")
_NUMBER = re.compile(r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$")

MESSAGE_TYPE = pa.struct([("role", pa.string()), ("content", pa.string()), ("weight", pa.int8())])
TARGET_TYPES: dict[TaskType, tuple[str, pa.DataType]] = {
    TaskType.single_label: ("label", pa.string()),
    TaskType.multi_label: ("labels", pa.list_(pa.string())),
    TaskType.regression: ("score", pa.float64()),
    TaskType.chat: ("messages", pa.list_(MESSAGE_TYPE)),
    TaskType.preference: ("chosen", pa.string()),  # with `messages` (the prompt) and `rejected`: see canonical_schema
}
# A preference pair: the prompt conversation (no trailing assistant turn, weights null) and two answers.
PREFERENCE_COLUMNS: list[tuple[str, pa.DataType]] = [
    ("messages", pa.list_(MESSAGE_TYPE)), ("chosen", pa.string()), ("rejected", pa.string()),
]


def canonical_schema(task: TaskType) -> pa.Schema:
    target, target_type = TARGET_TYPES[task]
    fields = [("id", pa.string()), ("source", pa.string()), ("line", pa.int64()), ("group", pa.string())]
    if task == TaskType.preference:
        fields += PREFERENCE_COLUMNS
    elif task == TaskType.chat:
        fields.append((target, target_type))
    else:
        fields += [("text", pa.string()), (target, target_type)]
    fields += PROVENANCE_COLUMNS
    fields += [("split_hint", pa.string()), ("no_test", pa.bool_()), ("key", pa.uint64())]
    return pa.schema(fields)


PROVENANCE_COLUMNS: list[tuple[str, pa.DataType]] = [("provenance", pa.string()), ("synthetic", pa.bool_())]


def with_provenance_columns(table: pa.Table) -> pa.Table:
    """A split table of a dataset prepared before provenance was kept: the columns added (null, false)."""
    for name, kind in PROVENANCE_COLUMNS:
        if name not in table.column_names:
            fill = pa.nulls(table.num_rows, kind) if name == "provenance" else pa.array([False] * table.num_rows, kind)
            table = table.append_column(pa.field(name, kind), fill)
    return table



def _key_text(value: Any) -> str:
    """An id or group as text: an integer read as a float (a Parquet, Excel or pandas column with a gap) or a DECIMAL is
    its digits, so customer 3 is "3" in every source; "3.0" had matched no correction, and a group had straddled splits."""
    if isinstance(value, Decimal) and value == value.to_integral_value():
        return str(int(value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)

class _OrOpenAIColumns:
    """Header check for a preference field: its configured column, or OpenAI's DPO columns."""

    def __init__(self, expr: FieldExpr) -> None:
        self.inner = expr
        self.expr = f"{expr.expr}' or OpenAI's 'input' + 'preferred_output"  # shown as: prompt -> '<this>'

    def present_in(self, columns: list[str]) -> bool:
        return self.inner.present_in(columns) or all(k in columns for k in OPENAI_PREFERENCE_KEYS[:2])


@dataclass
class Rejection:
    stage: str  # read | validate | template | clean | length | exact_duplicate | conflict | near_duplicate | leakage
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
        # strict JSON: NaN and Infinity are not JSON (jq and most parsers refused the quarantine file); the value
        # is kept as text ("nan", "inf", "-inf") so the entry still shows what the row held
        return json.dumps({k: _finite(v) for k, v in vars(self).items()}, ensure_ascii=False, allow_nan=False,
                          default=str)  # vars, not asdict: no deep copy


def _finite(value: Any) -> Any:
    """`value` with every NaN or infinite float (in dicts and lists too) as its text."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(float(value))  # "nan", "inf", "-inf" (numpy's float64 prints the same)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


class Corrections:
    """Relabelling by example id, from a CSV or JSONL file with `id` and `label` (or `score`)."""

    def __init__(self, path: Path | None, target: str) -> None:
        self.values: dict[str, Any] = {}
        self.lines: dict[str, int] = {}
        self.applied: set[str] = set()
        self.path = path
        if path is None:
            return
        column = "score" if target == "score" else "label"
        spec = SourceSpec(path=path)
        for raw in read_source(spec, {"id": FieldExpr("id"), column: FieldExpr(column)}):
            if raw.record is None:
                raise DataError(f"{raw.source}:{raw.line}: corrections file: {raw.error}")
            key, value = raw.record.get("id"), raw.record.get(column)
            if key in (None, "") or value in (None, ""):
                raise DataError(f"{raw.source}:{raw.line}: corrections need both `id` and `{column}`")
            key = _key_text(key)  # an id column read as floats (a gap in it): 1.0 is example "1"
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
        # a class named like a missing marker (a toxicity set's "None") that the config lists is a label, not a gap
        self.named_labels = {unicodedata.normalize("NFC", x) for x in cfg.task.labels or []} | set(cfg.data.annotate.label_map)
        self.seen_ids: dict[str, str] = {}
        self.prefixes: dict[str, str] = {}
        self.absent: Counter[str] = Counter()  # field -> rows of the current source without it
        self.keys_seen: set[str] = set()  # keys seen in the current source, for the error message
        self.label_changes: Counter[str] = Counter()  # "old -> new" from label_map
        self.missing: Counter[str] = Counter()  # "field: policy" -> rows with that field missing

    def fields_for(self, spec: SourceSpec) -> dict[str, FieldExpr]:
        task, t = self.cfg.task, self.task
        if t == TaskType.preference:
            names = ["prompt", "chosen", "rejected"]
        elif t == TaskType.chat:
            names = ["messages"]
        else:
            names = ["text", "score" if t == TaskType.regression else "label"]
        # A synthetic source writes {"text", "label"} whatever the task's own files call them.
        exprs = {n: FieldExpr(spec.fields.get(n, n if spec.kind == "synthetic" else getattr(task, n))) for n in names}
        for optional, default in (("id", task.id), ("group", self.cfg.data.split.group_by)):
            # nor has it the task's id or group columns: every synthetic row was quarantined ("missing id") or
            # prepare failed ("no record has 'user'"); its rows get file:line ids and no group
            expr = spec.fields.get(optional, None if spec.kind == "synthetic" else default)
            if expr:
                exprs[optional] = FieldExpr(expr)
        return exprs

    def header_fields(self, exprs: dict[str, FieldExpr], spec: SourceSpec | None = None) -> dict[str, Any]:
        """What a tabular reader checks its header against: preference data may be in OpenAI's form instead,
        and a field the source has a default for need not be a column."""
        exprs = {n: e for n, e in exprs.items() if spec is None or n not in spec.defaults}
        if self.task != TaskType.preference:
            return exprs
        return {n: _OrOpenAIColumns(e) if n in ("prompt", "chosen", "rejected") else e for n, e in exprs.items()}

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
        if isinstance(raw, Unconverted):  # read, but its Alpaca/ShareGPT fields are not valid: named as a message's are
            return Rejection("validate", raw.source, raw.line, raw.error or "invalid", raw.field, record=raw.text)
        if raw.record is None:
            return Rejection("read", raw.source, raw.line, raw.error or "unreadable", record=raw.text)
        record = raw.record
        reserved = {k: record[k] for k in RESERVED_KEYS if k in record}
        if reserved:  # a collector's bookkeeping, never a field the config can map
            record = {k: v for k, v in record.items() if k not in RESERVED_KEYS}
        reject = _rejecter(raw)
        if len(self.keys_seen) < 50:
            self.keys_seen.update(list(record)[:50])

        example_id = self._id(record, exprs, raw, self.id_prefix(raw.source, spec), spec)
        if isinstance(example_id, Rejection):
            return example_id
        out: dict[str, Any] = {"id": example_id, "source": raw.source, "line": raw.line, "split_hint": spec.split}
        if "group" in exprs:
            group = self._value("group", exprs["group"], record, spec)
            if group is ABSENT:  # in no record at all: a misspelt group_by, refused as for a CSV's header
                self.absent["group"] += 1
        else:  # no grouping configured: a collector's own (a survey's respondent), else the source's default
            group = reserved.get(GROUP_KEY, spec.defaults.get("group"))
        out["group"] = None if self._is_missing(group) else _key_text(group)
        out.update(self._provenance(reserved.get(PROVENANCE_KEY), spec))
        if self.task == TaskType.preference:
            return self._preference(record, exprs, out, raw, reject, spec)
        if self.task == TaskType.chat:
            offered = next((k for k in ("tools", "functions") if record.get(k)), None)
            if offered:  # trained without them, the answers that call them would be learnt from thin air
                return reject("validate", f"{offered} are not supported for chat data yet (the conversation would be "
                              "trained without them)", offered, example_id)

        for name, expr in exprs.items():
            if name in ("id", "group"):
                continue
            value = self._value(name, expr, record, spec)
            if value is ABSENT:
                self.absent[name] += 1
            if expr.is_template:  # "{title}. {bdy}": a misspelt placeholder read as "" in every record
                self.absent.update(f"{name}\0{r}" for r in expr.absent_refs(record))
            if name in ("label", "score"):
                corrected = self.corrections.get(example_id)
                if corrected is not ABSENT:
                    value = corrected
            if self._is_missing(value) and not (name == "label" and self._is_a_label(value)):
                value = self._when_missing(name, expr.expr, name, raw, reject, example_id)
                if isinstance(value, Rejection):
                    return value
            try:
                out[name if name != "label" or self.task != TaskType.multi_label else "labels"] = self._convert(name, value)
            except ChatFormatError as err:
                return reject("validate", str(err), err.field, example_id)
            except (ValueError, OverflowError) as err:  # OverflowError: an integer past a float (10**400)
                return reject("validate", str(err), name, example_id)

        if self.task == TaskType.chat:
            messages = out["messages"]
            for m in messages:
                m["content"] = self.cleaner(m["content"]) if self.cfg.data.clean.strip_html else m["content"].strip()
            if any(not VISIBLE.search(m["content"]) for m in messages):
                return reject("clean", "a message is empty after cleaning", "messages", example_id)
            key_text = "\n".join(f"{m['role']}: {dedup_key(m['content'])}" for m in messages)
        else:
            out["text"] = self.cleaner(out["text"])
            if not VISIBLE.search(out["text"]):
                return reject("clean", "text is empty after cleaning (markup, whitespace or invisible characters "
                              "only)", "text", example_id)
            key_text = dedup_key(out["text"])
        out["key"] = xxhash.xxh3_64_intdigest(key_text.encode("utf-8", "surrogatepass"))
        return out

    def _value(self, name: str, expr: FieldExpr, record: dict[str, Any], spec: SourceSpec) -> Any:
        """The field's value in the record, or the source's `defaults` value when the record lacks it."""
        value = expr(record, self._is_missing)
        if name in spec.defaults and self._is_missing(value):
            return spec.defaults[name]
        return value

    @staticmethod
    def _provenance(prov: Any, spec: SourceSpec) -> dict[str, Any]:
        """The provenance column (JSON) and the synthetic flag; synthetic rows stay out of the test split
        unless their source allows it (synthetic.in_test, or a plain file sent to test as a whole)."""
        prov = parse_provenance(prov)
        if prov is None:
            return {"provenance": None, "synthetic": False, "no_test": False}
        synthetic = prov.get("kind") == "synthetic"
        allowed = spec.synthetic.in_test if spec.synthetic is not None else spec.split == "test"
        return {"provenance": json.dumps(prov, ensure_ascii=False, sort_keys=True, default=str),
                "synthetic": synthetic, "no_test": synthetic and not allowed}

    def _when_missing(self, name: str, source: str, field: str, raw: Raw, reject: Any, example_id: str) -> Any:
        """The fill value for a missing field, a Rejection (policy `drop`), or DataError (policy `fail`)."""
        policy = self.cfg.data.missing.policy(name)
        self.missing[f"{name}: {policy}"] += 1
        what = f"no value for '{name}' (from '{source}')"
        if policy == "fail":
            raise DataError(f"{raw.source}:{raw.line}: {what}, and data.missing.fields.{name} is 'fail'")
        if policy == "drop":
            return reject("validate", f"missing value: {what}", field, example_id)
        return self.cfg.data.missing.fill[name]

    def _preference(self, record: dict[str, Any], exprs: dict[str, FieldExpr], out: dict[str, Any], raw: Raw,
                     reject: Any, spec: SourceSpec) -> dict[str, Any] | Rejection:
        """A prompt and two answers, from OpenAI's DPO form or from configured prompt/chosen/rejected fields.

        Errors name the field as the input spells it: `input.messages.2.role`, `preferred_output`,
        or the task's `prompt` / `chosen` / `rejected` for the common form.
        """
        example_id = out["id"]
        # OpenAI's form is recognised by its keys, unless the configured prompt field is there too
        # (a mapping the user wrote wins over a guess).
        openai = "input" in record and "preferred_output" in record and exprs["prompt"](record) is ABSENT
        found: dict[str, tuple[Any, str, str]] = {}  # name -> (value, field named in errors, where it came from)
        if openai:
            inp = record["input"]
            if not isinstance(inp, dict):
                return reject("validate", f"must be an object with `messages`, got {type(inp).__name__}", "input", example_id)
            if inp.get("tools"):
                return reject("validate", "tools are not supported for preference data yet (the prompt would be "
                              "trained without them)", "input.tools", example_id)
            found["prompt"] = (inp.get("messages", ABSENT), "input.messages", "input.messages")
            for name, key in (("chosen", "preferred_output"), ("rejected", "non_preferred_output")):
                found[name] = (record.get(key, ABSENT), key, key)
        else:
            for name in ("prompt", "chosen", "rejected"):
                value = self._value(name, exprs[name], record, spec)
                if value is ABSENT:
                    self.absent[name] += 1
                found[name] = (value, name, exprs[name].expr)

        values: dict[str, Any] = {}
        for name, (value, field, source) in found.items():
            if self._is_missing(value):
                value = self._when_missing(name, source, field, raw, reject, example_id)
                if isinstance(value, Rejection):
                    return value
            try:
                values[name] = validate_prompt(value, field) if name == "prompt" else validate_answer(value, field)
            except ChatFormatError as err:
                return reject("validate", str(err), err.field, example_id)
        prompt, chosen, rejected = values["prompt"], values["chosen"], values["rejected"]
        same = f"{found['chosen'][1]} and {found['rejected'][1]} are the same answer, so there is nothing to prefer"
        if chosen.strip() == rejected.strip():
            return reject("validate", same, found["rejected"][1], example_id)

        clean = self.cleaner if self.cfg.data.clean.strip_html else str.strip  # as for chat messages
        for m in prompt:
            m["content"] = clean(m["content"])
        if any(not VISIBLE.search(m["content"]) for m in prompt):
            return reject("clean", "a prompt message is empty after cleaning", found["prompt"][1], example_id)
        chosen, rejected = clean(chosen), clean(rejected)
        for name, text in (("chosen", chosen), ("rejected", rejected)):
            if not VISIBLE.search(text):
                return reject("clean", "the answer is empty after cleaning (markup, whitespace or invisible characters "
                              "only)", found[name][1], example_id)
        if chosen == rejected:
            return reject("clean", f"{same} (after cleaning)", found["rejected"][1], example_id)

        out.update(messages=prompt, chosen=chosen, rejected=rejected)
        key_text = "\n".join([*(f"{m['role']}: {dedup_key(m['content'])}" for m in prompt),
                              f"chosen: {dedup_key(chosen)}", f"rejected: {dedup_key(rejected)}"])
        out["key"] = xxhash.xxh3_64_intdigest(key_text.encode("utf-8", "surrogatepass"))
        return out

    def _id(self, record: dict[str, Any], exprs: dict[str, FieldExpr], raw: Raw, prefix: str,
            spec: SourceSpec) -> str | Rejection:
        if "id" in exprs:
            value = self._value("id", exprs["id"], record, spec)
            if self._is_missing(value):
                return Rejection("validate", raw.source, raw.line, "missing id", "id", record=record)
            # an integer id read as a float (a Parquet or Excel column with a gap) is its digits: "1.0" matched no
            # correction or annotation that names 1
            example_id = _key_text(value)
        else:
            example_id = f"{prefix}:{raw.line}" + (f"/{raw.part}" if raw.part else "")
        first = self.seen_ids.get(example_id)
        if first is not None:
            return Rejection("validate", raw.source, raw.line, f"duplicate id '{example_id}' (first seen at {first})",
                             "id", example_id, record=record)
        self.seen_ids[example_id] = f"{raw.source}:{raw.line}"
        return example_id

    def _is_a_label(self, value: Any) -> bool:
        """A class the config names (task.labels, a label_map key) that reads like a missing marker: "None", "NA"."""
        return isinstance(value, str) and value.strip() in self.named_labels

    def _is_missing(self, value: Any) -> bool:
        if value is ABSENT or value is None:
            return True
        if isinstance(value, float) and math.isnan(value):
            return True
        if isinstance(value, str) and value.strip() in self.na:
            return True
        # an empty list of labels is an answer of its own in a multi-label task: none of the labels applies
        return isinstance(value, list | tuple) and len(value) == 0 and self.task != TaskType.multi_label

    def _convert(self, name: str, value: Any) -> Any:
        if name == "text":
            return _as_text(value)
        if name == "score":
            return _as_number(value)
        if name == "messages":
            return validate_messages(value)
        if self.task == TaskType.multi_label:
            items = written = _listed(value) if isinstance(value, str) else value
            if isinstance(items, int | float | Decimal):  # one label read as a number (Excel's 3, JSON's 3): "1;3" was fine
                items = [items]
            if isinstance(items, str):
                items = items.split(self.cfg.task.label_separator)
            if not isinstance(items, list | tuple):
                raise ValueError(f"expected a list of labels or a '{self.cfg.task.label_separator}'-separated string, got {value!r}")
            labels = sorted({self._label(v) for v in items if str(v).strip()})
            if not labels and isinstance(written, str):  # "; ;": separators and nothing between them ("[]" is a list)
                raise ValueError("no labels")
            return labels
        return self._label(value)

    def _label(self, value: Any) -> str:
        if isinstance(value, bool):  # is_spam: true in JSON or Parquet; spelt as JSON spells it, for task.labels
            value = "true" if value else "false"
        if isinstance(value, Decimal):  # a SQL or Spark export's DECIMAL column
            value = int(value) if value == value.to_integral_value() else float(value)
        if not isinstance(value, str | int | float):
            raise ValueError(f"label must be a class name, got {type(value).__name__} {value!r}")
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        # composed (NFC): "café" spelt with a combining accent (macOS file names, some exports) is the same class
        label = unicodedata.normalize("NFC", str(value).strip())
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
            missing = [r for r in expr.refs if expr.is_template and rows > 0 and self.absent[f"{name}\0{r}"] >= rows]
            if missing and self.absent[name] < rows:
                raise DataError(f"{spec.describe()}: no record has '{missing[0]}' (in the {name} template "
                                f"'{expr.expr}', where it would read as nothing); keys found: {sorted(self.keys_seen)[:20]}")
            if name != "id" and rows > 0 and self.absent[name] >= rows:
                openai = " (or write OpenAI's DPO form: input, preferred_output, non_preferred_output)" \
                    if self.task == TaskType.preference else ""
                fix = "Set data.split.group_by to one of them (or the source's `fields: {group: ...}`)" if name == "group" \
                    else f"Map it with task.{name} or the source's `fields:`{openai}"
                raise DataError(f"{spec.describe()}: no record has '{expr.expr}' (for {name}); keys found: "
                                f"{sorted(self.keys_seen)[:20]}. {fix}")


def parse_provenance(value: Any) -> dict[str, Any] | None:
    """A record's provenance as an object, or None. A CSV (an annotation export) holds it as the JSON text of its
    cell, and a cell left empty or edited by hand is no provenance (a string there failed the report's summary)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    return value if isinstance(value, dict) and value else None


def _rejecter(raw: Raw):  # noqa: ANN202 - small closure keeps row() readable
    def reject(stage: str, reason: str, field: str | None, example_id: str | None) -> Rejection:
        return Rejection(stage, raw.source, raw.line, reason, field, example_id, record=raw.record)

    return reject


def _listed(value: str) -> Any:
    """A list written out as text ("['food', 'price']": pandas' to_csv of a list column; '["a"]': JSON) as the list,
    else the string as it is (its items separated by task.label_separator). The classes were "['food'" and
    "'price']" before."""
    text = value.strip()
    if not (text.startswith("[") and text.endswith("]")):
        return value
    for parse in (json.loads, ast.literal_eval):
        try:
            parsed = parse(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            continue
        if isinstance(parsed, list) and all(isinstance(v, str | int) and not isinstance(v, bool) for v in parsed):
            return parsed
    return value  # "[bug]": a class name in brackets


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
    if isinstance(value, int | float | Decimal):  # Decimal: a SQL or Spark export's DECIMAL column
        number = float(value)
    elif isinstance(value, str) and _NUMBER.match(value):
        number = float(value)
    elif isinstance(value, str) and _NUMBER.match(value.replace(",", ".", 1)):  # 3,5 or 1,000: which one?
        raise ValueError(f"score must be a number, got {value!r}; write decimals with a point "
                         f"({value.strip().replace(',', '.', 1)}) and thousands without a separator")
    else:
        raise ValueError(f"score must be a number, got {value!r}")
    if not math.isfinite(number):
        raise ValueError(f"score must be finite, got {value!r}")
    return number
