"""The causal-LM loss of chat SFT, computed only where it counts and never as one [tokens, vocab] tensor.

With a 49k vocabulary the LM head is about a fifth of a small model's training compute, and most
positions of a chat batch (system prompt, user turns) carry no loss. Here the decoder runs without its
head; the hidden states of the positions whose next token is trained are gathered, and the head, the
cross-entropy and its gradient are computed over them a chunk of rows at a time. The gradient is
computed in the same pass as the loss (the loss ends the graph, so backward only brings a scale),
which saves recomputing the head in backward: three head matmuls per trained token, where TRL's own
fused head on CPU does four, over every position.

The sum equals the standard shifted cross-entropy (`ForCausalLMLoss`) summed over the same labels, so
dividing it as the Trainer divides the standard one keeps gradient accumulation exact.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import nn

IGNORE = -100  # the label of positions without loss (transformers' convention)
LOGITS_PER_CHUNK = 1 << 24  # 64 MiB of fp32 logits per buffer (rows = this // vocab); smaller chunks ran slower on CPU
# Config fields by which some families rescale their logits; the head here would ignore them.
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling")


class HeadLoss(NamedTuple):
    """Sums over the trained positions of a batch: divide `loss_sum` by the token count the Trainer uses."""

    loss_sum: torch.Tensor  # summed cross-entropy (differentiable)
    tokens: torch.Tensor  # trained positions
    correct: torch.Tensor  # of which the label is the most likely token (TRL's mean_token_accuracy)
    entropy_sum: torch.Tensor  # summed entropy of the predicted distributions (TRL's entropy metric)


class _ChunkedHeadCrossEntropy(torch.autograd.Function):
    """sum_i CE(hidden_i @ weight.T + bias, target_i), a chunk of rows at a time, gradient included."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor,
                rows: int, dtype: torch.dtype, grad_enabled: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # needs_input_grad says requires_grad even under no_grad (evaluation), where no gradient may be spent
        want_hidden, want_weight, want_bias = (grad_enabled and need for need in ctx.needs_input_grad[:3])
        device, n, vocab = hidden.device, hidden.shape[0], weight.shape[0]
        grads = want_hidden or want_weight or want_bias
        # The casts below are the autocast policy made explicit; autocast itself would also cast the fp32 accumulation.
        with torch.autocast(device.type, enabled=False):
            w = weight.to(dtype)
            grad_hidden = torch.empty(hidden.shape, dtype=hidden.dtype, device=device) if want_hidden else None
            grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=device) if want_weight else None
            grad_bias = torch.zeros(vocab, dtype=torch.float32, device=device) if want_bias else None
            loss_sum = torch.zeros((), dtype=torch.float32, device=device)
            correct = torch.zeros((), dtype=torch.long, device=device)
            entropy_sum = torch.zeros((), dtype=torch.float32, device=device)
            # Buffers reused by every chunk: fresh large tensors cost page faults on CPU each time.
            rows = min(rows, max(n, 1))
            logits = torch.empty(rows, vocab, dtype=torch.float32, device=device)  # logits, then softmax, then d loss / d logits
            log_probs = torch.empty_like(logits)
            low = torch.empty(rows, vocab, dtype=dtype, device=device) if dtype != torch.float32 else None
            low_weight = torch.empty(weight.shape, dtype=dtype, device=device) if want_weight and low is not None else None
            for start in range(0, n, rows):
                h = hidden[start:start + rows].to(dtype)
                t = targets[start:start + rows]
                z, lp = logits[:len(t)], log_probs[:len(t)]
                if low is None:
                    torch.mm(h, w.t(), out=z)
                else:  # low-precision logits, upcast as transformers' loss upcasts them
                    torch.mm(h, w.t(), out=low[:len(t)])
                    z.copy_(low[:len(t)])
                if bias is not None:
                    z += bias.float()
                torch.ops.aten._log_softmax.out(z, 1, False, out=lp)
                loss_sum -= lp.gather(1, t.unsqueeze(-1)).sum()
                correct += (lp.argmax(dim=-1) == t).sum()
                p = torch.exp(lp, out=z)
                entropy_sum -= torch.linalg.vecdot(p, lp).sum()
                if not grads:
                    continue
                p[torch.arange(len(t), device=device), t] -= 1  # softmax minus one-hot: d loss / d logits
                g = p if low is None else low[:len(t)].copy_(p)
                if grad_hidden is not None:
                    grad_hidden[start:start + rows] = torch.mm(g, w)  # [rows, hidden]: small next to the logits
                if grad_weight is not None:
                    if low_weight is None:
                        grad_weight.addmm_(g.t(), h)
                    else:  # low-precision products, summed over chunks in fp32
                        grad_weight += torch.mm(g.t(), h, out=low_weight)
                if grad_bias is not None:
                    grad_bias += p.sum(dim=0)
        ctx.grads = (grad_hidden, None if grad_weight is None else grad_weight.to(weight.dtype),
                     None if grad_bias is None else grad_bias.to(bias.dtype))  # type: ignore[union-attr]
        ctx.mark_non_differentiable(correct, entropy_sum)
        return loss_sum, correct, entropy_sum

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor, *_: Any) -> tuple[Any, ...]:
        scaled = tuple(None if g is None else g.mul_(grad_loss.to(g.dtype)) for g in ctx.grads)
        ctx.grads = None
        return *scaled, None, None, None, None


def head_cross_entropy(hidden: torch.Tensor, head: nn.Linear, targets: torch.Tensor,
                       chunk_logits: int = LOGITS_PER_CHUNK) -> HeadLoss:
    """Cross-entropy of `head(hidden)` against `targets` ([N, H] and [N], no ignored rows), summed, in row
    chunks of about `chunk_logits` logits. Under autocast the matmuls run in its dtype, the softmax in fp32."""
    device_type = hidden.device.type
    dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else hidden.dtype
    rows = max(1, chunk_logits // head.weight.shape[0])
    loss_sum, correct, entropy_sum = _ChunkedHeadCrossEntropy.apply(hidden, head.weight, head.bias, targets, rows, dtype,
                                                                torch.is_grad_enabled())
    return HeadLoss(loss_sum, torch.tensor(targets.numel(), device=hidden.device), correct, entropy_sum)


def better_than_trl(device: torch.device) -> bool:
    """Where TRL's own fused head has no Triton kernels (CPU), it scores every position and recomputes the
    head in backward; there the loss here is faster (measured). With Triton (CUDA, XPU) TRL scores only the
    trained positions too, and the loss here has not been measured against its kernels."""
    from transformers.utils import is_triton_available

    return not (device.type in ("cuda", "xpu") and is_triton_available())


def decoder_and_head(model: Any) -> tuple[nn.Module, nn.Linear] | None:
    """The decoder without its LM head, and the head, of a causal LM (PEFT-wrapped or not), or None where
    the loss here would differ from the model's own: prompt learning, an adapted or rescaled head, MoE aux losses."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        if model.active_peft_config.is_prompt_learning:  # virtual tokens are prepended inside PeftModel.forward
            return None
        model = model.get_base_model()
    decoder = getattr(model, "base_model", model)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if decoder is model or type(head) is not nn.Linear:  # an adapter on the head wraps it in another module
        return None
    text_config = model.config.get_text_config()
    if any(getattr(text_config, name, None) is not None for name in LOGIT_TRANSFORMS) \
            or getattr(text_config, "output_router_logits", False):
        return None
    return decoder, head


def trained_token_loss(model: Any, inputs: dict[str, Any], chunk_logits: int = LOGITS_PER_CHUNK) -> HeadLoss:
    """The causal-LM loss of a collated batch (`labels` with -100 where no loss, or pre-shifted `shift_labels`),
    scoring only the positions whose next token is trained. Padding and packing (position ids) pass to the
    decoder unchanged. `model` must pass `decoder_and_head`."""
    parts = decoder_and_head(model)
    if parts is None:
        raise ValueError(f"{type(model).__name__}: no plain decoder + linear LM head to compute the loss from")
    decoder, head = parts
    kwargs = {k: v for k, v in inputs.items() if k not in ("labels", "shift_labels")}
    kwargs["use_cache"] = False  # training: no key/value cache
    hidden = decoder(**kwargs).last_hidden_state
    if "shift_labels" in inputs:
        labels = inputs["shift_labels"]
    else:  # position t predicts token t+1
        hidden, labels = hidden[:, :-1], inputs["labels"][:, 1:]
    mask = labels != IGNORE
    return head_cross_entropy(hidden[mask], head, labels[mask], chunk_logits)
