"""A chat run answered by CTranslate2: int8 on the CPU, concurrent requests decoded together.

The run is converted on first use into `<run>/.serve-cache/ct2-<quantization>/` (serve_cache.py; a LoRA
run merged into its base first), and converted again only when the weights change.

Batching (the queue: decode_queue.py): a decoding thread waits `wait_ms` for company, then runs the
requests that share sampling settings (greedy ones always share) as ONE `generate_batch` call; a
per-token callback ends each row on its own (and streams its text). Rows cannot join a batch already
running (CTranslate2 has no continuous batching); they form the next one. Sampling settings differ per batch, not per row, because
`generate_batch` takes one temperature and top_p for all rows.

`seed` is accepted and not honoured: CTranslate2 seeds its sampler once per worker thread, so two
sampled answers with the same seed may differ (OpenAI documents seed as best effort too). Greedy
answers (temperature 0) are deterministic.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import json
import shutil
import tempfile
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tunesmith.artifacts import Run
from tunesmith.inference.decode_queue import QueuedChatModel, Request
from tunesmith.inference.serve_cache import architecture_config, converted
from tunesmith.models.hardware import cpu_cores
from tunesmith.tasks import chat

# int8 weights, float32 elsewhere: 4x less memory traffic than float32 (decoding is bound by it), on every CPU
# CTranslate2 runs on. It costs exactness: greedy answers part from the float32 run's after a few tokens on
# some prompts; compute_type "float32" gives the PyTorch run's answers token for token, at about half the speed.
CPU_COMPUTE_TYPE = "int8_float32"


# -- which runs can be served this way --------------------------------------------------------------


def unavailable(run: Run) -> str | None:
    """Why CTranslate2 cannot serve `run` (the package is missing, the architecture does not convert), or None."""
    try:
        import ctranslate2  # noqa: F401 - first: a converter module already imported would hide a broken package
        from ctranslate2.converters import transformers as converter
    except ImportError:
        return "the ctranslate2 package is not installed (pip install ctranslate2)"
    loaders = getattr(converter, "_MODEL_LOADERS", None)  # private: when it moves, the conversion itself decides
    name = type(architecture_config(run)).__name__
    if loaders is not None and name not in loaders:
        return f"CTranslate2 does not convert {name.removesuffix('Config')} models"
    return None


# -- conversion ---------------------------------------------------------------------------------------


def converter_version(quantization: str) -> str:
    import ctranslate2

    return f"ctranslate2 {ctranslate2.__version__} {quantization}"


def _convert(run: Run, out: Path, quantization: str) -> None:
    from ctranslate2.converters import TransformersConverter

    m = run.manifest
    source, scratch = run.model_dir, None
    if m.adapter and not m.merged:  # CTranslate2 has no adapters: the LoRA weights are folded into the base
        from tunesmith.models.loading import load_run

        loaded = load_run(run, merge=True)
        scratch = Path(tempfile.mkdtemp(prefix="merged-", dir=out.parent))
        source = scratch
        loaded.model.save_pretrained(source)
        loaded.tokenizer.save_pretrained(source)
        del loaded
    try:
        TransformersConverter(str(source), low_cpu_mem_usage=True).convert(str(out), quantization=quantization, force=True)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    config_path = out / "config.json"
    config = json.loads(config_path.read_text())
    for key in ("bos_token", "eos_token", "unk_token"):  # the loader refuses a null special token (a tokenizer without BOS)
        if not config.get(key):
            config[key] = config.get("eos_token") or json.loads((out / "vocabulary.json").read_text())[0]
    config_path.write_text(json.dumps(config, indent=2))


# -- generation ---------------------------------------------------------------------------------------


_LIVE: weakref.WeakSet[CT2ChatModel] = weakref.WeakSet()  # loaded models, unloaded at exit


@atexit.register
def _unload_all() -> None:
    """Free the models before the interpreter's teardown: a Generator destroyed during it once torch has run aborts
    the process ("terminate called without an active exception", exit 134) instead of exiting cleanly."""
    for model in list(_LIVE):
        # A batch whose answers were all handed over may still be returning from generate_batch: unloaded under it (or
        # left to the teardown), the process aborted now and then (1 run in ~10 under load)
        finished = model.decoding.acquire(timeout=10)
        with contextlib.suppress(RuntimeError, AttributeError):  # already unloaded (closed: None), or still decoding
            model.model.unload_model()
        if finished:
            model.decoding.release()
        model.model = None  # the Generator itself (its C++ thread pool) goes now, not in the teardown
    gc.collect()


def stored_weights(compute_type: str) -> str:
    """The precision to convert the weights to for `compute_type`: int8 for the int8 types; float32 for the rest, which
    CTranslate2 casts or quantizes at load (int16 from int8 weights would keep int8's rounding)."""
    return "int8" if compute_type.startswith("int8") else "float32"


class CT2ChatModel(QueuedChatModel):
    engine = "ct2"

    def __init__(self, model_dir: Path, tokenizer: Any, stop_token_ids: Sequence[int], context: int | None,
                 name: str = "model", compute_type: str | None = None, max_batch: int = 32, wait_ms: float = 5.0,
                 threads: int | None = None) -> None:
        import ctranslate2

        super().__init__(tokenizer, stop_token_ids, context, name, max_batch, wait_ms)
        threads = threads or cpu_cores()  # the process's cores (its affinity where the OS has one)
        # One batch at a time on every core: batching, not parallel batches, is what raises throughput on a CPU.
        self.compute_type = compute_type or CPU_COMPUTE_TYPE
        self.model = ctranslate2.Generator(str(model_dir), device="cpu", compute_type=self.compute_type, inter_threads=1,
                                           intra_threads=threads)
        self.folder = Path(model_dir)
        self.threads = threads
        vocabulary = json.loads((Path(model_dir) / "vocabulary.json").read_text(encoding="utf-8"))
        ids = tokenizer.convert_tokens_to_ids(vocabulary)  # CTranslate2's index -> the tokenizer's id (they may differ)
        self._hf_id = [i if i is not None else -1 for i in ids]
        self._end_tokens = tokenizer.convert_ids_to_tokens(self.stop_token_ids)
        _LIVE.add(self)

    @property
    def precision(self) -> str:
        return self.compute_type

    @classmethod
    def from_run(cls, path: str | Path | Run, compute_type: str | None = None, **options: Any) -> CT2ChatModel:
        """A chat run, converted on first use (`compute_type`: CTranslate2's; default int8 weights, float32 activations)."""
        from transformers import AutoTokenizer

        run = path if isinstance(path, Run) else Run(path)
        compute_type = compute_type or CPU_COMPUTE_TYPE
        quantization = stored_weights(compute_type)
        folder = converted(run, f"ct2-{quantization}", converter_version(quantization),
                           lambda out: _convert(run, out, quantization))
        tokenizer = AutoTokenizer.from_pretrained(run.model_dir)
        stops = list(run.manifest.stop_token_ids or chat.stop_token_ids(tokenizer))
        context = getattr(architecture_config(run), "max_position_embeddings", None)
        return cls(folder, tokenizer, stops, context, name=run.manifest.name, compute_type=compute_type, **options)

    def _loop(self) -> None:
        while True:
            with self._wake:
                if self._idle(False):
                    return
                # the window: concurrent requests join this batch until it is full or wait_ms has passed
                self._wake.wait_for(lambda: len(self._pending) >= self.max_batch, timeout=self.wait_s)
                first = self._pending[0].sampling
                batch = [r for r in self._pending if r.sampling == first][: self.max_batch]
                for r in batch:
                    self._pending.remove(r)
            try:
                with self.decoding:
                    self._decode(batch)
            except BaseException as err:  # noqa: BLE001 - every request of the batch learns about the failure
                for r in batch:
                    if not r.done.is_set():
                        self._fail(r, err)

    def _release(self) -> None:
        _LIVE.discard(self)
        with self.decoding:  # the last batch may still be returning from generate_batch
            model, self.model = self.model, None
        if model is not None:
            model.unload_model()

    def _decode(self, batch: list[Request]) -> None:
        live = []
        for r in batch:
            if r.cancel.is_set():  # a client gone before its batch started
                self._finish(r)
            else:
                live.append(r)
        if not live:
            return
        temperature, top_p = live[0].sampling
        greedy = temperature == 0

        def step(result: Any) -> bool:
            try:
                return self._on_token(live[result.batch_id], self._hf_id[result.token_id], result.is_last)
            except BaseException as err:  # noqa: BLE001 - an exception must not cross into CTranslate2's thread
                self._fail(live[result.batch_id], err)
                return True

        self.stats.add(len(live))
        self.model.generate_batch(
            [self.tokenizer.convert_ids_to_tokens(r.ids) for r in live], max_length=max(r.max_new for r in live),
            sampling_topk=1 if greedy else 0, sampling_topp=top_p, sampling_temperature=temperature if not greedy else 1.0,
            end_token=self._end_tokens, return_end_token=True, include_prompt_in_result=False, callback=step)
        for r in live:  # rows CTranslate2 ended without a last step reported (none expected): finish from what came
            if not r.done.is_set():
                self._finish(r)
