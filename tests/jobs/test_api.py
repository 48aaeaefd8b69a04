"""The fine-tuning API end to end: the official `openai` client against `tunesmith serve --db` in a
subprocess, with `tunesmith worker` processes training a tiny local Llama: upload, create, poll,
events, checkpoints, chat with the ft: model and a checkpoint, pagination, metadata filters, cancel,
pause/resume, a bad file, per-key isolation, and a worker killed mid-job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.servers import start_server
from tests.test_train_chat import QA, conversations

KEY, OTHER = "sk-team-a", "sk-team-b"
FAST = ["--heartbeat", "0.3", "--stale-after", "3", "--poll", "0.2"]  # seconds: quick takeover and cancel in tests


def chat_file(path: Path, n: int = 64) -> Path:
    """Single-turn conversations that fit the tiny Llama's 128-token context (OpenAI-style validation refuses more)."""
    rows = [c for i, c in enumerate(conversations(n * 2)) if i % 4 != 3][:n]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


class Cluster:
    def __init__(self, tmp: Path, base: Path) -> None:
        self.tmp, self.base = tmp, base
        self.db = f"sqlite:///{tmp / 'store.db'}"
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "TUNESMITH_HOME": str(tmp / "home")}
        self.workers: list[subprocess.Popen[bytes]] = []
        self.server, self.url = start_server(["--db", self.db, "--base-model", str(base), "--api-key", KEY, "--api-key", OTHER],
                                             tmp / "server.log", env={"TUNESMITH_HOME": str(tmp / "home")})

    def start_worker(self, name: str) -> subprocess.Popen[bytes]:
        log = (self.tmp / f"{name}.log").open("w")
        worker = subprocess.Popen([sys.executable, "-m", "tunesmith", "worker", "--db", self.db, "--name", name,
                                   "--base-model", str(self.base), *FAST], stdout=log, stderr=subprocess.STDOUT, env=self.env)
        self.workers.append(worker)
        return worker

    def stop(self) -> None:
        for proc in [*self.workers, self.server]:
            if proc.poll() is None:
                proc.terminate()
        for proc in [*self.workers, self.server]:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("jobs"), tiny_llama)
    c.start_worker("w1")
    yield c
    c.stop()


@pytest.fixture(scope="module")
def client(cluster: Cluster) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{cluster.url}/v1", api_key=KEY, max_retries=0)


@pytest.fixture(scope="module")
def training_file(client: openai.OpenAI, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = chat_file(tmp_path_factory.mktemp("data") / "train.jsonl")
    with path.open("rb") as f:
        return client.files.create(file=f, purpose="fine-tune").id


def wait_for(check: Callable[[], Any], timeout: float = 240, what: str = "") -> Any:
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def finished(client: openai.OpenAI, job_id: str) -> Any:
    return wait_for(lambda: (j := client.fine_tuning.jobs.retrieve(job_id)).status in ("succeeded", "failed", "cancelled") and j,
                    what=f"job {job_id} to finish")


@pytest.fixture(scope="module")
def succeeded(client: openai.OpenAI, training_file: str, cluster: Cluster) -> Any:
    job = client.fine_tuning.jobs.create(
        model=str(cluster.base), training_file=training_file, suffix="tiny", seed=7, metadata={"team": "a"},
        integrations=[{"type": "wandb", "wandb": {"project": "tunesmith-tests"}}],
        method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3, "batch_size": 8,
                                                                         "learning_rate_multiplier": 20}}})
    assert job.status == "validating_files" and job.object == "fine_tuning.job" and not job.model_extra
    done = finished(client, job.id)
    assert done.status == "succeeded", done.error
    return done


def test_upload_is_stored_under_a_server_id(client: openai.OpenAI, training_file: str, tmp_path: Path) -> None:
    f = client.files.retrieve(training_file)
    assert f.id.startswith("file-") and f.filename == "train.jsonl" and f.purpose == "fine-tune" and f.bytes > 0
    assert not f.model_extra and f.expires_at is None
    data = chat_file(tmp_path / "t.jsonl", 10).read_bytes()  # a hostile name never becomes a path
    temporary = client.files.create(file=("../../etc/passwd.jsonl", data), purpose="fine-tune",
                                    expires_after={"anchor": "created_at", "seconds": 3600})
    assert temporary.expires_at == temporary.created_at + 3600 and temporary.filename == "passwd.jsonl"
    assert client.files.delete(temporary.id).deleted
    big = client.files.create(file=("big.jsonl", data * (3_000_000 // len(data) + 1)), purpose="fine-tune")
    assert big.bytes > 3_000_000  # over the 1 MB request-body limit of the model endpoints
    client.files.delete(big.id)
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(temporary.id)
    assert client.files.content(training_file).text.splitlines()[0].startswith('{"messages"')
    assert training_file in [x.id for x in client.files.list(purpose="fine-tune")]


def test_an_upload_s_other_fields_are_refused_before_they_fill_memory(cluster: Cluster) -> None:
    """Starlette kept each non-file field, and a whole urlencoded body, in memory: four requests under the 512 MB upload
    limit held 1.8 GB of the server's RAM before failing as "'file' is required". And "³⁶⁰⁰" seconds was a 500."""
    auth = {"Authorization": f"Bearer {KEY}"}
    urlencoded = httpx.post(f"{cluster.url}/v1/files", headers=auth, data={"purpose": "fine-tune", "x": "a" * 2_000_000})
    assert urlencoded.status_code == 400 and "multipart/form-data" in urlencoded.json()["error"]["message"]
    line = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'
    big_field = httpx.post(f"{cluster.url}/v1/files", headers=auth, files={"file": ("t.jsonl", line)},
                           data={"purpose": "fine-tune", "padding": "a" * 200_000})
    assert big_field.status_code == 400 and big_field.json()["error"]["message"]
    odd = httpx.post(f"{cluster.url}/v1/files", headers=auth, files={"file": ("t.jsonl", line)},
                     data={"purpose": "fine-tune", "expires_after[anchor]": "created_at", "expires_after[seconds]": "³⁶⁰⁰"})
    assert odd.status_code == 400 and odd.json()["error"]["param"].startswith("expires_after")


def test_a_job_trains_reports_and_its_model_answers(client: openai.OpenAI, succeeded: Any) -> None:
    name = succeeded.fine_tuned_model
    assert name.startswith("ft:") and name.split(":")[2:4] == ["tunesmith", "tiny"]
    assert succeeded.trained_tokens > 0 and succeeded.finished_at and succeeded.result_files
    assert succeeded.hyperparameters.n_epochs == 3 and succeeded.method.type == "supervised"
    events = client.fine_tuning.jobs.list_events(succeeded.id, limit=100).data
    assert all(not e.model_extra for e in events)  # every field is one OpenAI's type declares
    assert any(e.level == "warn" and "wandb" in e.message for e in events)  # an unreachable integration is an event
    messages = [e.message for e in events]
    for expected in ("Validating training file", "Files validated, moving job to queued state", "Fine-tuning job started",
                     "Checkpoint created at step", "New fine-tuned model created", "The job has successfully completed"):
        assert any(m.startswith(expected) for m in messages), (expected, messages)
    metrics = [e for e in client.fine_tuning.jobs.list_events(succeeded.id, limit=100) if e.type == "metrics"]
    assert metrics and "step" in metrics[0].data
    checkpoints = client.fine_tuning.jobs.checkpoints.list(succeeded.id).data
    assert all(not c.model_extra and not c.metrics.model_extra for c in checkpoints)
    assert checkpoints and all(c.id.startswith("ftckpt_") and c.fine_tuned_model_checkpoint.startswith(f"{name}:ckpt-step-")
                               for c in checkpoints)
    assert checkpoints[0].metrics.full_valid_loss is None  # no validation file: no validation metrics, as OpenAI
    results = client.files.content(succeeded.result_files[0]).text
    assert results.startswith("step,train_loss")
    ids = [m.id for m in client.models.list().data]
    assert name in ids and checkpoints[-1].fine_tuned_model_checkpoint in ids
    q, a = QA[0]
    for model in (name, checkpoints[0].fine_tuned_model_checkpoint):
        answer = client.chat.completions.create(model=model, messages=[{"role": "system", "content": "you are friendly number 1"},
                                                                       {"role": "user", "content": q}],
                                                temperature=0, max_tokens=24)
        assert answer.model == model and answer.choices[0].message.content


def test_lists_paginate_and_filter_by_metadata(client: openai.OpenAI, succeeded: Any, training_file: str, cluster: Cluster) -> None:
    other = client.fine_tuning.jobs.create(model=str(cluster.base), training_file=training_file, metadata={"team": "b"})
    client.fine_tuning.jobs.cancel(other.id)
    page = client.fine_tuning.jobs.list(limit=1)
    assert len(page.data) == 1 and page.has_more
    everything = [j.id for j in client.fine_tuning.jobs.list(limit=1)]  # the client follows `after` by itself
    assert len(everything) == len(set(everything)) >= 2 and {succeeded.id, other.id} <= set(everything)
    team_a = [j.id for j in client.fine_tuning.jobs.list(extra_query={"metadata[team]": "a"})]
    assert succeeded.id in team_a and other.id not in team_a
    assert [j.id for j in client.fine_tuning.jobs.list(metadata={"team": "a"})] == team_a
    # OpenAI's `metadata=null` (a raw query parameter, as the client documents it) selects the jobs without metadata
    bare = client.fine_tuning.jobs.create(model=str(cluster.base), training_file=training_file)
    client.fine_tuning.jobs.cancel(bare.id)
    assert [j.id for j in client.fine_tuning.jobs.list(extra_query={"metadata": "null"})] == [bare.id]
    with pytest.raises(openai.BadRequestError) as e:  # "Do not combine the two query forms"
        client.fine_tuning.jobs.list(extra_query={"metadata": "null", "metadata[team]": "a"})
    assert e.value.body["param"] == "metadata"
    events = [e.id for e in client.fine_tuning.jobs.list_events(succeeded.id, limit=2)]
    assert len(events) == len(set(events)) > 5


def test_cancel_stops_a_running_job_within_seconds(client: openai.OpenAI, training_file: str, cluster: Cluster,
                                                   succeeded: Any) -> None:
    job = client.fine_tuning.jobs.create(model=str(cluster.base), training_file=training_file,
                                         hyperparameters={"n_epochs": 50, "batch_size": 1})
    wait_for(lambda: client.fine_tuning.jobs.retrieve(job.id).status == "running", what="running")
    wait_for(lambda: any(e.type == "metrics" for e in client.fine_tuning.jobs.list_events(job.id)), what="a step")
    assert client.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    started = time.time()
    # The worker lets go of the job (and picks up the next) within seconds.
    wait_for(lambda: _worker_of(cluster, job.id) is None, timeout=30, what="the worker to stop")
    assert time.time() - started < 15
    steps = len([e for e in client.fine_tuning.jobs.list_events(job.id, limit=100) if e.type == "metrics"])
    time.sleep(1.5)
    assert len([e for e in client.fine_tuning.jobs.list_events(job.id, limit=100) if e.type == "metrics"]) == steps
    assert client.fine_tuning.jobs.retrieve(job.id).fine_tuned_model is None


def _worker_of(cluster: Cluster, job_id: str) -> str | None:
    from tunesmith.store.db import Store
    from tunesmith.store.schema import Job

    store = Store(cluster.db, migrate=False)
    try:
        with store.session() as s:
            job = s.get(Job, job_id)
            return job.worker if job else None
    finally:
        store.close()


def test_pause_keeps_a_checkpoint_and_resume_finishes(client: openai.OpenAI, training_file: str, cluster: Cluster,
                                                      succeeded: Any) -> None:
    job = client.fine_tuning.jobs.create(model=str(cluster.base), training_file=training_file, suffix="paused",
                                         hyperparameters={"n_epochs": 6, "batch_size": 4})
    wait_for(lambda: any(e.type == "metrics" for e in client.fine_tuning.jobs.list_events(job.id)), what="a step")
    assert client.fine_tuning.jobs.pause(job.id).status == "paused"
    wait_for(lambda: _worker_of(cluster, job.id) is None, timeout=60, what="the worker to pause")
    assert client.fine_tuning.jobs.retrieve(job.id).status == "paused"
    assert client.fine_tuning.jobs.resume(job.id).status == "queued"
    done = finished(client, job.id)
    assert done.status == "succeeded", done.error
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=200)]
    assert any(m.startswith("Fine-tuning job resumed from step") for m in messages), messages


def test_a_bad_file_fails_the_job_as_openai_would(client: openai.OpenAI, tmp_path: Path, cluster: Cluster) -> None:
    path = chat_file(tmp_path / "bad.jsonl", 12)
    lines = path.read_text().splitlines()
    lines[4] = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "beep"}]})
    path.write_text("\n".join(lines) + "\n")
    with path.open("rb") as f:
        bad = client.files.create(file=f, purpose="fine-tune").id
    job = finished(client, client.fine_tuning.jobs.create(model=str(cluster.base), training_file=bad).id)
    assert job.status == "failed" and job.error.code == "invalid_training_file" and job.error.param == "training_file"
    assert "line 5" in job.error.message and "role" in job.error.message
    last = client.fine_tuning.jobs.list_events(job.id).data[0]
    assert last.level == "error" and "line 5" in last.message


def test_requests_openai_refuses_are_refused_the_same_way(client: openai.OpenAI, training_file: str, cluster: Cluster) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=training_file)
    assert e.value.body["param"] == "model" and e.value.body["code"] == "model_not_available"
    with pytest.raises(openai.BadRequestError) as e:
        client.fine_tuning.jobs.create(model=str(cluster.base), training_file=training_file,
                                       method={"type": "reinforcement", "reinforcement": {"grader": {"type": "string_check", "name": "g", "input": "x", "reference": "y", "operation": "eq"}}})
    assert "not supported" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client.fine_tuning.jobs.create(model=str(cluster.base), training_file=training_file, suffix="x" * 65)
    assert e.value.body["param"] == "suffix"
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.create(model=str(cluster.base), training_file="file-doesnotexist")


def test_a_key_sees_only_its_own_files_jobs_and_models(cluster: Cluster, succeeded: Any, training_file: str,
                                                       client: openai.OpenAI) -> None:
    client.chat.completions.create(model=succeeded.fine_tuned_model, messages=[{"role": "user", "content": "hi"}],
                                   max_tokens=2)  # loaded: /readyz (no key needed) listed it to anyone
    assert succeeded.fine_tuned_model not in httpx.get(f"{cluster.url}/readyz").json()["models"]
    other = openai.OpenAI(base_url=f"{cluster.url}/v1", api_key=OTHER, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        other.files.retrieve(training_file)
    with pytest.raises(openai.NotFoundError):
        other.fine_tuning.jobs.retrieve(succeeded.id)
    assert training_file not in [f.id for f in other.files.list()]
    assert succeeded.id not in [j.id for j in other.fine_tuning.jobs.list()]
    assert succeeded.fine_tuned_model not in [m.id for m in other.models.list().data]
    with pytest.raises(openai.NotFoundError):
        other.chat.completions.create(model=succeeded.fine_tuned_model, messages=[{"role": "user", "content": "hi"}])
    nobody = openai.OpenAI(base_url=f"{cluster.url}/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        nobody.files.list()


def test_a_killed_worker_s_job_is_taken_over_and_succeeds(cluster: Cluster, client: openai.OpenAI, training_file: str,
                                                          succeeded: Any) -> None:
    for worker in cluster.workers:  # only the doomed worker may take the job
        worker.send_signal(signal.SIGSTOP)
    doomed = cluster.start_worker("doomed")
    job = client.fine_tuning.jobs.create(model=str(cluster.base), training_file=training_file, suffix="survivor",
                                         hyperparameters={"n_epochs": 4, "batch_size": 4})
    wait_for(lambda: any(e.message.startswith("Checkpoint created") for e in client.fine_tuning.jobs.list_events(job.id, limit=100)),
             what="a checkpoint")
    doomed.send_signal(signal.SIGKILL)
    doomed.wait()
    assert client.fine_tuning.jobs.retrieve(job.id).status == "running"  # nobody has noticed yet
    for worker in cluster.workers:
        if worker.poll() is None:
            worker.send_signal(signal.SIGCONT)
    cluster.start_worker("rescuer")
    done = finished(client, job.id)
    assert done.status == "succeeded", done.error
    messages = [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=200)]
    assert any(m.startswith("Fine-tuning job resumed from step") for m in messages), messages


def test_deleting_a_fine_tuned_model(client: openai.OpenAI, cluster: Cluster, training_file: str) -> None:
    job = finished(client, client.fine_tuning.jobs.create(model=str(cluster.base), training_file=training_file,
                                                           suffix="gone", hyperparameters={"n_epochs": 1}).id)
    name = job.fine_tuned_model
    checkpoint = client.fine_tuning.jobs.checkpoints.list(job.id).data[0].fine_tuned_model_checkpoint
    # a model trained on from this one: OpenAI's is a model of its own, which deleting its parent leaves answering
    child = finished(client, client.fine_tuning.jobs.create(model=name, training_file=training_file, suffix="child",
                                                             hyperparameters={"n_epochs": 1}).id)
    assert child.status == "succeeded", child.error
    for model in (name, checkpoint):  # both loaded and answering
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert client.models.delete(name).deleted
    ids = [m.id for m in client.models.list().data]
    assert name not in ids and checkpoint not in ids  # its checkpoints go with it, loaded or not
    for model in (name, checkpoint):
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve(model)
    answer = client.chat.completions.create(model=child.fine_tuned_model, messages=[{"role": "user", "content": "hi"}],
                                            max_tokens=4)
    assert answer.model == child.fine_tuned_model


def test_the_cli_reads_the_same_store(cluster: Cluster, succeeded: Any) -> None:
    def cli(*args: str) -> str:
        return subprocess.run([sys.executable, "-m", "tunesmith", "jobs", *args, "--db", cluster.db, "--api-key", KEY],
                              capture_output=True, text=True, env=cluster.env, check=True).stdout

    assert succeeded.id in cli("list")
    assert json.loads(cli("show", succeeded.id))["fine_tuned_model"] == succeeded.fine_tuned_model
    assert "The job has successfully completed" in cli("events", succeeded.id)


def test_a_cancel_waiting_for_a_worker_s_lock_does_not_hold_up_the_server(tmp_path: Path, tiny_llama: Path) -> None:
    """Cancel, pause, resume and delete ran their store writes on the event loop: while a worker's transaction held
    the job (its success copying checkpoints), a cancel held every other request, /healthz included."""
    import sqlite3
    import threading

    import httpx

    from tests.servers import stop_server
    from tunesmith.store.db import Store
    from tunesmith.store.schema import Job

    db = tmp_path / "store.db"
    store = Store(f"sqlite:///{db}")
    with store.session() as s:
        s.add(Job(id="ftjob-x", owner="", created_at=int(time.time()), created=time.time(), model="m", training_file="f",
                  seed=1, status="running", worker="w", heartbeat_at=time.time(), result_files=[],
                  method={"type": "supervised", "supervised": {"hyperparameters": {}}}))
    store.close()
    proc, url = start_server(["--db", f"sqlite:///{db}", "--base-model", str(tiny_llama)], tmp_path / "server.log",
                             env={"TUNESMITH_HOME": str(tmp_path / "home")})
    try:
        holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
        holder.execute("BEGIN IMMEDIATE")  # the worker's transaction on the job
        released = threading.Event()
        ending = threading.Timer(20, lambda: released.is_set() or (released.set(), holder.execute("COMMIT")))
        ending.start()
        cancel = threading.Thread(target=lambda: httpx.post(f"{url}/v1/fine_tuning/jobs/ftjob-x/cancel", timeout=60))
        cancel.start()
        time.sleep(0.5)  # the cancel waits for the lock
        assert httpx.get(f"{url}/healthz", timeout=60).status_code == 200
        held_throughout = not released.is_set()  # answered while the lock was still held (20 s at most)
        if held_throughout:
            released.set()
            holder.execute("COMMIT")
        cancel.join()
        ending.cancel()
        assert held_throughout, "/healthz waited for the cancel, which waited for the worker's lock"
    finally:
        stop_server(proc)


def test_an_upload_over_the_limit_is_refused_before_it_is_read(tmp_path: Path) -> None:
    # The whole multipart body was read and spooled to disk (150 MB against a 1 MB limit) before the 413.
    import asyncio

    import httpx

    from tunesmith.config import JobsSpec, ServeSpec
    from tunesmith.jobs.service import JobsService
    from tunesmith.serve.app import create_app
    from tunesmith.serve.service import Service
    from tunesmith.store.db import Store

    spec = ServeSpec()
    jobs = JobsService(Store(f"sqlite:///{tmp_path / 'store.db'}"), JobsSpec(max_file_bytes=1000))
    app = create_app(Service([], spec, jobs=jobs), spec)
    sent = 0

    async def chunks():  # a chunked upload, 1 MB of it, with no Content-Length
        nonlocal sent
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="t.jsonl"\r\n\r\n'
        for _ in range(100):
            sent += 10_000
            yield b"x" * 10_000

    async def exchange() -> tuple[httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
            declared = await c.post("/v1/files", files={"file": ("t.jsonl", b"x" * 200_000)}, data={"purpose": "fine-tune"})
            chunked = await c.post("/v1/files", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=b"})
            return declared, chunked

    declared, chunked = asyncio.run(exchange())
    assert declared.status_code == chunked.status_code == 413
    assert declared.json()["error"]["code"] == chunked.json()["error"]["code"] == "request_too_large"
    assert sent < 1_000_000  # refused as it passed the limit
