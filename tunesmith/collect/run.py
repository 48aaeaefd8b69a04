"""Which collector runs for a source, and when: `tunesmith collect` runs them all (or some), and
`data prepare` collects a source whose file is not there yet.

A finished collection is reused until `--refresh` (web pages also come from the HTTP cache, so a
refresh refetches only what the cache lacks); an interrupted REST collection continues from its
saved position. Survey exports are files read directly at `data prepare` time: nothing to collect.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from pathlib import Path

from tunesmith.collect.sink import Collected, Sink, collected_file, failures_file, state_file
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


def collect_one(cfg: ProjectConfig, index: int, refresh: bool = False, say: Callable[[str], None] = _quiet) -> Collected:
    spec = cfg.data.sources[index]
    if not collectable(spec):
        raise ConfigError(f"data.sources.{index}: kind '{spec.kind}' is read directly by `data prepare`; nothing to collect")
    path = collected_file(cfg, index, spec)
    state = state_file(path)
    status = None if refresh else _resumable(path, state)
    if status is False:
        failures = failures_file(path)
        return Collected(index, spec.kind or "", spec.describe(), path, _count(path), _count(failures),
                         failures if failures.exists() else None, ["already collected (--refresh collects again)"], skipped=True)
    resume = status is True
    if spec.kind in RESUMABLE:  # append to the file itself, so a killed run keeps every page it saved
        if not resume:  # a fresh start: the last collection's rows, position and failures all go
            path.unlink(missing_ok=True)
            state.unlink(missing_ok=True)
            failures_file(path).unlink(missing_ok=True)
        resume = True
    elif refresh:
        state.unlink(missing_ok=True)
    say(f"collecting data.sources.{index} ({spec.describe()})" + (" — resuming" if status is True else ""))
    module = importlib.import_module(COLLECTORS[spec.kind or ""])
    with Sink(path, spec.kind or "", resume=resume) as sink:
        module.collect(cfg, index, spec, sink, say)
    return Collected(index, spec.kind or "", spec.describe(), path, sink.rows, sink.failures,
                     sink.failures_path if sink.failures else None, sink.notes)


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
