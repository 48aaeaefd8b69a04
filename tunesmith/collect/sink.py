"""Where a collector's output goes: the collected JSONL file, its failure list, and provenance.

Every record a collector keeps is written with a `_provenance` object: the source kind, where the
record came from (URL, endpoint, file:line, model), when, and which collector version; `data prepare`
carries it into the dataset (and marks synthetic rows). Failures (a 404, a page robots.txt
disallows, a malformed response) are listed per item in `<name>.failures.jsonl` instead of
aborting the run. A fresh collection writes to a temporary file and replaces the old one only when
it finishes, so an interrupted run never leaves a half file where a complete one was; a resumable
collector (REST) always appends to the file itself and keeps its position in `<name>.state.json`, so
even a killed run continues where it stopped (a refresh sets the old files aside, and puts them back unless it
finishes). `<name>.meta.json` records a hash of the source's settings: a collection made from other settings is
not reused.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tunesmith import __version__
from tunesmith.config import ProjectConfig, SourceSpec

COLLECTOR = f"tunesmith-collect/{__version__}"
PROVENANCE_KEY = "_provenance"  # reserved key in collected records; `data prepare` reads it, never as a field


def collect_dir(cfg: ProjectConfig) -> Path:
    return cfg.data.collect_dir or Path("collected") / cfg.name


def collected_file(cfg: ProjectConfig, index: int, spec: SourceSpec) -> Path:
    """The JSONL file of the `index`-th source (0-based, as in data.sources)."""
    return collect_dir(cfg) / f"source-{index + 1}-{spec.kind}.jsonl"


def state_file(path: Path) -> Path:
    """A resumable collection's saved position (REST): {"done": false, ...} until it finishes."""
    return path.with_name(path.stem + ".state.json")


def failures_file(path: Path) -> Path:
    return path.with_name(path.stem + ".failures.jsonl")


def meta_file(path: Path) -> Path:
    """What a collection was made from: {"settings": <hash of the source's settings>}. The file name says only the
    source's position and kind, so a changed (or swapped) source is told apart by this."""
    return path.with_name(path.stem + ".meta.json")


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _json_line(value: dict[str, Any]) -> str:
    """One JSON line, readable text where it can be. Half an emoji (a lone surrogate, `\\ud83d`, from a page or an
    API) cannot be written as UTF-8: written escaped, the data reader quarantines that record by file and line."""
    line = json.dumps(value, ensure_ascii=False, default=str)
    return (json.dumps(value, default=str) if _LONE_SURROGATE.search(line) else line) + "\n"


@dataclass
class Sink:
    """Writes one source's records and failures. Use as a context manager; `resume=True` appends."""

    path: Path
    kind: str
    resume: bool = False
    rows: int = 0
    failures: int = 0
    notes: list[str] = field(default_factory=list)  # one-line remarks for the summary (e.g. "resumed at page 7")

    def __post_init__(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._partial = self.path if self.resume else self.path.with_name(self.path.name + ".partial")
        if self.resume and self.path.exists():
            self.rows = sum(1 for line in self.path.open("rb") if line.strip())
        self._out = self._partial.open("a" if self.resume else "w", encoding="utf-8")
        self.failures_path = failures_file(self.path)
        # beside the records: an interrupted --refresh kept the old records but had already emptied their failures
        self._fail_partial = self.failures_path if self.resume else self.failures_path.with_name(
            self.failures_path.name + ".partial")
        self._fail = self._fail_partial.open("a" if self.resume else "w", encoding="utf-8")
        if self.resume:  # the earlier runs' failures still stand, as their rows do
            self.failures = sum(1 for line in self._fail_partial.open("rb") if line.strip())

    @property
    def state_path(self) -> Path:
        return state_file(self.path)

    def add(self, record: dict[str, Any], origin: str, **extra: Any) -> None:
        """Keep one record. `origin`: where it came from (URL, endpoint, file:line, model name)."""
        prov = {"kind": self.kind, "origin": origin, "collected_at": now(), "collector": COLLECTOR, **extra}
        self._out.write(_json_line({**record, PROVENANCE_KEY: prov}))
        self.rows += 1

    def fail(self, origin: str, reason: str, **extra: Any) -> None:
        """List one item that could not be collected, with why (status code, robots.txt, parse error)."""
        self._fail.write(_json_line({"origin": origin, "reason": reason, "at": now(), **extra}))
        self._fail.flush()
        self.failures += 1

    def drop_failures(self, stale: Callable[[dict[str, Any]], bool]) -> None:
        """Forget the listed failures `stale` picks: a resumed collection asks for those items again (one that fails
        again is listed anew), and a page collected since had still counted as lost."""
        self._fail.close()
        kept = []
        with self._fail_partial.open(encoding="utf-8") as f:
            for line in f:
                try:
                    failure = json.loads(line)
                except ValueError:  # not ours to judge: kept
                    failure = None
                drop = isinstance(failure, dict) and stale(failure)
                if line.strip() and not drop:
                    kept.append(line)
        tmp = self._fail_partial.with_name(self._fail_partial.name + ".tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        os.replace(tmp, self._fail_partial)
        self._fail = self._fail_partial.open("a", encoding="utf-8")
        self.failures = len(kept)

    def flush(self) -> None:
        """Make what was added durable (a resumable collector calls this before saving its position)."""
        self._out.flush()
        os.fsync(self._out.fileno())

    def truncate(self, rows: int) -> None:
        """Keep only the first `rows` records: a resumable collector killed mid-page wrote some past its saved
        position, and fetches them again from there."""
        self._out.flush()
        offset = kept = 0
        with self._partial.open("rb") as f:
            for line in f:
                if kept == rows:
                    break
                offset += len(line)
                kept += line.strip() != b""
        os.truncate(self._partial, offset)
        self.rows = kept

    def __enter__(self) -> Sink:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self._out.close()
        self._fail.close()
        if not self.resume:
            if exc_type is None:
                os.replace(self._partial, self.path)
                os.replace(self._fail_partial, self.failures_path)
            else:
                self._partial.unlink(missing_ok=True)
                self._fail_partial.unlink(missing_ok=True)


@dataclass
class Collected:
    """What one source's collection produced, for the summary table and `data prepare`."""

    index: int
    kind: str
    describe: str
    path: Path
    rows: int
    failures: int
    failures_path: Path | None
    notes: list[str]
    skipped: bool = False  # already collected and not refreshed
