"""The dataset a run trains on: the config's own (prepared again when its settings or the files it was prepared
from changed) or one given by path (refused when it was prepared for another model's tokenizer)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from tunesmith.artifacts import MANIFEST, RUN_DATASET, DatasetVersion, is_dataset
from tunesmith.config import ProjectConfig, config_diff
from tunesmith.data.inputs import changed_inputs
from tunesmith.errors import ConfigError, DataError
from tunesmith.training.run import is_rank0

# Model settings that change what preparation keeps and records: the tokenizer counts n_tokens and
# filters lengths, the budget and the chat template decide which conversations fit.
PREPARED_WITH_MODEL = ("name", "max_length", "chat_template")


def _preparation_settings(config: dict[str, Any], with_data: bool) -> dict[str, Any]:
    model = config.get("model", {})
    picked: dict[str, Any] = {"task": config["task"], "model": {k: model.get(k) for k in PREPARED_WITH_MODEL}}
    if with_data:  # where it is written is no setting of what it holds (the LoRA example names the demo's folder)
        picked["data"] = {k: v for k, v in config["data"].items() if k not in ("output_dir", "collect_dir")}
    return picked


def stale_settings(cfg: ProjectConfig, version: DatasetVersion, with_data: bool = True) -> list[str]:
    """What the dataset was prepared with that differs from `cfg` (`path: then -> now` lines)."""
    now = cfg.model_dump(mode="json")
    return config_diff(_preparation_settings(version.manifest.config, with_data), _preparation_settings(now, with_data))


def ensure_dataset(cfg: ProjectConfig, dataset_dir: Path | None = None, log: bool = True) -> DatasetVersion:
    """The dataset this config trains on; prepared (again) when missing, prepared with other settings, or prepared
    from files that changed since."""
    return _with_training_rows(cfg, _ensure_dataset(cfg, dataset_dir, log))


def run_dataset(cfg: ProjectConfig, dataset_dir: Path | None, run_dir: Path, resuming: bool) -> DatasetVersion:
    """The dataset a run trains on. A resumed run goes on with the one it started on, as its dataset.json records it,
    opened as it is: preparing the config's again first had overwritten it (from edited files) and then refused the
    resume, or, from another directory, prepared a stray one there and trained on it."""
    import json

    record = run_dir / RUN_DATASET
    if not resuming or not record.is_file():  # a new run (or one from before dataset.json): the config's own
        return ensure_dataset(cfg, dataset_dir)
    started = json.loads(record.read_text(encoding="utf-8"))
    fingerprint = str(started.get("fingerprint"))
    candidates = [dataset_dir] if dataset_dir is not None else [started.get("dataset"), cfg.dataset_dir]
    where = [Path(p) for p in candidates if p]
    found = [p for p in where if is_dataset(p)]
    for path in found:  # the recorded folder, else the config's (a project moved with its run)
        if DatasetVersion(path).manifest.fingerprint == fingerprint:
            return _with_training_rows(cfg, DatasetVersion(path))
    how = ("put it back (or pass its copy with --dataset DIR), or start a new run (`tunesmith train CONFIG --overwrite`)"
           "; resuming on other data would mix two runs")
    if not found:
        raise ConfigError(f"{run_dir}: this run started on the dataset {started.get('dataset')} (fingerprint "
                          f"{fingerprint[:12]}, recorded in {record}), which is gone (looked in "
                          f"{', '.join(str(p) for p in dict.fromkeys(where))}); {how}")
    raise ConfigError(f"{run_dir}: this run started on the dataset {started.get('dataset')} (fingerprint "
                      f"{fingerprint[:12]}, recorded in {record}), and {found[0]} now has fingerprint "
                      f"{DatasetVersion(found[0]).manifest.fingerprint[:12]} (prepared again, or another --dataset); "
                      f"{how}")


def _with_training_rows(cfg: ProjectConfig, version: DatasetVersion) -> DatasetVersion:
    """Refuse a dataset whose train or validation split is empty (every run validates to pick its checkpoint): with
    all validation rows quarantined as near-duplicates, training had called the folder damaged, and preparing it
    again made the same."""
    counts = version.manifest.counts
    for split in ("train", "validation"):
        if counts.get(split, 0) == 0:
            kept = ", ".join(f"{s} {counts.get(s, 0)}" for s in ("train", "validation", "test"))
            dropped = counts.get("quarantine", 0)
            why = f"; {dropped} of {counts.get('input', '?')} input rows quarantined, see quarantine.jsonl" \
                if dropped else ""
            shares = cfg.data.split
            raise DataError(
                f"the {split} split of {version.path} has no rows ({kept}{why}): training needs rows in train and "
                f"validation; add more data, or other split ratios (data.split is now train {shares.train}, "
                f"validation {shares.validation}, test {shares.test})")
    return version


def _ensure_dataset(cfg: ProjectConfig, dataset_dir: Path | None, log: bool) -> DatasetVersion:
    from tunesmith.data.prepare import prepare

    if dataset_dir is not None:
        version = DatasetVersion(dataset_dir)
        if version.manifest.task != cfg.task.type.value:
            raise ConfigError(f"dataset {version.path} was prepared for task {version.manifest.task}, "
                              f"but the config asks for {cfg.task.type.value}")
        changed = stale_settings(cfg, version, with_data=False)
        if changed:
            raise ConfigError(
                f"dataset {version.path} was prepared with other model settings than this config trains with "
                f"({'; '.join(changed)}): its token counts and length filters belong to that tokenizer. Prepare it "
                f"for this model (`tunesmith data prepare CONFIG --out DIR`), or train on the config's own dataset")
        return version
    path = Path(cfg.dataset_dir)
    if not is_rank0():
        return _prepared_by_rank0(cfg, path)
    if is_dataset(path):
        version = DatasetVersion(path)
        why = _stale(cfg, version)
        if why is None:
            return version
        if log:
            print(f"dataset {path} was prepared {why}; preparing it again", flush=True)
    return prepare(cfg, path)


def _stale(cfg: ProjectConfig, version: DatasetVersion) -> str | None:
    """Why the config's own dataset is to be prepared again (`with other settings (...)`), None: it is current."""
    changed = stale_settings(cfg, version)
    what = "with other settings"
    if not changed:  # the settings first: the files of sources a changed config names are other files anyway
        changed, what = changed_inputs(cfg, version), "from other data"
    if not changed:
        return None
    return f"{what} ({'; '.join(changed[:5])}{'; ...' if len(changed) > 5 else ''})"


def _prepared_by_rank0(cfg: ProjectConfig, path: Path, poll_s: float = 0.5) -> DatasetVersion:
    """Under torchrun (or accelerate) rank 0 prepares the dataset and the other ranks wait for it: all preparing at
    once, they would share one staging folder and fail each other. tunesmith's own --nproc launcher prepared it
    before starting them, so they find it at once; a rank 0 that fails ends the others through the launcher. Fresh
    by rank 0's rule, input files included; each dataset it writes is judged once (a file whose mtime changed is
    hashed, not once a poll)."""
    judged = None
    while True:
        try:
            if is_dataset(path):
                stat = os.stat(path / MANIFEST)
                written = (stat.st_ino, stat.st_mtime_ns)  # prepare swaps in a new folder: another manifest file
                if written != judged:
                    judged = written
                    version = DatasetVersion(path)
                    if _stale(cfg, version) is None:
                        return version
        except (OSError, ValueError, DataError):  # caught mid-swap (prepare moves the new folder into place)
            judged = None
        time.sleep(poll_s)
