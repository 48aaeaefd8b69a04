"""Drift of live traffic against the training data: inputs (lengths, vocabulary) and predictions.

Pure functions over numbers and strings; the monitoring report calls them.

    psi            population stability index: numeric values binned on the training data's
                   quantiles, categorical values (predicted labels) by category
    two_sample     Kolmogorov-Smirnov (numeric, scipy ks_2samp) or Pearson chi-square on the
                   2 x categories table of counts (categorical, scipy chi2_contingency)
    oov_rate       share of live word tokens never seen in training; vocabulary_of builds the set
    drift_report   all of the above with thresholds and plain-words warnings

PSI measures how far the distribution moved; the tests say whether the move is more than sampling
noise. With thousands of live examples a test flags shifts too small to matter, and with a few
dozen PSI is noisy, so a warning needs both: PSI over its threshold and p below `p_value`.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from numbers import Real
from typing import Any, NamedTuple

import numpy as np
from scipy import stats as sps

from tunesmith.monitor.stats import format_p

# Conventional PSI bands (Siddiqi, "Credit Risk Scorecards", 2006; industry practice since):
# below 0.1 the population is stable, 0.1 to 0.25 a moderate shift worth watching, above 0.25 a
# significant shift that calls for a look at the data and probably retraining.
PSI_MODERATE = 0.1
PSI_SIGNIFICANT = 0.25
# Share given to a bin that one side leaves empty: ln(0) would make PSI infinite, and one new or
# vanished category should raise PSI a lot, not break it.
PSI_EPSILON = 1e-4
# A heuristic, not a convention: 10 % of live tokens unseen in training means the inputs use words
# the model was not tuned on. Domains with many names or codes may want it higher.
OOV_RATE_THRESHOLD = 0.10

TOKEN = re.compile(r"\w+")
KS_TEST = "Kolmogorov-Smirnov"
CHI2_TEST = "chi-square"
INSUFFICIENT = "insufficient data"  # the status of a signal with fewer live examples than DriftThresholds.min_live

Values = Sequence[float] | Sequence[str]


class TwoSampleResult(NamedTuple):
    test: str
    statistic: float
    p_value: float


# -- checks -------------------------------------------------------------------------------------


def _is_categorical(values: Iterable[Any], what: str) -> bool:
    """True for labels (str or bool), False for numbers; ValueError for empty or mixed input."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "iuf":
        if values.size == 0:
            raise ValueError(f"{what} is empty")
        return False
    kinds = set()
    for v in values:
        if isinstance(v, (str, bool, np.bool_)):
            kinds.add("categorical")
        elif isinstance(v, (Real, np.number)):
            kinds.add("numeric")
        else:
            raise ValueError(f"{what} holds a {type(v).__name__} ({v!r}); expected numbers or labels (str)")
    if not kinds:
        raise ValueError(f"{what} is empty")
    if len(kinds) > 1:
        raise ValueError(f"{what} mixes numbers and labels")
    return kinds == {"categorical"}


def _kind(expected: Values, actual: Values) -> bool:
    categorical = _is_categorical(expected, "expected (training) data")
    if _is_categorical(actual, "actual (live) data") != categorical:
        raise ValueError("expected and actual must both be numbers or both be labels")
    return categorical


def _numbers(values: Values, what: str) -> np.ndarray:
    x = np.asarray(values, dtype=float).ravel()
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{what} has NaN or infinite values")
    return x


# -- PSI and tests ------------------------------------------------------------------------------


def _shares(counts: np.ndarray) -> np.ndarray:
    return np.maximum(counts / counts.sum(), PSI_EPSILON)


def _category_counts(expected: Values, actual: Values) -> tuple[list[Any], np.ndarray, np.ndarray]:
    ce, ca = Counter(expected), Counter(actual)
    categories = sorted(set(ce) | set(ca), key=str)
    return categories, np.array([ce[c] for c in categories], float), np.array([ca[c] for c in categories], float)



def drift_confirmed(figures: dict[str, Any]) -> bool:
    """A signal's drift as the report warns of it and the /metrics gauge shows it: PSI over its threshold and the
    two-sample test agreeing (the vocabulary: its out-of-vocabulary rate over its threshold), over at least
    DriftThresholds.min_live live examples (below it the status is INSUFFICIENT, never confirmed). On PSI alone the gauge
    had fired on a handful of requests after a deploy (labels PSI 0.54, chi-square p 0.11)."""
    if figures.get("status") == "drifted":
        return True
    p, threshold = figures.get("p_value"), figures.get("p_value_threshold")
    return figures.get("status") == "significant" and p is not None and threshold is not None and p < threshold

def psi(expected: Values, actual: Values, bins: int = 10) -> float:
    """Population stability index: sum over bins of (a - e) * ln(a / e), with e and a the shares of
    the expected (training) and actual (live) data in each bin.

    Numbers are binned on the expected data's quantiles (deciles for bins=10), so each bin holds
    about 1/bins of the training data; live values below the training minimum or above its
    maximum get a bin of their own on each side (training leaves them empty), so a shift past a
    tied top or bottom still shows. Tied quantiles (e.g. integer lengths) merge bins. Labels (str or
    bool; pass integer label ids as str) are compared category by category over the union of both sides. An empty bin gets
    PSI_EPSILON. Thresholds: PSI_MODERATE (0.1), PSI_SIGNIFICANT (0.25).
    """
    if bins < 2:
        raise ValueError(f"bins must be at least 2, got {bins}")
    if _kind(expected, actual):
        _, e_counts, a_counts = _category_counts(expected, actual)
    else:
        e, a = _numbers(expected, "expected (training) data"), _numbers(actual, "actual (live) data")
        # Values outside the training range get a bin of their own on each side: with the top values tied (constant
        # lengths) the open top bin held the training values too, and a shift from 1 word to 12 read PSI 0.0.
        edges = np.unique(np.concatenate([[e.min()], np.quantile(e, np.linspace(0, 1, bins + 1)[1:-1])]))
        top = e.max()

        def counts(x: np.ndarray) -> np.ndarray:
            index = np.where(x > top, edges.size + 1, np.searchsorted(edges, x, side="right"))
            return np.bincount(index, minlength=edges.size + 2).astype(float)

        e_counts, a_counts = counts(e), counts(a)
    pe, pa = _shares(e_counts), _shares(a_counts)
    return float(np.sum((pa - pe) * np.log(pa / pe)))


def two_sample(expected: Values, actual: Values) -> TwoSampleResult:
    """Do the two samples come from one distribution? Numbers: two-sample Kolmogorov-Smirnov test
    (scipy ks_2samp, two-sided). Labels: Pearson chi-square test of homogeneity on the
    2 x categories table of counts (scipy chi2_contingency, no Yates correction); a single shared
    category has nothing to test (statistic 0, p 1). Returns (test, statistic, p_value)."""
    if _kind(expected, actual):
        _, e_counts, a_counts = _category_counts(expected, actual)
        res = sps.chi2_contingency(np.vstack([e_counts, a_counts]), correction=False)
        return TwoSampleResult(CHI2_TEST, float(res.statistic), float(res.pvalue))
    e, a = _numbers(expected, "expected (training) data"), _numbers(actual, "actual (live) data")
    res = sps.ks_2samp(e, a)
    return TwoSampleResult(KS_TEST, float(res.statistic), float(res.pvalue))


# -- vocabulary ---------------------------------------------------------------------------------


def _tokens(text: str) -> list[str]:
    return TOKEN.findall(text.lower())


def vocabulary_of(texts: Iterable[str]) -> set[str]:
    """The lowercased word tokens (regex \\w+) of `texts`: the training vocabulary for oov_rate."""
    return {token for text in texts for token in _tokens(text)}


def oov_rate(texts: Iterable[str], vocabulary: set[str] | Callable[[str], bool]) -> float:
    """Share of the word tokens of `texts` (lowercased, regex \\w+, counted with repeats) that are
    not in the training `vocabulary`: a set of lowercased tokens (see vocabulary_of) or a callable
    token -> known (e.g. a tokenizer's vocabulary lookup). No tokens at all gives 0.0."""
    known = vocabulary if callable(vocabulary) else vocabulary.__contains__
    total = unseen = 0
    for text in texts:
        for token in _tokens(text):
            total += 1
            unseen += not known(token)
    return unseen / total if total else 0.0


# -- report -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DriftThresholds:
    psi_moderate: float = PSI_MODERATE
    psi_significant: float = PSI_SIGNIFICANT
    p_value: float = 0.01  # the two-sample test must also say "not noise" before a PSI warning
    oov_rate: float = OOV_RATE_THRESHOLD
    min_live: int = 100  # fewer live examples (or texts) than this: too few to judge, status "insufficient data"


def _status(value: float, t: DriftThresholds) -> str:
    if value > t.psi_significant:
        return "significant"
    return "moderate" if value >= t.psi_moderate else "stable"


def _fmt_psi(value: float, threshold: float) -> str:
    text = f"{value:.2f}"
    return f"{value:.4f}" if text == f"{threshold:.2f}" else text  # never "PSI 0.25 > 0.25"


@dataclass
class DriftReport:
    """Each metric (a dict with its value, threshold and status), the thresholds used and the
    warnings in plain words. `to_dict()` is JSON-ready."""

    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    thresholds: DriftThresholds = field(default_factory=DriftThresholds)

    def to_dict(self) -> dict[str, Any]:
        return {**self.metrics, "thresholds": asdict(self.thresholds), "warnings": list(self.warnings)}

    def _distribution(self, key: str, subject: str, expected: Values, actual: Values, detail: str) -> dict[str, Any]:
        t = self.thresholds
        value = psi(expected, actual)
        test = two_sample(expected, actual)
        # Too few live examples decide nothing: two requests ("hi", "thanks") after a deploy had confirmed length drift
        # (KS p 1e-6) and set the server's warning gauge.
        enough = len(actual) >= t.min_live
        status = _status(value, t) if enough else INSUFFICIENT
        metric = {
            "psi": value, "status": status, "threshold": t.psi_significant, "moderate_threshold": t.psi_moderate,
            "test": test.test, "statistic": test.statistic, "p_value": test.p_value, "p_value_threshold": t.p_value,
            "n_train": len(expected), "n_live": len(actual),
        }
        self.metrics[key] = metric
        evidence = f"{test.test} {format_p(test.p_value, t.p_value)}{detail}"
        over = f"PSI {_fmt_psi(value, t.psi_significant)} > {t.psi_significant:g}"
        if not enough:
            self.warnings.append(f"only {len(actual)} live examples for the {subject}: too few to judge drift "
                                 f"(it needs {t.min_live}; so far PSI {value:.2f}, {evidence})")
        elif drift_confirmed(metric):
            self.warnings.append(f"{subject} drifted: {over} ({evidence})")
        elif status == "significant":
            self.warnings.append(f"{subject} may have drifted: {over}, "
                                 f"but the {test.test} test does not confirm it ({evidence}); collect more live data")
        elif status == "moderate" and test.p_value < t.p_value:
            self.warnings.append(f"{subject} shifted moderately: PSI {value:.2f} (between {t.psi_moderate:g} and "
                                 f"{t.psi_significant:g}; {evidence}); worth watching")
        return metric


def drift_report(
    train_lengths: Sequence[float] | None = None,
    live_lengths: Sequence[float] | None = None,
    train_labels: Sequence[str] | None = None,
    live_labels: Sequence[str] | None = None,
    train_vocab: set[str] | Callable[[str], bool] | None = None,
    live_texts: Sequence[str] | None = None,
    thresholds: DriftThresholds = DriftThresholds(),
) -> dict[str, Any]:
    """Drift of live traffic against the training data, as a JSON-ready dict:

        lengths     input lengths: psi, status (stable | moderate | significant), threshold,
                    moderate_threshold, test (Kolmogorov-Smirnov), statistic, p_value,
                    p_value_threshold, n_train, n_live, train_mean, live_mean
        labels      predicted labels: the same keys (test: chi-square) plus shares
                    {label: {train, live}}; the label lists are occurrences, and a multi-label
                    answer or example with no label should be there as a category of its own
                    (monitor.live.NO_LABEL), or a rise of "none applies" answers goes unseen
        vocabulary  oov_rate, threshold, status (ok | drifted), n_texts, vocabulary_size
        thresholds  the DriftThresholds used
        warnings    plain-words sentences, e.g. "prediction distribution drifted: PSI 0.31 > 0.25 (...)"

    A signal with fewer live examples (texts, for the vocabulary) than thresholds.min_live has the
    status "insufficient data" (INSUFFICIENT) and no drift warning, only its figures and a line saying so.

    A pair left as None (or empty on either side) is skipped: a generation task has no labels.
    """
    report = DriftReport(thresholds=thresholds)
    if train_lengths is not None and live_lengths is not None and len(train_lengths) and len(live_lengths):
        e, a = _numbers(train_lengths, "train_lengths"), _numbers(live_lengths, "live_lengths")
        detail = f"; mean length {e.mean():.1f} -> {a.mean():.1f}"
        metric = report._distribution("lengths", "input length distribution", e, a, detail)
        metric.update(train_mean=float(e.mean()), live_mean=float(a.mean()))
    if train_labels is not None and live_labels is not None and len(train_labels) and len(live_labels):
        train_labels, live_labels = [str(x) for x in train_labels], [str(x) for x in live_labels]  # ids are labels, not numbers
        labels, e_counts, a_counts = _category_counts(train_labels, live_labels)
        e_share, a_share = e_counts / e_counts.sum(), a_counts / a_counts.sum()
        moved = int(np.argmax(np.round(np.abs(a_share - e_share), 12)))  # the label that moved most; ties: first
        detail = f"; {str(labels[moved])!r} {e_share[moved]:.1%} -> {a_share[moved]:.1%}"
        metric = report._distribution("labels", "prediction distribution", train_labels, live_labels, detail)
        metric["shares"] = {str(c): {"train": float(s), "live": float(q)} for c, s, q in zip(labels, e_share, a_share)}
    if train_vocab is not None and live_texts is not None and len(live_texts):
        rate = oov_rate(live_texts, train_vocab)
        over = rate > thresholds.oov_rate
        enough = len(live_texts) >= thresholds.min_live  # one request "Merci beaucoup" had read as vocabulary drift
        report.metrics["vocabulary"] = {
            "oov_rate": rate, "threshold": thresholds.oov_rate,
            "status": INSUFFICIENT if not enough else "drifted" if over else "ok",
            "n_texts": len(live_texts), "vocabulary_size": None if callable(train_vocab) else len(train_vocab),
        }
        if over:
            few = "" if enough else f", but only {len(live_texts)} live texts: too few to judge (it needs {thresholds.min_live})"
            report.warnings.append(f"live texts use words unseen in training: {rate:.1%} of tokens "
                                   f"> {thresholds.oov_rate:.0%}{few}")
    return report.to_dict()

