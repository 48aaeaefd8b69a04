"""The packaged real models load offline (slow: the GGUF is dequantised once into the cache)."""

from __future__ import annotations

import pytest

from tunesmith.config import TaskType
from tunesmith.models.catalog import resolve_model_dir
from tunesmith.models.sequence import load_for_sequence_task


@pytest.mark.slow
def test_smollm2_gguf_converts_once_into_a_trainable_folder() -> None:
    folder = resolve_model_dir("smollm2-135m")
    assert (folder / "model.safetensors").exists() and (folder / "tokenizer_config.json").exists()
    model = load_for_sequence_task(folder, TaskType.single_label, ["a", "b"])
    assert model.config.num_labels == 2 and model.config.pad_token_id is not None
    assert resolve_model_dir("smollm2-135m") == folder  # cached, not converted again


@pytest.mark.slow
def test_minilm_gets_the_mean_pooled_head() -> None:
    model = load_for_sequence_task(resolve_model_dir("minilm"), TaskType.single_label, ["great", "other"])
    assert model.config.tunesmith_pooling == "mean"
