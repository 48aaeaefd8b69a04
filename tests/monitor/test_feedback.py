"""The prediction log and feedback over the store (SQLite and PostgreSQL): joined by request id,
validated against what the model answered, exported as a dataset file."""

from __future__ import annotations

import csv
import json
import threading
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from tunesmith.errors import ApiError, ConfigError, NotFound
from tunesmith.monitor.feedback import FIND_WAIT_S, FeedbackCreated, FeedbackRequest, FeedbackService
from tunesmith.monitor.log import PredictionLog
from tunesmith.store.db import Store
from tunesmith.store.schema import Feedback, Prediction

LABELS = {"label": "pos", "probabilities": {"pos": 0.9, "neg": 0.1}}


def test_feedback_joins_logged_answers_and_exports_corrections(store_url: str, tmp_path: Path) -> None:
    store = Store(store_url)
    log = PredictionLog(store)
    service = FeedbackService(store, log)
    log.record("req-1", "reviews", "reviews-v1", "predict", ["great food", "stale bread"],
               [LABELS, {**LABELS, "label": "pos"}], 3.0, user_id="u1")
    # Not flushed yet: feedback waits for the log rather than answering 404.
    created = service.submit(FeedbackRequest(request_id="req-1", rating="down", index=1, label="neg", comment="wrong"))
    assert isinstance(created, FeedbackCreated) and created.id.startswith("fb-")
    assert isinstance(service.submit(FeedbackRequest(request_id="req-1", rating=5)), FeedbackCreated)
    unknown = service.submit(FeedbackRequest(request_id="req-404", rating="up"))
    assert isinstance(unknown, ApiError) and unknown.status == 404 and unknown.param == "request_id"
    for bad, param in ((FeedbackRequest(request_id="req-1", label="maybe"), "label"),
                       (FeedbackRequest(request_id="req-1", answer="x"), "answer"),
                       (FeedbackRequest(request_id="req-1", value=1.0), "value"),
                       (FeedbackRequest(request_id="req-1", rating="up", index=5), "index"),
                       (FeedbackRequest(request_id="req-1"), "rating")):
        err = service.submit(bad)
        assert isinstance(err, ApiError) and err.status == 400 and err.param == param, (bad, err)
    with pytest.raises(ValidationError, match=r"rating must be 'up', 'down' or a whole number from 1 to 5, got 6"):
        FeedbackRequest(request_id="req-1", rating=6)  # it said "Input should be 'up' or 'down'"
    with pytest.raises(ValidationError):
        FeedbackRequest(request_id="req-1", rating="meh")
    with store.session() as s:
        [fb] = [f for f in s.query(Feedback).all() if f.comment == "wrong"]
        assert (fb.thumbs_up, fb.corrected_label, fb.item_index) == (False, ["neg"], 1)
        assert s.get(Prediction, "req-1").user_id == "u1"
    out = tmp_path / "corrections.csv"
    assert service.export("reviews", out) == 1
    assert list(csv.DictReader(out.open())) == [{"id": "req-1:1", "text": "stale bread", "label": "neg"}]
    log.close()


def test_an_answer_corrected_again_exports_and_counts_once_with_its_latest_label(store_url: str, tmp_path: Path) -> None:
    """Twenty corrections of one answer made a retrain due and exported twenty rows with one id, of which `data prepare`
    kept the first: the oldest correction won over the user's later mind."""
    from tunesmith.tune.trigger import corrections_since

    store = Store(store_url)
    service = FeedbackService(store)
    with store.session() as s:
        s.add(Prediction(request_id="req-1", model="reviews", model_version="1", kind="predict", created=time.time(),
                         inputs=["stale bread", "great food"], outputs=[LABELS, LABELS], latency_ms=1.0))
    for i, label in enumerate(["neg", "pos", "neg", "pos"] * 5):  # changing their mind; the last says pos
        assert isinstance(service.submit(FeedbackRequest(request_id="req-1", label=label, comment=f"try {i}")), FeedbackCreated)
    assert isinstance(service.submit(FeedbackRequest(request_id="req-1", index=1, label="neg")), FeedbackCreated)
    count, newest = corrections_since(store, "reviews", 0.0)
    assert count == 2 and newest is not None
    with store.session() as s:  # logged without its inputs: nothing to export, so nothing to retrain on
        s.add(Prediction(request_id="req-2", model="reviews", model_version="1", kind="predict", created=time.time(),
                         inputs=None, outputs=None, latency_ms=1.0))
    assert isinstance(service.submit(FeedbackRequest(request_id="req-2", label="neg")), FeedbackCreated)
    assert corrections_since(store, "reviews", 0.0)[0] == 2
    out = tmp_path / "corrections.csv"
    assert service.export("reviews", out) == 2
    assert list(csv.DictReader(out.open())) == [{"id": "req-1:0", "text": "stale bread", "label": "pos"},
                                                {"id": "req-1:1", "text": "great food", "label": "neg"}]
    with store.session() as s:
        first = min(f.created for f in s.query(Feedback).all())
    assert service.export("reviews", out, until=first) == 1  # what had arrived by then: the first correction
    assert list(csv.DictReader(out.open()))[0]["label"] == "neg"


def test_a_change_of_mind_back_is_stored_and_a_retry_is_not(store_url: str, tmp_path: Path) -> None:
    """neg, pos, neg: the third was taken for a retry of the first (same words, same id), nothing stored, and the
    export trained on pos, the opposite of what the reviewer last said."""
    store = Store(store_url)
    service = FeedbackService(store)
    with store.session() as s:
        s.add(Prediction(request_id="req-1", model="reviews", model_version="1", kind="predict", created=time.time(),
                         inputs=["stale bread"], outputs=[LABELS], latency_ms=1.0))
    ids = [service.submit(FeedbackRequest(request_id="req-1", label=label, user_id="ann")).id for label in ("neg", "pos", "neg")]
    assert len(set(ids)) == 3
    again = service.submit(FeedbackRequest(request_id="req-1", label="neg", user_id="ann"))  # a client's retry of the last
    assert again.id == ids[2]
    with store.session() as s:
        assert s.query(Feedback).count() == 3
    assert service.export("reviews", tmp_path / "c.csv") == 1
    assert list(csv.DictReader((tmp_path / "c.csv").open()))[0]["label"] == "neg"


def test_chat_corrections_export_as_openai_chat_lines(store_url: str, tmp_path: Path) -> None:
    store = Store(store_url)
    log = PredictionLog(store)
    service = FeedbackService(store, log)
    convo = [{"role": "user", "content": "capital of france?"}]
    log.record("chatcmpl-1", "bot", "v1", "chat", convo, ["lyon"], 5.0)
    assert isinstance(service.submit(FeedbackRequest(request_id="chatcmpl-1", rating="down", answer="paris")), FeedbackCreated)
    out = tmp_path / "fixes.jsonl"
    assert service.export("bot", out) == 1
    assert json.loads(out.read_text())["messages"] == [*convo, {"role": "assistant", "content": "paris"}]
    # /v1/completions logs the batch's prompts: each correction goes with its own prompt, as the user's turn (every
    # prompt went into every line, as bare strings `data prepare` refused)
    log.record("cmpl-1", "bot", "v1", "completion", ["2+2=", "3+3="], ["5", "7"], 5.0)
    for index, answer in ((0, "4"), (1, "6")):
        assert isinstance(service.submit(FeedbackRequest(request_id="cmpl-1", index=index, answer=answer)), FeedbackCreated)
    assert service.export("bot", out) == 3
    lines = [json.loads(line)["messages"] for line in out.read_text().splitlines()]
    assert lines[1:] == [[{"role": "user", "content": "2+2="}, {"role": "assistant", "content": "4"}],
                         [{"role": "user", "content": "3+3="}, {"role": "assistant", "content": "6"}]]
    log.close()


def test_a_job_s_model_exports_by_its_registry_name_what_was_corrected_under_its_ft_id(store_url: str,
                                                                                       tmp_path: Path) -> None:
    """A job registers its model under its suffix, and it answers as its ft: id: `feedback export --model marv` (what
    `retrain` suggests) found no corrections, and wrote them as an empty CSV (`id,text,label`) into a .jsonl file."""
    from tunesmith.store.schema import ModelVersion, RegisteredModel

    store = Store(store_url)
    log = PredictionLog(store)
    service = FeedbackService(store, log)
    ft = "ft:tiny:tunesmith:marv:abc123"
    with store.session() as s:
        s.add(RegisteredModel(name="marv", created_at=0))
        s.flush()
        s.add(ModelVersion(id="marv-1", model="marv", version=1, stage="production", run_path="/runs/marv", task="chat",
                           base_model="tiny", metrics={}, dataset_fingerprint="x", created_at=0, stage_changed_at=0,
                           lineage={"job": "ftjob-1", "fine_tuned_model": ft}))
    out = tmp_path / "fixes.jsonl"
    assert service.export("marv", out) == 0 and out.read_text() == ""  # none yet: an empty chat file
    convo = [{"role": "user", "content": "capital of france?"}]
    log.record("chatcmpl-1", ft, "abc123", "chat", convo, ["lyon"], 5.0)
    assert isinstance(service.submit(FeedbackRequest(request_id="chatcmpl-1", answer="paris")), FeedbackCreated)
    assert service.export("marv", out) == 1
    assert json.loads(out.read_text())["messages"] == [*convo, {"role": "assistant", "content": "paris"}]
    log.close()


def test_inputs_are_not_kept_when_opted_out_and_cleared_after_retention(store_url: str, tmp_path: Path) -> None:
    store = Store(store_url)
    private = PredictionLog(store, log_inputs=False)
    private.record("req-p", "reviews", "v1", "predict", ["secret"], [LABELS], 1.0)
    private.flush()
    with store.session() as s:
        row = s.get(Prediction, "req-p")
        assert row.inputs is None and row.outputs is None and row.model == "reviews"
    service = FeedbackService(store, private)
    assert isinstance(service.submit(FeedbackRequest(request_id="req-p", label="neg")), FeedbackCreated)
    with pytest.raises(ConfigError, match="no-log-inputs"):
        service.export("reviews", tmp_path / "x.csv")
    private.close()
    log = PredictionLog(store)
    log.record("req-old", "reviews", "v1", "predict", ["old text"], [LABELS], 1.0)
    log.record("req-old", "reviews", "v1", "predict", ["a repeated id keeps the first"], [LABELS], 1.0)
    log.flush()
    with store.session() as s:
        s.get(Prediction, "req-old").created = time.time() - 40 * 86400
    assert log.purge(30) == 1
    with store.session() as s:
        assert s.get(Prediction, "req-old").inputs is None
    assert log.purge(30) == 0  # it cleared the same rows again every hour (a JSON null is not SQL's NULL)
    log.close()


def test_feedback_is_checked_without_logged_inputs_or_after_the_retention(store_url: str) -> None:
    """--no-log-inputs kept nothing to check feedback against: an unknown label or an index past the batch was stored
    with a 201. The answer's shape (items, the model's labels; no content) is logged instead, and outlives the purge."""
    store = Store(store_url)
    private = PredictionLog(store, log_inputs=False)
    private.record("req-p", "reviews", "v1", "predict", ["secret", "also secret"], [LABELS, LABELS], 1.0)
    private.record("req-v", "prices", "v1", "predict", ["secret"], [{"value": 3.5}], 1.0)
    private.flush()
    with store.session() as s:
        row = s.get(Prediction, "req-p")
        assert row.inputs is None and row.outputs is None and "secret" not in json.dumps(row.answer_shape)
    service = FeedbackService(store, private)
    refused = [("req-p", {"label": "no-such-label"}, "label"), ("req-p", {"rating": "up", "index": 2}, "index"),
               ("req-p", {"label": ["pos", "neg"]}, "label"), ("req-p", {"value": 2.0}, "value"),
               ("req-v", {"label": "pos"}, "label"), ("req-p", {"answer": "x"}, "answer")]
    for rid, body, field in refused:
        err = service.submit(FeedbackRequest(request_id=rid, **body))
        assert isinstance(err, ApiError) and err.status == 400 and err.param == field, (body, err)
    for rid, body in (("req-p", {"label": "neg", "index": 1}), ("req-v", {"value": 2.0})):
        assert isinstance(service.submit(FeedbackRequest(request_id=rid, **body)), FeedbackCreated), body
    private.close()
    log = PredictionLog(store)
    log.record("req-old", "reviews", "v1", "predict", ["old text"], [LABELS], 1.0)
    log.flush()
    with store.session() as s:
        s.get(Prediction, "req-old").created = time.time() - 40 * 86400
    assert log.purge(30) == 1
    err = service.submit(FeedbackRequest(request_id="req-old", label="maybe"))
    assert isinstance(err, ApiError) and err.param == "label", err
    log.close()


def test_a_nul_character_is_stored_as_a_replacement_character(store_url: str) -> None:
    """PostgreSQL cannot store U+0000: feedback with one answered 500, and a logged text with one lost its log batch,
    other clients' rows included. Both stores now keep U+FFFD in its place."""
    store = Store(store_url)
    log = PredictionLog(store)
    service = FeedbackService(store, log)
    log.record("req-1", "reviews", "reviews-v1", "predict", ["great\x00 food"], [{**LABELS, "note\x00": "a\x00"}], 3.0)
    log.record("req-2", "reviews", "reviews-v1", "predict", ["fine food"], [LABELS], 3.0)
    assert log.flush()
    created = service.submit(FeedbackRequest(request_id="req-1", rating="down", label="neg", comment="bad\x00 one"))
    assert isinstance(created, FeedbackCreated)
    with store.session() as s:
        assert s.get(Prediction, "req-1").inputs == ["great\ufffd food"]
        assert s.get(Prediction, "req-1").outputs == [{**LABELS, "note\ufffd": "a\ufffd"}]
        assert s.get(Prediction, "req-2").inputs == ["fine food"]
        assert s.query(Feedback).one().comment == "bad\ufffd one"
    assert log.errors == 0
    log.close()


def test_a_row_the_database_refuses_loses_only_itself(store_url: str) -> None:
    """One row the database refused failed its whole batch: up to 512 other answers were not logged."""
    if not store_url.startswith("postgresql"):
        pytest.skip("SQLite does not enforce VARCHAR lengths, so no row is refused there")
    store = Store(store_url)
    log = PredictionLog(store)
    for rid in ("req-1", "r" * 200, "req-3"):  # queued together: one batch
        log.record(rid, "reviews", "reviews-v1", "predict", ["food"], [LABELS], 3.0)
    assert log.flush()
    with store.session() as s:
        assert sorted(p.request_id for p in s.query(Prediction).all()) == ["req-1", "req-3"]
    assert log.errors == 1
    log.close()


def test_a_retried_feedback_item_is_stored_and_counted_once(store_url: str) -> None:
    """A client that saw no answer sends the same item again: it gets the first one's id, and nothing is counted
    twice (each retry used to be a new row: a second thumbs in the A/B test, a second correction)."""
    store = Store(store_url)
    log = PredictionLog(store)
    accepted: list[str] = []
    service = FeedbackService(store, log, on_accept=lambda p, f: accepted.append(f.id))
    log.record("req-1", "reviews", "reviews-v1", "predict", ["great food"], [LABELS], 3.0, user_id="u1")
    body = {"request_id": "req-1", "rating": "down", "label": "neg", "user_id": "u1"}
    first = service.submit(FeedbackRequest(**body))
    again = service.submit(FeedbackRequest(**dict(reversed(body.items()))))
    assert isinstance(first, FeedbackCreated) and isinstance(again, FeedbackCreated)
    assert again.id == first.id and again.created_at == first.created_at
    other = service.submit(FeedbackRequest(**{**body, "rating": "up"}))  # a different item is a new one
    assert isinstance(other, FeedbackCreated) and other.id != first.id
    with store.session() as s:
        assert s.query(Feedback).count() == 2
    assert accepted == [first.id, other.id]
    with pytest.raises(ValidationError, match="value"):  # json.loads reads NaN; an MAE over it would be NaN
        FeedbackRequest(request_id="req-1", value=float("nan"))
    log.close()


def test_a_label_that_cannot_be_a_correction_is_refused_by_name(store_url: str) -> None:
    """An empty label list for a single-label model, or several labels, used to be stored and then dropped (or
    quarantined) at retraining without a word to the client."""
    store = Store(store_url)
    log = PredictionLog(store)
    service = FeedbackService(store, log)
    log.record("req-1", "reviews", "reviews-v1", "predict", ["great food"], [LABELS], 3.0)
    log.record("req-m", "tags", "tags-v1", "predict", ["great food"],
               [{"label": ["food"], "probabilities": {"food": 0.9, "service": 0.2}}], 3.0)
    for label in ([], ["pos", "neg"]):
        req = FeedbackRequest(request_id="req-1", label=label)
        err = service.submit(req)
        assert isinstance(err, ApiError) and err.status == 400 and err.param == "label", (req, err)
    assert isinstance(service.submit(FeedbackRequest(request_id="req-1", label=["neg"])), FeedbackCreated)
    assert isinstance(service.submit(FeedbackRequest(request_id="req-m", label=["food", "service"])), FeedbackCreated)
    log.close()


def _rated_up(store_url: str) -> tuple[PredictionLog, FeedbackService]:
    """One logged answer of 'reviews', rated up and never corrected."""
    store = Store(store_url)
    log = PredictionLog(store)
    service = FeedbackService(store, log)
    log.record("req-1", "reviews", "reviews-v1", "predict", ["great food"], [LABELS], 3.0)
    assert isinstance(service.submit(FeedbackRequest(request_id="req-1", rating="up")), FeedbackCreated)
    return log, service


def test_exporting_ratings_without_corrections_writes_none_and_says_no_false_reason(store_url: str, tmp_path: Path) -> None:
    # It raised "the corrections ... have no inputs (--no-log-inputs ...)" though the inputs were logged.
    log, service = _rated_up(store_url)
    assert service.export("reviews", tmp_path / "c.csv") == 0
    log.close()


def test_exporting_a_model_name_nothing_knows_is_refused_before_writing(store_url: str, tmp_path: Path) -> None:
    """A mistyped --model wrote an empty file and exited 0: a retraining on it would have found no corrections."""
    log, service = _rated_up(store_url)
    out = tmp_path / "c.csv"
    with pytest.raises(NotFound, match="no model 'reveiws'.*check the model name") as err:
        service.export("reveiws", out)
    assert err.value.exit_code == 2 and not out.exists()
    assert service.export("reviews", out) == 0  # a known model with nothing corrected yet: an empty file, as before
    log.close()


def test_closing_the_log_writes_a_backlog_that_takes_longer_than_its_patience(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A fixed 10 s join dropped the rest of a large backlog (60,000 queued: 4,192 lost) without a word."""
    commit = PredictionLog._commit

    def slow_commit(self: PredictionLog, rows: list) -> None:  # a store that takes 0.15 s a batch, whatever the load
        time.sleep(0.15)
        commit(self, rows)

    monkeypatch.setattr(PredictionLog, "_commit", slow_commit)
    store = Store(f"sqlite:///{tmp_path / 'log.db'}")
    log = PredictionLog(store)
    for i in range(4096):  # 8 batches: at least 1.2 s of writing
        log.record(f"req-{i}", "reviews", "v1", "predict", ["text"], [LABELS], 1.0)
    log.close(patience_s=1.0)  # less than the whole backlog takes, far more than one batch
    with store.session() as s:
        assert s.query(Prediction).count() == 4096


def test_the_export_joins_labels_with_the_models_separator_and_reads_its_task_from_exportable_rows(tmp_path: Path) -> None:
    """Labels were always joined with "," ("paris, france,pos" read back as labels that do not exist), and one value
    on an answer logged without inputs turned every label correction into an empty score."""
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    service = FeedbackService(store)
    with store.session() as s:
        s.add(Prediction(request_id="req-1", model="m", model_version="1", kind="predict", created=time.time(),
                         inputs=["a trip"], outputs=None, latency_ms=1.0))
        s.add(Prediction(request_id="req-2", model="m", model_version="1", kind="predict", created=time.time(),
                         inputs=None, outputs=None, latency_ms=1.0))
    assert isinstance(service.submit(FeedbackRequest(request_id="req-1", label=["paris, france", "pos"])), FeedbackCreated)
    assert isinstance(service.submit(FeedbackRequest(request_id="req-2", value=3.5)), FeedbackCreated)
    assert service.export("m", tmp_path / "c.csv", separator="|") == 1
    assert list(csv.DictReader((tmp_path / "c.csv").open())) == [{"id": "req-1:0", "text": "a trip", "label": "paris, france|pos"}]


def test_a_multi_label_answer_none_of_whose_labels_applies_is_stored_exported_and_read_back_as_no_labels(
        store_url: str, tmp_path: Path, make_config) -> None:
    """`label: []` ("none of the labels applies") was a 400, and a stored one was skipped by the export."""
    from tunesmith.data.records import Canonicalizer, Corrections

    store = Store(store_url)
    log = PredictionLog(store)
    service = FeedbackService(store, log)
    log.record("req-m", "tags", "tags-v1", "predict", ["the weather is nice", "great food"],
               [{"label": ["food"], "probabilities": {"food": 0.7, "price": 0.1}}] * 2, 3.0)
    log.record("req-1", "reviews", "reviews-v1", "predict", ["great food"], [LABELS], 3.0)
    err = service.submit(FeedbackRequest(request_id="req-1", label=[]))  # a single-label answer: still refused
    assert isinstance(err, ApiError) and err.status == 400 and err.param == "label"
    assert isinstance(service.submit(FeedbackRequest(request_id="req-m", label=[])), FeedbackCreated)
    assert isinstance(service.submit(FeedbackRequest(request_id="req-m", index=1, label=["food", "price"])), FeedbackCreated)
    with store.session() as s:
        assert sorted((f.item_index, f.corrected_label) for f in s.query(Feedback).all()) == [(0, []), (1, ["food", "price"])]
    out = tmp_path / "c.csv"
    assert service.export("tags", out, separator=";") == 2
    rows = list(csv.DictReader(out.open()))
    assert [(r["id"], r["label"]) for r in rows] == [("req-m:0", "[]"), ("req-m:1", "food;price")]
    # what `data prepare` makes of them: the empty label set, and the two labels
    cfg = make_config([{"path": str(out)}], task={"type": "multi_label_classification", "label_separator": ";"})
    reader = Canonicalizer(cfg, Corrections(None, "label"))
    assert [reader._convert("label", r["label"]) for r in rows] == [[], ["food", "price"]]
    log.close()


def test_the_export_joins_labels_with_the_registered_runs_separator_by_default(store_url: str, tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """`feedback export` joined with "," whatever the model's task.label_separator ("food;price" read back as one
    unknown label); retraining passed the right one."""
    from types import SimpleNamespace

    from tunesmith.store.schema import ModelVersion, RegisteredModel

    store = Store(store_url)
    service = FeedbackService(store)
    now = time.time()
    with store.session() as s:
        s.add(RegisteredModel(name="tags", created_at=int(now)))
        s.flush()
        for version, stage, run in ((1, "production", "runs/v1"), (2, "candidate", "runs/v2")):
            s.add(ModelVersion(id=f"tags-v{version}", model="tags", version=version, stage=stage, run_path=run,
                               task="multi_label_classification", base_model="b", metrics={}, dataset_fingerprint="f",
                               lineage={}, created_at=int(now), stage_changed_at=int(now)))
        s.add(Prediction(request_id="req-1", model="tags", model_version="tags-v1", kind="predict", created=now,
                         inputs=["a trip"], outputs=None, latency_ms=1.0))
    separators = {"runs/v1": ";", "runs/v2": "|"}
    monkeypatch.setattr("tunesmith.artifacts.Run", lambda path: SimpleNamespace(
        config=SimpleNamespace(task=SimpleNamespace(label_separator=separators[str(path)]))))
    assert service.label_separator("tags") == ";"  # production's, not the newer candidate's
    assert isinstance(service.submit(FeedbackRequest(request_id="req-1", label=["food", "price"])), FeedbackCreated)
    assert service.export("tags", tmp_path / "c.csv") == 1
    assert list(csv.DictReader((tmp_path / "c.csv").open()))[0]["label"] == "food;price"
    assert service.label_separator("unknown") == ","


def test_feedback_on_another_replicas_answer_still_on_its_way_to_the_store_is_found(store_url: str) -> None:
    """Two replicas on one store: feedback sent to B right after A answered was a 404 (A's row still in its log's
    writer; B flushed only its own log) and was lost. B now looks again for a while; an unknown id is still a 404."""
    store = Store(store_url)
    log_a, log_b = PredictionLog(store), PredictionLog(store)
    service_b = FeedbackService(store, log_b)
    late = threading.Timer(0.3, lambda: log_a.record("req-a", "reviews", "reviews-v1", "predict", ["great tea"],
                                                     [LABELS], 3.0))
    late.start()  # committed by A's writer some time after B is asked
    created = service_b.submit(FeedbackRequest(request_id="req-a", rating="up"))
    assert isinstance(created, FeedbackCreated) and created.request_id == "req-a"
    started = time.monotonic()
    unknown = service_b.submit(FeedbackRequest(request_id="req-never", rating="up"))
    assert isinstance(unknown, ApiError) and (unknown.status, unknown.code) == (404, "request_not_found")
    assert FIND_WAIT_S <= time.monotonic() - started < FIND_WAIT_S + 2  # looked for a bounded time only
    late.join()
    log_a.close()
    log_b.close()
    store.close()
