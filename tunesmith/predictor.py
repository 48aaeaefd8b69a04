"""Load a run folder and predict: the one interface evaluation, export and serving use.

Needs only the run folder (and, for adapter runs, the base model folder it names): no training code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tunesmith.artifacts import Run
from tunesmith.config import TaskType
from tunesmith.errors import DataError


@dataclass
class Predictions:
    labels: list[Any]  # class name, list of names (multi-label), or value in the user's units
    proba: np.ndarray | None  # n x classes probabilities (classification)
    values: np.ndarray | None  # regression outputs in the user's units
    label_ids: np.ndarray | None  # argmax ids (single-label) or 0/1 matrix (multi-label)

    @property
    def outputs(self) -> np.ndarray:
        """What metrics compare with the targets: values (regression) or label ids."""
        return self.values if self.values is not None else self.label_ids  # type: ignore[return-value]


class Predictor:
    def __init__(self, run_dir: str | Path, device: str | None = None) -> None:
        import torch
        from transformers import AutoTokenizer

        from tunesmith.modeling import load_trained_sequence_model

        self.run = Run(run_dir)
        m = self.run.manifest
        self.task = TaskType(m.task)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(self.run.model_dir)
        if m.adapter:
            from peft import PeftModel

            from tunesmith.modeling import load_for_sequence_task

            base_path = Path(m.base_model_path)
            if not base_path.exists():
                from tunesmith.catalog import resolve_model_dir

                base_path = resolve_model_dir(m.base_model)
            base = load_for_sequence_task(base_path, self.task, m.labels, pooling=self.run.config.model.pooling)
            self.model = PeftModel.from_pretrained(base, self.run.model_dir)
        else:
            self.model = load_trained_sequence_model(self.run.model_dir)
        self.model.to(self.device).eval()

    def logits(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        import torch

        if any(not isinstance(t, str) for t in texts):
            raise DataError("every input must be a text string")
        out = []
        order = np.argsort([len(t) for t in texts])  # similar lengths per batch: little padding
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                idx = order[start : start + batch_size]
                batch = self.tokenizer([texts[i] for i in idx], truncation=True, max_length=self.run.manifest.max_length,
                                       padding=True, return_tensors="pt").to(self.device)
                out.append((idx, self.model(**batch).logits.float().cpu().numpy()))
        width = out[0][1].shape[1] if out else 1
        result = np.zeros((len(texts), width), dtype=np.float32)
        for idx, values in out:
            result[idx] = values
        return result

    def predict(self, texts: list[str], batch_size: int = 64) -> Predictions:
        from tunesmith.tasks.sequence import sigmoid, softmax

        m = self.run.manifest
        logits = self.logits(texts, batch_size)
        if self.task == TaskType.regression:
            scale = m.target_scaling or {"mean": 0.0, "std": 1.0}
            values = logits[:, 0] * scale["std"] + scale["mean"]
            return Predictions([float(v) for v in values], None, values, None)
        labels = m.labels or []
        if self.task == TaskType.multi_label:
            proba = sigmoid(logits)
            thresholds = np.asarray(m.thresholds or [0.5] * len(labels))
            hot = (proba >= thresholds).astype(int)
            return Predictions([[labels[k] for k in np.flatnonzero(row)] for row in hot], proba, None, hot)
        proba = softmax(logits)
        ids = proba.argmax(axis=1)
        return Predictions([labels[i] for i in ids], proba, None, ids)
