"""Terminal mode: number keys label, s skips, u undoes, q quits, and what was answered is in the store."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from tunesmith.collect.annotate import NewItem, Queue, add_items, create_task
from tunesmith.collect.annotate_terminal import annotate_terminal
from tunesmith.store.db import Store


def test_keys_label_skip_undo_and_quit(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    create_task(store, "food", ["pos", "neg", "mixed"], instructions="How does it feel?")
    add_items(store, "food", [NewItem(f"r{i}", f"review {i}") for i in range(4)])
    q = Queue(store, "food")
    keys = iter(["1", "s", "7", "u", "2", "3", "q"])  # r0 pos, r1 skip, bad key, undo the skip, r1 neg, r2 mixed, quit
    out = io.StringIO()
    counts = annotate_terminal(q, "ann", console=Console(file=out, width=80), ask=lambda _: next(keys))
    assert counts == {"labelled": 3, "skipped": 1, "undone": 1}
    assert {i.item_id: i.labels for i in Queue(store, "food").items()} == {
        "r0": {"ann": "pos"}, "r1": {"ann": "neg"}, "r2": {"ann": "mixed"}, "r3": {}}
    text = out.getvalue()
    assert "How does it feel?" in text and "type 1-3, s, u or q" in text and "undid skip" in text
    assert "0 labelled, 0 skipped, 4 left" in text  # a panel fitted to "review 0" cut it to "0 labe"
    rest = iter(["2"])
    annotate_terminal(q, "ann", console=Console(file=out, width=80), ask=lambda _: next(rest))
    assert "nothing left for you" in out.getvalue()


def test_texts_with_brackets_show_as_typed(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    create_task(store, "forum", ["pos", "neg"], instructions="Ignore [quote] blocks")
    add_items(store, "forum", [NewItem("p1", "[quote]meh[/quote] The [b]soup[/b] was great [/]"),
                               NewItem("p2", "[red]fine[/red]")])
    keys = iter(["1", "2"])
    out = io.StringIO()
    counts = annotate_terminal(Queue(store, "forum"), "ann", console=Console(file=out, width=100), ask=lambda _: next(keys))
    assert counts["labelled"] == 2  # rich markup in the data once raised MarkupError on "[/]" and "[/quote]"
    text = out.getvalue()
    assert "[quote]meh[/quote] The [b]soup[/b] was great [/]" in text and "[red]fine[/red]" in text
    assert "Ignore [quote] blocks" in text
