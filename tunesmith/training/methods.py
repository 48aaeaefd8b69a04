"""How much of the model trains: the fine-tuning methods (full, head-only, LoRA, DoRA, IA3, prompt
tuning), applied to a freshly loaded model before training. Only training imports this.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from tunesmith.config import PeftSpec, TrainSpec
from tunesmith.errors import ConfigError
from tunesmith.models.sequence import is_head_parameter

# LoRA targets per architecture: every projection of attention and MLP, which is what makes LoRA
# match full fine-tuning (attention-only LoRA underfits classification heads on small encoders).
LORA_TARGETS: dict[str, list[str]] = {
    "bert": ["query", "key", "value", "dense"],
    "roberta": ["query", "key", "value", "dense"],
    "deberta-v2": ["query_proj", "key_proj", "value_proj", "dense"],
    "distilbert": ["q_lin", "k_lin", "v_lin", "out_lin", "lin1", "lin2"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],
}
IA3_TARGETS: dict[str, tuple[list[str], list[str]]] = {  # (targets, feed-forward targets)
    "bert": (["key", "value", "output.dense"], ["output.dense"]),
    "roberta": (["key", "value", "output.dense"], ["output.dense"]),
    "deberta-v2": (["key_proj", "value_proj", "output.dense"], ["output.dense"]),
    "llama": (["k_proj", "v_proj", "down_proj"], ["down_proj"]),
    "mistral": (["k_proj", "v_proj", "down_proj"], ["down_proj"]),
    "qwen2": (["k_proj", "v_proj", "down_proj"], ["down_proj"]),
}
# Modules trained in full next to an adapter: with the native [CLS] head, BERT's pooler sits between
# the encoder and the classifier, and sentence encoders never trained it; frozen under LoRA it
# collapses training to the majority class. (Mean-pooled models have no pooler; these are skipped.)
EXTRA_TRAINED = {"bert": ["pooler"], "roberta": ["pooler"], "deberta-v2": ["pooler"]}  # DeBERTa's: new for the task


def _linear_names(model: nn.Module) -> set[str]:
    return {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)}


def check_targets(model: nn.Module, targets: list[str], what: str) -> None:
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
            check_targets(model, targets, "peft.target_modules")
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
        check_targets(model, targets, "peft.target_modules")
        # The pooler's linear layer rather than the whole module: PEFT's IA3 merge unwraps saved modules as layers
        # with a weight, and BERT's pooler (a layer and a tanh) failed `export --format merged` and onnx.
        names = {name for name, _ in model.named_modules()}
        extra = [f"{m}.dense" if any(n.endswith(f"{m}.dense") for n in names) and m in EXTRA_TRAINED.get(model_type, [])
                 else m for m in extra]
        config = peft.IA3Config(task_type=task_type, target_modules=targets, feedforward_modules=ff,
                                modules_to_save=extra or None)
    elif method == "prompt_tuning":
        config = peft.PromptTuningConfig(task_type=task_type, num_virtual_tokens=peft_spec.num_virtual_tokens)
    else:  # pragma: no cover - Method is a closed Literal
        raise ConfigError(f"unknown method {method}")
    model = peft.get_peft_model(model, config)
    from peft.tuners.tuners_utils import BaseTunerLayer

    # Under bf16 autocast PEFT would cast each adapted input to fp32 and back (two copies per layer, a sixth of a
    # LoRA step); autocast does it once. Only for a model in one dtype: PEFT keeps the adapters of a model stored in
    # bf16 (transformers loads a checkpoint's own dtype) in fp32, and without autocast its casts let the two meet.
    if len({p.dtype for p in model.parameters()}) == 1:
        for module in model.modules():
            if isinstance(module, BaseTunerLayer):
                module.cast_input_dtype_enabled = False
    if method == "lora":
        from tunesmith.training.fused_lora import fuse_lora_layers

        fuse_lora_layers(model)
    return model


def freeze_token_embeddings(model: Any) -> None:
    """Keep the input token table as pre-trained (full fine-tuning of a sequence model). Positions, token
    types and the embedding LayerNorm still train: they are small."""
    model.get_input_embeddings().weight.requires_grad_(False)
