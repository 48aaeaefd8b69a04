"""A classifier served by PyTorch in bf16, where the CPU multiplies bf16 natively.

Why: on an Intel Xeon with AMX (2 cores, minilm, the packaged reviews in batches of 32), PyTorch with its weights in
bf16 ran 2x its own fp32 and 1.9x onnxruntime's fp32 (the default elsewhere), and the 497 test reviews got the same
labels as in fp32 (README, Performance). `auto` takes it on AMX hosts only: AVX512-BF16 without AMX (Zen 4, Zen 5)
has not been measured serving yet, so there `--classifier-engine torch-bf16` asks for it by name.

Classification only: its answer is a label (an argmax, or thresholds for multi-label), which bf16's 3 significant
digits leave as it was; a regression run answers a value in the user's units and stays in fp32. At load the bf16
model's logits are compared with the fp32 model's on sample texts, and one that strays is not served.
"""

from __future__ import annotations

from typing import Any

from tunesmith.artifacts import Run
from tunesmith.config import TaskType
from tunesmith.errors import ConfigError
from tunesmith.inference.onnx_engine import CHECK_TEXTS

NAME = "torch-bf16"
# bf16 keeps 8 bits of mantissa (0.4%); through 6-12 layers logits move by about 1% of their size. A broken
# kernel or an overflow is far off (or NaN).
MAX_LOGIT_GAP = 0.05


def unavailable(run: Run, auto: bool) -> str | None:
    """Why the run is not served in bf16 here (with `auto`: why auto does not choose it), or None."""
    import torch

    from tunesmith.models.hardware import amx, native_bf16

    if torch.cuda.is_available():
        return "a GPU is present, and PyTorch runs on it"
    if TaskType(run.manifest.task) == TaskType.regression:
        return "a regression run's values would keep only bf16's 3 significant digits"
    if not native_bf16():
        return "this CPU has neither AMX nor AVX512-BF16, so bf16 would be emulated (slower than fp32)"
    if auto and not amx():
        return "no AMX on this CPU (bf16 serving was measured faster only with AMX)"
    return None


def bf16_predictor(run: Run) -> Any:
    """A Predictor of the run in bf16, checked against its fp32 logits on sample texts."""
    import numpy as np

    from tunesmith.inference.predictor import Predictor

    predictor = Predictor(run.path, device="cpu", bf16=True)
    reference = Predictor(run.path, device="cpu").logits(CHECK_TEXTS)
    logits = predictor.logits(CHECK_TEXTS)
    gap = float(np.abs(logits - reference).max()) if np.isfinite(logits).all() else float("inf")
    if not gap <= MAX_LOGIT_GAP * max(1.0, float(np.abs(reference).max())):
        raise ConfigError(f"{run.path}: its logits in bf16 differ from fp32's by {gap:.2g}")
    return predictor
