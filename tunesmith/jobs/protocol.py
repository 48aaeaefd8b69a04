"""Wire protocol of tunesmith's OpenAI-compatible fine-tuning API: /v1/files and /v1/fine_tuning/jobs.

The official `openai` client must work unchanged against tunesmith, so every response model here mirrors the
client's own type field for field (openai/types/file_object.py, file_deleted.py, fine_tuning/fine_tuning_job.py,
fine_tuning_job_event.py, fine_tuning/jobs/fine_tuning_job_checkpoint.py) and dumps every field, nulls included.
tests/jobs/test_protocol.py checks that key for key against the installed client. This module does not import
`openai`: the client is only a test extra.

Requests are strict where a silently ignored value would change the training result: unknown fields are
rejected (OpenAI answers them with "Unrecognized request argument"), and every error's `loc` names the field so
the caller can turn it into OpenAI's error shape (`param`).
"""

from __future__ import annotations

import math
import secrets
import string
from collections.abc import Sequence
from typing import Annotated, Any, Generic, Literal, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, ValidationInfo, field_validator, model_validator

from tunesmith.config import MAX_JOB_BATCH_SIZE, MAX_LR_MULTIPLIER

# --------------------------------------------------------------------------------------------------- ids

FILE_PREFIX = "file-"
JOB_PREFIX = "ftjob-"
EVENT_PREFIX = "ftevent-"
# OpenAI's checkpoint ids use an underscore (ftckpt_qtZ5Gyk4BLq1SfLFWp3RtO3P), unlike its other ids.
CHECKPOINT_PREFIX = "ftckpt_"
ID_PREFIXES = frozenset({FILE_PREFIX, JOB_PREFIX, EVENT_PREFIX, CHECKPOINT_PREFIX})

_ID_ALPHABET = string.ascii_letters + string.digits  # url-safe without escaping, and no '-'/'_' to confuse the prefix
_ID_LENGTH = 24


def new_id(prefix: str) -> str:
    """An OpenAI-style object id: `prefix` + 24 random alphanumerics (~143 bits, from `secrets`)."""
    if prefix not in ID_PREFIXES:
        raise ValueError(f"unknown id prefix {prefix!r}; expected one of {sorted(ID_PREFIXES)}")
    return prefix + "".join(secrets.choice(_ID_ALPHABET) for _ in range(_ID_LENGTH))


# --------------------------------------------------------------------------------------------------- shared types

Auto = Literal["auto"]
MethodType = Literal["supervised", "dpo", "reinforcement"]
# OpenAI's six statuses plus tunesmith's "paused" (OpenAI documents pause/resume). The client parses responses
# without validating enums, so "paused" reaches callers as a plain string instead of breaking them.
JobStatus = Literal["validating_files", "queued", "running", "succeeded", "failed", "cancelled", "paused"]
FilePurpose = Literal[
    "assistants", "assistants_output", "batch", "batch_output", "fine-tune", "fine-tune-results", "vision", "user_data"
]
FileStatus = Literal["uploaded", "processed", "error"]
EventLevel = Literal["info", "warn", "error"]
EventType = Literal["message", "metrics"]


def _number_or_auto(
    kind: type[int] | type[float], *, minimum: float, exclusive: bool = False, maximum: float | None = None
) -> Any:
    """A hyperparameter: a number in range, or "auto". Strict: "3" or true for n_epochs is a client bug, not
    something to coerce into a training run. One validator (not a pydantic union) so an error's loc is just the
    field's path and its message says what is allowed."""
    what = "an integer" if kind is int else "a number"
    bound = f"{'>' if exclusive else '>='} {minimum:g}" + (f" and <= {maximum:g}" if maximum is not None else "")

    def check(value: Any) -> Any:
        if value == "auto":
            return "auto"
        if isinstance(value, bool) or not isinstance(value, int if kind is int else (int, float)) or not math.isfinite(value):
            raise ValueError(f'must be {what} or "auto"')
        below = value <= minimum if exclusive else value < minimum
        if below or (maximum is not None and value > maximum):
            raise ValueError(f'must be {what} {bound}, or "auto"')
        return kind(value)

    return Annotated[kind | Auto, PlainValidator(check, json_schema_input_type=kind | Auto)]


# OpenAI documents n_epochs as 1..50; batch size and multiplier are bounded as training takes them (a larger one was
# accepted here and failed the job later with a server_error).
NEpochs = _number_or_auto(int, minimum=1, maximum=50)
BatchSize = _number_or_auto(int, minimum=1, maximum=MAX_JOB_BATCH_SIZE)
LearningRateMultiplier = _number_or_auto(float, minimum=0, exclusive=True, maximum=MAX_LR_MULTIPLIER)
Beta = _number_or_auto(float, minimum=0, exclusive=True)
ComputeMultiplier = _number_or_auto(float, minimum=0, exclusive=True)
PositiveCount = _number_or_auto(int, minimum=1)

# OpenAI's metadata: at most 16 pairs, keys up to 64 characters, values up to 512.
Metadata = Annotated[
    dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=512)]],
    Field(max_length=16),
]


class _Model(BaseModel):
    # forbid: on a request an unknown field may change the result; on a response it is a field the client's
    # type does not declare. Either way it must fail loudly rather than be dropped or leak onto the wire.
    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------------------------------- method / hyperparameters
# The same models serve the request (POST /v1/fine_tuning/jobs) and the job object that echoes it back:
# OpenAI's request params and response types have identical shapes here.


class Hyperparameters(_Model):
    """Supervised hyperparameters; also the deprecated top-level `hyperparameters` and the job's echo of them.
    None means "not given" on a request; a job reports resolved values or "auto"."""

    batch_size: BatchSize | None = None
    learning_rate_multiplier: LearningRateMultiplier | None = None
    n_epochs: NEpochs | None = None


SupervisedHyperparameters = Hyperparameters


class DpoHyperparameters(Hyperparameters):
    beta: Beta | None = None


class ReinforcementHyperparameters(_Model):
    # Declared so the request parses and is stored; the service refuses reinforcement jobs.
    batch_size: BatchSize | None = None
    compute_multiplier: ComputeMultiplier | None = None
    eval_interval: PositiveCount | None = None
    eval_samples: PositiveCount | None = None
    learning_rate_multiplier: LearningRateMultiplier | None = None
    n_epochs: NEpochs | None = None
    reasoning_effort: Literal["default", "low", "medium", "high"] | None = None


class SupervisedMethod(_Model):
    hyperparameters: SupervisedHyperparameters | None = None


class DpoMethod(_Model):
    hyperparameters: DpoHyperparameters | None = None


class ReinforcementMethod(_Model):
    # OpenAI's grader is a union of five grader types; tunesmith runs none of them, so it is kept opaque.
    grader: dict[str, Any]
    hyperparameters: ReinforcementHyperparameters | None = None


# method type -> (its config under method.<type>, that config's hyperparameters)
_METHOD_MODELS: dict[str, tuple[type[_Model], type[_Model]]] = {
    "supervised": (SupervisedMethod, SupervisedHyperparameters),
    "dpo": (DpoMethod, DpoHyperparameters),
    "reinforcement": (ReinforcementMethod, ReinforcementHyperparameters),
}
_HYPERPARAMETER_NAMES = {kind: tuple(hp.model_fields) for kind, (_, hp) in _METHOD_MODELS.items()}


class Method(_Model):
    type: MethodType
    supervised: SupervisedMethod | None = None
    dpo: DpoMethod | None = None
    reinforcement: ReinforcementMethod | None = None

    @model_validator(mode="after")
    def _config_matches_type(self) -> Self:
        for other in ("supervised", "dpo", "reinforcement"):
            if other != self.type and getattr(self, other) is not None:
                raise ValueError(f"method.{other} was given but method.type is {self.type!r}")
        if self.type == "reinforcement" and self.reinforcement is None:
            raise ValueError("method.reinforcement (with a grader) is required when method.type is 'reinforcement'")
        return self

    def given_hyperparameters(self) -> dict[str, Any]:
        """The hyperparameters given under method.<type>, unset ones as None."""
        config = getattr(self, self.type)
        given = config.hyperparameters if config is not None else None
        return {name: getattr(given, name, None) for name in _HYPERPARAMETER_NAMES[self.type]}

    @classmethod
    def resolved(cls, method_type: MethodType, hyperparameters: dict[str, Any], grader: dict[str, Any] | None = None) -> Method:
        """The job object's `method` for resolved hyperparameters (e.g. JobCreate.effective_method's output)."""
        config_cls, hp_cls = _METHOD_MODELS[method_type]
        config: dict[str, Any] = {"hyperparameters": hp_cls(**hyperparameters)}
        if method_type == "reinforcement":
            config["grader"] = grader or {}
        return cls(type=method_type, **{method_type: config_cls(**config)})


# --------------------------------------------------------------------------------------------------- integrations


class WandbIntegration(_Model):
    project: str
    entity: str | None = None
    name: str | None = None
    tags: list[str] | None = None


class Integration(_Model):
    """Accepted and stored (and echoed on the job); tunesmith reports to no external service."""

    type: Literal["wandb"]
    wandb: WandbIntegration


# --------------------------------------------------------------------------------------------------- requests


class JobCreate(_Model):
    """Body of POST /v1/fine_tuning/jobs, as openai/types/fine_tuning/job_create_params.py declares it."""

    model: Annotated[str, Field(min_length=1)]
    training_file: Annotated[str, Field(min_length=1)]
    validation_file: str | None = None
    suffix: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    seed: Annotated[int, Field(strict=True, ge=0, le=2_147_483_647)] | None = None  # OpenAI's range (int32)
    metadata: Metadata | None = None
    integrations: list[Integration] | None = None
    # `method` is declared before `hyperparameters` so the latter's validator can compare against it.
    method: Method | None = None
    hyperparameters: Hyperparameters | None = None  # deprecated by OpenAI in favour of method, still accepted

    @field_validator("hyperparameters")
    @classmethod
    def _legacy_agrees_with_method(cls, legacy: Hyperparameters | None, info: ValidationInfo) -> Hyperparameters | None:
        # Raised here rather than in a model validator so the error's loc is ("hyperparameters",).
        _merge(info.data.get("method"), legacy)
        return legacy

    def effective_method(self) -> tuple[MethodType, dict[str, Any]]:
        """(method type, every hyperparameter of that method with "auto" for the unset ones).

        Combines `method` (default: supervised) with the legacy top-level `hyperparameters`; a value given in
        both places must be the same, else ValueError naming the field."""
        return _merge(self.method, self.hyperparameters)


def _merge(method: Method | None, legacy: Hyperparameters | None) -> tuple[MethodType, dict[str, Any]]:
    method_type: MethodType = method.type if method is not None else "supervised"
    merged = method.given_hyperparameters() if method is not None else dict.fromkeys(_HYPERPARAMETER_NAMES[method_type])
    for name, value in (legacy.model_dump(exclude_none=True) if legacy is not None else {}).items():
        current = merged.get(name)
        if current is not None and current != value:
            raise ValueError(
                f"hyperparameters.{name} ({value!r}) disagrees with method.{method_type}.hyperparameters.{name} "
                f"({current!r}); give it in one place (hyperparameters is deprecated in favour of method)"
            )
        merged[name] = value
    return method_type, {name: "auto" if value is None else value for name, value in merged.items()}


# --------------------------------------------------------------------------------------------------- responses


class FileObject(_Model):
    id: str
    bytes: int
    created_at: int
    filename: str
    object: Literal["file"] = "file"
    purpose: FilePurpose
    status: FileStatus = "processed"  # deprecated by OpenAI but still required by the client's type
    expires_at: int | None = None
    status_details: str | None = None


class FileDeleted(_Model):
    id: str
    deleted: bool
    object: Literal["file"] = "file"


class JobError(_Model):
    code: str
    message: str
    param: str | None = None  # the request field at fault (training_file, validation_file), else null


class FineTuningJob(_Model):
    id: str
    created_at: int
    error: JobError | None = None
    fine_tuned_model: str | None = None
    finished_at: int | None = None
    hyperparameters: Hyperparameters
    model: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    organization_id: str
    result_files: list[str] = Field(default_factory=list)
    seed: int
    status: JobStatus
    trained_tokens: int | None = None
    training_file: str
    validation_file: str | None = None
    estimated_finish: int | None = None
    integrations: list[Integration] | None = None
    metadata: Metadata | None = None
    method: Method | None = None


class FineTuningJobEvent(_Model):
    id: str
    created_at: int
    level: EventLevel
    message: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    data: dict[str, Any] | None = None  # e.g. {"step", "train_loss", ...} on "metrics" events
    type: EventType | None = "message"


class CheckpointMetrics(_Model):
    full_valid_loss: float | None = None
    full_valid_mean_token_accuracy: float | None = None
    step: float | None = None  # a float in OpenAI's type, like the other metrics
    train_loss: float | None = None
    train_mean_token_accuracy: float | None = None
    valid_loss: float | None = None
    valid_mean_token_accuracy: float | None = None


class FineTuningJobCheckpoint(_Model):
    id: str
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: CheckpointMetrics
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    step_number: int


# --------------------------------------------------------------------------------------------------- pages
# The client parses every list endpoint here (files.list, fine_tuning.jobs.list / list_events,
# jobs.checkpoints.list) as SyncCursorPage: it reads only `data` and `has_more`, and asks for the next page
# with after=<id of the last item in data>, stopping when has_more is false or data is empty. So the server must
# return items in a stable order, treat `after` as "strictly after this item in that order", and set has_more
# exactly (from_rows below: fetch limit + 1 rows).

T = TypeVar("T", bound=BaseModel)


class Page(_Model, Generic[T]):
    """{object: "list", data, has_more}: the list shape of fine_tuning.jobs.list and list_events."""

    object: Literal["list"] = "list"
    data: list[T]
    has_more: bool

    @classmethod
    def from_rows(cls, rows: Sequence[T], limit: int) -> Self:
        """A page from up to limit + 1 rows read after the cursor, in page order: the extra row only signals
        has_more, which the client needs exactly (a false `true` costs it one more, empty, request)."""
        if limit < 1:
            raise ValueError("limit must be at least 1")
        return cls(**cls._page_fields(list(rows[:limit])), has_more=len(rows) > limit)

    @classmethod
    def _page_fields(cls, data: list[T]) -> dict[str, Any]:
        return {"data": data}


class IdPage(Page[T], Generic[T]):
    """Page plus first_id/last_id: OpenAI's shape for files.list and jobs.checkpoints.list. The client ignores
    them (it reads data[-1].id), but other clients page with last_id."""

    first_id: str | None = None
    last_id: str | None = None

    @classmethod
    def _page_fields(cls, data: list[T]) -> dict[str, Any]:
        ids = [item.id for item in data]  # type: ignore[attr-defined]
        return {"data": data, "first_id": ids[0] if ids else None, "last_id": ids[-1] if ids else None}
