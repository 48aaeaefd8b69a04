"""The shipped example configs prepare their real packaged data (minutes, so marked slow)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunesmith.config import load_config
from tunesmith.data.prepare import prepare

EXAMPLES = Path(__file__).parent.parent / "examples"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["food_reviews", "vader_regression", "chatterbot_chat", "chatterbot_topics"])
def test_example_prepares(name: str, tmp_path: Path) -> None:
    version = prepare(load_config(EXAMPLES / f"{name}.yaml"), tmp_path / name)
    c = version.manifest.counts
    assert c["train"] + c["validation"] + c["test"] + c["quarantine"] == c["input"] > 100
    assert c["test"] > 0 and c["validation"] > 0


@pytest.mark.slow
def test_chat_example_trains_a_few_steps_and_beats_the_base_on_loss(tmp_path: Path) -> None:
    """The real SmolLM2 + LoRA recipe, shortened: a few steps already lower the test loss."""
    from tunesmith.evaluation.run import evaluate_run
    from tunesmith.training import train

    cfg = load_config(EXAMPLES / "chatterbot_chat.yaml", [
        f"data.output_dir={tmp_path / 'ds'}", f"train.output_dir={tmp_path / 'run'}", "train.max_steps=12",
        "eval.max_generations=16", "eval.max_new_tokens=32"])
    run_dir = train(cfg)
    result = evaluate_run(run_dir)
    assert result["metrics"]["loss"] < result["base_model"]["loss"]
    assert result["metrics"]["stopped"] > 0.5
