"""Sequence classification (single- and multi-label) and regression on a text.

Encoding: the text is tokenised (truncated to max_length, padded per batch by the collator); the
target becomes `labels`: a class id, a multi-hot float vector, or the standardised score.
Regression targets are standardised with the training split's mean and std and mapped back for
every metric and prediction, so numbers are always in the user's units.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tunesmith.config import TaskType


@dataclass
class TargetScaling:
    mean: float
    std: float

    @classmethod
    def fit(cls, scores: np.ndarray) -> TargetScaling:
        std = float(np.std(scores))
        return cls(float(np.mean(scores)), std if std > 1e-12 else 1.0)

    def forward(self, y: np.ndarray) -> np.ndarray:
        return (y - self.mean) / self.std

    def inverse(self, z: np.ndarray) -> np.ndarray:
        return z * self.std + self.mean


def encoder(task: TaskType, tokenizer: Any, max_length: int, num_labels: int, scaling: TargetScaling | None):
    """A batched `datasets.map` function from canonical rows to model inputs."""

    def encode(batch: dict[str, list[Any]]) -> dict[str, Any]:
        out = tokenizer(batch["text"], truncation=True, max_length=max_length)
        if task == TaskType.single_label:
            out["labels"] = batch["label_id"]
        elif task == TaskType.multi_label:
            out["labels"] = multi_hot(batch["label_ids"], num_labels, np.float32).tolist()
        else:
            assert scaling is not None
            out["labels"] = scaling.forward(np.asarray(batch["score"], dtype=np.float64)).astype(np.float32).tolist()
        return out

    return encode


def multi_hot(label_ids: list[list[int]], num_labels: int, dtype: Any = int) -> np.ndarray:
    """Rows of label ids -> an n x num_labels 0/1 matrix (the multi-label target)."""
    hot = np.zeros((len(label_ids), num_labels), dtype=dtype)
    for row, ids in enumerate(label_ids):
        hot[row, ids] = 1
    return hot


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-logits))


def occurring_labels(y_true: np.ndarray, y_pred: np.ndarray) -> list[int]:
    """Label ids that are true or predicted somewhere: a label with neither has no F1 (0/0), and counting it
    as 0 in a macro average would score a perfect model below 1 on a split that lacks a class."""
    if y_true.ndim == 2:  # multi-label indicator columns
        return np.flatnonzero((y_true | y_pred).any(axis=0)).tolist()
    return sorted(set(y_true.tolist()) | set(y_pred.tolist()))


def training_metrics(task: TaskType, scaling: TargetScaling | None):
    """`compute_metrics` for the Trainer: what validation reports at every evaluation."""
    from sklearn.metrics import accuracy_score, f1_score, mean_absolute_error, r2_score

    def compute(pred: Any) -> dict[str, float]:
        logits = pred.predictions[0] if isinstance(pred.predictions, tuple) else pred.predictions
        labels = pred.label_ids
        if task == TaskType.single_label:
            y_pred = logits.argmax(axis=1)
            return {"accuracy": accuracy_score(labels, y_pred), "f1_macro": f1_score(labels, y_pred, average="macro")}
        if task == TaskType.multi_label:  # at 0.5: picks the checkpoint; the thresholds are tuned after training
            return multi_label_metrics(sigmoid(logits), labels, 0.5)
        assert scaling is not None
        y_true = scaling.inverse(labels.reshape(-1))
        y_hat = scaling.inverse(logits.reshape(-1))
        return {"rmse": float(np.sqrt(np.mean((y_true - y_hat) ** 2))), "mae": mean_absolute_error(y_true, y_hat),
                "r2": r2_score(y_true, y_hat)}

    return compute


def multi_label_metrics(proba: np.ndarray, truth: np.ndarray, thresholds: float | list[float]) -> dict[str, float]:
    """F1 of multi-label predictions `proba >= thresholds` (one for all labels, or one per label)."""
    from sklearn.metrics import f1_score

    y_true, y_pred = truth.astype(int), (proba >= np.asarray(thresholds)).astype(int)
    # Macro over the labels that occur, as `tunesmith evaluate` reports it (a label validation lacks is no 0).
    occurring = occurring_labels(y_true, y_pred)
    return {"f1_micro": float(f1_score(y_true, y_pred, average="micro", zero_division=0)),
            "f1_macro": float(f1_score(y_true, y_pred, labels=occurring or None, average="macro", zero_division=0))}


def class_weight_loss(weights: np.ndarray):
    """Inverse-frequency weighted cross-entropy, for `Trainer(compute_loss_func=...)`.

    In training the loss of a step is sum(w[y] * ce) / n over all n labels of the step (every accumulated micro-batch,
    every process): the Trainer gives n as num_items_in_batch, and each micro-batch's share adds up to exactly that,
    however the step is split. The weighted mean, sum(w[y] * ce) / sum(w[y]), cannot be split so: each micro-batch would
    need the weights of the whole step, which the Trainer does not give (dividing each one's weighted mean by its share
    of n gave a micro-batch of one class its unweighted loss, and a gradient 13x smaller at batch 4 x accumulation 4).
    The two differ by the factor sum(w[y]) / n, whose mean over the training set is 1 for balanced weights.
    Evaluation reports the weighted mean.
    """
    import torch

    w = torch.tensor(weights, dtype=torch.float32)

    def loss(outputs: Any, labels: Any, num_items_in_batch: Any = None) -> Any:
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
        weight = w.to(logits.device)
        if num_items_in_batch is None or not torch.is_grad_enabled():  # evaluation (transformers 5 passes the count too)
            mean = torch.nn.functional.cross_entropy(logits, labels, weight=weight)
            # The Trainer multiplies a loss given num_items_in_batch by the processes: the share undoes it
            return mean if num_items_in_batch is None else mean * labels.numel() / num_items_in_batch
        # The Trainer multiplies it by the processes too, whose gradients DDP averages: the sum over all n remains
        return torch.nn.functional.cross_entropy(logits, labels, weight=weight, reduction="sum") / num_items_in_batch

    return loss


def tune_thresholds(proba: np.ndarray, truth: np.ndarray) -> list[float]:
    """Per-label decision thresholds for multi-label, chosen to maximise each label's F1 on validation."""
    from sklearn.metrics import f1_score

    grid = np.round(np.arange(0.05, 0.96, 0.05), 2)
    best = []
    for k in range(proba.shape[1]):
        if truth[:, k].sum() == 0:
            best.append(0.5)
            continue
        scores = np.array([f1_score(truth[:, k], proba[:, k] >= t, zero_division=0) for t in grid])
        # Ties toward 0.5: a weak model's probabilities sit together, every threshold below them scores the same F1,
        # and the lowest (0.05) predicted every label on every text.
        tied = grid[np.isclose(scores, scores.max())]
        best.append(float(tied[np.argmin(np.abs(tied - 0.5))]))
    return best


def targets(task: TaskType, table: Any, n_labels: int) -> np.ndarray:
    """A dataset split's targets as metrics compare them: label ids, a 0/1 matrix, or scores."""
    if task == TaskType.single_label:
        return np.asarray(table.column("label_id").to_pylist())
    if task == TaskType.multi_label:
        return multi_hot(table.column("label_ids").to_pylist(), n_labels)
    return np.asarray(table.column("score").to_pylist(), dtype=float)
