"""DPO on preference pairs (OpenAI's DPO format) with a tiny Llama: from the base model and from an SFT run."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch

from tests.test_train_chat import QA, chat_project
from tunesmith.artifacts import STEP_METRICS, Run
from tunesmith.config import parse_config
from tunesmith.errors import ConfigError
from tunesmith.inference.generation import ChatModel
from tunesmith.training import train

GOOD = {q: a for q, a in QA}
BAD = "not the food"  # the answer the pairs teach the model to avoid


def openai_pairs(n: int) -> list[dict]:
    out = []
    for i in range(n):
        q, a = QA[i % len(QA)]
        out.append({"input": {"messages": [{"role": "system", "content": f"you are friendly number {i}"},
                                           {"role": "user", "content": q}], "tools": [], "parallel_tool_calls": True},
                    "preferred_output": [{"role": "assistant", "content": a}],
                    "non_preferred_output": [{"role": "assistant", "content": BAD}]})
    return out


def dpo_project(tmp: Path, model: str | Path, train_spec: dict | None = None):
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "pairs.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in openai_pairs(80)))
    return parse_config({
        "name": "tiny-dpo",
        "task": {"type": "preference"},
        "data": {"sources": [{"path": str(path)}], "output_dir": str(tmp / "ds"),
                 "dedup": {"near": False}, "split": {"leakage": "report"}},
        "model": {"name": str(model)},
        "train": {"learning_rate": 5e-3, "epochs": 3, "batch_size": 8, "early_stopping_patience": None,
                  "output_dir": str(tmp / "run"), **(train_spec or {})},
        "eval": {"max_new_tokens": 16, "max_generations": 8},
    })


def margins(model: ChatModel, with_adapter: bool = True) -> float:
    prompts = [[{"role": "system", "content": "you are friendly number 3"}, {"role": "user", "content": q}] for q, _ in QA]
    chosen = model.token_stats([[*p, {"role": "assistant", "content": GOOD[p[-1]["content"]]}] for p in prompts])
    rejected = model.token_stats([[*p, {"role": "assistant", "content": BAD}] for p in prompts])
    return sum(c[0] - r[0] for c, r in zip(chosen, rejected, strict=True)) / len(prompts)


def test_dpo_from_the_base_model_prefers_the_chosen_answers(tmp_path: Path, tiny_llama: Path) -> None:
    cfg = dpo_project(tmp_path, tiny_llama)
    assert cfg.train.method == "lora"  # the default for generative tasks
    run_dir = train(cfg)
    m = Run(run_dir).manifest
    assert m.task == "preference" and m.adapter
    model = ChatModel.from_run(run_dir)
    tuned = margins(model)
    with model.base_model():
        base = margins(model)
    assert tuned > base + 1.0  # log-likelihood moved towards chosen and away from rejected

    from tunesmith.evaluation.run import evaluate_run

    result = evaluate_run(run_dir)
    assert result["metrics"]["preference_accuracy"] == 1.0
    assert result["metrics"]["reward_accuracy"] > 0.9
    assert result["base_model"]["preference_accuracy"] < result["metrics"]["preference_accuracy"]


def test_dpo_writes_openai_step_metrics(tmp_path: Path, tiny_llama: Path) -> None:
    # DPO runs wrote no step_metrics.csv, so an OpenAI DPO job's result file was a header without a row.
    run_dir = train(dpo_project(tmp_path, tiny_llama, {"epochs": 1, "max_steps": 4}))
    with (run_dir / STEP_METRICS).open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) >= 2 and int(rows[-1]["step"]) == 4  # a row each time the Trainer logged
    assert all(float(r["train_loss"]) > 0 and float(r["valid_loss"]) > 0 for r in rows)
    assert all(0 <= float(r["train_mean_token_accuracy"]) <= 1 for r in rows)  # on the chosen answers


def test_dpo_continues_from_an_sft_run(tmp_path: Path, tiny_llama: Path) -> None:
    sft = train(chat_project(tmp_path / "sft", tiny_llama, {"epochs": 2}))
    run_dir = train(dpo_project(tmp_path / "dpo", sft, {"epochs": 1}))
    m = Run(run_dir).manifest
    assert m.base_model_path == str(sft)  # the SFT model is the starting point and the DPO reference
    answer = ChatModel.from_run(run_dir).generate([[{"role": "user", "content": QA[0][0]}]], max_new_tokens=16)[0]
    assert answer.finish_reason == "stop"


def test_a_prompt_tuning_run_is_refused_as_the_starting_model(tmp_path: Path, tiny_llama: Path) -> None:
    # Its virtual tokens cannot be merged into the weights: DPO from it died in merge_and_unload with an AttributeError.
    pt = train(chat_project(tmp_path / "pt", tiny_llama, {"method": "prompt_tuning", "epochs": 1, "max_steps": 1}, n=20))
    with pytest.raises(ConfigError, match=r"model.name .*: a prompt-tuning run cannot be trained on from"):
        train(dpo_project(tmp_path / "dpo", pt, {"epochs": 1}))


def test_preference_run_needs_a_causal_lm(tmp_path: Path, tiny_bert: Path) -> None:
    import shutil

    from tests.tiny_models import build_tokenizer

    encoder = shutil.copytree(tiny_bert, tmp_path / "bert")
    build_tokenizer(encoder, chat=True)  # a chat template, so only the architecture is wrong
    with pytest.raises(ConfigError, match="not a causal language model"):
        train(dpo_project(tmp_path, encoder))


def first_loss(run_dir: Path) -> float:
    log = [json.loads(line) for line in (run_dir / "training_log.jsonl").read_text().splitlines()]
    return next(e["loss"] for e in log if "loss" in e and e.get("step") == 1)


@pytest.mark.parametrize("start", ["base", "lora-sft"])
def test_full_dpo_starts_level_with_its_reference(tmp_path: Path, tiny_llama: Path, start: str) -> None:
    """The reference is the model training starts from, so the first step's loss is log 2. From a LoRA SFT run
    (merged) TRL reloaded the reference from config._name_or_path, the untuned base: 0.66 there, not the SFT model."""
    model = tiny_llama
    if start == "lora-sft":
        model = train(chat_project(tmp_path / "sft", tiny_llama, {"method": "lora", "learning_rate": 5e-3,
                                                                   "max_steps": 6, "epochs": 1}, n=40))
    run_dir = train(dpo_project(tmp_path / "dpo", model, {"method": "full", "epochs": 1, "max_steps": 1}))
    assert first_loss(run_dir) == pytest.approx(math.log(2), abs=1e-5)


def test_a_dpo_adapter_run_saves_only_the_trained_adapter(tmp_path: Path, tiny_llama: Path) -> None:
    # TRL's frozen copy of the new adapter (named "ref") was saved beside it in model/ref/.
    run_dir = train(dpo_project(tmp_path, tiny_llama, {"epochs": 1, "max_steps": 1}))
    assert not (run_dir / "model" / "ref").exists()
    assert (run_dir / "model" / "adapter_model.safetensors").exists()
    assert first_loss(run_dir) == pytest.approx(math.log(2), abs=1e-5)  # a fresh adapter switched off: the start


def test_prompt_tuning_dpo_is_scored_against_the_base_model(tmp_path: Path, tiny_llama: Path) -> None:
    """The reference of prompt-tuning DPO is the base model (the adapter switched off), as evaluation's reward_accuracy
    has it; TRL's own was a copy of the initial virtual tokens, which are never saved."""
    from tunesmith.tasks import chat
    from tunesmith.training import chat as chat_training
    from tunesmith.training.dataset import ensure_dataset
    from tunesmith.training.methods import apply_method

    cfg = dpo_project(tmp_path, tiny_llama, {"method": "prompt_tuning", "epochs": 1, "max_steps": 1})
    version = ensure_dataset(cfg)
    model, tokenizer, _ = chat_training.starting_model(str(cfg.model.name))
    chat.set_chat_template(tokenizer, None, str(cfg.model.name))
    model = apply_method(model, cfg.train, cfg.peft, causal_lm=True)
    trainer, _ = chat_training._dpo_trainer(cfg, version, model, tokenizer, tmp_path / "run", 256, [])
    assert list(model.peft_config) == ["default"]
    batch = next(iter(trainer.get_train_dataloader()))
    trainer.model.eval()
    metrics = trainer._metrics["eval"]
    with torch.no_grad():
        trainer.compute_loss(trainer.model, batch)
        tuned, reward = metrics["logps/chosen"][-1], metrics["rewards/chosen"][-1]
        with model.disable_adapter():
            base = trainer.compute_loss(trainer.model, batch) and metrics["logps/chosen"][-1]
    assert abs(tuned - base) > 1e-3  # the virtual tokens change the answers' log-probabilities
    assert tuned - reward / cfg.train.dpo_beta == pytest.approx(base, abs=1e-3)  # TRL's reference log-probs
