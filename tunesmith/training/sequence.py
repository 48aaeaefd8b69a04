"""Classification and regression: a head on a pre-trained model, trained with the Hugging Face Trainer."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tunesmith.artifacts import MODEL_DIR, DatasetVersion, Run, RunManifest
from tunesmith.config import LOWER_IS_BETTER, SEQUENCE_METRICS, ProjectConfig, TaskType
from tunesmith.errors import ConfigError, DataError
from tunesmith.models.hardware import bf16_pad_multiple
from tunesmith.training.dataset import run_dataset
from tunesmith.training.encoder_attention import use_for_cpu_training
from tunesmith.training.run import (
    best_evaluation,
    check_dataset,
    common_arguments,
    count_and_report,
    finish_run,
    manifest_fields,
    run_trainer,
    save_model,
    schedule,
    standard_callbacks,
    start_run,
)


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

    from tunesmith.models.sequence import is_head_parameter

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


def train_sequence(cfg: ProjectConfig, *, dataset_dir: Path | None = None, resume: Path | None = None,
                   overwrite: bool = False, callbacks: Sequence[Any] = ()) -> Path:
    """Classification and regression: a head on a pre-trained model, with the Trainer."""
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    from tunesmith.models.catalog import context_length, model_config, open_tokenizer, resolve_model_dir, with_pad_token
    from tunesmith.models.sequence import load_for_sequence_task
    from tunesmith.tasks import sequence
    from tunesmith.training.methods import apply_method, freeze_token_embeddings

    task = cfg.task.type
    run_dir, checkpoint = start_run(cfg, resume, overwrite, dataset_dir)
    # The model folder's config and tokenizer first: a damaged one is refused before the dataset is prepared
    model_dir = resolve_model_dir(str(cfg.model.name))
    model_config(model_dir)
    _check_method(cfg, model_dir)
    tokenizer = with_pad_token(open_tokenizer(model_dir), model_dir)
    version = run_dataset(cfg, dataset_dir, run_dir, resume is not None)  # a resumed run's own, never prepared again
    check_labels(version)
    labels = version.manifest.labels
    max_length = cfg.token_budget(context_length(tokenizer))

    parent = _parent_run(cfg, labels, model_dir)
    train_rows = version.hf_dataset("train")
    scaling = None
    if task == TaskType.regression:  # a continued head keeps the units it was trained in
        fitted = parent.manifest.target_scaling if parent else None
        scaling = sequence.TargetScaling(**fitted) if fitted else sequence.TargetScaling.fit(np.asarray(train_rows["score"]))
    encode = sequence.encoder(task, tokenizer, max_length, len(labels or []), scaling)
    keep = {"input_ids", "attention_mask", "token_type_ids", "labels"}

    def encoded(split: str) -> Any:
        ds = train_rows if split == "train" else version.hf_dataset(split)
        ds = ds.map(encode, batched=True, desc=f"tokenizing {split}")
        return ds.remove_columns([c for c in ds.column_names if c not in keep])

    train_ds, val_ds = encoded("train"), encoded("validation")  # neither empty: ensure_dataset refused that, by name
    check_dataset(run_dir, version, checkpoint is not None or resume is not None)  # a refused dataset leaves no folder

    import torch

    torch.manual_seed(cfg.train.seed)  # the head's random init is part of the run
    if parent is None:
        model = load_for_sequence_task(model_dir, task, labels, pooling=cfg.model.pooling,
                                       attention_dropout=cfg.train.attention_dropout, hidden_dropout=cfg.train.hidden_dropout)
        use_for_cpu_training(model)
        model = apply_method(model, cfg.train, cfg.peft)
    else:
        model = _continued_model(parent, cfg)
    if cfg.train.method == "full" and not cfg.train.train_embeddings:
        freeze_token_embeddings(model)
    trainable, total = count_and_report(cfg, model)

    t = cfg.train
    plan = schedule(cfg, len(train_ds))
    metric = t.metric or SEQUENCE_METRICS[task.value][0]
    args = TrainingArguments(
        **common_arguments(cfg, run_dir, plan, len(train_ds)),
        metric_for_best_model=metric, greater_is_better=metric not in LOWER_IS_BETTER,
        train_sampling_strategy="random" if t.group_by_length is False else "group_by_length",
    )
    loss_func = None
    if t.class_weights == "balanced" and task == TaskType.single_label:
        ids = np.asarray(train_rows["label_id"])
        counts = np.bincount(ids, minlength=len(labels or []))
        loss_func = sequence.class_weight_loss(len(ids) / (len(counts) * np.maximum(counts, 1)))
    pad_multiple = bf16_pad_multiple(max_length, cfg.text_positions(context_length(tokenizer))) if args.bf16 else None
    # The heads take **kwargs, so the Trainer took their loss as already divided over the accumulated micro-batches
    # (num_items_in_batch) and left it whole: with grad_accum 4 the first loss read 2.77 for ln 2, and the gradient
    # norm was clipped at a quarter of the real one. Their loss is a plain mean: the Trainer divides it.
    (model.get_base_model() if hasattr(model, "get_base_model") else model).accepts_loss_kwargs = False
    trainer = _trainer_class(Trainer, t.seed, t.head_learning_rate)(
        model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds, processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer, pad_to_multiple_of=pad_multiple),
        compute_metrics=sequence.training_metrics(task, scaling),
        callbacks=standard_callbacks(cfg, callbacks), compute_loss_func=loss_func,
    )
    result = run_trainer(cfg, trainer, run_dir, checkpoint)
    final = best_evaluation(trainer)
    thresholds = None
    if task == TaskType.multi_label:
        pred = trainer.predict(val_ds)
        proba = sequence.sigmoid(pred.predictions)
        thresholds = sequence.tune_thresholds(proba, pred.label_ids)
    if not trainer.is_world_process_zero():
        return run_dir
    save_model(trainer, tokenizer, run_dir / MODEL_DIR)
    metrics = {k.removeprefix("eval_"): float(v) for k, v in final.items()
               if k.startswith("eval_") and isinstance(v, int | float)}
    if thresholds is not None:  # at the thresholds the run predicts with, not the 0.5 that chose the checkpoint
        metrics.update(sequence.multi_label_metrics(proba, pred.label_ids, thresholds))
    manifest = RunManifest(
        **manifest_fields(cfg, version, model_dir, trainable, total, trainer, result, plan),
        labels=labels, thresholds=thresholds, max_length=max_length, metrics=metrics,
        target_scaling={"mean": scaling.mean, "std": scaling.std} if scaling else None,
        parent_run=str(parent.path.resolve()) if parent else None,
    )
    return finish_run(run_dir, trainer, manifest, metrics)


def _check_method(cfg: ProjectConfig, model_dir: Path) -> None:
    """Refuse prompt tuning of a decoder's classifier: its head finds the last real token in input_ids, PEFT passes
    embeddings instead, and the head read the last position, padding for all but a batch's longest text, so a text's
    prediction depended on its batch. Left padding does not save it: the prompt then sits before the pads, and the
    positions between it and the text change with their count."""
    from tunesmith.models.sequence import pools_last_token

    if cfg.train.method == "prompt_tuning" and pools_last_token(model_dir, cfg.model.pooling):
        raise ConfigError(f"train.method: prompt_tuning cannot train a classifier on the decoder {cfg.model.name}: its "
                          "head classifies by the last real token, which prompt tuning hides from it, so it would read "
                          "padding and a text's prediction would depend on the batch it is in; use train.method lora "
                          "or ia3 (or full, head)")


def _parent_run(cfg: ProjectConfig, labels: list[str] | None, model_dir: Path) -> Run | None:
    """The run `train.init_from` continues, checked to fit: same task, labels, base model, pooling and method."""
    if cfg.train.init_from is None:
        return None
    parent = Run(cfg.train.init_from)
    m, where = parent.manifest, f"train.init_from {cfg.train.init_from}"
    exported = parent.exported
    if exported is not None:  # an ONNX graph trained nothing (raw OSError); a merged LoRA trained on as full weights
        source = exported.get("source_run")
        raise ConfigError(f"{where}: a `{exported['format']}` export, made for serving, not a run to train on (its "
                          "weights are converted, merged or quantised); continue the run it was exported from"
                          + (f" (train.init_from: {source})" if source else ""))
    problems = []
    if m.task != cfg.task.type.value:
        problems.append(f"it was trained for {m.task}, this config is {cfg.task.type.value}")
    if m.labels != labels:
        problems.append(f"its labels {m.labels} differ from the dataset's {labels}")
    if m.method != cfg.train.method:
        problems.append(f"it was trained with method {m.method}, this config says {cfg.train.method}")
    if m.adapter:  # the parent's adapter trains on as saved: other peft settings here would be ignored
        saved, given = parent.config.peft.model_dump(), cfg.peft.model_dump()
        changed = [f"peft.{k} {saved[k]!r} -> {given[k]!r}" for k in given if given[k] != saved.get(k)]
        if changed:
            problems.append(f"its adapter was made with other peft settings ({'; '.join(changed)}); remove them to "
                            "continue it as it is, or train a new adapter")
    # Full and head-only runs too: their weights would train on under this config's tokenizer
    if Path(m.base_model_path).resolve() != model_dir.resolve() and m.base_model != cfg.model.name:
        problems.append(f"its {'adapter sits on' if m.adapter else 'weights come from'} the base model "
                        f"{m.base_model_path}, this config's model is {model_dir}")
    else:  # the same base: its pooling is the head's (another one has other module names, and drops an adapter)
        from tunesmith.models.sequence import pooling_of

        asked, asks = parent.config.model.pooling, cfg.model.pooling
        was, wants = pooling_of(model_dir, asked), pooling_of(model_dir, asks)
        if was != wants:
            problems.append(f"its head pools '{was}' (model.pooling {asked!r}), this config's model.pooling {asks!r} "
                            f"pools '{wants}'; set model.pooling: {was} to continue it, or train a new model")
    if problems:
        raise ConfigError(f"{where}: cannot continue that run: " + "; ".join(problems))
    return parent


def _continued_model(parent: Run, cfg: ProjectConfig) -> Any:
    """The parent's trained weights, ready to train on: full weights as saved, or its adapter (trainable) on the base."""
    from tunesmith.models.loading import base_model_dir
    from tunesmith.models.sequence import load_for_sequence_task
    from tunesmith.training.fused_lora import fuse_lora_layers
    from tunesmith.training.methods import apply_method

    m = parent.manifest
    if not m.adapter:
        model = _trained_with_dropout(parent.model_dir, cfg.train.attention_dropout, cfg.train.hidden_dropout)
        use_for_cpu_training(model)
        return apply_method(model, cfg.train, cfg.peft) if cfg.train.method == "head" else model
    import warnings

    from peft import PeftModel

    base = load_for_sequence_task(base_model_dir(m), cfg.task.type, m.labels, pooling=cfg.model.pooling,
                                  attention_dropout=cfg.train.attention_dropout, hidden_dropout=cfg.train.hidden_dropout)
    use_for_cpu_training(base)
    # peft only warns when the adapter's weights find no layer, and training went on from a fresh adapter
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*missing adapter keys")
        try:
            model = PeftModel.from_pretrained(base, parent.model_dir, is_trainable=True)
        except UserWarning as err:
            raise DataError(f"train.init_from {cfg.train.init_from}: its adapter ({parent.model_dir}) does not fit the "
                            f"model this config builds: {str(err)[:300]}; train a new adapter") from None
    fuse_lora_layers(model)
    return model


def _trained_with_dropout(model_dir: Path, attention_dropout: float | None, hidden_dropout: float | None) -> Any:
    """A trained full or head run's model with this config's dropout, as `load_for_sequence_task` gives a fresh one
    (the saved config's values would otherwise train on). Dropout is read into modules when they are built, so the
    config is changed before loading. The head is chosen as `load_trained_sequence_model` does."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from tunesmith.models.sequence import ATTENTION_DROPOUT_KEYS, HIDDEN_DROPOUT_KEYS

    config = AutoConfig.from_pretrained(model_dir)
    for keys, value in ((ATTENTION_DROPOUT_KEYS, attention_dropout), (HIDDEN_DROPOUT_KEYS, hidden_dropout)):
        if value is not None:
            for key in keys:
                if hasattr(config, key):
                    setattr(config, key, value)
    if getattr(config, "tunesmith_pooling", None) == "mean":
        from tunesmith.models.heads import MeanPoolingForSequenceClassification

        return MeanPoolingForSequenceClassification.from_pretrained(model_dir, config=config, dtype=torch.float32)
    return AutoModelForSequenceClassification.from_pretrained(model_dir, config=config, dtype=torch.float32)
