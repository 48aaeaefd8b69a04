"""The export folder: a run folder again (run.json, config.json, model/) plus export.json, so every verb
that takes a run takes an export; and the run's model as one merged transformers folder."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from tunesmith import __version__
from tunesmith.artifacts import RUN_CONFIG, RUN_MANIFEST, RUN_METRICS, RUN_TRAINED_ROWS, STEP_METRICS, TRAINING_LOG, Run
from tunesmith.errors import ConfigError

EXPORT_MANIFEST = "export.json"
POOLING_MODULE = "modeling_tunesmith_pooling"  # remote code for the mean-pooled head (merged exports)
COPIED = (RUN_CONFIG, RUN_METRICS, STEP_METRICS, TRAINING_LOG, RUN_TRAINED_ROWS)  # run files an export keeps


@dataclass
class ExportResult:
    format: str
    path: Path  # the export folder, or the .joblib file
    check: dict[str, Any] = field(default_factory=dict)  # self-check numbers (also in export.json)
    warnings: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)  # how to use it (docker build / run)


def merged_sequence_model(run: Run, predictor: Any = None) -> tuple[Any, Any]:
    """(model, tokenizer) of a classification/regression run, fp32 on the CPU, any adapter merged in
    (`predictor`: the run's Predictor when one is loaded already; its model is merged in place)."""
    from tunesmith.inference.predictor import Predictor

    predictor = predictor or Predictor(run.path, device="cpu")
    if predictor.session is not None:
        raise ConfigError(f"{run.path} is an ONNX export; it has no PyTorch weights to export")
    model = predictor.model
    if run.manifest.adapter:
        model = model.merge_and_unload()
    return model.float().eval(), predictor.tokenizer


def is_mean_pooled(model: Any) -> bool:
    return getattr(model.config, "tunesmith_pooling", None) == "mean"


def _pooling_code(config: Any) -> str:
    """The mean-pooled head's modeling code for `trust_remote_code`, bound to the model's config class.
    It is tunesmith/heads.py itself (which imports only torch and transformers)."""
    from tunesmith.models import heads

    source = Path(heads.__file__).read_text(encoding="utf-8")
    if re.search(r"^\s*(from|import)\s+tunesmith", source, re.MULTILINE):  # pragma: no cover - a guard for heads.py edits
        raise RuntimeError("tunesmith/heads.py must not import tunesmith: it is copied into exports as remote code")
    name = type(config).__name__
    return (f"# Written by tunesmith {__version__} (tunesmith export --format merged): the model class of this folder.\n"
            "# Load with AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True).\n"
            f"{source}\n\nfrom transformers import {name} as _ExportedConfig  # noqa: E402\n\n"
            "MeanPoolingForSequenceClassification.config_class = _ExportedConfig  # what AutoModel registers it under\n")


def save_transformers_folder(model: Any, tokenizer: Any, folder: Path) -> None:
    """model + tokenizer as a plain transformers folder (safetensors); the mean-pooled head as remote code."""
    folder.mkdir(parents=True, exist_ok=True)
    if is_mean_pooled(model):
        model.config.auto_map = {"AutoModelForSequenceClassification": f"{POOLING_MODULE}.MeanPoolingForSequenceClassification"}
        model.config.architectures = ["MeanPoolingForSequenceClassification"]
        (folder / f"{POOLING_MODULE}.py").write_text(_pooling_code(model.config), encoding="utf-8")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def write_run_folder(run: Run, target: Path, fmt: str, info: dict[str, Any]) -> None:
    """run.json (the same manifest, now without an adapter: model/ is self-contained), the run's config
    and metrics, export.json and the model card."""
    from tunesmith.model_card import write_model_card

    m = run.manifest
    manifest = m.model_copy(update={"adapter": False, "merged": False})
    (target / RUN_MANIFEST).write_text(manifest.model_dump_json(indent=2), encoding="utf-8")
    for name in COPIED:
        if (run.path / name).is_file():
            shutil.copy2(run.path / name, target / name)
    exported = {"format": fmt, "source_run": str(run.path.resolve()), "source_method": m.method,
                "source_adapter": m.adapter, "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "tunesmith_version": __version__, **info}
    (target / EXPORT_MANIFEST).write_text(json.dumps(exported, indent=2, default=json_default), encoding="utf-8")
    write_model_card(target)  # with its Export section, from export.json


def json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def finish(target: Path, fmt: str, check: dict[str, Any], found: list[str]) -> ExportResult:
    """Record the self-check in the folder's export.json and return the result."""
    info_path = target / EXPORT_MANIFEST
    info = json.loads(info_path.read_text(encoding="utf-8"))
    info.update(check=check, warnings=found)
    info_path.write_text(json.dumps(info, indent=2, default=json_default), encoding="utf-8")
    return ExportResult(fmt, target, check, found)


def safe_name(name: str) -> str:
    return re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-._") or "model"
