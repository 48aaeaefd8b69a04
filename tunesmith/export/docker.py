"""`--format docker`: a build context (Dockerfile, tunesmith source, the model) serving on port 8000."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tunesmith import __version__
from tunesmith.artifacts import MODEL_DIR, Run
from tunesmith.config import GENERATIVE_TASKS, TaskType
from tunesmith.export.check import CHAT_CHECK_ROWS, SequenceCheck, test_split
from tunesmith.export.folder import EXPORT_MANIFEST, ExportResult, json_default
from tunesmith.export.merged import export_merged

TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
TORCH_VERSION = "2.13.0"
SERVE_CMD = ["tunesmith", "serve", "/app/model", "--host", "0.0.0.0", "--port", "8000"]
DOCKERFILE_MARK = "# Built by `tunesmith export --format docker`"  # the Dockerfile's first line: --overwrite knows it
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
    return f"""{DOCKERFILE_MARK} (tunesmith {__version__}). See COMMANDS.txt.
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
# The serving engine's conversion (ONNX for a classifier, even where this build host would serve it in bf16;
# GGUF or CTranslate2 for a chat model) made once, into the image: containers start without converting, and need
# not write to /app/model.
RUN {json.dumps([*SERVE_CMD[:3], "--prepare"])}

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


def export_docker(run: Run, target: Path, check: bool) -> ExportResult:
    found: list[str] = []
    check_result: dict[str, Any] = {}
    model_dir = target / MODEL_DIR
    if run.manifest.adapter:
        # The image must not depend on a base model folder outside it: merge the adapter in.
        merged = export_merged(run, model_dir, check)
        check_result, found = merged.check, merged.warnings
        what = f"the run with its {run.manifest.method} adapter merged in (a `merged` export)"
    else:
        # The copy is loaded back as the image's build step will: a cut model.safetensors exported with exit 0 and
        # failed only at `docker build` (RUN tunesmith serve --prepare).
        if TaskType(run.manifest.task) in GENERATIVE_TASKS:
            check_result, found = _check_chat_copy(run, model_dir, check)
        else:
            check_result, found = _check_sequence_copy(run, model_dir, check)
        what = f"a copy of {run.path} (without checkpoints/ and eval/)"
    Run(model_dir)  # what the image will serve opens as a run folder
    extra = _project_source(target / "tunesmith-src")
    (target / "Dockerfile").write_text(_dockerfile(extra), encoding="utf-8")
    (target / ".dockerignore").write_text(DOCKERIGNORE, encoding="utf-8")
    tag = image_name(run.manifest.name)
    commands = [f"cd {shlex.quote(str(target.resolve()))}", f"docker build -t {tag} .",
                f"docker run --rm -p 8000:8000 {tag}", "curl http://127.0.0.1:8000/healthz"]
    (target / "COMMANDS.txt").write_text("\n".join(commands) + "\n", encoding="utf-8")
    (target / "README.md").write_text(
        f"# Docker build context for `{run.manifest.name}`\n\n"
        f"- `model/`: the folder the container serves: {what}.\n"
        "- `tunesmith-src/`: the tunesmith source the image installs.\n"
        f"- `Dockerfile`: python:3.11-slim, CPU torch {TORCH_VERSION}, tunesmith, a non-root user, "
        "`tunesmith serve /app/model` on port 8000, a health check on `/healthz`.\n"
        "- `export.json`: what was exported, and the self-check (the run against `model/`); not in the image.\n\n"
        "```bash\n" + "\n".join(commands) + "\n```\n", encoding="utf-8")
    _write_manifest(run, target, check_result, found)
    return ExportResult("docker", target, check_result, found, commands)


def _write_manifest(run: Run, target: Path, check: dict[str, Any], found: list[str]) -> None:
    """export.json at the context's root, as every format writes one: a full run's self-check was printed only.
    Outside model/, so the image does not hold it (the Dockerfile copies tunesmith-src and model only)."""
    m = run.manifest
    info = {"format": "docker", "source_run": str(run.path.resolve()), "source_method": m.method,
            "source_adapter": m.adapter, "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "tunesmith_version": __version__, "check": check, "warnings": found}
    (target / EXPORT_MANIFEST).write_text(json.dumps(info, indent=2, default=json_default), encoding="utf-8")


def image_name(name: str) -> str:
    """A valid Docker image name for a run name: lowercase, components joined by one '.', one or two '_' or a run
    of '-' (Docker's reference grammar). safe_name kept 'cafe..reviews___v1', which `docker build -t` refuses."""
    base = re.sub(r"[^a-z0-9._-]+", "-", name.lower())
    base = re.sub(r"[._-]+", lambda m: m[0] if re.fullmatch(r"\.|__?|-+", m[0]) else "-", base)
    return "tunesmith-" + (base[:100].strip("._-") or "model")  # well inside Docker's 255 characters


def _copy_run(run: Run, model_dir: Path) -> None:
    shutil.copytree(run.path, model_dir, ignore=shutil.ignore_patterns("checkpoints", "eval", "__pycache__", ".serve-cache"))


def _check_sequence_copy(run: Run, model_dir: Path, check: bool) -> tuple[dict[str, Any], list[str]]:
    """The run's predictions on its test split against the copy's (a classifier or regressor, or an ONNX export)."""
    if not check:
        _copy_run(run, model_dir)
        return {"skipped": "self-check skipped (--no-check)"}, []
    from tunesmith.inference.predictor import Predictor

    checker = SequenceCheck(run, True)
    if checker.predictor is None:  # no test split: the run is loaded all the same, so a damaged file is named
        Predictor(run.path, device="cpu")
    checker.predictor = None  # the reference predictions are kept; its model need not be
    _copy_run(run, model_dir)
    return checker.against(Predictor(model_dir, device="cpu").predict)


def _check_chat_copy(run: Run, model_dir: Path, check: bool) -> tuple[dict[str, Any], list[str]]:
    """The run's test loss against the copy's, as the merged export compares a chat run with its export."""
    if not check:
        _copy_run(run, model_dir)
        return {"skipped": "self-check skipped (--no-check)"}, []
    table, skipped = test_split(run)
    conversations = None
    if table is not None:
        rows = table.slice(0, CHAT_CHECK_ROWS).to_pylist()
        conversations = [r["messages"] + ([{"role": "assistant", "content": r["chosen"]}] if "chosen" in r else [])
                         for r in rows]
    reference = _chat_model(run.path)
    reference_scores = reference.score(conversations) if conversations is not None else None
    del reference
    _copy_run(run, model_dir)
    exported = _chat_model(model_dir)
    if reference_scores is None:
        return {"skipped": skipped}, []
    scores = exported.score(conversations)
    result = {"split": "test", "n": len(conversations), "tokens": reference_scores.tokens, "loss_run": reference_scores.loss,
              "loss_export": scores.loss, "loss_diff": scores.loss - reference_scores.loss,
              "token_accuracy_run": reference_scores.mean_token_accuracy,
              "token_accuracy_export": scores.mean_token_accuracy}
    found = [f"the copied model's test loss differs from the run's by {result['loss_diff']:+.4f}"] \
        if abs(result["loss_diff"]) > 1e-3 else []
    return result, found


def _chat_model(path: Path) -> Any:
    """A chat run's model, or an error naming its weights file when they do not load (a cut copy)."""
    from safetensors import SafetensorError

    from tunesmith.inference.generation import ChatModel
    from tunesmith.models.sequence import damaged_weights

    try:
        return ChatModel.from_run(path)
    except (SafetensorError, OSError) as err:
        raise damaged_weights(Run(path).model_dir, err) from err
