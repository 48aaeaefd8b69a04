"""Attention for padding-free chat batches on a CPU: each packed conversation attends within itself only,
computed one conversation at a time.

A padding-free batch is one row of several conversations. transformers keeps them apart with a
[tokens x tokens] block-diagonal mask, so SDPA computes every query against every key of the row and
throws most of it away: 8 conversations of 60 tokens cost 8x the scores they need. GPUs have
variable-length flash attention for this (the collator's `cu_seq_lens_q` feed it); PyTorch's CPU
kernels do not, so here the row is cut at those boundaries and each conversation runs causal SDPA on
its own, which is exactly what the mask asks for. Anything else (padded batches, generation with a
cache) goes to transformers' SDPA with its mask.

Registered under NAME for training only; saved models keep SDPA (the implementation is not part of
the saved config).
"""

from __future__ import annotations

from typing import Any

import torch

NAME = "tunesmith_segments"


def segment_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                      **kwargs: Any) -> tuple[torch.Tensor, None]:
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    bounds = kwargs.get("cu_seq_lens_q")
    packed = (bounds is not None and query.shape[0] == 1 and query.shape[2] == key.shape[2]
              and kwargs.get("cu_seq_lens_k") is not None and torch.equal(bounds, kwargs["cu_seq_lens_k"])
              and int(bounds[-1]) == query.shape[2] and getattr(module, "is_causal", True)
              and getattr(module, "sliding_window", None) is None)
    if not packed:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)  # [1, heads, tokens, head_dim]
    edges = bounds.tolist()
    p = dropout if module.training else 0.0
    parts = [torch.nn.functional.scaled_dot_product_attention(query[:, :, s:e], key[:, :, s:e], value[:, :, s:e],
                                                              dropout_p=p, is_causal=True, scale=scaling)
             for s, e in zip(edges, edges[1:], strict=False) if e > s]
    return torch.cat(parts, dim=2).transpose(1, 2).contiguous(), None


def register() -> str:
    """Make NAME known to transformers (attention and its mask: SDPA's, for batches that are not packed)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(NAME, segment_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, sdpa_mask)
    return NAME


def use_for_packed_training(model: Any) -> None:
    """On a CPU, train a model that runs SDPA with the per-conversation attention (see the module's docstring)."""
    if torch.cuda.is_available() or not hasattr(model, "set_attn_implementation"):
        return
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    if getattr(config, "_attn_implementation", None) != "sdpa":
        return
    try:
        model.set_attn_implementation(register())
    except (ValueError, NotImplementedError):  # an architecture that refuses custom attention: keep SDPA
        pass
