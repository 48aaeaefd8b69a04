"""`tunesmith serve` in a subprocess for the end-to-end tests: started on a free port, ready when /readyz is."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(args: list[str], log: Path, env: dict[str, str] | None = None,
                 timeout: float = 120) -> tuple[subprocess.Popen[bytes], str]:
    """(process, base url) of `tunesmith serve ARGS --port P`, once it answers /readyz; its output goes to `log`."""
    port = free_port()
    out = log.open("w")
    proc = subprocess.Popen([sys.executable, "-m", "tunesmith", "serve", *args, "--port", str(port)], stdout=out,
                            stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"the server did not become ready: {log.read_text()[-2000:]}")


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
