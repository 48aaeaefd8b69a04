"""Evaluating chat runs of every PEFT method: the test split's token loss beside the base model's."""

from __future__ import annotations

import math
from pathlib import Path

from tests.test_train_chat import chat_project
from tunesmith.evaluation.run import evaluate_run
from tunesmith.training import train


def test_a_prompt_tuning_chat_run_is_evaluated(tmp_path: Path, tiny_llama: Path) -> None:
    """Its logits start with the virtual tokens' positions: scoring compared them with the text's tokens and failed
    ("Expected target size [3, 101], got [3, 81]"), so no prompt-tuning chat run could be evaluated."""
    run = train(chat_project(tmp_path, tiny_llama, {"method": "prompt_tuning", "max_steps": 4, "epochs": 1,
                                                     "learning_rate": 1e-2}, n=40))
    result = evaluate_run(run)
    tuned, base = result["metrics"], result["base_model"]
    assert math.isfinite(tuned["loss"]) and math.isfinite(base["loss"]) and tuned["loss"] != base["loss"]
    assert 0 <= tuned["mean_token_accuracy"] <= 1
