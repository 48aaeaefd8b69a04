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
