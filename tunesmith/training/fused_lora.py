"""LoRA layers trained with one fused autograd step instead of PEFT's module chain.

PEFT computes `base(x) + lora_B(lora_A(dropout(x))) * scaling` as separate autograd nodes: the scaled
product and the sum each write a full-size output in the forward pass, and the backward pass scales the
gradient and adds two full-size input gradients. On a CPU those passes cost about as much as the frozen
weight's gradient product that LoRA saves. Here the same arithmetic is one node:

    forward   y  = x W^T + b + s (x A^T) B^T          (the rank-r product added into y in place)
    backward  dx = g W + s (g B) A                     (likewise)
              dA = s (g B)^T x,   dB = s g^T (x A^T)   (rank-r products only; W and b stay frozen)

When a batch has more tokens than the layer has rows and columns together (training batches do), the
forward and the input gradient run on the merged weight W' = W + s B A instead, formed once per pass:

    forward   y  = x W'^T + b,   u = x A^T  (kept for dB)
    backward  dx = g W'

which replaces two rank-r products over full activations ([tokens, r] x [r, out] and [tokens, r] x
[r, in], each read-modify-writing a full-size tensor) with one over the weight ([out, r] x [r, in]).
Weight gradients are the same rank-r products either way.

The layers stay PEFT's (their class is swapped for a subclass), so saving, loading, merging and the
adapter switches work as before; anything this node does not model (dropout, DoRA and other variants,
several active adapters, adapters off or merged, mixed-adapter batches, a trainable base weight or
bias) goes to PEFT's own forward.
"""

from __future__ import annotations

from typing import Any

import torch
from peft.tuners.lora import Linear as LoraLinear
from torch import nn


def merge_weight_first(tokens: int, weight: torch.Tensor) -> bool:
    """Whether forming W' = W + s B A beats two rank-r products over the activations: it touches out x in
    numbers once, they touch tokens x (in + out)."""
    out_features, in_features = weight.shape
    return out_features * in_features < tokens * (out_features + in_features)


class _FusedLoraLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, a: torch.Tensor,
                b: torch.Tensor, scaling: float) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        u = x2 @ a.t()  # [tokens, r]
        merged = merge_weight_first(x2.shape[0], weight)
        if merged:
            w = torch.addmm(weight, b, a, alpha=scaling)  # W + s B A
            y = torch.addmm(bias, x2, w.t()) if bias is not None else x2 @ w.t()
        else:
            y = torch.addmm(bias, x2, weight.t()) if bias is not None else x2 @ weight.t()
            y.addmm_(u, b.t(), alpha=scaling)
        ctx.save_for_backward(x2, u, weight, a, b)  # W' is formed again in backward rather than kept: no extra memory
        ctx.scaling, ctx.shape, ctx.merged = scaling, shape, merged
        return y.reshape(*shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        x2, u, weight, a, b = ctx.saved_tensors
        s = ctx.scaling
        g = grad.reshape(-1, grad.shape[-1])
        gb = g @ b if ctx.needs_input_grad[3] or not ctx.merged else None  # [tokens, r]
        dx = None
        if ctx.needs_input_grad[0]:
            if ctx.merged:
                dx = (g @ torch.addmm(weight, b, a, alpha=s)).reshape(ctx.shape)
            else:
                dx = (g @ weight).addmm_(gb, a, alpha=s).reshape(ctx.shape)
        da = (gb.t() @ x2).mul_(s) if ctx.needs_input_grad[3] else None
        db = (g.t() @ u).mul_(s) if ctx.needs_input_grad[4] else None
        return dx, None, None, da, db, None


class FusedLoraLinear(LoraLinear):
    """PEFT's LoRA Linear with a fused training path for the plain case (see the module's docstring)."""

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        adapter = self._plain_adapter(x, args, kwargs)
        if adapter is None:
            return super().forward(x, *args, **kwargs)
        base: nn.Linear = self.get_base_layer()
        weight, bias = base.weight, base.bias
        a, b = self.lora_A[adapter].weight, self.lora_B[adapter].weight
        if torch.is_autocast_enabled(x.device.type):  # a custom node runs outside autocast: cast as it would
            dtype = torch.get_autocast_dtype(x.device.type)
            x, weight, a, b = x.to(dtype), weight.to(dtype), a.to(dtype), b.to(dtype)
            bias = bias.to(dtype) if bias is not None else None
        elif len({x.dtype, weight.dtype, a.dtype}) > 1:
            return super().forward(x, *args, **kwargs)
        with torch.autocast(x.device.type, enabled=False):
            return _FusedLoraLinear.apply(x, weight, bias, a, b, float(self.scaling[adapter]))

    def _plain_adapter(self, x: torch.Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
        """The one active adapter when the fused path computes exactly what PEFT's would, else None."""
        if args or kwargs or self.disable_adapters or self.merged or len(self.active_adapters) != 1:
            return None
        adapter = self.active_adapters[0]
        base = self.get_base_layer()
        if (adapter not in self.lora_A or adapter in self.lora_variant or self.use_dora.get(adapter)
                or not isinstance(self.lora_dropout[adapter], nn.Identity) or type(base) is not nn.Linear
                or base.weight.requires_grad or (base.bias is not None and base.bias.requires_grad)
                or self.lora_A[adapter].bias is not None or self.lora_B[adapter].bias is not None
                or getattr(self, "fan_in_fan_out", False)):
            return None
        return adapter


def fuse_lora_layers(model: nn.Module) -> None:
    """Swap every PEFT LoRA Linear in `model` for the fused subclass."""
    for module in model.modules():
        if type(module) is LoraLinear:
            module.__class__ = FusedLoraLinear
