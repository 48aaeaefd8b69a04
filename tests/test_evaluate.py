"""Evaluation of trained tiny runs: every metric on the test split, with baselines and pictures."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.test_train import project
from tunesmith.artifacts import DatasetVersion, Run
from tunesmith.cli import run as cli
from tunesmith.evaluation.run import compare_runs, evaluate_run
from tunesmith.training import train


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path) -> Path:
    return train(project(tmp_path_factory.mktemp("clf"), tiny_bert))


def test_metrics_are_computed_on_the_test_split(classifier_run: Path, capsys) -> None:
    assert cli(["evaluate", str(classifier_run)]) == 0
    shown = capsys.readouterr().out
    assert "accuracy" in shown and "tfidf_logreg" in shown and "true \\ pred" in shown
    report = json.loads((classifier_run / "eval" / "test" / "report.json").read_text())
    test = DatasetVersion(report["dataset"]).table("test")
    assert report["split"] == "test" and report["n"] == test.num_rows
    assert sum(map(sum, report["metrics"]["confusion_matrix"])) == test.num_rows
    assert report["metrics"]["accuracy"] >= 0.9
    assert set(report["baselines"]) == {"majority", "tfidf_logreg"}
    for name in ("report.html", "report.md", "confusion_matrix.png", "confusion_matrix_normalized.png", "learning_curve.png"):
        assert (classifier_run / "eval" / "test" / name).exists()
    assert "data:image/png;base64," in (classifier_run / "eval" / "test" / "report.html").read_text()
    assert_learning_curve(classifier_run / "eval" / "test")
    assert next(iter(report["figures"])) == "learning curve"  # curves come before the other pictures
    assert "Test (" in (classifier_run / "README.md").read_text()  # the model card now carries test results


def assert_learning_curve(folder: Path) -> None:
    """learning_curve.png is a real picture, report.md links it and report.html carries it inline."""
    assert (folder / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![learning curve](learning_curve.png)" in (folder / "report.md").read_text()
    page = (folder / "report.html").read_text()
    assert '<img alt="learning curve" src="data:image/png;base64,' in page and 'src="learning_curve.png"' not in page


def test_run_without_training_log_gets_no_curve(classifier_run: Path, tmp_path: Path) -> None:
    run = shutil.copytree(classifier_run, tmp_path / "run", ignore=shutil.ignore_patterns("eval", "checkpoint-*"))
    (run / "training_log.jsonl").unlink()  # e.g. an export that did not keep it
    result = evaluate_run(run, baselines=False)
    assert "learning curve" not in result["figures"] and not (run / "eval" / "test" / "learning_curve.png").exists()
    assert "learning_curve" not in (run / "eval" / "test" / "report.md").read_text()


def test_validation_split_and_compare(classifier_run: Path, tmp_path: Path) -> None:
    result = evaluate_run(classifier_run, split="validation", baselines=False)
    assert result["split"] == "validation" and result["baselines"] == {}
    evaluate_run(classifier_run)
    folder = compare_runs(classifier_run, classifier_run, out=tmp_path / "cmp")
    assert "accuracy" in (folder / "compare.md").read_text()


def test_regression_report_has_scatter_and_residuals(tmp_path: Path, tiny_bert: Path) -> None:
    run = train(project(tmp_path, tiny_bert, task={"type": "regression"}))
    result = evaluate_run(run)
    assert {"mae", "rmse", "r2", "pearson", "spearman"} <= set(result["metrics"])
    assert set(result["baselines"]) == {"mean", "tfidf_ridge"}
    assert (run / "eval" / "test" / "predicted_vs_true.png").exists()
    assert (run / "eval" / "test" / "residuals.png").exists()
    assert_learning_curve(run / "eval" / "test")
    # the largest errors name their rows (file:line), not only their place in the split
    ids = set(DatasetVersion(Run(run).manifest.dataset).table("test").column("id").to_pylist())
    assert result["mistakes"] and all(m["id"] in ids for m in result["mistakes"])


def test_chat_report_has_a_learning_curve(tmp_path: Path, tiny_llama: Path) -> None:
    from tests.test_train_chat import chat_project

    run = train(chat_project(tmp_path, tiny_llama, {"epochs": 2}, n=40))
    result = evaluate_run(run, base_model=False)
    assert list(result["figures"]) == ["learning curve"]  # chat results have no other pictures
    assert_learning_curve(run / "eval" / "test")


def test_base_model_column_trains_a_head_only_model(classifier_run: Path) -> None:
    result = evaluate_run(classifier_run, baselines=False, base_model=True)
    assert result["base_model"] is not None and "accuracy" in result["base_model"]
    assert (classifier_run / "eval" / "base-model" / "run.json").exists()


def test_the_base_model_column_is_trained_again_for_another_dataset(classifier_run: Path, tmp_path: Path,
                                                                     tiny_bert: Path) -> None:
    """The cached head-only model was reused whatever dataset it had been trained on."""
    import shutil

    from tunesmith.artifacts import Run
    from tunesmith.data.prepare import prepare

    run = tmp_path / "run"
    shutil.copytree(classifier_run, run)
    evaluate_run(run, baselines=False, base_model=True)
    first = Run(run / "eval" / "base-model").manifest.dataset_fingerprint
    (tmp_path / "other").mkdir()
    version = prepare(project(tmp_path / "other", tiny_bert, n=120))  # other rows: another dataset
    evaluate_run(run, dataset_dir=version.path, baselines=False, base_model=True)
    again = Run(run / "eval" / "base-model").manifest.dataset_fingerprint
    assert first != again == version.manifest.fingerprint



def test_another_datasets_scores_go_beside_the_held_out_report_and_the_card_names_them(classifier_run: Path,
                                                                                       tmp_path: Path, tiny_bert: Path) -> None:
    """`evaluate --dataset OTHER` overwrote eval/test, and the model card then showed OTHER's scores as the run's."""
    import shutil

    from tunesmith.data.prepare import prepare

    run = tmp_path / "run"
    shutil.copytree(classifier_run, run)
    own = evaluate_run(run, baselines=False)
    (tmp_path / "other").mkdir()
    version = prepare(project(tmp_path / "other", tiny_bert, n=120))
    other = evaluate_run(run, dataset_dir=version.path, baselines=False)
    folder = run / "eval" / f"test-{version.path.name}-{version.manifest.fingerprint[:8]}"
    assert other["report_dir"] == str(folder) and (folder / "confusion_matrix.png").is_file()
    assert json.loads((run / "eval" / "test" / "report.json").read_text())["n"] == own["n"]  # the held-out one stays
    card = (run / "README.md").read_text()
    assert f"Test ({own['n']} examples): accuracy " in card  # n is no metric
    assert f"Test on {version.path} ({other['n']} examples): accuracy " in card


def test_a_run_whose_weights_diverged_is_named_not_an_internal_error(classifier_run: Path, tmp_path: Path) -> None:
    """NaN weights crashed evaluate with "internal error: proba must hold probabilities in [0, 1]"."""
    import torch
    from safetensors.torch import load_file, save_file

    from tunesmith.errors import DataError

    run = tmp_path / "run"
    shutil.copytree(classifier_run, run, ignore=shutil.ignore_patterns("checkpoints", "eval"))
    weights = load_file(run / "model" / "model.safetensors")
    name = next(k for k in weights if k.startswith("classifier.") and k.endswith("weight"))
    weights[name] = torch.full_like(weights[name], float("nan"))
    save_file(weights, run / "model" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(DataError, match=r"outputs are NaN or infinite for \d+ of \d+ texts: its weights diverged"):
        evaluate_run(run, baselines=False)


def test_a_dataset_lacking_some_of_the_runs_classes_says_how_to_prepare_it(classifier_run: Path, tmp_path: Path,
                                                                         tiny_bert: Path) -> None:
    """It read "its label order ['neg'] differs from the run's": the fix is task.labels, which it now names."""
    from tests.test_train import rows, write
    from tunesmith.data.prepare import prepare
    from tunesmith.errors import DataError

    (tmp_path / "other").mkdir()
    cfg = project(tmp_path / "other", tiny_bert, n=60)
    write(tmp_path / "other" / "data.csv", [r for r in rows(120) if r["label"] == "neg"])
    version = prepare(cfg)
    with pytest.raises(DataError, match=r"lack the run's \['pos'\].*task.labels: \['neg', 'pos'\]"):
        evaluate_run(classifier_run, dataset_dir=version.path, baselines=False)


def test_unevaluated_run_cannot_be_compared(classifier_run: Path, tmp_path: Path) -> None:
    from tunesmith.errors import DataError

    with pytest.raises(DataError, match="no evaluation on 'nope' yet"):
        compare_runs(classifier_run, classifier_run, split="nope")
    # a cut or foreign report.json, or runs of two tasks: named, where they were internal errors
    other = tmp_path / "other"
    (other / "eval" / "test").mkdir(parents=True)
    evaluate_run(classifier_run, baselines=False)
    report = json.loads((classifier_run / "eval" / "test" / "report.json").read_text())
    for text, why in (("{\"metrics\": {", "Expecting"), ("{}", "missing")):
        (other / "eval" / "test" / "report.json").write_text(text)
        with pytest.raises(DataError, match=rf"other/eval/test/report.json: not a complete evaluation report \(.*{why}"):
            compare_runs(classifier_run, other)
    (other / "eval" / "test" / "report.json").write_text(json.dumps({**report, "task": "regression"}))
    with pytest.raises(DataError, match="a single_label_classification run and .* a regression one"):
        compare_runs(classifier_run, other)


def test_base_model_of_an_incremental_run_is_the_untuned_base(classifier_run: Path, tmp_path: Path, tiny_bert: Path) -> None:
    """A run continued from another (train.init_from) is compared with the untuned base, not with its parent."""
    from tunesmith.artifacts import Run

    run = train(project(tmp_path, tiny_bert, train_spec={"max_steps": 4, "init_from": str(classifier_run)}))
    result = evaluate_run(run, baselines=False, base_model=True)
    assert result["base_model"] is not None
    assert Run(run / "eval" / "base-model").manifest.parent_run is None
