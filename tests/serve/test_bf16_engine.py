"""Classifiers served in bf16 on CPUs that compute it natively (AMX or AVX512-BF16): chosen by auto there, fp32's
labels, checked against fp32 at load, refused where bf16 would be emulated or would cost a regression run its values."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tunesmith.cli import run as cli
from tunesmith.errors import ConfigError
from tunesmith.inference import bf16_engine, onnx_engine, openvino_engine
from tunesmith.inference.serve_cache import CACHE_DIR, FINGERPRINT
from tunesmith.models import hardware
from tunesmith.serve.models import PredictorEngine

TEXTS = ["great wonderful friendly food", "terrible stale bitter", "", "ok " * 40, "Ünïcödé 123"]


@pytest.fixture(autouse=True)
def no_openvino(monkeypatch: pytest.MonkeyPatch) -> None:
    """auto takes OpenVINO first on CPUs with native bf16 (test_openvino_engine.py); these tests are about PyTorch's bf16."""
    monkeypatch.setattr(openvino_engine, "unavailable", lambda run: "not under test")


def host(monkeypatch: pytest.MonkeyPatch, flags: set[str]) -> None:
    monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset(flags))


@pytest.mark.parametrize(("name", "flags"), [("clf", {"avx512f", "avx512_bf16", "amx_bf16"}),  # Intel with AMX
                                             ("lora", {"avx512f", "avx512_bf16"})])  # Zen 4/5: AVX512-BF16 without AMX
def test_auto_serves_a_classifier_in_bf16_on_native_bf16_cpus_with_fp32s_labels(
        classifier_runs: dict[str, Path], name: str, flags: set[str], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    host(monkeypatch, flags)
    engine = PredictorEngine(classifier_runs[name])
    assert "engine PyTorch (bf16 weights" in capsys.readouterr().out
    model = engine.predictor.model
    assert engine.predictor.backend == "torch" and {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert engine.name == "torch bf16" and engine.predictor.graph is not None  # the traced forward pass answers
    assert not any("lora_" in n for n, _ in model.named_parameters())  # the adapter merged: plain products
    fp32 = PredictorEngine(classifier_runs[name], engine="torch").predictor
    assert {p.dtype for p in fp32.model.parameters()} == {torch.float32}
    ours, theirs = engine.predictor.logits(TEXTS), fp32.logits(TEXTS)
    assert ours.dtype == np.float32 and not np.array_equal(ours, theirs)  # really computed in bf16
    np.testing.assert_allclose(ours, theirs, atol=0.05 * max(1.0, float(np.abs(theirs).max())))
    answers = engine.predict(TEXTS)
    assert [a["label"] for a in answers] == fp32.predict(TEXTS).labels
    assert all(sum(a["probabilities"].values()) == pytest.approx(1, abs=1e-4) for a in answers)


def test_auto_keeps_onnxruntime_without_native_bf16_and_regression_in_fp32(classifier_runs: dict[str, Path],
                                                                          monkeypatch: pytest.MonkeyPatch,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    host(monkeypatch, {"avx2", "avx512f", "avx512_vnni"})  # AVX-512 without bf16 (or AVX2 only): emulated
    assert PredictorEngine(classifier_runs["clf"]).predictor.backend == "onnx"
    host(monkeypatch, {"avx512f", "avx512_bf16", "amx_bf16"})
    assert PredictorEngine(classifier_runs["reg"]).predictor.backend == "onnx"
    assert "bf16 weights" not in capsys.readouterr().out


def test_asked_for_by_name_it_serves_with_native_bf16_and_refuses_without(classifier_runs: dict[str, Path],
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    host(monkeypatch, {"avx512f", "avx512_bf16"})
    engine = PredictorEngine(classifier_runs["clf"], engine=bf16_engine.NAME)
    assert next(engine.predictor.model.parameters()).dtype == torch.bfloat16
    with pytest.raises(ConfigError, match=r"reg/run: cannot serve with --classifier-engine torch-bf16: a regression run"):
        PredictorEngine(classifier_runs["reg"], engine=bf16_engine.NAME)
    host(monkeypatch, {"avx2"})
    with pytest.raises(ConfigError, match=r"neither AMX nor AVX512-BF16.*use --classifier-engine torch"):
        PredictorEngine(classifier_runs["clf"], engine=bf16_engine.NAME)


def test_a_traced_graph_that_strays_from_eager_is_not_used(classifier_runs: dict[str, Path], monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    host(monkeypatch, {"avx512f", "avx512_bf16", "amx_bf16"})
    traced = PredictorEngine(classifier_runs["clf"]).predictor
    monkeypatch.setattr(bf16_engine, "MAX_GRAPH_GAP", -1.0)  # every traced graph "differs"
    eager = PredictorEngine(classifier_runs["clf"]).predictor
    assert "bf16 runs eagerly (its traced graph's logits differ from eager's" in capsys.readouterr().out
    assert eager.graph is None and next(eager.model.parameters()).dtype == torch.bfloat16
    np.testing.assert_allclose(traced.logits(TEXTS, batch_size=2), eager.logits(TEXTS, batch_size=2), atol=1e-2)


def test_bf16_batches_are_padded_to_few_shapes_with_the_same_logits(classifier_runs: dict[str, Path],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """bf16 products are compiled per shape on a CPU: token counts are padded to multiples of 8, which the mask hides."""
    host(monkeypatch, {"avx512f", "avx512_bf16", "amx_bf16"})
    predictor = PredictorEngine(classifier_runs["clf"]).predictor
    lengths: list[int] = []
    pad = predictor.tokenizer.pad

    def recorded_pad(*args, **kwargs):
        batch = pad(*args, **kwargs)
        lengths.append(batch["input_ids"].shape[1])
        return batch

    monkeypatch.setattr(predictor.tokenizer, "pad", recorded_pad)
    padded = predictor.logits(TEXTS, batch_size=2)
    assert lengths and all(n % hardware.BF16_PAD_MULTIPLE == 0 for n in lengths)
    predictor.pad_multiple = None
    np.testing.assert_allclose(padded, predictor.logits(TEXTS, batch_size=2), atol=2e-2)


def test_a_model_that_strays_in_bf16_is_not_served(classifier_runs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    host(monkeypatch, {"avx512f", "avx512_bf16", "amx_bf16"})
    monkeypatch.setattr(bf16_engine, "MAX_LOGIT_GAP", -1.0)  # every bf16 model "differs"
    engine = PredictorEngine(classifier_runs["clf"])
    assert engine.predictor.backend == "onnx"  # auto went on to the next engine
    with pytest.raises(ConfigError, match=r"its logits in bf16 differ from fp32's"):
        PredictorEngine(classifier_runs["clf"], engine=bf16_engine.NAME)


def test_serve_prepare_with_bf16_also_converts_the_onnx_graph_other_hosts_serve(classifier_runs: dict[str, Path], tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch,
                                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """An image built on a host with native bf16 (`serve --prepare`) and run on one without: that host's start finds
    its graph."""
    run = tmp_path / "run"
    shutil.copytree(classifier_runs["clf"], run, ignore=shutil.ignore_patterns(CACHE_DIR))
    host(monkeypatch, {"avx512f", "avx512_bf16", "amx_bf16"})
    assert cli(["serve", str(run), "--prepare"]) == 0
    out = capsys.readouterr().out
    assert "engine PyTorch (bf16 weights" in out and "also converted: onnxruntime fp32 graph for CPUs without native bf16" in out
    fingerprint = run / CACHE_DIR / onnx_engine.CACHE_NAME / FINGERPRINT
    stamp = fingerprint.stat().st_mtime_ns
    host(monkeypatch, {"avx2"})
    engine = PredictorEngine(run)
    assert engine.name == "onnxruntime fp32" and fingerprint.stat().st_mtime_ns == stamp  # found converted
    assert cli(["serve", str(run), "--prepare", "--classifier-engine", "torch"]) == 0  # an engine named: nothing else
    assert "also converted" not in capsys.readouterr().out

    def fails(run: object) -> None:
        raise RuntimeError("unsupported operator")
    monkeypatch.setattr(onnx_engine, "onnx_model", fails)  # a graph that cannot be made fails no image build
    host(monkeypatch, {"avx512f", "avx512_bf16", "amx_bf16"})
    assert cli(["serve", str(run), "--prepare"]) == 0
    assert "no onnxruntime graph for CPUs without native bf16 (RuntimeError: unsupported operator)" in capsys.readouterr().out


def test_padding_to_the_multiple_never_goes_past_max_length(classifier_runs: dict[str, Path]) -> None:
    """A model whose context is no multiple of 8 has no positions past it: a text cut at max_length stays unpadded."""
    from tunesmith.inference.predictor import Predictor

    predictor = Predictor(classifier_runs["clf"])
    predictor.manifest = predictor.manifest.model_copy(update={"max_length": 13})
    predictor.pad_multiple = hardware.BF16_PAD_MULTIPLE
    lengths: list[int] = []
    predictor.model.register_forward_pre_hook(lambda module, args, kwargs: lengths.append(kwargs["input_ids"].shape[1]),
                                              with_kwargs=True)
    predictor.logits(["ok " * 40, "great food"], batch_size=1)
    assert sorted(lengths) == [8, 13]
