"""Chat runs served through llama.cpp: written as a GGUF into a cache beside the run (a LoRA run merged), the
PyTorch run's greedy answers, continuous batching (a request joins rows already decoding, each row ends on its own),
a KV cache shared within its size, seeded sampling, and the same OpenAI endpoints."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.export.test_gguf import build_bpe_llama
from tests.serve.test_ct2_engine import (
    InProcessServer,
    client_of,
    conversations,
    four_concurrent_streams,
    three_rows_ending_on_their_own,
)
from tests.servers import start_server, stop_server
from tests.test_train_chat import QA, SPACE_TEMPLATE, chat_project
from tunesmith.config import ServeSpec
from tunesmith.errors import ConfigError
from tunesmith.inference.generation import ChatModel
from tunesmith.inference.serve_cache import CACHE_DIR, FINGERPRINT
from tunesmith.training import train

pytest.importorskip("llama_cpp")

from tunesmith.inference.decode_queue import Request  # noqa: E402
from tunesmith.inference.llama_generation import LlamaCppChatModel, _Row  # noqa: E402 - needs llama_cpp


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("llama-runs")
    base = build_bpe_llama(tmp / "bpe-llama")
    # fp32 training on every host: bf16 (the default where native) leaves the tiny model's babble on other near-ties,
    # and this compares engines, not training precisions
    full = train(chat_project(tmp / "full", base, {"bf16": False}))
    lora = train(chat_project(tmp / "lora", base, {"method": "lora", "learning_rate": 1e-2, "epochs": 2, "bf16": False}))
    return {"full": full, "lora": lora}


@pytest.fixture(scope="module")
def engines(runs: dict[str, Path]) -> dict[str, LlamaCppChatModel]:
    return {kind: LlamaCppChatModel.from_run(run) for kind, run in runs.items()}


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_greedy_answers_match_the_pytorch_run(runs: dict[str, Path], engines: dict[str, LlamaCppChatModel], kind: str) -> None:
    """F16 weights: the answers the run learnt, token for token, one at a time and decoded together. (Past them a tiny
    model babbles from near-flat logits, where F16 rounding may pick another near-tie.)"""
    prompts = conversations()
    reference = ChatModel.from_run(runs[kind]).generate(prompts, max_new_tokens=24)
    alone = [engines[kind].generate([p], max_new_tokens=24)[0] for p in prompts]
    together = engines[kind].generate(prompts, max_new_tokens=24)
    learnt = {i: a for i, r in enumerate(reference) for _, a in QA if r.text.startswith(a)}  # the trained answers
    assert len(learnt) >= len(prompts) // 2
    for answers in (alone, together):
        assert all(answers[i].text.startswith(a) for i, a in learnt.items())
        ended = [i for i, r in enumerate(reference) if r.finish_reason == "stop"]  # the whole answer is learnt
        assert [(answers[i].text, answers[i].completion_tokens) for i in ended] == \
            [(reference[i].text, reference[i].completion_tokens) for i in ended]
    assert kind != "full" or len(ended) >= len(prompts) // 2  # the full run learnt to stop
    assert [c.text for c in together] == [c.text for c in alone]  # batching changes nothing
    assert engines[kind].stats.largest == len(prompts)  # the second call decoded all rows in the same steps


def test_the_gguf_is_cached_beside_the_run_and_rewritten_when_the_weights_change(runs: dict[str, Path],
                                                                                  engines: dict[str, LlamaCppChatModel]) -> None:
    folder = runs["lora"] / CACHE_DIR / "gguf-f16"
    assert engines["lora"].folder == folder and (folder / "model.gguf").is_file() and (folder / FINGERPRINT).is_file()
    written = (folder / "model.gguf").stat().st_mtime_ns
    LlamaCppChatModel.from_run(runs["lora"])
    assert (folder / "model.gguf").stat().st_mtime_ns == written  # current: not written again
    adapter = next((runs["lora"] / "model").glob("adapter_model.*"))
    os.utime(adapter, ns=(adapter.stat().st_atime_ns, adapter.stat().st_mtime_ns + 10**9))  # the adapter was rewritten
    LlamaCppChatModel.from_run(runs["lora"])
    assert (folder / "model.gguf").stat().st_mtime_ns != written
    assert [p.name for p in folder.parent.iterdir() if p.name.startswith(".")] == []  # no scratch left behind


def prompt_of(engine: LlamaCppChatModel, i: int) -> str:
    """A trained question under a system prompt (the full run answers it and stops)."""
    return engine.prompt_text(conversations()[i])


def test_a_request_joins_rows_already_decoding(engines: dict[str, LlamaCppChatModel]) -> None:
    """Continuous batching: B arrives while A is mid-answer (submitted from A's third token, no timing involved),
    decodes in the same steps as A from the next one, and both get the answers they get alone."""
    engine = engines["full"]
    first, second = prompt_of(engine, 0), prompt_of(engine, 3)
    [solo_a] = engine.generate_texts([first], max_new_tokens=20)
    [solo_b] = engine.generate_texts([second], max_new_tokens=20)
    late = engine._request(second, 20, 0.0, 1.0, None, (), None, None)
    original = engine._on_token
    seen = {"a": 0}

    def on_token(r: Any, token: int, last: bool) -> bool:
        if r is not late:
            seen["a"] += 1
            if seen["a"] == 3:
                engine._submit([late])
        return original(r, token, last)

    engine._on_token = on_token  # type: ignore[method-assign]
    try:
        before = len(engine.stats.sizes)
        [a] = engine.generate_texts([first], max_new_tokens=20)
        late.done.wait(timeout=60)
    finally:
        del engine._on_token
    assert solo_a.completion_tokens > 4  # A was still decoding when B joined
    assert (a.text, a.completion_tokens) == (solo_a.text, solo_a.completion_tokens)
    assert late.result is not None
    assert (late.result.text, late.result.completion_tokens) == (solo_b.text, solo_b.completion_tokens)
    assert engine.stats.sizes[before: before + 3] == [1, 1, 1] and 2 in engine.stats.sizes[before:]


def test_rows_of_one_batch_end_on_their_own_stop_string_limit_or_cancel(engines: dict[str, LlamaCppChatModel]) -> None:
    engine = engines["full"]
    before = three_rows_ending_on_their_own(engine, prompt_of(engine, 0), 4)
    assert engine.stats.sizes[before] == 3  # the three rows sampled their first token in one step


def test_requests_wait_for_kv_cells_and_never_overrun_them(runs: dict[str, Path]) -> None:
    """Three requests that each may need 128 cells, a cache of 256: two decode together, the third waits its turn."""
    engine = LlamaCppChatModel.from_run(runs["full"], kv_cells=256, wait_ms=0, max_batch=3)
    assert engine.kv_cells == 256 and engine.context == 128  # the model's own context is the smaller
    prompts = [prompt_of(engine, i) for i in range(3)]
    room = engine.context - max(engine.count_tokens(p) for p in prompts)
    alone = [engine.generate_texts([p], max_new_tokens=room)[0].text for p in prompts]
    engine.wait_s = 60.0  # the first step waits for all three: none is admitted before the others are queued
    before = len(engine.stats.sizes)
    together = engine.generate_texts(prompts, max_new_tokens=room)  # each reserves its prompt + `room` cells
    assert max(engine.stats.sizes[before:]) == 2
    assert [c.text for c in together] == alone


def test_a_kv_budget_that_is_not_a_multiple_of_256_never_overruns_llama_cpp_s_batch(runs: dict[str, Path]) -> None:
    """--chat-kv-tokens 300: llama.cpp capped its batch at 300 and rounded the cache up to 512, and a step of the
    engine's 512 tokens aborted the whole server (GGML_ASSERT n_tokens_all <= n_batch)."""
    engine = LlamaCppChatModel.from_run(runs["full"], kv_cells=300, wait_ms=50, max_batch=4)
    assert engine.step_tokens <= engine.lc.llama_n_batch(engine.ctx) < engine.kv_cells
    words = " ".join(m["content"] for c in conversations()[:8] for m in c).split()

    def prompt(i: int) -> str:  # about 85 tokens
        k = 1
        while engine.count_tokens(engine.prompt_text([{"role": "user", "content": " ".join(words[i:i + k])}])) < 85:
            k += 1
        return engine.prompt_text([{"role": "user", "content": " ".join(words[i:i + k])}])

    prompts = [prompt(i) for i in range(4)]
    assert sum(engine.count_tokens(p) for p in prompts) > 300  # one step would take them all
    assert all(engine.count_tokens(p) + 4 < engine.context for p in prompts)
    assert len(engine.generate_texts(prompts, max_new_tokens=4)) == 4


def test_a_request_whose_client_left_does_not_hold_up_the_queue(engines: dict[str, LlamaCppChatModel]) -> None:
    """At the head of the queue and too big for the free cells, a cancelled request had kept the small ones behind it
    waiting until a running row ended (step 62 for a request queued at step 5)."""
    import threading

    from tunesmith.inference.llama_generation import _Row

    engine = engines["full"]
    gone = threading.Event()
    gone.set()
    running = engine._request(prompt_of(engine, 0), 80, 0.0, 1.0, None, (), None, None)
    running.max_new = engine.kv_cells - len(running.ids) - 40  # the cache all but 40 cells taken
    big = engine._request(prompt_of(engine, 1), 80, 0.0, 1.0, None, (), gone, None)
    small = engine._request(prompt_of(engine, 2)[-30:], 2, 0.0, 1.0, None, (), None, None)
    assert len(big.ids) + big.max_new > 40 >= len(small.ids) + small.max_new
    rows = {0: _Row(running, 0, list(running.ids))}
    with engine._wake:
        engine._pending[:] = [big, small]
        engine._admit(rows)
        engine._pending.clear()
    assert [r.request for r in rows.values()] == [running, small] and big.done.is_set()


def test_sampling_follows_each_requests_seed(engines: dict[str, LlamaCppChatModel]) -> None:
    engine = engines["full"]
    prompt = prompt_of(engine, 1)
    params = {"max_new_tokens": 16, "temperature": 1.5, "top_p": 0.95}
    first = [engine.generate_texts([prompt], seed=s, **params)[0].text for s in range(6)]
    again = [c.text for c in engine.generate_texts([prompt] * 6, **params, seed=None)]  # unseeded: whatever comes
    assert [engine.generate_texts([prompt], seed=s, **params)[0].text for s in range(6)] == first
    assert len(set(first)) > 1 and len(again) == 6  # a temperature of 1.5 on a tiny model: the seeds do not all agree


def test_a_whole_answer_cancelled_ends_at_its_next_token(engines: dict[str, LlamaCppChatModel]) -> None:
    import threading

    engine = engines["full"]
    cancel = threading.Event()
    cancel.set()  # the server stopped waiting (504)
    [answer] = engine.generate_texts([prompt_of(engine, 1)], max_new_tokens=64, cancels=[cancel])
    assert answer.completion_tokens <= 1


def test_a_seed_numpy_refuses_fails_its_request_and_the_engine_goes_on(engines: dict[str, LlamaCppChatModel]) -> None:
    # np.random.default_rng(-1) raised in the decoding thread, which died: every later request timed out (504).
    engine = engines["full"]
    prompt = prompt_of(engine, 1)
    with pytest.raises(ValueError, match="non-negative"):
        engine.generate_texts([prompt], seed=-1, max_new_tokens=4, temperature=1.0)
    assert engine.generate_texts([prompt], max_new_tokens=4)[0].completion_tokens > 0



def test_a_stream_never_sends_part_of_a_stop_string(engines: dict[str, LlamaCppChatModel]) -> None:
    """The tail held back for a stop string was sliced from the back while the text was shorter than it: a stop
    string matching the answer from its start streamed most of it ("paris is the cap" of an answer of "")."""
    engine = engines["full"]
    prompt = prompt_of(engine, 0)
    [whole] = engine.generate_texts([prompt], max_new_tokens=24)
    assert whole.finish_reason == "stop" and len(whole.text.split()) > 3
    for stop, answer in ((whole.text, ""), (whole.text[2:], whole.text[:2])):
        *pieces, last = engine.stream_text(prompt, max_new_tokens=24, stop=[stop])
        assert "".join(pieces).strip() == last.text.strip() == answer and last.finish_reason == "stop"


def test_usage_counts_an_answer_through_its_stop_string_as_pytorch_does(runs: dict[str, Path],
                                                                      engines: dict[str, LlamaCppChatModel]) -> None:
    """PyTorch generates on past a stop string: it counted those tokens too (10 where llama.cpp counted 6)."""
    engine, reference = engines["full"], ChatModel.from_run(runs["full"])
    prompt = prompt_of(engine, 0)
    [whole] = engine.generate_texts([prompt], max_new_tokens=24)
    for stop in ([whole.text.split()[2]], [whole.text[:3]]):
        [ours] = engine.generate_texts([prompt], max_new_tokens=24, stop=stop)
        [theirs] = reference.generate_texts([prompt], max_new_tokens=24, stop=stop)
        streamed = list(reference.stream_text(prompt, max_new_tokens=24, stop=stop))[-1]
        assert (theirs.text, theirs.completion_tokens, theirs.finish_reason) == (ours.text, ours.completion_tokens, "stop")
        assert streamed.completion_tokens == ours.completion_tokens < whole.completion_tokens

def test_a_whole_answer_is_the_text_as_generated_and_as_streamed(runs: dict[str, Path],
                                                               engines: dict[str, LlamaCppChatModel]) -> None:
    """Whole answers were stripped: a completion continuing a prompt mid-answer lost its leading space ("the" +
    "food was great" read "thefood ...") and an answer cut at a stop string its trailing one, unlike the stream."""
    engine, reference = engines["full"], ChatModel.from_run(runs["full"])
    prompt = prompt_of(engine, 0)
    [whole] = reference.generate_texts([prompt], max_new_tokens=24)
    first, rest = whole.text.split(" ", 1)
    stop = [rest.split()[1]]  # the third word: the answer ends in a space before it
    for model in (engine, reference):
        [cut] = model.generate_texts([prompt], max_new_tokens=24, stop=stop)
        *pieces, last = model.stream_text(prompt, max_new_tokens=24, stop=stop)
        assert cut.text == "".join(pieces) == last.text and cut.text.endswith(" ")
        [continued] = model.generate_texts([prompt + first], max_new_tokens=24)
        *pieces, last = model.stream_text(prompt + first, max_new_tokens=24)
        assert continued.text == "".join(pieces) == last.text and continued.text.startswith(" " + rest.split()[0])
    assert reference.generate([conversations()[0]], max_new_tokens=24)[0].text == whole.text.strip()  # a reply: trimmed


def test_overlapping_stop_strings_cut_where_generation_first_completed_one(runs: dict[str, Path],
                                                                           engines: dict[str, LlamaCppChatModel]) -> None:
    """PyTorch's whole answer was cut at the first stop string listed that its full text held: "the " for stops
    ["tea tastes wonderful", "tastes"], where generation (and its own stream, and llama.cpp) ended on "tastes"."""
    engine, reference = engines["full"], ChatModel.from_run(runs["full"])
    prompt = prompt_of(engine, 4)
    assert reference.generate_texts([prompt], max_new_tokens=24)[0].text == "the tea tastes wonderful"
    stop = ["tea tastes wonderful", "tastes"]
    [theirs], [ours] = reference.generate_texts([prompt], max_new_tokens=24, stop=stop), \
        engine.generate_texts([prompt], max_new_tokens=24, stop=stop)
    streamed = list(reference.stream_text(prompt, max_new_tokens=24, stop=stop))[-1]
    assert theirs.text == ours.text == streamed.text == "the tea " and theirs.completion_tokens == ours.completion_tokens


def test_extreme_sampling_values_answer_and_leave_other_rows_alone(engines: dict[str, LlamaCppChatModel]) -> None:
    """A top_p of 0.9999999999999999 (a cumulative sum ending a rounding error under it) drew past the vocabulary, and
    a temperature of 1e-308 overflowed the logits to NaN: both failed every row decoding beside them."""
    engine = engines["full"]
    prompt = prompt_of(engine, 0)
    [greedy] = engine.generate_texts([prompt], max_new_tokens=12)
    assert engine.generate_texts([prompt], max_new_tokens=12, temperature=1e-308)[0].text == greedy.text
    rng = np.random.default_rng(0)
    for _ in range(50):
        answers = engine.generate_texts([prompt, prompt], max_new_tokens=4, temperature=1.0, top_p=0.9999999999999999,
                                        seed=int(rng.integers(1 << 30)))
        assert len(answers) == 2
    row = _Row(request=Request([1], 4, (), (1.0, 0.9999999999999999), 0, threading.Event(), None), seq=0, feed=[],
               rng=np.random.default_rng(0))
    for seed in range(200):  # logits whose sorted probabilities sum to just under 0.9999999999999999
        logits = np.random.default_rng(seed).normal(size=50).astype(np.float32)
        assert 0 <= LlamaCppChatModel._sample(logits, row) < 50


def test_a_run_s_generation_config_extras_do_not_change_pytorch_s_answers(runs: dict[str, Path], tmp_path: Path) -> None:
    """A base's repetition penalty or n-gram ban, saved with the run, applied to PyTorch's answers only (llama.cpp and
    CTranslate2 never read it): `evaluate` scored answers the server never gives, and temperature 0 was not greedy."""
    copy = tmp_path / "run"
    shutil.copytree(runs["full"], copy)
    config = copy / "model" / "generation_config.json"
    kept = json.loads(config.read_text()) if config.exists() else {}
    config.write_text(json.dumps({**kept, "repetition_penalty": 1.5, "no_repeat_ngram_size": 1}))
    prompts = conversations()
    plain = ChatModel.from_run(runs["full"]).generate(prompts, max_new_tokens=24)
    assert ChatModel.from_run(copy).generate(prompts, max_new_tokens=24) == plain


# -- served over HTTP -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(runs: dict[str, Path]) -> Iterator[InProcessServer]:
    server = InProcessServer([runs["full"], runs["lora"]], ServeSpec(max_batch_size=4, chat_kv_tokens=1024))  # auto: llama.cpp
    yield server
    server.stop()


def test_auto_serves_chat_runs_on_llama_cpp_and_the_openai_client_gets_its_answers(served: InProcessServer) -> None:
    client = client_of(served.url)
    model = next(m for m in served.models if m.run.endswith("lora/run"))
    engine = model.engine.chat
    assert isinstance(engine, LlamaCppChatModel) and engine.kv_cells == 1024 and engine.max_batch == 4
    messages = [{"role": "system", "content": "you are friendly number 3"}, {"role": "user", "content": QA[1][0]}]
    r = client.chat.completions.create(model=model.id, messages=messages, temperature=0, max_tokens=20)
    offline = engine.generate([messages], max_new_tokens=20)[0]
    assert r.choices[0].message.content == offline.text and r.choices[0].finish_reason == offline.finish_reason
    assert r.usage.completion_tokens == offline.completion_tokens
    chunks = list(client.chat.completions.create(model=model.id, messages=messages, temperature=0, max_tokens=20, stream=True,
                                                 stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == r.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == offline.completion_tokens
    seeded = [client.chat.completions.create(model=model.id, messages=messages, temperature=1.0, max_tokens=8, seed=7)
              .choices[0].message.content for _ in range(2)]
    assert seeded[0] == seeded[1]  # seed is honoured, unlike on CTranslate2


def test_concurrent_streams_decode_together(served: InProcessServer) -> None:
    client = client_of(served.url)
    model = next(m for m in served.models if m.run.endswith("full/run"))
    engine = model.engine.chat
    prompts = [engine.prompt_text([{"role": "user", "content": q}]) for q, _ in QA[:4]]
    offline = [c.text for c in engine.generate_texts(prompts, max_new_tokens=16)]
    before = len(engine.stats.sizes)
    assert four_concurrent_streams(client, model.id, engine, prompts) == offline
    assert engine.stats.sizes[before] == 4  # the first step waited for all four (max_batch_size 4)


def test_the_serve_command_takes_the_chat_engine_flag(runs: dict[str, Path], tmp_path: Path) -> None:
    proc, url = start_server([str(runs["lora"]), "--chat-engine", "llama.cpp"], tmp_path / "server.log")
    try:
        client = client_of(url)
        model = client.models.list().data[0]
        messages = [{"role": "user", "content": QA[2][0]}]
        r = client.chat.completions.create(model=model.id, messages=messages, temperature=0, max_tokens=12)
    finally:
        stop_server(proc)
    assert "chat engine llama.cpp (f16)" in (tmp_path / "server.log").read_text() and model.engine == "llama.cpp f16"
    offline = LlamaCppChatModel.from_run(runs["lora"]).generate([messages], max_new_tokens=12)[0]
    assert r.choices[0].message.content == offline.text


def test_a_process_with_llama_cpp_beside_torch_exits_cleanly(runs: dict[str, Path]) -> None:
    code = (f"from tunesmith.inference.llama_generation import LlamaCppChatModel\n"
            f"from tunesmith.inference.generation import ChatModel\n"
            f"ChatModel.from_run({str(runs['full'])!r}).generate_texts(['hello'], max_new_tokens=2)\n"
            f"m = LlamaCppChatModel.from_run({str(runs['full'])!r})\n"
            f"m.generate_texts(['hello'], max_new_tokens=2)\n"
            f"it = m.stream_text('hello there', max_new_tokens=50)\n"
            f"next(it)\n")  # a stream left mid-answer: the decoding thread is still running at exit
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]


def test_auto_falls_back_to_ctranslate2_and_says_why(runs: dict[str, Path], tiny_llama: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from tunesmith.serve.models import ModelLoader

    wordpiece = train(chat_project(tmp_path / "wp", tiny_llama, {"max_steps": 1}, n=20))  # GGUF takes byte-level BPE only
    served = ModelLoader(ServeSpec()).load(wordpiece)
    out = capsys.readouterr().out
    assert "chat engine ctranslate2" in out and type(served.engine.chat).__name__ == "CT2ChatModel"
    with pytest.raises(ConfigError, match="WordPiece"):
        ModelLoader(ServeSpec(chat_engine="llama.cpp")).load(wordpiece)
    monkeypatch.setitem(sys.modules, "llama_cpp", None)  # as if the package were not installed
    with pytest.raises(ConfigError, match="--chat-engine llama.cpp: the llama-cpp-python package is not installed"):
        ModelLoader(ServeSpec(chat_engine="llama.cpp")).load(runs["lora"])
    monkeypatch.setitem(sys.modules, "ctranslate2", None)
    served = ModelLoader(ServeSpec()).load(runs["lora"])
    out = capsys.readouterr().out
    assert type(served.engine).__name__ == "ChatModelEngine"
    assert "chat engine transformers (llama.cpp: the llama-cpp-python package is not installed" in out
    assert "ctranslate2: the ctranslate2 package is not installed" in out


def test_a_whole_answer_does_not_wait_for_a_longer_one_ahead_of_it(served: InProcessServer) -> None:
    """Requests that are no stream go through the serving batcher, which ran one batch at a time: a short answer
    with other settings waited for the whole of a long one. Now it reaches the engine while the long one decodes
    (sent at the long one's third token, which then waits for it: no timing involved) and joins its rows."""
    model = next(m for m in served.models if m.run.endswith("full/run"))
    engine = model.engine.chat
    assert model.engine.concurrent_calls == engine.max_batch == 4
    batcher = served.service.batchers[model.batch_key]  # each request a call of its own: answered when it ends
    assert (batcher.max_batch, batcher.concurrency) == (1, 4)
    client = client_of(served.url)
    long_ask, short_ask = conversations()[0], [{"role": "user", "content": QA[2][0]}]
    solo = client.chat.completions.create(model=model.id, messages=short_ask, temperature=0, max_tokens=3)
    original, seen, answers = engine._on_token, [0], []
    short = threading.Thread(target=lambda: answers.append(
        client.chat.completions.create(model=model.id, messages=short_ask, temperature=0, max_tokens=3)))

    def on_token(r: Any, token: int, last: bool) -> bool:
        seen[0] += 1
        if seen[0] == 3:
            short.start()
            deadline = time.monotonic() + 20  # one batch at a time, it never arrives: the test fails, not hangs
            while not engine._pending and time.monotonic() < deadline:
                time.sleep(0.01)
        return original(r, token, last)

    engine._on_token = on_token  # type: ignore[method-assign]
    try:
        before = len(engine.stats.sizes)
        long = client.chat.completions.create(model=model.id, messages=long_ask, temperature=0, max_tokens=20)
        short.join(60)
    finally:
        del engine._on_token
    assert long.usage.completion_tokens > 4  # still decoding when the short one came
    assert answers[0].choices[0].message.content == solo.choices[0].message.content
    assert 2 in engine.stats.sizes[before:]  # the short request decoded beside the long one


def test_a_model_swapped_out_is_freed_and_its_decoding_thread_ends(runs: dict[str, Path]) -> None:
    """The decoding thread waited for work for ever and held the model: each registry swap kept one more llama.cpp
    model (and its KV cache) loaded."""
    import asyncio
    import gc
    import weakref

    from tunesmith.serve import protocol as p
    from tunesmith.serve.models import BatchedChatEngine, Served
    from tunesmith.serve.service import Service

    def served(name: str) -> Served:
        engine = BatchedChatEngine(LlamaCppChatModel.from_run(runs["full"], kv_cells=512), "llama.cpp f16")
        return Served(f"ft:base:{name}:0", "chat", "chat", str(runs["full"]), "base", 0, name, engine, {name},
                      f"ft:base:{name}:0")

    service = Service([served("v1")], ServeSpec())
    ask = p.CompletionRequest(model="v1", prompt="Hello", max_tokens=2)
    assert asyncio.run(service.generate(ask)).choices[0].text is not None
    old = service.models[0].engine.chat
    thread, freed = old._thread, weakref.ref(old)
    assert thread is not None and thread.is_alive()
    service.add(served("v2"), replacing=service.models[0])
    service._retire()
    del old
    thread.join(10)
    gc.collect()
    assert not thread.is_alive() and freed() is None
    assert asyncio.run(service.generate(ask.model_copy(update={"model": "v2"}))).choices[0].text is not None


@pytest.fixture(scope="module")
def space_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run whose chat template's generation prompt ends in a space ("### Assistant: "): training tokenized the
    space with the answer's first word (":", " paris")."""
    from transformers import AutoTokenizer

    tmp = tmp_path_factory.mktemp("space-run")
    base = build_bpe_llama(tmp / "bpe-llama")
    tok = AutoTokenizer.from_pretrained(base)
    tok.chat_template = SPACE_TEMPLATE
    tok.save_pretrained(base)
    return train(chat_project(tmp / "space", base, {"bf16": False, "epochs": 6}))


def test_a_generation_prompt_ending_in_a_space_answers_with_the_first_word(space_run: Path) -> None:
    """The prompt ended in a lone " " token training never saw before an answer: every engine dropped the answer's
    first word ("is the capital of france."). The prompt now ends before the space, and the answer (whole and
    streamed) starts without the space that comes with its first token; a raw prompt's continuation keeps it."""
    conversation = [{"role": "user", "content": QA[0][0]}]
    answer = QA[0][1]
    for model in (ChatModel.from_run(space_run), LlamaCppChatModel.from_run(space_run)):
        prompt = model.prompt_text(conversation)
        assert prompt.endswith("### Assistant:") and prompt.answer_prefix == " "
        [whole] = model.generate_texts([prompt], max_new_tokens=24)
        *pieces, last = model.stream_text(prompt, max_new_tokens=24)
        assert whole.text == "".join(pieces) == last.text == answer, type(model).__name__
        assert model.generate([conversation], max_new_tokens=24)[0].text == answer
        [raw] = model.generate_texts([str(prompt)], max_new_tokens=24)  # a completion's prompt: as generated
        assert raw.text == " " + answer


def test_a_chat_engine_named_that_fails_to_build_says_what_to_use_instead(runs: dict[str, Path],
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """--chat-engine llama.cpp on a run whose GGUF could not be written re-raised the bare error, without the remedy
    an unavailable engine gets."""
    from tunesmith.inference import llama_generation
    from tunesmith.serve.models import ModelLoader

    def refuse(run: Any, **_: Any) -> Any:
        raise ConfigError(f"{run.path}: this run has a WordPiece tokenizer (GGUF export writes byte-level BPE).")

    monkeypatch.setattr(llama_generation.LlamaCppChatModel, "from_run", staticmethod(refuse))
    with pytest.raises(ConfigError, match=r"full/run: cannot serve with --chat-engine llama\.cpp: this run has a WordPiece "
                                          r"tokenizer \(GGUF export writes byte-level BPE\); use --chat-engine "
                                          r"transformers \(or auto, which falls back by itself\)$"):
        ModelLoader(ServeSpec(chat_engine="llama.cpp")).load(runs["full"])
