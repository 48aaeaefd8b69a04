"""Reading Label Studio, Argilla and CSV exports back as per-annotator labels (what the agreement report
needs), matched to items by id or text; a bad record is refused with the file and record number."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunesmith.collect.annotate import NewItem, Queue, add_items, create_task
from tunesmith.collect.annotate_interop import import_annotations
from tunesmith.collect.annotate_io import export_label_studio
from tunesmith.errors import DataError
from tunesmith.store.db import Store

TEXTS = {"a": "lovely soup", "b": "cold fries", "c": "ok coffee"}


@pytest.fixture()
def queue(tmp_path: Path) -> Queue:
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    create_task(store, "food", ["pos", "neg"], overlap=2)
    add_items(store, "food", [NewItem(k, v) for k, v in TEXTS.items()])
    return Queue(store, "food")


def labels_of(queue: Queue) -> dict[str, dict[str, str]]:
    return {i.item_id: i.labels for i in queue.items() if i.labels}


def write(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_label_studio_round_trip(queue: Queue, tmp_path: Path) -> None:
    export_label_studio(queue, tmp_path / "tasks.json")
    tasks = json.loads((tmp_path / "tasks.json").read_text())
    choice = lambda label: [{"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": [label]}}]  # noqa: E731
    exported = []
    for n, task in enumerate(tasks):  # what Label Studio's JSON export holds after two people labelled
        exported.append({"id": 100 + n, "data": task["data"], "predictions": [], "annotations": [
            {"id": 1, "completed_by": 1, "result": choice("pos" if n < 2 else "neg"), "was_cancelled": False},
            {"id": 2, "completed_by": {"id": 2, "email": "bo@example.test"}, "result": choice("pos"), "was_cancelled": n == 2},
        ]})
    exported.append({"id": 200, "data": {"text": "brand new text"}, "annotations": [
        {"completed_by": 1, "result": choice("neg")}]})
    result = import_annotations(queue, write(tmp_path / "ls.json", exported), "label-studio")
    assert (result.annotations, result.skips, result.items_added) == (6, 1, 1)
    assert result.annotators == ["bo@example.test", "label-studio:1"]
    got = labels_of(queue)
    assert got["a"] == {"label-studio:1": "pos", "bo@example.test": "pos"}
    assert got["c"] == {"label-studio:1": "neg"}  # bo cancelled c: a skip
    assert [i.skipped_by for i in queue.items() if i.item_id == "c"] == [["bo@example.test"]]
    assert any(i.text == "brand new text" and i.meta["imported_from"] == "label-studio" for i in queue.items())
    again = import_annotations(queue, tmp_path / "ls.json", "label-studio")  # importing twice replaces, never doubles
    assert again.items_added == 0 and sum(len(v) for v in labels_of(queue).values()) == 6
    # a --question the file does not have: every answer read as a skip, erasing the labels just imported
    with pytest.raises(DataError, match=r"ls\.json: no question named 'sentiment'; its questions are \['label'\]"):
        import_annotations(queue, tmp_path / "ls.json", "label-studio", question="sentiment")
    assert sum(len(v) for v in labels_of(queue).values()) == 6


def test_argilla_v2_nested_and_flat(queue: Queue, tmp_path: Path) -> None:
    nested = [{"id": "a", "fields": {"text": TEXTS["a"]}, "metadata": {}, "suggestions": {}, "vectors": {}, "_server_id": "x",
               "responses": {"label": [{"value": "pos", "user_id": "u1"}, {"value": "neg", "user_id": "u2"}]}},
              {"id": "zz", "fields": {"text": TEXTS["b"]}, "responses": {"label": [{"value": "neg", "user_id": "u1"}]}}]
    result = import_annotations(queue, write(tmp_path / "argilla.json", nested), "argilla")
    assert (result.annotations, result.items_added) == (3, 0)  # "zz" is not our id; its text finds item b
    assert labels_of(queue) == {"a": {"argilla:u1": "pos", "argilla:u2": "neg"}, "b": {"argilla:u1": "neg"}}
    flat = tmp_path / "flat.jsonl"
    flat.write_text(json.dumps({"id": "c", "text": TEXTS["c"], "label.responses": ["pos", "pos"],
                                "label.responses.users": ["u1", "u3"], "label.responses.status": ["submitted", "submitted"],
                                "label.suggestion": "neg", "label.suggestion.score": 0.4}) + "\n")
    import_annotations(queue, flat, "argilla")
    assert labels_of(queue)["c"] == {"argilla:u1": "pos", "argilla:u3": "pos"}



def test_argilla_v2_drafts_are_not_labels(queue: Queue, tmp_path: Path) -> None:
    """v2's unsubmitted drafts were imported as final labels (v1's were ignored): both items done, kappa -1."""
    nested = [{"id": "a", "fields": {"text": TEXTS["a"]}, "responses": {"label": [
        {"value": "pos", "user_id": "u1", "status": "submitted"}, {"value": "neg", "user_id": "u2", "status": "draft"}]}}]
    result = import_annotations(queue, write(tmp_path / "nested.json", nested), "argilla")
    flat = tmp_path / "flat.jsonl"
    flat.write_text(json.dumps({"id": "b", "text": TEXTS["b"], "label.responses": ["neg", "pos"],
                                "label.responses.users": ["u1", "u2"], "label.responses.status": ["submitted", "draft"]}) + "\n")
    result = import_annotations(queue, flat, "argilla")
    assert result.annotations == 1
    assert labels_of(queue) == {"a": {"argilla:u1": "pos"}, "b": {"argilla:u1": "neg"}}


def test_answers_to_several_questions_across_a_file_need_question(queue: Queue, tmp_path: Path) -> None:
    """Each annotation answering one of two questions: a "toxic" yes was imported as a "spam" yes."""
    choice = lambda name, label: [{"from_name": name, "value": {"choices": [label]}}]  # noqa: E731
    tasks = [{"data": {"item_id": "a", "text": TEXTS["a"]}, "annotations": [{"completed_by": 1, "result": choice("spam", "pos")}]},
             {"data": {"item_id": "b", "text": TEXTS["b"]}, "annotations": [{"completed_by": 1, "result": choice("toxic", "pos")}]}]
    path = write(tmp_path / "ls.json", tasks)
    with pytest.raises(DataError, match=r"ls\.json: several questions \(\['spam', 'toxic'\]\); say which .* --question"):
        import_annotations(queue, path, "label-studio")
    assert labels_of(queue) == {}
    import_annotations(queue, path, "label-studio", question="spam")
    assert labels_of(queue) == {"a": {"label-studio:1": "pos"}}


def test_argilla_v1_feedback_and_text_classification(queue: Queue, tmp_path: Path) -> None:
    feedback = [{"fields": {"text": TEXTS["a"]}, "external_id": "a", "responses": [
        {"user_id": "u1", "values": {"sentiment": {"value": "pos"}}, "status": "submitted"},
        {"user_id": "u2", "values": {}, "status": "discarded"},
        {"user_id": "u3", "values": {"sentiment": {"value": "neg"}}, "status": "draft"}]}]
    result = import_annotations(queue, write(tmp_path / "v1.json", feedback), "argilla")
    assert (result.annotations, result.skips) == (1, 1) and labels_of(queue) == {"a": {"argilla:u1": "pos"}}
    classic = [{"text": TEXTS["b"], "inputs": {"text": TEXTS["b"]}, "annotation": "neg", "annotation_agent": "maria",
                "prediction": [["neg", 0.8]], "status": "Validated", "id": 7}]
    import_annotations(queue, write(tmp_path / "v1tc.json", classic), "argilla")
    assert labels_of(queue)["b"] == {"argilla:maria": "neg"}


def test_plain_csv(queue: Queue, tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_text("id,text,label,annotator\na,,pos,ann\nb,,neg,ann\n,ok coffee,,bob\n,a new one,neg,bob\n")
    result = import_annotations(queue, path, "csv")
    assert (result.annotations, result.skips, result.items_added) == (3, 1, 1)
    assert labels_of(queue)["a"] == {"ann": "pos"}
    no_annotator = tmp_path / "mine.csv"
    no_annotator.write_text("text,label\nlovely soup,pos\n")
    with pytest.raises(DataError, match="--annotator"):
        import_annotations(queue, no_annotator, "csv")
    import_annotations(queue, no_annotator, "csv", annotator="carol")
    assert labels_of(queue)["a"] == {"ann": "pos", "carol": "pos"}


@pytest.mark.parametrize(("fmt", "content", "error"), [
    ("label-studio", [{"data": {"text": "x"}, "annotations": [{"completed_by": 1, "result": [
        {"from_name": "label", "value": {"choices": ["maybe"]}}]}]}], r"ls\.json:1 annotation 1: label 'maybe' is not one of"),
    ("label-studio", [{"data": {"text": "x"}, "annotations": [{"result": []}]}], r"ls\.json:1 annotation 1: no `completed_by`"),
    ("label-studio", [{"data": {"text": "x"}, "annotations": [{"completed_by": 1, "result": [
        {"from_name": "label", "value": {"choices": ["pos", "neg"]}}]}]}], r"2 labels chosen"),
    ("label-studio", [{"data": {"text": "x"}, "annotations": [{"completed_by": 1, "result": [
        {"from_name": "one", "value": {"choices": ["pos"]}}, {"from_name": "two", "value": {"choices": ["neg"]}}]}]}],
     r"ls\.json:1 annotation 1: several questions \(\['one', 'two'\]\).*--question"),
    ("label-studio", [{"annotations": []}, {"nope": 1}], r"ls\.json:1: not a Label Studio task"),
    ("argilla", [{"fields": {"text": "x"}}, {"fields": {"text": "y"}, "metadata": {}}], r"ls\.json:1: not an Argilla record"),
    ("argilla", [{"id": "missing", "responses": {"label": [{"value": "pos", "user_id": "u"}]}}],
     r"item 'missing' is not in task 'food' and the record has no text"),
    # one annotator twice on one item: the second replaced the first, and both were counted
    ("argilla", [{"id": "a", "responses": {"label": [{"value": "pos", "user_id": "u"}, {"value": "neg", "user_id": "u"}]}}],
     r"ls\.json:1 response 2: 'argilla:u' answered item 'a' already at .*ls\.json:1 response 1"),
    # the flattened statuses shorter than the responses: zip dropped the third response
    ("argilla", [{"id": "a", "text": "lovely soup", "label.responses": ["pos", "neg", "pos"],
                  "label.responses.users": ["u1", "u2", "u3"], "label.responses.status": ["submitted", "submitted"]}],
     r"ls\.json:1: 3 responses but 2 statuses in label\.responses\.status"),
    # a null text became the text "None" of a new item
    ("label-studio", [{"data": {"text": None, "item_id": "zz"}, "annotations": [{"completed_by": 1, "result": [
        {"from_name": "label", "value": {"choices": ["pos"]}}]}]}], r"item 'zz' is not in task 'food' and the record has no text"),
    # its id was taken for its text, and a junk item "i-missing" added
    ("label-studio", [{"data": {"item_id": "i-missing"}, "annotations": [{"completed_by": 1, "result": [
        {"from_name": "label", "value": {"choices": ["pos"]}}]}]}], r"item 'i-missing' is not in task 'food' and the record has no text"),
])
def test_bad_records_name_the_file_and_record(queue: Queue, tmp_path: Path, fmt: str, content: list, error: str) -> None:
    with pytest.raises(DataError, match=error):
        import_annotations(queue, write(tmp_path / "ls.json", content), fmt)
    assert labels_of(queue) == {}  # nothing half-imported


def test_one_item_named_by_id_and_by_text_is_one_item(queue: Queue, tmp_path: Path) -> None:
    # the second row overwrote the first and both were counted
    path = tmp_path / "labels.csv"
    path.write_text("id,text,label,annotator\na,,pos,ann\n,lovely soup,neg,ann\n")
    with pytest.raises(DataError, match=r"labels\.csv:3: 'ann' answered item 'a' already at .*labels\.csv:2"):
        import_annotations(queue, path, "csv")
    assert labels_of(queue) == {}


def test_an_id_whose_text_disagrees_is_refused(queue: Queue, tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_text("id,text,label,annotator\na,cold fries,pos,ann\n")
    with pytest.raises(DataError, match=r"labels\.csv:2: id 'a' is 'lovely soup' .* the record's text is 'cold fries'"):
        import_annotations(queue, path, "csv")
    assert labels_of(queue) == {}
    path.write_text("id,text,label,annotator\na,  lovely soup ,pos,ann\n")  # the same text, spaced
    assert import_annotations(queue, path, "csv").annotations == 1


def test_label_studio_item_id_zero_is_an_id(queue: Queue, tmp_path: Path) -> None:
    tasks = [{"id": 5, "data": {"text": "brand new", "item_id": 0}, "annotations": [
        {"completed_by": 1, "result": [{"from_name": "label", "value": {"choices": ["pos"]}}]}]}]
    result = import_annotations(queue, write(tmp_path / "ls.json", tasks), "label-studio")  # was a TypeError
    assert result.items_added == 1 and labels_of(queue)["0"] == {"label-studio:1": "pos"}


def test_bad_files(queue: Queue, tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('[{"data": {"text": "x"}, ')
    with pytest.raises(DataError, match=r"broken\.json:1:\d+: not valid JSON"):
        import_annotations(queue, broken, "label-studio")
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_text('{"id": "a", "annotation": "pos", "text": "lovely soup"}\n[1, 2]\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2: expected a JSON object"):
        import_annotations(queue, jsonl, "argilla")
    short = tmp_path / "short.csv"
    short.write_text("id,label,annotator\na,pos\n")
    with pytest.raises(DataError, match=r"short\.csv:2: fewer fields"):
        import_annotations(queue, short, "csv")
    with pytest.raises(DataError, match="choose one of"):
        import_annotations(queue, short, "prodigy")
    with pytest.raises(DataError, match="no such file"):
        import_annotations(queue, tmp_path / "none.json", "argilla")
