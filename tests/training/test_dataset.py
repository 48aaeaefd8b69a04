"""dataset.py: the dataset a run trains on, prepared once also when several processes train."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tests.test_train import project
from tunesmith.artifacts import is_dataset
from tunesmith.data import prepare as prepare_module
from tunesmith.training.dataset import ensure_dataset


def test_under_torchrun_only_rank_0_prepares_the_dataset(tmp_path: Path, tiny_bert: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """`torchrun -m tunesmith train CONFIG` without a prepared dataset: every rank prepared it into the same staging
    folder at once and they failed each other (FileNotFoundError). Rank 0 prepares; the others wait for it."""
    cfg = project(tmp_path, tiny_bert)
    real_prepare = prepare_module.prepare
    preparing: list[str] = []

    def recorded(*args, **kwargs):
        preparing.append(threading.current_thread().name)
        return real_prepare(*args, **kwargs)

    monkeypatch.setattr(prepare_module, "prepare", recorded)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    found = []
    rank1 = threading.Thread(target=lambda: found.append(ensure_dataset(cfg)), name="rank1", daemon=True)
    rank1.start()
    rank1.join(timeout=3)
    assert rank1.is_alive() and not is_dataset(cfg.dataset_dir)  # waiting, not preparing
    real_prepare(cfg, Path(cfg.dataset_dir))  # what rank 0 does
    rank1.join(timeout=30)
    assert not rank1.is_alive() and found and found[0].path == Path(cfg.dataset_dir)
    assert preparing == []
    monkeypatch.setenv("RANK", "0")
    assert ensure_dataset(cfg).manifest.fingerprint == found[0].manifest.fingerprint


def test_naming_the_folder_a_dataset_is_in_is_no_other_setting(tmp_path: Path, tiny_bert: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The LoRA example names the demo's folder (data.output_dir) that the demo leaves to its default: switching
    examples prepared the same data again each time ("prepared with other settings: data.output_dir")."""
    cfg = project(tmp_path, tiny_bert)
    first = ensure_dataset(cfg)
    again = cfg.model_copy(deep=True)  # the same folder, named in another way, and another collect folder
    again.data.output_dir = tmp_path / "." / str(cfg.data.output_dir.relative_to(tmp_path))
    again.data.collect_dir = tmp_path / "elsewhere"
    prepared: list[object] = []
    monkeypatch.setattr(prepare_module, "prepare", lambda *a, **k: prepared.append(a))
    assert ensure_dataset(again).manifest.fingerprint == first.manifest.fingerprint and prepared == []


def test_an_empty_validation_split_reads_as_empty_and_training_refuses_it_by_name(tmp_path: Path, tiny_bert: Path) -> None:
    """All but 2 rows quarantined as near-duplicates: training called validation.parquet "unreadable (BatchSize must be
    greater than 0)" and the folder damaged, and preparing it again made the same folder."""
    import json

    from tunesmith.artifacts import DatasetVersion
    from tunesmith.config import parse_config
    from tunesmith.data.prepare import prepare
    from tunesmith.errors import DataError

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps({"text": f"the food was {'great' if i % 3 == 2 else 'terrible'} number {i}",
                                        "label": "pos" if i % 3 == 2 else "neg"}) + "\n" for i in range(60)))
    cfg = parse_config({"name": "t", "data": {"sources": [{"path": str(data)}], "output_dir": str(tmp_path / "ds")},
                        "model": {"name": str(tiny_bert)}})
    version = prepare(cfg, Path(cfg.dataset_dir))
    assert version.manifest.counts["validation"] == 0 < version.manifest.counts["quarantine"]
    empty = DatasetVersion(cfg.dataset_dir).hf_dataset("validation")
    assert len(empty) == 0 and "text" in empty.column_names and len(version.hf_dataset("train")) == 2
    with pytest.raises(DataError, match=r"the validation split of .*ds has no rows \(train 2, validation 0, test 0; "
                                        r"58 of 60 input rows quarantined, see quarantine.jsonl\): training needs rows "
                                        r"in train and validation; add more data, or other split ratios \(data.split is "
                                        r"now train 0.8, validation 0.1, test 0.1\)"):
        ensure_dataset(cfg)
