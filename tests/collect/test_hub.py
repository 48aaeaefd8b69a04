"""Hugging Face Hub datasets without the internet: the offline error, a dataset in the local cache by
name, a local folder by path, and a name the Hub (a local stand-in on 127.0.0.1) does not know."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tunesmith.collect import hub
from tunesmith.collect.sink import COLLECTOR, Sink, collected_file
from tunesmith.config import ProjectConfig, parse_config
from tunesmith.errors import DataError

ROWS = [{"text": "Crisp fries and a friendly waiter.", "label": "pos"},
        {"text": "The soup was cold.", "label": "neg"},
        {"text": "Great tiramisu, slow service.", "label": "pos"}]


@pytest.fixture()
def hf_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty, private Hugging Face home in offline mode: nothing real is found, nothing is fetched.

    `datasets` and `huggingface_hub` read these variables once, at import, so their module copies are
    set too."""
    import huggingface_hub.constants

    import datasets

    home = tmp_path / "hf-home"
    cache = home / "datasets"
    for key, value in {"HF_HOME": home, "HF_DATASETS_CACHE": cache, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}.items():
        monkeypatch.setenv(key, str(value))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HOME", str(home))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return home


def config(tmp_path: Path, **hub_spec: Any) -> ProjectConfig:
    return parse_config({"name": "t", "model": {"name": "tiny"},
                         "data": {"sources": [{"hub": hub_spec}], "collect_dir": str(tmp_path / "collected")}})


def collect(cfg: ProjectConfig) -> tuple[list[dict[str, Any]], list[str]]:
    spec = cfg.data.sources[0]
    said: list[str] = []
    with Sink(collected_file(cfg, 0, spec), "hub") as sink:
        hub.collect(cfg, 0, spec, sink, said.append)
    lines = collected_file(cfg, 0, spec).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines], said


def write_data_folder(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    return folder


def test_offline_and_not_cached_explains_what_to_do(tmp_path: Path, hf_home: Path) -> None:
    cfg = config(tmp_path, dataset="stanfordnlp/imdb")
    with pytest.raises(DataError) as err:
        collect(cfg)
    message = str(err.value)
    assert "'stanfordnlp/imdb'" in message and "neither reachable nor in the local cache" in message
    assert "offline mode is on" in message
    assert "~/.cache/huggingface" in message and "save_to_disk" in message and "kind: hf_disk" in message
    assert "tunesmith data packaged" in message
    assert not collected_file(cfg, 0, cfg.data.sources[0]).exists()  # a failed collection publishes nothing


def test_dataset_in_the_local_cache_by_name(tmp_path: Path, hf_home: Path) -> None:
    """Lay out the cache as a Hub download does (<owner>___<name>/<config>/<version>/<hash>/), then load by name offline."""
    from datasets.packaged_modules.json.json import Json

    data = write_data_folder(tmp_path / "download")
    builder = Json(cache_dir=str(hf_home / "datasets"), dataset_name="foodlab___meal-reviews", config_id="default",
                   data_files={"train": str(data / "train.jsonl")}, hash="0123abcd")
    builder.download_and_prepare()
    prepared = Path(builder.cache_dir)
    for arrow in prepared.glob("foodlab___meal-reviews-*.arrow"):  # the Hub builder names its files after the bare name
        arrow.rename(prepared / arrow.name.replace("foodlab___", ""))

    records, said = collect(config(tmp_path, dataset="foodlab/meal-reviews"))
    assert [{k: r[k] for k in ("text", "label")} for r in records] == ROWS
    assert [r["_provenance"]["row"] for r in records] == [0, 1, 2]
    prov = records[1]["_provenance"]
    assert prov["kind"] == "hub" and prov["collector"] == COLLECTOR
    assert prov["origin"] == "hf://foodlab/meal-reviews/default/train@main"
    assert said[-1] == "3 rows from 'foodlab/meal-reviews' [split 'train']"


def test_local_folder_by_path_offline(tmp_path: Path, hf_home: Path) -> None:
    folder = write_data_folder(tmp_path / "meal-reviews")
    records, _ = collect(config(tmp_path, dataset=str(folder)))
    assert [r["text"] for r in records] == [r["text"] for r in ROWS]
    assert records[0]["_provenance"]["origin"] == f"hf://{folder}/default/train@main"


def test_unknown_split_lists_the_ones_there(tmp_path: Path, hf_home: Path) -> None:
    folder = write_data_folder(tmp_path / "meal-reviews")
    with pytest.raises(DataError, match=r"split 'test'.*Unknown split \"test\". Should be one of \['train'\]"):
        collect(config(tmp_path, dataset=str(folder), split="test"))


@pytest.fixture()
def hub_without_the_dataset(hf_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """A stand-in for the Hub on 127.0.0.1 that answers every repository lookup as the real one does for a missing name."""
    import huggingface_hub.constants

    import datasets

    requests: list[str] = []

    class NotFound(http.server.BaseHTTPRequestHandler):
        def answer(self) -> None:
            requests.append(self.path)
            self.send_response(404)
            self.send_header("X-Error-Code", "RepoNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_HEAD = answer

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    yield requests
    server.shutdown()
    server.server_close()


def test_online_name_that_does_not_exist(tmp_path: Path, hub_without_the_dataset: list[str]) -> None:
    with pytest.raises(DataError) as err:
        collect(config(tmp_path, dataset="nobody/no-such-reviews"))
    message = str(err.value)
    assert "'nobody/no-such-reviews' was not found" in message and "owner/name" in message
    assert "neither reachable" not in message  # not mistaken for the offline case
    assert hub_without_the_dataset and "nobody/no-such-reviews" in hub_without_the_dataset[0]  # it did ask the (local) Hub
