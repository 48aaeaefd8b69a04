"""`--format onnx|onnx-int8`: the sequence model as an ONNX graph for onnxruntime, optionally with
int8 weights; the folder is a run folder whose model/ holds model.onnx (the Predictor runs it)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from tunesmith.artifacts import MODEL_DIR, Run
from tunesmith.errors import ConfigError
from tunesmith.export.check import SequenceCheck
from tunesmith.export.folder import ExportResult, finish, merged_sequence_model, write_run_folder
from tunesmith.models.onnx_graph import write_onnx

# One scale per output channel and 7-bit weights: onnxruntime's advice for accuracy on x86 CPUs without VNNI, whose
# u8 x s8 products can saturate. On a 120-step minilm food-review run (497 test reviews, Zen 3) test accuracy was fp32
# 0.873, per-tensor int8 0.855, per-channel 0.861, per-channel + 7-bit 0.871, at the same speed.
INT8_OPTIONS = {"per_channel": True, "reduce_range": True}


def quantize_int8(source: Path, path: Path) -> None:
    """Dynamic quantisation: int8 weights for every MatMul/Gemm, activations quantised on the fly."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    quiet = logging.getLogger()
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "consider pre-processing" advice: shape inference gains nothing here
    try:
        quantize_dynamic(str(source), str(path), weight_type=QuantType.QInt8, **INT8_OPTIONS)
    finally:
        quiet.setLevel(level)


def export_onnx_folder(run: Run, target: Path, quantize: bool, check: bool) -> ExportResult:
    fmt = "onnx-int8" if quantize else "onnx"
    try:  # before the graph is written: int8 failed on it as an internal ModuleNotFoundError, the folder half made
        import onnxruntime.quantization  # noqa: F401 - both formats check themselves with it; int8 quantises with it
    except ImportError:
        raise ConfigError(f"--format {fmt} needs onnxruntime; pip install onnxruntime") from None
    checker = SequenceCheck(run, check)
    model, tokenizer = merged_sequence_model(run, checker.predictor)
    folder = target / MODEL_DIR
    folder.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "model.onnx" if quantize else folder / "model.onnx"
        info = write_onnx(model, tokenizer, fp32)
        if quantize:
            quantize_int8(fp32, folder / "model.onnx")
            info["quantization"] = ("dynamic int8 weights, one scale per output channel, 7-bit range "
                                    "(onnxruntime.quantization.quantize_dynamic, QInt8, per_channel, reduce_range)")
    model.config.save_pretrained(folder)  # labels and sizes, for tools that read an ONNX folder (optimum)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # `tokenizers` alone reads tokenizer.json: the run's truncation, no padding (a traced
        backend.no_padding()  # call had left truncation off: long texts answered differently or crashed the graph)
        backend.enable_truncation(max_length=run.manifest.max_length)
    tokenizer.save_pretrained(folder)
    del model
    info["size_bytes"] = (folder / "model.onnx").stat().st_size
    write_run_folder(run, target, fmt, info)
    from tunesmith.inference.predictor import Predictor

    result, found = checker.against(Predictor(target).predict)
    return finish(target, fmt, result, found)
