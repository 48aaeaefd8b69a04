"""models/loading.py: the one way a run folder becomes a model (predictor, chat model, server,
evaluation and training that continues from a run all use it)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.test_train import project
from tests.test_train_chat import chat_project
from tunesmith.artifacts import Run
from tunesmith.errors import DataError
from tunesmith.inference.predictor import Predictor
from tunesmith.models.loading import load_run
from tunesmith.training import train


def _edit_manifest(run: Path, **fields: str) -> None:
    path = run / "run.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **fields}))


def test_an_adapter_run_finds_its_base_again_when_the_folder_moved(tmp_path: Path, tiny_bert: Path) -> None:
    run = train(project(tmp_path, tiny_bert, train_spec={"method": "lora", "max_steps": 4}))
    texts = ["great food", "stale bread, not again"]
    before = Predictor(run).logits(texts)
    assert hasattr(load_run(run).model, "peft_config")  # the adapter on top of the base
    # Another machine: the resolved path is gone, the configured name (here a folder) still resolves.
    _edit_manifest(run, base_model_path=str(tmp_path / "moved-away"))
    np.testing.assert_allclose(Predictor(run).logits(texts), before, atol=1e-6)
    _edit_manifest(run, base_model=str(tmp_path / "gone-too"))
    with pytest.raises(DataError, match="base model of run 'tiny' is gone"):
        load_run(run)


def test_chat_adapters_over_one_base_share_it_and_merging_folds_the_adapter_in(tmp_path: Path, tiny_llama: Path) -> None:
    run = Run(train(chat_project(tmp_path, tiny_llama, {"method": "lora", "max_steps": 2})))
    shared: dict = {}
    first = load_run(run, shared=shared, adapter_name="a")
    second = load_run(run, shared=shared, adapter_name="b")
    assert first.model is second.model and set(first.model.peft_config) == {"a", "b"}
    assert first.stop_token_ids == run.manifest.stop_token_ids and first.base_dir == tiny_llama
    merged = load_run(run, merge=True)
    assert not hasattr(merged.model, "peft_config")
    ids = first.tokenizer("hello how are you", return_tensors="pt")["input_ids"]
    first.model.set_adapter("a")
    np.testing.assert_allclose(merged.model(ids).logits.detach().numpy(), first.model(ids).logits.detach().numpy(), atol=1e-4)


def _cut(path: Path) -> Path:
    """A weights file cut short, as a half-finished copy leaves it."""
    path.write_bytes(path.read_bytes()[:5000] if path.stat().st_size > 10000 else path.read_bytes()[:50])
    return path


def _damaged(path: Path) -> str:
    """What the DataError for a cut `path` says, up to the reason safetensors gives."""
    return (rf"^{re.escape(str(path))}: damaged or partly copied \(.*Error while deserializing header.*\); "
            "re-copy the run or train again$")


def test_a_cut_chat_model_is_named_and_serve_says_so_cleanly(tmp_path: Path, tiny_llama: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """A full chat run whose model.safetensors was cut (serve, evaluate) surfaced as "internal error: SafetensorError:
    incomplete metadata" and a traceback file; it is a DataError (exit 3) naming the file and what to do."""
    from tunesmith.cli import run as cli

    run = train(chat_project(tmp_path, tiny_llama, {"max_steps": 1}))
    weights = _cut(run / "model" / "model.safetensors")
    with pytest.raises(DataError, match=_damaged(weights)):
        load_run(run)
    capsys.readouterr()
    assert cli(["serve", str(run), "--prepare"]) == 3
    err = capsys.readouterr().err
    assert f"error: {weights}: damaged or partly copied" in err and "internal error" not in err


def test_a_cut_chat_adapter_or_base_is_named(tmp_path: Path, tiny_llama: Path) -> None:
    """An adapter run's adapter_model.safetensors cut (loaded alone, or into a base already shared with another
    adapter), or the base model under it cut: each a DataError naming the file that is damaged."""
    base = tmp_path / "base"
    shutil.copytree(tiny_llama, base)
    good = train(chat_project(tmp_path / "good", base, {"method": "lora", "max_steps": 1}))
    cut = tmp_path / "cut-run"
    shutil.copytree(good, cut)
    adapter = _cut(cut / "model" / "adapter_model.safetensors")
    with pytest.raises(DataError, match=_damaged(adapter)):
        load_run(cut)
    shared: dict = {}
    load_run(good, shared=shared, adapter_name="a")
    with pytest.raises(DataError, match=_damaged(adapter)):
        load_run(cut, shared=shared, adapter_name="b")
    weights = _cut(base / "model.safetensors")
    with pytest.raises(DataError, match=_damaged(weights)):
        load_run(good)


def test_a_cut_classifier_adapter_or_base_is_named(tmp_path: Path, tiny_bert: Path) -> None:
    base = tmp_path / "base"
    shutil.copytree(tiny_bert, base)
    good = train(project(tmp_path, base, train_spec={"method": "lora", "max_steps": 1}))
    cut = tmp_path / "cut-run"
    shutil.copytree(good, cut)
    adapter = _cut(cut / "model" / "adapter_model.safetensors")
    with pytest.raises(DataError, match=_damaged(adapter)):
        Predictor(cut)
    weights = _cut(base / "model.safetensors")
    with pytest.raises(DataError, match=_damaged(weights)):
        Predictor(good)
