"""The labelling queue: an annotation task (label set, instructions, items) in the store, and what
the web page, the terminal mode and the importers do with it.

Every answer is a row the moment it is given (label, or skip), so closing the page loses nothing;
undo deletes the annotator's latest answer. Each annotator is asked for the next item they have not
answered, in this order:

  1. shown to the fewest other annotators in the last LEASE_S seconds (two people rarely label the
     same item at once when one label is wanted); each of them counts as one label to come, so an
     item is not offered at all while its labels plus those reach `overlap`,
  2. fewest labels first (so, with `overlap` 2, items reach two annotators for agreement),
  3. most uncertain model suggestion first (model-assisted labelling: humans see hard cases first),
  4. load order.

An item is done, and leaves every queue, once it has `overlap` labels or a model label accepted
over the threshold (`annotate_assist`); model labels are marked and never count as human agreement.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, case, delete, exists, func, or_, select
from sqlalchemy.orm import Session

from tunesmith.errors import ConfigError, DataError
from tunesmith.store.db import Store
from tunesmith.store.schema import Annotation, AnnotationItem, AnnotationLease, AnnotationTask

LEASE_S = 300.0  # an item shown to someone is kept from others this long: longer than one item takes, short if they leave
MODEL_PREFIX = "model:"  # annotator ids of accepted model suggestions; reserved, never a human's
MAX_LABELS = 9  # the page's number keys 1..9


@dataclass
class NewItem:
    """A text to label as a loader found it: `item_id` from the data or the text's hash."""

    item_id: str
    text: str
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class TaskInfo:
    name: str
    labels: list[str]
    instructions: str
    overlap: int


@dataclass
class ItemLabels:
    """One item with every answer it has: what export, agreement and the report read."""

    seq: int
    item_id: str
    text: str
    meta: dict[str, Any]
    labels: dict[str, str]  # annotator -> label (humans and models)
    skipped_by: list[str]
    suggestion: dict[str, Any] | None

    @property
    def human(self) -> dict[str, str]:
        return {a: v for a, v in self.labels.items() if not is_model(a)}

    @property
    def model(self) -> dict[str, str]:
        return {a: v for a, v in self.labels.items() if is_model(a)}


def is_model(annotator: str) -> bool:
    return annotator.startswith(MODEL_PREFIX)


def text_hash(text: str) -> str:
    return hashlib.sha256(text.strip().encode("utf-8")).hexdigest()


def hashed_id(text: str) -> str:
    """The item id of a text without one: stable across loads, so loading the same file twice adds nothing."""
    return "sha256:" + text_hash(text)[:16]


def check_annotator(annotator: str, *, model: bool = False) -> str:
    annotator = (annotator or "").strip()
    if not annotator or len(annotator) > 128:
        raise ConfigError("annotator id must be 1-128 characters (e.g. your name or initials)")
    if is_model(annotator) != model:
        raise ConfigError(f"annotator id {annotator!r}: ids starting with {MODEL_PREFIX!r} are for model suggestions only"
                          if not model else f"model annotator ids start with {MODEL_PREFIX!r}")
    return annotator


def create_task(store: Store, name: str, labels: list[str] | None = None, instructions: str | None = None,
                overlap: int | None = None) -> TaskInfo:
    """Open the task `name`, creating it when new (then `labels` is required). An existing task keeps its
    labels: giving different ones is an error (annotations would stop meaning what they meant)."""
    if not name or len(name) > 128:
        raise ConfigError("task name must be 1-128 characters")
    if labels is not None:
        labels = [str(v).strip() for v in labels if str(v).strip()]
        if len(labels) < 2 or len(set(labels)) != len(labels):
            raise ConfigError(f"--labels needs two or more distinct labels, got {labels}")
        if len(labels) > MAX_LABELS:
            raise ConfigError(f"--labels: at most {MAX_LABELS} labels (the number keys 1..9 pick them), got {len(labels)}")
    if overlap is not None and overlap < 1:
        raise ConfigError(f"--overlap must be 1 or more (annotators per item), got {overlap}")
    with store.session() as s:
        task = s.get(AnnotationTask, name)
        if task is None:
            if labels is None:
                raise ConfigError(f"annotation task {name!r} does not exist yet; create it with --labels a,b,...")
            task = AnnotationTask(name=name, labels=labels, instructions=instructions or "", overlap=overlap or 1,
                                  created=time.time())
            s.add(task)
        else:
            if labels is not None and labels != list(task.labels):
                raise ConfigError(f"annotation task {name!r} has labels {task.labels}; give the same --labels "
                                  "(or none), or use a new --task name")
            if instructions is not None:
                task.instructions = instructions
            if overlap is not None:
                task.overlap = overlap
        return TaskInfo(task.name, list(task.labels), task.instructions, task.overlap)


def open_task(store: Store, name: str) -> TaskInfo:
    return create_task(store, name)


def list_tasks(store: Store) -> list[TaskInfo]:
    with store.session() as s:
        return [TaskInfo(t.name, list(t.labels), t.instructions, t.overlap)
                for t in s.scalars(select(AnnotationTask).order_by(AnnotationTask.created))]


SOURCE_KEY = "_source"  # an item's meta key: the file:line it was loaded from


def add_items(store: Store, task: str, items: list[NewItem]) -> tuple[int, int]:
    """Add items not already in the task (by item id). Returns (added, already there). An id already there with
    another text is refused before anything is added: it was skipped as "already there", and its text never queued."""
    open_task(store, task)
    with store.session() as s:
        known = {item_id: (digest, None) for item_id, digest in
                 s.execute(select(AnnotationItem.item_id, AnnotationItem.text_hash).where(AnnotationItem.task == task))}
        new = []
        for item in items:
            digest, where = text_hash(item.text), item.meta.get(SOURCE_KEY)
            if item.item_id in known:
                if known[item.item_id][0] != digest:
                    earlier = known[item.item_id][1] or f"task {task!r}"
                    raise DataError(f"{where or 'an item'}: id {item.item_id!r} is already taken by another text (in "
                                    f"{earlier}); ids must be unique: name a unique column with --id-field, or one "
                                    "that is not there (each text then gets a hashed id). Nothing was added.")
                continue
            known[item.item_id] = (digest, where)
            new.append(AnnotationItem(task=task, item_id=item.item_id, text=item.text, text_hash=digest,
                                      meta=item.meta, created=time.time()))
        s.add_all(new)
    return len(new), len(items) - len(new)


class Queue:
    """One task's queue for the page, the terminal and the importers. Methods return plain dicts
    (JSON-ready); bad input raises ConfigError (unknown label, item or annotator id)."""

    def __init__(self, store: Store, task: str) -> None:
        self.store = store
        self.task = open_task(store, task)

    # -- what an annotator sees -----------------------------------------------------------------

    def _open_for(self, annotator: str) -> Any:
        """Items `annotator` still has to answer: not answered by them, not done."""
        answered = exists().where(Annotation.item_seq == AnnotationItem.seq, Annotation.annotator == annotator)
        model_label = exists().where(Annotation.item_seq == AnnotationItem.seq, Annotation.annotator.startswith(MODEL_PREFIX),
                                     Annotation.label.is_not(None))
        return and_(AnnotationItem.task == self.task.name, ~answered, ~model_label,
                    _label_count() < self.task.overlap)

    def next(self, annotator: str) -> dict[str, Any] | None:
        """The next item for `annotator` (leased to them for LEASE_S), or None when their queue is empty."""
        annotator = check_annotator(annotator)
        now = time.time()
        leased_elsewhere = (select(func.count()).where(AnnotationLease.item_seq == AnnotationItem.seq,
                                                       AnnotationLease.annotator != annotator,
                                                       AnnotationLease.shown_at > now - LEASE_S)
                            .correlate(AnnotationItem).scalar_subquery())
        # Every lease holder's coming label counts: without this, the last open item went to everyone at once (it
        # sorted last but was still the only one) and got more labels than its overlap; with one lease per item (its
        # last viewer's), an overlap of 2 still let every annotator have it.
        room = _label_count() + leased_elsewhere < self.task.overlap
        with self.store.session() as s:
            # One next() per task at a time: two at once both read an item as free and were both shown it.
            Store.lock(s, AnnotationTask, AnnotationTask.name == self.task.name)
            item = s.scalars(select(AnnotationItem).where(self._open_for(annotator), room).order_by(
                leased_elsewhere, _label_count(), case((AnnotationItem.uncertainty.is_(None), 1), else_=0),
                AnnotationItem.uncertainty.desc(), AnnotationItem.seq).limit(1)).first()
            if item is None:
                return None
            s.execute(delete(AnnotationLease).where(AnnotationLease.shown_at <= now - LEASE_S))  # expired: gone
            s.merge(AnnotationLease(item_seq=item.seq, annotator=annotator, shown_at=now))
            return _item_json(item)

    def progress(self, annotator: str | None = None) -> dict[str, Any]:
        with self.store.session() as s:
            items = AnnotationItem.task == self.task.name
            total = s.scalar(select(func.count()).select_from(AnnotationItem).where(items)) or 0
            model_label = exists().where(Annotation.item_seq == AnnotationItem.seq, Annotation.annotator.startswith(MODEL_PREFIX),
                                         Annotation.label.is_not(None))
            done = s.scalar(select(func.count()).select_from(AnnotationItem).where(
                items, or_(model_label, _label_count() >= self.task.overlap))) or 0
            out: dict[str, Any] = {"task": self.task.name, "total": total, "done": done, "overlap": self.task.overlap}
            if annotator:
                annotator = check_annotator(annotator)  # the id the answers were saved under (" ann" from a URL is "ann")
                mine = select(Annotation.label).where(Annotation.task == self.task.name, Annotation.annotator == annotator)
                answers = list(s.scalars(mine))
                out["annotator"] = annotator
                out["labelled"] = sum(a is not None for a in answers)
                out["skipped"] = sum(a is None for a in answers)
                out["left"] = s.scalar(select(func.count()).select_from(AnnotationItem).where(self._open_for(annotator))) or 0
            return out

    # -- answers --------------------------------------------------------------------------------

    def label(self, annotator: str, item_id: str, label: str, origin: str = "web") -> dict[str, Any]:
        if label not in self.task.labels:
            raise ConfigError(f"label {label!r} is not one of task {self.task.name!r}'s labels {self.task.labels}")
        return self._answer(check_annotator(annotator), item_id, label, origin)

    def skip(self, annotator: str, item_id: str, origin: str = "web") -> dict[str, Any]:
        return self._answer(check_annotator(annotator), item_id, None, origin)

    def _answer(self, annotator: str, item_id: str, label: str | None, origin: str,
                confidence: float | None = None) -> dict[str, Any]:
        with self.store.session() as s:
            item = self._item(s, item_id)
            record(s, item, annotator, label, origin, confidence)
            return _item_json(item) | {"label": label, "annotator": annotator}

    def undo(self, annotator: str) -> dict[str, Any] | None:
        """Delete `annotator`'s latest answer; returns its item (with the label that was removed), or None."""
        annotator = check_annotator(annotator)
        with self.store.session() as s:
            last = s.scalars(select(Annotation).where(Annotation.task == self.task.name, Annotation.annotator == annotator)
                             .order_by(Annotation.seq.desc()).limit(1)).first()
            if last is None:
                return None
            item = s.get(AnnotationItem, last.item_seq)
            assert item is not None
            removed = last.label
            s.delete(last)
            s.merge(AnnotationLease(item_seq=item.seq, annotator=annotator, shown_at=time.time()))  # theirs again
            return _item_json(item) | {"undone": removed if removed is not None else "skip"}

    def _item(self, s: Session, item_id: str) -> AnnotationItem:
        item = s.scalars(select(AnnotationItem).where(AnnotationItem.task == self.task.name,
                                                      AnnotationItem.item_id == str(item_id))).first()
        if item is None:
            raise ConfigError(f"task {self.task.name!r} has no item {item_id!r}")
        return item

    # -- everything, for export and the report ----------------------------------------------------

    def items(self) -> list[ItemLabels]:
        with self.store.session() as s:
            rows = s.scalars(select(AnnotationItem).where(AnnotationItem.task == self.task.name)
                             .order_by(AnnotationItem.seq)).all()
            out = {r.seq: ItemLabels(r.seq, r.item_id, r.text, dict(r.meta), {}, [], r.suggestion) for r in rows}
            for a in s.scalars(select(Annotation).where(Annotation.task == self.task.name).order_by(Annotation.seq)):
                if a.label is None:
                    out[a.item_seq].skipped_by.append(a.annotator)
                else:
                    out[a.item_seq].labels[a.annotator] = a.label
            return list(out.values())


def record(s: Session, item: AnnotationItem, annotator: str, label: str | None, origin: str,
           confidence: float | None = None) -> None:
    """One answer, replacing the annotator's earlier answer on the item (it becomes their latest, for undo: a new
    row, so a new seq). The item is held until the commit: the same annotator answering it from three tabs at once
    had two delete nothing, or the same row, and lose the unique (item, annotator) race with IntegrityError; now
    each waits, deletes the answer the one before wrote, and adds its own."""
    Store.lock(s, AnnotationItem, AnnotationItem.seq == item.seq)
    s.execute(delete(Annotation).where(Annotation.item_seq == item.seq, Annotation.annotator == annotator))
    s.add(Annotation(task=item.task, item_seq=item.seq, annotator=annotator, label=label, origin=origin,
                     confidence=confidence, created=time.time()))
    s.execute(delete(AnnotationLease).where(AnnotationLease.item_seq == item.seq, AnnotationLease.annotator == annotator))
    s.flush()


def _label_count() -> Any:
    """Labels (not skips) an item has, as a correlated subquery."""
    return (select(func.count()).where(Annotation.item_seq == AnnotationItem.seq, Annotation.label.is_not(None))
            .correlate(AnnotationItem).scalar_subquery())


def _item_json(item: AnnotationItem) -> dict[str, Any]:
    out: dict[str, Any] = {"item_id": item.item_id, "text": item.text}
    if item.suggestion:
        out["suggestion"] = {"label": item.suggestion.get("label"), "confidence": item.suggestion.get("confidence"),
                             "model": item.suggestion.get("model")}
    return out
