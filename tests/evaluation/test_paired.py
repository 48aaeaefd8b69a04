"""Paired tests: McNemar counts only the examples the models disagree on; Wilcoxon compares errors
example by example; both say which way a difference goes."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

from tunesmith.evaluation.paired import mcnemar, wilcoxon_errors


def test_mcnemar_is_the_exact_binomial_test_on_the_disagreements() -> None:
    truth = ["a"] * 100
    reference = ["a"] * 80 + ["b"] * 20  # wrong on the last 20
    candidate = ["a"] * 78 + ["b"] * 2 + ["a"] * 20  # right on those, wrong on 2 others
    r = mcnemar(truth, reference, candidate)
    assert r.detail == {"only_candidate_right": 20, "only_reference_right": 2, "both_right": 78, "both_wrong": 0}
    assert (r.reference, r.candidate, r.difference) == (0.8, 0.98, pytest.approx(0.18))
    assert r.p_value == pytest.approx(binomtest(20, 22, 0.5).pvalue)
    assert r.p_better == pytest.approx(binomtest(20, 22, 0.5, alternative="greater").pvalue)
    assert r.p_better < 1e-4
    assert r.p_worse > 0.99
    swapped = mcnemar(truth, candidate, reference)
    assert swapped.p_worse == pytest.approx(r.p_better) and swapped.difference == pytest.approx(-0.18)


def test_mcnemar_sees_no_evidence_when_the_models_agree_and_compares_label_sets() -> None:
    same = mcnemar(["a", "b", "a"], ["a", "a", "a"], ["a", "a", "a"])
    assert same.p_value == same.p_better == same.p_worse == 1.0
    multi = mcnemar([["x", "y"], ["x"]], [["y", "x"], ["y"]], [["x"], ["x"]])
    assert multi.detail["only_reference_right"] == 1 and multi.detail["only_candidate_right"] == 1
    with pytest.raises(ValueError, match="same examples"):
        mcnemar(["a"], ["a", "b"], ["a"])


def test_wilcoxon_finds_smaller_errors_and_their_direction() -> None:
    rng = np.random.default_rng(0)
    truth = rng.normal(size=200)
    reference = truth + rng.normal(scale=1.0, size=200)
    candidate = truth + rng.normal(scale=0.5, size=200)
    r = wilcoxon_errors(truth, reference, candidate)
    assert r.metric == "mae" and r.candidate < r.reference and r.difference > 0
    assert r.p_better < 1e-4 and r.p_worse > 0.99
    noise = wilcoxon_errors(truth, reference, truth + rng.normal(scale=1.0, size=200))
    assert noise.p_value > 0.01


def test_mcnemar_compares_multi_label_indicator_rows_element_by_element() -> None:
    """As sets, [1, 0, 0] and [0, 1, 0] were both {0, 1}: every wrong multi-hot answer counted as right."""
    truth = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]])
    wrong = np.array([[0, 1, 0], [1, 0, 0], [0, 1, 1], [0, 1, 1]])
    result = mcnemar(truth, wrong, truth)
    assert (result.reference, result.candidate) == (0.0, 1.0) and result.detail["only_candidate_right"] == 4


def test_wilcoxon_hamming_counts_each_wrong_label_decision_per_example() -> None:
    """Exact label sets tie here (1 of 3 right each); per label the candidate is far worse."""
    from tunesmith.evaluation.paired import wilcoxon_hamming

    truth = [["x", "y"], ["x"], ["y"]] * 10
    reference = [["x", "y"], [], ["x", "y"]] * 10  # 1 wrong label on each miss
    candidate = [["x", "y"], ["y", "z"], ["x", "z"]] * 10  # 3 wrong labels on each miss
    r = wilcoxon_hamming(truth, reference, candidate, 3)
    assert r.metric == "label_accuracy" and mcnemar(truth, reference, candidate).difference == 0
    assert (r.reference, r.candidate) == (pytest.approx(1 - 20 / 90), pytest.approx(1 - 60 / 90))
    assert r.detail == {"candidate_fewer_errors": 0, "reference_fewer_errors": 20, "ties": 10,
                        "reference_wrong_labels": 20, "candidate_wrong_labels": 60}
    assert r.p_worse < 1e-4 and r.p_better > 0.99 and r.difference < 0
    hot = np.array([[1, 0, 1], [0, 1, 0]])
    assert wilcoxon_hamming(hot, hot, np.array([[0, 1, 1], [0, 1, 0]]), 3).detail["candidate_wrong_labels"] == 2
    same = wilcoxon_hamming(truth, reference, reference, 3)
    assert same.p_value == same.p_better == same.p_worse == 1.0
    with pytest.raises(ValueError, match="same examples"):
        wilcoxon_hamming([["x"]], [["x"], ["y"]], [["x"]], 3)
