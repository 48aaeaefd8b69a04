"""Classifiers served on onnxruntime: the run converted once into its serve cache, PyTorch's predictions,
PyTorch where the conversion cannot be trusted (auto) or a refusal (asked for by name)."""

from __future__ import annotations

import os
import re
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnx
import pytest

from tests.test_train import project
from tunesmith.artifacts import Run
from tunesmith.cli import run as cli
from tunesmith.errors import ConfigError, DataError
from tunesmith.inference import onnx_engine
from tunesmith.inference.serve_cache import CACHE_DIR, FINGERPRINT, converted
from tunesmith.models import hardware
from tunesmith.serve.models import PredictorEngine
from tunesmith.training import train

TEXTS = ["great wonderful friendly food", "terrible stale bitter", "", "ok " * 40, "Ünïcödé 123"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path, tiny_llama: Path) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("onnx-engine")
    out = {}
    for name, model, task, spec in (("clf", tiny_bert, None, {}),
                                    ("lora", tiny_bert, None, {"method": "lora", "learning_rate": 5e-3}),
                                    ("reg", tiny_bert, {"type": "regression"}, {}),
                                    ("decoder", tiny_llama, None, {})):  # last-token pooling, no token_type_ids
        (tmp / name).mkdir()
        out[name] = train(project(tmp / name, model, task=task, train_spec={"max_steps": 20, **spec}))
    return out


@pytest.fixture(autouse=True)
def no_native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    """auto takes bf16 on CPUs with native bf16 (test_bf16_engine.py); these tests are about onnxruntime on every host."""
    monkeypatch.setattr(hardware, "native_bf16", lambda: False)


def outputs(engine: PredictorEngine, texts: list[str]) -> np.ndarray:
    return engine.predictor.logits(texts)


@pytest.mark.parametrize("name", ["clf", "lora", "reg", "decoder"])
def test_served_on_onnxruntime_with_pytorchs_predictions(runs: dict[str, Path], name: str,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    graph = PredictorEngine(runs[name])
    assert graph.predictor.backend == "onnx" and graph.predictor.model is None
    assert "engine onnxruntime (fp32)" in capsys.readouterr().out
    torch_engine = PredictorEngine(runs[name], engine="torch")
    assert torch_engine.predictor.backend == "torch"
    assert (graph.name, torch_engine.name) == ("onnxruntime fp32", "torch fp32")
    np.testing.assert_allclose(outputs(graph, TEXTS), outputs(torch_engine, TEXTS), atol=1e-4)
    assert graph.predict(TEXTS[:2])[0].keys() == torch_engine.predict(TEXTS[:2])[0].keys()


def test_serve_prepare_converts_once_and_exits(runs: dict[str, Path], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """`tunesmith serve RUN --prepare` (the Docker image's build step): the conversion made, no server started."""
    run = tmp_path / "run"
    shutil.copytree(runs["reg"], run, ignore=shutil.ignore_patterns(CACHE_DIR))
    assert cli(["serve", str(run), "--prepare"]) == 0
    out = capsys.readouterr().out
    assert "engine onnxruntime (fp32)" in out and f"ready ({run})" in out
    stamp = (run / CACHE_DIR / onnx_engine.CACHE_NAME / FINGERPRINT).stat().st_mtime_ns
    PredictorEngine(run)  # a server's start finds it converted
    assert (run / CACHE_DIR / onnx_engine.CACHE_NAME / FINGERPRINT).stat().st_mtime_ns == stamp
    assert cli(["serve", "--prepare"]) == 2 and "name the RUN folders to prepare" in capsys.readouterr().err


def test_the_graph_is_cached_and_its_attention_is_plain(runs: dict[str, Path]) -> None:
    folder = runs["clf"] / CACHE_DIR / onnx_engine.CACHE_NAME
    PredictorEngine(runs["clf"])
    stamp = (folder / FINGERPRINT).stat().st_mtime_ns
    PredictorEngine(runs["clf"])
    assert (folder / FINGERPRINT).stat().st_mtime_ns == stamp  # not converted again
    ops = {n.op_type for n in onnx.load(str(folder / onnx_engine.ONNX_FILE)).graph.node}
    assert "Softmax" in ops and "IsNaN" not in ops  # no SDPA guard (IsNaN, Where) over every attention score


def test_a_graph_that_strays_from_pytorch_is_not_served(runs: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(onnx_engine, "MAX_LOGIT_GAP", -1.0)  # every graph "differs"
    monkeypatch.setattr(onnx_engine, "CACHE_NAME", "onnx-fp32-strict")  # a fresh cache folder
    engine = PredictorEngine(runs["reg"])
    assert engine.predictor.backend == "torch"
    assert "onnxruntime: conversion failed: ConfigError:" in capsys.readouterr().out
    assert not (runs["reg"] / CACHE_DIR / "onnx-fp32-strict").exists()  # nothing half-made is left to be served
    with pytest.raises(ConfigError, match=r"logits differ from PyTorch's"):
        PredictorEngine(runs["reg"], engine="onnxruntime")


def test_an_onnx_export_is_served_as_it_is(runs: dict[str, Path], tmp_path: Path) -> None:
    from tunesmith.export import export_run

    export_run(runs["clf"], "onnx", tmp_path / "exported", check=False)
    engine = PredictorEngine(tmp_path / "exported")
    assert engine.predictor.backend == "onnx" and not (tmp_path / "exported" / CACHE_DIR).exists()
    assert engine.name == "onnxruntime (ONNX export)"


def test_an_onnx_export_refuses_an_engine_it_cannot_run_on(runs: dict[str, Path], tmp_path: Path) -> None:
    """--classifier-engine torch (torch-bf16, openvino-bf16) on an ONNX export served onnxruntime without a word."""
    from tunesmith.export import export_run

    export_run(runs["clf"], "onnx", tmp_path / "exported", check=False)
    for engine in ("torch", "torch-bf16", "openvino-bf16"):
        source = re.escape(str(runs["clf"].resolve()))
        with pytest.raises(ConfigError, match=rf"--classifier-engine {engine} .*always runs on onnxruntime.*"
                                              rf"serve the run it was exported from \({source}\)"):
            PredictorEngine(tmp_path / "exported", engine=engine)
    for engine in ("auto", "onnxruntime"):
        assert PredictorEngine(tmp_path / "exported", engine=engine).name == "onnxruntime (ONNX export)"


def test_first_requests_converting_at_once_convert_once_and_all_find_it(runs: dict[str, Path], tmp_path: Path) -> None:
    """Side by side, each conversion renamed the other's folder away: FileNotFoundError, "Directory not empty", or
    a path whose graph was gone."""
    run = tmp_path / "run"
    shutil.copytree(runs["clf"], run, ignore=shutil.ignore_patterns(CACHE_DIR))
    calls = []

    def convert(folder: Path) -> None:
        calls.append(folder)
        time.sleep(0.2)
        (folder / onnx_engine.ONNX_FILE).write_text("graph")

    def first_request(_: int) -> str:
        return (converted(Run(run), "graph", "v1", convert) / onnx_engine.ONNX_FILE).read_text()

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(first_request, range(4))) == ["graph"] * 4
    assert len(calls) == 1


def test_a_read_only_run_serves_the_conversion_prepared_in_it(runs: dict[str, Path], tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """`serve --prepare`, then the run mounted read-only: it was converted again into the user's cache folder."""
    run = tmp_path / "run"
    shutil.copytree(runs["clf"], run, ignore=shutil.ignore_patterns(CACHE_DIR))

    def convert(folder: Path) -> None:
        (folder / onnx_engine.ONNX_FILE).write_text("graph")

    prepared = converted(Run(run), "graph", "v1", convert)
    access = os.access

    def read_only_run(path: str | Path, mode: int, **kw: object) -> bool:
        return False if Path(path) == run and mode == os.W_OK else access(path, mode, **kw)

    monkeypatch.setattr(os, "access", read_only_run)
    monkeypatch.setenv("TUNESMITH_CACHE", str(tmp_path / "cache"))
    assert converted(Run(run), "graph", "v1", lambda folder: pytest.fail("converted again")) == prepared
    assert not (tmp_path / "cache").exists()
    stale = converted(Run(run), "graph", "v2", convert)  # another converter: the user's cache, not the run
    assert stale.is_relative_to(tmp_path / "cache") and (stale / onnx_engine.ONNX_FILE).is_file()


def test_a_cut_onnx_graph_is_named_not_an_internal_error(runs: dict[str, Path], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """An ONNX export whose model.onnx was cut (a copy cut short) surfaced as "internal error: InvalidProtobuf: Load
    model from ... failed" and a traceback file; it is a DataError (exit 3) naming the file and what to do. A cut
    graph in the serve cache says to delete the conversion."""
    from tunesmith.export import export_run
    from tunesmith.inference.predictor import Predictor

    export_run(runs["clf"], "onnx", tmp_path / "exported", check=False)
    graph = tmp_path / "exported" / "model" / "model.onnx"
    graph.write_bytes(graph.read_bytes()[:5000])
    with pytest.raises(DataError, match=rf"^{re.escape(str(graph))}: damaged or partly copied, onnxruntime cannot "
                                        r"load it \(.*Protobuf parsing failed.*\); "
                                        "re-copy the export or export the run again$"):
        Predictor(tmp_path / "exported")
    capsys.readouterr()
    assert cli(["serve", str(tmp_path / "exported"), "--prepare"]) == 3
    err = capsys.readouterr().err
    assert f"error: {graph}: damaged or partly copied" in err and "internal error" not in err

    run = tmp_path / "run"
    shutil.copytree(runs["clf"], run, ignore=shutil.ignore_patterns(CACHE_DIR))
    cached = onnx_engine.onnx_model(Run(run))
    cached.write_bytes(b"")
    with pytest.raises(DataError, match=rf"^{re.escape(str(cached))}: damaged or partly copied, onnxruntime cannot "
                                        rf"load it \(.*\); delete {re.escape(str(cached.parent))} "
                                        "to have the run converted again$"):
        PredictorEngine(run)


def test_a_prompt_tuning_run_is_served_on_pytorch_and_a_converting_engine_says_why(tmp_path: Path, tiny_bert: Path,
                                                                                    capsys: pytest.CaptureFixture[str]
                                                                                    ) -> None:
    """Its virtual tokens are inputs, not weights: every converting engine merged it first and failed with an
    AttributeError (named: an internal error; auto: three failed conversions before PyTorch)."""
    from tunesmith.inference import bf16_engine, openvino_engine

    run = Run(train(project(tmp_path, tiny_bert, train_spec={"max_steps": 4, "method": "prompt_tuning"})))
    for engine in (onnx_engine, bf16_engine, openvino_engine):
        assert "prompt-tuning run cannot be merged" in (engine.unavailable(run) or "")
    served = PredictorEngine(run.path)
    assert served.predictor.backend == "torch" and "conversion failed" not in capsys.readouterr().out
    with pytest.raises(ConfigError, match="cannot serve with --classifier-engine onnxruntime: a prompt-tuning run"):
        PredictorEngine(run.path, engine="onnxruntime")
