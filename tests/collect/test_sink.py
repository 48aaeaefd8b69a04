"""The sink a collector writes through: records and failures replace the old ones together, or not at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunesmith.collect.sink import Sink, failures_file


def test_an_interrupted_refresh_keeps_the_old_records_and_their_failures(tmp_path: Path) -> None:
    """The failure list was emptied at the start: the old records stayed, and their 404 was forgotten."""
    path = tmp_path / "source-1-web.jsonl"
    with Sink(path, "web") as sink:
        sink.add({"text": "a"}, origin="http://x.test/a")
        sink.fail("http://x.test/gone", "HTTP 404 Not Found", status=404)
    with pytest.raises(KeyboardInterrupt), Sink(path, "web") as sink:  # collect --refresh, then Ctrl-C
        sink.add({"text": "b"}, origin="http://x.test/b")
        raise KeyboardInterrupt
    assert len(path.read_text().splitlines()) == 1 and "HTTP 404" in failures_file(path).read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, failures_file(path).name])  # no .partial left
    with Sink(path, "web") as sink:  # a refresh that finishes replaces both
        sink.add({"text": "c"}, origin="http://x.test/c")
    assert failures_file(path).read_text() == "" and '"c"' in path.read_text()


def test_a_resumed_sink_counts_the_failures_it_keeps_and_drops_the_stale_ones(tmp_path: Path) -> None:
    path = tmp_path / "source-1-rest.jsonl"
    with Sink(path, "rest", resume=True) as sink:
        sink.fail("http://x.test/api?page=2", "HTTP 503", status=503, page=2)
        sink.fail("http://x.test/api?page=5", "HTTP 503", status=503, page=5)
    failures_file(path).write_text(failures_file(path).read_text() + "not json\n")
    with Sink(path, "rest", resume=True) as sink:
        assert sink.failures == 3  # the earlier run's still stand
        sink.drop_failures(lambda failure: failure.get("page") == 2)
        sink.fail("http://x.test/api?page=6", "HTTP 500", status=500, page=6)
        assert sink.failures == 3
    lines = failures_file(path).read_text().splitlines()
    assert [line.split('"page": ')[-1].rstrip("}") for line in lines] == ["5", "not json", "6"]
