"""Reading the folders tunesmith writes: a damaged one is bad data (exit 3) that says what to do, never an internal
error."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_train import project
from tunesmith.artifacts import DatasetVersion, Run
from tunesmith.data.prepare import prepare
from tunesmith.errors import DataError


def test_a_cut_split_file_is_a_damaged_dataset_not_an_internal_error(tmp_path: Path, tiny_bert: Path) -> None:
    """An interrupted copy leaves a parquet file without its footer: pyarrow's ArrowInvalid was an internal error."""
    cfg = project(tmp_path, tiny_bert)
    prepare(cfg)
    version = DatasetVersion(cfg.dataset_dir)
    test = version.path / "test.parquet"
    assert version.table("test").num_rows > 0
    test.write_bytes(test.read_bytes()[:500])
    for read in (version.table, version.hf_dataset):
        with pytest.raises(DataError, match=r"test.parquet: unreadable \(.*\); the dataset folder is damaged") as err:
            read("test")
        assert err.value.exit_code == 3


def test_a_gguf_export_given_as_a_run_says_where_it_runs_and_which_run_to_give(tmp_path: Path) -> None:
    """`tunesmith serve runs/x-gguf` said "not a finished tunesmith run ... train one": the folder is a finished export,
    for llama.cpp or Ollama, of a run that tunesmith does serve."""
    import json

    folder = tmp_path / "x-gguf"
    folder.mkdir()
    (folder / "export.json").write_text(json.dumps({"format": "gguf", "source_run": "/runs/x", "file": "model-q8_0.gguf"}))
    (folder / "Modelfile").write_text("FROM ./model-q8_0.gguf\n")
    with pytest.raises(DataError) as err:
        Run(folder)
    assert f"llama-server -m {folder / 'model-q8_0.gguf'}" in str(err.value)
    assert f"ollama create NAME -f {folder / 'Modelfile'}" in str(err.value)
    assert "`tunesmith serve /runs/x`" in str(err.value) and "train one" not in str(err.value)
    (folder / "export.json").write_text(json.dumps({"format": "onnx", "source_run": "/runs/x"}))  # not GGUF: as before
    with pytest.raises(DataError, match="not a finished tunesmith run"):
        Run(folder)
