"""`tunesmith worker`: claims fine-tuning jobs from the store and runs them, one at a time.

A job is validated as OpenAI validates files, then trained by the same chat SFT / DPO code as
`tunesmith train` into an ordinary run folder. While it trains, a heartbeat thread keeps the claim
fresh and reads cancel/pause requests; a Trainer callback turns the Trainer's logs and saves into
OpenAI's events and checkpoints. Several workers share the store safely: a job is claimed by a
conditional UPDATE (after SELECT ... FOR UPDATE SKIP LOCKED on PostgreSQL), and a job whose worker
stopped beating is taken over and resumed from its last complete checkpoint.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from tunesmith.artifacts import MODEL_DIR, RUN_CONFIG, RUN_MANIFEST, STEP_METRICS, Run, latest_checkpoint
from tunesmith.config import JobsSpec, ProjectConfig, parse_config
from tunesmith.errors import ConfigError, RunBusy
from tunesmith.jobs import protocol as p
from tunesmith.jobs.service import (ACTIVE, BASE_RECORD, RESULTS_PURPOSE, add_event, fine_tuned_name, job_copies, kept_files,
                                    locked_job, now, stamps, trained_from)
from tunesmith.store.db import Store
from tunesmith.store.schema import Job, JobCheckpoint, JobEvent, StoredFile

CLAIMABLE = ("validating_files", "queued")
ENDED = ("succeeded", "failed", "cancelled")
# a metrics event's metrics in its message, as OpenAI orders them
STEP_METRIC_ORDER = ("train_loss", "train_mean_token_accuracy", "valid_loss", "valid_mean_token_accuracy",
                     "full_valid_loss", "full_valid_mean_token_accuracy")


class JobStopped(Exception):
    """Raised inside training when the job was cancelled or paused: the Trainer stops at once."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Worker:
    def __init__(self, store: Store, spec: JobsSpec, name: str | None = None) -> None:
        self.store = store
        self.spec = spec
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.files_dir = store.home / "files"
        # Set (by run's `stop`: SIGTERM) while a job trains: it saves a checkpoint at its next step and is let go,
        # still `running`, for the next worker to go on from. Killed instead, a restart counted as a crash.
        self.stopping = threading.Event()

    # -- claiming ----------------------------------------------------------------------------------

    def claim(self) -> str | None:
        """Take one job: a waiting one, or a running one whose worker stopped beating. None if there is none."""
        stale = time.time() - self.spec.stale_after_s
        self._fail_crashing(stale)
        self._release_ended(stale)
        # A running job with no worker was let go mid-training by one interrupted without failing it (Ctrl-C is
        # no Exception): its heartbeat is NULL, which no staleness test matches, so it is claimable as it is. One
        # given back with a heartbeat (its run folder busy: see process) waits until that goes stale.
        available = Job.status.in_((*CLAIMABLE, "running")) & (
            (Job.worker.is_(None) & (Job.heartbeat_at.is_(None) | (Job.heartbeat_at < stale)))
            | ((Job.heartbeat_at < stale) & (Job.attempts < self.spec.max_attempts)))
        with self.store.session() as s:
            candidates = select(Job.id).where(available).order_by(Job.created).limit(5)
            if self.store.dialect == "postgresql":
                candidates = candidates.with_for_update(skip_locked=True)
            for job_id in s.scalars(candidates).all():
                # Conditional: a second worker racing for the same row updates nothing.
                taken = s.execute(update(Job).where(Job.id == job_id, available)
                                  .values(worker=self.name, heartbeat_at=time.time(), attempts=Job.attempts + 1))
                if taken.rowcount == 1:
                    return str(job_id)
        return None

    def _fail_crashing(self, stale: float) -> None:
        """Fail the jobs whose workers died holding them `max_attempts` times, rather than take them over again."""
        dead = Job.status.in_((*CLAIMABLE, "running")) & Job.worker.is_not(None) & (Job.heartbeat_at < stale) \
            & (Job.attempts >= self.spec.max_attempts)
        with self.store.session() as s:
            doomed = select(Job).where(dead).order_by(Job.created).limit(5)  # the rest at the next claim
            if self.store.dialect == "postgresql":
                doomed = doomed.with_for_update(skip_locked=True)
            for job in s.scalars(doomed).all():
                last = job.worker
                # Conditional, as a claim is: a worker failing or claiming it at the same time changes nothing twice.
                done = s.execute(update(Job).where(Job.id == job.id, dead).values(
                    status="failed", finished_at=now(), estimated_finish=None, worker=None, heartbeat_at=None,
                    error={"code": "server_error", "param": None, "message":
                           f"Fine-tuning failed: {job.attempts} workers died while running this job (the last: {last}), "
                           "out of memory or killed. It is not taken over again: a job that ends its worker would end "
                           "every worker in turn (`max_attempts` in the jobs config sets how many may try)."}))
                if done.rowcount == 1:
                    s.refresh(job)
                    add_event(s, job, str(job.error["message"]), level="error")
                    for folder in job_copies(job):
                        shutil.rmtree(folder, ignore_errors=True)

    def _release_ended(self, stale: float) -> None:
        """Let go of the ended jobs a dead worker still holds, and remove their data copies. Its worker would have as it
        let go; cancelled within stale_after_s of its death (too soon for the cancel to see it dead), no claim ever
        touches an ended job, and a deleted upload's bytes stayed on disk for good."""
        orphaned = Job.status.in_(ENDED) & Job.worker.is_not(None) & (Job.heartbeat_at.is_(None) | (Job.heartbeat_at < stale))
        with self.store.session() as s:
            ended = select(Job).where(orphaned).order_by(Job.created).limit(5)  # the rest at the next claim
            if self.store.dialect == "postgresql":
                ended = ended.with_for_update(skip_locked=True)
            for job in s.scalars(ended).all():
                # Conditional, as a claim is: of two workers sweeping at once, one lets go and removes the copies.
                released = s.execute(update(Job).where(Job.id == job.id, orphaned)
                                     .values(worker=None, heartbeat_at=None, control=None))
                if released.rowcount == 1:  # removed before the commit: a crash in between leaves the job to sweep again
                    for folder in job_copies(job):
                        shutil.rmtree(folder, ignore_errors=True)

    def run(self, stop: threading.Event | None = None, once: bool = False) -> None:
        """Work until `stop` is set (or, with `once`, until no job is waiting)."""
        from tunesmith.models.catalog import check_base_models

        check_base_models(self.spec)  # a mistyped --base-model had failed each job naming it, as a server_error
        stop = self.stopping = stop or threading.Event()
        while not stop.is_set():
            job_id = self.claim()
            if job_id is None:
                if once:
                    return
                stop.wait(self.spec.poll_s)
                continue
            self.process(job_id)

    # -- one job -----------------------------------------------------------------------------------

    def process(self, job_id: str) -> None:
        beat = _Heartbeat(self, job_id)
        beat.start()
        busy = False
        try:
            with self.store.session() as s:
                job = s.get(Job, job_id)
                assert job is not None
                status, resumed = job.status, job.status == "running"
            if status == "validating_files":
                if not self._validate(job_id):
                    return
            if beat.stop_reason or self.stopping.is_set():
                return
            self._train(job_id, beat, resumed)
        except JobStopped:
            pass  # the status (cancelled / paused) was set by whoever asked
        except RunBusy:
            # Taken over from a worker that is stalled, not dead (stopped, swapping): it still holds the run folder
            # and lets go of it once it wakes and finds the job taken. Failing the job here had failed it for good.
            busy = True
        except Exception as err:  # noqa: BLE001 - any failure becomes the job's error, as OpenAI reports it
            self._fail(job_id, "server_error", f"Fine-tuning failed: {type(err).__name__}: {err}", None)
        finally:
            beat.stop()
            # Let go on purpose (finished, failed, stopped or interrupted): the attempts start over. Given back with its
            # run folder busy: claimable again once stale_after_s has passed, and this claim not counted as a death.
            let_go = dict(heartbeat_at=time.time(), attempts=Job.attempts - 1) if busy else dict(heartbeat_at=None, attempts=0)
            with self.store.session() as s:
                s.execute(update(Job).where(Job.id == job_id, Job.worker == self.name)
                          .values(worker=None, control=None, **let_go))
                job = s.get(Job, job_id)
                ended = job is not None and job.status not in ACTIVE and job.run_dir
            if ended:  # nothing trains on the job's data copies again: an upload deleted since no longer takes space
                for folder in job_copies(job):
                    shutil.rmtree(folder, ignore_errors=True)

    def _paths(self, job: Job) -> tuple[Path, Path | None]:
        """The job's training and validation files: its own copies once validation took them (_keep_files), else
        the uploads."""
        def path(file_id: str) -> Path:
            kept = kept_files(job) / file_id
            return kept if kept.is_file() else self.files_dir / file_id

        return path(job.training_file), path(job.validation_file) if job.validation_file else None

    def _keep_files(self, job: Job) -> None:
        """The job's own copy of each upload (a hard link: no extra space), taken before validation: what was
        validated is what trains, and deleting an upload afterwards (OpenAI allows it) leaves the job training."""
        folder = kept_files(job)
        for file_id in filter(None, (job.training_file, job.validation_file)):
            kept, upload = folder / file_id, self.files_dir / file_id
            if kept.is_file():
                continue
            folder.mkdir(parents=True, exist_ok=True)
            partial = kept.with_suffix(".part")
            partial.unlink(missing_ok=True)
            try:
                try:
                    os.link(upload, partial)
                except OSError:
                    if not upload.is_file():
                        raise
                    shutil.copyfile(upload, partial)  # another file system
            except FileNotFoundError:
                continue  # deleted before validation: validation fails the job on that file
            partial.replace(kept)

    def _validate(self, job_id: str) -> bool:
        from tunesmith.jobs.validate import validate_file
        from tunesmith.models.catalog import context_length, load_tokenizer
        from tunesmith.tasks.chat import set_chat_template

        with self.store.session() as s:
            job = s.get(Job, job_id)
            assert job is not None
            add_event(s, job, f"Validating training file: {job.training_file}"
                      + (f" and validation file: {job.validation_file}" if job.validation_file else ""))
            self._keep_files(job)
            train_path, valid_path = self._paths(job)
            method, base = job.method["type"], self._base(job)
            file_ids = {"training_file": job.training_file, "validation_file": job.validation_file}
        cfg = self._config(job_id)
        tokenizer = load_tokenizer(base)
        set_chat_template(tokenizer, None, base)
        budget = cfg.token_budget(context_length(tokenizer))
        for param, path, minimum in (("training_file", train_path, 10), ("validation_file", valid_path, 1)):
            if path is None:
                continue
            if not path.is_file():
                self._fail(job_id, *self._missing(param, str(file_ids[param]), path))
                return False
            check = validate_file(path, method, tokenizer=tokenizer, max_tokens=budget, min_examples=minimum)
            if not check.ok:
                error = check.job_error(param)
                self._fail(job_id, str(error["code"]), str(error["message"]), param)
                return False
            if param == "training_file":
                tokens = check.tokens
        with self.store.session() as s:
            job = locked_job(s, job_id)
            assert job is not None
            if job.status != "validating_files":  # cancelled or paused meanwhile
                return False
            job.status, job.trained_tokens = "queued", tokens  # per epoch until training says how many epochs
            add_event(s, job, "Files validated, moving job to queued state")
        return True

    def _missing(self, param: str, file_id: str, path: Path) -> tuple[str, str, str | None]:
        """The failure (code, message, param) for a job file with no bytes where this worker looks for them."""
        with self.store.session() as s:
            stored = s.get(StoredFile, file_id) is not None
        label = param.replace("_", " ")
        if not stored:  # deleted after the job was created: the caller's doing, not a server error
            return (f"invalid_{param}", f"The job failed due to an invalid {label}. The file {file_id} was deleted "
                                        "before it was validated", param)
        # The upload exists, just not here: this worker's TUNESMITH_HOME is not the server's (another machine, or a
        # different setting). Blaming the user's file had failed every job while the file was there to download.
        return ("server_error", f"Fine-tuning failed: the {label} {file_id} exists, but worker {self.name} finds no "
                                f"{path} (its TUNESMITH_HOME is {self.files_dir.parent}). Every worker must use the "
                                "server's TUNESMITH_HOME, the same path on a file system they share; fix the worker's "
                                "setting and create the job again.", None)

    def _base(self, job: Job) -> str:
        """The base model folder or packaged name (an alias resolved); an ft: model trains on from its run folder."""
        if not job.model.startswith("ft:"):
            return self.spec.base_model(job.model) or job.model
        from tunesmith.jobs.service import JobsService

        found = JobsService(self.store, self.spec).resolve_model(job.owner, job.model)
        recorded = trained_from(job)
        if found is None:
            # Deleted since this job validated: its weights stay on disk while the job needs them (delete_model).
            if recorded is not None and (recorded / MODEL_DIR).is_dir():
                return str(recorded)
            raise RuntimeError(f"the fine-tuned model {job.model} no longer exists")
        record = Path(str(job.run_dir)).parent / BASE_RECORD
        if recorded != found:
            record.parent.mkdir(parents=True, exist_ok=True)
            record.write_text(str(found), encoding="utf-8")
        return str(found)

    def _config(self, job_id: str) -> ProjectConfig:
        """The job as a tunesmith project: OpenAI's hyperparameters, LoRA (so the server shares the base)."""
        with self.store.session() as s:
            job = s.get(Job, job_id)
            assert job is not None
            method = job.method["type"]
            hyper = dict(job.method[method]["hyperparameters"])
            train_path, valid_path = self._paths(job)
            folder = Path(str(job.run_dir)).parent
            base = self._base(job)
            # OpenAI trains on the whole training file: without a validation file, 20% of it had been held out. The
            # Trainer still needs a validation split to track; a sample of the training lines serves, and their
            # losses are not reported as valid_* (OpenAI reports none without a validation file).
            monitor = valid_path or _training_sample(train_path, kept_files(job) / "training-sample.jsonl")  # goes with them
            sources: list[dict[str, Any]] = [{"path": str(train_path), "kind": "jsonl", "split": "train"},
                                             {"path": str(monitor), "kind": "jsonl", "split": "validation"}]
            raw: dict[str, Any] = {
                "name": job.id,
                "task": {"type": "chat" if method == "supervised" else "preference"},
                # OpenAI trains on the file as given: no deduplication; overlaps across splits are reported only.
                "data": {"sources": sources, "output_dir": str(folder / "dataset"),
                         "dedup": {"exact": False, "near": False}, "split": {"leakage": "report"}},
                "model": {"name": base},
                # keep: last: OpenAI's fine-tuned model is where training ended, not the checkpoint that scored best
                "train": {"output_dir": str(job.run_dir), "seed": job.seed, "early_stopping_patience": None, "keep": "last",
                          "save_total_limit": self.spec.checkpoints,
                          "hyperparameters": {k: hyper.get(k, "auto") for k in ("n_epochs", "batch_size", "learning_rate_multiplier")}},
                "eval": {"base_model": False},
            }
            if method == "dpo" and hyper.get("beta", "auto") != "auto":
                raw["train"]["dpo_beta"] = hyper["beta"]
        return parse_config(raw)

    def _train(self, job_id: str, beat: _Heartbeat, resumed: bool) -> None:
        from tunesmith.training import train

        cfg = self._config(job_id)
        run_dir = Path(str(cfg.train.output_dir))
        checkpoint = latest_checkpoint(run_dir) if resumed or run_dir.exists() else None
        with self.store.session() as s:
            job = locked_job(s, job_id)
            assert job is not None
            # Ownership too: stalled past stale_after_s between claim and here, this worker lost the job to another,
            # which trains it now. Setting it running again had deleted that worker's metrics events.
            if job.status not in ("queued", "running") or job.worker != self.name:
                return
            job.status = "running"
            start = int(checkpoint.name.split("-")[-1]) if checkpoint else 0
            # Taken over from a killed worker: the steps it logged after its last checkpoint are trained (and logged)
            # again from there, and were listed twice.
            for event in s.scalars(select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.type == "metrics")):
                if int((event.data or {}).get("step", 0)) > start:
                    s.delete(event)
            add_event(s, job, f"Fine-tuning job resumed from step {start}" if checkpoint
                      else "Fine-tuning job restarted: no checkpoint was saved yet" if resumed else "Fine-tuning job started")
            validated = job.validation_file is not None
        reporter = _reporter(self, job_id, beat, validated)
        if checkpoint is not None:
            train(cfg, resume=run_dir, callbacks=[reporter])
        else:
            train(cfg, overwrite=True, callbacks=[reporter])
        self._succeed(job_id, run_dir)

    # -- endings -----------------------------------------------------------------------------------

    def _succeed(self, job_id: str, run_dir: Path) -> None:
        with self.store.session() as s:
            job = locked_job(s, job_id)
            assert job is not None
            if job.status != "running" or job.worker != self.name:
                return  # cancelled or paused; or taken over while this worker stalled: the new one trains it still
            run = Run(run_dir)
            hyper = run.manifest.openai_hyperparameters or {}
            name = fine_tuned_name(job, self.spec)
            final = {k: run.manifest.metrics[k] for k in ("full_valid_loss", "full_valid_mean_token_accuracy")
                     if k in run.manifest.metrics and job.validation_file}  # OpenAI: full_valid_* on the last checkpoint
            for checkpoint in list(job.checkpoints):  # servable folders for the checkpoints the Trainer kept
                if checkpoint is job.checkpoints[-1]:
                    checkpoint.metrics = {**checkpoint.metrics, **final}
                source = run_dir / "checkpoints" / f"checkpoint-{checkpoint.step_number}"
                if source.is_dir():
                    checkpoint.fine_tuned_model_checkpoint = f"{name}:ckpt-step-{checkpoint.step_number}"
                    _checkpoint_run(run, source, Path(checkpoint.path))
                else:
                    s.delete(checkpoint)
            method = job.method["type"]
            if method == "dpo":  # "auto" resolved, as the other hyperparameters are: the beta DPO trained with
                hyper = {**hyper, "beta": run.config.train.dpo_beta}
            job.method = {**job.method, method: {"hyperparameters": {**job.method[method]["hyperparameters"], **hyper}}}
            job.trained_tokens = (job.trained_tokens or 0) * int(hyper.get("n_epochs", 1))
            job.result_files = [self._results_file(s, job, run_dir)]
            job.fine_tuned_model, job.status, job.finished_at, job.estimated_finish = name, "succeeded", now(), None
            add_event(s, job, f"New fine-tuned model created: {name}")
            add_event(s, job, "The job has successfully completed")
            registered, lineage = job.suffix or job.id, {"job": job.id, "fine_tuned_model": name,
                                                         "training_file": job.training_file}
            owner = job.owner
        # A registry version like any run (after the job's transaction: SQLite has one writer at a time).
        from tunesmith.registry.service import Registry

        try:
            Registry(self.store).add(run_dir, registered, lineage=lineage, owner=owner)
        except ConfigError as err:  # e.g. a suffix OpenAI allows but the registry's names do not ("my model")
            # The job succeeded and its model answers: a missing registry entry is a warning, not a failed job.
            with self.store.session() as s:
                job = s.get(Job, job_id)
                assert job is not None
                add_event(s, job, f"Not added to the model registry: {err}", level="warn")

    def _results_file(self, s: Any, job: Job, run_dir: Path) -> str:
        """OpenAI's result file: the step metrics as CSV, downloadable with files.content."""
        file_id = p.new_id(p.FILE_PREFIX)
        self.files_dir.mkdir(parents=True, exist_ok=True)
        source = run_dir / STEP_METRICS
        data = source.read_bytes() if source.is_file() else b"step,train_loss\n"
        header, *rows = list(csv.reader(io.StringIO(data.decode("utf-8")))) or [["step", "train_loss"]]
        # Without a validation file the Trainer watched a sample of the training lines: no valid_* to report.
        keep = [i for i, name in enumerate(header) if job.validation_file or "valid" not in name]
        # The steps the metrics events list, each with its train_loss (an evaluation without one joins no event).
        loss = header.index("train_loss") if "train_loss" in header else None
        rows = [row for row in rows if loss is not None and loss < len(row) and row[loss] != ""]
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerows([[row[i] for i in keep if i < len(row)] for row in [header, *rows]])
        data = out.getvalue().encode("utf-8")
        (self.files_dir / file_id).write_bytes(data)
        s.add(StoredFile(id=file_id, owner=job.owner, purpose=RESULTS_PURPOSE, filename=f"{job.id}-results.csv",
                         bytes=len(data), **stamps(), expires_at=None, status="processed",
                         sha256=hashlib.sha256(data).hexdigest()))
        return file_id

    def _fail(self, job_id: str, code: str, message: str, param: str | None) -> None:
        with self.store.session() as s:
            job = locked_job(s, job_id)
            # Only a job still under way fails: a cancelled or paused one was stopped on purpose, and a succeeded
            # one stays succeeded whatever goes wrong after it (its model already answers). Only its own: one taken
            # over while this worker stalled is another worker's to end.
            if job is None or job.status not in ("validating_files", "queued", "running") or job.worker != self.name:
                return
            job.status, job.finished_at, job.estimated_finish = "failed", now(), None
            job.error = {"code": code, "message": message, "param": param}
            add_event(s, job, message, level="error")


def _checkpoint_run(run: Run, source: Path, target: Path) -> None:
    """A checkpoint as a run folder of its own (run.json + model/), so it is served like the final model."""
    shutil.rmtree(target, ignore_errors=True)
    model = target / MODEL_DIR
    model.mkdir(parents=True)
    weights = ("adapter_model.safetensors", "adapter_config.json", "model.safetensors", "config.json", "generation_config.json")
    for name in weights:
        if (source / name).is_file():
            shutil.copy2(source / name, model / name)
    for item in run.model_dir.iterdir():  # tokenizer and chat template, as the final model has them
        if item.is_file() and not (model / item.name).exists() and not item.name.startswith(("adapter_model", "model.")):
            shutil.copy2(item, model / item.name)
    step = int(source.name.split("-")[-1])
    manifest = run.manifest.model_copy(update={"name": f"{run.manifest.name}-step-{step}", "merged": False})
    (target / RUN_MANIFEST).write_text(manifest.model_dump_json(indent=2), encoding="utf-8")
    shutil.copy2(run.path / RUN_CONFIG, target / RUN_CONFIG)


class _Heartbeat(threading.Thread):
    """Keeps the claim fresh and reads cancel/pause requests, off the training thread."""

    def __init__(self, worker: Worker, job_id: str) -> None:
        super().__init__(daemon=True, name=f"heartbeat-{job_id}")
        self.worker, self.job_id = worker, job_id
        self.stop_reason: str | None = None
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.worker.spec.heartbeat_s):
            try:
                self.beat()
            except Exception as err:  # noqa: BLE001 - retried at the next beat
                # A store hiccup (a lock held past the busy timeout, a dropped connection) must not end the beats:
                # training would go on unbeaten, and another worker would take the job over and run it twice.
                print(f"worker {self.worker.name}: heartbeat of {self.job_id} failed, retrying: "
                      f"{type(err).__name__}: {err}", flush=True)

    def beat(self) -> None:
        with self.worker.store.session() as s:
            job = s.get(Job, self.job_id)
            if job is None or job.worker != self.worker.name:
                self.stop_reason = "lost"  # another worker took it over (we were too slow): let it be
                return
            job.heartbeat_at = time.time()
            if job.control in ("cancel", "pause"):
                self.stop_reason = job.control
            elif job.status in ("cancelled", "paused"):
                self.stop_reason = "cancel" if job.status == "cancelled" else "pause"
            elif self.stop_reason == "pause":  # the pause was taken back before training stopped: it trains on
                self.stop_reason = None

    def stop(self) -> None:
        self._done.set()


def _training_sample(training: Path, out: Path, size: int = 256) -> Path:
    """Up to `size` lines spread over the training file: what the Trainer tracks when a job has no validation file."""
    if not training.is_file():  # deleted before validation, which fails the job on it
        return out
    lines = [line for line in training.read_bytes().splitlines() if line.strip()]  # bytes: validation judges them
    step = max(1, len(lines) // size)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(b"".join(line + b"\n" for line in lines[::step][:size]))
    return out


def _reporter(worker: Worker, job_id: str, beat: _Heartbeat, validated: bool = True) -> Any:
    """A TrainerCallback: step metrics and checkpoints as OpenAI's events, and a stop on cancel/pause. `validated`:
    the job has a validation file (without one, the losses on a sample of its training lines are not valid_*)."""
    from transformers import TrainerCallback

    names = {"loss": "train_loss", "mean_token_accuracy": "train_mean_token_accuracy"}
    if validated:
        names |= {"eval_loss": "valid_loss", "eval_mean_token_accuracy": "valid_mean_token_accuracy"}

    class Reporter(TrainerCallback):
        def __init__(self) -> None:
            self.started = time.time()
            self.first_step: int | None = None
            self.latest: dict[str, float] = {}
            self.pausing = False

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            # the clock and the step training starts from (0, or a resumed one): from the first log's step, the whole
            # time of the first ten steps was taken for one, and the first estimate was 9x too late
            self.started, self.first_step = time.time(), state.global_step

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
            logs = logs or {}
            if "full_valid_loss" in logs and not validated:
                return
            if "full_valid_loss" in logs:  # the closing pass over all of validation (TRL names its accuracy eval_*)
                metrics = {"full_valid_loss": float(logs["full_valid_loss"])}
                accuracy = logs.get("full_valid_mean_token_accuracy", logs.get("eval_mean_token_accuracy"))
                if accuracy is not None:
                    metrics["full_valid_mean_token_accuracy"] = float(accuracy)
            else:
                metrics = {names[k]: float(v) for k, v in logs.items() if k in names}
            if not metrics:
                return
            self.latest.update(metrics)
            step, total = state.global_step, state.max_steps
            self.first_step = step if self.first_step is None else self.first_step
            done = max(step - self.first_step, 1)
            finish = int(self.started + (time.time() - self.started) / done * (total - self.first_step)) if total else None
            with worker.store.session() as s:
                job = locked_job(s, job_id)
                # Paused, the job trains on until the worker sees it (a heartbeat, up to several steps): those steps are
                # in the results CSV and the checkpoints, so they get their events too (not the estimate: OpenAI's is
                # null unless running).
                pausing = job is not None and job.status == "paused" and job.control == "pause"
                if job is None or not (job.status == "running" or pausing) or job.worker != worker.name:
                    return  # cancelled or taken over since the last heartbeat: on_step_end stops next
                if not pausing:
                    job.estimated_finish = finish
                if "train_loss" in metrics:
                    data = {"step": step, "total_steps": total, **metrics}
                    add_event(s, job, _step_message(data), type="metrics", data=data)
                    return
                # An evaluation (valid_*, or full_valid_* after the last step): OpenAI has one metrics event per step, each
                # with its train_loss, so it joins its step's event, logged just before it (on_step_end logs every
                # evaluated step). Each log had been an event of its own, some without train_loss.
                event = s.scalar(select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.type == "metrics")
                                 .order_by(JobEvent.seq.desc()).limit(1))
                if event is not None and (event.data or {}).get("step") == step:
                    event.data = {**event.data, **metrics}  # a new dict: the JSON column sees the change
                    event.message = _step_message(event.data)

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if control.should_evaluate:  # the step's train loss is logged too, for its evaluation to join (on_log)
                control.should_log = True
            if beat.stop_reason in ("cancel", "lost"):
                raise JobStopped(beat.stop_reason)
            if (beat.stop_reason == "pause" or worker.stopping.is_set()) and not self.pausing:
                self.pausing = True
                control.should_save = True  # the checkpoint the job resumes from; on_save then stops

        def on_save(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            step = state.global_step
            with worker.store.session() as s:
                job = locked_job(s, job_id)
                if job is None or job.status not in ("running", "paused") or job.worker != worker.name:
                    raise JobStopped("cancel")  # cancelled (or taken over) since the last heartbeat
                name = f"{fine_tuned_name(job, worker.spec)}:ckpt-step-{step}"
                existing = s.scalar(select(JobCheckpoint).where(JobCheckpoint.job_id == job_id, JobCheckpoint.step_number == step))
                if existing is None:
                    s.add(JobCheckpoint(id=p.new_id(p.CHECKPOINT_PREFIX), job_id=job_id, created_at=now(), step_number=step,
                                        metrics={"step": float(step), **self.latest}, fine_tuned_model_checkpoint=name,
                                        path=str(Path(args.output_dir).parent.parent / "checkpoints" / f"step-{step}")))
                    add_event(s, job, f"Checkpoint created at step {step}")
                    s.flush()
                    # The Trainer keeps the newest `checkpoints` on disk (save_total_limit): the list had a row for every
                    # save, of a cancelled or failed job too (at success _succeed drops the rows without a folder).
                    for old in s.scalars(select(JobCheckpoint).where(JobCheckpoint.job_id == job_id)
                                         .order_by(JobCheckpoint.step_number.desc()).offset(worker.spec.checkpoints)):
                        s.delete(old)
            if self.pausing:
                raise JobStopped("pause" if beat.stop_reason == "pause" else "release")

    return Reporter()


def _step_message(data: dict[str, Any]) -> str:
    """A metrics event's message: "Step 3/12: train loss=1.2345, valid loss=1.3456", in OpenAI's order of the metrics
    whatever order the stored data has (PostgreSQL's JSON keeps its own)."""
    names = sorted((k for k in data if k not in ("step", "total_steps")), key=STEP_METRIC_ORDER.index)
    text = ", ".join(f"{k.replace('_', ' ')}={data[k]:.4f}" for k in names)
    return f"Step {data['step']}/{data['total_steps']}: {text}"
