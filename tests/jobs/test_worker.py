"""Jobs and workers over the store, on SQLite and on the machine's PostgreSQL: a job is claimed by one
worker only, a dead worker's job is taken over, and a whole job runs through the service and a worker."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.jobs.test_api import chat_file
from tunesmith.config import JobsSpec
from tunesmith.errors import ApiError, ConfigError
from tunesmith.jobs import protocol as jp
from tunesmith.jobs.service import JobsService
from tunesmith.jobs.worker import Worker
from tunesmith.store.db import Store
from tunesmith.store.schema import Job


def _job(store: Store, job_id: str, **fields: object) -> None:
    with store.session() as s:
        s.add(Job(**{"id": job_id, "owner": "", "created_at": int(time.time()), "created": time.time(), "model": "m",
                     "training_file": "file-x", "seed": 1, "method": {"type": "supervised", "supervised": {"hyperparameters": {}}},
                     "result_files": [], **fields}))


def _one_epoch_job(tmp_path: Path, tiny_llama: Path, suffix: str) -> tuple[Store, JobsService, Any, Any]:
    """A one-epoch chat job with `suffix`, run by a worker on an SQLite store: (store, service, job, job when done)."""
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    spec = JobsSpec(base_models=[str(tiny_llama)], heartbeat_s=0.5)
    jobs = JobsService(store, spec)
    upload = jobs.create_file("", "train.jsonl", "fine-tune", io.BytesIO(chat_file(tmp_path / "t.jsonl", 20).read_bytes()))
    job = jobs.create_job("", jp.JobCreate(model=str(tiny_llama), training_file=upload.id, suffix=suffix,
                                           hyperparameters={"n_epochs": 1}))
    Worker(store, spec).run(once=True)
    return store, jobs, job, jobs.get_job("", job.id)


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


def test_a_job_whose_workers_keep_dying_fails_instead_of_being_taken_over_again(store_url: str) -> None:
    # Each worker that dies holding a job (killed, out of memory) leaves a stale heartbeat and its claim counted: a job
    # that kills every worker it meets must end, not take down one worker after another forever.
    store = Store(store_url)
    spec = JobsSpec(stale_after_s=30, max_attempts=3)
    _job(store, "ftjob-deadly", status="running", worker="w2", heartbeat_at=time.time() - 120, attempts=3)
    _job(store, "ftjob-unlucky", status="running", worker="w1", heartbeat_at=time.time() - 120, attempts=2)
    assert Worker(store, spec, name="new").claim() == "ftjob-unlucky"  # a third try is still allowed
    assert Worker(store, spec, name="newer").claim() is None
    with store.session() as s:
        deadly, unlucky = s.get(Job, "ftjob-deadly"), s.get(Job, "ftjob-unlucky")
        assert deadly.status == "failed" and deadly.worker is None and deadly.finished_at is not None
        assert deadly.error["code"] == "server_error" and "3 workers died" in deadly.error["message"]
        assert "w2" in deadly.error["message"] and "max_attempts" in deadly.error["message"]
        assert [e.level for e in deadly.events] == ["error"]
        assert unlucky.status == "running" and unlucky.worker == "new" and unlucky.attempts == 3


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
    # Without a validation file OpenAI trains on the whole file (20% of it had been held out) and reports no valid_*.
    # (The prepared dataset went with the job's end: its steps say how many lines it trained on.)
    from tunesmith.artifacts import Run

    run = Run(jobs.jobs_dir / job.id / "run")
    metrics = [e.data for e in jobs.list_events("owner-a", job.id, limit=100).data if e.type == "metrics"]
    assert {m["total_steps"] for m in metrics} == {-(-24 // run.manifest.openai_hyperparameters["batch_size"])}
    reported = {k for m in metrics for k in m}
    assert "train_loss" in reported and not any("valid" in k for k in reported)
    assert not any("valid" in k for c in jobs.list_checkpoints("owner-a", job.id).data for k in c.metrics.model_dump(exclude_none=True))
    # the fine-tuned model is where training ended, as OpenAI's is: the checkpoint that scored best had been kept
    from safetensors.numpy import load_file

    last = max(run.path.glob("checkpoints/checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    (weights,) = [p.name for p in run.model_dir.glob("*.safetensors")]  # the adapter (jobs train LoRA)
    ours, final = load_file(run.model_dir / weights), load_file(last / weights)
    assert ours.keys() == final.keys() and all(np.array_equal(ours[k], final[k]) for k in final)
    # and its results file has no valid_* columns either (they were the training sample's)
    results = jobs.file_content("owner-a", done.result_files[0]).read_text()
    assert "valid" not in results.splitlines()[0] and "train_loss" in results.splitlines()[0]


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
    # "auto" is reported as the beta used once the job succeeded, as the other hyperparameters are
    auto = jobs.create_job("", jp.JobCreate(model=str(tiny_llama), training_file=upload.id, method={
        "type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 1}}}))
    Worker(store, spec).run(once=True)
    assert jobs.get_job("", auto.id).method.dpo.hyperparameters.beta == 0.1
    from tunesmith.artifacts import Run

    run = Run(jobs.jobs_dir / job.id / "run")
    assert run.manifest.task == "preference" and run.config.train.dpo_beta == 0.2


def test_a_succeeded_job_is_registered_with_its_lineage(tmp_path: Path, tiny_llama: Path) -> None:
    from tunesmith.registry.service import Registry

    store, jobs, job, done = _one_epoch_job(tmp_path, tiny_llama, "support")
    [version] = Registry(store).versions("support")
    assert version.stage == "candidate" and version.run == str((jobs.jobs_dir / job.id / "run").resolve())
    assert version.lineage["job"] == job.id and version.lineage["fine_tuned_model"] == done.fine_tuned_model


def test_a_job_left_running_by_an_interrupted_worker_is_taken_over(store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C mid-training (KeyboardInterrupt is no Exception, so the job does not fail): the worker lets go of
    the job, and another one must take it over rather than leave it `running` forever."""
    store = Store(store_url)
    _job(store, "ftjob-interrupted", status="queued")
    spec = JobsSpec(stale_after_s=30)

    def interrupted(self: Worker, job_id: str, beat: object, resumed: bool) -> None:
        with self.store.session() as s:
            s.get(Job, job_id).status = "running"
        raise KeyboardInterrupt

    monkeypatch.setattr(Worker, "_train", interrupted)
    first = Worker(store, spec, name="first")
    assert first.claim() == "ftjob-interrupted"
    with pytest.raises(KeyboardInterrupt):
        first.process("ftjob-interrupted")
    assert Worker(store, spec, name="second").claim() == "ftjob-interrupted"
    with store.session() as s:  # let go on purpose, not died holding it: the count of tries starts over
        assert s.get(Job, "ftjob-interrupted").attempts == 1


def test_a_job_taken_over_from_a_stalled_worker_waits_for_its_run_folder(store_url: str, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker stalled past stale_after (SIGSTOP, swapping) but alive still holds the run folder's lock: the worker
    that took the job over failed it for good ("another training is writing this run folder now")."""
    from tunesmith.errors import RunBusy
    from tunesmith.training import train
    from tunesmith.training.run import run_lock

    store = Store(store_url)
    run_dir = tmp_path / "ftjob-stalled" / "run"
    _job(store, "ftjob-stalled", status="running", worker="stalled", heartbeat_at=time.time() - 120, attempts=1,
         trained_tokens=10, run_dir=str(run_dir))
    spec = JobsSpec(stale_after_s=30)
    monkeypatch.setattr(Worker, "_train", lambda self, job_id, beat, resumed: train(None, resume=run_dir))  # type: ignore[arg-type]
    assert issubclass(RunBusy, ConfigError)  # `tunesmith train` and other callers see the error they always did
    with run_lock(run_dir):  # the stalled worker's
        worker = Worker(store, spec, name="new")
        assert worker.claim() == "ftjob-stalled"
        worker.process("ftjob-stalled")
        with store.session() as s:
            job = s.get(Job, "ftjob-stalled")
            assert job.status == "running" and job.error is None and job.worker is None
            assert job.attempts == 1  # given back: not a worker that died holding it
        assert Worker(store, spec, name="next").claim() is None  # not again at once: after stale_after_s
        with store.session() as s:
            s.get(Job, "ftjob-stalled").heartbeat_at = time.time() - 60
        assert Worker(store, spec, name="next").claim() == "ftjob-stalled"


@pytest.mark.parametrize("saved", [40, None])
def test_a_job_taken_over_after_a_kill_lists_each_step_once(store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            saved: int | None) -> None:
    """The killed worker had logged steps past its last checkpoint; trained again from there, they were listed twice
    ("Step 50/240" twice), and killed before any checkpoint, "Fine-tuning job started" twice as well."""
    from types import SimpleNamespace

    import tunesmith.training
    from tunesmith.artifacts import CHECKPOINT_DONE
    from tunesmith.jobs.service import add_event

    store = Store(store_url)
    run_dir = tmp_path / "run"
    if saved:
        (run_dir / "checkpoints" / f"checkpoint-{saved}").mkdir(parents=True)
        (run_dir / "checkpoints" / f"checkpoint-{saved}" / CHECKPOINT_DONE).touch()
    _job(store, "ftjob-k", status="running", worker="killed", heartbeat_at=time.time() - 120, attempts=1, trained_tokens=1,
         run_dir=str(run_dir))
    with store.session() as s:
        job = s.get(Job, "ftjob-k")
        add_event(s, job, "Fine-tuning job started")
        for step in (20, 40, 50):
            add_event(s, job, f"Step {step}/240", type="metrics", data={"step": step, "total_steps": 240})
    monkeypatch.setattr(Worker, "_config", lambda self, job_id: SimpleNamespace(train=SimpleNamespace(output_dir=run_dir)))
    monkeypatch.setattr(Worker, "_succeed", lambda self, job_id, run_dir: None)
    monkeypatch.setattr(tunesmith.training, "train", lambda cfg, **kw: None)
    worker = Worker(store, JobsSpec(stale_after_s=30), name="next")
    assert worker.claim() == "ftjob-k"
    worker.process("ftjob-k")
    events = JobsService(store, JobsSpec()).list_events("", "ftjob-k", limit=100).data[::-1]
    assert [e.data["step"] for e in events if e.type == "metrics"] == ([20, 40] if saved else [])
    assert [e.message for e in events if e.type == "message"] == ["Fine-tuning job started", "Fine-tuning job resumed from "
                                                                  "step 40" if saved else "Fine-tuning job restarted: no checkpoint was saved yet"]


def test_the_heartbeat_outlives_a_failed_beat(tmp_path: Path) -> None:
    """A store hiccup (a lock held past the busy timeout, a dropped connection) in one beat must not end the
    beats: training goes on, and a job whose heartbeat stopped is taken over and run twice."""
    from sqlalchemy.exc import OperationalError

    from tunesmith.jobs.worker import _Heartbeat

    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    _job(store, "ftjob-beating", status="running", worker="w", heartbeat_at=time.time())
    beat = _Heartbeat(Worker(store, JobsSpec(heartbeat_s=0.02), name="w"), "ftjob-beating")
    beats, real = [], beat.beat

    def flaky() -> None:
        beats.append(time.time())
        if len(beats) == 1:
            raise OperationalError("UPDATE jobs ...", {}, Exception("database is locked"))
        real()

    beat.beat = flaky  # type: ignore[method-assign]
    beat.start()
    deadline = time.time() + 10
    while len(beats) < 3 and time.time() < deadline:
        time.sleep(0.02)
    beat.stop()
    beat.join(5)
    assert len(beats) >= 3 and beat.stop_reason is None


def test_a_suffix_the_registry_refuses_leaves_the_job_succeeded(tmp_path: Path, tiny_llama: Path) -> None:
    """Registration comes after the job succeeded: a suffix OpenAI accepts but the registry does not ("my model")
    is a warning on the job, never a succeeded job turned failed (its model answered, then stopped)."""
    store, jobs, job, done = _one_epoch_job(tmp_path, tiny_llama, "my model")
    assert done.status == "succeeded" and done.error is None and done.fine_tuned_model.endswith(f":my model:{job.id[6:14]}")
    events = jobs.list_events("", job.id, limit=100).data
    assert not any(e.level == "error" for e in events)
    assert any(e.level == "warn" and "registry" in e.message for e in events)
    assert jobs.resolve_model("", done.fine_tuned_model) == jobs.jobs_dir / job.id / "run"


def test_a_job_paused_before_validation_is_still_validated(tmp_path: Path, tiny_llama: Path) -> None:
    """Pause and resume while the files wait for validation: the worker must still validate them (a bad line fails
    the job as OpenAI would), not train on what it never checked."""
    import json

    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    spec = JobsSpec(base_models=[str(tiny_llama)], heartbeat_s=0.5)
    jobs = JobsService(store, spec)
    lines = chat_file(tmp_path / "t.jsonl", 20).read_text().splitlines()
    lines[6] = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "robot", "content": "beep"}]})
    upload = jobs.create_file("", "train.jsonl", "fine-tune", io.BytesIO(("\n".join(lines) + "\n").encode()))
    job = jobs.create_job("", jp.JobCreate(model=str(tiny_llama), training_file=upload.id, hyperparameters={"n_epochs": 1}))
    assert jobs.pause_job("", job.id).status == "paused"
    assert jobs.resume_job("", job.id).status == "validating_files"
    Worker(store, spec).run(once=True)
    done = jobs.get_job("", job.id)
    assert done.status == "failed" and done.error.code == "invalid_training_file" and "line 7" in done.error.message


def test_a_training_file_deleted_before_validation_fails_the_job_on_that_file(tmp_path: Path, tiny_llama: Path) -> None:
    """OpenAI's error names the file and the param; not a server_error that shows the server's own paths."""
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    spec = JobsSpec(base_models=[str(tiny_llama)], heartbeat_s=0.5)
    jobs = JobsService(store, spec)
    upload = jobs.create_file("", "train.jsonl", "fine-tune", io.BytesIO(chat_file(tmp_path / "t.jsonl", 20).read_bytes()))
    job = jobs.create_job("", jp.JobCreate(model=str(tiny_llama), training_file=upload.id))
    jobs.delete_file("", upload.id)
    Worker(store, spec).run(once=True)
    done = jobs.get_job("", job.id)
    assert done.status == "failed" and done.error.code == "invalid_training_file" and done.error.param == "training_file"
    assert upload.id in done.error.message and str(tmp_path) not in done.error.message


def test_a_training_file_deleted_once_validated_leaves_the_job_training(tmp_path: Path, tiny_llama: Path) -> None:
    """OpenAI lets a file be deleted while a job that uses it waits in the queue (or trains): the job goes on. Once
    its files are validated a job must not need the uploads any more (a queued job failed with a server_error)."""
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    spec = JobsSpec(base_models=[str(tiny_llama)], heartbeat_s=0.5)
    jobs = JobsService(store, spec)
    data = chat_file(tmp_path / "t.jsonl", 20).read_bytes()
    upload = jobs.create_file("", "train.jsonl", "fine-tune", io.BytesIO(data))
    valid = jobs.create_file("", "valid.jsonl", "fine-tune", io.BytesIO(data))
    job = jobs.create_job("", jp.JobCreate(model=str(tiny_llama), training_file=upload.id, validation_file=valid.id,
                                           hyperparameters={"n_epochs": 1}))
    worker = Worker(store, spec)
    assert worker._validate(job.id) and jobs.get_job("", job.id).status == "queued"
    assert jobs.delete_file("", upload.id).deleted and jobs.delete_file("", valid.id).deleted
    worker.run(once=True)
    done = jobs.get_job("", job.id)
    assert done.status == "succeeded", done.error
    assert isinstance(jobs.get_file("", upload.id), ApiError)  # deleted is deleted: the job's copy is not a file
    assert any("valid_loss" in e.data for e in jobs.list_events("", job.id, limit=100).data if e.type == "metrics")


def test_a_cancel_and_a_failure_at_the_same_moment_leave_one_consistent_ending(store_url: str,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The user cancels while the worker fails the job. Each reads `running` and writes its own ending: without a
    lock taken before the read, the later commit overwrote the earlier (a job `cancelled` with a training error, the
    cancel's event after the failure's). One of them must see the other's ending and leave it alone."""
    import tunesmith.jobs.service as service_module

    store = Store(store_url)
    _job(store, "ftjob-race", status="running", worker="w", heartbeat_at=time.time())
    spec = JobsSpec()
    jobs, worker = JobsService(store, spec), Worker(Store(store_url, migrate=False), spec, name="w")
    failing = threading.Thread(target=worker._fail, args=("ftjob-race", "server_error", "Fine-tuning failed: boom", None))
    add_event = service_module.add_event

    def cancel_event(s: Any, job: Job, message: str, **kw: Any) -> None:
        # The cancel has read the job and changed it, not yet committed: the worker fails the job meanwhile.
        failing.start()
        failing.join(timeout=2)  # with the lock it waits for the cancel's commit; without, it is done at once
        add_event(s, job, message, **kw)

    monkeypatch.setattr(service_module, "add_event", cancel_event)
    cancelled = jobs.cancel_job("", "ftjob-race")
    failing.join()
    assert cancelled.status == "cancelled"
    with store.session() as s:
        job = s.get(Job, "ftjob-race")
        assert job.status == "cancelled" and job.error is None
        assert [e.message for e in job.events] == ["Fine-tuning job cancelled"]


def test_a_pause_taken_back_before_the_worker_saw_it_leaves_the_job_running(store_url: str) -> None:
    """Pause, then resume within one heartbeat: the worker never read the pause and trains on. The job went back to
    `queued` while it trained, and the worker's success then found it not `running` and left it queued forever."""
    from tunesmith.jobs.worker import _Heartbeat

    store = Store(store_url)
    _job(store, "ftjob-changed-mind", status="running", worker="w", heartbeat_at=time.time(), trained_tokens=100)
    jobs = JobsService(store, JobsSpec())
    assert jobs.pause_job("", "ftjob-changed-mind").status == "paused"
    resumed = jobs.resume_job("", "ftjob-changed-mind")
    assert resumed.status == "running"
    beat = _Heartbeat(Worker(store, JobsSpec(), name="w"), "ftjob-changed-mind")
    beat.beat()
    assert beat.stop_reason is None  # training goes on, and the job says so
    with store.session() as s:
        job = s.get(Job, "ftjob-changed-mind")
        assert job.status == "running" and job.control is None and job.worker == "w"
        assert [e.message for e in job.events] == ["Fine-tuning job paused", "Fine-tuning job resumed"]


def test_a_stopped_worker_lets_go_of_its_job_with_a_checkpoint_and_the_next_goes_on(tmp_path: Path, tiny_llama: Path,
                                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGTERM (a restart, a deploy) only stopped the worker between jobs: training went on until the SIGKILL, which
    counted as a worker dying, and a long job failed at its third restart. Now the job is let go at its next step
    with a checkpoint, still `running` and its attempts reset, and the next worker goes on from there."""
    import tunesmith.jobs.worker as worker_module

    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    spec = JobsSpec(base_models=[str(tiny_llama)], heartbeat_s=0.5)
    jobs = JobsService(store, spec)
    upload = jobs.create_file("", "train.jsonl", "fine-tune", io.BytesIO(chat_file(tmp_path / "t.jsonl", 20).read_bytes()))
    job = jobs.create_job("", jp.JobCreate(model=str(tiny_llama), training_file=upload.id, hyperparameters={"n_epochs": 3}))
    first = Worker(store, spec, name="w1")
    add_event = worker_module.add_event

    def sigterm_at_the_first_metrics(s: Any, job: Job, message: str, **kw: Any) -> None:
        add_event(s, job, message, **kw)
        if message.startswith("Step "):
            first.stopping.set()  # what `tunesmith worker`'s SIGTERM handler sets

    monkeypatch.setattr(worker_module, "add_event", sigterm_at_the_first_metrics)
    first.run(first.stopping)  # returns once the job is let go (stop is set)
    monkeypatch.setattr(worker_module, "add_event", add_event)
    with store.session() as s:
        row = s.get(Job, job.id)
        assert (row.status, row.worker, row.attempts) == ("running", None, 0)
        step = row.checkpoints[-1].step_number
    assert 0 < step < 30  # stopped early, with the checkpoint it goes on from
    Worker(store, spec, name="w2").run(once=True)
    done = jobs.get_job("", job.id)
    assert done.status == "succeeded", done.error
    assert f"Fine-tuning job resumed from step {step}" in [e.message for e in jobs.list_events("", job.id, limit=100).data]


def test_a_job_out_of_attempts_is_never_claimed_even_past_the_first_five(store_url: str) -> None:
    # _fail_crashing fails five at a time: claim() took the sixth and ran it a fourth time.
    store = Store(store_url)
    spec = JobsSpec(stale_after_s=30, max_attempts=3)
    for i in range(7):
        _job(store, f"ftjob-deadly{i}", status="running", worker="gone", heartbeat_at=time.time() - 120, attempts=3)
    assert Worker(store, spec, name="new").claim() is None
    assert Worker(store, spec, name="newer").claim() is None
    with store.session() as s:
        assert {j.status for j in s.query(Job).all()} == {"failed"}


def test_a_paused_job_has_no_estimated_finish(store_url: str) -> None:
    store = Store(store_url)
    _job(store, "ftjob-p", status="running", worker="w", heartbeat_at=time.time(), trained_tokens=10,
         estimated_finish=int(time.time()) + 600)
    assert JobsService(store, JobsSpec()).pause_job("", "ftjob-p").estimated_finish is None  # OpenAI: null unless running


def test_steps_logged_before_the_worker_sees_a_pause_keep_their_events(store_url: str) -> None:
    """A pause is stored at once, and the worker trains on until its next heartbeat: those steps' logs were dropped,
    though the results CSV and the checkpoints have them."""
    from types import SimpleNamespace

    from tunesmith.jobs.worker import _Heartbeat, _reporter

    store = Store(store_url)
    _job(store, "ftjob-q", status="running", worker="w", heartbeat_at=time.time())
    jobs = JobsService(store, JobsSpec())
    assert jobs.pause_job("", "ftjob-q").status == "paused"
    worker = Worker(store, JobsSpec(), name="w")
    reporter = _reporter(worker, "ftjob-q", _Heartbeat(worker, "ftjob-q"))
    reporter.on_log(None, SimpleNamespace(global_step=50, max_steps=100), None, logs={"loss": 1.5})
    events = [e for e in jobs.list_events("", "ftjob-q").data if e.type == "metrics"]
    assert [e.data["step"] for e in events] == [50]
    assert jobs.get_job("", "ftjob-q").estimated_finish is None


def test_trained_tokens_stay_null_until_the_job_succeeds(store_url: str) -> None:
    # The stored count (one epoch's, from validation) showed while the job ran and after a cancel at step 10 of 255.
    store = Store(store_url)
    _job(store, "ftjob-r", status="running", worker="w", heartbeat_at=time.time(), trained_tokens=5045)
    jobs = JobsService(store, JobsSpec())
    assert jobs.get_job("", "ftjob-r").trained_tokens is None
    assert jobs.cancel_job("", "ftjob-r").trained_tokens is None
    _job(store, "ftjob-s", status="succeeded", trained_tokens=15135)
    assert jobs.get_job("", "ftjob-s").trained_tokens == 15135


def test_metrics_and_checkpoints_after_a_cancel_leave_the_cancelled_job_alone(store_url: str) -> None:
    """The worker learns of a cancel at its next heartbeat: a metrics log in between set estimated_finish again and
    added events after "Fine-tuning job cancelled", and a checkpoint saved then was listed."""
    from types import SimpleNamespace

    from tunesmith.jobs.worker import JobStopped, _Heartbeat, _reporter

    store = Store(store_url)
    _job(store, "ftjob-c", status="running", worker="w", heartbeat_at=time.time(), trained_tokens=10)
    jobs = JobsService(store, JobsSpec())
    assert jobs.cancel_job("", "ftjob-c").status == "cancelled"
    worker = Worker(store, JobsSpec(), name="w")
    reporter = _reporter(worker, "ftjob-c", _Heartbeat(worker, "ftjob-c"))  # not beaten since the cancel
    reporter.on_log(None, SimpleNamespace(global_step=5, max_steps=100), None, logs={"loss": 1.23})
    with pytest.raises(JobStopped):
        reporter.on_save(SimpleNamespace(output_dir=str(Path("jobs/ftjob-c/run/checkpoints"))), SimpleNamespace(global_step=5), None)
    job = jobs.get_job("", "ftjob-c")
    assert job.status == "cancelled" and job.estimated_finish is None
    assert [e.message for e in jobs.list_events("", "ftjob-c").data] == ["Fine-tuning job cancelled"]
    assert jobs.list_checkpoints("", "ftjob-c").data == []


def test_a_job_s_file_copies_go_when_it_ends(tmp_path: Path, tiny_llama: Path) -> None:
    """The job's hard links kept a deleted upload's bytes on disk forever (a user deleting data expects it gone)."""
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    spec = JobsSpec(base_models=[str(tiny_llama)], heartbeat_s=0.5)
    jobs = JobsService(store, spec)
    data = chat_file(tmp_path / "t.jsonl", 20).read_bytes()
    trained, cancelled = (jobs.create_file("", f"{n}.jsonl", "fine-tune", io.BytesIO(data)) for n in ("a", "b"))
    job = jobs.create_job("", jp.JobCreate(model=str(tiny_llama), training_file=trained.id, hyperparameters={"n_epochs": 1}))
    Worker(store, spec).run(once=True)
    assert jobs.get_job("", job.id).status == "succeeded"
    waiting = jobs.create_job("", jp.JobCreate(model=str(tiny_llama), training_file=cancelled.id))
    assert Worker(store, spec)._validate(waiting.id)  # validated, then let go before training (a stopped worker)
    assert jobs.cancel_job("", waiting.id).status == "cancelled"
    for upload in (trained, cancelled):
        assert jobs.delete_file("", upload.id).deleted
    assert [p for p in jobs.jobs_dir.rglob("*") if p.is_file() and p.read_bytes() == data] == []
    # The dataset prepared from the copies (the conversations as parquet) had stayed for good, ended jobs or not.
    assert not (jobs.jobs_dir / job.id / "dataset").exists()
    assert list(jobs.jobs_dir.rglob("*.parquet")) == []
    # Deleting the model left the Trainer's checkpoints, and in them its weights.
    assert jobs.delete_model("", jobs.get_job("", job.id).fine_tuned_model)["deleted"]
    assert list(jobs.jobs_dir.rglob("*.safetensors")) == []


def test_a_dead_worker_s_cancelled_job_lets_its_file_copies_go(store_url: str, tmp_path: Path) -> None:
    # Only a job no worker held had its copies removed at cancel; a killed worker's name stays on the row, and no later
    # worker touches a cancelled job: a deleted upload's bytes stayed for good.
    from tunesmith.jobs.service import kept_files

    store = Store(store_url)
    spec = JobsSpec(stale_after_s=60)
    jobs = JobsService(store, spec)
    for job_id, beat in (("ftjob-dead", time.time() - 600), ("ftjob-alive", time.time())):
        _job(store, job_id, status="running", worker="w", heartbeat_at=beat, run_dir=str(tmp_path / job_id / "run"))
        with store.session() as s:
            folder = kept_files(s.get(Job, job_id))
        folder.mkdir(parents=True)
        (folder / "file-x").write_text("the user's data")
        assert jobs.cancel_job("", job_id).status == "cancelled"
    with store.session() as s:
        dead, alive = (kept_files(s.get(Job, j)) for j in ("ftjob-dead", "ftjob-alive"))
    assert not dead.exists() and alive.exists()  # a live worker removes its own as it lets go


def _fake_run(folder: Path) -> Path:
    (folder / "model").mkdir(parents=True)
    (folder / "model" / "adapter_model.safetensors").write_bytes(b"w" * 100)
    return folder


def test_weights_of_a_deleted_model_serve_its_dependants_and_go_with_the_last_of_them(store_url: str, tmp_path: Path) -> None:
    """A job B trained on from ft: model A. A deleted while B was paused: B's resume failed ("no longer exists"),
    though A's weights were kept for it. B's model deleted after A's: A's weights stayed on disk for good."""
    from tunesmith.store.schema import JobCheckpoint

    a_name, b_name = "ft:base:tunesmith::AAAAAAAA", "ft:base:tunesmith::BBBBBBBB"
    store = Store(store_url)
    spec = JobsSpec(base_models=["base"])
    jobs = JobsService(store, spec)
    a_run, ckpt = _fake_run(tmp_path / "jobs" / "A" / "run"), _fake_run(tmp_path / "jobs" / "A" / "checkpoints" / "step-5")
    b_run = tmp_path / "jobs" / "B" / "run"
    _job(store, "ftjob-A", model="base", status="succeeded", fine_tuned_model=a_name, run_dir=str(a_run), trained_tokens=1)
    with store.session() as s:
        s.add(JobCheckpoint(id="ftckpt-a5", job_id="ftjob-A", created_at=1, step_number=5, metrics={"step": 5.0},
                            fine_tuned_model_checkpoint=f"{a_name}:ckpt-step-5", path=str(ckpt)))
    _job(store, "ftjob-B", model=a_name, status="paused", trained_tokens=100, run_dir=str(b_run))
    _job(store, "ftjob-late", model=a_name, status="validating_files", run_dir=str(tmp_path / "jobs" / "late" / "run"))
    worker = Worker(store, spec, name="w")

    def base_of(job_id: str) -> str:
        with store.session() as s:
            return worker._base(s.get(Job, job_id))

    assert base_of("ftjob-B") == str(a_run)  # as validation resolves it
    assert jobs.delete_model("", a_name)["deleted"]
    assert (a_run / "model").is_dir() and not (ckpt / "model").exists()  # B needs the model, no one the checkpoint
    assert base_of("ftjob-B") == str(a_run)  # resumed, it trains on from the kept weights
    with pytest.raises(RuntimeError, match="no longer exists"):
        base_of("ftjob-late")  # not validated before the delete: it never had the model
    _job(store, "ftjob-B2", model="base", status="succeeded", fine_tuned_model="ft:other", run_dir=str(tmp_path / "x"))
    with store.session() as s:
        b = s.get(Job, "ftjob-B")
        b.status, b.fine_tuned_model = "succeeded", b_name
        s.get(Job, "ftjob-late").status = "failed"
    _fake_run(b_run)
    assert jobs.delete_model("", b_name)["deleted"]
    assert not (b_run / "model").exists() and not (a_run / "model").exists()  # the last dependant gone: A's weights too


def test_a_pause_taken_back_after_the_worker_saw_it_lets_training_go_on(store_url: str) -> None:
    """The worker read the pause, then the pause was taken back before its next step: it stopped anyway, let the job
    go and another worker took it over from the checkpoint (work for nothing)."""
    from tunesmith.jobs.worker import _Heartbeat

    store = Store(store_url)
    _job(store, "ftjob-back", status="running", worker="w", heartbeat_at=time.time(), trained_tokens=100)
    jobs = JobsService(store, JobsSpec())
    beat = _Heartbeat(Worker(store, JobsSpec(), name="w"), "ftjob-back")
    assert jobs.pause_job("", "ftjob-back").status == "paused"
    beat.beat()
    assert beat.stop_reason == "pause"
    assert jobs.resume_job("", "ftjob-back").status == "running"
    beat.beat()
    assert beat.stop_reason is None


def test_the_estimated_finish_counts_from_where_training_began(store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """It counted from the first log's step: at step 10 of 100 (1 step a second) it said 900 s, not 100 s."""
    from types import SimpleNamespace

    from tunesmith.jobs.worker import _Heartbeat, _reporter

    store = Store(store_url)
    _job(store, "ftjob-e", status="running", worker="w", heartbeat_at=time.time())
    worker = Worker(store, JobsSpec(), name="w")
    clock = [1000.0]
    monkeypatch.setattr(time, "time", lambda: clock[0])
    reporter = _reporter(worker, "ftjob-e", _Heartbeat(worker, "ftjob-e"))
    reporter.on_train_begin(None, SimpleNamespace(global_step=0, max_steps=100), None)
    for step in (10, 50):
        clock[0] = 1000.0 + step
        reporter.on_log(None, SimpleNamespace(global_step=step, max_steps=100), None, logs={"loss": 1.0})
        assert JobsService(store, JobsSpec()).get_job("", "ftjob-e").estimated_finish == 1100


def test_the_checkpoints_list_keeps_only_the_newest_the_trainer_keeps(store_url: str) -> None:
    """Every save added a row: 8 listed while the Trainer kept 3 on disk, for good once the job was cancelled or failed
    (only a succeeded job's list was trimmed to the folders left)."""
    from types import SimpleNamespace

    from tunesmith.jobs.worker import _Heartbeat, _reporter

    store = Store(store_url)
    _job(store, "ftjob-ck", status="running", worker="w", heartbeat_at=time.time())
    worker = Worker(store, JobsSpec(checkpoints=2), name="w")
    reporter = _reporter(worker, "ftjob-ck", _Heartbeat(worker, "ftjob-ck"))
    for step in (10, 20, 30, 40):
        reporter.on_save(SimpleNamespace(output_dir="jobs/ftjob-ck/run/checkpoints/tmp"), SimpleNamespace(global_step=step), None)
    jobs = JobsService(store, JobsSpec())
    assert [c.step_number for c in jobs.list_checkpoints("", "ftjob-ck").data] == [40, 30]
    assert jobs.cancel_job("", "ftjob-ck").status == "cancelled"
    assert [c.step_number for c in jobs.list_checkpoints("", "ftjob-ck").data] == [40, 30]


def test_a_job_cancelled_soon_after_its_worker_died_lets_its_copies_go_at_a_later_claim(store_url: str,
                                                                                         tmp_path: Path) -> None:
    """Cancelled within stale_after_s of its worker's death, the cancel cannot tell the worker is dead and leaves the
    copies to it; and no claim touched an ended job: a deleted upload's bytes stayed on disk for good."""
    from tunesmith.jobs.service import job_copies

    store = Store(store_url)
    spec = JobsSpec(stale_after_s=60)
    jobs = JobsService(store, spec)
    copies = {}
    for job_id in ("ftjob-killed", "ftjob-live"):
        _job(store, job_id, status="running", worker=f"w-{job_id}", heartbeat_at=time.time(), run_dir=str(tmp_path / job_id / "run"))
        with store.session() as s:
            copies[job_id] = job_copies(s.get(Job, job_id))
        for folder in copies[job_id]:
            folder.mkdir(parents=True)
            (folder / "file-x").write_text("the user's data")
        assert jobs.cancel_job("", job_id).status == "cancelled"
    assert all(f.exists() for folders in copies.values() for f in folders)  # both heartbeats were fresh at the cancel
    with store.session() as s:  # a minute on: the killed worker never beat again
        s.get(Job, "ftjob-killed").heartbeat_at = time.time() - 120
    # Two workers claim (nothing to take): the first lets go of the dead worker's ended job, the second finds none left.
    assert [Worker(Store(store_url, migrate=False), spec, name=n).claim() for n in ("a", "b")] == [None, None]
    assert not any(f.exists() for f in copies["ftjob-killed"])
    assert all(f.exists() for f in copies["ftjob-live"])  # its live worker removes them as it lets go
    with store.session() as s:
        killed, live = s.get(Job, "ftjob-killed"), s.get(Job, "ftjob-live")
        assert (killed.status, killed.worker, killed.heartbeat_at) == ("cancelled", None, None)
        assert (live.status, live.worker) == ("cancelled", "w-ftjob-live")


def test_a_worker_with_another_tunesmith_home_says_so_rather_than_blame_the_file(tmp_path: Path, tiny_llama: Path) -> None:
    """A worker on another machine sharing the store, its TUNESMITH_HOME not the server's, failed every job with
    invalid_training_file "... was deleted before it was validated" while the upload was there to download."""
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    spec = JobsSpec(base_models=[str(tiny_llama)], heartbeat_s=0.5)
    jobs = JobsService(store, spec)
    upload = jobs.create_file("", "train.jsonl", "fine-tune", io.BytesIO(chat_file(tmp_path / "t.jsonl", 20).read_bytes()))
    job = jobs.create_job("", jp.JobCreate(model=str(tiny_llama), training_file=upload.id))
    worker = Worker(store, spec, name="elsewhere")
    worker.files_dir = tmp_path / "other-home" / "files"  # what Worker takes from its own TUNESMITH_HOME
    worker.run(once=True)
    done = jobs.get_job("", job.id)
    assert done.status == "failed" and done.error.code == "server_error" and done.error.param is None
    assert str(worker.files_dir / upload.id) in done.error.message and "TUNESMITH_HOME" in done.error.message
    assert "file system they share" in done.error.message and "deleted" not in done.error.message
    assert jobs.get_file("", upload.id).id == upload.id  # the upload is fine


def test_each_step_has_one_metrics_event_carrying_its_train_loss(store_url: str) -> None:
    """Each Trainer log was an event of its own: a step with an evaluation had two or three, some without train_loss
    (a client reading OpenAI's events hit KeyError 'train_loss'). Now its valid_* / full_valid_* join the step's event."""
    from types import SimpleNamespace

    from tunesmith.jobs.worker import _Heartbeat, _reporter

    store = Store(store_url)
    _job(store, "ftjob-m", status="running", worker="w", heartbeat_at=time.time(), validation_file="file-v")
    worker = Worker(store, JobsSpec(), name="w")
    reporter = _reporter(worker, "ftjob-m", _Heartbeat(worker, "ftjob-m"))
    control = SimpleNamespace(should_evaluate=True, should_log=False, should_save=False)
    reporter.on_step_end(None, SimpleNamespace(global_step=3, max_steps=6), control)
    assert control.should_log  # an evaluated step not on the logging cadence (or the last) logs its train loss too
    for step in (3, 6):
        state = SimpleNamespace(global_step=step, max_steps=6)
        reporter.on_log(None, state, None, logs={"loss": 1.5, "mean_token_accuracy": 0.5, "learning_rate": 1e-4})
        reporter.on_log(None, state, None, logs={"eval_loss": 1.25, "eval_mean_token_accuracy": 0.75})
    reporter.on_log(None, state, None, logs={"full_valid_loss": 1.0, "eval_mean_token_accuracy": 0.25})
    events = [e for e in JobsService(store, JobsSpec()).list_events("", "ftjob-m", limit=100).data if e.type == "metrics"]
    step = {"total_steps": 6, "train_loss": 1.5, "train_mean_token_accuracy": 0.5, "valid_loss": 1.25,
            "valid_mean_token_accuracy": 0.75}
    assert [e.data for e in events[::-1]] == [{"step": 3, **step}, {"step": 6, **step, "full_valid_loss": 1.0,
                                                                    "full_valid_mean_token_accuracy": 0.25}]
    assert events[0].message == ("Step 6/6: train loss=1.5000, train mean token accuracy=0.5000, valid loss=1.2500, "
                                 "valid mean token accuracy=0.7500, full valid loss=1.0000, full valid mean token accuracy=0.2500")


def test_a_real_job_s_metrics_events_and_results_file_list_each_step_once(tmp_path: Path, tiny_llama: Path) -> None:
    """Through the Trainer: an evaluation off the logging cadence (and the last step's) still joins a step's event."""
    import csv

    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    spec = JobsSpec(base_models=[str(tiny_llama)], heartbeat_s=0.5)
    jobs = JobsService(store, spec)
    data = chat_file(tmp_path / "t.jsonl", 22).read_bytes()
    upload, valid = (jobs.create_file("", f"{n}.jsonl", "fine-tune", io.BytesIO(data)) for n in ("t", "v"))
    job = jobs.create_job("", jp.JobCreate(model=str(tiny_llama), training_file=upload.id, validation_file=valid.id,
                                           hyperparameters={"n_epochs": 1, "batch_size": 1}))
    Worker(store, spec).run(once=True)
    done = jobs.get_job("", job.id)
    assert done.status == "succeeded", done.error
    events = [e.data for e in jobs.list_events("", job.id, limit=1000).data[::-1] if e.type == "metrics"]
    steps = [e["step"] for e in events]
    assert steps == sorted(set(steps)) and steps[-1] == 22 and all("train_loss" in e for e in events)
    assert any("valid_loss" in e for e in events) and "full_valid_loss" in events[-1]
    rows = list(csv.DictReader(io.StringIO(jobs.file_content("", done.result_files[0]).read_text())))
    assert [int(r["step"]) for r in rows] == steps and all(r["train_loss"] for r in rows)
    assert [bool(r["valid_loss"]) for r in rows] == ["valid_loss" in e for e in events]


def test_a_worker_that_lost_its_job_while_stalled_neither_trains_nor_ends_it(store_url: str, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Stalled between its claim and training, past stale_after_s: another worker took the job over. Waking, the first
    set it running again (deleting the other's metrics events), trained it beside the other and could succeed it."""
    from types import SimpleNamespace

    import tunesmith.training
    from tunesmith.jobs.service import add_event
    from tunesmith.jobs.worker import _Heartbeat

    store = Store(store_url)
    spec = JobsSpec(stale_after_s=30)
    run_dir = tmp_path / "run"
    _job(store, "ftjob-lost", status="queued", trained_tokens=10, run_dir=str(run_dir))
    stalled, taker = Worker(store, spec, name="stalled"), Worker(store, spec, name="taker")
    assert stalled.claim() == "ftjob-lost"
    with store.session() as s:
        s.get(Job, "ftjob-lost").heartbeat_at = time.time() - 60  # stopped (SIGSTOP, swapping) past stale_after_s
    assert taker.claim() == "ftjob-lost"
    with store.session() as s:  # the taker trains it
        job = s.get(Job, "ftjob-lost")
        job.status = "running"
        add_event(s, job, "Step 5/10", type="metrics", data={"step": 5, "total_steps": 10})
    trained: list[Any] = []
    monkeypatch.setattr(Worker, "_config", lambda self, job_id: SimpleNamespace(train=SimpleNamespace(output_dir=run_dir)))
    monkeypatch.setattr(tunesmith.training, "train", lambda cfg, **kw: trained.append(kw))
    stalled._train("ftjob-lost", _Heartbeat(stalled, "ftjob-lost"), resumed=False)
    stalled._succeed("ftjob-lost", run_dir)
    stalled._fail("ftjob-lost", "server_error", "Fine-tuning failed: its run folder changed under it", None)
    assert trained == []
    with store.session() as s:
        job = s.get(Job, "ftjob-lost")
        assert (job.status, job.worker, job.fine_tuned_model, job.error) == ("running", "taker", None, None)
        assert [e.message for e in job.events] == ["Step 5/10"]
