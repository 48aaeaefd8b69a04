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

    cfg = _interrupted(tmp_path, tiny_bert)
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


def test_a_folder_holding_a_users_dataset_json_is_never_taken_for_a_failed_start(tmp_path: Path, tiny_bert: Path,
                                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A train.output_dir whose only file was named dataset.json (here the user's data) was deleted as what a failed
    start leaves, without --overwrite; only tunesmith's own records count, and its checks come before any delete."""
    import json

    user = tmp_path / "data"
    user.mkdir()
    (user / "dataset.json").write_text(json.dumps([{"text": "great food", "label": "pos"}]))
    cfg = project(tmp_path, tiny_bert, train_spec={"max_steps": 2, "output_dir": str(user)})
    for overwrite in (False, True):
        with pytest.raises(ConfigError, match="not a tunesmith run"):
            train(cfg, overwrite=overwrite)
        assert json.loads((user / "dataset.json").read_text())[0]["text"] == "great food"
    (user / "dataset.json").write_text(json.dumps({"dataset": "x", "fingerprint": "y", "labels": None}))
    (user / "trained_rows.json").write_text(json.dumps(["mine"]))  # not the record a run writes
    with pytest.raises(ConfigError, match="not a tunesmith run"):
        train(cfg)
    assert (user / "trained_rows.json").is_file()
    (user / "trained_rows.json").unlink()  # now what a failed start leaves, but it holds the current directory
    monkeypatch.chdir(user)
    with pytest.raises(ConfigError, match="failed start .*holds the current directory"):
        train(cfg)
    assert (user / "dataset.json").is_file()
    monkeypatch.chdir(tmp_path)
    assert is_run(train(cfg))  # started over


def _interrupted(tmp_path: Path, tiny_bert: Path):
    class Stop(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
            raise KeyboardInterrupt

    cfg = project(tmp_path, tiny_bert, train_spec={"max_steps": 8, "evals_per_epoch": 4})
    with pytest.raises(KeyboardInterrupt):
        train(cfg, callbacks=[Stop()])
    return cfg


def test_a_resume_goes_on_with_the_dataset_it_started_on_and_never_prepares_one(tmp_path: Path, tiny_bert: Path) -> None:
    """--resume prepared the config's dataset again first: from files edited meanwhile it overwrote the dataset the
    run needed and then refused; with the dataset gone it prepared one only to refuse it (or, from another directory,
    prepared a stray one there and recorded it in run.json)."""
    import json

    from tunesmith.artifacts import MANIFEST

    cfg = _interrupted(tmp_path, tiny_bert)
    ds = tmp_path / "ds"
    before = json.loads((ds / MANIFEST).read_text())["fingerprint"]
    data = rows(160)
    data[0]["text"] = "an edited review, not prepared yet"
    write(tmp_path / "data.csv", data)
    run = Run(train(cfg, resume=tmp_path / "run"))
    assert json.loads((ds / MANIFEST).read_text())["fingerprint"] == before  # not prepared again
    assert run.manifest.dataset == str(ds.resolve()) and run.manifest.dataset_fingerprint == before
    shutil.rmtree(tmp_path / "run")
    cfg = _interrupted(tmp_path, tiny_bert)  # started on the edited data
    shutil.move(ds, tmp_path / "kept")
    with pytest.raises(ConfigError, match=rf"started on the dataset {ds} \(fingerprint .*\), which is gone .*--dataset"):
        train(cfg, resume=tmp_path / "run")
    assert not ds.exists()  # nothing prepared
    assert is_run(train(cfg, resume=tmp_path / "run", dataset_dir=tmp_path / "kept"))


def test_a_run_finished_from_its_last_checkpoint_keeps_a_runtime_and_its_summary_line(tmp_path: Path,
                                                                                       tiny_bert: Path) -> None:
    """Killed between its last checkpoint and run.json, the run resumed finishes from that checkpoint: it recorded
    train_runtime_s 0.0, and its training log lost the summary line `train` logs last."""
    import json

    cfg = project(tmp_path, tiny_bert, train_spec={"max_steps": 10, "evals_per_epoch": 4})
    run = train(cfg)
    log = (run / "training_log.jsonl").read_text().splitlines()
    assert "train_runtime" in json.loads(log[-1])
    (run / "run.json").unlink()
    train(cfg, resume=run)
    again = (run / "training_log.jsonl").read_text().splitlines()
    assert len(again) == len(log) and list(map(json.loads, again[:-1])) == list(map(json.loads, log[:-1]))
    summary = json.loads(again[-1])
    assert summary["step"] == 10 and summary["train_runtime"] > 0 and summary["train_loss"] > 0
    # run.json records the rebuilt summary's runtime (to 0.1 s: a tiny run's evaluations and finishing may round to 0)
    assert Run(run).manifest.train_runtime_s == round(summary["train_runtime"], 1)


def test_a_run_records_the_epochs_steps_and_rows_it_trained_on(tmp_path: Path, tiny_bert: Path) -> None:
    """train.max_steps overrides epochs: run.json and the card stated the configured epochs; and the card's row counts
    were the dataset folder's as it is now (prepared again since), so dataset.json records the ones trained on."""
    import json

    from tunesmith.artifacts import RUN_DATASET

    cfg = project(tmp_path, tiny_bert, train_spec={"max_steps": 8, "epochs": 3, "batch_size": 4,
                                                    "evals_per_epoch": 1})
    run = train(cfg)
    hp = json.loads((run / "run.json").read_text())["hyperparameters"]
    counts = json.loads((tmp_path / "ds" / "manifest.json").read_text())["counts"]
    steps_per_epoch = -(-counts["train"] // 4)
    assert hp["epochs"] == 3 and hp["steps"] == 8 and hp["epochs_trained"] == round(8 / steps_per_epoch, 2) < 1
    assert json.loads((run / RUN_DATASET).read_text())["counts"] == counts
    card = (run / "README.md").read_text()
    assert f", {hp['epochs_trained']} epochs, 8 steps (train.max_steps 8)" in card
    assert f"- Rows: {counts['train']} train / {counts['validation']} validation" in card
