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
from pydantic import BaseModel, ValidationError

from tunesmith import __version__
from tunesmith.config import SPLITS, ProjectConfig
from tunesmith.errors import DataError

DATASET_FORMAT = 1  # bump when the folder layout changes incompatibly
MANIFEST = "manifest.json"
QUARANTINE = "quarantine.jsonl"


class _Described(BaseModel):
    """What every folder says about itself: which project and task, when, made by which version."""

    name: str
    task: str
    description: str
    created_at: str
    tunesmith_version: str


class InputFile(BaseModel):
    """One file a dataset was prepared from, as it was then: training prepares the dataset again once it changed."""

    size: int
    mtime_ns: int
    sha256: str  # compared only when size or mtime differ: a `git checkout` that touched the file changed nothing


class DatasetManifest(_Described):
    format: int = DATASET_FORMAT
    kind: str = "tunesmith-dataset"
    fingerprint: str  # sha256 of the split contents
    counts: dict[str, int]  # rows per split, plus quarantine and input totals
    labels: list[str] | None  # id -> label (label_id is the index)
    tokenizer: str  # model whose tokenizer counted n_tokens
    context_length: int | None  # the model's context window, as its tokenizer states it
    max_length: int | None = None  # the token budget per example (ModelSpec.token_budget); None: written before it was recorded
    config: dict[str, Any]  # the fully resolved ProjectConfig
    # absolute path -> every file preparing it read (sources, the files of folder sources, collected rows,
    # corrections; not packaged datasets); None: written before they were recorded, so never found changed
    inputs: dict[str, InputFile] | None = None


class Fingerprint:
    """Order-sensitive hash of the rows of every split (each row as canonical JSON), without where the project folder
    is: the same data prepared in a moved or copied project had another fingerprint (a row's `source` is its file's
    absolute path; its id already names the file)."""

    def __init__(self) -> None:
        self._h = hashlib.sha256()

    def add_split(self, name: str, table: pa.Table) -> None:
        self._h.update(f"\x00split:{name}\x00".encode())
        if "source" in table.column_names:
            table = table.drop_columns(["source"])
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
        self.manifest = _read_manifest(manifest, DatasetManifest, DATASET_FORMAT, "dataset",
                                       "prepare it again with `tunesmith data prepare`")

    @property
    def config(self) -> ProjectConfig:
        return _saved_config(self.manifest.config, self.path / MANIFEST, "prepare it again with `tunesmith data prepare`")

    def table(self, split: str) -> pa.Table:
        if split not in SPLITS:
            raise DataError(f"unknown split '{split}'; choose from {list(SPLITS)}")
        path = self.file(f"{split}.parquet")
        try:
            return pq.read_table(path, memory_map=True)
        except (pa.ArrowInvalid, OSError) as err:  # cut short (an interrupted copy): was an internal error
            raise self._damaged(path, err) from None

    def hf_dataset(self, split: str) -> Any:
        """The split as a memory-mapped Hugging Face `datasets.Dataset`."""
        import datasets
        from datasets.exceptions import DatasetGenerationError

        path = self.file(f"{split}.parquet")
        try:
            if pq.ParquetFile(path).metadata.num_rows == 0:
                # from_parquet fails on a file without rows ("BatchSize must be greater than 0"), and an empty split
                # (all validation rows quarantined as duplicates) was reported as a damaged folder
                return datasets.Dataset(pq.read_table(path))
            return datasets.Dataset.from_parquet(str(path))
        except (pa.ArrowInvalid, OSError, DatasetGenerationError) as err:
            raise self._damaged(path, err.__cause__ or err) from None

    @staticmethod
    def _damaged(path: Path, err: BaseException) -> DataError:
        return DataError(f"{path}: unreadable ({err}); the dataset folder is damaged or partly copied: prepare it "
                         "again with `tunesmith data prepare`")

    def file(self, name: str) -> Path:
        """A file of the folder, which must be there: a partly copied folder was an internal FileNotFoundError."""
        path = self.path / name
        if not path.is_file():
            raise DataError(f"{path}: missing; the dataset folder is damaged or partly copied: prepare it again with "
                            "`tunesmith data prepare`")
        return path

    def quarantine(self) -> list[dict[str, Any]]:
        path = self.path / QUARANTINE
        if not path.exists():
            return []
        with path.open(encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]

    def report(self) -> dict[str, Any]:
        return json.loads(self.file("report.json").read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------
# The run folder: everything evaluation, export and serving need, and nothing else.
#
#   run.json            RunManifest: task, labels, target scaling, base model, method, data fingerprint
#   config.json         the resolved ProjectConfig the run was started with (resume checks it)
#   model/              safetensors weights + tokenizer (+ chat template, generation config for chat),
#                       or a PEFT adapter over `base_model_path`
#   adapter/            chat runs with train.merge_adapter: the adapter that model/ has merged in
#   step_metrics.csv    chat runs: OpenAI's per-step metrics (train_loss, valid_loss, ...)
#   checkpoints/        Trainer checkpoints; a checkpoint is complete once it holds COMPLETE
#   training_log.jsonl  every logged step and evaluation
#   metrics.json        validation metrics of the best checkpoint
#   README.md           model card
#   eval/<split>/       evaluation reports (tunesmith evaluate)

RUN_FORMAT = 1
RUN_MANIFEST = "run.json"
RUN_CONFIG = "config.json"
# the dataset a run started on (path, fingerprint, labels, split counts): a resume must go on with it
RUN_DATASET = "dataset.json"
RUN_TRAINED_ROWS = "trained_rows.json"  # its training rows' hashed keys: evaluate leaves them out of a re-prepared split
MODEL_DIR = "model"
ADAPTER_DIR = "adapter"
TRAINING_LOG = "training_log.jsonl"
RUN_METRICS = "metrics.json"
STEP_METRICS = "step_metrics.csv"
CHECKPOINT_DONE = "COMPLETE"


def is_run(path: str | Path) -> bool:
    """A finished run folder (or an export of one): it has run.json."""
    return (Path(path) / RUN_MANIFEST).is_file()


def is_dataset(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


class RunManifest(_Described):
    format: int = RUN_FORMAT
    kind: str = "tunesmith-run"
    base_model: str  # as configured (packaged name or folder)
    base_model_path: str  # the resolved folder the weights came from
    method: str
    adapter: bool  # model/ holds a PEFT adapter that needs base_model_path
    labels: list[str] | None
    thresholds: list[float] | None = None  # multi-label decision thresholds, tuned on validation
    target_scaling: dict[str, float] | None = None  # regression: predictions * std + mean = user's units
    max_length: int
    dataset: str
    dataset_fingerprint: str
    parameters: dict[str, int]  # trainable, total
    best_metric: dict[str, float] = {}
    metrics: dict[str, float] = {}  # validation metrics of the kept model
    train_runtime_s: float = 0.0
    processes: int = 1
    hyperparameters: dict[str, Any] = {}  # epochs (as configured), epochs_trained, steps, batch_size, learning_rate
    openai_hyperparameters: dict[str, Any] | None = None  # n_epochs, batch_size, learning_rate_multiplier, resolved
    stop_token_ids: list[int] | None = None  # chat: tokens that end an answer (EOS and the end-of-turn token)
    merged: bool = False  # model/ holds the adapter merged into full weights; the adapter itself is in adapter/
    parent_run: str | None = None  # incremental training: the run whose weights (or adapter) this one continued from


class Run:
    """A finished run folder, opened for reading."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        manifest = self.path / RUN_MANIFEST
        if not manifest.is_file():
            raise DataError(_gguf_export(self.path) or f"{self.path}: not a finished tunesmith run (no {RUN_MANIFEST}); "
                            "train one with `tunesmith train`, or resume it with `tunesmith train --resume`")
        self.manifest = _read_manifest(manifest, RunManifest, RUN_FORMAT, "run", "train it again")

    @property
    def model_dir(self) -> Path:
        return self.path / MODEL_DIR

    @property
    def prompt_tuned(self) -> bool:
        """A prompt-tuning adapter: its virtual tokens are inputs, not weights, so it has no merged form (no export,
        no converting engine, nothing to train on from)."""
        return bool(self.manifest.adapter and self.manifest.method == "prompt_tuning")

    @property
    def exported(self) -> dict[str, Any] | None:
        """An export folder's export.json (format, source_run, ...), None for a run tunesmith trained. Read by name:
        export/folder.py, which writes it, is a layer above."""
        try:
            info = json.loads((self.path / "export.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return info if isinstance(info, dict) and "format" in info else None

    @property
    def config(self) -> ProjectConfig:
        path = self.path / RUN_CONFIG
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise DataError(f"{path}: the run's config is missing or unreadable ({err}); train it again") from None
        return _saved_config(saved, path, "train it again")


def _gguf_export(path: Path) -> str | None:
    """What to do with a GGUF export folder given where a run was expected (tunesmith runs no GGUF file), or None.
    export.json is read here by name: export/folder.py, which writes it, is a layer above."""
    try:
        exported = json.loads((path / "export.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(exported, dict) or not str(exported.get("format", "")).startswith("gguf"):
        return None
    file = path / str(exported.get("file") or "model.gguf")
    source = exported.get("source_run")
    instead = (f"give tunesmith the run it was exported from instead (`tunesmith serve {source}`)" if source
               else "give tunesmith the run it was exported from instead")
    modelfile = path / "Modelfile"
    ollama = f" (or `ollama create NAME -f {modelfile}`)" if modelfile.is_file() else ""
    return (f"{path}: a GGUF export (export.json), which is for llama.cpp or Ollama, not a tunesmith run: "
            f"run it with `llama-server -m {file}`{ollama}, or {instead}")


def _read_manifest(path: Path, model: type[Any], newest: int, what: str, remedy: str) -> Any:
    """A folder's manifest. Its format is checked before its fields, which a newer format may have changed:
    a newer folder is refused as newer, not as damaged; a damaged or truncated one is named as such."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:  # bad JSON or bad UTF-8: truncated by a full disk, or not ours
        raise DataError(f"{path} is not a valid {what} manifest ({err}); the folder is damaged: {remedy}") from None
    found = raw.get("format") if isinstance(raw, dict) else None
    if isinstance(found, int) and found > newest:
        raise DataError(f"{path.parent}: {what} format {found} is newer than this tunesmith supports "
                        f"(up to {newest}; written by tunesmith {raw.get('tunesmith_version', '?')}): upgrade tunesmith")
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise DataError(f"{path} is not a valid {what} manifest ({field}: {first['msg']}); "
                        f"the folder is damaged: {remedy}") from None


def _saved_config(saved: Any, path: Path, remedy: str) -> ProjectConfig:
    """The resolved config a folder was made with; one this tunesmith cannot read (a setting since renamed
    or removed) is named with the file instead of surfacing as a bare pydantic error."""
    try:
        return ProjectConfig.model_validate(saved)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()[:3])
        raise DataError(f"{path}: its saved config does not validate in tunesmith {__version__} ({problems}); "
                        f"{remedy}") from None


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint that was completely written (a kill mid-save leaves no COMPLETE)."""
    done = [p for p in (run_dir / "checkpoints").glob("checkpoint-*") if (p / CHECKPOINT_DONE).exists()]
    return max(done, key=lambda p: int(p.name.split("-")[-1]), default=None)
