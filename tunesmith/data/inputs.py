"""The files a dataset is prepared from, recorded in its manifest, so that training prepares it again once one
of them changed (a relabelled CSV, rows added after "the validation split has no rows", `collect --refresh`)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from tunesmith.artifacts import DatasetVersion, InputFile
from tunesmith.config import ProjectConfig

Stamp = tuple[int, int]  # (size, mtime_ns)


def input_files(cfg: ProjectConfig) -> list[Path]:
    """The files preparing `cfg`'s data reads: each source's file (every file under a folder source), the rows a
    collected source collected, the corrections file. Not packaged datasets: the installed package fixes them."""
    from tunesmith.collect.run import collectable
    from tunesmith.collect.sink import collected_file

    files: list[Path] = []
    for index, spec in enumerate(cfg.data.sources):
        if collectable(spec):
            files.append(collected_file(cfg, index, spec))
        elif spec.path is not None:
            files.extend(_files_under(spec.path) if spec.path.is_dir() else [spec.path])
    if cfg.data.annotate.corrections is not None:
        files.append(cfg.data.annotate.corrections)
    return [path.absolute() for path in files]


def _files_under(folder: Path) -> list[Path]:
    # not hidden ones (the text folder reader skips them): a .DS_Store or a notebook checkpoint is no new data
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def stamps(cfg: ProjectConfig) -> dict[str, Stamp]:
    """Size and mtime of each input file that exists now: taken before preparing reads them."""
    out = {}
    for path in input_files(cfg):
        try:
            stat = path.stat()
        except OSError:
            continue
        out[str(path)] = (stat.st_size, stat.st_mtime_ns)
    return out


def record_inputs(cfg: ProjectConfig, before: dict[str, Stamp]) -> dict[str, InputFile]:
    """What each input file is now, once preparing has read it (a file gone since is left out). A file that changed
    while it was being read (its stamp differs from `before`'s) is recorded without a hash, so the next training
    prepares again: which of its versions the rows came from cannot be told."""
    recorded = {}
    for path in input_files(cfg):
        try:
            stat = path.stat()  # before hashing: a file written meanwhile reads as changed, never as unchanged
            name, now = str(path), (stat.st_size, stat.st_mtime_ns)
            moved = name in before and before[name] != now
            recorded[name] = InputFile(size=now[0], mtime_ns=now[1], sha256="" if moved else sha256(path))
        except OSError:
            continue
    return recorded


def sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def changed_inputs(cfg: ProjectConfig, version: DatasetVersion) -> list[str]:
    """The files `cfg`'s data is read from that differ from those `version` was prepared from (`data.csv changed`
    lines). A file whose size and mtime are as recorded is taken as unchanged, unread; one with another mtime only
    if its content differs. A dataset prepared before the files were recorded has none."""
    recorded = version.manifest.inputs
    if recorded is None:
        return []
    now = {str(path): path for path in input_files(cfg)}
    changed = [f"{_shown(name)} is new" for name in now if name not in recorded]
    changed += [f"{_shown(name)} is gone" for name in recorded if name not in now]
    for name, then in recorded.items():
        if name in now and (why := _file_change(now[name], then)):
            changed.append(f"{_shown(name)} {why}")
    return changed


def _file_change(path: Path, then: InputFile) -> str | None:
    try:
        stat = path.stat()
        if then.sha256 and stat.st_size == then.size and (stat.st_mtime_ns == then.mtime_ns or sha256(path) == then.sha256):
            return None
    except OSError:
        return "is gone"
    return "changed since" if then.sha256 else "changed while it was being prepared"


def _shown(name: str) -> str:
    """A file as the user names it: relative to the working directory when it is under it."""
    try:
        return str(Path(name).relative_to(Path.cwd()))
    except ValueError:
        return name
