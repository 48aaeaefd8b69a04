"""What validation reports while training: the same numbers `tunesmith evaluate` gives for the same predictions."""

from __future__ import annotations

import numpy as np
from transformers import EvalPrediction

from tunesmith.config import TaskType
from tunesmith.evaluation.metrics import multilabel_metrics
from tunesmith.tasks.sequence import training_metrics, tune_thresholds


def test_multi_label_validation_macro_f1_leaves_out_labels_that_never_occur() -> None:
    # Three labels; validation holds none of the third and the model predicts none: it is perfect on what is there.
    truth = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 1, 0]])
    logits = np.where(truth == 1, 4.0, -4.0)
    got = training_metrics(TaskType.multi_label, None)(EvalPrediction(predictions=logits, label_ids=truth.astype(np.float32)))
    assert got["f1_macro"] == 1.0 and got["f1_micro"] == 1.0  # was 2/3: the absent label counted as an F1 of 0
    assert got["f1_macro"] == multilabel_metrics(truth, truth, ["a", "b", "c"])["f1_macro"]
    # A label predicted where it is never true does count, as a 0.
    wrong = logits.copy()
    wrong[0, 2] = 4.0
    got = training_metrics(TaskType.multi_label, None)(EvalPrediction(predictions=wrong, label_ids=truth.astype(np.float32)))
    assert got["f1_macro"] == multilabel_metrics(truth, (wrong > 0).astype(int), ["a", "b", "c"])["f1_macro"] < 1.0


def test_thresholds_that_score_the_same_f1_resolve_toward_one_half() -> None:
    """Ties went to the lowest grid value: a weak model (every threshold below its probabilities scores the same F1)
    got 0.05 and predicted the label on every text."""
    truth = np.array([[1, 1], [0, 1], [1, 0], [0, 0]])
    proba = np.array([[0.9, 0.32], [0.1, 0.31], [0.9, 0.30], [0.1, 0.33]])
    # label 0: every threshold from 0.15 to 0.9 separates it perfectly (was 0.15); label 1: nothing beats "all
    # positive", which every threshold up to 0.3 gives (was 0.05)
    assert tune_thresholds(proba, truth) == [0.5, 0.3]
