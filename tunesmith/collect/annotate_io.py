"""Items in, labelled rows out: what `tunesmith annotate DATA` loads into a task, and what it exports.

In: a file any `data.sources` reader takes (collected JSONL, CSV, parquet, ...) or a prepared dataset
folder (its splits). The item id is the record's `id` field, or the hash of its text: loading the
same data twice adds nothing.

Out: a JSONL or CSV file ready as a `data.sources` entry: text, label (the majority of the human
labels; a model's accepted label when no human gave one), n_annotations, agreement (every human
label the same), the annotators, and the record's fields and provenance as loaded. Items whose
human labels tie have no majority and are left out (the result counts them). Label Studio gets the
items nobody has labelled yet, as tasks to import.
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.collect.annotate import SOURCE_KEY, ItemLabels, NewItem, Queue, add_items, hashed_id
from tunesmith.collect.sink import COLLECTOR, PROVENANCE_KEY, now
from tunesmith.data.records import GROUP_KEY, parse_provenance
from tunesmith.errors import DataError

DERIVED_COLUMNS = ("label_id", "label_ids", "n_tokens")  # a prepared dataset's columns computed from its labels and texts
# what `data prepare` wrote about where a row came from: recomputed from the export's `_provenance` (and `_group`)
# when it is prepared again, so as plain fields they were stale copies (a synthetic row's flag lost its meaning)
ORIGIN_COLUMNS = ("provenance", "synthetic", "source", "line", "group")


@dataclass
class Loaded:
    items: list[NewItem]
    empty: int  # records whose text is blank: nothing to label


def read_items(path: str | Path, text_field: str = "text", id_field: str = "id", split: str | None = None) -> Loaded:
    """The records of a data file or a prepared dataset folder as items to label."""
    from tunesmith.artifacts import DatasetVersion, is_dataset

    path = Path(path)
    if is_dataset(path):
        version = DatasetVersion(path)
        splits = [split] if split else [s for s in ("train", "validation", "test") if (path / f"{s}.parquet").is_file()]
        records = []
        for name in splits:
            for line, row in enumerate(version.table(name).to_pylist(), start=1):
                records.append((f"{path}/{name}.parquet:{line}", {**_dataset_record(row), "split": name}))
    else:
        if split:
            raise DataError(f"{path}: --split applies to a prepared dataset folder, not to a file")
        records = list(_file_records(path))
    items, empty = [], 0
    for where, record in records:
        if text_field not in record:
            raise DataError(f"{where}: no {text_field!r} field (fields: {sorted(record)[:12]}); name the text field "
                            "with --text-field")
        text = record[text_field]
        if not isinstance(text, str):
            raise DataError(f"{where}: field {text_field!r} is {type(text).__name__}, expected text")
        if not text.strip():
            empty += 1
            continue
        given = record.get(id_field)
        item_id = str(given) if given not in (None, "") else hashed_id(text)
        check_item_id(item_id, where)
        meta = {k: v for k, v in record.items() if k not in (text_field, id_field)}
        meta[SOURCE_KEY] = where
        # NaN (a blank CSV cell read as a number) becomes null: PostgreSQL's JSONB refuses NaN with a raw SQL error
        items.append(NewItem(item_id, text, json.loads(json.dumps(meta, ensure_ascii=False, default=str),
                                                       parse_constant=lambda _: None)))
    return Loaded(items, empty)


def _dataset_record(row: dict[str, Any]) -> dict[str, Any]:
    """A prepared dataset's row as the record it was: what `data prepare` derived from the old label goes (an export
    kept a label_id that meant another label), and its provenance and group go back under the reserved keys, so the
    export carries them and a synthetic row stays synthetic (out of the test split) when prepared again."""
    record = {k: v for k, v in row.items() if k not in DERIVED_COLUMNS + ORIGIN_COLUMNS}
    prov = parse_provenance(row.get("provenance"))
    if prov is not None:
        record[PROVENANCE_KEY] = prov
    if row.get("group") is not None:
        record[GROUP_KEY] = row["group"]
    return record


MAX_ITEM_ID = 256  # the store's column (AnnotationItem.item_id): PostgreSQL refused a longer one with a raw SQL error


def check_item_id(item_id: str, where: str) -> None:
    if len(item_id) > MAX_ITEM_ID:
        raise DataError(f"{where}: id {item_id[:40]!r}... is {len(item_id)} characters; at most {MAX_ITEM_ID} "
                        "(name a shorter id column with --id-field, or one that is not there: each text then gets a hashed id)")


def _file_records(path: Path) -> Any:
    from pydantic import ValidationError

    from tunesmith.config import SourceSpec
    from tunesmith.data.sources import read_source

    try:
        spec = SourceSpec(path=path)
    except ValidationError as err:
        raise DataError(f"{path}: {err.errors()[0]['msg']}") from None
    for raw in read_source(spec, {}):
        if raw.record is None:
            raise DataError(f"{raw.source}:{raw.line}: {raw.error}")
        yield f"{raw.source}:{raw.line}", raw.record


# -- out -----------------------------------------------------------------------------------------


@dataclass
class Exported:
    path: Path
    rows: int
    ties: int  # human labels tie: no majority, left out
    unlabelled: int


def majority(item: ItemLabels) -> tuple[str | None, str]:
    """(label, where it came from): the most common human label, else the model's; None on a tie."""
    votes = Counter(item.human.values())
    if votes:
        ranked = votes.most_common()
        if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
            return None, "tie"
        return ranked[0][0], "human"
    if item.model:
        return next(iter(item.model.values())), "model"
    return None, "none"


def labelled_rows(queue: Queue) -> tuple[list[dict[str, Any]], int, int]:
    rows, ties, unlabelled = [], 0, 0
    for item in queue.items():
        label, source = majority(item)
        if source == "tie":
            ties += 1
            continue
        if label is None:
            unlabelled += 1
            continue
        meta = dict(item.meta)
        where = meta.pop(SOURCE_KEY, None)
        prov = parse_provenance(meta.pop(PROVENANCE_KEY, None)) or {
            "kind": "annotation", "origin": where or f"{queue.task.name}:{item.item_id}", "collected_at": now(),
            "collector": COLLECTOR}
        prov = {**prov, "annotation": {"task": queue.task.name, "annotators": sorted(item.labels), "label_source": source}}
        human = set(item.human.values())
        row = {"id": item.item_id, "text": item.text, "label": label, "n_annotations": len(item.labels),
               "agreement": len(human) <= 1, "label_source": source}
        row.update({k: v for k, v in meta.items() if k not in row})  # a label the data came with gives way to ours
        rows.append({**row, PROVENANCE_KEY: prov})
    return rows, ties, unlabelled


def export_labelled(queue: Queue, out: str | Path) -> Exported:
    """Labelled items to `out` (.jsonl or .csv), ready as a `data.sources` entry."""
    out = Path(out)
    rows, ties, unlabelled = labelled_rows(queue)
    out.parent.mkdir(parents=True, exist_ok=True)
    suffix = out.suffix.lower()
    tmp = out.with_name(out.name + ".partial")
    if suffix in (".jsonl", ".ndjson"):
        with tmp.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    elif suffix == ".csv":
        columns = list(dict.fromkeys(k for row in rows for k in row))
        with tmp.open("w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns or ["id", "text", "label"])
            writer.writeheader()
            for row in rows:  # nested values (provenance) as JSON text: CSV cells are flat
                writer.writerow({k: json.dumps(v, ensure_ascii=False, default=str) if isinstance(v, dict | list) else v
                                 for k, v in row.items()})
    else:
        raise DataError(f"{out}: export writes .jsonl or .csv; got {out.suffix or 'no extension'}")
    tmp.replace(out)
    return Exported(out, len(rows), ties, unlabelled)


def label_studio_config(labels: list[str]) -> str:
    """The Label Studio labeling config matching the task (paste it into the project's settings)."""
    from xml.sax.saxutils import quoteattr

    choices = "".join(f"\n    <Choice value={quoteattr(label)}/>" for label in labels)
    return (f'<View>\n  <Text name="text" value="$text"/>\n  <Choices name="label" toName="text" choice="single">'
            f"{choices}\n  </Choices>\n</View>\n")


def export_label_studio(queue: Queue, out: str | Path) -> tuple[int, Path]:
    """Items nobody has labelled yet as Label Studio tasks (a JSON array to import), and the labeling
    config beside it (`<out>.label_config.xml`). Our item id travels in `data.item_id`, so importing
    Label Studio's export matches each annotation to its item."""
    out = Path(out)
    tasks = [{"id": item.seq, "data": {"text": item.text, "item_id": item.item_id}}
             for item in queue.items() if not item.labels]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(tasks, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    config = out.with_name(out.stem + ".label_config.xml")
    config.write_text(label_studio_config(queue.task.labels), encoding="utf-8")
    return len(tasks), config



def load_data(queue: Queue, path: str | Path, text_field: str = "text", id_field: str = "id",
              split: str | None = None) -> tuple[int, int, int]:
    """Load a data file or dataset folder into the queue's task: (added, already there, blank texts)."""
    loaded = read_items(path, text_field, id_field, split)
    added, already = add_items(queue.store, queue.task.name, loaded.items)
    return added, already, loaded.empty
