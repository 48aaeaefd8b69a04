"""A/B statistics: known answers (textbook numbers and scipy/statsmodels called directly), the
peeking guard, simulations of power and false-positive rate, and the edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats.oneway import anova_oneway
from statsmodels.stats.proportion import confint_proportions_2indep, proportions_ztest

from tunesmith.monitor.stats import (
    CHI2_TEST,
    FISHER,
    KRUSKAL,
    WELCH_ANOVA,
    WELCH_T,
    Z_TEST,
    Horizon,
    compare_means,
    compare_proportions,
    sample_size_means,
    sample_size_proportions,
    verdict,
)

Z95 = sps.norm.ppf(0.975)


def _fp_margin(alpha: float, seeds: int) -> float:
    """alpha plus three binomial standard errors: the most false winners a correct test may show."""
    return alpha + 3 * math.sqrt(alpha * (1 - alpha) / seeds)


# -- known answers: proportions -----------------------------------------------------------------


def test_two_proportions_match_the_textbook_z_test() -> None:
    r = compare_proportions({"a": 50, "b": 60}, {"a": 100, "b": 100})
    pooled = 110 / 200
    z = (0.60 - 0.50) / math.sqrt(pooled * (1 - pooled) * (1 / 100 + 1 / 100))  # 1.4213
    assert r.test == Z_TEST
    assert r.statistic == pytest.approx(z) and r.statistic == pytest.approx(1.4213, abs=1e-4)
    assert r.p_value == pytest.approx(2 * sps.norm.sf(z)) and r.p_value == pytest.approx(0.1552, abs=1e-4)
    assert r.p_value == pytest.approx(proportions_ztest([60, 50], [100, 100])[1])
    assert r.difference == pytest.approx(0.10)
    assert r.difference_ci == pytest.approx(confint_proportions_2indep(60, 100, 50, 100, method="newcomb"))
    assert not r.significant and r.winner is None


def test_difference_interval_is_newcombs() -> None:
    # Newcomb (1998), Stat Med 17:873, example (a): 56/70 - 48/80, method 10 gives 0.0524 to 0.3339.
    r = compare_proportions({"control": 48, "treatment": 56}, {"control": 80, "treatment": 70})
    assert r.difference == pytest.approx(56 / 70 - 48 / 80)
    assert r.difference_ci == pytest.approx((0.0524, 0.3339), abs=1e-4)


def test_per_variant_interval_is_wilsons() -> None:
    r = compare_proportions({"a": 8, "b": 2}, {"a": 10, "b": 10})
    for name, s, n in [("a", 8, 10), ("b", 2, 10)]:
        p, z2 = s / n, Z95**2
        centre = (p + z2 / (2 * n)) / (1 + z2 / n)
        half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
        v = r.variants[name]
        assert (v.n, v.successes, v.rate) == (n, s, p)
        assert (v.ci_low, v.ci_high) == pytest.approx((centre - half, centre + half))


def test_three_proportions_use_the_chi_square_test() -> None:
    s, n = {"v1": 30, "v2": 45, "v3": 60}, {"v1": 100, "v2": 100, "v3": 100}
    r = compare_proportions(s, n)
    rate = sum(s.values()) / sum(n.values())
    by_hand = sum((s[k] - n[k] * rate) ** 2 / (n[k] * rate) + (s[k] - n[k] * rate) ** 2 / (n[k] * (1 - rate)) for k in s)
    assert r.test == CHI2_TEST
    assert r.statistic == pytest.approx(by_hand)
    assert r.p_value == pytest.approx(sps.chi2.sf(by_hand, df=2))
    assert r.difference is None and r.difference_ci is None
    assert r.significant and r.winner == "v3"  # 60 % beats 45 % (p ~ 0.03) and 30 % after Holm's adjustment


def test_a_significant_omnibus_test_without_a_clear_best_names_no_winner() -> None:
    r = compare_proportions({"v1": 300, "v2": 590, "v3": 601}, {"v1": 1000, "v2": 1000, "v3": 1000})
    assert r.significant and r.winner is None  # v1 is worse, but v3 does not beat v2
    assert "not significantly better than v2" in r.notes[-1]


def test_three_variants_compare_each_pair_with_the_two_variant_test() -> None:
    """The pairwise check used the z-test even where two variants get Fisher's exact test: v3 (8/10) was named better
    than v2 (3/10) at z-test p 0.025, though compared alone Fisher's test gives p 0.070 and no winner."""
    s, n = {"v1": 0, "v2": 3, "v3": 8}, {"v1": 10, "v2": 10, "v3": 10}
    alone = compare_proportions({"v2": 3, "v3": 8}, {"v2": 10, "v3": 10})
    assert alone.test == FISHER and alone.winner is None
    r = compare_proportions(s, n)
    assert r.significant and r.winner is None
    assert r.notes[-1] == ("v3 is not significantly better than v2 in Holm-adjusted pairwise Fisher's exact tests "
                           f"(adjusted p = {alone.p_value:.3g})")  # Holm: the larger p of two is unadjusted
    assert "pairwise two-proportion z-tests" in compare_proportions({"v1": 30, "v2": 45, "v3": 60}, {k: 100 for k in s}).notes[-1]


def test_lower_is_better_picks_the_lowest_rate() -> None:
    r = compare_proportions({"a": 100, "b": 50}, {"a": 1000, "b": 1000}, higher_is_better=False)
    assert r.significant and r.winner == "b"


def test_all_equal_outcomes_give_p_one_not_nan() -> None:
    for s in (0, 50):
        r = compare_proportions({"a": s, "b": s}, {"a": 50, "b": 50})
        assert (r.statistic, r.p_value, r.winner) == (0.0, 1.0, None) and "no variation" in r.notes[0]
    r = compare_proportions({"a": 0, "b": 0, "c": 0}, {"a": 5, "b": 5, "c": 5})
    assert r.p_value == 1.0 and not r.significant


# -- known answers: means -----------------------------------------------------------------------


def test_welch_t_test_matches_the_formula() -> None:
    a, b = np.array([19.1, 21.0, 22.3, 18.4, 20.7, 23.5]), np.array([24.2, 22.9, 30.1, 26.5, 21.8, 28.0, 25.5, 27.3])
    r = compare_means({"a": a, "b": b})
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))  # Welch-Satterthwaite
    t = (b.mean() - a.mean()) / se
    half = sps.t.ppf(0.975, df) * se
    assert r.test == WELCH_T
    assert r.statistic == pytest.approx(t)
    assert r.p_value == pytest.approx(2 * sps.t.sf(abs(t), df))
    assert r.difference == pytest.approx(b.mean() - a.mean())
    assert r.difference_ci == pytest.approx((r.difference - half, r.difference + half))
    assert r.significant and r.winner == "b"
    v = r.variants["a"]
    assert (v.n, v.mean, v.std) == (6, pytest.approx(a.mean()), pytest.approx(a.std(ddof=1)))
    assert (v.ci_low, v.ci_high) == pytest.approx(sps.t.interval(0.95, 5, loc=a.mean(), scale=sps.sem(a)))


def test_three_means_use_welchs_anova() -> None:
    rng = np.random.default_rng(7)
    groups = {"a": rng.normal(3.0, 1.0, 40), "b": rng.normal(3.1, 2.0, 60), "c": rng.normal(4.0, 0.5, 30)}
    r = compare_means(groups)
    expected = anova_oneway(list(groups.values()), use_var="unequal", welch_correction=True)
    assert r.test == WELCH_ANOVA
    assert (r.statistic, r.p_value) == pytest.approx((expected.statistic, expected.pvalue))
    assert r.significant and r.winner == "c"


def test_lower_is_better_for_latency() -> None:
    r = compare_means({"old": [310, 290, 305, 320, 298], "new": [210, 190, 205, 220, 198]}, higher_is_better=False)
    assert r.winner == "new" and r.difference < 0


def test_identical_samples_give_p_one_and_say_so() -> None:
    r = compare_means({"a": [4.0, 4.0, 4.0], "b": [4.0, 4.0]})
    assert (r.statistic, r.p_value, r.significant, r.winner) == (0.0, 1.0, False, None)
    assert "undefined" in r.notes[0]
    r = compare_means({"a": [4.0, 4.0], "b": [4.0, 4.0], "c": [4.0, 4.0]})
    assert r.p_value == 1.0 and not math.isnan(r.statistic)


def test_constant_but_different_samples_are_an_exact_difference() -> None:
    r = compare_means({"a": [1.0, 1.0, 1.0], "b": [2.0, 2.0, 2.0]})
    assert r.p_value == 0.0 and r.winner == "b" and r.difference_ci == (1.0, 1.0) and "exact" in r.notes[0]


def test_a_constant_variant_among_three_falls_back_to_kruskal() -> None:
    r = compare_means({"a": [1.0, 1.0, 1.0, 1.0], "b": [1.5, 2.5, 2.0, 3.0], "c": [0.5, 1.5, 1.0, 2.0]})
    assert r.test == KRUSKAL and "a" in r.notes[0]
    assert r.p_value == pytest.approx(sps.kruskal([1.0] * 4, [1.5, 2.5, 2.0, 3.0], [0.5, 1.5, 1.0, 2.0]).pvalue)


# -- sample size --------------------------------------------------------------------------------


def test_sample_size_for_proportions_is_the_textbook_figure() -> None:
    n = sample_size_proportions(0.5, 0.1)  # 50 % -> 60 %, alpha 0.05 two-sided, power 0.8
    assert 385 <= n <= 390  # textbook ~385 (normal approximation); Cohen's h gives 388
    assert sample_size_proportions(0.5, -0.1) == n  # the arcsine scale is symmetric about 0.5
    assert sample_size_proportions(0.5, 0.1, power=0.9) > n
    assert sample_size_proportions(0.5, 0.05) > 3 * n  # half the effect, about four times the users
    assert sample_size_proportions(0.5, 0.1, ratio=2.0) < n  # a larger second arm needs a smaller first


def test_sample_size_for_means_is_cohens_figure() -> None:
    assert sample_size_means(1.0, 0.5) == 64  # Cohen (1988): d = 0.5, alpha 0.05, power 0.8 -> 64
    assert sample_size_means(2.0, 1.0) == 64  # only d = effect / std matters
    assert Horizon.for_means(1.0, 0.5).per_variant == 64
    assert Horizon.for_proportions(0.5, 0.1).per_variant == sample_size_proportions(0.5, 0.1)


@pytest.mark.parametrize(
    "kwargs",
    [dict(baseline=0.0, minimum_detectable_effect=0.1), dict(baseline=0.95, minimum_detectable_effect=0.1),
     dict(baseline=0.5, minimum_detectable_effect=0.0), dict(baseline=0.5, minimum_detectable_effect=0.1, power=1.0),
     dict(baseline=0.5, minimum_detectable_effect=0.1, alpha=0.0)],
)
def test_sample_size_refuses_impossible_designs(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        sample_size_proportions(**kwargs)


# -- the peeking guard --------------------------------------------------------------------------


def test_the_guard_refuses_a_verdict_before_the_horizon() -> None:
    r = compare_proportions({"v3": 150, "v4": 250}, {"v3": 400, "v4": 400})
    assert r.p_value < 1e-6 and r.winner == "v4"  # an obvious difference, but only 400 of 1000 in
    v = verdict(r, Horizon(1000))
    assert not v.decided and v.winner is None and not v.significant
    assert v.message == "keep collecting: 400 of 1000 per variant; looking before the horizon inflates false positives"
    assert v.method == "fixed horizon of 1000 per variant, alpha 0.05, two-sided; two-proportion z-test"
    assert not verdict(r, Horizon(400), n_per_variant=350).decided  # e.g. fewer users than samples
    assert not verdict(r, Horizon(1000), n_per_variant=5000).decided  # cannot be talked past the data


def test_the_verdict_at_the_horizon_in_plain_words() -> None:
    r = compare_proportions({"v3": 503, "v4": 601}, {"v3": 1000, "v4": 1000})
    v = verdict(r, Horizon(1000))
    assert v.decided and v.winner == "v4" and v.significant and v.n_per_variant == 1000
    assert v.message == ("v4 is better than v3: 60.1% vs 50.3% positive "
                         "(difference +9.8 points, 95% CI +5.4 to +14.1, p < 0.0001, two-proportion z-test)")
    # The winner listed first: the same sentence.
    assert verdict(compare_proportions({"v4": 601, "v3": 503}, {"v4": 1000, "v3": 1000}), Horizon(1000)).message == v.message


def test_no_significant_difference_in_plain_words() -> None:
    r = compare_proportions({"v3": 503, "v4": 513}, {"v3": 1000, "v4": 1000})
    v = verdict(r, Horizon(800), outcome="thumbs-up")
    assert v.decided and v.winner is None and not v.significant
    assert v.message == ("no significant difference between v3 and v4: 50.3% vs 51.3% thumbs-up "
                         "(v4 - v3 = +1.0 points, 95% CI -3.4 to +5.4, p = 0.65, two-proportion z-test)")


def test_verdict_for_means_and_for_three_variants() -> None:
    r = compare_means({"v1": [3.0, 3.2, 2.9, 3.1, 3.0, 2.8], "v2": [3.9, 4.1, 4.0, 4.2, 3.8, 4.0]})
    v = verdict(r, Horizon(6))
    assert v.message.startswith("v2 is better than v1: 4 vs 3 (difference +1, 95% CI +0.")
    assert v.message.endswith(", Welch's t-test)") and v.method.endswith("Welch's t-test")
    r = compare_proportions({"v1": 300, "v2": 450, "v3": 600}, {"v1": 1000, "v2": 1000, "v3": 1000}, alpha=0.01)
    v = verdict(r, Horizon(1000))
    assert v.winner == "v3"
    assert v.message.startswith("v3 is the best of 3 variants: v1 30.0%, v2 45.0%, v3 60.0% positive (p < 0.0001, chi-square")
    assert v.method == "fixed horizon of 1000 per variant, alpha 0.01, two-sided; chi-square test of independence"


# -- simulations: power and false positives ------------------------------------------------------


def _ab(seed: int, p_a: float, p_b: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-user outcomes (1 = positive) for two variants of n users each."""
    rng = np.random.default_rng(seed)
    return rng.random(n) < p_a, rng.random(n) < p_b


def _decide(a: np.ndarray, b: np.ndarray, horizon: Horizon) -> str | None:
    r = compare_proportions({"v3": int(a.sum()), "v4": int(b.sum())}, {"v3": a.size, "v4": b.size})
    return verdict(r, horizon).winner


def test_power_60_vs_50_percent_with_1000_users_per_variant() -> None:
    winners = [_decide(*_ab(seed, 0.50, 0.60, 1000), Horizon(1000)) for seed in range(200)]
    assert sum(w == "v4" for w in winners) / 200 >= 0.80
    assert "v3" not in winners  # never the wrong way round


def test_the_planned_sample_size_gives_the_planned_power() -> None:
    horizon = Horizon.for_proportions(0.5, 0.1)  # 388 per variant for power 0.8
    hits = sum(_decide(*_ab(seed, 0.50, 0.60, horizon.per_variant), horizon) == "v4" for seed in range(200))
    assert abs(hits / 200 - 0.80) <= 3 * math.sqrt(0.8 * 0.2 / 200)


def test_no_effect_rarely_declares_a_winner() -> None:
    false = sum(_decide(*_ab(1000 + seed, 0.5, 0.5, 1000), Horizon(1000)) is not None for seed in range(400))
    assert false / 400 <= _fp_margin(0.05, 400)


def test_peeking_inflates_false_positives_and_the_guard_prevents_it() -> None:
    horizon, looks, seeds = Horizon(1000), range(100, 1001, 100), 200
    naive = guarded = 0
    for seed in range(seeds):
        a, b = _ab(5000 + seed, 0.5, 0.5, 1000)
        results = [compare_proportions({"v3": int(a[:n].sum()), "v4": int(b[:n].sum())}, {"v3": n, "v4": n}) for n in looks]
        naive += any(r.significant for r in results)  # stop at the first p < alpha
        guarded += any(verdict(r, horizon).winner is not None for r in results)
    assert naive / seeds > 0.10  # ten looks: roughly 20 % false winners instead of 5 %
    assert guarded / seeds <= _fp_margin(0.05, seeds)


def test_compare_means_false_positive_rate() -> None:
    false = 0
    for seed in range(400):
        rng = np.random.default_rng(9000 + seed)
        # Equal means, unequal spreads and sizes: where Student's t-test would be off and Welch's is not.
        r = compare_means({"v3": rng.normal(3.5, 1.0, 1000), "v4": rng.normal(3.5, 2.0, 300)})
        false += verdict(r, Horizon(300)).winner is not None
    assert false / 400 <= _fp_margin(0.05, 400)


# -- edge cases ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("successes", "trials", "match"),
    [
        ({"v3": 0, "v4": 5}, {"v3": 0, "v4": 10}, "'v3' has zero trials"),
        ({"v3": 11, "v4": 5}, {"v3": 10, "v4": 10}, "'v3' has more successes than trials"),
        ({"v3": -1, "v4": 5}, {"v3": 10, "v4": 10}, "'v3' has negative successes"),
        ({"v3": 5}, {"v3": 10}, "at least 2 variants"),
        ({"v3": 5, "v4": 5}, {"v3": 10, "v5": 10}, "v4, v5"),
        ({"v3": 2.5, "v4": 5}, {"v3": 10, "v4": 10}, "'v3'.*whole numbers"),
    ],
)
def test_proportion_inputs_are_checked(successes: dict, trials: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        compare_proportions(successes, trials)


@pytest.mark.parametrize(
    ("samples", "match"),
    [
        ({"v3": [1.0, 2.0]}, "at least 2 variants"),
        ({"v3": [1.0, 2.0], "v4": [3.0]}, "'v4' needs at least 2 values"),
        ({"v3": [1.0, 2.0], "v4": []}, "'v4' needs at least 2 values"),
        ({"v3": [1.0, float("nan")], "v4": [1.0, 2.0]}, "'v3' has NaN"),
    ],
)
def test_mean_inputs_are_checked(samples: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        compare_means(samples)


def test_alpha_and_horizon_are_checked() -> None:
    with pytest.raises(ValueError, match="alpha"):
        compare_proportions({"a": 1, "b": 2}, {"a": 5, "b": 5}, alpha=1.5)
    with pytest.raises(ValueError, match="horizon"):
        Horizon(1)


def test_a_p_value_is_never_rounded_onto_or_across_alpha() -> None:
    """0.0455 read "p = 0.05" in a verdict of significance at 0.05; 0.00996 read "p = 0.01" in a drift warning at 0.01."""
    from tunesmith.monitor.stats import format_p

    assert format_p(0.0456, 0.05) == "p = 0.046" and format_p(0.00996, 0.01) == "p = 0.00996"
    assert format_p(0.0504, 0.05) == "p = 0.0504" and format_p(0.2, 0.05) == "p = 0.20" and format_p(0.00001) == "p < 0.0001"


def test_a_verdict_whose_interval_and_test_disagree_says_it_is_borderline() -> None:
    """8 vs 2 of 45 each: the z-test says p = 0.044 while Newcombe's interval holds 0; the sentence said "better"."""
    result = compare_proportions({"v1": 2, "v2": 8}, {"v1": 45, "v2": 45})
    message = verdict(result, Horizon(45)).message
    assert result.significant and result.difference_ci[0] < 0 and "borderline" in message
    clear = verdict(compare_proportions({"v1": 20, "v2": 60}, {"v1": 100, "v2": 100}), Horizon(100)).message
    assert "better" in clear and "borderline" not in clear


def test_few_trials_use_fisher_s_exact_test() -> None:
    # 8/10 vs 3/10: the z-test said p 0.025 (a winner); the exact test says 0.070. A horizon of 2 named a winner of no
    # difference in 12.5% of tests.
    from scipy.stats import fisher_exact

    from tunesmith.monitor.stats import FISHER

    result = compare_proportions({"a": 3, "b": 8}, {"a": 10, "b": 10})
    assert result.test == FISHER and abs(result.p_value - fisher_exact([[8, 2], [3, 7]])[1]) < 1e-12
    assert not result.significant and result.winner is None and any("Fisher" in n for n in result.notes)
    big = compare_proportions({"a": 300, "b": 360}, {"a": 600, "b": 600})
    assert big.test != FISHER  # enough trials: the z-test
