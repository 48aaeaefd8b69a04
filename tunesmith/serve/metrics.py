"""Prometheus metrics of one server (its own registry, so several apps in one process never mix)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


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
        self.predicted_values = Histogram("tunesmith_predicted_value", "Regression outputs per model version",
                                          ["model", "version"], buckets=(-10, -5, -2, -1, -0.5, 0, 0.5, 1, 2, 5, 10),
                                          registry=r)
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
