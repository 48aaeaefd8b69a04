"""Two `tunesmith tune` workers on one study in PostgreSQL: N trials in all, none run twice, none left running."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from tests.tune.test_study import SPACE, tune_project
from tunesmith.store.db import normalize_url
from tunesmith.training.dataset import ensure_dataset


@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)
def test_two_workers_share_one_study_without_running_a_trial_twice(tmp_path: Path, tiny_bert: Path, store_url: str) -> None:
    cfg = tune_project(tmp_path, tiny_bert, {}, steps=2)
    ensure_dataset(cfg)  # prepared once up front: the workers' time goes to trials (they would wait on each other)
    raw = cfg.model_dump(mode="json", exclude={"tune"})
    raw["tune"] = {"space": SPACE, "pruner": "none"}
    config = tmp_path / "tune.yaml"
    config.write_text(yaml.safe_dump(raw))
    command = [sys.executable, "-m", "tunesmith", "tune", str(config), "--study", "shared", "--storage", store_url,
               "--trials", "4"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    workers = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=tmp_path)
               for _ in range(2)]
    outputs = [w.communicate(timeout=240)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], "\n\n".join(o[-3000:] for o in outputs)

    trials = optuna.load_study(study_name="shared", storage=normalize_url(store_url)).get_trials()
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 4 and len({t.number for t in finished}) == 4
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    started = [set(map(int, re.findall(r"^trial (\d+) starts", out, re.MULTILINE))) for out in outputs]
    assert not started[0] & started[1], started  # no trial ran on both workers
    assert started[0] | started[1] == {t.number for t in finished}
    folder = tmp_path / "shared-tune"
    for t in finished:  # each trial's run folder is its own, written by the worker that ran it
        run_config = yaml.safe_load((folder / f"trial-{t.number}" / "config.json").read_text())
        assert run_config["train"]["output_dir"] == str((folder / f"trial-{t.number}").resolve())
        assert t.user_attrs["run_dir"] == run_config["train"]["output_dir"]
    assert (folder / "best.yaml").is_file() and (folder / "report.html").is_file()
