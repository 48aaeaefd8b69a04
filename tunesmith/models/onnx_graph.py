"""A classification/regression model as an ONNX graph for onnxruntime: what `tunesmith export --format
onnx|onnx-int8` writes and what `tunesmith serve` runs classifiers on (inference/onnx_engine.py)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from tunesmith.errors import TunesmithError

ONNX_OPSET = 17  # LayerNormalization is a single op from 17 on; onnxruntime >= 1.14 runs it


def onnx_inputs(model: Any, tokenizer: Any) -> list[str]:
    import inspect

    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in tokenizer.model_input_names and "token_type_ids" in inspect.signature(model.forward).parameters:
        names.append("token_type_ids")
    return names


def onnx_feed(batch: Any, names: list[str]) -> dict[str, np.ndarray]:
    """A tokenized, padded numpy batch as the graph's int64 inputs `names` (token_type_ids: zeros when the
    tokenizer gives none)."""
    return {n: (batch[n] if n in batch else np.zeros_like(batch["input_ids"])).astype(np.int64) for n in names}


def _sample_inputs(tokenizer: Any, names: list[str]) -> dict[str, np.ndarray]:
    """Texts of different lengths, so the batch is padded and the attention mask is traced as data."""
    batch = tokenizer(["a short text", "a somewhat longer text, so that the first one of the two is padded",
                       "and a third one"], padding=True, return_tensors="np")
    return onnx_feed(batch, names)


def write_onnx(model: Any, tokenizer: Any, path: Path) -> dict[str, Any]:
    """The sequence model as an ONNX graph: named inputs, dynamic batch and sequence axes, output `logits`.

    The TorchScript exporter comes first: its graph is the one onnxruntime's int8 kernels run fastest
    (minilm, the same batch of 64 texts on 2 cores: int8 2.4-2.7x faster than PyTorch fp32, against
    1.5-2.0x from the dynamo exporter's graph). The dynamo exporter is the fallback for models the
    tracer cannot take (it needs onnxscript).

    Attention is traced in its plain form (matmul, mask, softmax, matmul), not as PyTorch's fused SDPA, whose
    traced graph guards fully masked rows with IsNaN/Where over every score and adds transposes: on minilm
    (Zen 4, 2 cores, batches of 32 reviews, alternating) onnxruntime ran fp32 1.2x and int8 1.1x faster.
    """
    import torch

    names = onnx_inputs(model, tokenizer)
    attention = getattr(model.config, "_attn_implementation", None)
    if attention not in (None, "eager") and hasattr(model, "set_attn_implementation"):
        try:
            model.set_attn_implementation("eager")
        except (ValueError, ImportError):  # a model without a plain attention path keeps its own
            attention = None

    class LogitsOnly(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
            extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, **extra).logits

    wrapper = LogitsOnly(model).eval()  # the exporter restores the wrapper's mode afterwards: eval, no dropout
    args = tuple(torch.from_numpy(a) for a in _sample_inputs(tokenizer, names).values())
    axes = {n: {0: "batch", 1: "sequence"} for n in names} | {"logits": {0: "batch"}}
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer and deprecation chatter; the self-check is what tells
        try:
            torch.onnx.export(wrapper, args, str(path), dynamo=False, input_names=names, output_names=["logits"],
                              opset_version=ONNX_OPSET, dynamic_axes=axes, do_constant_folding=True)
            exporter = "torchscript"
        except Exception as first:  # noqa: BLE001 - try the other exporter, report both if it fails too
            try:
                from torch.export import Dim

                batch, seq = Dim("batch"), Dim("sequence")
                program = torch.onnx.export(wrapper, args, dynamo=True, verbose=False, input_names=names,
                                            output_names=["logits"], opset_version=max(ONNX_OPSET, 18),
                                            dynamic_shapes=tuple({0: batch, 1: seq} for _ in names))
                program.save(str(path))
                exporter = "dynamo"
            except Exception as second:  # noqa: BLE001
                raise TunesmithError(f"ONNX export failed: torchscript exporter: {first}; dynamo exporter: {second}") from None
        finally:
            if attention not in (None, "eager"):
                model.set_attn_implementation(attention)  # the caller's model runs as it did
    import onnx

    graph = onnx.load(str(path), load_external_data=False)
    opset = next(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx"))
    return {"exporter": exporter, "opset": opset, "inputs": names, "outputs": ["logits"]}
