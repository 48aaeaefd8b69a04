"""`tunesmith tune` on a tiny BERT: real training runs as trials, pruning, resume, best config, the report,
multi-objective Pareto fronts, and clear errors for spaces, metrics and storages that cannot work."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa
import yaml
from optuna.trial import TrialState

from tests.test_train import project
from tunesmith.cli import run
from tunesmith.config import parse_config
from tunesmith.errors import ConfigError
from tunesmith.store.db import normalize_url
from tunesmith.tune.study import run_study, study_folder

SPACE = {"train.learning_rate": {"low": 1e-4, "high": 1e-2, "log": True},
         "train.method": {"choices": ["full", "lora"]}, "peft.r": {"choices": [2, 4]}}


def tune_project(tmp: Path, model: Path, tune: dict, steps: int = 4, **train):
    return project(tmp, model, train_spec={"max_steps": steps, "save_total_limit": 1, **train}, tune=tune)


def trials_of(url: str, name: str = "tiny") -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=normalize_url(url)).get_trials()


class _OptunaRecords(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


# SQLite, the default storage: Optuna on PostgreSQL is covered by the two-worker test (test_study_parallel).
@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_study_runs_resumes_and_writes_the_best_config(tmp_path: Path, tiny_bert: Path, store_url: str) -> None:
    lines: list[str] = []
    cfg = tune_project(tmp_path, tiny_bert, {"space": SPACE, "trials": 2, "storage": store_url, "pruner": "none"})
    first = run_study(cfg, echo=lines.append)
    assert first["trials"] == {"complete": 2}
    cfg.tune.trials = 4  # the same study again, asking for 4 in all: it resumes, 2 more
    summary = run_study(cfg, echo=lines.append)
    assert "study 'tiny' has 2 finished trials; going on to 4" in lines
    trials = trials_of(store_url)
    assert [t.number for t in trials] == [0, 1, 2, 3] and all(t.state == TrialState.COMPLETE for t in trials)
    for t in trials:  # the method decides which settings exist in a trial
        assert ("peft.r" in t.params) == (t.params["train.method"] == "lora")
    for t in trials:  # the pruner's curve is the validation loss, negated in a study that maximises F1
        logged = [json.loads(line) for line in (Path(t.user_attrs["run_dir"]) / "training_log.jsonl").open()]
        losses = [row["eval_loss"] for row in logged if "eval_loss" in row]
        assert t.user_attrs["pruning_signal"] == "-loss"
        assert [t.intermediate_values[k] for k in sorted(t.intermediate_values)] == pytest.approx([-x for x in losses[:len(t.intermediate_values)]])

    # The study lives in the store's database, beside tunesmith's own tables.
    engine = sa.create_engine(normalize_url(store_url))
    tables = set(sa.inspect(engine).get_table_names())
    engine.dispose()
    assert {"trials", "studies", "alembic_version", "tunesmith_alembic_version", "jobs", "registered_models"} <= tables

    folder = study_folder(cfg)
    best = max(trials, key=lambda t: (t.value, -t.number))
    assert summary["best"]["number"] == best.number
    data = yaml.safe_load((folder / "best.yaml").read_text())
    assert "tune" not in data
    best_cfg = parse_config(data, "best.yaml")  # ready for `tunesmith train`
    assert best_cfg.train.learning_rate == best.params["train.learning_rate"]
    assert best_cfg.train.method == best.params["train.method"]
    assert best_cfg.peft.r == best.params.get("peft.r", 16)
    assert best_cfg.train.output_dir == cfg.train.output_dir  # the user's run folder, not a trial's

    evaluated = sorted(p.parents[2].name for p in folder.glob("trial-*/eval/test/report.json"))
    assert evaluated == [f"trial-{best.number}"]  # the test split, once, on the best trial only
    assert not list(folder.glob("trial-*/checkpoints"))  # finished trials keep model/ and their files, no checkpoints
    page = (folder / "report.html").read_text()
    assert page.count("data:image/png") >= 3 and "## Trials" in (folder / "report.md").read_text()
    report = json.loads((folder / "report.json").read_text())
    assert [t["number"] for t in report["trials"]] == [0, 1, 2, 3] and report["best"] == best.number
    assert set(report["figures"]) >= {"history", "parallel", "curves"}


@pytest.mark.parametrize(("pruner", "metric"), [("median", "loss"), ("successive_halving", "f1_macro")])
def test_hopeless_trials_are_pruned_early(tmp_path: Path, tiny_bert: Path, pruner: str, metric: str) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    # Seed 3 draws 7e-3 first (learns), then 1e-7 and 2e-8 (cannot move the loss in 24 steps). With F1 as
    # the objective the pruner still compares validation losses (tune.prune_on), negated.
    tune = {"space": {"train.learning_rate": {"low": 1e-8, "high": 1e-2, "log": True}}, "trials": 3, "storage": url,
            "sampler": "random", "seed": 3, "pruner": pruner, "metric": metric,
            **({"startup_trials": 1} if pruner == "median" else {})}  # successive halving has no start-up trials
    lines: list[str] = []
    cfg = tune_project(tmp_path, tiny_bert, tune, steps=24)
    run_study(cfg, echo=lines.append)
    trials = trials_of(url)
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert pruned and complete, [(t.number, t.state, t.params, t.intermediate_values) for t in trials]
    assert all(t.params["train.learning_rate"] < 1e-6 for t in pruned)
    assert all(t.user_attrs["steps"] < 24 for t in pruned), [(t.number, t.intermediate_values, t.user_attrs["steps"])
                                                              for t in trials]  # stopped early...
    assert all(t.user_attrs["steps"] == 24 for t in complete)  # ...where a finished trial trains all its steps
    folder = study_folder(cfg)
    assert all(not (folder / f"trial-{t.number}").exists() for t in pruned)  # no half-written run folder
    assert any(line.startswith(f"trial {pruned[0].number} pruned at evaluation") for line in lines)
    md = (folder / "report.md").read_text()
    assert "pruned at" in md
    # A pruned trial's objective value is none: the report had shown Optuna's value for it (the last curve value, the
    # negated validation loss) as its F1, e.g. f1_macro -0.6931. Its last validation loss is shown as what it is.
    rows = {row["number"]: row for row in json.loads((folder / "report.json").read_text())["trials"]}
    for t in pruned:
        evaluation = max(t.intermediate_values)
        loss = t.intermediate_values[evaluation] * (-1 if metric == "f1_macro" else 1)
        assert loss > 0 and rows[t.number]["values"] is None
        assert rows[t.number]["last_reported"] == {"metric": "loss", "value": pytest.approx(loss),
                                                   "evaluation": evaluation, "step": t.user_attrs["steps"]}
        assert re.search(rf"\| {t.number} \| pruned \| [^|]+ \| — \| .* \| evaluation {evaluation} "
                         rf"\(step {t.user_attrs['steps']}\): validation loss {loss:.4g} \|", md), md
    for t in complete:
        assert rows[t.number]["values"] == {metric: t.value} and rows[t.number]["last_reported"] is None


def test_a_diverged_trial_fails_with_its_reason_and_the_study_goes_on(tmp_path: Path, tiny_bert: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    # A learning rate of 1e6 turns the weights into NaN within the first steps. The median pruner's start-up
    # trials are not judged, so the trial itself must stop and say what happened (it used to train on and crash
    # the study writing NaN metrics); timeout_s only bounds a failure of this test.
    tune = {"space": {"train.learning_rate": {"choices": [1e6]}}, "trials": 2, "storage": url, "pruner": "median",
            "metric": "loss", "timeout_s": 120}
    lines: list[str] = []
    cfg = tune_project(tmp_path, tiny_bert, tune, steps=6)
    shown = _OptunaRecords()  # what Optuna's own handler would print to the terminal
    logging.getLogger("optuna").addHandler(shown)
    try:
        summary = run_study(cfg, echo=lines.append)
    finally:
        logging.getLogger("optuna").removeHandler(shown)
    # Optuna's "Trial 0 failed ..." warning came with the trial's whole Python traceback (exc_info)
    assert not [r.getMessage() for r in shown.records if r.exc_info or "failed" in r.getMessage()]
    trials = trials_of(url)
    assert [t.state for t in trials] == [TrialState.FAIL] * 2  # two trials in all: a failed one keeps its place
    reasons = [t.user_attrs["fail_reason"] for t in trials]
    assert all(re.fullmatch(r"(gradient norm|validation loss) is nan at .*: the training diverged", r) for r in reasons)
    assert summary["trials"] == {"fail": 2} and "best" not in summary
    assert f"trial 0 failed: {reasons[0]}" in " ".join(lines)
    folder = study_folder(cfg)
    assert not list(folder.glob("trial-*"))  # no half-written run folder
    assert reasons[1] in (folder / "report.md").read_text()
    # the CLI on the finished study: it exited 0, and `tune X && tunesmith train best.yaml` went on to a missing file
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    assert run(["tune", str(path)]) == 1 and not (folder / "best.yaml").exists()


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_an_out_of_memory_trial_fails_with_its_reason_and_the_study_goes_on(tmp_path: Path, tiny_bert: Path, device: str,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    # Memory is what a trial's values ask for (batch size 64 here): one trial out of memory used to stop the study.
    # PyTorch's CPU allocator says so with a plain RuntimeError, which stopped the study too.
    import torch

    import tunesmith.training

    def out_of_memory(*args: object, **kwargs: object) -> None:
        if device == "cpu":
            torch.empty(2**50, dtype=torch.uint8)  # a petabyte: refused at once
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(tunesmith.training, "train", out_of_memory)
    url = f"sqlite:///{tmp_path / 'store.db'}"
    cfg = tune_project(tmp_path, tiny_bert, {"space": {"train.batch_size": {"choices": [64]}}, "trials": 2,
                                             "storage": url})
    lines: list[str] = []
    summary = run_study(cfg, echo=lines.append)
    trials = trials_of(url)
    assert [t.state for t in trials] == [TrialState.FAIL] * 2 and summary["trials"] == {"fail": 2}
    reason = "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB" if device == "cuda" else \
        trials[0].user_attrs["fail_reason"]
    assert "can't allocate memory" in reason or device == "cuda"
    assert [t.user_attrs["fail_reason"] for t in trials] == [reason] * 2
    assert f"trial 1 failed: {reason}" in " ".join(lines)


def test_values_the_model_refuses_fail_their_trial_and_the_study_goes_on(tmp_path: Path, tiny_bert: Path) -> None:
    # The tiny BERT has 128 positions; a prompt-tuning trial's 20 virtual tokens come first, so max_length 128 is
    # refused in its dataset preparation (a value check_space cannot judge alone). That ConfigError stopped the whole study with
    # no fail_reason, and since a failed trial gave its place back, a study started again drew 128 again, for ever.
    url = f"sqlite:///{tmp_path / 'store.db'}"
    tune = {"space": {"train.method": {"choices": ["prompt_tuning"]}, "model.max_length": {"choices": [16, 128]}},
            "trials": 3, "storage": url, "sampler": "random", "seed": 0, "pruner": "none"}  # seed 0 draws 128, 16, 16
    cfg = tune_project(tmp_path, tiny_bert, tune, steps=2)
    lines: list[str] = []
    summary = run_study(cfg, echo=lines.append, evaluate_test=False)
    trials = trials_of(url)
    assert [(t.params["model.max_length"], t.state) for t in trials] == [
        (128, TrialState.FAIL), (16, TrialState.COMPLETE), (16, TrialState.COMPLETE)]
    reason = trials[0].user_attrs["fail_reason"]
    assert reason.startswith("ConfigError: model.max_length (128) and peft.num_virtual_tokens (20) exceed the model's "
                             "context of 128 tokens"), reason
    assert any(line.startswith(f"trial 0 failed: {reason}") for line in lines)
    assert summary["trials"] == {"fail": 1, "complete": 2}
    assert not (study_folder(cfg) / "trial-0").exists()
    run_study(cfg, echo=lines.append, evaluate_test=False)  # started again: the failed trial keeps its place
    assert len(trials_of(url)) == 3 and "study 'tiny' has 3 finished trials; nothing to do" in lines


@pytest.mark.parametrize("error", [ValueError("the tokenizer file is corrupt"),
                                   ConfigError("model folder /m has no weights (looked for model.safetensors)")])
def test_a_trial_that_raises_otherwise_stops_the_worker_with_its_reason(tmp_path: Path, tiny_bert: Path,
                                                                        error: Exception,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # A configuration error naming no setting the trial drew is the base config's: every trial would fail alike.
    import tunesmith.training

    def broken(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(tunesmith.training, "train", broken)
    url = f"sqlite:///{tmp_path / 'store.db'}"
    cfg = tune_project(tmp_path, tiny_bert, {"space": {"train.batch_size": {"choices": [8]}}, "trials": 2,
                                             "storage": url})
    with pytest.raises(type(error), match=re.escape(str(error))):  # the worker stops (Optuna's way)
        run_study(cfg, echo=lambda line: None)
    [trial] = trials_of(url)
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs["fail_reason"] == f"{type(error).__name__}: {error}"


def test_multi_objective_study_reports_a_pareto_front(tmp_path: Path, tiny_bert: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tune_project(tmp_path, tiny_bert, {})
    raw = cfg.model_dump(mode="json", exclude={"tune"})
    raw["tune"] = {"space": {"train.method": {"choices": ["full", "lora"]}, "peft.r": {"choices": [2, 8]}},
                   "objectives": ["trainable_params"], "trials": 3, "storage": f"sqlite:///{tmp_path / 'store.db'}"}
    path = tmp_path / "tune.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert run(["tune", str(path), "--set", "train.learning_rate=0.003"]) == 0
    shown = capsys.readouterr().out
    assert "pruning is off: Optuna cannot prune a multi-objective study" in " ".join(shown.split())
    assert "Pareto front: trial" in shown and "best config:" in shown
    assert "tunesmith train CONFIG --set train.method=" in " ".join(shown.split())
    folder = tmp_path / "tiny-tune"
    report = json.loads((folder / "report.json").read_text())
    assert report["objectives"] == ["f1_macro", "trainable_params"] and report["pareto"]
    assert (folder / "figures" / "pareto.png").is_file() and "Pareto front" in (folder / "report.html").read_text()
    assert sorted(p.stem for p in (folder / "pareto").glob("*.yaml")) == [f"trial-{n}" for n in report["pareto"]]
    full = [t for t in report["trials"] if t["params"]["train.method"] == "full"]
    lora = [t for t in report["trials"] if t["params"]["train.method"] == "lora"]
    if full and lora:  # LoRA trains far fewer weights: the second objective tells them apart
        assert min(t["values"]["trainable_params"] for t in full) > max(t["values"]["trainable_params"] for t in lora)


@pytest.mark.parametrize(("space", "words"), [
    ({"train.learning_rate": {"low": 1e-3, "high": 1e-3}}, "empty range: low (0.001) must be below high (0.001)"),
    ({"train.learning_rate": {"low": 0, "high": 1e-3, "log": True}}, "a log scale needs low > 0"),
    ({"train.optimizer": {"choices": ["adamw"]}}, "cannot tune ['train.optimizer']"),
    ({"train.learning_rate": {"choices": []}}, "choices is empty"),
])
def test_bad_spaces_are_config_errors_naming_the_field(tmp_path: Path, tiny_bert: Path, space: dict, words: str) -> None:
    with pytest.raises(ConfigError) as e:
        tune_project(tmp_path, tiny_bert, {"space": space})
    assert "tune.space" in str(e.value) and words in str(e.value)


def _bad_cli(tmp_path: Path, tiny_bert: Path, tune: dict, *flags: str) -> tuple[int, str]:
    raw = tune_project(tmp_path, tiny_bert, {}).model_dump(mode="json", exclude={"tune"})
    raw["tune"] = {"storage": f"sqlite:///{tmp_path / 'store.db'}", **tune}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    return run(["tune", str(path), *flags]), path.name


@pytest.mark.parametrize(("tune", "flags", "words"), [
    ({"space": {"train.learning_rate": {"low": 1e-3, "high": 1e-4}}}, (), "tune.space.train.learning_rate: empty range"),
    ({"space": {"train.weight_decay": {"low": 0, "high": 0.1, "log": True}}}, (), "tune.space.train.weight_decay: a log scale needs low > 0"),
    ({"space": {"train.epochs": {"low": 1, "high": 2}}, "metric": "rmse"}, (),
     "tune.metric: 'rmse' is not a validation metric of single_label_classification tasks"),
    ({"space": {"peft.r": {"choices": [4, 8]}}}, (), "tune.space.peft.r: no trial would use it"),
    ({"space": {"train.batch_size": {"low": 0, "high": 8}}}, (), "tune.space.train.batch_size: 0 would make an invalid trial config"),
    ({"space": {"train.lr_scheduler": {"choices": ["linear", "wavy"]}}}, (), "unknown: ['wavy']"),
    # values only training refused: each trial drawing one stopped the study, and a study started again drew it again
    ({"space": {"train.method": {"choices": ["lora"]},
                "peft.target_modules": {"choices": [["query"], ["q_proj"]]}}}, (),
     "tune.space.peft.target_modules: ['q_proj'] would fail every trial drawing it: the model (bert) has no module "
     "named ['q_proj']; its linear layers are ['classifier', 'dense', 'key', 'query', 'value']"),
    ({"space": {"model.max_length": {"choices": [32, 512]}}}, (), "tune.space.model.max_length: 512 exceeds the "
     "context of the model"),
    ({"space": {"model.max_length": {"low": 16, "high": 256}}}, (), "(128 tokens); give lengths up to 128"),
    ({}, (), "tune.space is empty"),
    ({"space": {"train.epochs": {"low": 1, "high": 2}}}, ("--sampler", "annealing"), "tune.sampler"),
    ({"space": {"train.weight_decay": {"low": 0, "high": 0.1}}}, ("--storage", "postgresql://postgres@127.0.0.1:1/x"),
     "tune.storage postgresql://postgres@127.0.0.1:1/x does not answer"),
])
def test_bad_input_through_the_cli_exits_2_with_a_clear_message(tmp_path: Path, tiny_bert: Path, tune: dict,
                                                                 flags: tuple[str, ...], words: str,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = _bad_cli(tmp_path, tiny_bert, tune, *flags)
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2, err
    assert words in err
    assert not (tmp_path / "tiny-tune").exists()  # refused before any trial


def test_a_storage_under_the_home_folder_opens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # sqlite:///~/...: the store was made in $HOME, but the probe and Optuna were given the unexpanded path (a folder
    # named "~" in the current directory), and the storage "did not answer".
    from tunesmith.tune.study import open_storage

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    storage = open_storage("sqlite:///~/tune/study.db")
    assert storage.engine.url.database == str(tmp_path / "home" / "tune" / "study.db")
    optuna.create_study(study_name="s", storage=storage)
    storage.engine.dispose()
    assert optuna.get_all_study_names(f"sqlite:///{tmp_path / 'home' / 'tune' / 'study.db'}") == ["s"]
    assert not (tmp_path / "~").exists()


def test_a_study_is_not_joined_with_another_search_space(tmp_path: Path, tiny_bert: Path) -> None:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    cfg = tune_project(tmp_path, tiny_bert, {"space": {"train.learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}},
                                             "trials": 1, "storage": url, "pruner": "none"}, steps=2)
    run_study(cfg, echo=lambda line: None, evaluate_test=False)
    # The space edited, the study name left as it was: the old study's trials (and its best) are not this space's.
    edited = tune_project(tmp_path, tiny_bert, {"space": {"train.weight_decay": {"low": 0.0, "high": 0.1}},
                                                "trials": 1, "storage": url, "pruner": "none"}, steps=2)
    with pytest.raises(ConfigError, match=r"study 'tiny' .* searches .*train\.learning_rate.*not .*train\.weight_decay"):
        run_study(edited, echo=lambda line: None, evaluate_test=False)
    assert len(trials_of(url)) == 1
    run_study(cfg, echo=lambda line: None, evaluate_test=False)  # the same space still resumes it


def test_a_study_is_not_resumed_comparing_another_pruning_curve(tmp_path: Path, tiny_bert: Path) -> None:
    # Begun with --set tune.prune_on=metric and resumed without it, every new trial's negated loss trailed the old F1s.
    url = f"sqlite:///{tmp_path / 'store.db'}"
    tune = {"space": {"train.learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}}, "trials": 1, "storage": url}
    run_study(tune_project(tmp_path, tiny_bert, {**tune, "prune_on": "metric"}, steps=2), echo=lambda line: None,
              evaluate_test=False)
    with pytest.raises(ConfigError, match=r"report the validation f1.*tune\.prune_on: loss; set tune\.prune_on: metric"):
        run_study(tune_project(tmp_path, tiny_bert, {**tune, "prune_on": "loss"}, steps=2), echo=lambda line: None,
                  evaluate_test=False)
    assert len(trials_of(url)) == 1


def test_a_chat_study_may_not_search_max_length(tmp_path: Path, tiny_llama: Path) -> None:
    # Conversations are kept whole or dropped: each length kept other ones and split them anew, so the trials'
    # validation losses were measured on different examples.
    from tests.test_train_chat import chat_raw
    from tunesmith.config import parse_config
    from tunesmith.tune.study import check_space

    raw = chat_raw(tmp_path, tiny_llama)
    raw["tune"] = {"space": {"model.max_length": {"choices": [64, 256]}}}
    with pytest.raises(ConfigError, match="tune.space.model.max_length: a chat run keeps only the examples that fit"):
        check_space(parse_config(raw))
    raw["tune"] = {"space": {"train.learning_rate": {"low": 1e-4, "high": 1e-2}}}
    check_space(parse_config(raw))


def test_a_trial_failed_for_its_dead_worker_leaves_no_folder(tmp_path: Path) -> None:
    # Failed by the heartbeat on another machine sharing runs/, its checkpoints (10 MB on the tiny model) stayed for good.
    from tunesmith.tune.study import _sweep_dead_folders

    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}")
    folders = {}
    for name, attrs in (("dead", {}), ("diverged", {"fail_reason": "loss became NaN"}), ("surplus", {"surplus": True})):
        folders[name] = tmp_path / name / "checkpoints"
        folders[name].mkdir(parents=True)
        trial = study.ask()
        for k, v in {**attrs, "run_dir": str(tmp_path / name)}.items():
            trial.set_user_attr(k, v)
        study.tell(trial, state=TrialState.FAIL)
    _sweep_dead_folders(study)
    assert {n: f.exists() for n, f in folders.items()} == {"dead": False, "diverged": True, "surplus": True}


def test_every_sampler_the_config_offers_samples() -> None:
    """`sampler: cmaes` stopped a study at its first CMA-ES draw: Optuna imports the `cmaes` package only then."""
    import typing

    import optuna

    from tunesmith.config import TuneSpec
    from tunesmith.tune.study import make_sampler

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    offered, _ = typing.get_args(TuneSpec.model_fields["sampler"].annotation)  # Literal[...] | None
    for name in typing.get_args(offered):
        study = optuna.create_study(sampler=make_sampler(TuneSpec(sampler=name), seed=0))
        study.optimize(lambda t: (t.suggest_float("x", -1, 1) - 0.2) ** 2 + t.suggest_float("y", 0, 1), n_trials=4)
        assert len(study.trials) == 4, name


class _AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return True


def test_a_trial_that_trained_all_its_steps_is_never_pruned() -> None:
    """A trial was pruned by the evaluation of its last step (the Trainer evaluates there even off the eval_steps
    grid), or, with train.keep: last, by the evaluation of its final weights after training: it had trained to its
    end, was recorded PRUNED and its run folder removed."""
    from types import SimpleNamespace

    from tunesmith.tune.study import _reporter

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", pruner=_AlwaysPrune())
    training = study.ask()
    with pytest.raises(optuna.TrialPruned):  # during training, an evaluation is judged
        _reporter(training, "f1_macro", report=True, prune_on="loss").on_evaluate(
            None, SimpleNamespace(global_step=3, max_steps=7), None, metrics={"eval_loss": 0.6})
    trained = study.ask()
    reporter = _reporter(trained, "f1_macro", report=True, prune_on="loss")
    last = SimpleNamespace(global_step=7, max_steps=7)
    reporter.on_evaluate(None, last, None, metrics={"eval_loss": 0.6})  # the last step's: reported, not judged
    reporter.on_train_end(None, last, None)
    reporter.on_evaluate(None, last, None, metrics={"eval_loss": 0.5})  # the kept weights, measured after training
    assert reporter.evaluations == 1 and reporter.step == 7
    assert study._storage.get_trial(trained._trial_id).intermediate_values == {1: -0.6}
    study.tell(trained, 0.5)
    assert study.trials[trained.number].state == TrialState.COMPLETE


def test_a_trailing_trial_judged_only_at_its_last_step_completes(tmp_path: Path, tiny_bert: Path) -> None:
    """7 steps, evaluated at steps 3 and 6 and at the last one; the grace leaves only the last to judge: the trailing
    trial had trained all 7 steps when the median pruner cut it (PRUNED, its run folder removed)."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    tune = {"space": {"train.learning_rate": {"choices": [3e-3, 1e-8]}}, "trials": 2, "storage": url,
            "sampler": "random", "seed": 1, "pruner": "median", "startup_trials": 1, "grace_evaluations": 2}
    run_study(tune_project(tmp_path, tiny_bert, tune, steps=7, keep="last"), echo=lambda line: None, evaluate_test=False)
    trials = trials_of(url)
    assert [(t.state, t.user_attrs["steps"], t.user_attrs["evaluations"]) for t in trials] == [(TrialState.COMPLETE, 7, 3)] * 2
    assert all(Path(t.user_attrs["run_dir"], "run.json").is_file() for t in trials)


def test_trials_training_in_several_processes_are_refused(tmp_path: Path, tiny_bert: Path) -> None:
    """Each trial trains in the worker's one process: train.nproc 2 was ignored by the trials but written into
    best.yaml, which then trained with twice the effective batch of the trial it came from."""
    from tunesmith.tune.study import check_space

    cfg = tune_project(tmp_path, tiny_bert, {"space": {"train.learning_rate": {"low": 1e-4, "high": 1e-2}}}, nproc=2)
    with pytest.raises(ConfigError, match=r"train\.nproc is 2, but each trial trains in one process.*several "
                                          r"`tunesmith tune` workers"):
        check_space(cfg)


def test_searching_epochs_under_max_steps_is_refused(tmp_path: Path, tiny_bert: Path) -> None:
    """train.max_steps overrides epochs: every trial trained the same steps, and the study ranked noise."""
    from tunesmith.tune.study import check_space

    cfg = tune_project(tmp_path, tiny_bert, {"space": {"train.epochs": {"choices": [1, 5]}}}, steps=4)
    with pytest.raises(ConfigError, match=r"tune\.space\.train\.epochs: train\.max_steps \(4\) overrides epochs"):
        check_space(cfg)
    raw = cfg.model_dump(mode="json")
    raw["train"]["max_steps"] = None
    check_space(parse_config(raw))


def test_a_worker_that_waited_to_finish_writes_the_newest_best(tmp_path: Path, tiny_bert: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The best trial was read before .finish.lock was taken: a worker waiting for it (another worker evaluating on
    test) then wrote its stale best.yaml over the newer one."""
    import contextlib

    from optuna.distributions import FloatDistribution
    from optuna.trial import create_trial

    import tunesmith.tune.study as study_module

    url = f"sqlite:///{tmp_path / 'store.db'}"
    cfg = tune_project(tmp_path, tiny_bert, {"space": {"train.learning_rate": {"low": 1e-4, "high": 1e-2}},
                                             "trials": 2, "storage": url})
    study = study_module.load_study(cfg, echo=lambda line: None)
    space = {"train.learning_rate": FloatDistribution(1e-4, 1e-2)}
    study.add_trial(create_trial(state=TrialState.COMPLETE, params={"train.learning_rate": 1e-3},
                                 distributions=space, value=0.70))
    real_lock, waited = study_module.file_lock, []

    @contextlib.contextmanager
    def lock(path: Path):
        if not waited:  # worker A waits here; meanwhile worker B's better trial completes and B finishes
            waited.append(path)
            study.add_trial(create_trial(state=TrialState.COMPLETE, params={"train.learning_rate": 5e-3},
                                         distributions=space, value=0.90))
            study_module.finish_study(cfg, study, echo=lambda line: None, evaluate_test=False)
        with real_lock(path):
            yield

    monkeypatch.setattr(study_module, "file_lock", lock)
    summary = study_module.finish_study(cfg, study, echo=lambda line: None, evaluate_test=False)  # worker A
    assert waited and summary["best"]["number"] == 1
    assert (study_folder(cfg) / "best.yaml").read_text().startswith("# Best trial 1 of study 'tiny'")


def test_a_study_is_not_resumed_under_another_base_config(tmp_path: Path, tiny_bert: Path) -> None:
    """Resumed with train.max_steps or model.max_length changed, new trials were ranked beside the old ones and
    best.yaml was rebuilt from the changed config under the old trial's score."""
    from tunesmith.tune.study import best_trial, load_study, write_best

    url = f"sqlite:///{tmp_path / 'store.db'}"
    tune = {"space": {"train.learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}}, "trials": 1, "storage": url,
            "pruner": "none"}
    run_study(tune_project(tmp_path, tiny_bert, tune, steps=2), echo=lambda line: None, evaluate_test=False)
    edited = tune_project(tmp_path, tiny_bert, tune, steps=3)
    with pytest.raises(ConfigError, match=r"(?s)study 'tiny' .*another config.*train\.max_steps: 2 -> 3.*another tune\.study"):
        run_study(edited, echo=lambda line: None, evaluate_test=False)
    assert len(trials_of(url)) == 1
    # tune.trials may change (it is how a study is resumed)
    run_study(tune_project(tmp_path, tiny_bert, {**tune, "trials": 2}, steps=2), echo=lambda line: None,
              evaluate_test=False)
    # best.yaml comes from the settings the best trial trained under, whatever config writes it
    study = optuna.load_study(study_name="tiny", storage=normalize_url(url))
    best = yaml.safe_load(write_best(edited, best_trial(study), tmp_path / "b.yaml", "f1_macro").read_text())
    assert best["train"]["max_steps"] == 2 and best["train"]["output_dir"] == str(edited.train.output_dir)
    assert load_study(tune_project(tmp_path, tiny_bert, tune, steps=2), echo=lambda line: None)  # put back: joins
    (tmp_path / "elsewhere").mkdir()  # the same project in another folder (a worker on another machine): joins
    assert load_study(tune_project(tmp_path / "elsewhere", tiny_bert, tune, steps=2), echo=lambda line: None)


def test_the_printed_set_line_gives_the_best_config(tmp_path: Path, tiny_bert: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """Only the trial's values were printed: train.metric (from tune.metric) and the settings the drawn method
    does not read (reset) were missing, so CONFIG + the line trained something else than best.yaml."""
    from tunesmith.config import apply_override

    raw = tune_project(tmp_path, tiny_bert, {}, steps=2).model_dump(mode="json", exclude={"tune"})
    raw["tune"] = {"storage": f"sqlite:///{tmp_path / 'store.db'}", "trials": 1, "pruner": "none", "metric": "accuracy",
                   "space": {"train.learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}}}
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert run(["tune", str(path)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "tunesmith train CONFIG" in x)
    import shlex

    words = shlex.split(line.split("tunesmith train CONFIG", 1)[1])
    sets = [w for w, flag in zip(words[1:], words, strict=False) if flag == "--set"]
    assert "train.metric=accuracy" in sets
    data = {k: v for k, v in raw.items() if k != "tune"}
    for item in sets:
        apply_override(data, item)
    best = yaml.safe_load((study_folder(parse_config(raw)) / "best.yaml").read_text())
    assert parse_config(data).model_dump(mode="json", exclude={"tune"}) == best


def test_a_study_of_the_same_name_in_another_storage_may_not_share_its_folder(tmp_path: Path, tiny_bert: Path) -> None:
    """Both wrote runs/<study>-tune/trial-0: the second study's trial overwrote the first's run."""
    tune = {"space": {"train.learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}}, "trials": 1, "pruner": "none"}
    cfg = tune_project(tmp_path, tiny_bert, {**tune, "storage": f"sqlite:///{tmp_path / 'a.db'}"}, steps=2)
    run_study(cfg, echo=lambda line: None, evaluate_test=False)
    before = (study_folder(cfg) / "trial-0" / "config.json").read_text()
    other = tune_project(tmp_path, tiny_bert, {**tune, "storage": f"sqlite:///{tmp_path / 'b.db'}"}, steps=2)
    with pytest.raises(ConfigError, match=r"(?s)tiny-tune holds the trial runs of study 'tiny' in sqlite:///.*a\.db.*another tune\.study"):
        run_study(other, echo=lambda line: None, evaluate_test=False)
    assert (study_folder(cfg) / "trial-0" / "config.json").read_text() == before
    assert not optuna.load_study(study_name="tiny", storage=normalize_url(f"sqlite:///{tmp_path / 'b.db'}")).trials
    run_study(cfg, echo=lambda line: None, evaluate_test=False)  # its own study still goes on


def test_a_best_run_deleted_here_is_to_be_retrained(tmp_path: Path, tiny_bert: Path) -> None:
    import shutil

    lines: list[str] = []
    cfg = tune_project(tmp_path, tiny_bert, {"space": {"train.learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}},
                                             "trials": 1, "storage": f"sqlite:///{tmp_path / 's.db'}", "pruner": "none"},
                       steps=2)
    run_study(cfg, echo=lines.append, evaluate_test=False)
    shutil.rmtree(study_folder(cfg) / "trial-0")
    run_study(cfg, echo=lines.append)
    assert any("trial-0 is gone: retrain it with `tunesmith train" in x and "best.yaml" in x for x in lines), lines
    assert not any("ran on" in x for x in lines)
