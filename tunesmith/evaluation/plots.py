"""Evaluation pictures as PNG files, for the report and for people skimming a run folder.

Figures are drawn on matplotlib's Agg canvas directly (`Figure`, not pyplot): nothing global
changes (no backend switch in a notebook, no figure registry to leak), and each figure is freed
when the function returns. Every function returns the path it wrote (learning_curve_png: None when the
log holds nothing to draw).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from tunesmith.evaluation.metrics import short_labels
from tunesmith.evaluation.report import LOWER_IS_BETTER, metric_name

DPI = 110  # same as the data report: sharp in a browser, small files


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    fig.clear()
    return path


def confusion_matrix_png(matrix: Sequence[Sequence[float]] | np.ndarray, labels: Sequence[str], path: str | Path,
                         normalize: bool) -> Path:
    """Heat map of the confusion matrix, every cell annotated.

    normalize=True divides each row by its true count, so the diagonal reads as per-class recall and
    small classes are as visible as large ones. Size and font scale with the number of classes.
    """
    counts = np.asarray(matrix, dtype=float)
    k = len(labels)
    if counts.shape != (k, k):
        raise ValueError(f"matrix must be {k} x {k} (one row and column per label), got {counts.shape}")
    values = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1) if normalize else counts
    side = min(16.0, max(4.5, 0.5 * k + 2.5))
    fig = _figure(side + 1.2, side)
    ax = fig.add_subplot()
    image = ax.imshow(values, cmap="Blues", vmin=0, vmax=1 if normalize else max(values.max(), 1))
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fontsize = max(8, 13 - k // 3)  # a cell is ~0.5 inch at 25 classes: 8 pt numbers still fit
    threshold = (1 if normalize else max(values.max(), 1)) / 2
    for i in range(k):
        for j in range(k):
            text = f"{values[i, j]:.2f}" if normalize else f"{int(values[i, j])}"
            ax.text(j, i, text, ha="center", va="center", fontsize=fontsize,
                    color="white" if values[i, j] > threshold else "black")
    names = short_labels(labels, width=18)
    rotate = k > 6 or max(len(n) for n in names) > 8
    # parse_math off: a class named "$10-$20" was drawn as the formula 10-20, and "$$" failed the whole figure
    ax.set_xticks(range(k), names, rotation=45 if rotate else 0, ha="right" if rotate else "center",
                  fontsize=fontsize, parse_math=False)
    ax.set_yticks(range(k), names, fontsize=fontsize, parse_math=False)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix (row-normalised: diagonal = recall)" if normalize else "Confusion matrix (counts)")
    return _save(fig, path)


def _scores(y_true: Sequence[float] | np.ndarray, y_pred: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    t, p = np.asarray(y_true, dtype=float), np.asarray(y_pred, dtype=float)
    if t.shape != p.shape or t.ndim != 1 or len(t) == 0:
        raise ValueError(f"y_true and y_pred must be flat, non-empty and the same length, got {t.shape} and {p.shape}")
    return t, p


def scatter_png(y_true: Sequence[float] | np.ndarray, y_pred: Sequence[float] | np.ndarray, path: str | Path) -> Path:
    """Predicted against true score with the y = x line: bias and squashed ranges show at a glance."""
    t, p = _scores(y_true, y_pred)
    fig = _figure(5.5, 5.0)
    ax = fig.add_subplot()
    ax.scatter(t, p, s=12, alpha=float(np.clip(200 / len(t), 0.15, 0.8)), edgecolors="none")
    low, high = float(min(t.min(), p.min())), float(max(t.max(), p.max()))
    pad = 0.03 * (high - low or 1)
    ax.plot([low - pad, high + pad], [low - pad, high + pad], color="red", linestyle="--", linewidth=1, label="y = x")
    ax.set_xlim(low - pad, high + pad)
    ax.set_ylim(low - pad, high + pad)
    ax.set_aspect("equal")
    ax.set_xlabel("true")
    ax.set_ylabel("predicted")
    ax.set_title(f"Predicted vs true (n = {len(t)})")
    ax.legend(loc="upper left")
    return _save(fig, path)


def residual_histogram_png(y_true: Sequence[float] | np.ndarray, y_pred: Sequence[float] | np.ndarray,
                           path: str | Path) -> Path:
    """Histogram of residuals (predicted - true): a shifted centre is bias, long tails are outliers."""
    t, p = _scores(y_true, y_pred)
    residuals = p - t
    fig = _figure(6.5, 3.8)
    ax = fig.add_subplot()
    ax.hist(residuals, bins=int(np.clip(np.sqrt(len(residuals)), 10, 50)), color="tab:blue", alpha=0.8)
    ax.axvline(0, color="red", linestyle="--", linewidth=1)
    ax.set_xlabel("residual (predicted - true)")
    ax.set_ylabel("examples")
    ax.set_title(f"Residuals: mean {residuals.mean():+.3g}, std {residuals.std():.3g}")
    return _save(fig, path)


def learning_series(entries: Sequence[Mapping[str, Any]], key: str) -> list[tuple[float, float]]:
    """(step, value) of every log entry that has a finite `key`: a NaN loss or a summary line is skipped."""
    points = []
    for e in entries:
        value, step = e.get(key), e.get("step")
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) \
                and isinstance(step, int | float):
            points.append((float(step), float(value)))
    return sorted(points)


def _plot(ax: Any, points: list[tuple[float, float]], label: str, color: str, marker: str | None = None) -> None:
    steps, values = zip(*points, strict=True)
    # a lone point has no line to draw, so it always gets a marker
    ax.plot(steps, values, label=label, color=color, marker=marker or ("o" if len(points) == 1 else None), markersize=4)


def best_checkpoint(validations: list[tuple[float, float]], metric: str, best: float | None = None,
                    ) -> tuple[float, float] | None:
    """(step, value) of the kept checkpoint among (step, metric) validations: the first that scored
    `best` (the Trainer keeps the first of equal scores), else the first best value in the log."""
    if not validations:
        return None
    if best is not None:
        hit = next(((s, v) for s, v in validations if math.isclose(v, best, rel_tol=1e-6, abs_tol=1e-9)), None)
        if hit:
            return hit
    # no best given, or it matches no logged validation (e.g. the log of a resumed run)
    value = (min if metric.removeprefix("eval_") in LOWER_IS_BETTER else max)(v for _, v in validations)
    return next((s, v) for s, v in validations if v == value)


def learning_curve_png(log_entries: Sequence[Mapping[str, Any]], metric: str, path: str | Path,
                       best: float | None = None) -> Path | None:
    """Training and validation loss against step (left) and the validation `metric` (right), best checkpoint marked.

    log_entries is the Trainer's log_history (training_log.jsonl): {"loss", "step"} for training logs,
    {"eval_loss", "eval_<metric>", "step"} for validations. `metric` is the checkpoint-selection metric
    (run.json's best_metric key, with or without "eval_"); when it is "loss" the right panel would
    repeat the left one and is left out. The best checkpoint is the first validation whose metric
    equals `best` (the Trainer keeps the first of equal scores); without `best`, the best value in the
    log. Whatever part of the log exists is drawn; None (and no file) when there is nothing at all.
    """
    metric = metric.removeprefix("eval_")
    train, valid = learning_series(log_entries, "loss"), learning_series(log_entries, "eval_loss")
    scores = [] if metric == "loss" else learning_series(log_entries, f"eval_{metric}")
    if not (train or valid or scores):
        return None
    best_step, best_value = best_checkpoint(valid if metric == "loss" else scores, metric, best) or (None, None)

    panels = [p for p, present in (("loss", train or valid), ("metric", scores)) if present]
    fig = _figure(5.5 * len(panels) + 0.5, 4.0)
    for i, panel in enumerate(panels, start=1):
        ax = fig.add_subplot(1, len(panels), i)
        if panel == "loss":
            if train:
                _plot(ax, train, "training loss", "tab:blue")
            if valid:
                _plot(ax, valid, "validation loss", "tab:orange", marker="o")
            ax.set_title("Loss")
            ax.set_ylabel("loss")
        else:
            _plot(ax, scores, f"validation {metric}", "tab:green", marker="o")
            ax.set_title(f"Validation {metric_name(metric)}")
            ax.set_ylabel(metric)
        if best_step is not None:
            ax.axvline(best_step, color="gray", linestyle="--", linewidth=1, label=f"best checkpoint (step {best_step:g})")
            if panel == "metric" or metric == "loss":  # the curve the best step was chosen on
                ax.plot([best_step], [best_value], marker="*", markersize=14, color="red", linestyle="none",
                        clip_on=False, label=f"best {metric} = {best_value:.4g}")  # a top score sits on the frame
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole: no 12.5 ticks
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)
