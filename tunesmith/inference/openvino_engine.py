"""A classifier served by OpenVINO in bf16, where the CPU multiplies bf16 natively.

Why: the run's fp32 ONNX graph (the one onnxruntime serves, inference/onnx_engine.py) compiled by OpenVINO with bf16
inference precision runs the whole forward pass in bf16 with LayerNorm, GELU, softmax and the attention fused into
its products' neighbours, where PyTorch in bf16 (inference/bf16_engine.py) runs them as separate operators. On an AMD
Zen 4 (AVX512-BF16, 2 cores, minilm, 400 reviews in the server's batches of 32, alternating) it ran 1.36x PyTorch's
bf16 and 1.7x onnxruntime's fp32, with fp32's labels; served on a 2-core Xeon with AMX, 1.46-1.50x PyTorch's bf16 and
2.4x onnxruntime's fp32 (README, Performance). Its matrix products alone are no faster than PyTorch's: the gain is the
rest of the pass. The graph compiles in about a third of a second, so nothing more is
cached than the ONNX file.

Classification only, as for the PyTorch bf16 engine: a regression run's value would keep bf16's 3 significant digits.
OpenVINO says which precision it compiled for; a CPU where it would not compute bf16 is refused rather than served in
fp32 under this engine's name, and at load the logits are compared with the fp32 graph's on sample texts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunesmith.artifacts import Run
from tunesmith.errors import ConfigError
from tunesmith.inference import bf16_engine
from tunesmith.inference.onnx_engine import CHECK_TEXTS

NAME = "openvino-bf16"
MAX_LOGIT_GAP = bf16_engine.MAX_LOGIT_GAP  # the same bf16 arithmetic as PyTorch's engine, the same bound


def unavailable(run: Run) -> str | None:
    """Why the run is not served on OpenVINO in bf16 here, or None."""
    why = bf16_engine.unavailable(run)  # the same conditions: a CPU with native bf16, a classifier
    if why:
        return why
    try:
        import openvino  # noqa: F401
    except ImportError:
        return "openvino is not installed (pip install openvino; an x86-64 dependency of tunesmith)"
    return None


class Session:
    """An OpenVINO compiled model behind the part of onnxruntime's session that Predictor calls."""

    def __init__(self, compiled: Any) -> None:
        self.compiled = compiled
        self.input_names = [i.get_any_name() for i in compiled.inputs]
        self.precision = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()  # "bf16", "f32"

    def run(self, outputs: list[str], feed: dict[str, Any]) -> list[Any]:
        # a request per call: requests are not thread-safe, the compiled model is, and creating one costs microseconds
        result = self.compiled.create_infer_request().infer(feed)
        return [result[self.compiled.output(name)] for name in outputs]


def compile_model(path: Path, precision: str = "bf16", **config: Any) -> Session:
    """The ONNX graph compiled for this CPU: `precision` inside, one stream using every core (latency: the server
    sends one batch at a time per model); `config`, further OpenVINO properties (the benchmark's PERF_COUNT)."""
    import openvino

    from tunesmith.models.hardware import cpu_cores

    compiled = openvino.Core().compile_model(str(path), "CPU", {
        "INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": cpu_cores(), **config})
    return Session(compiled)


def openvino_predictor(run: Run) -> Any:
    """A Predictor of the run on OpenVINO in bf16, checked against the fp32 graph's logits on sample texts."""
    import numpy as np

    from tunesmith.inference import onnx_engine
    from tunesmith.inference.predictor import Predictor
    from tunesmith.models.hardware import BF16_PAD_MULTIPLE

    path = onnx_engine.onnx_model(run)
    session = compile_model(path)
    if session.precision != "bf16":
        raise ConfigError(f"{run.path}: OpenVINO computes in {session.precision} on this CPU, not bf16")
    predictor = Predictor(run.path, onnx_model=path, session=session)
    predictor.pad_multiple = BF16_PAD_MULTIPLE  # OpenVINO's kernels are per shape too: 1.1x the texts/s on AMX
    reference = Predictor(run.path, onnx_model=path).logits(CHECK_TEXTS)  # onnxruntime fp32: PyTorch's logits
    logits = predictor.logits(CHECK_TEXTS)
    gap = bf16_engine.logit_gap(logits, reference)
    if not gap <= MAX_LOGIT_GAP * max(1.0, float(np.abs(reference).max())):
        raise ConfigError(f"{run.path}: its logits on OpenVINO in bf16 differ from fp32's by {gap:.2g}")
    return predictor
