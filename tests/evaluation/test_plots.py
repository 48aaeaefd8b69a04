"""Pictures are written as real PNG files, for small and large label sets, and leave no figure open."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tunesmith.evaluation.plots import confusion_matrix_png, residual_histogram_png, scatter_png

PNG = b"\x89PNG\r\n\x1a\n"


def _is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG and path.stat().st_size > 2000


@pytest.mark.parametrize(("k", "normalize"), [(2, False), (2, True), (25, True)])
def test_confusion_matrix_png(tmp_path: Path, k: int, normalize: bool) -> None:
    rng = np.random.default_rng(k)
    matrix = rng.integers(0, 30, size=(k, k)) + np.eye(k, dtype=int) * 100
    matrix[-1] = 0  # a class with no true example must not divide by zero
    labels = [f"class number {i}" for i in range(k)]
    out = confusion_matrix_png(matrix, labels, tmp_path / "figures" / f"cm_{k}_{normalize}.png", normalize=normalize)
    assert out == tmp_path / "figures" / f"cm_{k}_{normalize}.png"
    assert _is_png(out)


def test_confusion_matrix_png_rejects_mismatched_labels(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="3 x 3"):
        confusion_matrix_png([[1, 2], [3, 4]], ["a", "b", "c"], tmp_path / "cm.png", normalize=False)


def test_regression_pictures(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    y_true = rng.normal(3, 1, 200)
    y_pred = y_true + rng.normal(0.2, 0.5, 200)
    assert _is_png(scatter_png(y_true, y_pred, tmp_path / "scatter.png"))
    assert _is_png(residual_histogram_png(y_true, y_pred, tmp_path / "residuals.png"))
    assert _is_png(scatter_png([2.0, 2.0], [2.0, 2.0], tmp_path / "constant.png"))  # zero range still draws
    with pytest.raises(ValueError, match="same length"):
        scatter_png([1.0, 2.0], [1.0], tmp_path / "bad.png")


def test_no_pyplot_figure_is_left_open(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    before = len(plt.get_fignums())
    confusion_matrix_png([[3, 1], [0, 4]], ["a", "b"], tmp_path / "cm.png", normalize=True)
    scatter_png([1, 2, 3], [1, 2, 4], tmp_path / "s.png")
    assert len(plt.get_fignums()) == before
