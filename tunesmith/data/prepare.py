"""`tunesmith data prepare`: sources -> clean, deduplicated, split, reported dataset version.

Row-local work (parse, map fields, validate, clean) runs while each file streams and lands in an
Arrow file on disk; whole-column work (token lengths, duplicates, split, leakage) then runs on that
memory-mapped table. Every input row ends in exactly one place: a split or the quarantine file.
"""

from __future__ import annotations

import fcntl
import itertools
import json
import mmap
import os
import re
import shutil
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tunesmith import __version__
from tunesmith.artifacts import MANIFEST, QUARANTINE, DatasetManifest, DatasetVersion, Fingerprint, write_split
from tunesmith.config import CHAT_MAX_LENGTH_CAP, GENERATIVE_TASKS, SPLITS, ProjectConfig, SourceSpec, TaskType
from tunesmith.data import dedup, report, split
from tunesmith.data.inputs import record_inputs, stamps
from tunesmith.data.raw import Raw
from tunesmith.data.records import TARGET_TYPES, Canonicalizer, Corrections, Rejection, canonical_schema
from tunesmith.data.sources import SNIFF_BYTES, TEXT_KINDS, read_jsonl, read_source, sniff_file_encoding
from tunesmith.errors import ConfigError, DataError

BATCH = 10_000  # rows per Arrow record batch while streaming
CHUNK = 50_000  # rows per chunk of a pass over the table: bounds what a pass holds as Python objects
# MinHash permutations: fixed, so that which near duplicates go never changes with data.split.seed (only the split
# should); 42, the default split seed, which they used before, so default datasets stay as they were.
NEAR_SEED = 42
REMOVAL_STAGES = ("template", "length", "exact_duplicate", "conflict", "near_duplicate", "leakage")  # after reading
Progress = Callable[[str, int, int | None], None]  # (task, completed, total) -> None


def _no_progress(task: str, done: int, total: int | None) -> None:
    pass


@dataclass
class Step:
    name: str
    rows_in: int
    rows_out: int = 0
    reasons: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {"step": self.name, "rows_in": self.rows_in, "rows_out": self.rows_out,
                "removed": self.rows_in - self.rows_out, "reasons": dict(self.reasons.most_common())}


def category(reason: str) -> str:
    """A reason with its specific values blanked, so that counts group by kind of problem."""
    reason = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", reason)
    reason = re.sub(r"\[[^\]]*\]|\([^)]*\)", "", reason)
    return re.sub(r"(?<![\w-])\d+(\.\d+)?(?![\w-])", "N", reason).strip(" :;,")  # a value, not utf-8's or cp1252's


class Quarantine:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._f = path.open("w", encoding="utf-8")
        self.count = 0
        self.by_stage: Counter[str] = Counter()
        self.examples: dict[str, list[dict[str, Any]]] = defaultdict(list)  # stage -> first few entries

    def add(self, r: Rejection) -> None:
        self._f.write(r.to_json() + "\n")
        self.count += 1
        self.by_stage[r.stage] += 1
        if len(self.examples[r.stage]) < 5:
            self.examples[r.stage].append({"location": r.location(), "id": r.id, "reason": r.reason,
                                           "record": _preview(r.record)})

    def close(self) -> None:
        self._f.close()


def _token_counter(tokenizer: Any) -> Callable[[list[str]], list[int]]:
    """Token counts as the model's tokenizer really splits each text: no padding, no truncation.

    The Rust tokenizer directly (batched over every core, no attention masks or Python id lists built
    just to be measured), on a copy with padding and truncation switched off: a tokenizer.json may
    carry fixed ones (all-MiniLM-L6-v2 pads and truncates to 128), which would make every count 128.
    """
    if not tokenizer.is_fast:
        return lambda batch: [len(ids) for ids in tokenizer(batch, padding=False, truncation=False)["input_ids"]]
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_padding()
    backend.no_truncation()
    return lambda batch: [len(e.ids) for e in backend.encode_batch(batch)]


def read_records(cfg: ProjectConfig, index: int, spec: SourceSpec, needed: dict[str, Any],
                 say: Callable[[str], None] = lambda _: None, warn: Callable[[str], None] = lambda _: None
                 ) -> Iterator[Raw]:
    """The raw records of data.sources[index]: a collected source (web, rest, hub, synthetic) from its
    JSONL, collected first when it is not there yet (`warn`: it stopped short or lost items); a survey export
    through the survey reader; a file or packaged dataset through its reader."""
    from tunesmith.collect.run import collectable, ensure_collected

    if collectable(spec):
        yield from read_jsonl(ensure_collected(cfg, index, spec, say, warn), "utf-8")
    elif spec.kind == "survey":
        from tunesmith.collect import survey

        yield from survey.read(spec, needed, warn)
    else:
        yield from read_source(spec, needed)


def _preview(record: Any) -> Any:
    if isinstance(record, dict):
        return {k: (v[:200] + "…" if isinstance(v, str) and len(v) > 200 else v) for k, v in list(record.items())[:8]}
    return record[:300] if isinstance(record, str) else record


def prepare(cfg: ProjectConfig, out_dir: Path | None = None, progress: Progress = _no_progress) -> DatasetVersion:
    out = Path(out_dir or cfg.dataset_dir)
    _check_output_folder(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # One preparation of a folder at a time (two terminals, two `train` runs preparing it): the staging folder is
    # fixed, and the second run deleted it under the first, which crashed or published a folder mixing both runs.
    with _preparation_lock(out):
        _restore_interrupted_swap(out)
        _check_output_folder(out)
        staging = out.parent / f".{out.name}.staging"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        try:
            _Preparation(cfg, staging, progress).run()
            _swap_into_place(staging, out)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return DatasetVersion(out)


@contextmanager
def _preparation_lock(out: Path) -> Iterator[None]:
    """An exclusive lock (flock) on preparing `out`, between processes on one machine; say so when this one waits.

    Not store.db's file_lock: `tune` holds that one on `.{out}.lock` while it calls this (flock does not nest in one
    process), and this lock file is deleted at the end, as nothing else is left beside the dataset. A run that waited
    on a file the holder deleted locks the new one instead (the inode check), so two never hold it at once."""
    lock = out.parent / f".{out.name}.prepare.lock"
    said = False
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not said:
                    print(f"waiting for another preparation of {out} to finish", file=sys.stderr, flush=True)
                    said = True
                fcntl.flock(fd, fcntl.LOCK_EX)
            if _same_file(lock, fd):
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)  # while still held: one waiting on it finds it gone and locks a new one
        os.close(fd)


def _same_file(path: Path, fd: int) -> bool:
    try:
        here, held = path.stat(), os.fstat(fd)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (held.st_dev, held.st_ino)


def _restore_interrupted_swap(out: Path) -> None:
    """A run stopped between the two renames of `_swap_into_place` left the previous version aside: put it back."""
    old = out.parent / f".{out.name}.old"
    if (old / MANIFEST).exists() and not (out / MANIFEST).exists() and not (out.exists() and any(out.iterdir())):
        if out.exists():
            out.rmdir()
        old.rename(out)


def _check_output_folder(out: Path) -> None:
    """Refuse an output that cannot take the dataset before any work is done, not after the whole prepare (a file
    there failed the swap at the very end with "internal error: NotADirectoryError")."""
    for path in (out, *out.parents):
        if path.exists() and not path.is_dir():
            raise DataError(f"{path}: is a file; choose a folder for the dataset (--out or data.output_dir)")
    if out.is_dir() and not (out / MANIFEST).exists() and any(out.iterdir()):
        raise DataError(_not_a_dataset(out))


def _not_a_dataset(out: Path) -> str:
    """Why `out` cannot be replaced: an interrupted preparation's leftover (its files, no manifest) can be deleted;
    anything else is someone's folder."""
    if (out / QUARANTINE).exists() or any(out.glob("*.parquet")):
        return (f"{out}: holds an incomplete dataset without {MANIFEST} (a preparation was interrupted, or two ran at "
                f"once with an older tunesmith); delete the folder {out} and prepare again")
    return f"{out}: exists and is not a tunesmith dataset; choose another output_dir"


def _swap_into_place(staging: Path, out: Path) -> None:
    """Replace `out` with the finished folder, so a failed run never leaves a half-written version."""
    old = out.parent / f".{out.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        if not (out / MANIFEST).exists() and any(out.iterdir()):
            raise DataError(_not_a_dataset(out))
        out.rename(old)
    staging.rename(out)
    shutil.rmtree(old, ignore_errors=True)


class _Preparation:
    def __init__(self, cfg: ProjectConfig, staging: Path, progress: Progress) -> None:
        self.cfg = cfg
        self.task = cfg.task.type
        self.dir = staging
        self.progress = progress
        self.quarantine = Quarantine(staging / QUARANTINE)
        self.steps: list[Step] = []
        self.sources: list[dict[str, Any]] = []
        self.warnings: list[str] = []
        self.started = time.perf_counter()
        self.input_stamps: dict[str, tuple[int, int]] = {}  # the input files' (size, mtime_ns) before they are read

    # -- stage 1: stream every source into canonical rows ------------------------------------

    def run(self) -> None:
        cfg = self.cfg
        self.input_stamps = stamps(cfg)  # before reading: a file edited while it is read is prepared again next time
        target = TARGET_TYPES[self.task][0]
        corrections = Corrections(cfg.data.annotate.corrections, target)
        canon = Canonicalizer(cfg, corrections)
        rows_path = self.dir / "_rows.arrow"
        schema = canonical_schema(self.task)
        read = Step("read and validate", 0)
        first_at: dict[str, str] = {}  # reason -> where it first happened, for the error when nothing is left
        with pa.OSFile(str(rows_path), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
            buffer: list[dict[str, Any]] = []
            for index, spec in enumerate(cfg.data.sources):
                if spec.synthetic is not None and spec.split == "test" and not spec.synthetic.in_test:
                    raise ConfigError(f"data.sources.{index}: `split: test` would test on synthetic rows; set "
                                      "synthetic.in_test: true if that is intended (the test split is real data otherwise)")
                exprs = canon.fields_for(spec)
                canon.start_source()
                stats = {"source": spec.describe(), "kind": spec.kind, "split": spec.split, "rows": 0, "rejected": 0}
                spec = self._resolve_encoding(spec, stats)
                parsed = 0
                records = read_records(cfg, index, spec, canon.header_fields(exprs, spec),
                                       say=lambda message: self.progress(message, 0, None), warn=self.warnings.append)
                for raw in itertools.islice(records, spec.max_rows):
                    stats["rows"] += 1
                    parsed += raw.record is not None
                    result = canon.row(raw, exprs, spec)
                    if isinstance(result, Rejection):
                        stats["rejected"] += 1
                        reason = f"{result.stage}: {category(result.reason)}"
                        read.reasons[reason] += 1
                        first_at.setdefault(reason, result.location())
                        self.quarantine.add(result)
                        continue
                    buffer.append(result)
                    if len(buffer) >= BATCH:
                        writer.write_table(pa.Table.from_pylist(buffer, schema))
                        buffer.clear()
                    if stats["rows"] % 5000 == 0:
                        self.progress(f"reading {spec.describe()}", stats["rows"], None)
                canon.check_columns_present(spec, exprs, parsed)
                read.rows_in += stats["rows"]
                self.sources.append(stats)
            if buffer:
                writer.write_table(pa.Table.from_pylist(buffer, schema))
        self.rows_in = read.rows_in
        read.rows_out = read.rows_in - self.quarantine.count
        self.steps.append(read)
        if cfg.data.strict and self.quarantine.count:
            self._fail_strict()
        if read.rows_out == 0:
            raise DataError(f"no usable rows: all {read.rows_in} input rows were rejected; see the reasons: "
                            + "; ".join(f"{k} ({v}, first at {first_at[k]})" for k, v in read.reasons.most_common(5)))
        self.label_changes = canon.label_changes
        self.missing = canon.missing
        self.unused_corrections = corrections.unused()
        self.applied_corrections = len(corrections.applied)
        self.work = self.dir / "_work"  # working files, deleted before the version is moved into place
        self.work.mkdir()
        self.maps: list[_MappedTable] = []  # every Arrow file this run has mapped, to release their pages
        self.rows = self._map(rows_path)
        self.table = self.rows.table
        n = self.table.num_rows
        self.alive = np.ones(n, dtype=bool)
        # Why each removed row left, as codes (index in REMOVAL_STAGES + 1) and the row it duplicates: the
        # quarantine entries are written from them at the end, never held as Python objects per row.
        self.removed_stage = np.zeros(n, dtype=np.int8)
        self.removed_ref = np.full(n, -1, dtype=np.int64)
        self.removed_sim = np.zeros(n)
        self.notes: dict[int, str] = {}  # reasons that say more than "duplicate of <row>" (conflicts, leakage)
        self.note_fields: dict[int, str] = {}  # the field a note is about, where it is one field's fault
        try:
            for stage in (self._lengths, self._exact_duplicates, self._near_duplicates, self._split, self._leakage, self._write):
                stage()
                self._release()  # the pages of the columns a stage read
        finally:
            if hasattr(self, "sigs"):
                self.sigs.close()
            self.rows = self.table = None  # type: ignore[assignment]
            self.maps.clear()
            shutil.rmtree(self.work, ignore_errors=True)
            rows_path.unlink(missing_ok=True)

    def _resolve_encoding(self, spec: SourceSpec, stats: dict[str, Any]) -> SourceSpec:
        """Guess a text file's encoding once, record it, and warn when the guess was a close call."""
        if spec.kind not in TEXT_KINDS or spec.encoding or spec.path is None or not spec.path.is_file():
            stats["encoding"] = spec.encoding
            return spec
        if spec.path.stat().st_size == 0:
            return spec
        encoding, alternatives, late = sniff_file_encoding(spec.path)
        stats["encoding"] = encoding
        if late is not None and encoding != "utf-8":  # said even without a tie: the first 64 KiB could not tell
            likely = f" (equally likely: {', '.join(alternatives[:4])})" if alternatives else ""
            self.warnings.append(f"{spec.path}: plain ASCII for the first {SNIFF_BYTES // 1024} KiB; from line {late}, "
                                 f"the first with other characters, it is not UTF-8; read as {encoding}{likely}. "
                                 "If accented letters look wrong in `data show`, set the source's `encoding:`")
        elif alternatives:
            self.warnings.append(f"{spec.path}: not UTF-8; read as {encoding} (equally likely: {', '.join(alternatives[:4])}). "
                                 "If accented letters look wrong in `data show`, set the source's `encoding:`")
        return spec.model_copy(update={"encoding": encoding})

    def _fail_strict(self) -> None:
        self.quarantine.close()
        lines = [f"  {e['location']}: {e['reason']}" for stage in self.quarantine.examples.values() for e in stage]
        raise DataError(
            f"strict mode: {self.quarantine.count} input row(s) rejected; fix them or turn off data.strict:\n"
            + "\n".join(lines[:20])
        )

    def _mark(self, rows: np.ndarray, stage: str, refs: np.ndarray | None = None, sims: np.ndarray | None = None) -> None:
        """Remove rows; their quarantine entries are written at the end (`_write_removed`)."""
        self.alive[rows] = False
        self.removed_stage[rows] = REMOVAL_STAGES.index(stage) + 1
        if refs is not None:
            self.removed_ref[rows] = refs
        if sims is not None:
            self.removed_sim[rows] = sims

    def _remove(self, row: int, stage: str, reason: str, step: Step, field: str | None = None) -> None:
        """Remove one row for a reason of its own."""
        self._mark(np.array([row]), stage)
        self.notes[row] = reason
        if field is not None:
            self.note_fields[row] = field
        step.reasons[category(reason)] += 1

    def _step(self, name: str) -> Step:
        step = Step(name, int(self.alive.sum()))
        self.steps.append(step)
        return step

    def _map(self, path: Path) -> _MappedTable:
        self.maps.append(_MappedTable(path))
        return self.maps[-1]

    def _release(self) -> None:
        for m in self.maps:
            m.release()

    def _ids(self, rows: np.ndarray) -> list[str]:
        return take_rows(self.table.select(["id"]), rows).column(0).to_pylist()

    # -- stage 2: whole-column work -----------------------------------------------------------

    def texts(self, indices: np.ndarray | None = None, system: bool = True) -> Iterator[str]:
        """The text of each row (chat: the whole conversation; preference: prompt and both answers).

        `system=False`: without system turns, the text rows are compared by for near duplicates. A chat file's rows
        mostly share one long system prompt, which made different conversations look alike (a 3,500-character prompt
        over 200 different answers kept 1 of them)."""
        preference = self.task == TaskType.preference
        column = "messages" if self.task == TaskType.chat else "text"
        table = self.table.select(["messages", "chosen", "rejected"] if preference else [column])

        def turns(messages: list[dict[str, Any]]) -> Iterator[str]:
            return (f"{m['role']}: {m['content']}" for m in messages if system or m["role"] != "system")

        for batch in self._batches(table, indices):
            if preference:
                for prompt, chosen, rejected in zip(*(c.to_pylist() for c in batch.columns), strict=True):
                    yield "\n".join([*turns(prompt), f"chosen: {chosen}", f"rejected: {rejected}"])
            else:
                for value in batch.column(0).to_pylist():
                    yield "\n".join(turns(value)) if column == "messages" else value

    def _batches(self, table: pa.Table, indices: np.ndarray | None = None) -> Iterator[pa.RecordBatch]:
        """The table's rows (or the given ones, in that order) a chunk at a time; the mapped pages a pass
        has read are let go after each chunk, so a pass over millions of rows holds few of them."""
        if indices is None:
            chunks: Iterator[pa.Table] = (table.slice(s, CHUNK) for s in range(0, table.num_rows, CHUNK))
        else:
            chunks = (take_rows(table, indices[s : s + CHUNK]) for s in range(0, len(indices), CHUNK))
        for chunk in chunks:
            yield from chunk.to_batches()
            self.rows.release()

    def _lengths(self) -> None:
        from transformers.utils import logging as hf_logging

        from tunesmith.models.catalog import context_length, load_tokenizer

        tokenizer = load_tokenizer(self.cfg.model.name)
        self.context = context_length(tokenizer)
        self.max_length = self.cfg.token_budget(self.context)
        n = self.table.num_rows
        lengths = np.zeros(n, dtype=np.int32)
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # "sequence longer than max length" is what we measure here
        try:
            if self.task in GENERATIVE_TASKS:
                from tunesmith.tasks.chat import set_chat_template

                # Counted as training will read them: through the chat template (refused without one).
                set_chat_template(tokenizer, self.cfg.model.chat_template, str(self.cfg.model.name))
                refused: dict[int, str] = {}
                for i, convos in enumerate(self._conversations()):
                    length = _rendered_length(tokenizer, convos, self.task == TaskType.preference)
                    if isinstance(length, str):
                        refused[i] = length
                    else:
                        lengths[i] = length
                    if i % 2000 == 0:
                        self.progress("counting tokens", i, n)
                self._refused_by_template(refused)
            else:
                count = _token_counter(tokenizer)
                start = 0
                batch: list[str] = []
                for text in self.texts():
                    batch.append(text)
                    if len(batch) == 4096:
                        lengths[start : start + len(batch)] = count(batch)
                        start += len(batch)
                        batch = []
                        self.progress("counting tokens", start, n)
                if batch:
                    lengths[start : start + len(batch)] = count(batch)
        finally:
            hf_logging.set_verbosity(verbosity)
        self.progress("counting tokens", n, n)
        self.table = self.table.append_column("n_tokens", pa.array(lengths))
        self.lengths = lengths

        clean = self.cfg.data.clean
        step = self._step("length filter")
        # Classification truncates long texts to max_length; a conversation cannot be cut, so one that
        # does not fit the budget training will use is removed here rather than failing training.
        limits = [(clean.max_tokens, f"data.clean.max_tokens={clean.max_tokens}")] if clean.max_tokens else []
        if self.task in GENERATIVE_TASKS:
            limits.append((self.max_length, f"model.max_length={self.max_length}" if self.cfg.model.max_length else
                           f"the token budget of {self.max_length} (the model's context"
                           f"{f' of {self.context}' if self.context else ''}, at most {CHAT_MAX_LENGTH_CAP} unless "
                           "model.max_length says otherwise)"))
        too_long, why = min(limits, key=lambda x: x[0]) if limits else (None, "")
        self.length_rules = (clean.min_tokens, too_long, why)
        short = self.alive & (lengths < clean.min_tokens) if clean.min_tokens else np.zeros(n, dtype=bool)
        long = self.alive & ~short & (lengths > too_long) if too_long else np.zeros(n, dtype=bool)
        kinds = sorted((int(np.argmax(mask)), mask) for mask in (short, long) if mask.any())  # counted in row order
        for _, mask in kinds:
            step.reasons[category(self._length_reason(int(np.argmax(mask))))] += int(mask.sum())
        self._mark(np.flatnonzero(short | long), "length")
        step.rows_out = int(self.alive.sum())
        if not step.rows_out:  # nothing left to deduplicate or split: say why, rather than fail further on
            row = int(np.argmax(short | long))
            raise DataError(f"no usable rows: the length filter removed all {step.rows_in} rows "
                            f"({'; '.join(f'{k}: {v}' for k, v in step.reasons.most_common())}; the first, "
                            f"{self.table.column('source')[row].as_py()}:{self.table.column('line')[row].as_py()}: "
                            f"{self._length_reason(row)})")

    def _refused_by_template(self, refused: dict[int, str]) -> None:
        """Rows the chat template will not render (Llama 2's, Mistral's and Gemma's raise on roles out of turn or a
        system turn): training could not read them either, so each leaves with the template's own message."""
        step = self._step("chat template")
        field = "prompt" if self.task == TaskType.preference else "messages"
        for row, why in refused.items():
            self._remove(row, "template", why, step, field)
        step.rows_out = int(self.alive.sum())
        if refused and not step.rows_out:
            row, why = next(iter(refused.items()))
            raise DataError(f"no usable rows: the model's chat template refused all {step.rows_in} conversations (the "
                            f"first, {self.table.column('source')[row].as_py()}:{self.table.column('line')[row].as_py()}: "
                            f"field '{field}': {why})")

    def _length_reason(self, row: int) -> str:
        min_tokens, too_long, why = self.length_rules
        if min_tokens and self.lengths[row] < min_tokens:
            return f"{self.lengths[row]} tokens, below data.clean.min_tokens={min_tokens}"
        return f"{self.lengths[row]} tokens, over {why}"

    def _conversations(self) -> Iterator[list[list[dict[str, str]]]]:
        """Per row, the conversation(s) the model will read: chat, one; preference, prompt + each answer."""
        preference = self.task == TaskType.preference
        for batch in self._batches(self.table.select(["messages", "chosen", "rejected"] if preference else ["messages"])):
            messages = batch.column(0).to_pylist()
            if not preference:
                for convo in messages:
                    yield [[{"role": m["role"], "content": m["content"]} for m in convo]]
                continue
            answers = zip(batch.column(1).to_pylist(), batch.column(2).to_pylist(), strict=True)
            for prompt, pair in zip(messages, answers, strict=True):
                plain = [{"role": m["role"], "content": m["content"]} for m in prompt]
                yield [[*plain, {"role": "assistant", "content": answer}] for answer in pair]

    def _target_codes(self) -> np.ndarray | None:
        """A number per row that is equal exactly when two rows' targets are (None: nothing to conflict on)."""
        if self.task in GENERATIVE_TASKS:  # equal keys are plain duplicates
            return None
        if self.task == TaskType.regression:
            return self.table.column("score").to_numpy()
        values = self.table.column(TARGET_TYPES[self.task][0])
        if self.task == TaskType.multi_label:
            values = pc.binary_join(values, "|")
        return pc.index_in(values, value_set=pc.unique(values)).to_numpy(zero_copy_only=False)

    def _targets(self, rows: list[int]) -> list[Any]:
        values = take_rows(self.table.select([TARGET_TYPES[self.task][0]]), rows).column(0).to_pylist()
        return ["|".join(v) for v in values] if self.task == TaskType.multi_label else values

    def _hint_codes(self) -> np.ndarray:
        """Each row's pre-assigned split as its index in SPLITS, -1 for a free row. A `split: train` source's rows
        all train (an OpenAI job's training file beside its validation file; feedback corrections): shared out as
        free rows, a ninth of them went to test."""
        hints = self.table.column("split_hint")
        codes = np.full(self.table.num_rows, -1, dtype=np.int8)
        for name in SPLITS:
            codes[pc.fill_null(pc.equal(hints, name), False).to_numpy(zero_copy_only=False)] = SPLITS.index(name)
        return codes

    def _keep_rank(self) -> np.ndarray:
        """Which copy of a duplicate stays (lowest first): pre-assigned later splits last, and a real row
        before a synthetic one, wherever the sources are listed."""
        synthetic = self.table.column("synthetic").to_numpy(zero_copy_only=False)
        return np.maximum(self._hint_codes(), 0).astype(np.int64) * 2 + synthetic

    def _exact_duplicates(self) -> None:
        step = self._step("exact duplicates")
        self.score_override: dict[int, float] = {}
        self.conflicts: list[dict[str, Any]] = []
        if not self.cfg.data.dedup.exact:
            step.rows_out = step.rows_in
            return
        idx = np.flatnonzero(self.alive)
        all_keys = self.table.column("key").to_numpy()
        order = idx[np.lexsort((idx, self._keep_rank()[idx], all_keys[idx]))]  # by key; in a group, the keeper first
        sorted_keys = all_keys[order]
        del all_keys
        first = np.r_[True, sorted_keys[1:] != sorted_keys[:-1]]  # the position starts a group
        del sorted_keys
        starts = np.flatnonzero(first)
        sizes = np.diff(np.r_[starts, len(order)])
        group = np.cumsum(first) - 1  # each position's group
        codes = self._target_codes()
        conflict = np.zeros(len(starts), dtype=bool)
        if codes is not None and len(order):
            ordered = codes[order]
            conflict = np.minimum.reduceat(ordered, starts) != np.maximum.reduceat(ordered, starts)
        # Every copy after the first of a group without conflicts: a plain duplicate of the first.
        plain = ~first & ~conflict[group]
        self._mark(order[plain], "exact_duplicate", refs=order[starts[group[plain]]])
        del first, group

        # Groups whose copies disagree on the target: the policy decides, one group at a time (they are
        # few). The counts keep the order in which groups come: "exact duplicate" enters before the first
        # conflicting group that follows a plain one (or last, with the count of every plain copy).
        policy = self.cfg.data.dedup.conflicts
        plain_groups = (sizes > 1) & ~conflict
        first_plain = int(np.argmax(plain_groups)) if plain_groups.any() else len(starts)
        for g in np.flatnonzero(conflict):
            if g > first_plain:
                step.reasons.setdefault("exact duplicate", 0)
            members = [int(x) for x in order[starts[g] : starts[g] + sizes[g]]]
            values = self._targets(members)
            ids = self._ids(np.array(members))
            counts = Counter(values)
            top = counts.most_common(2)
            keep: int | None = 0
            if policy == "drop" or (policy == "majority" and top[0][1] == top[1][1]):
                keep = None
            elif policy == "majority":
                keep = next(k for k, v in enumerate(values) if v == top[0][0])
            elif policy == "mean":
                self.score_override[members[0]] = float(np.mean(values))
            self.conflicts.append({"ids": ids, "values": dict(counts),
                                   "kept": ids[keep] if keep is not None else None, "policy": policy})
            why = (f"conflicting duplicate: same text, values {dict(counts)}; policy '{policy}' "
                   + (f"kept '{ids[keep]}'" if keep is not None else "dropped all"))
            for k, row in enumerate(members):
                if k != keep:
                    self._remove(row, "conflict", why, step)
        if plain.any():
            step.reasons["exact duplicate"] += int(plain.sum())
        step.rows_out = int(self.alive.sum())

    def _near_duplicates(self) -> None:
        spec = self.cfg.data.dedup
        step = self._step("near duplicates")
        self.sig_index = np.flatnonzero(self.alive)  # rows the signatures belong to, in order
        n = len(self.sig_index)
        self.sigs = dedup.SignatureStore(self.work, n, spec.num_perm, spec.near_threshold)
        for chunk in dedup.signature_chunks(self.texts(self.sig_index, system=False), spec.num_perm, spec.shingle_size,
                                            seed=NEAR_SEED):
            self.sigs.append(chunk)
            self.progress("near-duplicate signatures", self.sigs.written, n)
        self.near_examples: list[dict[str, Any]] = []
        if not spec.near:
            step.rows_out = step.rows_in
            return
        i, j, _ = self.sigs.similar_pairs()
        same = self._same_targets(self.sig_index[i], self.sig_index[j])
        i, j = i[same], j[same]
        rank = self._keep_rank()[self.sig_index] * (n + 1) + np.arange(n)
        rep = dedup.cluster_representatives(n, i, j, rank)
        dup = np.flatnonzero(rep != np.arange(n))
        sims = self.sigs.similarity(dup, rep[dup])
        rows, kept = self.sig_index[dup], self.sig_index[rep[dup]]
        self._mark(rows, "near_duplicate", refs=kept, sims=sims)
        if len(dup):
            step.reasons["near duplicate"] += len(dup)
        for row, ref, sim in zip(rows[:5].tolist(), kept[:5].tolist(), sims[:5].tolist(), strict=True):
            ids, texts = self._ids(np.array([row, ref])), list(self.texts(np.array([row, ref]), system=False))
            self.near_examples.append({"removed": ids[0], "kept": ids[1], "similarity": round(sim, 3),
                                       "removed_text": texts[0][:300], "kept_text": texts[1][:300]})
        step.rows_out = int(self.alive.sum())

    def _same_targets(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Which near-alike row pairs (a[k], b[k]) are near duplicates, for dedup and for leakage alike.

        "... would recommend it" (pos) and "... would not recommend it" (neg) are 0.88 alike and both worth learning:
        classes must also agree on the label (multi-label: the label set; exact copies that disagree are conflicts),
        the generative tasks on the answers; a regression score is no class, so any alike pair counts."""
        if not len(a) or self.task == TaskType.regression:
            return np.ones(len(a), dtype=bool)
        if self.task in GENERATIVE_TASKS:
            return self._same_answers(a, b)
        labels = self.table.select(["labels" if self.task == TaskType.multi_label else "label"])  # label sets: sorted
        x, y = (take_rows(labels, rows).column(0).to_pylist() for rows in (a, b))
        return np.array([u == v for u, v in zip(x, y, strict=True)], dtype=bool)

    def _target_rule(self) -> str | None:
        """The pair rule `_same_targets` applies, as the report says it (None: every alike pair)."""
        if self.task == TaskType.regression:
            return None
        if self.task in GENERATIVE_TASKS:
            return "pairs with equal answers"
        return "pairs with equal label sets" if self.task == TaskType.multi_label else "pairs with equal labels"

    def _answers(self, rows: np.ndarray) -> Iterator[tuple[str, ...]]:
        """What each row (sorted, unique) teaches the model to say: chat, its assistant turns; preference, the chosen
        and the rejected answer, each on its own."""
        if self.task == TaskType.preference:
            for batch in self._batches(self.table.select(["chosen", "rejected"]), rows):
                yield from zip(batch.column(0).to_pylist(), batch.column(1).to_pylist(), strict=True)
            return
        for batch in self._batches(self.table.select(["messages"]), rows):
            for messages in batch.column(0).to_pylist():
                yield ("\n".join(m["content"] for m in messages if m["role"] == "assistant"),)

    def _same_answers(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Which row pairs (a[k], b[k]) also have equal or near-equal answers (every answer at the near threshold):
        the generative tasks' label check. One instruction with other inputs and answers (Alpaca), or several
        preference pairs on one prompt, look alike over the whole conversation and are all worth learning."""
        spec = self.cfg.data.dedup
        same = np.ones(len(a), dtype=bool)
        for start in range(0, len(a), dedup.PAIRS):  # bounds the signatures held at once
            x, y = a[start : start + dedup.PAIRS], b[start : start + dedup.PAIRS]
            rows = np.unique(np.concatenate([x, y]))
            px, py = np.searchsorted(rows, x), np.searchsorted(rows, y)
            for texts in zip(*self._answers(rows), strict=True):  # each answer of a row on its own
                sigs = dedup.minhash_signatures(texts, len(rows), spec.num_perm, spec.shingle_size,
                                                seed=NEAR_SEED)
                same[start : start + len(x)] &= dedup.pair_similarity(sigs, px, py) >= spec.near_threshold
        return same

    def _strata(self) -> np.ndarray:
        """Each row's stratum, numbered in the sorted order of the strata's names (see split.assign_codes)."""
        n = self.table.num_rows
        if not self.cfg.data.split.stratify or self.task in GENERATIVE_TASKS:
            return np.zeros(n, dtype=np.int64)
        if self.task == TaskType.regression:
            bins = split.regression_bins(self.table.column("score").to_numpy())
            present = np.unique(bins)
            names = sorted(f"q{b}" for b in present)
            return np.array([names.index(f"q{b}") for b in present], dtype=np.int64)[np.searchsorted(present, bins)]
        column = self.table.column("labels" if self.task == TaskType.multi_label else "label")
        values = pc.list_flatten(column) if self.task == TaskType.multi_label else column
        names = sorted(pc.unique(values).to_pylist())
        codes = pc.index_in(values, value_set=pa.array(names, pa.string())).to_numpy(zero_copy_only=False).astype(np.int64)
        if self.task != TaskType.multi_label:
            return codes
        # The row's rarest label (over every row read), ties to the first name: rare classes get spread.
        freq = np.bincount(codes, minlength=len(names))
        parent = pc.list_parent_indices(column).to_numpy(zero_copy_only=False)
        best = np.lexsort((codes, freq[codes], parent))
        first = np.r_[True, parent[best][1:] != parent[best][:-1]]
        strata = np.full(n, len(names), dtype=np.int64)  # rows with no label (none applies): a stratum of their own
        strata[parent[best][first]] = codes[best][first]
        return strata

    def _split(self) -> None:
        idx = np.flatnonzero(self.alive)
        groups = self.table.column("group")
        group_codes = pc.fill_null(pc.index_in(groups, value_set=pc.unique(groups).drop_null()), -1)
        group_codes = group_codes.to_numpy(zero_copy_only=False)
        no_test = self.table.column("no_test").to_numpy(zero_copy_only=False)
        assigned = split.assign_codes(self._strata()[idx], group_codes[idx], self._hint_codes()[idx], self.cfg.data.split,
                                      no_test[idx])
        self.split_of = np.full(self.table.num_rows, -1, dtype=np.int8)  # index in SPLITS; -1 for removed rows
        self.split_of[idx] = assigned

    def _leakage(self) -> None:
        """Duplicates across splits: removed from the later split (train < validation < test)."""
        policy = self.cfg.data.split.leakage
        step = self._step("leakage across splits")
        idx = np.flatnonzero(self.alive)
        # Exact: in (split, row) order, every row whose key an earlier row of another split has.
        order = idx[np.lexsort((idx, self.split_of[idx]))]
        keys = self.table.column("key").to_numpy()[order]
        by_key = np.argsort(keys, kind="stable")
        new_key = np.r_[True, keys[by_key][1:] != keys[by_key][:-1]]
        first = order[by_key[np.maximum.accumulate(np.where(new_key, np.arange(len(by_key)), 0))]]
        leak = ~new_key & (self.split_of[order[by_key]] != self.split_of[first])
        where = np.argsort(by_key[leak])  # back to (split, row) order
        found: list[tuple[int, int, str]] = [(a, b, "exact") for a, b in zip(order[by_key][leak][where].tolist(),
                                                                               first[leak][where].tolist(), strict=True)]
        self.leakage_checked = ["exact"]
        rule = self._target_rule()  # the pairs that are near duplicates: the same rule as near-dedup's
        if not self.cfg.data.dedup.near:  # with near-dedup on, no such pair survives to the split
            self.leakage_checked.append(f"near ({rule})" if rule else "near")
            i, j, sims = self.sigs.similar_pairs(np.searchsorted(self.sig_index, idx))
            across = self.split_of[idx[i]] != self.split_of[idx[j]]
            i, j, sims = i[across], j[across], sims[across]
            # "would recommend" (pos) in train and "would not recommend" (neg) in test leak no label; the same
            # question answered otherwise leaks no answer
            same = self._same_targets(idx[i], idx[j])
            i, j, sims = i[same], j[same], sims[same]
            flagged = {a for a, _, _ in found}
            for a, b, sim in zip(idx[i].tolist(), idx[j].tolist(), sims.tolist(), strict=True):
                if self.split_of[a] != self.split_of[b]:
                    later, earlier = (a, b) if self.split_of[a] > self.split_of[b] else (b, a)
                    if later not in flagged:
                        flagged.add(later)
                        found.append((later, earlier, f"near (similarity {sim:.2f})"))
        else:
            self.leakage_checked.append(f"near ({rule}, removed before splitting)" if rule else
                                        "near (removed before splitting)")
        found += self._paraphrases_of_other_splits(idx, {a for a, _, _ in found})
        rows = np.array([a for a, _, _ in found] + [b for _, b, _ in found], dtype=np.int64)
        ids = dict(zip(rows.tolist(), self._ids(rows), strict=True))
        self.leaks = [{"id": ids[a], "split": SPLITS[self.split_of[a]], "duplicates": ids[b],
                       "of_split": SPLITS[self.split_of[b]], "match": how} for a, b, how in found]
        if found and policy == "fail":
            lines = "\n".join(f"  {x['id']} ({x['split']}) duplicates {x['duplicates']} ({x['of_split']}), {x['match']}"
                              for x in self.leaks[:20])
            raise DataError(f"{len(found)} example(s) leak across splits (data.split.leakage: fail):\n{lines}")
        if policy == "remove":
            for a, b, how in found:
                if self.alive[a]:
                    self._remove(a, "leakage", f"{how} duplicate of '{ids[b]}' in {SPLITS[self.split_of[b]]}", step)
        step.rows_out = int(self.alive.sum())

    def _paraphrases_of_other_splits(self, idx: np.ndarray, flagged: set[int]) -> list[tuple[int, int, str]]:
        """A paraphrase says what its real row says in other words, which n-gram similarity misses: one
        whose original landed in another split (validation, test) leaks it, so it leaves."""
        synthetic = self.table.column("synthetic").to_numpy(zero_copy_only=False)
        rows = idx[synthetic[idx]]
        if not len(rows):
            return []
        self.leakage_checked.append("paraphrases")
        originals: list[str | None] = []
        for batch in self._batches(self.table.select(["provenance"]), rows):
            originals += [json.loads(p).get("paraphrase_of") for p in batch.column(0).to_pylist()]
        wanted = pa.array(sorted({o for o in originals if isinstance(o, str)}), pa.string())
        candidates = np.flatnonzero(pc.is_in(self.table.column("id"), value_set=wanted).to_numpy(zero_copy_only=False))
        candidates = candidates[self.alive[candidates]]
        row_of = dict(zip(self._ids(candidates), candidates.tolist(), strict=True))
        found = []
        for r, paraphrase_of in zip(rows.tolist(), originals, strict=True):
            original = row_of.get(paraphrase_of)
            if original is not None and self.split_of[original] != self.split_of[r] and r not in flagged:
                found.append((r, original, "paraphrase"))
        return found

    # -- stage 3: write the dataset version ------------------------------------------------------

    def _label_set(self) -> list[str] | None:
        if self.task == TaskType.regression or self.task in GENERATIVE_TASKS:
            return None
        if self.cfg.task.labels:
            return list(self.cfg.task.labels)
        alive = pa.array(self.alive)
        if self.task == TaskType.multi_label:
            values = pc.list_flatten(self.table.column("labels").filter(alive))
        else:
            values = self.table.column("label").filter(alive)
        return sorted(pc.unique(values).to_pylist())

    def _write(self) -> None:
        labels = self._label_set()
        fingerprint = Fingerprint()
        split_tables: dict[str, pa.Table] = {}
        for code, name in enumerate(SPLITS):
            table = self._split_table(name, np.flatnonzero(self.alive & (self.split_of == code)), labels)
            write_split(self.dir, name, table)
            fingerprint.add_split(name, table)
            split_tables[name] = table
            self._release()
        self._write_removed()
        self.quarantine.close()

        counts = {s: t.num_rows for s, t in split_tables.items()}
        counts.update(quarantine=self.quarantine.count, input=self.rows_in)
        if sum(counts[s] for s in SPLITS) + counts["quarantine"] != counts["input"]:  # the core promise
            raise AssertionError(f"row accounting is off: {counts}")
        self._class_warnings(split_tables, labels)
        manifest = DatasetManifest(
            name=self.cfg.name, task=self.task.value, description=self.cfg.task.description,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"), tunesmith_version=__version__,
            fingerprint=fingerprint.hexdigest(), counts=counts, labels=labels, tokenizer=str(self.cfg.model.name),
            context_length=self.context, max_length=self.max_length, config=self.cfg.model_dump(mode="json"),
            inputs=record_inputs(self.cfg, self.input_stamps),  # training prepares it again once one changes
        )
        (self.dir / MANIFEST).write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")
        report.write(self.dir, manifest, self._summary(), split_tables)

    def _split_table(self, name: str, rows: np.ndarray, labels: list[str] | None) -> pa.Table:
        """The rows of one split with their label ids, written a chunk at a time to an Arrow file and
        mapped back: the split is never all in memory, yet reads as one table."""
        label_id = {label: i for i, label in enumerate(labels or [])}
        override = np.array(sorted(self.score_override), dtype=np.int64)
        path = self.work / f"{name}.arrow"
        writer = None
        for start in range(0, max(len(rows), 1), CHUNK):
            chunk = rows[start : start + CHUNK]
            table = take_rows(self.table, chunk).drop_columns(["key", "split_hint", "no_test"])
            if self.task == TaskType.single_label:
                ids = [label_id[x] for x in table.column("label").to_pylist()]
                table = table.append_column("label_id", pa.array(ids, pa.int64()))
            elif self.task == TaskType.multi_label:
                ids = [[label_id[x] for x in labels_] for labels_ in table.column("labels").to_pylist()]
                table = table.append_column("label_ids", pa.array(ids, pa.list_(pa.int64())))
            elif self.task == TaskType.regression and self.score_override:
                scores = table.column("score").to_numpy().copy()
                hit = np.flatnonzero(np.isin(chunk, override))
                scores[hit] = [self.score_override[int(r)] for r in chunk[hit]]
                table = table.set_column(table.schema.get_field_index("score"), "score", pa.array(scores))
            if writer is None:
                writer = pa.ipc.new_file(str(path), table.schema)
            writer.write_table(table)
            self.rows.release()
        assert writer is not None
        writer.close()
        return self._map(path).table

    def _write_removed(self) -> None:
        """The quarantine entries of the rows removed after reading, in input order."""
        removed = np.flatnonzero(self.removed_stage)
        columns = [c for c in self.table.column_names if c not in ("key", "split_hint", "no_test")]
        table = self.table.select(columns)
        for start in range(0, len(removed), CHUNK):
            chunk = removed[start : start + CHUNK]
            refs = self.removed_ref[chunk]
            ref_ids = dict(zip(refs[refs >= 0].tolist(), self._ids(refs[refs >= 0]), strict=True))
            for row, record in zip(chunk.tolist(), take_rows(table, chunk).to_pylist(), strict=True):
                stage = REMOVAL_STAGES[self.removed_stage[row] - 1]
                if stage == "exact_duplicate":
                    reason = f"exact duplicate of '{ref_ids[self.removed_ref[row]]}'"
                elif stage == "near_duplicate":
                    reason = f"near duplicate (similarity {self.removed_sim[row]:.2f}) of '{ref_ids[self.removed_ref[row]]}'"
                elif stage == "length":
                    reason = self._length_reason(row)
                else:
                    reason = self.notes[row]
                self.quarantine.add(Rejection(stage, record["source"], record["line"], reason,
                                              field=self.note_fields.get(row), id=record["id"], kind="removed",
                                              record=record))
            self.rows.release()

    def _summary(self) -> report.PreparationSummary:
        dedup_spec, split_spec = self.cfg.data.dedup, self.cfg.data.split
        stages = np.bincount(self.removed_stage, minlength=len(REMOVAL_STAGES) + 1)[1:]
        return report.PreparationSummary(
            task=self.task, sources=self.sources, steps=[s.as_dict() for s in self.steps],
            missing_values=dict(self.missing),
            removed_by_stage={stage: int(k) for stage, k in zip(REMOVAL_STAGES, stages, strict=True) if k},
            near_threshold=dedup_spec.near_threshold, near_examples=self.near_examples,
            conflict_policy=dedup_spec.conflicts, conflicts=self.conflicts,
            leakage_checked=self.leakage_checked, leakage_policy=split_spec.leakage, leaks=self.leaks,
            label_map_changes=dict(self.label_changes), corrections_applied=self.applied_corrections,
            corrections_unused=self.unused_corrections, quarantine_rows=self.quarantine.count,
            quarantine_by_stage=dict(self.quarantine.by_stage), quarantine_examples=dict(self.quarantine.examples),
            warnings=self.warnings, seconds=time.perf_counter() - self.started,
        )

    def _class_warnings(self, tables: dict[str, pa.Table], labels: list[str] | None) -> None:
        if not labels:
            return
        if not self.cfg.task.labels:  # inferred from the data: "Pos" and "pos" are two classes of one meaning
            variants: defaultdict[str, list[str]] = defaultdict(list)
            for label in labels:
                variants[" ".join(label.casefold().split())].append(label)
            for same in (v for v in variants.values() if len(v) > 1):
                names = " and ".join(f"'{x}'" for x in same)
                self.warnings.append(f"labels {names} differ only in case or spacing, so they are separate classes; "
                                     "if they mean the same, merge them with data.annotate.label_map")
        column = "labels" if self.task == TaskType.multi_label else "label"
        present = {}
        for name, table in tables.items():
            values = pc.list_flatten(table.column(column)) if column == "labels" else table.column(column)
            present[name] = set(pc.unique(values).to_pylist())
        for label in labels:
            missing = [s for s in SPLITS if label not in present[s]]
            if "train" in missing and len(missing) < 3:
                self.warnings.append(f"class '{label}' has no training example but appears in "
                                     f"{[s for s in SPLITS if s not in missing]}")
            elif missing and "train" not in missing:
                self.warnings.append(f"class '{label}' has no example in {missing}: its metrics there will be undefined")
            elif len(missing) == 3:
                self.warnings.append(f"class '{label}' (from task.labels) has no example at all")


def _rendered_length(tokenizer: Any, convos: list[list[dict[str, str]]], preference: bool) -> int | str:
    """Tokens of the longest conversation as the chat template renders it, or why the template refused one."""
    from jinja2 import TemplateError, TemplateSyntaxError

    lengths = []
    for k, convo in enumerate(convos):
        try:
            lengths.append(len(tokenizer.apply_chat_template(convo, tokenize=True, return_dict=False)))
        except TemplateSyntaxError as err:  # the template itself is broken: every row would fail alike
            raise ConfigError(f"the chat template is not valid Jinja (template line {err.lineno}): {err.message}; "
                              "fix model.chat_template") from None
        except TemplateError as err:
            answer = f" (with the {('chosen', 'rejected')[k]} answer)" if preference else ""
            return (f"the model's chat template cannot render this conversation{answer}: {err}; fix the conversation "
                    "or set model.chat_template to a template that accepts it")
    return max(lengths)


def take_rows(table: pa.Table, rows: np.ndarray | list[int]) -> pa.Table:
    """`table.take(rows)` at a cost that grows with the rows taken, not with the table: Arrow's take
    on a chunked string column first concatenates every chunk (at 2M rows, 40 ms and the whole column
    paged in, even for two rows), so each record batch is taken from on its own."""
    rows = np.asarray(rows, dtype=np.int64)
    if not len(rows):
        return table.slice(0, 0)
    order = np.argsort(rows, kind="stable")
    ordered = rows[order]
    if ordered[0] < 0 or ordered[-1] >= table.num_rows:
        raise IndexError(f"row index out of range for a table of {table.num_rows} rows")
    batches = table.to_batches()
    ends = np.cumsum([b.num_rows for b in batches])
    cuts = np.searchsorted(ordered, ends)  # ordered[cuts[k-1]:cuts[k]] fall in batch k
    parts = [batches[k].take(pa.array(ordered[lo:hi] - (ends[k] - batches[k].num_rows)))
             for k, (lo, hi) in enumerate(zip(np.r_[0, cuts[:-1]], cuts, strict=True)) if hi > lo]
    taken = pa.Table.from_batches(parts, schema=table.schema)
    if np.all(order[1:] > order[:-1]):  # asked for in increasing order already
        return taken
    return taken.combine_chunks().take(pa.array(np.argsort(order, kind="stable")))


class _MappedTable:
    """An Arrow file mapped into memory: a zero-copy table whose pages the OS reads in as they are used.

    `release()` drops the pages read so far from this process's resident memory (they stay in the page
    cache, and come back on the next use), so a pass over a column of millions of rows holds only the
    pages of the chunks it is working on; what a run holds besides stays compact arrays.
    """

    def __init__(self, path: Path) -> None:
        with path.open("rb") as f:
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self.table = pa.ipc.open_file(pa.BufferReader(pa.py_buffer(self._map))).read_all()

    def release(self) -> None:
        if hasattr(mmap, "MADV_DONTNEED"):  # Linux, macOS; elsewhere the OS decides alone
            self._map.madvise(mmap.MADV_DONTNEED)
