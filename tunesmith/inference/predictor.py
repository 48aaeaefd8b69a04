"""Classify or score texts with a run folder: the one interface evaluation, export and serving use.

Needs only the run folder (and, for adapter runs, the base model it names; models/loading.py finds
it): no training code.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tunesmith.artifacts import Run, RunManifest
from tunesmith.config import CleanSpec, TaskType
from tunesmith.errors import DataError


@dataclass
class Predictions:
    labels: list[Any]  # class name, list of names (multi-label), or value in the user's units
    proba: np.ndarray | None  # n x classes probabilities (classification)
    values: np.ndarray | None  # regression outputs in the user's units
    label_ids: np.ndarray | None  # argmax ids (single-label) or 0/1 matrix (multi-label)

    @property
    def outputs(self) -> np.ndarray:
        """What metrics compare with the targets: values (regression) or label ids."""
        return self.values if self.values is not None else self.label_ids  # type: ignore[return-value]


ONNX_MODEL = "model.onnx"  # an ONNX export (tunesmith export --format onnx|onnx-int8) holds model/model.onnx


MAX_BATCH_TOKENS = 512  # padded tokens per forward pass: measured best on CPU (2 cores, minilm; 8192 is 3x slower per text)
# in bf16 on AMX the products are 7x faster and like taller inputs: 1.2x 512's texts/s (2048: 1.1x); on Zen 4 512 and
# 1024 within drift
BF16_BATCH_TOKENS = 1024
GPU_BATCH_TOKENS = 16384  # a GPU is starved by small batches; 64 texts of 256 tokens fit any card's memory for an encoder


class Predictor:
    """Predictions of a classification or regression run folder, from PyTorch weights or, when
    model/model.onnx exists (an ONNX export), from onnxruntime on the CPU: same inputs, same outputs."""

    def __init__(self, run_dir: str | Path, device: str | None = None, onnx_model: Path | None = None,
                 merge: bool = False, session: Any = None) -> None:
        """`onnx_model`: an ONNX graph of this run to run instead of its PyTorch weights (what `tunesmith serve`
        converts the run into, inference/onnx_engine.py), on onnxruntime unless `session` (the graph compiled by
        another runtime: `run(outputs, feed)` and `input_names`, inference/openvino_engine.py) runs it.
        `merge`: an adapter folded into the weights (plain products, as `to_bf16` wants)."""
        self.run = Run(run_dir)
        self.manifest = self.run.manifest
        self.task = TaskType(self.manifest.task)
        self.clean = _cleaner(self.run.config.data.clean)
        self.model: Any = None
        self.session: Any = None  # onnxruntime.InferenceSession of an ONNX graph (or another runtime's, `session`)
        self.graph: Any = None  # a traced forward (the bf16 engine's): (inputs as in `graph_inputs`) -> logits
        self.graph_inputs: list[str] = []
        self.batch_tokens = MAX_BATCH_TOKENS  # padded tokens per forward pass
        self.pad_multiple: int | None = None  # token counts padded up to a multiple of this (bf16)
        converted = onnx_model is not None
        onnx_model = onnx_model or self.run.model_dir / ONNX_MODEL
        if onnx_model.is_file():
            from transformers import AutoTokenizer

            self.backend = "onnx"
            self.device = "cpu"
            self.tokenizer = AutoTokenizer.from_pretrained(self.run.model_dir)
            # a graph given is the run converted for serving (its serve cache), not an export's own
            remedy = f"delete {onnx_model.parent} to have the run converted again" if converted else None
            self.session = session if session is not None else _onnx_session(onnx_model, remedy)
            self._onnx_inputs = session.input_names if session is not None else [i.name for i in self.session.get_inputs()]
            return
        import torch

        from tunesmith.models.loading import load_run

        self.backend = "torch"
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        loaded = load_run(self.run, merge=merge, device=self.device)
        self.model, self.tokenizer = loaded.model, loaded.tokenizer
        self.batch_tokens = GPU_BATCH_TOKENS if self.device != "cpu" else MAX_BATCH_TOKENS

    @classmethod
    def from_parts(cls, manifest: RunManifest, tokenizer: Any, model: Any, device: str = "cpu",
                   clean: CleanSpec | None = None) -> Predictor:
        """A predictor over a model already in memory (a joblib bundle): the same logits() and predict();
        `clean`: how the run's training texts were cleaned (None: texts go in as given)."""
        self = cls.__new__(cls)
        self.run = None  # type: ignore[assignment]  # no run folder behind it
        self.manifest, self.task, self.tokenizer = manifest, TaskType(manifest.task), tokenizer
        self.clean = _cleaner(clean)
        self.session, self.backend, self.device = None, "torch", device
        self.graph, self.graph_inputs = None, []
        self.batch_tokens = MAX_BATCH_TOKENS if device == "cpu" else GPU_BATCH_TOKENS
        self.pad_multiple = None
        self.model = model.to(device).eval()
        return self

    def to_bf16(self) -> Predictor:
        """The PyTorch weights cast to bf16 in place (inference/bf16_engine.py says where that pays), with the
        micro-batches bf16 runs best at on a CPU, padded to few shapes (models/hardware.py: BF16_PAD_MULTIPLE)."""
        import torch

        from tunesmith.models.hardware import BF16_PAD_MULTIPLE

        self.model.to(torch.bfloat16)
        self.pad_multiple = BF16_PAD_MULTIPLE
        if self.device == "cpu":
            self.batch_tokens = BF16_BATCH_TOKENS
        return self

    def _forward(self, features: list[dict[str, list[int]]]) -> np.ndarray:
        """Logits of one micro-batch of tokenized texts (padded to its longest, rounded up to `pad_multiple`)."""
        multiple = self.pad_multiple
        if multiple:  # never past max_length, the longest a micro-batch may be
            from tunesmith.models.hardware import bf16_pad_multiple

            multiple = bf16_pad_multiple(max(len(f["input_ids"]) for f in features), self.manifest.max_length, multiple)
        if self.session is not None:
            batch = self.tokenizer.pad(features, pad_to_multiple_of=multiple, return_tensors="np")
            from tunesmith.models.onnx_graph import onnx_feed

            return np.asarray(self.session.run(["logits"], onnx_feed(batch, self._onnx_inputs))[0], dtype=np.float32)
        import torch

        with torch.inference_mode():
            batch = self.tokenizer.pad(features, pad_to_multiple_of=multiple, return_tensors="pt").to(self.device)
            if self.graph is not None:
                return self.graph(*(batch[name] for name in self.graph_inputs)).float().cpu().numpy()
            return self.model(**batch).logits.float().cpu().numpy()

    def logits(self, texts: list[str], batch_size: int = 64, max_batch_tokens: int | None = None,
               cleaned: bool = False) -> np.ndarray:
        """Logits for `texts`, in their order. Texts are first cleaned as the run's training data was (data.clean:
        markup, Unicode form, blanks), unless `cleaned` (a prepared dataset's texts). They are tokenized once,
        sorted by token count and run in micro-batches of similar length holding at most `max_batch_tokens` padded
        tokens: on a CPU a forward pass costs per token, so padding is pure waste and big batches buy nothing."""
        if any(not isinstance(t, str) for t in texts):
            raise DataError("every input must be a text string")
        if not texts:
            return np.zeros((0, 1), dtype=np.float32)
        if not cleaned:  # served raw, "<br />" and full-width letters reached a model that never saw them in training
            texts = [self.clean(t) for t in texts]
        if max_batch_tokens is None:
            max_batch_tokens = self.batch_tokens
        encoded = self.tokenizer(texts, truncation=True, max_length=self.manifest.max_length)
        features = [{k: encoded[k][i] for k in encoded.keys()} for i in range(len(texts))]
        for f in features:
            if not f["input_ids"]:  # "" with a tokenizer that adds no BOS/EOS (SmolLM2, GPT-2): an all-padding row
                f.update(_one_token(self.tokenizer, f))  # answered garbage in a batch and crashed alone
        lengths = np.array([len(f["input_ids"]) for f in features])
        order = np.argsort(lengths, kind="stable")
        out, start = [], 0
        while start < len(order):
            end = start + 1  # grow while the padded size (count x longest, sorted ascending) fits the budget
            while end < len(order) and end - start < batch_size and (end - start + 1) * lengths[order[end]] <= max_batch_tokens:
                end += 1
            idx = order[start:end]
            out.append((idx, self._forward([features[i] for i in idx])))
            start = end
        result = np.zeros((len(texts), out[0][1].shape[1]), dtype=np.float32)
        for idx, values in out:
            result[idx] = values
        return result

    def predict(self, texts: list[str], batch_size: int = 64, cleaned: bool = False) -> Predictions:
        return to_predictions(self.manifest, self.logits(texts, batch_size, cleaned=cleaned))


def _one_token(tokenizer: Any, feature: dict[str, list[int]]) -> dict[str, list[int]]:
    """An empty text as the one token a decoder reads as "nothing": its end-of-text token (else padding)."""
    token = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.pad_token_id
    return {k: [token] if k == "input_ids" else [1] if k == "attention_mask" else [0] for k in feature}


def _cleaner(spec: CleanSpec | None) -> Any:
    """The run's text cleaning (tasks/text.py: pure string functions, no training code), or none."""
    if spec is None:
        return lambda text: text
    from tunesmith.tasks.text import TextCleaner

    return TextCleaner(spec)


def to_predictions(m: RunManifest, logits: np.ndarray) -> Predictions:
    """Logits -> labels, probabilities or values in the user's units, as the run's manifest says."""
    from tunesmith.tasks.sequence import sigmoid, softmax

    task = TaskType(m.task)
    if task == TaskType.regression:
        scale = m.target_scaling or {"mean": 0.0, "std": 1.0}
        values = logits[:, 0].astype(np.float64) * scale["std"] + scale["mean"]  # float32 steps by 4 at 5e7
        return Predictions([float(v) for v in values], None, values, None)
    labels = m.labels or []
    if task == TaskType.multi_label:
        proba = sigmoid(logits)
        thresholds = np.asarray(m.thresholds or [0.5] * len(labels))
        hot = (proba >= thresholds).astype(int)
        return Predictions([[labels[k] for k in np.flatnonzero(row)] for row in hot], proba, None, hot)
    proba = softmax(logits)
    ids = proba.argmax(axis=1)
    return Predictions([labels[i] for i in ids], proba, None, ids)

def _onnx_session(path: Path, remedy: str | None = None) -> Any:
    """An onnxruntime CPU session using every core (onnxruntime is imported only for ONNX exports).
    `remedy`: what to do when the file does not parse (default: an export's; a serve-cache conversion is deleted)."""
    from tunesmith.models.hardware import cpu_cores

    try:
        import onnxruntime as ort
        from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument, InvalidProtobuf
    except ImportError:  # pragma: no cover - a dependency of tunesmith
        raise DataError(f"{path}: an ONNX export needs onnxruntime; pip install onnxruntime") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = cpu_cores()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except (InvalidProtobuf, InvalidArgument) as err:  # the file does not parse ("No graph was found": an empty one)
        # a cut or half-copied model.onnx surfaced as an internal "InvalidProtobuf: ... Protobuf parsing failed"
        reason = " ".join(str(err).replace(f"Load model from {path} failed:", "").split())[:200] or type(err).__name__
        raise DataError(f"{path}: damaged or partly copied, onnxruntime cannot load it ({reason}); "
                        f"{remedy or 're-copy the export or export the run again'}") from err
