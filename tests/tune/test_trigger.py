"""When `retrain --if-needed` (cron) finds a round due: counted from the last round run from production, so the
same corrections do not retrain on every tick; drift read from production's own traffic."""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.tune.test_retrain import paris, planted_project, record_corrections
from tunesmith.config import RetrainSpec
from tunesmith.errors import ConfigError
from tunesmith.registry.service import Registry
from tunesmith.store.db import Store
from tunesmith.store.schema import Prediction
from tunesmith.training import train
from tunesmith.tune import trigger
from tunesmith.tune.retrain import retrain


def production_of(tmp_path: Path, tiny_bert: Path) -> tuple[Store, Registry]:
    cfg, *_ = planted_project(tmp_path, tiny_bert, max_steps=2)  # retrain.min_corrections: 10
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    registry = Registry(store)
    registry.add(train(cfg), "reviews", stage="production")
    return store, registry


def test_a_round_that_kept_its_candidate_is_not_run_again_on_the_same_corrections(tmp_path: Path,
                                                                                  tiny_bert: Path) -> None:
    """Each cron tick trained and registered an identical candidate: the count started from production's training."""
    store, registry = production_of(tmp_path, tiny_bert)
    record_corrections(store, "reviews", paris(12, 9), "pos")
    first = retrain(store, "reviews", if_needed=True, promote="never", say=lambda _: None)
    assert first.decision == "candidate" and registry.production("reviews").version == 1
    again = retrain(store, "reviews", if_needed=True, promote="never", say=lambda _: None)
    assert again.decision == "not_due", again.reasons
    assert "0 new correction(s) since the last round from version 1" in again.reasons[0]
    assert again.report["trigger"]["new_corrections"] == 12  # production still never trained on them
    assert [v.version for v in registry.versions("reviews")] == [1, 2]
    record_corrections(store, "reviews", paris(10, 10), "pos", request_id="req-2")  # new ones: due again
    status = trigger.check(store, "reviews", registry.production("reviews"), RetrainSpec(min_corrections=10,
                                                                                         drift_threshold=None))
    assert status.due and status.untried == 10 and status.new_corrections == 22
    # production rolled away from and back: a new stint in production, counted afresh
    registry.promote("reviews", 2)
    registry.rollback("reviews")
    status = trigger.check(store, "reviews", registry.production("reviews"), RetrainSpec(drift_threshold=None))
    assert status.last_round is None and status.untried == status.new_corrections == 22


def test_a_round_with_nothing_new_to_train_on_is_not_due_again(tmp_path: Path, tiny_bert: Path) -> None:
    """Corrections that can never train (they repeat frozen test examples): every tick failed again, exit 2."""
    store, registry = production_of(tmp_path, tiny_bert)
    test_texts = pq.read_table(tmp_path / "ds" / "test.parquet").column("text").to_pylist()
    record_corrections(store, "reviews", test_texts[:12], "pos")
    with pytest.raises(ConfigError, match="nothing new to train on"):
        retrain(store, "reviews", if_needed=True, say=lambda _: None)
    assert retrain(store, "reviews", if_needed=True, say=lambda _: None).decision == "not_due"
    assert [v.version for v in registry.versions("reviews")] == [1]


def test_drift_is_read_from_productions_own_traffic(tmp_path: Path, tiny_bert: Path) -> None:
    """An A/B challenger answering half the traffic (all 'pos') was mixed into production's drift reading."""
    store, registry = production_of(tmp_path, tiny_bert)
    trained = pq.read_table(tmp_path / "ds" / "train.parquet")
    texts, labels = trained.column("text").to_pylist()[:180], trained.column("label").to_pylist()[:180]
    start = time.time() + 1
    with store.session() as s:
        for i in range(2):
            s.add(Prediction(request_id=f"p{i}", model="reviews", model_version="reviews-v1", kind="predict",
                             created=start + i, inputs=texts, latency_ms=1.0, variant="v1",
                             outputs=[{"label": x, "probabilities": {"neg": 0.5, "pos": 0.5}} for x in labels]))
            s.add(Prediction(request_id=f"c{i}", model="reviews", model_version="reviews-v2", kind="predict",
                             created=start + 5 + i, inputs=texts, latency_ms=1.0, variant="v2",
                             outputs=[{"label": "pos", "probabilities": {"neg": 0.1, "pos": 0.9}}] * len(texts)))
    status = trigger.check(store, "reviews", registry.production("reviews"),
                           RetrainSpec(min_corrections=50, drift_threshold=0.25))
    assert not status.due and status.drift_psi is not None and status.drift_psi < 0.1, status
    assert status.live_requests == 2
