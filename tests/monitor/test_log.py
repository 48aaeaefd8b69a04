"""The prediction log over the store (SQLite and PostgreSQL): its retention purge, and one answer per request id."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import text

from tunesmith.errors import ApiError
from tunesmith.monitor.feedback import FeedbackRequest, FeedbackService
from tunesmith.monitor.log import PredictionLog
from tunesmith.store.db import Store
from tunesmith.store.schema import Prediction


def test_the_purge_keeps_the_answer_shape_of_rows_logged_before_shapes_were(store_url: str) -> None:
    # A row logged before migration 0008 has no answer_shape: feedback was checked against its outputs, and once the
    # purge cleared them an unknown label or an index past the batch was stored with a 201.
    old = Store(store_url, migrate=False)
    old.migrate("0007")
    with old.engine.begin() as c:
        c.execute(text("INSERT INTO predictions (request_id, model, model_version, kind, created, inputs, outputs, "
                       "latency_ms) VALUES ('req-old', 'reviews', 'v1', 'predict', :t, '[\"hi\"]', "
                       "'[{\"label\": \"pos\", \"probabilities\": {\"pos\": 0.9, \"neg\": 0.1}}]', 1.0)"),
                  {"t": time.time() - 40 * 86400})
    old.close()
    store = Store(store_url)
    log = PredictionLog(store)
    assert log.purge(30) == 1
    with store.session() as s:
        row = s.get(Prediction, "req-old")
        shape = row.answer_shape
        assert row.outputs is None and shape["items"] == 1 and sorted(shape["labels"]) == ["neg", "pos"]  # JSONB: any order
    service = FeedbackService(store, log)
    for body, field in (({"label": "typo"}, "label"), ({"rating": "up", "index": 7}, "index")):
        err = service.submit(FeedbackRequest(request_id="req-old", **body))
        assert isinstance(err, ApiError) and err.status == 400 and err.param == field, (body, err)
    assert log.purge(30) == 0
    log.close()
    store.close()


def test_a_client_request_id_is_kept_once_across_two_replicas_on_one_store(store_url: str) -> None:
    """Two servers on one store: each saw only its own requests in flight and committed rows, so the second replica
    answered a reused X-Request-ID and its writer put the answer under a random id the client never saw (feedback on
    the id bound to the first replica's text). The first write under a client's id wins in the store, for both."""
    store = Store(store_url)
    log_a, log_b = PredictionLog(store), PredictionLog(store)
    assert log_a.record_once("dup-1", "reviews", "v1", "predict", ["great tea"], [{"label": "pos"}], 1.0)
    # on record before the answer goes: the other replica is refused at once, no writer to wait for
    assert not log_b.record_once("dup-1", "reviews", "v1", "predict", ["stale coffee"], [{"label": "neg"}], 1.0)
    assert not log_a.record_once("dup-1", "reviews", "v1", "predict", ["sour milk"], [{"label": "neg"}], 1.0)
    log_b.record("dup-2", "reviews", "v1", "predict", ["flat soda"], [{"label": "neg"}], 1.0)  # queued, then written
    assert log_b.flush() and not log_a.record_once("dup-2", "reviews", "v1", "predict", ["x"], [{"label": "neg"}], 1.0)
    log_a.close()
    log_b.close()
    with store.session() as s:
        rows = {r.request_id: r.inputs for r in s.query(Prediction).all()}
    store.close()
    assert rows == {"dup-1": ["great tea"], "dup-2": ["flat soda"]}  # nothing renamed, nothing refused written


def test_an_answer_whose_id_is_already_on_record_is_kept_under_a_new_id_with_a_warning(
        store_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Two servers on one store (or two requests before either was written) under one id: the second answer was
    dropped without a word, and feedback on it was checked against, and stored with, the first one's text."""
    store = Store(store_url)
    log = PredictionLog(store)
    log.record("dup-1", "reviews", "v1", "predict", ["great coffee"], [{"label": "pos"}], 1.0)
    assert log.flush()
    log.record("dup-1", "reviews", "v1", "predict", ["stale bread"], [{"label": "neg"}], 1.0)  # another batch
    for said in ("sour milk", "flat soda"):  # twice in one batch
        log.record("dup-2", "reviews", "v1", "predict", [said], [{"label": "neg"}], 1.0)
    assert log.flush()
    log.close()
    with store.session() as s:
        rows = {r.request_id: r.inputs for r in s.query(Prediction).all()}
    store.close()
    assert rows.pop("dup-1") == ["great coffee"] and rows.pop("dup-2") == ["sour milk"]  # the first keeps the id
    assert sorted(rows.values()) == [["flat soda"], ["stale bread"]]
    assert all(rid.startswith("req-") for rid in rows) and log.errors == 0
    out = capsys.readouterr().out
    assert "request id 'dup-1' was already on record" in out and "feedback on 'dup-2' refers to the first" in out
