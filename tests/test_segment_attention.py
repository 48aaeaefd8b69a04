"""Per-conversation attention for padding-free chat rows (training/segment_attention.py): the same logits and
gradients as transformers' SDPA with its block-diagonal mask, for grouped-query heads too; padded batches and
generation untouched; used by chat training on a CPU and never saved into the model's config."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.test_train_chat import chat_project, conversations, tokenizer_of
from tunesmith.tasks import chat
from tunesmith.training import segment_attention, train


def packed_batch(tiny_llama: Path, n: int = 4) -> dict[str, torch.Tensor]:
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    tok = tokenizer_of(tiny_llama)
    rows = [{"input_ids": chat.encode(tok, c["messages"])["input_ids"]} for c in conversations(n)]
    batch = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id, padding_free=True)(rows)
    assert "cu_seq_lens_q" in batch and len(batch["cu_seq_lens_q"]) == n + 1
    return {k: v for k, v in batch.items() if k != "labels"}


def gqa_llama(tiny_llama: Path, implementation: str) -> torch.nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(tiny_llama, num_key_value_heads=2)  # 4 query heads share 2 key/value heads
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    if implementation == "segments":
        segment_attention.use_for_packed_training(model)
        assert model.config._attn_implementation == segment_attention.NAME
    return model.train()


def test_packed_rows_give_sdpa_logits_and_gradients(tiny_llama: Path) -> None:
    batch = packed_batch(tiny_llama)
    results = []
    for implementation in ("sdpa", "segments"):
        model = gqa_llama(tiny_llama, implementation)
        logits = model(**batch, use_cache=False).logits
        logits.pow(2).mean().backward()
        results.append((logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (ref, ref_grads), (out, grads) = results
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    for name, grad in ref_grads.items():
        torch.testing.assert_close(grads[name], grad, atol=1e-6, rtol=1e-4, msg=name)


def test_what_is_not_a_packed_row_goes_to_sdpa(tiny_llama: Path) -> None:
    """A padded batch (its mask keeps padding out) and generation with a cache: SDPA's answers, unchanged."""
    ref, seg = gqa_llama(tiny_llama, "sdpa").eval(), gqa_llama(tiny_llama, "segments").eval()
    ids = torch.randint(5, 100, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding
    with torch.no_grad():
        torch.testing.assert_close(seg(input_ids=ids, attention_mask=mask).logits, ref(input_ids=ids, attention_mask=mask).logits)
    generated = [m.generate(input_ids=ids[:1], max_new_tokens=5, do_sample=False) for m in (ref, seg)]
    assert torch.equal(generated[0], generated[1])


def test_chat_training_uses_it_and_saves_sdpa(tmp_path: Path, tiny_llama: Path, monkeypatch) -> None:
    calls = []
    real = segment_attention.segment_attention

    def counted(module, query, *args, **kwargs):
        calls.append(kwargs.get("cu_seq_lens_q") is not None)
        return real(module, query, *args, **kwargs)
    monkeypatch.setattr(segment_attention, "segment_attention", counted)
    run = train(chat_project(tmp_path, tiny_llama, {"max_steps": 2, "method": "lora"}, n=40))
    assert calls and all(calls[:2])  # the training rows arrived packed, with their boundaries
    saved = [f for f in run.rglob("*.json")]
    assert any(f.parent.name == "model" for f in saved)
    assert not [f for f in saved if segment_attention.NAME in f.read_text()]  # what loads the model later keeps SDPA
