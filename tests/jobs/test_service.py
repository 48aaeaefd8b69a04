"""The files and jobs service over the store, without HTTP (SQLite and PostgreSQL)."""

from __future__ import annotations

import io
import time
from pathlib import Path

from tunesmith.config import JobsSpec
from tunesmith.errors import ApiError
from tunesmith.jobs import protocol as jp
from tunesmith.jobs.service import JobsService
from tunesmith.store.db import Store
from tunesmith.store.schema import StoredFile


def service(store_url: str, tmp_path: Path, **spec: object) -> JobsService:
    jobs = JobsService(Store(store_url), JobsSpec(base_models=["base", "gpt-4o-mini=base"], **spec))
    jobs.files_dir = tmp_path / "files"
    return jobs


def test_uploads_are_limited_streamed_and_listed_page_by_page(store_url: str, tmp_path: Path) -> None:
    jobs = service(store_url, tmp_path, max_file_bytes=1000)
    too_big = jobs.create_file("a", "big.jsonl", "fine-tune", io.BytesIO(b"x" * 1001))
    assert isinstance(too_big, ApiError) and too_big.status == 413 and not list(jobs.files_dir.iterdir())
    assert isinstance(jobs.create_file("a", "x.txt", "assistants", io.BytesIO(b"{}")), ApiError)
    ids = [jobs.create_file("a", f"f{i}.jsonl", "fine-tune", io.BytesIO(b"{}\n")).id for i in range(5)]
    first = jobs.list_files("a", limit=2)
    assert [f.id for f in first.data] == ids[::-1][:2] and first.has_more and first.last_id == ids[3]
    rest = jobs.list_files("a", after=first.last_id, limit=10)
    assert [f.id for f in rest.data] == ids[::-1][2:] and not rest.has_more
    assert [f.id for f in jobs.list_files("a", order="asc").data] == ids
    assert jobs.list_files("b").data == []
    # another key's id as the cursor is no id at all (a 200 for it told key b which ids key a has)
    other = jobs.list_files("b", after=ids[0])
    assert isinstance(other, ApiError) and other.status == 404 and other.param == "after"


def test_an_expired_file_is_gone(store_url: str, tmp_path: Path) -> None:
    jobs = service(store_url, tmp_path)
    f = jobs.create_file("a", "t.jsonl", "fine-tune", io.BytesIO(b"{}\n"), {"anchor": "created_at", "seconds": 3600})
    with jobs.store.session() as s:
        s.get(StoredFile, f.id).expires_at = int(time.time()) - 1
    assert isinstance(jobs.get_file("a", f.id), ApiError) and not (jobs.files_dir / f.id).exists()
    bad = jobs.create_file("a", "t.jsonl", "fine-tune", io.BytesIO(b"{}\n"), {"anchor": "created_at", "seconds": 5})
    assert isinstance(bad, ApiError) and bad.param == "expires_after"


def test_job_states_follow_openai_s_rules(store_url: str, tmp_path: Path) -> None:
    jobs = service(store_url, tmp_path)
    f = jobs.create_file("a", "t.jsonl", "fine-tune", io.BytesIO(b"{}\n"))
    job = jobs.create_job("a", jp.JobCreate(model="gpt-4o-mini", training_file=f.id))  # an alias of "base"
    assert job.status == "validating_files" and job.model == "gpt-4o-mini"
    assert jobs.pause_job("a", job.id).status == "paused"
    assert jobs.resume_job("a", job.id).status == "validating_files"  # paused before a worker validated its files
    assert jobs.cancel_job("a", job.id).status == "cancelled"
    again = jobs.cancel_job("a", job.id)
    assert isinstance(again, ApiError) and again.code == "invalid_job_status"
    assert isinstance(jobs.get_job("b", job.id), ApiError)
    messages = [e.message for e in reversed(jobs.list_events("a", job.id).data)]
    assert messages == [f"Created fine-tuning job: {job.id}", "Fine-tuning job paused", "Fine-tuning job resumed",
                        "Fine-tuning job cancelled"]
    unknown = jobs.create_job("a", jp.JobCreate(model="gpt-5", training_file=f.id))
    assert isinstance(unknown, ApiError) and unknown.code == "model_not_available"
    other = jobs.create_job("b", jp.JobCreate(model="base", training_file=f.id))  # another key's file
    assert isinstance(other, ApiError) and other.param == "training_file"


def test_a_page_size_out_of_range_is_a_bad_request(store_url: str, tmp_path: Path) -> None:
    """limit=0 on events or checkpoints is the caller's mistake: a 400 naming `limit`, as jobs.list answers it."""
    jobs = service(store_url, tmp_path)
    f = jobs.create_file("a", "t.jsonl", "fine-tune", io.BytesIO(b"{}\n"))
    job = jobs.create_job("a", jp.JobCreate(model="base", training_file=f.id))
    for listing in (jobs.list_jobs, jobs.list_events, jobs.list_checkpoints):
        for limit in (0, -1, 10_001):
            args = (job.id,) if listing != jobs.list_jobs else ()
            answer = listing("a", *args, limit=limit)
            assert isinstance(answer, ApiError) and answer.status == 400 and answer.param == "limit", (listing, limit)


def test_a_cancelled_job_has_no_estimated_finish(store_url: str, tmp_path: Path) -> None:
    """OpenAI's estimated_finish is null unless the job is running."""
    from tunesmith.store.schema import Job

    jobs = service(store_url, tmp_path)
    f = jobs.create_file("a", "t.jsonl", "fine-tune", io.BytesIO(b"{}\n"))
    job = jobs.create_job("a", jp.JobCreate(model="base", training_file=f.id))
    with jobs.store.session() as s:
        running = s.get(Job, job.id)
        running.status, running.estimated_finish = "running", int(time.time()) + 600
    assert jobs.get_job("a", job.id).estimated_finish is not None
    assert jobs.cancel_job("a", job.id).estimated_finish is None and jobs.get_job("a", job.id).estimated_finish is None


def test_deleting_a_model_archives_its_registry_version(store_url: str, tmp_path: Path) -> None:
    """The job's registry version stayed a candidate (or production) pointing at the deleted weights: promoted, the
    registry served a run whose model/ was gone."""
    from tests.registry.test_service import fake_run
    from tunesmith.registry.service import Registry
    from tunesmith.store.schema import Job

    jobs = service(store_url, tmp_path)
    run = fake_run(tmp_path / "jobs" / "ftjob-r" / "run", 0.9)  # with its model/ folder
    with jobs.store.session() as s:
        s.add(Job(id="ftjob-r", owner="", created_at=1, created=1.0, model="base", training_file="file-x", seed=1,
                  method={"type": "supervised", "supervised": {"hyperparameters": {}}}, result_files=[],
                  status="succeeded", fine_tuned_model="ft:base:tunesmith:support:r", run_dir=str(run), trained_tokens=1))
    registry = Registry(jobs.store)
    registry.add(run, "support-r", stage="production", lineage={"job": "ftjob-r"})
    other = registry.add(fake_run(tmp_path / "other", 0.8), "support-r")  # not the job's: left alone
    assert jobs.delete_model("", "ft:base:tunesmith:support:r")["deleted"]
    assert not (run / "model").exists()
    assert registry.version("support-r", 1).stage == "archived" and registry.production("support-r") is None
    assert registry.version("support-r", other.version).stage == "candidate"


def test_deleting_a_checkpoint_on_its_own_names_the_model_it_goes_with(store_url: str, tmp_path: Path) -> None:
    """models.retrieve finds a served checkpoint, but models.delete on it said 404 "does not exist"."""
    from tunesmith.store.schema import Job, JobCheckpoint

    jobs = service(store_url, tmp_path)
    model, checkpoint = "ft:base:tunesmith:one:c", "ft:base:tunesmith:one:c:ckpt-step-6"
    (tmp_path / "ck" / "model").mkdir(parents=True)
    with jobs.store.session() as s:
        s.add(Job(id="ftjob-c", owner="", created_at=1, created=1.0, model="base", training_file="file-x", seed=1,
                  method={"type": "supervised", "supervised": {"hyperparameters": {}}}, result_files=[],
                  status="succeeded", fine_tuned_model=model, run_dir=str(tmp_path / "run"), trained_tokens=1))
        s.flush()
        s.add(JobCheckpoint(id="ftckpt-c6", job_id="ftjob-c", created_at=1, step_number=6, metrics={"step": 6.0},
                            fine_tuned_model_checkpoint=checkpoint, path=str(tmp_path / "ck")))
    assert jobs.resolve_model("", checkpoint) == tmp_path / "ck"
    refused = jobs.delete_model("", checkpoint)
    assert isinstance(refused, ApiError) and refused.status == 400 and refused.type == "invalid_request_error"
    assert refused.param == "model" and checkpoint in refused.message and f"DELETE /v1/models/{model}" in refused.message
    assert jobs.resolve_model("", checkpoint) == tmp_path / "ck" and (tmp_path / "ck" / "model").is_dir()  # untouched
    other = jobs.delete_model("someone-else", checkpoint)  # another key's checkpoint does not exist for it
    assert isinstance(other, ApiError) and other.status == 404
    assert jobs.delete_model("", model)["deleted"]
    gone = jobs.delete_model("", checkpoint)  # went with its model
    assert isinstance(gone, ApiError) and gone.status == 404
