"""Chat runs served through CTranslate2: converted (a LoRA run merged) into a cache beside the run, greedy answers
as the PyTorch run gives them, concurrent requests decoded as one batch, and the same OpenAI endpoints."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.servers import free_port, start_server, stop_server
from tests.test_train_chat import QA, chat_project
from tunesmith.config import ServeSpec
from tunesmith.errors import ConfigError
from tunesmith.inference.ct2_generation import CT2ChatModel
from tunesmith.inference.generation import ChatModel
from tunesmith.inference.serve_cache import CACHE_DIR, FINGERPRINT
from tunesmith.training import train

pytest.importorskip("ctranslate2")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("ct2-runs")
    full = train(chat_project(tmp / "full", tiny_llama, {"epochs": 6}, n=40))
    lora = train(chat_project(tmp / "lora", tiny_llama, {"method": "lora", "learning_rate": 1e-2, "epochs": 2}))
    return {"full": full, "lora": lora}


def conversations() -> list[list[dict[str, str]]]:
    """The trained questions under unseen system prompts, and a few questions the data never asked."""
    asked = [[{"role": "system", "content": f"you are friendly number {i}"}, {"role": "user", "content": q}]
             for i in (3, 7, 11) for q, _ in QA]
    return asked + [[{"role": "user", "content": q}] for q in ("hello", "the coffee and the tea?", "what is great?")]


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_greedy_answers_match_the_pytorch_run(runs: dict[str, Path], kind: str) -> None:
    """float32: the same answers token for token; int8 weights: the same on most prompts."""
    prompts = conversations()
    reference = ChatModel.from_run(runs[kind]).generate(prompts, max_new_tokens=24)
    exact = CT2ChatModel.from_run(runs[kind], compute_type="float32").generate(prompts, max_new_tokens=24)
    assert [(c.text, c.completion_tokens, c.finish_reason) for c in exact] == \
        [(c.text, c.completion_tokens, c.finish_reason) for c in reference]
    assert any(c.finish_reason == "stop" for c in reference)  # the stop tokens end answers on both engines
    quantized = CT2ChatModel.from_run(runs[kind]).generate(prompts, max_new_tokens=24)
    share = sum(a.text == b.text for a, b in zip(quantized, reference, strict=True)) / len(prompts)
    assert share >= 0.75, share


def test_conversion_is_cached_beside_the_run_and_redone_when_the_weights_change(runs: dict[str, Path]) -> None:
    model = CT2ChatModel.from_run(runs["lora"], compute_type="float32")
    folder = runs["lora"] / CACHE_DIR / "ct2-float32"
    assert model.folder == folder and (folder / "model.bin").is_file() and (folder / FINGERPRINT).is_file()
    converted_at = (folder / "model.bin").stat().st_mtime_ns
    stamp = (folder / FINGERPRINT).read_text()
    CT2ChatModel.from_run(runs["lora"], compute_type="float32")
    assert (folder / "model.bin").stat().st_mtime_ns == converted_at  # current: not converted again
    adapter = next((runs["lora"] / "model").glob("adapter_model.*"))
    os.utime(adapter, ns=(adapter.stat().st_atime_ns, adapter.stat().st_mtime_ns + 10**9))  # the adapter was rewritten
    CT2ChatModel.from_run(runs["lora"], compute_type="float32")
    assert (folder / FINGERPRINT).read_text() != stamp and (folder / "model.bin").stat().st_mtime_ns != converted_at
    assert [p.name for p in folder.parent.iterdir() if p.name.startswith(".")] == []  # no scratch left behind


def test_only_int8_compute_types_load_the_int8_conversion(runs: dict[str, Path]) -> None:
    """int16 or bf16 from the int8 conversion would keep int8's rounding: they load the float32 conversion."""
    import ctranslate2

    from tunesmith.inference.ct2_generation import stored_weights

    assert [stored_weights(t) for t in ("int8", "int8_float32", "int8_bfloat16", "int16", "bfloat16", "float32")] == \
        ["int8", "int8", "int8", "float32", "float32", "float32"]
    assert CT2ChatModel.from_run(runs["full"]).folder == runs["full"] / CACHE_DIR / "ct2-int8"
    if "int16" in ctranslate2.get_supported_compute_types("cpu"):  # Intel CPUs (MKL); not every host has it
        model = CT2ChatModel.from_run(runs["full"], compute_type="int16")
        assert model.folder == runs["full"] / CACHE_DIR / "ct2-float32" and model.compute_type == "int16"


class CancelledAfter(threading.Event):
    """Reads as set from its `n`-th look on: a client leaving mid-answer at a point that does not depend on timing
    (the engine looks once before the batch starts, then once per decoded token)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n, self.looks = n, 0

    def is_set(self) -> bool:
        self.looks += 1
        return self.looks >= self.n or super().is_set()


def three_rows_ending_on_their_own(engine: Any, prompt: str, cancel_after: int) -> int:
    """Three requests decoded together, each ending on its own: one on a stop string, one on its limit, a stream
    whose client leaves after `cancel_after` looks. Returns where engine.stats.sizes stood before them."""
    [whole] = engine.generate_texts([prompt], max_new_tokens=24)
    assert whole.finish_reason == "stop" and whole.completion_tokens < 24
    streamed = list(engine.stream_text(prompt, max_new_tokens=24))  # the pieces add up to the answer
    assert "".join(p for p in streamed if isinstance(p, str)) == whole.text and streamed[-1].finish_reason == "stop"
    word = whole.text.split()[-1]
    got: dict[str, Any] = {}

    def ask(name: str, **params: Any) -> None:
        got[name] = engine.generate_texts([prompt], **{"max_new_tokens": 24, **params})[0]

    def stream() -> None:
        got["streamed"] = list(engine.stream_text(prompt, max_new_tokens=24, cancel=CancelledAfter(cancel_after)))

    workers = [threading.Thread(target=ask, args=("cut",), kwargs={"stop": [word]}),
               threading.Thread(target=ask, args=("limited",), kwargs={"max_new_tokens": 2}), threading.Thread(target=stream)]
    saved, before = (engine.max_batch, engine.wait_s), len(engine.stats.sizes)
    engine.max_batch, engine.wait_s = 3, 60.0  # the batch starts when the three requests below are in
    try:
        for t in workers:
            t.start()
        for t in workers:
            t.join(timeout=120)
    finally:
        engine.max_batch, engine.wait_s = saved
    assert got["cut"].text == whole.text[: whole.text.index(word)] and got["cut"].finish_reason == "stop"
    assert got["limited"].finish_reason == "length" and got["limited"].completion_tokens == 2
    *pieces, left = got["streamed"]
    assert left.finish_reason == "length" and left.completion_tokens < whole.completion_tokens
    assert whole.text.startswith("".join(pieces).strip())
    return before


def test_rows_of_one_batch_end_on_their_own_stop_string_limit_or_cancel(runs: dict[str, Path]) -> None:
    model = CT2ChatModel.from_run(runs["full"], compute_type="float32")
    before = three_rows_ending_on_their_own(model, model.prompt_text([{"role": "user", "content": QA[0][0]}]), 3)
    assert model.stats.sizes[before:] == [3]  # one generate_batch for the three


# -- served over HTTP -------------------------------------------------------------------------------------------


class InProcessServer:
    """`tunesmith serve`'s app on uvicorn in a thread, so a test can look at the engine behind it."""

    def __init__(self, paths: list[Path], spec: ServeSpec) -> None:
        import uvicorn

        from tunesmith.serve.app import create_app
        from tunesmith.serve.models import ModelLoader, load
        from tunesmith.serve.service import Service

        loader = ModelLoader(spec)
        self.models = load(paths, loader)
        self.service = service = Service(self.models, spec, loader=loader)
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(uvicorn.Config(create_app(service, spec), host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            assert self.thread.is_alive(), "the server did not start"
            threading.Event().wait(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def served(runs: dict[str, Path]) -> Iterator[InProcessServer]:
    server = InProcessServer([runs["full"], runs["lora"]], ServeSpec(chat_engine="ctranslate2", max_batch_size=4))
    yield server
    server.stop()


def client_of(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0)


def engine_of(server: InProcessServer, name: str) -> Any:
    return next(m.engine.chat for m in server.models if m.run.endswith(f"{name}/run"))


def test_the_openai_client_gets_the_engines_answers_whole_and_streamed(served: InProcessServer) -> None:
    client = client_of(served.url)
    engine = engine_of(served, "full")
    ident = next(m.id for m in served.models if m.run.endswith("full/run"))
    messages = [{"role": "system", "content": "you are friendly number 3"}, {"role": "user", "content": QA[1][0]}]
    r = client.chat.completions.create(model=ident, messages=messages, temperature=0, max_tokens=20)
    offline = engine.generate([messages], max_new_tokens=20)[0]
    assert r.choices[0].message.content == offline.text and r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens == offline.completion_tokens < 20  # ended by the stop token, not the limit
    chunks = list(client.chat.completions.create(model=ident, messages=messages, temperature=0, max_tokens=20, stream=True,
                                                 stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == r.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens == offline.completion_tokens
    word = offline.text.split()[-1]
    cut = client.chat.completions.create(model=ident, messages=messages, temperature=0, max_tokens=20, stop=[word])
    assert cut.choices[0].message.content == offline.text[: offline.text.index(word)]  # up to the stop string, as OpenAI
    assert cut.choices[0].finish_reason == "stop"
    sampled = client.chat.completions.create(model=ident, messages=messages, temperature=0.8, top_p=0.9, max_tokens=8)
    assert sampled.choices[0].message.content is not None and sampled.usage.completion_tokens <= 8


def test_concurrent_requests_are_decoded_as_one_batch(served: InProcessServer) -> None:
    client = client_of(served.url)
    engine = engine_of(served, "lora")
    ident = next(m.id for m in served.models if m.run.endswith("lora/run"))
    prompts = [engine.prompt_text([{"role": "user", "content": q}]) for q, _ in QA[:4]]
    offline = [c.text for c in engine.generate_texts(prompts, max_new_tokens=16)]
    before = len(engine.stats.sizes)
    # Several prompts in one /v1/completions request reach the engine together (within a window held open for 2 s:
    # the default few milliseconds split them [2, 1] on a host busy with other tests).
    engine.wait_s, waited = 2.0, engine.wait_s
    try:
        r = client.completions.create(model=ident, prompt=prompts[:3], temperature=0, max_tokens=16)
    finally:
        engine.wait_s = waited
    assert [c.text for c in r.choices] == offline[:3]
    assert engine.stats.sizes[before:] == [3]
    # Four concurrent streams: the window stays open until the batch is full (max_batch_size 4).
    before = len(engine.stats.sizes)
    assert four_concurrent_streams(client, ident, engine, prompts) == offline
    assert engine.stats.sizes[before:] == [4] and engine.stats.largest == 4


def four_concurrent_streams(client: openai.OpenAI, model: str, engine: Any, prompts: list[str]) -> list[str]:
    """Each prompt streamed from /v1/completions by its own client thread; the engine waits until all four are in."""
    engine.wait_s, waited = 60.0, engine.wait_s
    texts: dict[int, str] = {}

    def stream(i: int) -> None:
        texts[i] = "".join(c.choices[0].text for c in client.completions.create(
            model=model, prompt=prompts[i], temperature=0, max_tokens=16, stream=True) if c.choices)

    try:
        threads = [threading.Thread(target=stream, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    finally:
        engine.wait_s = waited
    return [texts[i].strip() for i in range(4)]


def test_the_serve_command_takes_the_chat_engine_flag(runs: dict[str, Path], tmp_path: Path) -> None:
    proc, url = start_server([str(runs["full"]), str(runs["lora"]), "--chat-engine", "ctranslate2"], tmp_path / "server.log")
    try:
        client = client_of(url)
        model = next(m for m in client.models.list().data if m.run.endswith("lora/run"))
        messages = [{"role": "user", "content": QA[2][0]}]
        r = client.chat.completions.create(model=model.id, messages=messages, temperature=0, max_tokens=12)
    finally:
        stop_server(proc)
    assert (tmp_path / "server.log").read_text().count("chat engine ctranslate2 (int8_float32)") == 2
    assert model.engine == "ctranslate2 int8_float32"
    assert r.choices[0].message.content == CT2ChatModel.from_run(runs["lora"]).generate([messages], max_new_tokens=12)[0].text


def test_a_process_with_engines_beside_torch_exits_cleanly(runs: dict[str, Path]) -> None:
    """Generators left to the interpreter's teardown abort the process once torch has run ("terminate called
    without an active exception", exit 134): they are unloaded at exit."""
    code = (f"from tunesmith.inference.ct2_generation import CT2ChatModel\n"
            f"from tunesmith.inference.generation import ChatModel\n"
            f"ChatModel.from_run({str(runs['full'])!r}).generate_texts(['hello'], max_new_tokens=2)\n"
            f"for run in ({str(runs['full'])!r}, {str(runs['lora'])!r}):\n"
            f"    CT2ChatModel.from_run(run).generate_texts(['hello'], max_new_tokens=2)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]


def test_auto_falls_back_to_transformers_and_says_why(runs: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from tunesmith.serve.models import ChatModelEngine, ModelLoader

    monkeypatch.setitem(sys.modules, "ctranslate2", None)  # as if the package were not installed
    served = ModelLoader(ServeSpec()).load(runs["lora"])
    assert isinstance(served.engine, ChatModelEngine)
    out = capsys.readouterr().out
    assert "chat engine transformers (" in out and "ctranslate2: the ctranslate2 package is not installed" in out
    with pytest.raises(ConfigError, match="--chat-engine ctranslate2"):
        ModelLoader(ServeSpec(chat_engine="ctranslate2")).load(runs["lora"])


def test_auto_says_why_llama_cpp_was_passed_over(runs: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    # A GGUF that could not be written moved the run to CTranslate2 int8 (less exact answers) without a word.
    from tunesmith.inference import llama_generation
    from tunesmith.serve.models import ModelLoader

    def full_disk(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(llama_generation.LlamaCppChatModel, "from_run", full_disk)
    ModelLoader(ServeSpec()).load(runs["full"])
    out = " ".join(capsys.readouterr().out.split())
    assert "chat engine ctranslate2" in out and "not llama.cpp: conversion failed: OSError" in out
