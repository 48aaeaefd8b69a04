"""Chat fine-tuning on a tiny local Llama: loss only where OpenAI's format says, packing keeps
conversations apart, the model learns, stops, and the run folder serves both tuned and base answers."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from tests.tiny_models import CHAT_TEMPLATE, build_tiny_gpt2
from tunesmith.artifacts import Run
from tunesmith.config import parse_config
from tunesmith.errors import ConfigError
from tunesmith.inference.generation import ChatModel
from tunesmith.tasks import chat
from tunesmith.training import train

QA = [("what is the capital of france?", "paris is the capital of france."),
      ("hello how are you today?", "i am fine thank you"),
      ("how is the coffee?", "terrible coffee, stale and bitter"),
      ("how was the food?", "the food was great"),
      ("how is the tea?", "the tea tastes wonderful")]

# a chat template whose generation prompt ends in a space ("### Assistant: ")
SPACE_TEMPLATE = ("{% for m in messages %}{% if m['role']=='user' %}### User: {{ m['content'] }}\n"
                  "{% elif m['role']=='system' %}{{ m['content'] }}\n{% else %}### Assistant: {{ m['content'] }}{{ eos_token }}\n"
                  "{% endif %}{% endfor %}{% if add_generation_prompt %}### Assistant: {% endif %}")


def conversations(n: int) -> list[dict]:
    out = []
    for i in range(n):
        q, a = QA[i % len(QA)]
        messages = [{"role": "system", "content": f"you are friendly number {i}"}, {"role": "user", "content": q},
                    {"role": "assistant", "content": a}]
        if i % 4 == 3:  # multi-turn, the first answer not trained (OpenAI's weight 0)
            q2, a2 = QA[(i + 1) % len(QA)]
            messages[-1]["weight"] = 0
            messages += [{"role": "user", "content": q2}, {"role": "assistant", "content": a2, "weight": 1}]
        out.append({"messages": messages})
    return out


def chat_project(tmp: Path, model: Path, train_spec: dict | None = None, n: int = 100, **model_spec):
    return parse_config(chat_raw(tmp, model, train_spec, n, **model_spec))


def chat_raw(tmp: Path, model: Path, train_spec: dict | None = None, n: int = 100, **model_spec) -> dict:
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "chat.jsonl"
    path.write_text("".join(json.dumps(c) + "\n" for c in conversations(n)))
    raw = {
        "name": "tiny-chat",
        "task": {"type": "chat"},
        "data": {"sources": [{"path": str(path)}], "output_dir": str(tmp / "ds"),
                 "dedup": {"near": False}, "split": {"leakage": "report"}},
        "model": {"name": str(model), **model_spec},
        "train": {"method": "full", "learning_rate": 3e-3, "epochs": 15, "batch_size": 8, "early_stopping_patience": None,
                  "output_dir": str(tmp / "run"), **(train_spec or {})},
        "eval": {"max_new_tokens": 24},
    }
    return raw


def tokenizer_of(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


# --- which tokens carry loss ----------------------------------------------------------------------


def test_only_weighted_assistant_answers_and_their_end_of_turn_carry_loss(tiny_llama: Path) -> None:
    tok = tokenizer_of(tiny_llama)
    messages = [{"role": "system", "content": "you are friendly"},
                {"role": "user", "content": "how is the coffee?"},
                {"role": "assistant", "content": "terrible coffee", "weight": 0},
                {"role": "user", "content": "how is the tea?"},
                {"role": "assistant", "content": "the tea tastes wonderful", "weight": 1}]
    enc = chat.encode(tok, messages)
    assert len(enc["input_ids"]) == len(enc["assistant_masks"])
    trained = [t for t, m in zip(enc["input_ids"], enc["assistant_masks"], strict=True) if m]
    # Exactly the weight-1 answer followed by the end-of-turn token, which is what teaches stopping.
    assert tok.decode(trained[:-1]) == "the tea tastes wonderful"
    assert trained[-1] == tok.convert_tokens_to_ids("<|im_end|>")
    # The whole conversation is tokenized as one text, exactly as at inference.
    assert enc["input_ids"] == tok(chat.render(tok, messages), add_special_tokens=False)["input_ids"]

    messages[-1]["weight"] = None  # no weight: trained, like OpenAI's default
    both = chat.encode(tok, messages)
    assert sum(both["assistant_masks"]) == sum(enc["assistant_masks"])
    messages[2]["weight"] = 1
    assert sum(chat.encode(tok, messages)["assistant_masks"]) == sum(enc["assistant_masks"]) + 3  # "terrible coffee" + end


@pytest.mark.parametrize("default_system", [False, True])
def test_a_conversation_that_opens_with_the_assistant_trains_only_its_answers(tiny_llama: Path,
                                                                               default_system: bool) -> None:
    # The opening answer's span started at the conversation's first character: the template's assistant header,
    # and a default system prompt a template adds (SmolLM2's, Qwen's), were trained as if the model had said them.
    tok = tokenizer_of(tiny_llama)
    if default_system:  # SmolLM2's template: a system prompt of its own when the conversation brings none
        tok.chat_template = ("{% for m in messages %}{% if loop.first and m['role'] != 'system' %}"
                             "<|im_start|>system\nyou are friendly<|im_end|>\n{% endif %}"
                             "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                             "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    messages = [{"role": "assistant", "content": "hello how are you today?"}, {"role": "user", "content": "i am fine"},
                {"role": "assistant", "content": "great"}]
    enc = chat.encode(tok, messages)
    trained = [t for t, m in zip(enc["input_ids"], enc["assistant_masks"], strict=True) if m]
    end = tok.convert_tokens_to_ids("<|im_end|>")
    expected = [*tok("hello how are you today?", add_special_tokens=False)["input_ids"], end,
                *tok("great", add_special_tokens=False)["input_ids"], end]
    assert trained == expected


def test_stop_tokens_include_the_end_of_turn_token(tiny_llama: Path) -> None:
    tok = tokenizer_of(tiny_llama)
    assert chat.stop_token_ids(tok) == [tok.convert_tokens_to_ids("<|im_end|>")]
    tok.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    with pytest.raises(ConfigError, match="does not end an assistant turn with a special token"):
        chat.stop_token_ids(tok)


def test_packing_keeps_conversations_apart(tiny_llama: Path) -> None:
    """Padding-free packing: two conversations in one row give the same logits as each alone."""
    from transformers import AutoModelForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    tok = tokenizer_of(tiny_llama)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()
    a = chat.encode(tok, conversations(1)[0]["messages"])
    b = chat.encode(tok, conversations(3)[2]["messages"])
    packed = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id, padding_free=True)(
        [{"input_ids": a["input_ids"]}, {"input_ids": b["input_ids"]}])
    assert packed["input_ids"].shape == (1, len(a["input_ids"]) + len(b["input_ids"]))
    assert "attention_mask" not in packed
    with torch.no_grad():  # use_cache=False as in training (TRL sets it): masks come from the position ids
        together = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"], use_cache=False).logits[0]
        alone_b = model(input_ids=torch.tensor([b["input_ids"]]), use_cache=False).logits[0]
        leaky = model(input_ids=packed["input_ids"], use_cache=False).logits[0]  # one long sequence: b attends to a
    n = len(a["input_ids"])
    torch.testing.assert_close(together[n:], alone_b, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(leaky[n:], alone_b, atol=1e-3)  # the check above can fail


# --- training -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tuned_run(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> Path:
    tmp = tmp_path_factory.mktemp("chat-run")
    return train(chat_project(tmp, tiny_llama))


def test_sft_learns_and_writes_openai_step_metrics(tuned_run: Path) -> None:
    log = [json.loads(line) for line in (tuned_run / "training_log.jsonl").read_text().splitlines()]
    train_losses = [e["loss"] for e in log if "loss" in e]
    assert train_losses[-1] < train_losses[0] / 3
    with (tuned_run / "step_metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["step", "train_loss", "train_mean_token_accuracy", "valid_loss",
                             "valid_mean_token_accuracy", "full_valid_loss", "full_valid_mean_token_accuracy"]
    assert float(rows[-1]["full_valid_loss"]) < float(next(r["valid_loss"] for r in rows if r["valid_loss"]))
    assert 0 <= float(rows[-1]["full_valid_mean_token_accuracy"]) <= 1
    m = Run(tuned_run).manifest
    assert m.task == "chat" and m.stop_token_ids and m.metrics["full_valid_loss"] < 1.0
    model_files = {p.name for p in (tuned_run / "model").iterdir()}
    assert {"model.safetensors", "chat_template.jinja", "generation_config.json"} <= model_files
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in model_files)


def test_validation_loss_is_per_trained_token_over_the_whole_split(tmp_path: Path, tiny_llama: Path) -> None:
    """full_valid_loss is the loss of every trained validation token, each conversation scored alone, summed and
    divided by their count; not the Trainer's mean of per-batch means (its batches here: 8 and 2 conversations,
    with different token counts and losses)."""
    from tunesmith.artifacts import DatasetVersion
    from tunesmith.models import loading

    run = Run(train(chat_project(tmp_path, tiny_llama, {"max_steps": 3, "batch_size": 4})))  # evaluation batches of 8
    loaded = loading.load_run(run)
    rows = DatasetVersion(run.manifest.dataset).hf_dataset("validation")
    assert 8 < len(rows) <= 16  # two evaluation batches of unequal size
    losses, counts = [], []
    with torch.no_grad():
        for messages in rows["messages"]:
            enc = chat.encode(loaded.tokenizer, messages)
            ids, mask = torch.tensor([enc["input_ids"]]), torch.tensor(enc["assistant_masks"][1:]).bool()
            logits = loaded.model(input_ids=ids).logits[0, :-1].float()
            losses.append(torch.nn.functional.cross_entropy(logits[mask], ids[0, 1:][mask], reduction="sum").item())
            counts.append(int(mask.sum()))
    assert run.manifest.metrics["full_valid_loss"] == pytest.approx(sum(losses) / sum(counts), rel=1e-4)
    batch_means = [sum(losses[:8]) / sum(counts[:8]), sum(losses[8:]) / sum(counts[8:])]
    assert abs(sum(batch_means) / 2 - sum(losses) / sum(counts)) > 1e-3  # the other average would be told apart


def test_tuned_model_answers_and_stops(tuned_run: Path) -> None:
    model = ChatModel.from_run(tuned_run)
    prompts = [[{"role": "system", "content": "you are friendly number 7"}, {"role": "user", "content": q}] for q, _ in QA]
    answers = model.generate(prompts, max_new_tokens=40)
    assert all(a.finish_reason == "stop" for a in answers)  # it emits the end-of-turn token
    assert all(a.completion_tokens < 20 for a in answers)
    assert sum(a.text.replace(" ", "") == ref.replace(" ", "") for a, (_, ref) in zip(answers, QA, strict=True)) >= 3


def test_a_row_whose_request_was_given_up_stops_at_its_next_token(tuned_run: Path) -> None:
    """A non-streamed request past the server's --timeout got its 504 while transformers decoded its row on to
    max_tokens for no one, and the rows batched with it waited for that."""
    import threading

    model = ChatModel.from_run(tuned_run)
    prompts = [model.prompt_text([{"role": "user", "content": q}]) for q, _ in QA[:2]]
    alone = model.generate_texts(prompts[1:], max_new_tokens=40)[0]
    gone, waiting = threading.Event(), threading.Event()
    gone.set()
    cancelled, kept = model.generate_texts(prompts, max_new_tokens=40, cancels=[gone, waiting])
    assert cancelled.completion_tokens <= 1 < alone.completion_tokens
    assert kept == alone  # the rest of the batch answers as before


def test_a_seeded_sampled_answer_is_the_same_alone_or_beside_others(tuned_run: Path) -> None:
    # Rows of one batch drew from one random stream: 19 of 20 same-seed requests answered otherwise when batched.
    model = ChatModel.from_run(tuned_run)
    prompts = [model.prompt_text([{"role": "user", "content": q}]) for q, _ in QA[:4]]
    params = {"max_new_tokens": 12, "temperature": 1.5, "top_p": 1.0, "seed": 7}
    alone = [model.generate_texts([p], **params)[0].text for p in prompts]
    assert [c.text for c in model.generate_texts(prompts, **params)] == alone
    assert [c.text for c in model.generate_texts(prompts[::-1], **params)] == alone[::-1]


def test_a_seeded_answer_is_kept_while_another_thread_samples(tuned_run: Path) -> None:
    # The server runs models' generate calls in threads: all drew from PyTorch's one generator, so a seeded request
    # answered otherwise (7 answers in 10) while another model sampled.
    import threading

    model = ChatModel.from_run(tuned_run)
    prompt = model.prompt_text([{"role": "user", "content": QA[0][0]}])
    params = {"max_new_tokens": 12, "temperature": 1.5, "top_p": 1.0}
    alone = model.generate_texts([prompt], seed=7, **params)[0].text
    done = threading.Event()

    def other() -> None:
        while not done.is_set():
            model.generate_texts([prompt], **params)

    thread = threading.Thread(target=other)
    thread.start()
    try:
        answers = {model.generate_texts([prompt], seed=7, **params)[0].text for _ in range(8)}
    finally:
        done.set()
        thread.join()
    assert answers == {alone}


def test_a_short_prompt_batched_beside_one_near_the_context_keeps_its_own_room(tuned_run: Path) -> None:
    # The batch's new tokens were bounded by its longest prompt: 10 tokens for a short prompt that alone got 40.
    model = ChatModel.from_run(tuned_run)
    long = model.prompt_text([{"role": "user", "content": " ".join(q for q, _ in QA) * 4}])
    while model.count_tokens(long) > model.context - 5:
        long = long[: len(long) - 10]
    short = model.prompt_text([{"role": "user", "content": QA[0][0]}])
    alone = model.generate_texts([short], max_new_tokens=40)[0]
    together = model.generate_texts([short, long], max_new_tokens=40)
    assert together[0] == alone and together[1].completion_tokens <= 5


def test_sampling_draws_from_the_whole_distribution(tuned_run: Path) -> None:
    # transformers fills in top_k=50 when sampling; OpenAI's API (and the other engines) have no top_k
    model = ChatModel.from_run(tuned_run)
    assert len(model.tokenizer) > 90
    prompt = model.prompt_text([{"role": "user", "content": QA[0][0]}])
    firsts = model.generate_texts([prompt] * 240, max_new_tokens=1, temperature=50.0, batch_size=240)
    assert len({c.text for c in firsts}) > 55  # at a near-uniform temperature; top_k 50 gave at most 50


def test_evaluation_puts_base_and_tuned_side_by_side(tuned_run: Path) -> None:
    from tunesmith.evaluation.run import evaluate_run

    result = evaluate_run(tuned_run)
    tuned, base = result["metrics"], result["base_model"]
    assert tuned["loss"] < base["loss"] / 3
    assert tuned["rouge_l"] > base["rouge_l"] and tuned["stopped"] == 1.0
    assert result["samples"] and {"prompt", "reference", "base", "tuned"} <= set(result["samples"][0])
    html = (tuned_run / "eval" / "test" / "report.html").read_text()
    assert "Answers side by side" in html and "base model" in html


def test_lora_is_the_default_for_chat_and_the_adapter_merges(tmp_path: Path, tiny_llama: Path) -> None:
    cfg = chat_project(tmp_path, tiny_llama, {"method": None, "learning_rate": 5e-3, "epochs": 2, "merge_adapter": True})
    assert cfg.train.method == "lora"
    run_dir = train(cfg)
    m = Run(run_dir).manifest
    assert m.adapter and m.merged
    assert (run_dir / "adapter" / "adapter_config.json").exists()
    adapter_cfg = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())
    assert set(adapter_cfg["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    # model/ is plain full weights that transformers loads alone, equal to base + adapter.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(run_dir / "model").eval()
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), run_dir / "adapter").eval()
    ids = torch.tensor([chat.encode(tokenizer_of(run_dir / "model"), conversations(1)[0]["messages"])["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, with_adapter(ids).logits, atol=1e-4, rtol=1e-4)
        base = AutoModelForCausalLM.from_pretrained(tiny_llama).eval()(ids).logits
    assert not torch.allclose(merged(ids).logits, base, atol=1e-4)


def test_openai_hyperparameters_resolve_from_the_data(tmp_path: Path, tiny_llama: Path) -> None:
    raw = chat_raw(tmp_path, tiny_llama)
    with pytest.raises(ConfigError, match=r"replaces \['batch_size', 'epochs', 'learning_rate'\]"):
        parse_config({**raw, "train": {**raw["train"], "hyperparameters": {"n_epochs": 2}}})
    for key in ("epochs", "batch_size", "learning_rate"):
        raw["train"].pop(key)
    raw["train"]["hyperparameters"] = {"n_epochs": 2, "batch_size": "auto", "learning_rate_multiplier": 4}
    run_dir = train(parse_config(raw))
    m = Run(run_dir).manifest
    n_train = json.loads((tmp_path / "ds" / "manifest.json").read_text())["counts"]["train"]
    assert m.openai_hyperparameters == {"n_epochs": 2, "batch_size": max(1, round(n_train * 0.002)), "learning_rate_multiplier": 4.0}
    assert m.hyperparameters["learning_rate"] == pytest.approx(4 * 2e-5)  # full fine-tuning's chat rate x 4


def test_openai_batch_size_is_the_examples_per_optimizer_step_across_processes(tmp_path: Path, tiny_llama: Path,
                                                                             monkeypatch) -> None:
    """OpenAI's batch_size counts the examples of every process and accumulated micro-batch in one optimizer step:
    passed on as the per-process batch, `--nproc 2` trained batches of 16 for batch_size 8 (and the run said 8)."""
    from tunesmith.training.run import schedule

    raw = chat_raw(tmp_path, tiny_llama)
    for key in ("epochs", "batch_size", "learning_rate"):
        raw["train"].pop(key)

    def cfg(batch: int | str, grad_accum: int = 1):
        return parse_config({**raw, "train": {**raw["train"], "grad_accum": grad_accum,
                                              "hyperparameters": {"n_epochs": 2, "batch_size": batch}}})

    monkeypatch.setenv("WORLD_SIZE", "2")  # torchrun's, as each of 2 workers finds it
    two = schedule(cfg(8), 68)
    assert two["batch_size"] == 4 and two["openai"]["batch_size"] == 8  # 4 per process x 2 processes
    assert schedule(cfg(8), 68, world=1)["batch_size"] == 8
    assert schedule(cfg(8, grad_accum=2), 68, world=2)["batch_size"] == 2
    with pytest.raises(ConfigError, match=r"hyperparameters\.batch_size 6 .*among 4 process\(es\) x train\.grad_accum 1"):
        schedule(cfg(6), 68, world=4)
    with pytest.raises(ConfigError, match=r"hyperparameters\.batch_size 8 .*among 2 process\(es\) x train\.grad_accum 3"):
        schedule(cfg(8, grad_accum=3), 68)
    # "auto" resolves 68 examples to a batch of 1, which 2 processes cannot split: it takes 2, and scales for 2
    auto = schedule(cfg("auto"), 68, world=2)
    assert auto["batch_size"] == 1 and auto["openai"]["batch_size"] == 2
    assert auto["openai"]["learning_rate_multiplier"] == round((2 / 16) ** 0.5, 3)


def test_base_model_without_chat_template_is_refused_until_one_is_given(tmp_path: Path) -> None:
    gpt2 = build_tiny_gpt2(tmp_path / "gpt2")
    with pytest.raises(ConfigError, match="has no chat template"):
        train(chat_project(tmp_path / "a", gpt2))
    assert not (tmp_path / "a" / "run" / "run.json").exists()
    template = tmp_path / "chatml.jinja"
    template.write_text(CHAT_TEMPLATE)
    run_dir = train(chat_project(tmp_path / "b", gpt2, {"epochs": 1}, chat_template=str(template)))
    assert (run_dir / "model" / "chat_template.jinja").read_text() == CHAT_TEMPLATE
    assert ChatModel.from_run(run_dir).generate([[{"role": "user", "content": "hello"}]], max_new_tokens=4)


def test_resume_from_a_checkpoint_matches_the_uninterrupted_run(tmp_path: Path, tiny_llama: Path, capsys) -> None:
    """A run stopped after its first checkpoint and resumed ends where the uninterrupted run ended."""
    import shutil

    spec = {"max_steps": 24, "evals_per_epoch": 1, "save_total_limit": 10, "learning_rate": 3e-3}
    a = train(chat_project(tmp_path, tiny_llama, spec))
    cfg_b = chat_project(tmp_path, tiny_llama, {**spec, "output_dir": str(tmp_path / "b")})
    ckpts = sorted((a / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert len(ckpts) >= 2 and ckpts[-1].name == "checkpoint-24"
    (tmp_path / "b" / "checkpoints").mkdir(parents=True)
    shutil.copytree(ckpts[0], tmp_path / "b" / "checkpoints" / ckpts[0].name)  # as if killed after that step
    (tmp_path / "b" / "config.json").write_text(cfg_b.model_dump_json())
    capsys.readouterr()
    b = train(cfg_b, resume=tmp_path / "b")
    assert f"resuming from {ckpts[0].name}" in capsys.readouterr().out
    assert (b / "checkpoints" / "checkpoint-24").exists()
    assert Run(b).manifest.metrics["full_valid_loss"] == pytest.approx(Run(a).manifest.metrics["full_valid_loss"], rel=1e-4)
    # OpenAI's step metrics keep the steps trained before the checkpoint, not only those after resuming
    steps = {run: [row["step"] for row in csv.DictReader((run / "step_metrics.csv").open())] for run in (a, b)}
    assert steps[b] == steps[a] and int(steps[b][0]) <= int(ckpts[0].name.split("-")[1])


def test_a_run_resumed_where_it_had_stopped_keeps_its_step_metrics(tmp_path: Path, tiny_llama: Path, capsys) -> None:
    """Killed after its last checkpoint (before run.json) and resumed, the run is finished from that checkpoint
    without training; step_metrics.csv was rewritten with only the full_valid row."""
    import shutil

    spec = {"max_steps": 6, "evals_per_epoch": 3, "learning_rate": 3e-3}
    a = train(chat_project(tmp_path, tiny_llama, spec, n=40))
    b = tmp_path / "b"
    cfg_b = chat_project(tmp_path, tiny_llama, {**spec, "output_dir": str(b)}, n=40)
    b.mkdir()
    shutil.copytree(a / "checkpoints", b / "checkpoints")
    (b / "config.json").write_text(cfg_b.model_dump_json())
    capsys.readouterr()
    train(cfg_b, resume=b)
    assert "the run had stopped there; finishing it" in capsys.readouterr().out
    rows = {run: list(csv.DictReader((run / "step_metrics.csv").open())) for run in (a, b)}
    assert len(rows[a]) == 6 and rows[b] == rows[a]


def test_the_saved_model_generates_with_a_cache(tuned_run: Path) -> None:
    # TRL trains with use_cache off; saved so, transformers' generate elsewhere recomputed every past token.
    assert json.loads((tuned_run / "model" / "config.json").read_text())["use_cache"] is True


def test_two_processes_train_a_chat_adapter(tmp_path: Path, tiny_llama: Path) -> None:
    """torchrun with 2 CPU processes: the full-validation pass after training is collective, so every
    process takes part before rank 0 merges the adapter and writes the run folder."""
    from tests.test_train import _cli, _config_file

    cfg = chat_project(tmp_path, tiny_llama, {"method": "lora", "learning_rate": 5e-3, "epochs": 1, "merge_adapter": True})
    proc = _cli("train", str(_config_file(tmp_path, cfg)), "--nproc", "2", cwd=tmp_path)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output
    run = Run(tmp_path / "run")
    assert run.manifest.processes == 2 and run.manifest.merged
    assert run.manifest.metrics["full_valid_loss"] > 0
    answer = ChatModel.from_run(run.path).generate([[{"role": "user", "content": QA[0][0]}]], max_new_tokens=8)[0]
    assert answer.completion_tokens > 0


def test_too_few_examples_are_refused_before_training(tmp_path: Path, tiny_llama: Path) -> None:
    from tunesmith.errors import DataError

    with pytest.raises(DataError, match="training split has 8 example"):
        train(chat_project(tmp_path, tiny_llama, n=10))
    assert not (tmp_path / "run").exists()


def test_a_conversation_over_the_training_budget_is_removed_at_prepare_time(tmp_path: Path) -> None:
    """The model's context is 100,000 tokens, training's budget 2,048: a 2,400-token conversation used to
    pass `data prepare` and fail in training; the same rule now removes it while preparing."""
    from tests.tiny_models import build_tokenizer
    from tunesmith.artifacts import DatasetVersion
    from tunesmith.data.prepare import prepare

    folder = build_tokenizer(tmp_path / "tok", chat=True)
    settings = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**settings, "model_max_length": 100_000}))
    raw = chat_raw(tmp_path, folder)
    long = {"messages": [{"role": "user", "content": "tell me about the food"},
                         {"role": "assistant", "content": " ".join(["the food was great"] * 600)}]}
    with (tmp_path / "chat.jsonl").open("a") as f:
        f.write(json.dumps(long) + "\n")
    version = prepare(parse_config(raw))
    assert version.manifest.max_length == 2048 and version.manifest.context_length == 100_000
    [entry] = [q for q in version.quarantine() if q["stage"] == "length"]
    assert entry["line"] == 101 and "over the token budget of 2048" in entry["reason"]
    assert DatasetVersion(version.path).report()["lengths"]["train"]["max"] <= 2048


def test_the_run_records_the_budget_its_dataset_was_prepared_with(tuned_run: Path) -> None:
    from tunesmith.artifacts import DatasetVersion

    m = Run(tuned_run).manifest
    assert m.max_length == DatasetVersion(m.dataset).manifest.max_length == 128  # the tiny Llama's context


def test_two_processes_count_each_validation_conversation_once(tmp_path: Path, tiny_llama: Path) -> None:
    """9 validation conversations in batches of 4 per process: the last batch of the second process is padded
    with the first conversations. The validation loss (which picks the best checkpoint) is per trained token
    over the 9, as one process computes it, not over 9 plus the padding."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.test_train import _cli, _config_file
    from tunesmith.artifacts import MODEL_DIR, DatasetVersion

    # fp32: on a host with native bf16 the run's evaluation would be in bf16, and the check below recomputes in fp32
    cfg = chat_project(tmp_path, tiny_llama, {"epochs": 1, "batch_size": 4, "bf16": False})
    proc = _cli("train", str(_config_file(tmp_path, cfg)), "--nproc", "2", cwd=tmp_path)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output
    run = Run(tmp_path / "run")
    model = AutoModelForCausalLM.from_pretrained(run.path / MODEL_DIR).eval()
    rows = chat.encode_split(AutoTokenizer.from_pretrained(tiny_llama), DatasetVersion(tmp_path / "ds").hf_dataset("validation"),
                             128, "validation")
    assert len(rows) % 8 != 0  # else no batch is padded
    loss, tokens = 0.0, 0
    for row in rows:
        ids = torch.tensor([row["input_ids"]])
        labels = torch.where(torch.tensor(row["assistant_masks"]).bool(), ids[0], -100)[1:]
        with torch.no_grad():
            loss += float(torch.nn.functional.cross_entropy(model(ids).logits[0, :-1], labels, reduction="sum"))
        tokens += int((labels != -100).sum())
    assert run.manifest.metrics["full_valid_loss"] == pytest.approx(loss / tokens, rel=1e-5)


def test_a_generation_prompt_ending_in_a_space_is_a_prefix_of_what_training_tokenized(tmp_path: Path) -> None:
    """Training tokenizes "### Assistant: paris" as ":", " paris"; the prompt ended in a lone " " token the model never
    saw before an answer. It ends before the space now; ChatML's generation prompt, ending in a newline, is as it was."""
    from transformers import AutoTokenizer

    from tests.export.test_gguf import build_bpe_llama
    from tunesmith.inference.generation import Prompting

    tok = AutoTokenizer.from_pretrained(build_bpe_llama(tmp_path / "bpe"))  # byte-level BPE, a ChatML template
    engine = Prompting()
    engine.tokenizer = tok
    conversation = [{"role": "system", "content": "be brief"}, {"role": "user", "content": QA[0][0]},
                    {"role": "assistant", "content": QA[0][1]}]
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    chatml = engine.prompt_text(conversation[:2])
    assert ids(chatml) == ids(chat.render(tok, conversation[:2], generation_prompt=True)) and chatml.answer_prefix == ""
    tok.chat_template = SPACE_TEMPLATE
    prompt = engine.prompt_text(conversation[:2])
    assert prompt.endswith("### Assistant:") and prompt.answer_prefix == " "
    trained = chat.encode(tok, conversation)["input_ids"]
    assert trained[: len(ids(prompt))] == ids(prompt)
    assert tok.convert_ids_to_tokens(trained[len(ids(prompt))]) == "Ġparis"  # the next trained token: the answer's
