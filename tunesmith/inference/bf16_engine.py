"""A classifier served by PyTorch in bf16, where the CPU multiplies bf16 natively.

Why: on an Intel Xeon with AMX (2 cores, minilm, the packaged reviews in batches of 32), PyTorch with its weights in
bf16 ran 2x its own fp32 and 1.9x onnxruntime's fp32 (the default where bf16 is emulated), and the 497 test reviews got
the same labels as in fp32 (README, Performance). On an AMD Zen 4 (AVX512-BF16, no AMX) it ran 1.27x onnxruntime's
fp32 on a batch, 1.4x (median of 8 alternating pairs, all 8 won) on 400 reviews in the server's batches and 1.19x
served at 32 clients, with the same test accuracy. OpenVINO in bf16 (inference/openvino_engine.py) served 1.4x this
engine on Zen 4, so `auto` takes this one where the CPU multiplies bf16 natively and OpenVINO cannot serve the run.

The forward pass runs as a traced, frozen TorchScript graph: one call that holds the GIL only to start, where eager
PyTorch takes it back between its hundreds of operators. In a server the event loop holds the GIL between requests,
and beside a thread holding it 30% of the time the graph kept 1.25x eager's rate (1.1x alone); served at 32 clients,
1.18x (median of 9 alternating pairs, 8 won). The trace is checked against eager on batches of other sizes and
lengths, and a run whose graph strays (or does not trace) runs eagerly. torch.jit is deprecated in favour of
torch.export, whose programs run operator by operator from Python again (the GIL between each) unless compiled ahead
of time with a C++ toolchain at serve time; when torch.jit goes, the engine runs eagerly, as it did before.

Classification only: its answer is a label (an argmax, or thresholds for multi-label), which bf16's 3 significant
digits leave as it was; a regression run answers a value in the user's units and stays in fp32. At load the bf16
model's logits are compared with the fp32 model's on sample texts, and one that strays is not served.
"""

from __future__ import annotations

import warnings
from typing import Any

from tunesmith.artifacts import Run
from tunesmith.config import TaskType
from tunesmith.errors import ConfigError
from tunesmith.inference.onnx_engine import CHECK_TEXTS, unmergeable

NAME = "torch-bf16"
# bf16 keeps 8 bits of mantissa (0.4%); through 6-12 layers logits move by about 1% of their size. A broken
# kernel or an overflow is far off (or NaN).
MAX_LOGIT_GAP = 0.05
MAX_GRAPH_GAP = 0.01  # the traced graph runs eager's bf16 kernels: measured equal; fused ops may round differently


def unavailable(run: Run) -> str | None:
    """Why the run is not served in bf16 here, or None."""
    import torch

    from tunesmith.models.hardware import native_bf16

    if torch.cuda.is_available():
        return "a GPU is present, and PyTorch runs on it"
    if TaskType(run.manifest.task) == TaskType.regression:
        return "a regression run's values would keep only bf16's 3 significant digits"
    if why := unmergeable(run):
        return why
    if not native_bf16():
        return "this CPU has neither AMX nor AVX512-BF16, so bf16 would be emulated (slower than fp32)"
    return None


def bf16_predictor(run: Run) -> Any:
    """A Predictor of the run in bf16, checked against its fp32 logits on sample texts."""
    import numpy as np

    from tunesmith.inference.predictor import Predictor

    predictor = Predictor(run.path, device="cpu", merge=True)  # loaded once: fp32's logits first, then cast
    reference = predictor.logits(CHECK_TEXTS)
    logits = predictor.to_bf16().logits(CHECK_TEXTS)
    gap = logit_gap(logits, reference)
    if not gap <= MAX_LOGIT_GAP * max(1.0, float(np.abs(reference).max())):
        raise ConfigError(f"{run.path}: its logits in bf16 differ from fp32's by {gap:.2g}")
    why_not = trace(predictor, logits)
    if why_not:
        print(f"{run.manifest.name}: bf16 runs eagerly ({why_not})", flush=True)
    return predictor


def logit_gap(a: Any, b: Any) -> float:
    """The largest difference between two sets of logits (inf where `a` has a NaN or an infinity)."""
    import numpy as np

    return float(np.abs(a - b).max()) if np.isfinite(a).all() else float("inf")


def trace(predictor: Any, eager: Any) -> str | None:
    """Give `predictor` a traced graph of its model's forward pass, checked against its `eager` logits of CHECK_TEXTS
    (in micro-batches of other sizes and lengths than the trace's); why not, or None."""
    import numpy as np
    import torch

    model, tokenizer = predictor.model, predictor.tokenizer
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in tokenizer.model_input_names]

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
            return self.model(**dict(zip(names, tensors, strict=True))).logits

    # traced on a padded batch of unequal texts, so that the mask's path is the one taken (an all-ones mask may be skipped)
    sample = tokenizer(CHECK_TEXTS[:2], padding=True, return_tensors="pt")
    try:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit's: chosen knowingly, see the module's docstring
            # transformers' shape checks (mask padding, is_causal) are fixed in the trace: the same for any batch of this
            # run's inputs, and the checks below compare the graph with eager on other sizes and lengths
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            graph = torch.jit.freeze(torch.jit.trace(Logits().eval(), tuple(sample[n] for n in names), check_trace=False))
    except Exception as err:  # noqa: BLE001 - an architecture TorchScript cannot trace runs eagerly
        return f"no trace: {type(err).__name__}: {err}"
    predictor.graph, predictor.graph_inputs = graph, names
    scale = MAX_GRAPH_GAP * max(1.0, float(np.abs(eager).max()))
    gap = max(logit_gap(predictor.logits(CHECK_TEXTS, batch_size=size), eager) for size in (1, 3, len(CHECK_TEXTS)))
    if not gap <= scale:
        predictor.graph, predictor.graph_inputs = None, []
        return f"its traced graph's logits differ from eager's by {gap:.2g}"
    return None
