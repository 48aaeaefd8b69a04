"""Baselines: the majority floor, and TF-IDF + a linear model that learns a separable toy set."""

from __future__ import annotations

import random

import numpy as np
import pytest
from scipy import stats

from tunesmith.evaluation.baselines import majority_baseline, tfidf_baseline
from tunesmith.evaluation.metrics import classification_metrics, multilabel_metrics, regression_metrics

FILLER = ["the", "a", "of", "and", "to", "it", "was", "this", "that", "with", "for", "on", "in"]
CUES = {0: ["delicious", "tasty", "wonderful", "lovely"], 1: ["stale", "awful", "bland", "soggy"],
        2: ["shipping", "late", "box", "damaged"]}


def toy(n: int, seed: int, classes: tuple[int, ...] = (0, 1, 2)) -> tuple[list[str], np.ndarray]:
    """Texts whose class shows in its cue words, amid filler; class 0 is the most common."""
    rng = random.Random(seed)
    ys = [rng.choice((classes[0], *classes)) for _ in range(n)]
    texts = [" ".join(rng.sample(FILLER, 6) + rng.sample(CUES[y], 2)) for y in ys]
    return texts, np.array(ys)


def test_majority_baseline_classification() -> None:
    result = majority_baseline([1, 0, 1, 1], 3, "single_label_classification", n_classes=3)
    assert result.name == "majority"
    assert result.predictions.tolist() == [1, 1, 1]
    assert result.proba.shape == (3, 3)
    assert result.proba[0].tolist() == [0.25, 0.75, 0.0]


def test_majority_baseline_multilabel_and_mean() -> None:
    y = np.array([[1, 0, 1], [1, 0, 0], [0, 1, 1]])
    result = majority_baseline(y, 2, "multi_label_classification")
    assert result.predictions.tolist() == [[1, 0, 1], [1, 0, 1]]
    assert result.proba[0] == pytest.approx([2 / 3, 1 / 3, 2 / 3])
    mean = majority_baseline([1.0, 2.0, 6.0], 2, "regression")
    assert mean.name == "mean" and mean.predictions.tolist() == [3.0, 3.0] and mean.proba is None


def test_tfidf_beats_majority_on_a_separable_set() -> None:
    train_texts, train_y = toy(300, seed=0)
    test_texts, test_y = toy(100, seed=1)
    labels = ["good", "bad", "shipping"]
    tfidf = tfidf_baseline(train_texts, train_y, test_texts, "single_label_classification")
    majority = majority_baseline(train_y, len(test_texts), "single_label_classification", n_classes=3)
    assert tfidf.name == "tfidf_logreg"
    assert tfidf.proba.shape == (100, 3) and np.allclose(tfidf.proba.sum(axis=1), 1)
    scored = classification_metrics(test_y, tfidf.predictions, labels, tfidf.proba)
    floor = classification_metrics(test_y, majority.predictions, labels, majority.proba)
    assert scored["accuracy"] == 1.0
    assert floor["accuracy"] == pytest.approx(np.mean(test_y == 0))
    assert scored["f1_macro"] > floor["f1_macro"] + 0.5
    assert scored["log_loss"] < floor["log_loss"]


def test_tfidf_keeps_probability_columns_for_classes_missing_in_training() -> None:
    train_texts, train_y = toy(60, seed=2, classes=(0, 2))
    result = tfidf_baseline(train_texts, train_y, ["tasty lovely", "box damaged"], "single_label_classification",
                            n_classes=4)
    assert result.proba.shape == (2, 4)
    assert result.proba[:, [1, 3]].sum() == 0
    assert result.predictions.tolist() == [0, 2]
    single = tfidf_baseline(["a b", "b c"], [1, 1], ["c d"], "single_label_classification", n_classes=2)
    assert single.predictions.tolist() == [1] and single.proba.tolist() == [[0.0, 1.0]]


def test_tfidf_multilabel() -> None:
    train_texts, train_y = toy(300, seed=3)
    test_texts, test_y = toy(60, seed=4)
    y = np.eye(3, dtype=int)[train_y]
    y[:, 2] |= np.array(["the" in t.split() for t in train_texts])  # label 2 also when "the" occurs
    truth = np.eye(3, dtype=int)[test_y]
    truth[:, 2] |= np.array(["the" in t.split() for t in test_texts])
    result = tfidf_baseline(train_texts, y, test_texts, "multi_label_classification")
    assert result.predictions.shape == (60, 3) and result.proba.shape == (60, 3)
    scored = multilabel_metrics(truth, result.predictions, ["x", "y", "z"], result.proba)
    floor = majority_baseline(y, 60, "multi_label_classification")
    assert scored["f1_macro"] > multilabel_metrics(truth, floor.predictions, ["x", "y", "z"])["f1_macro"] + 0.3


def test_tfidf_ridge_ranks_better_than_the_mean() -> None:
    rng = random.Random(5)
    def sample(n: int) -> tuple[list[str], np.ndarray]:
        scores = [rng.randint(0, 4) for _ in range(n)]
        return [" ".join(rng.sample(FILLER, 5) + ["great"] * s + ["meh"] * (4 - s)) for s in scores], np.array(scores, float)
    train_texts, train_y = sample(200)
    test_texts, test_y = sample(50)
    ridge = tfidf_baseline(train_texts, train_y, test_texts, "regression")
    mean = majority_baseline(train_y, 50, "regression")
    assert ridge.name == "tfidf_ridge" and ridge.proba is None
    assert stats.spearmanr(test_y, ridge.predictions).statistic > 0.9
    assert regression_metrics(test_y, ridge.predictions)["mae"] < regression_metrics(test_y, mean.predictions)["mae"] / 2


@pytest.mark.parametrize(("call", "message"), [
    (lambda: majority_baseline([0, 1], 2, "chat"), "unknown task 'chat'"),
    (lambda: majority_baseline([], 2, "regression"), "empty"),
    (lambda: majority_baseline([0, 3], 2, "single_label_classification", n_classes=2), "n_classes is 2"),
    (lambda: majority_baseline([0.5, 1.0], 2, "single_label_classification"), "integer class ids"),
    (lambda: majority_baseline([0, 1], 2, "multi_label_classification"), "n x k 0/1 matrix"),
    (lambda: tfidf_baseline(["a", "b"], [0], ["c"], "single_label_classification"), "same length"),
    (lambda: tfidf_baseline(["", " "], [0, 1], ["c"], "single_label_classification"), "no words"),
    (lambda: tfidf_baseline(["a b", "c d"], [0, 1], [], "single_label_classification"), "test_texts is empty"),
])
def test_bad_input_is_rejected(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()
