"""Fine-tuning on tiny local models: learning happens, the right weights move, runs resume exactly."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from tunesmith.artifacts import Run
from tunesmith.config import TrainSpec, parse_config
from tunesmith.data.prepare import prepare
from tunesmith.errors import ConfigError, DataError
from tunesmith.inference.predictor import Predictor
from tunesmith.training import train

POS = ["great", "wonderful", "friendly", "quickly", "big"]
NEG = ["terrible", "stale", "bitter", "again", "not"]
FILL = ["the", "food", "coffee", "tea", "bag", "fruit", "price", "service", "bread", "rice"]


def rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        good = i % 2 == 0
        words = rng.sample(POS if good else NEG, 3) + rng.sample(FILL, 4)
        rng.shuffle(words)
        out.append({"text": " ".join(words) + f" number {i}", "label": "pos" if good else "neg",
                    "score": (1.0 if good else -1.0) + rng.gauss(0, 0.1)})
    return out


def write(path: Path, data: list[dict]) -> Path:
    import csv

    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(data[0]))
        w.writeheader()
        w.writerows(data)
    return path


def project(tmp: Path, model: Path, task: dict | None = None, train_spec: dict | None = None, n: int = 160, **extra):
    raw = {
        "name": "tiny",
        "task": task or {},
        "data": {"sources": [{"path": str(write(tmp / "data.csv", rows(n)))}], "output_dir": str(tmp / "ds"),
                 "dedup": {"near": False}},
        "model": {"name": str(model), "max_length": 32},
        # train_embeddings: the tiny models are random-init, so their token table is noise to be learned,
        # not knowledge to keep (a real encoder's default keeps it frozen; tested below); full fine-tuning only
        "train": {"learning_rate": 3e-3, "max_steps": 60, "batch_size": 16, "early_stopping_patience": None,
                  "evals_per_epoch": 2, "output_dir": str(tmp / "run"),
                  "train_embeddings": (train_spec or {}).get("method", "full") == "full", **(train_spec or {})},
        **extra,
    }
    return parse_config(raw)


def losses(run: Path) -> list[float]:
    return [e["loss"] for e in map(json.loads, (run / "training_log.jsonl").read_text().splitlines()) if "loss" in e]


def test_full_finetuning_learns_and_changes_every_weight_but_the_token_table(tmp_path: Path, tiny_bert: Path) -> None:
    assert TrainSpec().train_embeddings is False  # the default
    run = train(project(tmp_path, tiny_bert, train_spec={"train_embeddings": False}))
    trace = losses(run)
    assert np.mean(trace[-3:]) < 0.5 * np.mean(trace[:3]), trace
    manifest = Run(run).manifest
    assert manifest.metrics["accuracy"] >= 0.9
    before = load_file(tiny_bert / "model.safetensors")
    after = load_file(run / "model" / "model.safetensors")
    table = "embeddings.word_embeddings.weight"
    assert manifest.parameters["trainable"] == manifest.parameters["total"] - before[table].numel()
    encoder = [k for k in before if k.startswith("encoder.") or k.startswith("embeddings.")]
    changed = [k for k in encoder if not np.allclose(before[k].numpy(), after["bert." + k].numpy())]
    assert set(changed) == set(encoder) - {table}  # the token table stays pre-trained (train.train_embeddings)
    assert manifest.hyperparameters["token_embeddings"] == "frozen"
    assert manifest.hyperparameters["attention_dropout"] == 0.0  # train.attention_dropout's default
    assert manifest.hyperparameters["hidden_dropout"] == 0.0  # train.hidden_dropout's default
    saved = json.loads((run / "model" / "config.json").read_text())
    assert saved["attention_probs_dropout_prob"] == 0.0 and saved["hidden_dropout_prob"] == 0.0
    assert not (run / "model" / "training_args.bin").exists()  # no pickles in a run folder
    card = (run / "README.md").read_text()
    assert card.startswith("# tiny") and "- Numerics: " in card and "token embeddings frozen" in card and "hidden dropout 0" in card


def test_train_embeddings_trains_the_token_table_too(tmp_path: Path, tiny_bert: Path) -> None:
    run = train(project(tmp_path, tiny_bert, train_spec={"max_steps": 10}))  # project() sets train_embeddings: true
    manifest = Run(run).manifest
    assert manifest.parameters["trainable"] == manifest.parameters["total"]
    table = "embeddings.word_embeddings.weight"
    before, after = load_file(tiny_bert / "model.safetensors"), load_file(run / "model" / "model.safetensors")
    assert not np.allclose(before[table].numpy(), after["bert." + table].numpy())
    assert manifest.hyperparameters["token_embeddings"] == "trained"


def test_head_only_keeps_the_base_frozen(tmp_path: Path, tiny_bert: Path) -> None:
    run = train(project(tmp_path, tiny_bert, train_spec={"method": "head", "learning_rate": 1e-2}))
    manifest = Run(run).manifest
    assert 0 < manifest.parameters["trainable"] < manifest.parameters["total"]
    before = load_file(tiny_bert / "model.safetensors")
    after = load_file(run / "model" / "model.safetensors")
    for key in before:
        if key.startswith("encoder.") or key.startswith("embeddings."):
            assert np.array_equal(before[key].numpy(), after["bert." + key].numpy()), key
    assert any(not np.array_equal(before[k].numpy(), after["bert." + k].numpy()) for k in before if k.startswith("pooler."))


def test_lora_trains_only_the_adapter_and_the_predictor_loads_it(tmp_path: Path, tiny_bert: Path) -> None:
    run = train(project(tmp_path, tiny_bert, train_spec={"method": "lora", "learning_rate": 5e-3}))
    manifest = Run(run).manifest
    assert manifest.adapter and manifest.parameters["trainable"] < manifest.parameters["total"] / 2
    adapter = load_file(run / "model" / "adapter_model.safetensors")
    assert any("lora_A" in k for k in adapter) and any("classifier" in k for k in adapter)
    assert losses(run)[-1] < losses(run)[0]
    predictor = Predictor(run)
    out = predictor.predict(["great wonderful friendly coffee", "terrible stale bitter bread"])
    assert out.proba.shape == (2, 2) and np.allclose(out.proba.sum(axis=1), 1)
    assert out.labels == ["pos", "neg"]
    # raw text is cleaned as the training data was (markup, NFKC, blanks): served raw, the model saw inputs it never
    # trained on; an empty text is one end-of-text token, not an all-padding row
    raw = ["great<br />wonderful &amp;   friendly coffee", "ｔｅｒｒｉｂｌｅ stale bitter bread", ""]
    cleaned = ["great wonderful & friendly coffee", "terrible stale bitter bread", ""]
    np.testing.assert_allclose(predictor.logits(raw), predictor.logits(cleaned, cleaned=True), atol=1e-6)
    assert not np.allclose(predictor.logits(raw[:2], cleaned=True), predictor.logits(cleaned[:2], cleaned=True), atol=1e-3)


def test_lora_on_missing_modules_is_refused_before_training(tmp_path: Path, tiny_bert: Path) -> None:
    cfg = project(tmp_path, tiny_bert, train_spec={"method": "lora"}, peft={"target_modules": ["q_proj"]})
    with pytest.raises(ConfigError, match=r"no module named \['q_proj'\]; its linear layers are \[.*'query'"):
        train(cfg)
    # it left dataset.json behind: the fixed config, --overwrite and --resume were each refused, pointing to another
    fixed = project(tmp_path, tiny_bert, train_spec={"method": "lora", "max_steps": 2}, peft={"target_modules": ["query"]})
    assert Run(train(fixed)).manifest.adapter


def test_regression_predicts_in_the_users_units(tmp_path: Path, tiny_bert: Path) -> None:
    run = train(project(tmp_path, tiny_bert, task={"type": "regression"}, train_spec={"max_steps": 100}))
    scaling = Run(run).manifest.target_scaling
    assert scaling is not None and abs(scaling["mean"]) < 0.2 and 0.8 < scaling["std"] < 1.2
    values = Predictor(run).predict(["great wonderful friendly coffee", "terrible stale bitter bread"]).values
    assert values[0] > 0.3 and values[1] < -0.3


def multi_label_project(tmp: Path, model: Path, train_spec: dict | None = None):
    """Two labels per review: the sentiment and whether it is about a drink or a meal."""
    cfg = project(tmp, model, task={"type": "multi_label_classification", "label": "{label},{extra}"}, train_spec=train_spec)
    data = rows(160)
    for r in data:
        r["extra"] = "drink" if any(w in r["text"] for w in ("coffee", "tea")) else "meal"
    write(tmp / "data.csv", data)
    return cfg


def test_multi_label_tunes_thresholds(tmp_path: Path, tiny_bert: Path) -> None:
    run = Run(train(multi_label_project(tmp_path, tiny_bert)))
    assert run.manifest.labels == ["drink", "meal", "neg", "pos"]
    assert run.manifest.thresholds is not None and len(run.manifest.thresholds) == 4
    # The recorded validation metrics are those of the run as it predicts (its thresholds): they were at 0.5.
    from tunesmith.artifacts import DatasetVersion
    from tunesmith.config import TaskType
    from tunesmith.tasks.sequence import multi_label_metrics, targets

    table = DatasetVersion(run.manifest.dataset).table("validation")
    proba = Predictor(run.path).predict(table.column("text").to_pylist(), cleaned=True).proba
    truth = targets(TaskType.multi_label, table, 4)
    tuned = multi_label_metrics(proba, truth, run.manifest.thresholds)
    recorded = json.loads((run.path / "metrics.json").read_text())["validation"]
    for name in ("f1_micro", "f1_macro"):
        assert run.manifest.metrics[name] == pytest.approx(tuned[name], abs=1e-6) == recorded[name]


def test_multi_label_rows_where_no_label_applies_train_and_evaluate(tmp_path: Path, tiny_bert: Path) -> None:
    # "none of the labels" is an answer of its own (kept by data prepare since 2026-12-05): all-zero targets.
    from tunesmith.evaluation.run import evaluate_run

    cfg = project(tmp_path, tiny_bert, task={"type": "multi_label_classification", "label": "tags"},
                  train_spec={"max_steps": 8})
    lines = [{"text": r["text"], "tags": [] if i % 3 == 0 else [r["label"]]} for i, r in enumerate(rows(120))]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    raw = cfg.model_dump(mode="json")
    raw["data"]["sources"] = [{"path": str(tmp_path / "data.jsonl")}]
    run = Run(train(parse_config(raw)))
    assert run.manifest.labels == ["neg", "pos"]
    metrics = evaluate_run(run.path)["metrics"]
    assert 0.0 <= metrics["f1_macro"] <= 1.0


def test_existing_run_and_unseen_test_labels_are_refused(tmp_path: Path, tiny_bert: Path) -> None:
    cfg = project(tmp_path, tiny_bert, train_spec={"max_steps": 2})
    train(cfg)
    with pytest.raises(ConfigError, match="a run already exists there; resume it with"):
        train(cfg)
    data = rows(60)
    test_only = [{"text": f"a totally new kind of review {i}", "label": "odd", "score": 0.0} for i in range(3)]
    sources = [{"path": str(write(tmp_path / "a.csv", data))}, {"path": str(write(tmp_path / "b.csv", test_only)), "split": "test"}]
    cfg2 = parse_config({**cfg.model_dump(mode="json"), "data": {**cfg.model_dump(mode="json")["data"], "sources": sources,
                                                                  "output_dir": str(tmp_path / "ds2")}})
    with pytest.raises(DataError, match=r"test has label\(s\) \['odd'\] that the training split never has"):
        train(cfg2, overwrite=True)


def _folder(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_overwrite_refused_for_its_inputs_keeps_the_earlier_run(tmp_path: Path, tiny_bert: Path) -> None:
    """--overwrite deleted the earlier run before the new run's dataset and model were checked: a mistyped --dataset
    or model name lost it and trained nothing."""
    cfg = project(tmp_path, tiny_bert, train_spec={"max_steps": 2})
    run = train(cfg)
    before = _folder(run)
    with pytest.raises(DataError, match="clitst: not a tunesmith dataset"):
        train(cfg, dataset_dir=tmp_path / "clitst", overwrite=True)
    assert _folder(run) == before
    typo = parse_config({**cfg.model_dump(mode="json"), "model": {**cfg.model_dump(mode="json")["model"],
                                                                   "name": "minilmm"}})
    with pytest.raises(ConfigError, match="'minilmm' is neither a packaged model"):
        train(typo, overwrite=True)
    assert _folder(run) == before
    assert [p.name for p in tmp_path.iterdir() if ".replaced" in p.name] == []


def test_overwrite_replaces_the_earlier_run_and_leaves_nothing_aside(tmp_path: Path, tiny_bert: Path) -> None:
    cfg = project(tmp_path, tiny_bert, train_spec={"max_steps": 2})
    run = train(cfg)
    (run / "mine.txt").write_text("from the earlier run")
    assert train(project(tmp_path, tiny_bert, train_spec={"max_steps": 3}), overwrite=True) == run
    assert Run(run).manifest.hyperparameters and not (run / "mine.txt").exists()
    assert json.loads((run / "config.json").read_text())["train"]["max_steps"] == 3
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [".run.lock"]


def test_overwrite_with_nproc_and_a_mistyped_model_keeps_the_earlier_run(tmp_path: Path, tiny_bert: Path) -> None:
    """The --nproc launcher checks the folder itself; its workers refused the model after it was set aside."""
    cfg = project(tmp_path, tiny_bert, train_spec={"max_steps": 2})
    run = train(cfg)
    before = _folder(run)
    proc = _cli("train", str(_config_file(tmp_path, cfg)), "--nproc", "2", "--overwrite", "--set", "model.name=minilmm",
                cwd=tmp_path)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0 and "'minilmm' is neither a packaged model" in output, output
    assert _folder(run) == before
    assert [p.name for p in tmp_path.iterdir() if ".replaced" in p.name] == []


def test_nproc_workers_error_keeps_its_exit_code_and_is_told_once(tmp_path: Path, tiny_bert: Path) -> None:
    """An error only the workers find (the adapter's target modules): exit 2 (config) as with one process, not
    torchrun's 1, and the message once, last, after torchrun's ChildFailedError report."""
    cfg = project(tmp_path, tiny_bert, train_spec={"method": "lora", "max_steps": 2}, peft={"target_modules": ["nosuchlayer"]})
    proc = _cli("train", str(_config_file(tmp_path, cfg)), "--nproc", "2", cwd=tmp_path)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 2, output
    assert output.count("no module named ['nosuchlayer']") == 1, output
    assert output.rstrip().splitlines()[-1].startswith("error: peft.target_modules:"), output


def test_model_folder_without_weights_is_refused(tmp_path: Path, tiny_tokenizer: Path) -> None:
    (tiny_tokenizer / "config.json").write_text('{"model_type": "bert"}')
    try:
        with pytest.raises(ConfigError, match="has no weights"):
            train(project(tmp_path, tiny_tokenizer))
    finally:
        (tiny_tokenizer / "config.json").unlink()


def _cli(*args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "tunesmith", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _config_file(tmp: Path, cfg) -> Path:
    import yaml

    path = tmp / "project.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return path


def test_resume_after_a_kill_matches_an_uninterrupted_run(tmp_path: Path, tiny_bert: Path) -> None:
    spec = {"max_steps": 40, "evals_per_epoch": 4, "save_total_limit": 10}  # group_by_length on, as by default
    (tmp_path / "a").mkdir()
    a = train(project(tmp_path / "a", tiny_bert, train_spec=spec))
    (tmp_path / "b").mkdir()
    cfg_b = project(tmp_path / "b", tiny_bert, train_spec=spec)
    prepare(cfg_b)
    proc = _cli("train", str(_config_file(tmp_path / "b", cfg_b)), cwd=tmp_path / "b")
    ckpts = tmp_path / "b" / "run" / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and not (ckpts / "checkpoint-20" / "COMPLETE").exists():
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "b" / "run" / "run.json").exists()  # really interrupted
    b = train(cfg_b, resume=tmp_path / "b" / "run")
    ma, mb = Run(a).manifest.metrics, Run(b).manifest.metrics
    assert mb["loss"] == pytest.approx(ma["loss"], rel=1e-5)
    assert losses(b)[-1] == pytest.approx(losses(a)[-1], rel=1e-5)


def test_resume_refuses_a_changed_config(tmp_path: Path, tiny_bert: Path) -> None:
    cfg = project(tmp_path, tiny_bert, train_spec={"max_steps": 2})
    run = train(cfg)
    changed = project(tmp_path, tiny_bert, train_spec={"max_steps": 2, "learning_rate": 0.01})
    with pytest.raises(ConfigError, match=r"(?s)config changed since this run started.*train.learning_rate: 0.003 -> 0.01"):
        train(changed, resume=run)


def test_resume_of_a_finished_run_without_checkpoints_is_refused(tmp_path: Path, tiny_bert: Path) -> None:
    """A finished run whose checkpoints are gone (a tuning trial's): --resume deleted its run.json and trained it again
    from step 0 without a word."""
    import shutil

    cfg = project(tmp_path, tiny_bert, train_spec={"max_steps": 2})
    run = train(cfg)
    shutil.rmtree(run / "checkpoints")
    before = (run / "run.json").read_bytes()
    with pytest.raises(ConfigError, match="a finished run with no checkpoint left to resume from"):
        train(cfg, resume=run)
    assert (run / "run.json").read_bytes() == before


def _evaluated_steps(run: Path) -> list[int]:
    return [e["step"] for e in map(json.loads, (run / "training_log.jsonl").read_text().splitlines()) if "eval_loss" in e]


def test_resume_keeps_early_stoppings_count_of_evaluations_without_improvement(tmp_path: Path, tiny_bert: Path) -> None:
    """A learning rate too small to change any prediction: macro F1 never improves after the first validation, so
    patience 2 stops the run at its third. Killed after the second, the resumed run must stop there too."""
    from transformers import TrainerCallback

    spec = {"max_steps": 40, "evals_per_epoch": 4, "save_total_limit": 10, "learning_rate": 1e-12,
            "early_stopping_patience": 2}
    (tmp_path / "a").mkdir()
    a = train(project(tmp_path / "a", tiny_bert, train_spec=spec))
    evaluated = _evaluated_steps(a)
    assert len(evaluated) == 3 and Run(a).manifest.best_metric  # stopped early, the first validation kept

    class Killed(TrainerCallback):
        def on_save(self, args, state, control, **kwargs) -> None:
            if state.global_step == evaluated[1]:
                raise KeyboardInterrupt  # after the checkpoint is marked COMPLETE

    (tmp_path / "b").mkdir()
    cfg_b = project(tmp_path / "b", tiny_bert, train_spec=spec)
    with pytest.raises(KeyboardInterrupt):
        train(cfg_b, callbacks=[Killed()])
    b = train(cfg_b, resume=tmp_path / "b" / "run")
    assert _evaluated_steps(b) == evaluated


def test_run_json_is_written_whole_or_not_at_all(tmp_path: Path, tiny_bert: Path, monkeypatch) -> None:
    """run.json makes a folder a finished run: a disk that fills up while it is written must not leave half of one."""
    from tunesmith.artifacts import is_run

    write_text = Path.write_text

    def disk_full(self: Path, text: str, *args, **kwargs) -> int:
        if "run.json" in self.name:
            write_text(self, text[: len(text) // 2], *args, **kwargs)
            raise OSError(28, "No space left on device")
        return write_text(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", disk_full)
    with pytest.raises(OSError, match="No space left"):
        train(project(tmp_path, tiny_bert, train_spec={"max_steps": 2}))
    assert not is_run(tmp_path / "run")


def test_a_finished_run_trained_again_is_not_finished_until_it_ends(tmp_path: Path, tiny_bert: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Resuming a finished run rewrites model/: a crash on the way must not leave the old run.json beside it."""
    import tunesmith.training.sequence
    from tunesmith.artifacts import is_run

    cfg = project(tmp_path, tiny_bert, train_spec={"max_steps": 2})
    run = train(cfg)

    def crash(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as patched:
        patched.setattr(tunesmith.training.sequence, "save_model", crash)  # while model/ is rewritten
        with pytest.raises(KeyboardInterrupt):
            train(cfg, resume=run)
    assert not is_run(run)
    assert is_run(train(cfg, resume=run))


def test_two_processes_train_with_ddp(tmp_path: Path, tiny_bert: Path) -> None:
    # multi-label: after training, thresholds come from a prediction over the validation split, a collective
    # step every process must join before rank 0 writes the run folder
    cfg = multi_label_project(tmp_path, tiny_bert, {"max_steps": 6})
    proc = _cli("train", str(_config_file(tmp_path, cfg)), "--nproc", "2", cwd=tmp_path)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output
    assert "launching 2 processes" in output
    manifest = Run(tmp_path / "run").manifest
    assert manifest.processes == 2 and manifest.thresholds is not None and len(manifest.thresholds) == 4


def test_mean_pooling_head_for_sentence_encoders(tmp_path: Path, tiny_bert: Path) -> None:
    from tunesmith.models.sequence import pooling_of

    assert pooling_of(tiny_bert) == "native"
    (tiny_bert / "1_Pooling").mkdir(exist_ok=True)
    (tiny_bert / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    try:
        assert pooling_of(tiny_bert) == "mean"  # what sentence-transformers folders declare
        run = train(project(tmp_path, tiny_bert))
    finally:
        import shutil

        shutil.rmtree(tiny_bert / "1_Pooling")
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["tunesmith_pooling"] == "mean"
    assert Run(run).manifest.metrics["accuracy"] >= 0.9
    weights = load_file(run / "model" / "model.safetensors")
    assert "classifier.weight" in weights and not any("pooler" in k for k in weights)
    out = Predictor(run).predict(["great wonderful friendly coffee", "terrible stale bitter bread"])
    assert out.labels == ["pos", "neg"]


def test_head_learning_rate_gets_its_own_param_group(tmp_path: Path, tiny_bert: Path) -> None:
    run = train(project(tmp_path, tiny_bert, train_spec={"head_learning_rate": 0.05, "max_steps": 4}))
    logged = [e for e in map(json.loads, (run / "training_log.jsonl").read_text().splitlines()) if "loss" in e]
    assert logged  # trained; the optimizer itself is checked below on a fresh trainer
    from transformers import Trainer, TrainingArguments

    from tunesmith.config import TaskType
    from tunesmith.models.sequence import load_for_sequence_task
    from tunesmith.training.sequence import _trainer_class

    model = load_for_sequence_task(tiny_bert, TaskType.single_label, ["neg", "pos"])
    trainer = _trainer_class(Trainer, 0, 0.05)(model=model, args=TrainingArguments(output_dir=str(tmp_path / "x"), learning_rate=1e-4, use_cpu=True))
    optimizer = trainer.create_optimizer()
    lrs = sorted({g["lr"] for g in optimizer.param_groups})
    assert lrs == [1e-4, 0.05]
    head = [g for g in optimizer.param_groups if g["lr"] == 0.05]
    assert sum(p.numel() for g in head for p in g["params"]) == sum(p.numel() for p in model.classifier.parameters())


def test_causal_lm_gets_a_sequence_head_and_lora_on_its_projections(tmp_path: Path, tiny_llama: Path) -> None:
    run = train(project(tmp_path, tiny_llama, train_spec={"method": "lora", "learning_rate": 5e-3, "max_steps": 10}))
    manifest = Run(run).manifest
    assert manifest.adapter and manifest.parameters["trainable"] < manifest.parameters["total"]
    adapter = load_file(run / "model" / "adapter_model.safetensors")
    assert any("q_proj.lora_A" in k for k in adapter) and any("down_proj.lora_A" in k for k in adapter)
    assert any("score" in k for k in adapter)  # the causal LM's classification head trains in full
    out = Predictor(run).predict(["great wonderful coffee", "terrible stale bread"])
    assert out.proba.shape == (2, 2)


@pytest.mark.parametrize("method", ["dora", "ia3", "prompt_tuning"])
def test_other_peft_methods_train_and_load(tmp_path: Path, tiny_bert: Path, method: str) -> None:
    run = train(project(tmp_path, tiny_bert, train_spec={"method": method, "max_steps": 6}))
    manifest = Run(run).manifest
    assert manifest.method == method and manifest.adapter
    assert 0 < manifest.parameters["trainable"] < manifest.parameters["total"] / 2
    config = json.loads((run / "model" / "adapter_config.json").read_text())
    assert config["peft_type"] == {"dora": "LORA", "ia3": "IA3", "prompt_tuning": "PROMPT_TUNING"}[method]
    assert config.get("use_dora", False) == (method == "dora")
    out = Predictor(run).predict(["great wonderful coffee"])
    assert out.proba.shape == (1, 2)


def test_prompt_tuning_leaves_room_for_its_virtual_tokens_in_the_models_positions(tmp_path: Path, tiny_bert: Path) -> None:
    """With the default budget (the model's context), a text filling it plus the 20 virtual tokens overran BERT's
    position table mid-training (a shape error that named no setting)."""
    from transformers import AutoConfig

    context = AutoConfig.from_pretrained(tiny_bert).max_position_embeddings
    data = rows(160)
    for r in data[::4]:
        r["text"] = (r["text"] + " ") * 40  # longer than the model's context
    cfg = project(tmp_path, tiny_bert, train_spec={"method": "prompt_tuning", "max_steps": 4})
    cfg.model.max_length = None
    write(tmp_path / "data.csv", data)
    run = train(cfg)
    assert Run(run).manifest.max_length == context - cfg.peft.num_virtual_tokens
    assert Predictor(run).predict([data[0]["text"]]).proba.shape == (1, 2)
    cfg.model.max_length = context
    with pytest.raises(ConfigError, match=r"model.max_length \(\d+\) and peft.num_virtual_tokens \(20\) exceed"):
        cfg.token_budget(context)


def test_a_max_length_past_the_model_s_positions_is_refused_before_training(tmp_path: Path, tiny_bert: Path) -> None:
    # The 128-position tiny BERT at max_length 256 crashed at the first long batch ("The expanded size of the tensor
    # (256) must match ... (128)"), after preparing, loading and writing the run; and a tokenizer without
    # model_max_length gave it a 512-token budget the same way.
    import json

    from transformers import AutoTokenizer

    from tunesmith.models.catalog import context_length

    data = rows(160)
    for r in data[::4]:
        r["text"] = (r["text"] + " ") * 40  # longer than the model's context
    write(tmp_path / "data.csv", data)
    cfg = project(tmp_path, tiny_bert, train_spec={"max_steps": 2})
    cfg.model.max_length = 256
    with pytest.raises(ConfigError, match=r"model.max_length \(256\) exceed the model's context of 128 tokens"):
        train(cfg)
    assert not (tmp_path / "run" / "run.json").exists()
    unsaid = tmp_path / "unsaid"  # the same model, its tokenizer silent about its length
    AutoTokenizer.from_pretrained(tiny_bert).save_pretrained(unsaid)
    settings = json.loads((unsaid / "tokenizer_config.json").read_text())
    settings.pop("model_max_length", None)
    (unsaid / "tokenizer_config.json").write_text(json.dumps(settings))
    (unsaid / "config.json").write_text((tiny_bert / "config.json").read_text())
    assert context_length(AutoTokenizer.from_pretrained(unsaid)) == 128


def test_balanced_class_weights_train(tmp_path: Path, tiny_bert: Path) -> None:
    data = rows(160)
    skewed = [r for i, r in enumerate(data) if r["label"] == "pos" or i % 8 == 1]  # ~1 neg for 4 pos
    runs = {}
    for weights in ("none", "balanced"):
        (tmp_path / weights).mkdir()
        cfg = project(tmp_path / weights, tiny_bert, train_spec={"class_weights": weights, "max_steps": 2})
        write(tmp_path / weights / "data.csv", skewed)
        runs[weights] = train(cfg)
    # Same seed, same data, same batches: only the loss weighting differs, and up-weighting the
    # minority class moves probability towards it.
    texts = [r["text"] for r in skewed]
    neg = {w: Predictor(run).predict(texts).proba[:, Run(run).manifest.labels.index("neg")].mean() for w, run in runs.items()}
    assert neg["balanced"] > neg["none"] + 1e-3


def test_a_dataset_prepared_for_another_tokenizer_is_prepared_again_or_refused(tmp_path: Path, tiny_bert: Path) -> None:
    """n_tokens and the length filters belong to the tokenizer that counted them."""
    import shutil

    from tunesmith.training.dataset import ensure_dataset

    other = tmp_path / "other-model"
    shutil.copytree(tiny_bert, other)
    first = ensure_dataset(project(tmp_path, tiny_bert))
    assert first.manifest.tokenizer == str(tiny_bert)
    again = ensure_dataset(project(tmp_path, other))  # the config's own dataset: prepared again
    assert again.path == first.path and again.manifest.tokenizer == str(other)
    prepare(project(tmp_path, tiny_bert), tmp_path / "for-tiny-bert")
    with pytest.raises(ConfigError, match="model.name"):  # a dataset given by path: refused
        ensure_dataset(project(tmp_path, other), tmp_path / "for-tiny-bert")
    longer = project(tmp_path, other)
    longer.model.max_length = 64
    assert ensure_dataset(longer).manifest.max_length == 64


@pytest.mark.parametrize("bf16", [True, False])
def test_bf16_batches_are_padded_to_a_multiple_of_8(tmp_path: Path, tiny_bert: Path, bf16: bool) -> None:
    """bf16 products are compiled per shape (oneDNN on a CPU): a few padded lengths keep them cached. fp32 pads to
    the longest row only."""
    from transformers import TrainerCallback

    from tunesmith.models.hardware import BF16_PAD_MULTIPLE

    lengths: list[int] = []

    class Lengths(TrainerCallback):
        def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs) -> None:
            lengths.extend(int(batch["input_ids"].shape[1]) for batch in train_dataloader)

    train(project(tmp_path, tiny_bert, train_spec={"max_steps": 1, "bf16": bf16}), callbacks=[Lengths()])
    assert lengths
    padded = [n % BF16_PAD_MULTIPLE == 0 for n in lengths]
    assert all(padded) if bf16 else not all(padded)


@pytest.mark.parametrize(("class_weights", "pooling", "micro"), [("balanced", "native", 4), ("balanced", "native", 8),
                                                                 ("none", "native", 4), ("none", "mean", 4)])
def test_gradient_accumulation_takes_the_same_step_as_one_batch(tmp_path: Path, tiny_bert: Path, class_weights: str,
                                                                pooling: str, micro: int) -> None:
    """16 examples in one batch or in accumulated smaller ones: the same loss and gradient. The Trainer takes a loss as
    already divided over the accumulated batches when the model's forward takes **kwargs (both heads do), or when it
    is a custom loss (class weights): a plain mean was counted grad_accum times (2.77 for ln 2). Class weights: each
    micro-batch's weighted mean scaled by its share of the labels gave a batch of one class its unweighted loss (a
    gradient 13x smaller at 4 x 4); the weighted sum over the step's label count adds up exactly."""
    data = rows(160)
    skewed = [r for i, r in enumerate(data) if r["label"] == "pos" or i % 8 == 1]
    first = {}
    for batch, accum in ((16, 1), (micro, 16 // micro)):
        folder = tmp_path / f"b{batch}"
        folder.mkdir()
        # fp32: bf16 autocast (the default on a host with native bf16) rounds the two splits differently
        cfg = project(folder, tiny_bert, train_spec={"class_weights": class_weights, "max_steps": 1, "batch_size": batch,
                                                     "grad_accum": accum, "group_by_length": False, "bf16": False})
        cfg.model.pooling = pooling
        write(folder / "data.csv", skewed)
        log = [json.loads(line) for line in (train(cfg) / "training_log.jsonl").read_text().splitlines()]
        first[accum] = next(e for e in log if "loss" in e and "grad_norm" in e)
    accumulated = first[16 // micro]
    assert accumulated["loss"] == pytest.approx(first[1]["loss"], rel=1e-4)
    assert accumulated["grad_norm"] == pytest.approx(first[1]["grad_norm"], rel=1e-4)


def test_class_weighted_loss_accumulates_exactly_and_evaluates_the_weighted_mean() -> None:
    """Training: sum(w[y] * ce) / n over the step's n labels, however they are split into micro-batches (the Trainer
    gives n as num_items_in_batch). Evaluation (no gradient): the weighted mean, as before."""
    import torch

    from tunesmith.tasks.sequence import class_weight_loss

    torch.manual_seed(0)
    weights = np.array([2.5, 0.625])  # balanced for 1 neg : 4 pos
    loss = class_weight_loss(weights)
    logits = torch.randn(16, 2).requires_grad_()
    labels = torch.tensor([1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 0, 1, 1, 1, 0])  # the first micro-batch of 4: one class
    w = torch.tensor(weights, dtype=torch.float32)
    ce = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
    expected = (w[labels] * ce).sum() / 16
    (grad_expected,) = torch.autograd.grad(expected, logits)
    for micro in (16, 8, 4):
        total = sum(loss({"logits": logits[i:i + micro]}, labels[i:i + micro], num_items_in_batch=torch.tensor(16))
                    for i in range(0, 16, micro))
        (grad,) = torch.autograd.grad(total, logits)
        assert total.item() == pytest.approx(expected.item(), rel=1e-6)
        assert torch.allclose(grad, grad_expected, rtol=1e-5, atol=1e-7)
    weighted_mean = (w[labels] * ce).sum() / w[labels].sum()
    with torch.no_grad():
        assert loss({"logits": logits}, labels).item() == pytest.approx(weighted_mean.item(), rel=1e-6)
        assert loss({"logits": logits}, labels, num_items_in_batch=torch.tensor(16)).item() == \
            pytest.approx(weighted_mean.item(), rel=1e-6)


def test_mean_pooling_head_regression_loss_keeps_fp32_targets_under_bf16_autocast(tiny_bert: Path) -> None:
    """Standardised regression targets cast to the bf16 logits kept 3 significant digits (1.2345678 became 1.234375)."""
    import torch
    from transformers import AutoConfig

    from tunesmith.models.heads import MeanPoolingForSequenceClassification

    config = AutoConfig.from_pretrained(tiny_bert)
    config.problem_type, config.num_labels = "regression", 1
    torch.manual_seed(0)
    model = MeanPoolingForSequenceClassification.from_encoder(config, tiny_bert).eval()
    ids = torch.randint(5, 100, (4, 9))
    labels = torch.tensor([1.2345678, -0.7654321, 2.3456789, 0.01234567])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(input_ids=ids, labels=labels)
    assert out.logits.dtype == torch.bfloat16  # the case: autocast gave bf16 logits
    exact = torch.nn.functional.mse_loss(out.logits.float().squeeze(-1), labels)
    assert out.loss.item() == pytest.approx(exact.item(), rel=1e-6)


def test_a_diverged_run_is_an_error_that_names_the_learning_rate_not_a_damaged_folder(tmp_path: Path,
                                                                                          tiny_bert: Path) -> None:
    from tunesmith.artifacts import is_run
    from tunesmith.errors import ConfigError

    cfg = project(tmp_path, tiny_bert, train_spec={"learning_rate": 1e6, "max_steps": 6})
    with pytest.raises(ConfigError, match=r"training diverged: .*loss.* lower train.learning_rate \(this run used 1000000"):
        train(cfg)
    assert not is_run(tmp_path / "run") and (tmp_path / "run" / "training_log.jsonl").is_file()


def test_a_decoder_classifier_answers_an_empty_text_alone_and_in_a_batch(tmp_path: Path, tiny_llama: Path) -> None:
    """A tokenizer that adds no BOS/EOS makes "" zero tokens: alone it crashed (reshape of 0 elements), in a batch it was
    an all-padding row with arbitrary logits, and the faster engines' check refused the model for that row."""
    run = train(project(tmp_path, tiny_llama, train_spec={"max_steps": 2}))
    predictor = Predictor(run)
    from tokenizers import processors

    predictor.tokenizer.backend_tokenizer.post_processor = processors.ByteLevel()  # no BOS/EOS, as SmolLM2's
    assert predictor.tokenizer("")["input_ids"] == []
    alone = predictor.logits([""])
    np.testing.assert_allclose(predictor.logits(["", "great wonderful coffee", "terrible stale bitter bread"])[:1],
                               alone, atol=1e-5)


@pytest.mark.parametrize("keep", ["best", "last"])
def test_keep_chooses_the_best_checkpoint_or_where_training_ended(tmp_path: Path, tiny_bert: Path, keep: str) -> None:
    """OpenAI's fine-tuned model is where training ended; jobs had served the checkpoint that scored best."""
    from safetensors.numpy import load_file

    run = train(project(tmp_path, tiny_bert, train_spec={"keep": keep, "max_steps": 20, "save_total_limit": 10,
                                                         "learning_rate": 3e-2}))
    state = json.loads(max((run / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
                       .joinpath("trainer_state.json").read_text())
    step = state["global_step"] if keep == "last" else state["best_global_step"]
    ours = load_file(run / "model" / "model.safetensors")
    kept = load_file(run / "checkpoints" / f"checkpoint-{step}" / "model.safetensors")
    assert all(np.array_equal(ours[k], kept[k]) for k in kept)
    evals = {e["step"]: e for e in state["log_history"] if "eval_loss" in e}
    assert Run(run).manifest.metrics["loss"] == pytest.approx(evals[step]["eval_loss"])


def test_a_tracker_that_is_not_installed_is_refused_before_anything_loads(tmp_path: Path, tiny_bert: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """`report_to: [tensorboard]` without the `tracking` extra failed as an internal error once the model had loaded."""
    import importlib.util

    found = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else found(name, *a))
    cfg = project(tmp_path, tiny_bert, train_spec={"max_steps": 1, "report_to": ["tensorboard"]})
    with pytest.raises(ConfigError, match=r"train.report_to: tensorboard is not installed; install it with "
                                          r"`pip install 'tunesmith\[tracking\]'`"):
        train(cfg)
    assert not cfg.run_dir.exists()
