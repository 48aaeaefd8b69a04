"""A chat run answered by CTranslate2: int8 on the CPU, concurrent requests decoded together.

Answers the way generation.ChatModel does wherever serving asks (prompt_text, count_tokens, context,
generate_texts, stream_text, the same Completion), so the serving layer holds either behind one
interface. The run is converted on first use into a cache folder beside it,
`<run>/.serve-cache/ct2-<quantization>/` (a LoRA run merged into its base first), and converted again
only when the weights change (a fingerprint of run.json and the weight files' sizes and times).

Batching: every request, whole or streamed, joins one queue; a decoding thread waits `wait_ms` for
company, then runs the requests that share sampling settings (greedy ones always share) as ONE
`generate_batch` call. Requests in a batch keep their own max_tokens, stop strings and cancellation:
a per-token callback ends each row on its own (and streams its text), so a short answer is returned
as soon as it is done. Rows cannot join a batch already running (CTranslate2 has no continuous
batching); they form the next one. Sampling settings differ per batch, not per row, because
`generate_batch` takes one temperature and top_p for all rows.

`seed` is accepted and not honoured: CTranslate2 seeds its sampler once per worker thread, so two
sampled answers with the same seed may differ (OpenAI documents seed as best effort too). Greedy
answers (temperature 0) are deterministic.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import hashlib
import json
import os
import queue
import shutil
import tempfile
import threading
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.artifacts import RUN_MANIFEST, Run, is_run
from tunesmith.config import cache_dir
from tunesmith.errors import ConfigError
from tunesmith.inference.generation import Completion, Prompting
from tunesmith.tasks import chat

CACHE_DIR = ".serve-cache"  # beside run.json: deleting the run deletes its converted copies
FINGERPRINT = "fingerprint.txt"


# int8 weights, float32 elsewhere: 4x less memory traffic than float32 (decoding is bound by it), on every CPU
# CTranslate2 runs on. It costs exactness: greedy answers part from the float32 run's after a few tokens on
# some prompts; compute_type "float32" gives the PyTorch run's answers token for token, at about half the speed.
CPU_COMPUTE_TYPE = "int8_float32"


# -- which runs can be served this way --------------------------------------------------------------


def _chain(run: Run) -> list[Path]:
    """The folders whose weights make the run's model: model/, then the base an adapter sits on (recursively)."""
    from tunesmith.models.loading import base_model_dir

    folders = [run.model_dir]
    m = run.manifest
    if m.adapter and not m.merged:
        base = base_model_dir(m)
        folders += _chain(Run(base)) if is_run(base) else [base]
    return folders


def _architecture_config(run: Run) -> Any:
    from transformers import AutoConfig

    folder = next((f for f in _chain(run) if (f / "config.json").is_file()), None)
    if folder is None:
        raise ConfigError(f"{run.path}: no config.json in {', '.join(map(str, _chain(run)))}")
    return AutoConfig.from_pretrained(folder)


def unavailable(run: Run) -> str | None:
    """Why CTranslate2 cannot serve `run` (the package is missing, the architecture does not convert), or None."""
    try:
        import ctranslate2  # noqa: F401 - first: a converter module already imported would hide a broken package
        from ctranslate2.converters import transformers as converter
    except ImportError:
        return "the ctranslate2 package is not installed (pip install ctranslate2)"
    loaders = getattr(converter, "_MODEL_LOADERS", None)  # private: when it moves, the conversion itself decides
    name = type(_architecture_config(run)).__name__
    if loaders is not None and name not in loaders:
        return f"CTranslate2 does not convert {name.removesuffix('Config')} models"
    return None


# -- conversion ---------------------------------------------------------------------------------------


def fingerprint(run: Run, quantization: str) -> str:
    """Changes whenever the weights could have: run.json's bytes and each weight file's name, size and time
    (stat, not the bytes: hashing gigabytes at every server start would cost more than it saves)."""
    import ctranslate2

    h = hashlib.sha256(f"ctranslate2 {ctranslate2.__version__} {quantization}\n".encode())
    h.update((run.path / RUN_MANIFEST).read_bytes())
    for folder in _chain(run):
        for f in sorted(folder.rglob("*")):
            if f.is_file() and f.suffix in (".safetensors", ".bin", ".json", ".model", ".txt"):
                st = f.stat()
                h.update(f"{f.relative_to(folder)} {st.st_size} {st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def converted(run: Run, quantization: str) -> Path:
    """The CTranslate2 folder of `run` at `quantization`, converted now unless the cache is current."""
    digest = fingerprint(run, quantization)
    target = run.path / CACHE_DIR / f"ct2-{quantization}"
    if not os.access(run.path, os.W_OK):  # a read-only run folder (a mounted volume): the user's cache instead
        target = cache_dir() / "ct2" / f"{run.manifest.name}-{digest}-{quantization}"
    stamp = target / FINGERPRINT
    if stamp.is_file() and stamp.read_text().strip() == digest:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))  # same disk: the rename is atomic
    try:
        _convert(run, work / "model", quantization)
        (work / "model" / FINGERPRINT).write_text(digest + "\n")
        old = target.with_name(f".{target.name}-old-{os.getpid()}")
        if target.exists():
            target.rename(old)
        (work / "model").rename(target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


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
        with contextlib.suppress(RuntimeError):  # already unloaded, or still decoding for a request nobody awaits
            model.model.unload_model()
        model.model = None  # the Generator itself (its C++ thread pool) goes now, not in the teardown
    gc.collect()


@dataclass
class _Request:
    ids: list[int]
    max_new: int
    stop: tuple[str, ...]
    sampling: tuple[float, float]  # (temperature, top_p); (0, 1) for greedy
    cancel: threading.Event
    pieces: queue.SimpleQueue[Any] | None  # a stream: text pieces, then the Completion (None: a whole answer)
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    sent: str = ""  # the text already streamed
    ended: bool = False  # a stop token ended the answer
    cut: bool = False  # a stop string ended the answer
    result: Completion | None = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)


@dataclass
class BatchStats:
    batches: int = 0
    rows: int = 0
    largest: int = 0
    sizes: list[int] = field(default_factory=list)  # recent batch sizes (tests, benchmarks)


def stored_weights(compute_type: str) -> str:
    """The precision to convert the weights to for `compute_type`: int8 for the int8 types; float32 for the rest, which
    CTranslate2 casts or quantizes at load (int16 from int8 weights would keep int8's rounding)."""
    return "int8" if compute_type.startswith("int8") else "float32"


class CT2ChatModel(Prompting):
    def __init__(self, model_dir: Path, tokenizer: Any, stop_token_ids: Sequence[int], context: int | None,
                 name: str = "model", compute_type: str | None = None, max_batch: int = 32, wait_ms: float = 5.0,
                 threads: int | None = None) -> None:
        import ctranslate2

        threads = threads or len(os.sched_getaffinity(0))
        # One batch at a time on every core: batching, not parallel batches, is what raises throughput on a CPU.
        self.compute_type = compute_type or CPU_COMPUTE_TYPE
        self.model = ctranslate2.Generator(str(model_dir), device="cpu", compute_type=self.compute_type, inter_threads=1,
                                           intra_threads=threads)
        self.folder = Path(model_dir)
        self.threads = threads
        self.tokenizer = tokenizer
        self.stop_token_ids = list(stop_token_ids)
        self.context = context
        self.name = name
        self.max_batch = max_batch
        self.wait_s = wait_ms / 1000
        vocabulary = json.loads((Path(model_dir) / "vocabulary.json").read_text(encoding="utf-8"))
        ids = tokenizer.convert_tokens_to_ids(vocabulary)  # CTranslate2's index -> the tokenizer's id (they may differ)
        self._hf_id = [i if i is not None else -1 for i in ids]
        self._end_tokens = tokenizer.convert_ids_to_tokens(self.stop_token_ids)
        self.stats = BatchStats()
        self._pending: list[_Request] = []
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        _LIVE.add(self)

    @classmethod
    def from_run(cls, path: str | Path | Run, compute_type: str | None = None, **options: Any) -> CT2ChatModel:
        """A chat run, converted on first use (`compute_type`: CTranslate2's; default int8 weights, float32 activations)."""
        from transformers import AutoTokenizer

        run = path if isinstance(path, Run) else Run(path)
        compute_type = compute_type or CPU_COMPUTE_TYPE
        quantization = stored_weights(compute_type)
        folder = converted(run, quantization)
        tokenizer = AutoTokenizer.from_pretrained(run.model_dir)
        stops = list(run.manifest.stop_token_ids or chat.stop_token_ids(tokenizer))
        context = getattr(_architecture_config(run), "max_position_embeddings", None)
        return cls(folder, tokenizer, stops, context, name=run.manifest.name, compute_type=compute_type, **options)

    # -- what serving asks --------------------------------------------------------------------------

    def generate_texts(self, prompts: Sequence[str], *, max_new_tokens: int = 256, temperature: float = 0.0,
                       top_p: float = 1.0, seed: int | None = None, stop: Sequence[str] = (),
                       batch_size: int | None = None) -> list[Completion]:
        """Continue each prompt text until a stop token, a stop string or the limit, decoded together with any concurrent
        requests (`batch_size`: ChatModel's; here batches form in the queue, up to `max_batch`)."""
        requests = [self._request(p, max_new_tokens, temperature, top_p, stop, None, None) for p in prompts]
        self._submit(requests)
        for r in requests:
            r.done.wait()
        for r in requests:
            if r.error is not None:
                raise r.error
        return [r.result for r in requests if r.result is not None]

    def stream_text(self, prompt: str, *, max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 1.0,
                    seed: int | None = None, stop: Sequence[str] = (), cancel: threading.Event | None = None
                    ) -> Iterator[str | Completion]:
        """Yield the answer's text piece by piece as it is decoded, then its Completion; setting `cancel` ends it."""
        cancel = cancel or threading.Event()
        r = self._request(prompt, max_new_tokens, temperature, top_p, stop, cancel, queue.SimpleQueue())
        assert r.pieces is not None
        self._submit([r])
        try:
            while True:
                piece = r.pieces.get()
                if isinstance(piece, BaseException):
                    raise piece
                yield piece
                if isinstance(piece, Completion):
                    return
        finally:
            cancel.set()  # the consumer left early: stop decoding this row

    # -- the queue and the decoding thread --------------------------------------------------------------

    def _request(self, prompt: str, max_new_tokens: int, temperature: float, top_p: float, stop: Sequence[str],
                 cancel: threading.Event | None, pieces: queue.SimpleQueue[Any] | None) -> _Request:
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        room = self.context - len(ids) if self.context else max_new_tokens  # never past the model's context
        if room < 1:
            raise ValueError(f"a prompt of {len(ids)} tokens leaves no room to answer in the model's context of {self.context}")
        sampling = (float(temperature), float(top_p)) if temperature > 0 else (0.0, 1.0)
        return _Request(ids, min(max_new_tokens, room), tuple(s for s in stop if s), sampling, cancel or threading.Event(), pieces)

    def _submit(self, requests: list[_Request]) -> None:
        with self._wake:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name=f"ct2-{self.name}", daemon=True)
                self._thread.start()
            self._pending.extend(requests)
            self._wake.notify()

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._pending:
                    self._wake.wait()
                # the window: concurrent requests join this batch until it is full or wait_ms has passed
                self._wake.wait_for(lambda: len(self._pending) >= self.max_batch, timeout=self.wait_s)
                first = self._pending[0].sampling
                batch = [r for r in self._pending if r.sampling == first][: self.max_batch]
                for r in batch:
                    self._pending.remove(r)
            try:
                self._decode(batch)
            except BaseException as err:  # noqa: BLE001 - every request of the batch learns about the failure
                for r in batch:
                    if not r.done.is_set():
                        self._fail(r, err)

    def _decode(self, batch: list[_Request]) -> None:
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

        self.stats.batches += 1
        self.stats.rows += len(live)
        self.stats.largest = max(self.stats.largest, len(live))
        self.stats.sizes = [*self.stats.sizes[-999:], len(live)]
        self.model.generate_batch(
            [self.tokenizer.convert_ids_to_tokens(r.ids) for r in live], max_length=max(r.max_new for r in live),
            sampling_topk=1 if greedy else 0, sampling_topp=top_p, sampling_temperature=temperature if not greedy else 1.0,
            end_token=self._end_tokens, return_end_token=True, include_prompt_in_result=False, callback=step)
        for r in live:  # rows CTranslate2 ended without a last step reported (none expected): finish from what came
            if not r.done.is_set():
                self._finish(r)

    def _on_token(self, r: _Request, token: int, last: bool) -> bool:
        """Take one decoded token of `r`; True ends its row."""
        if r.done.is_set():
            return True
        if token in self.stop_token_ids:
            r.ended = True
            self._finish(r)
            return True
        r.tokens.append(token)
        if r.stop or r.pieces is not None:
            text = self.tokenizer.decode(r.tokens, skip_special_tokens=True)
            cut = min((text.index(s) for s in r.stop if s in text), default=None)
            if cut is not None:
                text, r.cut = text[:cut], True
            r.text = text
            if r.pieces is not None:
                self._send(r, final=False)
        if r.cut or last or len(r.tokens) >= r.max_new or r.cancel.is_set():
            self._finish(r)
            return True
        return False

    def _send(self, r: _Request, final: bool) -> None:
        """Stream what is new since the last piece, holding back a tail that could still become a stop string
        or an unfinished character (a multi-byte character split over tokens decodes as U+FFFD)."""
        assert r.pieces is not None
        text = r.text
        if not final:
            if not r.cut:
                text = text[: len(text) - max((len(s) - 1 for s in r.stop), default=0)]
            text = text.rstrip("\ufffd")
        if text.startswith(r.sent) and len(text) > len(r.sent):  # a decode that rewrote sent text waits for the end
            r.pieces.put(text[len(r.sent):])
            r.sent = text

    def _finish(self, r: _Request) -> None:
        if r.done.is_set():
            return
        if not (r.stop or r.pieces is not None):
            r.text = self.tokenizer.decode(r.tokens, skip_special_tokens=True)
        reason = "stop" if r.ended or r.cut else "length"
        if r.pieces is not None:
            self._send(r, final=True)
            r.result = Completion(r.text, len(r.ids), len(r.tokens) + r.ended, reason)
            r.pieces.put(r.result)
        else:  # as ChatModel.generate_texts: a whole answer without surrounding whitespace
            r.result = Completion(r.text.strip(), len(r.ids), len(r.tokens) + r.ended, reason)
        r.done.set()

    def _fail(self, r: _Request, err: BaseException) -> None:
        r.error = err
        if r.pieces is not None:
            r.pieces.put(err)
        r.done.set()
