"""The real server (uvicorn in a subprocess) answering the official `openai` client, curl-style HTTP,
bad input, auth, streaming, disconnects and overload, with tiny runs trained here."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.servers import start_server, stop_server
from tests.test_train import project
from tests.test_train_chat import QA, chat_project
from tunesmith.training import train

KEY, ADMIN = "sk-test-123", "admin-456"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path, tiny_llama: Path) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("served")
    (tmp / "clf").mkdir()
    clf = train(project(tmp / "clf", tiny_bert, train_spec={"max_steps": 30}))
    good = train(chat_project(tmp / "good", tiny_llama))  # full fine-tuning: learns the answers
    weak = train(chat_project(tmp / "weak", tiny_llama, {"method": "lora", "learning_rate": 1e-3, "epochs": 1}))
    other = train(chat_project(tmp / "other", tiny_llama, {"method": "lora", "learning_rate": 1e-2, "epochs": 2}))
    return {"clf": clf, "good": good, "weak": weak, "other": other}


@pytest.fixture(scope="module")
def server(runs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc, url = start_server([*(str(runs[k]) for k in ("clf", "good", "weak", "other")), "--api-key", KEY,
                              "--admin-key", ADMIN, "--max-queue", "4", "--max-tokens", "64",
                              "--chat-engine", "transformers"],  # exact answers of ChatModel, adapters sharing a base
                             tmp_path_factory.mktemp("log") / "server.log")
    yield url
    stop_server(proc)


@pytest.fixture()
def client(server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server}/v1", api_key=KEY, max_retries=0)


def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {KEY}"}


def model_ids(client: openai.OpenAI) -> dict[str, str]:
    return {m.id.split(":")[2]: m.id for m in client.models.list().data}


def test_models_are_listed_with_openai_fine_tune_names(client: openai.OpenAI) -> None:
    models = client.models.list().data
    assert len(models) == 4 and all(m.id.startswith("ft:") and m.object == "model" for m in models)
    assert sorted(m.id.split(":")[2] for m in models) == ["tiny", "tiny-chat", "tiny-chat", "tiny-chat"]
    assert len({m.id for m in models}) == 4  # same project name, different runs: the hash tells them apart
    engines = sorted(m.engine for m in models)  # what answers: the classifier's engine depends on the host's CPU
    assert engines[1:] == ["transformers"] * 3 and engines[0] in ("onnxruntime fp32", "openvino bf16", "torch bf16")


def test_a_model_is_retrieved_by_any_name_it_answers_to(client: openai.OpenAI) -> None:
    # "tiny" names the classifier in every request's `model`, but GET /v1/models/tiny was a 404
    card = client.models.retrieve("tiny")
    assert card.id.startswith("ft:") and card.id.split(":")[2] == "tiny" and card.task == "single_label_classification"
    assert client.models.retrieve(card.id).id == card.id


def test_predict_one_text_and_a_batch(server: str) -> None:
    r = httpx.post(f"{server}/v1/predict", json={"model": "tiny", "text": "great wonderful friendly food"},
                   headers={**auth(), "X-Request-ID": "abc-1"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "abc-1"
    body = r.json()
    assert body["id"] == "abc-1" and body["model"].startswith("ft:") and body["model_version"]
    [pred] = body["predictions"]
    assert pred["label"] in ("pos", "neg") and sum(pred["probabilities"].values()) == pytest.approx(1, abs=1e-4)
    batch = httpx.post(f"{server}/v1/predict", json={"texts": ["terrible stale bitter", "great wonderful friendly"]},
                       headers=auth()).json()
    assert [p["label"] for p in batch["predictions"]] == ["neg", "pos"]
    # The id is the prediction log's key (128 characters, a shadow's ":shadow" after it): a longer one failed its log
    # row on PostgreSQL, silently.
    long = httpx.post(f"{server}/v1/predict", json={"text": "great"}, headers={**auth(), "X-Request-ID": "r" * 122})
    assert long.status_code == 400 and long.json()["error"]["param"] == "X-Request-ID"
    refused = httpx.post(f"{server}/v1/predict", json={"model": "nope", "text": "x"}, headers={**auth(), "X-Request-ID": "err-1"})
    assert refused.status_code == 404 and refused.headers["x-request-id"] == "err-1"  # errors carry it too
    assert "at most 121 printable ASCII characters (got 122)" in long.json()["error"]["message"]
    assert httpx.post(f"{server}/v1/predict", json={"text": "great"},
                      headers={**auth(), "X-Request-ID": "r" * 121}).headers["x-request-id"] == "r" * 121


def chat_models(client: openai.OpenAI) -> tuple[str, str]:
    return served_id(client, "good"), served_id(client, "weak")


def served_id(client: openai.OpenAI, name: str) -> str:
    return next(m.id for m in client.models.list().data if m.run.endswith(f"{name}/run"))


def test_chat_completions_with_the_openai_client(client: openai.OpenAI, runs: dict[str, Path]) -> None:
    from tunesmith.inference.generation import ChatModel

    good, weak = chat_models(client)
    messages = [{"role": "system", "content": "you are friendly number 3"}, {"role": "user", "content": QA[3][0]}]
    r = client.chat.completions.create(model=good, messages=messages, temperature=0, max_tokens=20)
    # The run's own answer (greedy), and one it learned from the data.
    assert r.choices[0].message.content == ChatModel.from_run(runs["good"]).generate([messages], max_new_tokens=20)[0].text
    assert r.choices[0].message.content.replace(" ", "") in {a.replace(" ", "") for _, a in QA}
    assert r.choices[0].finish_reason == "stop" and r.usage.completion_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    cut = client.chat.completions.create(model=good, messages=messages, temperature=0, max_tokens=2)
    assert cut.choices[0].finish_reason == "length" and cut.usage.completion_tokens == 2
    a = client.chat.completions.create(model=weak, messages=messages, temperature=1.0, seed=7, max_tokens=10)
    b = client.chat.completions.create(model=weak, messages=messages, temperature=1.0, seed=7, max_tokens=10)
    assert a.choices[0].message.content == b.choices[0].message.content


def test_adapters_over_one_base_answer_as_their_own_runs(client: openai.OpenAI, runs: dict[str, Path]) -> None:
    from tunesmith.inference.generation import ChatModel

    messages = [{"role": "system", "content": "you are friendly number 3"}, {"role": "user", "content": QA[2][0]}]
    served = {}
    for name in ("weak", "other", "weak"):  # switching back and forth between the adapters
        r = client.chat.completions.create(model=served_id(client, name), messages=messages, temperature=0, max_tokens=12)
        served.setdefault(name, set()).add(r.choices[0].message.content)
    offline = {name: ChatModel.from_run(runs[name]).generate([messages], max_new_tokens=12)[0].text for name in ("weak", "other")}
    assert served == {name: {text} for name, text in offline.items()}
    assert offline["weak"] != offline["other"]


def test_streaming_with_the_openai_client(client: openai.OpenAI) -> None:
    good, _ = chat_models(client)
    messages = [{"role": "system", "content": "you are friendly number 3"}, {"role": "user", "content": QA[1][0]}]
    chunks = list(client.chat.completions.create(model=good, messages=messages, temperature=0, max_tokens=20, stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.replace(" ", "") == QA[1][1].replace(" ", "")
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage.completion_tokens > 0


def test_completions_endpoint(client: openai.OpenAI) -> None:
    good, _ = chat_models(client)
    prompt = f"<|im_start|>user\n{QA[0][0]}<|im_end|>\n<|im_start|>assistant\n"
    r = client.completions.create(model=good, prompt=[prompt, prompt], temperature=0, max_tokens=20)
    assert len(r.choices) == 2 and r.choices[0].text == r.choices[1].text and r.choices[0].text
    streamed = "".join(c.choices[0].text for c in client.completions.create(model=good, prompt=prompt, temperature=0,
                                                                             max_tokens=20, stream=True) if c.choices)
    assert streamed == r.choices[0].text


def test_auth(server: str) -> None:
    bad = openai.OpenAI(base_url=f"{server}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as err:
        bad.models.list()
    assert err.value.status_code == 401 and err.value.body["code"] == "invalid_api_key"
    assert httpx.post(f"{server}/v1/predict", json={"text": "x"}).status_code == 401
    assert httpx.get(f"{server}/healthz").status_code == 200  # probes need no key
    assert httpx.get(f"{server}/admin/status", headers=auth()).status_code == 401  # the model key is not the admin key
    status = httpx.get(f"{server}/admin/status", headers={"Authorization": f"Bearer {ADMIN}"}).json()
    assert status["loaded_models"] == 3  # the classifier, the full fine-tune, and ONE base under both adapters


@pytest.mark.parametrize(("body", "status", "param"), [
    (b'{"texts": ["ok", ', 400, None),
    (b'{"texts": "not a list"}', 400, "texts"),
    (b'{"text": ""}', 400, "text"),
    (json.dumps({"texts": ["x"] * 300}).encode(), 413, "texts"),
    (b'{"model": "nope", "text": "x"}', 404, "model"),
    (b'{"text": "x", "colour": "red"}', 400, "colour"),
    # a lone surrogate escape: it failed (500) every request batched with it
    (b'{"texts": ["fine", "bad \\ud800 text"]}', 400, "texts.1"),
    # np.random.default_rng(-1) killed llama.cpp's decoding thread: every later chat request timed out
    (b'{"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "temperature": 1, "seed": -1}', 400, "seed"),
    (b'{"model": "tiny-chat", "messages": [{"role": "user", "content": "hi \\udc00"}]}', 400, "messages.0.content"),
    (b'{"model": "tiny-chat", "prompt": ["ok", "\\ud83d"]}', 400, "prompt"),  # "item 1 holds ..."
    # a bare text/plain 500: the 404 quoting the model could not be encoded, and a part's text of 5 failed the join
    (b'{"model": "x\\ud800", "text": "hi"}', 400, "model"),
    (b'{"model": "x\\ud800", "messages": [{"role": "user", "content": "hi"}]}', 400, "model"),
    (b'{"model": "tiny-chat", "messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}', 400,
     "messages.0.content"),
])
def test_bad_input_gets_the_right_4xx_in_openai_error_shape(server: str, body: bytes, status: int, param: str | None) -> None:
    path = "/v1/predict" if b"tiny-chat" not in body and b"messages" not in body else "/v1/chat/completions" if b"messages" in body else "/v1/completions"
    r = httpx.post(f"{server}{path}", content=body, headers={**auth(), "Content-Type": "application/json"})
    assert r.status_code == status
    error = r.json()["error"]
    assert error["message"] and error["type"] and error["param"] == param


def test_a_body_that_is_not_json_is_named_with_where_it_breaks(server: str) -> None:
    r = httpx.post(f"{server}/v1/predict", content=b'{"text": "abc', headers={**auth(), "Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    assert r.json()["error"]["message"] == ("the request body is not valid JSON: Unterminated string starting at "
                                            "(character 9 of the body)")
    deep = b'{"texts": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"  # the parser's RecursionError: "error parsing the body"
    r = httpx.post(f"{server}/v1/predict", content=deep, headers={**auth(), "Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    assert "nested too deeply" in r.json()["error"]["message"]


def test_unknown_chat_model_and_bad_role_with_the_client(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="ft:nope:x:1", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=chat_models(client)[0], messages=[{"role": "robot", "content": "hi"}])
    assert err.value.body["param"] == "messages.0.role"


def test_client_disconnect_mid_stream_leaves_the_server_serving(server: str, client: openai.OpenAI) -> None:
    _, weak = chat_models(client)
    body = {"model": weak, "messages": [{"role": "user", "content": "hello"}], "stream": True, "max_tokens": 60,
            "temperature": 1.0}
    counted = 'tunesmith_stream_disconnects_total{model="' + weak + '"}'
    metrics = ""
    # A sampled answer can end (a stop token) before the server sees the client go: then the stream finished, and
    # another try is made. Each try is a cut connection that must leave the server serving.
    for _ in range(5):
        with httpx.stream("POST", f"{server}/v1/chat/completions", json=body, headers=auth(), timeout=30) as r:
            first = next(r.iter_lines())
            assert first.startswith("data: ")
        # The connection is gone; the next request is answered normally.
        r = client.chat.completions.create(model=weak, messages=[{"role": "user", "content": "hello"}], max_tokens=5)
        assert r.choices[0].message.content is not None
        deadline = time.time() + 10
        while time.time() < deadline and counted not in metrics:
            metrics = httpx.get(f"{server}/metrics").text
            time.sleep(0.2)
        if counted in metrics:
            break
    assert counted in metrics


def test_overload_answers_503_with_retry_after_and_recovers(server: str, client: openai.OpenAI) -> None:

    _, weak = chat_models(client)
    body = {"model": weak, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 60, "temperature": 1.0}

    async def flood() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as c:
            return await asyncio.gather(*(c.post(f"{server}/v1/chat/completions", json=body, headers=auth())
                                          for _ in range(24)))

    answers = asyncio.run(flood())
    codes = [r.status_code for r in answers]
    assert 200 in codes and 503 in codes and set(codes) <= {200, 503}
    busy = next(r for r in answers if r.status_code == 503)
    assert int(busy.headers["retry-after"]) >= 1 and busy.json()["error"]["code"] == "overloaded"
    assert client.chat.completions.create(model=weak, messages=[{"role": "user", "content": "hi"}], max_tokens=3).choices


def test_metrics_health_and_docs(server: str) -> None:
    # its own traffic, so the test holds whichever tests ran before it on this server
    assert httpx.post(f"{server}/v1/predict", json={"texts": ["great wonderful friendly"]}, headers=auth()).status_code == 200
    assert httpx.post(f"{server}/v1/predict", content=b"{not json", headers=auth()).status_code == 400
    text = httpx.get(f"{server}/metrics").text
    for name in ("tunesmith_requests_total", "tunesmith_request_seconds_bucket", "tunesmith_batch_size_bucket",
                 "tunesmith_queue_depth", "tunesmith_predictions_total", "tunesmith_errors_total"):
        assert name in text
    assert 'label="pos"' in text  # the prediction distribution per model version, joinable with the version metrics
    import re

    [(model, version)] = set(re.findall(r'tunesmith_predictions_total\{label="[^"]+",model="([^"]+)",version="([^"]+)"\}', text))
    assert f'tunesmith_model_requests_total{{model="{model}",version="{version}"}}' in text
    assert httpx.get(f"{server}/readyz").json()["status"] == "ready"
    spec = httpx.get(f"{server}/openapi.json").json()
    assert {"/v1/predict", "/v1/chat/completions", "/v1/completions", "/v1/models"} <= set(spec["paths"])
    r = httpx.options(f"{server}/v1/models", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"})
    assert "access-control-allow-origin" not in r.headers  # CORS is off unless configured


def test_feedback_to_a_server_without_a_store_says_how_to_keep_it(server: str) -> None:
    r = httpx.post(f"{server}/v1/feedback", json={"request_id": "req-1", "rating": "up"}, headers=auth())
    assert r.status_code == 404 and r.json()["error"]["code"] == "feedback_not_enabled"
    assert "--db" in r.json()["error"]["message"]


def test_metrics_label_requests_by_route_not_by_the_path_a_client_sends() -> None:
    """Every model id or made-up URL under /v1 was a series of its own in /metrics, kept for good: a client without a
    key could grow the server's memory and the scrape without bound."""

    from tests.serve.test_service import FakeClassifier, served
    from tunesmith.config import ServeSpec
    from tunesmith.serve.app import create_app
    from tunesmith.serve.service import Service

    spec = ServeSpec(api_keys=[KEY])
    app = create_app(Service([served("sequence", FakeClassifier(), "clf")], spec), spec)

    async def traffic() -> str:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
            for i in range(3):
                assert (await c.get(f"/v1/models/made-up-{i}", headers=auth())).status_code == 404
                assert (await c.get(f"/v1/probe-{i}")).status_code == 404  # no key needed to reach a 404
            assert (await c.post("/v1/predict", content=b"x" * 1_000_001, headers=auth())).status_code == 413
            return (await c.get("/metrics")).text

    text = asyncio.run(traffic())
    assert "made-up" not in text and "probe-" not in text
    assert 'tunesmith_requests_total{endpoint="/v1/models/{model_id:path}",status="404"} 3.0' in text
    assert 'tunesmith_requests_total{endpoint="unmatched",status="404"} 3.0' in text
    assert 'tunesmith_requests_total{endpoint="/v1/predict",status="413"} 1.0' in text  # refused before routing


def test_an_unexpected_failure_answers_500_in_openai_s_shape_and_is_counted() -> None:
    """A bug in a handler came back as Starlette's text/plain "Internal Server Error" and never reached /metrics."""
    from tests.serve.test_service import FakeChat, served
    from tunesmith.config import ServeSpec
    from tunesmith.serve.app import create_app
    from tunesmith.serve.service import Service

    class Broken(FakeChat):
        def count_tokens(self, text: str) -> int:
            raise TypeError("a bug")

    spec = ServeSpec()
    app = create_app(Service([served("chat", Broken(), "bot")], spec), spec)

    async def traffic() -> tuple[httpx.Response, str]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
                                     base_url="http://test") as c:
            r = await c.post("/v1/completions", json={"model": "bot", "prompt": "hi"})
            return r, (await c.get("/metrics")).text

    r, text = asyncio.run(traffic())
    assert r.status_code == 500 and r.headers["content-type"] == "application/json"
    assert r.json()["error"]["type"] == "server_error"
    assert 'tunesmith_requests_total{endpoint="/v1/completions",status="500"} 1.0' in text


def test_a_blank_key_is_refused_at_start(tmp_path: Path) -> None:
    """`--api-key "$KEY"` with KEY unset started a server that looked protected and let in "Bearer \\xa0" (str.strip()
    made it "", the key)."""
    import subprocess
    import sys

    from pydantic import ValidationError

    from tunesmith.config import ServeSpec

    for keys in ([""], ["  "], [" sk-1"]):
        with pytest.raises(ValidationError, match="must not be empty or start or end with blanks"):
            ServeSpec(api_keys=keys)
    with pytest.raises(ValidationError):
        ServeSpec(admin_key="")
    done = subprocess.run([sys.executable, "-m", "tunesmith", "serve", "--api-key", "", str(tmp_path)], capture_output=True,
                          text=True)
    assert done.returncode == 2 and "--api-key" in done.stderr


def test_the_key_is_checked_before_the_body(tmp_path: Path) -> None:
    """A client without the key hears 401 whatever its body, as OpenAI answers: never 400 about its JSON (which would
    tell a stranger the endpoint's schema)."""
    from tests.serve.test_service import FakeClassifier, served
    from tunesmith.config import ServeSpec
    from tunesmith.monitor.ab import ABService
    from tunesmith.serve.app import create_app
    from tunesmith.serve.service import Service
    from tunesmith.store.db import Store

    spec = ServeSpec(api_keys=[KEY], admin_key=ADMIN)
    ab = ABService(Store(f"sqlite:///{tmp_path / 's.db'}"))
    app = create_app(Service([served("sequence", FakeClassifier(), "clf")], spec, ab=ab), spec)

    async def statuses() -> list[int]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
            return [(await c.post("/v1/predict", content=b'{"text": ')).status_code,
                    (await c.post("/v1/predict", content=b'{"text": 3}')).status_code,
                    (await c.post("/v1/predict", content=b'{"text": ', headers=auth())).status_code,
                    (await c.post("/admin/ab", content=b"[", headers=auth())).status_code,  # the model key is not admin
                    (await c.post("/admin/ab", content=b"[", headers={"Authorization": f"Bearer {ADMIN}"})).status_code]

    assert asyncio.run(statuses()) == [401, 401, 400, 401, 400]


def test_a_chunked_body_over_the_limit_is_refused_as_it_arrives(server: str) -> None:
    """Without Content-Length the 1 MB limit did not apply: a chunked body was read and parsed whole (100 MB)."""
    def body(chunks: int):
        yield b'{"texts": ["'
        for _ in range(chunks):
            yield b"a" * 65536
        yield b'"]}'

    headers = {**auth(), "Content-Type": "application/json"}
    big = httpx.post(f"{server}/v1/predict", content=body(40), headers=headers, timeout=60)  # 2.6 MB, no length
    assert "content-length" not in big.request.headers
    assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"
    small = httpx.post(f"{server}/v1/predict", content=(c for c in (b'{"text": ', b'"great tea"}')), headers=headers)
    assert small.status_code == 200 and small.json()["predictions"][0]["label"] in ("pos", "neg")
    assert 'tunesmith_requests_total{endpoint="/v1/predict",status="413"}' in httpx.get(f"{server}/metrics").text


def test_a_browser_page_on_an_allowed_origin_can_use_the_openai_clients() -> None:
    """The official clients send x-stainless-* headers with every request: their preflight was refused (400)."""
    from tests.serve.test_service import FakeClassifier, served
    from tunesmith.config import ServeSpec
    from tunesmith.serve.app import create_app
    from tunesmith.serve.service import Service

    spec = ServeSpec(api_keys=[KEY], cors_origins=["https://app.example"])
    app = create_app(Service([served("sequence", FakeClassifier(), "clf")], spec), spec)
    origin = {"Origin": "https://app.example"}

    async def exchange() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
            preflight = await c.options("/v1/files/file-1", headers={
                **origin, "Access-Control-Request-Method": "DELETE",
                "Access-Control-Request-Headers": "authorization, content-type, x-stainless-os, x-stainless-retry-count"})
            answer = await c.post("/v1/predict", json={"text": "good"}, headers={**origin, **auth()})
            stranger = await c.options("/v1/predict", headers={"Origin": "https://evil.example",
                                                              "Access-Control-Request-Method": "POST"})
            return preflight, answer, stranger

    preflight, answer, stranger = asyncio.run(exchange())
    assert preflight.status_code == 200 and "DELETE" in preflight.headers["access-control-allow-methods"]
    assert answer.headers["access-control-allow-origin"] == "https://app.example"
    assert "x-request-id" in answer.headers["access-control-expose-headers"].lower()
    assert stranger.status_code == 400


def test_a_port_another_server_has_is_refused_before_loading(tmp_path: Path) -> None:
    # It printed "listening on", started its workers, then uvicorn failed; the command exited 3 ("bad input data").
    import socket

    from tunesmith.config import ServeSpec
    from tunesmith.errors import ConfigError
    from tunesmith.serve.server import serve

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"--port {port}: cannot listen on 127.0.0.1:{port}"):
            serve([tmp_path / "no-run-needed"], ServeSpec(port=port), log=False)


def test_serve_workers_that_die_are_started_again(monkeypatch: pytest.MonkeyPatch) -> None:
    # `serve --workers 1` started them once: after the OOM killer took the worker, jobs waited for ever.
    import subprocess
    import sys

    from tunesmith.config import JobsSpec
    from tunesmith.serve import server

    names: list[str] = []

    def fake_worker(jobs: JobsSpec, index: int, restarts: int = 0) -> subprocess.Popen[bytes]:
        names.append(f"w{index}.{restarts}")
        return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])

    monkeypatch.setattr(server, "_start_worker", fake_worker)
    pool = server.WorkerPool(JobsSpec(), 2, check_s=3600, min_uptime_s=0)  # checked by hand here
    try:
        first = pool.children[1]
        first.kill()
        first.wait()
        pool.check()
        assert names == ["w0.0", "w1.0", "w1.1"] and pool.children[1] is not first and pool.children[1].poll() is None
        pool.check()  # the living are left alone
        assert names == ["w0.0", "w1.0", "w1.1"]
    finally:
        pool.stop()
    assert all(c.poll() is not None for c in pool.children)


def test_a_server_stopped_with_sigterm_stops_its_workers(tmp_path: Path, tiny_llama: Path) -> None:
    """uvicorn raised the SIGTERM again once shut down, and the default handler ended the server before it stopped its
    workers: they went on training jobs for a server that was gone (systemd, docker stop and kill send SIGTERM)."""
    import os
    import signal

    proc, _ = start_server(["--workers", "1", "--base-model", str(tiny_llama)], tmp_path / "server.log",
                           env={"TUNESMITH_HOME": str(tmp_path / "home")})
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    deadline = time.time() + 30
    while not children.read_text().split() and time.time() < deadline:
        time.sleep(0.2)
    [worker] = [int(pid) for pid in children.read_text().split()]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    with pytest.raises(ProcessLookupError):  # stopped and reaped by the server, not left to run on as an orphan
        os.kill(worker, 0)



async def _asgi_post(app: object, path: str, body: dict, receive_after: "asyncio.Event | None" = None,
                     spec_version: str = "2.3") -> list[dict]:
    """POST `body` to `app` as a server would; the client hangs up once `receive_after` is set (never: None)."""
    raw = json.dumps(body).encode()
    messages = [{"type": "http.request", "body": raw, "more_body": False}]
    sent: list[dict] = []

    async def receive() -> dict:
        if messages:
            return messages.pop(0)
        await (receive_after.wait() if receive_after is not None else asyncio.Event().wait())
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": spec_version}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
             "root_path": "", "client": ("127.0.0.1", 1), "server": ("test", 80),
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]}
    await app(scope, receive, send)  # type: ignore[operator]
    return sent


def test_a_whole_answer_whose_client_hung_up_stops_decoding_and_holds_no_place() -> None:
    """A non-streamed chat completion whose client hung up decoded on to max_tokens and kept its place in --max-queue
    (the README: a request whose client gave up holds no place)."""
    import threading

    from tests.serve.test_service import FakeChat, served
    from tunesmith.config import ServeSpec
    from tunesmith.serve.app import create_app
    from tunesmith.serve.service import Service

    decoding, stopped = threading.Event(), []

    class Slow(FakeChat):
        def generate(self, prompts: list[str], cancels: list[threading.Event] | None = None, **params: object) -> list:
            decoding.set()
            assert cancels is not None
            stopped.append(cancels[0].wait(10))  # decoding until told to stop
            return super().generate(prompts, **params)

    spec = ServeSpec(batch_wait_ms=0)
    service = Service([served("chat", Slow(), "bot")], spec)
    app = create_app(service, spec)
    batcher = next(iter(service.batchers.values()))

    async def hang_up() -> list[dict]:
        gone = asyncio.Event()
        call = asyncio.create_task(_asgi_post(app, "/v1/chat/completions", {
            "model": "bot", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 64}, gone))
        await asyncio.get_running_loop().run_in_executor(None, decoding.wait, 5)
        gone.set()  # the client hangs up while its answer decodes
        sent = await call
        while batcher.in_flight:  # the engine returns once told to stop
            await asyncio.sleep(0.01)
        return sent

    sent = asyncio.run(hang_up())
    assert stopped == [True] and sent[0]["status"] == 499 and batcher.idle and service.busy == {}
    counted = 'tunesmith_requests_total{endpoint="/v1/chat/completions",status="499"} 1.0'
    assert counted in service.metrics.render().decode()


def test_a_stream_response_never_begun_gives_its_place_back() -> None:
    """The client gone before the first event: the events' generator never ran, and a place counted from admission
    must still be given back."""
    from tests.serve.test_service import FakeChat, served
    from tunesmith.config import ServeSpec
    from tunesmith.serve.app import create_app
    from tunesmith.serve.service import Service

    spec = ServeSpec(max_queue=1)
    service = Service([served("chat", FakeChat(), "bot")], spec)
    app = create_app(service, spec)
    body = {"model": "bot", "messages": [{"role": "user", "content": "hi"}], "stream": True}

    async def streams() -> list[list[dict]]:
        async def refused_send(scope: dict, receive: object, send: object) -> None:  # the connection is gone
            async def broken(message: dict) -> None:
                raise OSError("connection reset")
            await app(scope, receive, broken)  # type: ignore[operator]

        with pytest.raises(Exception):  # noqa: B017 - Starlette's ClientDisconnect, whatever wraps it
            await _asgi_post(refused_send, "/v1/chat/completions", body, spec_version="2.4")
        assert service.streams == {"ft:base:bot:abc": 0}
        return [await _asgi_post(app, "/v1/chat/completions", body) for _ in range(2)]

    for sent in asyncio.run(streams()):  # one at a time: each finds the place free
        assert sent[0]["status"] == 200 and sent[-2]["body"] == b"data: [DONE]\n\n"


def test_tool_calls_in_the_history_and_stream_options_without_a_stream_are_400s_naming_them() -> None:
    from tests.serve.test_service import FakeChat, served
    from tunesmith.config import ServeSpec
    from tunesmith.serve.app import create_app
    from tunesmith.serve.service import Service

    spec = ServeSpec(batch_wait_ms=0)
    app = create_app(Service([served("chat", FakeChat(), "bot")], spec), spec)
    call = {"id": "1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    history = [{"role": "user", "content": "x"}, {"role": "assistant", "content": None, "tool_calls": [call]}]

    async def asks() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
            return [await c.post("/v1/chat/completions", json={"model": "bot", "messages": history}),
                    await c.post("/v1/chat/completions", json={"model": "bot", "messages": history[:1],
                                                               "stream_options": {"include_usage": True}}),
                    await c.post("/v1/chat/completions", json={"model": "bot", "messages": history[:1], "top_p": 0})]

    tools, options, greedy = asyncio.run(asks())
    assert tools.status_code == 400 and tools.json()["error"]["param"] == "messages.1.tool_calls"
    assert options.status_code == 400 and options.json()["error"]["param"] == "stream_options"
    assert greedy.status_code == 200


def test_a_reused_x_request_id_is_refused_with_409_so_feedback_never_binds_to_another_request(tmp_path: Path) -> None:
    """Both requests under one id got a 200 and only the first was logged: feedback on the second answer was checked
    against, and exported with, the first one's text."""
    from tests.serve.test_service import FakeChat, FakeClassifier, served
    from tunesmith.config import ServeSpec
    from tunesmith.monitor.log import PredictionLog
    from tunesmith.serve.app import create_app
    from tunesmith.serve.service import Service
    from tunesmith.store.db import Store
    from tunesmith.store.schema import Prediction

    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    spec = ServeSpec(batch_wait_ms=20)
    log = PredictionLog(store)
    app = create_app(Service([served("sequence", FakeClassifier(), "clf"), served("chat", FakeChat(), "bot")], spec,
                             log=log), spec)

    async def traffic() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as c:
            def ask(rid: str, text: str, model: str = "clf") -> Any:
                return c.post("/v1/predict", json={"model": model, "text": text}, headers={"X-Request-ID": rid})
            first = await ask("dup-1", "good coffee")
            in_flight = await asyncio.gather(ask("dup-2", "good tea"), ask("dup-2", "stale bread"))  # one at a time
            await asyncio.to_thread(log.flush)
            again = await ask("dup-1", "stale bread")  # on record by now
            failed = await ask("err-1", "x", model="nope")
            retried = await ask("err-1", "good bread")  # the failed request left nothing on record
            chat = await c.post("/v1/chat/completions", json={"model": "bot", "messages": [{"role": "user", "content": "hi"}]},
                                headers={"X-Request-ID": "dup-1"})
            made = [await c.post("/v1/predict", json={"model": "clf", "text": "good"}) for _ in range(2)]
            return [first, *in_flight, again, failed, retried, chat, *made]

    first, a, b, again, failed, retried, chat, *made = asyncio.run(traffic())
    log.close()
    assert first.status_code == 200 and first.json()["id"] == "dup-1"
    assert sorted([a.status_code, b.status_code]) == [200, 409]
    for refused in (again, a if a.status_code == 409 else b):
        error = refused.json()["error"]
        assert refused.status_code == 409 and refused.headers["x-request-id"] in ("dup-1", "dup-2")
        assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", "X-Request-ID", "request_id_reused")
        assert "send a new id with each request" in error["message"]
    assert failed.status_code == 404 and retried.status_code == 200 and retried.json()["id"] == "err-1"
    # a chat answer is on record under its own completion id, never the header's: nothing to bind wrongly
    assert chat.status_code == 200 and chat.headers["x-request-id"] == "dup-1" and chat.json()["id"].startswith("chatcmpl-")
    assert all(r.status_code == 200 for r in made) and made[0].json()["id"] != made[1].json()["id"]
    with store.session() as s:
        rows = {r.request_id: r.inputs for r in s.query(Prediction).all()}
    store.close()
    kept = a if a.status_code == 200 else b
    assert rows["dup-1"] == ["good coffee"] and rows["err-1"] == ["good bread"]
    assert rows["dup-2"] == (["good tea"] if kept is a else ["stale bread"])
