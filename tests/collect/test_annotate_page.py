"""The labelling page in a real headless browser (Debian's chromium through Playwright) against the app
served by uvicorn on 127.0.0.1: keyboard labelling, skip, undo, a reload that loses nothing, an annotator
id from a prompt, and two annotators whose agreement reaches the report."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tunesmith.collect.annotate import NewItem, Queue, add_items, create_task
from tunesmith.collect.annotate_app import create_app
from tunesmith.collect.annotate_report import write_report
from tunesmith.store.db import Store

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="needs Debian's chromium at /usr/bin/chromium (`make test` installs it)")

TEXTS = ["the soup was lovely", "bread was stale", "kind staff, slow kitchen", "best coffee in town"]


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[tuple[str, Queue]]:
    import uvicorn

    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    create_task(store, "food", ["pos", "neg"], instructions="Is the review positive?", overlap=2)
    add_items(store, "food", [NewItem(f"r{i}", t) for i, t in enumerate(TEXTS)])
    queue = Queue(store, "food")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(queue), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", queue
    server.should_exit = True
    thread.join(10)
    store.close()


def test_label_with_the_keyboard_skip_undo_reload_and_agree(served: tuple[str, Queue]) -> None:
    from playwright.sync_api import expect, sync_playwright

    base, queue = served
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox"])
        page = browser.new_page()
        card = page.locator("#card")
        page.goto(f"{base}/?annotator=ann")
        expect(card).to_have_text(TEXTS[0])
        expect(page.locator("#title")).to_have_text("food")
        expect(page.locator("#instructions")).to_have_text("Is the review positive?")
        expect(page.locator("button.label")).to_have_text(["1pos", "2neg"])
        page.keyboard.press("1")  # r0: pos
        expect(card).to_have_text(TEXTS[1])
        page.keyboard.press("s")  # r1: skipped
        expect(card).to_have_text(TEXTS[2])
        page.keyboard.press("2")  # r2: neg
        expect(card).to_have_text(TEXTS[3])
        page.keyboard.press("u")  # undo r2's neg: r2 again
        expect(card).to_have_text(TEXTS[2])
        expect(page.locator("#status")).to_have_text("undid: neg")
        page.keyboard.press("Backspace")  # undo the skip of r1
        expect(card).to_have_text(TEXTS[1])
        page.keyboard.press("1")  # r1: pos
        expect(page.locator("#progress")).to_contain_text("you: 2 labelled, 0 skipped, 2 left")
        page.reload()  # nothing lives in the page: the store has every answer
        expect(page.locator("#progress")).to_contain_text("you: 2 labelled, 0 skipped, 2 left")
        expect(card).to_have_text(TEXTS[2])
        page.keyboard.press("2")  # r2: neg
        expect(card).to_have_text(TEXTS[3])
        page.keyboard.press("1")  # r3: pos
        expect(card).to_contain_text("Nothing left for you")
        assert {i.item_id: i.labels for i in queue.items()} == {
            "r0": {"ann": "pos"}, "r1": {"ann": "pos"}, "r2": {"ann": "neg"}, "r3": {"ann": "pos"}}

        fresh = browser.new_context().new_page()  # no ?annotator= and nothing stored: the page asks
        fresh.once("dialog", lambda dialog: dialog.accept("bob"))
        fresh.goto(base + "/")
        expect(fresh.locator("#annotator")).to_have_text("bob")
        for text, key in zip(TEXTS, ["1", "2", "2", "2"], strict=True):  # bob disagrees on r1 and r3
            expect(fresh.locator("#card")).to_have_text(text)
            fresh.keyboard.press(key)
        expect(fresh.locator("#card")).to_contain_text("Nothing left for you")
        expect(fresh.locator("#progress")).to_contain_text("task: 4 of 4 done")
        fresh.reload()  # bob's id was kept in localStorage
        expect(fresh.locator("#annotator")).to_have_text("bob")
        browser.close()

    report = write_report(queue, Path(queue.store.home) / "report")
    agreement = report["agreement"]
    # ann: pos pos neg pos; bob: pos neg neg neg -> observed 2/4; chance .75*.25 + .25*.75 = .375; kappa .2
    assert agreement["method"] == "cohen" and agreement["annotators"] == ["ann", "bob"]
    assert agreement["kappa"] == pytest.approx(0.2) and agreement["observed_agreement"] == 0.5


def test_bad_requests_answer_400_with_the_reason(served: tuple[str, Queue]) -> None:
    import httpx

    base, _ = served
    r = httpx.post(f"{base}/api/label", json={"annotator": "ann", "item_id": "r0", "label": "meh"})
    assert r.status_code == 400 and "not one of" in r.json()["error"]
    r = httpx.post(f"{base}/api/skip", json={"annotator": "ann", "item_id": "nope"})
    assert r.status_code == 400 and "no item 'nope'" in r.json()["error"]
    r = httpx.get(f"{base}/api/next", params={"annotator": " "})
    assert r.status_code == 400 and "annotator id" in r.json()["error"]
    assert httpx.post(f"{base}/api/undo", json={"annotator": "ann"}).json()["undone"] is None
