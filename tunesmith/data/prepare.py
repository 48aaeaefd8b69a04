"""`tunesmith data prepare`: sources -> clean, deduplicated, split, reported dataset version.

Row-local work (parse, map fields, validate, clean) runs while each file streams and lands in an
Arrow file on disk; whole-column work (token lengths, duplicates, split, leakage) then runs on that
memory-mapped table. Every input row ends in exactly one place: a split or the quarantine file.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
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
from tunesmith.data.raw import Raw
from tunesmith.data.records import TARGET_TYPES, Canonicalizer, Corrections, Rejection, canonical_schema
from tunesmith.data.sources import TEXT_KINDS, guess_encoding, read_jsonl, read_source
from tunesmith.errors import ConfigError, DataError

BATCH = 10_000  # rows per Arrow record batch while streaming
SPLIT_RANK = {None: 0, "train": 0, "validation": 1, "test": 2}
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
    return re.sub(r"\d+(\.\d+)?", "N", reason).strip(" :;,")


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
                 say: Callable[[str], None] = lambda _: None) -> Iterator[Raw]:
    """The raw records of data.sources[index]: a collected source (web, rest, hub, synthetic) from its
    JSONL, collected first when it is not there yet; a survey export through the survey reader; a file
    or packaged dataset through its reader."""
    from tunesmith.collect.run import collectable, ensure_collected

    if collectable(spec):
        yield from read_jsonl(ensure_collected(cfg, index, spec, say), "utf-8")
    elif spec.kind == "survey":
        from tunesmith.collect import survey

        yield from survey.read(spec, needed)
    else:
        yield from read_source(spec, needed)


def _preview(record: Any) -> Any:
    if isinstance(record, dict):
        return {k: (v[:200] + "…" if isinstance(v, str) and len(v) > 200 else v) for k, v in list(record.items())[:8]}
    return record[:300] if isinstance(record, str) else record


def prepare(cfg: ProjectConfig, out_dir: Path | None = None, progress: Progress = _no_progress) -> DatasetVersion:
    out = Path(out_dir or cfg.dataset_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        _Preparation(cfg, staging, progress).run()
        _swap_into_place(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return DatasetVersion(out)


def _swap_into_place(staging: Path, out: Path) -> None:
    """Replace `out` with the finished folder, so a failed run never leaves a half-written version."""
    old = out.parent / f".{out.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        if not (out / MANIFEST).exists() and any(out.iterdir()):
            raise DataError(f"{out}: exists and is not a tunesmith dataset; choose another output_dir")
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

    # -- stage 1: stream every source into canonical rows ------------------------------------

    def run(self) -> None:
        cfg = self.cfg
        target = TARGET_TYPES[self.task][0]
        corrections = Corrections(cfg.data.annotate.corrections, target)
        canon = Canonicalizer(cfg, corrections)
        rows_path = self.dir / "_rows.arrow"
        schema = canonical_schema(self.task)
        read = Step("read and validate", 0)
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
                                       say=lambda message: self.progress(message, 0, None))
                for raw in itertools.islice(records, spec.max_rows):
                    stats["rows"] += 1
                    parsed += raw.record is not None
                    result = canon.row(raw, exprs, spec)
                    if isinstance(result, Rejection):
                        stats["rejected"] += 1
                        read.reasons[f"{result.stage}: {category(result.reason)}"] += 1
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
                            + "; ".join(f"{k} ({v})" for k, v in read.reasons.most_common(5)))
        self.label_changes = canon.label_changes
        self.missing = canon.missing
        self.unused_corrections = corrections.unused()
        self.applied_corrections = len(corrections.applied)
        self.table = pa.ipc.open_file(pa.memory_map(str(rows_path))).read_all()
        self.alive = np.ones(self.table.num_rows, dtype=bool)
        self.removed: dict[int, Rejection] = {}
        self._lengths()
        self._exact_duplicates()
        self._near_duplicates()
        self._split()
        self._leakage()
        self._write()

    def _resolve_encoding(self, spec: SourceSpec, stats: dict[str, Any]) -> SourceSpec:
        """Guess a text file's encoding once, record it, and warn when the guess was a close call."""
        if spec.kind not in TEXT_KINDS or spec.encoding or spec.path is None or not spec.path.is_file():
            stats["encoding"] = spec.encoding
            return spec
        if spec.path.stat().st_size == 0:
            return spec
        encoding, alternatives = guess_encoding(spec.path)
        stats["encoding"] = encoding
        if alternatives:
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

    def _remove(self, idx: int, stage: str, reason: str, step: Step) -> None:
        self.alive[idx] = False
        row = self.table.slice(idx, 1).to_pylist()[0]
        r = Rejection(stage, row["source"], row["line"], reason, id=row["id"], kind="removed",
                      record={k: v for k, v in row.items() if k not in ("key", "split_hint", "no_test")})
        self.removed[idx] = r
        step.reasons[category(reason) if stage not in ("exact_duplicate", "near_duplicate") else stage.replace("_", " ")] += 1

    def _step(self, name: str) -> Step:
        step = Step(name, int(self.alive.sum()))
        self.steps.append(step)
        return step

    # -- stage 2: whole-column work -----------------------------------------------------------

    def texts(self, indices: np.ndarray | None = None) -> Iterator[str]:
        """The text each row is compared by (chat: the whole conversation; preference: prompt and both answers)."""
        table = self.table if indices is None else self.table.take(pa.array(indices))
        if self.task == TaskType.preference:
            for batch in table.select(["messages", "chosen", "rejected"]).to_batches():
                for prompt, chosen, rejected in zip(*(c.to_pylist() for c in batch.columns), strict=True):
                    yield "\n".join([*(f"{m['role']}: {m['content']}" for m in prompt),
                                     f"chosen: {chosen}", f"rejected: {rejected}"])
            return
        column = "messages" if self.task == TaskType.chat else "text"
        for chunk in table.column(column).chunks:
            for value in chunk.to_pylist():
                yield "\n".join(f"{m['role']}: {m['content']}" for m in value) if column == "messages" else value

    def _lengths(self) -> None:
        from transformers.utils import logging as hf_logging

        from tunesmith.models.catalog import context_length, load_tokenizer

        tokenizer = load_tokenizer(self.cfg.model.name)
        self.context = context_length(tokenizer)
        self.max_length = self.cfg.model.token_budget(self.task, self.context)
        n = self.table.num_rows
        lengths = np.zeros(n, dtype=np.int32)
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # "sequence longer than max length" is what we measure here
        try:
            if self.task in GENERATIVE_TASKS:
                from tunesmith.tasks.chat import set_chat_template

                # Counted as training will read them: through the chat template (refused without one).
                set_chat_template(tokenizer, self.cfg.model.chat_template, str(self.cfg.model.name))
                for i, convos in enumerate(self._conversations()):
                    lengths[i] = max(len(tokenizer.apply_chat_template(c, tokenize=True, return_dict=False)) for c in convos)
                    if i % 2000 == 0:
                        self.progress("counting tokens", i, n)
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
        for i in np.flatnonzero(self.alive):
            if clean.min_tokens and lengths[i] < clean.min_tokens:
                self._remove(i, "length", f"{lengths[i]} tokens, below data.clean.min_tokens={clean.min_tokens}", step)
            elif too_long and lengths[i] > too_long:
                self._remove(i, "length", f"{lengths[i]} tokens, over {why}", step)
        step.rows_out = int(self.alive.sum())

    def _conversations(self) -> Iterator[list[list[dict[str, str]]]]:
        """Per row, the conversation(s) the model will read: chat, one; preference, prompt + each answer."""
        messages = self.table.column("messages").to_pylist()
        if self.task != TaskType.preference:
            for convo in messages:
                yield [[{"role": m["role"], "content": m["content"]} for m in convo]]
            return
        answers = zip(self.table.column("chosen").to_pylist(), self.table.column("rejected").to_pylist(), strict=True)
        for prompt, pair in zip(messages, answers, strict=True):
            plain = [{"role": m["role"], "content": m["content"]} for m in prompt]
            yield [[*plain, {"role": "assistant", "content": answer}] for answer in pair]

    def _targets(self) -> list[Any]:
        if self.task in GENERATIVE_TASKS:  # nothing to conflict on: equal keys are plain duplicates
            return [None] * self.table.num_rows
        name = TARGET_TYPES[self.task][0]
        values = self.table.column(name).to_pylist()
        return ["|".join(v) for v in values] if self.task == TaskType.multi_label else values

    def _keep_rank(self) -> np.ndarray:
        """Which copy of a duplicate stays (lowest first): pre-assigned later splits last, and a real row
        before a synthetic one, wherever the sources are listed."""
        hints = self.table.column("split_hint").to_pylist()
        synthetic = self.table.column("synthetic").to_numpy(zero_copy_only=False)
        return np.array([SPLIT_RANK[h] * 2 for h in hints], dtype=np.int64) + synthetic.astype(np.int64)

    def _exact_duplicates(self) -> None:
        step = self._step("exact duplicates")
        self.score_override: dict[int, float] = {}
        self.conflicts: list[dict[str, Any]] = []
        if not self.cfg.data.dedup.exact:
            step.rows_out = step.rows_in
            return
        idx = np.flatnonzero(self.alive)
        keys = self.table.column("key").to_numpy()[idx]
        rank = self._keep_rank()[idx]
        order = idx[np.lexsort((idx, rank, keys))]
        sorted_keys = self.table.column("key").to_numpy()[order]
        starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
        sizes = np.diff(np.r_[starts, len(order)])
        targets = self._targets()
        ids = self.table.column("id").to_pylist()
        policy = self.cfg.data.dedup.conflicts
        for s, size in zip(starts[sizes > 1], sizes[sizes > 1], strict=True):
            group = [int(x) for x in order[s : s + size]]
            values = [targets[i] for i in group]
            keep: int | None = group[0]
            if len(set(values)) > 1:
                counts = Counter(values)
                top = counts.most_common(2)
                if policy == "drop" or (policy == "majority" and top[0][1] == top[1][1]):
                    keep = None
                elif policy == "majority":
                    keep = next(i for i in group if targets[i] == top[0][0])
                elif policy == "mean":
                    self.score_override[group[0]] = float(np.mean(values))
                self.conflicts.append({"ids": [ids[i] for i in group], "values": dict(counts),
                                       "kept": ids[keep] if keep is not None else None, "policy": policy})
                for i in group:
                    if i != keep:
                        why = (f"conflicting duplicate: same text, values {dict(counts)}; policy '{policy}' "
                               + (f"kept '{ids[keep]}'" if keep is not None else "dropped all"))
                        self._remove(i, "conflict", why, step)
                continue
            for i in group[1:]:
                self._remove(i, "exact_duplicate", f"exact duplicate of '{ids[keep]}'", step)
        step.rows_out = int(self.alive.sum())

    def _near_duplicates(self) -> None:
        spec = self.cfg.data.dedup
        step = self._step("near duplicates")
        self.sig_index = np.flatnonzero(self.alive)  # rows the signatures belong to, in order
        n = len(self.sig_index)
        self.sigs = dedup.minhash_signatures(
            self.texts(self.sig_index), n, spec.num_perm, spec.shingle_size, seed=self.cfg.data.split.seed,
            on_progress=lambda done: self.progress("near-duplicate signatures", done, n),
        )
        self.near_examples: list[dict[str, Any]] = []
        if not spec.near:
            step.rows_out = step.rows_in
            return
        i, j, _ = dedup.similar_pairs(self.sigs, spec.near_threshold)
        keep_rank = self._keep_rank()
        rank = np.array([keep_rank[r] * (n + 1) + k for k, r in enumerate(self.sig_index)])
        rep = dedup.cluster_representatives(n, i, j, rank)
        dup = np.flatnonzero(rep != np.arange(n))
        sims = dedup.pair_similarity(self.sigs, dup, rep[dup])
        ids = self.table.column("id").to_pylist()
        for k, sim in zip(dup, sims, strict=True):
            row, kept = int(self.sig_index[k]), int(self.sig_index[rep[k]])
            self._remove(row, "near_duplicate", f"near duplicate (similarity {sim:.2f}) of '{ids[kept]}'", step)
            if len(self.near_examples) < 5:
                texts = list(self.texts(np.array([row, kept])))
                self.near_examples.append({"removed": ids[row], "kept": ids[kept], "similarity": round(float(sim), 3),
                                           "removed_text": texts[0][:300], "kept_text": texts[1][:300]})
        step.rows_out = int(self.alive.sum())

    def _strata(self) -> list[str]:
        if not self.cfg.data.split.stratify or self.task in GENERATIVE_TASKS:
            return [""] * self.table.num_rows
        if self.task == TaskType.regression:
            scores = self.table.column("score").to_numpy()
            return split.regression_strata(scores)
        if self.task == TaskType.multi_label:
            freq = Counter(x for labels in self.table.column("labels").to_pylist() for x in labels)
            return [min(labels, key=lambda x: (freq[x], x)) for labels in self.table.column("labels").to_pylist()]
        return self.table.column("label").to_pylist()

    def _split(self) -> None:
        idx = np.flatnonzero(self.alive)
        strata = self._strata()
        groups = self.table.column("group").to_pylist()
        hints = self.table.column("split_hint").to_pylist()
        no_test = self.table.column("no_test").to_pylist()
        assigned = split.assign([strata[i] for i in idx], [groups[i] for i in idx], [hints[i] for i in idx],
                                self.cfg.data.split, [no_test[i] for i in idx])
        self.split_of = np.full(self.table.num_rows, "", dtype=object)
        self.split_of[idx] = assigned

    def _leakage(self) -> None:
        """Duplicates across splits: removed from the later split (train < validation < test)."""
        policy = self.cfg.data.split.leakage
        step = self._step("leakage across splits")
        ids = self.table.column("id").to_pylist()
        rank = {s: r for r, s in enumerate(SPLITS)}
        found: list[tuple[int, int, str]] = []  # (row to remove, row it duplicates, how)
        idx = np.flatnonzero(self.alive)
        keys = self.table.column("key").to_numpy()
        first: dict[int, int] = {}
        for i in sorted(idx, key=lambda r: (rank[self.split_of[r]], r)):
            k = int(keys[i])
            if k in first and self.split_of[first[k]] != self.split_of[i]:
                found.append((i, first[k], "exact"))
            first.setdefault(k, i)
        self.leakage_checked = ["exact"]
        if not self.cfg.data.dedup.near:  # with near-dedup on, no near pair survives to the split
            self.leakage_checked.append("near")
            pos = {int(r): k for k, r in enumerate(self.sig_index)}
            alive_pos = np.array([pos[int(r)] for r in idx])
            i, j, sims = dedup.similar_pairs(self.sigs[alive_pos], self.cfg.data.dedup.near_threshold)
            flagged = {a for a, _, _ in found}
            for a, b, sim in zip(idx[i], idx[j], sims, strict=True):
                if self.split_of[a] != self.split_of[b]:
                    later, earlier = (a, b) if rank[self.split_of[a]] > rank[self.split_of[b]] else (b, a)
                    if later not in flagged:
                        flagged.add(later)
                        found.append((later, earlier, f"near (similarity {sim:.2f})"))
        else:
            self.leakage_checked.append("near (removed before splitting)")
        found += self._paraphrases_of_other_splits(idx, {a for a, _, _ in found})
        self.leaks = [{"id": ids[a], "split": self.split_of[a], "duplicates": ids[b], "of_split": self.split_of[b],
                       "match": how} for a, b, how in found]
        if found and policy == "fail":
            lines = "\n".join(f"  {x['id']} ({x['split']}) duplicates {x['duplicates']} ({x['of_split']}), {x['match']}"
                              for x in self.leaks[:20])
            raise DataError(f"{len(found)} example(s) leak across splits (data.split.leakage: fail):\n{lines}")
        if policy == "remove":
            for a, b, how in found:
                if self.alive[a]:
                    self._remove(a, "leakage", f"{how} duplicate of '{ids[b]}' in {self.split_of[b]}", step)
        step.rows_out = int(self.alive.sum())

    def _paraphrases_of_other_splits(self, idx: np.ndarray, flagged: set[int]) -> list[tuple[int, int, str]]:
        """A paraphrase says what its real row says in other words, which n-gram similarity misses: one
        whose original landed in another split (validation, test) leaks it, so it leaves."""
        synthetic = self.table.column("synthetic").to_numpy(zero_copy_only=False)
        if not synthetic[idx].any():
            return []
        self.leakage_checked.append("paraphrases")
        provenance = self.table.column("provenance").to_pylist()
        row_of = {row_id: int(r) for r, row_id in zip(idx, self.table.column("id").take(pa.array(idx)).to_pylist(), strict=True)}
        found = []
        for r in idx[synthetic[idx]]:
            original = row_of.get(json.loads(provenance[r]).get("paraphrase_of"))
            if original is not None and self.split_of[original] != self.split_of[r] and int(r) not in flagged:
                found.append((int(r), original, "paraphrase"))
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
        label_id = {name: i for i, name in enumerate(labels or [])}
        fingerprint = Fingerprint()
        split_tables: dict[str, pa.Table] = {}
        for name in SPLITS:
            rows = np.flatnonzero(self.alive & (self.split_of == name))
            table = self.table.take(pa.array(rows, type=pa.int64())).drop_columns(["key", "split_hint", "no_test"])
            if self.task == TaskType.single_label:
                table = table.append_column("label_id", pa.array([label_id[x] for x in table.column("label").to_pylist()], pa.int64()))
            elif self.task == TaskType.multi_label:
                ids = [[label_id[x] for x in labels_] for labels_ in table.column("labels").to_pylist()]
                table = table.append_column("label_ids", pa.array(ids, pa.list_(pa.int64())))
            elif self.task == TaskType.regression and self.score_override:
                scores = self.table.column("score").to_numpy().copy()
                for i, value in self.score_override.items():
                    scores[i] = value
                table = table.set_column(table.schema.get_field_index("score"), "score", pa.array(scores[rows]))
            write_split(self.dir, name, table)
            fingerprint.add_split(name, table)
            split_tables[name] = table
        for i in sorted(self.removed):
            self.quarantine.add(self.removed[i])
        self.quarantine.close()
        (self.dir / "_rows.arrow").unlink()

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
        )
        (self.dir / MANIFEST).write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")
        report.write(self.dir, manifest, self._summary(), split_tables)

    def _summary(self) -> report.PreparationSummary:
        dedup_spec, split_spec = self.cfg.data.dedup, self.cfg.data.split
        return report.PreparationSummary(
            task=self.task, sources=self.sources, steps=[s.as_dict() for s in self.steps],
            missing_values=dict(self.missing), removed_by_stage=dict(Counter(r.stage for r in self.removed.values())),
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
        column = "labels" if self.task == TaskType.multi_label else "label"
        present = {}
        for name, table in tables.items():
            values = table.column(column).to_pylist()
            present[name] = set(x for v in values for x in v) if column == "labels" else set(values)
        for label in labels:
            missing = [s for s in SPLITS if label not in present[s]]
            if "train" in missing and len(missing) < 3:
                self.warnings.append(f"class '{label}' has no training example but appears in "
                                     f"{[s for s in SPLITS if s not in missing]}")
            elif missing and "train" not in missing:
                self.warnings.append(f"class '{label}' has no example in {missing}: its metrics there will be undefined")
            elif len(missing) == 3:
                self.warnings.append(f"class '{label}' (from task.labels) has no example at all")
