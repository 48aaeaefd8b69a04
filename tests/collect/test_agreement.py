"""Cohen's and Fleiss' kappa against values worked by hand, and the annotation report built on them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunesmith.collect.agreement import agreement, interpret
from tunesmith.collect.annotate import NewItem, Queue, add_items, create_task
from tunesmith.collect.annotate_report import write_report
from tunesmith.store.db import Store
from tunesmith.store.schema import AnnotationItem

LABELS = ["p", "n"]


def test_cohen_for_two_annotators() -> None:
    # observed 3/4; chance: a says p half the time, b a quarter: .5*.25 + .5*.75 = .5; kappa (.75-.5)/(1-.5)
    items = [{"a": "p", "b": "p"}, {"a": "p", "b": "n"}, {"a": "n", "b": "n"}, {"a": "n", "b": "n"}, {"a": "p"}]
    out = agreement(items, LABELS)
    assert out["method"] == "cohen" and out["kappa"] == pytest.approx(0.5) and out["items_used"] == 4
    assert out["observed_agreement"] == 0.75 and out["interpretation"] == "moderate"
    assert out["pairs"] == [{"a": "a", "b": "b", "items": 4, "kappa": pytest.approx(0.5), "observed": 0.75}]


def test_fleiss_for_three_and_items_with_other_counts_left_out() -> None:
    # P_i: 1, 1, 1/3, 1/3 -> mean 2/3; p and n are half of the 12 labels each -> chance .5; kappa (2/3-.5)/.5 = 1/3
    items = [{"a": "p", "b": "p", "c": "p"}, {"a": "n", "b": "n", "c": "n"}, {"a": "p", "b": "p", "c": "n"},
             {"a": "p", "b": "n", "c": "n"}, {"a": "p", "b": "n"}]
    out = agreement(items, LABELS)
    assert out["method"] == "fleiss" and out["kappa"] == pytest.approx(1 / 3, abs=1e-4)
    assert (out["items_used"], out["raters_per_item"], out["items_compared"]) == (4, 3, 5)
    assert "1 with another count left out" in out["note"]
    assert {(p["a"], p["b"]) for p in out["pairs"]} == {("a", "b"), ("a", "c"), ("b", "c")}


def test_undefined_and_empty_cases() -> None:
    same = agreement([{"a": "p", "b": "p"}, {"a": "p", "b": "p"}], LABELS)
    assert same["kappa"] is None and same["interpretation"] == "undefined" and "undefined" in same["note"]
    none = agreement([{"a": "p"}, {}], LABELS)
    assert none["method"] is None and "overlap of 2" in none["note"]
    assert interpret(-0.1) == "poor" and interpret(0.85) == "almost perfect"
    assert interpret(0.0) == "slight" and interpret(0.2) == "slight"  # Landis & Koch: 0.00-0.20 slight, below 0 poor


def test_report_keeps_models_out_of_human_agreement(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    create_task(store, "food", ["pos", "neg"], instructions="Positive or negative?", overlap=2)
    add_items(store, "food", [NewItem(f"r{i}", f"text {i}") for i in range(5)])
    q = Queue(store, "food")
    for item_id, a, b in [("r0", "pos", "pos"), ("r1", "pos", "neg"), ("r2", "neg", "neg"), ("r3", "neg", "neg")]:
        q.label("ann", item_id, a)
        q.label("bob", item_id, b)
    q.skip("bob", "r4")
    from tunesmith.collect.annotate import record

    with store.session() as s:  # an accepted model label on r4 and on r0 (where it disagrees with both humans)
        for seq, label in s.query(AnnotationItem.seq, AnnotationItem.item_id).all():
            if label in ("r0", "r4"):
                record(s, s.get(AnnotationItem, seq), "model:clf", "neg", "model", 0.97)
    data = write_report(q, tmp_path / "report")
    assert data["agreement"]["method"] == "cohen" and data["agreement"]["annotators"] == ["ann", "bob"]
    assert data["agreement"]["kappa"] == pytest.approx(0.5)
    kinds = {r["annotator"]: (r["kind"], r["labels"], r["skips"]) for r in data["annotators"]}
    assert kinds == {"ann": ("human", 4, 0), "bob": ("human", 4, 1), "model:clf": ("model", 2, 0)}
    assert data["label_distribution"] == {"pos": 1, "neg": 3} and data["ties"] == 1  # r4: the model's; r1: a tie
    assert data["model_vs_humans"] == {"items": 1, "matches": 0.0}
    md = (tmp_path / "report" / "report.md").read_text()
    assert "**Cohen's kappa: 0.500** (moderate" in md and "> Positive or negative?" in md
    assert json.loads((tmp_path / "report" / "report.json").read_text())["task"] == "food"
    assert "<table>" in (tmp_path / "report" / "report.html").read_text()


def test_labels_named_none_or_tie_and_model_checks_on_ties(tmp_path: Path) -> None:
    """A label "none" was counted with the items not labelled yet; the model was checked against whichever human
    labelled a tied item first (matches 0.0 or 1.0 by labelling order)."""
    from tunesmith.collect.annotate import record
    from tunesmith.collect.annotate_report import summarize

    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    create_task(store, "topics", ["sports", "politics", "none"], overlap=2)
    add_items(store, "topics", [NewItem(f"t{i}", f"text {i}") for i in range(4)])
    q = Queue(store, "topics")
    q.label("ann", "t0", "none")
    q.label("bob", "t0", "none")
    for who, label in (("bob", "politics"), ("ann", "sports")):  # t1: a tie, bob first
        q.label(who, "t1", label)
    with store.session() as s:
        t1 = next(i for i in s.query(AnnotationItem).all() if i.item_id == "t1")
        record(s, t1, "model:clf", "politics", "model", 0.9)
    data = summarize(q)
    assert data["label_distribution"] == {"none": 1} and (data["ties"], data["unlabelled"]) == (1, 2)
    assert "model_vs_humans" not in data  # a tie has no majority to match


def test_report_quotes_task_name_and_every_line_of_the_instructions_as_text(tmp_path: Path) -> None:
    """Instructions "![p](https://tracker.example/p.png)" loaded a remote picture when the report was opened; their
    second line fell out of the quote and read as the report's own Markdown (a heading here)."""
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    create_task(store, "food_", ["pos", "neg"], overlap=1,
                instructions="Mark ![p](https://tracker.example/p.png) [here](https://evil.example)\n\n# Positive?\n`x")
    add_items(store, "food_", [NewItem("r0", "text")])
    write_report(Queue(store, "food_"), tmp_path / "report")
    page = (tmp_path / "report" / "report.html").read_text()
    assert "<img" not in page and "<a " not in page and "<h1>Positive?" not in page
    quote = page.split("<blockquote>")[1].split("</blockquote>")[0]
    assert "![p](https://tracker.example/p.png) [here](https://evil.example)" in quote
    assert "# Positive?" in quote and "`x" in quote
