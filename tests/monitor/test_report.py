"""The monitoring report: Markdown, a standalone HTML page with its pictures inlined, the figures, and a clear
refusal when there is nothing logged to report on."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from tests.monitor.test_live import T0, dataset, fake_run, insert, live_rows  # noqa: F401 - dataset is a fixture
from tunesmith.artifacts import DatasetVersion
from tunesmith.errors import ConfigError
from tunesmith.monitor.report import auto_bucket, write_report
from tunesmith.registry.service import Registry
from tunesmith.store.db import Store
from tunesmith.store.schema import ABTest


def test_report_shows_versions_time_series_drift_registry_and_ab_tests(dataset: Path, tmp_path: Path) -> None:  # noqa: F811
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    registry = Registry(store)
    for i in (1, 2):
        registry.add(fake_run(tmp_path / f"run{i}", dataset), "reviews")
    registry.promote("reviews", 1)
    with store.session() as s:
        s.add(ABTest(id="ab-123", model="reviews", status="running", alpha=0.05, horizon=388, created=T0,
                     variants=[{"name": "v1", "version": 1, "weight": 0.5}, {"name": "v2", "version": 2, "weight": 0.5}],
                     shadow=None, stopped=None, winner=None))
    texts = DatasetVersion(dataset).table("train").column("text").to_pylist()
    # Production (v1) sees new words and predicts "pos" 90% of the time; v2 sees training-like traffic. Six hours.
    v1 = live_rows([f"zebra quasar {t}" for t in texts], ["pos" if i % 10 else "neg" for i in range(120)],
                   "reviews-v1", start=T0)
    v2 = live_rows(texts, ["pos" if i % 2 else "neg" for i in range(120)], "reviews-v2", start=T0)
    for i, row in enumerate(v1 + v2):
        row["created"] = T0 + (i % 120) * 180.0  # 120 requests each, 3 minutes apart
        row["latency_ms"] = 8.0 + (i % 7) * (3.0 if row["model_version"] == "reviews-v2" else 1.0)
        row["variant"] = row["model_version"].split("-")[-1]
    feedback = [{"request_id": row["request_id"], "thumbs_up": (i % 3 != 0) if i < 120 else (i % 4 != 0)}
                for i, row in enumerate(v1 + v2) if i % 2 == 0]
    insert(store, v1 + v2, feedback)

    page = write_report(store, "reviews", tmp_path / "report")
    out = tmp_path / "report"
    assert page == out / "report.html"
    for name in ("requests", "latency", "feedback", "labels", "drift_lengths", "drift_labels"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 5000, name
    md, doc = (out / "report.md").read_text(), page.read_text()
    assert "(figures/requests.png)" in md
    assert doc.count("data:image/png;base64,") == 6 and 'src="figures/' not in doc  # standalone
    for text in ("reviews-v1", "reviews-v2", "prediction distribution drifted", "words unseen in training",
                 "ab-123", "v1 50%, v2 50%", "production", "candidate", "15-minute buckets"):
        assert text in doc, text
    assert re.search(r"<td>reviews-v1</td>\s*<td>120</td>", doc)
    summary = json.loads((out / "report.json").read_text())
    assert summary["versions"]["reviews-v1"]["requests"] == 120 and summary["drift"]["live"]["model_version"] == "reviews-v1"
    assert summary["versions"]["reviews-v1"]["positive_rate"] == pytest.approx(40 / 60)


def test_a_served_id_without_registry_or_inputs_still_reports(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    insert(store, [{"model": "ft:tiny:x:abcd", "model_version": "abcd", "request_id": f"r{i}", "created": T0 + 60 * i,
                    "latency_ms": 4.0, "outputs": None} for i in range(5)])  # --no-log-inputs: ids and timings only
    page = write_report(store, "ft:tiny:x:abcd", tmp_path / "out")
    doc = page.read_text()
    assert "no version in production" in doc and "Not a registry model" in doc and "No A/B tests" in doc
    assert not (tmp_path / "out" / "figures" / "labels.png").exists()


def test_labels_and_names_in_tables_stay_text(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    labels = ["5*", "4*", "[win](javascript:alert(1))", "[win](javascript:alert(1))"]
    insert(store, [{"model": "stars", "model_version": "stars_v1_", "request_id": f"r{i}", "created": T0 + 60 * i,
                    "latency_ms": 4.0, "outputs": [{"label": label}]} for i, label in enumerate(labels)])
    doc = write_report(store, "stars", tmp_path / "out").read_text()
    assert "<a " not in doc and "<em>" not in doc and "<strong>" not in doc  # no link, no emphasis: text
    assert "[win](javascript:alert(1)) 50%, 4* 25%, 5* 25%" in doc and "<td>stars_v1_</td>" in doc


def test_nothing_logged_is_a_clear_config_error(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    with pytest.raises(ConfigError, match="no logged predictions for 'reviews'"):
        write_report(store, "reviews", tmp_path / "out")
    insert(store, [{"model_version": "reviews-v1", "request_id": "r1", "created": T0, "latency_ms": 1.0, "outputs": None}])
    with pytest.raises(ConfigError, match="no predictions for 'reviews' since .*the latest was at"):
        write_report(store, "reviews", tmp_path / "out", since=time.time())
    assert not (tmp_path / "out" / "report.html").exists()


def test_buckets_keep_a_time_series_readable() -> None:
    assert auto_bucket(3600) == 300 and auto_bucket(6 * 3600) == 900 and auto_bucket(30 * 86400) == 86400


def _drawn_texts(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bool]]:
    """Every text matplotlib draws in the figures, with whether it was parsed as mathtext."""
    from matplotlib.text import Text

    drawn: list[tuple[str, bool]] = []
    preprocess = Text._preprocess_math

    def spy(self: Text, s: str) -> tuple[str, bool]:
        out = preprocess(self, s)
        drawn.append((out[0], bool(out[1])))
        return out

    monkeypatch.setattr(Text, "_preprocess_math", spy)
    return drawn


@pytest.mark.parametrize("labels", [["great", "other"], ["great", "bad", "other"]])
def test_a_label_called_other_is_a_label_not_the_rest(labels: list[str], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """"other" marked the labels beyond the top 8: a model's own label "other" (the demo's [great, other]) added a share
    row for the rest, and the legend indexed past its labels (IndexError)."""
    drawn = _drawn_texts(monkeypatch)
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    insert(store, [{"model_version": "reviews-v1", "request_id": f"r{i}", "created": T0 + 60 * i, "latency_ms": 4.0,
                    "outputs": [{"label": labels[i % len(labels)]}]} for i in range(9)])
    write_report(store, "reviews", tmp_path / "out")
    assert (tmp_path / "out" / "figures" / "labels.png").exists()
    texts = {s for s, _ in drawn}
    assert set(labels) <= texts and "(other labels)" not in texts


def test_the_labels_beyond_the_top_eight_share_one_bucket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    drawn = _drawn_texts(monkeypatch)
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    labels = ["other"] + [f"l{i}" for i in range(9)]  # 10 labels, "other" most predicted
    insert(store, [{"model_version": "reviews-v1", "request_id": f"r{i}", "created": T0 + 60 * i, "latency_ms": 4.0,
                    "outputs": [{"label": labels[0 if i % 2 else i // 2 % 10]}]} for i in range(40)])
    write_report(store, "reviews", tmp_path / "out")
    texts = {s for s, _ in drawn}
    assert "other" in texts and "(other labels)" in texts


def test_dollar_signs_in_labels_and_versions_are_drawn_as_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Data with two `$` was matplotlib mathtext: "$0-$50" was drawn as an italic 0-50, and "costs $5_$" raised."""
    drawn = _drawn_texts(monkeypatch)
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    labels = ["$0-$50", "costs $5_$", "over $100"]
    insert(store, [{"model": "price", "model_version": "price-$v$1", "request_id": f"r{i}", "created": T0 + 60 * i,
                    "latency_ms": 4.0, "outputs": [{"label": labels[i % 3]}]} for i in range(9)],
           [{"request_id": f"r{i}", "thumbs_up": i % 2 == 0, "created": T0 + 60 * i + 5} for i in range(9)])
    write_report(store, "price", tmp_path / "out")
    assert not [s for s, math in drawn if math]
    texts = {s for s, _ in drawn}
    assert set(labels) <= texts and "price-$v$1" in texts and "price-$v$1 p95" in texts
    assert "Predicted labels over time: price-$v$1" in texts


def test_since_hours_zero_is_an_empty_window_and_a_negative_one_is_refused(tmp_path: Path) -> None:
    """`--since-hours 0` was falsy: the report covered all the traffic ever logged."""
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path / 's.db'}"
    insert(Store(url), [{"model_version": "reviews-v1", "request_id": "r1", "created": T0, "latency_ms": 4.0,
                         "outputs": [{"label": "pos"}]}])
    for hours, says in (("0", "no predictions for 'reviews' since"), ("-1", "--since-hours")):
        run = subprocess.run([sys.executable, "-m", "tunesmith", "monitor", "report", "--model", "reviews", "--db", url,
                              "--out", str(tmp_path / "out"), "--since-hours", hours], capture_output=True, text=True)
        assert run.returncode != 0 and says in run.stderr and "internal error" not in run.stderr, (hours, run.stderr)
    assert not (tmp_path / "out" / "report.html").exists()
