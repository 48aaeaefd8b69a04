"""Pictures are written as real PNG files, for small and large label sets, and leave no figure open."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tunesmith.evaluation.plots import (
    best_checkpoint,
    confusion_matrix_png,
    learning_curve_png,
    learning_series,
    residual_histogram_png,
    scatter_png,
)

PNG = b"\x89PNG\r\n\x1a\n"


def _is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == PNG and path.stat().st_size > 2000


def _width(path: Path) -> int:
    return int.from_bytes(path.read_bytes()[16:20], "big")  # IHDR: width, then height


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


def _log(steps: int = 12, metric: str = "f1_macro") -> list[dict]:
    """A Trainer log_history: a training entry every step, a validation every 3rd, the closing summary."""
    log: list[dict] = []
    for step in range(1, steps + 1):
        log.append({"loss": 1.0 / step, "grad_norm": 0.5, "learning_rate": 1e-3, "epoch": step / 4, "step": step})
        if step % 3 == 0:
            log.append({"eval_loss": 1.2 / step, f"eval_{metric}": min(1.0, step / 9), "epoch": step / 4, "step": step})
    return [*log, {"train_runtime": 1.0, "train_loss": 0.3, "epoch": steps / 4, "step": steps}]


def test_learning_curve_png(tmp_path: Path) -> None:
    assert _is_png(learning_curve_png(_log(), "f1_macro", tmp_path / "curve.png", best=1.0))
    assert _is_png(learning_curve_png(_log(), "eval_f1_macro", tmp_path / "no_best.png"))  # Trainer's spelling too
    assert _is_png(learning_curve_png(_log(), "loss", tmp_path / "loss_only.png"))  # chat runs: one panel
    assert _width(tmp_path / "curve.png") > 1.5 * _width(tmp_path / "loss_only.png")  # the metric panel is there


def test_best_checkpoint_is_the_first_validation_with_the_best_score() -> None:
    scores = learning_series(_log(), "eval_f1_macro")
    assert scores[0] == (3.0, 3 / 9) and len(scores) == 4  # summary line and training entries left out
    assert best_checkpoint(scores, "f1_macro", best=1.0) == (9.0, 1.0)  # steps 9 and 12 tie: the Trainer kept 9
    assert best_checkpoint(scores, "f1_macro") == (9.0, 1.0)
    assert best_checkpoint(learning_series(_log(), "eval_loss"), "loss") == (12.0, pytest.approx(0.1))  # lower is better
    assert best_checkpoint([], "loss") is None


def test_learning_curve_draws_what_the_log_has(tmp_path: Path) -> None:
    log = _log()
    only_train = [e for e in log if "loss" in e]
    only_eval = [e for e in log if "eval_loss" in e]
    assert _is_png(learning_curve_png(only_train, "f1_macro", tmp_path / "train.png"))
    assert _is_png(learning_curve_png(only_eval, "f1_macro", tmp_path / "eval.png", best=0.5))  # 0.5 not logged: falls back
    assert _is_png(learning_curve_png([{"loss": float("nan"), "step": 1}, *only_eval[:1]], "loss", tmp_path / "one.png"))
    for empty in ([], [{"train_runtime": 1.0, "train_loss": 0.3, "step": 4}]):
        assert learning_curve_png(empty, "f1_macro", tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()


def test_no_pyplot_figure_is_left_open(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    before = len(plt.get_fignums())
    confusion_matrix_png([[3, 1], [0, 4]], ["a", "b"], tmp_path / "cm.png", normalize=True)
    scatter_png([1, 2, 3], [1, 2, 4], tmp_path / "s.png")
    learning_curve_png(_log(), "f1_macro", tmp_path / "lc.png")
    assert len(plt.get_fignums()) == before


def test_class_names_with_dollar_signs_are_drawn_as_text(tmp_path: Path) -> None:
    """"$", "$$" ... failed savefig (a math parse error), and "$10-$20" was drawn as the formula 10-20."""
    labels = ["$", "$$", "$$$", "$10-$20"]
    out = confusion_matrix_png(np.eye(4, dtype=int) * 5, labels, tmp_path / "cm.png", normalize=False)
    assert _is_png(out)
