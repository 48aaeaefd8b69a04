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


def test_the_rows_are_the_ones_the_run_trained_on(tmp_path: Path, tiny_tokenizer: Path) -> None:
    """The dataset folder prepared again since: the card showed its new counts beside the run's old fingerprint."""
    run_dir = _fake_run(tmp_path, tiny_tokenizer)
    (run_dir / "dataset.json").write_text(json.dumps({"dataset": str(tmp_path / "ds"), "fingerprint": "f" * 64,
                                                      "labels": ["bad", "good"],
                                                      "counts": {"train": 30, "validation": 5, "test": 5}}))
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    (tmp_path / "ds" / "manifest.json").write_text(json.dumps({**manifest, "fingerprint": "e" * 64, "counts": {
        "train": 160, "validation": 20, "test": 20, "quarantine": 0, "input": 200}}))
    card = write_model_card(run_dir).read_text()
    assert "- Rows: 30 train / 5 validation / 5 test" in card and "5 examples): f1_macro" in card
    assert "160" not in card and "20 examples" not in card
    (run_dir / "dataset.json").unlink()  # an older run, recorded no counts: the folder's are another dataset's
    card = write_model_card(run_dir).read_text()
    assert "prepared again since" in card and "160" not in card and "Validation (best checkpoint): f1_macro" in card


def test_the_card_states_the_epochs_and_steps_trained(tmp_path: Path, tiny_tokenizer: Path) -> None:
    """train.max_steps overrides epochs: the card stated the configured epochs."""
    run_dir = _fake_run(tmp_path, tiny_tokenizer)
    manifest = json.loads((run_dir / "run.json").read_text())
    manifest["hyperparameters"] = {"epochs": 1, "learning_rate": 0.001, "epochs_trained": 2.0, "steps": 8}
    (run_dir / "run.json").write_text(json.dumps(manifest))
    card = write_model_card(run_dir).read_text()
    assert "- Learning rate 0.001, 2.0 epochs, 8 steps" in card and " 1 epochs" not in card


def test_user_text_stays_text_on_the_card(tmp_path: Path, tiny_tokenizer: Path) -> None:
    """The description, labels and run name went into the Markdown as they were: a label "<b>pos|x</b>" was bold."""
    import markdown

    run_dir = _fake_run(tmp_path, tiny_tokenizer)
    manifest = json.loads((run_dir / "run.json").read_text())
    manifest.update(labels=["<b>pos|x</b>", "neg_*y*"], name="# run *one*", description="First line ![p](https://t.example/p.png)\n# not a heading")
    (run_dir / "run.json").write_text(json.dumps(manifest))
    html = markdown.markdown(write_model_card(run_dir).read_text())
    assert "<b>" not in html and "<img" not in html and "<em>y</em>" not in html and html.count("<h1>") == 1
    assert "labels: &lt;b&gt;pos" in html and ", neg_*y*</li>" in html and "<h1># run *one*</h1>" in html
    assert "<blockquote>" in html and "not a heading" in html


def test_the_cards_commands_name_the_run_wherever_the_card_was_written_from(tmp_path: Path, tiny_tokenizer: Path,
                                                                            monkeypatch) -> None:  # noqa: ANN001
    """`cd reg && tunesmith evaluate run` wrote `tunesmith evaluate run` on the card: a path only from that folder."""
    run_dir = _fake_run(tmp_path, tiny_tokenizer)
    monkeypatch.chdir(tmp_path)
    card = write_model_card(Path("run")).read_text()
    assert f"tunesmith evaluate {run_dir.resolve()}\n" in card and "tunesmith evaluate run\n" not in card
