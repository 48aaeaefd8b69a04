"""Evaluation pictures as PNG files, for the report and for people skimming a run folder.

Figures are drawn on matplotlib's Agg canvas directly (`Figure`, not pyplot): nothing global
changes (no backend switch in a notebook, no figure registry to leak), and each figure is freed
when the function returns. Every function returns the path it wrote.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

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


def _short(label: str, width: int = 18) -> str:
    return label if len(label) <= width else label[: width - 1] + "…"


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
    names = [_short(str(x)) for x in labels]
    rotate = k > 6 or max(len(n) for n in names) > 8
    ax.set_xticks(range(k), names, rotation=45 if rotate else 0, ha="right" if rotate else "center",
                  fontsize=fontsize)
    ax.set_yticks(range(k), names, fontsize=fontsize)
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
