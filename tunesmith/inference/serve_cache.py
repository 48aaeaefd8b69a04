"""A run converted for a serving engine (CTranslate2, llama.cpp's GGUF, onnxruntime's ONNX), cached beside the run.

`<run>/.serve-cache/<name>/` holds the conversion and a fingerprint of what it was made from (run.json's
bytes, each weight file's name, size and time, the converter's version). It is converted again only when the
fingerprint changes, into a scratch folder renamed into place, so a half-written conversion is never served.
A read-only run folder (a mounted volume) caches in the user's cache folder instead, unless it holds a current
conversion (`tunesmith serve --prepare`). One conversion at a time per folder: the others wait and use it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunesmith.artifacts import RUN_MANIFEST, Run, is_run
from tunesmith.config import cache_dir
from tunesmith.errors import ConfigError

CACHE_DIR = ".serve-cache"  # beside run.json: deleting the run deletes its converted copies
FINGERPRINT = "fingerprint.txt"


def chain(run: Run) -> list[Path]:
    """The folders whose weights make the run's model: model/, then the base an adapter sits on (recursively)."""
    from tunesmith.models.loading import base_model_dir

    folders = [run.model_dir]
    m = run.manifest
    if m.adapter and not m.merged:
        base = base_model_dir(m)
        folders += chain(Run(base)) if is_run(base) else [base]
    return folders


def architecture_config(run: Run) -> Any:
    """The transformers config of the run's model (an adapter run: its base's)."""
    from transformers import AutoConfig

    folder = next((f for f in chain(run) if (f / "config.json").is_file()), None)
    if folder is None:
        raise ConfigError(f"{run.path}: no config.json in {', '.join(map(str, chain(run)))}")
    return AutoConfig.from_pretrained(folder)


def fingerprint(run: Run, converter: str) -> str:
    """Changes whenever the weights could have: run.json's bytes and each weight file's name, size and time
    (stat, not the bytes: hashing gigabytes at every server start would cost more than it saves)."""
    h = hashlib.sha256(f"{converter}\n".encode())
    h.update((run.path / RUN_MANIFEST).read_bytes())
    for folder in chain(run):
        for f in sorted(folder.rglob("*")):
            if f.is_file() and f.suffix in (".safetensors", ".bin", ".json", ".model", ".txt"):
                st = f.stat()
                h.update(f"{f.relative_to(folder)} {st.st_size} {st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def converted(run: Run, name: str, converter: str, convert: Callable[[Path], None]) -> Path:
    """The folder `name` of `run`'s cache, made now by `convert(folder)` unless its fingerprint is current
    (`converter`: the converter and its version, part of the fingerprint)."""
    from tunesmith.store.db import file_lock

    digest = fingerprint(run, converter)
    target = run.path / CACHE_DIR / name
    # a current conversion in the run is served even where the run folder is read-only (one prepared with
    # `--prepare`, then mounted read-only), rather than converted again into the user's cache folder
    if not _current(target, digest) and not os.access(run.path, os.W_OK):
        target = cache_dir() / "serve" / f"{run.manifest.name}-{digest}-{name}"
    if _current(target, digest):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # one conversion at a time (a server's threads, or servers sharing the run folder); the others then find it
    # current: converting side by side, each renamed the other's folder away (FileNotFoundError, "Directory not
    # empty") or under a server that was loading it. The lock file stays (removed, a waiter would hold a stale one).
    with file_lock(target.parent / f"{target.name}.lock"):
        if _current(target, digest):
            return target
        work = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))  # same disk: the rename is atomic
        try:
            (work / "out").mkdir()
            convert(work / "out")
            (work / "out" / FINGERPRINT).write_text(digest + "\n")
            if target.exists():
                target.rename(work / "old")  # removed with `work`
            (work / "out").rename(target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return target


def _current(target: Path, digest: str) -> bool:
    stamp = target / FINGERPRINT
    return stamp.is_file() and stamp.read_text().strip() == digest
