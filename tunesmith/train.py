"""`tunesmith train`: a prepared dataset + a base model -> a run folder (see artifacts.py).

The Hugging Face Trainer does the work; this module turns the typed config into its arguments,
checks everything that would waste hours if wrong before the first step, makes checkpoints safe
to resume from, and writes the self-describing run folder.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from tunesmith import __version__
from tunesmith.artifacts import (
    CHECKPOINT_DONE,
    RUN_MANIFEST,
    DatasetVersion,
    RunManifest,
    latest_checkpoint,
)
from tunesmith.config import GENERATIVE_TASKS, ProjectConfig, TaskType
from tunesmith.errors import ConfigError, DataError

MAX_LENGTH_CAP = 512  # default truncation when the config leaves it open: covers typical reviews/tickets


def config_diff(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    keys = sorted(set(a) | set(b))
    out = []
    for k in keys:
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += config_diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: {va!r} -> {vb!r}")
    return out


def ensure_dataset(cfg: ProjectConfig, dataset_dir: Path | None = None) -> DatasetVersion:
    """The dataset this config trains on; prepared (again) when missing or prepared with other settings."""
    from tunesmith.data.prepare import prepare

    path = Path(dataset_dir or cfg.dataset_dir)
    if dataset_dir is not None:
        version = DatasetVersion(path)
    elif (path / "manifest.json").exists():
        version = DatasetVersion(path)
        saved = version.manifest.config
        now = cfg.model_dump(mode="json")
        if config_diff({"task": saved["task"], "data": saved["data"]}, {"task": now["task"], "data": now["data"]}):
            version = prepare(cfg, path)
    else:
        version = prepare(cfg, path)
    if version.manifest.task != cfg.task.type.value:
        raise ConfigError(f"dataset {path} was prepared for task {version.manifest.task}, "
                          f"but the config asks for {cfg.task.type.value}")
    return version


def check_labels(version: DatasetVersion) -> None:
    """A class in validation/test that training never saw cannot be predicted: stop before training."""
    task = TaskType(version.manifest.task)
    if task not in (TaskType.single_label, TaskType.multi_label):
        return
    column = "labels" if task == TaskType.multi_label else "label"

    def seen(split: str) -> set[str]:
        values = version.table(split).column(column).to_pylist()
        return {x for v in values for x in v} if column == "labels" else set(values)

    train = seen("train")
    if len(train) < 2:
        raise DataError(f"{version.path}: the training split has only the class(es) {sorted(train)}; "
                        "a classifier needs at least two")
    for split in ("validation", "test"):
        unseen = sorted(seen(split) - train)
        if unseen:
            raise DataError(f"{version.path}: {split} has label(s) {unseen} that the training split never has; "
                            "add training examples, merge the class with data.annotate.label_map, or drop it")


def _trainer_class(base: Any, seed: int, head_lr: float | None) -> Any:
    """The Trainer with two changes.

    - A length-grouped sampler whose shuffle depends only on (seed, epoch): transformers' own draws
      from the global RNG, so a run resumed mid-epoch saw other batches than the uninterrupted run.
    - Optionally its own learning rate for the freshly initialised head, so it learns as fast as the
      pre-trained body can follow (the idea of linear-probe-then-fine-tune, in one run).
    """
    import torch
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from tunesmith.modeling import is_head_parameter

    class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
        def __init__(self, original: LengthGroupedSampler) -> None:
            self.__dict__.update(original.__dict__)
            self.set_epoch(0)

        def set_epoch(self, epoch: int) -> None:
            self.generator = torch.Generator().manual_seed(seed + epoch)

    class TunesmithTrainer(base):  # type: ignore[misc, valid-type]
        def _get_train_sampler(self, train_dataset: Any = None) -> Any:
            sampler = super()._get_train_sampler(train_dataset)
            return EpochSeededLengthGroupedSampler(sampler) if isinstance(sampler, LengthGroupedSampler) else sampler

        def create_optimizer(self, model: Any = None) -> Any:
            fresh = self.optimizer is None
            optimizer = super().create_optimizer(model)
            if fresh and head_lr:
                model = self.model if model is None else model
                head = {id(p) for n, p in model.named_parameters() if is_head_parameter(n)}
                groups = []
                for group in optimizer.param_groups:
                    mine = [p for p in group["params"] if id(p) in head]
                    group["params"] = [p for p in group["params"] if id(p) not in head]
                    if mine:
                        groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": mine, "lr": head_lr})
                optimizer.param_groups = [g for g in optimizer.param_groups if g["params"]]
                for group in groups:
                    optimizer.add_param_group(group)
            return optimizer

    return TunesmithTrainer


def check_run_dir(run_dir: Path, resuming: bool, overwrite: bool) -> None:
    """Never train over an earlier run by accident."""
    if resuming or not run_dir.exists() or not any(run_dir.iterdir()):
        return
    if not overwrite:
        raise ConfigError(f"{run_dir}: a run already exists there; resume it with `tunesmith train --resume {run_dir}`, "
                          "pass --overwrite, or set train.output_dir")
    shutil.rmtree(run_dir)


def start_run(cfg: ProjectConfig, resume: Path | None, overwrite: bool) -> tuple[Path, Path | None]:
    """The run folder, and the checkpoint to resume from; refuses a changed config or an accidental overwrite."""
    run_dir = Path(resume or cfg.run_dir)
    checkpoint = None
    if resume is not None:
        saved_path = run_dir / "config.json"
        if not saved_path.exists():
            raise ConfigError(f"{run_dir}: nothing to resume (no config.json); start it with `tunesmith train CONFIG`")
        saved = json.loads(saved_path.read_text(encoding="utf-8"))
        changed = config_diff(saved, cfg.model_dump(mode="json"))
        if changed:
            raise ConfigError(f"{run_dir}: the config changed since this run started, so resuming would mix two runs:\n  "
                              + "\n  ".join(changed[:20]) + "\nResume without those changes, or start a new run.")
        checkpoint = latest_checkpoint(run_dir)
    if "LOCAL_RANK" not in os.environ:  # under torchrun the launcher already checked
        check_run_dir(run_dir, resume is not None, overwrite)
    return run_dir, checkpoint


def is_rank0() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def schedule(cfg: ProjectConfig, n_train: int) -> dict[str, Any]:
    """Epochs, batch size and learning rate: tunesmith's own settings, or OpenAI's form resolved for the data."""
    t = cfg.train
    if t.hyperparameters is None:
        return {"epochs": t.epochs, "batch_size": t.batch_size, "learning_rate": t.lr(cfg.task.type)}
    epochs, batch, mult = t.hyperparameters.resolve(n_train)
    return {"epochs": float(epochs), "batch_size": batch, "learning_rate": t.lr(cfg.task.type, mult),
            "openai": {"n_epochs": epochs, "batch_size": batch, "learning_rate_multiplier": mult}}


def common_arguments(cfg: ProjectConfig, run_dir: Path, plan: dict[str, Any], n_train: int) -> dict[str, Any]:
    """TrainingArguments shared by every recipe: schedule, evaluation cadence, checkpoints, hardware."""
    import torch

    from tunesmith.modeling import native_bf16

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
        load_best_model_at_end=True, save_total_limit=t.save_total_limit, report_to=list(t.report_to) or "none",
        use_cpu=not cuda, ddp_backend="gloo" if world > 1 and not cuda else None,
        fsdp=t.fsdp or "", deepspeed=str(t.deepspeed) if t.deepspeed else None,
        dataloader_num_workers=0, disable_tqdm=False,
    )


def standard_callbacks(cfg: ProjectConfig) -> list[Any]:
    from transformers import EarlyStoppingCallback, TrainerCallback

    class MarkComplete(TrainerCallback):
        """Trainer writes checkpoints in place; COMPLETE marks one as safe to resume from."""

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.is_world_process_zero:
                (Path(args.output_dir) / f"checkpoint-{state.global_step}" / CHECKPOINT_DONE).touch()

    callbacks: list[Any] = [MarkComplete()]
    if cfg.train.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.train.early_stopping_patience))
    return callbacks


def write_config(cfg: ProjectConfig, run_dir: Path) -> None:
    if is_rank0():
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(cfg.model_dump_json(indent=2) + "\n", encoding="utf-8")


def run_trainer(cfg: ProjectConfig, trainer: Any, run_dir: Path, checkpoint: Path | None) -> Any:
    """Record the config, then train (from `checkpoint` when resuming).

    Every process gets the result: under torchrun, what follows (evaluate, predict) is collective, so all
    ranks must take part before rank 0 alone writes the run folder."""
    from transformers.utils import logging as hf_logging

    write_config(cfg, run_dir)
    if checkpoint is not None and is_rank0():
        print(f"resuming from {checkpoint.name}", flush=True)
    hf_logging.set_verbosity_warning()
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    return result


def best_evaluation(trainer: Any) -> dict[str, Any]:
    """The kept model is the best checkpoint, and its validation metrics are already in the log."""
    evals = [e for e in trainer.state.log_history if "eval_loss" in e]
    best_step = trainer.state.best_global_step
    return next((e for e in evals if e.get("step") == best_step), evals[-1] if evals else trainer.evaluate())


def finish_run(run_dir: Path, trainer: Any, manifest: RunManifest, validation: dict[str, float]) -> Path:
    """Training log, metrics, run.json and the model card: what every run folder holds besides model/."""
    with (run_dir / "training_log.jsonl").open("w", encoding="utf-8") as f:
        for entry in trainer.state.log_history:
            f.write(json.dumps(entry) + "\n")
    (run_dir / "metrics.json").write_text(json.dumps({"validation": validation}, indent=2) + "\n", encoding="utf-8")
    (run_dir / RUN_MANIFEST).write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")
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
        hyperparameters={k: v for k, v in plan.items() if k != "openai"}, openai_hyperparameters=plan.get("openai"),
        best_metric={trainer.args.metric_for_best_model: float(trainer.state.best_metric)}
        if trainer.state.best_metric is not None else {},
    )


def train(cfg: ProjectConfig, *, dataset_dir: Path | None = None, resume: Path | None = None,
          overwrite: bool = False) -> Path:
    """Train the config's task into a run folder (chat and preference tasks: see train_chat.py)."""
    if cfg.task.type in GENERATIVE_TASKS:
        from tunesmith.train_chat import train_chat

        return train_chat(cfg, dataset_dir=dataset_dir, resume=resume, overwrite=overwrite)
    return train_sequence(cfg, dataset_dir=dataset_dir, resume=resume, overwrite=overwrite)


def train_sequence(cfg: ProjectConfig, *, dataset_dir: Path | None = None, resume: Path | None = None,
                   overwrite: bool = False) -> Path:
    """Classification and regression: a head on a pre-trained model, with the Trainer."""
    from transformers import AutoTokenizer, DataCollatorWithPadding, Trainer, TrainingArguments

    from tunesmith.catalog import context_length, resolve_model_dir
    from tunesmith.modeling import apply_method, count_parameters, load_for_sequence_task
    from tunesmith.tasks import sequence

    task = cfg.task.type
    run_dir, checkpoint = start_run(cfg, resume, overwrite)
    rank0 = is_rank0()
    version = ensure_dataset(cfg, dataset_dir)
    check_labels(version)
    labels = version.manifest.labels
    model_dir = resolve_model_dir(str(cfg.model.name))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:  # causal LMs ship without one; padding is masked anyway
        tokenizer.pad_token = tokenizer.eos_token
    max_length = cfg.model.max_length or min(context_length(tokenizer) or MAX_LENGTH_CAP, MAX_LENGTH_CAP)

    train_rows = version.hf_dataset("train")
    scaling = sequence.TargetScaling.fit(np.asarray(train_rows["score"])) if task == TaskType.regression else None
    encode = sequence.encoder(task, tokenizer, max_length, len(labels or []), scaling)
    keep = {"input_ids", "attention_mask", "token_type_ids", "labels"}

    def encoded(split: str) -> Any:
        ds = train_rows if split == "train" else version.hf_dataset(split)
        ds = ds.map(encode, batched=True, desc=f"tokenizing {split}")
        return ds.remove_columns([c for c in ds.column_names if c not in keep])

    train_ds, val_ds = encoded("train"), encoded("validation")
    if len(train_ds) == 0 or len(val_ds) == 0:
        raise DataError(f"{version.path}: training needs rows in both train ({len(train_ds)}) and validation ({len(val_ds)})")

    import torch

    torch.manual_seed(cfg.train.seed)  # the head's random init is part of the run
    model = load_for_sequence_task(model_dir, task, labels, pooling=cfg.model.pooling)
    model = apply_method(model, cfg.train, cfg.peft)
    trainable, total = count_parameters(model)
    if rank0:
        print(f"model {cfg.model.name}: {total:,} parameters, {trainable:,} trainable ({100 * trainable / total:.2f}%) "
              f"with method '{cfg.train.method}'", flush=True)

    t = cfg.train
    plan = schedule(cfg, len(train_ds))
    metric, greater = (t.metric, t.metric not in ("rmse", "mae", "mse", "loss")) if t.metric else sequence.default_metric(task)
    args = TrainingArguments(
        **common_arguments(cfg, run_dir, plan, len(train_ds)),
        metric_for_best_model=metric, greater_is_better=greater,
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
    )
    loss_func = None
    if t.class_weights == "balanced" and task == TaskType.single_label:
        ids = np.asarray(train_rows["label_id"])
        counts = np.bincount(ids, minlength=len(labels or []))
        loss_func = sequence.class_weight_loss(len(ids) / (len(counts) * np.maximum(counts, 1)))
    trainer = _trainer_class(Trainer, t.seed, t.head_learning_rate)(
        model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds, processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=sequence.training_metrics(task, scaling),
        callbacks=standard_callbacks(cfg), compute_loss_func=loss_func,
    )
    result = run_trainer(cfg, trainer, run_dir, checkpoint)
    final = best_evaluation(trainer)
    thresholds = None
    if task == TaskType.multi_label:
        pred = trainer.predict(val_ds)
        thresholds = sequence.tune_thresholds(sequence.sigmoid(pred.predictions), pred.label_ids)
    if not trainer.is_world_process_zero():
        return run_dir
    trainer.save_model(str(run_dir / "model"))
    (run_dir / "model" / "training_args.bin").unlink(missing_ok=True)  # a pickle; the config lives in config.json
    tokenizer.save_pretrained(run_dir / "model")
    metrics = {k.removeprefix("eval_"): float(v) for k, v in final.items()
               if k.startswith("eval_") and isinstance(v, int | float)}
    manifest = RunManifest(
        **manifest_fields(cfg, version, model_dir, trainable, total, trainer, result, plan),
        labels=labels, thresholds=thresholds, max_length=max_length, metrics=metrics,
        target_scaling={"mean": scaling.mean, "std": scaling.std} if scaling else None,
    )
    return finish_run(run_dir, trainer, manifest, metrics)
