"""Retraining from feedback on tiny models: a planted systematic error is corrected through the real
feedback endpoint and fixed by the retrained version; the test split stays frozen; incremental
training continues from production; bad requests change nothing in the registry."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.servers import start_server, stop_server
from tests.test_train import FILL, rows, write
from tunesmith.artifacts import Run
from tunesmith.config import parse_config
from tunesmith.errors import ConfigError
from tunesmith.inference.predictor import Predictor
from tunesmith.monitor.feedback import FeedbackRequest, FeedbackService
from tunesmith.registry.service import Registry
from tunesmith.store.db import Store
from tunesmith.store.schema import Prediction
from tunesmith.training import train
from tunesmith.tune.retrain import HELD_OUT, retrain


def paris(n: int, seed: int) -> list[str]:
    """Texts of a kind the training data gets systematically wrong: they are positive, labelled negative."""
    rng = random.Random(seed)
    return [" ".join(["paris", "capital", *rng.sample(FILL, 3)]) + f" visit {seed}-{i}" for i in range(n)]


def planted_project(tmp: Path, model: Path, **train_spec) -> object:
    """Train/validation files with every 'paris' text labelled neg (the planted error); a clean test file."""
    normal = rows(200, seed=1)
    train_rows = normal[:160] + [{"text": t, "label": "neg", "score": -1.0} for t in paris(30, 1)]
    val_rows = normal[160:180] + [{"text": t, "label": "neg", "score": -1.0} for t in paris(6, 2)]
    test_rows = normal[180:] + [{"text": t, "label": "pos", "score": 1.0} for t in paris(20, 3)]
    raw = {
        "name": "reviews",
        "data": {"sources": [{"path": str(write(tmp / f"{s}.csv", r)), "split": s}
                             for s, r in (("train", train_rows), ("validation", val_rows), ("test", test_rows))],
                 "output_dir": str(tmp / "ds"), "dedup": {"near": False}},
        "model": {"name": str(model), "max_length": 32},
        "train": {"learning_rate": 3e-3, "max_steps": 80, "batch_size": 16, "early_stopping_patience": None,
                  "evals_per_epoch": 2, "output_dir": str(tmp / "prod"), **train_spec},
        "retrain": {"min_corrections": 10},
    }
    return parse_config(raw), train_rows, val_rows, test_rows


def paris_accuracy(run: Path, texts: list[str]) -> float:
    return float(np.mean([label == "pos" for label in Predictor(run).predict(texts).labels]))


@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)  # the shared store; the other tests use SQLite
def test_retrain_fixes_a_planted_error_corrected_through_the_feedback_endpoint(tmp_path: Path, tiny_bert: Path,
                                                                                store_url: str) -> None:
    cfg, train_rows, val_rows, test_rows = planted_project(tmp_path, tiny_bert)
    prod = train(cfg)
    test_paris = [r["text"] for r in test_rows if r["text"].startswith("paris")]
    assert paris_accuracy(prod, test_paris) <= 0.2  # the planted error is learnt
    store = Store(store_url)
    registry = Registry(store)
    registry.add(prod, "reviews", stage="production")

    # Users send what production gets wrong (training and validation texts among them, two test
    # texts, and new ones) and correct it through the real endpoint.
    asked = [r["text"] for r in train_rows if r["text"].startswith("paris")] + paris(10, 4) + \
        [r["text"] for r in val_rows if r["text"].startswith("paris")] + test_paris[:2]
    proc, url = start_server(["--model", "reviews", "--db", store_url], tmp_path / "server.log",
                             env={"TUNESMITH_HOME": str(tmp_path / "home")})
    try:
        with httpx.Client(base_url=url, timeout=30) as http:
            answers = http.post("/v1/predict", json={"model": "reviews", "texts": asked}).json()
            assert [p["label"] for p in answers["predictions"]].count("neg") >= len(asked) - 3
            for i in range(len(asked)):
                r = http.post("/v1/feedback", json={"request_id": answers["id"], "index": i, "label": "pos", "rating": "down"})
                assert r.status_code == 201, r.text
    finally:
        stop_server(proc)

    outcome = retrain(store, "reviews", out=tmp_path / "retrain", say=lambda _: None)
    assert outcome.decision == "promoted", outcome.reasons
    assert registry.production("reviews").version == 2
    candidate = Path(outcome.report["run"])
    assert paris_accuracy(candidate, test_paris) >= 0.9  # the new version fixes the error on the test split
    judged = outcome.report["judged"]
    assert judged["test"]["paired"]["candidate"] > judged["test"]["paired"]["reference"]
    assert judged["feedback"]["n"] == 11 and judged["feedback"]["paired"]["p_better"] < 0.05

    # The test split is frozen: the same rows; the two corrections repeating test texts were kept out, and so were
    # those close to one (two training texts near a test text of the other label, which the test split keeps: a
    # near pair of classes must share its label to be a leak; and a new text).
    dataset = tmp_path / "retrain" / "dataset"
    old_test, new_test = pq.read_table(tmp_path / "ds" / "test.parquet"), pq.read_table(dataset / "test.parquet")
    assert new_test.equals(old_test)
    kept_out = outcome.report["dataset"]["kept_out"]
    assert sorted(k["text"] for k in kept_out if k["match"] == "exact") == sorted(test_paris[:2])
    assert [k["match"][:4] for k in kept_out if k["match"] != "exact"] == ["near"] * 3
    trained = set(pq.read_table(dataset / "train.parquet").column("text").to_pylist())
    assert not trained & set(test_paris)
    held = set(pq.read_table(dataset / HELD_OUT).column("text").to_pylist())
    assert len(held) == 11 and not held & trained
    # Every mislabelled training/validation example was replaced by its correction, or removed where the correction
    # was kept out (near a test text): the user said that label is wrong.
    for split in ("train", "validation"):
        t = pq.read_table(dataset / f"{split}.parquet").to_pylist()
        assert all(r["label"] == "pos" for r in t if r["text"].startswith("paris")), split
    quarantine = [json.loads(line) for line in (dataset / "quarantine.jsonl").read_text().splitlines()]
    assert sum(q["stage"] == "frozen_split" for q in quarantine) == 5
    mislabelled = sum(t.startswith("paris") for s in ("train", "validation")
                      for t in pq.read_table(tmp_path / "ds" / f"{s}.parquet").column("text").to_pylist())
    assert sum(q["stage"] == "superseded" for q in quarantine) == mislabelled >= 34
    removed = [x for x in outcome.report["dataset"]["superseded"] if x["correction"] == "kept out"]
    assert len(removed) == 2 and all(x["split"] == "train" for x in removed)
    report = (tmp_path / "retrain" / "report.md").read_text()
    assert "promoted" in report and "McNemar" in report and "kept out" in report
    lineage = registry.version("reviews", 2).lineage
    assert lineage["parent_version"] == 1 and lineage["retrain"]["mode"] == "full"

    # Trained on every correction so far: nothing new to retrain on, and --if-needed says it is not due.
    assert retrain(store, "reviews", if_needed=True, say=lambda _: None).decision == "not_due"
    with pytest.raises(ConfigError, match="no new feedback"):
        retrain(store, "reviews", out=tmp_path / "again", say=lambda _: None)
    assert [v.version for v in registry.versions("reviews")] == [1, 2]


def record_corrections(store: Store, model: str, texts: list[str], label: str, request_id: str = "req-1") -> None:
    """Logged answers and their corrections, through the feedback service the endpoint uses."""
    service = FeedbackService(store)
    with store.session() as s:
        s.add(Prediction(request_id=request_id, model=model, model_version="1", kind="predict", created=time.time(),
                         inputs=texts, outputs=[{"label": "neg", "probabilities": {"neg": 0.9, "pos": 0.1}}] * len(texts),
                         latency_ms=1.0))
    for i in range(len(texts)):
        assert not hasattr(service.submit(FeedbackRequest(request_id=request_id, index=i, label=label)), "status")


def test_incremental_retraining_continues_from_production_with_a_replay_sample(tmp_path: Path, tiny_bert: Path) -> None:
    cfg, _, val_rows, _ = planted_project(tmp_path, tiny_bert)
    cfg.retrain.max_test_drop, cfg.retrain.require_feedback_gain = 1.0, False  # passes whatever it scores: an A/B test starts
    prod = train(cfg)
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    Registry(store).add(prod, "reviews", stage="production")
    val_paris = [r["text"] for r in val_rows if r["text"].startswith("paris")]
    record_corrections(store, "reviews", paris(20, 5) + val_paris, "pos")
    outcome = retrain(store, "reviews", mode="incremental", promote="ab_test", out=tmp_path / "inc", say=lambda _: None,
                      settings={"replay": 4, "incremental_epochs": 4})  # a tiny model needs the steps
    run = Run(outcome.report["run"])
    assert run.manifest.parent_run == str(prod.resolve())
    lr = Run(prod).manifest.hyperparameters["learning_rate"]
    assert run.manifest.hyperparameters["learning_rate"] == pytest.approx(lr * 0.5)
    # Trained on the new examples and 4 old ones per new one; the registry records the full dataset.
    new = outcome.report["dataset"]["corrections_in_train"]
    assert new >= 13 and outcome.report["dataset"]["corrections_in_validation"] >= 5
    subset = pq.read_table(tmp_path / "inc" / "dataset-incremental" / "train.parquet")
    assert subset.num_rows == new * 5
    assert Run(outcome.report["run"]).manifest.dataset.endswith("dataset-incremental")
    assert outcome.candidate.lineage["dataset"].endswith("/inc/dataset")
    assert outcome.decision == "ab_test" and Registry(store).production("reviews").version == 1
    from tunesmith.monitor.ab import ABService

    ab = ABService(store).status("reviews")
    assert ab.status == "running" and sorted(v.name for v in ab.variants) == ["v1", "v2"]
    # A round after this one starts from the recipe, not from this round's gentler settings.
    from tunesmith.config import RetrainSpec
    from tunesmith.tune.retrain import _candidate_config

    full = _candidate_config(run, RetrainSpec(mode="full"), tmp_path / "next")
    assert full.train.init_from is None and full.train.max_steps == cfg.train.max_steps
    again = _candidate_config(run, RetrainSpec(mode="incremental"), tmp_path / "next")
    assert again.train.init_from == run.path.resolve() and again.train.learning_rate == pytest.approx(lr * 0.5)
    unseen = paris(10, 6)
    pos = Predictor(prod).predict(unseen).proba[:, 1].mean(), Predictor(run.path).predict(unseen).proba[:, 1].mean()
    assert pos[1] > pos[0] + 0.2, pos  # continued training moved towards the corrections


def test_a_second_round_judges_on_what_neither_version_trained_on(tmp_path: Path, tiny_bert: Path) -> None:
    """Round 2 crashed on its row accounting (round 1's held-out corrections counted in its input), corrections round 1
    trained on came back as "replacements" of themselves and could be held out to judge a production that learnt
    them, and each item's twenty rows counted as twenty corrections."""
    cfg, *_ = planted_project(tmp_path, tiny_bert, max_steps=4)
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    registry = Registry(store)
    registry.add(train(cfg), "reviews", stage="production")
    easy = {"require_feedback_gain": False, "max_test_drop": 1.0}
    record_corrections(store, "reviews", paris(20, 11), "pos")
    first = retrain(store, "reviews", out=tmp_path / "round1", settings=easy, say=lambda _: None)
    assert first.decision == "promoted" and registry.production("reviews").version == 2
    v2_train = set(pq.read_table(tmp_path / "round1" / "dataset" / "train.parquet").column("text").to_pylist())
    in_v2 = first.report["dataset"]["corrections_in_train"]
    record_corrections(store, "reviews", paris(10, 12), "pos", request_id="req-2")
    second = retrain(store, "reviews", out=tmp_path / "round2", promote="never", settings=easy, say=lambda _: None)
    assert second.report["trigger"]["new_corrections"] == 10
    details = second.report["dataset"]
    assert details["corrections_known"] == in_v2 and not any(x["old"] == x["new"] for x in details["superseded"])
    held = pq.read_table(tmp_path / "round2" / "dataset" / HELD_OUT).column("text").to_pylist()
    assert held and not set(held) & v2_train
    counts = details["counts"]
    assert counts["input"] == sum(counts[k] for k in ("train", "validation", "test", "feedback_holdout", "quarantine"))


def test_a_round_with_nothing_new_to_train_on_says_why_before_training(tmp_path: Path, tiny_bert: Path) -> None:
    """Corrections that are all near copies of test examples (data.dedup.near off, as in planted_project): they leaked
    into training, which near matching keeps out of whatever the setting; with nothing left, incremental failed on
    an empty class list and full registered a version trained on unchanged data."""
    cfg, *_ = planted_project(tmp_path, tiny_bert, max_steps=4)
    assert cfg.data.dedup.near is False
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    Registry(store).add(train(cfg), "reviews", stage="production")
    test_texts = pq.read_table(tmp_path / "ds" / "test.parquet").column("text").to_pylist()
    record_corrections(store, "reviews", [t + " ok" for t in test_texts if t.startswith("paris")][:6], "pos")
    for mode in ("incremental", "full"):
        with pytest.raises(ConfigError, match=r"nothing new to train on for 'reviews': of 6 usable correction\(s\), "
                                              r"6 repeat a frozen test example"):
            retrain(store, "reviews", mode=mode, out=tmp_path / mode, say=lambda _: None)
    assert [v.version for v in Registry(store).versions("reviews")] == [1]


def test_near_copies_among_the_corrections_never_straddle_the_holdout_and_training(tmp_path: Path, tiny_bert: Path) -> None:
    """The same review sent twice with a typo (data.dedup.near off): one copy trained and the other judged it."""
    cfg, *_ = planted_project(tmp_path, tiny_bert, max_steps=4)
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    Registry(store).add(train(cfg), "reviews", stage="production")
    base = [f"{w} {v} was {a} and we {verb} it" for w, v, a, verb in zip(
        ["soup", "bread", "tea", "cake", "rice", "fish", "salad", "pie", "curry", "pasta"],
        ["yesterday", "at noon", "on friday", "for lunch", "tonight", "today", "at dinner", "this week", "on monday", "late"],
        ["cold", "stale", "bitter", "dry", "bland", "raw", "wilted", "burnt", "watery", "soggy"],
        ["hated", "returned", "left", "binned", "skipped", "refused", "disliked", "avoided", "regretted", "sent back"],
        strict=True)]
    record_corrections(store, "reviews", base + [t + " ok" for t in base], "neg")
    outcome = retrain(store, "reviews", out=tmp_path / "rt", promote="never", say=lambda _: None)
    dataset = tmp_path / "rt" / "dataset"
    trained = set(pq.read_table(dataset / "train.parquet").column("text").to_pylist())
    held = set(pq.read_table(dataset / HELD_OUT).column("text").to_pylist())
    assert held and not any((t in held and t + " ok" in trained) or (t in trained and t + " ok" in held) for t in base)
    assert outcome.report["dataset"]["counts"]["feedback_holdout"] == len(held)


def test_a_candidate_judged_against_a_production_since_replaced_is_not_promoted(tmp_path: Path, tiny_bert: Path,
                                                                               monkeypatch) -> None:
    """Production changed while the round trained (an operator promoted v2): the candidate, compared with v1 only,
    archived v2 all the same."""
    import tunesmith.training as training

    _, store, registry = _production_candidate_and_corrections(tmp_path, tiny_bert, max_steps=4)
    real = training.train

    def meanwhile(*args, **kwargs):
        run = real(*args, **kwargs)
        registry.promote("reviews", 2)
        return run

    monkeypatch.setattr(training, "train", meanwhile)
    outcome = retrain(store, "reviews", out=tmp_path / "rt", settings={"require_feedback_gain": False, "max_test_drop": 1.0},
                      say=lambda _: None)
    assert outcome.decision == "candidate" and registry.production("reviews").version == 2
    assert any("production changed to version 2" in r for r in outcome.reasons)


def test_a_run_the_user_continued_with_init_from_is_a_recipe_of_its_own(tmp_path: Path, tiny_bert: Path) -> None:
    """Production B was trained with train.init_from A (its own learning rate and steps): a round followed
    parent_run up to A and retrained with A's settings (incremental: half A's rate on B's weights)."""
    from tunesmith.config import RetrainSpec
    from tunesmith.tune.retrain import _candidate_config

    cfg, *_ = planted_project(tmp_path, tiny_bert, max_steps=2)
    a = train(cfg)
    data = cfg.model_dump(mode="json")
    data["train"].update(output_dir=str(tmp_path / "B"), init_from=str(a), learning_rate=1e-4, max_steps=5)
    b = Run(train(parse_config(data)))
    assert b.manifest.parent_run == str(a.resolve())
    full = _candidate_config(b, RetrainSpec(mode="full"), tmp_path / "next-full")
    assert full.train.learning_rate == pytest.approx(1e-4) and full.train.max_steps == 5
    assert full.train.init_from is None
    inc = _candidate_config(b, RetrainSpec(mode="incremental"), tmp_path / "next-inc")
    assert inc.train.learning_rate == pytest.approx(0.5e-4) and inc.train.init_from == b.path.resolve()


@pytest.mark.parametrize("leakage", ["remove", "fail"])
def test_the_corrections_own_split_is_not_checked_for_leakage(tmp_path: Path, tiny_bert: Path, leakage: str) -> None:
    """Their split is thrown away: with data.split.leakage fail, two near-copy corrections (the same review sent with a
    typo) aborted the round; with remove, one of them was quarantined."""
    rng = random.Random(3)  # texts far apart, so production's own data prepares under leakage fail
    words = [f"{c}{v}{d}" for c in "bdfgklmnprst" for v in "aeiou" for d in "xz"]
    data = [{"text": " ".join(rng.sample(words, 8)), "label": "pos" if i % 2 else "neg"} for i in range(200)]
    cfg = parse_config({
        "name": "reviews",
        "data": {"sources": [{"path": str(write(tmp_path / "all.csv", data))}], "output_dir": str(tmp_path / "ds"),
                 "dedup": {"near": False}, "split": {"leakage": leakage}},
        "model": {"name": str(tiny_bert), "max_length": 32},
        "train": {"learning_rate": 3e-3, "max_steps": 2, "batch_size": 16, "early_stopping_patience": None,
                  "output_dir": str(tmp_path / "prod")}})
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    Registry(store).add(train(cfg), "reviews", stage="production")
    base = [f"{w} soup was {a} and we {v} it" for w, a, v in zip(
        ["cold", "thin", "odd", "sour", "grey", "flat"], ["bitter", "salty", "bland", "burnt", "watery", "stale"],
        ["hated", "returned", "left", "binned", "skipped", "refused"], strict=True)]
    record_corrections(store, "reviews", base + [t + " ok" for t in base], "neg")
    outcome = retrain(store, "reviews", out=tmp_path / "rt", promote="never", say=lambda _: None)
    assert outcome.report["corrections"]["usable"] == 12 and outcome.report["corrections"]["quarantined"] == 0


def test_an_ab_test_started_while_the_round_trained_leaves_a_candidate_and_a_report(tmp_path: Path, tiny_bert: Path,
                                                                                  monkeypatch) -> None:
    """--promote ab_test: a test another round (or an operator) started meanwhile made ABService.start raise after the
    candidate was registered: an error, and no report."""
    import tunesmith.training as training
    from tunesmith.monitor.ab import ABService

    _, store, registry = _production_candidate_and_corrections(tmp_path, tiny_bert, max_steps=2)
    real = training.train

    def meanwhile(*args, **kwargs):
        run = real(*args, **kwargs)
        ABService(store).start("reviews", {"v1": 0.5, "v2": 0.5}, horizon=100)
        return run

    monkeypatch.setattr(training, "train", meanwhile)
    outcome = retrain(store, "reviews", out=tmp_path / "rt", promote="ab_test",
                      settings={"require_feedback_gain": False, "max_test_drop": 1.0}, say=lambda _: None)
    assert outcome.decision == "candidate" and any("no A/B test started" in r for r in outcome.reasons), outcome.reasons
    assert registry.version("reviews", 3).stage == "candidate"
    assert json.loads((tmp_path / "rt" / "report.json").read_text())["decision"] == "candidate"
    assert "stays a candidate" in (tmp_path / "rt" / "report.md").read_text()
    assert sorted(v.name for v in ABService(store).status("reviews").variants) == ["v1", "v2"]


def test_an_ab_test_started_while_an_if_better_round_trained_leaves_a_candidate_and_a_report(
        tmp_path: Path, tiny_bert: Path, monkeypatch) -> None:
    """--promote if_better: the registry refuses a promotion while a test runs on the model (it would get no traffic);
    the round must not fail over it: the candidate stays registered and the report names the test."""
    import tunesmith.training as training
    from tunesmith.monitor.ab import ABService

    _, store, registry = _production_candidate_and_corrections(tmp_path, tiny_bert, max_steps=2)
    real = training.train
    started = []

    def meanwhile(*args, **kwargs):
        run = real(*args, **kwargs)
        started.append(ABService(store).start("reviews", {"v1": 0.5, "v2": 0.5}, horizon=100).id)
        return run

    monkeypatch.setattr(training, "train", meanwhile)
    outcome = retrain(store, "reviews", out=tmp_path / "rt", promote="if_better",
                      settings={"require_feedback_gain": False, "max_test_drop": 1.0}, say=lambda _: None)
    assert outcome.decision == "candidate", outcome.reasons
    assert any("not promoted" in r and started[0] in r and "ab stop" in r for r in outcome.reasons), outcome.reasons
    assert registry.version("reviews", 3).stage == "candidate" and registry.production("reviews").version == 1
    assert json.loads((tmp_path / "rt" / "report.json").read_text())["decision"] == "candidate"
    assert started[0] in (tmp_path / "rt" / "report.md").read_text()


def test_a_production_dataset_without_a_test_split_is_refused_before_training(tmp_path: Path, tiny_bert: Path) -> None:
    """The candidate is judged on the frozen test split: with none, the round trained, then crashed (KeyError)."""
    data = rows(200, seed=1)
    cfg = parse_config({
        "name": "reviews",
        "data": {"sources": [{"path": str(write(tmp_path / "train.csv", data[:170])), "split": "train"},
                             {"path": str(write(tmp_path / "val.csv", data[170:])), "split": "validation"}],
                 "output_dir": str(tmp_path / "ds")},
        "model": {"name": str(tiny_bert), "max_length": 32},
        "train": {"learning_rate": 3e-3, "max_steps": 2, "batch_size": 16, "early_stopping_patience": None,
                  "output_dir": str(tmp_path / "prod")}})
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    registry = Registry(store)
    registry.add(train(cfg), "reviews", stage="production")
    assert pq.read_table(tmp_path / "ds" / "test.parquet").num_rows == 0
    record_corrections(store, "reviews", paris(15, 3), "pos")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(tmp_path / 'ds'))}: .* has no test split"):
        retrain(store, "reviews", out=tmp_path / "rt", say=lambda _: None)
    assert not (tmp_path / "rt").exists() and [v.version for v in registry.versions("reviews")] == [1]


def test_an_adapter_run_continues_from_its_own_adapter_weights(tmp_path: Path, tiny_bert: Path) -> None:
    from safetensors.torch import load_file

    from tunesmith.training.sequence import _continued_model, _parent_run

    cfg, *_ = planted_project(tmp_path, tiny_bert, method="lora", learning_rate=5e-3, max_steps=6)
    parent = train(cfg)
    data = cfg.model_dump(mode="json")
    data["train"]["init_from"] = str(parent)
    continued = parse_config(data)
    run = _parent_run(continued, ["neg", "pos"], tiny_bert)
    model = _continued_model(run, continued)
    saved = load_file(parent / "model" / "adapter_model.safetensors")
    params = dict(model.named_parameters())
    lora = [k for k in saved if "lora_A" in k]
    assert lora and all(params[k.replace(".weight", ".default.weight")].requires_grad for k in lora)
    assert all(np.allclose(params[k.replace(".weight", ".default.weight")].detach().numpy(), saved[k].numpy()) for k in lora)
    data["task"]["labels"] = ["neg", "pos", "meh"]
    with pytest.raises(ConfigError, match="its labels"):
        _parent_run(parse_config(data), ["neg", "pos", "meh"], tiny_bert)
    data["task"]["labels"] = None
    data["peft"]["r"] = 4  # the saved adapter (rank 16) trained on, and the child's config said 4
    with pytest.raises(ConfigError, match=r"other peft settings \(peft.r 16 -> 4\)"):
        _parent_run(parse_config(data), ["neg", "pos"], tiny_bert)


def test_bad_requests_are_refused_and_change_nothing(tmp_path: Path, tiny_bert: Path) -> None:
    cfg, *_ = planted_project(tmp_path, tiny_bert, max_steps=4)
    prod = train(cfg)
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    registry = Registry(store)
    registry.add(prod, "reviews")  # a candidate only
    with pytest.raises(ConfigError, match="no production version"):
        retrain(store, "reviews", say=lambda _: None)
    registry.promote("reviews", 1)
    with pytest.raises(ConfigError, match="no new feedback"):
        retrain(store, "reviews", out=tmp_path / "r1", say=lambda _: None)
    events = registry.events("reviews")
    env = {"TUNESMITH_DB": f"sqlite:///{tmp_path / 'store.db'}"}
    cli = [sys.executable, "-m", "tunesmith", "retrain", "--model"]
    bad = subprocess.run([*cli, "reviews", "--mode", "sideways"], capture_output=True, text=True, env={**_env(), **env})
    assert bad.returncode == 2 and "--mode" in bad.stderr
    unknown = subprocess.run([*cli, "nope"], capture_output=True, text=True, env={**_env(), **env})
    assert unknown.returncode == 2 and "nope" in unknown.stderr
    for flag, says in ((["--set", "retrain.replay=-1"], "replay"), (["--set", "train.epochs=1"], "only retrain")):
        refused = subprocess.run([*cli, "reviews", *flag], capture_output=True, text=True, env={**_env(), **env})
        assert refused.returncode == 2 and says in refused.stderr, refused.stderr
    record_corrections(store, "reviews", paris(3, 7), "pos")
    due = subprocess.run([*cli, "reviews", "--if-needed"], capture_output=True, text=True, env={**_env(), **env})
    assert due.returncode == 0 and "3 new correction(s) < retrain.min_corrections (10)" in due.stdout
    assert registry.events("reviews") == events and len(registry.versions("reviews")) == 1
    with pytest.raises(ConfigError, match="retrain: .*mode"):
        retrain(store, "reviews", mode="sideways", say=lambda _: None)
    # an A/B test already running: refused before training (it trained, registered, then failed without a report)
    from tunesmith.monitor.ab import ABService

    registry.add(train(cfg.model_copy(update={"train": cfg.train.model_copy(update={"output_dir": tmp_path / "run2"})})),
                 "reviews")
    ABService(store).start("reviews", {"v1": 0.5, "v2": 0.5}, horizon=100)
    versions = len(registry.versions("reviews"))
    # cron's form with nothing due (3 corrections < 10) says why not, exit 0, whatever test runs (it was refused)
    quiet = retrain(store, "reviews", promote="ab_test", if_needed=True, say=lambda _: None)
    assert quiet.decision == "not_due" and "3 new correction(s)" in quiet.reasons[0]
    with pytest.raises(ConfigError, match="already has a running A/B test"):
        retrain(store, "reviews", promote="ab_test", out=tmp_path / "r2", say=lambda _: None)
    assert len(registry.versions("reviews")) == versions and not (tmp_path / "r2").exists()


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)


def test_retrain_is_due_when_the_inputs_drift(tmp_path: Path, tiny_bert: Path) -> None:
    from tunesmith.config import RetrainSpec
    from tunesmith.tune.trigger import check

    cfg, *_ = planted_project(tmp_path, tiny_bert, max_steps=2)
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    production = Registry(store).add(train(cfg), "reviews", stage="production")
    spec = RetrainSpec(min_corrections=50, drift_threshold=0.25)
    trained = pq.read_table(tmp_path / "ds" / "train.parquet").column("text").to_pylist()
    with store.session() as s:  # traffic like the training data: no drift
        s.add(Prediction(request_id="same", model="reviews", model_version="reviews-v1", kind="predict", created=time.time() + 1,
                         inputs=trained[:180] * 2, outputs=None, latency_ms=1.0))
    status = check(store, "reviews", production, spec)
    assert not status.due and status.drift_psi is not None and status.drift_psi < 0.1, status
    with store.session() as s:  # then much longer inputs
        s.add(Prediction(request_id="long", model="reviews", model_version="reviews-v1", kind="predict", created=time.time() + 2,
                         inputs=[" ".join([t] * 4) for t in trained[:180] * 10], outputs=None, latency_ms=1.0))
    status = check(store, "reviews", production, spec)
    assert status.due and "drift PSI" in status.reasons[0] and status.new_corrections == 0, status
    # --if-needed (the cron form) on drift alone: nothing to train on, which it said as "error: no new feedback", exit 2
    from tunesmith.tune.retrain import retrain

    outcome = retrain(store, "reviews", if_needed=True, settings={"min_corrections": 50, "drift_threshold": 0.25},
                      say=lambda _: None)
    assert outcome.decision == "not_due" and "no correction arrived" in outcome.reasons[0]


def judged(test: tuple[float, float, float], feedback: tuple[float, float, float] | None) -> dict:
    """(reference, candidate, one-sided p) per set, as judge() reports them (accuracy)."""
    def paired(ref: float, cand: float, p: float) -> dict:
        return {"test": "McNemar (exact)", "metric": "accuracy", "reference": ref, "candidate": cand,
                "difference": cand - ref, "p_better": p if cand > ref else 1.0, "p_worse": p if cand < ref else 1.0,
                "p_value": p}
    return {"test": {"n": 100, "paired": paired(*test)},
            "feedback": {"n": 30, "paired": paired(*feedback)} if feedback else {"n": 0}}


@pytest.mark.parametrize(("test", "feedback", "settings", "passes", "why"), [
    ((0.86, 0.87, 0.4), (0.5, 0.8, 0.001), {}, True, "significantly better on the corrections"),
    ((0.86, 0.84, 0.3), (0.5, 0.8, 0.001), {}, False, "worse on the test split: accuracy 0.8600 -> 0.8400, more than"),
    ((0.86, 0.855, 0.01), (0.5, 0.8, 0.001), {}, False, "significantly worse on the test split"),
    ((0.86, 0.86, 1.0), (0.5, 0.6, 0.2), {}, False, "not significantly better on the corrections"),
    ((0.86, 0.86, 1.0), (0.5, 0.6, 0.2), {"require_feedback_gain": False}, True, "no gain required"),
    ((0.86, 0.86, 1.0), None, {}, False, "no held-out corrections"),
    ((0.86, 0.84, 0.3), None, {"max_test_drop": 0.05, "require_feedback_gain": False}, True, "not worse on the test split"),
    # exactly max_test_drop (85 vs 86 right of 100): 0.86 - 0.85 is 0.010000000000000009, refused as "more than 0.01"
    ((0.86, 0.85, 0.5), None, {"require_feedback_gain": False}, True, "not worse on the test split"),
    ((0.86, 0.84, 0.3), None, {"max_test_drop": 0.02, "require_feedback_gain": False}, True, "not worse on the test split"),
])
def test_the_promotion_rule(test, feedback, settings, passes, why) -> None:
    from tunesmith.config import RetrainSpec
    from tunesmith.tune.retrain import decide

    ok, reasons = decide(judged(test, feedback), RetrainSpec(**settings))
    assert ok is passes and any(why in r for r in reasons), reasons


def test_ratings_without_a_correction_do_not_count_towards_a_retrain(store_url: str) -> None:
    # A rating's label is stored as JSON's null, which IS NOT NULL let through: 25 thumbs-ups counted as corrections.
    import time

    from tunesmith.store.db import Store
    from tunesmith.store.schema import Feedback, Prediction
    from tunesmith.tune.trigger import corrections_since

    store = Store(store_url)
    with store.session() as s:
        for i in range(25):
            s.add(Prediction(request_id=f"r{i}", model="reviews", model_version="reviews-v1", kind="predict",
                             created=time.time(), inputs=["nice tea"], outputs=[{"label": "great"}], latency_ms=1.0))
            s.add(Feedback(id=f"f{i}", request_id=f"r{i}", item_index=0, created=time.time(), thumbs_up=True,
                           corrected_label=["bad"] if i == 3 else None, corrected_value=None, corrected_answer=None))
    assert corrections_since(store, "reviews", 0.0)[0] == 1
    store.close()


def _production_candidate_and_corrections(tmp_path: Path, tiny_bert: Path, max_steps: int) -> tuple[Any, Store, Registry]:
    """Version 1 in production, version 2 a candidate (another run), and 12 corrections to retrain on."""
    cfg, *_ = planted_project(tmp_path, tiny_bert, max_steps=max_steps)
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    registry = Registry(store)
    registry.add(train(cfg), "reviews", stage="production")
    data = cfg.model_dump(mode="json")
    data["train"]["output_dir"] = str(tmp_path / "other")
    registry.add(train(parse_config(data)), "reviews")  # version 2, a candidate
    record_corrections(store, "reviews", paris(12, 9), "pos")
    return cfg, store, registry


def test_the_report_quotes_kept_out_corrections_as_text(tmp_path: Path) -> None:
    """A correction repeating a test text was quoted raw: "![p](https://tracker.example/p.png)" made the report
    fetch a remote picture when opened, "[x](https://evil.example)" was a live link, a backtick broke the list."""
    from tunesmith.tune.retrain import _write_report

    hostile = "loved it ![p](https://tracker.example/p.png) see [my shop](https://evil.example) `x\nnext"
    nobody = {"n": 0}
    report = {"model": "reviews", "decision": "candidate", "production": 1, "candidate": 2, "mode": "full", "run": "r",
              "corrections": {"usable": 1}, "reasons": ["kept"], "judged": {"test": nobody, "feedback": nobody},
              "rule": {"max_test_drop": 0.01, "require_feedback_gain": False, "alpha": 0.05, "promote": "never"},
              "dataset": {"counts": {"train": 1, "validation": 1, "test": 1, "feedback_holdout": 0},
                          "corrections_in_train": 0, "corrections_in_validation": 0, "superseded": [], "corrections_known": 0,
                          "kept_out": [{"id": "req`1:14", "matches": "test.csv:22", "split": "test", "match": "exact",
                                        "text": hostile}]}}
    _write_report(tmp_path, report)
    page = (tmp_path / "report.html").read_text()
    assert "<img" not in page and "<a " not in page
    assert ("<li>req`1:14 repeats test.csv:22 (test, exact): loved it ![p](https://tracker.example/p.png) see "
            "[my shop](https://evil.example) `x next</li>") in page


def multi_label(right: int, wrong: int, missed: str) -> tuple[list, list, Any]:
    """Topic/sentiment truth, `right` examples answered right then `wrong` answered wrongly: production's answers
    (wrong the `missed` way) and a function giving the answers wrong another way; exact sets match `right` times."""
    other = {"drink": "meal", "meal": "drink", "neg": "pos", "pos": "neg"}
    truth = [["drink" if i % 2 else "meal", "pos" if i % 3 else "neg"] for i in range(right + wrong)]
    answer = {"one label missed": lambda t: [t[0]], "all four wrong": lambda t: [other[t[0]], other[t[1]]]}
    def answers(how: str) -> list[list[str]]:
        return [t if i < right else answer[how](t) for i, t in enumerate(truth)]
    return truth, answers(missed), answers


ML_LABELS = ["drink", "meal", "neg", "pos"]


def test_a_multi_label_candidate_with_the_same_label_sets_right_but_more_labels_wrong_is_refused() -> None:
    """On exact label sets only, a candidate getting every label wrong where production missed one looked as good."""
    from tunesmith.config import RetrainSpec, TaskType
    from tunesmith.tune.retrain import _paired, decide

    truth, production, answers = multi_label(40, 60, "one label missed")
    candidate = answers("all four wrong")
    assert sum(sorted(t) == sorted(p) for t, p in zip(truth, production)) == sum(
        sorted(t) == sorted(c) for t, c in zip(truth, candidate)) == 40
    test = _paired(TaskType.multi_label, truth, production, candidate, ML_LABELS)
    assert (test["reference"], test["candidate"]) == (pytest.approx(0.85), pytest.approx(0.4))
    ok, reasons = decide({"test": {"n": 100, "paired": test}, "feedback": {"n": 0}},
                         RetrainSpec(require_feedback_gain=False))
    assert not ok and "worse on the test split: label accuracy (Hamming) 0.8500 -> 0.4000" in reasons[0], reasons


def test_a_multi_label_candidate_better_on_each_label_passes() -> None:
    """Fewer wrong labels on the test split and on the corrections is a gain, even with no label set newly exact."""
    from tunesmith.config import RetrainSpec, TaskType
    from tunesmith.tune.retrain import _paired, decide

    truth, production, answers = multi_label(40, 60, "all four wrong")
    test = _paired(TaskType.multi_label, truth, production, answers("one label missed"), ML_LABELS)
    fb_truth, fb_production, fb_answers = multi_label(0, 40, "all four wrong")
    fixed = fb_answers("one label missed")[:30] + fb_production[30:]
    feedback = _paired(TaskType.multi_label, fb_truth, fb_production, fixed, ML_LABELS)
    ok, reasons = decide({"test": {"n": 100, "paired": test}, "feedback": {"n": 40, "paired": feedback}}, RetrainSpec())
    assert ok, reasons
    assert "not worse on the test split: label accuracy (Hamming) 0.4000 -> 0.8500" in reasons[0]
    assert "significantly better on the corrections: label accuracy (Hamming) 0 -> 0.5625" in reasons[1], reasons


def test_the_report_shows_a_dash_for_a_metric_the_candidate_has_none_of(tmp_path: Path) -> None:
    """Constant predictions have no correlation: pearson present for production only raised KeyError."""
    from tunesmith.tune.retrain import _write_report

    side = {"n": 3, "metrics": {"production": {"mae": 0.5, "pearson": 0.9}, "candidate": {"mae": 0.7, "spearman": None}},
            "paired": {"test": "Wilcoxon signed-rank", "p_value": 0.5, "p_better": 0.9, "p_worse": 0.25, "detail": {}}}
    report = {"model": "scores", "decision": "candidate", "production": 1, "candidate": 2, "mode": "full", "run": "r",
              "corrections": {"usable": 1}, "reasons": ["kept"], "judged": {"test": side, "feedback": {"n": 0}},
              "rule": {"max_test_drop": 0.01, "require_feedback_gain": False, "alpha": 0.05, "promote": "never"},
              "dataset": {"counts": {"train": 1, "validation": 1, "test": 3, "feedback_holdout": 0},
                          "corrections_in_train": 0, "corrections_in_validation": 0, "superseded": [], "corrections_known": 0,
                          "kept_out": []}}
    _write_report(tmp_path, report)
    md = (tmp_path / "report.md").read_text()
    assert "| pearson | 0.9000 | — |" in md and "| spearman | — | — |" in md and "| mae | 0.5000 | 0.7000 |" in md


def test_a_newer_correction_of_a_text_an_earlier_round_trained_on_replaces_it(tmp_path: Path, tiny_bert: Path) -> None:
    """Every correction ever given is exported: round 1's "pos" and the newer "neg" of the same texts were a conflicting
    duplicate, which `majority` dropped (a tie): the newer word never trained, in this round and every later one."""
    cfg, *_ = planted_project(tmp_path, tiny_bert, max_steps=3)
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    registry = Registry(store)
    registry.add(train(cfg), "reviews", stage="production")
    texts = [f"{w} soup we {v} it" for w, v in zip(["cold", "thin", "odd", "sour", "grey", "flat", "warm", "thick", "rich",
                                                    "mild", "hot", "fine"], ["hated", "returned", "left", "binned",
                                                    "skipped", "refused", "ate", "shared", "kept", "finished", "loved",
                                                    "liked"], strict=True)]
    record_corrections(store, "reviews", texts, "pos")
    easy = {"require_feedback_gain": False, "max_test_drop": 1.0}
    assert retrain(store, "reviews", out=tmp_path / "round1", settings=easy, say=lambda _: None).decision == "promoted"
    time.sleep(1.1)
    # the newer word, on the same texts as served again (another spacing and case: the same text to preparation)
    record_corrections(store, "reviews", [t.upper().replace(" ", "  ") for t in texts], "neg", request_id="req-2")
    said: list[str] = []
    second = retrain(store, "reviews", out=tmp_path / "round2", settings=easy, promote="never", say=said.append)
    assert second.report["corrections"]["replaced_by_newer"] == 12
    assert any("12 replaced by a newer correction" in line for line in said), said
    dataset = tmp_path / "round2" / "dataset"
    found = {}
    for name in ("train.parquet", HELD_OUT):
        table = pq.read_table(dataset / name)
        found.update(zip([" ".join(t.lower().split()) for t in table.column("text").to_pylist()],
                         table.column("label").to_pylist(), strict=True))
    assert {t: found.get(t) for t in texts} == dict.fromkeys(texts, "neg")  # each trains or is held out, as "neg"
    assert not (tmp_path / "round2" / "corrections" / "quarantine.jsonl").read_text().strip()  # no conflict dropped


def test_an_incremental_replay_sample_keeps_every_class(tmp_path: Path, tiny_bert: Path) -> None:
    """A rare third class: the replay sample (2 old rows per new one) missed it, and training refused the round (its
    validation has a class training never has)."""
    data = rows(200, seed=1)
    rng = random.Random(5)
    meh = [{"text": " ".join(rng.sample(FILL, 4)) + f" so so {i}", "label": "meh", "score": 0.0} for i in range(12)]
    splits = {"train": data[:160] + meh[:4], "validation": data[160:180] + meh[4:5], "test": data[180:] + meh[5:6]}
    cfg = parse_config({
        "name": "reviews",
        "data": {"sources": [{"path": str(write(tmp_path / f"{s}.csv", r)), "split": s} for s, r in splits.items()],
                 "output_dir": str(tmp_path / "ds"), "dedup": {"near": False}},
        "model": {"name": str(tiny_bert), "max_length": 32},
        "train": {"learning_rate": 3e-3, "max_steps": 3, "batch_size": 16, "early_stopping_patience": None,
                  "output_dir": str(tmp_path / "prod")}})
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    Registry(store).add(train(cfg), "reviews", stage="production")
    record_corrections(store, "reviews", paris(4, 21), "pos")
    outcome = retrain(store, "reviews", mode="incremental", promote="never", out=tmp_path / "inc", say=lambda _: None)
    assert outcome.decision == "candidate", outcome.reasons
    subset = pq.read_table(tmp_path / "inc" / "dataset-incremental" / "train.parquet").column("label").to_pylist()
    assert {"neg", "pos", "meh"} <= set(subset)
    assert len(subset) == 2 * 3 + 3  # the 3 corrections that train, 2 old rows per new one (the rare one among them)


def test_the_replay_sample_covers_every_label_of_label_sets() -> None:
    from tunesmith.tune.retrain import _covering

    old = [["a"], ["b"], ["a", "c"], ["a"], ["d", "b"]]
    chosen = _covering(old, [["a"]], np.random.default_rng(0))
    assert set().union(*(old[i] for i in chosen)) >= {"b", "c", "d"} and len(chosen) <= 3
    assert list(_covering(old, [["a"]], np.random.default_rng(0))) == list(chosen)  # by the seed
    assert len(_covering(["x", "y", "y"], ["x", "y"], np.random.default_rng(0))) == 0  # nothing missing: nothing forced


def test_an_incremental_round_scales_the_head_learning_rate_too(tmp_path: Path, tiny_bert: Path) -> None:
    from tunesmith.config import RetrainSpec
    from tunesmith.tune.retrain import _candidate_config

    cfg, *_ = planted_project(tmp_path, tiny_bert, max_steps=2, learning_rate=1e-4, head_learning_rate=1e-2)
    prod = Run(train(cfg))
    inc = _candidate_config(prod, RetrainSpec(mode="incremental", incremental_lr_scale=0.5), tmp_path / "next")
    assert inc.train.learning_rate == pytest.approx(5e-5) and inc.train.head_learning_rate == pytest.approx(5e-3)
    full = _candidate_config(prod, RetrainSpec(mode="full"), tmp_path / "next")
    assert full.train.head_learning_rate == pytest.approx(1e-2)


@pytest.mark.parametrize(("fmt", "spec"), [("onnx", {}), ("merged", {"method": "lora", "learning_rate": 5e-3})])
def test_an_export_in_production_continues_from_its_run_or_is_refused(tmp_path: Path, tiny_bert: Path, fmt: str,
                                                                      spec: dict) -> None:
    """An ONNX export in production crashed an incremental round (OSError on its weights); a merged export of a LoRA run
    trained every weight while saying lora, and wrote a run that did not load."""
    from tunesmith.config import RetrainSpec
    from tunesmith.export import export_run
    from tunesmith.tune.retrain import _candidate_config

    cfg, *_ = planted_project(tmp_path, tiny_bert, max_steps=3, **spec)
    source = train(cfg)
    exported = export_run(source, fmt, out=tmp_path / f"prod-{fmt}").path
    inc = _candidate_config(Run(exported), RetrainSpec(mode="incremental"), tmp_path / "next")
    assert inc.train.init_from == Path(source).resolve() and inc.train.method == cfg.train.method
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    registry = Registry(store)
    registry.add(exported, "reviews", stage="production")
    record_corrections(store, "reviews", paris(12, 61), "pos")
    easy = {"require_feedback_gain": False, "max_test_drop": 1.0}
    if fmt == "merged":  # the whole round, once: the candidate continues the adapter and loads
        outcome = retrain(store, "reviews", mode="incremental", promote="never", out=tmp_path / "inc", settings=easy,
                          say=lambda _: None)
        run = Run(outcome.report["run"])
        assert run.manifest.method == "lora" and run.manifest.adapter and run.manifest.parent_run == str(Path(source).resolve())
        assert any(f"continues from the run it was exported from, {source}" in n for n in outcome.report["notes"])
        assert "note: production" in (tmp_path / "inc" / "report.md").read_text()
        Predictor(run.path).predict(["paris capital visit"])
    Path(source).rename(tmp_path / "moved")  # the source run is gone: nothing to continue, said before any work
    why = "no trainable weights" if fmt == "onnx" else "no adapter to continue"
    with pytest.raises(ConfigError, match=rf"export.json: .*{why}.*--mode full.*registry add") as err:
        retrain(store, "reviews", mode="incremental", out=tmp_path / "refused", settings=easy, say=lambda _: None)
    assert str(source) in str(err.value) and not (tmp_path / "refused" / "dataset").exists()
    assert [v.version for v in registry.versions("reviews")] == ([1, 2] if fmt == "merged" else [1])
