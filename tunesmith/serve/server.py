"""`tunesmith serve`: load the run folders, then run the app on uvicorn."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from pathlib import Path

from tunesmith.config import ServeSpec


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def serve(paths: Sequence[str | Path], spec: ServeSpec, log: bool = True) -> None:
    import uvicorn

    from tunesmith.serve.app import create_app
    from tunesmith.serve.models import load
    from tunesmith.serve.service import Service

    models = load(paths)
    service = Service(models, spec)
    app = create_app(service, spec)
    port = spec.port or free_port(spec.host)
    if log:
        for m in models:
            print(f"serving {m.id} ({m.task}) from {m.run}", flush=True)
        print(f"listening on http://{spec.host}:{port} (docs: /docs, health: /healthz, metrics: /metrics)", flush=True)
    uvicorn.run(app, host=spec.host, port=port, log_level="warning", timeout_graceful_shutdown=5)
