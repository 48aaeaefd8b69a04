"""Reading the folders tunesmith writes: a damaged one is bad data (exit 3) that says what to do, never an internal
error."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_train import project
from tunesmith.artifacts import DatasetVersion
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
