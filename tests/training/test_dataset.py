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
