"""The model card a run writes (README.md); its other sections are tested with the CLI (tests/test_cli.py)."""

from __future__ import annotations

import json
from pathlib import Path

from tests.test_cli import _fake_run
from tunesmith.model_card import write_model_card


def test_the_validation_heading_names_the_weights_the_run_kept(tmp_path: Path, tiny_tokenizer: Path) -> None:
    """A run with train.keep: last keeps (and scores) its last weights; its card called them the best checkpoint's."""
    run_dir = _fake_run(tmp_path, tiny_tokenizer)
    assert "Validation (best checkpoint, 4 examples): f1_macro 0.5000" in write_model_card(run_dir).read_text()
    cfg = json.loads((run_dir / "config.json").read_text())
    cfg["train"]["keep"] = "last"
    (run_dir / "config.json").write_text(json.dumps(cfg))
    card = write_model_card(run_dir).read_text()
    assert "Validation (last weights, train.keep: last, 4 examples): f1_macro 0.5000" in card
    assert "best checkpoint" not in card


def test_the_batch_line_counts_the_processes(tmp_path: Path, tiny_tokenizer: Path) -> None:
    """Under --nproc 2 each optimizer step takes a batch from every process; the card read as one process's."""
    run_dir = _fake_run(tmp_path, tiny_tokenizer, processes=2)
    manifest = json.loads((run_dir / "run.json").read_text())
    manifest["hyperparameters"]["batch_size"] = 4
    (run_dir / "run.json").write_text(json.dumps(manifest))
    assert ", batch 4 x 2 processes x grad_accum 1," in write_model_card(run_dir).read_text()
    manifest["processes"] = 1
    (run_dir / "run.json").write_text(json.dumps(manifest))
    card = write_model_card(run_dir).read_text()
    assert ", batch 4 x grad_accum 1," in card and "processes x" not in card


def test_a_validation_evaluation_is_not_the_held_out_test(tmp_path: Path, tiny_tokenizer: Path) -> None:
    """`evaluate --split validation` counted as the test split: the card's "not scored on the test split" went away."""
    run_dir = _fake_run(tmp_path, tiny_tokenizer)
    (run_dir / "eval" / "validation").mkdir(parents=True)
    (run_dir / "eval" / "validation" / "report.json").write_text(json.dumps(
        {"split": "validation", "n": 4, "dataset_fingerprint": "f" * 64, "metrics": {"accuracy": 0.75}}))
    card = write_model_card(run_dir).read_text()
    assert "Validation (4 examples): accuracy 0.7500" in card and "Not scored on the held-out test split yet" in card
    (run_dir / "eval" / "test" / "report.json").write_text(json.dumps(
        {"split": "test", "n": 4, "dataset_fingerprint": "f" * 64, "metrics": {"accuracy": 0.5}}))
    assert "Not scored" not in write_model_card(run_dir).read_text()


def test_the_card_shows_the_headline_metrics_first(tmp_path: Path, tiny_tokenizer: Path) -> None:
    """The card shows 8 numbers; in the metrics' dict order those were precision_micro and the like, and f1_weighted,
    log_loss and roc_auc were left out."""
    run_dir = _fake_run(tmp_path, tiny_tokenizer)
    minor = {f"{m}_{avg}": 0.5 for m in ("precision", "recall") for avg in ("micro", "macro", "weighted")}
    metrics = {"n": 4, **minor, "accuracy": 0.75, "f1_macro": 0.7, "f1_weighted": 0.71, "log_loss": 0.4, "roc_auc": 0.8}
    (run_dir / "eval" / "test" / "report.json").write_text(json.dumps(
        {"split": "test", "n": 4, "task": "single_label_classification", "metrics": metrics}))
    line = next(x for x in write_model_card(run_dir).read_text().splitlines() if x.startswith("Test (4 examples)"))
    assert line.startswith("Test (4 examples): accuracy 0.7500, f1_macro 0.7000, f1_weighted 0.7100, log_loss 0.4000, "
                           "roc_auc 0.8000, precision_micro 0.5000")
