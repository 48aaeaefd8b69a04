"""Live figures of a served model, computed from the store's prediction log and feedback.

    TrainingProfile   what the production run was trained on (lengths, labels or scores, vocabulary),
                      the reference for drift; small enough to keep in memory
    live_metrics      per model_version: requests, latency percentiles, predicted labels, confidence,
                      feedback (positive rate, mean score, accuracy / MAE on corrections)
    drift             live inputs and predictions against a TrainingProfile (monitor.drift)
    time_series       the same figures per time bucket, for the report's plots

A request is one logged row; an item is one text of it (a batch prediction has several). Feedback
belongs to the prediction it rates: `since` selects predictions by when they were answered, and
their feedback counts whenever it came. A shadow challenger's rows ("<id>:shadow", variant
"shadow:<name>") count for its own version; users never saw its answers, so only corrections given
for the answered request apply to it, not thumbs or scores. Errors never reach the log (the server
counts them in Prometheus, tunesmith_errors), so there is no error rate here.
"""

from __future__ import annotations

import functools
import math
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import or_, select

from tunesmith.artifacts import RUN_MANIFEST, DatasetVersion, Run, is_dataset, is_run
from tunesmith.monitor.drift import TOKEN, DriftReport, DriftThresholds, drift_report, vocabulary_of
from tunesmith.monitor.feedback import first_per_item, is_positive, is_rating
from tunesmith.monitor.log import SHADOW_SUFFIX, inputs_logged
from tunesmith.store.db import Store
from tunesmith.store.schema import Feedback, Prediction

SHADOW = "shadow:"  # variant prefix of a shadow challenger's rows (serve/service.py)


def word_count(text: str) -> int:
    """Words (regex \\w+, as the vocabulary counts them) in a text. Drift compares lengths with this on both
    sides: the dataset's n_tokens come from the model's tokenizer, which the log does not have."""
    return len(TOKEN.findall(text))


def _user_text(messages: Iterable[Any]) -> str:
    """A conversation's input side for drift: its user turns."""
    return "\n".join(str(m.get("content") or "") for m in messages if isinstance(m, dict) and m.get("role") == "user")


# Drift's category for a multi-label answer (or training example) with no label ("none applies"): without it a model
# that starts answering [] shows no label drift, since the shares among the labels it still gives are unchanged.
NO_LABEL = "(none)"


def _flat_labels(values: Iterable[Any], empty: str | None = None) -> list[str]:
    """Label occurrences: a multi-label item counts once per label it has; one with none counts once as `empty`
    where that is given (drift), not at all where not (live_metrics' counts, correction checks)."""
    out: list[str] = []
    for v in values:
        if isinstance(v, list):
            out.extend([str(x) for x in v] if v or empty is None else [empty])
        elif v is not None:
            out.append(str(v))
    return out


# -- the training side ------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class TrainingProfile:
    """The train split of a run's dataset, reduced to what drift needs: arrays, label counts and the
    vocabulary, never the texts themselves (a server or report process may keep several)."""

    run: str
    dataset: str
    task: str
    n_tokens: np.ndarray  # the model tokenizer's counts, as prepared (shown, not compared)
    word_lengths: np.ndarray  # word_count of each training input: what live lengths are compared with
    label_counts: dict[str, int] | None  # classification: occurrences per label (NO_LABEL: examples with none)
    scores: np.ndarray | None  # regression: the targets, in the user's units
    vocabulary: frozenset[str] = field(repr=False)

    @property
    def labels(self) -> list[str] | None:
        """Training label occurrences as a list (order does not matter to PSI or chi-square)."""
        if self.label_counts is None:
            return None
        return [label for label, n in self.label_counts.items() for _ in range(n)]

    @classmethod
    def of_run(cls, run_dir: str | Path, dataset: str | Path | None = None) -> TrainingProfile | None:
        """The profile of the run's training data; None when the run or its dataset folder is gone (the
        registry may outlive both). Cached per run.json and dataset manifest, so a caller can ask often.
        `dataset`: the data it stands for, where that is not the one it trained on (a registry version's lineage:
        an incremental round trained on a replay sample weighted to the corrections, which read as drift)."""
        path = Path(run_dir).resolve()
        if not is_run(path):
            return None
        dataset = Path(dataset or Run(path).manifest.dataset)
        if not is_dataset(dataset):
            return None
        stamp = ((path / RUN_MANIFEST).stat().st_mtime_ns, (dataset / "manifest.json").stat().st_mtime_ns)
        return _profile(str(path), str(dataset), stamp)


@functools.lru_cache(maxsize=8)
def _profile(run: str, dataset: str, _stamp: tuple[int, int]) -> TrainingProfile:
    manifest = Run(run).manifest
    table = DatasetVersion(dataset).table("train")
    columns = set(table.column_names)
    if "text" in columns:
        texts = [t or "" for t in table.column("text").to_pylist()]
    else:  # chat / preference data: the user turns
        texts = [_user_text(m or []) for m in table.column("messages").to_pylist()]
    label_counts = None
    if "labels" in columns:
        label_counts = dict(Counter(_flat_labels(table.column("labels").to_pylist(), NO_LABEL)))
    elif "label" in columns:
        label_counts = dict(Counter(_flat_labels(table.column("label").to_pylist(), NO_LABEL)))
    scores = table.column("score").to_numpy().astype(float) if "score" in columns else None
    n_tokens = table.column("n_tokens").to_numpy() if "n_tokens" in columns else np.zeros(0, int)
    lengths = np.array([word_count(t) for t in texts], dtype=float)
    for a in (lengths, n_tokens, scores):
        if a is not None:
            a.flags.writeable = False  # shared through the cache
    return TrainingProfile(run=run, dataset=dataset, task=manifest.task, n_tokens=n_tokens, word_lengths=lengths,
                           label_counts=label_counts, scores=scores, vocabulary=frozenset(vocabulary_of(texts)))


# -- reading the log ----------------------------------------------------------------------------------


def _rows(store: Store, model: str, since: float | None) -> tuple[list[Any], dict[str, list[Feedback]]]:
    """The model's predictions (oldest first) and the feedback on them, by request id."""
    where = [Prediction.model == model]
    if since is not None:
        where.append(Prediction.created >= since)
    with store.session() as s:
        rows = s.execute(select(Prediction.request_id, Prediction.model_version, Prediction.kind, Prediction.created,
                                Prediction.latency_ms, Prediction.outputs, Prediction.answer_shape, Prediction.variant)
                         .where(*where).order_by(Prediction.created, Prediction.request_id)).all()
        feedback = s.scalars(select(Feedback).join(Prediction, Feedback.request_id == Prediction.request_id)
                             .where(*where).order_by(Feedback.created, Feedback.id)).all()
    by_request: dict[str, list[Feedback]] = defaultdict(list)
    for f in feedback:
        by_request[f.request_id].append(f)
    return rows, by_request


def _shape_items(shape: Any) -> int:
    """The item count of a row whose outputs are not there (--no-log-inputs, or past retention): its answer_shape's,
    which is written either way and kept; 1 for a row logged before shapes were (migration 0008)."""
    items = shape.get("items") if isinstance(shape, dict) else None
    return items if isinstance(items, int) and items >= 0 else 1


def _is_shadow(row: Any) -> bool:
    return bool(row.variant and row.variant.startswith(SHADOW))


def _percentile(values: list[float], q: float) -> float | None:
    # numpy's default (linear interpolation between closest ranks), the same as pandas and Prometheus' docs assume
    return float(np.percentile(values, q)) if values else None


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


@dataclass
class VersionMetrics:
    """What one model_version did in the window. Rates are None where nothing was there to rate."""

    model_version: str
    requests: int = 0
    shadow_requests: int = 0  # of `requests`: copies answered as a shadow challenger
    items: int = 0  # texts (a batch request has several)
    first: float | None = None  # unix time of the first and last request
    last: float | None = None
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    latency_p99_ms: float | None = None
    labels: dict[str, int] = field(default_factory=dict)  # predicted label occurrences, most frequent first
    mean_confidence: float | None = None  # mean over items of the highest probability
    mean_value: float | None = None  # regression: mean predicted value
    feedback: int = 0  # feedback rows
    rated: int = 0  # ... with a thumbs or a 1-5 score
    positive: int = 0  # ... thumbs up or score >= 4
    positive_rate: float | None = None
    mean_score: float | None = None
    corrected: int = 0  # label corrections
    corrected_accuracy: float | None = None  # predicted label set == corrected label set
    corrected_values: int = 0  # value corrections
    corrected_mae: float | None = None

    @property
    def label_shares(self) -> dict[str, float]:
        total = sum(self.labels.values())
        return {k: v / total for k, v in self.labels.items()} if total else {}


class _Tally:
    """Accumulates rows of one version (or one version in one time bucket) into VersionMetrics."""

    def __init__(self, version: str) -> None:
        self.m = VersionMetrics(version)
        self.latencies: list[float] = []
        self.confidences: list[float] = []
        self.values: list[float] = []
        self.scores: list[float] = []
        self.right = 0
        self.errors: list[float] = []
        self.labels: Counter[str] = Counter()

    def add(self, row: Any, by_request: dict[str, list[Feedback]]) -> None:
        m = self.m
        m.requests += 1
        shadow = _is_shadow(row)
        m.shadow_requests += shadow
        m.first = row.created if m.first is None else min(m.first, row.created)
        m.last = row.created if m.last is None else max(m.last, row.created)
        self.latencies.append(float(row.latency_ms))
        outputs = row.outputs or []
        m.items += len(outputs) if outputs else _shape_items(row.answer_shape)
        if row.kind == "predict":
            for out in outputs:
                if not isinstance(out, dict):
                    continue
                self.labels.update(_flat_labels([out.get("label")]))
                if out.get("probabilities"):
                    self.confidences.append(max(float(p) for p in out["probabilities"].values()))
                if out.get("value") is not None:
                    self.values.append(float(out["value"]))
        base = row.request_id[: -len(SHADOW_SUFFIX)] if shadow and row.request_id.endswith(SHADOW_SUFFIX) else row.request_id
        given = by_request.get(base, [])
        if not shadow:  # the user rated the answer they saw, not the shadow's
            m.feedback += len(given)
            for f in first_per_item(f for f in given if is_rating(f)):  # an answer rated again counts once, as in A/B
                m.rated += 1
                m.positive += is_positive(f)
                if f.score is not None:
                    self.scores.append(float(f.score))
        for f in first_per_item(f for f in given if f.corrected_label is not None or f.corrected_value is not None):
            out = outputs[f.item_index] if f.item_index < len(outputs) and isinstance(outputs[f.item_index], dict) else None
            if out is None:
                continue  # outputs not logged (or purged): nothing to compare the correction with
            if f.corrected_label is not None and out.get("label") is not None:  # [] too: "none applies"
                m.corrected += 1
                self.right += set(_flat_labels([out["label"]])) == {str(x) for x in f.corrected_label}
            if f.corrected_value is not None and out.get("value") is not None:
                m.corrected_values += 1
                self.errors.append(abs(float(out["value"]) - float(f.corrected_value)))

    def result(self) -> VersionMetrics:
        m = self.m
        m.latency_p50_ms, m.latency_p95_ms, m.latency_p99_ms = (_percentile(self.latencies, q) for q in (50, 95, 99))
        m.labels = dict(sorted(self.labels.items(), key=lambda kv: (-kv[1], kv[0])))
        m.mean_confidence, m.mean_value = _mean(self.confidences), _mean(self.values)
        m.positive_rate = m.positive / m.rated if m.rated else None
        m.mean_score = _mean(self.scores)
        m.corrected_accuracy = self.right / m.corrected if m.corrected else None
        m.corrected_mae = _mean(self.errors)
        return m


def _version_key(version: str) -> tuple[Any, ...]:
    """reviews-v2 before reviews-v10; other names (run hashes) alphabetically."""
    head, _, tail = version.rpartition("-v")
    return (head, int(tail), "") if head and tail.isdigit() else (version, -1, version)


def live_metrics(store: Store, model: str, since: float | None = None) -> dict[str, VersionMetrics]:
    """Per model_version (in version order) figures of `model`'s logged requests since `since` (unix time;
    None: all). Latency percentiles interpolate linearly between ranks (numpy's default)."""
    rows, by_request = _rows(store, model, since)
    tallies: dict[str, _Tally] = {}
    for row in rows:
        tallies.setdefault(row.model_version, _Tally(row.model_version)).add(row, by_request)
    return {v: tallies[v].result() for v in sorted(tallies, key=_version_key)}


def time_series(store: Store, model: str, bucket_s: float = 3600, since: float | None = None) -> list[dict[str, Any]]:
    """The figures per time bucket and model_version, oldest bucket first. Buckets are aligned on multiples of
    `bucket_s` since the epoch (hours start on the hour, UTC); a request and its feedback fall in the bucket it
    was answered in. Buckets without requests for a version are left out. Each dict: start, end, model_version,
    requests, items, latency_p50_ms, latency_p95_ms, labels (shares), feedback, rated, positive_rate,
    mean_score."""
    if bucket_s <= 0:
        raise ValueError(f"bucket_s must be positive, got {bucket_s}")
    rows, by_request = _rows(store, model, since)
    tallies: dict[tuple[float, str], _Tally] = {}
    for row in rows:
        start = math.floor(row.created / bucket_s) * bucket_s
        tallies.setdefault((start, row.model_version), _Tally(row.model_version)).add(row, by_request)
    out = []
    for (start, version) in sorted(tallies, key=lambda k: (k[0], _version_key(k[1]))):
        m = tallies[(start, version)].result()
        out.append({"start": float(start), "end": float(start + bucket_s), "model_version": version,
                    "requests": m.requests, "items": m.items, "latency_p50_ms": m.latency_p50_ms,
                    "latency_p95_ms": m.latency_p95_ms, "labels": m.label_shares, "feedback": m.feedback,
                    "rated": m.rated, "positive_rate": m.positive_rate, "mean_score": m.mean_score})
    return out


# -- drift -------------------------------------------------------------------------------------------


@dataclass
class LiveSample:
    """The newest logged inputs of a model, as drift compares them (shadow copies left out: they repeat inputs
    already counted)."""

    requests: int = 0
    texts: list[str] = field(default_factory=list)  # one per item; a chat conversation's user turns as one
    labels: list[str] = field(default_factory=list)  # predicted label occurrences (multi-label: each label; NO_LABEL for [])
    values: list[float] = field(default_factory=list)  # regression: predicted values
    first: float | None = None
    last: float | None = None
    model_version: str | None = None

    @property
    def lengths(self) -> list[int]:
        # Word counts, as TrainingProfile.word_lengths: the live side never went through the model's tokenizer.
        return [word_count(t) for t in self.texts]


def live_sample(store: Store, model: str, since: float | None = None, limit: int = 5000,
                model_version: str | None = None) -> LiveSample:
    """The newest `limit` requests of `model` that were logged with their inputs (since `since`; only
    `model_version`'s when given). Requests logged without inputs (--no-log-inputs, or past retention) are not
    in it."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    # Left out before the limit, or newer requests without inputs would take the places of older ones with them
    where = [Prediction.model == model, inputs_logged(),
             or_(Prediction.variant.is_(None), Prediction.variant.not_like(f"{SHADOW}%"))]
    if since is not None:
        where.append(Prediction.created >= since)
    if model_version is not None:
        where.append(Prediction.model_version == model_version)
    with store.session() as s:
        rows = s.execute(select(Prediction.kind, Prediction.created, Prediction.inputs, Prediction.outputs,
                                Prediction.variant).where(*where)
                         .order_by(Prediction.created.desc(), Prediction.request_id.desc()).limit(limit)).all()
    sample = LiveSample(model_version=model_version)
    labels: list[Any] = []
    for row in rows:
        if _is_shadow(row) or not row.inputs:
            continue
        sample.requests += 1
        sample.first = row.created if sample.first is None else min(sample.first, row.created)
        sample.last = row.created if sample.last is None else max(sample.last, row.created)
        if row.kind != "predict":  # chat: the conversation is one input; completion: the prompts
            sample.texts.extend([_user_text(row.inputs)] if row.kind == "chat" else [str(t) for t in row.inputs])
            continue
        sample.texts.extend(str(t) for t in row.inputs)
        for out in row.outputs or []:
            if isinstance(out, dict) and out.get("label") is not None:
                labels.append(out["label"])
            elif isinstance(out, dict) and out.get("value") is not None:
                sample.values.append(float(out["value"]))
    sample.labels = _flat_labels(labels, NO_LABEL)
    return sample


def drift_of(profile: TrainingProfile, sample: LiveSample, thresholds: DriftThresholds = DriftThresholds()) -> dict[str, Any]:
    """monitor.drift.drift_report of `sample` against `profile`, plus "values" for a regression (predicted values
    against the training targets, read the same way) and "live": what was compared (requests, texts,
    model_version, from, to)."""
    report = drift_report(train_lengths=profile.word_lengths, live_lengths=sample.lengths,
                          train_labels=profile.labels, live_labels=sample.labels,
                          train_vocab=profile.vocabulary, live_texts=sample.texts, thresholds=thresholds)
    if profile.scores is not None and len(profile.scores) and sample.values:
        # drift_report compares labels only; its DriftReport gives predicted values the same PSI + KS reading and words.
        extra = DriftReport(thresholds=thresholds)
        e, a = np.asarray(profile.scores, float), np.asarray(sample.values, float)
        metric = extra._distribution("values", "predicted value distribution", e, a,
                                     f"; mean {e.mean():.3g} -> {a.mean():.3g}")
        metric.update(train_mean=float(e.mean()), live_mean=float(a.mean()))
        report["values"] = metric
        report["warnings"] = [*report["warnings"], *extra.warnings]
    report["live"] = {"requests": sample.requests, "texts": len(sample.texts), "model_version": sample.model_version,
                      "from": sample.first, "to": sample.last}
    return report


def drift(store: Store, model: str, profile: TrainingProfile, since: float | None = None, limit: int = 5000,
          model_version: str | None = None, thresholds: DriftThresholds = DriftThresholds()) -> dict[str, Any]:
    """The newest `limit` logged requests of `model` (since `since`; only `model_version`'s when given) against the
    training profile: input lengths, predicted labels (or values) and the share of unseen words; see drift_of."""
    return drift_of(profile, live_sample(store, model, since, limit, model_version), thresholds)
