"""Feedback through the real server: validated over HTTP, and every acknowledged item is in the store
after the server is killed (SIGKILL) under concurrent feedback load, on SQLite and on PostgreSQL."""

from __future__ import annotations

import re
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.servers import start_server
from tests.test_train import project
from tunesmith.store.db import Store
from tunesmith.store.schema import Feedback
from tunesmith.training import train


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path) -> Path:
    tmp = tmp_path_factory.mktemp("fb-run")
    return train(project(tmp, tiny_bert, train_spec={"max_steps": 6}))


# Once, on the store several servers share: the commit-before-201 path is the same code on SQLite.
@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)
def test_acknowledged_feedback_survives_a_killed_server(classifier: Path, store_url: str, tmp_path: Path) -> None:
    proc, url = start_server([str(classifier), "--db", store_url], tmp_path / "server.log",
                             env={"TUNESMITH_HOME": str(tmp_path / "home")})
    try:
        ids = [httpx.post(f"{url}/v1/predict", json={"text": f"great food {i}", "user": f"u{i}"}).json()["id"]
               for i in range(20)]
        bad = httpx.post(f"{url}/v1/feedback", json={"request_id": "nope", "rating": "up"})
        assert bad.status_code == 404 and bad.json()["error"]["param"] == "request_id"
        bad = httpx.post(f"{url}/v1/feedback", json={"request_id": ids[0], "rating": 7})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "rating"
        ok = httpx.post(f"{url}/v1/feedback", json={"request_id": ids[0], "rating": "down", "label": "neg"})
        assert ok.status_code == 201 and ok.json()["object"] == "feedback"
        metrics = httpx.get(f"{url}/metrics").text  # live, per model version
        assert 'tunesmith_model_requests_total{model="ft:' in metrics and "tunesmith_model_latency_seconds_bucket" in metrics
        assert re.search(r'tunesmith_feedback_total\{model="ft:[^"]+",rating="negative",version="\w+"\} 1\.0', metrics)
        assert re.search(r'tunesmith_corrected_feedback_total\{model="ft:[^"]+",outcome="(right|wrong)"', metrics)
        assert "tunesmith_prediction_confidence_bucket" in metrics

        acked: list[str] = []
        stop = threading.Event()

        def client(n: int) -> None:
            with httpx.Client(timeout=10) as http:
                i = 0
                while not stop.is_set():
                    try:
                        r = http.post(f"{url}/v1/feedback", json={"request_id": ids[(n + i) % len(ids)],
                                                                 "rating": 1 + i % 5, "user_id": f"c{n}"})
                    except httpx.HTTPError:
                        return  # the server is gone
                    if r.status_code == 201:
                        acked.append(r.json()["id"])
                    i += 1

        threads = [threading.Thread(target=client, args=(n,)) for n in range(16)]
        for t in threads:
            t.start()
        deadline = time.time() + 30
        while len(acked) < 100 and time.time() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)  # mid-load: some requests are in flight, unanswered
        proc.wait()
        stop.set()
        for t in threads:
            t.join()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert len(acked) >= 100
    store = Store(store_url)
    with store.session() as s:
        stored = {f.id for f in s.query(Feedback).all()}
    missing = set(acked) - stored
    assert not missing, f"{len(missing)} acknowledged item(s) lost"
