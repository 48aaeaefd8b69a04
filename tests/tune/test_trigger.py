"""When `retrain --if-needed` (cron) finds a round due: counted from the last round run from production, so the
same corrections do not retrain on every tick; drift read from production's own traffic."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.tune.test_retrain import paris, planted_project, record_corrections
from tunesmith.config import RetrainSpec
from tunesmith.errors import ConfigError, DataError
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


def test_a_round_in_progress_from_production_is_not_started_again(tmp_path: Path, tiny_bert: Path) -> None:
    """Two overlapping cron ticks both trained on the same corrections: the round was recorded only after training."""
    store, registry = production_of(tmp_path, tiny_bert)
    record_corrections(store, "reviews", paris(12, 9), "pos")
    production = registry.production("reviews")
    token, held = trigger.claim(store, production, folder="elsewhere")  # another round, alive (this very process)
    assert token and held is None
    assert trigger.claim(store, production) == (None, registry.production("reviews").lineage[trigger.ROUND_CLAIM])
    tick = retrain(store, "reviews", if_needed=True, say=lambda _: None)
    assert tick.decision == "not_due" and "is in progress since" in tick.reasons[0] and "elsewhere" in tick.reasons[0]
    assert tick.report["trigger"]["in_progress"]["pid"] == os.getpid()
    assert [v.version for v in registry.versions("reviews")] == [1]
    trigger.release(store, production, "not-its-token")  # only the claimant clears its claim
    assert trigger.live_claim(registry.production("reviews")) is not None
    trigger.release(store, production, token)
    assert trigger.ROUND_CLAIM not in registry.production("reviews").lineage

    # A crashed round's claim: its process gone from this host, or too old (another host's)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    for stale in ({"pid": int(dead.stdout), "host": socket.gethostname(), "since": time.time()},
                  {"pid": 1, "host": "elsewhere.example", "since": time.time() - trigger.CLAIM_STALE_S - 60}):
        registry.note("reviews", 1, trigger.ROUND_CLAIM, {**stale, "token": "old",
                                                          "production_since": production.stage_changed_at})
        assert trigger.live_claim(registry.production("reviews")) is None
    seen: list[str] = []
    done = retrain(store, "reviews", if_needed=True, promote="never", say=seen.append)
    assert done.decision == "candidate" and [v.version for v in registry.versions("reviews")] == [1, 2]
    assert trigger.ROUND_CLAIM not in registry.production("reviews").lineage  # cleared when the round ended


def test_only_one_of_overlapping_claims_wins(tmp_path: Path, tiny_bert: Path, store_url: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    cfg, *_ = planted_project(tmp_path, tiny_bert, max_steps=1)
    stores = [Store(store_url) for _ in range(4)]
    registry = Registry(stores[0])
    registry.add(train(cfg), "reviews", stage="production")
    production = registry.production("reviews")
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda st: trigger.claim(st, production), stores))
    tokens = [t for t, _ in results if t]
    assert len(tokens) == 1 and all(held["token"] == tokens[0] for t, held in results if not t)
    trigger.release(stores[1], production, tokens[0])
    assert trigger.ROUND_CLAIM not in registry.production("reviews").lineage
    for st in stores:
        st.close()


def test_a_failed_round_is_recorded_and_not_retried_on_the_same_corrections(tmp_path: Path, tiny_bert: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A round training refused failed again at every cron tick, on the same corrections."""
    import tunesmith.training

    store, registry = production_of(tmp_path, tiny_bert)
    record_corrections(store, "reviews", paris(12, 9), "pos")

    def refuse(*_: object, **__: object) -> None:
        raise DataError("validation has label(s) ['meh'] that the training split never has")

    monkeypatch.setattr(tunesmith.training, "train", refuse)
    with pytest.raises(DataError, match="never has"):
        retrain(store, "reviews", if_needed=True, say=lambda _: None)
    lineage = registry.production("reviews").lineage
    assert lineage[trigger.LAST_ROUND]["result"].startswith("failed: DataError: validation has label(s)")
    assert trigger.ROUND_CLAIM not in lineage  # cleared on failure too
    again = retrain(store, "reviews", if_needed=True, say=lambda _: None)
    assert again.decision == "not_due" and any("failed: DataError" in r for r in again.reasons), again.reasons
    record_corrections(store, "reviews", paris(10, 10), "pos", request_id="req-2")  # new ones: tried again
    with pytest.raises(DataError):
        retrain(store, "reviews", if_needed=True, say=lambda _: None)
