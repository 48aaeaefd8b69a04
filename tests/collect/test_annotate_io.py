"""Loading items from collected files, CSV and prepared datasets; exporting labelled rows that `data prepare`
reads as a source; Label Studio tasks for what nobody has labelled."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunesmith.collect.annotate import Queue, create_task
from tunesmith.collect.annotate_io import export_label_studio, export_labelled, load_data, read_items
from tunesmith.errors import DataError
from tunesmith.store.db import Store


@pytest.fixture()
def queue(tmp_path: Path) -> Queue:
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    create_task(store, "food", ["pos", "neg"], overlap=2)
    return Queue(store, "food")


def collected(tmp_path: Path) -> Path:
    """Rows as a collector writes them: text, metadata and provenance, no ids."""
    path = tmp_path / "pages.jsonl"
    rows = [{"text": f"review number {i} {'great' if i % 2 else 'awful'}", "url": f"http://example.test/{i}",
             "_provenance": {"kind": "web", "origin": f"http://example.test/{i}", "collected_at": "2026-01-01T00:00:00+00:00",
                             "collector": "tunesmith-collect/test"}} for i in range(6)]
    rows.insert(3, {"text": "   ", "url": "http://example.test/blank"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_loading_keeps_fields_and_provenance_and_is_idempotent(queue: Queue, tmp_path: Path) -> None:
    path = collected(tmp_path)
    assert load_data(queue, path) == (6, 0, 1)  # the blank text is counted, not queued
    assert load_data(queue, path) == (0, 6, 1)
    first = queue.items()[0]
    assert first.item_id.startswith("sha256:") and first.meta["url"] == "http://example.test/0"
    assert first.meta["_provenance"]["kind"] == "web" and first.meta["_source"] == f"{path}:1"
    csv = tmp_path / "rows.csv"
    csv.write_text("id,body\n7,first body\n8,second body\n")
    assert load_data(queue, csv, text_field="body") == (2, 0, 0)
    assert {i.item_id for i in queue.items()} >= {"7", "8"}


def test_bad_input_names_the_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": broken\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: not valid JSON"):
        read_items(bad)
    other = tmp_path / "other.jsonl"
    other.write_text('{"body": "no text field"}\n')
    with pytest.raises(DataError, match=r"other\.jsonl:1: no 'text' field .* --text-field"):
        read_items(other)
    with pytest.raises(DataError, match="--split applies to a prepared dataset"):
        read_items(other, split="train")
    long = tmp_path / "long.jsonl"  # a URL-like id: PostgreSQL refused it with a raw SQL error naming no line
    long.write_text('{"text": "fine", "id": "a"}\n' + json.dumps({"text": "fine too", "id": "https://x.test/" + "a" * 300}) + "\n")
    with pytest.raises(DataError, match=r"long\.jsonl:2: id 'https://x.test/a+'\.\.\. is 315 characters; at most 256"):
        read_items(long)


def test_a_prepared_dataset_split_loads_with_its_ids(tmp_path: Path, make_config) -> None:
    from tunesmith.data.prepare import prepare

    data = tmp_path / "data.csv"
    data.write_text("text,label\n" + "".join(f"sentence {i} {'good' if i % 2 else 'bad'},{'a' if i % 2 else 'b'}\n"
                                             for i in range(40)))
    version = prepare(make_config([{"path": str(data)}], dedup={"near": False}))
    loaded = read_items(version.path, split="validation")
    n = version.manifest.counts["validation"]
    assert len(loaded.items) == n > 0
    assert all(i.meta["split"] == "validation" and "label" in i.meta for i in loaded.items)
    # what prepare derived from the old label is not kept: an export had label "b" beside the old label_id 0 ("a")
    assert not {"label_id", "n_tokens"} & {k for i in loaded.items for k in i.meta}
    assert len({i.item_id for i in loaded.items}) == n  # the dataset's own row ids
    assert len(read_items(version.path).items) == 40


def test_a_prepared_datasets_provenance_survives_annotation(queue: Queue, tmp_path: Path, make_config) -> None:
    from tunesmith.data.prepare import prepare

    prov = {"kind": "synthetic", "origin": "gen", "collected_at": "2026-01-01T00:00:00+00:00", "collector": "x"}
    data = tmp_path / "syn.jsonl"
    data.write_text("".join(json.dumps({"id": f"s{i}", "text": f"synthetic sentence {i}", "label": "pos",
                                        "_provenance": prov, "_group": f"g{i % 5}"}) + "\n" for i in range(30)))
    first = prepare(make_config([{"path": str(data)}], dedup={"near": False}, output_dir=str(tmp_path / "v1")))
    assert first.manifest.counts["test"] == 0  # synthetic rows stay out of the test split
    load_data(queue, first.path)
    meta = queue.items()[0].meta
    assert meta["_provenance"]["kind"] == "synthetic" and meta["_group"].startswith("g")
    assert not {"provenance", "synthetic", "source", "line", "group"} & set(meta)  # stale copies of prepare's columns
    for item in queue.items():
        queue.label("ann", item.item_id, "neg")
    out = export_labelled(queue, tmp_path / "labelled.jsonl")
    row = json.loads(out.path.read_text().splitlines()[0])
    assert row["_provenance"]["kind"] == "synthetic" and row["_provenance"]["annotation"]["annotators"] == ["ann"]
    # prepared again, the rows are still synthetic: before, they came back as real "annotation" rows, some in test
    again = prepare(make_config([{"path": str(out.path)}], dedup={"near": False}, output_dir=str(tmp_path / "v2")))
    assert again.manifest.counts["test"] == 0
    assert all(again.table("train").column("synthetic").to_pylist())
    assert {g for s in ("train", "validation") for g in again.table(s).column("group").to_pylist()} <= {f"g{i}" for i in range(5)}


def test_export_is_a_data_source_with_majority_labels(queue: Queue, tmp_path: Path, make_config) -> None:
    from tunesmith.data.prepare import prepare

    load_data(queue, collected(tmp_path))
    ids = [i.item_id for i in queue.items()]
    answers = {ids[0]: ("pos", "pos"), ids[1]: ("pos", "neg"), ids[2]: ("neg", None), ids[3]: ("neg", "neg")}
    for item_id, (a, b) in answers.items():
        queue.label("ann", item_id, a)
        if b:
            queue.label("bob", item_id, b)
    queue.skip("ann", ids[4])
    out = export_labelled(queue, tmp_path / "exports" / "labelled.jsonl")
    assert (out.rows, out.ties, out.unlabelled) == (3, 1, 2)  # ids[1] ties; ids[4] skipped and ids[5] untouched
    rows = [json.loads(line) for line in out.path.read_text().splitlines()]
    assert [(r["id"], r["label"], r["n_annotations"], r["agreement"]) for r in rows] == [
        (ids[0], "pos", 2, True), (ids[2], "neg", 1, True), (ids[3], "neg", 2, True)]
    assert rows[0]["url"] == "http://example.test/0" and rows[0]["_provenance"]["kind"] == "web"
    assert rows[0]["_provenance"]["annotation"] == {"task": "food", "annotators": ["ann", "bob"], "label_source": "human"}
    csv_out = export_labelled(queue, tmp_path / "labelled.csv")
    header = csv_out.path.read_text().splitlines()[0]
    assert csv_out.rows == 3 and header == "id,text,label,n_annotations,agreement,label_source,url,_provenance"
    version = prepare(make_config([{"path": str(out.path)}], dedup={"near": False}))
    assert sorted(version.manifest.labels or []) == ["neg", "pos"]
    assert sum(version.manifest.counts[s] for s in ("train", "validation", "test")) == 3
    kinds = {json.loads(p)["kind"] for s in ("train", "validation", "test")
             for p in version.table(s).column("provenance").to_pylist()}
    assert kinds == {"web"}  # the collector's provenance reaches the dataset
    with pytest.raises(DataError, match="writes .jsonl or .csv"):
        export_labelled(queue, tmp_path / "labelled.xlsx")


def test_label_studio_tasks_hold_the_unlabelled_items(queue: Queue, tmp_path: Path) -> None:
    load_data(queue, collected(tmp_path))
    first = queue.items()[0].item_id
    queue.label("ann", first, "pos")
    n, config = export_label_studio(queue, tmp_path / "tasks.json")
    tasks = json.loads((tmp_path / "tasks.json").read_text())
    assert n == len(tasks) == 5 and all(set(t) == {"id", "data"} and isinstance(t["id"], int) for t in tasks)
    assert first not in {t["data"]["item_id"] for t in tasks} and tasks[0]["data"]["text"].startswith("review number 1")
    assert '<Choice value="pos"/>' in config.read_text() and 'toName="text"' in config.read_text()


def test_items_loaded_from_a_csv_export_export_again(queue: Queue, tmp_path: Path) -> None:
    load_data(queue, collected(tmp_path))
    for item in queue.items():
        queue.label("ann", item.item_id, "pos")
    first = export_labelled(queue, tmp_path / "round1.csv")  # provenance becomes the JSON text of a CSV cell
    store = queue.store
    create_task(store, "round2", ["pos", "neg"])
    again = Queue(store, "round2")
    assert load_data(again, first.path)[0] == 6
    for item in again.items():
        again.label("bob", item.item_id, "neg")
    out = export_labelled(again, tmp_path / "round2.jsonl")  # once: TypeError, 'str' object is not a mapping
    rows = [json.loads(line) for line in out.path.read_text().splitlines()]
    assert len(rows) == 6 and rows[0]["_provenance"]["kind"] == "web"
    assert rows[0]["_provenance"]["annotation"] == {"task": "round2", "annotators": ["bob"], "label_source": "human"}


def test_an_id_taken_by_another_text_is_refused_with_its_line_and_nothing_is_added(queue: Queue, tmp_path: Path) -> None:
    """A second text under a known id was skipped as "already there": it never reached the annotators."""
    first = tmp_path / "first.csv"
    first.write_text("id,text\n1,great soup\n2,cold fries\n")
    assert load_data(queue, first) == (2, 0, 0)
    again = tmp_path / "again.csv"
    again.write_text("id,text\n3,lovely view\n1,rude waiter\n")
    with pytest.raises(DataError, match=r"again\.csv:3: id '1' is already taken by another text \(in task 'food'\)"):
        load_data(queue, again)
    clash = tmp_path / "clash.csv"
    clash.write_text("id,text\n17,printer jammed\n18,screen dark\n17,printer is on fire\n")
    with pytest.raises(DataError, match=r"clash\.csv:4: id '17' is already taken by another text \(in .*clash\.csv:2\)"):
        load_data(queue, clash)
    assert sorted((i.item_id, i.text) for i in queue.items()) == [("1", "great soup"), ("2", "cold fries")]
    assert load_data(queue, first) == (0, 2, 0)  # the same rows again: already there


def test_missing_numbers_load_as_null_for_postgresql(queue: Queue, tmp_path: Path) -> None:
    """NaN went into the item's JSON: PostgreSQL's JSONB refused the load with a raw SQL error."""
    path = tmp_path / "rows.jsonl"
    path.write_text('{"text": "fine", "stars": NaN}\n{"text": "ok", "stars": 4}\n')
    assert [i.meta["stars"] for i in read_items(path).items] == [None, 4]
