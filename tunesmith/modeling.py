"""Load a base model with a task head, and apply the fine-tuning method (full, head-only, PEFT).

Serving and evaluation load finished runs through `tunesmith.predictor`; this module is for
building what gets trained.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from tunesmith.config import PeftSpec, TaskType, TrainSpec
from tunesmith.errors import ConfigError

# LoRA targets per architecture: every projection of attention and MLP, which is what makes LoRA
# match full fine-tuning (attention-only LoRA underfits classification heads on small encoders).
LORA_TARGETS: dict[str, list[str]] = {
    "bert": ["query", "key", "value", "dense"],
    "roberta": ["query", "key", "value", "dense"],
    "distilbert": ["q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
}
IA3_TARGETS: dict[str, tuple[list[str], list[str]]] = {  # (targets, feed-forward targets)
    "bert": (["key", "value", "output.dense"], ["output.dense"]),
    "roberta": (["key", "value", "output.dense"], ["output.dense"]),
    "llama": (["k_proj", "v_proj", "down_proj"], ["down_proj"]),
    "mistral": (["k_proj", "v_proj", "down_proj"], ["down_proj"]),
    "qwen2": (["k_proj", "v_proj", "down_proj"], ["down_proj"]),
}
# Modules trained in full next to an adapter: with the native [CLS] head, BERT's pooler sits between
# the encoder and the classifier, and sentence encoders never trained it; frozen under LoRA it
# collapses training to the majority class. (Mean-pooled models have no pooler; these are skipped.)
EXTRA_TRAINED = {"bert": ["pooler"], "roberta": ["pooler"]}
HEAD_MODULES = ("classifier", "score", "pre_classifier")  # what the sequence-classification classes call their head


def is_head_parameter(name: str) -> bool:
    """The task head's parameters (also inside a PEFT wrapper's modules_to_save copies)."""
    parts = name.split(".")
    return any(h in parts for h in HEAD_MODULES)


def problem_type(task: TaskType) -> str:
    return {TaskType.single_label: "single_label_classification", TaskType.multi_label: "multi_label_classification",
            TaskType.regression: "regression"}[task]


def pooling_of(model_dir: Path, requested: str = "auto") -> str:
    """'mean' for sentence encoders (their sentence-transformers pooling config says so), else the
    architecture's own head ('native': [CLS] + pooler for encoders, last token for decoders)."""
    if requested != "auto":
        return requested
    pooling = model_dir / "1_Pooling" / "config.json"
    if pooling.exists():
        import json

        if json.loads(pooling.read_text()).get("pooling_mode_mean_tokens"):
            return "mean"
    return "native"


def load_trained_sequence_model(model_dir: Path) -> Any:
    """A fine-tuned sequence model folder, whichever head it was trained with."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(model_dir)
    if getattr(config, "tunesmith_pooling", None) == "mean":
        from tunesmith.heads import MeanPoolingForSequenceClassification

        return MeanPoolingForSequenceClassification.from_pretrained(model_dir, config=config)
    return AutoModelForSequenceClassification.from_pretrained(model_dir)


def load_for_sequence_task(model_dir: Path, task: TaskType, labels: list[str] | None, pooling: str = "auto") -> Any:
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(model_dir)
    kwargs: dict[str, Any] = {"problem_type": problem_type(task)}
    if task == TaskType.regression:
        kwargs["num_labels"] = 1
    else:
        assert labels
        kwargs.update(num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={x: i for i, x in enumerate(labels)})
    if getattr(config, "pad_token_id", None) is None:  # causal LMs: the head pools the last non-pad token
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(model_dir)
        kwargs["pad_token_id"] = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized: classifier.weight" is expected, not news
    try:
        if pooling_of(model_dir, pooling) == "mean":
            from tunesmith.heads import MeanPoolingForSequenceClassification

            for key, value in kwargs.items():
                setattr(config, key, value)
            config.tunesmith_pooling = "mean"
            return MeanPoolingForSequenceClassification.from_encoder(config, model_dir)
        return AutoModelForSequenceClassification.from_pretrained(model_dir, **kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)


def _linear_names(model: nn.Module) -> set[str]:
    return {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)}


def _check_targets(model: nn.Module, targets: list[str], what: str) -> None:
    names = [name for name, _ in model.named_modules()]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        raise ConfigError(
            f"{what}: the model ({model.config.model_type}) has no module named {missing}; "
            f"its linear layers are {sorted(_linear_names(model))}"
        )


def apply_method(model: Any, train: TrainSpec, peft_spec: PeftSpec, causal_lm: bool = False) -> Any:
    """Freeze, or wrap in a PEFT adapter, as `train.method` says. `causal_lm`: the LM head itself is the task."""
    method = train.method
    model_type = model.config.model_type
    if method == "full":
        return model
    if method == "head":
        # The head, plus a pooler between encoder and head (top-level in DeBERTa, inside BERT/RoBERTa).
        extra = EXTRA_TRAINED.get(model_type, [])
        for name, param in model.named_parameters():
            param.requires_grad = is_head_parameter(name) or name.startswith("pooler.") or \
                any(f".{h}." in f".{name}" for h in extra)
        return model

    import peft

    task_type = peft.TaskType.CAUSAL_LM if causal_lm else peft.TaskType.SEQ_CLS
    present = {name.split(".")[-1] for name, _ in model.named_modules()}
    extra = peft_spec.modules_to_save if peft_spec.modules_to_save is not None else \
        [m for m in EXTRA_TRAINED.get(model_type, []) if m in present]
    if method in ("lora", "dora"):
        targets = peft_spec.target_modules or LORA_TARGETS.get(model_type)
        if targets:
            _check_targets(model, targets, "peft.target_modules")
        config: Any = peft.LoraConfig(
            task_type=task_type, r=peft_spec.r, lora_alpha=peft_spec.alpha, lora_dropout=peft_spec.dropout,
            target_modules=targets or "all-linear", use_dora=method == "dora", modules_to_save=extra or None,
        )
    elif method == "ia3":
        targets, ff = IA3_TARGETS.get(model_type, (None, None))
        if peft_spec.target_modules:
            targets, ff = peft_spec.target_modules, [t for t in peft_spec.target_modules if "down" in t or "output" in t]
        if not targets:
            raise ConfigError(f"train.method ia3: no default targets for model type '{model_type}'; set peft.target_modules")
        _check_targets(model, targets, "peft.target_modules")
        config = peft.IA3Config(task_type=task_type, target_modules=targets, feedforward_modules=ff,
                                modules_to_save=extra or None)
    elif method == "prompt_tuning":
        config = peft.PromptTuningConfig(task_type=task_type, num_virtual_tokens=peft_spec.num_virtual_tokens)
    else:  # pragma: no cover - Method is a closed Literal
        raise ConfigError(f"unknown method {method}")
    return peft.get_peft_model(model, config)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())


def native_bf16() -> bool:
    """True where bf16 autocast is faster, not just possible: recent GPUs, CPUs with AMX/AVX512-BF16."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags
