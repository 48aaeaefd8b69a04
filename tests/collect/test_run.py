"""Which collection runs when: a finished one is reused only for the settings it was made from, and a REST refresh
that stops short keeps the previous collection."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.collect.conftest import FAST_HTTP, FixtureServer, Hit, Reply
from tunesmith.collect.run import collect_one
from tunesmith.collect.sink import collected_file, meta_file
from tunesmith.config import ProjectConfig, parse_config

TEMPLATES = {"method": "templates", "per_label": 2, "seed": 1,
             "templates": {"pos": ["A {x} meal."], "neg": ["A poor {x} meal."]}, "slots": {"x": ["hot", "cold", "fine"]}}


def config(tmp_path: Path, *sources: dict[str, Any]) -> ProjectConfig:
    return parse_config({"name": "t", "task": {"labels": ["neg", "pos"]},
                         "data": {"sources": list(sources), "collect_dir": str(tmp_path / "collected")}})


def rest(server: FixtureServer, path: str, **http: Any) -> dict[str, Any]:
    return {"rest": {"url": server.url(path), "pagination": "page", "records": "$.data[*]"}, "http": {**FAST_HTTP, **http}}


def ids(cfg: ProjectConfig, index: int = 0) -> list[Any]:
    path = collected_file(cfg, index, cfg.data.sources[index])
    return [json.loads(line)["id"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def api(rows: list[int]):
    def reply(hit: Hit) -> Reply:
        n = int(hit.query["page"])
        return Reply(body={"data": [{"id": i} for i in rows] if n == 1 else []})
    return reply


def test_a_collection_is_collected_again_when_its_source_changed(server, tmp_path: Path) -> None:
    """The file is named by position and kind only: a changed rest.url was "already collected", and the dataset was
    built from the old API's rows without a word."""
    server.route("/old", api([1, 2, 3]))
    server.route("/new", api([7]))
    assert collect_one(config(tmp_path, rest(server, "/old")), 0).rows == 3
    # http settings say how politely, not what: the collection stands
    assert collect_one(config(tmp_path, rest(server, "/old", rate_limit=5, cache=False)), 0).skipped
    said: list[str] = []
    cfg = config(tmp_path, rest(server, "/new"))
    done = collect_one(cfg, 0, say=said.append)
    assert not done.skipped and done.rows == 1 and ids(cfg) == [7]
    assert any("settings changed since it was collected" in s for s in said)
    assert collect_one(cfg, 0).skipped


def test_a_changed_synthetic_source_and_a_collection_from_before_the_hash(tmp_path: Path) -> None:
    cfg = config(tmp_path, {"synthetic": TEMPLATES})
    first = collect_one(cfg, 0)
    assert first.rows == 4 and meta_file(first.path).exists()
    assert collect_one(cfg, 0).skipped
    more = config(tmp_path, {"synthetic": {**TEMPLATES, "per_label": 3}})
    assert collect_one(more, 0).rows == 6
    meta_file(first.path).unlink()  # made before the hash was kept: unknown, so reused as it was
    assert collect_one(cfg, 0).skipped


def test_a_rest_refresh_that_stops_short_keeps_the_previous_collection(server, tmp_path: Path) -> None:
    """--refresh deleted the complete collection before fetching: an API that was down left 0 rows."""
    up = {"on": True}

    def reply(hit: Hit) -> Reply:
        return api([1, 2, 3])(hit) if up["on"] else Reply(503, body={"error": "down"})

    server.route("/api", reply)
    cfg = config(tmp_path, rest(server, "/api", retries=0, cache=False))
    path = collect_one(cfg, 0).path
    up["on"] = False
    failed = collect_one(cfg, 0, refresh=True)
    assert failed.rows == 3 and ids(cfg) == [1, 2, 3] and failed.failures == 0
    assert "previous collection is kept" in failed.notes[0] and "503" in failed.notes[0]
    assert collect_one(cfg, 0).skipped  # still complete: its state came back too
    up["on"] = True
    again = collect_one(cfg, 0, refresh=True)
    assert again.rows == 3 and not again.skipped
    assert sorted(p.name for p in path.parent.iterdir() if p.name.endswith(".previous")) == []
