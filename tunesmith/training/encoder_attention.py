"""Attention for training encoders (classification, regression) on a CPU: transformers' eager attention in
one autograd node, without its two extra passes over the [batch, heads, tokens, tokens] scores.

Eager attention computes `softmax(q k^T * scale + mask) v` as separate autograd nodes: the product writes
the scores, the scaling writes them again, the mask adds a third copy; the backward pass scales their
gradient once more. At MiniLM's head size (32) the scores are several times the size of q, k and v, and
on a CPU those whole-tensor passes are about a tenth of a training step. Here the scale goes on q
(head_dim wide, not tokens wide) and on the gradient of q, and the mask is added in place:

    forward   s = (q * scale) k^T;  s += mask;  p = softmax(s);  o = p v
    backward  dv = p^T do;  dp = do v^T;  ds = p * (dp - rowsum(dp * p));  dq = scale * ds k;  dk = ds^T (q * scale)

Long batches run a few rows at a time (SCORES_BYTES), so the scores stay in cache and are never one
allocation of tens of megabytes. Under bf16 autocast the scores, probabilities and their gradients stay bf16:
PyTorch's CPU softmax kernels accumulate in fp32, so the probabilities equal eager's (an fp32 softmax, its mask
promotes the scores) rounded to bf16 as eager rounds them for the product with v, without the five score-sized
casts a layer's forward and backward took (about a tenth of a step on an AMX host, where the products are fast).
Equal bit for bit when a row's length is a multiple of the vector width (32 bf16 numbers with AVX-512); otherwise
the row's tail is summed in another order and about 1 probability in 100,000 is one bf16 step away (Zen 4).
PyTorch's fused CPU kernel (SDPA) is no alternative for training: at this head size its backward is about
12x its forward, and its math fallback spends a tenth of the step on mask handling.

Registered under NAME for training only; saved models keep SDPA (the implementation is not part of the
saved config). Used for the encoders whose eager attention is exactly the formula above (PLAIN); others
train with their own eager attention. Attention dropout, cross-attention, grouped keys or returned
attention weights run eager's code.
"""

from __future__ import annotations

from typing import Any

import torch

NAME = "tunesmith_encoder"
# Scores are computed a slice of the batch at a time, this many bytes each: [batch, heads, tokens, tokens]
# at 16 x 12 x 256 x 256 is 50 MB, which the allocator maps fresh (page faults) for every product and
# softmax and which no cache holds; slices of 1-8 MB made a 256-token layer's attention 2.5x faster
# (2 cores, fp32, forward and backward), and shorter batches no slower
SCORES_BYTES = 4 << 20
PLAIN = {"bert", "roberta", "xlm-roberta", "electra", "camembert"}  # model types whose eager attention is the formula


def _dense(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`t` as a contiguous tensor of `dtype`, in one copy at most (`Tensor.to` keeps a view when the dtype matches)."""
    if t.dtype == dtype and t.is_contiguous():
        return t
    return torch.empty(t.shape, dtype=dtype, device=t.device).copy_(t)


def _chunks(batch: int, heads: int, q_len: int, k_len: int) -> list[slice]:
    """Slices of the batch whose scores fit SCORES_BYTES (one at least)."""
    per_row = max(1, heads * q_len * k_len * 4)
    step = max(1, min(batch, SCORES_BYTES // per_row))
    return [slice(i, min(i + step, batch)) for i in range(0, batch, step)]


class _Attention(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                scale: float, dtype: torch.dtype) -> torch.Tensor:
        # q, k and v arrive as per-head views of the projections: one contiguous copy each, which every
        # product below reads in place (matmul would copy a view again on each use)
        qs = torch.mul(q, scale, out=torch.empty(q.shape, dtype=dtype, device=q.device))
        k, v = _dense(k, dtype), _dense(v, dtype)
        out = torch.empty(qs.shape[:-1] + v.shape[-1:], dtype=dtype, device=q.device)
        if mask is not None and mask.dtype != dtype:  # fp32's most negative mask value is -inf in bf16, which
            # would turn a row with every key masked into NaN where eager's gives uniform weights
            mask = mask.clamp(min=torch.finfo(dtype).min).to(dtype)
        chunks = _chunks(*qs.shape[:3], k.shape[2])
        probs = []
        for c in chunks:
            s = torch.matmul(qs[c], k[c].transpose(-1, -2))
            if mask is not None:
                s.add_(mask if mask.shape[0] == 1 else mask[c])
            p = torch.softmax(s, dim=-1)
            probs.append(p)
            torch.matmul(p, v[c], out=out[c])
        ctx.save_for_backward(qs, k, v, *probs)
        ctx.scale, ctx.chunks = scale, chunks
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        qs, k, v, *probs = ctx.saved_tensors
        grad = _dense(grad, v.dtype)  # a view: the gradient of the transposed output
        dq, dk, dv = torch.empty_like(qs), torch.empty_like(k), torch.empty_like(v)
        for c, p in zip(ctx.chunks, probs, strict=True):
            torch.matmul(p.transpose(-1, -2), grad[c], out=dv[c])
            dp = torch.matmul(grad[c], v[c].transpose(-1, -2))
            ds = torch._softmax_backward_data(dp, p, -1, p.dtype)
            torch.matmul(ds, k[c], out=dq[c])
            torch.matmul(ds.transpose(-1, -2), qs[c], out=dk[c])
        return dq.mul_(ctx.scale), dk, dv, None, None, None


def encoder_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                      **kwargs: Any) -> tuple[torch.Tensor, None]:
    mask_ok = attention_mask is None or (attention_mask.dtype.is_floating_point and not attention_mask.requires_grad)
    if dropout > 0 or not mask_ok or kwargs.get("output_attentions") or query.shape[:2] != key.shape[:2]:
        from transformers.models.bert.modeling_bert import eager_attention_forward  # the same code in every PLAIN type

        return eager_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    device = query.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else query.dtype
    with torch.autocast(device, enabled=False):  # a custom node runs outside autocast: it casts as eager would
        out = _Attention.apply(query, key, value, attention_mask, float(scale), dtype)
    return out.transpose(1, 2).contiguous(), None


def register() -> str:
    """Make NAME known to transformers (attention and its mask: eager's additive float mask)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

    AttentionInterface.register(NAME, encoder_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, eager_mask)
    return NAME


def use_for_cpu_training(model: Any) -> None:
    """On a CPU, train a PLAIN encoder with this attention, any other model with its eager attention."""
    if torch.cuda.is_available() or not hasattr(model, "set_attn_implementation"):
        return
    plain = getattr(model.config, "model_type", None) in PLAIN
    for name in ((register(), "eager") if plain else ("eager",)):
        try:
            model.set_attn_implementation(name)
            return
        except (ValueError, NotImplementedError):  # an architecture with one implementation only
            continue
