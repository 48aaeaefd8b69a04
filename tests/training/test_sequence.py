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


def _parent_and_child(tmp_path: Path, tiny_bert: Path, method: str, pooling: str, child_pooling: str, **child_spec):
    (tmp_path / "p").mkdir()
    (tmp_path / "c").mkdir()
    parent_cfg = project(tmp_path / "p", tiny_bert, train_spec={"max_steps": 2, "method": method})
    parent_cfg.model.pooling = pooling
    parent = train(parent_cfg)
    child = project(tmp_path / "c", tiny_bert, train_spec={"max_steps": 1, "method": method, "init_from": str(parent),
                                                           **child_spec})
    child.model.pooling = child_pooling
    return parent, child


@pytest.mark.parametrize("method", ["lora", "full"])
def test_init_from_a_run_with_another_pooling_is_refused(tmp_path: Path, tiny_bert: Path, method: str) -> None:
    """A LoRA parent trained with mean pooling, continued with the native head: its adapter's keys matched no layer,
    peft only warned, and training went on from a fresh adapter recorded as a continuation."""
    _, child = _parent_and_child(tmp_path, tiny_bert, method, "mean", "auto")  # 'auto' is 'native' for tiny-bert
    with pytest.raises(ConfigError, match=r"cannot continue that run: .*pools 'mean' \(model.pooling 'mean'\), "
                                          r"this config's model.pooling 'auto' pools 'native'"):
        train(child)


def test_an_adapter_that_fits_no_layer_is_an_error_not_a_warning(tmp_path: Path, tiny_bert: Path) -> None:
    from tunesmith.artifacts import Run
    from tunesmith.errors import DataError
    from tunesmith.training.sequence import _continued_model

    parent, child = _parent_and_child(tmp_path, tiny_bert, "lora", "mean", "native")
    with pytest.raises(DataError, match="its adapter .* does not fit the model this config builds: .*missing adapter keys"):
        _continued_model(Run(parent), child)
    child.model.pooling = "mean"
    assert _continued_model(Run(parent), child) is not None


@pytest.mark.parametrize("method", ["full", "head"])
def test_init_from_a_full_or_head_run_trains_with_this_configs_dropout(tmp_path: Path, tiny_bert: Path,
                                                                      method: str) -> None:
    """The parent's saved config (dropout 0) was loaded as it was: the child's train.hidden_dropout 0.3 and
    attention_dropout 0.2 were ignored."""
    from torch import nn
    from transformers import TrainerCallback

    from tunesmith.artifacts import Run

    seen: dict[str, float] = {}

    class Dropouts(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs) -> None:
            seen.update({name: m.p for name, m in model.named_modules() if isinstance(m, nn.Dropout)})

    _, child = _parent_and_child(tmp_path, tiny_bert, method, "native", "native", hidden_dropout=0.3,
                                 attention_dropout=0.2)
    run = train(child, callbacks=[Dropouts()])
    attention = {p for name, p in seen.items() if ".attention.self." in name}
    hidden = {p for name, p in seen.items() if ".attention.self." not in name}
    assert attention == {0.2} and hidden == {0.3}
    numerics = Run(run).manifest.hyperparameters
    assert numerics["hidden_dropout"] == 0.3 and numerics["attention_dropout"] == 0.2
