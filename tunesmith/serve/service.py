"""The serving logic: find the model, check limits, batch, answer. Returns values or ServiceError,
never touches HTTP, so it is tested with fake engines and the routers stay thin."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import threading
import time
import uuid
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from jinja2 import TemplateError
from pydantic import BaseModel

from tunesmith.artifacts import Run
from tunesmith.config import ServeSpec
from tunesmith.errors import ApiError, ConfigError, TunesmithError
from tunesmith.jobs.service import JobsService
from tunesmith.monitor.ab import ABService, Route
from tunesmith.monitor.feedback import FeedbackService
from tunesmith.monitor.log import SHADOW_SUFFIX, PredictionLog
from tunesmith.registry.service import Registry, VersionInfo
from tunesmith.serve import protocol as p
from tunesmith.serve.batching import DynamicBatcher, Overloaded
from tunesmith.serve.metrics import Metrics
from tunesmith.serve.models import ModelLoader, Served

ServiceError = ApiError  # the serving layer's name for it


def _overloaded(err: Overloaded) -> ServiceError:
    return ServiceError(503, f"the server is busy; retry after {err.retry_after} s", "server_error",
                        code="overloaded", headers={"Retry-After": str(err.retry_after)})


class Service:
    """The served models: run folders given at start, plus (with a jobs service) each owner's
    fine-tuned `ft:` models, loaded on their first request."""

    def __init__(self, models: Sequence[Served], spec: ServeSpec, metrics: Metrics | None = None,
                 loader: ModelLoader | None = None, jobs: JobsService | None = None,
                 registry: Registry | None = None, followed: Sequence[str] = (), log: PredictionLog | None = None,
                 feedback: FeedbackService | None = None, ab: ABService | None = None) -> None:
        self.models: list[Served] = []
        # Models by batch key, kept after a swap until their batchers drain, so a batch already queued still finds its
        # model. A key is one loaded model's (chat adapters over one base share theirs: a chat batch names its model).
        self.by_key: dict[str, Served] = {}
        self._keys = itertools.count(2)  # suffixes that give a second load under a taken key a batcher of its own
        self.spec = spec
        self.metrics = metrics or Metrics()
        self.loader = loader or ModelLoader(spec)
        self.jobs = jobs
        self.registry = registry
        self.followed = list(followed)  # registry model names served as their production version
        self.log = log  # every answered request, for feedback and monitoring (None: not kept)
        self.feedback = feedback
        self.ab = ab
        self.routes: dict[str, Route] = {}  # registry model -> its running A/B test's split
        self._shadows: set[asyncio.Task[None]] = set()  # shadow requests in flight (kept referenced until done)
        self.variant_models: dict[tuple[str, int], Served] = {}  # (registry model, version) -> loaded variant
        # A worker thread per loaded model: batches of one model run in order, models in parallel
        # (room for models a fine-tuning job adds later).
        self.executor = ThreadPoolExecutor(max_workers=max(4, len({m.batch_key for m in models})),
                                           thread_name_prefix="tunesmith-batch")
        self.batchers: dict[str, DynamicBatcher] = {}
        self.streams: dict[str, int] = {}  # streams admitted per batch key, from admission to their end (_Place)
        # Requests and streams in flight per loaded model (by id): a swapped-out adapter over a shared base is deleted
        # from it once its own are done, while the batcher it shares with the live model keeps running.
        self.busy: dict[int, int] = {}
        self.adapters: list[Served] = []  # models whose adapter sits in a shared base (transformers), until let go
        # A thread per open stream, for its whole life: on asyncio's default pool (cores + 4 threads) a 2-core host
        # decoded 6 streams at a time, and the rest waited their turn. A pool per model (batch key), as streams are
        # admitted per model: in one shared pool an idle model's stream waited behind another's (threads are made as
        # streams need them).
        self.stream_threads: dict[str, ThreadPoolExecutor] = {}
        self._loading = asyncio.Lock()
        for m in models:
            self.add(m)

    def add(self, m: Served, replacing: Served | None = None, listed: bool = True) -> None:
        """Serve `m`: its batcher first, then (when `listed`) in the models list, in `replacing`'s place in one
        step, so a request finds either one, never none. Unlisted: an A/B variant, reached through its route."""
        while (other := self.by_key.get(m.batch_key)) is not None and other is not m and not _shares_base(m, other):
            # Another model under this key (two exports of one run had one id; a version loaded beside a copy of itself):
            # a batcher of its own, else the one added last answered both models' requests under the other's name.
            m.batch_key = f"{m.id}#{next(self._keys)}"
        self.by_key[m.batch_key] = m
        if getattr(m.engine, "adapter", None) is not None and all(x is not m for x in self.adapters):
            self.adapters.append(m)
        if m.kind == "chat" and m.batch_key not in self.stream_threads:
            self.stream_threads[m.batch_key] = ThreadPoolExecutor(max_workers=self.spec.max_queue,
                                                                  thread_name_prefix="tunesmith-stream")
        if m.batch_key not in self.batchers:
            # An engine that decodes concurrent calls together (llama.cpp, CTranslate2) gets each request as a call
            # of its own, as it comes: grouped into one call, every answer waited for the group's longest.
            calls = getattr(m.engine, "concurrent_calls", 1) if m.kind != "sequence" else 1
            self.batchers[m.batch_key] = DynamicBatcher(
                self._run_sequence if m.kind == "sequence" else self._run_chat,
                max_batch=self.spec.max_batch_size if calls == 1 else 1, wait_ms=self.spec.batch_wait_ms if calls == 1 else 0,
                max_queue=self.spec.max_queue, executor=self.executor, concurrency=calls,
                on_batch=lambda n, name=m.id: self.metrics.batch_size.labels(name).observe(n))
        self.metrics.queue_depth.labels(m.id).set_function(
            lambda key=m.batch_key: self.batchers[key].depth if key in self.batchers else 0)  # 0: retired meanwhile
        if not listed:
            return
        if replacing is not None and replacing in self.models:
            self.models[self.models.index(replacing)] = m
        else:
            self.models.append(m)

    # -- lookup ------------------------------------------------------------------------------------

    def visible(self, owner: str = "") -> list[Served]:
        return [m for m in self.models if m.owner is None or m.owner == owner]

    def find(self, name: str | None, kind: str, owner: str = "") -> Served | ServiceError:
        models = self.visible(owner)
        of_kind = [m for m in models if m.kind == kind]
        if name is None and not of_kind:
            what = "classification/regression" if kind == "sequence" else "chat"
            return ServiceError(404, f"no {what} model is served here; GET /v1/models lists what is", param="model",
                                code="model_not_found")
        if name is None:
            if len(of_kind) == 1:
                return of_kind[0]
            return ServiceError(400, f"several models are served; name one in 'model' ({[m.id for m in of_kind]})",
                                param="model", code="model_required")
        m = self.named(name, owner)
        if isinstance(m, ServiceError) or m is None:
            return m or ServiceError(404, f"the model '{name}' does not exist; GET /v1/models lists the served ones",
                                     "invalid_request_error", param="model", code="model_not_found")
        if m.kind != kind:
            what = "a chat model; use /v1/chat/completions" if m.kind == "chat" else \
                "a classification/regression model; use /v1/predict"
            return ServiceError(400, f"model '{name}' is {what}", param="model", code="wrong_model_type")
        return m

    def named(self, name: str, owner: str = "") -> Served | ServiceError | None:
        """The served model `name` is the id or another name of (a run's name, its folder, a registry model's name);
        None: no such model. Two runs of one name are told apart by their ids, never by which one loaded first."""
        models = self.visible(owner)
        matched = [m for m in models if m.id == name] or [m for m in models if name in m.aliases]
        ids = sorted({m.id for m in matched})
        if len(ids) > 1:
            return ServiceError(400, f"'{name}' names several served models ({', '.join(ids)}); use one of their ids",
                                param="model", code="ambiguous_model")
        return matched[0] if matched else None

    async def ensure_loaded(self, name: str | None, owner: str = "") -> None:
        """Load an owner's fine-tuned model (or checkpoint) on its first request; the base stays shared."""
        if self.jobs is None or not name or not name.startswith("ft:") or any(m.id == name for m in self.visible(owner)):
            return
        loop = asyncio.get_running_loop()
        path = await loop.run_in_executor(None, self.jobs.resolve_model, owner, name)
        if path is None:
            return  # find() answers 404
        async with self._loading:  # one load at a time: two first requests must not load it twice
            if not any(m.id == name and m.owner == owner for m in self.models):
                self.add(await loop.run_in_executor(None, self.loader.load, path, name, owner))

    # -- the registry: serve what is in production, follow promotions and rollbacks --------------------

    def load_production(self, name: str, replacing: Served | None = None) -> Served:
        """Load (in the calling thread) the production version of registry model `name`."""
        assert self.registry is not None
        version = self.registry.production(name)
        if version is None:
            self.registry.versions(name)  # a name not in the registry: NotRegistered, naming the registered ones
            raise ConfigError(f"registry model '{name}' has no version in production; promote one with "
                              f"`tunesmith registry promote {name} VERSION`")
        served = self._load_registered(version)
        served.aliases |= {name}
        served.version = f"{name}-v{version.version}"
        served.registry = (name, version.id)
        return served

    async def follow_registry(self, interval_s: float = 1.0) -> None:
        """Poll the store; when a followed model's production version changes, load the new one beside the old
        and swap them: requests in flight finish on the old one, new ones go to the new one."""
        assert self.registry is not None
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval_s)
            for name in self.followed:
                current = next((m for m in self.models if m.registry and m.registry[0] == name), None)
                try:
                    version = await loop.run_in_executor(None, self.registry.production, name)
                    if version is None or (current is not None and current.registry == (name, version.id)):
                        continue
                    # an A/B variant promoted: the copy already loaded for the test serves production too
                    fresh = next((v for v in self.variant_models.values() if v.registry == (name, version.id)), None)
                    if fresh is not None:
                        fresh.aliases |= {name}
                    else:
                        fresh = await loop.run_in_executor(None, self.load_production, name)
                except Exception as err:  # noqa: BLE001 - a bad new version must not take the served one down
                    self.metrics.registry_errors.labels(name).inc()
                    print(f"registry: could not load the production version of '{name}': {err}", flush=True)
                    continue
                self.add(fresh, replacing=current)
                self._retire()
                print(f"registry: now serving {fresh.version} of '{name}' ({fresh.run})", flush=True)
            await self.follow_tests(loop)

    async def follow_tests(self, loop: asyncio.AbstractEventLoop) -> None:
        """Apply A/B tests started or stopped on followed models: load each variant's version once. Then let go of
        what is no longer served and has drained (each poll: a model still busy at its swap goes once it is done)."""
        if self.ab is None:
            self._retire()  # returning before it, a model busy at its swap was kept until the next swap
            return
        for name in self.followed:
            try:
                route = await loop.run_in_executor(None, self.ab.running, name)
                # the versions the test serves: its variants and its shadow
                wanted = {v for _, v, _ in route.variants} | ({route.shadow[1]} if route.shadow else set()) if route else set()
                for version in sorted(wanted):
                    if (name, version) not in self.variant_models:
                        # production's own model where the test includes it: loaded again, it was a second copy,
                        # kept after the test
                        production = next((m for m in self.models if m.registry and m.registry[0] == name
                                           and m.version == f"{name}-v{version}"), None)
                        served = production or await loop.run_in_executor(None, self.load_version, name, version)
                        self.add(served, listed=False)
                        self.variant_models[(name, version)] = served
            except Exception as err:  # noqa: BLE001 - a test that cannot be applied leaves serving as it was
                print(f"A/B: could not apply the test on '{name}': {err}", flush=True)
                continue
            if route is None:
                self.routes.pop(name, None)
            elif self.routes.get(name) != route:
                self.routes[name] = route
                print(f"A/B: '{name}' split {[(n, w) for n, _, w in route.variants]}"
                      + (f", shadow {route.shadow[0]}" if route.shadow else ""), flush=True)
            # The variants of a test that ended (or left this one) are let go: each held a loaded model for good.
            for key in [k for k in self.variant_models if k[0] == name and k[1] not in wanted]:
                del self.variant_models[key]
        self._retire()

    def load_version(self, name: str, version: int) -> Served:
        assert self.registry is not None
        info = self.registry.version(name, version)
        served = self._load_registered(info)
        served.version, served.registry = f"{name}-v{version}", (name, info.id)
        return served

    def _load_registered(self, info: VersionInfo) -> Served:
        """Load a registry version's run; its error names the version and the registry's ways out (the loader's own
        names only the folder and says to train one)."""
        try:
            return self.loader.load(info.run)
        except TunesmithError as err:
            raise ConfigError(f"registry model '{info.model}' version {info.version} ({info.stage}) at {info.run} cannot "
                              f"be loaded: {err}. Move the run folder back there, or `tunesmith registry rollback "
                              f"{info.model}`, or `tunesmith registry add NEW_PATH --model {info.model}` and promote "
                              "that version") from err

    def route(self, name: str | None, kind: str, owner: str = "", user: str | None = None
              ) -> tuple[Served, str | None] | ServiceError:
        """The model that answers `name` for this user: an A/B variant while a test runs, else find()."""
        route = self.routes.get(name or "")
        if route is not None:
            variant, version = route.pick(user)
            served = self.variant_models.get((name or "", version))
            if served is not None and served.kind == kind:
                return served, variant
        found = self.find(name, kind, owner)
        return found if isinstance(found, ServiceError) else (found, None)

    def _tested(self, name: str | None, kind: str, owner: str = "") -> str | None:
        """The registry model whose running A/B test a request naming `name` falls under: also when it names the model by
        its ft: id or run, or not at all (the only one served), or that traffic all went to production, untested."""
        if (name or "") in self.routes:
            return name
        found = self.find(name, kind, owner)
        if isinstance(found, ServiceError) or found.registry is None:
            return None
        return found.registry[0] if found.registry[0] in self.routes else None

    def _retire(self) -> None:
        """Let go of swapped-out models (and ended tests' variants) once their batchers have nothing left to run and no
        stream is open on them: the batcher, its threads and the stream threads go, and the engine is closed (a
        llama.cpp or CTranslate2 model's decoding thread held it for good)."""
        live = [*self.models, *self.variant_models.values()]  # A/B variants are unlisted, not retired
        keys = {m.batch_key for m in live}
        for key in [k for k in self.by_key if k not in keys and self.batchers[k].idle and not self.streams.get(k)]:
            gone = self.by_key.pop(key)
            self.batchers.pop(key).close(shared=self.executor)  # its loop waits for requests that can no longer come
            pool = self.stream_threads.pop(key, None)
            if pool is not None:
                pool.shutdown(wait=False)
            self.streams.pop(key, None)
            if gone.id not in {m.id for m in live}:
                with contextlib.suppress(KeyError):
                    self.metrics.queue_depth.remove(gone.id)
            close = getattr(gone.engine, "close", None)
            if close is not None:
                close()
        for gone in [m for m in self.adapters if all(m is not x for x in live) and not self.busy.get(id(m))]:
            self.adapters.remove(gone)
            self._delete_adapter(gone, live)

    def _delete_adapter(self, gone: Served, live: Sequence[Served]) -> None:
        """Take a let-go model's adapter out of the base it shares (transformers): every promotion or rollback loaded
        one more into it, and none left. Under the engine's lock, as a generation switches adapters under it."""
        base = gone.engine.chat.model
        if any(getattr(m.engine, "adapter", None) == gone.engine.adapter and getattr(m.engine, "chat", None) is not None
               and m.engine.chat.model is base for m in live):
            return
        with gone.engine.lock:
            base.delete_adapter(gone.engine.adapter)

    def _count(self, model: Served, change: int) -> None:
        """`model`'s requests in flight (`busy`), an entry only while it has some."""
        left = self.busy.get(id(model), 0) + change
        if left:
            self.busy[id(model)] = left
        else:
            self.busy.pop(id(model), None)

    def _shadow_of(self, model: str | None, variant: str | None) -> tuple[str, int] | None:
        """The challenger that answers a copy of a request a test's variant answered (None: no shadow)."""
        route = self.routes.get(model or "") if variant else None
        return route.shadow if route else None

    def _spawn(self, work: Any) -> None:
        task = asyncio.create_task(work)
        self._shadows.add(task)  # referenced until done, or the loop may drop it
        task.add_done_callback(self._shadows.discard)

    async def _shadow_generate(self, name: str, shadow: tuple[str, int], ident: str, prompts: list[str],
                               params: dict[str, Any], inputs: list[Any], user: str | None, kind: str) -> None:
        model = self.variant_models.get((name, shadow[1]))
        if model is None or model.kind != "chat":
            return
        started = time.perf_counter()
        done = await self._generate(model, prompts, params)
        if not isinstance(done, ServiceError):  # busy or slow: the shadow is dropped, never the user's answer
            self._record(f"{ident}{SHADOW_SUFFIX}", model, kind, inputs, [c.text for c in done], started, user, f"shadow:{shadow[0]}")

    async def _classify(self, model: Served, texts: list[str]) -> list[dict]:
        """`model`'s answers for `texts` through its batcher; raises Overloaded, or TimeoutError after timeout_s."""
        return await asyncio.wait_for(self.batchers[model.batch_key].submit(model.batch_key, texts, len(texts)),
                                      self.spec.timeout_s)

    async def _shadow(self, name: str, shadow: tuple[str, int], rid: str, texts: list[str], user: str | None) -> None:
        model = self.variant_models.get((name, shadow[1]))
        if model is None:
            return
        started = time.perf_counter()
        try:
            results = await self._classify(model, texts)
        except Exception:  # noqa: BLE001 - a failing challenger too (raised, it went unretrieved in its task)
            return  # the shadow never costs the users: dropped when the server is busy
        self._record(f"{rid}{SHADOW_SUFFIX}", model, "predict", texts, results, started, user, f"shadow:{shadow[0]}")

    DRIFT_SIGNALS = ("lengths", "labels", "vocabulary")

    async def watch_drift(self, every_s: float = 60.0) -> None:
        """Compare each served model's recent traffic with its training data: PSI and warnings in /metrics. A signal the
        served version has no figures for (no logged inputs yet, no training profile, a failed reading) has no gauges:
        labelled by model only, they had held the previous version's reading after a promotion, its alert included."""
        assert self.log is not None
        from tunesmith.monitor.drift import drift_confirmed

        shown: set[str] = set()  # models with drift gauges, so those of a model no longer served are removed too
        while True:
            await asyncio.sleep(every_s)
            served = set()
            for m in list(self.models):
                name = m.registry[0] if m.registry else m.id
                served.add(name)
                report = await self._drift_report(m, name)
                for signal in self.DRIFT_SIGNALS:
                    figures = report.get(signal) if report is not None else None
                    if not isinstance(figures, dict):
                        self._drop_drift_gauges(name, signal)
                        continue
                    if "psi" in figures:
                        self.metrics.drift_psi.labels(name, signal).set(figures["psi"])
                    else:
                        self._drop_drift_gauges(name, signal, warning=False)
                    self.metrics.drift_warning.labels(name, signal).set(1.0 if drift_confirmed(figures) else 0.0)
            for name in shown - served:
                for signal in self.DRIFT_SIGNALS:
                    self._drop_drift_gauges(name, signal)
            shown = served

    async def _drift_report(self, m: Served, name: str) -> dict[str, Any] | None:
        """The drift report of the served version's own traffic; None when there is no training profile or reading it
        failed (logged: monitoring must not disturb serving)."""
        from tunesmith.monitor.live import TrainingProfile, drift

        assert self.log is not None
        loop = asyncio.get_running_loop()
        try:
            # A registry version's data is its lineage's dataset: after an incremental round the run trained on
            # a replay sample weighted to the corrections, which read as drift (as trigger.py and the report do)
            dataset = None
            if m.registry and self.registry is not None:
                info = await loop.run_in_executor(None, self.registry.production, m.registry[0])
                if info is not None and info.id == m.registry[1]:
                    dataset = info.lineage.get("dataset")
            profile = await loop.run_in_executor(None, TrainingProfile.of_run, m.run, dataset)
            if profile is None:
                return None
            # this version's traffic only: an A/B challenger's, or an earlier production's, is not its own
            return await loop.run_in_executor(
                None, lambda n=name, pr=profile, v=m.version: drift(self.log.store, n, pr, model_version=v))
        except Exception as err:  # noqa: BLE001 - monitoring must not disturb serving
            print(f"drift: '{name}': {type(err).__name__}: {err}", flush=True)
            return None

    def _drop_drift_gauges(self, name: str, signal: str, warning: bool = True) -> None:
        """Remove a signal's drift gauges: absent, not 0, as "no reading" is not "no drift" to an alerting rule."""
        for gauge in (self.metrics.drift_psi, *([self.metrics.drift_warning] if warning else [])):
            with contextlib.suppress(KeyError):  # never set
                gauge.remove(name, signal)

    async def keep_log(self, retention_days: float, every_s: float = 3600.0) -> None:
        """Clear logged inputs and outputs past their retention, hourly."""
        assert self.log is not None
        loop = asyncio.get_running_loop()
        while True:
            await loop.run_in_executor(None, self.log.purge, retention_days)
            await asyncio.sleep(every_s)

    async def _on_record_once(self, request_id: str, model: Served, inputs: Sequence[Any], outputs: Sequence[Any],
                              started: float, user: str | None, variant: str | None) -> bool:
        """Put an answer under a client's request id on record before it is sent: False when the id is on record
        already (this replica's or another's on the store), and the request gets a 409. In the store, not in this
        process: a claim kept here let a second replica answer (and log under a new id) an id the first had used."""
        log = self.log
        assert log is not None
        name = model.registry[0] if model.registry else model.id
        latency_ms = (time.perf_counter() - started) * 1000
        return await asyncio.get_running_loop().run_in_executor(None, lambda: log.record_once(
            request_id, name, model.version, "predict", inputs, outputs, latency_ms, user_id=user, variant=variant))

    def _record(self, request_id: str, model: Served, kind: str, inputs: Sequence[Any], outputs: Sequence[Any],
                started: float, user: str | None, variant: str | None = None, logged: bool = False) -> None:
        """Count an answer in /metrics and queue it for the log (`logged`: on record already, _on_record_once)."""
        name = model.registry[0] if model.registry else model.id  # a registry model under its name, whatever version
        seconds = time.perf_counter() - started
        self.metrics.version_requests.labels(name, model.version).inc()
        self.metrics.version_latency.labels(name, model.version).observe(seconds)
        for output in outputs:
            if isinstance(output, dict) and output.get("probabilities"):
                self.metrics.confidence.labels(name, model.version).observe(max(output["probabilities"].values()))
        if self.log is not None and not logged:
            self.log.record(request_id, name, model.version, kind, inputs, outputs, seconds * 1000, user_id=user, variant=variant)

    def count_feedback(self, prediction: Any, feedback: Any) -> None:
        """Feedback counters per model version (the feedback service calls this once an item is committed)."""
        rating = "positive" if feedback.thumbs_up is True or (feedback.score or 0) >= 4 else \
            "negative" if feedback.thumbs_up is False or (feedback.score or 3) <= 2 else \
            "neutral" if feedback.score == 3 else "correction"
        self.metrics.feedback.labels(prediction.model, prediction.model_version, rating).inc()
        outputs = prediction.outputs or []
        if feedback.corrected_label is not None and feedback.item_index < len(outputs) and isinstance(outputs[feedback.item_index], dict):
            said = outputs[feedback.item_index].get("label")
            right = set(said if isinstance(said, list) else [said]) == set(feedback.corrected_label)
            self.metrics.corrections.labels(prediction.model, prediction.model_version, "right" if right else "wrong").inc()

    def unload(self, name: str, owner: str = "") -> None:
        """Stop answering as a deleted fine-tuned model (its adapter leaves the shared base)."""
        for m in [m for m in self.models if m.id == name and m.owner == owner]:
            self.models.remove(m)
            if any(x is m for x in self.adapters):  # deleted here: _retire must not delete it again
                self.adapters.remove(m)
            adapter = getattr(m.engine, "adapter", None)
            if adapter is not None:
                with m.engine.lock:
                    m.engine.chat.model.delete_adapter(adapter)

    def list_models(self, owner: str = "") -> p.ModelList:
        cards = [p.ModelCard(id=m.id, created=m.created, task=m.task, run=m.run, base_model=m.base_model,
                             engine=getattr(m.engine, "name", None)) for m in self.visible(owner)]
        if self.jobs is not None:
            shown = {c.id for c in cards}
            for name, created, run in self.jobs.fine_tuned_models(owner):
                if name not in shown:
                    cards.append(p.ModelCard(id=name, created=created, task="chat", run=run, base_model=name.split(":")[1]))
        return p.ModelList(data=cards)

    def status(self) -> p.AdminStatus:
        return p.AdminStatus(
            models=[p.ServedModelStatus(id=m.id, run=m.run, task=m.task, version=m.version) for m in self.models],
            queues={key: b.depth for key, b in self.batchers.items()},
            batches={key: p.BatchCounts(batches=b.stats.batches, items=b.stats.items) for key, b in self.batchers.items()},
            streams=dict(self.streams),
            loaded_models=len({id(getattr(m.engine, "chat", m.engine)) if m.kind == "sequence" else id(m.engine.chat.model)
                               for m in self.models}))

    # -- classification / regression -----------------------------------------------------------------

    def _run_sequence(self, key: str, payloads: Sequence[list[str]]) -> list[list[dict[str, Any]]]:
        model = self.by_key[key]
        texts = [t for batch in payloads for t in batch]
        results = model.engine.predict(texts)
        out, start = [], 0
        for batch in payloads:
            out.append(results[start : start + len(batch)])
            start += len(batch)
        return out

    async def predict(self, req: p.PredictRequest, request_id: str | None = None, owner: str = "",
                      client_id: bool = False) -> p.PredictResponse | ServiceError:
        """`client_id`: `request_id` is the client's X-Request-ID, kept once only where answers are logged (see
        _on_record_once)."""
        started = time.perf_counter()
        name = self._tested(req.model, "sequence", owner) or req.model
        routed = self.route(name, "sequence", owner, req.user)
        if isinstance(routed, ServiceError):
            return routed
        model, variant = routed
        if (req.text is None) == (req.texts is None):
            return ServiceError(400, "give exactly one of 'text' (one input) or 'texts' (a batch)", param="text")
        texts = [req.text] if req.text is not None else list(req.texts or [])
        field_name = "text" if req.text is not None else "texts"
        if not texts:
            return ServiceError(400, "'texts' is empty", param="texts")
        if len(texts) > self.spec.max_texts_per_request:
            return ServiceError(413, f"{len(texts)} texts in one request; the limit is {self.spec.max_texts_per_request}",
                                param="texts", code="batch_too_large")
        for i, text in enumerate(texts):
            where = field_name if req.text is not None else f"texts.{i}"
            if not text.strip():
                return ServiceError(400, f"{where} is empty", param=where)
            if len(text) > self.spec.max_text_chars:
                return ServiceError(413, f"{where} has {len(text)} characters; the limit is {self.spec.max_text_chars}",
                                    param=where, code="text_too_long")
            if _reads_nothing(model.engine, text):  # the model's answer to no input, with a confident probability
                return ServiceError(400, f"{where} is empty once cleaned as the run's training texts were: markup, "
                                         "blanks and invisible characters (zero-width, control, direction marks) are "
                                         "all it holds", param=where)
        try:
            results = await self._classify(model, texts)
        except Exception as err:  # noqa: BLE001 - also the model's own failure, which the batcher hands to each caller
            self._version_error(model)
            if isinstance(err, Overloaded):
                return _overloaded(err)
            if isinstance(err, TimeoutError):
                return ServiceError(504, f"no answer within {self.spec.timeout_s:g} s", "server_error", code="timeout")
            # an error in the API's shape (as a stream's is), not a bare text/plain "Internal Server Error" left
            # uncounted in /metrics
            return ServiceError(500, f"prediction failed: {type(err).__name__}: {err}", "server_error")
        rid = request_id or f"pred-{uuid.uuid4().hex[:24]}"
        once = client_id and self.log is not None
        if once and not await self._on_record_once(rid, model, texts, results, started, req.user, variant):
            return ServiceError(409, f"X-Request-ID {rid!r} was already used by an earlier request, whose answer is on "
                                     "record under it for feedback; send a new id with each request (or leave the "
                                     "header out and the server makes one)", param="X-Request-ID", code="request_id_reused")
        shown = model.registry[0] if model.registry else model.id
        for r in results:
            if "label" in r:
                for label in r["label"] if isinstance(r["label"], list) else [r["label"]]:
                    self.metrics.predictions.labels(shown, model.version, str(label)).inc()
            else:
                self.metrics.predicted_values.observe(shown, model.version, r["value"],
                                                      lambda: Run(model.run).manifest.target_scaling)
        self._record(rid, model, "predict", texts, results, started, req.user, variant, logged=once)
        shadow = self._shadow_of(name, variant)
        if shadow is not None:  # the challenger answers a copy; logged, never returned
            self._spawn(self._shadow(name or "", shadow, rid, texts, req.user))
        return p.PredictResponse(id=rid, model=model.id, model_version=model.version,
                                 predictions=[p.Prediction(**r) for r in results])

    # -- generation --------------------------------------------------------------------------------

    def _run_chat(self, key: tuple[Any, ...], payloads: Sequence[tuple[str, threading.Event, Served]]) -> list[Any]:
        """`payloads`: (prompt, the request's cancel event, the model). Each row gets its request's event: a request the server
        stopped waiting for (504) stops decoding, where it went on to max_tokens for no one, holding a row."""
        model: Served = payloads[0][2]  # the key names it (by object): models sharing a batcher never mix
        prompts = [prompt for prompt, _, _ in payloads]
        return model.engine.generate(prompts, cancels=[event for _, event, _ in payloads], **dict(key[2]))

    def _params(self, req: p.SamplingParams, model: Served, prompt_tokens: int, max_tokens: int | None
                ) -> dict[str, Any] | ServiceError:
        if req.n not in (None, 1):
            return ServiceError(400, "n > 1 is not supported; send separate requests", param="n")
        if req.tools:
            return ServiceError(400, "tools (function calling) are not supported by tunesmith models yet", param="tools")
        if (field := req.unsupported()) is not None:
            return ServiceError(400, f"{field} is not supported by tunesmith's engines; leave it out", param=field)
        if req.stream_options is not None and not req.stream:  # as OpenAI refuses it
            return ServiceError(400, "stream_options is only allowed with stream: true; leave it out or stream",
                                param="stream_options")
        cap = self.spec.max_tokens
        wanted = max_tokens or cap
        if wanted > cap:
            named = "max_completion_tokens" if getattr(req, "max_completion_tokens", None) else "max_tokens"
            return ServiceError(400, f"{named} {wanted} is over this server's limit of {cap}", param=named)
        context = model.engine.context
        if context and prompt_tokens + 1 > context:
            return ServiceError(400, f"the prompt has {prompt_tokens} tokens; the model's context is {context}",
                                param="prompt" if isinstance(req, p.CompletionRequest) else "messages",
                                code="context_length_exceeded")
        if context:
            wanted = min(wanted, context - prompt_tokens)
        temperature = req.temperature if req.temperature is not None else 1.0
        top_p = req.top_p if req.top_p is not None else 1.0
        if top_p == 0:  # OpenAI's smallest nucleus: the likeliest token alone, greedy on every engine
            temperature, top_p = 0.0, 1.0
        return {"max_new_tokens": wanted, "temperature": temperature, "top_p": top_p, "seed": req.seed,
                "stop": tuple(req.stops())}

    def _prepare(self, req: p.ChatCompletionRequest | p.CompletionRequest, name: str | None, owner: str = ""
                 ) -> tuple[Served, list[str], dict[str, Any], list[int], str | None] | ServiceError:
        """`name`: the model as routed (the registry model under an A/B test, where `req.model` names one of its ids)."""
        routed = self.route(name, "chat", owner, req.user)
        if isinstance(routed, ServiceError):
            return routed
        model, variant = routed
        if isinstance(req, p.ChatCompletionRequest):
            messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in req.messages]
            try:
                prompts = [model.engine.prompt_text(messages)]
            except TemplateError as err:  # Mistral's, Llama 2's, Gemma's refuse a system turn or roles out of turn
                return ServiceError(400, f"the model's chat template refused these messages: {err}", param="messages")
            max_tokens = req.max_completion_tokens or req.max_tokens
        else:
            prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
            if not prompts or any(not x for x in prompts):
                return ServiceError(400, "'prompt' is empty", param="prompt")
            most = min(self.spec.max_texts_per_request, self.spec.max_queue)  # each prompt takes a place in the queue
            if len(prompts) > most:  # else a 503 "retry after" on an idle server, for ever
                return ServiceError(413, f"{len(prompts)} prompts in one request; the limit is {most}", param="prompt",
                                    code="batch_too_large")
            max_tokens = req.max_tokens or min(16, self.spec.max_tokens)  # OpenAI's default, within this server's cap
        counts = [model.engine.count_tokens(x) for x in prompts]
        params = self._params(req, model, max(counts), max_tokens)
        if isinstance(params, ServiceError):
            return params
        return model, prompts, params, counts, variant

    def _version_error(self, model: Served) -> None:
        """One request this model version could not answer (busy, timeout, failure): tunesmith_model_errors_total."""
        self.metrics.version_errors.labels(model.registry[0] if model.registry else model.id, model.version).inc()

    async def _generate(self, model: Served, prompts: list[str], params: dict[str, Any]) -> list[Any] | ServiceError:
        # by model object, not id: two loads of one run (a version loaded beside a copy of itself) share an id
        key = (model.id, id(model), tuple(sorted(params.items())))
        batcher = self.batchers[model.batch_key]
        futures: list[asyncio.Future[Any]] = []
        cancel = threading.Event()
        self._count(model, 1)
        try:
            return await self._answers(model, batcher, key, prompts, futures, cancel)
        except asyncio.CancelledError:  # the client hung up (the HTTP layer cancels): no place held, no decoding
            cancel.set()
            for f in futures:
                f.cancel()
            raise
        finally:
            self._count(model, -1)

    async def _answers(self, model: Served, batcher: DynamicBatcher, key: tuple[Any, ...], prompts: list[str],
                       futures: list[asyncio.Future[Any]], cancel: threading.Event) -> list[Any] | ServiceError:
        try:
            for x in prompts:
                futures.append(batcher.submit(key, (x, cancel, model)))
        except Overloaded as err:
            for f in futures:  # the prompts queued before the refusal would run for nobody: the batcher skips them
                f.cancel()
            self._version_error(model)  # chat's busy, timeout and failure counted as predict's are (they never were)
            return _overloaded(err)
        gathered = asyncio.gather(*futures)
        # cancelled (a timeout, a client gone), it ends with a CancelledError no one reads: logged as never retrieved
        gathered.add_done_callback(lambda f: f.cancelled() or f.exception())
        try:
            done = await asyncio.wait_for(gathered, self.spec.timeout_s)
        except TimeoutError:
            cancel.set()  # the engine stops decoding for no one
            self._version_error(model)
            return ServiceError(504, f"no answer within {self.spec.timeout_s:g} s", "server_error", code="timeout")
        except Exception as err:  # noqa: BLE001 - the model failed on the batch: in the API's shape, as a stream says it
            self._version_error(model)
            return ServiceError(500, f"generation failed: {type(err).__name__}: {err}", "server_error")
        self.metrics.generated_tokens.labels(model.id).inc(sum(c.completion_tokens for c in done))
        return list(done)

    async def generate(self, req: p.ChatCompletionRequest | p.CompletionRequest, owner: str = ""
                       ) -> p.ChatCompletion | p.Completion | ServiceError:
        """A whole chat completion or text completion (OpenAI's response shape for each)."""
        started = time.perf_counter()
        await self.ensure_loaded(req.model, owner)
        name = self._tested(req.model, "chat", owner) or req.model
        prepared = self._prepare(req, name, owner)
        if isinstance(prepared, ServiceError):
            return prepared
        model, prompts, params, counts, variant = prepared
        done = await self._generate(model, prompts, params)
        if isinstance(done, ServiceError):
            return done
        usage = _usage(sum(counts), sum(c.completion_tokens for c in done))
        chat = isinstance(req, p.ChatCompletionRequest)
        ident = p.completion_id("chatcmpl" if chat else "cmpl")  # what feedback names as request_id
        self._record(ident, model, "chat" if chat else "completion", _logged_inputs(req, prompts), [c.text for c in done],
                     started, req.user, variant)
        shadow = self._shadow_of(name, variant)
        if shadow is not None:  # the challenger answers a copy; logged, never returned
            self._spawn(self._shadow_generate(name or "", shadow, ident, prompts, params,
                                              _logged_inputs(req, prompts), req.user, "chat" if chat else "completion"))
        if chat:
            return p.ChatCompletion(
                id=ident, created=p.now(), model=model.id, usage=usage, system_fingerprint=model.version,
                choices=[p.ChatChoice(index=0, message=p.AssistantMessage(content=done[0].text),
                                      finish_reason=done[0].finish_reason)])
        return p.Completion(id=ident, created=p.now(), model=model.id, usage=usage, system_fingerprint=model.version,
                            choices=[p.CompletionChoice(index=i, text=c.text, finish_reason=c.finish_reason)
                                     for i, c in enumerate(done)])

    def stream(self, req: p.ChatCompletionRequest | p.CompletionRequest, owner: str = "") -> AsyncIterator[str] | ServiceError:
        """Server-sent events (already formatted `data: ...` lines), or an error before the first byte
        (await ensure_loaded first for a fine-tuned model that may not be loaded yet)."""
        prepared = self._prepare(req, self._tested(req.model, "chat", owner) or req.model, owner)
        if isinstance(prepared, ServiceError):
            return prepared
        model, prompts, params, counts, variant = prepared
        if len(prompts) != 1:
            return ServiceError(400, "streaming answers one prompt at a time", param="prompt")
        active = self.streams.get(model.batch_key, 0) + self.batchers[model.batch_key].depth
        if active >= self.spec.max_queue:
            return _overloaded(Overloaded(max(1, round(self.batchers[model.batch_key].last_batch_s * 2))))
        chat = isinstance(req, p.ChatCompletionRequest)
        include_usage = req.stream_options is not None and req.stream_options.include_usage
        record = (_logged_inputs(req, prompts), req.user, time.perf_counter(), variant)
        # Its place is taken now, not when the response first iterates: counted then, a burst of streams all passed
        # the check above (200, then a wait and a timeout mid-stream), and a swap closed the model under one.
        place = _Place(self, model)
        return _Admitted(self._events(model, prompts[0], params, counts[0], chat, include_usage, record, place), place)

    async def _events(self, model: Served, prompt: str, params: dict[str, Any], prompt_tokens: int, chat: bool,
                      include_usage: bool, record: tuple[list[Any], str | None, float, str | None], place: _Place
                      ) -> AsyncGenerator[str, None]:
        place.started = True
        ident, created = p.completion_id("chatcmpl" if chat else "cmpl"), p.now()
        answer: list[str] = []
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        cancel = threading.Event()
        params = {**params, "stop": list(params["stop"])}

        def produce() -> None:
            try:
                for piece in model.engine.stream(prompt, cancel, **params):
                    loop.call_soon_threadsafe(queue.put_nowait, piece)
            except Exception as err:  # noqa: BLE001 - reported in the stream
                loop.call_soon_threadsafe(queue.put_nowait, err)
            loop.call_soon_threadsafe(queue.put_nowait, None)

        def chunk(delta: p.ChatDelta | str, finish: str | None = None, usage: p.Usage | None = None) -> str:
            """A chat chunk for a ChatDelta, a text_completion chunk for text; the usage chunk has no choices."""
            if isinstance(delta, p.ChatDelta):
                return _event(p.ChatCompletionChunk(
                    id=ident, created=created, model=model.id, system_fingerprint=model.version, usage=usage,
                    choices=[] if usage else [p.ChatChunkChoice(index=0, delta=delta, finish_reason=finish)]))
            return _event(p.CompletionChunk(
                id=ident, created=created, model=model.id, system_fingerprint=model.version, usage=usage,
                choices=[] if usage else [p.CompletionChoice(index=0, text=delta, finish_reason=finish)]))

        # the stream's place keeps its model, and the model's pool, from being let go
        worker = loop.run_in_executor(self.stream_threads[model.batch_key], produce)
        finished = failed = False
        try:
            if chat:
                yield chunk(p.ChatDelta(role="assistant", content=""))
            while True:
                try:
                    piece = await asyncio.wait_for(queue.get(), self.spec.timeout_s)
                except TimeoutError:  # raised, it cut the connection: the client read a truncated answer as a whole one
                    self._version_error(model)
                    yield _event(ServiceError(504, f"no answer within {self.spec.timeout_s:g} s", "server_error",
                                              code="timeout").body())
                    yield "data: [DONE]\n\n"
                    return  # not finished: generation is cancelled below (the server's doing, not a disconnect)
                if piece is None:
                    break
                if isinstance(piece, Exception):
                    self._version_error(model)
                    err = ServiceError(500, f"generation failed: {piece}", "server_error")
                    yield _event(err.body())
                    failed = True  # not an answer: not logged as one
                    break
                if isinstance(piece, str):
                    if piece:
                        answer.append(piece)
                        yield chunk(p.ChatDelta(content=piece) if chat else piece)
                    continue
                self.metrics.generated_tokens.labels(model.id).inc(piece.completion_tokens)
                yield chunk(p.ChatDelta() if chat else "", finish=piece.finish_reason)
                if include_usage:
                    yield chunk(p.ChatDelta() if chat else "", usage=_usage(prompt_tokens, piece.completion_tokens))
            yield "data: [DONE]\n\n"
            finished = True
            if failed:
                return
            inputs, user, started, variant = record
            self._record(ident, model, "chat" if chat else "completion", inputs, ["".join(answer)], started, user, variant)
        except (GeneratorExit, asyncio.CancelledError):  # the client went away (closed, or its task cancelled)
            self.metrics.stream_disconnects.labels(model.id).inc()
            raise
        finally:
            if not finished:  # the client went away (or timed out): stop generating for nobody
                cancel.set()
            try:
                await asyncio.shield(worker) if finished else None
            finally:  # after the engine's thread is done with the model, where it ended on its own
                place.give_back()


class _Place:
    """A stream's place among its model's open streams (`Service.streams`, and the model's `busy` count), taken when
    the stream is admitted and given back once: when its events end, or when they are closed (or dropped) unstarted."""

    def __init__(self, service: Service, model: Served) -> None:
        self.service, self.model = service, model
        self.started = False  # the events began: their generator's own `finally` gives the place back
        self.held = True
        service.streams[model.batch_key] = service.streams.get(model.batch_key, 0) + 1
        service._count(model, 1)

    def give_back(self) -> None:
        if not self.held:
            return
        self.held = False
        key, streams = self.model.batch_key, self.service.streams
        streams[key] = streams.get(key, 0) - 1
        if not streams[key] and key not in self.service.by_key:  # a retired model's zero stayed in /admin/status
            del streams[key]
        self.service._count(self.model, -1)

    def give_back_unstarted(self) -> None:
        if not self.started:
            self.give_back()


class _Admitted:
    """A stream's events, holding its place from admission. A generator never started runs no `finally` when closed
    or collected (a response never sent: the client gone first): its place is given back here then, not kept."""

    def __init__(self, events: AsyncGenerator[str, None], place: _Place) -> None:
        self.events, self.place = events, place
        weakref.finalize(self, place.give_back_unstarted)

    def __aiter__(self) -> _Admitted:
        return self

    async def __anext__(self) -> str:
        return await self.events.__anext__()

    async def aclose(self) -> None:
        self.place.give_back_unstarted()  # first, and without waiting: the caller may be being cancelled
        await self.events.aclose()


def _reads_nothing(engine: Any, text: str) -> bool:
    """Whether the model reads nothing of `text`: no visible character once cleaned as its Predictor cleans every text
    it answers (`<br />`, `&nbsp;`), the invisible ones (zero-width, control, direction marks) being what tokenizers
    drop. An engine without a Predictor (a test's fake) reads the text as given."""
    clean = getattr(getattr(engine, "predictor", None), "clean", None)
    return not any(c.isprintable() and not c.isspace() for c in (clean(text) if clean is not None else text))


def _shares_base(a: Served, b: Served) -> bool:
    """Chat adapters loaded into one base model (transformers): one generation lock, one batcher."""
    lock = getattr(a.engine, "lock", None)
    return lock is not None and lock is getattr(b.engine, "lock", None)


def _logged_inputs(req: p.ChatCompletionRequest | p.CompletionRequest, prompts: list[str]) -> list[Any]:
    if isinstance(req, p.ChatCompletionRequest):
        return [{"role": m.role, "content": m.text()} for m in req.messages]
    return list(prompts)


def _usage(prompt: int, completion: int) -> p.Usage:
    return p.Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def _event(body: BaseModel | dict[str, Any]) -> str:
    """One server-sent event. json.dumps, not model_dump_json: streams keep the bytes they had before the typed
    models (", " separators, ASCII escapes)."""
    return f"data: {json.dumps(body.model_dump(mode='json') if isinstance(body, BaseModel) else body)}\n\n"
