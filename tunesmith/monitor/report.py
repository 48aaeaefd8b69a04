"""The monitoring report of a served model: report.md, report.html (standalone, pictures inlined),
report.json (the same figures for programs) and figures/*.png, all from the store.

Sections: per-version summary, time series (requests, latency, positive feedback, predicted labels),
drift of live traffic against the production version's training data, the registry's versions and
the model's A/B tests (read from the ab_tests table as they are stored).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sqlalchemy import func, select

from tunesmith.errors import ConfigError
from tunesmith.html_report import markdown_table, markdown_to_html
from tunesmith.monitor.live import TrainingProfile, VersionMetrics, drift_of, live_metrics, live_sample, time_series
from tunesmith.registry.service import NotRegistered, Registry, VersionInfo
from tunesmith.store.db import Store
from tunesmith.store.schema import ABTest, Prediction

DPI = 110  # as the data and evaluation reports
MAX_BUCKETS = 48  # time-series points per line: enough shape, still readable
BUCKETS_S = (60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 7 * 86400)
TOP_LABELS = 8  # label plots: the most predicted ones, the rest as OTHER_LABELS
OTHER_LABELS = "(other labels)"  # the rest's bucket: parenthesised, so a model's own label "other" keeps its name
LABEL_PANELS = 4  # label-share panels: the versions with most requests
FIGURES = ("requests", "latency", "feedback", "labels", "drift_lengths", "drift_labels", "drift_values")


# -- formatting --------------------------------------------------------------------------------------


def _when(t: float | None) -> str:
    return "—" if t is None else datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _pct(x: float | None, n: int | None = None) -> str:
    if x is None:
        return "—"
    return f"{x:.1%}" if n is None else f"{x:.1%} (n={n})"


def _num(x: float | None, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}g}"


def _ms(x: float | None) -> str:
    return "—" if x is None else f"{x:.1f}"


def _plain(s: Any) -> str:
    """Data (a label, a version) as matplotlib text: its `$` escaped, so "$0-$50" is not drawn as mathtext (an italic
    0-50) and "costs $5_$" does not make the figure raise."""
    return str(s).replace("$", r"\$")


def _bucket_words(seconds: float) -> str:
    """900 -> "15-minute", 86400 -> "1-day": the bucket as an adjective."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}-{unit}"
    return f"{seconds:g}-second"


def _literal(s: Any) -> str:
    """Markdown's punctuation backslash-escaped: a label "5*" or "[x](javascript:...)" stays text, not
    emphasis or a link."""
    out = str(s)
    for c in "\\`*_[]#":
        out = out.replace(c, "\\" + c)
    return out


def _text(s: Any) -> str:
    """Text from the data (labels in warnings) as literal Markdown: no markup, no HTML."""
    return _literal(str(s).replace("&", "&amp;").replace("<", "&lt;"))  # ">" stays: "PSI 0.31 > 0.25" must read as it is


def _table(header: list[str], rows: list[list[Any]]) -> str:
    return markdown_table(header, rows)  # it escapes HTML and Markdown in the cells: labels, versions, names are data


def _code(s: Any) -> str:
    """A name or path as a code span: Markdown leaves its characters alone (and escapes them for HTML)."""
    return "`" + str(s).replace("`", "'") + "`"


def auto_bucket(span_s: float) -> float:
    """The smallest round bucket that keeps a time series to MAX_BUCKETS points."""
    return next((b for b in BUCKETS_S if span_s / b <= MAX_BUCKETS), BUCKETS_S[-1])


# -- figures -----------------------------------------------------------------------------------------


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)  # Agg canvas directly: no pyplot state, freed on return
    return fig


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    fig.clear()
    return path


def _dates(ts: Sequence[float] | np.ndarray) -> list[datetime]:
    return [datetime.fromtimestamp(float(t), timezone.utc) for t in ts]


def _time_axis(ax: Any, bucket_s: float, starts: np.ndarray) -> None:
    # The window's buckets exactly: one point alone would otherwise get years of autoscaled axis.
    ax.set_xlim(_dates([starts[0], starts[-1] + bucket_s]))
    locator = AutoDateLocator(tz=timezone.utc)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator, tz=timezone.utc))
    ax.set_xlabel(f"time (UTC), {_bucket_words(bucket_s)} buckets")
    ax.grid(alpha=0.3)


def _legend_outside(ax: Any) -> None:
    # Right of the plot: a legend inside would hide points somewhere, whatever the data.
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)


def _colors(versions: Sequence[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {v: cmap(i % 10) for i, v in enumerate(versions)}


def _by_version(series: list[dict[str, Any]]) -> dict[str, dict[float, dict[str, Any]]]:
    out: dict[str, dict[float, dict[str, Any]]] = {}
    for point in series:
        out.setdefault(point["model_version"], {})[point["start"]] = point
    return out


def _buckets(series: list[dict[str, Any]], bucket_s: float) -> np.ndarray:
    """Every bucket start from the first to the last, those without requests included: an outage must show."""
    starts = [p["start"] for p in series]
    return np.arange(min(starts), max(starts) + bucket_s / 2, bucket_s)


def _line(points: dict[float, dict[str, Any]], starts: np.ndarray, key: str) -> np.ndarray:
    # NaN where a bucket has no value: matplotlib breaks the line there instead of drawing across the gap.
    return np.array([np.nan if points.get(t, {}).get(key) is None else float(points[t][key]) for t in starts])


def _requests_png(series: list[dict[str, Any]], versions: list[str], bucket_s: float, path: Path) -> Path:
    starts = _buckets(series, bucket_s)
    when = _dates(starts + bucket_s / 2)
    colors = _colors(versions)
    fig = _figure(9, 3.6)
    ax = fig.add_subplot()
    for v, points in _by_version(series).items():
        # A bucket without requests is a real zero for traffic (a gap for latency and feedback).
        ax.plot(when, np.nan_to_num(_line(points, starts, "requests")), marker="o", ms=3, color=colors[v], label=_plain(v))
    ax.set_ylabel("requests per bucket")
    ax.set_ylim(bottom=0)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("Requests per version")
    _time_axis(ax, bucket_s, starts)
    _legend_outside(ax)
    return _save(fig, path)


def _latency_png(series: list[dict[str, Any]], versions: list[str], bucket_s: float, path: Path) -> Path:
    starts = _buckets(series, bucket_s)
    when = _dates(starts + bucket_s / 2)
    colors = _colors(versions)
    fig = _figure(9, 3.6)
    ax = fig.add_subplot()
    for v, points in _by_version(series).items():
        ax.plot(when, _line(points, starts, "latency_p50_ms"), marker="o", ms=3, color=colors[v], label=f"{_plain(v)} p50")
        ax.plot(when, _line(points, starts, "latency_p95_ms"), marker="^", ms=3, ls="--", color=colors[v],
                label=f"{_plain(v)} p95")
    ax.set_ylabel("latency (ms)")
    ax.set_ylim(bottom=0)
    ax.set_title("Latency per version: median (solid) and 95th percentile (dashed)")
    _time_axis(ax, bucket_s, starts)
    _legend_outside(ax)
    return _save(fig, path)


def _feedback_png(series: list[dict[str, Any]], versions: list[str], bucket_s: float, path: Path) -> Path | None:
    if not any(p["rated"] for p in series):
        return None
    starts = _buckets(series, bucket_s)
    when = _dates(starts + bucket_s / 2)
    colors = _colors(versions)
    most = max(p["rated"] for p in series)
    fig = _figure(9, 3.6)
    ax = fig.add_subplot()
    for v, points in _by_version(series).items():
        rate = _line(points, starts, "positive_rate")
        if np.isnan(rate).all():
            continue  # never rated (a shadow: users did not see its answers)
        n = np.nan_to_num(_line(points, starts, "rated"))
        ax.plot(when, rate, color=colors[v], lw=1, alpha=0.6)
        # Marker area grows with the rated items behind each point: a 100% from 2 ratings looks small.
        ax.scatter(when, rate, s=8 + 70 * np.sqrt(n / most), color=colors[v], label=_plain(v), zorder=3)
    ax.set_ylim(-0.03, 1.03)
    ax.yaxis.set_major_formatter(lambda x, _pos: f"{x:.0%}")
    ax.set_ylabel("positive feedback")
    ax.set_title("Positive feedback rate per version (thumbs up or score ≥ 4; marker size: rated items)")
    _time_axis(ax, bucket_s, starts)
    _legend_outside(ax)
    return _save(fig, path)


def _labels_png(series: list[dict[str, Any]], metrics: dict[str, VersionMetrics], bucket_s: float, path: Path) -> Path | None:
    totals: Counter[str] = Counter()
    for m in metrics.values():
        totals.update(m.labels)
    if not totals:
        return None
    top = [label for label, _ in totals.most_common(TOP_LABELS)]
    # A flag, not a name in the list: a model's own label "other" (or "(other labels)") must not add the rest's bar.
    overflow = len(totals) > len(top)
    shown = top + ([OTHER_LABELS] if overflow else [])
    panels = sorted((v for v, m in metrics.items() if m.labels), key=lambda v: -metrics[v].requests)[:LABEL_PANELS]
    panels.sort(key=list(metrics).index)
    from matplotlib import colormaps

    # Not tab10: that palette means versions in the other plots. The rest's bucket is grey.
    palette = colormaps["Set2"]
    colors = [palette(i % 8) for i in range(len(top))] + ([(0.7, 0.7, 0.7, 1.0)] if overflow else [])
    starts = _buckets(series, bucket_s)
    fig = _figure(9, 2.4 * len(panels) + 0.6)
    by_version = _by_version(series)
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    width = bucket_s / 86400  # matplotlib dates are in days
    for ax, v in zip(axes, panels):
        points = by_version.get(v, {})
        present = [t for t in starts if points.get(t, {}).get("labels")]
        shares = [[points[t]["labels"].get(label, 0.0) for t in present] for label in top]
        if overflow:
            shares.append([1.0 - sum(points[t]["labels"].get(label, 0.0) for label in top) for t in present])
        # Stacked bars, one per bucket: a bucket without requests stays empty instead of being interpolated.
        bottom = np.zeros(len(present))
        for i, share in enumerate(shares):
            ax.bar(_dates(present), share, bottom=bottom, width=width, align="edge", color=colors[i],
                   label=_plain(shown[i]), linewidth=0)
            bottom += np.asarray(share)
        ax.set_ylim(0, 1)
        ax.yaxis.set_major_formatter(lambda x, _pos: f"{x:.0%}")
        ax.set_ylabel("share")
        ax.set_title(f"Predicted labels over time: {_plain(v)}", fontsize=10)
        ax.grid(alpha=0.3)
    _time_axis(axes[-1], bucket_s, starts)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="upper right", fontsize=8, ncol=min(len(names), 5))
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    fig.clear()
    return path


def _drift_lengths_png(train: np.ndarray, live: list[float], path: Path) -> Path:
    live_a = np.asarray(live, float)
    both = np.concatenate([train, live_a])
    low, top = float(both.min()), float(np.percentile(both, 99.5))  # one huge input must not squash the rest
    # Word counts are whole numbers: one bin per count while that stays readable.
    bins = np.arange(low - 0.5, top + 1.5) if top - low <= 60 else np.linspace(low, max(top, low + 1), 50)
    fig = _figure(7, 3.4)
    ax = fig.add_subplot()
    ax.hist(np.clip(train, bins[0], bins[-1]), bins=bins, density=True, alpha=0.55, label=f"training (n={train.size})")
    ax.hist(np.clip(live_a, bins[0], bins[-1]), bins=bins, density=True, alpha=0.55, label=f"live (n={live_a.size})")
    ax.set_xlabel("input length (words)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("density")
    ax.set_title("Input lengths: training vs live")
    ax.legend(fontsize=8)
    return _save(fig, path)


def _drift_labels_png(shares: dict[str, dict[str, float]], path: Path) -> Path:
    labels = sorted(shares, key=lambda k: -max(shares[k]["train"], shares[k]["live"]))[:20]
    x = np.arange(len(labels))
    fig = _figure(max(5.0, 0.6 * len(labels) + 3), 3.4)
    ax = fig.add_subplot()
    ax.bar(x - 0.2, [shares[k]["train"] for k in labels], 0.4, label="training labels")
    ax.bar(x + 0.2, [shares[k]["live"] for k in labels], 0.4, label="live predictions")
    names = [_plain(k if len(k) <= 18 else k[:17] + "…") for k in labels]
    ax.set_xticks(x, names, rotation=30 if len(labels) > 6 else 0, ha="right" if len(labels) > 6 else "center")
    ax.yaxis.set_major_formatter(lambda v, _pos: f"{v:.0%}")
    ax.set_ylabel("share")
    ax.set_title("Labels: training data vs live predictions")
    ax.legend(fontsize=8)
    return _save(fig, path)


def _drift_values_png(train: np.ndarray, live: list[float], path: Path) -> Path:
    both = np.concatenate([train, np.asarray(live, float)])
    bins = np.linspace(float(both.min()), float(both.max()) + 1e-9, 40)
    fig = _figure(7, 3.4)
    ax = fig.add_subplot()
    ax.hist(train, bins=bins, density=True, alpha=0.55, label=f"training targets (n={train.size})")
    ax.hist(live, bins=bins, density=True, alpha=0.55, label=f"live predictions (n={len(live)})")
    ax.set_xlabel("value")
    ax.set_ylabel("density")
    ax.set_title("Values: training targets vs live predictions")
    ax.legend(fontsize=8)
    return _save(fig, path)


# -- sections ----------------------------------------------------------------------------------------


def _summary(metrics: dict[str, VersionMetrics]) -> str:
    regression = any(m.corrected_values or m.mean_value is not None for m in metrics.values())
    header = ["version", "requests", "items", "latency p50 / p95 / p99 (ms)", "top predictions", "mean confidence",
              "feedback", "positive rate", "mean score", "corrected accuracy"]
    if regression:
        header += ["mean value", "MAE on corrections"]
    rows = []
    for v, m in metrics.items():
        top = ", ".join(f"{k} {s:.0%}" for k, s in list(m.label_shares.items())[:3]) or "—"
        requests = f"{m.requests} ({m.shadow_requests} as shadow)" if m.shadow_requests else str(m.requests)
        row = [v, requests, m.items, f"{_ms(m.latency_p50_ms)} / {_ms(m.latency_p95_ms)} / {_ms(m.latency_p99_ms)}",
               top, _pct(m.mean_confidence), f"{m.feedback} ({m.rated} rated)", _pct(m.positive_rate, m.rated or None),
               _num(m.mean_score), _pct(m.corrected_accuracy, m.corrected or None)]
        if regression:
            row += [_num(m.mean_value), f"{_num(m.corrected_mae)} (n={m.corrected_values})" if m.corrected_values else "—"]
        rows.append(row)
    return _table(header, rows)


def _drift_section(store: Store, model: str, production: VersionInfo | None, since: float | None,
                   figures: Path) -> tuple[str, dict[str, Any] | None]:
    lines = ["## Drift against the training data", ""]
    if production is None:
        lines.append(f"{_code(model)} has no version in production in the registry, so there is no training data to "
                     "compare live traffic with. Register and promote a version (`tunesmith registry promote`).")
        return "\n".join(lines), None
    profile = TrainingProfile.of_run(production.run, production.lineage.get("dataset"))  # the full data
    if profile is None:
        lines.append(f"The training data of the production version (v{production.version}, run {_code(production.run)}) "
                     "is no longer on disk (the run folder or its dataset folder is gone): drift cannot be measured.")
        return "\n".join(lines), None
    version = f"{model}-v{production.version}"
    sample = live_sample(store, model, since, model_version=version)
    report = drift_of(profile, sample)
    live = report["live"]
    if not live["texts"]:
        lines.append(f"No logged inputs for the production version {_code(version)} in this window: the server runs "
                     "with `--no-log-inputs`, the inputs are past their retention, or this version has not answered yet.")
        return "\n".join(lines), report
    t = report["thresholds"]
    lines += [f"The newest {live['requests']} requests ({live['texts']} inputs, {_when(live['from'])} to "
              f"{_when(live['to'])}) answered by the production version {_code(version)}, against the train split of "
              f"its dataset ({_code(profile.dataset)}).", "",
              f"A distribution warning needs both a population stability index (PSI) above {t['psi_significant']:g} "
              f"(between {t['psi_moderate']:g} and {t['psi_significant']:g}: a moderate shift) and a two-sample test "
              f"with p below {t['p_value']:g}, over at least {t['min_live']} live examples. Input lengths are counted in words on both sides: the log holds raw "
              "texts, not the model's tokens.", ""]
    rows = []
    names = {"lengths": "input length (words)", "labels": "predicted labels", "values": "predicted values"}
    for key, name in names.items():
        m = report.get(key)
        if m:
            means = f" (mean {m['train_mean']:.3g} → {m['live_mean']:.3g})" if "train_mean" in m else ""
            rows.append([name, f"PSI {m['psi']:.3f}{means}", f"{m['moderate_threshold']:g} / {m['threshold']:g}", m["status"],
                         f"{m['test']} {m['statistic']:.3g}", f"{m['p_value']:.2g}", m["n_train"], m["n_live"]])
    vocab = report.get("vocabulary")
    if vocab:
        rows.append(["unseen words", f"OOV rate {vocab['oov_rate']:.1%}", f"{vocab['threshold']:.0%}", vocab["status"],
                     "—", "—", f"{vocab['vocabulary_size']} words", vocab["n_texts"]])
    lines += [_table(["check", "value", "threshold", "status", "test (statistic)", "p-value", "training",
                      "live"], rows), ""]
    if report["warnings"]:
        lines += ["**Warnings**", ""] + [f"- {_text(w)}" for w in report["warnings"]] + [""]
    else:
        lines += ["No drift warnings: live inputs and predictions look like the training data.", ""]
    if "lengths" in report:
        _drift_lengths_png(profile.word_lengths, sample.lengths, figures / "drift_lengths.png")
        lines += ["![input lengths](figures/drift_lengths.png)", ""]
    if "labels" in report:
        _drift_labels_png(report["labels"]["shares"], figures / "drift_labels.png")
        lines += ["![labels](figures/drift_labels.png)", ""]
    if "values" in report and profile.scores is not None:
        _drift_values_png(profile.scores, sample.values, figures / "drift_values.png")
        lines += ["![values](figures/drift_values.png)", ""]
    return "\n".join(lines), report


def _registry_section(versions: list[VersionInfo] | None) -> str:
    lines = ["## Registry versions", ""]
    if versions is None:
        lines.append("Not a registry model (served by run or fine-tuned model id): no versions to list.")
        return "\n".join(lines)
    rows = []
    for v in versions:
        metrics = ", ".join(f"{k} {val:.4g}" if isinstance(val, (int, float)) else f"{k} {val}"
                            for k, val in list(v.metrics.items())[:6]) or "—"
        rows.append([f"v{v.version}", v.stage, _when(v.created_at), _when(v.stage_changed_at), metrics, v.run])
    lines.append(_table(["version", "stage", "registered", "stage since", "validation metrics", "run"], rows))
    return "\n".join(lines)


def _ab_section(tests: list[dict[str, Any]]) -> str:
    lines = ["## A/B tests", ""]
    if not tests:
        lines.append("No A/B tests on this model.")
        return "\n".join(lines)
    rows = []
    for t in tests:
        variants = ", ".join(f"{v.get('name')} {float(v.get('weight', 0)):.0%}" for v in t["variants"] or [])
        shadow = t["shadow"]["name"] if t["shadow"] else "—"
        rows.append([t["id"], t["status"], variants, shadow, t["horizon"], f"{t['alpha']:g}", _when(t["created"]),
                     _when(t["stopped"]), t["winner"] or "—"])
    lines.append(_table(["test", "status", "variants (traffic)", "shadow", "horizon (per variant)", "alpha",
                         "started", "stopped", "promoted"], rows))
    lines += ["", "The verdict of a test (`tunesmith ab status`) waits for its horizon; the per-version feedback above "
                  "is for reading, not for calling a winner early."]
    return "\n".join(lines)


# -- the report --------------------------------------------------------------------------------------


def write_report(store: Store, model: str, out_dir: Path, since: float | None = None,
                 bucket_s: float | None = None) -> Path:
    """Write out_dir/report.md, report.html, report.json and figures/*.png for `model` (a registry model or a
    served model id) over the predictions logged since `since` (unix time; None: all). Returns report.html.
    `bucket_s`: the time-series bucket; None picks a round one that gives at most MAX_BUCKETS points."""
    out_dir = Path(out_dir)
    metrics = live_metrics(store, model, since)
    if not metrics:
        with store.session() as s:
            latest = s.scalar(select(func.max(Prediction.created)).where(Prediction.model == model))
        if latest is None:
            raise ConfigError(f"no logged predictions for '{model}': predictions are logged when `tunesmith serve` "
                              "serves it with a store (--db or --model) and answers requests; check the model name")
        raise ConfigError(f"no predictions for '{model}' since {_when(since)} (the latest was at {_when(latest)}); "
                          "choose an earlier start")
    first = min(m.first for m in metrics.values() if m.first is not None)
    last = max(m.last for m in metrics.values() if m.last is not None)
    bucket = bucket_s or auto_bucket(max(last - first, 1.0))
    series = time_series(store, model, bucket, since)
    registry = Registry(store)
    try:
        versions: list[VersionInfo] | None = registry.versions(model)
    except NotRegistered:  # served by run folder or fine-tuned model id
        versions = None
    production = registry.production(model) if versions else None
    with store.session() as s:
        tests = [{"id": t.id, "status": t.status, "variants": t.variants, "shadow": t.shadow, "horizon": t.horizon,
                  "alpha": t.alpha, "created": t.created, "stopped": t.stopped, "winner": t.winner}
                 for t in s.scalars(select(ABTest).where(ABTest.model == model).order_by(ABTest.created.desc()))]

    figures = out_dir / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    for name in FIGURES:  # a figure this run does not draw must not linger from an earlier one
        (figures / f"{name}.png").unlink(missing_ok=True)
    order = list(metrics)
    md = [f"# Monitoring report: {_text(model)}", "",
          f"Requests from {_when(first)} to {_when(last)}"
          + (f" (window from {_when(since)})" if since is not None else "")
          + f"; generated {_when(time.time())}. Errors are not in the prediction log: the server counts them in "
            "Prometheus (`tunesmith_errors`).", "",
          "## Versions", "", _summary(metrics), "",
          "Latency is measured in the server (queueing, batching and the model), per request. Positive rate: thumbs up or "
          "score ≥ 4, over the rated items. Corrected accuracy: the predicted label set equals the correction. A "
          "shadow version's rows are copies of other requests; only corrections apply to them.", "",
          f"## Over time ({_bucket_words(bucket)} buckets)", ""]
    _requests_png(series, order, bucket, figures / "requests.png")
    _latency_png(series, order, bucket, figures / "latency.png")
    md += ["![requests](figures/requests.png)", "", "![latency](figures/latency.png)", ""]
    if _feedback_png(series, order, bucket, figures / "feedback.png"):
        md += ["![positive feedback](figures/feedback.png)", ""]
    else:
        md += ["No rated feedback in this window.", ""]
    if _labels_png(series, metrics, bucket, figures / "labels.png"):
        md += ["![predicted labels](figures/labels.png)", ""]
    drift_md, drift_report = _drift_section(store, model, production, since, figures)
    md += [drift_md, "", _registry_section(versions), "", _ab_section(tests), ""]
    text = "\n".join(md)

    (out_dir / "report.md").write_text(text, encoding="utf-8")
    page = out_dir / "report.html"
    page.write_text(markdown_to_html(text, out_dir, f"Monitoring report: {model}"), encoding="utf-8")
    summary = {"model": model, "since": since, "first": first, "last": last, "bucket_s": bucket,
               "versions": {v: {**m.__dict__, "label_shares": m.label_shares} for v, m in metrics.items()},
               "time_series": series, "drift": drift_report,
               "registry": [v.model_dump() for v in versions] if versions else None, "ab_tests": tests}
    (out_dir / "report.json").write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    return page
