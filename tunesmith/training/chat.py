"""Chat fine-tuning of causal LMs with TRL: supervised (SFT) on conversations, DPO on preferences.

SFT: conversations are rendered with the chat template and tokenized here (tasks/chat.py), with
loss only on assistant answers whose `weight` is not 0, their end-of-turn token included, and
handed to TRL's SFTTrainer pre-tokenized. With `train.packing` the conversations of a batch are
concatenated into one row without padding; position ids restart at each conversation, from which
transformers builds a block-diagonal attention mask, so examples never see each other (on a CPU each
conversation's attention is computed on its own: segment_attention.py). The loss
runs the LM head only on the trained positions, a chunk at a time (lm_loss.py).

DPO: TRL's DPOTrainer on prompt / chosen / rejected, from the base model or from an SFT run's
folder (its adapter merged into the weights first, so the SFT model is also the DPO reference).

Both write the same run folder as the classification path (artifacts.py), plus OpenAI's step
metrics in step_metrics.csv.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tunesmith.artifacts import ADAPTER_DIR, MODEL_DIR, STEP_METRICS, DatasetVersion, Run, RunManifest, is_run
from tunesmith.config import ProjectConfig, TaskType
from tunesmith.errors import ConfigError, DataError
from tunesmith.training.dataset import run_dataset
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

VALID_SAMPLE = 256  # conversations in the periodic validation (OpenAI's valid_loss is also a sample); full_valid_* uses all
NOT_METRICS = ("runtime", "per_second", "num_tokens", "entropy", "epoch")  # bookkeeping in the Trainer's eval logs
OPENAI_COLUMNS = ["step", "train_loss", "train_mean_token_accuracy", "valid_loss", "valid_mean_token_accuracy",
                  "full_valid_loss", "full_valid_mean_token_accuracy"]


def starting_model(name: str) -> tuple[Any, Any, Path]:
    """(model, tokenizer, folder) for a packaged model, a local HF folder, or a finished chat run
    (whose adapter is merged in, so training continues from the tuned model)."""
    from tunesmith.models import loading
    from tunesmith.models.catalog import model_config, open_tokenizer, resolve_model_dir

    if is_run(name):
        run = Run(name)
        if run.manifest.task != TaskType.chat.value:
            raise ConfigError(f"model.name {name}: a {run.manifest.task} run; DPO continues from a chat (SFT) run "
                              "or a base causal LM")
        if run.prompt_tuned:
            raise ConfigError(f"model.name {name}: a prompt-tuning run cannot be trained on from: its virtual tokens "
                              "are inputs, not weights, so they cannot be merged into the model that training "
                              f"continues from; start from its base model ({run.manifest.base_model}) or from a "
                              "chat run trained with method lora, dora, ia3 or full")
        loaded = loading.load_run(run, merge=True)
        # Merging leaves the weights frozen as PEFT had them: method full would train nothing (no grad_fn).
        # apply_method freezes again what an adapter method keeps fixed.
        return loaded.model.requires_grad_(True), loaded.tokenizer, run.path
    model_dir = resolve_model_dir(name)
    tokenizer = open_tokenizer(model_dir)
    config = model_config(model_dir)
    # transformers would put an LM head on an encoder (BertLMHeadModel) that never learned to generate.
    architectures = config.architectures or []
    generative = any(a.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")) for a in architectures)
    if architectures and not generative:
        raise ConfigError(f"model {name} ({', '.join(architectures)}) is not a causal language model, which chat "
                          "tuning needs; use a decoder such as smollm2-135m or a local *ForCausalLM folder")
    try:
        model = loading.load_causal_lm(model_dir)
    except ValueError as err:
        raise ConfigError(f"model {name} ({model_dir}) is not a causal language model, which chat tuning needs: {err}") from None
    return model, tokenizer, model_dir


def _openai_metrics_writer(run_dir: Path) -> Any:
    """Callback that writes OpenAI's per-step metric names to step_metrics.csv as training logs."""
    from transformers import TrainerCallback

    class OpenAIMetrics(TrainerCallback):
        def __init__(self) -> None:
            self.rows: dict[int, dict[str, Any]] = {}

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.catch_up(state)

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
            if not self.rows:  # a run finished from the checkpoint it had stopped at (run.py) never begins training
                self.catch_up(state)
            if logs:
                self.add(state, state.global_step, logs)

        def catch_up(self, state: Any) -> None:
            # A resumed run's log holds the steps before the checkpoint; without them the first write
            # would replace step_metrics.csv with only the steps logged after resuming.
            for entry in state.log_history:
                if "step" in entry:
                    self.add(state, entry["step"], entry)

        def add(self, state: Any, step: int, logs: dict[str, Any]) -> None:
            if not state.is_world_process_zero:
                return
            row = self.rows.setdefault(step, {"step": step})
            names = {"loss": "train_loss", "mean_token_accuracy": "train_mean_token_accuracy",
                     "eval_loss": "valid_loss", "eval_mean_token_accuracy": "valid_mean_token_accuracy",
                     "full_valid_loss": "full_valid_loss", "full_valid_mean_token_accuracy": "full_valid_mean_token_accuracy"}
            if "full_valid_loss" in logs:  # TRL keeps its own metrics under eval_ whatever the prefix
                names["eval_mean_token_accuracy"] = "full_valid_mean_token_accuracy"
            for key, value in logs.items():
                if key in names:
                    row[names[key]] = round(float(value), 6)
            self.write()

        def write(self) -> None:
            with (run_dir / STEP_METRICS).open("w", newline="", encoding="utf-8") as f:
                writer = csv.DictWriter(f, OPENAI_COLUMNS)
                writer.writeheader()
                for step in sorted(self.rows):
                    writer.writerow(self.rows[step])

    return OpenAIMetrics()


MIN_EXAMPLES = 10  # OpenAI's floor too: fewer cannot teach a style, only memorise a few answers


def _check_rows(version: DatasetVersion) -> None:
    n = version.manifest.counts.get("train", 0)
    if 0 < n < MIN_EXAMPLES:
        raise DataError(f"{version.path}: the training split has {n} example(s); chat tuning needs at least "
                        f"{MIN_EXAMPLES} (50-100 good ones is where it starts to pay off)")
    for split in ("train", "validation"):
        if version.manifest.counts.get(split, 0) == 0:
            raise DataError(f"{version.path}: the {split} split is empty; chat tuning needs conversations in train "
                            "and validation (add data, or adjust data.split)")


def train_chat(cfg: ProjectConfig, *, dataset_dir: Path | None = None, resume: Path | None = None,
               overwrite: bool = False, callbacks: Sequence[Any] = ()) -> Path:
    from tunesmith.models.catalog import context_length, with_pad_token
    from tunesmith.tasks import chat
    from tunesmith.training.methods import apply_method

    run_dir, checkpoint = start_run(cfg, resume, overwrite, dataset_dir)
    version = run_dataset(cfg, dataset_dir, run_dir, resume is not None)  # a resumed run's own, never prepared again
    _check_rows(version)
    check_dataset(run_dir, version, checkpoint is not None or resume is not None)  # a refused dataset leaves no folder
    import torch

    torch.manual_seed(cfg.train.seed)  # the adapter's random init is part of the run, whatever ran before
    model, tokenizer, model_dir = starting_model(str(cfg.model.name))
    chat.set_chat_template(tokenizer, cfg.model.chat_template, str(cfg.model.name))
    stops = chat.stop_token_ids(tokenizer)
    with_pad_token(tokenizer, model_dir)  # EOS stands in for a missing pad token; neither is refused
    max_length = cfg.token_budget(context_length(tokenizer))
    if cfg.packs():
        from tunesmith.training.segment_attention import use_for_packed_training

        use_for_packed_training(model)  # padding-free rows: attention one conversation at a time on a CPU
    model = apply_method(model, cfg.train, cfg.peft, causal_lm=True)
    trainable, total = count_and_report(cfg, model)
    full_validation = None  # SFT: the whole validation split, scored once at the end (OpenAI's full_valid_*)
    if cfg.task.type == TaskType.preference:
        trainer, plan = _dpo_trainer(cfg, version, model, tokenizer, run_dir, max_length, callbacks)
    else:
        trainer, plan, full_validation = _sft_trainer(cfg, version, model, tokenizer, run_dir, max_length, callbacks)
    result = run_trainer(cfg, trainer, run_dir, checkpoint)
    final = best_evaluation(trainer)
    metrics = {k.removeprefix("eval_"): float(v) for k, v in final.items()
               if k.startswith("eval_") and isinstance(v, int | float) and not k.endswith(NOT_METRICS)}
    if "loss" in metrics and cfg.task.type == TaskType.chat:
        metrics["perplexity"] = math.exp(min(metrics["loss"], 50.0))
        from transformers import EarlyStoppingCallback

        trainer.remove_callback(EarlyStoppingCallback)  # training is over; it would look for eval_loss here
        full = trainer.evaluate(full_validation, metric_key_prefix="full_valid")
        metrics["full_valid_loss"] = float(full["full_valid_loss"])
        metrics["full_valid_mean_token_accuracy"] = float(full.get("full_valid_mean_token_accuracy",
                                                                   full.get("eval_mean_token_accuracy", float("nan"))))
        metrics["full_valid_perplexity"] = math.exp(min(metrics["full_valid_loss"], 50.0))
    if not trainer.is_world_process_zero():
        return run_dir
    _save_model(cfg, trainer, tokenizer, stops, run_dir)
    manifest = RunManifest(
        **manifest_fields(cfg, version, model_dir, trainable, total, trainer, result, plan),
        labels=None, max_length=max_length, metrics=metrics, stop_token_ids=stops,
        merged=cfg.train.merge_adapter and cfg.train.method != "full",
    )
    return finish_run(run_dir, trainer, manifest, metrics)


def _save_model(cfg: ProjectConfig, trainer: Any, tokenizer: Any, stops: list[int], run_dir: Path) -> None:
    """model/: weights or adapter, tokenizer with its chat template, and a generation config that stops."""
    model = trainer.model
    generation = model.generation_config
    generation.eos_token_id = stops
    generation.pad_token_id = tokenizer.pad_token_id
    model.config.use_cache = True  # TRL turned it off to train; saved off, other loaders generate without a cache
    adapter = cfg.train.method != "full"
    if adapter and cfg.train.merge_adapter:
        model.save_pretrained(run_dir / ADAPTER_DIR)
        tokenizer.save_pretrained(run_dir / ADAPTER_DIR)
        model = model.merge_and_unload()
        model.save_pretrained(run_dir / MODEL_DIR)
        tokenizer.save_pretrained(run_dir / MODEL_DIR)
    else:
        save_model(trainer, tokenizer, run_dir / MODEL_DIR)
    generation.save_pretrained(run_dir / MODEL_DIR)


def _sft_trainer(cfg: ProjectConfig, version: DatasetVersion, model: Any, tokenizer: Any, run_dir: Path,
                 max_length: int, callbacks: Sequence[Any]) -> tuple[Any, dict[str, Any], Any]:
    from trl import SFTConfig

    from tunesmith.tasks import chat

    def encoded(split: str) -> Any:
        rows = version.hf_dataset(split)
        ds = chat.encode_split(tokenizer, rows, max_length, f"{version.path}/{split}")
        # TRL takes labels as given: -100 wherever the mask says no loss.
        return ds.map(lambda ex: {"labels": [t if m else -100 for t, m in zip(ex["input_ids"], ex["assistant_masks"], strict=True)]},
                      remove_columns=["assistant_masks"], desc=f"masking {split}")

    train_ds, full_val = encoded("train"), encoded("validation")
    val_ds = full_val.shuffle(seed=cfg.train.seed).select(range(VALID_SAMPLE)) if len(full_val) > VALID_SAMPLE else full_val
    plan = schedule(cfg, len(train_ds))
    args = SFTConfig(
        **common_arguments(cfg, run_dir, plan, len(train_ds)),
        metric_for_best_model="loss", greater_is_better=False,
        max_length=None,  # every conversation was checked to fit above; nothing is silently cut
        packing=False, padding_free=cfg.packs(), completion_only_loss=False, assistant_only_loss=False,
        dataset_num_proc=None, shuffle_dataset=False,
    )
    trainer = _trained_token_sft_trainer()(
        model=model, args=args, train_dataset=train_ds, eval_dataset=val_ds, processing_class=tokenizer,
        callbacks=[*standard_callbacks(cfg), _openai_metrics_writer(run_dir), *callbacks])
    return trainer, plan, full_val


def _trained_token_sft_trainer() -> type:
    """SFTTrainer whose loss runs the LM head only on the trained positions (training/lm_loss.py): the same
    loss, token accuracy and entropy as TRL's, for a fraction of the head's compute. Anything the chunked
    loss does not model (a wrapped model under DDP/FSDP/DeepSpeed, prompt tuning, label smoothing, logits
    asked for), and GPUs, where TRL's Triton kernels already skip untrained positions, go to TRL's compute_loss."""
    import torch
    from trl import SFTTrainer

    from tunesmith.training import lm_loss

    class TrainedTokenSFTTrainer(SFTTrainer):
        _eval_totals: dict[str, float] | None = None  # sums over the evaluation in progress, per trained token

        def evaluation_loop(self, dataloader: Any, description: str, prediction_loss_only: bool | None = None,
                            ignore_keys: Any = None, metric_key_prefix: str = "eval") -> Any:
            # The Trainer averages per-batch means, so a batch of 30 trained tokens weighs as much as one of 900
            # (SmolLM2 on chatterbot's validation split: 3.77 that way, 2.67 per token). Validation loss and token
            # accuracy are per trained token over the whole split, as OpenAI's valid_loss and full_valid_loss.
            self._eval_totals = {"tokens": 0.0, "loss": 0.0, "mean_token_accuracy": 0.0, "entropy": 0.0}
            try:
                output = super().evaluation_loop(dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix)
                totals = self._eval_totals
            finally:
                self._eval_totals = None
            if totals["tokens"] > 0:
                output.metrics[f"{metric_key_prefix}_loss"] = totals["loss"] / totals["tokens"]
                for name in ("mean_token_accuracy", "entropy"):
                    if self._metrics["eval"].get(name):  # TRL's log() averages this list: one token-weighted value
                        self._metrics["eval"][name] = [totals[name] / totals["tokens"]]
            return output

        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            if self._eval_totals is None or return_outputs:
                return self._compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if self._chunked(model, return_outputs):
                sums = self._row_sums_chunked(model, inputs)
                loss = sums[:, 0].sum() / sums[:, 1].sum().clamp(min=1)
                self._add_to_eval_totals(sums, log_metrics=True)
            else:  # TRL's loss, which logs its own metrics (replaced by the totals at the end)
                loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
                self._add_to_eval_totals(self._row_sums_from_logits(outputs.logits, inputs), log_metrics=False)
            return loss

        def _add_to_eval_totals(self, sums: Any, log_metrics: bool) -> None:
            # One row per conversation, so that gather_for_metrics drops the rows the last batch was padded with
            # (to as many per process; they repeat the first conversations) and each is counted once.
            loss, tokens, correct, entropy = (float(x) for x in self.accelerator.gather_for_metrics(sums).sum(dim=0))
            totals = self._eval_totals
            for name, value in (("tokens", tokens), ("loss", loss), ("mean_token_accuracy", correct), ("entropy", entropy)):
                totals[name] += value
            if log_metrics:  # as TRL's loss logs them, for evaluation_loop to find
                metrics = self._metrics["eval"]
                for name, value in (("mean_token_accuracy", correct), ("entropy", entropy)):
                    metrics[name].append(value / tokens if tokens > 0 else 0.0)
                metrics["num_tokens"] = [self._total_train_tokens]

        def _chunked(self, model: Any, return_outputs: bool) -> bool:
            """Whether the loss here applies (lm_loss.py), else TRL's."""
            return (not return_outputs and self.compute_loss_func is None and self.label_smoother is None
                    and self.args.loss_type == "nll" and not self.aux_loss_enabled
                    and self.accelerator.unwrap_model(model) is model and lm_loss.better_than_trl(self.args.device)
                    and lm_loss.decoder_and_head(model) is not None)

        def _row_ids(self, inputs: dict[str, Any], labels: Any, shifted: bool) -> tuple[Any, int]:
            """The conversation of each label position, and the conversation count: the batch's rows, or with
            padding-free batches (one row) the sequences whose position ids restart at 0."""
            if self.args.padding_free and "position_ids" in inputs and labels.shape[0] == 1:
                starts = inputs["position_ids"] == 0
                ids = starts.long().cumsum(-1) - 1
                return (ids if shifted else ids[:, :-1]), int(starts.sum())
            return torch.arange(labels.shape[0], device=labels.device)[:, None].expand_as(labels), labels.shape[0]

        def _row_sums_chunked(self, model: Any, inputs: dict[str, Any]) -> Any:
            """[conversations, 4]: summed loss, trained tokens, correct tokens and entropy of each, as
            lm_loss.trained_token_loss computes them for the batch, with one head pass per conversation."""
            decoder, head = lm_loss.decoder_and_head(model)
            kwargs = {k: v for k, v in inputs.items() if k not in ("labels", "shift_labels")}
            with self.accelerator.autocast():
                hidden = decoder(**kwargs, use_cache=False).last_hidden_state
                shifted = "shift_labels" in inputs
                labels = inputs["shift_labels"] if shifted else inputs["labels"][:, 1:]
                hidden = hidden if shifted else hidden[:, :-1]
                row_ids, count = self._row_ids(inputs, labels, shifted)
                mask = labels != lm_loss.IGNORE
                rows = []
                for row in range(count):
                    keep = mask & (row_ids == row)
                    out = lm_loss.head_cross_entropy(hidden[keep], head, labels[keep])
                    rows.append(torch.stack([out.loss_sum.float(), out.tokens.float(), out.correct.float(),
                                             out.entropy_sum.float()]))
            return torch.stack(rows)

        def _row_sums_from_logits(self, logits: Any, inputs: dict[str, Any]) -> Any:
            """As _row_sums_chunked, from the logits of TRL's own loss."""
            shifted = "shift_labels" in inputs
            labels = inputs["shift_labels"] if shifted else inputs["labels"][:, 1:]
            logits = logits[:, -inputs["input_ids"].shape[1]:]  # prompt tuning prepends virtual tokens
            logits = logits if shifted else logits[:, :-1]
            row_ids, count = self._row_ids(inputs, labels, shifted)
            mask = labels != lm_loss.IGNORE
            targets = labels[mask]
            log_probs = torch.log_softmax(logits[mask].float(), dim=-1)
            per_token = torch.stack([-log_probs.gather(1, targets[:, None])[:, 0], torch.ones_like(targets, dtype=torch.float),
                                     (log_probs.argmax(dim=-1) == targets).float(),
                                     -(log_probs.exp() * log_probs).sum(dim=-1)], dim=1)
            return torch.zeros(count, 4, device=logits.device).index_add_(0, row_ids[mask], per_token)

        def _compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool,
                          num_items_in_batch: Any) -> Any:
            if not self._chunked(model, return_outputs):
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            # Under mixed precision accelerate autocasts model.forward only; the decoder is called directly here.
            with self.accelerator.autocast():
                out = lm_loss.trained_token_loss(model, inputs)
            # As TRL: divided by the trained tokens of the whole accumulated batch, so accumulation changes nothing.
            loss = out.loss_sum / torch.as_tensor(out.tokens if num_items_in_batch is None else num_items_in_batch).clamp(min=1)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * (self.accelerator.num_processes // self.get_tp_size())
            mode = "train" if self.model.training else "eval"
            gather = self.accelerator.gather_for_metrics
            tokens = gather(out.tokens).sum()
            for name, total in (("entropy", out.entropy_sum), ("mean_token_accuracy", out.correct)):
                self._metrics[mode][name].append((gather(total.detach()).sum() / tokens).item() if tokens > 0 else 0.0)
            if mode == "train":  # TRL's num_tokens: every token the model read, padding excluded
                seen = inputs["attention_mask"].sum() if "attention_mask" in inputs else \
                    torch.tensor(inputs["position_ids"].size(1), device=inputs["position_ids"].device)
                self._total_train_tokens += gather(seen).sum().item() // self._tp_size
            self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
            return loss

    return TrainedTokenSFTTrainer


def _dpo_trainer(cfg: ProjectConfig, version: DatasetVersion, model: Any, tokenizer: Any, run_dir: Path,
                 max_length: int, callbacks: Sequence[Any]) -> tuple[Any, dict[str, Any]]:
    from trl import DPOConfig, DPOTrainer

    from tunesmith.tasks import chat

    def rows(split: str) -> Any:
        ds = version.hf_dataset(split)
        return ds.map(lambda ex: {"prompt": chat.plain(ex["messages"]),
                                  "chosen": [{"role": "assistant", "content": ex["chosen"]}],
                                  "rejected": [{"role": "assistant", "content": ex["rejected"]}]},
                      remove_columns=ds.column_names, desc=f"preference pairs ({split})")

    train_ds, val_ds = rows("train"), rows("validation")
    plan = schedule(cfg, len(train_ds))
    args = DPOConfig(
        **common_arguments(cfg, run_dir, plan, len(train_ds)),
        metric_for_best_model="loss", greater_is_better=False, beta=cfg.train.dpo_beta, max_length=max_length,
    )
    # DPO logs the same loss and mean_token_accuracy names as SFT (its accuracy on the chosen answers).
    trainer = DPOTrainer(model=model, ref_model=_reference(model), args=args, train_dataset=train_ds,
                         eval_dataset=val_ds, processing_class=tokenizer,
                         callbacks=[*standard_callbacks(cfg), _openai_metrics_writer(run_dir), *callbacks])
    if "ref" in getattr(model, "peft_config", {}):
        # TRL copies the new adapter as a frozen "ref" adapter. Without it the reference is the adapter switched
        # off: the same for a fresh LoRA/DoRA/IA3 adapter (it starts as the identity), the base model for prompt
        # tuning (as evaluation's reference), no second set of adapter weights, and only the trained one saved.
        model.delete_adapter("ref")
    return trainer, plan


def _reference(model: Any) -> Any:
    """DPO's reference for full fine-tuning: a frozen copy of the starting model. Left to TRL (None), it is
    reloaded from config._name_or_path, the untuned base folder even when training starts from a merged SFT run."""
    if hasattr(model, "peft_config"):
        return None  # the adapter switched off (_dpo_trainer)
    import copy

    reference = copy.deepcopy(model).eval()
    reference.requires_grad_(False)
    return reference
