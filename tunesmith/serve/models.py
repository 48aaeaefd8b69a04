"""The served models: run folders loaded behind two small interfaces, named the way OpenAI names them.

A classification/regression run (or its ONNX export) answers `predict(texts)`; a chat run answers
`generate(prompts, ...)` and `stream(prompt, ...)`. Chat runs that are LoRA adapters over the same
base model share one copy of the base: each adapter is loaded into the same PEFT model under its own
name and switched on per batch, so serving five adapters costs one base model of memory.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tunesmith.artifacts import RUN_MANIFEST, Run, is_run
from tunesmith.config import GENERATIVE_TASKS, ServeSpec, TaskType
from tunesmith.errors import ConfigError


class SequenceEngine(Protocol):
    labels: list[str] | None
    name: str  # what computes the answers and in which precision, as /v1/models shows it

    def predict(self, texts: list[str]) -> list[dict[str, Any]]: ...


class ChatEngine(Protocol):
    context: int | None
    name: str

    def count_tokens(self, text: str) -> int: ...
    def prompt_text(self, conversation: list[dict[str, str]]) -> str: ...
    def generate(self, prompts: Sequence[str], cancels: Sequence[threading.Event] | None = None, **params: Any) -> list[Any]: ...
    def stream(self, prompt: str, cancel: threading.Event, **params: Any) -> Iterator[Any]: ...


@dataclass
class Served:
    """One model as the API shows it."""

    id: str  # ft:BASE:NAME:HASH, OpenAI's fine-tuned model naming
    kind: str  # "sequence" | "chat"
    task: str
    run: str  # the run folder
    base_model: str
    created: int
    version: str  # short hash of run.json: changes whenever the model does
    engine: Any
    aliases: set[str] = field(default_factory=set)
    batch_key: str = ""  # the model's batcher: its own (Service.add keeps it so); chat adapters sharing a base share one
    owner: str | None = None  # a fine-tuning job's model: only this API-key owner sees it; None: everyone
    registry: tuple[str, str] | None = None  # (registry model, version id) when served as a registry model's production


def model_id(run: Run) -> tuple[str, str]:
    """(`ft:BASE:NAME:HASH`, HASH) for a run; the hash follows run.json, so a retrained run gets a new id. An export
    folder (merged, onnx, onnx-int8) keeps its run's run.json: its export.json (the format, when it was written) goes
    into the hash too, so the export, its run and its other exports are told apart. A run folder's id is run.json's
    alone, as ever: fine-tuning jobs and clients name it."""
    from tunesmith.export.folder import EXPORT_MANIFEST

    content = hashlib.sha256((run.path / RUN_MANIFEST).read_bytes())
    if (run.path / EXPORT_MANIFEST).is_file():
        content.update((run.path / EXPORT_MANIFEST).read_bytes())
    digest = content.hexdigest()[:8]
    base = Path(run.manifest.base_model).name if "/" in run.manifest.base_model else run.manifest.base_model
    if is_run(run.manifest.base_model):  # continued from another run (DPO after SFT)
        base = Run(run.manifest.base_model).manifest.base_model
        base = Path(base).name if "/" in base else base
    return f"ft:{base}:{run.manifest.name}:{digest}", digest


class PredictorEngine:
    """A classification/regression run answering label/probability dicts: with `engine` auto, a classifier in bf16
    on a CPU with native bf16 (AMX or AVX512-BF16): on OpenVINO (inference/openvino_engine.py), else on PyTorch
    (inference/bf16_engine.py); else on onnxruntime (the run converted once), else on PyTorch in fp32; or the engine
    named; an ONNX export runs as it is."""

    def __init__(self, run_dir: Path, engine: str = "auto") -> None:
        from tunesmith.inference import bf16_engine, onnx_engine, openvino_engine
        from tunesmith.inference.predictor import ONNX_MODEL, Predictor

        run = Run(run_dir)
        chosen, built, reasons = None, None, []
        exported = (run.model_dir / ONNX_MODEL).is_file()
        if exported and engine not in ("auto", "onnxruntime"):  # it was served on onnxruntime without a word
            raise ConfigError(f"{run_dir}: cannot serve with --classifier-engine {engine} (serve.classifier_engine): "
                              "an ONNX export always runs on onnxruntime; use --classifier-engine auto or onnxruntime, "
                              f"or serve the run it was exported from ({_source_run(run)}) to choose an engine")
        if not exported:  # an ONNX export runs as it is
            chosen, built, reasons = first_engine(run, "--classifier-engine", engine, "torch", {
                openvino_engine.NAME: (openvino_engine.unavailable, lambda: openvino_engine.openvino_predictor(run)),
                bf16_engine.NAME: (bf16_engine.unavailable, lambda: bf16_engine.bf16_predictor(run)),
                "onnxruntime": (onnx_engine.unavailable, lambda: onnx_engine.onnx_model(run))})
        built_predictor = chosen in (openvino_engine.NAME, bf16_engine.NAME)
        self.predictor = built if built_predictor else Predictor(run_dir, onnx_model=built)
        self.labels = self.predictor.run.manifest.labels
        self.name = {openvino_engine.NAME: "openvino bf16", bf16_engine.NAME: "torch bf16", "onnxruntime": "onnxruntime fp32"}.get(
            chosen, "onnxruntime (ONNX export)" if self.predictor.backend == "onnx" else "torch fp32")
        if chosen == openvino_engine.NAME:
            print(f"{run.manifest.name}: engine OpenVINO (bf16, a CPU with native bf16)", flush=True)
        elif chosen == bf16_engine.NAME:
            passed = "".join(f"; {name}: {why}" for name, why in reasons)  # OpenVINO's, where auto passed it over
            print(f"{run.manifest.name}: engine PyTorch (bf16 weights, a CPU with native bf16{passed})", flush=True)
        elif chosen == "onnxruntime":
            print(f"{run.manifest.name}: engine onnxruntime (fp32) from {built.parent}", flush=True)
        elif reasons:
            print(f"{run.manifest.name}: engine PyTorch ({'; '.join(f'{name}: {why}' for name, why in reasons)})", flush=True)

    def predict(self, texts: list[str]) -> list[dict[str, Any]]:
        pred = self.predictor.predict(texts)
        out: list[dict[str, Any]] = []
        for i, label in enumerate(pred.labels):
            if pred.values is not None:
                out.append({"value": float(pred.values[i])})
            else:
                proba = {name: round(float(p), 6) for name, p in zip(self.labels or [], pred.proba[i], strict=True)}
                out.append({"label": label, "probabilities": proba})
        return out


def _source_run(run: Run) -> str:
    """The run an export came from, as its export.json names it."""
    import json

    from tunesmith.export.folder import EXPORT_MANIFEST

    try:
        return str(json.loads((run.path / EXPORT_MANIFEST).read_text(encoding="utf-8"))["source_run"])
    except (OSError, ValueError, KeyError, TypeError):
        return f"see {run.path / EXPORT_MANIFEST}"


class BatchedChatEngine:
    """A chat run on an engine that batches concurrent requests itself (llama.cpp, CTranslate2): no lock, so concurrent
    streams decode together, and no adapters to switch (a LoRA run is merged into its own copy)."""

    def __init__(self, chat_model: Any, name: str = "transformers") -> None:
        self.chat = chat_model
        self.name = name

    @property
    def context(self) -> int | None:
        return self.chat.context

    @property
    def concurrent_calls(self) -> int:
        """How many `generate` calls the serving batcher may have running at once (the engine decodes them together)."""
        return int(getattr(self.chat, "concurrent_calls", 1))

    def count_tokens(self, text: str) -> int:
        return self.chat.count_tokens(text)

    def prompt_text(self, conversation: list[dict[str, str]]) -> str:
        return self.chat.prompt_text(conversation)

    def generate(self, prompts: Sequence[str], cancels: Sequence[threading.Event] | None = None, **params: Any) -> list[Any]:
        """`cancels`: an event per prompt; a row whose event is set (the server stopped waiting) ends at its next token."""
        return self.chat.generate_texts(prompts, cancels=cancels, **params)

    def stream(self, prompt: str, cancel: threading.Event, **params: Any) -> Iterator[Any]:
        yield from self.chat.stream_text(prompt, cancel=cancel, **params)

    def close(self) -> None:
        """Unload the model (a version swapped out): an engine's decoding thread ends once its queued requests are done,
        and frees the model it held for good."""
        close = getattr(self.chat, "close", None)
        if close is not None:
            close()


class ChatModelEngine(BatchedChatEngine):
    """A chat run on transformers; `adapter` names its adapter inside a PEFT model shared with other runs."""

    def __init__(self, chat_model: Any, adapter: str | None, lock: threading.Lock) -> None:
        super().__init__(chat_model)
        self.adapter = adapter
        self.lock = lock  # one generation at a time per loaded base: adapters are switched per call

    def _activate(self) -> None:
        if self.adapter is not None:
            self.chat.model.set_adapter(self.adapter)

    def generate(self, prompts: Sequence[str], cancels: Sequence[threading.Event] | None = None, **params: Any) -> list[Any]:
        with self.lock:
            self._activate()
            return super().generate(prompts, cancels, **params)

    def stream(self, prompt: str, cancel: threading.Event, **params: Any) -> Iterator[Any]:
        with self.lock:
            self._activate()
            yield from super().stream(prompt, cancel, **params)


class ModelLoader:
    """Loads run folders as served models; chat runs go to `spec.chat_engine` (by default llama.cpp, else
    CTranslate2, where they can take the model). On transformers, chat adapters over the same base share one
    loaded base, also for models loaded later (a fine-tuning job's model, on its first request)."""

    def __init__(self, spec: ServeSpec | None = None) -> None:
        self.spec = spec or ServeSpec()
        self.shared: dict[str, Any] = {}  # base folder -> the PeftModel its adapters are loaded into
        self.locks: dict[str, threading.Lock] = {}  # batch key -> one generation at a time on that model
        self.count = 0

    def load(self, path: str | Path, ident: str | None = None, owner: str | None = None) -> Served:
        """`ident`: the name the API shows (a job's ft: name); default: ft:BASE:NAME:HASH from run.json."""
        from tunesmith.inference.generation import ChatModel
        from tunesmith.models.loading import load_run

        run = Run(path)
        m = run.manifest
        default_id, digest = model_id(run)
        ident = ident or default_id
        created = int(run.path.joinpath(RUN_MANIFEST).stat().st_mtime)
        aliases = set() if owner is not None else {m.name, str(run.path), str(run.path.resolve())}
        self.count += 1
        if TaskType(m.task) not in GENERATIVE_TASKS:
            return Served(ident, "sequence", m.task, str(run.path), m.base_model, created, digest,
                          PredictorEngine(run.path, self.spec.classifier_engine), aliases, ident, owner)
        if self.spec.chat_engine != "transformers":
            batched = self._batched(run)
            if batched is not None:
                return Served(ident, "chat", m.task, str(run.path), m.base_model, created, digest, batched, aliases, ident, owner)
        adapter = f"a{self.count}"
        loaded = load_run(run, shared=self.shared, adapter_name=adapter)
        shares = loaded.base_dir is not None and not is_run(loaded.base_dir)
        key = str(loaded.base_dir.resolve()) if shares and loaded.base_dir else ident
        chat_model = ChatModel(loaded.model, loaded.tokenizer, loaded.stop_token_ids, name=m.name)
        engine = ChatModelEngine(chat_model, adapter if shares else None, self.locks.setdefault(key, threading.Lock()))
        return Served(ident, "chat", m.task, str(run.path), m.base_model, created, digest, engine, aliases, key, owner)

    def _batched(self, run: Run) -> BatchedChatEngine | None:
        """The run on llama.cpp, else CTranslate2 (auto: the first that can take it, converted on first use), or None
        (auto only: transformers serves it) with the reasons printed."""
        from tunesmith.inference import ct2_generation as ct2
        from tunesmith.inference import llama_generation as llama

        options = {"max_batch": self.spec.max_batch_size, "wait_ms": self.spec.batch_wait_ms}
        engine, model, reasons = first_engine(run, "--chat-engine", self.spec.chat_engine, "transformers", {
            "llama.cpp": (llama.unavailable,
                          lambda: llama.LlamaCppChatModel.from_run(run, kv_cells=self.spec.chat_kv_tokens, **options)),
            "ctranslate2": (ct2.unavailable, lambda: ct2.CT2ChatModel.from_run(run, **options))})
        if model is not None:
            # with the engines passed over and why: a GGUF that failed to write (a full disk) had moved the run to
            # CTranslate2 int8 without a word
            passed = "".join(f"; not {name}: {reason.rstrip('.')}" for name, reason in reasons)
            print(f"{run.manifest.name}: chat engine {engine} ({model.precision}) from {model.folder}{passed}", flush=True)
            return BatchedChatEngine(model, f"{engine} {model.precision}")
        summary = "; ".join(f"{name}: {reason.rstrip('.')}" for name, reason in reasons)
        print(f"{run.manifest.name}: chat engine transformers ({summary})", flush=True)
        return None


def first_engine(run: Run, option: str, wanted: str, fallback: str,
                 engines: dict[str, tuple[Callable[[Run], str | None], Callable[[], Any]]]
                 ) -> tuple[str | None, Any, list[tuple[str, str]]]:
    """The first of `engines` (name -> (why it cannot take the run, or None; what builds it)) that serves the run, or
    the one `wanted` names: (its name, what it built, []). With `wanted` "auto", (None, None, [(name, why not), ...])
    when none can, and the caller falls back to `fallback`; an engine named by `option` that cannot raises instead.
    An engine found after others were passed over comes with their reasons. `wanted` naming none of `engines` (the
    fallback itself) tries none."""
    reasons: list[tuple[str, str]] = []
    for engine, (unavailable, build) in engines.items():
        if wanted not in ("auto", engine):
            continue
        reason = unavailable(run)
        if reason is None:
            try:
                return engine, build(), reasons
            except Exception as err:  # noqa: BLE001 - auto falls back to the next engine, saying why
                reason = f"conversion failed: {type(err).__name__}: {err}"
                if wanted != "auto":  # named by the option: refused with the remedy, as an unavailable engine is
                    if isinstance(err, ConfigError):  # it names its file and what failed
                        reason = str(err).removeprefix(f"{run.path}: ").rstrip(".")
                    raise ConfigError(f"{run.path}: cannot serve with {option} {engine}: {reason}; "
                                      f"use {option} {fallback} (or auto, which falls back by itself)") from err
        if wanted != "auto":
            raise ConfigError(f"{run.path}: cannot serve with {option} {engine}: {reason}; "
                              f"use {option} {fallback} (or auto, which falls back by itself)")
        reasons.append((engine, reason))
    return None, None, reasons


def load(paths: Sequence[str | Path], loader: ModelLoader | None = None) -> list[Served]:
    """Load every run folder; adapter runs over the same base model share it."""
    loader = loader or ModelLoader()
    served = [loader.load(path) for path in paths]
    ids = [s.id for s in served]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"the same run is listed twice: {sorted({i for i in ids if ids.count(i) > 1})}")
    return served


def prepare(paths: Sequence[str | Path], spec: ServeSpec) -> Iterator[tuple[Served, list[str]]]:
    """Load every run as a server start would, converting what this host's engines need (`serve --prepare`), and
    for each classifier the fp32 ONNX graph too where auto serves it on PyTorch here (in bf16, or on a GPU; OpenVINO's
    bf16 compiles that graph itself): onnxruntime is what auto takes on every CPU without native bf16, and an image is
    often built on another host than the ones it runs on.
    Yields each model with notes on what was converted besides (or why not: those hosts then serve it on PyTorch)."""
    import torch

    from tunesmith.inference import onnx_engine

    for served in load(paths, ModelLoader(spec)):
        notes = []
        if (served.kind == "sequence" and spec.classifier_engine == "auto"
                and (served.engine.name == "torch bf16" or (served.engine.name == "torch fp32" and torch.cuda.is_available()))):
            run = Run(served.run)
            try:
                notes.append(f"also converted: onnxruntime fp32 graph for CPUs without native bf16 ({onnx_engine.onnx_model(run).parent})")
            except Exception as err:  # noqa: BLE001 - those hosts' auto falls back to PyTorch, as a start there would
                notes.append(f"no onnxruntime graph for CPUs without native bf16 ({type(err).__name__}: {err}): they serve it on PyTorch")
        yield served, notes
