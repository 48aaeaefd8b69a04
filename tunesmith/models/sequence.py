"""Sequence models (classification and regression): a pre-trained body with a task head.

What both training and inference need: a new head on a base model (training starts from it; an
adapter run is loaded onto it), and a trained folder loaded with whichever head it was saved with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunesmith.config import TaskType
from tunesmith.errors import DataError

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


def pools_last_token(model_dir: Path, pooling: str = "auto") -> bool:
    """Does the model's head classify by the last real token, found in input_ids (a decoder's own head)? Prompt
    tuning hands it inputs_embeds instead, and it reads the last position: padding for all but a batch's longest."""
    if pooling_of(model_dir, pooling) == "mean":
        return False
    from transformers.models.auto import modeling_auto

    from tunesmith.models.catalog import model_config

    kind = model_config(model_dir).model_type  # a causal LM and no encoder (BERT has an LM head class too)
    return kind in modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and kind not in modeling_auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES


def load_trained_sequence_model(model_dir: Path) -> Any:
    """A fine-tuned sequence model folder, whichever head it was trained with."""
    from safetensors import SafetensorError
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(model_dir)
    try:
        if getattr(config, "tunesmith_pooling", None) == "mean":
            from tunesmith.models.heads import MeanPoolingForSequenceClassification

            return MeanPoolingForSequenceClassification.from_pretrained(model_dir, config=config)
        return AutoModelForSequenceClassification.from_pretrained(model_dir)
    except (SafetensorError, OSError) as err:  # a cut copy surfaced as an internal "SafetensorError: incomplete metadata"
        raise damaged_weights(model_dir, err) from err


def damaged_weights(model_dir: Path, err: Exception) -> DataError:
    """The error for weights in `model_dir` that do not load (a truncated or half-copied file), naming the file."""
    from tunesmith.models.catalog import WEIGHT_FILES

    name = next((f for f in WEIGHT_FILES if (Path(model_dir) / f).is_file()), WEIGHT_FILES[0])
    reason = " ".join(str(err).split())[:200] or type(err).__name__
    return DataError(f"{Path(model_dir) / name}: damaged or partly copied ({reason}); re-copy the run or train again")


ATTENTION_DROPOUT_KEYS = ("attention_probs_dropout_prob", "attention_dropout", "attn_pdrop")  # BERT family, DistilBERT/Llama, GPT-2
HIDDEN_DROPOUT_KEYS = ("hidden_dropout_prob", "dropout", "resid_pdrop", "embd_pdrop")  # BERT family, DistilBERT, GPT-2


def load_for_sequence_task(model_dir: Path, task: TaskType, labels: list[str] | None, pooling: str = "auto",
                           attention_dropout: float | None = None, hidden_dropout: float | None = None) -> Any:
    """A new head on the base model, in fp32 whatever dtype its checkpoint is stored in (transformers would keep a
    bf16 checkpoint's: bf16 master weights drop most small updates; autocast gives bf16 speed on fp32 weights).
    `attention_dropout` and `hidden_dropout` replace the model's own where given."""
    import torch
    from safetensors import SafetensorError
    from transformers import AutoModelForSequenceClassification

    from tunesmith.models.catalog import model_config, open_tokenizer

    config = model_config(model_dir)
    kwargs: dict[str, Any] = {"problem_type": problem_type(task)}
    if attention_dropout is not None:
        kwargs.update({k: attention_dropout for k in ATTENTION_DROPOUT_KEYS if hasattr(config, k)})
    if hidden_dropout is not None:
        kwargs.update({k: hidden_dropout for k in HIDDEN_DROPOUT_KEYS if hasattr(config, k)})
    if task == TaskType.regression:
        kwargs["num_labels"] = 1
    else:
        assert labels
        kwargs.update(num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={x: i for i, x in enumerate(labels)})
    if getattr(config, "pad_token_id", None) is None:  # causal LMs: the head pools the last non-pad token
        tok = open_tokenizer(model_dir)
        kwargs["pad_token_id"] = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized: classifier.weight" is expected, not news
    try:
        if pooling_of(model_dir, pooling) == "mean":
            from tunesmith.models.heads import MeanPoolingForSequenceClassification

            for key, value in kwargs.items():
                setattr(config, key, value)
            config.tunesmith_pooling = "mean"
            return MeanPoolingForSequenceClassification.from_encoder(config, model_dir)
        return AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=torch.float32, **kwargs)
    except (SafetensorError, OSError) as err:  # a cut copy: "internal error: SafetensorError: invalid header length"
        raise damaged_weights(model_dir, err) from err
    finally:
        hf_logging.set_verbosity(verbosity)
