"""A chat run answered by llama.cpp (llama-cpp-python's C API): continuous batching on the CPU.

The run is written on first use as a GGUF file (models/gguf_file.py, F16 matrices; a LoRA run merged into
its base first) into `<run>/.serve-cache/gguf-f16/` (serve_cache.py), and written again only when the
weights change. F16 keeps the run's greedy answers: on a SmolLM2-135M chat run they matched PyTorch's on
16 of 16 test prompts (Q8_0: 10 of 16, CTranslate2 int8: 1 to 4 of 16), at 4-5x PyTorch's speed on 2 cores.

Continuous batching (the queue: decode_queue.py): one decoding thread runs llama.cpp steps; each step
decodes one token of every running row together with the next piece of the prompts of rows that just
joined (at most BATCH_TOKENS tokens a step, so a long prompt never stalls the others for long). A request
joins the running batch at the next step, with its own sampling settings (temperature, top_p, seed), and
leaves it as soon as its own stop token, stop string, limit or cancellation ends it; its KV cache cells are
freed at once. All rows share one KV cache of KV_CELLS tokens: a request waits in the queue until the
cells its prompt and max_tokens need are free, so a step never runs out of them.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tunesmith.artifacts import Run
from tunesmith.errors import ConfigError
from tunesmith.inference.decode_queue import QueuedChatModel, Request
from tunesmith.inference.serve_cache import architecture_config, converted
from tunesmith.models.hardware import cpu_cores
from tunesmith.tasks import chat

WEIGHTS = "f16"  # the GGUF's matrices: exact greedy answers (Q8_0 is ~15% faster and parts from them on a third of prompts)
KV_CELLS = 16384  # tokens of KV cache all rows share (ServeSpec.chat_kv_tokens when served): bounds memory, not the rows
BATCH_TOKENS = 512  # tokens per llama.cpp step (prompt pieces + one per running row): llama.cpp's own default n_batch
LOG_ERROR = 4  # ggml_log_level GGML_LOG_LEVEL_ERROR: the only llama.cpp messages worth the server's log


def unavailable(run: Run) -> str | None:
    """Why llama.cpp cannot serve `run` (the package is missing, the architecture has no GGUF here), or None."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return "the llama-cpp-python package is not installed (`make install` builds it; or pip install llama-cpp-python)"
    except (OSError, RuntimeError) as err:  # installed, but its shared library does not load (built for another CPU)
        return f"the llama-cpp-python package does not load here: {err}"
    from tunesmith.models.gguf_file import refuse_unsupported

    try:
        refuse_unsupported(architecture_config(run), run.path)
    except ConfigError as err:
        return str(err).removeprefix(f"{run.path}: ")
    return None


def converter_version() -> str:
    from importlib.metadata import version

    from tunesmith import __version__

    return f"gguf {version('gguf')} tunesmith {__version__} {WEIGHTS}"


def gguf_of(run: Run) -> Path:
    """The run's GGUF file for serving, written now unless the cached one is current."""
    from tunesmith.models.gguf_file import write_run_gguf

    folder = converted(run, f"gguf-{WEIGHTS}", converter_version(), lambda out: write_run_gguf(run, out / "model.gguf", WEIGHTS))
    return folder / "model.gguf"


_LOG_CALLBACK: Any = None  # llama.cpp keeps the pointer: the ctypes callback must live as long as the process


def _quiet_logs() -> None:
    """llama.cpp prints hundreds of lines per model load to stderr; keep its errors only."""
    global _LOG_CALLBACK
    import llama_cpp

    if _LOG_CALLBACK is None:
        def log(level: int, text: bytes, _: Any) -> None:
            if level == LOG_ERROR:
                os.write(2, text)

        _LOG_CALLBACK = llama_cpp.llama_log_callback(log)
        llama_cpp.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))
        llama_cpp.llama_backend_init()


@dataclass
class _Row:
    """A request in the running batch: its sequence id in the KV cache and what it feeds next."""

    request: Request
    seq: int
    feed: list[int]  # tokens still to decode: the prompt (in pieces), then the last sampled token
    pos: int = 0  # the position of feed[0]
    rng: np.random.Generator | None = field(default=None)  # sampling rows: seeded by the request's seed


class LlamaCppChatModel(QueuedChatModel):
    engine = "llama.cpp"

    def __init__(self, gguf_file: Path, tokenizer: Any, stop_token_ids: Sequence[int], name: str = "model",
                 max_batch: int = 32, wait_ms: float = 5.0, threads: int | None = None, kv_cells: int = KV_CELLS) -> None:
        import llama_cpp as lc

        _quiet_logs()
        self.lc = lc
        self.folder = Path(gguf_file).parent
        self.precision = WEIGHTS
        self.threads = threads or cpu_cores()  # the process's cores (its affinity where the OS has one)
        self.model = lc.llama_model_load_from_file(str(gguf_file).encode(), lc.llama_model_default_params())
        if not self.model:
            raise ConfigError(f"{gguf_file}: llama.cpp could not load this GGUF file (its log above says why)")
        max_batch = min(max_batch, lc.llama_max_parallel_sequences())
        params = lc.llama_context_default_params()
        params.n_ctx = kv_cells
        params.n_batch = params.n_ubatch = BATCH_TOKENS
        params.n_seq_max = max_batch
        params.kv_unified = True  # one pool of cells for all rows, not n_ctx / n_seq_max each
        params.n_threads = params.n_threads_batch = self.threads
        params.no_perf = True
        self.ctx = lc.llama_init_from_model(self.model, params)
        if not self.ctx:
            raise ConfigError(f"{gguf_file}: llama.cpp could not make a context of {kv_cells} KV cells (out of memory?)")
        self.kv_cells = lc.llama_n_ctx(self.ctx)
        # What llama.cpp took: it caps n_batch at n_ctx as asked but rounds n_ctx up to 256 cells, so with
        # --chat-kv-tokens 300 a step of 512 tokens hit GGML_ASSERT(n_tokens_all <= n_batch) and aborted the server.
        self.step_tokens = min(BATCH_TOKENS, lc.llama_n_batch(self.ctx))
        context = min(lc.llama_model_n_ctx_train(self.model), self.kv_cells)
        super().__init__(tokenizer, stop_token_ids, context, name, max_batch, wait_ms)
        self.n_vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(self.model))
        self._memory = lc.llama_get_memory(self.ctx)
        self._batch = lc.llama_batch_init(self.step_tokens, 0, 1)

    @classmethod
    def from_run(cls, path: str | Path | Run, **options: Any) -> LlamaCppChatModel:
        """A chat run, written as a GGUF file on first use."""
        from transformers import AutoTokenizer

        run = path if isinstance(path, Run) else Run(path)
        file = gguf_of(run)
        tokenizer = AutoTokenizer.from_pretrained(run.model_dir)
        stops = list(run.manifest.stop_token_ids or chat.stop_token_ids(tokenizer))
        return cls(file, tokenizer, stops, name=run.manifest.name, **options)

    # -- the decoding thread ------------------------------------------------------------------------------

    def _loop(self) -> None:
        rows: dict[int, _Row] = {}
        while True:
            with self._wake:
                if self._idle(bool(rows)):
                    return
                if not rows:  # a new batch: concurrent requests get `wait_ms` to join it from the first step
                    self._wake.wait_for(lambda: len(self._pending) >= self.max_batch, timeout=self.wait_s)
                self._admit(rows)
            if not rows:
                continue
            try:
                self._step(rows)
            except BaseException as err:  # noqa: BLE001 - every running request learns about the failure
                for row in rows.values():
                    self._fail(row.request, err)
                rows.clear()
                self.lc.llama_memory_clear(self._memory, True)

    def _release(self) -> None:
        lc = self.lc
        lc.llama_batch_free(self._batch)
        lc.llama_free(self.ctx)
        lc.llama_model_free(self.model)
        self.ctx = self.model = self._memory = None

    def _admit(self, rows: dict[int, _Row]) -> None:
        """Move queued requests into free sequence slots, in order, while their KV cells fit (called under `_wake`)."""
        reserved = sum(len(r.request.ids) + r.request.max_new for r in rows.values())
        free = (s for s in range(self.max_batch) if s not in rows)
        while self._pending and len(rows) < self.max_batch:
            r = self._pending[0]
            if r.cancel.is_set():  # a client gone while it waited: it no longer holds up the queue behind it
                self._pending.pop(0)
                self._finish(r)
                continue
            need = len(r.ids) + r.max_new
            if rows and reserved + need > self.kv_cells:
                return  # the head of the queue waits for cells; the ones behind it wait their turn
            self._pending.pop(0)
            try:
                rng = np.random.default_rng(r.seed) if r.sampling[0] > 0 else None
            except (ValueError, TypeError) as err:  # a seed numpy refuses fails its request, not the decoding thread
                self._fail(r, err)
                continue
            seq = next(free)
            rows[seq] = _Row(r, seq, list(r.ids), 0, rng)
            reserved += need

    def _step(self, rows: dict[int, _Row]) -> None:
        """One llama_decode: a token of every running row, then prompt pieces up to step_tokens; sample where due."""
        batch, n, due = self._batch, 0, []
        for row in sorted(rows.values(), key=lambda x: len(x.feed)):  # running rows (1 token) first, then prompts
            if row.request.cancel.is_set() or row.request.done.is_set():
                self._end(rows, row)
                continue
            take = min(len(row.feed), self.step_tokens - n)
            if take == 0:
                break
            for j in range(take):
                batch.token[n] = row.feed[j]
                batch.pos[n] = row.pos + j
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = row.seq
                batch.logits[n] = take == len(row.feed) and j == take - 1  # logits only where a token is sampled
                n += 1
            row.pos += take
            del row.feed[:take]
            if not row.feed:
                due.append((row, n - 1))
        if n == 0:
            return
        batch.n_tokens = n
        self.stats.add(len(due))
        code = self.lc.llama_decode(self.ctx, batch)
        if code != 0:
            raise RuntimeError(f"llama.cpp could not decode a step of {n} tokens (llama_decode returned {code})")
        for row, i in due:
            logits = np.ctypeslib.as_array(self.lc.llama_get_logits_ith(self.ctx, i), shape=(self.n_vocab,))
            try:
                token = self._sample(logits, row)
                ended = self._on_token(row.request, token, last=False)
            except BaseException as err:  # noqa: BLE001 - a failing row ends alone
                self._fail(row.request, err)
                ended = True
            if ended:
                self._end(rows, row)
            else:
                row.feed = [token]

    def _end(self, rows: dict[int, _Row], row: _Row) -> None:
        if not row.request.done.is_set():
            self._finish(row.request)
        self.lc.llama_memory_seq_rm(self._memory, row.seq, -1, -1)  # its cells are free for the next request
        del rows[row.seq]

    @staticmethod
    def _sample(logits: np.ndarray, row: _Row) -> int:
        """Greedy at temperature 0; else temperature then nucleus (top_p) sampling with the row's own generator."""
        temperature, top_p = row.request.sampling
        if row.rng is None or temperature <= 0:
            return int(logits.argmax())
        scaled = logits.astype(np.float64) / temperature
        probs = np.exp(scaled - scaled.max())
        probs /= probs.sum()
        if top_p < 1.0:
            order = np.argsort(-probs)
            # the smallest set reaching top_p; at most all of them: a cumulative sum ending a rounding error under a
            # top_p of 0.9999999999999999 placed it past the end
            keep = min(int(np.searchsorted(np.cumsum(probs[order]), top_p)) + 1, len(order))
            kept = order[:keep]
            return int(kept[row.rng.choice(keep, p=probs[kept] / probs[kept].sum())])
        return int(row.rng.choice(len(probs), p=probs))
