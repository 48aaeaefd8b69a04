"""Jobs and workers over the store, on SQLite and on the machine's PostgreSQL: a job is claimed by one
worker only, a dead worker's job is taken over, and a whole job runs through the service and a worker."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

from tests.jobs.test_api import chat_file
from tunesmith.config import JobsSpec
from tunesmith.jobs import protocol as jp
from tunesmith.jobs.service import JobsService
from tunesmith.jobs.worker import Worker
from tunesmith.store.db import Store
from tunesmith.store.schema import Job


def _job(store: Store, job_id: str, **fields: object) -> None:
    with store.session() as s:
        s.add(Job(id=job_id, owner="", created_at=int(time.time()), created=time.time(), model="m", training_file="file-x", seed=1,
                  method={"type": "supervised", "supervised": {"hyperparameters": {}}}, result_files=[], **fields))


def test_one_job_is_claimed_by_exactly_one_of_many_workers(store_url: str) -> None:
    store = Store(store_url)
    _job(store, "ftjob-only", status="queued")
    spec = JobsSpec()
    workers = [Worker(Store(store_url, migrate=False), spec, name=f"w{i}") for i in range(6)]
    claims: list[str | None] = [None] * len(workers)
    start = threading.Barrier(len(workers))

    def claim(i: int) -> None:
        start.wait()
        claims[i] = workers[i].claim()

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(len(workers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert claims.count("ftjob-only") == 1 and claims.count(None) == len(workers) - 1
    with store.session() as s:
        job = s.get(Job, "ftjob-only")
        assert job.worker == f"w{claims.index('ftjob-only')}" and job.attempts == 1


def test_a_running_job_is_taken_over_only_once_its_heartbeat_is_stale(store_url: str) -> None:
    store = Store(store_url)
    spec = JobsSpec(stale_after_s=30)
    _job(store, "ftjob-alive", status="running", worker="old", heartbeat_at=time.time())
    _job(store, "ftjob-dead", status="running", worker="gone", heartbeat_at=time.time() - 120)
    _job(store, "ftjob-done", status="succeeded")
    assert Worker(store, spec, name="new").claim() == "ftjob-dead"
    assert Worker(store, spec, name="newer").claim() is None  # the live one stays with its worker


def test_a_job_runs_through_the_service_and_a_worker(store_url: str, tmp_path: Path, tiny_llama: Path) -> None:
    store = Store(store_url)
    spec = JobsSpec(base_models=[str(tiny_llama)], heartbeat_s=0.5)
    jobs = JobsService(store, spec)
    jobs.files_dir = tmp_path / "files"  # PostgreSQL's store home is TUNESMITH_HOME: keep the test's files apart
    jobs.jobs_dir = tmp_path / "jobs"
    upload = jobs.create_file("owner-a", "train.jsonl", "fine-tune", io.BytesIO(chat_file(tmp_path / "t.jsonl", 24).read_bytes()))
    assert isinstance(upload, jp.FileObject)
    job = jobs.create_job("owner-a", jp.JobCreate(model=str(tiny_llama), training_file=upload.id,
                                                  method={"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1}}}))
    assert isinstance(job, jp.FineTuningJob)
    worker = Worker(store, spec)
    worker.files_dir = jobs.files_dir
    worker.run(once=True)
    done = jobs.get_job("owner-a", job.id)
    assert done.status == "succeeded", done.error
    assert jobs.resolve_model("owner-a", done.fine_tuned_model) == Path(jobs.jobs_dir / job.id / "run")
    assert jobs.resolve_model("owner-b", done.fine_tuned_model) is None
    assert jobs.get_job("owner-b", job.id).status == 404


def test_a_dpo_job_trains_on_openai_preference_lines(tmp_path: Path, tiny_llama: Path) -> None:
    import json

    from tests.test_train_chat import QA

    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    spec = JobsSpec(base_models=[str(tiny_llama)], heartbeat_s=0.5)
    jobs = JobsService(store, spec)
    lines = [{"input": {"messages": [{"role": "user", "content": q}]},
              "preferred_output": [{"role": "assistant", "content": a}],
              "non_preferred_output": [{"role": "assistant", "content": QA[(i + 1) % len(QA)][1]}]}
             for i, (q, a) in enumerate(QA * 4)]
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    upload = jobs.create_file("", "prefs.jsonl", "fine-tune", io.BytesIO(data))
    job = jobs.create_job("", jp.JobCreate(model=str(tiny_llama), training_file=upload.id, method={
        "type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 1, "beta": 0.2}}}))
    Worker(store, spec).run(once=True)
    done = jobs.get_job("", job.id)
    assert done.status == "succeeded", done.error
    assert done.method.type == "dpo" and done.method.dpo.hyperparameters.beta == 0.2
    from tunesmith.artifacts import Run

    run = Run(jobs.jobs_dir / job.id / "run")
    assert run.manifest.task == "preference" and run.config.train.dpo_beta == 0.2


def test_a_succeeded_job_is_registered_with_its_lineage(tmp_path: Path, tiny_llama: Path) -> None:
    from tunesmith.registry.service import Registry

    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    spec = JobsSpec(base_models=[str(tiny_llama)], heartbeat_s=0.5)
    jobs = JobsService(store, spec)
    upload = jobs.create_file("", "train.jsonl", "fine-tune", io.BytesIO(chat_file(tmp_path / "t.jsonl", 20).read_bytes()))
    job = jobs.create_job("", jp.JobCreate(model=str(tiny_llama), training_file=upload.id, suffix="support",
                                           hyperparameters={"n_epochs": 1}))
    Worker(store, spec).run(once=True)
    done = jobs.get_job("", job.id)
    [version] = Registry(store).versions("support")
    assert version.stage == "candidate" and version.run == str((jobs.jobs_dir / job.id / "run").resolve())
    assert version.lineage["job"] == job.id and version.lineage["fine_tuned_model"] == done.fine_tuned_model
