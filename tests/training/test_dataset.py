"""dataset.py: the dataset a run trains on, prepared once also when several processes train."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from tests.test_train import project
from tunesmith.artifacts import is_dataset
from tunesmith.data import inputs as inputs_module
from tunesmith.data import prepare as prepare_module
from tunesmith.training.dataset import ensure_dataset


def _rank_1_waiting(cfg, monkeypatch: pytest.MonkeyPatch, wait_s: float) -> tuple[threading.Thread, list]:
    """ensure_dataset as rank 1 of 2 in a thread, still waiting for rank 0 after `wait_s`: (the thread, what it found)."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    found: list = []
    rank1 = threading.Thread(target=lambda: found.append(ensure_dataset(cfg)), name="rank1", daemon=True)
    rank1.start()
    rank1.join(timeout=wait_s)
    assert rank1.is_alive()
    return rank1, found


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
    rank1, found = _rank_1_waiting(cfg, monkeypatch, 3)
    assert not is_dataset(cfg.dataset_dir)  # waiting, not preparing
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


def _preparations(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Record every preparation ensure_dataset starts (and let it happen)."""
    real_prepare = prepare_module.prepare
    prepared: list[Path] = []

    def recorded(cfg, out=None, *args, **kwargs):
        prepared.append(Path(out))
        return real_prepare(cfg, out, *args, **kwargs)

    monkeypatch.setattr(prepare_module, "prepare", recorded)
    return prepared


def test_a_relabelled_source_file_is_prepared_again(tmp_path: Path, tiny_bert: Path,
                                                    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """A user relabelled their CSV and ran `train --overwrite`: the dataset was judged by its settings alone, and the
    run trained on the old labels, silently."""
    cfg = project(tmp_path, tiny_bert)
    first = ensure_dataset(cfg)
    assert first.manifest.labels == ["neg", "pos"]
    data = tmp_path / "data.csv"
    data.write_text(data.read_text().replace(",pos,", ",good,"))
    again = ensure_dataset(cfg)
    assert again.manifest.labels == ["good", "neg"] and again.manifest.fingerprint != first.manifest.fingerprint
    assert f"dataset {cfg.dataset_dir} was prepared from other data ({data} changed since); preparing it again" \
        in capsys.readouterr().out
    prepared = _preparations(monkeypatch)
    monkeypatch.setattr(inputs_module, "sha256", lambda path: pytest.fail(f"{path} read: its size and mtime are as recorded"))
    assert ensure_dataset(cfg).manifest.fingerprint == again.manifest.fingerprint and prepared == []


def test_a_touched_but_unchanged_file_is_no_change_and_a_same_size_edit_is_one(tmp_path: Path, tiny_bert: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A `git checkout` that rewrote the file as it was only moved its mtime: no preparation. An edit that keeps the
    size (`pos` -> `neg` on one row) is told by its content."""
    import os

    cfg = project(tmp_path, tiny_bert)
    first = ensure_dataset(cfg)
    data = tmp_path / "data.csv"
    content = data.read_bytes()
    data.write_bytes(content)
    os.utime(data, ns=(first.manifest.inputs[str(data)].mtime_ns + 10**9,) * 2)
    prepared = _preparations(monkeypatch)
    assert ensure_dataset(cfg).manifest.fingerprint == first.manifest.fingerprint and prepared == []
    data.write_bytes(content.replace(b"number 0,pos,", b"number 0,neg,"))
    assert data.stat().st_size == first.manifest.inputs[str(data)].size
    assert ensure_dataset(cfg).manifest.fingerprint != first.manifest.fingerprint
    assert prepared == [Path(cfg.dataset_dir)]


def test_a_file_edited_while_it_was_being_read_is_prepared_again(tmp_path: Path, tiny_bert: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Recorded once read, an edit made while preparing read the file was taken as the content the rows came from."""
    cfg = project(tmp_path, tiny_bert)
    data = tmp_path / "data.csv"
    real = prepare_module.read_records

    def read_then_edit(*args, **kwargs):
        yield from real(*args, **kwargs)
        content = data.read_bytes()
        data.write_bytes(content + content.splitlines(keepends=True)[-1])  # a row more

    monkeypatch.setattr(prepare_module, "read_records", read_then_edit)
    first = ensure_dataset(cfg)
    assert first.manifest.inputs[str(data)].sha256 == ""
    monkeypatch.setattr(prepare_module, "read_records", real)
    prepared = _preparations(monkeypatch)
    ensure_dataset(cfg)
    assert prepared == [Path(cfg.dataset_dir)]


def test_a_dataset_prepared_before_its_files_were_recorded_is_used_as_it_is(tmp_path: Path, tiny_bert: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """An older manifest has no `inputs`: what its files were is unknown, and preparing every old dataset again after an
    upgrade would be a surprise."""
    import json

    from tunesmith.artifacts import MANIFEST

    cfg = project(tmp_path, tiny_bert)
    first = ensure_dataset(cfg)
    assert set(first.manifest.inputs) == {str(tmp_path / "data.csv")}
    manifest = Path(cfg.dataset_dir) / MANIFEST
    raw = json.loads(manifest.read_text())
    del raw["inputs"]
    manifest.write_text(json.dumps(raw))
    (tmp_path / "data.csv").write_text((tmp_path / "data.csv").read_text().replace(",pos,", ",good,"))
    prepared = _preparations(monkeypatch)
    old = ensure_dataset(cfg)
    assert prepared == [] and old.manifest.inputs is None and old.manifest.labels == ["neg", "pos"]


def test_a_folder_source_that_gained_a_file_is_prepared_again(tmp_path: Path, tiny_bert: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    from tests.test_train import rows
    from tunesmith.config import parse_config

    folder = tmp_path / "reviews"
    for i, row in enumerate(rows(60)):
        (folder / row["label"]).mkdir(parents=True, exist_ok=True)
        (folder / row["label"] / f"{i}.txt").write_text(row["text"])
    cfg = parse_config({"name": "t", "data": {"sources": [{"path": str(folder)}], "output_dir": str(tmp_path / "ds"),
                                              "dedup": {"near": False}},
                        "model": {"name": str(tiny_bert), "max_length": 32}})
    first = ensure_dataset(cfg)
    assert first.manifest.counts["input"] == 60
    (folder / ".ipynb_checkpoints").mkdir()  # hidden: the reader skips it, and so does the check
    (folder / ".ipynb_checkpoints" / "0-checkpoint.txt").write_text("an older copy")
    assert ensure_dataset(cfg).manifest.fingerprint == first.manifest.fingerprint
    (folder / "pos" / "new.txt").write_text("great wonderful big tea, a new example")
    assert ensure_dataset(cfg).manifest.counts["input"] == 61
    assert f"({folder / 'pos' / 'new.txt'} is new)" in capsys.readouterr().out


def test_under_torchrun_the_other_ranks_wait_for_a_dataset_prepared_from_the_changed_files(
        tmp_path: Path, tiny_bert: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rank 0 prepares again once a source file changed; the others must not go on with the dataset it replaces."""
    cfg = project(tmp_path, tiny_bert)
    first = ensure_dataset(cfg)
    data = tmp_path / "data.csv"
    data.write_text(data.read_text().replace(",pos,", ",good,"))
    rank1, found = _rank_1_waiting(cfg, monkeypatch, 2)  # waiting for rank 0, not training on the old labels
    prepare_module.prepare(cfg, Path(cfg.dataset_dir))  # what rank 0 does
    rank1.join(timeout=30)
    assert not rank1.is_alive() and found[0].manifest.labels == ["good", "neg"] != first.manifest.labels
