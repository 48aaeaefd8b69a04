"""Model-assisted labelling: a model proposes a label with a confidence for each item nobody has labelled;
proposals at or above `accept_above` become annotations by `model:<name>` (marked as such in the
report, never part of human agreement), and the rest are ordered for humans by uncertainty (1 - top
probability, "least confidence" sampling): the items the model is least sure of come first.

Scorers:
  RunScorer       a fine-tuned single-label classification run folder (inference/predictor.py);
                  its labels must be the task's labels.
  ZeroShotScorer  a sentence encoder (the packaged `minilm` by default): the cosine similarity of the
                  text to each label's name (or description), softmaxed. A weak prior: label names
                  are short and the encoder was never tuned on them, so use it to order the queue and
                  accept only at a high threshold, after checking `model_vs_humans` in the report.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from sqlalchemy import exists, select

from tunesmith.collect.annotate import MODEL_PREFIX, Queue, check_annotator, record
from tunesmith.errors import ConfigError
from tunesmith.store.schema import Annotation, AnnotationItem

# Cosine similarities differ by hundredths; x20 (the usual contrastive-training scale) lets softmax tell them apart.
ZERO_SHOT_SCALE = 20.0
BATCH = 64


class Scorer(Protocol):
    name: str  # the annotator becomes model:<name>
    labels: list[str]

    def proba(self, texts: list[str]) -> np.ndarray:
        """n x len(labels) probabilities, rows summing to 1."""
        ...


class RunScorer:
    def __init__(self, run_dir: str | Path, labels: list[str]) -> None:
        from tunesmith.config import TaskType
        from tunesmith.inference.predictor import Predictor

        self.predictor = Predictor(run_dir)
        m = self.predictor.manifest
        if TaskType(m.task) != TaskType.single_label:
            raise ConfigError(f"--suggest-from {run_dir}: a {m.task} run; suggestions need a single-label classification run")
        if set(m.labels or []) != set(labels):
            raise ConfigError(f"--suggest-from {run_dir}: the run predicts {m.labels}, the task's labels are {labels}")
        self.name = Path(run_dir).resolve().name
        self.labels = labels
        self._order = [list(m.labels or []).index(label) for label in labels]

    def proba(self, texts: list[str]) -> np.ndarray:
        proba = self.predictor.predict(texts).proba
        assert proba is not None
        return proba[:, self._order]


class ZeroShotScorer:
    def __init__(self, labels: list[str], model: str = "minilm", descriptions: dict[str, str] | None = None) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        from tunesmith.models.catalog import resolve_model_dir

        folder = resolve_model_dir(model)
        self.name = f"zero-shot-{Path(model).name}"
        self.labels = labels
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder).eval()
        self._torch = torch
        self._label_vectors = self._embed([(descriptions or {}).get(label, label) for label in labels])

    def _embed(self, texts: list[str]) -> np.ndarray:
        """Mean-pooled, L2-normalised token embeddings (how sentence-transformers pools MiniLM)."""
        torch = self._torch
        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), BATCH):
                batch = self.tokenizer(texts[i:i + BATCH], padding=True, truncation=True, max_length=256, return_tensors="pt")
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
        return np.concatenate(out)

    def proba(self, texts: list[str]) -> np.ndarray:
        logits = self._embed(texts) @ self._label_vectors.T * ZERO_SHOT_SCALE
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(axis=1, keepdims=True)


def scorer_for(source: str, labels: list[str]) -> Scorer:
    """`--suggest-from`: a run folder, or `zero-shot` / `zero-shot:<encoder>` (packaged name or folder)."""
    from tunesmith.artifacts import is_run

    if source == "zero-shot" or source.startswith("zero-shot:"):
        return ZeroShotScorer(labels, model=source.partition(":")[2] or "minilm")
    if is_run(source):
        return RunScorer(source, labels)
    raise ConfigError(f"--suggest-from {source!r}: give a fine-tuned run folder (with run.json) or `zero-shot[:MODEL]`")


@dataclass
class Suggested:
    scored: int
    accepted: int  # annotations by model:<name>
    queued: int  # left for humans, most uncertain first
    annotator: str


def suggest(queue: Queue, scorer: Scorer, accept_above: float | None = None) -> Suggested:
    """Score every item no one has labelled; store each suggestion and its uncertainty; accept those whose
    top probability is >= `accept_above` (None: accept none, only order the queue)."""
    if scorer.labels != queue.task.labels:
        raise ConfigError(f"the scorer's labels {scorer.labels} are not the task's {queue.task.labels}")
    if accept_above is not None and not 0.0 < accept_above <= 1.0:
        raise ConfigError(f"--accept-above must be in (0, 1], got {accept_above}")
    annotator = check_annotator(MODEL_PREFIX + scorer.name, model=True)
    labelled = exists().where(Annotation.item_seq == AnnotationItem.seq, Annotation.label.is_not(None))
    with queue.store.session() as s:
        todo = [(seq, text) for seq, text in s.execute(select(AnnotationItem.seq, AnnotationItem.text).where(
            AnnotationItem.task == queue.task.name, ~labelled).order_by(AnnotationItem.seq))]
    proba = scorer.proba([text for _, text in todo]) if todo else np.zeros((0, len(scorer.labels)))
    accepted = 0
    with queue.store.session() as s:
        for (seq, _), row in zip(todo, proba, strict=True):
            item = s.get(AnnotationItem, seq)
            assert item is not None
            top = int(row.argmax())
            confidence = float(row[top])
            item.suggestion = {"label": scorer.labels[top], "confidence": round(confidence, 4), "model": annotator,
                               "proba": {label: round(float(p), 4) for label, p in zip(scorer.labels, row, strict=True)},
                               "at": time.time()}
            item.uncertainty = 1.0 - confidence
            if accept_above is not None and confidence >= accept_above:
                record(s, item, annotator, scorer.labels[top], "model", confidence)
                accepted += 1
    return Suggested(len(todo), accepted, len(todo) - accepted, annotator)
