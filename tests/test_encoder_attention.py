"""Encoder attention for CPU training (training/encoder_attention.py): exact gradients, the same logits and
gradients as transformers' eager attention on a padded batch (fp32, and under bf16 autocast within bf16's
precision; a fully masked row stays finite in bf16), eager's code for what it does not model, used by sequence
training and never saved."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.test_train import project
from tunesmith.config import TaskType
from tunesmith.models.sequence import load_for_sequence_task
from tunesmith.training import encoder_attention, train


def test_the_gradients_are_exact() -> None:
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 6, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    mask = torch.zeros(2, 1, 6, 6, dtype=torch.float64)
    mask[1, ..., 4:] = torch.finfo(torch.float64).min  # the second row's last two tokens are padding
    node = encoder_attention._Attention.apply
    assert torch.autograd.gradcheck(lambda q, k, v: node(q, k, v, mask, 0.5, torch.float64), (q, k, v))
    assert torch.autograd.gradcheck(lambda q, k, v: node(q, k, v, None, 0.5, torch.float64), (q, k, v))


def test_bf16_keeps_a_row_with_every_key_masked_finite() -> None:
    """In bf16 fp32's most negative mask value would round to -inf, and a row masked whole to NaN; eager's fp32
    softmax gives it uniform weights (a padding mask never masks a whole row; a mask built otherwise may)."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 6, 4, requires_grad=True) for _ in range(3))
    mask = torch.zeros(2, 1, 6, 6)
    mask[1, :, :, 4:] = torch.finfo(torch.float32).min
    mask[1, :, 5, :] = torch.finfo(torch.float32).min  # the second row's last query sees no key
    out = encoder_attention._Attention.apply(q, k, v, mask, 0.5, torch.bfloat16)
    out.float().sum().backward()
    ref = torch.softmax((q.detach() * 0.5) @ k.detach().transpose(-1, -2) + mask, dim=-1) @ v.detach()
    assert out.dtype == torch.bfloat16 and torch.isfinite(q.grad).all() and torch.isfinite(k.grad).all()
    torch.testing.assert_close(out.float(), ref, atol=5e-2, rtol=5e-2)
    torch.testing.assert_close(out[1, :, 5].float(), v.detach()[1].mean(dim=1), atol=2e-2, rtol=2e-2)  # uniform


def test_long_batches_are_computed_in_slices_of_rows() -> None:
    whole = encoder_attention._chunks(16, 12, 64, 64)
    assert whole == [slice(0, 16)]  # 16 rows of 64-token scores: 3 MB, one slice
    rows = encoder_attention._chunks(16, 12, 256, 256)  # 3 MB a row
    assert len(rows) == 16 and rows[0] == slice(0, 1) and rows[-1] == slice(15, 16)
    assert sum(c.stop - c.start for c in encoder_attention._chunks(7, 12, 150, 150)) == 7


def bert(tiny_bert: Path, implementation: str, attention_dropout: float = 0.0) -> torch.nn.Module:
    torch.manual_seed(0)
    model = load_for_sequence_task(tiny_bert, TaskType.single_label, ["a", "b"], attention_dropout=attention_dropout,
                                   hidden_dropout=0.0)
    if implementation == "ours":
        encoder_attention.use_for_cpu_training(model)
        assert model.config._attn_implementation == encoder_attention.NAME
    else:
        model.set_attn_implementation("eager")
    return model.train()


def padded_batch() -> dict[str, torch.Tensor]:
    ids = torch.randint(5, 200, (3, 11), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, 3:] = 0
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([0, 1, 1])}


@pytest.mark.parametrize(("bf16", "row_by_row"), [(False, False), (True, False), (False, True)])
def test_a_padded_batch_gives_eager_logits_and_gradients(tiny_bert: Path, monkeypatch, bf16: bool, row_by_row: bool) -> None:
    if row_by_row:  # the scores of one row at a time, as long batches run
        monkeypatch.setattr(encoder_attention, "SCORES_BYTES", 1)
    batch, results = padded_batch(), []
    for implementation in ("eager", "ours"):
        model = bert(tiny_bert, implementation)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(**batch)
        out.loss.backward()
        results.append((out.logits.detach().float(), {n: p.grad.clone() for n, p in model.named_parameters()
                                                      if p.grad is not None}))
    (ref, ref_grads), (logits, grads) = results
    tol = {"atol": 2e-2, "rtol": 2e-2} if bf16 else {"atol": 1e-5, "rtol": 1e-4}
    torch.testing.assert_close(logits, ref, **tol)
    assert grads.keys() == ref_grads.keys() and any("attention" in n for n in grads)
    for name, grad in ref_grads.items():
        if bf16 and grad.norm() > 1e-6:  # bf16 rounds differently in the two orders of operations: the gradients
            # point the same way (the key bias's is zero in exact arithmetic: softmax ignores a per-row shift)
            assert torch.nn.functional.cosine_similarity(grads[name].flatten(), grad.flatten(), dim=0) > 0.99, name
        elif not bf16:
            torch.testing.assert_close(grads[name], grad, atol=1e-6, rtol=1e-4, msg=name)


def test_attention_dropout_and_returned_weights_run_eagers_code(tiny_bert: Path, monkeypatch) -> None:
    calls = []
    real = encoder_attention._Attention.apply
    monkeypatch.setattr(encoder_attention._Attention, "apply", lambda *a: calls.append(1) or real(*a))
    batch = padded_batch()
    bert(tiny_bert, "ours", attention_dropout=0.1)(**batch)
    assert not calls
    model = bert(tiny_bert, "ours")
    out = model(**batch, output_attentions=True)
    assert not calls and out.attentions[0].shape == (3, 2, 11, 11)
    model(**batch)
    assert calls


def test_other_architectures_train_with_their_eager_attention(tiny_llama: Path) -> None:
    model = load_for_sequence_task(tiny_llama, TaskType.single_label, ["a", "b"])
    encoder_attention.use_for_cpu_training(model)
    assert model.config._attn_implementation == "eager"


@pytest.mark.parametrize("method", ["full", "lora"])
def test_sequence_training_uses_it_and_saves_the_default(tmp_path: Path, tiny_bert: Path, monkeypatch, method: str) -> None:
    calls = []
    real = encoder_attention._Attention.apply
    monkeypatch.setattr(encoder_attention._Attention, "apply", lambda *a: calls.append(1) or real(*a))
    run = train(project(tmp_path, tiny_bert, train_spec={"max_steps": 2, "method": method}))
    assert calls
    saved = list((run / "model").rglob("*.json"))
    assert saved and not [f for f in saved if encoder_attention.NAME in f.read_text()]
