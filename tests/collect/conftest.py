"""A local HTTP server for the collector tests: programmable routes, a request log, never the internet.

    server.route("/a", Reply(429, headers={"Retry-After": "1"}), "<html>...</html>")  # in order, the last repeats
    server.route("/api", lambda hit: Reply(body={"page": hit.query.get("page")}))   # computed per request
    server.serve_dir(Path("examples/collect/site"))                                  # files for other paths
    server.count("/a")                                                               # how many times it was asked
"""

from __future__ import annotations

import json
import mimetypes
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from tunesmith.config import ProjectConfig, parse_config


@dataclass
class Reply:
    status: int = 200
    body: Any = b""  # str: HTML; dict/list: JSON; bytes: as is
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds to sleep before answering (a slow server, a timeout)

    def encoded(self) -> tuple[bytes, str]:
        if isinstance(self.body, (dict, list)):
            return json.dumps(self.body).encode(), "application/json"
        if isinstance(self.body, str):
            return self.body.encode(), "text/html; charset=utf-8"
        return bytes(self.body), "application/octet-stream"


@dataclass
class Hit:
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    at: float  # time.monotonic() when the request arrived


Route = list[Reply] | Callable[[Hit], Reply]


class FixtureServer:
    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.log: list[Hit] = []
        self.static: Path | None = None
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        return self.base + path

    def route(self, path: str, *replies: Reply | str | dict | list | Callable[[Hit], Reply]) -> None:
        if len(replies) == 1 and callable(replies[0]):
            self.routes[path] = replies[0]
        else:
            self.routes[path] = [r if isinstance(r, Reply) else Reply(body=r) for r in replies]  # type: ignore[misc]

    def serve_dir(self, folder: Path) -> None:
        """Paths without a route are files under `folder` (like `python -m http.server`)."""
        self.static = folder

    def hits(self, path: str | None = None) -> list[Hit]:
        with self._lock:
            return [h for h in self.log if path is None or h.path == path]

    def count(self, path: str | None = None) -> int:
        return len(self.hits(path))

    def reply_for(self, hit: Hit) -> Reply:
        with self._lock:
            self.log.append(hit)
            route = self.routes.get(hit.path)
            if isinstance(route, list):
                return route.pop(0) if len(route) > 1 else route[0]
        if route is not None:
            return route(hit)
        if self.static is not None:
            file = (self.static / hit.path.lstrip("/")).resolve()
            if file.is_dir():
                file = file / "index.html"
            if file.is_file() and self.static.resolve() in file.parents:
                kind = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
                return Reply(body=file.read_bytes(), headers={"Content-Type": kind})
        return Reply(404, "<html><body>not found</body></html>")

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def _handler(server: FixtureServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            parts = urlsplit(self.path)
            hit = Hit(parts.path, dict(parse_qsl(parts.query)), dict(self.headers.items()), time.monotonic())
            reply = server.reply_for(hit)
            if reply.delay:
                time.sleep(reply.delay)
            body, kind = reply.encoded()
            try:
                self.send_response(reply.status)
                headers = {"Content-Type": kind, **reply.headers}
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (a timeout test): nothing to answer

        def log_message(self, *args: Any) -> None:
            pass  # keep test output clean

    return Handler


@pytest.fixture()
def server():
    srv = FixtureServer()
    yield srv
    srv.close()


FAST_HTTP = {"rate_limit": 1000, "retries": 2, "backoff": 0.01, "max_backoff": 0.05, "timeout": 5}  # tests must not wait


@pytest.fixture()
def collect_config(tmp_path: Path):
    """A ProjectConfig with one collected source (web/rest sub-section + http settings), collected under tmp_path."""

    def make(source: dict[str, Any], **http: Any) -> ProjectConfig:
        src = {**source, "http": {**FAST_HTTP, **http}}
        return parse_config({"name": "t", "data": {"sources": [src], "collect_dir": str(tmp_path / "collected")}})

    return make


@dataclass
class Outcome:
    records: list[dict[str, Any]]  # without provenance
    provenance: list[dict[str, Any]]
    failures: list[dict[str, Any]]
    notes: list[str]
    said: list[str]
    state: dict[str, Any] | None


@pytest.fixture()
def run_collector():
    """Run one collector module on a config's first source as the orchestrator would (resuming when a
    state file says an earlier run did not finish) and read back what it wrote."""
    from tunesmith.collect.sink import PROVENANCE_KEY, collected_file

    def run(module: Any, cfg: ProjectConfig) -> Outcome:
        from tunesmith.collect.run import COLLECTORS, collect_one

        spec = cfg.data.sources[0]
        assert COLLECTORS[spec.kind] == module.__name__
        path = collected_file(cfg, 0, spec)
        state_path = path.with_name(path.stem + ".state.json")
        said: list[str] = []
        done = collect_one(cfg, 0, say=said.append)
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
        failures = ([json.loads(line) for line in done.failures_path.read_text().splitlines() if line.strip()]
                    if done.failures_path else [])
        return Outcome([{k: v for k, v in r.items() if k != PROVENANCE_KEY} for r in rows], [r[PROVENANCE_KEY] for r in rows],
                       failures, done.notes, said, json.loads(state_path.read_text()) if state_path.exists() else None)

    return run
