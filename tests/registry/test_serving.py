"""`tunesmith serve --model NAME` serves the registry's production version and follows a promotion and a
rollback without a restart and without dropping a request (counted under load)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.servers import free_port, start_server, stop_server
from tests.test_train import project
from tunesmith.registry.service import Registry
from tunesmith.store.db import Store
from tunesmith.training import train


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path) -> tuple[str, Path]:
    tmp = tmp_path_factory.mktemp("registry")
    db = f"sqlite:///{tmp / 'store.db'}"
    registry = Registry(Store(db))
    for name in ("v1", "v2"):
        (tmp / name).mkdir()
        run = train(project(tmp / name, tiny_bert, train_spec={"max_steps": 6}))
        registry.add(run, "reviews")
    registry.promote("reviews", 1)
    return db, tmp


@pytest.fixture(scope="module")
def server(registered: tuple[str, Path]) -> Iterator[str]:
    db, tmp = registered
    proc, url = start_server(["--model", "reviews", "--db", db], tmp / "server.log")
    yield url
    stop_server(proc)


def _cli(db: str, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "tunesmith", "registry", *args, "--db", db], check=True, capture_output=True)


def test_promotion_and_rollback_under_load_drop_nothing(server: str, registered: tuple[str, Path]) -> None:
    db, _ = registered
    answers: list[tuple[float, int, str]] = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                sent = time.time()  # when the request left: after the swap, every new request goes to the new version
                r = http.post(f"{server}/v1/predict", json={"model": "reviews", "text": "great wonderful food"})
                answers.append((sent, r.status_code, r.json().get("model_version", "") if r.status_code == 200 else r.text))

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()

    def wait_for(version: str) -> float:
        """When a request answered by `version` was received (so the swap is done by then)."""
        deadline = time.time() + 30
        while time.time() < deadline:
            if answers and answers[-1][2] == version:
                return time.time()
            time.sleep(0.05)
        raise AssertionError(f"never served {version}")

    wait_for("reviews-v1")
    _cli(db, "promote", "reviews", "2")
    promoted = wait_for("reviews-v2")
    time.sleep(1.0)
    _cli(db, "rollback", "reviews")
    wait_for("reviews-v1")
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join()
    statuses = [code for _, code, _ in answers]
    assert statuses.count(200) == len(statuses) > 100, [a for a in answers if a[1] != 200][:3]
    versions = [v for _, _, v in answers]
    assert {"reviews-v1", "reviews-v2"} <= set(versions)
    settled = [v for t, _, v in answers if promoted < t < promoted + 1.0]
    assert settled and set(settled) == {"reviews-v2"}  # sent after the swap: answered by the new version
    assert versions[-1] == "reviews-v1"


def test_a_model_without_production_is_refused_at_start(registered: tuple[str, Path]) -> None:
    db, tmp = registered
    registry = Registry(Store(db))
    registry.add(tmp / "v1" / "run", "other")
    result = subprocess.run([sys.executable, "-m", "tunesmith", "serve", "--model", "other", "--db", db, "--port", str(free_port())],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "no version in production" in result.stderr


def test_the_admin_api_promotes_with_the_admin_key_only(registered: tuple[str, Path]) -> None:
    from fastapi.testclient import TestClient

    from tunesmith.config import ServeSpec
    from tunesmith.serve.app import create_app
    from tunesmith.serve.service import Service

    db, _ = registered
    registry = Registry(Store(db))
    app = create_app(Service([], ServeSpec(admin_key="adm"), registry=registry), ServeSpec(admin_key="adm"))
    with TestClient(app) as http:
        assert http.post("/admin/registry/reviews/promote", json={"version": 2}).status_code == 401
        ok = http.post("/admin/registry/reviews/promote", json={"version": 2}, headers={"Authorization": "Bearer adm"})
        assert ok.status_code == 200 and ok.json()["stage"] == "production" and ok.json()["version"] == 2
        missing = http.post("/admin/registry/reviews/promote", json={"version": 9}, headers={"Authorization": "Bearer adm"})
        assert missing.status_code == 404 and "no version 9" in missing.json()["error"]["message"]
        listed = http.get("/admin/registry", params={"model": "reviews"}, headers={"Authorization": "Bearer adm"}).json()
        assert [v["stage"] for v in listed][:2] == ["archived", "production"]
        back = http.post("/admin/registry/reviews/rollback", headers={"Authorization": "Bearer adm"}).json()
        assert back["version"] == 1


def test_a_promotion_waiting_for_the_store_s_lock_does_not_hold_up_the_server(registered: tuple[str, Path]) -> None:
    """The admin routes ran the registry on the event loop: a promotion waiting on SQLite's lock (30 s) held every
    other request, /healthz included."""
    import asyncio
    import sqlite3
    import threading

    import httpx

    from tunesmith.config import ServeSpec
    from tunesmith.serve.app import create_app
    from tunesmith.serve.service import Service

    db, _ = registered
    spec = ServeSpec(admin_key="adm")
    app = create_app(Service([], spec, registry=Registry(Store(db))), spec)
    holder = sqlite3.connect(db.removeprefix("sqlite:///"), isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # another process's transaction
    released = threading.Event()

    def release() -> None:
        if not released.is_set():
            released.set()
            holder.execute("COMMIT")

    timer = threading.Timer(20, release)  # at the latest: a test that fails does not hang
    timer.daemon = True
    timer.start()

    async def exchange() -> bool:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=60) as c:
            promotion = asyncio.create_task(c.post("/admin/registry/reviews/promote", json={"version": 2},
                                                   headers={"Authorization": "Bearer adm"}))
            await asyncio.sleep(0.5)  # the promotion waits for the lock
            assert (await c.get("/healthz")).status_code == 200
            answered_while_held = not released.is_set()
            release()
            assert (await promotion).status_code == 200
            return answered_while_held

    try:
        assert asyncio.run(exchange())
    finally:
        timer.cancel()
        release()
        holder.close()


def test_exports_of_one_run_have_ids_of_their_own_and_the_run_keeps_its_id(registered: tuple[str, Path], tmp_path: Path) -> None:
    """An onnx and an onnx-int8 export of one run keep its run.json bytes: all three had one ft: id and one batcher, so
    an A/B test between two exports compared one engine with itself (and serving both was refused as one run twice)."""
    import hashlib
    import json
    import shutil

    from tunesmith.artifacts import Run
    from tunesmith.serve.models import model_id

    _, tmp = registered
    run = Run(tmp / "v1" / "run")
    ident, digest = model_id(run)
    assert digest == hashlib.sha256((run.path / "run.json").read_bytes()).hexdigest()[:8]  # as jobs and clients name it
    exports = []
    for kind in ("onnx", "onnx-int8"):
        folder = shutil.copytree(run.path, tmp_path / kind)
        (folder / "export.json").write_text(json.dumps({"format": kind, "source_run": str(run.path)}))
        exports.append(model_id(Run(folder))[0])
    assert len({ident, *exports}) == 3 and all(e.rsplit(":", 1)[0] == ident.rsplit(":", 1)[0] for e in exports)


def test_a_production_version_whose_folder_is_gone_is_named_with_the_way_out(tmp_path: Path) -> None:
    """`serve --model m` said "not a finished tunesmith run ... train one", naming neither the model nor the version."""
    from tests.registry.test_service import fake_run
    from tunesmith.config import ServeSpec
    from tunesmith.errors import ConfigError
    from tunesmith.serve.service import Service

    registry = Registry(Store(f"sqlite:///{tmp_path / 'store.db'}"))
    registry.add(fake_run(tmp_path / "r1", 0.8), "reviews", stage="production")
    (tmp_path / "r1").rename(tmp_path / "r1-moved")
    service = Service([], ServeSpec(), registry=registry)
    for load in (lambda: service.load_production("reviews"), lambda: service.load_version("reviews", 1)):
        with pytest.raises(ConfigError, match=f"registry model 'reviews' version 1 \\(production\\) at {tmp_path / 'r1'} "
                                              "cannot be loaded: .*`tunesmith registry rollback reviews`"):
            load()
