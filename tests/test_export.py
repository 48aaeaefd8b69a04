"""`tunesmith export`: merged weights that plain transformers loads, ONNX (fp32 and int8) run folders
that Predictor, `evaluate` and `serve` take unchanged, a joblib bundle behind a trust flag, and a
Docker build context whose entrypoint serves /healthz (run outside Docker: there is no engine here)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.servers import free_port
from tests.test_train import project
from tests.test_train_chat import chat_project
from tunesmith.artifacts import DatasetVersion, Run
from tunesmith.cli import run as cli
from tunesmith.config import parse_config
from tunesmith.errors import ConfigError, DataError
from tunesmith.export import export_run, load_joblib
from tunesmith.inference.predictor import Predictor
from tunesmith.training import train

TEXTS = ["great wonderful friendly coffee", "terrible stale bitter bread", "the tea", "a much longer text about the price "
         "of a big bag of dried fruit that was not great and not terrible either"]


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path) -> Path:
    """LoRA with the native [CLS] head (the pooler and classifier trained in full beside the adapter)."""
    tmp = tmp_path_factory.mktemp("lora")
    return train(project(tmp, tiny_bert, train_spec={"method": "lora", "learning_rate": 5e-3, "max_steps": 20}))


@pytest.fixture(scope="module")
def mean_run(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path) -> Path:
    """Full fine-tuning with tunesmith's mean-pooled head (what sentence encoders such as minilm get)."""
    tmp = tmp_path_factory.mktemp("mean")
    raw = project(tmp, tiny_bert, train_spec={"max_steps": 30}).model_dump(mode="json")
    raw["model"]["pooling"] = "mean"
    return train(parse_config(raw))


def _err(capsys) -> str:
    return " ".join(capsys.readouterr().err.split())  # the console wraps long messages


def _logits(model, tokenizer, texts: list[str]) -> np.ndarray:
    with torch.no_grad():
        batch = tokenizer(texts, padding=True, truncation=True, max_length=32, return_tensors="pt")
        return model(**batch).logits.numpy()


def test_merged_lora_equals_base_plus_adapter_and_loads_with_plain_transformers(lora_run: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    result = export_run(lora_run, "merged", tmp_path / "merged")
    folder = tmp_path / "merged"
    assert result.path == folder and result.warnings == []
    test_rows = DatasetVersion(Run(lora_run).manifest.dataset).table("test").num_rows
    assert result.check["agreement"] == 1.0 and result.check["n"] == test_rows > 0
    model_dir = folder / "model"
    assert (model_dir / "model.safetensors").is_file() and not (model_dir / "adapter_config.json").exists()
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()  # no tunesmith, no peft
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    original = Predictor(lora_run).logits(TEXTS)  # base model + adapter through PEFT
    np.testing.assert_allclose(_logits(model, tokenizer, TEXTS), original, atol=1e-4)
    # ... and the export is a run folder tunesmith itself takes
    manifest = Run(folder).manifest
    assert manifest.adapter is False and manifest.method == "lora" and manifest.labels == Run(lora_run).manifest.labels
    np.testing.assert_allclose(Predictor(folder).logits(TEXTS), original, atol=1e-4)
    info = json.loads((folder / "export.json").read_text())
    assert info["format"] == "merged" and info["source_run"] == str(lora_run.resolve())
    assert info["check"]["agreement"] == 1.0 and info["check"]["accuracy_diff"] == 0.0


def test_an_ia3_run_with_the_native_head_merges(tmp_path: Path, tiny_bert: Path) -> None:
    """IA3 saved BERT's whole pooler beside the adapter, and PEFT's IA3 merge could not unwrap it: `export --format
    merged` (and onnx) failed with "'BertPooler' object has no attribute 'weight'"."""
    run = train(project(tmp_path, tiny_bert, train_spec={"method": "ia3", "learning_rate": 5e-3, "max_steps": 10}))
    from safetensors.torch import load_file

    assert any("pooler" in k for k in load_file(run / "model" / "adapter_model.safetensors"))  # trained beside it
    result = export_run(run, "merged", tmp_path / "merged")
    assert result.check["agreement"] == 1.0
    np.testing.assert_allclose(Predictor(tmp_path / "merged").logits(TEXTS), Predictor(run).logits(TEXTS), atol=1e-4)


def test_merged_mean_pooling_head_loads_with_trust_remote_code(mean_run: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    export_run(mean_run, "merged", tmp_path / "merged")
    model_dir = tmp_path / "merged" / "model"
    code = (model_dir / "modeling_tunesmith_pooling.py").read_text()
    assert "import tunesmith" not in code and "from tunesmith" not in code
    config = json.loads((model_dir / "config.json").read_text())
    assert config["auto_map"]["AutoModelForSequenceClassification"] == \
        "modeling_tunesmith_pooling.MeanPoolingForSequenceClassification"
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, trust_remote_code=True).eval()
    assert type(model).__module__ != "tunesmith.models.heads"  # the folder's own copy of the head
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    np.testing.assert_allclose(_logits(model, tokenizer, TEXTS), Predictor(mean_run).logits(TEXTS), atol=1e-5)


def test_onnx_export_is_a_run_folder_that_predictor_and_evaluate_take(mean_run: Path, tmp_path: Path, capsys) -> None:
    import onnx

    folder = tmp_path / "onnx"
    assert cli(["export", str(mean_run), "--format", "onnx", "--out", str(folder)]) == 0
    shown = capsys.readouterr().out
    assert "100.00% of the predictions agree with the run" in shown
    for name in ("run.json", "config.json", "trained_rows.json", "export.json", "model/model.onnx", "model/tokenizer.json"):
        assert (folder / name).is_file(), name
    assert Run(folder).manifest.model_dump(exclude={"adapter", "merged"}) == \
        Run(mean_run).manifest.model_dump(exclude={"adapter", "merged"})
    graph = onnx.load(str(folder / "model" / "model.onnx"))
    assert next(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= 17
    inputs = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in graph.graph.input}
    assert set(inputs) >= {"input_ids", "attention_mask"}
    assert all(isinstance(d, str) and d for dims in inputs.values() for d in dims)  # batch and sequence are dynamic
    assert [o.name for o in graph.graph.output] == ["logits"]
    info = json.loads((folder / "export.json").read_text())
    assert info["check"]["agreement"] == 1.0 and info["check"]["max_proba_diff"] < 1e-4 and info["warnings"] == []

    # tokenizers alone (the README's other way) truncates at the run's max_length and pads nothing
    from tokenizers import Tokenizer

    saved = json.loads((folder / "model" / "tokenizer.json").read_text())
    assert saved["truncation"]["max_length"] == Run(mean_run).manifest.max_length and saved["padding"] is None
    assert len(Tokenizer.from_file(str(folder / "model" / "tokenizer.json")).encode("word " * 500).ids) == \
        Run(mean_run).manifest.max_length

    predictor = Predictor(folder)
    assert predictor.backend == "onnx" and predictor.model is None
    original = Predictor(mean_run)
    np.testing.assert_allclose(predictor.logits(TEXTS), original.logits(TEXTS), atol=1e-4)
    assert predictor.predict(TEXTS).labels == original.predict(TEXTS).labels

    assert f"Exported as `onnx` from `{mean_run.resolve()}`" in (folder / "README.md").read_text()
    assert cli(["evaluate", str(folder), "--no-baselines"]) == 0
    onnx_report = json.loads((folder / "eval" / "test" / "report.json").read_text())
    assert onnx_report["metrics"]["accuracy"] == pytest.approx(info["check"]["accuracy_run"])
    assert "## Export" in (folder / "README.md").read_text()  # the evaluation rewrote the card without it


def test_the_self_check_scores_a_dataset_prepared_again_with_other_labels_by_name(mean_run: Path, tmp_path: Path,
                                                                                  tiny_bert: Path, capsys) -> None:
    """The self-check read the run's dataset as it is now: prepared again with another label order (or an added class),
    its label ids are not the run's, and export.json recorded an accuracy computed on misaligned ids."""
    import shutil

    from tunesmith.data.prepare import prepare

    expected = export_run(mean_run, "merged", tmp_path / "as-trained").check["accuracy_run"]
    (tmp_path / "p").mkdir()
    prepare(project(tmp_path / "p", tiny_bert, task={"labels": ["pos", "neg"]}))  # the same rows, the ids swapped
    copy = tmp_path / "run"
    shutil.copytree(mean_run, copy, ignore=shutil.ignore_patterns("checkpoints", "eval"))
    manifest = json.loads((copy / "run.json").read_text())
    (copy / "run.json").write_text(json.dumps({**manifest, "dataset": str(tmp_path / "p" / "ds")}))
    capsys.readouterr()
    assert cli(["export", str(copy), "--format", "merged", "--out", str(tmp_path / "relabelled")]) == 0
    check = json.loads((tmp_path / "relabelled" / "export.json").read_text())["check"]
    assert check["accuracy_run"] == pytest.approx(expected) and check["agreement"] == 1.0
    assert any("mapped to the run's labels by name" in note for note in check["notes"])
    assert "note: " in capsys.readouterr().out  # the CLI says why the numbers are on another dataset


def test_onnx_int8_quantises_and_reports_agreement(mean_run: Path, tmp_path: Path) -> None:
    import onnx

    result = export_run(mean_run, "onnx-int8", tmp_path / "int8")
    graph = onnx.load(str(tmp_path / "int8" / "model" / "model.onnx")).graph
    assert {"MatMulInteger", "DynamicQuantizeLinear"} <= {n.op_type for n in graph.node}  # activations quantised on the fly
    scales = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer if i.name.endswith("_scale")}
    matmul_weights = {n.input[1] for n in graph.node if n.op_type == "MatMulInteger"}
    weights = [onnx.numpy_helper.to_array(i) for i in graph.initializer if i.name in matmul_weights]
    assert weights and all(w.dtype == np.int8 and np.abs(w).max() <= 64 for w in weights)  # 7-bit weights
    assert any(s.ndim == 1 and s.size > 1 for s in scales.values())  # one scale per output channel
    check = result.check
    assert 0.0 <= check["agreement"] <= 1.0 and {"accuracy_run", "accuracy_export", "accuracy_diff"} <= set(check)
    info = json.loads((tmp_path / "int8" / "export.json").read_text())
    assert info["format"] == "onnx-int8" and info["check"] == check and "quantization" in info
    out = Predictor(tmp_path / "int8").predict(TEXTS)
    assert out.proba.shape == (len(TEXTS), 2) and np.allclose(out.proba.sum(axis=1), 1, atol=1e-5)


def test_regression_onnx_reports_value_differences(tmp_path: Path, tiny_bert: Path) -> None:
    run = train(project(tmp_path, tiny_bert, task={"type": "regression"}, train_spec={"max_steps": 10}))
    result = export_run(run, "onnx", tmp_path / "onnx")
    assert result.check["max_abs_diff"] < 1e-4 and abs(result.check["r2_diff"]) < 1e-4
    np.testing.assert_allclose(Predictor(tmp_path / "onnx").predict(TEXTS).values, Predictor(run).predict(TEXTS).values,
                               atol=1e-4)


def test_joblib_bundle_needs_trust_and_then_predicts(lora_run: Path, tmp_path: Path) -> None:
    result = export_run(lora_run, "joblib", tmp_path / "jl")
    assert result.path == tmp_path / "jl" / "tiny.joblib" and result.path.is_file()
    assert result.check["agreement"] == 1.0
    with pytest.raises(ConfigError, match="runs code stored in it.*trust=True"):
        load_joblib(result.path)
    bundle = load_joblib(result.path, trust=True)
    original = Predictor(lora_run).predict(TEXTS)
    got = bundle.predict(TEXTS)
    assert got.labels == original.labels and bundle.labels == ["neg", "pos"]
    np.testing.assert_allclose(got.proba, original.proba, atol=1e-5)
    raw = ["ｇｒｅａｔ<br/>coffee"]  # cleaned as the run's training texts were, as the Predictor does
    np.testing.assert_allclose(bundle.predict(raw).proba, Predictor(lora_run).predict(["great coffee"]).proba, atol=1e-5)
    # the wrong file (the export.json beside it: KeyError 123), a cut copy (EOFError) and the folder are named
    cut = tmp_path / "cut.joblib"
    cut.write_bytes(result.path.read_bytes()[:5000])
    for wrong in (tmp_path / "jl" / "export.json", cut):
        with pytest.raises(DataError, match=rf"{wrong.name}: not a readable tunesmith joblib bundle"):
            load_joblib(wrong, trust=True)
    with pytest.raises(DataError, match=r"jl: is a folder; load .*tiny\.joblib"):
        load_joblib(tmp_path / "jl", trust=True)


def test_docker_context_is_complete_and_its_entrypoint_serves(mean_run: Path, tmp_path: Path, capsys) -> None:
    """An onnx-int8 export packed for Docker (the fast CPU setup); the container's command, run here."""
    export_run(mean_run, "onnx-int8", tmp_path / "int8")
    context = tmp_path / "docker"
    assert cli(["export", str(tmp_path / "int8"), "--format", "docker", "--out", str(context)]) == 0
    shown = capsys.readouterr().out
    assert "docker build -t tunesmith-tiny ." in shown and "docker run --rm -p 8000:8000 tunesmith-tiny" in shown
    assert "100.00% of the predictions agree with the run" in shown  # the copy in the context is loaded back and checked
    dockerfile = (context / "Dockerfile").read_text()
    lines = [line.strip() for line in dockerfile.splitlines()]
    assert "FROM python:3.11-slim" in lines
    torch_line = "RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
    assert lines.index(torch_line) < next(i for i, line in enumerate(lines) if line.startswith("RUN") and "tunesmith-src" in line)
    assert "EXPOSE 8000" in lines and any(line.startswith("USER ") and "root" not in line for line in lines)
    assert "HEALTHCHECK" in dockerfile and "urllib.request" in dockerfile and "http://127.0.0.1:8000/healthz" in dockerfile
    for line in lines:  # everything the Dockerfile copies is in the context
        if line.startswith("COPY "):
            assert (context / line.split()[-2]).exists(), line
    for name in (".dockerignore", "COMMANDS.txt", "README.md", "tunesmith-src/pyproject.toml",
                 "tunesmith-src/tunesmith/cli.py", "model/run.json", "model/model/model.onnx"):
        assert (context / name).is_file(), name
    assert "docker build -t tunesmith-tiny ." in (context / "COMMANDS.txt").read_text()
    # the self-check of a full run's copy is recorded, as every format records it (it was printed only)
    info = json.loads((context / "export.json").read_text())
    assert info["format"] == "docker" and info["source_run"] == str((tmp_path / "int8").resolve())
    assert info["check"]["agreement"] == 1.0 and info["check"]["split"] == "test" and info["warnings"] == []
    assert {"created_at", "tunesmith_version"} <= set(info)

    # The image's build step that converts for the serving engine, then the container's command, with /app
    # pointing at the context.
    prepare_line = next(line for line in lines if line.startswith("RUN ") and "--prepare" in line)
    assert lines.index(prepare_line) > next(i for i, line in enumerate(lines) if line.startswith("USER "))
    prepare = [arg.replace("/app", str(context)) for arg in json.loads(prepare_line[4:])]
    assert cli(prepare[1:]) == 0 and "ready" in capsys.readouterr().out
    cmd_line = next(line for line in dockerfile.splitlines() if line.startswith("CMD "))  # not HEALTHCHECK's CMD
    argv = [arg.replace("/app", str(context)) for arg in json.loads(cmd_line[4:])]
    assert argv[:3] == ["tunesmith", "serve", str(context / "model")]
    port = free_port()
    argv[argv.index("--port") + 1] = str(port)
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "tunesmith", *argv[1:]], stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline, status = time.time() + 120, None
        while time.time() < deadline and status != 200:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:
                    status = response.status
            except OSError:
                time.sleep(0.3)
        assert status == 200, (tmp_path / "serve.log").read_text()
        request = urllib.request.Request(f"{url}/v1/predict", data=json.dumps({"texts": TEXTS}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            served = [p["label"] for p in json.loads(response.read())["predictions"]]
        assert served == Predictor(tmp_path / "int8").predict(TEXTS).labels  # the ONNX model, behind the server
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_docker_merges_an_adapter_run_and_its_source_builds_a_wheel(lora_run: Path, tmp_path: Path) -> None:
    """The image must need nothing from this machine: no base model folder, no git repository."""
    result = export_run(lora_run, "docker", tmp_path / "docker", check=False)
    model = tmp_path / "docker" / "model"
    assert Run(model).manifest.adapter is False and (model / "model" / "model.safetensors").is_file()
    assert not (model / "checkpoints").exists() and result.commands[1] == "docker build -t tunesmith-tiny ."
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "wheels"), str(tmp_path / "docker" / "tunesmith-src")],
                           capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    import zipfile

    wheel = next((tmp_path / "wheels").glob("tunesmith-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "tunesmith/export/__init__.py" in names and "tunesmith/cli.py" in names


DOCKER_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"  # Docker's reference grammar: one name component


def test_a_damaged_full_run_fails_its_docker_export_naming_the_file(mean_run: Path, tmp_path: Path, capsys) -> None:
    """A full fine-tuning run was copied into the context unchecked: a cut model.safetensors exported with exit 0 and
    the image's build step (tunesmith serve --prepare) failed. The export loads the weights back, as the others do."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(mean_run, run)
    weights = run / "model" / "model.safetensors"
    whole = weights.read_bytes()
    weights.write_bytes(whole[:5000])  # a copy cut short
    message = f"{weights}: damaged or partly copied ("
    for fmt in ("docker", "merged"):  # merged said "internal error: SafetensorError: ... incomplete metadata" (exit 1)
        assert cli(["export", str(run), "--format", fmt, "--out", str(tmp_path / fmt)]) == 3
        err = _err(capsys)
        assert message in err and "re-copy the run or train again" in err and "internal error" not in err
        assert not (tmp_path / fmt).exists()
    manifest = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**manifest, "dataset": str(tmp_path / "gone")}))
    # No test split to compare on: the weights are loaded all the same.
    assert cli(["export", str(run), "--format", "docker", "--out", str(tmp_path / "docker")]) == 3
    assert message in _err(capsys)
    (run / "run.json").write_text(json.dumps(manifest))
    # --no-check skips the check, and says so
    assert cli(["export", str(run), "--format", "docker", "--out", str(tmp_path / "docker"), "--no-check"]) == 0
    assert "note: self-check skipped (--no-check)" in capsys.readouterr().out
    weights.write_bytes(whole)
    result = export_run(run, "docker", tmp_path / "docker", overwrite=True)
    assert result.check["agreement"] == 1.0 and result.check["n"] > 0 and result.warnings == []


def test_a_full_chat_run_is_checked_by_its_docker_export(tmp_path: Path, tiny_llama: Path, capsys) -> None:
    import shutil

    run = train(chat_project(tmp_path, tiny_llama, {"max_steps": 2, "epochs": 1}))
    result = export_run(run, "docker", tmp_path / "docker")
    assert result.check["n"] > 0 and abs(result.check["loss_diff"]) < 1e-6 and result.warnings == []
    shutil.rmtree(tmp_path / "docker")
    weights = Path(run) / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    assert cli(["export", str(run), "--format", "docker", "--out", str(tmp_path / "docker")]) == 3
    assert f"{weights}: damaged or partly copied (" in _err(capsys) and not (tmp_path / "docker").exists()


def test_docker_commands_quote_the_path_and_tag_a_valid_image_name(mean_run: Path, tmp_path: Path, capsys) -> None:
    """`cd /a folder/x` broke on the space; run names valid for tunesmith (`Cafe..Reviews___v1`) made image names that
    `docker build -t` refuses."""
    import shutil

    from tunesmith.export.docker import image_name

    run = tmp_path / "my runs" / "run"
    shutil.copytree(mean_run, run)
    manifest = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**manifest, "name": "Cafe..Reviews___v1"}))
    out = tmp_path / "build dir" / "it's here"
    assert cli(["export", str(run), "--format", "docker", "--out", str(out), "--no-check"]) == 0
    shown = capsys.readouterr().out
    commands = (out / "COMMANDS.txt").read_text().splitlines()
    assert f"  {commands[0]}" in shown and commands[0] in (out / "README.md").read_text()
    moved = subprocess.run(["bash", "-c", f"{commands[0]} && pwd"], capture_output=True, text=True)
    assert moved.returncode == 0 and moved.stdout.strip() == str(out.resolve()), moved.stderr
    tag = commands[1].split()[3]
    assert tag == "tunesmith-cafe-reviews-v1" and commands[2].endswith(f" {tag}")
    for name in ("Cafe..Reviews___v1", "a__b", "a_b.c-d", "a---b", "a._b", "x-.-y", "A.B", "run_", "9__", "a" * 300,
                 "é", ".", "a" * 99 + "__b", "Über Café!"):
        assert re.fullmatch(DOCKER_COMPONENT, image_name(name)) and len(image_name(name)) <= 128, name
    assert [image_name(n) for n in ("a__b", "a_b.c-d", "a---b", "A.B")] == \
        ["tunesmith-a__b", "tunesmith-a_b.c-d", "tunesmith-a---b", "tunesmith-a.b"]  # valid separators are kept


def test_overwrite_through_a_symlink_replaces_the_export_it_points_to(lora_run: Path, tmp_path: Path) -> None:
    """deploy/current -> store/v1: --overwrite renamed the link aside (and failed to delete it), so `current` became a
    plain folder, the old export stayed in store/v1 and a stray `.current.replaced-PID` link was left."""
    store, current = tmp_path / "store", tmp_path / "deploy" / "current"
    export_run(lora_run, "onnx", store / "v1", check=False)
    (store / "v1" / "OLD").write_text("the earlier export")
    current.parent.mkdir()
    current.symlink_to(store / "v1")
    assert export_run(lora_run, "onnx", current, overwrite=True, check=False).path == current
    assert current.is_symlink() and current.resolve() == (store / "v1").resolve()
    assert not (store / "v1" / "OLD").exists() and (store / "v1" / "model" / "model.onnx").is_file()
    assert sorted(p.name for p in store.iterdir()) == ["v1"] and sorted(p.name for p in current.parent.iterdir()) == ["current"]
    assert Predictor(current).predict(TEXTS).labels == Predictor(lora_run).predict(TEXTS).labels


def test_chat_run_refuses_onnx_and_exports_a_causal_lm(tmp_path: Path, tiny_llama: Path, capsys) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunesmith.inference.generation import ChatModel

    run = train(chat_project(tmp_path, tiny_llama, {"method": "lora", "max_steps": 4, "learning_rate": 1e-2}))
    assert cli(["export", str(run), "--format", "onnx"]) == 2
    assert "is for classification and regression runs" in _err(capsys)
    with pytest.raises(ConfigError, match="--format merged"):
        export_run(run, "onnx-int8")

    result = export_run(run, "merged", tmp_path / "merged")
    assert abs(result.check["loss_diff"]) < 1e-4 and result.warnings == []
    model_dir = tmp_path / "merged" / "model"
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()  # plain transformers, no peft
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert tokenizer.chat_template and model.generation_config.eos_token_id == Run(run).manifest.stop_token_ids
    tuned = ChatModel.from_run(run)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "how is the tea?"}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        np.testing.assert_allclose(model(input_ids=ids).logits.numpy(), tuned.model(input_ids=ids).logits.numpy(), atol=1e-4)


def test_bad_format_missing_run_and_existing_output_are_refused(lora_run: Path, tmp_path: Path, capsys) -> None:
    assert cli(["export", str(lora_run), "--format", "tflite"]) == 2
    assert "unknown export format 'tflite'; choose from merged, onnx, onnx-int8, joblib, docker" in _err(capsys)
    assert cli(["export", str(tmp_path / "nope"), "--format", "onnx"]) == 2
    assert "does not exist" in _err(capsys)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("x")
    assert cli(["export", str(lora_run), "--format", "onnx", "--out", str(tmp_path / "busy")]) == 2
    assert "--overwrite" in _err(capsys)
    with pytest.raises(ConfigError, match="cannot be written into the run folder"):
        export_run(lora_run, "onnx", lora_run / "export")


def test_overwrite_never_deletes_the_run_and_the_default_out_of_dot_is_beside_it(lora_run: Path, tmp_path: Path,
                                                                                  monkeypatch) -> None:
    import shutil

    run = tmp_path / "runs" / "run"
    shutil.copytree(lora_run, run)
    for out in (tmp_path / "runs", tmp_path):  # folders that hold the run: --overwrite used to delete it with them
        with pytest.raises(ConfigError, match="holds the run"):
            export_run(run, "onnx", out, overwrite=True, check=False)
        assert (run / "run.json").is_file()
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        export_run(run, "onnx", tmp_path / "a-file", overwrite=True, check=False)
    monkeypatch.chdir(run)  # `tunesmith export .` inside the run: the default is ../run-onnx, not ./-onnx
    assert export_run(".", "onnx", check=False).path == tmp_path / "runs" / "run-onnx"


def test_overwrite_replaces_only_an_earlier_export(lora_run: Path, tmp_path: Path, monkeypatch) -> None:
    """It deleted any folder: the run's own dataset (whose self-check then read "skipped"), a folder of other files,
    the current directory."""
    from tunesmith.artifacts import Run

    dataset = Path(Run(lora_run).manifest.dataset)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    for out, why in ((dataset, "replaces only an earlier export"), (busy, "replaces only an earlier export")):
        with pytest.raises(ConfigError, match=why):
            export_run(lora_run, "onnx", out, overwrite=True, check=False)
    assert (dataset / "manifest.json").is_file() and (busy / "notes.txt").is_file()
    first = export_run(lora_run, "onnx", tmp_path / "out", check=False).path
    (first / "EXTRA").write_text("stale")
    monkeypatch.chdir(first)
    with pytest.raises(ConfigError, match="holds the current directory"):
        export_run(lora_run, "onnx", first, overwrite=True, check=False)
    monkeypatch.chdir(tmp_path)
    assert export_run(lora_run, "onnx", first, overwrite=True, check=False).path == first and not (first / "EXTRA").exists()
    (dataset / "export.json").write_text(json.dumps({"format": "onnx", "source_run": "r", "tunesmith_version": "0"}))
    try:
        with pytest.raises(ConfigError, match="would delete the run's dataset"):
            export_run(lora_run, "onnx", dataset, overwrite=True, check=False)
    finally:
        (dataset / "export.json").unlink()


def test_overwrite_takes_only_a_folder_tunesmith_wrote_for_an_export(lora_run: Path, tmp_path: Path) -> None:
    """Any file named export.json, or a Dockerfile beside a COMMANDS.txt, had the whole folder deleted with it."""
    data, project_dir, old_context = tmp_path / "data", tmp_path / "project", tmp_path / "context"
    for folder, files in ((data, {"export.json": '{"tickets": [1, 2]}', "notes.txt": "mine"}),
                          (project_dir, {"Dockerfile": "FROM python:3.11\n", "COMMANDS.txt": "make deploy\n"}),
                          (old_context, {"Dockerfile": "# Built by `tunesmith export --format docker` (tunesmith 0.1). "
                                                       "See COMMANDS.txt.\nFROM python:3.11-slim\n"})):
        folder.mkdir()
        for name, text in files.items():
            (folder / name).write_text(text)
    for out, fmt in ((data, "onnx"), (project_dir, "docker"), (data, "joblib")):
        with pytest.raises(ConfigError, match="replaces only an earlier export"):
            export_run(lora_run, fmt, out, overwrite=True, check=False)
    assert (data / "notes.txt").read_text() == "mine" and (project_dir / "COMMANDS.txt").is_file()
    (data / "export.json").write_text('{"format": "onnx", "tickets": [1, 2]}')  # a format, but no source_run
    with pytest.raises(ConfigError, match="replaces only an earlier export"):
        export_run(lora_run, "onnx", data, overwrite=True, check=False)
    # a docker context from before docker exports wrote export.json: known by its Dockerfile's first line
    assert export_run(lora_run, "joblib", old_context, overwrite=True, check=False).path.parent == old_context
    assert not (old_context / "Dockerfile").exists()


def test_an_overwrite_that_fails_leaves_the_earlier_export_as_it_was(lora_run: Path, tmp_path: Path, monkeypatch) -> None:
    # The earlier export was deleted before the new one was written: a failure (Ctrl-C here) left nothing.
    import tunesmith.export.onnx

    first = export_run(lora_run, "onnx", tmp_path / "out", check=False).path
    before = sorted(p.relative_to(first) for p in first.rglob("*"))

    def interrupted(*args: object, **kwargs: object) -> None:
        (first / "model.onnx").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(tunesmith.export.onnx, "export_onnx_folder", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_run(lora_run, "onnx-int8", first, overwrite=True, check=False)
    assert sorted(p.relative_to(first) for p in first.rglob("*")) == before
    assert json.loads((first / "export.json").read_text())["format"] == "onnx"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # nothing left aside
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(KeyboardInterrupt):
        export_run(lora_run, "onnx", empty, check=False)
    assert empty.is_dir()  # the user's own folder stays


def test_a_damaged_run_folder_is_named(lora_run: Path, tmp_path: Path, capsys) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(lora_run, run)
    manifest = (run / "run.json").read_text()
    (run / "run.json").write_text(manifest[:40])  # truncated, as by a full disk
    assert cli(["export", str(run), "--format", "merged"]) == 3
    assert f"{run / 'run.json'} is not a valid run manifest" in _err(capsys)
    (run / "run.json").write_text(manifest)
    shutil.rmtree(run / "model")
    assert cli(["export", str(run), "--format", "docker"]) == 3  # docker copied the folder without a model in it
    assert f"{run / 'model'} is missing" in _err(capsys)
    assert not (tmp_path / "run-docker").exists()


@pytest.mark.parametrize("fixture, weights", [("mean_run", "model.safetensors"), ("lora_run", "adapter_model.safetensors")])
def test_a_run_copied_without_its_weights_is_named_before_any_export(fixture: str, weights: str, tmp_path: Path,
                                                                   request: pytest.FixtureRequest, capsys) -> None:
    # A docker export of it "succeeded" (exit 0) and the image's build failed; merged and onnx crashed as internal errors.
    import shutil

    run = tmp_path / "run"
    shutil.copytree(request.getfixturevalue(fixture), run)
    (run / "model" / weights).unlink()
    for fmt in ("docker", "merged", "onnx"):
        assert cli(["export", str(run), "--format", fmt]) == 3
        assert f"{run / 'model'} holds no weights ({weights} is missing)" in _err(capsys)
        assert not (tmp_path / f"run-{fmt}").exists()


def test_dynamo_exporter_takes_over_when_the_tracer_fails(mean_run: Path, tmp_path: Path, monkeypatch) -> None:
    """Models the TorchScript tracer cannot take (and torch versions without it) go through torch.export."""
    real = torch.onnx.export

    def tracer_fails(*args, dynamo: bool = True, **kwargs):
        if not dynamo:
            raise RuntimeError("the tracer cannot take this model")
        return real(*args, dynamo=dynamo, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", tracer_fails)
    result = export_run(mean_run, "onnx", tmp_path / "onnx")
    info = json.loads((tmp_path / "onnx" / "export.json").read_text())
    assert info["exporter"] == "dynamo" and info["opset"] >= 17
    assert result.check["agreement"] == 1.0 and result.check["max_proba_diff"] < 1e-4


def test_onnx_without_onnxruntime_says_what_to_install(mean_run: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    """int8 failed as an internal ModuleNotFoundError, after writing the graph into a folder it then deleted."""
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime.quantization", None)  # as if onnxruntime were not installed
    assert cli(["export", str(mean_run), "--format", "onnx-int8", "--out", str(tmp_path / "x")]) == 2
    assert "--format onnx-int8 needs onnxruntime; pip install onnxruntime" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
