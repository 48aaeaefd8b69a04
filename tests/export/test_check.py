"""The export self-check: how far an export's predictions are from the run's, and when that is a warning."""

from __future__ import annotations

import numpy as np

from tunesmith.config import TaskType
from tunesmith.export.check import check_warnings, compare_predictions
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
