"""Labels made in the tools teams already run, read back as annotations with their annotator ids kept
(so the agreement report covers them):

  label-studio   Label Studio's JSON export: tasks with `data` and `annotations[].result[]` whose
                 `value.choices` holds the label; `completed_by` is the annotator (its email when the
                 export carries user details); cancelled annotations are skips.
  argilla        Argilla exports, JSON array or JSONL: v2 records (`fields`, `responses: {question:
                 [{value, user_id}]}`, or flattened `question.responses` / `question.responses.users`),
                 v1 feedback records (`responses: [{user_id, values: {question: {value}}, status}]`;
                 discarded = skip, drafts ignored) and v1 text classification (`annotation`,
                 `annotation_agent`).
  csv            columns id and/or text, label, and annotator (else the `annotator` argument); an
                 empty label is a skip.

Each annotation finds its item by our item id (`data.item_id` in tasks we exported, `id` in CSV and
Argilla), then by its text; a text the task lacks becomes a new item. A record that cannot be used
raises DataError naming the file and the record (line) number.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import select

from tunesmith.collect.annotate import SOURCE_KEY, Queue, check_annotator, hashed_id, record, text_hash
from tunesmith.collect.annotate_io import check_item_id
from tunesmith.errors import DataError
from tunesmith.store.schema import AnnotationItem

FORMATS = ("label-studio", "argilla", "csv")


@dataclass
class Imported:
    """One answer read from a file, before it is matched to an item."""

    where: str  # file:record
    annotator: str
    label: str | None  # None: a skip
    item_id: str | None = None
    text: str | None = None


@dataclass
class ImportResult:
    annotations: int = 0
    skips: int = 0
    items_added: int = 0
    annotators: list[str] = field(default_factory=list)


def import_annotations(queue: Queue, path: str | Path, fmt: str, *, annotator: str | None = None,
                       question: str | None = None, text_field: str = "text") -> ImportResult:
    """Read `path` (`fmt` one of FORMATS) into the task, in one transaction: a bad record imports nothing.
    `question`: the Label Studio / Argilla question holding the label when a file has several;
    `annotator`: CSV rows without an annotator column; `text_field`: the text's key in task data / fields."""
    path = Path(path)
    if fmt not in FORMATS:
        raise DataError(f"--format {fmt!r}: choose one of {list(FORMATS)}")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    asked: set[str] = set()  # every question the file's records hold
    if fmt == "label-studio":
        answers = list(_label_studio(path, question, text_field, asked))
    elif fmt == "argilla":
        answers = list(_argilla(path, question, text_field, asked))
    else:
        answers = list(_csv(path, annotator, text_field))
    if question is not None and asked and question not in asked:  # every answer read as a skip, erasing labels
        raise DataError(f"{path}: no question named {question!r}; its questions are {sorted(asked)} (--question)")
    if question is None and len(asked) > 1:  # each record answering one of them: a toxic "yes" became a spam "yes"
        raise DataError(f"{path}: several questions ({sorted(asked)}); say which holds the label with --question")
    labels = set(queue.task.labels)
    for a in answers:
        if a.label is not None and a.label not in labels:
            raise DataError(f"{a.where}: label {a.label!r} is not one of task {queue.task.name!r}'s labels {queue.task.labels}")
        try:
            check_annotator(a.annotator)
        except Exception as err:  # noqa: BLE001 - reworded with the record it came from
            raise DataError(f"{a.where}: {err}") from None
        if a.item_id is not None:
            check_item_id(a.item_id, a.where)
    return _save(queue, answers, fmt, path)


def _save(queue: Queue, answers: list[Imported], fmt: str, path: Path) -> ImportResult:
    result, seen = ImportResult(), set()
    task = queue.task.name
    # (item, annotator) -> where: one answer each, or the first was overwritten and both counted. Keyed on the
    # stored item, as one row may name it by id and another by its text.
    first: dict[tuple[str, str], str] = {}
    with queue.store.session() as s:
        by_id = {i.item_id: i for i in s.scalars(select(AnnotationItem).where(AnnotationItem.task == task))}
        by_hash = {i.text_hash: i for i in by_id.values()}
        for a in answers:
            item = by_id.get(a.item_id) if a.item_id is not None else None
            if item is not None and a.text is not None and a.text.strip() and text_hash(a.text) != item.text_hash:
                # an id pasted on the wrong row labels another text than the annotator read
                raise DataError(f"{a.where}: id {a.item_id!r} is {_short(item.text)!r} in task {task!r} but the "
                                f"record's text is {_short(a.text)!r}; fix the id or the text")
            if item is None and a.text is not None:
                item = by_hash.get(text_hash(a.text))
            if item is None:
                if not a.text or not a.text.strip():
                    raise DataError(f"{a.where}: item {a.item_id!r} is not in task {task!r} "
                                    "and the record has no text to add it with")
                item = AnnotationItem(task=task, item_id=a.item_id or hashed_id(a.text), text=a.text, text_hash=text_hash(a.text),
                                      meta={SOURCE_KEY: a.where, "imported_from": fmt}, created=time.time())
                s.add(item)
                s.flush()
                by_id[item.item_id], by_hash[item.text_hash] = item, item
                result.items_added += 1
            key = (item.item_id, a.annotator)
            if key in first:
                raise DataError(f"{a.where}: {a.annotator!r} answered item {item.item_id!r} already at {first[key]}; "
                                "keep one of them")
            first[key] = a.where
            record(s, item, a.annotator, a.label, fmt)
            result.skips += a.label is None
            result.annotations += a.label is not None
            seen.add(a.annotator)
    result.annotators = sorted(seen)
    return result


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


# -- readers -------------------------------------------------------------------------------------


def _records(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(file:record, record) from a JSON array (or an object holding one) or JSONL, by extension."""
    from tunesmith.data.sources import read_json, read_jsonl

    rows = read_jsonl(path, None) if path.suffix.lower() in (".jsonl", ".ndjson") else read_json(path, None)
    for raw in rows:
        if raw.record is None:
            raise DataError(f"{raw.source}:{raw.line}: {raw.error}")
        yield f"{raw.source}:{raw.line}", raw.record


def _text_of(data: Any, text_field: str, where: str) -> str | None:
    if not isinstance(data, dict):
        return None
    if text_field in data:  # a null or number there is no text: "None" became an item's text
        value = data[text_field]
        return value if isinstance(value, str) and value else None
    texts = [v for k, v in data.items() if isinstance(v, str) and k != "item_id"]  # the id is no text
    return texts[0] if len(texts) == 1 else None


def _id_of(value: Any) -> str | None:
    """An id as text; 0 is an id (`value and str(value)` kept it a number, failing later with a TypeError)."""
    return None if value in (None, "") else str(value)


def _one(value: Any, where: str) -> str:
    """A single-label answer: a string, or a list holding one."""
    if isinstance(value, list):
        if len(value) != 1:
            raise DataError(f"{where}: {len(value)} labels chosen ({value}); annotation tasks are single-label")
        value = value[0]
    if not isinstance(value, str | int | float | bool) or isinstance(value, bool):
        raise DataError(f"{where}: label {value!r} is not a text")
    return str(value)


def _pick_question(names: set[str], question: str | None, where: str, asked: set[str]) -> str | None:
    asked |= names
    if question is not None:
        return question if question in names else None
    if len(names) > 1:
        raise DataError(f"{where}: several questions ({sorted(names)}); say which holds the label with --question")
    return next(iter(names), None)


def _label_studio(path: Path, question: str | None, text_field: str, asked: set[str]) -> Iterator[Imported]:
    for where, task in _records(path):
        data = task.get("data")
        if not isinstance(data, dict) or not isinstance(task.get("annotations", []), list):
            raise DataError(f"{where}: not a Label Studio task (needs `data` and `annotations`); export the project as JSON")
        item_id = _id_of(data.get("item_id"))
        text = _text_of(data, text_field, where)
        for k, ann in enumerate(task.get("annotations", []), start=1):
            at = f"{where} annotation {k}"
            if not isinstance(ann, dict):
                raise DataError(f"{at}: expected an object")
            who = ann.get("completed_by")
            if isinstance(who, dict):
                who = who.get("email") or who.get("id")
            if who in (None, ""):
                raise DataError(f"{at}: no `completed_by`: whose annotation is it?")
            annotator = str(who) if isinstance(who, str) and "@" in who else f"label-studio:{who}"
            if ann.get("was_cancelled"):
                yield Imported(at, annotator, None, item_id, text)
                continue
            results = [r for r in ann.get("result") or [] if isinstance(r, dict) and "choices" in (r.get("value") or {})]
            chosen = _pick_question({str(r.get("from_name")) for r in results}, question, at, asked)
            picked = [r for r in results if str(r.get("from_name")) == chosen]
            if not picked:
                yield Imported(at, annotator, None, item_id, text)  # submitted empty: nothing chosen
                continue
            yield Imported(at, annotator, _one(picked[0]["value"]["choices"], at), item_id, text)


def _argilla(path: Path, question: str | None, text_field: str, asked: set[str]) -> Iterator[Imported]:
    for where, rec in _records(path):
        item_id = _id_of(rec.get("id")) or _id_of(rec.get("external_id"))
        fields = rec.get("fields") if isinstance(rec.get("fields"), dict) else rec.get("inputs")
        text = _text_of(fields, text_field, where) if isinstance(fields, dict) else (
            str(rec[text_field]) if isinstance(rec.get(text_field), str) else None)
        responses = rec.get("responses")
        if isinstance(responses, dict):  # v2 nested: {question: [{value, user_id}]}
            chosen = _pick_question({q for q, v in responses.items() if v}, question, where, asked)
            for k, r in enumerate(responses.get(chosen) or [] if chosen else [], start=1):
                at = f"{where} response {k}"
                if not isinstance(r, dict) or "user_id" not in r:
                    raise DataError(f"{at}: expected {{value, user_id}}")
                if r.get("status") == "draft":  # not submitted: no label yet (as v1's drafts)
                    continue
                skip = r.get("status") == "discarded"
                yield Imported(at, f"argilla:{r['user_id']}", None if skip else _one(r.get("value"), at), item_id, text)
        elif isinstance(responses, list):  # v1 feedback: [{user_id, values: {question: {value}}, status}]
            for k, r in enumerate(responses, start=1):
                at = f"{where} response {k}"
                if not isinstance(r, dict) or "user_id" not in r:
                    raise DataError(f"{at}: expected {{user_id, values, status}}")
                status = r.get("status", "submitted")
                if status == "draft":
                    continue
                annotator = f"argilla:{r['user_id']}"
                if status == "discarded":
                    yield Imported(at, annotator, None, item_id, text)
                    continue
                values = r.get("values") or {}
                chosen = _pick_question(set(values), question, at, asked)
                if chosen is None or not isinstance(values.get(chosen), dict):
                    raise DataError(f"{at}: no answer to {question or 'the question'} in `values`")
                yield Imported(at, annotator, _one(values[chosen].get("value"), at), item_id, text)
        elif any(k.endswith(".responses") for k in rec):  # v2 flattened: question.responses + .users
            chosen = _pick_question({k[: -len(".responses")] for k in rec if k.endswith(".responses")}, question, where, asked)
            values = rec.get(f"{chosen}.responses") or []
            users = rec.get(f"{chosen}.responses.users") or []
            status = rec.get(f"{chosen}.responses.status") or [None] * len(values)
            if len(users) != len(values):
                raise DataError(f"{where}: {len(values)} responses but {len(users)} users in {chosen}.responses.users")
            if len(status) != len(values):  # zip dropped the responses past the shorter list
                raise DataError(f"{where}: {len(values)} responses but {len(status)} statuses in {chosen}.responses.status")
            for k, (value, user, st) in enumerate(zip(values, users, status, strict=True), start=1):
                at = f"{where} response {k}"
                if st == "draft":
                    continue
                yield Imported(at, f"argilla:{user}", None if st == "discarded" else _one(value, at), item_id, text)
        elif "annotation" in rec:  # v1 text classification
            if rec["annotation"] is None:
                continue
            agent = rec.get("annotation_agent") or "argilla"
            yield Imported(where, f"argilla:{agent}", _one(rec["annotation"], where), item_id, text)
        else:
            raise DataError(f"{where}: not an Argilla record (no `responses` or `annotation`); export the dataset "
                            "with `records.to_json()` or `to_list()`")


def _csv(path: Path, annotator: str | None, text_field: str) -> Iterator[Imported]:
    import csv

    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        if "label" not in columns or not ({"id", text_field} & set(columns)):
            raise DataError(f"{path}:1: a CSV of annotations needs a `label` column and `id` and/or `{text_field}` "
                            f"(and `annotator`); found {columns}")
        if "annotator" not in columns and not annotator:
            raise DataError(f"{path}:1: no `annotator` column; say whose labels these are with --annotator")
        try:
            for row in reader:
                where = f"{path}:{reader.line_num}"
                if None in row or any(v is None for v in row.values()):
                    raise DataError(f"{where}: {'more' if None in row else 'fewer'} fields than the header's {len(columns)}")
                who = (row.get("annotator") or "").strip() or annotator
                if not who:
                    raise DataError(f"{where}: empty annotator")
                label = (row.get("label") or "").strip() or None
                yield Imported(where, who, label, (row.get("id") or "").strip() or None, row.get(text_field) or None)
        except csv.Error as err:
            raise DataError(f"{path}:{reader.line_num}: malformed CSV: {err}") from None
