"""Metrics for the three supervised task types, as JSON-ready dicts (plain floats, ints, lists).

Labels are integer ids into `labels` (the dataset's id -> name list), as stored in label_id.
Inputs are checked up front: a wrong shape or an out-of-range id raises ValueError saying what
was expected, instead of a confusing sklearn error or, worse, a silently wrong number.

Classification dicts share their keys so reports can treat them alike:
    n, accuracy, {precision,recall,f1}_{macro,micro,weighted}, per_class {label: {precision,
    recall, f1, support}}, labels, confusion_matrix (rows = true, cols = predicted),
    and with probabilities: log_loss, roc_auc (None plus roc_auc_note when undefined).
Multi-label dicts: n, subset_accuracy, hamming_loss, f1_{micro,macro,weighted,samples},
    per_class, labels, and with probabilities roc_auc_macro (+ roc_auc_note).
Regression dicts: n, mae, mse, rmse, r2, pearson, spearman (None where undefined:
    R² on a constant target, correlations on constant values).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats
from sklearn import metrics as skm

from tunesmith.html_report import display_width, pad_to_width, short_labels
from tunesmith.tasks.sequence import occurring_labels

TEXT_LIMIT = 300  # characters of an example shown in a report; enough to judge, short enough to scan


# -- checks -------------------------------------------------------------------------------------


def _check_labels(labels: Sequence[str]) -> list[str]:
    labels = [str(x) for x in labels]
    if len(labels) < 2:
        raise ValueError(f"need at least 2 labels, got {labels}")
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels must be unique, got {labels}")
    return labels


def _check_ids(name: str, ids: Sequence[int] | np.ndarray, k: int) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a flat list of label ids, got shape {arr.shape}")
    whole = arr.dtype.kind in "iu" or (arr.dtype.kind in "fb" and np.all(np.mod(arr, 1) == 0))
    if arr.size and not whole:
        raise ValueError(f"{name} must hold integer label ids 0..{k - 1} (the index into labels), got {arr[:5].tolist()}")
    arr = arr.astype(int)
    bad = arr[(arr < 0) | (arr >= k)]
    if bad.size:
        raise ValueError(f"{name} holds label ids outside 0..{k - 1} (there are {k} labels): {sorted(set(bad.tolist()))[:10]}")
    return arr


def _check_proba(proba: np.ndarray | Sequence[Sequence[float]], n: int, k: int, rows_sum_to_1: bool) -> np.ndarray:
    p = np.asarray(proba, dtype=float)
    if p.shape != (n, k):
        raise ValueError(f"proba must have shape (n examples, n labels) = ({n}, {k}), got {p.shape}")
    if not np.all(np.isfinite(p)) or p.min(initial=0) < 0 or p.max(initial=0) > 1:
        raise ValueError("proba must hold probabilities in [0, 1] (apply softmax/sigmoid to logits first)")
    if rows_sum_to_1 and n and not np.allclose(p.sum(axis=1), 1.0, atol=1e-3):
        worst = int(np.argmax(np.abs(p.sum(axis=1) - 1)))
        raise ValueError(f"proba rows must sum to 1 (softmax output); row {worst} sums to {p[worst].sum():.4f}")
    if rows_sum_to_1 and n:
        p = p / p.sum(axis=1, keepdims=True)  # remove float32 rounding: sklearn's own check is stricter
    return p


def _same_length(a: Any, b: Any, names: str = "y_true and y_pred") -> None:
    if len(a) != len(b):
        raise ValueError(f"{names} must have the same length, got {len(a)} and {len(b)}")
    if len(a) == 0:
        raise ValueError(f"{names} are empty: nothing to evaluate")


def _per_class(y_true: np.ndarray, y_pred: np.ndarray, labels: list[str]) -> dict[str, dict[str, float | int | None]]:
    # by position, not classification_report's dict by name: a class named "accuracy" or "macro avg" met its keys
    ids = list(range(len(labels)))
    prec, rec, f1, support = skm.precision_recall_fscore_support(y_true, y_pred, labels=ids, average=None,
                                                                 zero_division=0)
    # a class neither true nor predicted here has no score (None, as macro F1 leaves it out), not 0.0
    occurring = set(occurring_labels(y_true, y_pred))

    def score(values: np.ndarray, i: int) -> float | None:
        return float(values[i]) if i in occurring else None

    return {name: {"precision": score(prec, i), "recall": score(rec, i), "f1": score(f1, i), "support": int(support[i])}
            for i, name in enumerate(labels)}


# -- classification -----------------------------------------------------------------------------


def classification_metrics(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray,
                           labels: Sequence[str], proba: np.ndarray | None = None) -> dict[str, Any]:
    """Single-label metrics; `proba` (n x k softmax output) adds log loss and ROC-AUC."""
    labels = _check_labels(labels)
    k = len(labels)
    _same_length(y_true, y_pred)
    t, p = _check_ids("y_true", y_true, k), _check_ids("y_pred", y_pred, k)
    ids = list(range(k))
    out: dict[str, Any] = {"n": len(t), "accuracy": float(skm.accuracy_score(t, p))}
    for average in ("macro", "micro", "weighted"):
        averaged = occurring_labels(t, p) if average == "macro" else ids
        prec, rec, f1, _ = skm.precision_recall_fscore_support(t, p, labels=averaged, average=average, zero_division=0)
        out |= {f"precision_{average}": float(prec), f"recall_{average}": float(rec), f"f1_{average}": float(f1)}
    out["per_class"] = _per_class(t, p, labels)
    out["labels"] = labels
    out["confusion_matrix"] = skm.confusion_matrix(t, p, labels=ids).tolist()
    if proba is not None:
        probs = _check_proba(proba, len(t), k, rows_sum_to_1=True)
        out["log_loss"] = float(skm.log_loss(t, probs, labels=ids))
        absent = [labels[i] for i in ids if i not in set(t.tolist())]
        if absent:
            out["roc_auc"] = None
            out["roc_auc_note"] = f"ROC-AUC skipped: no true example of {absent}"
        elif k == 2:
            out["roc_auc"] = float(skm.roc_auc_score(t, probs[:, 1]))
        else:
            out["roc_auc"] = float(skm.roc_auc_score(t, probs, multi_class="ovr", average="macro", labels=ids))
    return out


def multilabel_metrics(y_true: np.ndarray, y_pred: np.ndarray, labels: Sequence[str],
                       proba: np.ndarray | None = None) -> dict[str, Any]:
    """Multi-label metrics over n x k 0/1 indicator matrices; `proba` (n x k sigmoid) adds ROC-AUC."""
    labels = _check_labels(labels)
    k = len(labels)
    t, p = np.asarray(y_true), np.asarray(y_pred)
    for name, arr in (("y_true", t), ("y_pred", p)):
        if arr.ndim != 2 or arr.shape[1] != k:
            raise ValueError(f"{name} must be an n x {k} 0/1 matrix (one column per label), got shape {arr.shape}")
        if not np.isin(arr, (0, 1)).all():
            raise ValueError(f"{name} must hold only 0 and 1 (threshold probabilities first)")
    _same_length(t, p)
    t, p = t.astype(int), p.astype(int)
    out: dict[str, Any] = {"n": len(t), "subset_accuracy": float(skm.accuracy_score(t, p)),
                           "hamming_loss": float(skm.hamming_loss(t, p))}
    for average in ("micro", "macro", "weighted", "samples"):
        columns = occurring_labels(t, p) if average == "macro" else []
        # labels=None: every column (where no label occurs at all, that is 0.0 rather than NaN)
        # a row with no true and no predicted label is right: it scored 0 in f1_samples (a perfect model got 0.5)
        out[f"f1_{average}"] = float(skm.f1_score(t, p, labels=columns or None, average=average,
                                                  zero_division=1 if average == "samples" else 0))
    out["per_class"] = _per_class(t, p, labels)
    out["labels"] = labels
    if proba is not None:
        probs = _check_proba(proba, len(t), k, rows_sum_to_1=False)
        one_sided = [labels[j] for j in range(k) if t[:, j].min() == t[:, j].max()]
        if one_sided:
            out["roc_auc_macro"] = None
            out["roc_auc_note"] = f"ROC-AUC skipped: labels always or never true here: {one_sided}"
        else:
            out["roc_auc_macro"] = float(skm.roc_auc_score(t, probs, average="macro"))
    return out


# -- regression ---------------------------------------------------------------------------------


def _check_scores(name: str, values: Sequence[float] | np.ndarray) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a flat list of numbers, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} holds NaN or infinite values")
    return arr


def regression_metrics(y_true: Sequence[float] | np.ndarray, y_pred: Sequence[float] | np.ndarray) -> dict[str, Any]:
    """Error sizes (MAE, RMSE), fit (R²) and agreement in order (Spearman), which ranking uses care about."""
    _same_length(y_true, y_pred)
    t, p = _check_scores("y_true", y_true), _check_scores("y_pred", y_pred)
    mse = float(skm.mean_squared_error(t, p))
    constant = len(t) < 2 or np.ptp(t) == 0 or np.ptp(p) == 0  # correlation undefined
    # R² divides by the variance of the truth: a constant target leaves it undefined (sklearn reports 0.0
    # for any imperfect prediction, which reads as "as good as the mean" whatever the errors).
    r2_defined = len(t) >= 2 and np.ptp(t) > 0
    return {
        "n": len(t),
        "mae": float(skm.mean_absolute_error(t, p)),
        "mse": mse,
        "rmse": float(np.sqrt(mse)),
        "r2": float(skm.r2_score(t, p)) if r2_defined else None,
        "pearson": None if constant else float(stats.pearsonr(t, p).statistic),
        "spearman": None if constant else float(stats.spearmanr(t, p).statistic),
    }


# -- for people ---------------------------------------------------------------------------------


def confusion_text(matrix: Sequence[Sequence[float]] | np.ndarray, labels: Sequence[str]) -> str:
    """The confusion matrix as an aligned plain-text table (rows = true, columns = predicted)."""
    m = np.asarray(matrix)
    names = short_labels(labels)
    if m.shape != (len(names), len(names)):
        raise ValueError(f"matrix must be {len(names)} x {len(names)} (one row and column per label), got {m.shape}")
    integral = np.all(np.equal(np.mod(m, 1), 0))
    cells = [[str(int(v)) if integral else f"{v:.2f}" for v in row] for row in m]
    corner = "true \\ pred"
    first = max(len(corner), *(display_width(n) for n in names))
    widths = [max(display_width(names[j]), *(len(row[j]) for row in cells)) for j in range(len(names))]
    lines = [pad_to_width(corner, first) + "  " + "  ".join(pad_to_width(n, w, right=True) for n, w in zip(names, widths))]
    lines += [pad_to_width(name, first) + "  " + "  ".join(pad_to_width(c, w, right=True) for c, w in zip(row, widths))
              for name, row in zip(names, cells)]
    return "\n".join(line.rstrip() for line in lines)


def _clip(text: str) -> str:
    text = str(text)
    return text if len(text) <= TEXT_LIMIT else text[: TEXT_LIMIT - 1] + "…"


def most_confident_mistakes(texts: Sequence[str], y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray,
                            proba: np.ndarray | None, labels: Sequence[str], k: int = 10,
                            ids: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Wrong predictions the model was surest of: where label noise and real blind spots show.

    Confidence is the probability of the predicted label; without `proba` mistakes come in data order.
    `ids` (the split's `id` column, file:line) lets a reader find the example in the source.
    """
    labels = [str(x) for x in labels]
    _same_length(texts, y_true, "texts and y_true")
    _same_length(y_true, y_pred)
    t, p = _check_ids("y_true", y_true, len(labels)), _check_ids("y_pred", y_pred, len(labels))
    wrong = np.flatnonzero(t != p)
    confidence = None
    if proba is not None:
        confidence = _check_proba(proba, len(t), len(labels), rows_sum_to_1=False)[np.arange(len(p)), p]
        wrong = wrong[np.argsort(-confidence[wrong], kind="stable")]
    return [{"index": int(i), **_id(ids, texts, i), "text": _clip(texts[i]), "true": labels[t[i]], "predicted": labels[p[i]],
             "confidence": None if confidence is None else float(confidence[i])} for i in wrong[:k]]


def multilabel_mistakes(texts: Sequence[str], y_true: np.ndarray, y_pred: np.ndarray, proba: np.ndarray | None,
                        labels: Sequence[str], k: int = 10, ids: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Multi-label rows with a wrong label decision, surest first: confidence is the largest probability the model
    gave one of its wrong decisions (p for a label wrongly set, 1 - p for one wrongly left out); without `proba`, in
    data order."""
    labels = [str(x) for x in labels]
    _same_length(texts, y_true, "texts and y_true")
    _same_length(y_true, y_pred)
    t, p = np.asarray(y_true).astype(int), np.asarray(y_pred).astype(int)
    wrong_cells = t != p
    wrong = np.flatnonzero(wrong_cells.any(axis=1))
    confidence = None
    if proba is not None:
        probs = _check_proba(proba, len(t), len(labels), rows_sum_to_1=False)
        confidence = np.where(wrong_cells, np.where(p == 1, probs, 1 - probs), 0).max(axis=1)
        wrong = wrong[np.argsort(-confidence[wrong], kind="stable")]

    def names(row: np.ndarray) -> str:
        return ", ".join(labels[j] for j in np.flatnonzero(row)) or "(none)"

    return [{"index": int(i), **_id(ids, texts, i), "text": _clip(texts[i]), "true": names(t[i]),
             "predicted": names(p[i]), "confidence": None if confidence is None else float(confidence[i])} for i in wrong[:k]]


def largest_errors(texts: Sequence[str], y_true: Sequence[float] | np.ndarray, y_pred: Sequence[float] | np.ndarray,
                   k: int = 10, ids: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Regression examples with the largest absolute error (error = predicted - true); `ids` as in most_confident_mistakes."""
    _same_length(texts, y_true, "texts and y_true")
    _same_length(y_true, y_pred)
    t, p = _check_scores("y_true", y_true), _check_scores("y_pred", y_pred)
    order = np.argsort(-np.abs(p - t), kind="stable")
    return [{"index": int(i), **_id(ids, texts, i), "text": _clip(texts[i]), "true": float(t[i]), "predicted": float(p[i]),
             "error": float(p[i] - t[i])} for i in order[:k]]


def _id(ids: Sequence[str] | None, texts: Sequence[str], i: int) -> dict[str, str]:
    if ids is None:
        return {}
    _same_length(texts, ids, "texts and ids")
    return {"id": str(ids[i])}
