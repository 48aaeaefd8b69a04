"""Two models on the same examples: is one really better, or is the difference noise?

Paired tests use that both models answered the very same examples, which makes them far more
sensitive than comparing two accuracies as if they came from different samples:

    McNemar (classification)      only the examples the models disagree on carry information: b =
                                  only the candidate is right, c = only the reference is; the exact
                                  binomial test of b against b + c (valid at any size, unlike the
                                  chi-square approximation under ~25 disagreements).
    Wilcoxon signed-rank          (regression) on the per-example absolute errors: no normality
                                  assumption, robust to a few huge errors (scipy).
    Wilcoxon on Hamming errors    (multi-label) on the per-example count of wrong label decisions:
                                  an exact label-set match hides a candidate that gets more labels
                                  wrong on the examples it already missed; the example stays the
                                  unit, as its label decisions are not independent of each other.

Pure functions over arrays; retraining and reports call them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass
class PairedComparison:
    test: str  # "McNemar (exact)" or "Wilcoxon signed-rank"
    n: int  # examples both models answered
    metric: str  # what `reference` and `candidate` hold: accuracy, label_accuracy (1 - Hamming loss) or mae
    reference: float
    candidate: float
    p_value: float  # two-sided: is there any difference?
    p_better: float  # one-sided: is the candidate better?
    p_worse: float  # one-sided: is the candidate worse?
    detail: dict[str, Any]  # McNemar: discordant counts; Wilcoxon: improved/worsened examples

    @property
    def difference(self) -> float:
        """Candidate minus reference, signed so that positive is better."""
        d = self.candidate - self.reference
        return -d if self.metric == "mae" else d

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "difference": self.difference}


def _check(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise ValueError(f"paired samples need the same examples: {a.shape} vs {b.shape}")


def mcnemar(truth: Any, reference: Any, candidate: Any) -> PairedComparison:
    """Classification: which model labels the shared examples right (labels compared as given)."""
    truth, ref, cand = list(truth), list(reference), list(candidate)  # lists: multi-label answers are lists
    if not len(truth) == len(ref) == len(cand):
        raise ValueError(f"paired samples need the same examples: {len(truth)}, {len(ref)} and {len(cand)} answers")
    ref_ok = np.array([_same(t, r) for t, r in zip(truth, ref, strict=True)], dtype=bool)
    cand_ok = np.array([_same(t, c) for t, c in zip(truth, cand, strict=True)], dtype=bool)
    b = int(np.sum(cand_ok & ~ref_ok))  # only the candidate is right
    c = int(np.sum(ref_ok & ~cand_ok))  # only the reference is right
    n = len(truth)
    p = p_better = p_worse = 1.0
    if b + c:
        from scipy.stats import binomtest

        p = float(binomtest(b, b + c, 0.5).pvalue)
        p_better = float(binomtest(b, b + c, 0.5, alternative="greater").pvalue)
        p_worse = float(binomtest(b, b + c, 0.5, alternative="less").pvalue)
    return PairedComparison(test="McNemar (exact)", n=n, metric="accuracy", reference=float(ref_ok.mean()) if n else 0.0,
                            candidate=float(cand_ok.mean()) if n else 0.0, p_value=p, p_better=p_better, p_worse=p_worse,
                            detail={"only_candidate_right": b, "only_reference_right": c,
                                    "both_right": int(np.sum(ref_ok & cand_ok)), "both_wrong": int(np.sum(~ref_ok & ~cand_ok))})


def _same(truth: Any, predicted: Any) -> bool:
    """Multi-label answers are right when the label sets are equal: label names as sets, 0/1 indicator rows (the
    metrics' form) element by element (as sets, [1, 0, 0] and [0, 1, 0] were both {0, 1}, so equal)."""
    if isinstance(truth, np.ndarray) and isinstance(predicted, np.ndarray) and truth.dtype.kind in "biuf":
        return bool(np.array_equal(truth, predicted))
    if isinstance(truth, list | tuple | np.ndarray) or isinstance(predicted, list | tuple | np.ndarray):
        return set(truth) == set(predicted)
    return bool(truth == predicted)


def wilcoxon_errors(truth: Any, reference: Any, candidate: Any) -> PairedComparison:
    """Regression: are the candidate's absolute errors smaller, example by example?"""
    truth, ref, cand = (np.asarray(x, dtype=float) for x in (truth, reference, candidate))
    _check(truth, ref)
    _check(truth, cand)
    ref_err, cand_err = np.abs(ref - truth), np.abs(cand - truth)
    n = len(truth)
    p, p_better, p_worse, detail = _signed_rank(ref_err, cand_err)
    return PairedComparison(test="Wilcoxon signed-rank", n=n, metric="mae",
                            reference=float(ref_err.mean()) if n else 0.0, candidate=float(cand_err.mean()) if n else 0.0,
                            p_value=p, p_better=p_better, p_worse=p_worse,
                            detail={"candidate_closer": detail[0], "reference_closer": detail[1], "ties": detail[2]})


def wilcoxon_hamming(truth: Any, reference: Any, candidate: Any, n_labels: int) -> PairedComparison:
    """Multi-label: does the candidate make fewer wrong label decisions, example by example? Reported as label
    accuracy (1 - Hamming loss over `n_labels` labels), so a tolerance reads the same as for accuracy."""
    truth, ref, cand = list(truth), list(reference), list(candidate)
    if not len(truth) == len(ref) == len(cand):
        raise ValueError(f"paired samples need the same examples: {len(truth)}, {len(ref)} and {len(cand)} answers")
    if n_labels < 1:
        raise ValueError(f"label accuracy needs the number of labels, got {n_labels}")
    ref_err = np.array([_hamming(t, r) for t, r in zip(truth, ref, strict=True)], dtype=float)
    cand_err = np.array([_hamming(t, c) for t, c in zip(truth, cand, strict=True)], dtype=float)
    n = len(truth)
    p, p_better, p_worse, detail = _signed_rank(ref_err, cand_err)
    return PairedComparison(test="Wilcoxon signed-rank on Hamming errors", n=n, metric="label_accuracy",
                            reference=1.0 - float(ref_err.mean()) / n_labels if n else 0.0,
                            candidate=1.0 - float(cand_err.mean()) / n_labels if n else 0.0,
                            p_value=p, p_better=p_better, p_worse=p_worse,
                            detail={"candidate_fewer_errors": detail[0], "reference_fewer_errors": detail[1],
                                    "ties": detail[2], "reference_wrong_labels": int(ref_err.sum()),
                                    "candidate_wrong_labels": int(cand_err.sum())})


def _hamming(truth: Any, predicted: Any) -> int:
    """Wrong label decisions in one answer: 0/1 indicator rows element by element, label names as sets (a label
    missed and a label added each count once)."""
    if isinstance(truth, np.ndarray) and isinstance(predicted, np.ndarray) and truth.dtype.kind in "biuf":
        return int(np.sum(truth != predicted))
    return len(set(truth) ^ set(predicted))


def _signed_rank(ref_err: np.ndarray, cand_err: np.ndarray) -> tuple[float, float, float, tuple[int, int, int]]:
    """Two-sided, candidate-better and candidate-worse p-values of the paired errors, and (candidate closer,
    reference closer, ties); no difference at all is no evidence (p = 1), not an error."""
    from scipy.stats import wilcoxon

    diff = ref_err - cand_err  # > 0: the candidate errs less
    counts = (int(np.sum(diff > 0)), int(np.sum(diff < 0)), int(np.sum(diff == 0)))
    if len(diff) == 0 or not np.any(diff):
        return 1.0, 1.0, 1.0, counts
    return (float(wilcoxon(ref_err, cand_err).pvalue), float(wilcoxon(ref_err, cand_err, alternative="greater").pvalue),
            float(wilcoxon(ref_err, cand_err, alternative="less").pvalue), counts)
