"""Dynamic batching: concurrent requests for one model share a forward pass.

The first waiting request opens a short window (`wait_ms`); whatever arrives for the same model
and the same settings (`key`) joins it, up to `max_batch` items, and a full batch goes at once rather
than when the window ends (as Triton's dynamic batcher does). The batch runs in a worker thread
(torch releases the GIL), so the event loop keeps accepting requests meanwhile; one batch at a time, unless the
engine decodes concurrent calls together itself (llama.cpp, CTranslate2: `concurrency`), where a request
waiting for the batch before it to finish would wait for that whole answer. The queue is
bounded: when it is full, `submit` raises Overloaded at once instead of letting latency grow
without limit, and the HTTP layer answers 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any


class Overloaded(Exception):
    """The queue is full: retry after `retry_after` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"server busy, retry after {retry_after} s")
        self.retry_after = retry_after


@dataclass
class _Item:
    key: Hashable
    payload: Any
    future: asyncio.Future[Any]
    size: int = 1


@dataclass
class BatchStats:
    batches: int = 0
    items: int = 0
    sizes: list[int] = field(default_factory=list)  # recent batch sizes (for tests and /metrics)


class DynamicBatcher:
    """`run(key, payloads) -> results` is called with up to `max_batch` payloads sharing a key."""

    def __init__(self, run: Callable[[Hashable, Sequence[Any]], Sequence[Any]], *, max_batch: int, wait_ms: float,
                 max_queue: int, executor: ThreadPoolExecutor, on_batch: Callable[[int], None] | None = None,
                 concurrency: int = 1) -> None:
        """`concurrency`: batches that may run at once, each on a thread of its own pool (rather than `executor`'s)
        that waits while the engine decodes it with the others."""
        self.run = run
        self.max_batch = max_batch
        self.wait_s = wait_ms / 1000
        self.max_queue = max_queue
        self.concurrency = concurrency
        self.executor = executor if concurrency == 1 else ThreadPoolExecutor(concurrency, thread_name_prefix="tunesmith-decode")
        self._slots: asyncio.Semaphore | None = None  # free room for a batch to run (made on the serving loop)
        self._running: set[asyncio.Task[None]] = set()  # batches in flight (referenced until done)
        self.on_batch = on_batch
        self.pending: list[_Item] = []
        self.stats = BatchStats()
        self._wake: asyncio.Event | None = None
        self._full: asyncio.Event | None = None  # set when the open window's key has a full batch waiting
        self._window_key: Hashable | None = None
        self._task: asyncio.Task[None] | None = None
        self.last_batch_s = 0.1  # how long a batch took lately: the basis of Retry-After
        self.in_flight = 0  # items taken from `pending` whose batch is running

    @property
    def depth(self) -> int:
        """Requests waiting for a batch; one whose client gave up (a timeout) waits for no one and holds no place."""
        return sum(not i.future.done() for i in self.pending)

    @property
    def idle(self) -> bool:
        """Nothing waiting and nothing running: what it serves may be let go (a swapped-out model)."""
        return not self.pending and not self.in_flight

    def close(self, shared: ThreadPoolExecutor | None = None) -> None:
        """Stop serving (an idle batcher of a model let go): the loop that waits for requests, and its own pool of
        decoding threads if it has one (`shared`, the server's pool, stays)."""
        if self._task is not None:
            self._task.cancel()
        if self.executor is not shared:
            self.executor.shutdown(wait=False)

    def _start(self) -> None:
        if self._task is None or self._task.done():
            self._wake, self._full, self._slots = asyncio.Event(), asyncio.Event(), asyncio.Semaphore(self.concurrency)
            self._task = asyncio.get_running_loop().create_task(self._loop())

    def submit(self, key: Hashable, payload: Any, size: int = 1) -> asyncio.Future[Any]:
        """Queue one request (`size` items, e.g. a batch of texts) now and return the future of its result.

        Not a coroutine: a coroutine handed to `asyncio.wait_for` or `gather` runs only as a task on a later turn of
        the loop, and a model swap in between found the swapped-out model's batcher idle and let it go under the
        request (a promotion under load answered 500). Queued at once, the request keeps its batcher busy."""
        self._start()
        if self.depth >= self.max_queue:
            batches_ahead = self.depth / self.max_batch + 1
            raise Overloaded(max(1, round(batches_ahead * self.last_batch_s)))
        item = _Item(key, payload, asyncio.get_running_loop().create_future(), size)
        self.pending.append(item)
        assert self._wake is not None and self._full is not None
        self._wake.set()
        if key == self._window_key and self._waiting(key) >= self.max_batch:
            self._full.set()
        return item.future

    def _waiting(self, key: Hashable) -> int:
        return sum(i.size for i in self.pending if i.key == key)

    async def _loop(self) -> None:
        assert self._wake is not None and self._full is not None and self._slots is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._slots.acquire()  # room to run first: a batch waiting for it stays open to later requests
            if not self.pending:
                self._wake.clear()
                await self._wake.wait()
            first = self.pending[0]
            if self.wait_s and self._waiting(first.key) < self.max_batch:
                self._window_key = first.key  # the window: let concurrent requests join, until the batch is full
                self._full.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self.wait_s)
                self._window_key = None
            batch, count = [], 0
            for item in list(self.pending):
                if item.key == first.key and (not batch or count + item.size <= self.max_batch):
                    batch.append(item)
                    count += item.size
                    if count >= self.max_batch:
                        break
            for item in batch:
                self.pending.remove(item)
            live = [i for i in batch if not i.future.done()]  # a client may have given up meanwhile
            if not live:
                self._slots.release()
                continue
            self.in_flight += len(live)  # set before the first await: out of `pending`, yet not idle
            # the next turn waits for a free slot: with one, for this batch to end
            task = loop.create_task(self._run_batch(first.key, live))
            self._running.add(task)
            task.add_done_callback(self._ran)

    def _ran(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        assert self._slots is not None
        self._slots.release()

    async def _run_batch(self, key: Hashable, live: list[_Item]) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            results = await loop.run_in_executor(self.executor, self.run, key, [i.payload for i in live])
            if len(results) != len(live):  # else zip(strict) below raised in the loop: it died, the callers timed out
                raise RuntimeError(f"the model answered {len(results)} results for a batch of {len(live)} requests")
        except Exception as err:  # noqa: BLE001 - every waiting request learns about the failure
            if len(live) == 1:
                if not live[0].future.done():
                    live[0].future.set_exception(err)
                return
            # One request's input may be what failed the batch: each runs again alone, so only it fails.
            for item in live:
                try:
                    [result] = await loop.run_in_executor(self.executor, self.run, key, [item.payload])
                except Exception as alone:  # noqa: BLE001 - this request's own failure
                    if not item.future.done():
                        item.future.set_exception(alone)
                else:
                    if not item.future.done():
                        item.future.set_result(result)
            return
        finally:
            self.in_flight -= len(live)
        self.last_batch_s = 0.8 * self.last_batch_s + 0.2 * (loop.time() - started)
        self.stats.batches += 1
        self.stats.items += len(live)
        self.stats.sizes = [*self.stats.sizes[-999:], len(live)]
        if self.on_batch:
            self.on_batch(sum(i.size for i in live))
        for item, result in zip(live, results, strict=True):
            if not item.future.done():
                item.future.set_result(result)
