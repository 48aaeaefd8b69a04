"""A classification/regression run served on onnxruntime: the run (an adapter merged in) written once as an fp32
ONNX graph into `<run>/.serve-cache/onnx-fp32/` (inference/serve_cache.py) and run from there.

Why: on a CPU, onnxruntime runs an encoder's forward pass faster than PyTorch (minilm, 2 cores, 32 clients,
measured alternating: `tunesmith serve` 1.25x the reviews per second on Zen 4, 1.24-1.33x on an AVX2-only host).
OpenVINO 2026.4 running the same graph was slower on Zen 3 (0.85-0.9x; README, Performance).
The predictions are PyTorch's: at conversion the graph's logits are compared with the model's on sample texts,
and a graph that strays is not used.
"""

from __future__ import annotations

from pathlib import Path

from tunesmith.artifacts import Run
from tunesmith.errors import ConfigError
from tunesmith.inference.serve_cache import converted

CACHE_NAME = "onnx-fp32"
ONNX_FILE = "model.onnx"
MAX_LOGIT_GAP = 1e-3  # fp32 against fp32: kernels sum in different orders, ~1e-6 apart; a wrong graph is far off
CHECK_TEXTS = ["a short text", "a somewhat longer text, so that the batch is padded and the mask matters",
               "", "Ünïcödé and numbers 12345, punctuation!?"]


def unmergeable(run: Run) -> str | None:
    """Why the run's weights cannot be made one plain model (what every converting engine starts from), or None."""
    if run.prompt_tuned:
        return "a prompt-tuning run cannot be merged into the weights (its virtual tokens are inputs, not weights)"
    return None


def unavailable(run: Run) -> str | None:
    """Why the run cannot be served on onnxruntime here, or None."""
    import torch

    if torch.cuda.is_available():
        return "a GPU is present, and PyTorch runs on it"
    if why := unmergeable(run):
        return why
    try:
        import onnxruntime  # noqa: F401
    except ImportError:  # pragma: no cover - a dependency of tunesmith
        return "onnxruntime is not installed"
    return None


def onnx_model(run: Run) -> Path:
    """The run's fp32 ONNX graph, converted now unless the cached one is current."""
    import onnxruntime
    import torch

    import transformers

    # transformers too: its model code is what the graph was traced from
    converter = (f"{CACHE_NAME} v1, plain attention, torch {torch.__version__}, transformers {transformers.__version__}, "
                 f"onnxruntime {onnxruntime.__version__}")
    return converted(run, CACHE_NAME, converter, lambda folder: _convert(run, folder)) / ONNX_FILE


def _convert(run: Run, folder: Path) -> None:
    import numpy as np
    import torch

    from tunesmith.inference.predictor import _onnx_session
    from tunesmith.models.loading import load_run
    from tunesmith.models.onnx_graph import onnx_feed, write_onnx

    loaded = load_run(run, merge=True, device="cpu")
    model, tokenizer = loaded.model.float().eval(), loaded.tokenizer
    path = folder / ONNX_FILE
    write_onnx(model, tokenizer, path)
    session = _onnx_session(path)
    batch = tokenizer(CHECK_TEXTS, padding=True, truncation=True, max_length=run.manifest.max_length, return_tensors="np")
    feed = onnx_feed(batch, [i.name for i in session.get_inputs()])
    graph = session.run(["logits"], feed)[0]
    with torch.inference_mode():
        reference = model(**{n: torch.from_numpy(v) for n, v in feed.items()}).logits.float().numpy()
    gap = float(np.abs(graph - reference).max())
    if not gap <= MAX_LOGIT_GAP * max(1.0, float(np.abs(reference).max())):
        raise ConfigError(f"{run.path}: its ONNX graph's logits differ from PyTorch's by {gap:.2g}")
