"""`tunesmith serve`: load the run folders, then run the app on uvicorn."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
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
    children = [_start_worker(jobs, i) for i in range(workers)] if jobs is not None else []
    if log:
        for m in models:
            print(f"serving {m.id} ({m.task}) from {m.run}", flush=True)
        print(f"listening on http://{spec.host}:{port} (docs: /docs, health: /healthz, metrics: /metrics)", flush=True)
    try:
        uvicorn.run(app, host=spec.host, port=port, log_level="warning", timeout_graceful_shutdown=5)
    finally:
        for child in children:
            child.terminate()
        for child in children:
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()


async def _apply_tests(service: Any) -> None:
    await service.follow_tests(asyncio.get_running_loop())


def _start_worker(jobs: JobsSpec, index: int) -> subprocess.Popen[bytes]:
    """A worker in its own process: training never loads into the server, and a crash stays there."""
    args = [sys.executable, "-m", "tunesmith", "worker", "--name", f"{socket.gethostname()}:{os.getpid()}:w{index}",
            *(x for b in jobs.base_models for x in ("--base-model", b)),
            "--heartbeat", str(jobs.heartbeat_s), "--stale-after", str(jobs.stale_after_s), "--poll", str(jobs.poll_s),
            "--max-attempts", str(jobs.max_attempts)]
    # The store URL (and its password) through the environment: on the command line `ps` showed it to every user.
    env = {**os.environ, "TUNESMITH_DB": jobs.db} if jobs.db else None
    return subprocess.Popen(args, env=env)
