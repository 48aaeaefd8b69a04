"""Every export checks itself: the run and the export predict the same test split, and export.json
records how often they agree and what the export costs in accuracy (or R², or loss for chat)."""

from __future__ import annotations

from typing import Any

import numpy as np

from tunesmith.artifacts import DatasetVersion, Run
from tunesmith.config import TaskType
from tunesmith.errors import DataError
from tunesmith.tasks.sequence import multi_hot, targets

MAX_DISAGREEMENT = 0.05  # a larger share of changed predictions is a warning
MAX_ACCURACY_LOSS = 0.01  # ... and so is losing more than 1 point of accuracy (or R²)
CHECK_ROWS = 10_000  # the self-check predicts at most this many test rows
CHAT_CHECK_ROWS = 64  # chat runs: conversations scored by both models


def test_split(run: Run) -> tuple[Any | None, str | None]:
    """The test split of the run's dataset, or why there is none to check with."""
    _, table, skipped = _test_data(run)
    return table, skipped


def _test_data(run: Run) -> tuple[DatasetVersion | None, Any | None, str | None]:
    """The run's dataset as it is now, its test split (at most CHECK_ROWS rows), or why there is none to check with."""
    try:
        version = DatasetVersion(run.manifest.dataset)
        table = version.table("test")
    except (DataError, OSError) as err:
        return None, None, f"self-check skipped: the run's dataset is not available ({err})"
    if version.manifest.task != run.manifest.task:  # prepared again for another task: its columns are not the run's
        return None, None, (f"self-check skipped: the run's dataset {version.path} is now a {version.manifest.task} "
                            f"dataset, not {run.manifest.task}")
    if table.num_rows == 0:
        return None, None, "self-check skipped: the test split is empty"
    return version, table.slice(0, CHECK_ROWS), None


def _dataset_notes(run: Run, version: DatasetVersion) -> list[str]:
    """What the check's accuracy (R²) is computed on when the dataset was prepared again since training."""
    now, then = version.manifest.fingerprint, run.manifest.dataset_fingerprint
    if now == then:
        return []
    return [f"the run's dataset {version.path} was prepared again since training (fingerprint {now[:12]}, the run's "
            f"{then[:12]}): the accuracy is on its test split as it is now, which may hold rows the run trained on; "
            "the agreement of the run and the export holds all the same"]


def run_targets(run: Run, version: DatasetVersion, table: Any) -> tuple[np.ndarray | None, list[str]]:
    """The test split's targets in the run's label ids, or None and why: a dataset prepared again with other labels
    numbers its classes over its own label list (an added class moved the ids; an IndexError in multi-label)."""
    task, labels = TaskType(run.manifest.task), run.manifest.labels or []
    theirs = version.manifest.labels or []
    if task == TaskType.regression or theirs == labels:
        return targets(task, table, len(labels)), []
    column = table.column("label_id" if task == TaskType.single_label else "label_ids").to_pylist()
    used = {theirs[i] for i in (column if task == TaskType.single_label else [i for row in column for i in row])}
    unknown = sorted(used - set(labels))
    if unknown:
        return None, [f"no accuracy: the test split of {version.path} holds label(s) {unknown} that the run never saw "
                      f"(its labels {labels}); the agreement of the run and the export holds all the same"]
    ours = {name: i for i, name in enumerate(labels)}
    note = [f"the labels of {version.path} are now {theirs}, not the run's {labels}: its test targets were mapped to "
            "the run's labels by name"]
    if task == TaskType.single_label:
        return np.asarray([ours[theirs[i]] for i in column]), note
    return multi_hot([[ours[theirs[i]] for i in row] for row in column], len(labels)), note


def compare_predictions(task: TaskType, reference: Any, exported: Any, truth: np.ndarray | None) -> dict[str, Any]:
    """How far the export's predictions are from the run's: agreement and the accuracy (R²) difference."""
    ref, exp = np.asarray(reference.outputs), np.asarray(exported.outputs)
    out: dict[str, Any] = {"n": int(len(ref))}
    numbers = [a for a in (exp, exported.proba) if a is not None and np.issubdtype(np.asarray(a).dtype, np.floating)]
    out["non_finite"] = int(sum((~np.isfinite(np.asarray(a))).reshape(len(exp), -1).any(axis=1).sum() for a in numbers))
    if task == TaskType.regression:
        diff = np.abs(ref - exp)
        out.update(max_abs_diff=float(diff.max()), mean_abs_diff=float(diff.mean()))
        if truth is not None:
            def r2(pred: np.ndarray) -> float:
                total = float(((truth - truth.mean()) ** 2).sum())
                return 1.0 - float(((truth - pred) ** 2).sum()) / total if total > 0 else float("nan")
            out.update(r2_run=r2(ref), r2_export=r2(exp), r2_diff=r2(exp) - r2(ref))
        return out
    same = (ref == exp).all(axis=1) if ref.ndim == 2 else ref == exp  # multi-label: the whole label set
    out["agreement"] = float(same.mean())
    if reference.proba is not None and exported.proba is not None:
        out["max_proba_diff"] = float(np.abs(reference.proba - exported.proba).max())
    if truth is not None:
        def accuracy(pred: np.ndarray) -> float:
            return float(((pred == truth).all(axis=1) if pred.ndim == 2 else pred == truth).mean())
        out.update(accuracy_run=accuracy(ref), accuracy_export=accuracy(exp), accuracy_diff=accuracy(exp) - accuracy(ref))
    return out


def check_warnings(check: dict[str, Any]) -> list[str]:
    found = []
    if check.get("non_finite"):  # NaN compares false with every bound: a NaN regression export passed without a word
        found.append(f"the export answers NaN or infinity for {check['non_finite']} of {check['n']} test texts")
    if "agreement" in check and 1 - check["agreement"] > MAX_DISAGREEMENT:
        found.append(f"the export changes {1 - check['agreement']:.1%} of the test predictions "
                     f"(more than {MAX_DISAGREEMENT:.0%})")
    if check.get("accuracy_diff", 0.0) < -MAX_ACCURACY_LOSS:
        found.append(f"the export loses {-check['accuracy_diff'] * 100:.1f} points of test accuracy "
                     f"({check['accuracy_run']:.4f} -> {check['accuracy_export']:.4f})")
    if check.get("r2_diff", 0.0) < -MAX_ACCURACY_LOSS:
        found.append(f"the export loses {-check['r2_diff']:.4f} of test R² ({check['r2_run']:.4f} -> {check['r2_export']:.4f})")
    return found


class SequenceCheck:
    """Predict the test split with the run now, with the export later, and compare."""

    def __init__(self, run: Run, enabled: bool) -> None:
        self.run = run
        self.task = TaskType(run.manifest.task)
        off = (None, None, "self-check skipped (--no-check)")
        version, self.table, self.skipped = _test_data(run) if enabled else off
        self.reference = None
        self.truth: np.ndarray | None = None
        self.notes: list[str] = []
        if version is not None:
            self.truth, notes = run_targets(run, version, self.table)
            self.notes = (_dataset_notes(run, version) if self.truth is not None else []) + notes
        self.predictor: Any = None  # the run's predictor, handed on to merged_sequence_model (loaded once)
        if self.table is not None:
            from tunesmith.inference.predictor import Predictor

            self.texts = self.table.column("text").to_pylist()
            self.predictor = Predictor(run.path, device="cpu")
            self.reference = self.predictor.predict(self.texts)

    def against(self, predict: Any) -> tuple[dict[str, Any], list[str]]:
        if self.reference is None:
            return {"skipped": self.skipped}, []
        check = compare_predictions(self.task, self.reference, predict(self.texts), self.truth)
        check["split"] = "test"
        if self.notes:
            check["notes"] = self.notes
        return check, check_warnings(check)
