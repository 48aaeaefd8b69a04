"""Files and fine-tuning jobs over the store, as OpenAI's API behaves: values or ApiError, no HTTP.

Every call takes the caller's `owner` (a hash of its API key, "" on an open server) and sees only
that owner's rows. Creating a job only records it (status validating_files); workers
(jobs/worker.py) validate, train and report. This module never imports training code, so the
server that mounts it stays light.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, TypeVar

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from tunesmith.config import JobsSpec
from tunesmith.errors import ApiError
from tunesmith.jobs import protocol as p
from tunesmith.store.db import Store
from tunesmith.store.schema import Job, JobCheckpoint, JobEvent, ModelVersion, StoredFile

PURPOSES = ("fine-tune",)  # what tunesmith trains on; other OpenAI purposes have no use here yet
RESULTS_PURPOSE = "fine-tune-results"  # the step-metrics CSV a succeeded job lists in result_files
EXPIRY_RANGE = (3600, 30 * 24 * 3600)  # OpenAI's bounds for expires_after.seconds
ACTIVE = ("validating_files", "queued", "running", "paused")
BASE_RECORD = "base"  # in a job's folder: the run folder an ft: model's job trains on from, as resolved at validation
CHUNK = 1 << 20
Row = TypeVar("Row", StoredFile, Job, JobEvent, JobCheckpoint)


def owner_of(api_key: str | None) -> str:
    """The owner a key's rows are stored under: a hash, so the store never holds the key itself."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:32] if api_key else ""


def now() -> int:
    return int(time.time())


def stamps() -> dict[str, Any]:
    """created_at (OpenAI's whole seconds) and created (the same moment to the microsecond, for ordering)."""
    t = time.time()
    return {"created_at": int(t), "created": t}


def _not_found(what: str, ident: str, param: str | None = None) -> ApiError:
    return ApiError(404, f"No such {what}: '{ident}'", "invalid_request_error", param=param, code=f"{what.replace(' ', '_')}_not_found")


class JobsService:
    def __init__(self, store: Store, spec: JobsSpec) -> None:
        self.store = store
        self.spec = spec
        self.files_dir = store.home / "files"
        self.jobs_dir = store.home / "jobs"

    # -- files -------------------------------------------------------------------------------------

    def file_path(self, file_id: str) -> Path:
        return self.files_dir / file_id  # a server-made id, never the user's file name

    def create_file(self, owner: str, filename: str, purpose: str, upload: IO[bytes],
                    expires_after: dict[str, Any] | None = None) -> p.FileObject | ApiError:
        if purpose not in PURPOSES:
            return ApiError(400, f"purpose '{purpose}' is not supported by tunesmith; use one of {list(PURPOSES)}",
                            param="purpose", code="invalid_purpose")
        expires_at = None
        if expires_after is not None:
            seconds = expires_after.get("seconds")
            if expires_after.get("anchor") != "created_at" or not isinstance(seconds, int) \
                    or not EXPIRY_RANGE[0] <= seconds <= EXPIRY_RANGE[1]:
                return ApiError(400, "expires_after needs anchor 'created_at' and seconds between "
                                     f"{EXPIRY_RANGE[0]} and {EXPIRY_RANGE[1]}", param="expires_after")
            expires_at = now() + seconds
        file_id = p.new_id(p.FILE_PREFIX)
        self.files_dir.mkdir(parents=True, exist_ok=True)
        target, digest, size = self.file_path(file_id), hashlib.sha256(), 0
        partial = target.with_suffix(".part")
        with partial.open("wb") as out:  # streamed: a 500 MB upload never sits in memory
            while chunk := upload.read(CHUNK):
                size += len(chunk)
                if size > self.spec.max_file_bytes:
                    out.close()
                    partial.unlink()
                    return ApiError(413, f"the file is larger than this server's limit of {self.spec.max_file_bytes} bytes",
                                    param="file", code="file_too_large")
                digest.update(chunk)
                out.write(chunk)
        partial.replace(target)
        row = StoredFile(id=file_id, owner=owner, purpose=purpose, filename=Path(filename or "upload").name[:512],
                         bytes=size, **stamps(), expires_at=expires_at, status="processed",
                         sha256=digest.hexdigest())
        with self.store.session() as s:
            s.add(row)
        return _file(row)

    def _file_row(self, s: Session, owner: str, file_id: str) -> StoredFile | None:
        row = s.get(StoredFile, file_id)
        if row is None or row.owner != owner:
            return None
        if row.expires_at is not None and row.expires_at <= now():
            self._drop_file(s, row)
            return None
        return row

    def _drop_file(self, s: Session, row: StoredFile) -> None:
        s.delete(row)
        self.file_path(row.id).unlink(missing_ok=True)

    def get_file(self, owner: str, file_id: str) -> p.FileObject | ApiError:
        with self.store.session() as s:
            row = self._file_row(s, owner, file_id)
            return _file(row) if row else _not_found("file", file_id)

    def file_content(self, owner: str, file_id: str) -> Path | ApiError:
        with self.store.session() as s:
            row = self._file_row(s, owner, file_id)
            return self.file_path(row.id) if row else _not_found("file", file_id)

    def delete_file(self, owner: str, file_id: str) -> p.FileDeleted | ApiError:
        with self.store.session() as s:
            row = self._file_row(s, owner, file_id)
            if row is None:
                return _not_found("file", file_id)
            self._drop_file(s, row)
        return p.FileDeleted(id=file_id, deleted=True)

    def list_files(self, owner: str, after: str | None = None, limit: int = 10_000, order: str = "desc",
                   purpose: str | None = None) -> p.IdPage[p.FileObject] | ApiError:
        if order not in ("asc", "desc"):
            return ApiError(400, "order must be 'asc' or 'desc'", param="order")
        if bad := _bad_limit(limit):
            return bad
        with self.store.session() as s:
            for row in s.scalars(select(StoredFile).where(StoredFile.owner == owner, StoredFile.expires_at <= now())):
                self._drop_file(s, row)
            stmt = select(StoredFile).where(StoredFile.owner == owner)
            if purpose:
                stmt = stmt.where(StoredFile.purpose == purpose)
            rows = _after(s, stmt, StoredFile, after, limit, descending=order == "desc", owner=owner)
            if isinstance(rows, ApiError):
                return rows
            return p.IdPage[p.FileObject].from_rows([_file(r) for r in rows], limit)

    # -- jobs --------------------------------------------------------------------------------------

    def create_job(self, owner: str, req: p.JobCreate) -> p.FineTuningJob | ApiError:
        method_type, hyper = req.effective_method()
        if method_type == "reinforcement":
            return ApiError(400, "reinforcement fine-tuning is not supported by tunesmith (yet); use method "
                                 "'supervised' or 'dpo'", param="method.type", code="unsupported_method")
        if self.base_model_dir(owner, req.model) is None:
            return ApiError(400, f"Model {req.model} is not available for fine-tuning or does not exist; this server "
                                 f"fine-tunes {self.spec.base_models} and your own ft: models",
                            param="model", code="model_not_available")
        with self.store.session() as s:
            for param, file_id in (("training_file", req.training_file), ("validation_file", req.validation_file)):
                if file_id is None:
                    continue
                row = self._file_row(s, owner, file_id)
                if row is None:
                    return ApiError(400, f"invalid {param}: no file '{file_id}' (upload it with purpose fine-tune)",
                                    param=param, code="invalid_file")
                if row.purpose != "fine-tune":
                    return ApiError(400, f"invalid {param}: file '{file_id}' has purpose '{row.purpose}', not fine-tune",
                                    param=param, code="invalid_file_purpose")
            job_id = p.new_id(p.JOB_PREFIX)
            job = Job(id=job_id, owner=owner, **stamps(), model=req.model, training_file=req.training_file,
                      validation_file=req.validation_file, suffix=req.suffix,
                      seed=req.seed if req.seed is not None else int.from_bytes(hashlib.sha256(job_id.encode()).digest()[:4]) >> 1,
                      status="validating_files", method={"type": method_type, method_type: {"hyperparameters": hyper}},
                      job_metadata=req.metadata, result_files=[],
                      integrations=[i.model_dump(mode="json", exclude_none=True) for i in req.integrations or []] or None,
                      run_dir=str(self.jobs_dir / job_id / "run"))
            s.add(job)
            add_event(s, job, f"Created fine-tuning job: {job_id}")
            for integration in job.integrations or []:
                add_event(s, job, f"Integration {integration.get('type')} recorded; tunesmith does not report to it "
                                  "from this machine (no network)", level="warn")
            s.flush()
            return job_object(job, self.spec)

    def base_model_dir(self, owner: str, model: str) -> str | None:
        """What a job on `model` trains from: a configured base model, or an owner's own ft: model (its run folder)."""
        base = self.spec.base_model(model)
        if base is not None:
            return base
        resolved = self.resolve_model(owner, model)
        return str(resolved) if resolved else None

    def _job(self, s: Session, owner: str, job_id: str, lock: bool = False) -> Job | None:
        """The owner's job; `lock`: held until the commit (a status change against a worker's)."""
        job = locked_job(s, job_id) if lock else s.get(Job, job_id)
        return job if job is not None and job.owner == owner else None

    def get_job(self, owner: str, job_id: str) -> p.FineTuningJob | ApiError:
        with self.store.session() as s:
            job = self._job(s, owner, job_id)
            return job_object(job, self.spec) if job else _not_found("fine-tuning job", job_id)

    def list_jobs(self, owner: str, after: str | None = None, limit: int = 20, metadata: dict[str, str] | None = None,
                  without_metadata: bool = False) -> p.Page[p.FineTuningJob] | ApiError:
        """`metadata`: only jobs with these pairs (OpenAI's `metadata[k]=v`); `without_metadata`: only jobs with
        none (OpenAI's `metadata=null`)."""
        with self.store.session() as s:
            stmt = select(Job).where(Job.owner == owner)
            if metadata or without_metadata:  # filtered in Python: JSON operators differ between SQLite and PostgreSQL
                wanted = (metadata or {}).items()
                ids = [j.id for j in s.scalars(stmt) if (not j.job_metadata if without_metadata
                                                          else all((j.job_metadata or {}).get(k) == v for k, v in wanted))]
                stmt = stmt.where(Job.id.in_(ids))
            rows = _after(s, stmt, Job, after, limit, descending=True, owner=owner)
            if isinstance(rows, ApiError):
                return rows
            return p.Page[p.FineTuningJob].from_rows([job_object(j, self.spec) for j in rows], limit)

    def _control(self, owner: str, job_id: str, action: str, allowed: tuple[str, ...],
                 change: Callable[[Session, Job], None]) -> p.FineTuningJob | ApiError:
        with self.store.session() as s:
            job = self._job(s, owner, job_id, lock=True)
            if job is None:
                return _not_found("fine-tuning job", job_id)
            if job.status not in allowed:
                return ApiError(400, f"Cannot {action} a job with status '{job.status}'", param="fine_tuning_job_id",
                                code="invalid_job_status")
            change(s, job)
            return job_object(job, self.spec)

    def cancel_job(self, owner: str, job_id: str) -> p.FineTuningJob | ApiError:
        idle: list[Path] = []

        def cancel(s: Session, job: Job) -> None:
            # A running job's worker sees `control` at its next step and stops; the status is final now.
            job.control = "cancel" if job.status == "running" else None
            job.status, job.finished_at, job.estimated_finish = "cancelled", now(), None  # OpenAI: null unless running
            add_event(s, job, "Fine-tuning job cancelled")
            # A worker holding it removes them as it lets go; one whose heartbeat went stale (killed) never will: removed
            # here, or by the next worker's claim once the heartbeat is stale (Worker._release_ended).
            gone = job.heartbeat_at is None or job.heartbeat_at < time.time() - self.spec.stale_after_s
            if job.worker is None or gone:
                idle.extend(job_copies(job))

        result = self._control(owner, job_id, "cancel", ACTIVE, cancel)
        for folder in idle:  # the job never reads its data again: a deleted upload's bytes go with it
            shutil.rmtree(folder, ignore_errors=True)
        return result

    def pause_job(self, owner: str, job_id: str) -> p.FineTuningJob | ApiError:
        def pause(s: Session, job: Job) -> None:
            if job.status == "running":
                job.control = "pause"  # the worker saves a checkpoint, then stops
            job.status, job.estimated_finish = "paused", None  # OpenAI: null unless running
            add_event(s, job, "Fine-tuning job paused")

        return self._control(owner, job_id, "pause", ("validating_files", "queued", "running"), pause)

    def resume_job(self, owner: str, job_id: str) -> p.FineTuningJob | ApiError:
        def resume(s: Session, job: Job) -> None:
            # A worker claims it and continues from its last checkpoint. Validation is what sets trained_tokens: a
            # job paused before its files were validated goes back to that (workers skip it for a queued job).
            job.status = "queued" if job.trained_tokens is not None else "validating_files"
            if job.control == "pause":
                # Its worker has not stopped yet (maybe never read the pause): it is still running. Should it stop
                # anyway, it lets go of a running job, which the next worker takes over from the checkpoint.
                job.status = "running"
            job.control = None
            add_event(s, job, "Fine-tuning job resumed")

        return self._control(owner, job_id, "resume", ("paused",), resume)

    def list_events(self, owner: str, job_id: str, after: str | None = None,
                    limit: int = 20) -> p.Page[p.FineTuningJobEvent] | ApiError:
        if bad := _bad_limit(limit):
            return bad
        with self.store.session() as s:
            if self._job(s, owner, job_id) is None:
                return _not_found("fine-tuning job", job_id)
            stmt = select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.seq.desc())  # newest first
            if after:
                cursor = s.scalar(select(JobEvent).where(JobEvent.id == after, JobEvent.job_id == job_id))
                if cursor is None:
                    return _not_found("event", after, "after")
                stmt = stmt.where(JobEvent.seq < cursor.seq)
            rows = s.scalars(stmt.limit(limit + 1)).all()
            return p.Page[p.FineTuningJobEvent].from_rows([_event(e) for e in rows], limit)

    def list_checkpoints(self, owner: str, job_id: str, after: str | None = None,
                         limit: int = 10) -> p.IdPage[p.FineTuningJobCheckpoint] | ApiError:
        if bad := _bad_limit(limit):
            return bad
        with self.store.session() as s:
            if self._job(s, owner, job_id) is None:
                return _not_found("fine-tuning job", job_id)
            rows = s.scalars(select(JobCheckpoint).where(JobCheckpoint.job_id == job_id)
                             .order_by(JobCheckpoint.step_number.desc())).all()  # newest first, as OpenAI lists them
            if after:
                ids = [c.id for c in rows]
                if after not in ids:
                    return _not_found("checkpoint", after, "after")
                rows = rows[ids.index(after) + 1:]
            return p.IdPage[p.FineTuningJobCheckpoint].from_rows([_checkpoint(c) for c in rows[: limit + 1]], limit)

    # -- fine-tuned models -------------------------------------------------------------------------

    def fine_tuned_models(self, owner: str) -> list[tuple[str, int, str]]:
        """(ft: name, created, run folder) of every model and kept checkpoint of the owner's succeeded jobs."""
        out = []
        with self.store.session() as s:
            jobs = s.scalars(select(Job).where(Job.owner == owner, Job.status == "succeeded",
                                               Job.fine_tuned_model.is_not(None))).all()
            for job in jobs:
                out.append((str(job.fine_tuned_model), job.finished_at or job.created_at, str(job.run_dir)))
                out += [(c.fine_tuned_model_checkpoint, c.created_at, c.path) for c in job.checkpoints]
        return out

    def resolve_model(self, owner: str, name: str) -> Path | None:
        """The run folder that answers as `name` (a job's ft: model or one of its checkpoints)."""
        if not name.startswith("ft:"):
            return None
        return next((Path(path) for model, _, path in self.fine_tuned_models(owner) if model == name), None)

    def delete_model(self, owner: str, name: str) -> dict[str, Any] | ApiError:
        """DELETE /v1/models/{ft-name}: the model (and its checkpoints) stop answering; the job stays.

        A job trained on from this model or a checkpoint of it is a model of its own, as OpenAI's are, but its run
        folder names this one's as its base: those weights stay on disk while such a job may still train or its
        model answer, and go when the last of them is deleted."""
        with self.store.session() as s:
            job = s.scalar(select(Job).where(Job.owner == owner, Job.fine_tuned_model == name))
            if job is None:
                return _checkpoint_of(s, owner, name) or ApiError(404, f"The model '{name}' does not exist", param="model",
                                                                   code="model_not_found")
            checkpoints = [(c.fine_tuned_model_checkpoint, Path(c.path)) for c in job.checkpoints]
            job.fine_tuned_model = None
            for checkpoint in list(job.checkpoints):
                s.delete(checkpoint)
            add_event(s, job, f"Fine-tuned model deleted: {name}")
            gone = [folder / "model" for model, folder in [(name, Path(str(job.run_dir))), *checkpoints]
                    if not _needed(s, owner, model, job.id)]
            # The Trainer's checkpoints hold this model's weights too (a job trained on from it reads only model/), and
            # the job's data copies are gone at its end already, unless it ended before they were removed then.
            gone += [Path(str(job.run_dir)) / "checkpoints", *job_copies(job)]
            # Its registry version (the worker added one) pointed at the removed weights, promotable still.
            registered = [(v.model, v.version) for v in s.scalars(select(ModelVersion).where(
                ModelVersion.run_path == str(Path(str(job.run_dir)).resolve()), ModelVersion.stage != "archived"))]
            base = trained_from(job)  # this model's own base, deleted earlier and kept for it alone
            parent = s.scalar(select(Job).where(Job.owner == owner, Job.run_dir == str(base))) if base else None
            if parent is not None and parent.fine_tuned_model is None and parent.status == "succeeded" \
                    and not _needed(s, owner, fine_tuned_name(parent, self.spec), parent.id):
                gone.append(base / "model")
        for folder in gone:
            shutil.rmtree(folder, ignore_errors=True)
        if registered:  # after the job's transaction: SQLite has one writer at a time
            from tunesmith.registry.service import Registry

            for model, version in registered:  # archived: out of production, its history kept
                Registry(self.store).archive(model, version)
        return {"id": name, "object": "model", "deleted": True}


# -- rows -> OpenAI objects (the worker writes rows with the same helpers) ---------------------------------


def fine_tuned_name(job: Job, spec: JobsSpec) -> str:
    """OpenAI's naming: ft:BASE:ORG:SUFFIX:ID, BASE the model really trained (an ft: base keeps its own base name)."""
    base = job.model.split(":")[1] if job.model.startswith("ft:") else Path(spec.base_model(job.model) or job.model).name
    return f"ft:{base}:{spec.organization}:{job.suffix or ''}:{job.id.removeprefix(p.JOB_PREFIX)[:8]}"


def kept_files(job: Job) -> Path:
    """Where a job keeps its own copies of the files it validated (hard links): beside its run folder."""
    return Path(str(job.run_dir)).parent / "files"


def job_copies(job: Job) -> list[Path]:
    """The user's data a job holds while it may still train, to remove once it never will: its file copies (a deleted
    upload's bytes) and the dataset prepared from them (the training conversations as parquet)."""
    return [kept_files(job), Path(str(job.run_dir)).parent / "dataset"] if job.run_dir else []


def trained_from(job: Job) -> Path | None:
    """The run folder a job on an ft: model trains on from, as its worker resolved it (None: not yet, or a base)."""
    record = Path(str(job.run_dir)).parent / BASE_RECORD
    return Path(record.read_text(encoding="utf-8")) if job.run_dir and record.is_file() else None


def _needed(s: Session, owner: str, model: str, job_id: str) -> bool:
    """Does a job trained on from `model` need its weights: one that may still train, or whose model answers?"""
    return s.scalar(select(Job.id).where(
        Job.owner == owner, Job.model == model, Job.id != job_id,
        Job.status.in_(("queued", "running", "paused")) | ((Job.status == "succeeded") & Job.fine_tuned_model.is_not(None))
    ).limit(1)) is not None


def _checkpoint_of(s: Session, owner: str, name: str) -> ApiError | None:
    """A 400 for deleting a served checkpoint on its own (models.retrieve finds it, so a 404 said it did not exist):
    its weights go with its model, whose delete also handles what other jobs trained on from it."""
    model = s.scalar(select(Job.fine_tuned_model).join(JobCheckpoint, JobCheckpoint.job_id == Job.id).where(
        Job.owner == owner, Job.status == "succeeded", Job.fine_tuned_model.is_not(None),
        JobCheckpoint.fine_tuned_model_checkpoint == name))
    if model is None:
        return None
    return ApiError(400, f"'{name}' is a checkpoint of the fine-tuned model '{model}'; a checkpoint cannot be deleted on "
                         f"its own: it is deleted with its model (DELETE /v1/models/{model})", param="model",
                    code="checkpoint_not_deletable")


def locked_job(s: Session, job_id: str) -> Job | None:
    """The job, held until the commit (Store.lock): a worker's status change and a user's cancel or pause go one
    at a time, each reading what the other wrote."""
    Store.lock(s, Job, Job.id == job_id)
    return s.get(Job, job_id)


def add_event(s: Session, job: Job, message: str, *, level: str = "info", type: str = "message",
              data: dict[str, Any] | None = None) -> None:
    s.add(JobEvent(id=p.new_id(p.EVENT_PREFIX), job_id=job.id, created_at=now(), level=level, type=type,
                   message=message, data=data))


def job_object(job: Job, spec: JobsSpec) -> p.FineTuningJob:
    method_type = job.method["type"]
    hyper = job.method[method_type]["hyperparameters"]
    return p.FineTuningJob(
        id=job.id, created_at=job.created_at, error=p.JobError(**job.error) if job.error else None,
        fine_tuned_model=job.fine_tuned_model, finished_at=job.finished_at,
        hyperparameters=p.Hyperparameters(**{k: hyper.get(k, "auto") for k in ("n_epochs", "batch_size", "learning_rate_multiplier")}),
        model=job.model, organization_id=f"org-{spec.organization}", result_files=list(job.result_files or []),
        seed=job.seed, status=job.status, training_file=job.training_file,
        # OpenAI's is null until the job succeeds; the stored one is a single epoch's until then (the worker's mark of
        # a validated job), which a running or cancelled job showed as if trained
        trained_tokens=job.trained_tokens if job.status == "succeeded" else None,
        validation_file=job.validation_file, estimated_finish=job.estimated_finish,
        integrations=job.integrations, metadata=job.job_metadata, method=p.Method.model_validate(job.method),
    )


def _file(row: StoredFile) -> p.FileObject:
    return p.FileObject(id=row.id, bytes=row.bytes, created_at=row.created_at, filename=row.filename,
                        purpose=row.purpose, status=row.status, expires_at=row.expires_at)


def _event(e: JobEvent) -> p.FineTuningJobEvent:
    return p.FineTuningJobEvent(id=e.id, created_at=e.created_at, level=e.level, message=e.message, data=e.data, type=e.type)


def _checkpoint(c: JobCheckpoint) -> p.FineTuningJobCheckpoint:
    return p.FineTuningJobCheckpoint(id=c.id, created_at=c.created_at, fine_tuned_model_checkpoint=c.fine_tuned_model_checkpoint,
                                     fine_tuning_job_id=c.job_id, metrics=p.CheckpointMetrics(**c.metrics),
                                     step_number=c.step_number)


def _bad_limit(limit: int) -> ApiError | None:
    """Every list's page size, checked before it reaches SQL or Page.from_rows (which raises: a 500, not a 400)."""
    return None if 1 <= limit <= 10_000 else ApiError(400, "limit must be between 1 and 10000", param="limit")


def _after(s: Session, stmt: Select[Any], model: type[Row], after: str | None, limit: int,
           descending: bool, owner: str) -> list[Row] | ApiError:
    """limit + 1 rows of `stmt` strictly after the row `after`, in creation order (newest first when descending).
    Another owner's row is no cursor: as one that does not exist (a 200 for it told which ids another key has)."""
    if bad := _bad_limit(limit):
        return bad
    created, ident = model.created, model.id  # type: ignore[attr-defined]
    if after:
        cursor = s.get(model, after)
        if cursor is None or cursor.owner != owner:
            return _not_found(model.__tablename__.rstrip("s"), after, "after")
        if descending:
            stmt = stmt.where((created < cursor.created) | ((created == cursor.created) & (ident < cursor.id)))
        else:
            stmt = stmt.where((created > cursor.created) | ((created == cursor.created) & (ident > cursor.id)))
    order = [created.desc(), ident.desc()] if descending else [created, ident]
    return list(s.scalars(stmt.order_by(*order).limit(limit + 1)))
