"""A study stopped mid-trial (Ctrl-C, or the worker killed) and started again: the interrupted trial's values
run again, its half-written run folder goes, and the study is not left holding a trial nobody runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from tests.tune.test_study import SPACE, trials_of, tune_project
from tunesmith.training.dataset import ensure_dataset
from tunesmith.store.db import normalize_url
from tunesmith.tune.study import _base_config, _hash, run_study, study_folder


def test_a_killed_workers_trial_runs_again_when_the_study_is_started_again_at_once(tmp_path: Path, tiny_bert: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    tune = {"space": SPACE, "pruner": "none", "trials": 1, "storage": url}
    cfg = tune_project(tmp_path, tiny_bert, {}, steps=2000)  # long enough to be killed mid-training
    ensure_dataset(cfg)
    raw = cfg.model_dump(mode="json", exclude={"tune"})
    raw["tune"] = tune
    config = tmp_path / "tune.yaml"
    config.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    worker = subprocess.Popen([sys.executable, "-m", "tunesmith", "tune", str(config)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env=env, cwd=tmp_path)
    checkpoints = tmp_path / "tiny-tune" / "trial-0" / "checkpoints"
    deadline = time.monotonic() + 180
    while not list(checkpoints.glob("checkpoint-*")) and worker.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    worker.kill()  # kill -9: no chance to clean up or to tell the storage
    worker.wait()
    [killed] = trials_of(url)
    assert killed.state == TrialState.RUNNING  # what a killed worker leaves behind; its heartbeat is still fresh

    # Started again at once (well within the heartbeat's grace period), on the same machine. Its 2,000 steps were only
    # there to be killed mid-training; 4 keep the rerun short, so the study is told its trials trained under those.
    lines: list[str] = []
    again = tune_project(tmp_path, tiny_bert, tune, steps=4)
    study = optuna.load_study(study_name="tiny", storage=normalize_url(url))
    study.set_user_attr("base_config", json.dumps(_base_config(again)))
    study.set_user_attr("base_hash", _hash(_base_config(again)))
    summary = run_study(again, echo=lines.append, evaluate_test=False)
    trials = trials_of(url)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE], lines
    assert trials[1].params == killed.params  # the killed trial's values, run again
    assert summary["trials"] == {"complete": 1, "fail": 1}
    assert not (study_folder(cfg) / "trial-0").exists()  # its half-written folder (and checkpoints) removed


def test_an_interrupted_trial_runs_again_when_the_study_resumes(tmp_path: Path, tiny_bert: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    import tunesmith.training

    url = f"sqlite:///{tmp_path / 'store.db'}"
    tune = {"space": SPACE, "pruner": "none", "trials": 3, "storage": url, "sampler": "random"}
    uninterrupted = tmp_path / "uninterrupted"
    uninterrupted.mkdir()
    cfg = tune_project(uninterrupted, tiny_bert, {**tune, "storage": f"sqlite:///{uninterrupted / 'store.db'}"}, steps=2)
    run_study(cfg, echo=lambda line: None, evaluate_test=False)
    expected = [t.params for t in trials_of(f"sqlite:///{uninterrupted / 'store.db'}")]

    real, calls = tunesmith.training.train, []

    def ctrl_c_in_the_second_trial(*args: object, **kwargs: object) -> object:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(tunesmith.training, "train", ctrl_c_in_the_second_trial)
    cfg = tune_project(tmp_path, tiny_bert, tune, steps=2)
    with pytest.raises(KeyboardInterrupt):
        run_study(cfg, echo=lambda line: None, evaluate_test=False)
    interrupted = trials_of(url)[1]
    assert interrupted.state == TrialState.FAIL and interrupted.params == expected[1]

    lines: list[str] = []
    summary = run_study(cfg, echo=lines.append, evaluate_test=False)  # run again: the study resumes
    assert summary["trials"] == {"complete": 3, "fail": 1}
    done = [t.params for t in trials_of(url) if t.state == TrialState.COMPLETE]
    assert done == expected  # the interrupted trial's values are not skipped; the seed gives the same study
    assert "study 'tiny' has 1 finished trial; going on to 3" in lines
    assert not (study_folder(cfg) / "trial-1").exists()


def test_a_trial_queued_again_after_its_worker_went_silent_is_run_even_as_the_last_one(
        tmp_path: Path, tiny_bert: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tunesmith.tune.study as study_module
    from tunesmith.tune.study import load_study

    monkeypatch.setattr(study_module, "HEARTBEAT_S", 1)  # a minute of silence, in a second
    monkeypatch.setattr(study_module, "GRACE_S", 1)
    url = f"sqlite:///{tmp_path / 'store.db'}"
    cfg = tune_project(tmp_path, tiny_bert, {"space": SPACE, "pruner": "none", "trials": 1, "storage": url}, steps=2)
    study = load_study(cfg)
    lost = study.ask()  # a worker on another machine started trial 0, then its machine went away
    lost.suggest_float("train.learning_rate", 1e-4, 1e-2, log=True)
    lost.suggest_categorical("train.method", ["full", "lora"])
    lost.set_user_attr("host", "elsewhere")
    study._storage.record_heartbeat(lost._trial_id)
    time.sleep(2.5)

    summary = run_study(cfg, echo=lambda line: None, evaluate_test=False)
    trials = trials_of(url)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]  # failed, queued again, and run
    assert trials[1].params == trials[0].params
    assert summary["trials"] == {"complete": 1, "fail": 1} and summary["best"]["number"] == 1
