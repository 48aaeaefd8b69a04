"""Metrics against hand-computed values, and bad inputs rejected with a message that says why."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import f1_score

from tunesmith.evaluation.metrics import (
    classification_metrics,
    confusion_text,
    largest_errors,
    most_confident_mistakes,
    multilabel_metrics,
    regression_metrics,
    short_labels,
)

LABELS = ["a", "b", "c"]
Y_TRUE = [0, 0, 1, 1, 2, 2]
Y_PRED = [0, 1, 1, 1, 2, 0]
PROBA = np.array([[.8, .1, .1], [.3, .6, .1], [.1, .8, .1], [.2, .7, .1], [.1, .1, .8], [.5, .2, .3]])


def test_classification_hand_computed_case() -> None:
    m = classification_metrics(Y_TRUE, Y_PRED, LABELS)
    assert m["n"] == 6
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["labels"] == LABELS
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    # per class: a p=1/2 r=1/2; b p=2/3 r=1 f1=.8; c p=1 r=1/2 f1=2/3
    assert m["per_class"]["a"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert m["per_class"]["b"]["precision"] == pytest.approx(2 / 3)
    assert m["per_class"]["b"]["f1"] == pytest.approx(0.8)
    assert m["per_class"]["c"]["recall"] == pytest.approx(0.5)
    assert m["f1_macro"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert m["precision_macro"] == pytest.approx((0.5 + 2 / 3 + 1) / 3)
    assert m["f1_weighted"] == pytest.approx(m["f1_macro"])  # equal supports
    # single-label micro averages all equal accuracy
    assert m["precision_micro"] == m["recall_micro"] == m["f1_micro"] == pytest.approx(4 / 6)
    assert "log_loss" not in m and "roc_auc" not in m
    json.dumps(m)  # plain Python types only


def test_weighted_average_follows_support() -> None:
    # class 0: 3 true, all right; class 1: 1 true, predicted 0 -> f1 0; class 0 f1 = 2*.75*1/1.75
    m = classification_metrics([0, 0, 0, 1], [0, 0, 0, 0], ["x", "y"])
    f1_x = 2 * 0.75 / 1.75
    assert m["f1_weighted"] == pytest.approx(0.75 * f1_x)
    assert m["f1_macro"] == pytest.approx(f1_x / 2)
    assert m["per_class"]["y"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}


def test_probabilities_add_log_loss_and_roc_auc() -> None:
    m = classification_metrics(Y_TRUE, Y_PRED, LABELS, proba=PROBA)
    assert m["log_loss"] == pytest.approx(-np.mean(np.log([.8, .3, .8, .7, .8, .3])))
    assert 0.5 < m["roc_auc"] <= 1.0
    binary = classification_metrics([0, 0, 1, 1], [0, 1, 0, 1], ["neg", "pos"],
                                    proba=np.array([[.9, .1], [.6, .4], [.65, .35], [.2, .8]]))
    assert binary["roc_auc"] == pytest.approx(0.75)  # pairs (pos, neg) ranked right: 3 of 4


def test_roc_auc_skipped_with_a_note_when_a_class_never_occurs() -> None:
    m = classification_metrics([0, 1, 0, 1], [0, 1, 1, 1], LABELS,
                               proba=np.array([[.7, .2, .1], [.1, .8, .1], [.4, .5, .1], [.2, .7, .1]]))
    assert m["roc_auc"] is None
    assert "c" in m["roc_auc_note"]
    assert m["log_loss"] > 0
    assert m["per_class"]["c"]["support"] == 0


def test_macro_averages_leave_out_a_class_neither_true_nor_predicted() -> None:
    # a perfect model on a split without "c": c's F1 is 0/0, not 0, so macro F1 stays 1 (per class still lists c)
    perfect = classification_metrics([0, 1, 0, 1], [0, 1, 0, 1], LABELS)
    assert perfect["f1_macro"] == perfect["precision_macro"] == perfect["recall_macro"] == 1.0
    assert perfect["per_class"]["c"]["support"] == 0
    # predicted but never true, c counts (precision 0), as scikit-learn counts it without a label list
    wrong = classification_metrics([0, 1, 0, 1], [0, 1, 2, 1], LABELS)
    assert wrong["f1_macro"] == pytest.approx(f1_score([0, 1, 0, 1], [0, 1, 2, 1], average="macro"))
    y = np.array([[1, 0], [0, 0], [1, 0]])
    assert multilabel_metrics(y, y, ["x", "y"])["f1_macro"] == 1.0
    assert multilabel_metrics(np.zeros((2, 2)), np.zeros((2, 2)), ["x", "y"])["f1_macro"] == 0.0  # nothing to average


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"y_pred": [0, 1]}, "same length"),
    ({"y_pred": [0, 1, 1, 1, 2, 3]}, "outside 0..2"),
    ({"y_true": ["a", "b", "a", "b", "c", "c"]}, "integer label ids"),
    ({"labels": ["a", "a", "c"]}, "unique"),
    ({"labels": ["only"], "y_true": [0] * 6, "y_pred": [0] * 6}, "at least 2 labels"),
    ({"proba": PROBA[:, :2]}, r"shape \(n examples, n labels\) = \(6, 3\)"),
    ({"proba": PROBA * 2}, r"\[0, 1\]"),
    ({"proba": np.full((6, 3), 0.2)}, "sum to 1"),
    ({"y_true": [], "y_pred": []}, "empty"),
])
def test_bad_classification_input_is_rejected(kwargs: dict, message: str) -> None:
    args = {"y_true": Y_TRUE, "y_pred": Y_PRED, "labels": LABELS, "proba": None} | kwargs
    with pytest.raises(ValueError, match=message):
        classification_metrics(**args)


def test_multilabel_hand_computed_case() -> None:
    y_true = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]])
    y_pred = np.array([[1, 0, 1], [0, 0, 0], [1, 1, 0], [1, 0, 1]])
    proba = np.array([[.9, .2, .8], [.1, .4, .3], [.7, .6, .2], [.6, .1, .9]])
    m = multilabel_metrics(y_true, y_pred, ["x", "y", "z"], proba=proba)
    assert m["subset_accuracy"] == pytest.approx(0.5)
    assert m["hamming_loss"] == pytest.approx(2 / 12)
    # 5 true positives, 1 false positive, 1 false negative
    assert m["f1_micro"] == pytest.approx(2 * 5 / (2 * 5 + 1 + 1))
    assert m["per_class"]["x"] == {"precision": pytest.approx(2 / 3), "recall": 1.0, "f1": pytest.approx(0.8), "support": 2}
    assert m["per_class"]["y"]["recall"] == pytest.approx(0.5)
    assert m["per_class"]["z"]["f1"] == 1.0
    assert m["f1_macro"] == pytest.approx((0.8 + 2 / 3 + 1) / 3)
    assert m["roc_auc_macro"] == pytest.approx(1.0)
    json.dumps(m)


def test_multilabel_roc_auc_skipped_when_a_label_never_occurs() -> None:
    y = np.array([[1, 0], [0, 0], [1, 0]])
    m = multilabel_metrics(y, y, ["x", "y"], proba=np.full((3, 2), 0.5))
    assert m["roc_auc_macro"] is None and "['y']" in m["roc_auc_note"]
    assert m["subset_accuracy"] == 1.0


def test_bad_multilabel_input_is_rejected() -> None:
    with pytest.raises(ValueError, match="n x 3 0/1 matrix"):
        multilabel_metrics(np.zeros((2, 2)), np.zeros((2, 2)), ["x", "y", "z"])
    with pytest.raises(ValueError, match="only 0 and 1"):
        multilabel_metrics(np.array([[0.2, 1]]), np.array([[0, 1]]), ["x", "y"])


def test_regression_perfect_and_hand_computed() -> None:
    perfect = regression_metrics([1.0, 2.0, 3.5, 5.0], [1.0, 2.0, 3.5, 5.0])
    assert perfect["r2"] == 1.0 and perfect["mae"] == 0.0 and perfect["rmse"] == 0.0
    assert perfect["pearson"] == pytest.approx(1.0) and perfect["spearman"] == pytest.approx(1.0)
    m = regression_metrics([1, 2, 3, 4], [2, 2, 3, 2])  # errors 1, 0, 0, -2
    assert m["n"] == 4
    assert m["mae"] == pytest.approx(0.75)
    assert m["mse"] == pytest.approx(5 / 4)
    assert m["rmse"] == pytest.approx(np.sqrt(5 / 4))
    assert m["r2"] == pytest.approx(1 - 5 / 5)  # SS_res 5, SS_tot 5
    json.dumps(m)


def test_regression_correlation_is_none_for_constant_input() -> None:
    m = regression_metrics([1, 2, 3], [2, 2, 2])
    assert m["pearson"] is None and m["spearman"] is None
    assert m["mae"] == pytest.approx(2 / 3)
    assert regression_metrics([3.0], [2.0])["r2"] is None


def test_r2_is_none_on_a_constant_target() -> None:
    # SS_tot is 0: sklearn's 0.0 would read as "as good as the mean" however far off the predictions are
    m = regression_metrics([2.0, 2.0, 2.0], [2.0, 9.0, -5.0])
    assert m["r2"] is None and m["mae"] == pytest.approx(14 / 3)
    assert regression_metrics([1, 2, 3], [2, 2, 2])["r2"] == pytest.approx(0.0)  # a constant prediction is defined


def test_bad_regression_input_is_rejected() -> None:
    with pytest.raises(ValueError, match="NaN or infinite"):
        regression_metrics([1, 2], [1, float("nan")])
    with pytest.raises(ValueError, match="same length"):
        regression_metrics([1, 2], [1])


def test_confusion_text_is_an_aligned_table() -> None:
    text = confusion_text([[12, 1], [3, 140]], ["neg", "positive"])
    assert text == ("true \\ pred  neg  positive\n"
                    "neg           12         1\n"
                    "positive       3       140")
    assert "0.25" in confusion_text(np.array([[0.75, 0.25], [0.0, 1.0]]), ["x", "y"])
    with pytest.raises(ValueError, match="2 x 2"):
        confusion_text([[1, 2, 3]], ["x", "y"])


def test_confusion_text_keeps_labels_with_line_breaks_and_wide_characters_aligned() -> None:
    """A label "billing\nrefund" (data allows it) split the matrix's row in two; CJK labels were padded by
    characters, not by the columns they take."""
    text = confusion_text([[1, 0, 0], [0, 12, 0], [0, 0, 3]], ["billing\nrefund", "ship\tping", "食べ物"])
    assert text == ("true \\ pred     billing·refund  ship·ping  食べ物\n"
                    "billing·refund               1          0       0\n"
                    "ship·ping                    0         12       0\n"
                    "食べ物                       0          0       3")
    assert short_labels(["a\r\nb"]) == ["a··b"]


def test_mistakes_carry_the_example_ids_when_given() -> None:
    """A row number alone cannot be found in the source files; the split's id (file:line) can."""
    mistakes = most_confident_mistakes(["a", "b"], [0, 1], [1, 1], None, ["x", "y"], ids=["d.csv:2", "d.csv:3"])
    assert [(m["index"], m["id"]) for m in mistakes] == [(0, "d.csv:2")]
    errors = largest_errors(["a", "b"], [1.0, 2.0], [1.0, 5.0], ids=["d.csv:2", "d.csv:3"])
    assert errors[0]["id"] == "d.csv:3"
    assert "id" not in largest_errors(["a"], [1.0], [2.0])[0]


def test_most_confident_mistakes_come_first_and_texts_are_clipped() -> None:
    texts = ["fine", "x" * 1000, "bad", "meh", "ok"]
    proba = np.array([[.9, .1], [.05, .95], [.4, .6], [.3, .7], [.2, .8]])
    mistakes = most_confident_mistakes(texts, [0, 0, 0, 1, 0], [0, 1, 1, 1, 1], proba, ["neg", "pos"], k=2)
    assert [m["index"] for m in mistakes] == [1, 4]
    assert mistakes[0]["true"] == "neg" and mistakes[0]["predicted"] == "pos"
    assert mistakes[0]["confidence"] == pytest.approx(0.95)
    assert len(mistakes[0]["text"]) == 300 and mistakes[0]["text"].endswith("…")
    unordered = most_confident_mistakes(texts, [0, 0, 0, 1, 0], [0, 1, 1, 1, 1], None, ["neg", "pos"])
    assert [m["index"] for m in unordered] == [1, 2, 4] and unordered[0]["confidence"] is None


def test_largest_errors_by_absolute_error() -> None:
    errors = largest_errors(["a", "b", "c"], [1.0, 5.0, 3.0], [1.5, 2.0, 3.0], k=2)
    assert [e["index"] for e in errors] == [1, 0]
    assert errors[0] == {"index": 1, "text": "b", "true": 5.0, "predicted": 2.0, "error": -3.0}


def test_classes_named_like_the_reports_own_keys_get_their_own_scores() -> None:
    """classification_report's dict was read by name: a class "accuracy" crashed, "macro avg" got the macro averages."""
    m = classification_metrics([0, 0, 1, 2], [0, 1, 1, 2], ["accuracy", "macro avg", "weighted avg"])
    assert m["per_class"]["accuracy"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3), "support": 2}
    assert m["per_class"]["macro avg"] == {"precision": 0.5, "recall": 1.0, "f1": pytest.approx(2 / 3), "support": 1}
    multi = multilabel_metrics(np.array([[1, 0], [0, 1]]), np.array([[1, 0], [0, 0]]), ["samples avg", "micro avg"])
    assert multi["per_class"]["samples avg"]["f1"] == 1.0 and multi["per_class"]["micro avg"]["f1"] == 0.0


def test_rows_without_labels_predicted_as_such_are_right_in_f1_samples() -> None:
    """Both empty scored 0: a perfect model with half its rows empty got f1_samples 0.5."""
    t = np.array([[1, 0], [0, 0], [0, 1], [0, 0]])
    assert multilabel_metrics(t, t, ["x", "y"])["f1_samples"] == 1.0
    wrong = np.array([[1, 0], [1, 0], [0, 1], [0, 0]])  # row 2 predicts a label where none is: that row scores 0
    assert multilabel_metrics(t, wrong, ["x", "y"])["f1_samples"] == pytest.approx(3 / 4)


def test_long_labels_sharing_a_prefix_stay_apart_in_the_table() -> None:
    """Both read "customer_complaint_…": nobody could tell the rows apart."""
    labels = ["customer_complaint_billing", "customer_complaint_shipping"]
    rows = confusion_text([[3, 1], [0, 4]], labels).splitlines()[1:]
    assert rows[0].split()[0] != rows[1].split()[0]
    assert short_labels(labels) == ["customer_c…t_billing", "customer_c…_shipping"]
    middle = ["a" * 15 + "X" + "b" * 15, "a" * 15 + "Y" + "b" * 15]
    assert short_labels(middle) == middle  # alike when cut in the middle: the full names


def test_a_class_neither_true_nor_predicted_has_no_per_class_scores() -> None:
    """Its P/R/F1 were 0.0 while macro F1 treated it as undefined."""
    m = classification_metrics([2, 2, 0], [2, 2, 0], LABELS)
    assert m["f1_macro"] == 1.0
    assert m["per_class"]["b"] == {"precision": None, "recall": None, "f1": None, "support": 0}
    assert m["per_class"]["a"]["f1"] == 1.0
    # predicted but never true still scores (precision 0), as macro F1 counts it
    assert classification_metrics([0, 0, 1], [0, 2, 1], LABELS)["per_class"]["c"]["precision"] == 0.0
    y = np.array([[1, 0], [1, 0]])
    assert multilabel_metrics(y, y, ["x", "y"])["per_class"]["y"]["f1"] is None


def test_multilabel_mistakes_rank_rows_by_their_surest_wrong_decision() -> None:
    from tunesmith.evaluation.metrics import multilabel_mistakes

    labels = ["x", "y", "z"]
    t = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
    p = np.array([[1, 0, 0], [0, 1, 1], [1, 0, 0], [1, 0, 0]])
    proba = np.array([[.9, .1, .1], [.1, .8, .6], [.9, .05, .1], [.7, .1, .1]])
    out = multilabel_mistakes(["r0", "r1", "r2", "r3"], t, p, proba, labels, ids=["f:1", "f:2", "f:3", "f:4"])
    # row 2 left out y at p=.05 (0.95 sure), row 3 set x at .7, row 1 set z at .6; row 0 is right
    assert [m["index"] for m in out] == [2, 3, 1]
    assert out[0] == {"index": 2, "id": "f:3", "text": "r2", "true": "x, y", "predicted": "x", "confidence": pytest.approx(.95)}
    assert out[1]["true"] == "(none)" and out[1]["predicted"] == "x"
    assert [m["index"] for m in multilabel_mistakes(["a", "b", "c", "d"], t, p, None, labels)] == [1, 2, 3]
