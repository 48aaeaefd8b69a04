"""A/B statistics between model versions: tests, intervals, sample sizes and a peeking guard.

Pure functions over counts and numbers; the A/B-test service and the monitoring report call them.
The statistics come from scipy and statsmodels, never from hand-written formulas:

    compare_proportions  2 variants: two-proportion z-test (pooled variance, statsmodels
                         proportions_ztest) + Newcomb hybrid-score interval for the difference
                         (Newcomb 1998, statsmodels confint_proportions_2indep);
                         3+ variants: chi-square test of independence (scipy chi2_contingency)
                         + Wilson score interval per variant (statsmodels proportion_confint)
    compare_means        2 variants: Welch's t-test (scipy ttest_ind, equal_var=False) + its
                         Welch-Satterthwaite interval for the difference of means;
                         3+ variants: Welch's one-way ANOVA (scipy f_oneway equal_var=False, or
                         statsmodels anova_oneway use_var="unequal" on older scipy)
    sample_size_*        per-variant n for a target power (statsmodels NormalIndPower on Cohen's h
                         for proportions, TTestIndPower on Cohen's d for means)
    Horizon, verdict     fixed-horizon design: no winner is declared before every variant has the
                         planned n, because stopping at the first p < alpha inflates false positives

All tests are two-sided. With two variants, "a" is the first key (of `trials` or `samples`), "b" the second:
`difference` is b - a. With 3+ variants an omnibus test only says "not all equal", so a winner is
named only when the best variant also beats every other one in pairwise tests (same test as for
two variants) with Holm's step-down adjustment (statsmodels multipletests) at the same alpha.
"""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import NormalIndPower, TTestIndPower
from statsmodels.stats.proportion import (
    confint_proportions_2indep,
    proportion_confint,
    proportion_effectsize,
    proportions_ztest,
)

Z_TEST = "two-proportion z-test"
CHI2_TEST = "chi-square test of independence"
FISHER = "Fisher's exact test"
WELCH_T = "Welch's t-test"
WELCH_ANOVA = "Welch's one-way ANOVA"
KRUSKAL = "Kruskal-Wallis H-test"
NO_TEST = "no test (no variation)"


# -- results ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VariantProportion:
    """One variant's counts: `rate` = successes / n, with its Wilson score interval at 1 - alpha."""

    n: int
    successes: int
    rate: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class VariantMean:
    """One variant's sample: mean, standard deviation (ddof=1) and the t interval of the mean."""

    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class ProportionResult:
    """compare_proportions' answer. `difference`/`difference_ci` (rate b - rate a) only for two variants."""

    variants: dict[str, VariantProportion]
    test: str
    statistic: float
    p_value: float
    alpha: float
    significant: bool  # p_value < alpha
    winner: str | None  # the best variant when significant (see the module docstring for 3+ variants)
    difference: float | None = None
    difference_ci: tuple[float, float] | None = None
    higher_is_better: bool = True
    notes: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class MeanResult:
    """compare_means' answer. `difference`/`difference_ci` (mean b - mean a) only for two variants."""

    variants: dict[str, VariantMean]
    test: str
    statistic: float
    p_value: float
    alpha: float
    significant: bool
    winner: str | None
    difference: float | None = None
    difference_ci: tuple[float, float] | None = None
    higher_is_better: bool = True
    notes: tuple[str, ...] = field(default=())


# -- checks -------------------------------------------------------------------------------------


def check_alpha(alpha: float) -> None:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be between 0 and 1 (exclusive), got {alpha}")


def _check_counts(successes: Mapping[str, int], trials: Mapping[str, int]) -> list[str]:
    names = list(trials)
    if set(successes) != set(trials):
        missing = sorted(set(trials) ^ set(successes))
        raise ValueError(f"successes and trials must name the same variants; differing: {', '.join(map(str, missing))}")
    if len(names) < 2:
        raise ValueError(f"need at least 2 variants to compare, got {len(names)}: {', '.join(map(str, names)) or 'none'}")
    for name in names:
        s, n = successes[name], trials[name]
        if int(n) != n or int(s) != s:
            raise ValueError(f"variant {name!r}: successes and trials must be whole numbers, got {s} of {n}")
        if n <= 0:
            raise ValueError(f"variant {name!r} has zero trials: nothing to compare yet")
        if s < 0:
            raise ValueError(f"variant {name!r} has negative successes ({s})")
        if s > n:
            raise ValueError(f"variant {name!r} has more successes than trials ({s} > {n})")
    return names


def _check_samples(samples: Mapping[str, Sequence[float]]) -> dict[str, np.ndarray]:
    if len(samples) < 2:
        raise ValueError(f"need at least 2 variants to compare, got {len(samples)}: {', '.join(map(str, samples)) or 'none'}")
    arrays = {}
    for name, values in samples.items():
        x = np.asarray(values, dtype=float).ravel()
        if x.size < 2:  # a variance (and so any t-test) needs two observations
            raise ValueError(f"variant {name!r} needs at least 2 values, got {x.size}")
        if not np.all(np.isfinite(x)):
            raise ValueError(f"variant {name!r} has NaN or infinite values")
        arrays[name] = x
    return arrays


def _best(values: Mapping[str, float], higher_is_better: bool) -> str:
    return (max if higher_is_better else min)(values, key=values.__getitem__)


# -- proportions --------------------------------------------------------------------------------


def _ztest(s_b: int, n_b: int, s_a: int, n_a: int) -> tuple[float, float]:
    """Pooled two-proportion z-test of b vs a; (0, 1) when all trials share one outcome (z is 0/0)."""
    pooled = (s_a + s_b) / (n_a + n_b)
    if pooled in (0.0, 1.0):
        return 0.0, 1.0
    z, p = proportions_ztest([s_b, s_a], [n_b, n_a])
    return float(z), float(p)


def compare_proportions(
    successes: Mapping[str, int], trials: Mapping[str, int], alpha: float = 0.05, *, higher_is_better: bool = True
) -> ProportionResult:
    """Compare success rates (e.g. thumbs-up per response) between variants.

    Two variants: pooled two-proportion z-test (statsmodels proportions_ztest) and the Newcomb
    hybrid-score interval for rate(b) - rate(a) (statsmodels confint_proportions_2indep,
    method="newcomb"; Newcomb 1998, method 10), which keeps its coverage near 0 % or 100 % where
    the Wald interval does not. Three or more: chi-square test of independence on the
    variants x {success, failure} table (scipy chi2_contingency; Yates' correction only applies
    to 2x2, which this path never sees). Each variant gets a Wilson score interval.
    `higher_is_better=False` for rates to minimise (errors, thumbs-down).
    """
    check_alpha(alpha)
    names = _check_counts(successes, trials)
    variants = {}
    for name in names:
        s, n = int(successes[name]), int(trials[name])
        low, high = proportion_confint(s, n, alpha=alpha, method="wilson")
        variants[name] = VariantProportion(n=n, successes=s, rate=s / n, ci_low=float(low), ci_high=float(high))
    rates = {name: v.rate for name, v in variants.items()}
    notes: list[str] = []
    total_s, total_n = sum(v.successes for v in variants.values()), sum(v.n for v in variants.values())
    degenerate = total_s in (0, total_n)
    if degenerate:
        notes.append(f"every trial in every variant had the same outcome ({'all' if total_s else 'no'} successes): "
                     "there is no variation to test, so p = 1.0")

    if len(names) == 2:
        a, b = names
        va, vb = variants[a], variants[b]
        statistic, p = _ztest(vb.successes, vb.n, va.successes, va.n)
        test = Z_TEST
        pooled = total_s / total_n
        if not degenerate and min(n * min(pooled, 1 - pooled) for n in (va.n, vb.n)) < 5:
            # The z-test's normal approximation needs an expected 5 per cell: 8/10 vs 3/10 was "significant" at
            # p 0.025 where the exact test gives 0.070, and a horizon of 2 named a winner of nothing in 12.5%.
            statistic, p = sps.fisher_exact([[vb.successes, vb.n - vb.successes], [va.successes, va.n - va.successes]])
            statistic, p, test = float(statistic), float(p), FISHER
            notes.append("few trials for the z-test's approximation (an expected count under 5): Fisher's exact test")
        low, high = confint_proportions_2indep(vb.successes, vb.n, va.successes, va.n, method="newcomb", alpha=alpha)
        significant = p < alpha
        return ProportionResult(
            variants=variants, test=test, statistic=statistic, p_value=p, alpha=alpha, significant=significant,
            winner=_best(rates, higher_is_better) if significant else None,
            difference=vb.rate - va.rate, difference_ci=(float(low), float(high)),
            higher_is_better=higher_is_better, notes=tuple(notes),
        )

    if degenerate:  # chi2_contingency refuses a table with an all-zero column
        statistic, p = 0.0, 1.0
    else:
        table = [[v.successes, v.n - v.successes] for v in variants.values()]
        res = sps.chi2_contingency(table, correction=False)
        statistic, p = float(res.statistic), float(res.pvalue)
    significant = p < alpha
    winner = None
    if significant:
        best = _best(rates, higher_is_better)
        others = [name for name in names if name != best]
        # each pair by the two-variant comparison, Fisher's exact test included where counts are small: the z-test
        # alone named v3 (8/10) better than v2 (3/10), which Fisher's test (p 0.070) does not
        pairs = [compare_proportions({o: successes[o], best: successes[best]}, {o: trials[o], best: trials[best]}, alpha)
                 for o in others]
        tests = " and ".join(f"{test}s" for test in sorted({pair.test for pair in pairs}))
        winner = _pairwise_winner(best, others, [pair.p_value for pair in pairs], alpha, tests, notes)
    return ProportionResult(
        variants=variants, test=CHI2_TEST, statistic=statistic, p_value=p, alpha=alpha, significant=significant,
        winner=winner, higher_is_better=higher_is_better, notes=tuple(notes),
    )


def _pairwise_winner(best: str, others: list[str], pvals: list[float], alpha: float, tests: str, notes: list[str]) -> str | None:
    """`best` if it beats every other variant after Holm's adjustment (which controls the family-wise error); `tests`
    names the pairwise tests ("Welch's t-tests")."""
    reject, adjusted, _, _ = multipletests(pvals, alpha=alpha, method="holm")
    if all(reject):
        notes.append(f"{best} beats each other variant in Holm-adjusted pairwise {tests}")
        return best
    tied = [o for o, r in zip(others, reject) if not r]
    adjusted_p = ", ".join(f"{q:.3g}" for q, r in zip(adjusted, reject) if not r)
    notes.append(f"{best} is not significantly better than {', '.join(tied)} "
                 f"in Holm-adjusted pairwise {tests} (adjusted p = {adjusted_p})")
    return None


# -- means --------------------------------------------------------------------------------------


def _mean_ci(x: np.ndarray, alpha: float) -> tuple[float, float]:
    mean = float(x.mean())
    if np.ptp(x) == 0:  # a constant sample: the interval collapses (scipy would give NaN)
        return mean, mean
    low, high = sps.ttest_1samp(x, 0.0).confidence_interval(confidence_level=1 - alpha)
    return float(low), float(high)


def _welch(b: np.ndarray, a: np.ndarray, alpha: float) -> tuple[float, float, tuple[float, float], str | None]:
    """Welch's t-test of mean(b) - mean(a): (t, p, interval, note). Two constant samples have no
    standard error: equal means give p = 1.0, different ones an exact difference (p = 0.0)."""
    diff = float(b.mean() - a.mean())
    if np.ptp(a) == 0 and np.ptp(b) == 0:
        if diff == 0:
            return 0.0, 1.0, (0.0, 0.0), "all values are identical: the t-test is undefined (no variance), so p = 1.0"
        return (math.copysign(math.inf, diff), 0.0, (diff, diff),
                "each variant's values are constant and they differ: the difference is exact (no variance), so p = 0.0")
    with warnings.catch_warnings():
        if np.ptp(a) == 0 or np.ptp(b) == 0:  # one constant sample is fine for Welch, but scipy warns about it
            warnings.filterwarnings("ignore", "Precision loss occurred in moment calculation", RuntimeWarning)
        res = sps.ttest_ind(b, a, equal_var=False)
    if hasattr(res, "confidence_interval"):
        low, high = res.confidence_interval(confidence_level=1 - alpha)
    else:  # scipy < 1.10: the same Welch-Satterthwaite interval from statsmodels
        from statsmodels.stats.weightstats import CompareMeans, DescrStatsW

        low, high = CompareMeans(DescrStatsW(b), DescrStatsW(a)).tconfint_diff(alpha=alpha, usevar="unequal")
    return float(res.statistic), float(res.pvalue), (float(low), float(high)), None


def _welch_anova(arrays: list[np.ndarray]) -> tuple[float, float]:
    if "equal_var" in inspect.signature(sps.f_oneway).parameters:  # scipy >= 1.15
        res = sps.f_oneway(*arrays, equal_var=False)
        return float(res.statistic), float(res.pvalue)
    from statsmodels.stats.oneway import anova_oneway

    res = anova_oneway(arrays, use_var="unequal", welch_correction=True)
    return float(res.statistic), float(res.pvalue)


def compare_means(
    samples: Mapping[str, Sequence[float]], alpha: float = 0.05, *, higher_is_better: bool = True
) -> MeanResult:
    """Compare mean scores (ratings, latencies, judge scores) between variants.

    Two variants: Welch's t-test (scipy ttest_ind, equal_var=False), which does not assume equal
    variances, with its Welch-Satterthwaite interval for mean(b) - mean(a). Three or more: Welch's
    one-way ANOVA (Welch 1951; scipy f_oneway equal_var=False, statsmodels anova_oneway on older
    scipy); if some variant is constant its weight 1/variance is infinite, so the rank-based
    Kruskal-Wallis H-test (scipy kruskal) is used instead and a note says so. `test` names the
    test used. `higher_is_better=False` for scores to minimise (latency, cost).
    """
    check_alpha(alpha)
    arrays = _check_samples(samples)
    names = list(arrays)
    variants = {}
    for name, x in arrays.items():
        low, high = _mean_ci(x, alpha)
        variants[name] = VariantMean(n=int(x.size), mean=float(x.mean()), std=float(x.std(ddof=1)), ci_low=low, ci_high=high)
    means = {name: v.mean for name, v in variants.items()}
    notes: list[str] = []

    if len(names) == 2:
        a, b = names
        statistic, p, ci, note = _welch(arrays[b], arrays[a], alpha)
        notes += [note] if note else []
        significant = p < alpha
        return MeanResult(
            variants=variants, test=WELCH_T, statistic=statistic, p_value=p, alpha=alpha, significant=significant,
            winner=_best(means, higher_is_better) if significant else None,
            difference=variants[b].mean - variants[a].mean, difference_ci=ci,
            higher_is_better=higher_is_better, notes=tuple(notes),
        )

    pooled = np.concatenate(list(arrays.values()))
    if np.ptp(pooled) == 0:
        test, statistic, p = NO_TEST, 0.0, 1.0
        notes.append("all values are identical: no test is defined (no variance), so p = 1.0")
    elif any(np.ptp(x) == 0 for x in arrays.values()):
        constant = [name for name, x in arrays.items() if np.ptp(x) == 0]
        res = sps.kruskal(*arrays.values())
        test, statistic, p = KRUSKAL, float(res.statistic), float(res.pvalue)
        notes.append(f"constant values in {', '.join(constant)} leave Welch's ANOVA undefined (zero variance); "
                     "used the Kruskal-Wallis H-test (ranks) instead")
    else:
        test = WELCH_ANOVA
        statistic, p = _welch_anova(list(arrays.values()))
    significant = p < alpha
    winner = None
    if significant:
        best = _best(means, higher_is_better)
        others = [name for name in names if name != best]
        pvals = [_welch(arrays[best], arrays[o], alpha)[1] for o in others]
        winner = _pairwise_winner(best, others, pvals, alpha, f"{WELCH_T}s", notes)
    return MeanResult(
        variants=variants, test=test, statistic=statistic, p_value=p, alpha=alpha, significant=significant,
        winner=winner, higher_is_better=higher_is_better, notes=tuple(notes),
    )


# -- sample size --------------------------------------------------------------------------------


def _check_power(alpha: float, power: float, ratio: float) -> None:
    check_alpha(alpha)
    if not 0 < power < 1:
        raise ValueError(f"power must be between 0 and 1 (exclusive), got {power}")
    if ratio <= 0:
        raise ValueError(f"ratio (n of the second variant / n of the first) must be positive, got {ratio}")


def sample_size_proportions(
    baseline: float, minimum_detectable_effect: float, alpha: float = 0.05, power: float = 0.8, ratio: float = 1.0
) -> int:
    """Users per variant to detect an absolute change of `minimum_detectable_effect` (0.1 = 10
    points) from the `baseline` rate with a two-sided test: statsmodels NormalIndPower on Cohen's h
    (arcsine effect size, proportion_effectsize). Returns the first variant's n (rounded up); with
    `ratio` != 1 the second variant needs ratio times as many. (0.5, 0.1) gives 388 per arm.
    """
    _check_power(alpha, power, ratio)
    target = baseline + minimum_detectable_effect
    if not 0 < baseline < 1:
        raise ValueError(f"baseline rate must be between 0 and 1 (exclusive), got {baseline}")
    if minimum_detectable_effect == 0 or not 0 < target < 1:
        raise ValueError(f"baseline + minimum_detectable_effect must be a different rate in (0, 1), got {target:g}")
    h = abs(proportion_effectsize(target, baseline))
    n = NormalIndPower().solve_power(effect_size=h, alpha=alpha, power=power, ratio=ratio, alternative="two-sided")
    return math.ceil(float(n))


def sample_size_means(
    std: float, minimum_detectable_effect: float, alpha: float = 0.05, power: float = 0.8, ratio: float = 1.0
) -> int:
    """Observations per variant to detect a difference of means of `minimum_detectable_effect`
    (in the metric's units) when its standard deviation is `std`: statsmodels TTestIndPower on
    Cohen's d = effect / std, two-sided. Cohen's d = 0.5 at alpha 0.05, power 0.8 gives 64."""
    _check_power(alpha, power, ratio)
    if std <= 0:
        raise ValueError(f"std must be positive, got {std}")
    if minimum_detectable_effect == 0:
        raise ValueError("minimum_detectable_effect must not be 0")
    d = abs(minimum_detectable_effect) / std
    n = TTestIndPower().solve_power(effect_size=d, alpha=alpha, power=power, ratio=ratio, alternative="two-sided")
    return math.ceil(float(n))


# -- fixed horizon and verdict ------------------------------------------------------------------


@dataclass(frozen=True)
class Horizon:
    """A fixed-horizon design: the n per variant, planned before the test starts, at which the
    result is read once. Reading p-values as data arrive and stopping at the first p < alpha
    makes a false winner far more likely than alpha (the "peeking" problem)."""

    per_variant: int

    def __post_init__(self) -> None:
        if int(self.per_variant) != self.per_variant or self.per_variant < 2:
            raise ValueError(f"horizon must be a whole number of at least 2 per variant, got {self.per_variant}")

    @classmethod
    def for_proportions(
        cls, baseline: float, minimum_detectable_effect: float, alpha: float = 0.05, power: float = 0.8
    ) -> Horizon:
        return cls(sample_size_proportions(baseline, minimum_detectable_effect, alpha, power))

    @classmethod
    def for_means(cls, std: float, minimum_detectable_effect: float, alpha: float = 0.05, power: float = 0.8) -> Horizon:
        return cls(sample_size_means(std, minimum_detectable_effect, alpha, power))


@dataclass(frozen=True)
class Verdict:
    """What to tell people. `decided` is False until every variant reaches the horizon; until then
    `winner` is None whatever the p-value."""

    decided: bool
    winner: str | None
    significant: bool  # only meaningful once decided
    message: str
    method: str  # "fixed horizon of 1000 per variant, alpha 0.05, two-sided; two-proportion z-test"
    n_per_variant: int
    horizon: int


def format_p(p: float, alpha: float | None = None) -> str:
    """p for a sentence; with `alpha`, never rounded onto or across it (0.0455 read "p = 0.05" in a verdict of
    significance at 0.05)."""
    if p < 0.0001:
        return "p < 0.0001"
    places = 4 if p < 0.001 else 3 if p < 0.01 else 2
    while alpha is not None and places < 8 and (round(p, places) == alpha or (round(p, places) < alpha) != (p < alpha)):
        places += 1
    return f"p = {p:.{places}f}"


def _fmt_alpha(alpha: float) -> str:
    return f"{alpha:g}"


def verdict(
    result: ProportionResult | MeanResult, horizon: Horizon, n_per_variant: int | None = None, *, outcome: str = "positive"
) -> Verdict:
    """A plain-words reading of `result` under a fixed-horizon design.

    `n_per_variant` (e.g. users enrolled, when one user gives several samples) defaults to the
    smallest variant's n in the result; the guard uses the smaller of the two, so a caller cannot
    talk it past the data. `outcome` names what a proportion counts ("positive", "thumbs-up").
    """
    smallest = min(v.n for v in result.variants.values())
    n = smallest if n_per_variant is None else min(int(n_per_variant), smallest)
    method = f"fixed horizon of {horizon.per_variant} per variant, alpha {_fmt_alpha(result.alpha)}, two-sided; {result.test}"
    if n < horizon.per_variant:
        message = (f"keep collecting: {n} of {horizon.per_variant} per variant; "
                   "looking before the horizon inflates false positives")
        return Verdict(False, None, False, message, method, n, horizon.per_variant)
    return Verdict(True, result.winner, result.significant, _sentence(result, outcome), method, n, horizon.per_variant)


def _sentence(result: ProportionResult | MeanResult, outcome: str) -> str:
    is_prop = isinstance(result, ProportionResult)
    level = f"{(1 - result.alpha) * 100:g}% CI"

    def value(name: str) -> str:
        v = result.variants[name]
        return f"{v.rate * 100:.1f}%" if is_prop else f"{v.mean:.4g}"  # type: ignore[union-attr]

    def signed(x: float) -> str:
        return f"{x * 100:+.1f}" if is_prop else f"{x:+.4g}"

    unit = " points" if is_prop else ""
    tail = f" {outcome}" if is_prop else ""
    names = list(result.variants)
    if len(names) == 2:
        a, b = names
        diff, (low, high) = result.difference, result.difference_ci  # b - a
        assert diff is not None
        # The interval (Newcombe's, for proportions) and the test can disagree near the threshold at small sizes
        borderline = ("; the interval and the test disagree at this size: a borderline result, worth more data"
                      if (low <= 0 <= high) == result.significant else "")
        if result.winner is not None:
            loser = a if result.winner == b else b
            if result.winner == a:  # state the difference as winner - loser
                diff, low, high = -diff, -high, -low
            return (f"{result.winner} is better than {loser}: {value(result.winner)} vs {value(loser)}{tail} "
                    f"(difference {signed(diff)}{unit}, {level} {signed(low)} to {signed(high)}, "
                    f"{format_p(result.p_value, result.alpha)}, {result.test}){borderline}")
        return (f"no significant difference between {a} and {b}: {value(a)} vs {value(b)}{tail} "
                f"({b} - {a} = {signed(diff)}{unit}, {level} {signed(low)} to {signed(high)}, "
                f"{format_p(result.p_value, result.alpha)}, {result.test}){borderline}")
    listing = ", ".join(f"{name} {value(name)}" for name in names) + tail
    evidence = f"{format_p(result.p_value, result.alpha)}, {result.test}"
    if result.winner is not None:
        return f"{result.winner} is the best of {len(names)} variants: {listing} ({evidence}; {result.notes[-1]})"
    if result.significant:
        return f"the variants differ but none is clearly the best: {listing} ({evidence}; {result.notes[-1]})"
    return f"no significant difference between the {len(names)} variants: {listing} ({evidence})"

