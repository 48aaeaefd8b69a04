"""Evaluation of classification and regression runs: metrics, pictures, baselines and the base model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tunesmith.artifacts import DatasetVersion, Run, is_run
from tunesmith.config import TaskType
from tunesmith.errors import DataError, RunBusy
from tunesmith.evaluation import baselines as bl
from tunesmith.evaluation import metrics as mt
from tunesmith.evaluation import plots
from tunesmith.tasks.sequence import targets


def score(task: TaskType, y_true: np.ndarray, y_pred: np.ndarray, labels: list[str], proba: np.ndarray | None) -> dict[str, Any]:
    if task == TaskType.single_label:
        return mt.classification_metrics(y_true, y_pred, labels, proba)
    if task == TaskType.multi_label:
        return mt.multilabel_metrics(y_true, y_pred, labels, proba)
    return mt.regression_metrics(y_true, y_pred)


def evaluate_sequence(run: Run, version: DatasetVersion, split: str, notes: list[str], baselines: bool,
                      base_model: bool, folder: Path, table: Any = None) -> dict[str, Any]:
    """Score `split` (`table`: its rows to score, when not all of them); its pictures go to `folder` (the report's)."""
    from tunesmith.inference.predictor import Predictor

    m = run.manifest
    cfg = run.config
    task = TaskType(m.task)
    labels = m.labels or []
    if task != TaskType.regression and version.manifest.labels != labels:
        unknown = sorted(set(version.manifest.labels or []) - set(labels))
        if unknown:
            raise DataError(f"{version.path}: label(s) {unknown} were never seen by run {run.path} (labels {labels})")
        missing = [label for label in labels if label not in (version.manifest.labels or [])]
        if missing:  # a new sample without some class: its ids were numbered over the classes it has
            raise DataError(f"{version.path}: its labels {version.manifest.labels} lack the run's {missing}, so its label "
                            f"ids are not the run's; prepare it with task.labels: {labels} (a class with no example "
                            "is allowed there) and evaluate again")
        raise DataError(f"{version.path}: its label order {version.manifest.labels} differs from the run's {labels}; "
                        f"prepare it with task.labels: {labels}")
    table = version.table(split) if table is None else table
    if table.num_rows == 0:
        raise DataError(f"{version.path}: split '{split}' is empty")
    texts = table.column("text").to_pylist()
    ids = table.column("id").to_pylist() if "id" in table.column_names else None  # file:line, to find the row
    y_true = targets(task, table, len(labels))

    pred = Predictor(run.path).predict(texts, cleaned=True)
    y_pred = pred.outputs
    bad = ~np.isfinite(pred.proba if pred.proba is not None else np.asarray(y_pred, dtype=float))
    if bad.any():  # sklearn's "proba must hold probabilities" read as tunesmith's own failure
        rows = int(bad.reshape(len(texts), -1).any(axis=1).sum())
        raise DataError(f"{run.path}: the model's outputs are NaN or infinite for {rows} of {len(texts)} texts: its "
                        "weights diverged (train again with a lower learning rate) or are damaged")
    metrics = score(task, y_true, y_pred, labels, pred.proba)

    folder.mkdir(parents=True, exist_ok=True)
    figures: dict[str, str] = {}
    confusion = None
    if task == TaskType.single_label:
        matrix = metrics["confusion_matrix"]
        plots.confusion_matrix_png(matrix, labels, folder / "confusion_matrix.png", normalize=False)
        plots.confusion_matrix_png(matrix, labels, folder / "confusion_matrix_normalized.png", normalize=True)
        figures = {"confusion matrix": "confusion_matrix.png", "confusion matrix (row-normalised)": "confusion_matrix_normalized.png"}
        confusion = mt.confusion_text(matrix, labels)
        mistakes = mt.most_confident_mistakes(texts, y_true, y_pred, pred.proba, labels, ids=ids)
    elif task == TaskType.regression:
        plots.scatter_png(y_true, y_pred, folder / "predicted_vs_true.png")
        plots.residual_histogram_png(y_true, y_pred, folder / "residuals.png")
        figures = {"predicted vs true": "predicted_vs_true.png", "residuals": "residuals.png"}
        mistakes = mt.largest_errors(texts, y_true, y_pred, ids=ids)
    else:
        mistakes = mt.multilabel_mistakes(texts, y_true, y_pred, pred.proba, labels, ids=ids)

    baseline_metrics: dict[str, Any] = {}
    if baselines:
        train_table = version.table("train")
        train_y = targets(task, train_table, len(labels))
        n_classes = len(labels) or None
        for result in (bl.majority_baseline(train_y, len(texts), task.value, n_classes=n_classes),
                       bl.tfidf_baseline(train_table.column("text").to_pylist(), train_y, texts, task.value,
                                         seed=cfg.train.seed, n_classes=n_classes)):
            baseline_metrics[result.name] = score(task, y_true, result.predictions, labels, result.proba)

    base_metrics = None
    if base_model:
        base_metrics = _base_model_metrics(run, version, split, texts, y_true, labels)
        notes.append("base model = the same base with only a classification head trained (frozen encoder)")

    result = {
        "run": str(run.path), "model": m.base_model, "method": m.method, "task": task.value,
        "dataset": str(version.path), "dataset_fingerprint": version.manifest.fingerprint, "split": split,
        "n": len(texts), "metrics": metrics, "baselines": baseline_metrics, "base_model": base_metrics,
        "figures": figures, "confusion_text": confusion, "mistakes": mistakes, "notes": notes,
    }
    return result


def _base_model_metrics(run: Run, version: DatasetVersion, split: str, texts: list[str], y_true: np.ndarray,
                        labels: list[str]) -> dict[str, Any]:
    """Train (once, cached in the run folder) a head-only model on the frozen base: the 'before' picture."""
    from tunesmith.inference.predictor import Predictor
    from tunesmith.training import train

    base_dir = run.path / "eval" / "base-model"
    # Cached for the dataset it was trained on only: `evaluate --dataset OTHER --base-model` reused a head trained on
    # the first one.
    if not is_run(base_dir) or Run(base_dir).manifest.dataset_fingerprint != version.manifest.fingerprint:
        cfg = run.config.model_copy(deep=True)
        cfg.train.method = "head"
        cfg.train.learning_rate = None
        cfg.train.init_from = None  # the untuned base, not the run an incremental run continued from
        cfg.train.output_dir = base_dir
        cfg.train.nproc = 1
        try:
            train(cfg, dataset_dir=version.path, overwrite=True)
        except RunBusy:  # its advice (set train.output_dir) is no option of evaluate's
            raise RunBusy(f"{base_dir}: another evaluation is training this run's base-model column now; try again "
                          "when it ends") from None
    pred = Predictor(base_dir).predict(texts, cleaned=True)
    return score(TaskType(run.manifest.task), y_true, pred.outputs, labels, pred.proba)
