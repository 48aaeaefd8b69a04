"""The prediction log: every answered request, written to the store off the request path.

The server only appends to a queue; a background thread inserts in batches (one transaction per
batch), so logging costs the predict path almost nothing. Feedback needs the row it refers to, so
`flush()` waits until everything recorded so far is committed.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from typing import Any

from sqlalchemy import JSON, and_, not_, select, update

from tunesmith.store.db import Store
from tunesmith.store.schema import Prediction

_STOP = object()  # close(): the writer commits what it has and ends
MAX_REQUEST_ID = 128  # the log's key (Prediction.request_id, a VARCHAR(128)): feedback's request_id too
SHADOW_SUFFIX = ":shadow"  # a shadow challenger's row: the request's id and this
# A client's X-Request-ID leaves room for the suffix: a 128-character id lost its shadow row on PostgreSQL
MAX_CLIENT_REQUEST_ID = MAX_REQUEST_ID - len(SHADOW_SUFFIX)
BATCH = 512  # rows per insert: large enough to amortise the commit, small enough to keep latency low
SHAPE_BATCH = 1000  # rows per transaction when the purge gives old rows their answer shape
WAIT_S = 0.05  # how long the writer waits for more rows before committing what it has


def json_present(column: Any) -> Any:
    """Rows whose JSON `column` holds a value: "nothing" may be stored as SQL NULL or as JSON's null, which IS NOT
    NULL lets through; both nulls are left out."""
    return and_(column.is_not(None), column != JSON.NULL)


def inputs_logged() -> Any:
    """Rows that hold their inputs: the log writes "no inputs" (--no-log-inputs, or purged) as JSON's null."""
    return json_present(Prediction.inputs)


def answer_shape(outputs: Sequence[Any]) -> dict[str, Any]:
    """What answers were like without what they said: how many, and for a classifier the model's labels (all of them,
    the keys of its probabilities). Written with --no-log-inputs too, and kept past the retention: feedback is checked
    against it (an unknown label or an index past the batch is refused) without the log holding any content."""
    shape: dict[str, Any] = {"items": len(outputs)}
    first = next((o for o in outputs if isinstance(o, dict)), None)  # a prediction's (a chat answer is text)
    if first is None:
        return shape
    shape["values"] = "value" in first  # a regression
    if "label" in first:
        shape["multi_label"] = not isinstance(first["label"], str)
    if "probabilities" in first:
        shape["labels"] = list(first["probabilities"])
    return shape


class PredictionLog:
    def __init__(self, store: Store, *, log_inputs: bool = True) -> None:
        self.store = store
        self.log_inputs = log_inputs  # off: ids, models and timings only (sensitive deployments)
        self._queue: queue.Queue[Any] = queue.Queue()
        self._thread = threading.Thread(target=self._write, name="tunesmith-prediction-log", daemon=True)
        self.errors = 0
        self._handled = 0  # rows the writer has finished with (written or reported): close()'s sign of progress
        self._thread.start()

    def record(self, request_id: str, model: str, model_version: str, kind: str, inputs: Sequence[Any],
               outputs: Sequence[Any], latency_ms: float, user_id: str | None = None, variant: str | None = None) -> None:
        """Queue one answered request (never blocks)."""
        self._queue.put(self._row(request_id, model, model_version, kind, inputs, outputs, latency_ms, user_id, variant))

    def record_once(self, request_id: str, model: str, model_version: str, kind: str, inputs: Sequence[Any],
                    outputs: Sequence[Any], latency_ms: float, user_id: str | None = None,
                    variant: str | None = None) -> bool:
        """Write one answered request under a client's request id now, before it is answered: False (nothing written)
        when that id is on record already, from this server or another on the store. Feedback names an answer by its
        id, and a reused one bound feedback on the second answer to the first one's text; the store's key settles it
        for every replica (a claim kept in this process saw neither the other replicas' requests nor their rows still
        queued). A store that cannot take it now lets the request through: the row goes the queued way, where a clash
        is kept under a new id with a warning (_commit)."""
        row = self._row(request_id, model, model_version, kind, inputs, outputs, latency_ms, user_id, variant)
        try:
            with self.store.session() as s:
                return s.scalar(self.store.insert(Prediction).values(row)
                                .on_conflict_do_nothing(index_elements=["request_id"])
                                .returning(Prediction.request_id)) is not None
        except Exception as err:  # noqa: BLE001 - the log must never take the server down
            print(f"prediction log: could not write request {request_id!r} now ({type(err).__name__}: {err}); "
                  "queued for the writer", flush=True)
            self._queue.put(row)
            return True

    def _row(self, request_id: str, model: str, model_version: str, kind: str, inputs: Sequence[Any],
             outputs: Sequence[Any], latency_ms: float, user_id: str | None, variant: str | None) -> dict[str, Any]:
        return {"request_id": request_id, "model": model, "model_version": model_version, "kind": kind,
                "created": time.time(), "latency_ms": latency_ms, "user_id": user_id, "variant": variant,
                "inputs": list(inputs) if self.log_inputs else None,
                "outputs": list(outputs) if self.log_inputs else None, "answer_shape": answer_shape(outputs)}

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every row recorded before this call is committed."""
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    def close(self, patience_s: float = 10.0) -> None:
        """Write what is queued, then stop: waits as long as rows keep going in (a fixed 10 s dropped the rest of a
        large backlog without a word), and says how many were lost when the store takes none for `patience_s`."""
        self._queue.put(_STOP)
        # Progress is rows finished, not rows taken off the queue: a batch taken but still committing is no progress
        # yet, and the queue's size then said "none taken" about a store that was merely slow to answer.
        handled = self._handled
        while True:
            self._thread.join(timeout=patience_s)
            if not self._thread.is_alive():
                return
            if self._handled == handled:
                print(f"prediction log: {self._queue.qsize()} queued answer(s) not written: the store took none in "
                      f"{patience_s:g} s", flush=True)
                return
            handled = self._handled

    def purge(self, retention_days: float) -> int:
        """Clear inputs and outputs older than the retention period (the rows stay, for counts and feedback)."""
        cutoff = time.time() - retention_days * 86400
        self._keep_answer_shapes(cutoff)
        with self.store.session() as s:
            # only rows still holding inputs: it rewrote the cleared ones every hour
            result = s.execute(update(Prediction).where(Prediction.created < cutoff, inputs_logged())
                               .values(inputs=None, outputs=None))
            return int(result.rowcount or 0)

    def _keep_answer_shapes(self, cutoff: float) -> None:
        """Rows logged before answer shapes were (migration 0008) are checked against their outputs: their shape, from
        those outputs, before the purge clears them (feedback on them then went unchecked). A batch per transaction, so
        the log's writer is not held up behind a long one."""
        missing = and_(Prediction.created < cutoff, not_(json_present(Prediction.answer_shape)),
                       json_present(Prediction.outputs))
        while True:
            with self.store.session() as s:
                rows = s.execute(select(Prediction.request_id, Prediction.outputs).where(missing).limit(SHAPE_BATCH)).all()
                shaped = [{"request_id": rid, "answer_shape": answer_shape(outputs)} for rid, outputs in rows
                          if isinstance(outputs, list)]
                if shaped:
                    s.execute(update(Prediction), shaped)  # by primary key
            if len(rows) < SHAPE_BATCH or not shaped:
                return

    def _write(self) -> None:
        stopping = False
        while not stopping:
            rows: list[dict[str, Any]] = []
            waiting: list[threading.Event] = []
            item = self._queue.get()
            while True:
                if item is _STOP:
                    stopping = True
                elif isinstance(item, threading.Event):
                    waiting.append(item)
                else:
                    rows.append(item)
                if stopping or len(rows) >= BATCH:
                    break
                try:
                    item = self._queue.get(timeout=WAIT_S if rows else 0.001)
                except queue.Empty:
                    break
            if rows:
                self._insert(rows)
                self._handled += len(rows)
            for event in waiting:
                event.set()

    def _insert(self, rows: list[dict[str, Any]]) -> None:
        try:
            self._commit(rows)
        except Exception as err:  # noqa: BLE001 - the log must never take the server down
            if len(rows) > 1:  # one bad row fails the batch's statement: the others are written one by one
                for row in rows:
                    self._insert([row])
                return
            self.errors += 1
            print(f"prediction log: request {rows[0]['request_id']!r} not written: {type(err).__name__}: {err}", flush=True)

    def _commit(self, rows: list[dict[str, Any]]) -> None:
        with self.store.session() as s:
            written = Counter(s.execute(self.store.insert(Prediction).values(rows)
                                        .on_conflict_do_nothing(index_elements=["request_id"])
                                        .returning(Prediction.request_id)).scalars())
            # its answer was sent already: on record under an id no other request has, not dropped
            renamed = [(row["request_id"], {**row, "request_id": f"req-{uuid.uuid4().hex[:24]}"})
                       for row in _clashes(rows, written)]
            if renamed:
                s.execute(self.store.insert(Prediction).values([row for _, row in renamed]))
        for given, row in renamed:
            print(f"prediction log: request id {given!r} was already on record (sent by two requests at once, or by "
                  f"another server on this store): this answer is kept as {row['request_id']!r}, and feedback on "
                  f"{given!r} refers to the first", flush=True)


def _clashes(rows: list[dict[str, Any]], written: Counter[str]) -> list[dict[str, Any]]:
    """The rows an insert skipped: an id on record already, or twice in the batch (its first row is the one written).
    Dropped silently, they left an answer off the record, and its feedback bound to the other request's text."""
    clashed = []
    for row in rows:
        if written[row["request_id"]] > 0:
            written[row["request_id"]] -= 1
        else:
            clashed.append(row)
    return clashed
