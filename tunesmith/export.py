"""`tunesmith export RUN --format FORMAT`: a run folder -> something to deploy without the training side.

Formats (each described, with how to load it without tunesmith, in the README's "Export" section):

    merged     the adapter (if any) merged into the base weights: a plain transformers folder in model/
    onnx       the sequence model as ONNX (fp32) for onnxruntime
    onnx-int8  the same, weights dynamically quantised to int8: smaller and faster on CPUs
    joblib     one `<name>.joblib` file holding a predictor bundle (the pickle workflow; needs trust to load)
    docker     a build context: Dockerfile + tunesmith source + the model, serving on port 8000

merged, onnx and onnx-int8 write a *run folder* (run.json, config.json, model/) plus export.json, so
`tunesmith evaluate` and `tunesmith serve` take an export exactly like the run it came from.
Every export checks itself: it predicts the dataset's test split with the run and with the export
and records how often they agree (and what that costs in accuracy) in export.json.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from tunesmith import __version__
from tunesmith.artifacts import RUN_MANIFEST, DatasetVersion, Run, RunManifest
from tunesmith.config import GENERATIVE_TASKS, TaskType
from tunesmith.errors import ConfigError, DataError, TunesmithError
from tunesmith.tasks.sequence import targets

FORMATS = ("merged", "onnx", "onnx-int8", "joblib", "docker")
EXPORT_MANIFEST = "export.json"
ONNX_OPSET = 17  # LayerNormalization is a single op from 17 on; onnxruntime >= 1.14 runs it
MAX_DISAGREEMENT = 0.05  # self-check: a larger share of changed predictions is a warning
MAX_ACCURACY_LOSS = 0.01  # ... and so is losing more than 1 point of accuracy (or R²)
CHECK_ROWS = 10_000  # the self-check predicts at most this many test rows
CHAT_CHECK_ROWS = 64  # chat runs: conversations scored by both models
POOLING_MODULE = "modeling_tunesmith_pooling"  # remote code for the mean-pooled head (merged exports)
JOBLIB_FORMAT = 1
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
TORCH_VERSION = "2.13.0"
COPIED = ("config.json", "metrics.json", "step_metrics.csv", "training_log.jsonl")  # run files an export keeps


@dataclass
class ExportResult:
    format: str
    path: Path  # the export folder, or the .joblib file
    check: dict[str, Any] = field(default_factory=dict)  # self-check numbers (also in export.json)
    warnings: list[str] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)  # how to use it (docker build / run)


def export_run(run_dir: str | Path, fmt: str, out: str | Path | None = None, *, overwrite: bool = False,
               check: bool = True) -> ExportResult:
    """Export a run folder (or an export of one) in `fmt`; `out` defaults to `<run>-<fmt>` beside the run."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format '{fmt}'; choose from {', '.join(FORMATS)}")
    run_path = Path(run_dir)
    if not (run_path / RUN_MANIFEST).is_file():
        what = "does not exist" if not run_path.exists() else f"is not a run folder (no {RUN_MANIFEST})"
        raise ConfigError(f"{run_path} {what}; export a folder written by `tunesmith train`")
    run = Run(run_path)
    task = TaskType(run.manifest.task)
    if fmt in ("onnx", "onnx-int8", "joblib") and task in GENERATIVE_TASKS:
        raise ConfigError(f"--format {fmt} is for classification and regression runs; {run_path} is a {task.value} run "
                          "(a causal LM): export it with --format merged (a transformers folder) or --format docker")
    if fmt != "docker" and (run.model_dir / "model.onnx").is_file():
        raise ConfigError(f"{run_path} is already an ONNX export; export the run it came from "
                          f"({_source_of(run_path)}) instead")
    _refuse_prompt_tuning(run)
    target = Path(out) if out is not None else run_path.parent / f"{run_path.name}-{fmt}"
    if target.resolve() == run_path.resolve() or run_path.resolve() in target.resolve().parents:
        raise ConfigError(f"--out {target}: an export cannot be written into the run folder it exports")
    if target.exists() and any(target.iterdir()):
        if not overwrite:
            raise ConfigError(f"{target} exists and is not empty; choose another --out or pass --overwrite")
        shutil.rmtree(target)
    target.mkdir(parents=True, exist_ok=True)
    try:
        if fmt == "merged":
            return _export_merged(run, target, check)
        if fmt in ("onnx", "onnx-int8"):
            return _export_onnx(run, target, quantize=fmt == "onnx-int8", check=check)
        if fmt == "joblib":
            return _export_joblib(run, target, check)
        return _export_docker(run, target, check)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)  # no half-written export that looks like a run folder
        raise


def _refuse_prompt_tuning(run: Run) -> None:
    if run.manifest.adapter and run.manifest.method == "prompt_tuning":
        raise ConfigError(f"{run.path}: a prompt-tuning adapter cannot be merged into the weights (its virtual tokens "
                          "are inputs, not weights), so it has no merged, ONNX, joblib or self-contained Docker form; "
                          "serve the run folder itself (tunesmith serve) or train with method lora")


def _source_of(path: Path) -> str:
    info = path / EXPORT_MANIFEST
    return json.loads(info.read_text(encoding="utf-8")).get("source_run", "?") if info.is_file() else "?"


# -- the run as one model in memory ---------------------------------------------------------------


def merged_sequence_model(run: Run, predictor: Any = None) -> tuple[Any, Any]:
    """(model, tokenizer) of a classification/regression run, fp32 on the CPU, any adapter merged in
    (`predictor`: the run's Predictor when one is loaded already; its model is merged in place)."""
    from tunesmith.predictor import Predictor

    predictor = predictor or Predictor(run.path, device="cpu")
    if predictor.session is not None:
        raise ConfigError(f"{run.path} is an ONNX export; it has no PyTorch weights to export")
    model = predictor.model
    if run.manifest.adapter:
        model = model.merge_and_unload()
    return model.float().eval(), predictor.tokenizer


def _is_mean_pooled(model: Any) -> bool:
    return getattr(model.config, "tunesmith_pooling", None) == "mean"


def _pooling_code(config: Any) -> str:
    """The mean-pooled head's modeling code for `trust_remote_code`, bound to the model's config class.
    It is tunesmith/heads.py itself (which imports only torch and transformers)."""
    from tunesmith import heads

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
    if _is_mean_pooled(model):
        model.config.auto_map = {"AutoModelForSequenceClassification": f"{POOLING_MODULE}.MeanPoolingForSequenceClassification"}
        model.config.architectures = ["MeanPoolingForSequenceClassification"]
        (folder / f"{POOLING_MODULE}.py").write_text(_pooling_code(model.config), encoding="utf-8")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


# -- the export folder (a run folder) -------------------------------------------------------------


def _write_run_folder(run: Run, target: Path, fmt: str, info: dict[str, Any]) -> None:
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
    (target / EXPORT_MANIFEST).write_text(json.dumps(exported, indent=2, default=_json_default), encoding="utf-8")
    write_model_card(target)
    with (target / "README.md").open("a", encoding="utf-8") as f:
        f.write(f"\n## Export\n\nExported as `{fmt}` from `{run.path}` by tunesmith {__version__}; "
                f"the self-check is in `{EXPORT_MANIFEST}`.\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# -- self-check -----------------------------------------------------------------------------------


def _test_split(run: Run) -> tuple[Any | None, str | None]:
    """The test split of the run's dataset, or why there is none to check with."""
    try:
        table = DatasetVersion(run.manifest.dataset).table("test")
    except (DataError, OSError) as err:
        return None, f"self-check skipped: the run's dataset is not available ({err})"
    if table.num_rows == 0:
        return None, "self-check skipped: the test split is empty"
    return table.slice(0, CHECK_ROWS), None




def compare_predictions(task: TaskType, reference: Any, exported: Any, truth: np.ndarray | None) -> dict[str, Any]:
    """How far the export's predictions are from the run's: agreement and the accuracy (R²) difference."""
    ref, exp = np.asarray(reference.outputs), np.asarray(exported.outputs)
    out: dict[str, Any] = {"n": int(len(ref))}
    if task == TaskType.regression:
        diff = np.abs(ref - exp)
        out.update(max_abs_diff=float(diff.max()), mean_abs_diff=float(diff.mean()))
        if truth is not None:
            def r2(pred: np.ndarray) -> float:
                total = float(((truth - truth.mean()) ** 2).sum())
                return 1.0 - float(((truth - pred) ** 2).sum()) / total if total > 0 else float("nan")
            out.update(r2_run=r2(ref), r2_export=r2(exp), r2_diff=r2(exp) - r2(ref))
        return out
    same = (ref == exp).all(axis=1) if ref.ndim == 2 else ref == exp  # multi-label: the whole label set
    out["agreement"] = float(same.mean())
    if reference.proba is not None and exported.proba is not None:
        out["max_proba_diff"] = float(np.abs(reference.proba - exported.proba).max())
    if truth is not None:
        def accuracy(pred: np.ndarray) -> float:
            return float(((pred == truth).all(axis=1) if pred.ndim == 2 else pred == truth).mean())
        out.update(accuracy_run=accuracy(ref), accuracy_export=accuracy(exp), accuracy_diff=accuracy(exp) - accuracy(ref))
    return out


def check_warnings(check: dict[str, Any]) -> list[str]:
    found = []
    if "agreement" in check and 1 - check["agreement"] > MAX_DISAGREEMENT:
        found.append(f"the export changes {1 - check['agreement']:.1%} of the test predictions "
                     f"(more than {MAX_DISAGREEMENT:.0%})")
    if check.get("accuracy_diff", 0.0) < -MAX_ACCURACY_LOSS:
        found.append(f"the export loses {-check['accuracy_diff'] * 100:.1f} points of test accuracy "
                     f"({check['accuracy_run']:.4f} -> {check['accuracy_export']:.4f})")
    if check.get("r2_diff", 0.0) < -MAX_ACCURACY_LOSS:
        found.append(f"the export loses {-check['r2_diff']:.4f} of test R² ({check['r2_run']:.4f} -> {check['r2_export']:.4f})")
    return found


class _SequenceCheck:
    """Predict the test split with the run now, with the export later, and compare."""

    def __init__(self, run: Run, enabled: bool) -> None:
        self.run = run
        self.task = TaskType(run.manifest.task)
        self.table, self.skipped = _test_split(run) if enabled else (None, "self-check skipped (--no-check)")
        self.reference = None
        self.predictor: Any = None  # the run's predictor, handed on to merged_sequence_model (loaded once)
        if self.table is not None:
            from tunesmith.predictor import Predictor

            self.texts = self.table.column("text").to_pylist()
            self.predictor = Predictor(run.path, device="cpu")
            self.reference = self.predictor.predict(self.texts)

    def against(self, predict: Any) -> tuple[dict[str, Any], list[str]]:
        if self.reference is None:
            return {"skipped": self.skipped}, []
        truth = targets(self.task, self.table, len(self.run.manifest.labels or []))
        check = compare_predictions(self.task, self.reference, predict(self.texts), truth)
        check["split"] = "test"
        return check, check_warnings(check)


# -- merged ---------------------------------------------------------------------------------------


def _export_merged(run: Run, target: Path, check: bool) -> ExportResult:
    task = TaskType(run.manifest.task)
    if task in GENERATIVE_TASKS:
        return _export_merged_chat(run, target, check)
    checker = _SequenceCheck(run, check)
    model, tokenizer = merged_sequence_model(run, checker.predictor)
    save_transformers_folder(model, tokenizer, target / "model")
    del model
    info = {"mean_pooling_remote_code": (target / "model" / f"{POOLING_MODULE}.py").is_file()}
    _write_run_folder(run, target, "merged", info)
    from tunesmith.predictor import Predictor

    result, found = checker.against(Predictor(target, device="cpu").predict)
    return _finish(target, "merged", result, found)


def _export_merged_chat(run: Run, target: Path, check: bool) -> ExportResult:
    from tunesmith.generation import ChatModel, load_run_model
    from tunesmith.tasks import chat

    model, tokenizer = load_run_model(run, merge=True)
    stops = run.manifest.stop_token_ids or chat.stop_token_ids(tokenizer)
    model.generation_config.eos_token_id = list(stops)  # plain `generate` stops at the end of a turn too
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    reference = None
    table, skipped = _test_split(run) if check else (None, "self-check skipped (--no-check)")
    if table is not None:
        rows = table.slice(0, CHAT_CHECK_ROWS).to_pylist()
        conversations = [r["messages"] + ([{"role": "assistant", "content": r["chosen"]}] if "chosen" in r else [])
                         for r in rows]
        reference = ChatModel.from_run(run.path).score(conversations)
    save_transformers_folder(model, tokenizer, target / "model")
    del model
    _write_run_folder(run, target, "merged", {})
    if reference is None:
        return _finish(target, "merged", {"skipped": skipped}, [])
    exported = ChatModel.from_run(target).score(conversations)
    result = {"split": "test", "n": len(conversations), "tokens": reference.tokens, "loss_run": reference.loss,
              "loss_export": exported.loss, "loss_diff": exported.loss - reference.loss,
              "token_accuracy_run": reference.mean_token_accuracy, "token_accuracy_export": exported.mean_token_accuracy}
    found = []
    if abs(result["loss_diff"]) > 1e-3:
        found.append(f"the merged model's test loss differs from the run's by {result['loss_diff']:+.4f}")
    return _finish(target, "merged", result, found)


def _finish(target: Path, fmt: str, check: dict[str, Any], found: list[str]) -> ExportResult:
    """Record the self-check in the folder's export.json and return the result."""
    info_path = target / EXPORT_MANIFEST
    info = json.loads(info_path.read_text(encoding="utf-8"))
    info.update(check=check, warnings=found)
    info_path.write_text(json.dumps(info, indent=2, default=_json_default), encoding="utf-8")
    return ExportResult(fmt, target, check, found)


# -- ONNX -----------------------------------------------------------------------------------------


def _onnx_inputs(model: Any, tokenizer: Any) -> list[str]:
    import inspect

    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in tokenizer.model_input_names and "token_type_ids" in inspect.signature(model.forward).parameters:
        names.append("token_type_ids")
    return names


def _sample_inputs(tokenizer: Any, names: list[str]) -> dict[str, np.ndarray]:
    """Texts of different lengths, so the batch is padded and the attention mask is traced as data."""
    batch = tokenizer(["a short text", "a somewhat longer text, so that the first one of the two is padded",
                       "and a third one"], padding=True, return_tensors="np")
    return {n: (batch[n] if n in batch else np.zeros_like(batch["input_ids"])).astype(np.int64) for n in names}


def export_onnx(model: Any, tokenizer: Any, path: Path) -> dict[str, Any]:
    """The sequence model as an ONNX graph: named inputs, dynamic batch and sequence axes, output `logits`.

    The TorchScript exporter comes first: its graph is the one onnxruntime's int8 kernels run fastest
    (minilm, the same batch of 64 texts on 2 cores: int8 2.4-2.7x faster than PyTorch fp32, against
    1.5-2.0x from the dynamo exporter's graph). The dynamo exporter is the fallback for models the
    tracer cannot take (it needs onnxscript).
    """
    import torch

    names = _onnx_inputs(model, tokenizer)

    class LogitsOnly(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
            extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, **extra).logits

    wrapper = LogitsOnly(model).eval()  # the exporter restores the wrapper's mode afterwards: eval, no dropout
    args = tuple(torch.from_numpy(a) for a in _sample_inputs(tokenizer, names).values())
    axes = {n: {0: "batch", 1: "sequence"} for n in names} | {"logits": {0: "batch"}}
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer and deprecation chatter; the self-check is what tells
        try:
            torch.onnx.export(wrapper, args, str(path), dynamo=False, input_names=names, output_names=["logits"],
                              opset_version=ONNX_OPSET, dynamic_axes=axes, do_constant_folding=True)
            exporter = "torchscript"
        except Exception as first:  # noqa: BLE001 - try the other exporter, report both if it fails too
            try:
                from torch.export import Dim

                batch, seq = Dim("batch"), Dim("sequence")
                program = torch.onnx.export(wrapper, args, dynamo=True, verbose=False, input_names=names,
                                            output_names=["logits"], opset_version=max(ONNX_OPSET, 18),
                                            dynamic_shapes=tuple({0: batch, 1: seq} for _ in names))
                program.save(str(path))
                exporter = "dynamo"
            except Exception as second:  # noqa: BLE001
                raise TunesmithError(f"ONNX export failed: torchscript exporter: {first}; dynamo exporter: {second}") from None
    import onnx

    graph = onnx.load(str(path), load_external_data=False)
    opset = next(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx"))
    return {"exporter": exporter, "opset": opset, "inputs": names, "outputs": ["logits"]}


def quantize_int8(source: Path, path: Path) -> None:
    """Dynamic quantisation: int8 weights for every MatMul/Gemm, activations quantised on the fly."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    quiet = logging.getLogger()
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "consider pre-processing" advice: shape inference gains nothing here
    try:
        quantize_dynamic(str(source), str(path), weight_type=QuantType.QInt8)
    finally:
        quiet.setLevel(level)


def _export_onnx(run: Run, target: Path, quantize: bool, check: bool) -> ExportResult:
    fmt = "onnx-int8" if quantize else "onnx"
    checker = _SequenceCheck(run, check)
    model, tokenizer = merged_sequence_model(run, checker.predictor)
    folder = target / "model"
    folder.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "model.onnx" if quantize else folder / "model.onnx"
        info = export_onnx(model, tokenizer, fp32)
        if quantize:
            quantize_int8(fp32, folder / "model.onnx")
            info["quantization"] = "dynamic int8 weights (onnxruntime.quantization.quantize_dynamic, QInt8)"
    model.config.save_pretrained(folder)  # labels and sizes, for tools that read an ONNX folder (optimum)
    tokenizer.save_pretrained(folder)
    del model
    info["size_bytes"] = (folder / "model.onnx").stat().st_size
    _write_run_folder(run, target, fmt, info)
    from tunesmith.predictor import Predictor

    result, found = checker.against(Predictor(target).predict)
    return _finish(target, fmt, result, found)


# -- joblib ---------------------------------------------------------------------------------------


class PredictorBundle:
    """Everything to rebuild a run's predictor from one file: the run's manifest, the model config,
    the merged weights (numpy arrays), and the tokenizer files. `predict(texts)` works like
    `tunesmith.predictor.Predictor.predict`."""

    def __init__(self, manifest: dict[str, Any], model_config: dict[str, Any], state_dict: dict[str, np.ndarray],
                 tokenizer_files: dict[str, bytes], mean_pooling: bool) -> None:
        self.format = JOBLIB_FORMAT
        self.manifest = manifest
        self.model_config = model_config
        self.state_dict = state_dict
        self.tokenizer_files = tokenizer_files
        self.mean_pooling = mean_pooling
        self._predictor: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_predictor"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _predictor=None)

    @property
    def labels(self) -> list[str] | None:
        return self.manifest.get("labels")

    def predictor(self) -> Any:
        """The rebuilt `Predictor` (built on first use)."""
        if self._predictor is None:
            import torch
            from transformers import CONFIG_MAPPING, AutoModelForSequenceClassification, AutoTokenizer

            from tunesmith.predictor import Predictor

            with tempfile.TemporaryDirectory() as tmp:
                for name, data in self.tokenizer_files.items():
                    (Path(tmp) / name).write_bytes(data)
                tokenizer = AutoTokenizer.from_pretrained(tmp)
            config_dict = dict(self.model_config)
            config = CONFIG_MAPPING[config_dict.pop("model_type")].from_dict(config_dict)
            if self.mean_pooling:
                from tunesmith.heads import MeanPoolingForSequenceClassification

                model = MeanPoolingForSequenceClassification(config)
            else:
                model = AutoModelForSequenceClassification.from_config(config)
            model.load_state_dict({k: torch.tensor(v) for k, v in self.state_dict.items()}, strict=True)
            self._predictor = Predictor.from_parts(RunManifest.model_validate(self.manifest), tokenizer, model)
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
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    import joblib

    bundle = joblib.load(path)
    if not isinstance(bundle, PredictorBundle):
        raise DataError(f"{path}: not a tunesmith predictor bundle (it holds a {type(bundle).__name__})")
    if bundle.format > JOBLIB_FORMAT:
        raise DataError(f"{path}: bundle format {bundle.format} is newer than this tunesmith supports")
    return bundle


def _export_joblib(run: Run, target: Path, check: bool) -> ExportResult:
    import joblib

    checker = _SequenceCheck(run, check)
    model, tokenizer = merged_sequence_model(run, checker.predictor)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        files = {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}
    config = model.config.to_dict()
    config.pop("auto_map", None)
    manifest = run.manifest.model_copy(update={"adapter": False, "merged": False}).model_dump(mode="json")
    bundle = PredictorBundle(manifest, config, {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()},
                             files, _is_mean_pooled(model))
    del model
    path = target / f"{_safe_name(run.manifest.name)}.joblib"
    joblib.dump(bundle, path)
    result, found = checker.against(load_joblib(path, trust=True).predict)
    info = {"format": "joblib", "source_run": str(run.path.resolve()), "file": path.name, "check": result,
            "warnings": found, "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "tunesmith_version": __version__, "load": "tunesmith.export.load_joblib(path, trust=True)"}
    (target / EXPORT_MANIFEST).write_text(json.dumps(info, indent=2, default=_json_default), encoding="utf-8")
    return ExportResult("joblib", path, result, found)


def _safe_name(name: str) -> str:
    return re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-._") or "model"


# -- docker ---------------------------------------------------------------------------------------

SERVE_CMD = ["tunesmith", "serve", "/app/model", "--host", "0.0.0.0", "--port", "8000"]
HEALTHCHECK = ("import sys, urllib.request; "
               "sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status == 200 else 1)")


def _project_source(dest: Path) -> str:
    """tunesmith's source into the build context (no git repo needed): the package, its pyproject and
    README. Returns the pip extra to install (`[serve]` when the project defines one)."""
    import tunesmith

    package = Path(tunesmith.__file__).parent
    shutil.copytree(package, dest / "tunesmith", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    root = package.parent
    pyproject = root / "pyproject.toml"
    if pyproject.is_file() and re.search(r'^name\s*=\s*"tunesmith"', pyproject.read_text(encoding="utf-8"), re.MULTILINE):
        shutil.copy2(pyproject, dest / "pyproject.toml")
        text = pyproject.read_text(encoding="utf-8")
        for extra in ("README.md", "LICENSE"):
            if (root / extra).is_file():
                shutil.copy2(root / extra, dest / extra)
        return "[serve]" if re.search(r"^serve\s*=", text, re.MULTILINE) else ""
    # An installed (non-source) tunesmith: a minimal pyproject from the installed metadata.
    from importlib.metadata import requires

    deps = [r for r in requires("tunesmith") or [] if "extra ==" not in r]
    (dest / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=69"]\nbuild-backend = "setuptools.build_meta"\n\n'
        f'[project]\nname = "tunesmith"\nversion = "{__version__}"\nrequires-python = ">=3.11"\n'
        f"dependencies = {json.dumps(deps)}\n\n"
        '[project.scripts]\ntunesmith = "tunesmith.cli:main"\n\n'
        '[tool.setuptools.packages.find]\ninclude = ["tunesmith*"]\n', encoding="utf-8")
    return ""


def _dockerfile(extra: str) -> str:
    return f"""# Built by `tunesmith export --format docker` (tunesmith {__version__}). See COMMANDS.txt.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \\
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HOME=/tmp/hf

# CPU torch first, from PyTorch's CPU index: otherwise pip would pull a multi-GB CUDA build.
RUN pip install torch=={TORCH_VERSION} --index-url {TORCH_CPU_INDEX}

# tunesmith from the source copied into this context (no git repository needed).
COPY tunesmith-src /tmp/tunesmith-src
RUN pip install "/tmp/tunesmith-src{extra}" && rm -rf /tmp/tunesmith-src

RUN useradd --create-home --uid 10001 tunesmith
COPY --chown=tunesmith:tunesmith model /app/model
USER tunesmith
WORKDIR /app

EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \\
    CMD {json.dumps(["python", "-c", HEALTHCHECK])}
CMD {json.dumps(SERVE_CMD)}
"""


DOCKERIGNORE = """# Only what the image needs goes to the Docker daemon.
**/__pycache__
**/*.pyc
**/.DS_Store
model/checkpoints
model/eval
"""


def _export_docker(run: Run, target: Path, check: bool) -> ExportResult:
    found: list[str] = []
    check_result: dict[str, Any] = {}
    model_dir = target / "model"
    if run.manifest.adapter:
        # The image must not depend on a base model folder outside it: merge the adapter in.
        merged = _export_merged(run, model_dir, check)
        check_result, found = merged.check, merged.warnings
        what = f"the run with its {run.manifest.method} adapter merged in (a `merged` export)"
    else:
        shutil.copytree(run.path, model_dir, ignore=shutil.ignore_patterns("checkpoints", "eval", "__pycache__"))
        what = f"a copy of {run.path} (without checkpoints/ and eval/)"
    Run(model_dir)  # what the image will serve opens as a run folder
    extra = _project_source(target / "tunesmith-src")
    (target / "Dockerfile").write_text(_dockerfile(extra), encoding="utf-8")
    (target / ".dockerignore").write_text(DOCKERIGNORE, encoding="utf-8")
    tag = f"tunesmith-{_safe_name(run.manifest.name)}"
    commands = [f"cd {target.resolve()}", f"docker build -t {tag} .", f"docker run --rm -p 8000:8000 {tag}",
                "curl http://127.0.0.1:8000/healthz"]
    (target / "COMMANDS.txt").write_text("\n".join(commands) + "\n", encoding="utf-8")
    (target / "README.md").write_text(
        f"# Docker build context for `{run.manifest.name}`\n\n"
        f"- `model/`: the folder the container serves: {what}.\n"
        "- `tunesmith-src/`: the tunesmith source the image installs.\n"
        f"- `Dockerfile`: python:3.11-slim, CPU torch {TORCH_VERSION}, tunesmith, a non-root user, "
        "`tunesmith serve /app/model` on port 8000, a health check on `/healthz`.\n\n"
        "```bash\n" + "\n".join(commands) + "\n```\n", encoding="utf-8")
    return ExportResult("docker", target, check_result, found, commands)
