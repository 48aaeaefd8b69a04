"""The service layer with fake engines: batching, limits, overload and errors, no HTTP and no torch."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from tunesmith.config import ServeSpec
from tunesmith.serve import protocol as p
from tunesmith.serve.models import Served
from tunesmith.serve.service import Service, ServiceError


class FakeClassifier:
    labels = ["neg", "pos"]

    def __init__(self, delay: float = 0.0) -> None:
        self.calls: list[list[str]] = []
        self.delay = delay

    def predict(self, texts: list[str]) -> list[dict[str, Any]]:
        self.calls.append(list(texts))
        time.sleep(self.delay)
        return [{"label": "pos" if "good" in t else "neg",
                 "probabilities": {"neg": 0.1, "pos": 0.9} if "good" in t else {"neg": 0.8, "pos": 0.2}} for t in texts]


class FakeChat:
    context = 64

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], dict[str, Any]]] = []

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def prompt_text(self, conversation: list[dict[str, str]]) -> str:
        return " ".join(m["content"] for m in conversation)

    def generate(self, prompts: list[str], cancels: list[threading.Event] | None = None, **params: Any) -> list[Any]:
        from tunesmith.inference.generation import Completion

        self.calls.append((list(prompts), params))
        return [Completion(f"echo {x}", self.count_tokens(x), 2, "stop") for x in prompts]

    def stream(self, prompt: str, cancel: threading.Event, **params: Any):
        from tunesmith.inference.generation import Completion

        for word in ["echo", " ", prompt]:
            yield word
        yield Completion(f"echo {prompt}", 1, 2, "stop")


def served(kind: str, engine: Any, name: str) -> Served:
    return Served(f"ft:base:{name}:abc", kind, "chat" if kind == "chat" else "single_label_classification",
                  f"runs/{name}", "base", 0, "abc", engine, {name}, f"ft:base:{name}:abc")


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_concurrent_requests_share_a_batch() -> None:
    engine = FakeClassifier()
    service = Service([served("sequence", engine, "clf")], ServeSpec(batch_wait_ms=20, max_batch_size=8))

    async def many() -> list[Any]:
        return await asyncio.gather(*(service.predict(p.PredictRequest(text=f"good {i}" if i % 2 else f"bad {i}"))
                                      for i in range(8)))

    answers = run(many())
    assert [a.predictions[0].label for a in answers] == ["neg", "pos"] * 4  # each request gets its own answer back
    assert len(engine.calls) == 1 and len(engine.calls[0]) == 8  # one forward pass for all eight


def test_batch_limit_splits_and_texts_batch_counts_by_size() -> None:
    engine = FakeClassifier()
    service = Service([served("sequence", engine, "clf")], ServeSpec(batch_wait_ms=20, max_batch_size=4))

    async def many() -> list[Any]:
        return await asyncio.gather(service.predict(p.PredictRequest(texts=["a", "b", "c"])),
                                    *(service.predict(p.PredictRequest(text=f"t{i}")) for i in range(3)))

    answers = run(many())
    assert [len(a.predictions) for a in answers] == [3, 1, 1, 1]
    assert all(len(call) <= 4 for call in engine.calls) and sum(map(len, engine.calls)) == 6


def test_full_queue_answers_503_with_retry_after() -> None:
    engine = FakeClassifier(delay=0.3)
    service = Service([served("sequence", engine, "clf")], ServeSpec(batch_wait_ms=0, max_batch_size=1, max_queue=2))

    async def flood() -> list[Any]:
        return await asyncio.gather(*(service.predict(p.PredictRequest(text=f"t{i}")) for i in range(8)))

    answers = run(flood())
    errors = [a for a in answers if isinstance(a, ServiceError)]
    ok = [a for a in answers if not isinstance(a, ServiceError)]
    assert ok and errors
    assert {e.status for e in errors} == {503} and all(int(e.headers["Retry-After"]) >= 1 for e in errors)
    assert errors[0].body()["error"]["code"] == "overloaded"


def test_timeout_answers_504() -> None:
    service = Service([served("sequence", FakeClassifier(delay=0.5), "clf")], ServeSpec(timeout_s=0.1))
    err = run(service.predict(p.PredictRequest(text="slow")))
    assert isinstance(err, ServiceError) and err.status == 504


def test_a_failing_forward_pass_answers_500_in_the_api_shape_and_the_model_keeps_serving() -> None:
    """It was raised through the service: a bare text/plain "Internal Server Error", uncounted in /metrics."""
    class Failing(FakeClassifier):
        def predict(self, texts: list[str]) -> list[dict[str, Any]]:
            if "boom" in texts:
                raise RuntimeError("out of memory")
            return super().predict(texts)

    class FailingChat(FakeChat):
        def generate(self, prompts: list[str], **params: Any) -> list[Any]:
            raise RuntimeError("decode failed")

    service = Service([served("sequence", Failing(), "clf"), served("chat", FailingChat(), "bot")],
                      ServeSpec(batch_wait_ms=0))
    err = run(service.predict(p.PredictRequest(text="boom")))
    assert isinstance(err, ServiceError) and (err.status, err.type) == (500, "server_error")
    assert err.message == "prediction failed: RuntimeError: out of memory"
    assert service.metrics.version_errors.labels("ft:base:clf:abc", "abc")._value.get() == 1
    assert run(service.predict(p.PredictRequest(text="good"))).predictions[0].label == "pos"
    err = run(service.generate(p.CompletionRequest(model="bot", prompt="hi")))
    assert isinstance(err, ServiceError) and err.status == 500 and "decode failed" in err.message
    # chat failures were never counted in tunesmith_model_errors_total: a generative model's error rate read 0
    assert service.metrics.version_errors.labels("ft:base:bot:abc", "abc")._value.get() == 1


@pytest.mark.parametrize(("req", "status", "param"), [
    (p.PredictRequest(text="   "), 400, "text"),
    (p.PredictRequest(texts=[]), 400, "texts"),
    (p.PredictRequest(texts=["ok", ""]), 400, "texts.1"),
    (p.PredictRequest(texts=["x"] * 5), 413, "texts"),
    (p.PredictRequest(text="x" * 101), 413, "text"),
    (p.PredictRequest(), 400, "text"),
    (p.PredictRequest(text="a", texts=["b"]), 400, "text"),
    (p.PredictRequest(model="nope", text="a"), 404, "model"),
    (p.PredictRequest(model="bot", text="a"), 400, "model"),
])
def test_bad_predict_requests_name_the_field(req: p.PredictRequest, status: int, param: str) -> None:
    service = Service([served("sequence", FakeClassifier(), "clf"), served("chat", FakeChat(), "bot")],
                      ServeSpec(max_texts_per_request=4, max_text_chars=100))
    err = run(service.predict(req))
    assert isinstance(err, ServiceError) and (err.status, err.param) == (status, param)


def test_chat_limits_and_params() -> None:
    chat = FakeChat()
    service = Service([served("chat", chat, "bot")], ServeSpec(max_tokens=20))

    def ask(**kw: Any) -> Any:
        return run(service.generate(p.ChatCompletionRequest(model="bot", messages=[{"role": "user", "content": "hi there"}], **kw)))

    ok = ask(temperature=0, max_tokens=5, stop="x", seed=3)
    assert ok.choices[0].message.content == "echo hi there"
    assert ok.usage.model_dump() == {"prompt_tokens": 2, "completion_tokens": 2, "total_tokens": 4}
    assert chat.calls[-1][1] == {"max_new_tokens": 5, "temperature": 0, "top_p": 1.0, "seed": 3, "stop": ("x",)}
    assert ask(max_tokens=50).param == "max_tokens"
    assert ask(n=2).param == "n"
    long = run(service.generate(p.ChatCompletionRequest(model="bot", messages=[{"role": "user", "content": "w " * 80}])))
    assert long.code == "context_length_exceeded"


def test_chat_completion_is_the_typed_model_with_openai_fields() -> None:
    service = Service([served("chat", FakeChat(), "bot")], ServeSpec())
    answer = run(service.generate(p.ChatCompletionRequest(model="bot", messages=[{"role": "user", "content": "hi"}])))
    assert isinstance(answer, p.ChatCompletion)
    body = json.loads(answer.model_dump_json())
    assert body["id"].startswith("chatcmpl-") and body["object"] == "chat.completion"
    assert isinstance(body["created"], int) and body["model"] == "ft:base:bot:abc"
    assert body["choices"] == [{"index": 0, "message": {"role": "assistant", "content": "echo hi"}, "logprobs": None,
                                "finish_reason": "stop"}]
    assert body["usage"]["total_tokens"] == 3 and body["system_fingerprint"] == "abc"


def test_completion_is_the_typed_model_one_choice_per_prompt() -> None:
    service = Service([served("chat", FakeChat(), "bot")], ServeSpec())
    answer = run(service.generate(p.CompletionRequest(model="bot", prompt=["a", "b c"])))
    assert isinstance(answer, p.Completion)
    body = json.loads(answer.model_dump_json())
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert [(c["index"], c["text"], c["logprobs"], c["finish_reason"]) for c in body["choices"]] == \
        [(0, "echo a", None, "stop"), (1, "echo b c", None, "stop")]
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}


def test_stream_yields_openai_chunks_then_done() -> None:
    service = Service([served("chat", FakeChat(), "bot")], ServeSpec())

    async def collect() -> list[str]:
        events = service.stream(p.ChatCompletionRequest(model="bot", stream=True, messages=[{"role": "user", "content": "yo"}]))
        return [e async for e in events]

    events = run(collect())
    assert events[-1] == "data: [DONE]\n\n"
    bodies = [json.loads(e[6:]) for e in events[:-1]]
    assert bodies[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(b["choices"][0]["delta"].get("content", "") for b in bodies) == "echo yo"
    assert bodies[-1]["choices"][0]["finish_reason"] == "stop"


def test_stream_chunks_leave_out_what_they_do_not_carry() -> None:
    """OpenAI omits `usage` (and unchanged delta fields) rather than sending null; logprobs is always there."""
    service = Service([served("chat", FakeChat(), "bot")], ServeSpec())

    async def collect(req: Any) -> list[dict[str, Any]]:
        return [json.loads(e[6:]) async for e in service.stream(req) if e != "data: [DONE]\n\n"]

    chat = run(collect(p.ChatCompletionRequest(model="bot", stream=True, stream_options={"include_usage": True},
                                               messages=[{"role": "user", "content": "yo"}])))
    assert [c["delta"] for b in chat[:-1] for c in b["choices"]] == \
        [{"role": "assistant", "content": ""}, {"content": "echo"}, {"content": " "}, {"content": "yo"}, {}]
    assert all("usage" not in b and b["choices"][0]["logprobs"] is None and "logprobs" in b["choices"][0] for b in chat[:-1])
    assert all(b["object"] == "chat.completion.chunk" and b["system_fingerprint"] == "abc" for b in chat)
    assert chat[-1]["choices"] == [] and chat[-1]["usage"] == {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    text = run(collect(p.CompletionRequest(model="bot", prompt="yo", stream=True)))
    # system_fingerprint: as in the whole answer and in chat chunks (it was missing here)
    assert all(set(b) == {"id", "object", "created", "model", "system_fingerprint", "choices"} and b["object"] == "text_completion"
               and b["system_fingerprint"] == "abc" for b in text)
    assert [b["choices"][0]["text"] for b in text] == ["echo", " ", "yo", ""] and text[-1]["choices"][0]["finish_reason"] == "stop"


def test_an_ab_route_answers_from_the_user_s_variant_and_feeds_the_shadow(tmp_path: Any) -> None:
    """A running test: each user gets their variant (sticky), the shadow answers a copy that is logged, not returned."""
    from tunesmith.monitor.ab import Route
    from tunesmith.monitor.log import PredictionLog
    from tunesmith.store.db import Store
    from tunesmith.store.schema import Prediction

    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    service = Service([], ServeSpec(batch_wait_ms=0), log=PredictionLog(store))
    engines: dict[int, Any] = {}
    for version, kind, engine in ((1, "sequence", FakeClassifier()), (2, "sequence", FakeClassifier()),
                                  (3, "sequence", FakeClassifier()), (4, "chat", FakeChat()), (5, "chat", FakeChat())):
        m = served(kind, engine, f"v{version}")
        m.version, m.registry = f"reviews-v{version}", ("reviews" if version < 4 else "bot", f"mv-{version}")
        engines[version] = engine
        service.add(m, listed=False)  # reached through the route only
        service.variant_models[(m.registry[0], version)] = m
    service.routes["reviews"] = Route("ab-1", [("v1", 1, 0.5), ("v2", 2, 0.5)], ("v3", 3))
    service.routes["bot"] = Route("ab-2", [("v4", 4, 1.0)], ("v5", 5))

    async def traffic() -> list[Any]:
        answers = [await service.predict(p.PredictRequest(model="reviews", text="good tea", user=f"u{i}")) for i in range(20)]
        chat = await service.generate(p.ChatCompletionRequest(model="bot", messages=[{"role": "user", "content": "hi"}], user="u1"))
        while service._shadows:  # the shadows run after the answers: wait for them, however slow the host
            await asyncio.gather(*list(service._shadows))
        return [*answers, chat]

    answers = run(traffic())
    versions = [a.model_version for a in answers[:20]]
    assert set(versions) == {"reviews-v1", "reviews-v2"}
    assert run(service.predict(p.PredictRequest(model="reviews", text="x", user="u3"))).model_version == versions[3]
    # the batcher may merge shadow copies queued together into one call: count texts, not calls
    assert [t for call in engines[3].calls for t in call].count("good tea") == 20
    assert all(a.model_version != "reviews-v3" for a in answers[:20])
    assert answers[20].model == "ft:base:v4:abc" and engines[5].calls  # the chat shadow answered too
    service.log.flush()
    with store.session() as s:
        rows = s.query(Prediction).all()
    shadows = [r for r in rows if r.request_id.endswith(":shadow")]
    assert len(shadows) == 21 and {r.variant for r in shadows} == {"shadow:v3", "shadow:v5"}
    assert {r.variant for r in rows if not r.request_id.endswith(":shadow")} == {"v1", "v2", "v4"}
    service.log.close()


def test_a_multi_prompt_request_refused_as_overloaded_leaves_none_of_its_prompts_queued() -> None:
    """The prompts queued before the one refused stayed in the queue: the model answered them for nobody."""
    chat = FakeChat()
    bot = served("chat", chat, "bot")
    service = Service([bot], ServeSpec(batch_wait_ms=0, max_queue=2))

    async def refused() -> Any:
        service.batchers[bot.batch_key].submit((bot.id, ()), ("z", threading.Event()))  # another request, not yet run
        err = await service.generate(p.CompletionRequest(model="bot", prompt=["a", "b"]))
        await asyncio.sleep(0.2)  # the batcher's turn: it would run "a" now
        return err

    err = run(refused())
    assert isinstance(err, ServiceError) and (err.status, err.code) == (503, "overloaded")
    assert [c for c in chat.calls if c[0] != ["z"]] == []


def test_more_prompts_than_the_queue_holds_are_refused_as_too_many_not_overloaded() -> None:
    # A 503 "retry after" on an idle server, for ever: clients that retry on 503 looped.
    service = Service([served("chat", FakeChat(), "bot")], ServeSpec(max_queue=3))
    err = run(service.generate(p.CompletionRequest(model="bot", prompt=["hi"] * 4)))
    assert isinstance(err, ServiceError) and (err.status, err.code, err.param) == (413, "batch_too_large", "prompt")
    assert "4 prompts in one request; the limit is 3" in err.message


def test_streams_decode_together_beyond_the_default_thread_pool() -> None:
    """Each stream holds a thread for its life: on asyncio's default pool (cores + 4) a 2-core host ran 6 at a time."""
    import os

    count = (os.cpu_count() or 1) + 6  # more than the default pool's threads
    started = threading.Barrier(count, timeout=10)

    class Together(FakeChat):
        def stream(self, prompt: str, cancel: threading.Event, **params: Any):
            from tunesmith.inference.generation import Completion

            started.wait()  # every stream is decoding at once, or the barrier breaks
            yield prompt
            yield Completion(prompt, 1, 1, "stop")

    service = Service([served("chat", Together(), "bot")], ServeSpec())

    async def one(i: int) -> str:
        events = service.stream(p.CompletionRequest(model="bot", prompt=f"p{i}", stream=True))
        return "".join([e async for e in events])

    async def all_at_once() -> list[str]:
        return await asyncio.gather(*(one(i) for i in range(count)))

    answers = run(all_at_once())
    assert all(f'"text": "p{i}"' in a and "BrokenBarrierError" not in a for i, a in enumerate(answers)), answers[0]


def test_a_completion_prompt_over_the_context_names_prompt() -> None:
    service = Service([served("chat", FakeChat(), "bot")], ServeSpec())
    err = run(service.generate(p.CompletionRequest(model="bot", prompt="w " * 80)))
    assert isinstance(err, ServiceError) and (err.code, err.param) == ("context_length_exceeded", "prompt")


def test_a_stream_waiting_past_the_timeout_ends_with_an_error_event_and_stops_generating() -> None:
    """The timeout was raised out of the stream: the connection was cut after the last piece, and the client read
    the truncated answer as a whole one."""
    stopped = threading.Event()

    class Stalling(FakeChat):
        def stream(self, prompt: str, cancel: threading.Event, **params: Any):
            yield "first"
            if cancel.wait(10):
                stopped.set()

    service = Service([served("chat", Stalling(), "bot")], ServeSpec(timeout_s=0.2))

    async def collect() -> list[str]:
        events = service.stream(p.ChatCompletionRequest(model="bot", stream=True, messages=[{"role": "user", "content": "yo"}]))
        return [e async for e in events]

    events = run(collect())
    assert json.loads(events[1][6:])["choices"][0]["delta"] == {"content": "first"}
    assert json.loads(events[-2][6:])["error"]["code"] == "timeout" and events[-1] == "data: [DONE]\n\n"
    assert stopped.wait(5)  # generation was cancelled, not left running for nobody


def ab_service(kind: str, engine: Callable[[], Any], name: str) -> tuple[Service, Served]:
    """A service whose registry model `name` has production v1 and a running A/B test between v2 and v3."""
    from tunesmith.monitor.ab import Route

    service = Service([], ServeSpec(batch_wait_ms=0))
    production = served(kind, engine(), "v1")
    production.version, production.registry, production.aliases = f"{name}-v1", (name, "mv-1"), {name}
    service.add(production)
    for version in (2, 3):
        m = served(kind, engine(), f"v{version}")
        m.version, m.registry = f"{name}-v{version}", (name, f"mv-{version}")
        service.add(m, listed=False)
        service.variant_models[(name, version)] = m
    service.routes[name] = Route("ab-1", [("v2", 2, 0.5), ("v3", 3, 0.5)], None)
    return service, production


def test_an_ab_test_applies_when_the_request_names_the_model_by_its_id_or_not_at_all() -> None:
    """With one classifier served, clients leave `model` out (or send its ft: id): the route was looked up under that
    name only, so the whole traffic went to production and the test never got a request."""
    service, production = ab_service("sequence", FakeClassifier, "reviews")

    def version(model: str | None, user: str) -> str:
        return run(service.predict(p.PredictRequest(model=model, text="good", user=user))).model_version

    for model in (None, production.id, "reviews"):
        versions = [version(model, f"u{i}") for i in range(20)]
        assert set(versions) == {"reviews-v2", "reviews-v3"}, model
        assert versions == [version("reviews", f"u{i}") for i in range(20)]  # the same variant per user, however named


def test_a_chat_ab_test_applies_when_the_request_names_the_model_by_its_id() -> None:
    service, production = ab_service("chat", FakeChat, "bot")
    ask = [{"role": "user", "content": "hi"}]
    for model in (production.id, "bot"):
        versions = {run(service.generate(p.ChatCompletionRequest(model=model, messages=ask, user=f"u{i}"))).system_fingerprint
                    for i in range(20)}
        assert versions == {"bot-v2", "bot-v3"}, model


def test_stream_options_take_a_boolean() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="stream_options.include_usage"):  # "yes" was read as true
        p.CompletionRequest(model="bot", prompt="yo", stream=True, stream_options={"include_usage": "yes"})
    assert p.CompletionRequest(model="m", prompt="x", stream_options={"include_usage": True}).stream_options.include_usage


def answered_late(engine: Any, seen: list[Any]) -> Any:
    """A completion from `engine` past a 0.2 s timeout, once the engine's thread noted what it saw (in `seen`)."""
    service = Service([served("chat", engine, "bot")], ServeSpec(timeout_s=0.2))

    async def late() -> Any:
        err = await service.generate(p.CompletionRequest(model="bot", prompt="hi"))
        for _ in range(50):  # the engine's thread learns of it
            if seen:
                break
            await asyncio.sleep(0.1)
        return err

    return run(late())


def test_a_whole_answer_the_server_stopped_waiting_for_stops_decoding() -> None:
    """A non-streamed request past --timeout got its 504 while llama.cpp or CTranslate2 decoded on to max_tokens for
    no one, holding a row (under overload, every late request made the next one later)."""
    seen: list[bool] = []

    class Together(FakeChat):  # an engine that decodes concurrent calls together
        concurrent_calls = 4

        def generate(self, prompts: list[str], cancels: list[threading.Event] | None = None, **params: Any) -> list[Any]:
            cancel = cancels[0] if cancels else None
            assert cancel is not None
            seen.append(cancel.wait(10))  # decoding until told to stop
            return super().generate(prompts, **params)

    err = answered_late(Together(), seen)
    assert isinstance(err, ServiceError) and err.status == 504 and seen == [True]


def test_rows_of_a_batch_the_server_stopped_waiting_for_stop_decoding() -> None:
    """transformers decodes a batch of requests as one call: each row gets its request's event, so a request past
    --timeout stops its own row, not the others'."""
    seen: list[list[bool]] = []

    class Rows(FakeChat):  # one call at a time, rows ending on their own (ChatModelEngine)
        def generate(self, prompts: list[str], cancels: list[threading.Event] | None = None, **params: Any) -> list[Any]:
            assert cancels is not None and len(cancels) == len(prompts)
            cancels[0].wait(10)  # decoding until told to stop
            seen.append([c.is_set() for c in cancels])
            return super().generate(prompts, **params)

    err = answered_late(Rows(), seen)
    assert isinstance(err, ServiceError) and err.status == 504 and seen == [[True]]


def test_the_variants_of_an_ended_test_are_let_go() -> None:
    """Each A/B variant's model stayed loaded after its test stopped: a server that ran a few tests held them all."""
    service, production = ab_service("sequence", FakeClassifier, "reviews")
    variant_keys = {m.batch_key for m in service.variant_models.values()}

    class Ended:  # the store's view: no test running on the model any more
        def running(self, name: str) -> None:
            return None

    service.ab, service.followed = Ended(), ["reviews"]

    async def follow() -> None:
        await service.follow_tests(asyncio.get_running_loop())

    run(follow())
    assert service.variant_models == {} and "reviews" not in service.routes
    assert not variant_keys & set(service.by_key) and production.batch_key in service.by_key
    assert run(service.predict(p.PredictRequest(model="reviews", text="good"))).model_version == "reviews-v1"


def test_a_chat_template_that_refuses_the_messages_answers_400_naming_messages() -> None:
    from jinja2 import TemplateError

    class StrictChat(FakeChat):  # as Mistral's template: raise_exception on a system turn
        def prompt_text(self, conversation: list[dict[str, str]]) -> str:
            if conversation[0]["role"] == "system":
                raise TemplateError("Conversation roles must alternate user/assistant/user/assistant/...")
            return super().prompt_text(conversation)

    service = Service([served("chat", StrictChat(), "bot")], ServeSpec())
    messages = [{"role": "system", "content": "be nice"}, {"role": "user", "content": "hi"}]
    for stream in (False, True):
        req = p.ChatCompletionRequest(model="bot", messages=messages, stream=stream)
        err = service.stream(req) if stream else run(service.generate(req))
        assert isinstance(err, ServiceError) and err.status == 400 and err.param == "messages"
        assert "must alternate" in err.message


@pytest.mark.parametrize("fields, param", [({"logprobs": True, "top_logprobs": 2}, "logprobs"),
                                           ({"response_format": {"type": "json_object"}}, "response_format"),
                                           ({"presence_penalty": 0.5}, "presence_penalty"),
                                           ({"logit_bias": {"42": -100}}, "logit_bias"),
                                           # answered 200 as if never asked: function calling by its older names,
                                           # a forced tool choice, audio answers
                                           ({"functions": [{"name": "weather"}], "function_call": {"name": "weather"}},
                                            "functions"),
                                           ({"tool_choice": "required"}, "tool_choice"),
                                           ({"modalities": ["text", "audio"], "audio": {"voice": "alloy"}}, "modalities")])
def test_chat_fields_that_would_change_the_answer_unseen_are_refused_by_name(fields: dict, param: str) -> None:
    chat = FakeChat()
    service = Service([served("chat", chat, "bot")], ServeSpec())
    messages = [{"role": "user", "content": "hi"}]
    err = run(service.generate(p.ChatCompletionRequest(model="bot", messages=messages, **fields)))
    assert isinstance(err, ServiceError) and err.status == 400 and err.param == param and not chat.calls
    # what clients send as "not asked for" still answers
    fine = {"logprobs": False, "top_logprobs": None, "response_format": {"type": "text"}, "presence_penalty": 0,
            "frequency_penalty": 0.0, "logit_bias": {}, "stream": None, "tool_choice": "none", "functions": [],
            "modalities": ["text"]}
    assert isinstance(run(service.generate(p.ChatCompletionRequest(model="bot", messages=messages, **fine))), p.ChatCompletion)


@pytest.mark.parametrize("fields, param", [({"echo": True}, "echo"), ({"logprobs": 0}, "logprobs"),
                                           ({"best_of": 3}, "best_of"), ({"suffix": "end"}, "suffix")])
def test_completion_fields_not_supported_are_refused_by_name(fields: dict, param: str) -> None:
    service = Service([served("chat", FakeChat(), "bot")], ServeSpec())
    err = run(service.generate(p.CompletionRequest(model="bot", prompt="a", **fields)))
    assert isinstance(err, ServiceError) and err.param == param
    assert isinstance(run(service.generate(p.CompletionRequest(model="bot", prompt="a", echo=False, best_of=1))),
                      p.Completion)


def test_content_parts_other_than_text_are_refused_not_dropped() -> None:
    """An image-only question was answered as an empty message; a part's non-string text failed with a bare 500."""
    from pydantic import ValidationError

    for part, says in [({"type": "image_url", "image_url": {"url": "https://x/y.png"}}, "type 'image_url'"),
                       ({"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}, "type 'input_audio'"),
                       ({"type": "text", "text": 5}, "'text' must be a string, not int"),
                       ({"type": "text", "text": None}, "not NoneType")]:
        with pytest.raises(ValidationError) as err:
            p.ChatMessage(role="user", content=[{"type": "text", "text": "look:"}, part])
        assert err.value.errors()[0]["loc"] == ("content",) and "part 1" in str(err.value) and says in str(err.value)
    assert p.ChatMessage(role="user", content=[{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]).text() == "ab"


def test_a_completion_without_max_tokens_takes_the_server_s_cap_when_it_is_under_16() -> None:
    """OpenAI's default of 16 was refused as over a --max-tokens 8 server's limit, naming a field never sent."""
    chat = FakeChat()
    service = Service([served("chat", chat, "bot")], ServeSpec(max_tokens=8))
    assert isinstance(run(service.generate(p.CompletionRequest(model="bot", prompt="hello"))), p.Completion)
    assert chat.calls[-1][1]["max_new_tokens"] == 8


def test_a_limit_error_names_the_field_the_client_sent() -> None:
    service = Service([served("chat", FakeChat(), "bot")], ServeSpec(max_tokens=20))
    err = run(service.generate(p.ChatCompletionRequest(model="bot", messages=[{"role": "user", "content": "hi"}],
                                                       max_completion_tokens=1000)))
    assert err.param == "max_completion_tokens" and err.message.startswith("max_completion_tokens 1000")


def test_two_runs_of_one_name_are_told_apart_by_id_not_by_which_loaded_first() -> None:
    first, second = served("chat", FakeChat(), "bot"), served("chat", FakeChat(), "bot")
    second.id = second.batch_key = "ft:base:bot:def"
    service = Service([first, second], ServeSpec())
    err = service.find("bot", "chat")
    assert isinstance(err, ServiceError) and err.code == "ambiguous_model" and "ft:base:bot:def" in err.message
    assert service.find("ft:base:bot:def", "chat") is second and service.find("ft:base:bot:abc", "chat") is first
    # the same run loaded twice (a run and the registry production it is) is one model
    again = served("chat", FakeChat(), "bot")
    assert Service([first, again], ServeSpec()).find("bot", "chat") is first


def test_a_stream_on_an_idle_model_does_not_wait_for_another_model_s_streams() -> None:
    """Streams are admitted per model, but all ran on one pool of max_queue threads: model b's stream waited until
    model a's ended."""
    b_decoding = threading.Event()
    saw_b: list[bool] = []

    class Holding(FakeChat):  # model a's streams hold their threads until b has decoded (or 5 s went by)
        def stream(self, prompt: str, cancel: threading.Event, **params: Any):
            from tunesmith.inference.generation import Completion

            saw_b.append(b_decoding.wait(timeout=5))
            yield prompt
            yield Completion(prompt, 1, 1, "stop")

    class Quick(FakeChat):
        def stream(self, prompt: str, cancel: threading.Event, **params: Any):
            b_decoding.set()
            yield from super().stream(prompt, cancel, **params)

    service = Service([served("chat", Holding(), "a"), served("chat", Quick(), "b")], ServeSpec(max_queue=2))

    async def one(model: str) -> str:
        events = service.stream(p.CompletionRequest(model=model, prompt="hi", stream=True))
        return "".join([e async for e in events])

    async def together() -> list[str]:
        held = [asyncio.create_task(one("a")) for _ in range(2)]
        await asyncio.sleep(0.2)  # a's two streams have their threads
        return await asyncio.gather(one("b"), *held)

    run(together())
    assert saw_b == [True, True]


class Closing(FakeChat):
    """A chat engine that holds a model until closed and decodes concurrent calls together (llama.cpp's, CTranslate2's)."""

    concurrent_calls = 4

    def __init__(self) -> None:
        super().__init__()
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_a_swapped_out_model_is_let_go_once_idle_and_its_engine_closed() -> None:
    """A llama.cpp or CTranslate2 model swapped out stayed loaded for good (its decoding thread held it), and its
    batcher's and streams' thread pools stayed too: each promotion added one model's memory."""
    old, new = served("chat", Closing(), "v1"), served("chat", Closing(), "v2")
    service = Service([old], ServeSpec(batch_wait_ms=0))
    key = old.batch_key
    pools = [service.batchers[key].executor, service.stream_threads[key]]

    async def swap() -> None:
        events = service.stream(p.CompletionRequest(model="v1", prompt="hi", stream=True))
        stream = aiter(events)
        await anext(stream)  # a stream open on the old model: it is kept until the stream ends
        service.add(new, replacing=old)
        service._retire()
        assert key in service.by_key and not old.engine.closed
        _ = [e async for e in stream]
        service._retire()

    run(swap())
    assert old.engine.closed and not new.engine.closed
    assert key not in service.by_key and key not in service.batchers and key not in service.stream_threads
    assert all(pool._shutdown for pool in pools)  # the batcher's own pool of decoding threads, the streams' pool
    assert run(service.generate(p.CompletionRequest(model="v2", prompt="hi"))).choices[0].text == "echo hi"


def test_two_models_of_one_id_each_answer_their_own_requests() -> None:
    """Two exports of one run (onnx, onnx-int8) had one id and one batch key: the model added last took over the
    other's batcher, so a request in flight at a promotion was answered by the new version under the old one's name,
    and an A/B test between them compared one engine with itself."""
    class Labelled(FakeClassifier):
        def __init__(self, label: str) -> None:
            super().__init__()
            self.label = label

        def predict(self, texts: list[str]) -> list[dict[str, Any]]:
            self.calls.append(list(texts))
            return [{"label": self.label, "probabilities": {self.label: 1.0}} for _ in texts]

    old, new = served("sequence", Labelled("old"), "clf"), served("sequence", Labelled("new"), "clf")
    old.version, new.version = "clf-v1", "clf-v2"
    service = Service([old], ServeSpec(batch_wait_ms=20))

    async def swap() -> tuple[Any, Any]:
        in_flight = asyncio.create_task(service.predict(p.PredictRequest(text="x")))
        await asyncio.sleep(0)  # queued in the batcher's window
        service.add(new, replacing=old)
        service._retire()
        return await in_flight, await service.predict(p.PredictRequest(text="x"))

    before, after = run(swap())
    assert (before.model_version, before.predictions[0].label) == ("clf-v1", "old")
    assert (after.model_version, after.predictions[0].label) == ("clf-v2", "new")

    # chat: an A/B test between two versions of one id answers each variant from its own engine
    from tunesmith.monitor.ab import Route

    service = Service([], ServeSpec(batch_wait_ms=0))
    for version in (1, 2):
        m = served("chat", FakeChat(), "same")
        m.version, m.registry = f"bot-v{version}", ("bot", f"mv-{version}")
        service.add(m, listed=False)
        service.variant_models[("bot", version)] = m
    service.routes["bot"] = Route("ab-1", [("v1", 1, 0.5), ("v2", 2, 0.5)], None)
    ask = [{"role": "user", "content": "hi"}]
    answered = {1: 0, 2: 0}
    for i in range(20):
        answer = run(service.generate(p.ChatCompletionRequest(model="bot", messages=ask, user=f"u{i}")))
        answered[int(answer.system_fingerprint.removeprefix("bot-v"))] += 1
    assert all(answered.values())
    assert {v: len(m.engine.calls) for (_, v), m in service.variant_models.items()} == answered


def test_an_ab_test_including_production_serves_production_s_own_model() -> None:
    """Each variant was loaded afresh: production's version was loaded twice, and the copy kept after the test."""
    from types import SimpleNamespace

    from tunesmith.monitor.ab import Route

    loaded: list[str] = []

    class Loader:
        def load(self, path: str) -> Served:
            loaded.append(path)
            return served("chat", Closing(), path)

    class Registry:
        def version(self, name: str, version: int) -> Any:
            return SimpleNamespace(run=f"v{version}", id=f"mv-{version}")

    class Tests:
        route: Route | None = Route("ab-1", [("v1", 1, 0.5), ("v2", 2, 0.5)], None)

        def running(self, name: str) -> Route | None:
            return self.route

    tests = Tests()
    service = Service([], ServeSpec(batch_wait_ms=0), loader=Loader(), registry=Registry(), followed=["bot"], ab=tests)
    production = served("chat", Closing(), "v1")
    production.version, production.registry, production.aliases = "bot-v1", ("bot", "mv-1"), {"bot"}
    service.add(production)

    async def follow() -> None:
        await service.follow_tests(asyncio.get_running_loop())

    run(follow())
    assert loaded == ["v2"] and service.variant_models[("bot", 1)] is production
    tests.route = None
    run(follow())
    assert service.variant_models == {} and list(service.by_key.values()) == [production]
    assert not production.engine.closed


def test_serving_a_name_not_in_the_registry_says_so(tmp_path: Any) -> None:
    """It said the model had no version in production and to promote one: promoting then said there was no such model."""
    from tunesmith.errors import NotFound
    from tunesmith.registry.service import Registry
    from tunesmith.store.db import Store

    service = Service([], ServeSpec(), registry=Registry(Store(f"sqlite:///{tmp_path / 's.db'}")))
    with pytest.raises(NotFound, match=r"no model 'reviewz' in the registry \(registered: none\)"):
        service.load_production("reviewz")


def chat_request(model: str = "bot", **fields: Any) -> p.ChatCompletionRequest:
    return p.ChatCompletionRequest(model=model, messages=[{"role": "user", "content": "hi"}], **fields)


def test_streams_take_their_place_when_admitted_so_a_burst_gets_503_at_once() -> None:
    """A stream was counted once its events began: a burst of streams all passed the --max-queue check (200s), and the
    extra ones waited and timed out mid-stream, where the README promises a 503 with Retry-After at once."""
    service = Service([served("chat", FakeChat(), "bot")], ServeSpec(max_queue=2))
    key = service.by_key[next(iter(service.by_key))].batch_key

    async def burst() -> None:
        answers = [service.stream(chat_request(stream=True)) for _ in range(4)]  # none iterated yet
        assert [isinstance(a, ServiceError) and a.status for a in answers] == [False, False, 503, 503]
        assert answers[2].headers["Retry-After"] and service.streams[key] == 2
        await answers[0].aclose()  # a response never sent (the client gone first): its place is given back
        assert service.streams[key] == 1
        rest = [e async for e in answers[1]]
        assert rest[-1] == "data: [DONE]\n\n" and service.streams[key] == 0
        again = service.stream(chat_request(stream=True))
        assert not isinstance(again, ServiceError) and service.streams[key] == 1
        del again  # dropped unstarted (no aclose): collected, it gives its place back too
        assert service.streams[key] == 0 and service.busy == {}

    run(burst())


def test_a_stream_admitted_but_not_begun_keeps_its_model_through_a_swap() -> None:
    """The swap found no open stream on the old model (counted only once it began) and closed its engine under the
    stream, whose client got 'model was closed'; its zero stayed in /admin/status after the model went."""
    old, new = served("chat", Closing(), "v1"), served("chat", Closing(), "v2")
    service = Service([old], ServeSpec(batch_wait_ms=0))

    async def swap() -> list[str]:
        events = service.stream(p.CompletionRequest(model="v1", prompt="hi", stream=True))
        service.add(new, replacing=old)
        service._retire()
        assert not old.engine.closed and old.batch_key in service.by_key
        answer = [e async for e in events]
        service._retire()
        return answer

    answer = run(swap())
    assert json.loads(answer[1][6:])["choices"][0]["text"] == " " and answer[-1] == "data: [DONE]\n\n"
    assert old.engine.closed and service.streams == {}  # what /admin/status shows


def test_only_a_client_leaving_counts_as_a_stream_disconnect() -> None:
    """A stream ended by the server's --timeout was counted in tunesmith_stream_disconnects_total too."""
    class Stalling(FakeChat):
        def stream(self, prompt: str, cancel: threading.Event, **params: Any):
            yield "first"
            cancel.wait(10)

    service = Service([served("chat", Stalling(), "bot")], ServeSpec(timeout_s=0.2))
    disconnects = service.metrics.stream_disconnects.labels("ft:base:bot:abc")

    async def timed_out() -> None:
        _ = [e async for e in service.stream(chat_request(stream=True))]

    async def left() -> None:
        events = service.stream(chat_request(stream=True))
        await anext(events)
        await events.aclose()  # the client hung up mid-stream

    run(timed_out())
    assert disconnects._value.get() == 0
    run(left())
    assert disconnects._value.get() == 1


def test_a_whole_answer_whose_client_left_stops_decoding_and_frees_its_place() -> None:
    """Cancelled (the HTTP layer's doing when the client hangs up), a non-streamed request decoded on to max_tokens
    and its queued prompts kept their places."""
    decoding, seen = threading.Event(), []

    class Slow(FakeChat):
        def generate(self, prompts: list[str], cancels: list[threading.Event] | None = None, **params: Any) -> list[Any]:
            decoding.set()
            assert cancels is not None
            seen.append(cancels[0].wait(10))  # decoding until told to stop
            return super().generate(prompts, **params)

    service = Service([served("chat", Slow(), "bot")], ServeSpec(batch_wait_ms=0, max_batch_size=1, max_queue=2))
    batcher = service.batchers[next(iter(service.batchers))]

    async def hang_up() -> None:
        first = asyncio.create_task(service.generate(chat_request()))
        queued = asyncio.create_task(service.generate(chat_request(temperature=0.5)))  # waits behind the first
        await asyncio.get_running_loop().run_in_executor(None, decoding.wait, 5)
        assert batcher.depth == 1
        first.cancel()
        queued.cancel()
        for task in (first, queued):
            with pytest.raises(asyncio.CancelledError):
                await task
        assert batcher.depth == 0
        while batcher.in_flight:  # the engine returns once told to stop
            await asyncio.sleep(0.01)

    run(hang_up())
    assert seen == [True]


class Adapter(FakeChat):
    """A chat adapter inside a PEFT base shared with other runs' (transformers' ChatModelEngine)."""

    def __init__(self, name: str, base: Any, lock: threading.Lock) -> None:
        super().__init__()
        self.adapter, self.lock = name, lock
        self.chat = type("Chat", (), {"model": base})()
        base.peft_config[name] = {}


class SharedBase:
    def __init__(self) -> None:
        self.peft_config: dict[str, Any] = {}

    def delete_adapter(self, name: str) -> None:
        del self.peft_config[name]


def test_a_swapped_out_adapter_leaves_the_shared_base_once_its_requests_are_done() -> None:
    """Each promotion or rollback of a LoRA model on --chat-engine transformers loaded one more adapter into the
    shared base and none left: 11 adapters held after 10 swaps. A swap with no A/B tests let go of a model busy at the
    swap only at the next swap (follow_tests returned before _retire)."""
    base, lock = SharedBase(), threading.Lock()
    first = served("chat", Adapter("a1", base, lock), "v1")
    service = Service([first], ServeSpec(batch_wait_ms=0), followed=["bot"])
    for n in range(2, 6):  # promotions and rollbacks, as follow_registry swaps them
        fresh = served("chat", Adapter(f"a{n}", base, lock), f"v{n}")
        service.add(fresh, replacing=service.models[0])
        service._retire()
    assert list(base.peft_config) == ["a5"] and len(service.by_key) == 1  # one base, one batcher

    async def busy_at_swap() -> None:
        current = service.models[0]
        events = service.stream(p.CompletionRequest(model="v5", prompt="hi", stream=True))  # admitted on a5
        service.add(served("chat", Adapter("a6", base, lock), "v6"), replacing=current)
        await service.follow_tests(asyncio.get_running_loop())
        assert list(base.peft_config) == ["a5", "a6"]  # a5's stream is still open
        _ = [e async for e in events]
        await service.follow_tests(asyncio.get_running_loop())  # the next poll, no swap, no A/B tests

    run(busy_at_swap())
    assert list(base.peft_config) == ["a6"] and service.adapters == service.models
    assert run(service.generate(chat_request("v6"))).choices[0].message.content == "echo hi"


def test_top_p_zero_is_greedy_and_stream_options_need_a_stream() -> None:
    """top_p 0 (OpenAI's smallest nucleus) was a 400; stream_options on an answer that is no stream was ignored."""
    engine = FakeChat()
    service = Service([served("chat", engine, "bot")], ServeSpec(batch_wait_ms=0))
    run(service.generate(chat_request(top_p=0, temperature=0.9)))
    assert (engine.calls[-1][1]["temperature"], engine.calls[-1][1]["top_p"]) == (0.0, 1.0)
    for req in (chat_request(stream_options={"include_usage": True}),
                p.CompletionRequest(model="bot", prompt="hi", stream=False, stream_options={"include_usage": False})):
        err = run(service.generate(req))
        assert isinstance(err, ServiceError) and err.status == 400 and err.param == "stream_options"
    assert not isinstance(run(service.generate(chat_request(stream_options=None))), ServiceError)


def test_assistant_tool_calls_in_the_history_are_refused_by_name() -> None:
    """They were dropped: the model answered a history other than the one sent."""
    from pydantic import ValidationError

    call = {"id": "1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    with pytest.raises(ValidationError, match=r"messages\.1\.tool_calls"):
        p.ChatCompletionRequest(model="bot", messages=[{"role": "user", "content": "x"},
                                                       {"role": "assistant", "content": None, "tool_calls": [call]}])
    for absent in (None, []):
        p.ChatCompletionRequest(model="bot", messages=[{"role": "assistant", "content": "x", "tool_calls": absent}])
    with pytest.raises(ValidationError, match=r"messages\.0\.function_call"):  # the older form, dropped as well
        p.ChatCompletionRequest(model="bot", messages=[{"role": "assistant", "content": None,
                                                        "function_call": {"name": "f", "arguments": "{}"}}])
    p.ChatCompletionRequest(model="bot", messages=[{"role": "assistant", "content": "x", "function_call": None}])


class CleaningClassifier(FakeClassifier):
    """A fake engine whose Predictor cleans texts as a text run's does (markup stripped, blanks collapsed)."""

    def __init__(self) -> None:
        from tunesmith.config import CleanSpec
        from tunesmith.tasks.text import TextCleaner

        super().__init__()
        self.predictor = type("Cleans", (), {"clean": TextCleaner(CleanSpec(strip_html=True))})()


@pytest.mark.parametrize(("req", "param"), [
    (p.PredictRequest(text="<br /><br />"), "text"),
    (p.PredictRequest(text="&nbsp;"), "text"),
    (p.PredictRequest(text="\u200b\u200d"), "text"),
    (p.PredictRequest(text="\u0000"), "text"),
    (p.PredictRequest(text="\u202e\u202c"), "text"),
    (p.PredictRequest(texts=["good", "<p> &nbsp; </p>"]), "texts.1"),
])
def test_a_text_empty_once_cleaned_as_the_model_reads_it_is_refused_as_empty(req: p.PredictRequest, param: str) -> None:
    """Checked raw, a text of markup or invisible characters passed: the model answered no input, with a confident
    probability."""
    engine = CleaningClassifier()
    service = Service([served("sequence", engine, "clf")], ServeSpec(batch_wait_ms=0))
    err = run(service.predict(req))
    assert isinstance(err, ServiceError) and (err.status, err.param) == (400, param) and err.code is None
    assert err.message.startswith(f"{param} is empty once cleaned") and engine.calls == []
    answered = run(service.predict(p.PredictRequest(text="<b>good</b> &amp; \u200bfresh")))  # text besides the markup
    assert answered.predictions[0].label == "pos"


def test_an_x_request_id_used_on_one_replica_is_refused_on_the_other(store_url: str) -> None:
    """Two replicas on one store: the second answered a reused X-Request-ID with a 200 under that id, logged it under a
    random one, and feedback on the id bound to the first replica's text. Refused now, even right after the first."""
    from tunesmith.monitor.log import PredictionLog
    from tunesmith.store.db import Store
    from tunesmith.store.schema import Prediction

    store = Store(store_url)
    logs = [PredictionLog(store), PredictionLog(store)]
    a, b = (Service([served("sequence", FakeClassifier(), "clf")], ServeSpec(batch_wait_ms=0), log=log) for log in logs)
    first = run(a.predict(p.PredictRequest(text="good tea"), "client-1", client_id=True))
    again = run(b.predict(p.PredictRequest(text="stale coffee"), "client-1", client_id=True))
    made = [run(s.predict(p.PredictRequest(text="good"), None)) for s in (a, b)]  # the server's own ids: queued
    for log in logs:
        log.close()
    with store.session() as s:
        rows = {r.request_id: r.inputs for r in s.query(Prediction).all()}
    store.close()
    assert isinstance(first, p.PredictResponse) and first.id == "client-1"
    assert isinstance(again, ServiceError) and (again.status, again.param, again.code) == (409, "X-Request-ID", "request_id_reused")
    assert all(isinstance(m, p.PredictResponse) for m in made)
    assert rows.pop("client-1") == ["good tea"] and sorted(rows.values()) == [["good"], ["good"]]
