"""The prediction log's retention purge over the store (SQLite and PostgreSQL)."""

from __future__ import annotations

import time

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
