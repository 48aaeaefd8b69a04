"""The dynamic batcher: a request is queued the moment it is submitted, and a batch that has left the queue but
is still running keeps the batcher busy, so the service does not let go of a swapped-out model under either (a
promotion under load answered 500, once for each)."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

from tunesmith.serve.batching import DynamicBatcher


def test_a_running_batch_is_not_idle_until_it_returns() -> None:
    release = threading.Event()
    started = threading.Event()

    def run(key: object, payloads: list[str]) -> list[str]:
        started.set()
        release.wait(10)
        return [p.upper() for p in payloads]

    async def scenario() -> None:
        batcher = DynamicBatcher(run, max_batch=4, wait_ms=0, max_queue=8, executor=ThreadPoolExecutor(1))
        assert batcher.idle
        answer = asyncio.ensure_future(batcher.submit("m", "tea"))
        while not started.is_set():
            await asyncio.sleep(0.01)
        assert batcher.depth == 0 and not batcher.idle  # out of the queue, still running
        release.set()
        assert await answer == "TEA"
        assert batcher.idle

    asyncio.run(scenario())


def test_a_request_is_queued_when_submitted_not_on_a_later_turn() -> None:
    async def scenario() -> None:
        batcher = DynamicBatcher(lambda key, payloads: list(payloads), max_batch=4, wait_ms=0, max_queue=8,
                                 executor=ThreadPoolExecutor(1))
        answer = asyncio.wait_for(asyncio.gather(batcher.submit("m", "tea"), batcher.submit("m", "milk")), 5)
        assert batcher.depth == 2 and not batcher.idle  # before this coroutine has yielded once
        assert await answer == ["tea", "milk"]
        assert batcher.idle

    asyncio.run(scenario())


def test_a_full_batch_goes_at_once_and_a_partial_one_waits_for_company() -> None:
    batches: list[list[str]] = []

    def run(key: object, payloads: list[str]) -> list[str]:
        batches.append(list(payloads))
        return [p.upper() for p in payloads]

    async def scenario() -> None:
        # a window of a minute: only a full batch can be answered within the test's 10 s
        batcher = DynamicBatcher(run, max_batch=3, wait_ms=60_000, max_queue=8, executor=ThreadPoolExecutor(1))
        answers = [batcher.submit("m", "tea")]
        await asyncio.sleep(0.05)  # the window is open, the batch not full: nothing runs yet
        assert batches == [] and batcher.depth == 1
        answers += [batcher.submit("other", "juice"), batcher.submit("m", "milk")]  # another model's does not fill it
        await asyncio.sleep(0.05)
        assert batches == []
        answers.append(batcher.submit("m", "sugar"))
        assert await asyncio.wait_for(asyncio.gather(answers[0], answers[2], answers[3]), 10) == ["TEA", "MILK", "SUGAR"]
        assert batches == [["tea", "milk", "sugar"]]
        answers[1].cancel()

    asyncio.run(scenario())


def test_a_failing_batch_fails_only_the_request_that_fails_alone_and_the_batcher_goes_on() -> None:
    """Also when the model answers the wrong number of results: zip(strict) raised in the batcher's loop, which died
    with the batch's callers left waiting for their timeout. A request batched with one whose input fails the model
    (a lone surrogate the tokenizer refused) failed with it: each then runs again alone."""
    def run(key: object, payloads: list[str]) -> list[str]:
        if "boom" in payloads:
            raise RuntimeError("out of memory")
        if "short" in payloads:
            return []
        return [p.upper() for p in payloads]

    async def scenario() -> None:
        batcher = DynamicBatcher(run, max_batch=2, wait_ms=5, max_queue=8, executor=ThreadPoolExecutor(1))
        answers = [batcher.submit("m", "tea"), batcher.submit("m", "boom"), batcher.submit("m", "milk"),
                   batcher.submit("other", "short")]
        got = await asyncio.wait_for(asyncio.gather(*answers, return_exceptions=True), 5)
        assert [type(a).__name__ for a in got] == ["str", "RuntimeError", "str", "RuntimeError"]
        assert got[0] == "TEA" and str(got[1]) == "out of memory" and got[2] == "MILK"
        assert str(got[3]) == "the model answered 0 results for a batch of 1 requests"
        assert await asyncio.wait_for(batcher.submit("m", "sugar"), 5) == "SUGAR" and batcher.idle

    asyncio.run(scenario())


def test_an_engine_that_decodes_requests_together_gets_the_next_batch_while_one_runs() -> None:
    """llama.cpp and CTranslate2 decode concurrent calls together: one batch at a time, a short answer waited for
    the whole of a long one ahead of it. With `concurrency` the next batch goes while the first runs, up to the
    limit; with the default one, it waits."""
    release = threading.Event()

    def run(key: object, payloads: list[str]) -> list[str]:
        if "long" in payloads:
            release.wait(10)
        return [p.upper() for p in payloads]

    async def scenario(concurrency: int) -> tuple[bool, bool]:
        batcher = DynamicBatcher(run, max_batch=4, wait_ms=0, max_queue=8, executor=ThreadPoolExecutor(1),
                                 concurrency=concurrency)
        long = batcher.submit(("m", 200), "long")
        await asyncio.sleep(0.05)
        short = batcher.submit(("m", 2), "short")
        done, _ = await asyncio.wait([short], timeout=2)
        short_first = bool(done) and not long.done()
        release.set()
        assert await long == "LONG" and await short == "SHORT"
        release.clear()
        return short_first, batcher.idle

    assert asyncio.run(scenario(concurrency=2)) == (True, True)
    assert asyncio.run(scenario(concurrency=1)) == (False, True)


def test_requests_whose_callers_gave_up_hold_no_place_in_the_queue() -> None:
    """Timed-out requests still counted against max_queue until the running batch ended: a fresh request on a queue
    nobody waited in was refused (503)."""
    release = threading.Event()

    def run(key: object, payloads: list[str]) -> list[str]:
        release.wait(5)
        return payloads

    async def scenario() -> None:
        batcher = DynamicBatcher(run, max_batch=1, wait_ms=0, max_queue=2, executor=ThreadPoolExecutor(1))
        running = batcher.submit("m", "first")
        await asyncio.sleep(0.05)  # the first runs (and blocks); the next two wait in the queue
        given_up = [batcher.submit("m", "a"), batcher.submit("m", "b")]
        for future in given_up:
            future.cancel()  # their clients timed out
        fresh = batcher.submit("m", "fresh")  # raised Overloaded
        release.set()
        assert await asyncio.wait_for(fresh, 5) == "fresh" and await running == "first"

    asyncio.run(scenario())
