"""The chunked LM loss of chat SFT (training/lm_loss.py): the same loss and gradients as the full-logits
cross-entropy, on padded and packed batches, under full fine-tuning (tied and untied head) and LoRA, without
ever building a [tokens, vocab] tensor; and through the real trainer, the same logged losses as TRL's path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tests.test_train_chat import chat_project, conversations, tokenizer_of
from tunesmith.tasks import chat
from tunesmith.training import lm_loss, train


def batch(tiny_llama: Path, packed: bool) -> dict[str, torch.Tensor]:
    """Four conversations collated as TRL collates them: padded rows, or one packed row with position ids."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    tok = tokenizer_of(tiny_llama)
    rows = []
    for c in conversations(4):  # the fourth is multi-turn with an untrained first answer
        enc = chat.encode(tok, c["messages"])
        rows.append({"input_ids": enc["input_ids"],
                     "labels": [t if m else -100 for t, m in zip(enc["input_ids"], enc["assistant_masks"], strict=True)]})
    out = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id, padding_free=packed)(rows)
    labels = out["labels"][:, 1:]
    assert 0 < (labels != -100).sum() < labels.numel() / 2  # most positions carry no loss
    assert ("position_ids" in out) == packed and ("attention_mask" in out) != packed
    return out


def model_for(tiny_llama: Path, method: str) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    from tunesmith.config import PeftSpec, TrainSpec
    from tunesmith.training.methods import apply_method

    torch.manual_seed(0)
    if method == "full-tied":  # as SmolLM2: the head is the embedding matrix
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tiny_llama, tie_word_embeddings=True))
        assert model.lm_head.weight is model.model.embed_tokens.weight
    else:
        model = AutoModelForCausalLM.from_pretrained(tiny_llama)
    if method == "lora":
        model = apply_method(model, TrainSpec(method="lora"), PeftSpec(r=4, dropout=0.0))  # dropout: two different forwards
        for name, p in model.named_parameters():  # LoRA's B starts at zero; move it so every gradient is non-trivial
            if "lora_B" in name:
                p.data.normal_(0, 0.1)
    return model.train()


def reference_loss(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The standard way: full logits, shifted, summed cross-entropy over the labelled positions."""
    logits = model(**{k: v for k, v in inputs.items() if k != "labels"}, use_cache=False).logits
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), inputs["labels"][:, 1:].flatten(),
                                             ignore_index=-100, reduction="sum")


def gradients(model: torch.nn.Module, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("method", ["full", "full-tied", "lora"])
def test_loss_and_gradients_equal_the_full_logits_cross_entropy(tiny_llama: Path, method: str, packed: bool) -> None:
    model, inputs = model_for(tiny_llama, method), batch(tiny_llama, packed)
    expected = reference_loss(model, inputs)
    want = gradients(model, expected)
    out = lm_loss.trained_token_loss(model, inputs, chunk_logits=5 * model.config.vocab_size)  # several chunks
    got = gradients(model, out.loss_sum)

    torch.testing.assert_close(out.loss_sum, expected, rtol=1e-5, atol=1e-5)
    assert out.tokens == (inputs["labels"][:, 1:] != -100).sum()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(got) == set(want) == trainable  # nothing frozen got a gradient, nothing trainable missed one
    if method == "lora":
        assert not any("lm_head" in n or "embed_tokens" in n for n in got)
    else:
        head = "model.embed_tokens.weight" if method == "full-tied" else "lm_head.weight"
        assert head in got and got[head].abs().sum() > 0
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6, msg=name)


def test_accuracy_and_entropy_are_those_of_the_full_logits(tiny_llama: Path) -> None:
    model, inputs = model_for(tiny_llama, "full").eval(), batch(tiny_llama, packed=True)
    with torch.no_grad():
        out = lm_loss.trained_token_loss(model, inputs, chunk_logits=3 * model.config.vocab_size)
        logits = model(**{k: v for k, v in inputs.items() if k != "labels"}, use_cache=False).logits[:, :-1]
    labels = inputs["labels"][:, 1:]
    mask = labels != -100
    log_p = logits[mask].float().log_softmax(-1)
    assert out.correct == (log_p.argmax(-1) == labels[mask]).sum()
    torch.testing.assert_close(out.entropy_sum, -(log_p.exp() * log_p).sum(), rtol=1e-5, atol=1e-4)
    assert not out.loss_sum.requires_grad  # evaluation spends nothing on gradients


def test_bf16_autocast_stays_close_to_the_full_logits_loss(tiny_llama: Path) -> None:
    model, inputs = model_for(tiny_llama, "full-tied"), batch(tiny_llama, packed=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = reference_loss(model, inputs)
        out = lm_loss.trained_token_loss(model, inputs, chunk_logits=5 * model.config.vocab_size)
    want, got = gradients(model, expected), gradients(model, out.loss_sum)
    torch.testing.assert_close(out.loss_sum, expected, rtol=1e-2, atol=0)
    for name in want:  # bf16 products: compare the gradients' direction, not their last bits
        cosine = torch.nn.functional.cosine_similarity(got[name].flatten(), want[name].flatten(), dim=0)
        assert cosine > 0.99, name


class LogitShapes(TorchDispatchMode):
    """Records the largest tensor with a vocabulary-sized last dimension that any op produces (the head's
    transposed weight, [hidden, vocab], aside)."""

    def __init__(self, vocab: int, hidden: int) -> None:
        super().__init__()
        self.vocab, self.weight_t, self.largest = vocab, (hidden, vocab), 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else [out]:
            if isinstance(t, torch.Tensor) and t.dim() >= 2 and t.shape[-1] == self.vocab and tuple(t.shape) != self.weight_t:
                self.largest = max(self.largest, t.numel())
        return out


def test_no_tensor_holds_the_logits_of_more_than_one_chunk(tiny_llama: Path) -> None:
    model, inputs = model_for(tiny_llama, "full-tied"), batch(tiny_llama, packed=False)
    vocab, hidden, rows = model.config.vocab_size, model.config.hidden_size, 4
    assert vocab != hidden  # else hidden states would count as logits
    with LogitShapes(vocab, hidden) as chunked:
        lm_loss.trained_token_loss(model, inputs, chunk_logits=rows * vocab).loss_sum.backward()
    with LogitShapes(vocab, hidden) as full:
        reference_loss(model, inputs).backward()
    assert full.largest >= inputs["input_ids"].numel() * vocab  # the check sees the standard path's logits
    assert 0 < chunked.largest <= rows * vocab


def test_a_batch_without_trained_tokens_gives_a_zero_loss_that_backpropagates(tiny_llama: Path) -> None:
    model, inputs = model_for(tiny_llama, "full"), batch(tiny_llama, packed=True)
    inputs["labels"] = torch.full_like(inputs["labels"], -100)
    out = lm_loss.trained_token_loss(model, inputs)
    assert out.loss_sum == 0 and out.tokens == 0
    grads = gradients(model, out.loss_sum)
    assert grads and all(g.abs().sum() == 0 for g in grads.values())


def test_models_the_chunked_head_does_not_model_are_left_to_trl(tiny_llama: Path) -> None:
    from transformers import AutoModelForCausalLM

    from tunesmith.config import PeftSpec, TrainSpec
    from tunesmith.training.methods import apply_method

    assert lm_loss.decoder_and_head(model_for(tiny_llama, "lora")) is not None
    assert lm_loss.better_than_trl(torch.device("cpu"))
    prompt = apply_method(AutoModelForCausalLM.from_pretrained(tiny_llama), TrainSpec(method="prompt_tuning"), PeftSpec())
    assert lm_loss.decoder_and_head(prompt) is None
    scaled = AutoModelForCausalLM.from_pretrained(tiny_llama)
    scaled.config.final_logit_softcapping = 30.0
    assert lm_loss.decoder_and_head(scaled) is None
    with pytest.raises(ValueError, match="no plain decoder"):
        lm_loss.trained_token_loss(scaled, batch(tiny_llama, packed=True))


# --- through the trainer ---------------------------------------------------------------------------


def logged(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "training_log.jsonl").read_text().splitlines()]


def test_sft_logs_the_same_losses_as_trls_own_path(tmp_path: Path, tiny_llama: Path, monkeypatch) -> None:
    """The same short run with the chunked loss and with TRL's fused head: equal losses, token accuracy and
    validation loss step by step, and the chunked loss really ran."""
    spec = {"max_steps": 6, "evals_per_epoch": 2, "bf16": False, "learning_rate": 3e-3}
    calls = []
    real = lm_loss.trained_token_loss
    monkeypatch.setattr(lm_loss, "trained_token_loss", lambda *a, **k: calls.append(1) or real(*a, **k))
    chunked = logged(train(chat_project(tmp_path / "a", tiny_llama, spec, n=40)))
    assert len(calls) >= 6
    ran = len(calls)
    monkeypatch.setattr(lm_loss, "decoder_and_head", lambda model: None)  # every batch to TRL's compute_loss
    trl = logged(train(chat_project(tmp_path / "b", tiny_llama, spec, n=40)))
    assert len(calls) == ran
    keys = ("loss", "mean_token_accuracy", "entropy", "eval_loss", "eval_mean_token_accuracy")
    pairs = [(a[k], b[k]) for a, b in zip(chunked, trl, strict=True) for k in keys if k in a]
    assert len(pairs) >= 8 and all(k in b for a, b in zip(chunked, trl, strict=True) for k in keys if k in a)
    for a, b in pairs:
        assert a == pytest.approx(b, rel=2e-4, abs=1e-5)
    losses = [e["loss"] for e in chunked if "loss" in e]
    assert losses[-1] < losses[0]


def test_bf16_training_runs_the_chunked_loss_under_autocast(tmp_path: Path, tiny_llama: Path, monkeypatch) -> None:
    """accelerate autocasts the model's forward only; the chunked loss calls the decoder itself, so with bf16 on
    it must enter autocast itself (it did not: chat SFT ran in fp32 while its model card said bf16)."""
    seen = []
    real = lm_loss.trained_token_loss

    def spy(*args, **kwargs):
        seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return real(*args, **kwargs)
    monkeypatch.setattr(lm_loss, "trained_token_loss", spy)
    run = train(chat_project(tmp_path, tiny_llama, {"max_steps": 2, "evals_per_epoch": 1, "bf16": True}, n=40))
    assert len(seen) >= 2 and all(on and dtype == torch.bfloat16 for on, dtype in seen), seen
    assert '"precision": "bf16 autocast"' in (run / "run.json").read_text()  # what the model card says, now true


def test_gradient_accumulation_matches_the_larger_batch(tmp_path: Path, tiny_llama: Path) -> None:
    """Batch 2 x accumulation 4 == batch 8 x 1: the loss is divided by the trained tokens of all four
    micro-batches, not averaged per micro-batch (their token counts differ)."""
    spec = {"max_steps": 3, "evals_per_epoch": 3, "bf16": False, "learning_rate": 3e-3}  # a log every step
    one = logged(train(chat_project(tmp_path / "a", tiny_llama, {**spec, "batch_size": 8}, n=40)))
    accumulated = logged(train(chat_project(tmp_path / "b", tiny_llama, {**spec, "batch_size": 2, "grad_accum": 4}, n=40)))
    a, b = [e["loss"] for e in one if "loss" in e], [e["loss"] for e in accumulated if "loss" in e]
    assert len(a) == len(b) == 3
    assert a == pytest.approx(b, rel=1e-4)
