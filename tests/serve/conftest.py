"""Runs the bf16 classifier engines' tests share (PyTorch's and OpenVINO's)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_train import project
from tunesmith.training import train


@pytest.fixture(scope="session")
def classifier_runs(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path) -> dict[str, Path]:
    """A classifier, a LoRA classifier and a regression run of the tiny BERT, 20 steps each."""
    tmp = tmp_path_factory.mktemp("classifier-runs")
    out = {}
    for name, task, spec in (("clf", None, {}), ("lora", None, {"method": "lora", "learning_rate": 5e-3}),
                             ("reg", {"type": "regression"}, {})):
        (tmp / name).mkdir()
        out[name] = train(project(tmp / name, tiny_bert, task=task, train_spec={"max_steps": 20, **spec}))
    return out

