"""What every training recipe shares: the run folder (refusing accidental overwrites, resuming only
an unchanged config), the Trainer's common arguments and callbacks, and the files a finished run
writes besides its model (artifacts.py describes them). The recipes are sequence.py and chat.py.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tunesmith import __version__
from tunesmith.artifacts import (
    CHECKPOINT_DONE,
    RUN_CONFIG,
    RUN_DATASET,
    RUN_MANIFEST,
    RUN_METRICS,
    RUN_TRAINED_ROWS,
    TRAINING_LOG,
    DatasetVersion,
    RunManifest,
    latest_checkpoint,
)
from tunesmith.config import ProjectConfig, config_diff
from tunesmith.errors import ConfigError, RunBusy


def run_inputs(cfg: ProjectConfig, dataset_dir: Path | None = None) -> list[tuple[str, Path]]:
    """(setting, path) for what training `cfg` reads from disk: --overwrite must never delete any of it (a --dataset
    prepared inside the run folder had been deleted with it)."""
    paths: list[tuple[str, Path | None]] = [("train.init_from", cfg.train.init_from),
                                            ("the dataset", dataset_dir or cfg.dataset_dir),
                                            ("data.annotate.corrections", cfg.data.annotate.corrections),
                                            ("data.collect_dir", cfg.data.collect_dir)]
    paths += [("data.sources", src.path) for src in cfg.data.sources]
    if cfg.model.name and Path(str(cfg.model.name)).exists():  # a local model folder, not a packaged name
        paths.append(("model.name", Path(str(cfg.model.name))))
    return [(what, Path(path)) for what, path in paths if path is not None]


def _failed_start(run_dir: Path) -> bool:
    """What a run that failed before its config.json leaves (a LoRA target the model lacks, a model that would not
    load, Ctrl-C while loading): its dataset.json and trained_rows.json and the Trainer's empty checkpoints/, nothing
    to resume or keep. Only tunesmith's own records count: a user's folder holding a dataset.json had been deleted."""
    names = {p.name for p in run_dir.iterdir()}
    checkpoints = run_dir / "checkpoints"
    return (bool(names) and names <= {"checkpoints", RUN_DATASET, RUN_TRAINED_ROWS}
            and (not checkpoints.is_dir() or not any(checkpoints.iterdir()))
            and _own_record(run_dir / RUN_DATASET, {"dataset", "fingerprint", "labels"})
            and _own_record(run_dir / RUN_TRAINED_ROWS, {"key", "keys"}))


def _own_record(path: Path, keys: set[str]) -> bool:
    """`path` is absent, or the JSON object check_dataset writes there (holding `keys`), not some other file."""
    if not path.exists():
        return True
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and keys <= record.keys()


def _is_run_folder(run_dir: Path) -> bool:
    """Something `tunesmith train` wrote: its config.json is a tunesmith config (a model folder has one too), or
    what a run that failed to start leaves."""
    if _failed_start(run_dir):
        return True
    try:
        saved = json.loads((run_dir / RUN_CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(saved, dict) and {"name", "task", "data", "model", "train"} <= saved.keys()


def check_run_dir(run_dir: Path, resuming: bool, overwrite: bool, reads: Sequence[tuple[str, Path]] = ()) -> None:
    """Never train over an earlier run by accident, and let --overwrite delete nothing but an earlier run:
    not a folder of other files, nor a run folder holding what this run reads (`reads`: run_inputs)."""
    if resuming or not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir} is a file; a run is a folder: set train.output_dir to another path")
    if not any(run_dir.iterdir()):
        return
    failed = _failed_start(run_dir)  # the fixed config just starts again: it was refused, --overwrite and --resume too
    if not failed and not overwrite:
        if not _is_run_folder(run_dir):  # a data folder named as train.output_dir: --overwrite would not take it either
            raise ConfigError(f"{run_dir}: train.output_dir is a folder of other files, not a tunesmith run; set "
                              "train.output_dir to a new or empty folder")
        raise ConfigError(f"{run_dir}: a run already exists there; resume it with `tunesmith train --resume {run_dir}`, "
                          "pass --overwrite, or set train.output_dir")
    # Checked before anything is deleted, a failed start's leftovers too: the folder may hold what this run reads
    here, cwd = run_dir.resolve(), Path.cwd().resolve()
    what = "starting again over a failed start" if failed else "--overwrite"
    if not _is_run_folder(run_dir) or cwd.is_relative_to(here):
        raise ConfigError(f"{run_dir}: {what} replaces only an earlier run's folder, and this is not a tunesmith "
                          f"run (no {RUN_CONFIG} of one) or holds the current directory; set train.output_dir to "
                          "another folder, or remove it yourself")
    inside = [f"{setting} {path}" for setting, path in reads if path.resolve().is_relative_to(here)]
    if inside:
        raise ConfigError(f"{run_dir}: {what} would delete what this run reads ({'; '.join(inside)}); "
                          "set train.output_dir to another folder")
    if failed:
        shutil.rmtree(run_dir)
        return
    # Set aside, not deleted: the new run's inputs are checked only after this (a mistyped --dataset or model name
    # had deleted the earlier run and trained nothing). Deleted once the new run starts training, put back otherwise.
    real = run_dir.resolve()
    aside = real.with_name(f".{real.name}.replaced-{os.getpid()}")
    shutil.rmtree(aside, ignore_errors=True)
    real.rename(aside)
    _replaced[real] = aside
    if run_dir.is_symlink():
        real.mkdir()  # the link stays valid for the new run


# Run folders --overwrite set aside (the run folder's real path -> the hidden sibling holding the earlier run) until
# the new run starts training; run_lock puts one back when the new run fails before.
_replaced: dict[Path, Path] = {}


def settle_replaced(run_dir: Path, keep_new: bool) -> None:
    """The earlier run --overwrite set aside for `run_dir`: deleted (`keep_new`: the new run started), or put back in
    place of what the refused new run left (its dataset.json, an empty checkpoints/)."""
    real = Path(run_dir).resolve()
    aside = _replaced.pop(real, None)
    if aside is None or not aside.exists():
        return
    if keep_new:
        shutil.rmtree(aside, ignore_errors=True)
        return
    if real.exists():
        shutil.rmtree(real)
    aside.rename(real)


def started(run_dir: Path) -> bool:
    """Did a run start training here (run_trainer writes its config.json first)?"""
    return (Path(run_dir) / RUN_CONFIG).is_file()


def _check_trackers(report_to: Sequence[str]) -> None:
    """Before anything loads: the Trainer refused a tracker that is not installed only once the model was loaded, as
    an internal error (tensorboard and mlflow come with the `tracking` extra, which `make` does not install)."""
    import importlib.util

    missing = [name for name in report_to if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(f"train.report_to: {', '.join(missing)} is not installed; install it with "
                          f"`pip install 'tunesmith[tracking]'` (or `pip install {' '.join(missing)}`), or leave it out")


def start_run(cfg: ProjectConfig, resume: Path | None, overwrite: bool, dataset_dir: Path | None = None
              ) -> tuple[Path, Path | None]:
    """The run folder, and the checkpoint to resume from; refuses a changed config or an accidental overwrite."""
    _check_trackers(cfg.train.report_to)
    run_dir = Path(resume or cfg.run_dir)
    checkpoint = None
    if resume is not None:
        saved_path = run_dir / RUN_CONFIG
        if not saved_path.exists():
            raise ConfigError(f"{run_dir}: nothing to resume (no config.json); start it with `tunesmith train CONFIG`")
        saved = json.loads(saved_path.read_text(encoding="utf-8"))
        changed = config_diff(saved, cfg.model_dump(mode="json"))
        if changed:
            raise ConfigError(f"{run_dir}: the config changed since this run started, so resuming would mix two runs:\n  "
                              + "\n  ".join(changed[:20]) + "\nResume without those changes, or start a new run.")
        checkpoint = latest_checkpoint(run_dir)
        if checkpoint is None and (run_dir / RUN_MANIFEST).is_file():  # it deleted run.json and trained from step 0
            raise ConfigError(f"{run_dir}: a finished run with no checkpoint left to resume from (a tuning trial's, or "
                              "removed); train it again as a new run, or with `tunesmith train CONFIG --overwrite`")
        if checkpoint is None and is_rank0():
            print(f"{run_dir}: no checkpoint was saved before it stopped; training from the start", flush=True)
    # Rank 0 decides, also under a torchrun or accelerate launched by hand (no tunesmith launcher checked first);
    # the other ranks leave the folder alone. After tunesmith's --nproc launcher checked (and with --overwrite
    # removed it), rank 0 finds no run here.
    if is_rank0():
        check_run_dir(run_dir, resume is not None, overwrite, run_inputs(cfg, dataset_dir))
    return run_dir, checkpoint


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """One training at a time per run folder: two started together both passed the "a run already exists" check
    (the folder fills only after loading) and wrote one checkpoints/, log and run.json, each reporting success.
    An flock beside the folder (--overwrite deletes the folder), let go when the process ends however it ends."""
    if not is_rank0():
        yield
        return
    here = run_dir.resolve()
    path = here.parent / f".{here.name}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunBusy(f"{run_dir}: another training is writing this run folder now; wait for it to end, or set "
                          "train.output_dir to another folder") from None
        try:
            yield
        except BaseException:
            # refused or interrupted before training started (run_trainer settles it then): the earlier run is back
            settle_replaced(run_dir, keep_new=False)
            raise
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def is_rank0() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def schedule(cfg: ProjectConfig, n_train: int, world: int | None = None) -> dict[str, Any]:
    """Epochs, batch size (per process and accumulation step) and learning rate: tunesmith's own settings, or
    OpenAI's form resolved for the data. `world`: the processes training (default WORLD_SIZE, as torchrun sets)."""
    t = cfg.train
    if t.hyperparameters is None:
        return {"epochs": t.epochs, "batch_size": t.batch_size, "learning_rate": t.lr(cfg.task.type)}
    epochs, batch, mult = t.hyperparameters.resolve(n_train)
    # OpenAI's batch_size is the examples per optimizer step, and the Trainer's batch is per process and per
    # accumulated micro-batch (one step = batch x grad_accum x processes): passed as it was, 2 processes took twice
    # the batch the run recorded. Split it, or refuse a set one: a remainder would train another batch than asked for.
    world = int(os.environ.get("WORLD_SIZE", "1")) if world is None else world
    share = world * t.grad_accum
    if batch % share and t.hyperparameters.batch_size == "auto":
        # tunesmith's choice: the next batch the processes split evenly (and "auto" learning rate scaled for it)
        fitted = t.hyperparameters.model_copy(update={"batch_size": -(-batch // share) * share})
        epochs, batch, mult = fitted.resolve(n_train)
    if batch % share:
        raise ConfigError(f"train.hyperparameters.batch_size {batch} (the examples per optimizer step) does not divide "
                          f"evenly among {world} process(es) x train.grad_accum {t.grad_accum}; set it to a multiple "
                          f"of {share}, or train with a process count (--nproc, train.nproc) and grad_accum that divide it")
    return {"epochs": float(epochs), "batch_size": batch // share, "learning_rate": t.lr(cfg.task.type, mult),
            "openai": {"n_epochs": epochs, "batch_size": batch, "learning_rate_multiplier": mult}}


def common_arguments(cfg: ProjectConfig, run_dir: Path, plan: dict[str, Any], n_train: int) -> dict[str, Any]:
    """TrainingArguments shared by every recipe: schedule, evaluation cadence, checkpoints, hardware."""
    import torch

    from tunesmith.models.hardware import native_bf16

    t = cfg.train
    world = int(os.environ.get("WORLD_SIZE", "1"))
    steps_per_epoch = max(1, math.ceil(n_train / (plan["batch_size"] * t.grad_accum * world)))
    eval_steps = max(1, steps_per_epoch // t.evals_per_epoch)
    if t.max_steps:
        eval_steps = min(eval_steps, max(1, t.max_steps // t.evals_per_epoch))
    cuda = torch.cuda.is_available()
    return dict(
        output_dir=str(run_dir / "checkpoints"),
        eval_strategy="steps", eval_steps=eval_steps, save_strategy="steps", save_steps=eval_steps,
        logging_strategy="steps", logging_steps=max(1, min(eval_steps, 10)),
        learning_rate=plan["learning_rate"], num_train_epochs=plan["epochs"], max_steps=t.max_steps or -1,
        per_device_train_batch_size=plan["batch_size"], per_device_eval_batch_size=plan["batch_size"] * 2,
        gradient_accumulation_steps=t.grad_accum, weight_decay=t.weight_decay, warmup_steps=t.warmup_ratio,
        lr_scheduler_type=t.lr_scheduler, seed=t.seed, data_seed=t.seed,
        bf16=native_bf16() if t.bf16 is None else t.bf16, activation_checkpointing=t.gradient_checkpointing,
        load_best_model_at_end=t.keep == "best", save_total_limit=t.save_total_limit, report_to=list(t.report_to) or "none",
        # Early stopping's count of evaluations without improvement is in each checkpoint; without restoring
        # it a resumed run starts counting afresh and trains past the step where the uninterrupted one stopped.
        restore_callback_states_from_checkpoint=True,
        use_cpu=not cuda, ddp_backend="gloo" if world > 1 and not cuda else None,
        fsdp=t.fsdp or "", deepspeed=str(t.deepspeed) if t.deepspeed else None,
        dataloader_num_workers=0, disable_tqdm=False,
    )


def standard_callbacks(cfg: ProjectConfig, extra: Sequence[Any] = ()) -> list[Any]:
    """Checkpoint completion markers, early stopping, then the caller's own (a job's progress reporter)."""
    from transformers import EarlyStoppingCallback, TrainerCallback

    class MarkComplete(TrainerCallback):
        """Trainer writes checkpoints in place; COMPLETE marks one as safe to resume from."""

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.is_world_process_zero:
                (Path(args.output_dir) / f"checkpoint-{state.global_step}" / CHECKPOINT_DONE).touch()

    class FindBestCheckpoint(TrainerCallback):
        """trainer_state.json names the best checkpoint by its path when it was saved: in a run folder moved since
        (or a relative train.output_dir resumed from another directory) the Trainer drops it, and a run resumed after
        its last checkpoint would keep its last weights as model/. The step it records finds it where it is now."""

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            step = state.best_global_step
            here = Path(args.output_dir) / f"checkpoint-{step}"
            if step and (state.best_model_checkpoint is None or not os.path.isdir(state.best_model_checkpoint)) \
                    and here.is_dir():
                state.best_model_checkpoint = str(here)

    callbacks: list[Any] = [MarkComplete(), FindBestCheckpoint()]
    if cfg.train.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.train.early_stopping_patience))
    return [*callbacks, *extra]


def check_dataset(run_dir: Path, version: Any, resuming: bool) -> None:
    """Record the dataset a run starts on; a resumed run must go on with the same one (prepared again from edited
    files, or another --dataset, it had trained on silently, or failed loading a head of another size)."""
    path = run_dir / RUN_DATASET
    # counts: the rows it trains on, for the model card (the folder prepared again counts other rows)
    mine = {"dataset": str(version.path.resolve()), "fingerprint": version.manifest.fingerprint,
            "labels": version.manifest.labels, "counts": version.manifest.counts}
    if resuming and path.is_file():
        started = json.loads(path.read_text(encoding="utf-8"))
        if started.get("fingerprint") != mine["fingerprint"]:
            raise ConfigError(f"{run_dir}: this run started on the dataset {started.get('dataset')} (fingerprint "
                              f"{str(started.get('fingerprint'))[:12]}), and {version.path} has fingerprint "
                              f"{mine['fingerprint'][:12]} (prepared again, or another --dataset), so resuming would mix "
                              "two runs; resume with the dataset it started on, or start a new run")
        return
    if is_rank0():
        run_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(mine, indent=2) + "\n", encoding="utf-8")
        record_trained_rows(run_dir, version)


def row_keys(table: Any) -> list[int]:
    """Each prepared row's key as data preparation's leakage check computes it (data/records.py): its cleaned text(s),
    case, spacing and invisible characters ignored, hashed."""
    import xxhash

    from tunesmith.data.clean import dedup_key

    def text(row: dict[str, Any]) -> str:
        if "messages" not in row:
            return dedup_key(row["text"])
        parts = [f"{m['role']}: {dedup_key(m['content'])}" for m in row["messages"]]
        if "chosen" in row:
            parts += [f"chosen: {dedup_key(row['chosen'])}", f"rejected: {dedup_key(row['rejected'])}"]
        return "\n".join(parts)

    columns = [c for c in ("text", "messages", "chosen", "rejected") if c in table.column_names]
    return [xxhash.xxh3_64_intdigest(text(row).encode("utf-8", "surrogatepass"))
            for row in table.select(columns).to_pylist()]


def record_trained_rows(run_dir: Path, version: Any) -> None:
    """The keys of the training split's rows: `evaluate` on the dataset prepared again (rows added, splits drawn anew)
    leaves out the test rows this run trained on."""
    keys = sorted(set(row_keys(version.table("train"))))
    (run_dir / RUN_TRAINED_ROWS).write_text(json.dumps({"key": "xxh3_64 of the leakage check's text key", "keys": keys}),
                                            encoding="utf-8")


def _stopped_for_good(checkpoint: Path, patience: int | None) -> bool:
    """Had the run stopped at this checkpoint (early stopping, or its last step)?"""
    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    kept = state.get("stateful_callbacks") or {}
    control = (kept.get("TrainerControl") or {}).get("args") or {}
    waited = ((kept.get("EarlyStoppingCallback") or {}).get("attributes") or {}).get("early_stopping_patience_counter", 0)
    return bool(state.get("global_step")) and bool(control.get("should_training_stop") or (patience and waited >= patience))


def write_config(cfg: ProjectConfig, run_dir: Path) -> None:
    if is_rank0():
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / RUN_CONFIG).write_text(cfg.model_dump_json(indent=2) + "\n", encoding="utf-8")


def run_trainer(cfg: ProjectConfig, trainer: Any, run_dir: Path, checkpoint: Path | None) -> Any:
    """Record the config, then train (from `checkpoint` when resuming).

    Every process gets the result: under torchrun, what follows (evaluate, predict) is collective, so all
    ranks must take part before rank 0 alone writes the run folder."""
    from transformers.utils import logging as hf_logging

    if is_rank0():
        settle_replaced(run_dir, keep_new=True)  # set up: the new run replaces the earlier one from here on
    write_config(cfg, run_dir)
    if is_rank0():
        # A finished run trained again (resumed) rewrites model/: until finish_run writes run.json anew, the
        # folder must not look finished, or a crash mid-save would leave half-written weights that load as a run.
        (run_dir / RUN_MANIFEST).unlink(missing_ok=True)
    if checkpoint is not None and _stopped_for_good(checkpoint, cfg.train.early_stopping_patience):
        # It had stopped there for good (early stopping, or its last step; killed before run.json was written): the
        # Trainer resumed trained on to the next evaluation, and kept another model than the uninterrupted run.
        # Its state and its kept model are taken as they were instead, and the run finishes from there.
        if is_rank0():
            print(f"{checkpoint.name}: the run had stopped there; finishing it", flush=True)
        return _finish_from(trainer, checkpoint)
    if checkpoint is not None and is_rank0():
        print(f"resuming from {checkpoint.name}", flush=True)
    hf_logging.set_verbosity_warning()
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    return result


def _finish_from(trainer: Any, checkpoint: Path) -> Any:
    """The trainer as training left it at `checkpoint`: its state (log, best step) and the model it keeps; what
    `train` returns, with the summary `train` logs last rebuilt from the checkpoint's log."""
    import time

    from transformers.trainer_callback import TrainerState
    from transformers.trainer_utils import TrainOutput

    began = time.perf_counter()
    trainer._load_from_checkpoint(str(checkpoint))
    trainer.state = TrainerState.load_from_json(str(checkpoint / "trainer_state.json"))
    best = trainer.state.best_global_step
    here = checkpoint.parent / f"checkpoint-{best}"
    if trainer.args.load_best_model_at_end and best and here.is_dir():
        trainer.state.best_model_checkpoint = str(here)  # where it is now (the run may have moved)
        trainer._load_best_model()
    return TrainOutput(trainer.state.global_step, *_summary(trainer.state, time.perf_counter() - began))


def _summary(state: Any, measured_s: float) -> tuple[float, dict[str, Any]]:
    """(training loss, metrics) of the summary line `train` logs last, appended to `state`'s log: the process that
    trained died before it (killed after its last checkpoint), and run.json had recorded train_runtime_s 0.0. The
    steps' own time died with it: the runtime is what the log still knows (its evaluations') and this finishing."""
    losses = [e["loss"] for e in state.log_history if "loss" in e]
    known = sum(float(e.get("eval_runtime", 0.0)) for e in state.log_history)
    metrics: dict[str, Any] = {"train_runtime": round(known + measured_s, 4),
                               "train_loss": sum(losses) / len(losses) if losses else float("nan"),
                               "total_flos": float(state.total_flos or 0.0)}
    state.log_history.append({**metrics, "epoch": state.epoch, "step": state.global_step})
    return metrics["train_loss"], metrics


def best_evaluation(trainer: Any) -> dict[str, Any]:
    """The validation metrics of the kept model: the best checkpoint's are already in the log; the last weights'
    (train.keep: last) are there when training ended on an evaluation, else evaluated now."""
    evals = [e for e in trainer.state.log_history if "eval_loss" in e]
    if not trainer.args.load_best_model_at_end:
        last = evals[-1] if evals and evals[-1].get("step") == trainer.state.global_step else None
        return last or trainer.evaluate()
    best_step = trainer.state.best_global_step
    return next((e for e in evals if e.get("step") == best_step), evals[-1] if evals else trainer.evaluate())


def finish_run(run_dir: Path, trainer: Any, manifest: RunManifest, validation: dict[str, float]) -> Path:
    """Training log, metrics, run.json and the model card: what every run folder holds besides model/."""
    with (run_dir / TRAINING_LOG).open("w", encoding="utf-8") as f:
        for entry in trainer.state.log_history:
            f.write(json.dumps(entry) + "\n")
    # A diverged run (a learning rate far too high) has NaN weights: no run.json, so nothing serves or exports it,
    # and an error that says what to change (its manifest, written, would not even load back).
    diverged = sorted({k for k, v in {**validation, **manifest.metrics, **manifest.best_metric}.items()
                       if isinstance(v, float) and not math.isfinite(v)})
    if diverged:
        raise ConfigError(f"training diverged: {', '.join(diverged)} became NaN or infinite, so {run_dir} holds no "
                          f"usable model; lower train.learning_rate (this run used {manifest.hyperparameters.get('learning_rate')}) "
                          f"and train again (its log: {run_dir / TRAINING_LOG})")
    (run_dir / RUN_METRICS).write_text(json.dumps({"validation": validation}, indent=2) + "\n", encoding="utf-8")
    # run.json is what makes the folder a finished run (is_run): written whole or not at all, so a crash or a
    # full disk mid-write never leaves a truncated one that looks finished.
    partial = run_dir / f".{RUN_MANIFEST}.partial"
    partial.write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")
    os.replace(partial, run_dir / RUN_MANIFEST)
    from tunesmith.model_card import write_model_card

    write_model_card(run_dir)
    return run_dir


def manifest_fields(cfg: ProjectConfig, version: DatasetVersion, model_dir: Path, trainable: int, total: int,
                    trainer: Any, result: Any, plan: dict[str, Any]) -> dict[str, Any]:
    """RunManifest fields every recipe fills the same way."""
    return dict(
        name=cfg.name, task=cfg.task.type.value, description=cfg.task.description,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"), tunesmith_version=__version__,
        base_model=str(cfg.model.name), base_model_path=str(model_dir), method=cfg.train.method,
        adapter=cfg.train.method not in ("full", "head"), dataset=str(version.path.resolve()),
        dataset_fingerprint=version.manifest.fingerprint, parameters={"trainable": trainable, "total": total},
        train_runtime_s=round(float(result.metrics.get("train_runtime", 0.0)), 1),
        processes=int(os.environ.get("WORLD_SIZE", "1")),
        # epochs as configured; train.max_steps overrides them, so the epochs and steps trained are recorded too
        hyperparameters={**{k: v for k, v in plan.items() if k != "openai"}, **numerics(trainer),
                         "epochs_trained": round(float(trainer.state.epoch or 0.0), 2),
                         "steps": int(trainer.state.global_step)},
        openai_hyperparameters=plan.get("openai"),
        best_metric={trainer.args.metric_for_best_model: float(trainer.state.best_metric)}
        if trainer.state.best_metric is not None else {},
    )


def numerics(trainer: Any) -> dict[str, Any]:
    """What changed the arithmetic of training, for the model card: bf16 autocast (matrix products in
    bfloat16, weights kept and saved in fp32) and a frozen token table."""
    model = trainer.model
    table = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    out: dict[str, Any] = {"precision": "bf16 autocast" if trainer.args.bf16 else "fp32"}
    if table is not None and hasattr(table, "weight"):
        out["token_embeddings"] = "trained" if table.weight.requires_grad else "frozen"
    from tunesmith.models.sequence import ATTENTION_DROPOUT_KEYS, HIDDEN_DROPOUT_KEYS

    config = getattr(model, "config", None)
    for name, keys in (("attention_dropout", ATTENTION_DROPOUT_KEYS), ("hidden_dropout", HIDDEN_DROPOUT_KEYS)):
        key = next((k for k in keys if hasattr(config, k)), None)
        if key is not None:
            out[name] = float(getattr(config, key) or 0.0)
    return out


def save_model(trainer: Any, tokenizer: Any, folder: Path) -> None:
    """model/: safetensors weights (or the adapter) and the tokenizer. The Trainer's training_args.bin is a
    pickle and is dropped: the run's config.json holds the settings."""
    trainer.save_model(str(folder))
    (folder / "training_args.bin").unlink(missing_ok=True)
    tokenizer.save_pretrained(folder)


def count_and_report(cfg: ProjectConfig, model: Any) -> tuple[int, int]:
    """(trainable, total) parameters, printed once (rank 0) so a wrong method shows before training."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    if is_rank0():
        print(f"model {cfg.model.name}: {total:,} parameters, {trainable:,} trainable ({100 * trainable / total:.2f}%) "
              f"with method '{cfg.train.method}'", flush=True)
    return trainable, total
