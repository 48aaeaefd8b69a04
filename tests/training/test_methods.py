"""How much of the model trains, per method and architecture."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_train import project
from tests.tiny_models import build_tokenizer
from tunesmith.config import TaskType


@pytest.fixture(scope="module")
def tiny_deberta(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from transformers import DebertaV2Config, DebertaV2Model

    folder = tmp_path_factory.mktemp("deberta")
    torch.manual_seed(0)
    build_tokenizer(folder)
    DebertaV2Model(DebertaV2Config(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                   intermediate_size=64, max_position_embeddings=128, pad_token_id=0)).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("method", ["head", "lora", "ia3"])
def test_debertas_fresh_pooler_trains_beside_the_head_under_every_method(tiny_deberta: Path, tmp_path: Path,
                                                                          method: str) -> None:
    """DeBERTa-v2's pooler is initialised fresh for classification: `head` trained it, and LoRA left it frozen at its
    random weights with only a low-rank delta."""
    from tunesmith.models.sequence import load_for_sequence_task
    from tunesmith.training.methods import apply_method

    cfg = project(tmp_path, tiny_deberta, train_spec={"method": method})
    model = apply_method(load_for_sequence_task(tiny_deberta, TaskType.single_label, ["neg", "pos"]), cfg.train, cfg.peft)
    pooler = [n for n, p in model.named_parameters() if "pooler" in n and "lora_" not in n and p.requires_grad]
    assert pooler, [n for n, p in model.named_parameters() if p.requires_grad]


def test_a_deberta_lora_run_trains_and_merges(tiny_deberta: Path, tmp_path: Path) -> None:
    from tunesmith.export import export_run
    from tunesmith.training import train

    run = train(project(tmp_path, tiny_deberta, train_spec={"method": "lora", "max_steps": 4}))
    assert export_run(run, "merged", tmp_path / "merged").check["agreement"] == 1.0
