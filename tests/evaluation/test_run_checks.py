"""`tunesmith evaluate` on trained tiny runs: a re-prepared dataset's rows the run trained on are left out, the
base-model column busy in another evaluation, a chat split with nothing to answer, multi-label mistakes."""

from __future__ import annotations

import fcntl
import json
import shutil
from pathlib import Path

import pytest

from tests.test_train import multi_label_project, project
from tunesmith.artifacts import RUN_TRAINED_ROWS, DatasetVersion
from tunesmith.errors import ConfigError, DataError
from tunesmith.evaluation.run import evaluate_run
from tunesmith.training import train


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path) -> Path:
    return train(project(tmp_path_factory.mktemp("clf"), tiny_bert, train_spec={"max_steps": 4}))


def _regrown(run: Path, tmp: Path, tiny_bert: Path) -> tuple[Path, set[str]]:
    """A copy of the run whose dataset was prepared again with 60 rows more (its splits drawn anew), and the texts of
    the split the run trained on."""
    from tunesmith.data.prepare import prepare

    root = tmp / "grown"
    shutil.copytree(run.parent, root)
    trained = set(DatasetVersion(root / "ds").table("train").column("text").to_pylist())
    prepare(project(root, tiny_bert, n=220))  # same data.csv and dataset folder, more rows
    return root / "run", trained


def test_a_regrown_dataset_is_scored_without_the_rows_the_run_trained_on(small_run: Path, tmp_path: Path,
                                                                         tiny_bert: Path) -> None:
    """Re-prepared with rows added, its test split held rows of the run's training split, scored as held out."""
    assert (small_run / RUN_TRAINED_ROWS).is_file()
    run, trained = _regrown(small_run, tmp_path, tiny_bert)
    test = DatasetVersion(run.parent / "ds").table("test").column("text").to_pylist()
    seen = sum(t in trained for t in test)
    assert 0 < seen < len(test)
    result = evaluate_run(run, dataset_dir=run.parent / "ds", baselines=False)
    assert result["n"] == len(test) - seen
    assert f"{seen} of {len(test)} test rows were in this run's training data and are left out" in result["notes"]
    assert sum(map(sum, result["metrics"]["confusion_matrix"])) == len(test) - seen

    (run / RUN_TRAINED_ROWS).unlink()  # an older run, or an export: scored as before, with a note
    result = evaluate_run(run, dataset_dir=run.parent / "ds", baselines=False)
    assert result["n"] == len(test) and any("could not be checked" in n for n in result["notes"])


def test_a_split_the_run_trained_on_entirely_is_refused(small_run: Path, tmp_path: Path, tiny_bert: Path) -> None:
    from tunesmith.training.run import row_keys

    run, _ = _regrown(small_run, tmp_path, tiny_bert)
    test = DatasetVersion(run.parent / "ds").table("test")
    (run / RUN_TRAINED_ROWS).write_text(json.dumps({"keys": row_keys(test)}))
    with pytest.raises(DataError, match=f"all {test.num_rows} rows of split 'test' were in the training data"):
        evaluate_run(run, dataset_dir=run.parent / "ds", baselines=False)


def test_the_base_model_column_busy_in_another_evaluation_says_so(small_run: Path, tmp_path: Path) -> None:
    """The second of two `evaluate --base-model` got training's advice to set train.output_dir."""
    run = shutil.copytree(small_run, tmp_path / "run", ignore=shutil.ignore_patterns("eval"))
    (run / "eval").mkdir()
    with (run / "eval" / ".base-model.lock").open("w") as held:  # the other evaluation's training lock
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ConfigError, match="another evaluation is training this run's base-model column") as err:
            evaluate_run(run, baselines=False, base_model=True)
    assert "output_dir" not in str(err.value)


def test_multilabel_report_lists_its_most_confident_mistakes(tmp_path: Path, tiny_bert: Path) -> None:
    run = train(multi_label_project(tmp_path, tiny_bert, train_spec={"max_steps": 2}))
    result = evaluate_run(run, baselines=False)
    assert result["mistakes"] and {"true", "predicted", "confidence"} <= result["mistakes"][0].keys()
    assert "## Most confident mistakes" in (run / "eval" / "test" / "report.md").read_text()
