"""The labelling queue in the store (SQLite and PostgreSQL): tasks, idempotent loads, who gets which item
next, skip, undo, overlap and leases, and answers that survive a new process (a new Store)."""

from __future__ import annotations

import pytest

from tunesmith.collect.annotate import LEASE_S, NewItem, Queue, add_items, create_task, hashed_id
from tunesmith.errors import ConfigError
from tunesmith.store.db import Store

TEXTS = ["the soup was great", "cold and stale bread", "friendly staff", "waited an hour", "fine, nothing special"]


def items(texts: list[str] = TEXTS) -> list[NewItem]:
    return [NewItem(f"r{i}", t, {"line": i}) for i, t in enumerate(texts)]


@pytest.fixture()
def store(store_url: str):
    s = Store(store_url)
    yield s
    s.close()


def test_tasks_keep_their_labels_and_loading_twice_adds_nothing(store: Store) -> None:
    task = create_task(store, "food", ["pos", "neg"], instructions="Is the review positive?")
    assert task.labels == ["pos", "neg"] and task.overlap == 1
    assert add_items(store, "food", items()) == (5, 0)
    assert add_items(store, "food", items() + [NewItem(hashed_id("new one"), "new one")]) == (1, 5)
    assert create_task(store, "food").labels == ["pos", "neg"]  # reopened without --labels
    with pytest.raises(ConfigError, match=r"has labels \['pos', 'neg'\]"):
        create_task(store, "food", ["pos", "neg", "mixed"])
    with pytest.raises(ConfigError, match="does not exist yet"):
        create_task(store, "other")
    with pytest.raises(ConfigError, match="two or more distinct"):
        create_task(store, "x", ["pos", "pos"])
    assert hashed_id("  same text ") == hashed_id("same text")  # surrounding blanks do not make a new item


def test_label_skip_undo_in_order_and_saved_at_once(store: Store, store_url: str) -> None:
    create_task(store, "food", ["pos", "neg"])
    add_items(store, "food", items())
    q = Queue(store, "food")
    first = q.next("ann")
    assert first == {"item_id": "r0", "text": TEXTS[0]}
    q.label("ann", "r0", "pos")
    assert q.next("ann")["item_id"] == "r1"
    q.skip("ann", "r1")
    q.label("ann", "r2", "pos")
    assert q.progress("ann") == {"task": "food", "total": 5, "done": 2, "overlap": 1, "annotator": "ann",
                                 "labelled": 2, "skipped": 1, "left": 2}
    undone = q.undo("ann")
    assert undone["item_id"] == "r2" and undone["undone"] == "pos"
    assert q.undo("ann")["undone"] == "skip"  # the skip of r1 is answered again now
    assert q.progress("ann")["labelled"] == 1 and q.progress("ann")["left"] == 4
    q.label("ann", "r1", "neg")
    again = Store(store_url)  # another process: the answers are in the store, not in memory
    labels = {i.item_id: i.labels for i in Queue(again, "food").items()}
    assert labels["r0"] == {"ann": "pos"} and labels["r1"] == {"ann": "neg"} and labels["r2"] == {}
    again.close()
    with pytest.raises(ConfigError, match="not one of"):
        q.label("ann", "r3", "meh")
    with pytest.raises(ConfigError, match="no item 'nope'"):
        q.label("ann", "nope", "pos")
    with pytest.raises(ConfigError, match="for model suggestions only"):
        q.label("model:me", "r3", "pos")
    assert Queue(store, "food").undo("nobody") is None


def test_relabelling_replaces_the_answer_and_becomes_the_latest(store: Store) -> None:
    create_task(store, "food", ["pos", "neg"])
    add_items(store, "food", items())
    q = Queue(store, "food")
    q.label("ann", "r0", "pos")
    q.label("ann", "r1", "pos")
    q.label("ann", "r0", "neg")  # changed their mind on r0
    assert q.items()[0].labels == {"ann": "neg"}
    assert q.undo("ann")["item_id"] == "r0"
    assert q.items()[1].labels == {"ann": "pos"}


def test_several_annotators_overlap_and_leases(store: Store) -> None:
    create_task(store, "food", ["pos", "neg"], overlap=2)
    add_items(store, "food", items(TEXTS[:3]))
    q = Queue(store, "food")
    a, b = q.next("a"), q.next("b")
    assert a["item_id"] == "r0" and b["item_id"] == "r1"  # r0 is leased to a: b gets another one
    q.label("a", "r0", "pos")
    assert q.next("a")["item_id"] == "r2"  # r1 is leased to b
    q.label("b", "r1", "neg")
    assert q.next("b")["item_id"] == "r0"  # r2 is leased to a; r0 still needs its second label
    q.label("b", "r0", "pos")
    assert q.progress()["done"] == 1  # r0 has both labels; items with `overlap` labels leave the queues
    assert q.next("c")["item_id"] in ("r1", "r2")


def test_the_last_item_leased_to_one_annotator_is_not_offered_to_another(store: Store) -> None:
    create_task(store, "food", ["pos", "neg"])  # overlap 1
    add_items(store, "food", items(TEXTS[:2]))
    q = Queue(store, "food")
    assert q.next("a")["item_id"] == "r0" and q.next("b")["item_id"] == "r1"
    q.label("a", "r0", "pos")
    assert q.next("a") is None  # r1 is b's: a second label would go beyond the overlap
    q.label("b", "r1", "neg")
    assert [len(it.labels) for it in q.items()] == [1, 1]


def test_with_overlap_two_the_last_item_goes_to_two_annotators_only(store: Store) -> None:
    """An item kept one lease (its last viewer's): with overlap 2 the last item went to A, B and C alike and got three
    labels (and Fleiss' kappa then left it out)."""
    create_task(store, "food", ["pos", "neg"], overlap=2)
    add_items(store, "food", items(TEXTS[:1]))
    q = Queue(store, "food")
    assert q.next("a")["item_id"] == "r0" and q.next("b")["item_id"] == "r0"
    assert q.next("c") is None  # two labels are coming
    assert q.next("a")["item_id"] == "r0"  # shown again to one who has it: still one lease each
    assert q.next("c") is None
    q.label("a", "r0", "pos")
    q.skip("b", "r0")  # b passes: room for another
    assert q.next("c")["item_id"] == "r0"


def test_progress_counts_the_answers_of_an_id_given_with_blanks(store: Store) -> None:
    create_task(store, "food", ["pos", "neg"])
    add_items(store, "food", items(TEXTS[:2]))
    q = Queue(store, "food")
    q.label(" ann ", "r0", "pos")  # saved as "ann", as the page's ?annotator=%20ann%20 sends it
    p = q.progress(" ann ")
    assert (p["annotator"], p["labelled"], p["left"]) == ("ann", 1, 1)


def test_a_lease_expires(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    import tunesmith.collect.annotate as annotate

    create_task(store, "food", ["pos", "neg"])
    add_items(store, "food", items(TEXTS[:2]))
    q = Queue(store, "food")
    assert q.next("a")["item_id"] == "r0"
    clock = annotate.time.time()
    monkeypatch.setattr(annotate.time, "time", lambda: clock + LEASE_S + 1)
    assert q.next("b")["item_id"] == "r0"  # a left without answering: r0 is free again


def test_an_empty_queue_says_so(store: Store) -> None:
    create_task(store, "food", ["pos", "neg"])
    add_items(store, "food", items(TEXTS[:1]))
    q = Queue(store, "food")
    q.label("a", "r0", "pos")
    assert q.next("a") is None and q.next("b") is None  # overlap 1: done for everyone
    assert q.progress("b")["left"] == 0


def test_two_annotators_asking_at_the_same_moment_get_different_items(store: Store, store_url: str,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Both read the one open item as free before either lease was written: each was shown it, and with overlap 1
    it got labelled twice. The second must see the first's lease."""
    import threading

    import tunesmith.collect.annotate as annotate_module

    create_task(store, "food", ["pos", "neg"])  # overlap 1
    add_items(store, "food", items(TEXTS[:1]))
    first, second = Queue(store, "food"), Queue(Store(store_url, migrate=False), "food")
    got: dict[str, object] = {}
    racing = threading.Thread(target=lambda: got.update(b=second.next("b")))
    item_json = annotate_module._item_json

    def shown(item: object) -> dict:
        # a's lease is set in its transaction, not yet committed: b asks now
        if threading.current_thread() is threading.main_thread() and not racing.is_alive() and not got:
            racing.start()
            racing.join(timeout=2)  # with the task locked it waits for a's commit; without, it is served at once
        return item_json(item)

    monkeypatch.setattr(annotate_module, "_item_json", shown)
    assert first.next("a")["item_id"] == "r0"
    racing.join()
    assert got["b"] is None


def test_one_annotator_answering_an_item_from_three_tabs_at_once_keeps_one_answer(store: Store) -> None:
    """Three answers at once by the same annotator on one item (three tabs, a shared id): two deleted nothing (or
    the same row) and lost the unique (item, annotator) race; the retry-once let the third's IntegrityError out and
    its answer was lost. Each must be saved in turn, the last one standing, and the item their latest for undo."""
    import threading

    create_task(store, "food", ["pos", "neg"])
    n = 12
    add_items(store, "food", [NewItem(f"d{i}", f"text {i}") for i in range(n)])
    q = Queue(store, "food")
    errors: list[BaseException] = []
    for i in range(n):
        at_once = threading.Barrier(3)

        def answer(label: str | None, item_id: str = f"d{i}") -> None:
            at_once.wait()
            try:
                q.label("ann", item_id, label) if label else q.skip("ann", item_id)
            except BaseException as err:  # noqa: BLE001 (collected for the assertion below)
                errors.append(err)

        threads = [threading.Thread(target=answer, args=(label,)) for label in ("pos", "neg", None)]
        [t.start() for t in threads]
        [t.join() for t in threads]
    assert errors == []
    answered = q.items()
    assert all(len(it.labels) + len(it.skipped_by) == 1 for it in answered)  # one answer each: the last one saved
    assert q.progress("ann")["labelled"] + q.progress("ann")["skipped"] == n
    q.label("ann", "d3", "pos")  # replacing still makes it the latest
    assert q.undo("ann")["item_id"] == "d3"


def test_the_page_gets_json_when_the_store_refuses_an_answer(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """A refused write (IntegrityError) was a text/plain 500: the page showed a JSON parse error, not that the
    answer was lost."""
    from fastapi.testclient import TestClient
    from sqlalchemy.exc import IntegrityError

    import tunesmith.collect.annotate as annotate_module
    from tunesmith.collect.annotate_app import create_app

    create_task(store, "food", ["pos", "neg"])
    add_items(store, "food", items(TEXTS[:1]))

    def refused(*_: object, **__: object) -> None:
        raise IntegrityError("INSERT INTO annotations ...", {}, Exception("violates foreign key constraint"))

    monkeypatch.setattr(annotate_module, "record", refused)
    client = TestClient(create_app(Queue(store, "food")), raise_server_exceptions=False)
    res = client.post("/api/label", json={"annotator": "ann", "item_id": "r0", "label": "pos"})
    assert res.status_code == 409 and res.headers["content-type"] == "application/json"
    assert "not saved" in res.json()["error"] and "reload" in res.json()["error"]
