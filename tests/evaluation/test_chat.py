"""Evaluating chat runs whose test conversations are not all questions followed by an answer."""

from __future__ import annotations

import json
from pathlib import Path

from tests.test_train_chat import chat_raw
from tunesmith.artifacts import DatasetVersion
from tunesmith.config import parse_config
from tunesmith.evaluation.run import evaluate_run
from tunesmith.training import train


def test_a_conversation_that_opens_with_its_answer_is_scored_but_not_asked(tmp_path: Path, tiny_llama: Path) -> None:
    """Prepare and training take a conversation whose only trained answer opens it; evaluate asked the model to
    answer its empty beginning and failed ("Cannot apply chat template to an empty conversation")."""
    raw = chat_raw(tmp_path, tiny_llama, {"method": "lora", "max_steps": 1, "learning_rate": 5e-3}, n=40)
    raw["eval"]["max_generations"] = None
    with (tmp_path / "chat.jsonl").open("a") as f:
        for i in range(30):
            f.write(json.dumps({"messages": [{"role": "assistant", "content": f"hello there, number {i}"}]}) + "\n")
    run = train(parse_config(raw))
    test = DatasetVersion(tmp_path / "ds").table("test").to_pylist()
    opening = sum(r["messages"][0]["role"] == "assistant" for r in test)
    assert opening >= 1

    result = evaluate_run(run)
    assert result["n"] == len(test)  # all of them in the token metrics
    note = f"{opening} of {len(test)} conversations open with the answer"
    assert any(n.startswith(note) for n in result["notes"])
    assert result["metrics"]["loss"] > 0 and result["base_model"]["loss"] > 0


def test_a_split_with_nothing_to_answer_has_no_answer_scores(tmp_path: Path, tiny_llama: Path) -> None:
    """Every conversation opens with its answer: none is asked, and exact match, token F1, ROUGE-L, 'stopped' and the
    answer length were reported as 0.0 for answers never generated."""
    from tunesmith.data.prepare import prepare
    from tunesmith.evaluation.report import markdown

    run = train(parse_config(chat_raw(tmp_path, tiny_llama, {"method": "lora", "max_steps": 1, "learning_rate": 5e-3},
                                      n=40)))
    (tmp_path / "asst.jsonl").write_text("".join(
        json.dumps({"messages": [{"role": "assistant", "content": f"hello number {i} the food was great"}]}) + "\n"
        for i in range(40)))
    raw = chat_raw(tmp_path / "asst", tiny_llama)
    raw["data"]["sources"] = [{"path": str(tmp_path / "asst.jsonl")}]
    version = prepare(parse_config(raw))

    result = evaluate_run(run, dataset_dir=version.path)
    answers = ("exact_match", "token_f1", "rouge_l", "stopped", "answer_tokens")
    for metrics in (result["metrics"], result["base_model"]):
        assert {k: metrics[k] for k in answers} == dict.fromkeys(answers)
        assert metrics["loss"] > 0  # the token metrics are still there
    assert result["samples"] == []
    assert "| exact match ↑ | – | – |" in markdown(result)
