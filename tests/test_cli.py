"""The command line: verbs, help, exit codes, and what a user sees."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tunesmith.cli import run


def _config(tmp_path: Path, tokenizer: Path, rows: int = 40, extra: str = "") -> Path:
    lines = ["review,rating"] + [f"review number {i} says the snack was {'good' if i % 2 else 'bad'} and item {i * 7919}"
                                 f",{'good' if i % 2 else 'bad'}" for i in range(rows)]
    (tmp_path / "reviews.csv").write_text("\n".join(lines) + "\n")
    path = tmp_path / "project.yaml"
    path.write_text(
        "name: cli-test\n"
        "task: {text: review, label: rating}\n"
        f"data:\n  sources: [{{path: reviews.csv}}]\n  output_dir: {tmp_path / 'ds'}\n  dedup: {{near: false}}\n{extra}"
        f"model: {{name: {tokenizer}}}\n"
    )
    return path


def test_prepare_show_report(tmp_path: Path, tiny_tokenizer: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path, tiny_tokenizer)
    assert run(["data", "prepare", str(config)]) == 0
    shown = capsys.readouterr().out
    assert "train 32  validation 4  test 4  quarantine 0  (of 40 input rows)" in shown
    assert run(["data", "show", str(tmp_path / "ds"), "--split", "test", "--n", "2", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 2 and {"id", "text", "label", "label_id", "n_tokens"} <= set(rows[0])
    assert run(["data", "report", str(tmp_path / "ds"), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["counts"]["input"] == 40


def test_set_overrides_reach_the_pipeline(tmp_path: Path, tiny_tokenizer: Path, capsys) -> None:
    config = _config(tmp_path, tiny_tokenizer)
    code = run(["data", "prepare", str(config), "-q", "--set", "data.split.train=0.7", "--set", "data.split.test=0.2"])
    assert code == 2  # test=0.2 is outside 10-15% without the override
    assert "test=0.2 (expected 0.1-0.15)" in capsys.readouterr().err
    code = run(["data", "prepare", str(config), "-q", "-s", "data.split.train=0.7", "-s", "data.split.test=0.2",
                "-s", "data.split.allow_unusual_ratios=true"])
    assert code == 0


def test_exit_codes(tmp_path: Path, tiny_tokenizer: Path, capsys) -> None:
    assert run(["data", "prepare", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    config = _config(tmp_path, tiny_tokenizer, extra="  strict: true\n")
    with (tmp_path / "reviews.csv").open("a") as f:
        f.write('"unterminated,good,extra\n')
    assert run(["data", "prepare", str(config), "-q"]) == 3
    err = capsys.readouterr().err
    assert "strict mode" in err and "reviews.csv:42" in err
    assert run(["data", "show", str(tmp_path / "nowhere")]) == 3
    assert run(["data", "show", str(tmp_path), "--split", "bogus"]) == 3  # not a dataset folder comes first
    assert run(["export", str(tmp_path), "--format", "gguf", "--output", "x"]) == 2  # a usage error, not an internal one
    err = capsys.readouterr().err
    assert "No such option: --output" in err and "internal error" not in err


def test_help_documents_every_option() -> None:
    result = subprocess.run([sys.executable, "-m", "tunesmith", "data", "prepare", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for option in ("--set", "--out", "--strict", "--quiet", "Exit codes"):
        assert option in result.stdout


def test_config_show_prints_every_default(tmp_path: Path, tiny_tokenizer: Path, capsys) -> None:
    assert run(["config", "show", str(_config(tmp_path, tiny_tokenizer))]) == 0
    shown = capsys.readouterr().out
    assert "near_threshold: 0.8" in shown and "seed: 42" in shown and "unicode_form: NFKC" in shown


def test_packaged_list(capsys) -> None:
    assert run(["data", "packaged"]) == 0
    shown = capsys.readouterr().out
    assert "food-reviews" in shown and "vader-sentiment" in shown and "chatterbot-corpus" in shown
