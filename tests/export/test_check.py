"""The export self-check: how far an export's predictions are from the run's, and when that is a warning."""

from __future__ import annotations

import numpy as np

from tunesmith.config import TaskType
from tunesmith.export.check import check_warnings, compare_predictions, run_targets
from tunesmith.inference.predictor import Predictions


def values(v: list[float]) -> Predictions:
    return Predictions(labels=list(v), proba=None, values=np.array(v), label_ids=None)


def test_a_regression_export_answering_nan_is_a_warning() -> None:
    """NaN compared false with every bound: an export that answered NaN passed its self-check without a word."""
    truth = np.array([1.0, 2.0, 3.0, 4.0])
    check = compare_predictions(TaskType.regression, values([1.0, 2.0, 3.0, 4.0]), values([1.0, np.nan, 3.0, np.inf]), truth)
    assert check_warnings(check) == ["the export answers NaN or infinity for 2 of 4 test texts"]
    fine = compare_predictions(TaskType.regression, values([1.0, 2.0, 3.0, 4.0]), values([1.0, 2.0, 3.0, 4.0]), truth)
    assert fine["non_finite"] == 0 and check_warnings(fine) == []


def test_nan_probabilities_are_a_warning_even_when_the_labels_agree() -> None:
    ids = np.array([0, 1])
    ref = Predictions(labels=["a", "b"], proba=np.array([[0.9, 0.1], [0.2, 0.8]]), values=None, label_ids=ids)
    nan = Predictions(labels=["a", "b"], proba=np.array([[np.nan, np.nan], [0.2, 0.8]]), values=None, label_ids=ids)
    assert check_warnings(compare_predictions(TaskType.single_label, ref, nan, ids)) == \
        ["the export answers NaN or infinity for 1 of 2 test texts"]


def _relabelled(task: str, run_labels: list[str], dataset_labels: list[str], column: str, ids: list) -> tuple:
    """A run and its dataset prepared again with another label list (only what run_targets reads)."""
    from types import SimpleNamespace

    import pyarrow as pa

    run = SimpleNamespace(manifest=SimpleNamespace(task=task, labels=run_labels, dataset_fingerprint="a" * 64))
    version = SimpleNamespace(path="ds", manifest=SimpleNamespace(labels=dataset_labels, fingerprint="b" * 64))
    return run, version, pa.table({column: ids})


def test_a_dataset_with_other_labels_is_scored_in_the_runs_label_ids() -> None:
    """A dataset prepared again with an added class numbers its classes over its own labels: the self-check compared
    the run's ids with those (a wrong accuracy; an IndexError for multi-label, which rolled the export back)."""
    # single-label: 'neutral' added between neg and pos (pos: 1 -> 2), but no test row is neutral
    truth, notes = run_targets(*_relabelled("single_label_classification", ["neg", "pos"], ["neg", "neutral", "pos"],
                                           "label_id", [2, 0, 2]))
    assert truth.tolist() == [1, 0, 1] and "mapped to the run's labels by name" in notes[0]
    # multi-label: 'snack' added (id 4); test rows with it cannot be scored, those without are mapped
    run, version, table = _relabelled("multi_label_classification", ["drink", "meal", "neg", "pos"],
                                      ["drink", "meal", "neg", "pos", "snack"], "label_ids", [[0, 3], [4, 2]])
    truth, notes = run_targets(run, version, table)
    assert truth is None and "['snack'] that the run never saw" in notes[0]
    swapped = _relabelled("multi_label_classification", ["a", "b"], ["b", "a"], "label_ids", [[0], [0, 1]])
    assert run_targets(*swapped)[0].tolist() == [[0, 1], [1, 1]]
