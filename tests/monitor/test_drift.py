"""Drift against the training data: PSI by hand, the two-sample tests against scipy, the OOV rate
on a tiny example, the report's warnings and the input checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from tunesmith.monitor.drift import (
    CHI2_TEST,
    INSUFFICIENT,
    KS_TEST,
    PSI_EPSILON,
    PSI_MODERATE,
    PSI_SIGNIFICANT,
    DriftThresholds,
    drift_confirmed,
    drift_report,
    oov_rate,
    psi,
    two_sample,
    vocabulary_of,
)


def _psi_by_hand(e: list[float], a: list[float]) -> float:
    return sum((q - p) * math.log(q / p) for p, q in zip(e, a))


# -- PSI ----------------------------------------------------------------------------------------


def test_conventional_thresholds() -> None:
    assert (PSI_MODERATE, PSI_SIGNIFICANT) == (0.1, 0.25)


def test_psi_of_identical_distributions_is_about_zero() -> None:
    rng = np.random.default_rng(0)
    train = rng.normal(50, 10, 5000)
    assert psi(train, train) == 0.0
    assert psi(train, rng.normal(50, 10, 5000)) < 0.02  # sampling noise only
    labels = ["pos", "neg", "neutral"] * 100
    assert psi(labels, labels[::-1]) == 0.0


def test_psi_of_a_shifted_distribution_is_significant() -> None:
    rng = np.random.default_rng(1)
    train = rng.normal(0, 1, 5000)
    assert psi(train, rng.normal(1, 1, 5000)) > PSI_SIGNIFICANT  # one standard deviation: PSI ~ 1
    assert psi(train, rng.normal(0, 1.8, 5000)) > PSI_SIGNIFICANT  # same mean, wider spread


def test_numeric_psi_bins_on_the_training_deciles() -> None:
    train = np.arange(100.0)  # deciles: 10 values per bin
    live = np.arange(10.0)  # everything in the first decile
    expected = _psi_by_hand([0.1] * 10, [1.0] + [PSI_EPSILON] * 9)
    assert psi(train, live) == pytest.approx(expected)
    # Values beyond the training range land in a bin of their own, one on each side, that training leaves empty.
    beyond = _psi_by_hand([0.1] * 10 + [PSI_EPSILON], [PSI_EPSILON] * 10 + [1.0])
    assert psi(train, np.full(10, 1e6)) == pytest.approx(beyond)
    assert psi(train, np.full(10, -1e6)) == pytest.approx(beyond)
    assert psi(train, live, bins=5) == pytest.approx(_psi_by_hand([0.2] * 5, [1.0] + [PSI_EPSILON] * 4))


def test_psi_sees_a_shift_past_tied_top_values() -> None:
    """The open top bin held the training values tied at the maximum and every live value above them: constant one-word
    training inputs against live inputs of 12 words read PSI 0.0 (KS p 5e-324), the shift down to 0 words PSI 18."""
    train = [1.0] * 1000
    up = psi(train, [12.0] * 500)
    assert up == pytest.approx(_psi_by_hand([1.0, PSI_EPSILON], [PSI_EPSILON, 1.0]))
    assert up == pytest.approx(psi(train, [0.0] * 500))
    train = [1] * 50 + [2] * 100 + [3] * 850  # 85% tied at the maximum
    assert psi(train, [40] * 500) > psi(train, [1] * 500) > PSI_SIGNIFICANT
    report = drift_report(train_lengths=[1.0] * 1000, live_lengths=[12.0] * 500)
    assert report["lengths"]["status"] == "significant"
    assert report["warnings"][0].startswith("input length distribution drifted")


def test_tied_quantiles_merge_bins() -> None:
    train = [5] * 90 + [6] * 10  # integer lengths: most deciles are 5
    assert psi(train, train) == 0.0
    assert psi(train, [6] * 50 + [5] * 50) == pytest.approx(_psi_by_hand([0.9, 0.1], [0.5, 0.5]))


def test_categorical_psi_by_hand() -> None:
    assert psi(["a"] * 50 + ["b"] * 50, ["a"] * 25 + ["b"] * 75) == pytest.approx(0.2747, abs=1e-4)
    # A label never predicted in training gets the epsilon share, and counts heavily.
    new = psi(["a"] * 50 + ["b"] * 50, ["a"] * 40 + ["b"] * 40 + ["c"] * 20)
    assert new == pytest.approx(_psi_by_hand([0.5, 0.5, PSI_EPSILON], [0.4, 0.4, 0.2]))
    assert new > PSI_SIGNIFICANT
    assert psi([True, False] * 10, [True] * 20) > PSI_SIGNIFICANT  # booleans are labels


# -- two-sample tests ---------------------------------------------------------------------------


def test_ks_detects_a_shift_and_matches_scipy() -> None:
    rng = np.random.default_rng(2)
    train, same, shifted = rng.normal(0, 1, 2000), rng.normal(0, 1, 1000), rng.normal(0.3, 1, 1000)
    test, statistic, p = two_sample(train, shifted)
    expected = sps.ks_2samp(train, shifted)
    assert test == KS_TEST and (statistic, p) == pytest.approx((expected.statistic, expected.pvalue))
    assert p < 1e-6
    assert two_sample(train, same).p_value > 0.01


def test_chi_square_on_label_counts() -> None:
    train, live = ["a"] * 60 + ["b"] * 40, ["a"] * 30 + ["b"] * 70
    result = two_sample(train, live)
    table = np.array([[60, 40], [30, 70]])
    expected = np.outer(table.sum(1), table.sum(0)) / table.sum()
    by_hand = ((table - expected) ** 2 / expected).sum()  # Pearson, no Yates correction
    assert result.test == CHI2_TEST
    assert result.statistic == pytest.approx(by_hand)
    assert result.p_value == pytest.approx(sps.chi2.sf(by_hand, df=1))
    assert two_sample(["a"] * 10, ["a"] * 5) == (CHI2_TEST, 0.0, 1.0)  # one category: nothing to test


# -- vocabulary ---------------------------------------------------------------------------------


def test_oov_rate_on_a_tiny_example() -> None:
    vocab = vocabulary_of(["The cat sat.", "on the MAT"])
    assert vocab == {"the", "cat", "sat", "on", "mat"}
    # tokens: the dog sat on a mat -> "dog" and "a" unseen: 2 of 6
    assert oov_rate(["The dog sat", "on a mat!"], vocab) == pytest.approx(2 / 6)
    assert oov_rate(["the the the dog"], vocab) == pytest.approx(1 / 4)  # repeats count
    assert oov_rate(["The dog sat", "on a mat!"], lambda token: token in vocab or token == "dog") == pytest.approx(1 / 6)
    assert oov_rate(["", "..."], vocab) == 0.0
    assert oov_rate(["cat", "hello"], set()) == 1.0


# -- report -------------------------------------------------------------------------------------


def test_report_warns_in_plain_words() -> None:
    rng = np.random.default_rng(3)
    labels = ["pos"] * 600 + ["neg"] * 400
    live_labels = ["pos"] * 300 + ["neg"] * 600 + ["neutral"] * 10
    vocab = vocabulary_of(["the cat sat", "on the mat"])
    report = drift_report(rng.poisson(40, 3000), rng.poisson(60, 500), labels, live_labels, vocab, ["The dog sat", "on a mat!"] * 50)
    assert report["lengths"]["status"] == "significant" and report["lengths"]["test"] == KS_TEST
    assert report["lengths"]["threshold"] == 0.25 and report["lengths"]["moderate_threshold"] == 0.1
    assert report["lengths"]["train_mean"] == pytest.approx(40, abs=1) and report["lengths"]["n_live"] == 500
    assert report["labels"]["psi"] == pytest.approx(psi(labels, live_labels))
    assert report["labels"]["shares"]["neg"] == {"train": 0.4, "live": pytest.approx(600 / 910)}
    assert report["vocabulary"] == {"oov_rate": pytest.approx(1 / 3), "threshold": 0.1, "status": "drifted",
                                    "n_texts": 100, "vocabulary_size": 5}
    assert report["thresholds"]["psi_significant"] == 0.25
    warnings = report["warnings"]
    assert len(warnings) == 3
    assert warnings[0].startswith("input length distribution drifted: PSI ") and "mean length 40" in warnings[0]
    assert warnings[1] == ("prediction distribution drifted: PSI 0.34 > 0.25 "
                           "(chi-square p < 0.0001; 'pos' 60.0% -> 33.0%)")
    assert warnings[2] == "live texts use words unseen in training: 33.3% of tokens > 10%"


def test_a_stable_report_has_no_warnings() -> None:
    rng = np.random.default_rng(4)
    labels = list(rng.choice(["pos", "neg"], 2000))
    report = drift_report(rng.poisson(40, 3000), rng.poisson(40, 1000), labels, list(rng.choice(["pos", "neg"], 1000)),
                          vocabulary_of(["a b c"]), ["a b", "c"] * 50)
    assert report["lengths"]["status"] == report["labels"]["status"] == "stable"
    assert report["vocabulary"]["status"] == "ok"
    assert report["warnings"] == []


def test_moderate_shift_and_unconfirmed_shift() -> None:
    train = ["a"] * 1000 + ["b"] * 1000
    report = drift_report(train_labels=train, live_labels=["a"] * 660 + ["b"] * 1340)  # PSI 0.12, p tiny
    assert report["labels"]["status"] == "moderate"
    assert report["warnings"] == ["prediction distribution shifted moderately: PSI 0.12 (between 0.1 and 0.25; "
                                  "chi-square p < 0.0001; 'a' 50.0% -> 33.0%); worth watching"]
    # Ten live predictions (judged here, min_live 10): PSI is over 0.25 but the test cannot tell it from noise.
    report = drift_report(train_labels=train, live_labels=["a"] * 2 + ["b"] * 8, thresholds=DriftThresholds(min_live=10))
    assert report["labels"]["status"] == "significant" and report["labels"]["p_value"] > 0.01
    assert len(report["warnings"]) == 1
    assert report["warnings"][0].startswith("prediction distribution may have drifted: PSI 0.42 > 0.25, but the chi-square")


def test_too_few_live_examples_decide_nothing() -> None:
    """Two requests ("hi", "thanks") after a deploy confirmed length drift (PSI 8, KS p 1e-6), and one request "Merci
    beaucoup" vocabulary drift: the server's tunesmith_drift_warning gauge (drift_confirmed) fired on them."""
    rng = np.random.default_rng(0)
    train_lengths = rng.integers(5, 41, 2000).astype(float)
    vocab = {"lovely", "tea", "great", "food", "bad", "service", "hi", "thanks"}
    report = drift_report(train_lengths=train_lengths, live_lengths=[1, 1], train_vocab=vocab, live_texts=["hi", "thanks"])
    lengths = report["lengths"]
    assert lengths["status"] == INSUFFICIENT and lengths["psi"] > PSI_SIGNIFICANT and lengths["p_value"] < 0.01
    assert not drift_confirmed(lengths)
    assert report["warnings"] == [
        "only 2 live examples for the input length distribution: too few to judge drift (it needs 100; so far PSI "
        f"{lengths['psi']:.2f}, Kolmogorov-Smirnov p < 0.0001; mean length 23.0 -> 1.0)"]
    report = drift_report(train_vocab=vocab, live_texts=["Merci beaucoup"])
    assert report["vocabulary"]["status"] == INSUFFICIENT and report["vocabulary"]["oov_rate"] == 1.0
    assert not drift_confirmed(report["vocabulary"])
    assert report["warnings"] == ["live texts use words unseen in training: 100.0% of tokens > 10%, "
                                  "but only 1 live texts: too few to judge (it needs 100)"]
    # From min_live on the same figures are judged: 100 one-word requests are length drift, 100 French ones new words.
    report = drift_report(train_lengths=train_lengths, live_lengths=[1] * 100, train_vocab=vocab,
                          live_texts=["Merci beaucoup"] * 100)
    assert drift_confirmed(report["lengths"]) and drift_confirmed(report["vocabulary"])
    assert report["lengths"]["status"] == "significant" and report["vocabulary"]["status"] == "drifted"


def test_report_skips_what_it_is_not_given_and_takes_thresholds() -> None:
    assert drift_report()["warnings"] == [] and set(drift_report()) == {"thresholds", "warnings"}
    report = drift_report(train_labels=[0, 1, 1], live_labels=[1, 1, 1])  # integer label ids are labels
    assert set(report["labels"]["shares"]) == {"0", "1"}
    loose = DriftThresholds(oov_rate=0.5, min_live=1)
    report = drift_report(train_vocab={"a"}, live_texts=["a b"], thresholds=loose)
    assert report["vocabulary"]["status"] == "ok" and report["thresholds"]["oov_rate"] == 0.5


# -- input checks -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expected", "actual", "match"),
    [
        ([], [1.0], "expected .* is empty"),
        ([1.0, 2.0], [], "actual .* is empty"),
        ([1.0, "a"], [1.0], "mixes numbers and labels"),
        ([1.0, 2.0], ["a"], "both be numbers or both be labels"),
        ([1.0, float("nan")], [1.0], "NaN"),
        ([None], [1.0], "NoneType"),
    ],
)
def test_inputs_are_checked(expected: list, actual: list, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        psi(expected, actual)
    with pytest.raises(ValueError, match=match):
        two_sample(expected, actual)


def test_bins_are_checked() -> None:
    with pytest.raises(ValueError, match="bins"):
        psi([1.0, 2.0], [1.0], bins=1)
