"""`tunesmith export RUN --format FORMAT`: a run folder -> something to deploy without the training side.

Formats (each described, with how to load it without tunesmith, in the README's "Export" section):

    merged     the adapter (if any) merged into the base weights: a plain transformers folder in model/
    onnx       the sequence model as ONNX (fp32) for onnxruntime
    onnx-int8  the same, weights dynamically quantised to int8: smaller and faster on CPUs
    joblib     one `<name>.joblib` file holding a predictor bundle (the pickle workflow; needs trust to load)
    docker     a build context: Dockerfile + tunesmith source + the model, serving on port 8000
    gguf       a chat run as one GGUF file (f16) for llama.cpp and Ollama, with an Ollama Modelfile
    gguf-q8_0  the same with 8-bit (Q8_0) matrices: about half the size

merged, onnx and onnx-int8 write a *run folder* (run.json, config.json, model/) plus export.json, so
`tunesmith evaluate` and `tunesmith serve` take an export exactly like the run it came from; gguf and
gguf-q8_0 write model-<quant>.gguf, Modelfile and README.txt (for llama.cpp and Ollama, not tunesmith).
Every export checks itself: it predicts the dataset's test split with the run and with the export
and records how often they agree (and what that costs in accuracy) in export.json.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from tunesmith.artifacts import RUN_MANIFEST, Run
from tunesmith.config import GENERATIVE_TASKS, TaskType
from tunesmith.errors import ConfigError, DataError
from tunesmith.export.bundle import load_joblib
from tunesmith.export.folder import EXPORT_MANIFEST, ExportResult

FORMATS = ("merged", "onnx", "onnx-int8", "joblib", "docker", "gguf", "gguf-q8_0")
GGUF_FORMATS = ("gguf", "gguf-q8_0")
__all__ = ["FORMATS", "ExportResult", "export_run", "load_joblib"]


def export_run(run_dir: str | Path, fmt: str, out: str | Path | None = None, *, overwrite: bool = False,
               check: bool = True) -> ExportResult:
    """Export a run folder (or an export of one) in `fmt`; `out` defaults to `<run>-<fmt>` beside the run."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format '{fmt}'; choose from {', '.join(FORMATS)}")
    run_path = Path(run_dir)
    if not (run_path / RUN_MANIFEST).is_file():
        what = "does not exist" if not run_path.exists() else f"is not a run folder (no {RUN_MANIFEST})"
        raise ConfigError(f"{run_path} {what}; export a folder written by `tunesmith train`")
    run = _open_run(run_path)
    task = TaskType(run.manifest.task)
    if fmt in ("onnx", "onnx-int8", "joblib") and task in GENERATIVE_TASKS:
        raise ConfigError(f"--format {fmt} is for classification and regression runs; {run_path} is a {task.value} run "
                          "(a causal LM): export it with --format merged (a transformers folder) or --format docker")
    if fmt in GGUF_FORMATS and task not in GENERATIVE_TASKS:
        raise ConfigError(f"--format {fmt} is for chat and preference runs (causal LMs: llama.cpp and Ollama generate "
                          f"text); {run_path} is a {task.value} run: export it with --format onnx-int8, merged or docker")
    if fmt != "docker" and (run.model_dir / "model.onnx").is_file():
        raise ConfigError(f"{run_path} is already an ONNX export; export the run it came from "
                          f"({_source_of(run_path)}) instead")
    _refuse_prompt_tuning(run)
    # Resolved first: the default for `tunesmith export .` is `../<run>-<fmt>`, not `./-<fmt>` (inside the run)
    target = Path(out) if out is not None else run_path.resolve().parent / f"{run_path.resolve().name}-{fmt}"
    if target.resolve().is_relative_to(run_path.resolve()):
        raise ConfigError(f"--out {target}: an export cannot be written into the run folder it exports")
    if run_path.resolve().is_relative_to(target.resolve()):  # --overwrite would delete the run (and its neighbours)
        raise ConfigError(f"--out {target} holds the run {run_path} itself; choose a folder outside it")
    if target.exists() and not target.is_dir():
        raise ConfigError(f"--out {target} is a file; an export is a folder")
    # The folder itself, not a symlink to it (deploy/current -> store/v1): renaming and deleting the link instead
    # replaced it with a plain folder, left the old export where it was and a stray link beside it.
    real = target.resolve()
    existed, aside = target.exists(), None
    if existed and any(target.iterdir()):
        if not overwrite:
            raise ConfigError(f"{target} exists and is not empty; choose another --out or pass --overwrite")
        _check_replaceable(target, run)
        # Kept aside until the new export is written: a failed one (a GGUF refusal, a base model gone, Ctrl-C) had
        # deleted the earlier export along with its own half.
        aside = real.with_name(f".{real.name}.replaced-{os.getpid()}")
        shutil.rmtree(aside, ignore_errors=True)
        real.rename(aside)
    real.mkdir(parents=True, exist_ok=True)
    try:
        result = _write(fmt, run, target, check)
    except BaseException:
        shutil.rmtree(real, ignore_errors=True)  # no half-written export that looks like a run folder
        if aside is not None:
            aside.rename(real)  # the earlier export, as it was
        elif existed:
            real.mkdir()  # the user's empty folder, as it was
        raise
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
    return result


def _write(fmt: str, run: Run, target: Path, check: bool) -> ExportResult:
    if fmt == "merged":
        from tunesmith.export.merged import export_merged

        return export_merged(run, target, check)
    if fmt in ("onnx", "onnx-int8"):
        from tunesmith.export.onnx import export_onnx_folder

        return export_onnx_folder(run, target, quantize=fmt == "onnx-int8", check=check)
    if fmt in GGUF_FORMATS:
        from tunesmith.export.gguf import export_gguf

        return export_gguf(run, target, fmt, check)
    if fmt == "joblib":
        from tunesmith.export.bundle import export_joblib

        return export_joblib(run, target, check)
    from tunesmith.export.docker import export_docker

    return export_docker(run, target, check)


def _open_run(path: Path) -> Run:
    """The run (Run names a damaged manifest itself), or an error naming its missing model/, which would
    otherwise surface as a hub error about repo ids."""
    from tunesmith.models.catalog import WEIGHT_FILES

    run = Run(path)
    if not run.model_dir.is_dir():
        raise DataError(f"{run.model_dir} is missing: {path} holds no model to export")
    # A docker export copied a run without its weights and "succeeded"; the image build then failed. A run trained
    # with train.merge_adapter holds full weights in model/ (its adapter is in adapter/): it had no exportable form.
    adapter_only = run.manifest.adapter and not run.manifest.merged
    weights = ("adapter_model.safetensors",) if adapter_only else (*WEIGHT_FILES, "model.onnx")
    if not any((run.model_dir / name).is_file() for name in weights):
        raise DataError(f"{run.model_dir} holds no weights ({weights[0]} is missing): {path} is incomplete, copied "
                        "without them perhaps; export the run folder training wrote")
    return run


def _refuse_prompt_tuning(run: Run) -> None:
    if run.prompt_tuned:
        raise ConfigError(f"{run.path}: a prompt-tuning adapter cannot be merged into the weights (its virtual tokens "
                          "are inputs, not weights), so it has no merged, ONNX, GGUF, joblib or self-contained Docker form; "
                          "serve the run folder itself (tunesmith serve) or train with method lora")


def _check_replaceable(target: Path, run: Run) -> None:
    """--overwrite deletes an earlier export only: it deleted any folder, the run's own dataset included (whose
    self-check then read "skipped"), another run, or the current directory."""
    here, cwd = target.resolve(), Path.cwd().resolve()
    if not _is_export(target) or cwd.is_relative_to(here):
        raise ConfigError(f"--out {target}: --overwrite replaces only an earlier export (a folder whose "
                          f"{EXPORT_MANIFEST} tunesmith wrote), never one that holds the current directory; choose "
                          "another --out, or remove it yourself")
    m = run.manifest
    reads = [("the run's dataset", m.dataset), ("its base model", m.base_model_path)]
    for what, path in reads:
        if path and Path(path).resolve().is_relative_to(here):
            raise ConfigError(f"--out {target}: --overwrite would delete {what} ({path}); choose another --out")


def _is_export(folder: Path) -> bool:
    """Whether tunesmith wrote `folder` as an export: any file named export.json (a user's data) or a Dockerfile
    beside a COMMANDS.txt (a user's project) had its whole folder deleted by --overwrite."""
    try:
        info = json.loads((folder / EXPORT_MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        info = None
    if isinstance(info, dict):
        return info.get("format") in FORMATS and bool(info.get("source_run")) and bool(info.get("tunesmith_version"))
    from tunesmith.export.docker import DOCKERFILE_MARK

    try:  # a docker context written before its export.json was
        with (folder / "Dockerfile").open(encoding="utf-8") as dockerfile:
            return dockerfile.readline().startswith(DOCKERFILE_MARK)
    except (OSError, ValueError):
        return False


def _source_of(path: Path) -> str:
    info = path / EXPORT_MANIFEST
    return json.loads(info.read_text(encoding="utf-8")).get("source_run", "?") if info.is_file() else "?"
