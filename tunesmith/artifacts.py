"""The on-disk contracts between steps. Later steps read these folders and nothing else.

A dataset version is a folder:

    manifest.json        what it is: resolved config, label map, counts, content fingerprint
    train.parquet        canonical columns: id, source, line, group, text + label/label_id
    validation.parquet     (or labels/label_ids, score, messages), n_tokens
    test.parquet
    quarantine.jsonl     every input row that is not in a split, with stage and reason
    report.json|md|html  the data-quality report; figures/ holds its pictures

The fingerprint hashes the split contents only (not timestamps or paths), so two preparations of
the same data with the same settings prove it by having the same fingerprint.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel

from tunesmith.config import SPLITS, ProjectConfig
from tunesmith.errors import DataError

DATASET_FORMAT = 1  # bump when the folder layout changes incompatibly
MANIFEST = "manifest.json"
QUARANTINE = "quarantine.jsonl"


class DatasetManifest(BaseModel):
    format: int = DATASET_FORMAT
    kind: str = "tunesmith-dataset"
    name: str
    task: str
    description: str
    created_at: str
    tunesmith_version: str
    fingerprint: str  # sha256 of the split contents
    counts: dict[str, int]  # rows per split, plus quarantine and input totals
    labels: list[str] | None  # id -> label (label_id is the index)
    tokenizer: str  # model whose tokenizer counted n_tokens
    context_length: int | None
    config: dict[str, Any]  # the fully resolved ProjectConfig


class Fingerprint:
    """Order-sensitive hash of the rows of every split (each row as canonical JSON)."""

    def __init__(self) -> None:
        self._h = hashlib.sha256()

    def add_split(self, name: str, table: pa.Table) -> None:
        self._h.update(f"\x00split:{name}\x00".encode())
        for batch in table.to_batches(max_chunksize=8192):
            for row in batch.to_pylist():
                self._h.update(json.dumps(row, sort_keys=True, ensure_ascii=False, default=str).encode())
                self._h.update(b"\n")

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def write_split(folder: Path, name: str, table: pa.Table) -> None:
    pq.write_table(table, folder / f"{name}.parquet", compression="zstd")


class DatasetVersion:
    """A prepared dataset folder, opened for reading."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        manifest = self.path / MANIFEST
        if not manifest.is_file():
            raise DataError(f"{self.path}: not a tunesmith dataset (no {MANIFEST}); create one with `tunesmith data prepare`")
        try:
            self.manifest = DatasetManifest.model_validate_json(manifest.read_text(encoding="utf-8"))
        except ValueError as err:
            raise DataError(f"{manifest}: unreadable manifest: {err}") from None
        if self.manifest.format > DATASET_FORMAT:
            raise DataError(f"{self.path}: dataset format {self.manifest.format} is newer than this tunesmith supports")

    @property
    def config(self) -> ProjectConfig:
        return ProjectConfig.model_validate(self.manifest.config)

    def table(self, split: str) -> pa.Table:
        if split not in SPLITS:
            raise DataError(f"unknown split '{split}'; choose from {list(SPLITS)}")
        return pq.read_table(self.path / f"{split}.parquet", memory_map=True)

    def hf_dataset(self, split: str) -> Any:
        """The split as a memory-mapped Hugging Face `datasets.Dataset`."""
        import datasets

        return datasets.Dataset.from_parquet(str(self.path / f"{split}.parquet"))

    def quarantine(self) -> list[dict[str, Any]]:
        path = self.path / QUARANTINE
        if not path.exists():
            return []
        with path.open(encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]

    def report(self) -> dict[str, Any]:
        return json.loads((self.path / "report.json").read_text(encoding="utf-8"))
