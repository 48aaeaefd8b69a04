"""tunesmith.jobs.protocol against the official `openai` client's own types: every response dumps exactly the
fields the client declares (recursively, none missing, none extra) and parses with the client's models; list
pages paginate through the real client; JobCreate takes what the client sends and rejects what OpenAI rejects."""

from __future__ import annotations

import importlib
import json
import string
import types
import typing
from collections.abc import Callable
from typing import Any

import pydantic
import pytest

openai = pytest.importorskip("openai")

from openai.types import FileDeleted as OpenAIFileDeleted  # noqa: E402
from openai.types import FileObject as OpenAIFileObject  # noqa: E402
from openai.types.fine_tuning import FineTuningJob as OpenAIFineTuningJob  # noqa: E402
from openai.types.fine_tuning import FineTuningJobEvent as OpenAIFineTuningJobEvent  # noqa: E402
from openai.types.fine_tuning.jobs import FineTuningJobCheckpoint as OpenAIFineTuningJobCheckpoint  # noqa: E402

from tunesmith.jobs.protocol import (  # noqa: E402
    CheckpointMetrics,
    DpoHyperparameters,
    DpoMethod,
    FileDeleted,
    FileObject,
    FineTuningJob,
    FineTuningJobCheckpoint,
    FineTuningJobEvent,
    Hyperparameters,
    IdPage,
    Integration,
    JobCreate,
    JobError,
    Method,
    Page,
    ReinforcementHyperparameters,
    ReinforcementMethod,
    SupervisedMethod,
    WandbIntegration,
    new_id,
)

# ------------------------------------------------------------------------------------------ key-set walker


def _models_in(annotation: Any) -> list[type[pydantic.BaseModel]]:
    """The pydantic models an annotation can hold: through Optional/Union/List/Annotated, not through Dict."""
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return [annotation]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, list, typing.Annotated):
        args = typing.get_args(annotation)[:1] if origin is typing.Annotated else typing.get_args(annotation)
        return [model for arg in args for model in _models_in(arg)]
    return []


def key_mismatches(openai_model: type[pydantic.BaseModel], dumped: dict[str, Any], path: str = "") -> list[str]:
    """Every key the dump has that openai_model does not declare (extra) or lacks (missing), recursively."""
    declared = {field.alias or name: field for name, field in openai_model.model_fields.items()}
    problems = [f"extra {path}{key}" for key in dumped.keys() - declared.keys()]
    problems += [f"missing {path}{key}" for key in declared.keys() - dumped.keys()]
    for key, field in declared.items():
        value = dumped.get(key)
        models = _models_in(field.annotation)
        if value is None or len(models) != 1:  # a union of several models (a grader) is opaque to tunesmith
            continue
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            where = f"{path}{key}[{i}]." if isinstance(value, list) else f"{path}{key}."
            problems += key_mismatches(models[0], item, where)
    return problems


def null_paths(value: Any, path: str = "") -> set[str]:
    if value is None:
        return {path.rstrip(".")}
    if isinstance(value, dict):
        return set().union(*(null_paths(v, f"{path}{k}.") for k, v in value.items())) if value else set()
    if isinstance(value, list):
        return set().union(*(null_paths(v, f"{path}{i}.") for i, v in enumerate(value))) if value else set()
    return set()


def test_walker_catches_extra_missing_and_nested() -> None:
    good = full_job("supervised").model_dump(mode="json")
    assert key_mismatches(OpenAIFineTuningJob, good) == []
    bad = json.loads(json.dumps(good))
    bad["surprise"] = 1
    del bad["seed"]
    bad["hyperparameters"]["warmup"] = 0
    del bad["method"]["supervised"]["hyperparameters"]["n_epochs"]
    del bad["integrations"][0]["wandb"]["tags"]
    assert sorted(key_mismatches(OpenAIFineTuningJob, bad)) == [
        "extra hyperparameters.warmup",
        "extra surprise",
        "missing integrations[0].wandb.tags",
        "missing method.supervised.hyperparameters.n_epochs",
        "missing seed",
    ]


# ------------------------------------------------------------------------------------------ instances

GRADER = {
    "type": "string_check",
    "name": "exact",
    "input": "{{sample.output_text}}",
    "reference": "{{item.answer}}",
    "operation": "eq",
}


def full_method(kind: str) -> Method:
    if kind == "supervised":
        return Method(
            type="supervised",
            supervised=SupervisedMethod(hyperparameters=Hyperparameters(batch_size=8, learning_rate_multiplier=1.8, n_epochs=3)),
        )
    if kind == "dpo":
        return Method(
            type="dpo",
            dpo=DpoMethod(hyperparameters=DpoHyperparameters(batch_size=4, learning_rate_multiplier=0.5, n_epochs=2, beta=0.1)),
        )
    hp = ReinforcementHyperparameters(
        batch_size=4,
        compute_multiplier=1.0,
        eval_interval=10,
        eval_samples=5,
        learning_rate_multiplier=1.0,
        n_epochs=1,
        reasoning_effort="low",
    )
    return Method(type="reinforcement", reinforcement=ReinforcementMethod(grader=GRADER, hyperparameters=hp))


def full_job(kind: str = "supervised") -> FineTuningJob:
    return FineTuningJob(
        id=new_id("ftjob-"),
        created_at=1_700_000_000,
        error=JobError(code="invalid_training_file", message="line 3 is not JSON", param="training_file"),
        fine_tuned_model="ft:tiny-llama:tunesmith:demo:abc123",
        finished_at=1_700_000_900,
        hyperparameters=Hyperparameters(batch_size=8, learning_rate_multiplier=1.8, n_epochs=3),
        model="tiny-llama",
        organization_id="org-tunesmith",
        result_files=[new_id("file-")],
        seed=42,
        status="failed",
        trained_tokens=12_345,
        training_file=new_id("file-"),
        validation_file=new_id("file-"),
        estimated_finish=1_700_000_800,
        integrations=[Integration(type="wandb", wandb=WandbIntegration(project="p", name="run", entity="team", tags=["a", "b"]))],
        metadata={"team": "search", "ticket": "T-1"},
        method=full_method(kind),
    )


def minimal_job() -> FineTuningJob:
    return FineTuningJob(
        id=new_id("ftjob-"),
        created_at=1,
        hyperparameters=Hyperparameters(),
        model="tiny-llama",
        organization_id="org-tunesmith",
        seed=0,
        status="queued",
        training_file="file-abc",
    )


FULL_FILE = FileObject(
    id=new_id("file-"),
    bytes=2048,
    created_at=1,
    filename="train.jsonl",
    purpose="fine-tune",
    status="error",
    expires_at=99,
    status_details="bad line 3",
)
MINIMAL_FILE = FileObject(id=new_id("file-"), bytes=0, created_at=1, filename="x.jsonl", purpose="fine-tune-results")
FULL_EVENT = FineTuningJobEvent(
    id=new_id("ftevent-"),
    created_at=1,
    level="info",
    message="Step 10/100: training loss=0.42",
    data={"step": 10, "train_loss": 0.42},
    type="metrics",
)
MINIMAL_EVENT = FineTuningJobEvent(id=new_id("ftevent-"), created_at=1, level="warn", message="m", type=None)
FULL_CHECKPOINT = FineTuningJobCheckpoint(
    id=new_id("ftckpt_"),
    created_at=1,
    fine_tuned_model_checkpoint="ft:tiny-llama:tunesmith:demo:abc123:ckpt-step-10",
    fine_tuning_job_id=new_id("ftjob-"),
    metrics=CheckpointMetrics(
        full_valid_loss=0.5,
        full_valid_mean_token_accuracy=0.8,
        step=10,
        train_loss=0.4,
        train_mean_token_accuracy=0.9,
        valid_loss=0.6,
        valid_mean_token_accuracy=0.7,
    ),
    step_number=10,
)
MINIMAL_CHECKPOINT = FineTuningJobCheckpoint(
    id=new_id("ftckpt_"),
    created_at=1,
    fine_tuned_model_checkpoint="c",
    fine_tuning_job_id="ftjob-x",
    metrics=CheckpointMetrics(),
    step_number=0,
)

# (ours, openai's type, the paths allowed to be null: none in a full instance but the other methods' configs)
CASES: dict[str, tuple[Callable[[], pydantic.BaseModel], type, set[str] | None]] = {
    "job-supervised": (lambda: full_job("supervised"), OpenAIFineTuningJob, {"method.dpo", "method.reinforcement"}),
    "job-dpo": (lambda: full_job("dpo"), OpenAIFineTuningJob, {"method.supervised", "method.reinforcement"}),
    "job-reinforcement": (lambda: full_job("reinforcement"), OpenAIFineTuningJob, {"method.supervised", "method.dpo"}),
    "job-minimal": (minimal_job, OpenAIFineTuningJob, None),
    "file-full": (lambda: FULL_FILE, OpenAIFileObject, set()),
    "file-minimal": (lambda: MINIMAL_FILE, OpenAIFileObject, None),
    "file-deleted": (lambda: FileDeleted(id="file-abc", deleted=True), OpenAIFileDeleted, set()),
    "event-full": (lambda: FULL_EVENT, OpenAIFineTuningJobEvent, set()),
    "event-minimal": (lambda: MINIMAL_EVENT, OpenAIFineTuningJobEvent, None),
    "checkpoint-full": (lambda: FULL_CHECKPOINT, OpenAIFineTuningJobCheckpoint, set()),
    "checkpoint-minimal": (lambda: MINIMAL_CHECKPOINT, OpenAIFineTuningJobCheckpoint, None),
}


@pytest.mark.parametrize("case", list(CASES))
def test_response_matches_openai_type(case: str) -> None:
    make, openai_type, allowed_nulls = CASES[case]
    dumped = make().model_dump(mode="json")
    parsed = openai_type.model_validate(dumped)  # (a) the client's own type, validating
    assert key_mismatches(openai_type, dumped) == []  # (b) nothing extra, (c) nothing missing, recursively
    assert parsed.model_dump(mode="json") == dumped  # and nothing reinterpreted on the way
    if allowed_nulls is not None:  # a full instance really exercises every field
        assert null_paths(dumped) == allowed_nulls


def test_response_values_survive_the_client() -> None:
    parsed = OpenAIFineTuningJob.model_validate(full_job("dpo").model_dump(mode="json"))
    assert parsed.method.dpo.hyperparameters.beta == 0.1
    assert parsed.integrations[0].wandb.tags == ["a", "b"]
    assert parsed.error.param == "training_file"
    assert OpenAIFineTuningJobCheckpoint.model_validate(FULL_CHECKPOINT.model_dump(mode="json")).metrics.step == 10.0


def test_status_enum_is_openais_plus_paused() -> None:
    ours = set(typing.get_args(FineTuningJob.model_fields["status"].annotation))
    theirs = set(typing.get_args(OpenAIFineTuningJob.model_fields["status"].annotation))
    assert ours == theirs | {"paused"}


def _literals(annotation: Any) -> set[Any]:
    if typing.get_origin(annotation) is typing.Literal:
        return set(typing.get_args(annotation))
    return {value for arg in typing.get_args(annotation) for value in _literals(arg)}


@pytest.mark.parametrize(("ours", "theirs"), [(FileObject, OpenAIFileObject), (FineTuningJobEvent, OpenAIFineTuningJobEvent)])
def test_other_enums_are_openais(ours: type, theirs: type) -> None:
    for name, field in theirs.model_fields.items():
        assert _literals(ours.model_fields[name].annotation) == _literals(field.annotation), name


def test_responses_reject_undeclared_fields() -> None:
    with pytest.raises(pydantic.ValidationError):
        FileObject(**MINIMAL_FILE.model_dump(), surprise=1)


# ------------------------------------------------------------------------------------------ through the real client


def _client(handler: Callable[[Any], Any]) -> Any:
    """The official client over an in-process transport: it speaks HTTP to `handler`, nothing leaves the process."""
    http = importlib.import_module(openai.DefaultHttpxClient.__mro__[1].__module__.split(".")[0])  # httpx or httpx2

    def respond(request: Any) -> Any:
        status, body = handler(request)
        return http.Response(status, json=body)

    return openai.OpenAI(
        api_key="sk-test",
        base_url="http://tunesmith.test/v1",
        max_retries=0,
        http_client=http.Client(transport=http.MockTransport(respond)),
    )


def _list_server(items: list[pydantic.BaseModel], page_cls: type[Page], requests: list[dict[str, str]]) -> Callable[[Any], Any]:
    """What the server must do: `after` = strictly after that id in list order, read limit + 1 rows."""

    def handle(request: Any) -> tuple[int, Any]:
        params = dict(request.url.params)
        requests.append(params)
        limit = int(params.get("limit", 20))
        ids = [item.id for item in items]
        start = ids.index(params["after"]) + 1 if "after" in params else 0
        return 200, page_cls.from_rows(items[start : start + limit + 1], limit).model_dump(mode="json")

    return handle


def _events(n: int) -> list[FineTuningJobEvent]:
    return [FineTuningJobEvent(id=new_id("ftevent-"), created_at=100 - i, level="info", message=f"event {i}") for i in range(n)]


def _checkpoints(n: int) -> list[FineTuningJobCheckpoint]:
    return [MINIMAL_CHECKPOINT.model_copy(update={"id": new_id("ftckpt_"), "step_number": 10 * (n - i)}) for i in range(n)]


def _files(n: int) -> list[FileObject]:
    return [MINIMAL_FILE.model_copy(update={"id": new_id("file-"), "filename": f"{i}.jsonl"}) for i in range(n)]


LISTINGS = {
    # endpoint: (items, our page type, the call, OpenAI's documented keys for that list)
    "jobs": (
        lambda n: [minimal_job() for _ in range(n)],
        Page[FineTuningJob],
        lambda c, limit: c.fine_tuning.jobs.list(limit=limit),
        {"object", "data", "has_more"},
    ),
    "events": (
        _events,
        Page[FineTuningJobEvent],
        lambda c, limit: c.fine_tuning.jobs.list_events("ftjob-x", limit=limit),
        {"object", "data", "has_more"},
    ),
    "checkpoints": (
        _checkpoints,
        IdPage[FineTuningJobCheckpoint],
        lambda c, limit: c.fine_tuning.jobs.checkpoints.list("ftjob-x", limit=limit),
        {"object", "data", "has_more", "first_id", "last_id"},
    ),
    "files": (
        _files,
        IdPage[FileObject],
        lambda c, limit: c.files.list(limit=limit),
        {"object", "data", "has_more", "first_id", "last_id"},
    ),
}


@pytest.mark.parametrize("endpoint", list(LISTINGS))
@pytest.mark.parametrize(("n", "limit", "pages"), [(5, 2, 3), (4, 2, 2), (0, 3, 1), (3, 10, 1)])
def test_client_auto_paginates(endpoint: str, n: int, limit: int, pages: int) -> None:
    make_items, page_cls, call, keys = LISTINGS[endpoint]
    items, requests = make_items(n), []
    client = _client(_list_server(items, page_cls, requests))
    got = [item.id for item in call(client, limit)]  # iterating a SyncCursorPage follows has_more / after
    assert got == [item.id for item in items]
    assert len(requests) == pages  # an exact has_more: no trailing empty request
    assert [r.get("after") for r in requests[1:]] == [got[i * limit - 1] for i in range(1, pages)]
    first = page_cls.from_rows(items[: limit + 1], limit).model_dump(mode="json")
    assert set(first) == keys
    if "first_id" in keys and items:
        assert (first["first_id"], first["last_id"]) == (items[0].id, items[min(limit, n) - 1].id)


def test_single_page_has_more() -> None:
    page = Page[FineTuningJobEvent].from_rows(_events(3), 2)
    assert (len(page.data), page.has_more) == (2, True)
    empty = IdPage[FileObject].from_rows([], 5).model_dump(mode="json")
    assert empty == {"object": "list", "data": [], "has_more": False, "first_id": None, "last_id": None}
    with pytest.raises(ValueError):
        Page[FileObject].from_rows([], 0)


def test_paused_status_reaches_the_client() -> None:
    paused = minimal_job().model_copy(update={"status": "paused"})
    client = _client(lambda request: (200, paused.model_dump(mode="json")))
    assert client.fine_tuning.jobs.retrieve(paused.id).status == "paused"  # the client does not validate enums


def test_jobcreate_parses_what_the_client_sends() -> None:
    bodies: list[dict[str, Any]] = []

    def handle(request: Any) -> tuple[int, Any]:
        bodies.append(json.loads(request.content))
        return 200, full_job("dpo").model_dump(mode="json")

    job = _client(handle).fine_tuning.jobs.create(
        model="tiny-llama",
        training_file="file-train",
        validation_file="file-valid",
        suffix="demo",
        seed=7,
        metadata={"team": "search"},
        integrations=[{"type": "wandb", "wandb": {"project": "p", "name": "n", "entity": "e", "tags": ["t"]}}],
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": 2}}},
        hyperparameters={"n_epochs": 2},
    )
    assert job.method.type == "dpo"
    request = JobCreate.model_validate(bodies[0])
    assert request.effective_method() == (
        "dpo",
        {"batch_size": "auto", "learning_rate_multiplier": "auto", "n_epochs": 2, "beta": 0.2},
    )
    assert request.integrations[0].wandb.tags == ["t"]

    _client(handle).fine_tuning.jobs.create(model="m", training_file="f")  # the minimal call
    assert set(bodies[1]) == {"model", "training_file"}
    assert JobCreate.model_validate(bodies[1]).effective_method() == (
        "supervised",
        dict.fromkeys(["batch_size", "learning_rate_multiplier", "n_epochs"], "auto"),
    )


# ------------------------------------------------------------------------------------------ JobCreate

BASE = {"model": "tiny-llama", "training_file": "file-abc"}


def _error(body: dict[str, Any]) -> dict[str, Any]:
    with pytest.raises(pydantic.ValidationError) as caught:
        JobCreate.model_validate(body)
    return caught.value.errors()[0]


def test_suffix_at_most_64() -> None:
    assert JobCreate.model_validate({**BASE, "suffix": "s" * 64}).suffix == "s" * 64
    assert _error({**BASE, "suffix": "s" * 65})["loc"] == ("suffix",)


def test_metadata_limits() -> None:
    assert len(JobCreate.model_validate({**BASE, "metadata": {f"k{i}": "v" for i in range(16)}}).metadata) == 16
    assert _error({**BASE, "metadata": {f"k{i}": "v" for i in range(17)}})["loc"] == ("metadata",)
    assert _error({**BASE, "metadata": {"k" * 65: "v"}})["loc"][0] == "metadata"
    assert _error({**BASE, "metadata": {"k": "v" * 513}})["loc"][0] == "metadata"
    assert JobCreate.model_validate({**BASE, "metadata": {"k" * 64: "v" * 512}}).metadata


def test_dpo_with_beta() -> None:
    body = {
        **BASE,
        "method": {
            "type": "dpo",
            "dpo": {"hyperparameters": {"beta": 0.1, "batch_size": 4, "learning_rate_multiplier": 2, "n_epochs": "auto"}},
        },
    }
    method_type, hp = JobCreate.model_validate(body).effective_method()
    assert method_type == "dpo"
    assert hp == {"batch_size": 4, "learning_rate_multiplier": 2.0, "n_epochs": "auto", "beta": 0.1}
    assert Method.resolved(method_type, hp).dpo.hyperparameters.beta == 0.1


def test_legacy_hyperparameters() -> None:
    request = JobCreate.model_validate({**BASE, "hyperparameters": {"n_epochs": 4, "batch_size": "auto"}})
    assert request.effective_method() == ("supervised", {"batch_size": "auto", "learning_rate_multiplier": "auto", "n_epochs": 4})


def test_legacy_and_method_agreeing_or_complementing() -> None:
    body = {
        **BASE,
        "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3}}},
        "hyperparameters": {"n_epochs": 3, "batch_size": 8},
    }
    assert JobCreate.model_validate(body).effective_method() == (
        "supervised",
        {"batch_size": 8, "learning_rate_multiplier": "auto", "n_epochs": 3},
    )


def test_legacy_and_method_disagreeing() -> None:
    body = {**BASE, "method": {"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 3}}}, "hyperparameters": {"n_epochs": 2}}
    error = _error(body)
    assert error["loc"] == ("hyperparameters",)
    assert "hyperparameters.n_epochs" in error["msg"] and "method.dpo.hyperparameters.n_epochs" in error["msg"]
    explicit_auto = {
        **BASE,
        "method": {"type": "supervised", "supervised": {"hyperparameters": {"batch_size": "auto"}}},
        "hyperparameters": {"batch_size": 4},
    }
    assert _error(explicit_auto)["loc"] == ("hyperparameters",)
    # effective_method raises too, for an instance that skipped validation
    built = JobCreate.model_construct(
        **BASE,
        method=Method(type="supervised", supervised=SupervisedMethod(hyperparameters=Hyperparameters(n_epochs=1))),
        hyperparameters=Hyperparameters(n_epochs=2),
    )
    with pytest.raises(ValueError, match="hyperparameters.n_epochs"):
        built.effective_method()


def test_auto_everywhere() -> None:
    auto = {"batch_size": "auto", "learning_rate_multiplier": "auto", "n_epochs": "auto"}
    body = {**BASE, "hyperparameters": auto, "method": {"type": "dpo", "dpo": {"hyperparameters": {**auto, "beta": "auto"}}}}
    assert JobCreate.model_validate(body).effective_method() == ("dpo", {**auto, "beta": "auto"})


def test_reinforcement_parses() -> None:  # the service refuses it, with its own error
    body = {
        **BASE,
        "method": {
            "type": "reinforcement",
            "reinforcement": {"grader": GRADER, "hyperparameters": {"reasoning_effort": "high", "eval_samples": 3}},
        },
    }
    method_type, hp = JobCreate.model_validate(body).effective_method()
    assert method_type == "reinforcement"
    assert hp["reasoning_effort"] == "high" and hp["eval_samples"] == 3 and hp["n_epochs"] == "auto"


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({**BASE, "prompt_loss_weight": 0.1}, ("prompt_loss_weight",)),  # unknown fields could change the result
        ({**BASE, "hyperparameters": {"warmup_ratio": 0.1}}, ("hyperparameters", "warmup_ratio")),
        (
            {**BASE, "method": {"type": "supervised", "supervised": {"hyperparameters": {"epochs": 3}}}},
            ("method", "supervised", "hyperparameters", "epochs"),
        ),
        ({**BASE, "hyperparameters": {"n_epochs": "3"}}, ("hyperparameters", "n_epochs")),  # no coercion of strings
        ({**BASE, "hyperparameters": {"n_epochs": True}}, ("hyperparameters", "n_epochs")),
        ({**BASE, "hyperparameters": {"n_epochs": 0}}, ("hyperparameters", "n_epochs")),
        ({**BASE, "hyperparameters": {"learning_rate_multiplier": -1}}, ("hyperparameters", "learning_rate_multiplier")),
        # accepted, then the job failed with a server_error: training takes at most these
        ({**BASE, "hyperparameters": {"batch_size": 512}}, ("hyperparameters", "batch_size")),
        ({**BASE, "hyperparameters": {"learning_rate_multiplier": 500}}, ("hyperparameters", "learning_rate_multiplier")),
        (
            {**BASE, "method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0}}}},
            ("method", "dpo", "hyperparameters", "beta"),
        ),
        ({**BASE, "method": {"type": "supervised", "dpo": {}}}, ("method",)),  # config for another type
        ({**BASE, "method": {"type": "reinforcement"}}, ("method",)),  # no grader
        ({**BASE, "method": {"type": "ppo"}}, ("method", "type")),
        ({**BASE, "suffix": ""}, ("suffix",)),
        ({**BASE, "seed": -1}, ("seed",)),
        ({**BASE, "seed": 2**31}, ("seed",)),
        ({**BASE, "integrations": [{"type": "mlflow", "wandb": {"project": "p"}}]}, ("integrations", 0, "type")),
        ({**BASE, "integrations": [{"type": "wandb", "wandb": {}}]}, ("integrations", 0, "wandb", "project")),
        ({"model": "m"}, ("training_file",)),
        ({**BASE, "model": ""}, ("model",)),
    ],
)
def test_jobcreate_rejects(body: dict[str, Any], loc: tuple[Any, ...]) -> None:
    assert _error(body)["loc"] == loc


def test_nulls_are_unset() -> None:
    body = {
        **BASE,
        **dict.fromkeys(["validation_file", "suffix", "seed", "metadata", "integrations", "method", "hyperparameters"]),
    }
    assert JobCreate.model_validate(body).effective_method()[0] == "supervised"


# ------------------------------------------------------------------------------------------ ids


@pytest.mark.parametrize("prefix", ["file-", "ftjob-", "ftevent-", "ftckpt_"])
def test_new_id(prefix: str) -> None:
    ids = {new_id(prefix) for _ in range(200)}
    assert len(ids) == 200
    for value in ids:
        assert value.startswith(prefix)
        body = value[len(prefix) :]
        assert len(body) == 24 and set(body) <= set(string.ascii_letters + string.digits)


def test_new_id_rejects_unknown_prefix() -> None:
    with pytest.raises(ValueError):
        new_id("ftjob")
