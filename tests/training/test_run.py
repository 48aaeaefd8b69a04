"""run.py: the run folder's lifecycle (what --overwrite may delete, who checks under torchrun, resuming a moved run)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pyarrow as pa
import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from tests.test_train import project, rows, write
from tunesmith.artifacts import Run, is_run
from tunesmith.errors import ConfigError
from tunesmith.training import train
from tunesmith.training.run import start_run


def test_overwrite_refuses_a_folder_that_is_not_a_run(tmp_path: Path, tiny_bert: Path) -> None:
    """--overwrite replaces an earlier run; a train.output_dir pointing at anything else (a project, a model folder,
    a home directory) must be refused, not deleted."""
    cfg = project(tmp_path, tiny_bert, train_spec={"max_steps": 2, "output_dir": str(tmp_path / "work")})
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "notes.txt").write_text("months of work")
    (tmp_path / "work" / "config.json").write_text('{"model_type": "bert"}')  # a model folder's, not a run's
    with pytest.raises(ConfigError, match="not a tunesmith run"):
        train(cfg, overwrite=True)
    assert (tmp_path / "work" / "notes.txt").read_text() == "months of work"
    (tmp_path / "file").write_text("x")  # a file where the run folder would go: refused, with or without --overwrite
    for overwrite in (False, True):
        with pytest.raises(ConfigError, match="is a file"):
            train(project(tmp_path, tiny_bert, train_spec={"max_steps": 2, "output_dir": str(tmp_path / "file")}),
                  overwrite=overwrite)
    assert (tmp_path / "file").read_text() == "x"
    other = tmp_path / "other" / "checkpoints" / "epoch-3.ckpt"  # another tool's checkpoints
    other.parent.mkdir(parents=True)
    other.write_text("weights")
    with pytest.raises(ConfigError, match="not a tunesmith run"):
        train(project(tmp_path, tiny_bert, train_spec={"max_steps": 2, "output_dir": str(tmp_path / "other")}),
              overwrite=True)
    assert other.is_file()
    # what a run that failed before config.json leaves (the Trainer makes checkpoints/ first) is replaced
    (tmp_path / "failed" / "checkpoints").mkdir(parents=True)
    assert is_run(train(project(tmp_path, tiny_bert, train_spec={"max_steps": 2, "output_dir": str(tmp_path / "failed")}),
                        overwrite=True))


def test_overwrite_never_deletes_what_the_new_run_reads(tmp_path: Path, tiny_bert: Path) -> None:
    """Incremental training into its parent's folder with --overwrite deleted the weights it continues from."""
    parent = train(project(tmp_path, tiny_bert, train_spec={"max_steps": 2}))
    child = project(tmp_path, tiny_bert, train_spec={"max_steps": 2, "init_from": str(parent)})
    with pytest.raises(ConfigError, match="train.init_from"):
        train(child, overwrite=True)
    assert is_run(parent)
    inside = tmp_path / "run" / "more.csv"  # a data source kept inside the run folder
    write(inside, rows(40))
    data = {"sources": [{"path": str(inside)}], "output_dir": str(tmp_path / "ds2"), "dedup": {"near": False}}
    with pytest.raises(ConfigError, match="data.sources"):
        train(project(tmp_path, tiny_bert, train_spec={"max_steps": 2}, data=data), overwrite=True)
    assert inside.is_file() and is_run(parent)
    # a --dataset prepared inside the run folder was deleted with it, and training then found no dataset
    from tunesmith.data.prepare import prepare

    kept = prepare(project(tmp_path, tiny_bert, data={**data, "sources": [{"path": str(tmp_path / "data.csv")}],
                                                      "output_dir": str(tmp_path / "run" / "dataset")})).path
    with pytest.raises(ConfigError, match="the dataset .*run/dataset"):
        train(project(tmp_path, tiny_bert, train_spec={"max_steps": 2}), dataset_dir=kept, overwrite=True)
    assert (kept / "manifest.json").is_file()
    shutil.rmtree(kept)
    assert is_run(train(project(tmp_path, tiny_bert, train_spec={"max_steps": 2}), overwrite=True))  # a plain rerun


def test_a_process_launched_by_torchrun_itself_refuses_an_existing_run(tmp_path: Path, tiny_bert: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """`torchrun -m tunesmith train` (or accelerate launch) skips tunesmith's launcher: rank 0 itself must refuse to
    train over an earlier run, or two runs' checkpoints and model mix in one folder."""
    cfg = project(tmp_path, tiny_bert, train_spec={"max_steps": 2})
    train(cfg)
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ConfigError, match="a run already exists there"):
        start_run(cfg, None, False)
    monkeypatch.setenv("RANK", "1")  # the other ranks leave the folder to rank 0
    assert start_run(cfg, None, False) == (tmp_path / "run", None)


def test_a_moved_run_resumed_after_its_last_checkpoint_keeps_the_best_model(tmp_path: Path, tiny_bert: Path) -> None:
    """trainer_state.json records the best checkpoint by path: once the run folder moved (or a relative
    train.output_dir is resumed from another directory) the Trainer forgot it, and a run interrupted after its last
    checkpoint saved the last weights as model/ beside the best checkpoint's metrics."""

    class Killed(TrainerCallback):
        def on_save(self, args, state, control, **kwargs) -> None:
            if state.global_step == 40:
                raise KeyboardInterrupt  # after the last checkpoint is marked COMPLETE

    cfg = project(tmp_path, tiny_bert, train_spec={"max_steps": 40, "evals_per_epoch": 4})
    with pytest.raises(KeyboardInterrupt):
        train(cfg, callbacks=[Killed()])
    kept = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert len(kept) == 2 and "checkpoint-40" in kept  # the best checkpoint is an earlier one
    best = next(name for name in kept if name != "checkpoint-40")
    shutil.move(tmp_path / "run", tmp_path / "moved")
    run = train(cfg, resume=tmp_path / "moved")
    final = load_file(run / "model" / "model.safetensors")
    saved = load_file(run / "checkpoints" / best / "model.safetensors")
    assert all(torch.equal(final[k], saved[k]) for k in final)
    assert Run(run).manifest.best_metric and os.path.isdir(run / "checkpoints" / best)


def test_resuming_a_run_that_stopped_early_finishes_it_where_it_stopped(tmp_path: Path, tiny_bert: Path) -> None:
    # Resumed (a worker killed between its last checkpoint and run.json, or --resume of the finished run), it trained
    # on to the next evaluation, and an improvement there kept another model than the uninterrupted run's.
    import json

    spec = {"max_steps": 40, "evals_per_epoch": 4, "save_total_limit": 10, "learning_rate": 1e-12,
            "early_stopping_patience": 2}
    cfg = project(tmp_path, tiny_bert, train_spec=spec)

    def evaluated(run: Path) -> list[int]:
        return [e["step"] for e in map(json.loads, (run / "training_log.jsonl").read_text().splitlines()) if "eval_loss" in e]

    run = train(cfg)
    stopped, kept = evaluated(run), load_file(run / "model" / "model.safetensors")
    assert max(stopped) < 40  # it stopped early
    assert evaluated(train(cfg, resume=run)) == stopped
    again = load_file(run / "model" / "model.safetensors")
    assert all(torch.equal(kept[k], again[k]) for k in kept)  # the same model kept


def test_a_run_resumed_on_another_dataset_is_refused(tmp_path: Path, tiny_bert: Path) -> None:
    # Prepared again from an edited file (or another --dataset), it had gone on silently on other data, or failed
    # loading a head of another size (a new label).
    import json

    from tunesmith.artifacts import RUN_DATASET

    class Stop(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
            raise KeyboardInterrupt

    cfg = project(tmp_path, tiny_bert, train_spec={"max_steps": 8, "evals_per_epoch": 4})
    with pytest.raises(KeyboardInterrupt):
        train(cfg, callbacks=[Stop()])
    started = json.loads((tmp_path / "run" / RUN_DATASET).read_text())
    data = rows(160)
    data[0]["text"] = "an edited review, prepared again"
    write(tmp_path / "data.csv", data)
    shutil.rmtree(tmp_path / "ds")
    with pytest.raises(ConfigError, match=rf"started on the dataset .*fingerprint {started['fingerprint'][:12]}"):
        train(cfg, resume=tmp_path / "run")


def test_a_second_training_into_a_folder_being_written_is_refused(tmp_path: Path, tiny_bert: Path) -> None:
    # Two `tunesmith train` started together both passed the "a run exists" check and wrote one folder, both "succeeding".
    import fcntl

    cfg = project(tmp_path, tiny_bert, train_spec={"max_steps": 2})
    with (tmp_path / ".run.lock").open("w") as held:  # what the first training holds while it writes tmp_path/run
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(ConfigError, match="another training is writing this run folder now"):
            train(cfg)
    assert is_run(train(cfg))  # let go, the folder is free again


def test_a_run_records_the_keys_of_the_rows_it_trains_on(tmp_path: Path, tiny_bert: Path) -> None:
    """Evaluate leaves these rows out of a dataset prepared again (its splits drawn anew); what a start that failed
    before config.json leaves (dataset.json, trained_rows.json, an empty checkpoints/) is still started over."""
    import json

    from tunesmith.artifacts import RUN_DATASET, RUN_TRAINED_ROWS, DatasetVersion
    from tunesmith.data.prepare import prepare
    from tunesmith.training.run import check_dataset, row_keys

    cfg = project(tmp_path, tiny_bert, train_spec={"max_steps": 2})
    version = DatasetVersion(prepare(cfg).path)
    failed = tmp_path / "run"
    check_dataset(failed, version, resuming=False)
    recorded = json.loads((failed / RUN_TRAINED_ROWS).read_text())["keys"]
    assert recorded == sorted(set(row_keys(version.table("train"))))
    assert not set(recorded) & set(row_keys(version.table("test")))  # the leakage check's key: no test row among them
    text = version.table("train").column("text")[0].as_py()
    assert row_keys(pa.table({"text": [f"  {text.upper()} \u200b"]}))[0] in recorded  # case, spacing, invisibles
    assert {p.name for p in failed.iterdir()} == {RUN_DATASET, RUN_TRAINED_ROWS}
    (failed / "checkpoints").mkdir()
    assert is_run(train(cfg))  # no --overwrite needed
