"""Prometheus metrics of one server (its own registry, so several apps in one process never mix)."""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.utils import floatToGoString

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# A regression's outputs on the standardised scale (its target scaling unknown); with one, mean + std x these
STANDARD_VALUE_BUCKETS = (-10, -5, -2, -1, -0.5, 0, 0.5, 1, 2, 5, 10)
SCALED_VALUE_STEPS = (-3, -2, -1, -0.5, 0, 0.5, 1, 2, 3)


def value_buckets(scaling: dict[str, float] | None) -> tuple[float, ...]:
    """Histogram bounds in the user's units, from a run's target_scaling (run.json): fixed ones around 0 put the
    values of a model whose scores sit near 1,000 all in +Inf."""
    if not scaling or not scaling.get("std") or not all(math.isfinite(scaling.get(k, math.nan)) for k in ("mean", "std")):
        return STANDARD_VALUE_BUCKETS
    mean, std = float(scaling["mean"]), abs(float(scaling["std"]))
    digits = max(0, 3 - math.floor(math.log10(std)))  # readable bounds: 3 significant digits of a std step
    return tuple(sorted({round(mean + std * k, digits) for k in SCALED_VALUE_STEPS}))


class ValueHistogram:
    """`tunesmith_predicted_value`: a histogram per model version with that model's own buckets (prometheus_client's
    Histogram has one bucket set for all its series). Each series is a complete histogram (its le bounds, +Inf,
    _count and _sum), which the exposition format allows per label set."""

    name = "tunesmith_predicted_value"
    help = "Regression outputs per model version, in the model's units (buckets from its target scaling)"

    def __init__(self, registry: CollectorRegistry) -> None:
        self._lock = threading.Lock()
        self._series: dict[tuple[str, str], tuple[tuple[float, ...], list[int], list[float]]] = {}
        registry.register(self)

    def observe(self, model: str, version: str, value: float, scaling: Callable[[], dict[str, float] | None]) -> None:
        """`scaling`: the run's target_scaling, asked for once per model version (its first value)."""
        key = (model, version)
        with self._lock:
            series = self._series.get(key)
        if series is None:
            try:
                bounds = value_buckets(scaling())
            except Exception:  # noqa: BLE001 - run.json unreadable: the standardised buckets; a metric never fails a request
                bounds = STANDARD_VALUE_BUCKETS
            with self._lock:
                series = self._series.setdefault(key, (bounds, [0] * (len(bounds) + 1), [0.0]))
        bounds, counts, total = series
        with self._lock:
            counts[bisect.bisect_left(bounds, value)] += 1  # le: a value on a bound counts in that bound's bucket
            total[0] += value

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield HistogramMetricFamily(self.name, self.help, labels=["model", "version"])

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.help, labels=["model", "version"])
        with self._lock:
            for (model, version), (bounds, counts, total) in self._series.items():
                cumulative, running = [], 0
                for bound, n in zip([*map(floatToGoString, bounds), "+Inf"], counts, strict=True):
                    running += n
                    cumulative.append((bound, running))
                family.add_metric([model, version], cumulative, total[0])
        yield family


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("tunesmith_requests", "HTTP requests by endpoint and status", ["endpoint", "status"], registry=r)
        self.errors = Counter("tunesmith_errors", "Requests answered with an error, by endpoint and code", ["endpoint", "code"], registry=r)
        self.latency = Histogram("tunesmith_request_seconds", "Request latency", ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("tunesmith_batch_size", "Items per forward pass", ["model"], buckets=BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge("tunesmith_queue_depth", "Requests waiting for a batch", ["model"], registry=r)
        # Per model version, as the version metrics below (a registry model under its name): they had the run's id
        # alone, and could not be joined with the rest or split by A/B variant.
        self.predictions = Counter("tunesmith_predictions", "Predicted labels per model version (the prediction distribution)",
                                   ["model", "version", "label"], registry=r)
        self.predicted_values = ValueHistogram(r)
        self.generated_tokens = Counter("tunesmith_generated_tokens", "Tokens generated per model", ["model"], registry=r)
        self.stream_disconnects = Counter("tunesmith_stream_disconnects", "Streams the client left before the end",
                                          ["model"], registry=r)
        # Per model version (a registry model's versions, an A/B test's variants): what monitoring compares.
        self.version_requests = Counter("tunesmith_model_requests", "Answered requests per model version",
                                        ["model", "version"], registry=r)
        self.version_errors = Counter("tunesmith_model_errors", "Requests a model version could not answer (busy, timeout)",
                                      ["model", "version"], registry=r)
        self.version_latency = Histogram("tunesmith_model_latency_seconds", "Latency per model version (percentiles via histogram_quantile)",
                                         ["model", "version"], buckets=LATENCY_BUCKETS, registry=r)
        self.confidence = Histogram("tunesmith_prediction_confidence", "Top-class probability per model version",
                                    ["model", "version"], buckets=(0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0), registry=r)
        self.feedback = Counter("tunesmith_feedback", "Feedback items per model version: positive, negative, neutral (score 3), correction only",
                                ["model", "version", "rating"], registry=r)
        self.corrections = Counter("tunesmith_corrected_feedback", "Corrected labels per model version: the model was right or wrong",
                                   ["model", "version", "outcome"], registry=r)
        self.drift_psi = Gauge("tunesmith_drift_psi", "Population stability index of live traffic against the training data",
                               ["model", "signal"], registry=r)
        self.drift_warning = Gauge("tunesmith_drift_warning", "1 when a drift measure is over its threshold", ["model", "signal"],
                                   registry=r)
        self.registry_errors = Counter("tunesmith_registry_errors", "Production versions that failed to load (the old one stays)",
                                       ["model"], registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
