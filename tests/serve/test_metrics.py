"""The served models' Prometheus metrics."""

from prometheus_client.parser import text_string_to_metric_families

from tunesmith.serve.metrics import STANDARD_VALUE_BUCKETS, Metrics


def _buckets(text: str, model: str) -> dict[str, float]:
    family = next(f for f in text_string_to_metric_families(text) if f.name == "tunesmith_predicted_value")
    return {s.labels["le"]: s.value for s in family.samples
            if s.name.endswith("_bucket") and s.labels["model"] == model}


def test_predicted_values_are_bucketed_in_each_models_units():
    """The buckets were -10..10 (the standardised scale) for every model: scores near 1,000 all landed in +Inf."""
    m = Metrics()
    for value in (850.0, 1000.0, 1100.0, 5000.0):
        m.predicted_values.observe("prices", "1", value, lambda: {"mean": 1000.0, "std": 100.0})
    m.predicted_values.observe("old", "1", 0.7, lambda: None)  # no target scaling: the standardised buckets
    text = m.render().decode()
    prices = _buckets(text, "prices")
    assert list(prices) == ["700.0", "800.0", "900.0", "950.0", "1000.0", "1050.0", "1100.0", "1200.0", "1300.0", "+Inf"]
    assert (prices["800.0"], prices["900.0"], prices["1000.0"], prices["1100.0"], prices["1300.0"], prices["+Inf"]) == \
        (0, 1, 2, 3, 3, 4)
    old = _buckets(text, "old")
    assert len(old) == len(STANDARD_VALUE_BUCKETS) + 1 and old["0.5"] == 0 and old["1.0"] == 1 and old["+Inf"] == 1
    assert 'tunesmith_predicted_value_sum{model="prices",version="1"} 7950.0' in text


def test_a_model_versions_scaling_is_read_once():
    m, asked = Metrics(), []
    for _ in range(3):
        m.predicted_values.observe("prices", "1", 1.0, lambda: asked.append(1) or {"mean": 0.0, "std": 1.0})
    assert asked == [1]
