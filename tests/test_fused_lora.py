"""The fused LoRA layer (training/fused_lora.py): the same outputs and gradients as PEFT's module chain, in
fp32 and under bf16 autocast, for encoders and decoders; PEFT's own forward wherever the fused node would
compute something else (dropout, DoRA, adapters switched off); saved adapters unchanged."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

from tunesmith.config import PeftSpec, TrainSpec
from tunesmith.training import fused_lora
from tunesmith.training.methods import apply_method


def peft_model(path: Path, kind: str, method: str = "lora", dropout: float = 0.0) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    torch.manual_seed(0)
    if kind == "llama":
        model = AutoModelForCausalLM.from_pretrained(path)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=3)
    model = apply_method(model, TrainSpec(method=method), PeftSpec(r=4, dropout=dropout), causal_lm=kind == "llama")
    for name, p in model.named_parameters():  # LoRA's B starts at zero; move it so every gradient is non-trivial
        if "lora_B" in name:
            p.data.normal_(0, 0.1)
    return model.train()


def unfused(model: torch.nn.Module) -> torch.nn.Module:
    from peft.tuners.lora import Linear

    reference = copy.deepcopy(model)
    for module in reference.modules():
        if type(module) is fused_lora.FusedLoraLinear:
            module.__class__ = Linear
    return reference


def step(model: torch.nn.Module, ids: torch.Tensor, bf16: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad()
    torch.manual_seed(0)  # the same hidden-dropout masks on both sides
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = model(input_ids=ids).logits
    out.float().pow(2).mean().backward()
    return out.detach().float(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


class CountFused:
    """Counts calls of the fused autograd node (so a test can tell the fused path ran, or did not)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        original = fused_lora._FusedLoraLinear.apply

        def counted(*args: Any) -> Any:
            self.calls += 1
            return original(*args)
        monkeypatch.setattr(fused_lora._FusedLoraLinear, "apply", counted)


@pytest.mark.parametrize("merged", [False, True], ids=["rank-r-products", "merged-weight"])
@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_fused_layers_give_peft_outputs_and_gradients(kind: str, merged: bool, tiny_bert: Path, tiny_llama: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    chosen = []  # the path each call of the node took (real batches choose by size; here both are forced)
    monkeypatch.setattr(fused_lora, "merge_weight_first", lambda tokens, weight: chosen.append(merged) or merged)
    model = peft_model(tiny_bert if kind == "bert" else tiny_llama, kind)
    fused = [m for m in model.modules() if isinstance(m, fused_lora.FusedLoraLinear)]
    assert fused and all(type(m) is fused_lora.FusedLoraLinear for m in fused)
    reference = unfused(model)
    ids = torch.randint(5, 100, (3, 11))
    counter = CountFused(monkeypatch)
    out, grads = step(model, ids)
    ref_out, ref_grads = step(reference, ids)
    torch.testing.assert_close(out, ref_out)
    assert grads.keys() == ref_grads.keys() and any("lora_A" in n for n in grads)
    for name, grad in grads.items():
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(grad, ref_grads[name], atol=1e-5 * ref_grads[name].abs().max().item(), rtol=1e-4, msg=name)
    # Under bf16 autocast the two round differently: the fused node must be as close to fp32 as PEFT's chain is.
    bf16_out, bf16_grads = step(model, ids, bf16=True)
    peft_out, peft_grads = step(reference, ids, bf16=True)

    def error(o: torch.Tensor, g: dict[str, torch.Tensor]) -> float:
        flat = torch.cat([o.flatten(), *(v.flatten() for v in g.values())])
        exact = torch.cat([ref_out.flatten(), *(v.flatten() for v in ref_grads.values())])
        return ((flat - exact).norm() / exact.norm()).item()
    assert error(bf16_out, bf16_grads) < 0.05
    assert error(bf16_out, bf16_grads) <= 1.5 * error(peft_out, peft_grads)
    assert counter.calls == 2 * len(fused)  # every adapted layer went through the fused node in both fused steps
    assert chosen == [merged] * counter.calls


def test_training_batches_take_the_merged_weight_and_single_texts_the_products() -> None:
    weight = torch.zeros(1536, 384)  # MiniLM's feed-forward
    assert fused_lora.merge_weight_first(16 * 93, weight)  # a batch of 16 reviews of 93 tokens
    assert not fused_lora.merge_weight_first(40, weight)


def test_what_the_fused_node_does_not_model_goes_to_peft(tiny_bert: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    counter = CountFused(monkeypatch)
    ids = torch.randint(5, 100, (2, 7))
    dropped = peft_model(tiny_bert, "bert", dropout=0.2)  # dropout draws its own mask: PEFT applies it
    dropped(input_ids=ids)
    dora = peft_model(tiny_bert, "bert", method="dora")
    assert not any(isinstance(m, fused_lora.FusedLoraLinear) for m in dora.modules())
    assert counter.calls == 0

    model = peft_model(tiny_bert, "bert").eval()
    with model.disable_adapter():  # the DPO reference: the base model alone
        off = model(input_ids=ids).logits
    assert counter.calls == 0
    on = model(input_ids=ids).logits
    assert counter.calls > 0 and not torch.allclose(on, off)


def test_saved_adapter_is_peft_format_and_loads_back(tmp_path: Path, tiny_bert: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    model = peft_model(tiny_bert, "bert").eval()
    ids = torch.randint(5, 100, (2, 9))
    expected = model(input_ids=ids).logits
    model.save_pretrained(tmp_path / "adapter")
    torch.manual_seed(1)
    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=3)
    loaded = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    torch.testing.assert_close(loaded(input_ids=ids).logits, expected)


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_a_model_stored_in_bf16_trains_without_autocast(tiny_bert: Path, method: str) -> None:
    """transformers loads a checkpoint in its stored dtype and PEFT keeps a bf16 model's adapters in fp32: PEFT's
    input casts must stay on there (without autocast the first adapted layer multiplied bf16 inputs by fp32
    weights and raised), and off for a model in one dtype, where autocast casts once."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=3, dtype=torch.bfloat16)
    model = apply_method(model, TrainSpec(method=method), PeftSpec(r=4, dropout=0.0)).train()
    out = model(input_ids=torch.randint(5, 100, (2, 7)), labels=torch.tensor([0, 2]))
    out.loss.backward()
    trained = [p for n, p in model.named_parameters() if p.requires_grad and "lora_" in n]
    assert trained and torch.isfinite(out.loss) and all(p.grad is not None and p.grad.isfinite().all() for p in trained)

    fp32 = peft_model(tiny_bert, "bert", method=method)  # the usual case keeps its single autocast cast
    assert not any(m.cast_input_dtype_enabled for m in fp32.modules() if isinstance(m, BaseTunerLayer))
