"""User feedback on earlier answers (`POST /v1/feedback`), and the corrections as a dataset file.

An accepted item is committed before the call returns, so an acknowledged item survives a crash of
the server right after. A retry (the same item sent again, because the client saw no answer) is
idempotent: the item's id is a hash of what it says, so the retry gets the first one's answer and is
counted once. Values or ApiError, no HTTP.
"""

from __future__ import annotations

import csv
import hashlib
import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from sqlalchemy import and_, func, select

from tunesmith.errors import ApiError, ConfigError, NotFound, TunesmithError
from tunesmith.monitor.log import MAX_REQUEST_ID, WAIT_S, PredictionLog, answer_shape
from tunesmith.store.db import Store
from tunesmith.store.schema import Feedback, ModelVersion, Prediction

# An answer another replica gave reaches the store from its log's writer (up to WAIT_S, then a commit): feedback sent
# here right after it found no row and was lost with a 404. Looked for again for this long (well above WAIT_S and a
# slow commit) before the 404, which a truly unknown id then gets this much later.
FIND_WAIT_S = 1.0
FIND_POLL_S = WAIT_S  # between looks: the writer's own pace, so an answer is found soon after its batch commits


def is_rating(f: Feedback) -> bool:
    """Feedback that rates the answer: a thumbs or a 1-5 score (a correction or a comment alone does not)."""
    return f.thumbs_up is not None or f.score is not None


def is_positive(f: Feedback) -> bool:
    """A thumbs up, or a score of 4-5."""
    return f.thumbs_up is True or (f.score is not None and f.score >= 4)


T = TypeVar("T")


def first_per_item(rows: Iterable[T], feedback: Callable[[T], Feedback] = lambda row: row) -> list[T]:
    """`rows` in their order, the first of each answered item (request, item index) kept: an answer rated or
    corrected again counts once, in A/B verdicts and the live figures alike. `feedback`: a row's Feedback."""
    seen: set[tuple[str, int]] = set()
    kept = []
    for row in rows:
        f = feedback(row)
        if (f.request_id, f.item_index) not in seen:
            seen.add((f.request_id, f.item_index))
            kept.append(row)
    return kept


def _rating(value: Any) -> Literal["up", "down"] | int | None:
    """One message for every bad rating: as a union, 0 or 6 was told "Input should be 'up' or 'down'"."""
    if value is None or value in ("up", "down") or (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 5):
        return value
    raise ValueError(f"rating must be 'up', 'down' or a whole number from 1 to 5, got {value!r}")


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request_id: Annotated[str, Field(min_length=1, max_length=MAX_REQUEST_ID)]  # the id of the prediction or chat answer
    rating: Annotated[Any, BeforeValidator(_rating)] = None  # thumbs ("up"/"down"), or a 1-5 score
    index: Annotated[int, Field(ge=0)] = 0  # which text of a batch prediction this is about
    label: str | list[str] | None = None  # the right class (a list for multi-label)
    value: Annotated[float, Field(allow_inf_nan=False)] | None = None  # the right value (regression); not NaN
    answer: str | None = None  # the right answer (chat)
    comment: Annotated[str, Field(max_length=10_000)] | None = None
    user_id: Annotated[str, Field(max_length=256)] | None = None


class FeedbackCreated(BaseModel):
    id: str
    object: Literal["feedback"] = "feedback"
    request_id: str
    created_at: int


class FeedbackService:
    def __init__(self, store: Store, log: PredictionLog | None = None,
                 on_accept: Callable[[Prediction, Feedback], None] | None = None) -> None:
        self.store = store
        self.log = log
        self.on_accept = on_accept  # after the commit: live counters (the server's metrics)

    def submit(self, req: FeedbackRequest) -> FeedbackCreated | ApiError:
        if req.rating is None and req.label is None and req.value is None and req.answer is None:
            return ApiError(400, "feedback needs a rating ('up', 'down' or 1-5) or a correction (label, value or answer)",
                            param="rating")
        prediction = self._find(req.request_id)
        if prediction is None:
            return ApiError(404, f"no answered request with id '{req.request_id}' (send the id of a prediction or chat "
                                 "answer this server gave)", param="request_id", code="request_not_found")
        problem = _check_correction(req, prediction)
        if problem:
            return problem
        row = Feedback(id=_feedback_id(req), request_id=req.request_id, item_index=req.index, created=time.time(),
                       thumbs_up=None if not isinstance(req.rating, str) else req.rating == "up",
                       score=req.rating if isinstance(req.rating, int) else None,
                       corrected_label=None if req.label is None else ([req.label] if isinstance(req.label, str) else req.label),
                       corrected_value=req.value, corrected_answer=req.answer, comment=req.comment, user_id=req.user_id)
        values = {c.key: getattr(row, c.key) for c in Feedback.__table__.columns}
        with self.store.session() as s:  # committed when the block ends: before the caller answers 2xx
            # ON CONFLICT, not a look first: two retries racing each other also store one row.
            added = self._insert(s, values)
            newest = None if added else self._newest(s, req)
            if newest is not None and _said(newest) != _said(row):
                # the same words as an earlier item, but not the last one: a change of mind back (neg, pos, neg), not
                # a retry; it was taken for one, and the export kept "pos"
                row.id = values["id"] = _feedback_id(req, again=self._count(s, req))
                added = self._insert(s, values)
            first = row if added else newest if newest is not None else s.get(Feedback, row.id)
        if added and self.on_accept is not None:  # a retry is not counted again in the live figures
            self.on_accept(prediction, row)
        assert first is not None
        return FeedbackCreated(id=first.id, request_id=first.request_id, created_at=int(first.created))

    def _find(self, request_id: str) -> Prediction | None:
        """The answer `request_id` names: this server's own may still be on its way to the store (flushed first),
        another replica's (one store behind a load balancer) is looked for until FIND_WAIT_S has passed."""
        prediction = self._get(request_id)
        if prediction is None and self.log is not None and self.log.flush():
            prediction = self._get(request_id)
        deadline = time.monotonic() + FIND_WAIT_S
        while prediction is None and time.monotonic() < deadline:
            time.sleep(FIND_POLL_S)
            prediction = self._get(request_id)
        return prediction

    def _get(self, request_id: str) -> Prediction | None:
        with self.store.session() as s:
            return s.get(Prediction, request_id)

    def _insert(self, s: Any, values: dict[str, Any]) -> bool:
        return s.scalar(self.store.insert(Feedback).values(**values).on_conflict_do_nothing(index_elements=["id"])
                        .returning(Feedback.id)) is not None

    @staticmethod
    def _same_item(req: FeedbackRequest) -> Any:
        user = Feedback.user_id.is_(None) if req.user_id is None else Feedback.user_id == req.user_id
        return and_(Feedback.request_id == req.request_id, Feedback.item_index == req.index, user)

    def _newest(self, s: Any, req: FeedbackRequest) -> Feedback | None:
        """This user's latest feedback on this item."""
        return s.scalar(select(Feedback).where(self._same_item(req)).order_by(Feedback.created.desc()).limit(1))

    def _count(self, s: Any, req: FeedbackRequest) -> int:
        return int(s.scalar(select(func.count()).select_from(Feedback).where(self._same_item(req))) or 0)

    def label_separator(self, model: str) -> str:
        """`model`'s task.label_separator: its production version's run's (else its newest readable one's), so the
        export joins a multi-label correction as `data prepare` splits it for that model; "," (the default) for a model
        the registry does not know."""
        from tunesmith.artifacts import Run

        with self.store.session() as s:
            rows = s.execute(select(ModelVersion.run_path, ModelVersion.stage).where(ModelVersion.model == model)
                             .order_by(ModelVersion.version.desc())).all()
        for row in sorted(rows, key=lambda r: r.stage != "production"):  # production first, then the newest
            try:
                return Run(row.run_path).config.task.label_separator
            except TunesmithError:  # a run folder moved or deleted: the next version's
                continue
        return ","

    def export(self, model: str, out: Path, until: float | None = None, separator: str | None = None) -> int:
        """The corrections given for `model` as a file `tunesmith data prepare` reads: CSV text,label (or
        text,score) for classifiers and regressors, OpenAI chat JSONL for chat models. One row per answered item, its
        latest correction (an answer corrected again: the user changed their mind). `until`: only feedback given by
        then. `separator`: joins a multi-label correction's labels; default the model's (`label_separator`). Returns
        the rows written."""
        separator = separator if separator is not None else self.label_separator(model)
        with self.store.session() as s:
            # A fine-tuning job's model is registered under its suffix but answers (and is logged) as its ft: id: the
            # registry name exported none of what its users corrected.
            versions = s.execute(select(ModelVersion.task, ModelVersion.lineage).where(ModelVersion.model == model)).all()
            names = [model, *{v.lineage.get("fine_tuned_model") for v in versions if v.lineage} - {None}]
            stmt = (select(Feedback, Prediction).join(Prediction, Feedback.request_id == Prediction.request_id)
                    .where(Prediction.model.in_(names)).order_by(Feedback.created))
            rows = s.execute(stmt if until is None else stmt.where(Feedback.created <= until)).all()
            # A name neither the registry nor the prediction log knows (a typo) wrote an empty file and exited 0
            if not versions and not rows and s.scalar(select(Prediction.request_id).where(Prediction.model == model)
                                                      .limit(1)) is None:
                raise NotFound(f"no model '{model}': not in the registry, and no logged predictions (they are logged "
                               "when `tunesmith serve` serves it with a store and answers requests); check the model name")
        # a corrected label of [] is one too: a multi-label model's "none of the labels applies"
        latest = {(f.request_id, f.item_index): (f, p) for f, p in rows
                  if f.corrected_label is not None or f.corrected_value is not None or f.corrected_answer}
        # Each item once, in the order its latest correction came: the first of several rows sharing an id was kept
        # by `data prepare`, so the oldest correction won.
        corrections = sorted(latest.values(), key=lambda fp: fp[0].created)
        if corrections and not any(p.inputs for _, p in corrections):  # ratings alone: nothing to export, said below
            raise ConfigError(f"the corrections for '{model}' have no inputs to pair them with (the server ran with "
                              "--no-log-inputs, or the inputs passed their retention)")
        out.parent.mkdir(parents=True, exist_ok=True)
        written = 0
        # chat JSONL for a chat model's corrections, also when there are none yet (an empty chat export was a CSV header)
        chat = any(p.kind != "predict" for _, p in corrections) if corrections else \
            any(v.task == "chat" for v in versions) or (not versions and out.suffix == ".jsonl")
        if chat:
            with out.open("w", encoding="utf-8") as f:
                for fb, p in corrections:
                    if p.kind == "predict" or not p.inputs or fb.corrected_answer is None:
                        continue
                    if p.kind == "completion":  # its inputs are the batch's prompts: the corrected one, as the user's
                        if fb.item_index >= len(p.inputs) or not isinstance(p.inputs[fb.item_index], str):
                            continue
                        messages = [{"role": "user", "content": p.inputs[fb.item_index]},
                                    {"role": "assistant", "content": fb.corrected_answer}]
                    else:
                        messages = [*p.inputs, {"role": "assistant", "content": fb.corrected_answer}]
                    f.write(json.dumps({"messages": messages, "request_id": p.request_id}, ensure_ascii=False) + "\n")
                    written += 1
            return written
        # from the rows that can be written: one value on an answer logged without inputs made every label a "score"
        regression = any(fb.corrected_value is not None for fb, p in corrections if p.inputs)
        with out.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["id", "text", "score" if regression else "label"])
            for fb, p in corrections:
                index = fb.item_index
                if not p.inputs or index >= len(p.inputs):
                    continue
                if regression:
                    target: Any = fb.corrected_value
                elif fb.corrected_label == []:  # "[]": `data prepare` reads it as the empty label set ("" is missing)
                    target = "[]"
                else:  # `separator`: the model's task.label_separator (labels such as "paris, france" use another)
                    target = separator.join(fb.corrected_label or [])
                if target in (None, ""):
                    continue
                writer.writerow([f"{p.request_id}:{index}", p.inputs[index], target])
                written += 1
        return written


def _said(f: Feedback) -> tuple[Any, ...]:
    """What a feedback item says (a retry says the same)."""
    label = sorted(f.corrected_label) if f.corrected_label else f.corrected_label
    return (f.thumbs_up, f.score, label, f.corrected_value, f.corrected_answer, f.comment)


def _feedback_id(req: FeedbackRequest, again: int = 0) -> str:
    """The same id for the same item sent again (a client's retry), whatever its field order or label order;
    `again`: how many came before it, for the same words given again after others (a change of mind back)."""
    label = sorted(req.label) if isinstance(req.label, list) else req.label
    what = [req.request_id, req.index, req.user_id, req.rating, label, req.value, req.answer, req.comment]
    what += [again] if again else []
    return f"fb-{hashlib.sha256(json.dumps(what, ensure_ascii=False).encode()).hexdigest()[:24]}"


def _check_correction(req: FeedbackRequest, p: Prediction) -> ApiError | None:
    if p.kind == "predict" and req.answer is not None:
        return ApiError(400, "'answer' corrects a chat answer; this request was a prediction (send label or value)",
                        param="answer")
    if p.kind != "predict" and (req.label is not None or req.value is not None):
        return ApiError(400, "'label' and 'value' correct predictions; this request was a chat answer (send answer)",
                        param="label" if req.label is not None else "value")
    # The answer's shape, not its content: with --no-log-inputs (or past the retention) the outputs are gone, and an
    # unknown label or an index past the batch was stored with a 201. A row logged before shapes were: its outputs.
    shape = p.answer_shape or (answer_shape(p.outputs) if p.outputs else None)
    if isinstance(req.label, list) and not req.label and not (shape or {}).get("multi_label"):
        # [] says "none of the labels applies": an answer of a multi-label model alone (a single-label one's is no label)
        return ApiError(400, "'label' is an empty list: send the right label (an empty list is for a multi-label "
                        "model's text that none of its labels fits)", param="label")
    if not shape:
        return None
    if req.index >= shape["items"]:
        return ApiError(400, f"index {req.index} is past the {shape['items']} answer(s) of request '{p.request_id}'",
                        param="index")
    if p.kind != "predict":
        return None
    if isinstance(req.label, list) and len(req.label) > 1 and shape.get("multi_label") is False:
        return ApiError(400, f"this model gives one label per text; send one, not {req.label}", param="label")
    if req.label is not None and shape.get("labels") is not None:
        known = set(shape["labels"])
        unknown = sorted(set([req.label] if isinstance(req.label, str) else req.label) - known)
        if unknown:
            return ApiError(400, f"label {unknown} is not one of the model's labels {sorted(known)}", param="label")
    if req.value is not None and shape.get("values") is False:
        return ApiError(400, "'value' corrects a regression; this model predicts labels (send label)", param="value")
    if req.label is not None and shape.get("values"):
        return ApiError(400, "'label' corrects a classification; this model predicts values (send value)", param="label")
    return None
