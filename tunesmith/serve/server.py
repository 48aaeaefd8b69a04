"""`tunesmith serve`: load the run folders, then run the app on uvicorn."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tunesmith.config import JobsSpec, ServeSpec
from tunesmith.errors import ConfigError


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _check_port(host: str, port: int) -> None:
    """Refused before "listening on" is printed, and before workers start: uvicorn said so only after both, and the
    command ended as if its input data were bad (exit 3)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: a port in TIME_WAIT is free
        try:
            s.bind((host, port))
        except OSError as err:
            raise ConfigError(f"--port {port}: cannot listen on {host}:{port} ({err.strerror}); another server has it, "
                              "so stop that one or pass another --port") from None


def serve(paths: Sequence[str | Path], spec: ServeSpec, log: bool = True, jobs: JobsSpec | None = None,
          workers: int = 0, registry_models: Sequence[str] = (), db: str | None = None) -> None:
    """Serve the run folders and the production versions of `registry_models` (followed as they are
    promoted or rolled back); with `jobs`, also OpenAI's files and fine-tuning API over its store, and
    `workers` training processes (`tunesmith worker`) beside the server, stopped with it."""
    import uvicorn

    from tunesmith.serve.app import create_app
    from tunesmith.serve.models import ModelLoader, load
    from tunesmith.serve.service import Service

    if spec.port:
        _check_port(spec.host, spec.port)  # before minutes of loading
    if jobs is not None:
        from tunesmith.models.catalog import check_base_models

        check_base_models(jobs)  # a mistyped --base-model had failed each job naming it, as a server_error
    loader = ModelLoader(spec)
    models = load(paths, loader)
    jobs_service, registry, store = None, None, None
    if jobs is not None or registry_models or db:
        from tunesmith.store.db import Store

        store = Store(jobs.db if jobs is not None else db)
    if jobs is not None and store is not None:
        from tunesmith.jobs.service import JobsService

        jobs_service = JobsService(store, jobs)
        if log:
            print(f"fine-tuning API on store {store.shown} (base models: {', '.join(jobs.base_models)})", flush=True)
    if store is not None:
        from tunesmith.registry.service import Registry

        registry = Registry(store)
    prediction_log, feedback, ab = None, None, None
    if store is not None:
        from tunesmith.monitor.ab import ABService
        from tunesmith.monitor.feedback import FeedbackService
        from tunesmith.monitor.log import PredictionLog

        prediction_log = PredictionLog(store, log_inputs=spec.log_inputs)
        feedback = FeedbackService(store, prediction_log)
        ab = ABService(store)
    service = Service(models, spec, loader=loader, jobs=jobs_service, registry=registry, followed=registry_models,
                      log=prediction_log, feedback=feedback, ab=ab)
    if feedback is not None:
        feedback.on_accept = service.count_feedback
    for name in registry_models:
        service.add(service.load_production(name))
    if registry_models:
        asyncio.run(_apply_tests(service))  # a test already running is in force from the first request
    models = service.models
    app = create_app(service, spec)
    port = spec.port or free_port(spec.host)
    pool = WorkerPool(jobs, workers if jobs is not None else 0)
    if log:
        for m in models:
            print(f"serving {m.id} ({m.task}) from {m.run}", flush=True)
        print(f"listening on http://{spec.host}:{port} (docs: /docs, health: /healthz, metrics: /metrics)", flush=True)
    # uvicorn raises the SIGTERM it caught again once it has shut down, to the handler it found: the default one ended
    # the process before `finally`, and the workers went on training jobs for a server that was gone (systemd, docker
    # stop and kill all send SIGTERM). Raised as SystemExit here, it passes through `finally`.
    previous = signal.signal(signal.SIGTERM, _exit_on_signal) if threading.current_thread() is threading.main_thread() \
        else None
    try:
        uvicorn.run(app, host=spec.host, port=port, log_level="warning", timeout_graceful_shutdown=5)
    finally:
        pool.stop()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _exit_on_signal(signum: int, _: Any) -> None:
    raise SystemExit(128 + signum)


class WorkerPool:
    """`serve --workers N`: N training processes, each started again when it dies (the OOM killer, a crash), so the
    jobs queue is never left without workers while /readyz says ready. Its job is taken over by the heartbeat rule."""

    def __init__(self, jobs: JobsSpec | None, n: int, check_s: float = 2.0, min_uptime_s: float = 10.0) -> None:
        import threading

        self.jobs, self.min_uptime_s = jobs, min_uptime_s
        self.started = [0] * n  # processes started per slot: a new one gets a new name
        self.children: list[subprocess.Popen[bytes]] = []
        self.since: list[float] = []
        for i in range(n):
            self._start(i)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, args=(check_s,), daemon=True, name="tunesmith-workers")
        if n:
            self._thread.start()

    def _start(self, i: int) -> None:
        import time

        assert self.jobs is not None
        child = _start_worker(self.jobs, i, self.started[i])
        self.started[i] += 1
        if i < len(self.children):
            self.children[i], self.since[i] = child, time.time()
        else:
            self.children.append(child)
            self.since.append(time.time())

    def check(self) -> None:
        """Start again each worker that has ended, unless it ended within min_uptime_s (a worker that cannot start at
        all, a bad --db: it is started again after that long, not in a loop)."""
        import time

        for i, child in enumerate(self.children):
            if child.poll() is not None and time.time() - self.since[i] >= self.min_uptime_s:
                print(f"worker {i} ended (exit code {child.returncode}); starting another", flush=True)
                self._start(i)

    def _watch(self, check_s: float) -> None:
        while not self._stop.wait(check_s):
            self.check()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        for child in self.children:
            child.terminate()
        for child in self.children:
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()


async def _apply_tests(service: Any) -> None:
    await service.follow_tests(asyncio.get_running_loop())


def _start_worker(jobs: JobsSpec, index: int, restarts: int = 0) -> subprocess.Popen[bytes]:
    """A worker in its own process: training never loads into the server, and a crash stays there."""
    name = f"{socket.gethostname()}:{os.getpid()}:w{index}" + (f".{restarts}" if restarts else "")
    args = [sys.executable, "-m", "tunesmith", "worker", "--name", name,
            *(x for b in jobs.base_models for x in ("--base-model", b)),
            "--heartbeat", str(jobs.heartbeat_s), "--stale-after", str(jobs.stale_after_s), "--poll", str(jobs.poll_s),
            "--max-attempts", str(jobs.max_attempts)]
    # The store URL (and its password) through the environment: on the command line `ps` showed it to every user.
    env = {**os.environ, "TUNESMITH_DB": jobs.db} if jobs.db else None
    return subprocess.Popen(args, env=env)
