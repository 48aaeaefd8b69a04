"""sequence.py: incremental training (train.init_from) continues only a run that fits the config."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_train import project
from tunesmith.errors import ConfigError
from tunesmith.training import train


@pytest.mark.parametrize("method", ["full", "head"])
def test_init_from_a_run_on_another_base_model_is_refused(tmp_path: Path, tiny_bert: Path, tiny_llama: Path,
                                                          method: str) -> None:
    """A full or head-only parent's weights continued under another model's tokenizer (model.name changed) trained
    and saved a model whose token ids meant other words; adapters were already refused."""
    (tmp_path / "p").mkdir()
    parent = train(project(tmp_path / "p", tiny_bert, train_spec={"max_steps": 2, "method": method}))
    child = project(tmp_path, tiny_llama, train_spec={"max_steps": 2, "method": method, "init_from": str(parent)})
    with pytest.raises(ConfigError, match="cannot continue that run: .*base model"):
        train(child)
