"""The store's tables. Ids are OpenAI-style strings (`file-…`, `ftjob-…`) so the API shows them as
they are; times are Unix seconds, as OpenAI's objects carry them; `owner` is a hash of the API key
that created the row ("" on an open server), so each key sees only its own rows.

Later tables (model registry, prediction log, feedback, A/B tests, annotation tasks) follow the same conventions and
arrive as migrations (store/migrations/versions).
"""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy import JSON, BigInteger, Float, ForeignKey, Index, Integer, UniqueConstraint, text
from sqlalchemy import String as _String
from sqlalchemy import Text as _Text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator, TypeEngine

# PostgreSQL's text and JSONB cannot hold U+0000, and psycopg refuses the whole statement: a client's text with one
# failed its feedback with a 500 and took the prediction log's other rows down with it. Every string the store
# writes has U+0000 replaced by U+FFFD, on SQLite too, so that both stores keep the same rows.
NUL, REPLACEMENT = "\x00", "\ufffd"


def without_nul(value: Any) -> Any:
    """`value` (a string, or JSON: dicts, lists, strings, numbers) with U+0000 replaced in every string and key."""
    if isinstance(value, str):
        return value.replace(NUL, REPLACEMENT) if NUL in value else value
    if isinstance(value, dict):
        return {without_nul(k): without_nul(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [without_nul(v) for v in value]
    return value


def finite_or_null(value: Any) -> Any:
    """JSON `value` with NaN and +-Infinity as null, in dicts and lists too: PostgreSQL's JSON has no such numbers and
    refused the whole statement (a job's metrics event with a NaN training loss), where SQLite kept them; both stores
    now keep the same rows."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_null(v) for v in value]
    return value


class String(TypeDecorator[str]):
    """VARCHAR, written without U+0000."""

    impl = _String
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        return without_nul(value)


class Text(String):
    """TEXT, written without U+0000."""

    impl = _Text
    cache_ok = True


class _Json(TypeDecorator[Any]):
    """JSON (JSONB on PostgreSQL: indexable, compact), written without U+0000, NaN or infinities."""

    impl = JSON
    cache_ok = True
    comparator_factory = JSON.Comparator
    should_evaluate_none, hashable = JSON.should_evaluate_none, JSON.hashable  # None is JSON null, as JSON's own

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        return dialect.type_descriptor(JSONB() if dialect.name == "postgresql" else JSON())

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        return without_nul(finite_or_null(value))


Json = _Json()
# Unix seconds: 64-bit on PostgreSQL, whose INTEGER ends in January 2038 (SQLite's INTEGER is 64-bit already).
Stamp = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: Json, list[Any]: Json}


class StoredFile(Base):
    """An uploaded file (`POST /v1/files`); its bytes live under the store's files folder by id."""

    __tablename__ = "files"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    purpose: Mapped[str] = mapped_column(String(32))
    filename: Mapped[str] = mapped_column(String(512))  # as uploaded; never used as a path
    bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[int] = mapped_column(Stamp)
    created: Mapped[float] = mapped_column(Float, index=True)  # created_at to the microsecond: list order and cursors
    expires_at: Mapped[int | None] = mapped_column(Stamp)
    status: Mapped[str] = mapped_column(String(16), default="processed")
    sha256: Mapped[str] = mapped_column(String(64))


class Job(Base):
    """A fine-tuning job: OpenAI's fields, plus what workers need to share it safely."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[int] = mapped_column(Stamp)
    created: Mapped[float] = mapped_column(Float, index=True)  # created_at to the microsecond: list order and cursors
    model: Mapped[str] = mapped_column(String(256))
    training_file: Mapped[str] = mapped_column(String(64))
    validation_file: Mapped[str | None] = mapped_column(String(64))
    suffix: Mapped[str | None] = mapped_column(String(64))
    seed: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(24), index=True)
    method: Mapped[dict[str, Any]] = mapped_column()  # {type, <type>: {hyperparameters}} as resolved
    job_metadata: Mapped[dict[str, Any] | None] = mapped_column("metadata")  # `metadata` is SQLAlchemy's own attribute
    integrations: Mapped[list[Any] | None] = mapped_column()
    fine_tuned_model: Mapped[str | None] = mapped_column(String(256), index=True)
    trained_tokens: Mapped[int | None] = mapped_column(BigInteger)
    finished_at: Mapped[int | None] = mapped_column(Stamp)
    estimated_finish: Mapped[int | None] = mapped_column(Stamp)
    error: Mapped[dict[str, Any] | None] = mapped_column()  # {code, message, param}
    result_files: Mapped[list[Any]] = mapped_column(default=list)
    run_dir: Mapped[str | None] = mapped_column(Text)  # the run folder the job trains into
    # Work sharing: a worker owns a job while its heartbeat is fresh; `control` asks it to stop.
    worker: Mapped[str | None] = mapped_column(String(128))
    heartbeat_at: Mapped[float | None] = mapped_column(Float)
    control: Mapped[str | None] = mapped_column(String(16))  # "cancel" | "pause", read by the worker
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # claims since a worker last let it go: each past the first is a worker that died holding it

    events: Mapped[list[JobEvent]] = relationship(back_populates="job", cascade="all, delete-orphan",
                                                  order_by="JobEvent.seq")
    checkpoints: Mapped[list[JobCheckpoint]] = relationship(back_populates="job", cascade="all, delete-orphan",
                                                            order_by="JobCheckpoint.step_number")


class JobEvent(Base):
    __tablename__ = "job_events"
    __table_args__ = (Index("ix_job_events_job_seq", "job_id", "seq"),)

    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(64), unique=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    created_at: Mapped[int] = mapped_column(Stamp)
    level: Mapped[str] = mapped_column(String(8))  # info | warn | error
    type: Mapped[str] = mapped_column(String(8))  # message | metrics
    message: Mapped[str] = mapped_column(Text)
    data: Mapped[dict[str, Any] | None] = mapped_column()

    job: Mapped[Job] = relationship(back_populates="events")


class JobCheckpoint(Base):
    """A checkpoint the job kept; `path` is a servable run folder (its own run.json over the adapter)."""

    __tablename__ = "job_checkpoints"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[int] = mapped_column(Stamp)
    step_number: Mapped[int] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any]] = mapped_column()
    fine_tuned_model_checkpoint: Mapped[str] = mapped_column(String(256), index=True)
    path: Mapped[str] = mapped_column(Text)

    job: Mapped[Job] = relationship(back_populates="checkpoints")


class RegisteredModel(Base):
    """A named model (`reviews`) whose versions are run folders; one version at most is in production."""

    __tablename__ = "registered_models"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64), index=True, default="")
    created_at: Mapped[int] = mapped_column(Stamp)
    description: Mapped[str] = mapped_column(Text, default="")

    versions: Mapped[list[ModelVersion]] = relationship(back_populates="registered", cascade="all, delete-orphan",
                                                        order_by="ModelVersion.version")


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (
        UniqueConstraint("model", "version", name="uq_model_versions_model_version"),
        # The store itself keeps "one production version per model", whatever process promotes.
        Index("uq_model_versions_one_production", "model", unique=True,
              sqlite_where=text("stage = 'production'"), postgresql_where=text("stage = 'production'")),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    model: Mapped[str] = mapped_column(ForeignKey("registered_models.name", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    stage: Mapped[str] = mapped_column(String(16))  # candidate | production | archived
    run_path: Mapped[str] = mapped_column(Text)
    task: Mapped[str] = mapped_column(String(64))
    base_model: Mapped[str] = mapped_column(Text)
    metrics: Mapped[dict[str, Any]] = mapped_column()
    dataset_fingerprint: Mapped[str] = mapped_column(String(64))
    lineage: Mapped[dict[str, Any]] = mapped_column()  # where it came from: run, dataset, job, base model
    created_at: Mapped[int] = mapped_column(Stamp)
    stage_changed_at: Mapped[int] = mapped_column(Stamp)

    registered: Mapped[RegisteredModel] = relationship(back_populates="versions")


class RegistryEvent(Base):
    """Every registration and stage change, in order: the audit trail, and what rollback reads."""

    __tablename__ = "registry_events"

    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(String(128), index=True)
    version: Mapped[int] = mapped_column(Integer)
    action: Mapped[str] = mapped_column(String(16))  # register | promote | rollback | archive
    from_stage: Mapped[str | None] = mapped_column(String(16))
    to_stage: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[int] = mapped_column(Stamp)


class Prediction(Base):
    """One answered request (a prediction or a chat answer): what the model saw and said, so feedback can be
    joined to it. Inputs and outputs are left empty when the server runs with --no-log-inputs, and cleared
    after the retention period; the answer's shape stays, so feedback is still checked."""

    __tablename__ = "predictions"
    __table_args__ = (Index("ix_predictions_model_created", "model", "created"),)

    request_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    model: Mapped[str] = mapped_column(String(256))  # the name the client used (a registry model, an ft: id)
    model_version: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(16))  # predict | chat | completion
    created: Mapped[float] = mapped_column(Float)
    inputs: Mapped[list[Any] | None] = mapped_column()  # texts, or the conversation
    outputs: Mapped[list[Any] | None] = mapped_column()  # labels/probabilities/values, or the answer
    # {"items": n, "values": bool, "multi_label": bool, "labels": [the model's labels]} (monitor/log.py's answer_shape):
    # no content, so written with --no-log-inputs too, and kept past the retention
    answer_shape: Mapped[dict[str, Any] | None] = mapped_column()
    latency_ms: Mapped[float] = mapped_column(Float)
    user_id: Mapped[str | None] = mapped_column(String(256))
    variant: Mapped[str | None] = mapped_column(String(128))  # the A/B variant that answered


class Feedback(Base):
    """A user's verdict on an earlier answer: a thumbs up/down or a 1-5 score, optionally a correction."""

    __tablename__ = "feedback"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    request_id: Mapped[str] = mapped_column(String(128), index=True)
    item_index: Mapped[int] = mapped_column(Integer, default=0)  # which answer of a batch request
    created: Mapped[float] = mapped_column(Float, index=True)
    thumbs_up: Mapped[bool | None] = mapped_column()
    score: Mapped[int | None] = mapped_column(Integer)  # 1-5
    corrected_label: Mapped[list[Any] | None] = mapped_column()  # [label] or the multi-label set
    corrected_value: Mapped[float | None] = mapped_column(Float)
    corrected_answer: Mapped[str | None] = mapped_column(Text)
    comment: Mapped[str | None] = mapped_column(Text)
    user_id: Mapped[str | None] = mapped_column(String(256))


class ABTest(Base):
    """An A/B test between versions of one registry model: traffic split by weight (sticky per user),
    an optional shadow challenger, and the fixed horizon its verdict waits for."""

    __tablename__ = "ab_tests"
    __table_args__ = (
        # One running test per model at a time, whatever process starts it.
        Index("uq_ab_tests_one_running", "model", unique=True,
              sqlite_where=text("status = 'running'"), postgresql_where=text("status = 'running'")),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    model: Mapped[str] = mapped_column(String(128), index=True)
    status: Mapped[str] = mapped_column(String(16))  # running | stopped
    variants: Mapped[list[Any]] = mapped_column()  # [{"name": "v3", "version": 3, "weight": 0.5}, ...]
    shadow: Mapped[dict[str, Any] | None] = mapped_column()  # {"name": "v5", "version": 5}: answers logged, not returned
    alpha: Mapped[float] = mapped_column(Float)
    horizon: Mapped[int] = mapped_column(Integer)  # feedback items per variant before a verdict
    created: Mapped[float] = mapped_column(Float)
    stopped: Mapped[float | None] = mapped_column(Float)
    winner: Mapped[str | None] = mapped_column(String(128))


class AnnotationTask(Base):
    """A labelling task (`tunesmith annotate`): its label set and instructions; items and annotations join it."""

    __tablename__ = "annotation_tasks"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    labels: Mapped[list[Any]] = mapped_column()  # the label set, in the order the page numbers them 1..9
    instructions: Mapped[str] = mapped_column(Text, default="")
    overlap: Mapped[int] = mapped_column(Integer, default=1)  # annotators wanted per item (2+: agreement can be measured)
    created: Mapped[float] = mapped_column(Float)


class AnnotationItem(Base):
    """One text to label, with where it came from; loaded once per item id (or text hash when it has none)."""

    __tablename__ = "annotation_items"
    __table_args__ = (
        UniqueConstraint("task", "item_id", name="uq_annotation_items_task_item"),
        Index("ix_annotation_items_task_hash", "task", "text_hash"),
    )

    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True)
    task: Mapped[str] = mapped_column(ForeignKey("annotation_tasks.name", ondelete="CASCADE"))
    item_id: Mapped[str] = mapped_column(String(256))
    text: Mapped[str] = mapped_column(Text)
    text_hash: Mapped[str] = mapped_column(String(64))
    meta: Mapped[dict[str, Any]] = mapped_column()  # the record's other fields, its _provenance, and file:line
    created: Mapped[float] = mapped_column(Float)
    suggestion: Mapped[dict[str, Any] | None] = mapped_column()  # a model's {label, confidence, model, proba}
    uncertainty: Mapped[float | None] = mapped_column(Float)  # 1 - the model's top probability: humans see high ones first


class AnnotationLease(Base):
    """An item shown to an annotator who has not answered it yet: while fresh, it counts as a label to come, so no
    more annotators are shown the item than its overlap asks for."""

    __tablename__ = "annotation_leases"

    item_seq: Mapped[int] = mapped_column(ForeignKey("annotation_items.seq", ondelete="CASCADE"), primary_key=True)
    annotator: Mapped[str] = mapped_column(String(128), primary_key=True)
    shown_at: Mapped[float] = mapped_column(Float)


class Annotation(Base):
    """One annotator's answer on one item: a label, or a skip (label NULL). One per item and annotator;
    undo deletes the annotator's latest."""

    __tablename__ = "annotations"
    __table_args__ = (
        UniqueConstraint("item_seq", "annotator", name="uq_annotations_item_annotator"),
        Index("ix_annotations_task_annotator_created", "task", "annotator", "created"),
    )

    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True)
    task: Mapped[str] = mapped_column(ForeignKey("annotation_tasks.name", ondelete="CASCADE"))
    item_seq: Mapped[int] = mapped_column(ForeignKey("annotation_items.seq", ondelete="CASCADE"))
    annotator: Mapped[str] = mapped_column(String(128))  # "model:<name>" for accepted model suggestions
    label: Mapped[str | None] = mapped_column(String(256))  # None: skipped
    origin: Mapped[str] = mapped_column(String(64))  # web | terminal | model | label-studio | argilla | csv
    confidence: Mapped[float | None] = mapped_column(Float)  # model annotations: the accepted probability
    created: Mapped[float] = mapped_column(Float)
