"""The request queue of a chat engine that decodes concurrent requests together (CTranslate2, llama.cpp).

Answers the way generation.ChatModel does wherever serving asks (prompt_text, count_tokens, context,
generate_texts, stream_text, the same Completion), so the serving layer holds any engine behind one
interface. Every request, whole or streamed, joins one queue; the engine's decoding thread (`_loop`, one
per model) takes requests from it and reports each decoded token through `_on_token`, which keeps the
request's own max_tokens, stop tokens, stop strings and cancellation: a row ends on its own, and a short
answer is returned (or its stream closed) as soon as it is done.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from tunesmith.inference.generation import Completion, Prompting, answer_prefix, greedy, strip_answer_prefix


@dataclass
class Request:
    ids: list[int]
    max_new: int
    stop: tuple[str, ...]
    sampling: tuple[float, float]  # (temperature, top_p); (0, 1) for greedy
    seed: int | None
    cancel: threading.Event
    pieces: queue.SimpleQueue[Any] | None  # a stream: text pieces, then the Completion (None: a whole answer)
    answer_prefix: str = ""  # the spaces the chat prompt cut from its end: the answer's text starts without them
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
    batches: int = 0  # decoding calls (CTranslate2) or decoding steps (llama.cpp)
    rows: int = 0
    largest: int = 0
    sizes: list[int] = field(default_factory=list)  # recent batch sizes (tests, benchmarks)

    def add(self, rows: int) -> None:
        self.batches += 1
        self.rows += rows
        self.largest = max(self.largest, rows)
        self.sizes = [*self.sizes[-999:], rows]


class QueuedChatModel(Prompting):
    """The queue and each request's bookkeeping; a subclass decodes (`_loop`) and names itself (`engine`)."""

    engine = "queued"

    def __init__(self, tokenizer: Any, stop_token_ids: Sequence[int], context: int | None, name: str, max_batch: int,
                 wait_ms: float) -> None:
        self.tokenizer = tokenizer
        self.stop_token_ids = list(stop_token_ids)
        self.context = context
        self.name = name
        self.max_batch = max_batch
        self.concurrent_calls = max_batch  # each call's requests join the decoding rows as rows come free
        self.wait_s = wait_ms / 1000
        self.stats = BatchStats()
        self._pending: list[Request] = []
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False  # close() was called: no new requests; the thread exits once the queued ones are done
        # Held while the engine decodes a batch: a request's last token is handed over from inside the engine's call,
        # which is still returning when the caller has its answer (and may be exiting).
        self.decoding = threading.Lock()

    def generate_texts(self, prompts: Sequence[str], *, max_new_tokens: int = 256, temperature: float = 0.0,
                       top_p: float = 1.0, seed: int | None = None, stop: Sequence[str] = (),
                       batch_size: int | None = None, cancels: Sequence[threading.Event] | None = None) -> list[Completion]:
        """Continue each prompt text until a stop token, a stop string or the limit, decoded together with any concurrent
        requests (`batch_size`: ChatModel's; here batches form in the queue, up to `max_batch`). `cancels`: an event per
        prompt; setting one (the server stopped waiting) ends that row at its next token, with what it has."""
        requests = [self._request(p, max_new_tokens, temperature, top_p, seed, stop, cancels[i] if cancels else None, None)
                    for i, p in enumerate(prompts)]
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
        r = self._request(prompt, max_new_tokens, temperature, top_p, seed, stop, cancel, queue.SimpleQueue())
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

    def _request(self, prompt: str, max_new_tokens: int, temperature: float, top_p: float, seed: int | None,
                 stop: Sequence[str], cancel: threading.Event | None, pieces: queue.SimpleQueue[Any] | None) -> Request:
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        room = self.context - len(ids) if self.context else max_new_tokens  # never past the model's context
        if room < 1:
            raise ValueError(f"a prompt of {len(ids)} tokens leaves no room to answer in the model's context of {self.context}")
        sampling = (float(temperature), float(top_p)) if not greedy(temperature) else (0.0, 1.0)
        return Request(ids, min(max_new_tokens, room), tuple(s for s in stop if s), sampling, seed, cancel or threading.Event(),
                       pieces, answer_prefix(prompt))

    def close(self) -> None:
        """Take no more requests; the decoding thread finishes the queued and running ones, then exits and frees the
        engine's model (`_release`). A model swapped out stayed loaded for good: its thread, waiting for work, held it."""
        with self._wake:
            if self._closed:
                return
            self._closed = True
            started = self._thread is not None
            self._wake.notify_all()
        if not started:  # no thread will ever run: free it here (_submit refuses from now on)
            self._release()

    def _submit(self, requests: list[Request]) -> None:
        with self._wake:
            if self._closed:
                raise RuntimeError(f"{self.engine} model '{self.name}' was closed (a registry swap unloaded it); "
                                   "send the request again")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"{self.engine}-{self.name}", daemon=True)
                self._thread.start()
            self._pending.extend(requests)
            self._wake.notify()

    def _run(self) -> None:
        """The decoding thread: decode until closed and drained, then free the model (here: nothing else decodes)."""
        try:
            self._loop()
        finally:
            self._release()

    def _loop(self) -> None:
        """Take requests from `_pending` (under `_wake`) and decode them; return once `_closed` and nothing is left
        (`_idle` says when to)."""
        raise NotImplementedError

    def _idle(self, busy: bool) -> bool:
        """Wait (under `_wake`) while nothing is queued and nothing `busy` decoding; True: closed with nothing left, the
        thread ends."""
        while not self._pending and not busy and not self._closed:
            self._wake.wait()
        return self._closed and not self._pending and not busy

    def _release(self) -> None:
        """Free the engine's model and its memory (called once, after the last decoding step)."""

    def _on_token(self, r: Request, token: int, last: bool) -> bool:
        """Take one decoded token of `r`; True ends its row."""
        if r.done.is_set():
            return True
        if token in self.stop_token_ids:
            r.ended = True
            self._finish(r)
            return True
        r.tokens.append(token)
        if r.stop or r.pieces is not None:
            text = self._text(r)
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

    def _text(self, r: Request) -> str:
        """`r`'s answer so far, decoded whole each time (a stream's pieces stay its prefixes)."""
        return strip_answer_prefix(self.tokenizer.decode(r.tokens, skip_special_tokens=True), r.answer_prefix)

    def _send(self, r: Request, final: bool) -> None:
        """Stream what is new since the last piece, holding back a tail that could still become a stop string
        or an unfinished character (a multi-byte character split over tokens decodes as U+FFFD)."""
        assert r.pieces is not None
        text = r.text
        if not final:
            if not r.cut:  # max(0, ...): a negative end would slice from the back and send part of a stop string
                text = text[: max(0, len(text) - max((len(s) - 1 for s in r.stop), default=0))]
            text = text.rstrip("\ufffd")
        if text.startswith(r.sent) and len(text) > len(r.sent):  # a decode that rewrote sent text waits for the end
            r.pieces.put(text[len(r.sent):])
            r.sent = text

    def _finish(self, r: Request) -> None:
        if r.done.is_set():
            return
        if not (r.stop or r.pieces is not None):
            r.text = self._text(r)
        reason = "stop" if r.ended or r.cut else "length"
        r.result = Completion(r.text, len(r.ids), len(r.tokens) + r.ended, reason)  # as generated, as streamed
        if r.pieces is not None:
            self._send(r, final=True)
            r.pieces.put(r.result)
        r.done.set()

    def _fail(self, r: Request, err: BaseException) -> None:
        r.error = err
        if r.pieces is not None:
            r.pieces.put(err)
        r.done.set()
