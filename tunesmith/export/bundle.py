"""`--format joblib`: one file holding a predictor bundle (the pickle workflow; loading it needs trust)."""

from __future__ import annotations

import json
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from tunesmith import __version__
from tunesmith.artifacts import Run, RunManifest
from tunesmith.errors import ConfigError, DataError
from tunesmith.export.check import SequenceCheck
from tunesmith.export.folder import EXPORT_MANIFEST, ExportResult, is_mean_pooled, json_default, merged_sequence_model, safe_name

JOBLIB_FORMAT = 1


class PredictorBundle:
    """Everything to rebuild a run's predictor from one file: the run's manifest, the model config,
    the merged weights (numpy arrays), and the tokenizer files. `predict(texts)` works like
    `tunesmith.inference.predictor.Predictor.predict`."""

    def __init__(self, manifest: dict[str, Any], model_config: dict[str, Any], state_dict: dict[str, np.ndarray],
                 tokenizer_files: dict[str, bytes], mean_pooling: bool, clean: dict[str, Any] | None = None) -> None:
        self.format = JOBLIB_FORMAT
        self.clean = clean  # the run's data.clean: texts are cleaned as training's were (None: a bundle from before)
        self.manifest = manifest
        self.model_config = model_config
        self.state_dict = state_dict
        self.tokenizer_files = tokenizer_files
        self.mean_pooling = mean_pooling
        self._predictor: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_predictor"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update({"clean": None, **state}, _predictor=None)

    @property
    def labels(self) -> list[str] | None:
        return self.manifest.get("labels")

    def predictor(self) -> Any:
        """The rebuilt `Predictor` (built on first use)."""
        if self._predictor is None:
            import torch
            from transformers import CONFIG_MAPPING, AutoModelForSequenceClassification, AutoTokenizer

            from tunesmith.inference.predictor import Predictor

            with tempfile.TemporaryDirectory() as tmp:
                for name, data in self.tokenizer_files.items():
                    (Path(tmp) / name).write_bytes(data)
                tokenizer = AutoTokenizer.from_pretrained(tmp)
            config_dict = dict(self.model_config)
            config = CONFIG_MAPPING[config_dict.pop("model_type")].from_dict(config_dict)
            if self.mean_pooling:
                from tunesmith.models.heads import MeanPoolingForSequenceClassification

                model = MeanPoolingForSequenceClassification(config)
            else:
                model = AutoModelForSequenceClassification.from_config(config)
            model.load_state_dict({k: torch.tensor(v) for k, v in self.state_dict.items()}, strict=True)
            from tunesmith.config import CleanSpec

            clean = CleanSpec.model_validate(self.clean) if self.clean is not None else None
            self._predictor = Predictor.from_parts(RunManifest.model_validate(self.manifest), tokenizer, model, clean=clean)
        return self._predictor

    def predict(self, texts: list[str], batch_size: int = 64) -> Any:
        return self.predictor().predict(list(texts), batch_size)

    def logits(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        return self.predictor().logits(list(texts), batch_size)


def load_joblib(path: str | Path, trust: bool = False) -> PredictorBundle:
    """Load a `--format joblib` bundle. Unpickling runs code from the file, so it needs `trust=True`:
    load only bundles you made yourself or got from someone you trust (safetensors exports carry no code)."""
    path = Path(path)
    if not trust:
        raise ConfigError(f"refusing to load {path}: unpickling a joblib file runs code stored in it. Load only files you "
                          "made or trust, with load_joblib(path, trust=True); the safetensors and ONNX exports carry no code")
    if path.is_dir():  # the export's folder: the bundle is the .joblib file inside it
        found = sorted(path.glob("*.joblib"))
        hint = f"; load {found[0]}" if found else ""
        raise DataError(f"{path}: is a folder{hint}")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    import joblib

    try:
        bundle = joblib.load(path)
    except Exception as err:  # noqa: BLE001 - unpickling a wrong or cut file raises KeyError, EOFError, ValueError...
        raise DataError(f"{path}: not a readable tunesmith joblib bundle ({type(err).__name__}: {err}); load the "
                        "<name>.joblib file of a `tunesmith export --format joblib` folder, copied whole") from None
    if not isinstance(bundle, PredictorBundle):
        raise DataError(f"{path}: not a tunesmith predictor bundle (it holds a {type(bundle).__name__})")
    if bundle.format > JOBLIB_FORMAT:
        raise DataError(f"{path}: bundle format {bundle.format} is newer than this tunesmith supports")
    return bundle


def export_joblib(run: Run, target: Path, check: bool) -> ExportResult:
    import joblib

    checker = SequenceCheck(run, check)
    model, tokenizer = merged_sequence_model(run, checker.predictor)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        files = {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}
    config = model.config.to_dict()
    config.pop("auto_map", None)
    manifest = run.manifest.model_copy(update={"adapter": False, "merged": False}).model_dump(mode="json")
    bundle = PredictorBundle(manifest, config, {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()},
                             files, is_mean_pooled(model), run.config.data.clean.model_dump(mode="json"))
    del model
    path = target / f"{safe_name(run.manifest.name)}.joblib"
    joblib.dump(bundle, path)
    result, found = checker.against(load_joblib(path, trust=True).predict)
    info = {"format": "joblib", "source_run": str(run.path.resolve()), "file": path.name, "check": result,
            "warnings": found, "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "tunesmith_version": __version__, "load": "tunesmith.export.load_joblib(path, trust=True)"}
    (target / EXPORT_MANIFEST).write_text(json.dumps(info, indent=2, default=json_default), encoding="utf-8")
    return ExportResult("joblib", path, result, found)
