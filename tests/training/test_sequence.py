"""sequence.py: incremental training (train.init_from) continues only a run that fits the config."""

from __future__ import annotations

import shutil
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


def test_init_from_an_export_is_refused_naming_the_run_it_came_from(tmp_path: Path, tiny_bert: Path) -> None:
    """A merged export of a LoRA run (method lora, adapter false) trained on as full weights while called LoRA and
    saved an unloadable run; an ONNX export failed with a raw OSError."""
    from tunesmith.export import export_run

    parent, child = _parent_and_child(tmp_path, tiny_bert, "lora", "mean", "mean")
    merged = export_run(parent, "merged", tmp_path / "merged", check=False).path
    child.train.init_from = merged
    with pytest.raises(ConfigError, match=rf"a `merged` export, made for serving.*train.init_from: {parent}"):
        train(child)
    assert not (Path(child.run_dir) / "model").exists()


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


def test_prompt_tuning_a_decoder_classifier_is_refused_and_an_earlier_run_does_not_load(
        tmp_path: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PEFT hands a decoder's classifier inputs_embeds, so it cannot find the last real token and reads the last
    position: padding for all but a batch's longest text, and a text's prediction depended on its batch (left padding
    does not save it: the positions between the virtual tokens and the text change with the pads)."""
    from tunesmith.errors import DataError
    from tunesmith.inference.predictor import Predictor
    from tunesmith.training import sequence

    cfg = project(tmp_path, tiny_llama, train_spec={"method": "prompt_tuning", "max_steps": 2})
    with pytest.raises(ConfigError, match="train.method: prompt_tuning .*decoder.*lora or ia3"):
        train(cfg)
    assert not (tmp_path / "run").exists() and not (tmp_path / "ds").exists()  # refused before any compute
    monkeypatch.setattr(sequence, "_check_method", lambda cfg, model_dir: None)  # a run trained before the refusal
    run = train(cfg)
    with pytest.raises(DataError, match=r"prompt-tuning run on the decoder .*depend on the batch.*lora or ia3"):
        Predictor(run)


def test_a_tokenizer_with_neither_pad_nor_eos_is_refused_before_the_run_folder_is_written(tmp_path: Path) -> None:
    """It failed at the first batch as an internal error ("Asking to pad but the tokenizer does not have a padding
    token"), leaving config.json and checkpoints/ behind."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    from tests.tiny_models import build_tokenizer

    folder = build_tokenizer(tmp_path / "gpt2")
    tok = AutoTokenizer.from_pretrained(folder)
    tok.pad_token, tok.eos_token = None, None
    tok.save_pretrained(folder)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=2, n_positions=128,
                               pad_token_id=None, eos_token_id=None)).save_pretrained(folder)
    with pytest.raises(ConfigError, match=rf"model folder {folder}: its tokenizer has neither a pad token nor"):
        train(project(tmp_path, folder, train_spec={"max_steps": 2}))
    assert not (tmp_path / "run").exists() and not (tmp_path / "ds").exists()
    untyped = Path(shutil.copytree(folder, tmp_path / "untyped"))  # a config.json naming no model_type
    (untyped / "config.json").write_text('{"hidden_size": 32}')
    with pytest.raises(ConfigError, match=rf"{untyped / 'config.json'}: not a model config"):
        train(project(tmp_path, untyped, train_spec={"max_steps": 2}))
    assert not (tmp_path / "ds").exists()
