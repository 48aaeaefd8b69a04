"""An A/B test through the real server: `serve --model` splits 600 users between two versions
(sticky), a known effect (70% vs 50% positive feedback) goes in through POST /v1/feedback, and
`tunesmith ab status` finds it; `ab stop --promote` puts the winner in production."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np

from tests.servers import start_server, stop_server
from tests.test_train import project
from tunesmith.registry.service import Registry
from tunesmith.store.db import Store
from tunesmith.training import train

ADMIN = "adm-key"


def test_a_known_effect_is_found_through_the_server(tmp_path: Path, tiny_bert: Path) -> None:
    db = f"sqlite:///{tmp_path / 'store.db'}"
    registry = Registry(Store(db))
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        registry.add(train(project(tmp_path / name, tiny_bert, train_spec={"max_steps": 4})), "reviews")
    registry.promote("reviews", 1)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}

    def cli(*args: str) -> str:
        return subprocess.run([sys.executable, "-m", "tunesmith", *args, "--db", db], capture_output=True, text=True,
                              env=env, check=True).stdout

    cli("ab", "start", "--model", "reviews", "--variants", "v1=0.5,v2=0.5", "--horizon", "240")
    server, url = start_server(["--model", "reviews", "--db", db, "--admin-key", ADMIN], tmp_path / "server.log")
    try:
        rng = np.random.default_rng(11)
        users = 600
        likes = rng.random(users)
        rates = {"reviews-v1": 0.5, "reviews-v2": 0.7}  # z about 5 at 300 users per arm: found whatever the split
        clients = threading.local()

        def user(i: int) -> str:
            http = getattr(clients, "http", None) or httpx.Client(timeout=30)  # one keep-alive connection per thread
            clients.http = http
            answer = http.post(f"{url}/v1/predict", json={"model": "reviews", "text": f"great tea {i}", "user": f"user-{i}"}).json()
            again = http.post(f"{url}/v1/predict", json={"model": "reviews", "text": "again", "user": f"user-{i}"}).json()
            assert again["model_version"] == answer["model_version"]  # sticky
            rating = "up" if likes[i] < rates[answer["model_version"]] else "down"
            r = http.post(f"{url}/v1/feedback", json={"request_id": answer["id"], "rating": rating, "user_id": f"user-{i}"})
            assert r.status_code == 201, r.text
            return answer["model_version"]

        with ThreadPoolExecutor(8) as pool:
            versions = list(pool.map(user, range(users)))
        assert 250 < versions.count("reviews-v2") < 350
        status = json.loads(cli("ab", "status", "--model", "reviews", "--json"))
        assert status["decided"] and status["winner"] == "v2", status["verdict"]
        assert status["p_value"] < 0.05 and "v2 is better than v1" in status["verdict"]
        assert [v["requests"] for v in status["variants"]] == [2 * versions.count("reviews-v1"), 2 * versions.count("reviews-v2")]
        admin = httpx.get(f"{url}/admin/ab/reviews", headers={"Authorization": f"Bearer {ADMIN}"})
        assert admin.status_code == 200 and admin.json()["winner"] == "v2"
        assert httpx.get(f"{url}/admin/ab/reviews").status_code in (401, 403)
        assert httpx.get(f"{url}/admin/ab/nothing", headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 404
        cli("ab", "stop", "--model", "reviews", "--promote", "v2")
        assert registry.production("reviews").version == 2
        deadline = time.time() + 20  # the server drops the split and serves the new production version
        while httpx.post(f"{url}/v1/predict", json={"model": "reviews", "text": "tea", "user": "user-1"}).json()["model_version"] != "reviews-v2":
            assert time.time() < deadline
            time.sleep(0.2)
    finally:
        stop_server(server)
