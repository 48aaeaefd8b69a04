"""Which collector runs for a source, and when: `tunesmith collect` runs them all (or some), and
`data prepare` collects a source whose file is not there yet.

A finished collection is reused until `--refresh` or until the source's settings change (a hash of them is kept
beside the collected file; web pages also come from the HTTP cache, so a refresh refetches only what the cache
lacks); an interrupted REST collection continues from its saved position, and a REST refresh that does not finish
puts the previous collection back. Survey exports are files read directly at `data prepare` time: nothing to collect.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
from collections.abc import Callable
from pathlib import Path

from tunesmith.collect.sink import Collected, Sink, collected_file, failures_file, meta_file, state_file
from tunesmith.config import COLLECTED_KINDS, ProjectConfig, SourceSpec
from tunesmith.errors import ConfigError

COLLECTORS = {"web": "tunesmith.collect.web", "rest": "tunesmith.collect.rest", "hub": "tunesmith.collect.hub",
              "synthetic": "tunesmith.collect.synthetic"}  # kind -> module with `collect(cfg, index, spec, sink, say)`
RESUMABLE = ("rest",)  # collectors that save a position (sink.state_path) after each page


def _quiet(_: str) -> None:
    pass


def collectable(spec: SourceSpec) -> bool:
    return spec.kind in COLLECTORS


def _resumable(path: Path, state: Path) -> bool | None:
    """True: an unfinished collection to continue; False: a finished one; None: nothing yet."""
    if state.exists():
        try:
            return not json.loads(state.read_text(encoding="utf-8")).get("done", False)
        except (OSError, json.JSONDecodeError):
            return None  # an unreadable position cannot be trusted: start over
    return False if path.exists() else None


def settings_hash(spec: SourceSpec) -> str:
    """A hash of what decides a source's rows: its kind and its `web:`/`rest:`/`hub:`/`synthetic:` section. The http
    settings (rate limit, retries, cache, robots) change how politely rows are fetched, not which."""
    section = getattr(spec, spec.kind or "", None)
    settings = {"kind": spec.kind, "section": section.model_dump(mode="json") if section is not None else None}
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _recorded_hash(path: Path) -> str | None:
    """The settings hash a collection was made from; None for one made before it was recorded (or unreadable)."""
    try:
        value = json.loads(meta_file(path).read_text(encoding="utf-8")).get("settings")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def _record_hash(path: Path, spec: SourceSpec) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    meta_file(path).write_text(json.dumps({"settings": settings_hash(spec)}) + "\n", encoding="utf-8")


def _own_files(path: Path) -> list[Path]:
    return [path, state_file(path), failures_file(path), meta_file(path)]


def _aside(file: Path) -> Path:
    return file.with_name(file.name + ".previous")


def _set_aside(path: Path) -> None:
    """Move the last collection's files out of the way of a refresh (`<file>.previous`)."""
    for file in _own_files(path):
        if file.exists():
            os.replace(file, _aside(file))


def _put_back(path: Path) -> None:
    """The refresh did not finish: the collection set aside comes back whole (the refresh's files go)."""
    for file in _own_files(path):
        file.unlink(missing_ok=True)
        if _aside(file).exists():
            os.replace(_aside(file), file)


def _has_aside(path: Path) -> bool:
    return any(_aside(file).exists() for file in _own_files(path))


def _drop_aside(path: Path) -> None:
    for file in _own_files(path):
        _aside(file).unlink(missing_ok=True)


def _recover(path: Path) -> None:
    """A refresh killed before it saved its first position left only the set-aside files: they are the collection."""
    if not state_file(path).exists() and not path.exists() and _has_aside(path):
        _put_back(path)


def collect_one(cfg: ProjectConfig, index: int, refresh: bool = False, say: Callable[[str], None] = _quiet) -> Collected:
    spec = cfg.data.sources[index]
    if not collectable(spec):
        raise ConfigError(f"data.sources.{index}: kind '{spec.kind}' is read directly by `data prepare`; nothing to collect")
    path = collected_file(cfg, index, spec)
    state = state_file(path)
    _recover(path)
    status = _resumable(path, state)
    recorded = _recorded_hash(path) if status is not None else None
    changed = recorded is not None and recorded != settings_hash(spec)  # no hash: made before it was kept; reused
    if changed:
        say(f"data.sources.{index} ({spec.describe()}): settings changed since it was collected; collecting again")
    restart = refresh or changed  # what was collected is not to be reused or resumed
    if status is False and not restart:
        failures = failures_file(path)
        return Collected(index, spec.kind or "", spec.describe(), path, _count(path), _count(failures),
                         failures if failures.exists() else None, ["already collected (--refresh collects again)"], skipped=True)
    resume = status is True and not restart
    if spec.kind in RESUMABLE:  # append to the file itself, so a killed run keeps every page it saved
        if not resume:
            if changed:  # a fallback set aside for other settings is none for these
                _drop_aside(path)
            if refresh and not changed and not _has_aside(path):
                _set_aside(path)  # the last collection stays whole until the refresh is done
            else:  # another source's rows, or a refresh killed earlier (its fallback is already aside): they go
                for file in _own_files(path):
                    file.unlink(missing_ok=True)
            _record_hash(path, spec)
        resume = True
    elif restart:
        state.unlink(missing_ok=True)
    kept = _has_aside(path)
    say(f"collecting data.sources.{index} ({spec.describe()})" + (" — resuming" if status is True and not restart
                                                                   else ""))
    module = importlib.import_module(COLLECTORS[spec.kind or ""])
    try:
        with Sink(path, spec.kind or "", resume=resume) as sink:
            module.collect(cfg, index, spec, sink, say)
    except BaseException:
        if kept:
            _put_back(path)
        raise
    if kept:
        if _resumable(path, state) is not False:
            return _kept_previous(index, spec, path)
        _drop_aside(path)
    if spec.kind not in RESUMABLE:
        _record_hash(path, spec)
    return Collected(index, spec.kind or "", spec.describe(), path, sink.rows, sink.failures,
                     sink.failures_path if sink.failures else None, sink.notes)


def _kept_previous(index: int, spec: SourceSpec, path: Path) -> Collected:
    """A refresh that stopped short: the previous collection is put back, and the summary says why."""
    why = "it did not reach the end"
    failures = failures_file(path)
    if failures.exists():
        lines = [line for line in failures.read_text(encoding="utf-8").splitlines() if line.strip()]
        try:
            why = str(json.loads(lines[-1]).get("reason") or why) if lines else why
        except (ValueError, AttributeError):
            pass
    _put_back(path)
    note = (f"refresh stopped ({why}); the previous collection is kept as it was: `tunesmith collect --refresh` "
            "tries again")
    return Collected(index, spec.kind or "", spec.describe(), path, _count(path), _count(failures),
                     failures if failures.exists() else None, [note])


def _count(path: Path) -> int:
    return sum(1 for line in path.open("rb") if line.strip()) if path.exists() else 0


def collect_sources(cfg: ProjectConfig, only: list[int] | None = None, refresh: bool = False,
                    say: Callable[[str], None] = _quiet) -> list[Collected]:
    """Collect every collectable source (or the 1-based indices in `only`), in config order."""
    chosen = [i for i, s in enumerate(cfg.data.sources) if collectable(s)]
    if only:
        bad = [n for n in only if not 1 <= n <= len(cfg.data.sources) or not collectable(cfg.data.sources[n - 1])]
        if bad:
            raise ConfigError(f"--source {bad}: not a collected source; collected sources are "
                              f"{[i + 1 for i in chosen]} (web, rest, hub, synthetic)")
        chosen = [n - 1 for n in only]
    if not chosen:
        raise ConfigError(f"no source to collect: data.sources has no {'/'.join(k for k in COLLECTED_KINDS if k != 'survey')} "
                          "source (survey exports and files are read by `data prepare` directly)")
    # Synthetic sources dedup against (and paraphrase) the real rows, so they run last.
    chosen.sort(key=lambda i: cfg.data.sources[i].kind == "synthetic")
    return [collect_one(cfg, i, refresh, say) for i in chosen]


def ensure_collected(cfg: ProjectConfig, index: int, spec: SourceSpec, say: Callable[[str], None] = _quiet,
                     warn: Callable[[str], None] = _quiet) -> Path:
    """The collected JSONL of a source, collecting it first when it is missing or unfinished. `warn` hears of a
    collection that stopped short or lost items: the dataset is built from what there is, and its report says so."""
    done = collect_one(cfg, index, refresh=False, say=say)
    if done.rows == 0:
        from tunesmith.errors import DataError

        hint = f"; see {done.failures_path}" if done.failures_path else ""
        raise DataError(f"data.sources.{index} ({spec.describe()}): collected no rows{hint}")
    unfinished = _resumable(done.path, state_file(done.path)) is True
    if unfinished or done.failures:
        said = "; ".join(n for n in done.notes if "stopped" in n) or ("unfinished" if unfinished else "")
        lost = f"{done.failures} failed (see {failures_file(done.path)})" if done.failures else ""
        again = "`tunesmith collect` resumes it" if unfinished else "`tunesmith collect --refresh` tries them again"
        again = "" if "collect again" in said else f"; {again}"
        warn(f"data.sources.{index} ({spec.describe()}): {'; '.join(x for x in (said, lost) if x)}; built from the "
             f"{done.rows} rows collected{again}")
    return done.path
