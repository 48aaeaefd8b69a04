"""The report files stand alone and say what a reader needs; comparisons warn about different data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tunesmith.evaluation.metrics import (
    classification_metrics,
    confusion_text,
    largest_errors,
    most_confident_mistakes,
    regression_metrics,
)
from tunesmith.evaluation.plots import confusion_matrix_png, scatter_png
from tunesmith.evaluation.report import compare_reports, comparison, markdown, write_comparison, write_report

LABELS = ["neg", "pos"]
TEXTS = ["great tea", "awful <script>alert(1)</script> | coffee", "fine", "stale bread"]
Y_TRUE = [1, 0, 1, 0]


def classification_result(folder: Path | None = None, y_pred: list[int] = (1, 1, 1, 0), run: str = "run-a",
                          fingerprint: str = "abc123", **extra) -> dict:
    proba = np.array([[.1, .9], [.2, .8], [.4, .6], [.7, .3]])
    metrics = classification_metrics(Y_TRUE, list(y_pred), LABELS, proba)
    figures = {}
    if folder is not None:
        confusion_matrix_png(metrics["confusion_matrix"], LABELS, folder / "figures" / "confusion.png", normalize=False)
        figures["confusion matrix"] = "figures/confusion.png"
    return {
        "run": run, "model": "minilm", "method": "lora", "task": "single_label_classification",
        "dataset": "food-reviews", "dataset_fingerprint": fingerprint, "split": "test", "n": 4,
        "metrics": metrics,
        "baselines": {"majority": classification_metrics(Y_TRUE, [0, 0, 0, 0], LABELS),
                      "tfidf_logreg": classification_metrics(Y_TRUE, [1, 0, 0, 0], LABELS)},
        "figures": figures,
        "confusion_text": confusion_text(metrics["confusion_matrix"], LABELS),
        "mistakes": most_confident_mistakes(TEXTS, Y_TRUE, list(y_pred), proba, LABELS),
        "notes": ["evaluated on 4 examples only"],
    } | extra


def test_write_report_files(tmp_path: Path) -> None:
    result = classification_result(tmp_path)
    paths = write_report(tmp_path, result)
    assert paths == {"json": tmp_path / "report.json", "md": tmp_path / "report.md", "html": tmp_path / "report.html"}
    saved = json.loads(paths["json"].read_text())
    assert saved["metrics"]["accuracy"] == 0.75 and saved["base_model"] is None
    md = paths["md"].read_text()
    # accuracy: tuned 0.75, majority 0.5, tfidf 0.75 -> the difference is taken against the better, tfidf
    assert "| accuracy ↑ | 0.7500 | 0.5000 | 0.7500 | +0.0000 vs tfidf_logreg |" in md
    assert "| metric | tuned model | baseline: majority | baseline: tfidf_logreg | Δ vs best baseline |" in md
    assert "log loss ↓" in md and "ROC-AUC ↑" in md and "macro F1 ↑" in md and "weighted F1 ↑" in md
    assert "| neg | 1.0000 | 0.5000 | 0.6667 | 2 |" in md  # per-class row
    assert "true \\ pred  neg  pos" in md
    assert "## Most confident mistakes" in md and "0.8000" in md
    assert "- evaluated on 4 examples only" in md
    page = paths["html"].read_text()
    assert "data:image/png;base64," in page and 'src="figures/' not in page  # stands alone
    assert "<script>" not in page and "&lt;script&gt;" in page  # example text stays text


def test_notes_quoting_labels_stay_text(tmp_path: Path) -> None:
    """The ROC-AUC note lists labels; "![pixel](https://tracker.example/p.png)" in one loaded a remote picture when
    the report was opened, and "[click me](https://evil.example)" was a live link."""
    result = classification_result(notes=["label ![pixel](https://tracker.example/p.png) and [click me](https://evil.example) `x",
                                          "__init__ was\nseen"])
    page = write_report(tmp_path, result)["html"].read_text()
    assert "<img" not in page and "<a " not in page and "<code>x" not in page
    assert "label ![pixel](https://tracker.example/p.png) and [click me](https://evil.example) `x" in page
    assert "<li>__init__ was seen</li>" in page


def test_mistakes_name_the_example_id_when_the_split_has_one(tmp_path: Path) -> None:
    ids = ["reviews.csv:2", "reviews.csv:3", "reviews.csv:4", "reviews.csv:5"]
    proba = np.array([[.1, .9], [.2, .8], [.4, .6], [.7, .3]])
    result = classification_result(mistakes=most_confident_mistakes(TEXTS, Y_TRUE, [1, 1, 1, 0], proba, LABELS, ids=ids))
    md = markdown(result)
    assert "| row | id | true | predicted | confidence | text |" in md and "| 1 | reviews.csv:3 | neg | pos | 0.8000 |" in md
    assert "| row | true | predicted |" in markdown(classification_result())  # no ids: no empty column


def test_base_model_column_and_regression_report(tmp_path: Path) -> None:
    y_true, y_pred = [1.0, 2.0, 3.0, 4.0], [1.2, 1.9, 3.3, 3.6]
    result = {
        "run": "scores", "model": "minilm", "method": "full", "task": "regression", "dataset": "d",
        "dataset_fingerprint": "f", "split": "test", "n": 4, "metrics": regression_metrics(y_true, y_pred),
        "baselines": {"mean": regression_metrics(y_true, [2.5] * 4)},
        "base_model": regression_metrics(y_true, [2.0, 2.0, 2.5, 3.0]),
        "figures": {"scatter": str(scatter_png(y_true, y_pred, tmp_path / "figures" / "scatter.png").relative_to(tmp_path))},
        "mistakes": largest_errors(["a", "b", "c", "d"], y_true, y_pred, k=2),
    }
    md = write_report(tmp_path, result)["md"].read_text()
    assert "| metric | tuned model | baseline: mean | base model (untuned) | Δ vs best baseline |" in md
    assert "| MAE ↓ | 0.2500 | 1.0000 | 0.6250 | -0.7500 vs mean |" in md
    assert "RMSE ↓" in md and "R² ↑" in md and "Spearman ↑" in md and "| Spearman ↑ | 1.0000 | – |" in md
    assert "## Largest errors" in md and "## Per class" not in md and "## Confusion matrix" not in md
    assert "data:image/png;base64," in (tmp_path / "report.html").read_text()


def test_report_without_baselines_says_so() -> None:
    md = markdown(classification_result(baselines=None, mistakes=None))
    assert "No baselines were run" in md and "| accuracy ↑ | 0.7500 | – |" in md


def test_missing_keys_are_named() -> None:
    result = classification_result()
    del result["dataset_fingerprint"], result["split"]
    with pytest.raises(ValueError, match=r"missing \['dataset_fingerprint', 'split'\]"):
        markdown(result)


def test_compare_reports_deltas() -> None:
    a = classification_result(run="run-a")
    b = classification_result(run="run-b", y_pred=[1, 0, 1, 0])
    md = compare_reports(a, b)
    assert "# Comparison: run-a (A) vs run-b (B)" in md
    assert "| accuracy ↑ | 0.7500 | 1.0000 | +0.2500 | B |" in md
    assert "| log loss ↓ |" in md and "⚠" not in md
    assert "| neg | 0.6667 | 1.0000 | +0.3333 |" in md
    rows = {row["metric"]: row for row in comparison(a, b)["metrics"]}
    assert rows["log_loss"]["better"] == "same"  # same probabilities
    assert rows["f1_macro"]["delta"] > 0 and rows["f1_macro"]["better"] == "b"


def test_compare_judges_chats_unparsed_answers_and_time_lower_is_better() -> None:
    base = {"model": "m", "method": "lora", "task": "chat", "dataset": "d", "dataset_fingerprint": "f", "split": "test", "n": 3}
    a = base | {"run": "a", "metrics": {"loss": 2.0, "answer_unparsed": 0.1, "seconds": 10.0}}
    b = base | {"run": "b", "metrics": {"loss": 1.0, "answer_unparsed": 0.5, "seconds": 30.0}}
    rows = {row["metric"]: row for row in comparison(a, b)["metrics"]}
    assert rows["loss"]["better"] == "b"
    assert rows["answer_unparsed"]["better"] == "a" and rows["seconds"]["better"] == "a"


def test_compare_names_every_chat_metric_and_judges_answer_length_neither_way() -> None:
    """Answers rambling to the token limit made B "better" on "tokens answer ↑"; length has no good direction."""
    base = {"model": "m", "method": "lora", "task": "chat", "dataset": "d", "dataset_fingerprint": "f", "split": "test", "n": 3}
    a = base | {"run": "a", "metrics": {"loss": 2.0, "stopped": 1.0, "answer_tokens": 5.0, "answer_unparsed": 0.0,
                                        "seconds": 10.0, "full_valid_loss": 2.0}}
    b = base | {"run": "b", "metrics": {"loss": 2.0, "stopped": 0.0, "answer_tokens": 24.0, "answer_unparsed": 0.0,
                                        "seconds": 10.0, "full_valid_loss": 1.5}}
    rows = {row["metric"]: row for row in comparison(a, b)["metrics"]}
    assert rows["answer_tokens"]["better"] is None and rows["answer_tokens"]["delta"] == 19.0
    assert rows["stopped"]["better"] == "a" and rows["full_valid_loss"]["better"] == "b"
    md = compare_reports(a, b)
    assert "| answer length (tokens) | 5.0000 | 24.0000 | +19.0000 | – |" in md
    assert "| full validation loss ↓ |" in md and "| answers with no label found ↓ |" in md
    assert "| evaluation time (s) ↓ |" in md and "| answers that stop ↑ |" in md


def test_compare_warns_when_data_differ(tmp_path: Path) -> None:
    a = classification_result(run="run-a")
    b = classification_result(run="run-b", fingerprint="zzz999", split="validation")
    paths = write_comparison(tmp_path, a, b)
    md = paths["md"].read_text()
    assert "⚠ different data: fingerprints abc123 and zzz999 differ" in md
    assert "⚠ different splits: test and validation" in md
    saved = json.loads(paths["json"].read_text())
    assert len(saved["warnings"]) == 2 and saved["a"]["run"] == "run-a"
    assert paths["html"].read_text().startswith("<!doctype html>")


def test_compare_rejects_different_tasks() -> None:
    regression = {**classification_result(), "task": "regression", "metrics": regression_metrics([1, 2], [1, 2])}
    with pytest.raises(ValueError, match="cannot compare"):
        compare_reports(classification_result(), regression)


def test_multilabel_headline_and_unknown_task_fallback() -> None:
    from tunesmith.evaluation.metrics import multilabel_metrics

    y = np.array([[1, 0], [0, 1], [1, 1]])
    base = {"run": "tags", "model": "m", "method": "lora", "task": "multi_label_classification", "dataset": "d",
            "dataset_fingerprint": "f", "split": "test", "n": 3}
    md = markdown(base | {"metrics": multilabel_metrics(y, np.array([[1, 0], [0, 0], [1, 1]]), ["x", "y"]),
                          "baselines": {"majority": multilabel_metrics(y, np.array([[1, 1]] * 3), ["x", "y"])}})
    assert "| subset accuracy ↑ | 0.6667 | 0.3333 | +0.3333 vs majority |" in md
    assert "| Hamming loss ↓ | 0.1667 | 0.3333 | -0.1667 vs majority |" in md  # 1 and 2 wrong cells of 6
    assert "| y | 1.0000 | 0.5000 | 0.6667 | 2 |" in md
    other = markdown(base | {"task": "ranking", "metrics": {"n": 3, "perplexity": 12.5, "loss": 2.5}})
    assert "| loss ↓ | 2.5000 | – |" in other and "| perplexity ↓ | 12.5000 | – |" in other  # every number shown
    chat = markdown(base | {"task": "chat", "metrics": {"loss": 1.5, "rouge_l": 0.4},
                            "base_model": {"loss": 2.5, "rouge_l": 0.1},
                            "samples": [{"prompt": "hi", "reference": "hello", "base": "hey <b>", "tuned": "hello"}]})
    assert "| loss ↓ | 1.5000 | 2.5000 | -1.0000 vs base model |" in chat
    assert "| ROUGE-L ↑ | 0.4000 | 0.1000 | +0.3000 vs base model |" in chat
    assert "| hi | hello | hey &lt;b&gt; | hello |" in chat  # answers side by side, escaped


def test_a_class_without_scores_shows_a_dash_in_the_report_and_the_comparison() -> None:
    labels = ["a", "b", "c"]
    a = classification_result(metrics=classification_metrics([2, 2, 0], [2, 2, 0], labels), mistakes=[],
                              confusion_text=None)
    b = classification_result(run="run-b", metrics=classification_metrics([2, 1, 0], [2, 1, 0], labels), mistakes=[],
                              confusion_text=None)
    assert "| b | – | – | – | 0 |" in markdown(a)
    assert "| b | – | 1.0000 | – |" in compare_reports(a, b)
    assert next(p for p in comparison(a, b)["per_class"] if p["label"] == "b")["delta"] is None


def test_compare_calls_values_within_float_noise_the_same() -> None:
    """An ONNX export's log loss 3e-9 below its run's made B the better one."""
    a = classification_result(run="run-a")
    b = classification_result(run="run-b")
    b["metrics"] = {**b["metrics"], "log_loss": a["metrics"]["log_loss"] - 3e-9, "accuracy": a["metrics"]["accuracy"] + 1e-3}
    rows = {row["metric"]: row for row in comparison(a, b)["metrics"]}
    assert rows["log_loss"]["better"] == "same"
    assert rows["accuracy"]["better"] == "b"  # a real difference is still one
