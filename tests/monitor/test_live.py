"""Live figures from the prediction log (SQLite and PostgreSQL): exact numbers on small synthetic logs, and drift
of live traffic against a real prepared training set."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.data.test_prepare import labelled, write_csv
from tunesmith.artifacts import DatasetVersion, RunManifest
from tunesmith.monitor.live import TrainingProfile, drift, live_metrics, time_series, word_count
from tunesmith.store.db import Store
from tunesmith.store.schema import Feedback, Prediction

T0 = 3600.0 * 472_222  # on the hour, so time buckets are predictable


def probs(label: str, p: float) -> dict[str, Any]:
    other = "neg" if label == "pos" else "pos"
    return {"label": label, "probabilities": {label: p, other: round(1 - p, 6)}}


def insert(store: Store, predictions: list[dict[str, Any]], feedback: list[dict[str, Any]] = ()) -> None:
    """Rows as the server's log and POST /v1/feedback write them (every column given: one executemany)."""
    p_rows = [{"model": "reviews", "kind": "predict", "inputs": None, "user_id": None, "variant": None, **p}
              for p in predictions]
    f_rows = [{"id": f"fb-{uuid.uuid4().hex[:12]}", "item_index": 0, "created": T0 + 7200, "thumbs_up": None,
               "score": None, "corrected_label": None, "corrected_value": None, "corrected_answer": None, "comment": None,
               "user_id": None, **f} for f in feedback]
    with store.session() as s:
        s.execute(Prediction.__table__.insert(), p_rows)
        if f_rows:
            s.execute(Feedback.__table__.insert(), f_rows)


def seed(store: Store) -> None:
    v1 = {"model_version": "reviews-v1"}
    insert(store, [
        {**v1, "request_id": "r1", "created": T0 + 10, "latency_ms": 10.0, "outputs": [probs("pos", 0.9)]},
        {**v1, "request_id": "r2", "created": T0 + 20, "latency_ms": 20.0, "outputs": [probs("neg", 0.7)]},
        {**v1, "request_id": "r3", "created": T0 + 30, "latency_ms": 30.0, "outputs": [probs("pos", 0.6), probs("pos", 0.8)]},
        {**v1, "request_id": "r4", "created": T0 + 3605, "latency_ms": 40.0, "outputs": [probs("neg", 0.55)]},
        {"model_version": "reviews-v2", "request_id": "r5", "created": T0 + 15, "latency_ms": 100.0,
         "outputs": [probs("pos", 0.99)], "variant": "v2"},
        # The shadow challenger answered a copy of r2: the correction of r2 applies to it, the thumbs do not.
        {"model_version": "reviews-v3", "request_id": "r2:shadow", "created": T0 + 21, "latency_ms": 50.0,
         "outputs": [probs("pos", 0.8)], "variant": "shadow:v3"},
        {"model": "other", "model_version": "other-v1", "request_id": "x1", "created": T0 + 10, "latency_ms": 1.0,
         "outputs": [probs("pos", 0.5)]},
    ], [
        {"request_id": "r1", "thumbs_up": True},
        {"request_id": "r2", "thumbs_up": False, "corrected_label": ["pos"]},  # predicted neg: wrong
        {"request_id": "r2", "corrected_label": ["neg"], "created": T0 + 7300},  # corrected again: counts once, first
        {"request_id": "r3", "item_index": 1, "score": 5, "corrected_label": ["pos"]},  # predicted pos: right
        {"request_id": "r3", "item_index": 0, "score": 2},
        {"request_id": "r4", "comment": "slow"},  # feedback, but not rated
        {"request_id": "r5", "thumbs_up": True},
        {"request_id": "x1", "thumbs_up": False},
    ])


def test_live_metrics_per_version_are_exact(store_url: str) -> None:
    store = Store(store_url)
    seed(store)
    metrics = live_metrics(store, "reviews")
    assert list(metrics) == ["reviews-v1", "reviews-v2", "reviews-v3"]
    v1 = metrics["reviews-v1"]
    assert (v1.requests, v1.items, v1.shadow_requests) == (4, 5, 0)
    # numpy's linear interpolation over [10, 20, 30, 40]: rank 1.5, 2.85, 2.97
    assert (v1.latency_p50_ms, v1.latency_p95_ms, v1.latency_p99_ms) == pytest.approx((25.0, 38.5, 39.7))
    assert v1.labels == {"pos": 3, "neg": 2} and v1.label_shares == pytest.approx({"pos": 0.6, "neg": 0.4})
    assert v1.mean_confidence == pytest.approx((0.9 + 0.7 + 0.6 + 0.8 + 0.55) / 5)
    assert (v1.feedback, v1.rated, v1.positive) == (6, 4, 2)  # every feedback row; each answer rated once
    assert v1.positive_rate == 0.5 and v1.mean_score == 3.5
    assert (v1.corrected, v1.corrected_accuracy) == (2, 0.5)
    assert (v1.first, v1.last) == (T0 + 10, T0 + 3605)
    v2 = metrics["reviews-v2"]
    assert (v2.requests, v2.latency_p50_ms, v2.positive_rate, v2.corrected_accuracy) == (1, 100.0, 1.0, None)
    shadow = metrics["reviews-v3"]
    assert (shadow.requests, shadow.shadow_requests, shadow.feedback, shadow.rated) == (1, 1, 0, 0)
    assert (shadow.corrected, shadow.corrected_accuracy) == (1, 1.0)
    later = live_metrics(store, "reviews", since=T0 + 3600)
    assert list(later) == ["reviews-v1"] and later["reviews-v1"].requests == 1 and later["reviews-v1"].feedback == 1
    assert live_metrics(store, "nobody") == {}


def test_time_series_buckets_by_answer_time(store_url: str) -> None:
    store = Store(store_url)
    seed(store)
    series = time_series(store, "reviews", bucket_s=3600)
    assert [(p["start"], p["model_version"], p["requests"]) for p in series] == [
        (T0, "reviews-v1", 3), (T0, "reviews-v2", 1), (T0, "reviews-v3", 1), (T0 + 3600, "reviews-v1", 1)]
    first = series[0]
    assert first["end"] == T0 + 3600 and first["items"] == 4
    assert (first["latency_p50_ms"], first["latency_p95_ms"]) == pytest.approx((20.0, 29.0))
    assert first["labels"] == pytest.approx({"pos": 0.75, "neg": 0.25})
    assert (first["feedback"], first["rated"], first["positive_rate"], first["mean_score"]) == (5, 4, 0.5, 3.5)
    last = series[-1]  # the feedback came hours later; it stays with the answer it rates
    assert (last["feedback"], last["rated"], last["positive_rate"]) == (1, 0, None)
    assert [p["requests"] for p in time_series(store, "reviews", bucket_s=86400)] == [4, 1, 1]
    with pytest.raises(ValueError, match="bucket_s"):
        time_series(store, "reviews", bucket_s=0)


def test_multi_label_and_regression_corrections(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    tags = {"model": "tags", "model_version": "tags-v1", "latency_ms": 5.0, "created": T0}
    stars = {"model": "stars", "model_version": "stars-v1", "latency_ms": 5.0, "created": T0}
    insert(store, [
        {**tags, "request_id": "t1", "outputs": [{"label": ["a", "b"], "probabilities": {"a": 0.9, "b": 0.8, "c": 0.1}}]},
        {**tags, "request_id": "t2", "outputs": [{"label": ["a"], "probabilities": {"a": 0.7, "b": 0.2, "c": 0.4}}]},
        {**stars, "request_id": "s1", "outputs": [{"value": 3.5}]},
        {**stars, "request_id": "s2", "outputs": [{"value": 1.0}]},
    ], [
        {"request_id": "t1", "corrected_label": ["b", "a"]},  # the same set: right
        {"request_id": "t2", "corrected_label": ["a", "c"]},  # c missed: wrong
        {"request_id": "s1", "corrected_value": 4.0},
        {"request_id": "s2", "corrected_value": 2.0, "score": 4},
    ])
    t = live_metrics(store, "tags")["tags-v1"]
    assert t.labels == {"a": 2, "b": 1} and (t.corrected, t.corrected_accuracy) == (2, 0.5)
    assert t.mean_confidence == pytest.approx(0.8)
    s = live_metrics(store, "stars")["stars-v1"]
    assert (s.corrected_values, s.corrected_mae, s.mean_value, s.labels) == (2, 0.75, 2.25, {})
    assert (s.rated, s.positive_rate, s.mean_score) == (1, 1.0, 4.0)


# -- drift against a prepared training set --------------------------------------------------------------


def fake_run(folder: Path, dataset: Path | str, labels: list[str] | None = None, task: str = "single_label_classification") -> Path:
    """A run folder as the registry and the monitor read it: run.json pointing at a prepared dataset."""
    folder.mkdir(parents=True, exist_ok=True)
    manifest = RunManifest(name=folder.name, task=task, description="", created_at="2026-12-01", tunesmith_version="0",
                           base_model="tiny", base_model_path="/m", method="full", adapter=False,
                           labels=labels or ["neg", "pos"], max_length=32, dataset=str(dataset), dataset_fingerprint="f" * 64,
                           parameters={"trainable": 1, "total": 1}, metrics={"accuracy": 0.9, "f1_macro": 0.88})
    (folder / "run.json").write_text(manifest.model_dump_json())
    (folder / "model").mkdir(exist_ok=True)  # the weights' folder the registry checks before a promotion
    return folder


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer: Path) -> Path:
    """A real prepared pos/neg dataset (150 rows: 120 in train), made once per module."""
    from tunesmith.config import parse_config
    from tunesmith.data.prepare import prepare

    root = tmp_path_factory.mktemp("monitor-data")
    csv_path = write_csv(root / "d.csv", labelled(150, seed=3))
    cfg = parse_config({"name": "t", "task": {}, "data": {"sources": [{"path": str(csv_path)}], "output_dir": str(root / "out")},
                        "model": {"name": str(tiny_tokenizer)}}).resolve_paths(root)
    return prepare(cfg).path


def live_rows(texts: list[str], labels: list[str], version: str = "reviews-v1", start: float = T0) -> list[dict[str, Any]]:
    return [{"request_id": f"{version}-{uuid.uuid4().hex[:10]}", "model_version": version, "created": start + i,
             "latency_ms": 5.0, "inputs": [text], "outputs": [probs(label, 0.8)]}
            for i, (text, label) in enumerate(zip(texts, labels))]


def test_training_profile_reads_the_train_split(dataset: Path, tmp_path: Path) -> None:
    profile = TrainingProfile.of_run(fake_run(tmp_path / "run", dataset))
    train = DatasetVersion(dataset).table("train")
    texts = train.column("text").to_pylist()
    assert profile is not None and profile.task == "single_label_classification"
    assert profile.label_counts == {"pos": train.column("label").to_pylist().count("pos"),
                                    "neg": train.column("label").to_pylist().count("neg")}
    assert profile.word_lengths.tolist() == [word_count(t) for t in texts] and len(profile.n_tokens) == len(texts) == 120
    assert {"apple", "banana", "item"} <= profile.vocabulary
    assert TrainingProfile.of_run(tmp_path / "run") is profile  # cached: a report or a server may ask often
    assert TrainingProfile.of_run(fake_run(tmp_path / "gone", tmp_path / "deleted-dataset")) is None
    assert TrainingProfile.of_run(tmp_path / "no-run") is None


def test_drift_after_an_incremental_round_compares_with_the_full_data(store_url: str, dataset: Path, tmp_path: Path) -> None:
    """An incremental round trains on a replay sample weighted to the corrections: profiled from the run's own
    dataset, traffic like all the training data read as drift and could trigger `retrain --if-needed` at once."""
    import shutil
    import time

    import pyarrow.compute as pc

    from tunesmith.artifacts import write_split
    from tunesmith.registry.service import Registry
    from tunesmith.tune.trigger import _drift

    replay = tmp_path / "dataset-incremental"
    shutil.copytree(dataset, replay)
    train = DatasetVersion(dataset).table("train")
    write_split(replay, "train", train.filter(pc.equal(train.column("label"), "pos")))  # the corrections' class
    store = Store(store_url)
    production = Registry(store).add(fake_run(tmp_path / "round", replay), "reviews", stage="production",
                                     lineage={"dataset": str(dataset)})
    texts, labels = train.column("text").to_pylist(), train.column("label").to_pylist()
    insert(store, live_rows(texts * 2, labels * 2, start=time.time() + 1))  # trigger.MIN_DRIFT_INPUTS: 200
    psi, _ = _drift(store, "reviews", production)
    assert psi is not None and psi < 0.1  # traffic like the training data: no drift


def test_drift_is_quiet_on_training_like_traffic_and_warns_on_a_shift(dataset: Path, tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    profile = TrainingProfile.of_run(fake_run(tmp_path / "run", dataset))
    train = DatasetVersion(dataset).table("train")
    texts, labels = train.column("text").to_pylist(), train.column("label").to_pylist()
    insert(store, live_rows(texts, labels))
    same = drift(store, "reviews", profile)
    assert same["warnings"] == [], same["warnings"]
    assert same["lengths"]["psi"] == pytest.approx(0) and same["labels"]["psi"] == pytest.approx(0)
    assert same["vocabulary"]["oov_rate"] == 0 and same["live"]["requests"] == same["live"]["texts"] == 120

    # v2's traffic: mostly "pos", and every text carries words the training set never had.
    shifted_texts = [f"zebra quasar {t} xylophone" for t in texts] * 2
    shifted_labels = ["pos" if i % 10 else "neg" for i in range(len(shifted_texts))]
    insert(store, live_rows(shifted_texts, shifted_labels, "reviews-v2", start=T0 + 1000))
    shifted = drift(store, "reviews", profile, model_version="reviews-v2")
    words = " | ".join(shifted["warnings"])
    assert "prediction distribution drifted" in words and "words unseen in training" in words
    assert shifted["labels"]["status"] == "significant" and shifted["vocabulary"]["status"] == "drifted"
    assert shifted["labels"]["shares"]["pos"]["live"] == pytest.approx(0.9)
    assert shifted["live"] == {"requests": 240, "texts": 240, "model_version": "reviews-v2",
                               "from": T0 + 1000, "to": T0 + 1239}
    assert drift(store, "reviews", profile, model_version="reviews-v1")["warnings"] == []
    assert drift(store, "reviews", profile, limit=50)["live"]["requests"] == 50  # the newest only
    # A small window: the figures say they are noisy rather than staying silent.
    assert any("only 20 live examples" in w for w in drift(store, "reviews", profile, limit=20)["warnings"])


def test_the_newest_requests_logged_with_inputs_fill_the_sample(store_url: str) -> None:
    from tunesmith.monitor.live import live_sample
    from tunesmith.monitor.log import PredictionLog

    store = Store(store_url)
    insert(store, live_rows([f"text {i}" for i in range(30)], ["pos"] * 30))
    # Then the server ran with --no-log-inputs: newer requests, ids and timings only (stored as a JSON null).
    log = PredictionLog(store, log_inputs=False)
    for i in range(10):
        log.record(f"bare-{i}", "reviews", "reviews-v1", "predict", ["secret"], [probs("pos", 0.9)], 1.0)
    assert log.flush()
    log.close()
    sample = live_sample(store, "reviews", limit=10)
    assert sample.requests == len(sample.texts) == 10  # the newest 10 that have inputs, not the 10 without
    assert sample.texts == [f"text {i}" for i in range(29, 19, -1)]


def test_regression_values_drift(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    rng = np.random.default_rng(0)
    scores = rng.normal(3.0, 0.5, 400)
    profile = TrainingProfile(run="r", dataset="d", task="regression", n_tokens=np.full(400, 5), word_lengths=np.full(400, 3.0),
                              label_counts=None, scores=scores, vocabulary=frozenset({"good", "food", "here"}))
    rows = [{"request_id": f"s{i}", "model_version": "stars-v1", "created": T0 + i, "latency_ms": 1.0,
             "inputs": ["good food here"], "outputs": [{"value": float(v)}]} for i, v in enumerate(rng.normal(4.0, 0.5, 300))]
    insert(store, rows)
    report = drift(store, "reviews", profile)
    assert report["values"]["status"] == "significant" and report["values"]["live_mean"] == pytest.approx(4.0, abs=0.1)
    assert [w for w in report["warnings"] if w.startswith("predicted value distribution drifted")]
    assert "labels" not in report and report["vocabulary"]["oov_rate"] == 0


def one_drift_pass(service: Any) -> None:
    """Run the server's drift watch until its first pass has published, however slow the host."""
    import asyncio

    async def one_pass() -> None:
        task = asyncio.create_task(service.watch_drift(every_s=0.01))
        for _ in range(600):
            if b"tunesmith_drift_psi{" in service.metrics.render() or task.done():
                break
            await asyncio.sleep(0.05)
        task.cancel()

    asyncio.run(one_pass())


def test_the_server_raises_drift_warnings_in_metrics(dataset: Path, tmp_path: Path) -> None:
    """The serving side of drift: Service.watch_drift sets the PSI and warning gauges of /metrics."""
    from tunesmith.config import ServeSpec
    from tunesmith.monitor.log import PredictionLog
    from tunesmith.serve.models import Served
    from tunesmith.serve.service import Service

    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    run = fake_run(tmp_path / "run", dataset)
    train = DatasetVersion(dataset).table("train")
    texts = [f"zebra quasar {t} xylophone" for t in train.column("text").to_pylist()]
    insert(store, live_rows(texts, ["pos"] * len(texts), "reviews-v1"))
    served = Served("ft:tiny:reviews:1", "sequence", "single_label_classification", str(run), "tiny", 0, "reviews-v1",
                    engine=None, registry=("reviews", "mv-1"))
    service = Service([served], ServeSpec(), log=PredictionLog(store))

    one_drift_pass(service)
    metrics = service.metrics.render().decode()
    assert 'tunesmith_drift_warning{model="reviews",signal="labels"} 1.0' in metrics
    assert 'tunesmith_drift_warning{model="reviews",signal="vocabulary"} 1.0' in metrics
    assert 'tunesmith_drift_psi{model="reviews",signal="labels"}' in metrics
    service.log.close()


def test_the_drift_gauge_needs_the_two_sample_test_to_agree(dataset: Path, tmp_path: Path) -> None:
    # On PSI alone it fired on 6 requests after a deploy (labels PSI 0.54, chi-square p 0.11), which the report itself
    # called unconfirmed: alerts built on it fired on noise.
    from tunesmith.config import ServeSpec
    from tunesmith.monitor.log import PredictionLog
    from tunesmith.serve.models import Served
    from tunesmith.serve.service import Service

    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    run = fake_run(tmp_path / "run", dataset)
    texts = DatasetVersion(dataset).table("train").column("text").to_pylist()[:6]
    insert(store, live_rows(texts, ["pos"] * 5 + ["neg"], "reviews-v1"))
    served = Served("ft:tiny:reviews:1", "sequence", "single_label_classification", str(run), "tiny", 0, "reviews-v1",
                    engine=None, registry=("reviews", "mv-1"))
    service = Service([served], ServeSpec(), log=PredictionLog(store))
    one_drift_pass(service)
    metrics = service.metrics.render().decode()
    psi = float(re.search(r'tunesmith_drift_psi\{model="reviews",signal="labels"\} (\S+)', metrics).group(1))
    assert psi > 0.25  # over the PSI threshold on its own
    assert 'tunesmith_drift_warning{model="reviews",signal="labels"} 0.0' in metrics
    service.log.close()


def test_the_server_s_drift_of_a_registry_version_reads_its_lineage_dataset(dataset: Path, tmp_path: Path) -> None:
    """After an incremental round the served run's own dataset is the replay sample: the server's gauges warned of
    drift on traffic like the training data (the trigger and the report read the lineage's full dataset)."""
    import shutil

    import pyarrow.compute as pc

    from tunesmith.artifacts import write_split
    from tunesmith.config import ServeSpec
    from tunesmith.monitor.log import PredictionLog
    from tunesmith.registry.service import Registry
    from tunesmith.serve.models import Served
    from tunesmith.serve.service import Service

    replay = tmp_path / "dataset-incremental"
    shutil.copytree(dataset, replay)
    train = DatasetVersion(dataset).table("train")
    write_split(replay, "train", train.filter(pc.equal(train.column("label"), "pos")))
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    registry = Registry(store)
    info = registry.add(fake_run(tmp_path / "round", replay), "reviews", stage="production", lineage={"dataset": str(dataset)})
    insert(store, live_rows(train.column("text").to_pylist(), train.column("label").to_pylist(), "reviews-v1"))
    # an A/B challenger's answers, all "pos": not production's traffic (the gauges read every version's rows)
    insert(store, live_rows(train.column("text").to_pylist(), ["pos"] * train.num_rows, "reviews-v2"))
    served = Served("ft:tiny:reviews:1", "sequence", "single_label_classification", info.run, "tiny", 0, "reviews-v1",
                    engine=None, registry=("reviews", info.id))
    service = Service([served], ServeSpec(), log=PredictionLog(store), registry=registry)

    one_drift_pass(service)
    assert 'tunesmith_drift_warning{model="reviews",signal="labels"} 0.0' in service.metrics.render().decode()
    service.log.close()


def test_items_of_rows_without_outputs_come_from_the_answer_shape(tmp_path: Path) -> None:
    # A batch logged with --no-log-inputs, or past retention, has no outputs: it counted as 1 item, not its 3.
    from tunesmith.monitor.log import PredictionLog

    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    for log in (PredictionLog(store), PredictionLog(store, log_inputs=False)):
        log.record(f"r{log.log_inputs}", "reviews", "reviews-v1", "predict", ["x", "y", "z"], [probs("pos", 0.9)] * 3, 1.0)
        assert log.flush()
        log.close()
    assert live_metrics(store, "reviews")["reviews-v1"].items == 6
    PredictionLog(store).purge(-1)  # every row past retention
    assert live_metrics(store, "reviews")["reviews-v1"].items == 6
    assert time_series(store, "reviews")[0]["items"] == 6


def test_multi_label_answers_with_no_label_are_a_category_of_their_own(dataset: Path, tmp_path: Path) -> None:
    """A multi-label model answering [] ("none applies") on most traffic: the shares among the labels it still gave were
    unchanged (PSI 0), and with [] everywhere the labels signal vanished."""
    import shutil

    import pyarrow as pa

    from tunesmith.artifacts import write_split
    from tunesmith.monitor.live import NO_LABEL

    tagged = tmp_path / "dataset-tags"
    shutil.copytree(dataset, tagged)
    texts = DatasetVersion(dataset).table("train").column("text").to_pylist()
    train_labels = [[], ["food"], ["food", "service"]] * (len(texts) // 3)
    write_split(tagged, "train", pa.table({"text": texts, "labels": train_labels}))
    profile = TrainingProfile.of_run(fake_run(tmp_path / "run", tagged, ["food", "service"], "multi_label_classification"))
    assert profile is not None and profile.label_counts == {NO_LABEL: 40, "food": 80, "service": 40}

    def answers(labels: list[list[str]], version: str) -> list[dict[str, Any]]:
        return [{"request_id": f"{version}-{i}", "model_version": version, "created": T0 + i, "latency_ms": 1.0,
                 "inputs": [texts[i % len(texts)]], "outputs": [{"label": ls, "probabilities": {"food": 0.1, "service": 0.1}}]}
                for i, ls in enumerate(labels)]

    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    insert(store, answers([[]] * 270 + [["food"]] * 20 + [["food", "service"]] * 10, "tags-v1"))
    insert(store, answers([[]] * 300, "tags-v2"))
    mostly = drift(store, "reviews", profile, model_version="tags-v1")["labels"]
    assert mostly["status"] == "significant" and mostly["shares"][NO_LABEL]["live"] == pytest.approx(270 / 310)
    always = drift(store, "reviews", profile, model_version="tags-v2")["labels"]
    assert always["status"] == "significant" and always["shares"][NO_LABEL] == {"train": pytest.approx(40 / 160), "live": 1.0}
    # what live_metrics counts stays label occurrences: an empty answer is not a label the model gave
    assert live_metrics(store, "reviews")["tags-v2"].labels == {}


def drift_passes_until(service: Any, done: Any) -> str:
    """Run the server's drift watch until `done(metrics text)` holds, however slow the host; the metrics text."""
    import asyncio

    async def passes() -> None:
        task = asyncio.create_task(service.watch_drift(every_s=0.01))
        for _ in range(600):
            if done(service.metrics.render().decode()) or task.done():
                break
            await asyncio.sleep(0.05)
        task.cancel()

    asyncio.run(passes())
    metrics = service.metrics.render().decode()
    assert done(metrics), metrics
    return metrics


def test_the_drift_gauges_follow_the_served_version(dataset: Path, tmp_path: Path) -> None:
    """Labelled by model only, the gauges held the old version's reading (its warning too) after a promotion, until the
    new version had answered; forever where it had no logged inputs or no training profile."""
    from tunesmith.config import ServeSpec
    from tunesmith.monitor.log import PredictionLog
    from tunesmith.serve.models import Served
    from tunesmith.serve.service import Service

    def served(version: int, run: Path) -> Served:
        return Served(f"ft:tiny:reviews:{version}", "sequence", "single_label_classification", str(run), "tiny", 0,
                      f"reviews-v{version}", engine=None, registry=("reviews", f"mv-{version}"))

    def gauges(metrics: str) -> list[str]:
        return [line for line in metrics.splitlines() if line.startswith("tunesmith_drift_")]

    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    train = DatasetVersion(dataset).table("train").column("text").to_pylist()
    drifted = [f"zebra quasar {t} xylophone" for t in train]
    insert(store, live_rows(drifted, ["pos"] * len(drifted), "reviews-v1"))
    service = Service([served(1, fake_run(tmp_path / "run1", dataset))], ServeSpec(), log=PredictionLog(store))
    warned = 'tunesmith_drift_warning{model="reviews",signal="labels"} 1.0'
    drift_passes_until(service, lambda metrics: warned in metrics)

    service.models[0] = served(2, fake_run(tmp_path / "run2", dataset))  # promoted: no v2 traffic yet
    drift_passes_until(service, lambda metrics: not gauges(metrics))
    insert(store, live_rows(drifted, ["pos"] * len(drifted), "reviews-v2", start=T0 + 1000))
    drift_passes_until(service, lambda metrics: warned in metrics)
    service.models[0] = served(3, tmp_path / "gone")  # its run folder is gone: no training profile
    drift_passes_until(service, lambda metrics: not gauges(metrics))
    service.log.close()
