"""models/sequence.py: the base model a sequence task trains from."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from tunesmith.config import TaskType
from tunesmith.models.sequence import load_for_sequence_task


@pytest.mark.parametrize("pooling", ["native", "mean"])
def test_a_checkpoint_stored_in_bf16_trains_on_fp32_weights(tmp_path: Path, tiny_bert: Path, pooling: str) -> None:
    """Many hub checkpoints are stored in bf16 and transformers keeps a checkpoint's dtype: trained as loaded, a
    2e-5 AdamW step would round away on most bf16 weights. The model comes back in fp32, values unchanged."""
    from transformers import BertModel

    shutil.copytree(tiny_bert, tmp_path / "bf16")
    BertModel.from_pretrained(tiny_bert, dtype=torch.bfloat16).save_pretrained(tmp_path / "bf16")
    assert BertModel.from_pretrained(tmp_path / "bf16").embeddings.word_embeddings.weight.dtype == torch.bfloat16

    model = load_for_sequence_task(tmp_path / "bf16", TaskType.single_label, ["a", "b"], pooling=pooling)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    stored = BertModel.from_pretrained(tmp_path / "bf16").embeddings.word_embeddings.weight
    torch.testing.assert_close(model.get_input_embeddings().weight, stored.float(), rtol=0, atol=0)


@pytest.mark.parametrize("pooling", ["native", "mean"])
def test_a_cut_weights_file_is_named_not_an_internal_error(tmp_path: Path, tiny_bert: Path, pooling: str) -> None:
    """A truncated model.safetensors (a copy cut short) surfaced as "internal error: SafetensorError: ... incomplete
    metadata"; it is a DataError (exit 3) naming the file and what to do."""
    from tunesmith.errors import DataError
    from tunesmith.models.sequence import load_trained_sequence_model

    model = load_for_sequence_task(tiny_bert, TaskType.single_label, ["a", "b"], pooling=pooling)
    if pooling == "mean":
        model.config.tunesmith_pooling = "mean"
    model.save_pretrained(tmp_path / "model")
    assert type(load_trained_sequence_model(tmp_path / "model")) is type(model)  # the folder loads while whole
    weights = tmp_path / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    with pytest.raises(DataError, match=rf"^{weights}: damaged or partly copied \(.*incomplete metadata.*\); "
                                        "re-copy the run or train again$"):
        load_trained_sequence_model(tmp_path / "model")


def test_a_damaged_model_folder_is_named_not_an_internal_error(tmp_path: Path, tiny_bert: Path) -> None:
    """A base model folder cut short or with a broken config.json surfaced as "internal error" (exit 1) once the
    dataset was prepared; each is an error naming the file."""
    from tunesmith.errors import ConfigError, DataError

    def copy(name: str) -> Path:
        return Path(shutil.copytree(tiny_bert, tmp_path / name))

    cut = copy("cut") / "model.safetensors"
    cut.write_bytes(cut.read_bytes()[:3000])
    with pytest.raises(DataError, match=rf"^{cut}: damaged or partly copied"):
        load_for_sequence_task(cut.parent, TaskType.single_label, ["a", "b"])
    for name, text in (("untyped", '{"hidden_size": 32}'), ("unparsed", "{not json")):
        (copy(name) / "config.json").write_text(text)
        with pytest.raises(ConfigError, match=rf"^{tmp_path / name / 'config.json'}: not a model config"):
            load_for_sequence_task(tmp_path / name, TaskType.single_label, ["a", "b"])
