"""The registry over the store (SQLite and PostgreSQL): versions, one production at a time, rollback."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tunesmith.artifacts import RunManifest
from tunesmith.errors import ConfigError
from tunesmith.registry.service import Registry
from tunesmith.store.db import Store


def fake_run(folder: Path, accuracy: float, task: str = "single_label_classification") -> Path:
    """A run folder as far as the registry reads it: run.json, and model/ (promotion checks the weights are there)."""
    (folder / "model").mkdir(parents=True)
    manifest = RunManifest(name=folder.name, task=task, description="", created_at="2026-12-01",
                           tunesmith_version="0", base_model="minilm", base_model_path="/m", method="full", adapter=False,
                           labels=["a", "b"] if "classification" in task else [], max_length=32, dataset="/d",
                           dataset_fingerprint="f" * 64, parameters={"trainable": 1, "total": 1},
                           metrics={"accuracy": accuracy})
    (folder / "run.json").write_text(manifest.model_dump_json())
    return folder


def test_versions_stages_promotion_and_rollback(store_url: str, tmp_path: Path) -> None:
    registry = Registry(Store(store_url))
    one = registry.add(fake_run(tmp_path / "r1", 0.8), "reviews")
    two = registry.add(fake_run(tmp_path / "r2", 0.9), "reviews", lineage={"job": "ftjob-x"})
    assert (one.version, one.stage, two.version) == (1, "candidate", 2)
    assert two.metrics == {"accuracy": 0.9} and two.lineage["job"] == "ftjob-x" and two.lineage["dataset"] == "/d"
    assert registry.production("reviews") is None
    registry.promote("reviews", 1)
    registry.promote("reviews", 2)
    assert registry.production("reviews").version == 2
    assert {v.version: v.stage for v in registry.versions("reviews")} == {1: "archived", 2: "production"}
    assert registry.rollback("reviews").version == 1
    assert {v.version: v.stage for v in registry.versions("reviews")} == {1: "production", 2: "archived"}
    actions = [(e.action, e.version, e.to_stage) for e in registry.events("reviews")]
    assert actions[:2] == [("register", 1, "candidate"), ("register", 2, "candidate")]
    assert ("rollback", 1, "production") in actions


def test_rollbacks_walk_back_through_production_s_history(store_url: str, tmp_path: Path) -> None:
    # A second rollback brought back the version just rolled away from (3, 2, 3, 2, ...): the bad one returned.
    registry = Registry(Store(store_url))
    for i in (1, 2, 3):
        registry.add(fake_run(tmp_path / f"r{i}", 0.8), "reviews")
        registry.promote("reviews", i)
    assert [registry.rollback("reviews").version for _ in range(2)] == [2, 1]
    # The refusal used to say version 1 was "the only version ever in production", though 2 and 3 were.
    with pytest.raises(ConfigError, match="no earlier production version left to roll back to: rollbacks already "
                                          "walked production back to version 1") as refused:
        registry.rollback("reviews")
    assert "only version ever" not in str(refused.value)
    registry.promote("reviews", 3)  # 1, 3: a rollback goes back to 1, not to 2, which was rolled away from
    assert registry.rollback("reviews").version == 1


def test_bad_requests_are_refused_by_name(store_url: str, tmp_path: Path) -> None:
    registry = Registry(Store(store_url))
    run = fake_run(tmp_path / "r1", 0.8)
    registry.add(run, "reviews")
    with pytest.raises(ConfigError, match="already version 1"):
        registry.add(run, "reviews")
    with pytest.raises(ConfigError, match="not a finished run folder"):
        registry.add(tmp_path, "reviews")
    with pytest.raises(ConfigError, match="model name"):
        registry.add(fake_run(tmp_path / "r2", 0.8), "bad name!")
    with pytest.raises(ConfigError, match="no version 7"):
        registry.promote("reviews", 7)
    with pytest.raises(ConfigError, match="no model 'other'"):
        registry.promote("other", 1)
    with pytest.raises(ConfigError, match="nothing to roll back|no version in production"):
        registry.rollback("reviews")


def test_a_key_s_jobs_never_add_versions_to_another_owner_s_model(store_url: str, tmp_path: Path) -> None:
    # Two API keys' jobs with the suffix "reviews": bob's run became version 2 of alice's model.
    registry = Registry(Store(store_url))
    registry.add(fake_run(tmp_path / "a", 0.8), "reviews", owner="alice")
    with pytest.raises(ConfigError, match="'reviews' belongs to another owner"):
        registry.add(fake_run(tmp_path / "b", 0.9), "reviews", owner="bob")
    registry.add(fake_run(tmp_path / "ops", 0.9), "prod")  # the operator's own model (owner "")
    with pytest.raises(ConfigError, match="belongs to another owner"):
        registry.add(fake_run(tmp_path / "c", 0.9), "prod", owner="bob")
    assert [v.version for v in registry.versions("reviews")] == [1]
    assert registry.add(fake_run(tmp_path / "a2", 0.9), "reviews", owner="alice").version == 2
    assert registry.add(fake_run(tmp_path / "op", 0.9), "reviews").version == 3  # the operator may


def test_racing_promotions_leave_one_production_version(store_url: str, tmp_path: Path) -> None:
    store = Store(store_url)
    registry = Registry(store)
    for i in range(4):
        registry.add(fake_run(tmp_path / f"r{i}", 0.5), "reviews")
    errors: list[Exception] = []
    start = threading.Barrier(4)

    def promote(version: int) -> None:
        try:
            other = Registry(Store(store_url, migrate=False))
            start.wait()
            other.promote("reviews", version)
        except Exception as err:  # noqa: BLE001 - collected: the promotions go one after the other, none fails
            errors.append(err)

    threads = [threading.Thread(target=promote, args=(v,)) for v in (1, 2, 3, 4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors  # they used to die on the one-production index (IntegrityError)
    assert [v.stage for v in registry.versions("reviews")].count("production") == 1
    promoted = [e.version for e in registry.events("reviews") if e.to_stage == "production"]
    assert sorted(promoted) == [1, 2, 3, 4] and registry.production("reviews").version == promoted[-1]


def test_concurrent_adds_get_consecutive_versions(store_url: str, tmp_path: Path) -> None:
    """Several processes registering runs of a new model at once: one creates it, each gets its own number."""
    Store(store_url)
    runs = [fake_run(tmp_path / f"r{i}", 0.5) for i in range(6)]
    errors: list[Exception] = []
    start = threading.Barrier(len(runs))

    def add(run: Path) -> None:
        try:
            other = Registry(Store(store_url, migrate=False))
            start.wait()
            other.add(run, "reviews")
        except Exception as err:  # noqa: BLE001 - collected: every add must succeed
            errors.append(err)

    threads = [threading.Thread(target=add, args=(r,)) for r in runs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors  # they used to take the same max + 1 (or create the model twice): IntegrityError
    versions = Registry(Store(store_url, migrate=False)).versions("reviews")
    assert sorted(v.version for v in versions) == [1, 2, 3, 4, 5, 6]
    assert sorted(v.run for v in versions) == sorted(str(r.resolve()) for r in runs)


def test_a_version_serve_cannot_load_is_not_promoted(store_url: str, tmp_path: Path) -> None:
    """The registry said production while serve kept the old version and logged "could not load" every second."""
    import shutil

    registry = Registry(Store(store_url))
    for i in (1, 2, 3):
        registry.add(fake_run(tmp_path / f"r{i}", 0.8), "reviews")
    registry.promote("reviews", 1)
    shutil.rmtree(tmp_path / "r2" / "model")  # its fine-tuned model deleted
    (tmp_path / "r3").rename(tmp_path / "r3-moved")
    for version, gone in ((2, tmp_path / "r2" / "model"), (3, tmp_path / "r3")):
        with pytest.raises(ConfigError, match=f"version {version} of 'reviews' cannot go to production: {gone} is gone"):
            registry.promote("reviews", version)
    assert registry.production("reviews").version == 1  # type: ignore[union-attr]


def test_rollback_passes_over_versions_archived_or_gone(store_url: str, tmp_path: Path) -> None:
    """What deleting a job's fine-tuned model does (model/ removed, its version archived); a rollback brought it back."""
    import shutil

    registry = Registry(Store(store_url))
    for i in (1, 2, 3, 4):
        registry.add(fake_run(tmp_path / f"r{i}", 0.8), "reviews")
    for version in (1, 2, 3):
        registry.promote("reviews", version)
    registry.archive("reviews", 3)  # explicitly: skipped though its weights are there
    registry.promote("reviews", 4)
    (tmp_path / "r2").rename(tmp_path / "r2-moved")
    back = registry.rollback("reviews")
    assert (back.version, back.stage, back.skipped) == (1, "production", [3, 2])
    with pytest.raises(ConfigError, match="no earlier production version left"):
        registry.rollback("reviews")
    registry.promote("reviews", 4)
    shutil.rmtree(tmp_path / "r1" / "model")
    with pytest.raises(ConfigError, match="no earlier production version left that serve can load: version 1 "):
        registry.rollback("reviews")
    assert registry.production("reviews").version == 4  # type: ignore[union-attr]


def test_a_run_of_another_task_is_not_a_version_of_the_model(store_url: str, tmp_path: Path) -> None:
    """A regression or chat run became a version of a classifier, promotable and A/B-tested against it."""
    registry = Registry(Store(store_url))
    registry.add(fake_run(tmp_path / "cls", 0.8), "reviews", stage="production")
    for task in ("regression", "chat"):
        with pytest.raises(ConfigError, match=f"'reviews' is a single_label_classification model; .*{task}; "
                                              "register it under another name"):
            registry.add(fake_run(tmp_path / task, 0.8, task), "reviews")
    assert [v.task for v in registry.versions("reviews")] == ["single_label_classification"]
    assert registry.add(tmp_path / "regression", "scores").task == "regression"
