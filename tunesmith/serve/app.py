"""The HTTP layer: thin FastAPI routers over the Service, auth, limits, errors in OpenAI's shape."""

from __future__ import annotations

import asyncio
import hmac
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from tunesmith import __version__
from tunesmith.config import ServeSpec
from tunesmith.errors import ConfigError, NotFound
from tunesmith.jobs.service import owner_of
from tunesmith.monitor.ab import ABService
from tunesmith.monitor.feedback import FeedbackCreated, FeedbackRequest
from tunesmith.monitor.log import MAX_CLIENT_REQUEST_ID
from tunesmith.registry.service import Registry
from tunesmith.serve import protocol as p
from tunesmith.serve.service import Service, ServiceError

FASTAPI_BODY_ERROR = "There was an error parsing the body"  # FastAPI's detail when its JSON parser raised
MODEL_ENDPOINTS = ("/v1/",)
_UNION_BRANCH = re.compile(r"[\[\]()'\-]")  # literal['a'], function-after[...], constrained-int
_TYPE_TAGS = {"int", "str", "float", "bool", "list", "dict", "none"}


def _error(err: ServiceError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def _key_matches(given: str, keys: list[str]) -> bool:
    return any(hmac.compare_digest(given.encode(), k.encode()) for k in keys)


def _endpoint(app: FastAPI, request: Request) -> str:
    """The metrics label of a request: its route's template (`/v1/models/{model_id:path}`), never the path itself, or
    every model id, file id and URL a client (even one without a key) makes up would add series to /metrics for good."""
    route = request.scope.get("route")
    if route is None:  # answered before routing (413 on the body's size), or no route matched (404)
        route = next((r for r in app.router.routes if r.matches(request.scope)[0] != Match.NONE), None)
    return getattr(route, "path", None) or "unmatched"


def create_app(service: Service, spec: ServeSpec, ready: Callable[[], bool] = lambda: True) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        tasks = [asyncio.create_task(service.follow_registry(spec.registry_poll_s))] if service.followed else []
        if service.log is not None:
            tasks.append(asyncio.create_task(service.keep_log(spec.log_retention_days)))
            tasks.append(asyncio.create_task(service.watch_drift(spec.drift_every_s)))
        yield
        for task in tasks:
            task.cancel()
        if service.log is not None:
            service.log.close()  # what was answered is on record before the server exits

    app = FastAPI(title="tunesmith", version=__version__, lifespan=lifespan,
                  description="Fine-tuned models from tunesmith run folders: /v1/predict for classifiers and "
                              "regressors, OpenAI-compatible /v1/chat/completions, /v1/completions and /v1/models.")
    metrics = service.metrics

    if spec.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        # Any request header: OpenAI's own clients send their x-stainless-* headers with every request. DELETE: files
        # and fine-tuned models. Exposed: the request id to quote and how long to wait after a 503.
        app.add_middleware(CORSMiddleware, allow_origins=spec.cors_origins, allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["*"], expose_headers=["X-Request-ID", "Retry-After"])

    # An upload is refused by its Content-Length (or as a chunked one passes it), not after the whole body has been
    # read and spooled: the file's limit plus room for the multipart envelope and the form's other fields.
    upload_limit = (service.jobs.spec.max_file_bytes if service.jobs is not None else spec.max_body_bytes) + 64 * 1024

    @app.middleware("http")
    async def limits_and_metrics(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        endpoint = request.url.path
        length = request.headers.get("content-length")
        upload = endpoint == "/v1/files" and request.method == "POST"  # limited by --max-file-mb
        limit = upload_limit if upload else spec.max_body_bytes
        if length and length.isdigit() and int(length) > limit:
            response: Response = _error(_too_large(f"request body of {length} bytes", limit))
        else:
            response = await call_next(request)
        if endpoint.startswith(MODEL_ENDPOINTS) or endpoint.startswith("/admin"):
            endpoint = _endpoint(app, request)
            metrics.requests.labels(endpoint, str(response.status_code)).inc()
            metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
            if response.status_code >= 400:
                metrics.errors.labels(endpoint, str(response.status_code)).inc()
        return response

    # Added last: outside the middleware above, so a body found too large while it is read is answered here.
    app.add_middleware(_ChunkedBodyLimit, limit=spec.max_body_bytes, upload_limit=upload_limit,
                       on_refused=lambda scope: metrics.requests.labels(_endpoint(app, Request(scope)), "413").inc())

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        # Inside a union pydantic adds the branch it tried (`literal['up','down']`, `int`): not the client's field.
        loc = [str(x) for x in first.get("loc", ()) if x != "body" and not _UNION_BRANCH.search(str(x))
               and str(x) not in _TYPE_TAGS]
        if first.get("type") == "json_invalid":
            at = next((x for x in first.get("loc", ()) if isinstance(x, int)), None)  # the character the parser stopped at
            where = f" (character {at} of the body)" if at is not None else ""
            return _error(ServiceError(400, f"the request body is not valid JSON: {first.get('ctx', {}).get('error', '')}".strip()
                                       + where, code="invalid_json"))
        param = ".".join(loc) or None
        return _error(ServiceError(400, f"{param or 'body'}: {first.get('msg')}", param=param, code="invalid_value"))

    @app.exception_handler(Exception)
    async def failed(request: Request, exc: Exception) -> JSONResponse:
        """A bug, not the client's: OpenAI's shape and counted, where it was Starlette's text/plain 500 and missing from
        /metrics. Starlette answers with this outside every middleware, then raises the error on for the server log."""
        if request.url.path.startswith(MODEL_ENDPOINTS) or request.url.path.startswith("/admin"):
            endpoint = _endpoint(app, request)
            metrics.requests.labels(endpoint, "500").inc()
            metrics.errors.labels(endpoint, "500").inc()
        return _error(ServiceError(500, f"the server failed on this request ({type(exc).__name__}; its log has the "
                                        "details)", "server_error"))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        if exc.status_code == 400 and exc.detail == FASTAPI_BODY_ERROR:  # its parser raised, e.g. RecursionError
            return _error(ServiceError(400, "the request body could not be read as JSON (nested too deeply?); send "
                                            "one JSON object as the endpoint's schema shows", code="invalid_json"))
        return _error(ServiceError(exc.status_code, str(exc.detail), kind))

    def bearer(request: Request) -> str | None:
        header = request.headers.get("authorization", "")
        # spaces and tabs only: str.strip() took "\xa0" and "\x85" too, leaving "" to compare with the keys
        return header[7:].strip(" \t") if header.lower().startswith("bearer ") else None

    async def model_auth(request: Request) -> str:
        """The caller's owner id (a hash of its key; "" on an open server): files, jobs and ft: models are per key."""
        if not spec.api_keys:
            return ""
        key = bearer(request)
        if key is None or not _key_matches(key, spec.api_keys):
            raise _Refused(ServiceError(401, "Incorrect or missing API key; send 'Authorization: Bearer <key>'",
                                          "authentication_error", code="invalid_api_key"))
        return owner_of(key)

    async def admin_auth(request: Request) -> None:
        if not spec.admin_key:
            raise _Refused(ServiceError(403, "admin endpoints are off; start the server with --admin-key",
                                          "permission_error", code="admin_disabled"))
        key = bearer(request)
        if key is None or not _key_matches(key, [spec.admin_key]):
            raise _Refused(ServiceError(401, "Incorrect or missing admin key", "authentication_error",
                                          code="invalid_api_key"))

    @app.exception_handler(_Refused)
    async def auth_failed(request: Request, exc: _Refused) -> JSONResponse:
        return _error(exc.error)

    def request_id(request: Request) -> str:
        given = request.headers.get("x-request-id")
        if not given:
            return f"req-{uuid.uuid4().hex[:24]}"
        if len(given) > MAX_CLIENT_REQUEST_ID or not given.isprintable() or not given.isascii():
            # the prediction log's key: a longer one failed its row (and its batch) on PostgreSQL
            raise _Refused(ServiceError(400, f"X-Request-ID must be at most {MAX_CLIENT_REQUEST_ID} printable ASCII characters "
                                             f"(got {len(given)}); leave it out and the server makes one",
                                        param="X-Request-ID", code="invalid_value"))
        return given

    def answer(result: BaseModel | ServiceError, rid: str) -> Response:
        if isinstance(result, ServiceError):
            refused = _error(result)
            refused.headers["X-Request-ID"] = rid  # a failed request is the one a client most wants to trace
            return refused
        return JSONResponse(result.model_dump(), headers={"X-Request-ID": rid})

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"], response_model=p.ReadyStatus,
             responses={503: {"model": p.ReadyStatus, "description": "Still loading"}})
    async def readyz() -> JSONResponse:
        ok = ready()
        # the models every key sees: a fine-tuning job's model is its owner's to know of (/readyz needs no key)
        body = p.ReadyStatus(status="ready" if ok else "loading", models=[m.id for m in service.models if m.owner is None])
        return JSONResponse(body.model_dump(), status_code=200 if ok else 503)

    @app.get("/metrics", tags=["ops"])
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/admin/status", tags=["admin"], dependencies=[Depends(admin_auth)])
    async def status() -> p.AdminStatus:
        return service.status()

    @app.get("/v1/models", tags=["openai"])
    async def list_models(owner: str = Depends(model_auth)) -> p.ModelList:
        return service.list_models(owner)

    @app.get("/v1/models/{model_id:path}", tags=["openai"], response_model=p.ModelCard)
    async def get_model(model_id: str, owner: str = Depends(model_auth)) -> Response:
        # a served model's other names (the run's name, a registry name) answer here as in every request's `model`
        named = service.named(model_id, owner)
        if isinstance(named, ServiceError):
            return _error(named)
        for card in service.list_models(owner).data:
            if card.id == (named.id if named else model_id):  # None: perhaps a fine-tuned model not loaded yet
                return JSONResponse(card.model_dump())
        return _error(ServiceError(404, f"the model '{model_id}' does not exist", param="model", code="model_not_found"))

    @app.post("/v1/predict", tags=["tunesmith"], response_model=p.PredictResponse)
    async def predict(req: p.PredictRequest, request: Request, owner: str = Depends(model_auth)) -> Response:
        rid = request_id(request)
        # a client's id is kept once (a reuse is a 409): feedback names an answer by it
        return answer(await service.predict(req, rid, owner, client_id=bool(request.headers.get("x-request-id"))), rid)

    async def generation(req: p.ChatCompletionRequest | p.CompletionRequest, request: Request, owner: str) -> Response:
        # echoed only: the answer is on record (and named by feedback) under its own completion id, never this one,
        # so a reused X-Request-ID binds no feedback to another request's text and is not checked as /v1/predict's is
        rid = request_id(request)
        await service.ensure_loaded(req.model, owner)  # not raced below: a load is kept for the next request
        if not req.stream:
            return answer(await _unless_gone(request, service.generate(req, owner)), rid)
        events = service.stream(req, owner)
        if isinstance(events, ServiceError):
            return _error(events)
        return _EventStream(events, media_type="text/event-stream", headers={"X-Request-ID": rid, "Cache-Control": "no-cache"})

    # response_model documents the non-streamed answer; a stream is text/event-stream of the *Chunk models.
    @app.post("/v1/chat/completions", tags=["openai"], response_model=p.ChatCompletion)
    async def chat_completions(req: p.ChatCompletionRequest, request: Request, owner: str = Depends(model_auth)) -> Response:
        return await generation(req, request, owner)

    @app.post("/v1/completions", tags=["openai"], response_model=p.Completion)
    async def completions(req: p.CompletionRequest, request: Request, owner: str = Depends(model_auth)) -> Response:
        return await generation(req, request, owner)

    if service.jobs is not None:
        from tunesmith.serve.jobs_api import add_jobs_routes

        add_jobs_routes(app, service, model_auth, _error)
    if service.registry is not None:
        add_registry_routes(app, service.registry, admin_auth, _error)
    if service.ab is not None:
        add_ab_routes(app, service.ab, admin_auth, _error)
    if service.feedback is not None:
        feedback = service.feedback

        @app.post("/v1/feedback", tags=["tunesmith"], status_code=201, response_model=FeedbackCreated)
        async def send_feedback(req: FeedbackRequest, _: str = Depends(model_auth)) -> Response:
            result = await asyncio.get_running_loop().run_in_executor(None, feedback.submit, req)  # committed, then 201
            return _error(result) if isinstance(result, ServiceError) else JSONResponse(result.model_dump(), status_code=201)
    else:
        @app.post("/v1/feedback", tags=["tunesmith"], include_in_schema=False)
        async def no_feedback(_: str = Depends(model_auth)) -> Response:
            # a bare "Not Found" had left the client guessing whether the path or the request id was wrong
            return _error(ServiceError(404, "this server keeps no feedback: it was started without a store; serve with "
                                            "--db URL (or registry models with --model) to log answers and take feedback",
                                       "not_found_error", code="feedback_not_enabled"))
    return app


class Promotion(BaseModel):
    version: int


def add_registry_routes(app: FastAPI, registry: Registry, admin: Callable[[Request], Awaitable[None]],
                        error: Callable[[ServiceError], JSONResponse]) -> None:
    """The registry over HTTP, admin key only: what `tunesmith registry` does, for remote operators."""

    async def run(action: Callable[[], Any]) -> Response:
        # in a thread: a promotion waiting on the store's lock (SQLite's busy timeout, a PostgreSQL row lock) had
        # held the event loop, and every request with it
        try:
            result = await asyncio.to_thread(action)
        except ConfigError as err:
            status = 404 if isinstance(err, NotFound) else 400
            return error(ServiceError(status, str(err), code="registry_error"))
        return JSONResponse(result.model_dump() if isinstance(result, BaseModel) else [r.model_dump() for r in result])

    @app.get("/admin/registry", tags=["admin"], dependencies=[Depends(admin)])
    async def versions(model: str | None = None) -> Response:
        return await run(lambda: registry.versions(model))

    @app.post("/admin/registry/{model}/promote", tags=["admin"], dependencies=[Depends(admin)])
    async def promote(model: str, body: Promotion) -> Response:
        return await run(lambda: registry.promote(model, body.version))

    @app.post("/admin/registry/{model}/rollback", tags=["admin"], dependencies=[Depends(admin)])
    async def rollback(model: str) -> Response:
        return await run(lambda: registry.rollback(model))


async def _unless_gone(request: Request, work: Awaitable[BaseModel | ServiceError]) -> BaseModel | ServiceError:
    """`work`'s answer, raced against the client hanging up: then `work` is cancelled (its queue places freed, its
    decoding stopped) and the answer is a 499 no one reads, counted in /metrics. Awaited alone, a request whose client
    gave up decoded on to max_tokens, holding its place in --max-queue."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_hung_up(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done() and gone.exception() is not None:  # the connection could not be watched: answer anyway
            return await task
    finally:
        gone.cancel()
        if not task.done():  # the client left, or this request was cancelled itself (the server stopping)
            task.cancel()
    await asyncio.wait({task})  # its cancellation handled (not raised here: this request is not the one cancelled)
    if task.cancelled():
        return ServiceError(499, "the client closed the request before its answer", code="client_closed_request")
    return task.result()


async def _hung_up(request: Request) -> None:
    """Returns when the client disconnects: the body is read by now, so what comes next is http.disconnect."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class _EventStream(StreamingResponse):
    """A stream's response that closes its events however it ends: cancelled before its first event (the client gone
    first), their generator was never started, and closing it is what gives its place among --max-queue back."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            close = getattr(self.body_iterator, "aclose", None)
            if close is not None:
                await close()


class _BodyOverLimit(BaseException):
    """Raised by _ChunkedBodyLimit's receive. A BaseException, as asyncio.CancelledError is: FastAPI answers any
    Exception raised while it reads a body with a 400 "error parsing the body", and this must reach the middleware."""


class _ChunkedBodyLimit:
    """A body sent without Content-Length (chunked) counted as it arrives, answered with a 413 in the API's shape
    once past the limit: checked by its Content-Length alone, a chunked 100 MB body was read and parsed whole.
    (FastAPI's own max_body_size answers a plain-text 413, and to every request whose Content-Length is over it.)"""

    def __init__(self, app: Any, limit: int, upload_limit: int, on_refused: Callable[[dict[str, Any]], None]) -> None:
        self.app, self.limit, self.upload_limit, self.on_refused = app, limit, upload_limit, on_refused

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
                       send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        headers = dict(scope.get("headers") or [])
        if scope["type"] != "http" or b"content-length" in headers:
            await self.app(scope, receive, send)
            return
        limit = self.upload_limit if scope.get("path") == "/v1/files" else self.limit
        received, started = 0, False

        async def counted() -> dict[str, Any]:
            nonlocal received
            message = await receive()
            if message.get("type") == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyOverLimit
            return message

        async def sending(message: dict[str, Any]) -> None:
            nonlocal started
            started = started or message.get("type") == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, sending)
        except (_BodyOverLimit, BaseExceptionGroup) as err:
            # A BaseHTTPMiddleware's task group wraps it, beside its own "No response returned": the request is
            # refused either way, unless something else went wrong or an answer already began.
            over = isinstance(err, _BodyOverLimit) or err.subgroup(_BodyOverLimit) is not None
            if started or not over:
                raise
            self.on_refused(scope)
            await _error(_too_large("the request body", limit))(scope, receive, send)


def _too_large(what: str, limit: int) -> ServiceError:
    return ServiceError(413, f"{what} is over the limit of {limit} bytes", code="request_too_large")


class _Refused(Exception):
    """A request refused before its handler runs: no or a wrong key, a bad X-Request-ID."""

    def __init__(self, error: ServiceError) -> None:
        super().__init__(error.message)
        self.error = error


class ABStart(BaseModel):
    model: str
    variants: dict[str, float]  # {"v3": 0.5, "v4": 0.5}
    shadow: str | None = None
    alpha: float = 0.05
    baseline: float = 0.5
    minimum_detectable_effect: float = 0.05
    horizon: int | None = None


class ABStop(BaseModel):
    promote: str | None = None


def add_ab_routes(app: FastAPI, ab: ABService, admin: Callable[[Request], Awaitable[None]],
                  error: Callable[[ServiceError], JSONResponse]) -> None:
    """A/B tests over HTTP, admin key only (as `tunesmith ab start|status|stop`)."""

    async def run(action: Callable[[], BaseModel]) -> Response:
        try:  # in a thread, as the registry's routes
            return JSONResponse((await asyncio.to_thread(action)).model_dump(mode="json"))
        except ConfigError as err:
            return error(ServiceError(404 if isinstance(err, NotFound) else 400, str(err), code="ab_test_error"))

    @app.post("/admin/ab", tags=["admin"], dependencies=[Depends(admin)])
    async def start(body: ABStart) -> Response:
        return await run(lambda: ab.start(body.model, body.variants, shadow=body.shadow, alpha=body.alpha, baseline=body.baseline,
                                    minimum_detectable_effect=body.minimum_detectable_effect, horizon=body.horizon))

    @app.get("/admin/ab/{model}", tags=["admin"], dependencies=[Depends(admin)])
    async def status(model: str) -> Response:
        return await run(lambda: ab.status(model))

    @app.post("/admin/ab/{model}/stop", tags=["admin"], dependencies=[Depends(admin)])
    async def stop(model: str, body: ABStop) -> Response:
        return await run(lambda: ab.stop(model, body.promote))
