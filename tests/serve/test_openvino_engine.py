"""Classifiers served on OpenVINO in bf16 on CPUs that compute it natively: chosen first by auto there, fp32's labels,
checked against the fp32 graph at load, refused where OpenVINO would not compute bf16 or a regression run would lose
its values, and passed over by auto (to PyTorch's bf16) when it cannot serve."""

from __future__ import annotations

import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from tunesmith.cli import run as cli
from tunesmith.errors import ConfigError
from tunesmith.inference import bf16_engine, onnx_engine, openvino_engine
from tunesmith.inference.serve_cache import CACHE_DIR, FINGERPRINT
from tunesmith.models import hardware
from tunesmith.serve.models import PredictorEngine

TEXTS = ["great wonderful friendly food", "terrible stale bitter", "", "ok " * 40, "Ünïcödé 123"]
BF16_HERE = hardware.native_bf16()  # the real host's: OpenVINO computes bf16 only where the CPU does


def host(monkeypatch: pytest.MonkeyPatch, flags: set[str]) -> None:
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset(flags))


@pytest.mark.skipif(not BF16_HERE, reason="this CPU has neither AMX nor AVX512-BF16: OpenVINO would compute fp32")
@pytest.mark.parametrize("name", ["clf", "lora"])
def test_auto_serves_a_classifier_on_openvino_in_bf16_with_fp32s_labels(classifier_runs: dict[str, Path], name: str,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    engine = PredictorEngine(classifier_runs[name])
    assert "engine OpenVINO (bf16, a CPU with native bf16)" in capsys.readouterr().out
    assert engine.name == "openvino bf16" and engine.predictor.backend == "onnx" and engine.predictor.model is None
    assert isinstance(engine.predictor.session, openvino_engine.Session) and engine.predictor.session.precision == "bf16"
    fp32 = PredictorEngine(classifier_runs[name], engine="onnxruntime")
    ours, theirs = engine.predictor.logits(TEXTS), fp32.predictor.logits(TEXTS)
    assert ours.dtype == np.float32 and not np.array_equal(ours, theirs)  # really computed in bf16
    np.testing.assert_allclose(ours, theirs, atol=0.05 * max(1.0, float(np.abs(theirs).max())))
    answers = engine.predict(TEXTS)
    assert [a["label"] for a in answers] == [a["label"] for a in fp32.predict(TEXTS)]
    assert all(sum(a["probabilities"].values()) == pytest.approx(1, abs=1e-4) for a in answers)


@pytest.mark.skipif(not BF16_HERE, reason="this CPU has neither AMX nor AVX512-BF16: OpenVINO would compute fp32")
def test_concurrent_batches_get_their_own_answers(classifier_runs: dict[str, Path]) -> None:
    """The server's executor may run two batches at once: each call gets its own inference request."""
    predictor = PredictorEngine(classifier_runs["clf"], engine=openvino_engine.NAME).predictor
    batches = [TEXTS[i:] + TEXTS[:i] for i in range(len(TEXTS))] * 4
    alone = [predictor.logits(b) for b in batches]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(predictor.logits, batches))
    for a, b in zip(alone, together, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(not BF16_HERE, reason="this CPU has neither AMX nor AVX512-BF16: OpenVINO would compute fp32")
def test_micro_batches_are_padded_to_few_shapes_without_changing_the_answers(classifier_runs: dict[str, Path]) -> None:
    predictor = PredictorEngine(classifier_runs["clf"], engine=openvino_engine.NAME).predictor
    inner, lengths = predictor.session, []

    class Recording:
        input_names = inner.input_names

        def run(self, outputs: list[str], feed: dict[str, np.ndarray]) -> list[np.ndarray]:
            lengths.append(feed["input_ids"].shape[1])
            return inner.run(outputs, feed)

    predictor.session = Recording()
    padded = predictor.logits(TEXTS, batch_size=1)
    assert lengths and all(n % hardware.BF16_PAD_MULTIPLE == 0 for n in lengths)
    predictor.pad_multiple, lengths[:] = None, []
    unpadded = predictor.logits(TEXTS, batch_size=1)
    assert any(n % hardware.BF16_PAD_MULTIPLE for n in lengths)  # the texts' own lengths are not all multiples
    np.testing.assert_allclose(padded, unpadded, atol=0.05 * max(1.0, float(np.abs(unpadded).max())))
    assert (padded.argmax(1) == unpadded.argmax(1)).all()


def test_auto_passes_it_over_without_native_bf16_and_for_regression(classifier_runs: dict[str, Path],
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    host(monkeypatch, {"avx2", "avx512f", "avx512_vnni"})  # AVX-512 without bf16: emulated
    assert PredictorEngine(classifier_runs["clf"]).name == "onnxruntime fp32"
    host(monkeypatch, {"avx512f", "avx512_bf16", "amx_bf16"})
    assert PredictorEngine(classifier_runs["reg"]).name == "onnxruntime fp32"
    assert "OpenVINO" not in capsys.readouterr().out
    with pytest.raises(ConfigError, match=r"reg/run: cannot serve with --classifier-engine openvino-bf16: a regression run"):
        PredictorEngine(classifier_runs["reg"], engine=openvino_engine.NAME)
    for flags in ({"avx2"}, {"avx512f", "avx512_vnni"}, {"avx512f", "avx512_bf16"}):  # PyTorch's bf16 engine's conditions
        host(monkeypatch, flags)
        for name in ("clf", "reg"):
            run = openvino_engine.Run(classifier_runs[name])
            assert openvino_engine.unavailable(run) == bf16_engine.unavailable(run)


def test_a_cpu_where_openvino_would_not_compute_bf16_is_refused(classifier_runs: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """OpenVINO quietly computes fp32 where it has no bf16 kernels: its own answer decides, not the CPU flags alone."""
    host(monkeypatch, {"avx512f", "avx512_bf16"})
    compile_model = openvino_engine.compile_model
    monkeypatch.setattr(openvino_engine, "compile_model", lambda path: compile_model(path, precision="f32"))
    with pytest.raises(ConfigError, match=r"clf/run: cannot serve with --classifier-engine openvino-bf16: OpenVINO "
                                          r"computes in f32 on this CPU, not bf16; use --classifier-engine torch"):
        PredictorEngine(classifier_runs["clf"], engine=openvino_engine.NAME)
    engine = PredictorEngine(classifier_runs["clf"])  # auto goes on to PyTorch's bf16, saying why
    assert engine.name == "torch bf16"
    assert ("engine PyTorch (bf16 weights, a CPU with native bf16; openvino-bf16: conversion failed: ConfigError: "
            in capsys.readouterr().out)


def test_a_model_that_strays_in_bf16_or_no_openvino_goes_to_the_next_engine(classifier_runs: dict[str, Path],
                                                                             monkeypatch: pytest.MonkeyPatch,
                                                                             capsys: pytest.CaptureFixture[str]) -> None:
    host(monkeypatch, {"avx512f", "avx512_bf16", "amx_bf16"})
    if BF16_HERE:  # where OpenVINO computes bf16 the logits check runs; elsewhere the precision check refuses first
        monkeypatch.setattr(openvino_engine, "MAX_LOGIT_GAP", -1.0)  # every bf16 graph "differs"
        with pytest.raises(ConfigError, match=r"its logits on OpenVINO in bf16 differ from fp32's"):
            PredictorEngine(classifier_runs["clf"], engine=openvino_engine.NAME)
        assert PredictorEngine(classifier_runs["clf"]).name == "torch bf16"
    monkeypatch.setitem(sys.modules, "openvino", None)  # not installed (an ARM host)
    assert openvino_engine.unavailable(openvino_engine.Run(classifier_runs["clf"])).startswith("openvino is not installed")
    assert PredictorEngine(classifier_runs["clf"]).name == "torch bf16"
    assert "openvino-bf16: openvino is not installed" in capsys.readouterr().out


@pytest.mark.skipif(not BF16_HERE, reason="this CPU has neither AMX nor AVX512-BF16: OpenVINO would compute fp32")
def test_serve_prepare_leaves_the_graph_hosts_without_bf16_serve(classifier_runs: dict[str, Path], tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """OpenVINO compiles the run's fp32 ONNX graph at each start: an image prepared on a host with native bf16 carries
    the graph onnxruntime serves on hosts without it."""
    run = tmp_path / "run"
    shutil.copytree(classifier_runs["clf"], run, ignore=shutil.ignore_patterns(CACHE_DIR))
    assert cli(["serve", str(run), "--prepare"]) == 0
    assert "engine OpenVINO (bf16, a CPU with native bf16)" in capsys.readouterr().out
    fingerprint = run / CACHE_DIR / onnx_engine.CACHE_NAME / FINGERPRINT
    stamp = fingerprint.stat().st_mtime_ns
    host(monkeypatch, {"avx2"})
    assert PredictorEngine(run).name == "onnxruntime fp32" and fingerprint.stat().st_mtime_ns == stamp  # found converted
