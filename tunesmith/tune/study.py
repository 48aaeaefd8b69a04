"""`tunesmith tune`: an Optuna study over the config's `tune.space`, each trial a real training run.

    space     tune.space -> one trial's values (the method first; LoRA settings only where the method reads them)
    trials    the values -> a config (the base config dumped, values set, validated again) -> a run folder
              under <runs>/<study>-tune/trial-<number>; validation metrics reported at every evaluation, so the
              pruner can stop a trailing trial; the objective is the run's best validation metric, never test
    storage   Optuna's RDB storage in the tunesmith store's database (SQLite by default, PostgreSQL by URL):
              workers started with the same --study and --storage share one study; a re-run resumes it
    the end   best.yaml (a full config for `tunesmith train`), the test split evaluated once on the best
              trial's run, and the report (report.py)

Trials are counted across workers: a worker starts a trial only while fewer than `tune.trials` are
finished, running or queued, so N trials in all, whatever the number of workers. A worker that dies
leaves a RUNNING trial whose heartbeat stops; the next worker to look fails it and queues a copy (at once
when that worker runs on the same machine and sees the process gone). A trial interrupted with Ctrl-C is
queued again too, so a study started again resumes with it; queued trials run even as the study's last.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import os
import re
import shutil
import socket
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, get_args

import optuna
import yaml
from optuna.trial import FrozenTrial, Trial, TrialState

from tunesmith.artifacts import MODEL_DIR, RUN_CONFIG, DatasetVersion, Run
from tunesmith.config import (
    GENERATIVE_TASKS,
    LOWER_IS_BETTER,
    SEQUENCE_METRICS,
    ProjectConfig,
    SearchDim,
    TuneSpec,
    config_diff,
    parse_config,
)
from tunesmith.errors import ConfigError, DataError
from tunesmith.store.db import file_lock, shown_url

CONNECT_TIMEOUT_S = 5  # a storage URL that does not answer is reported after this, not after TCP's minutes
SQLITE_BUSY_S = 30  # several workers write one SQLite file: a writer waits this long for another's transaction
HEARTBEAT_S = 20  # a running trial tells the storage it is alive this often...
GRACE_S = 60  # ...and one silent for this long belongs to a dead worker: failed, and a copy queued
MAX_RETRY = 2  # a trial whose worker died is queued again at most this often (a trial that kills workers stops)
FAIL_REASON_CHARS = 300  # a failed trial's exception, as the report and the log show it
# Logged values that, once NaN or infinite, mean the weights are too (the Trainer keeps NaN steps out of its
# logged training loss, not out of the gradient norm or the validation loss).
DIVERGED_LOGS = {"grad_norm": "gradient norm", "loss": "training loss", "eval_loss": "validation loss"}
LATENCY_TEXTS = 16  # latency_ms: the first validation texts, predicted one at a time (a served request)...
LATENCY_ROUNDS = 3  # ...in this many passes; the fastest pass's time per text is the objective
STORAGE_LOCK = 7_301_947  # PostgreSQL advisory lock: one process creates Optuna's tables at a time
ADAPTER_METHODS = ("lora", "dora")
# Settings a trial sets only when its method reads them (ProjectConfig.inapplicable refuses the rest).
CONDITIONAL: dict[str, tuple[str, ...]] = {
    "peft.r": ADAPTER_METHODS, "peft.alpha": ADAPTER_METHODS, "peft.dropout": ADAPTER_METHODS,
    "peft.target_modules": (*ADAPTER_METHODS, "ia3"),
}
RESEEDED = ("tpe", "random", "nsga2")  # samplers re-seeded per trial number (qmc and cmaes keep a sequence)
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class _Surplus(Exception):
    """Two workers started the study's last trial at the same moment: the later-numbered one stands down."""


class _ValuesFailed(Exception):
    """A trial failed through its own values, not a broken worker: it fails on its own, keeps its place in the
    study (replacing it could go on forever, and a copy would draw the same values) and the study goes on to the next
    trial."""


class _Diverged(_ValuesFailed):
    """A trial's loss became NaN or infinite (a learning rate too high)."""


def _out_of_memory(err: BaseException) -> bool:
    """Memory the trial's values asked for (a batch size, max_length, full fine-tuning of a large model): a GPU's
    (torch.OutOfMemoryError), or the process's (MemoryError, and PyTorch's CPU and MPS allocators, which raise a plain
    RuntimeError). The operating system's OOM killer ends the worker instead; its trial is then a dead worker's."""
    import torch

    if isinstance(err, MemoryError | torch.OutOfMemoryError):
        return True
    said = str(err)
    return isinstance(err, RuntimeError) and any(
        words in said for words in ("can't allocate memory", "out of memory", "Cannot allocate memory"))


# -- the space ------------------------------------------------------------------------------------


def metric_of(cfg: ProjectConfig) -> tuple[str, str]:
    """(validation metric optimised, "maximize" | "minimize"): tune.metric, else train.metric, else the task's."""
    generative = cfg.task.type in GENERATIVE_TASKS
    metric = cfg.tune.metric or (None if generative else cfg.train.metric)
    metric = metric or ("loss" if generative else SEQUENCE_METRICS[cfg.task.type.value][0])
    return metric, "minimize" if metric in LOWER_IS_BETTER else "maximize"


def _field(dotted: str) -> Any:
    section, name = dotted.split(".")
    return ProjectConfig.model_fields[section].annotation.model_fields[name]  # type: ignore[union-attr]


def _is_int(dotted: str) -> bool:
    annotation = _field(dotted).annotation
    return annotation is int or int in get_args(annotation)


def _encoded(dim: SearchDim) -> bool:
    """Optuna's categoricals hold numbers, strings, booleans and None; lists (target modules) go as JSON."""
    return any(isinstance(c, list | dict) for c in dim.choices or ())


def _methods(cfg: ProjectConfig) -> list[str]:
    dim = cfg.tune.space.get("train.method")
    return [str(m) for m in dim.choices] if dim is not None and dim.choices else [str(cfg.train.method)]


def _set(data: dict[str, Any], dotted: str, value: Any) -> None:
    section, name = dotted.split(".")
    data.setdefault(section, {})[name] = value


def suggest(trial: Trial, cfg: ProjectConfig) -> dict[str, Any]:
    """One trial's values, by dotted field: the method first, then the rest in the order the space lists
    them, skipping settings the trial's method does not read."""
    space = cfg.tune.space
    values: dict[str, Any] = {}
    method = str(cfg.train.method)
    if "train.method" in space:
        method = values["train.method"] = _suggest_one(trial, "train.method", space["train.method"])
    for name, dim in space.items():
        if name == "train.method" or (name in CONDITIONAL and method not in CONDITIONAL[name]):
            continue
        values[name] = _suggest_one(trial, name, dim)
    return values


def _suggest_one(trial: Trial, name: str, dim: SearchDim) -> Any:
    if dim.choices is not None:
        if _encoded(dim):
            return json.loads(trial.suggest_categorical(name, [json.dumps(c) for c in dim.choices]))
        return trial.suggest_categorical(name, dim.choices)
    assert dim.low is not None and dim.high is not None, "SearchDim checks ranges"
    if dim.integer or _is_int(name):
        return trial.suggest_int(name, int(dim.low), int(dim.high), step=int(dim.step or 1), log=dim.log)
    return trial.suggest_float(name, dim.low, dim.high, step=dim.step, log=dim.log)


def decode_params(cfg: ProjectConfig, params: dict[str, Any]) -> dict[str, Any]:
    """A stored trial's params (JSON strings for list choices) -> the values its config was built with."""
    space = cfg.tune.space
    return {k: json.loads(v) if k in space and _encoded(space[k]) else v for k, v in params.items()}


def build_config(cfg: ProjectConfig, values: dict[str, Any], source: str, metric: str | None = None,
                 run_dir: Path | None = None, dataset_dir: Path | None = None, keep_tune: bool = True) -> ProjectConfig:
    """The base config with `values` set. Settings the base gave that the trial's method does not read
    (peft.r of a LoRA base in a full trial) fall back to their defaults; `metric`: the checkpoint kept
    is the best by the metric the study optimises."""
    data = cfg.model_dump(mode="json")
    for name, value in values.items():
        _set(data, name, value)
    if metric is not None and cfg.task.type not in GENERATIVE_TASKS:
        data["train"]["metric"] = metric
    if run_dir is not None:
        data["train"]["output_dir"] = str(run_dir)
    if dataset_dir is not None:
        data["data"]["output_dir"] = str(dataset_dir)
    if not keep_tune:
        data.pop("tune", None)
    with contextlib.suppress(Exception):  # a config that does not validate is reported by parse_config below
        for name, _ in ProjectConfig.model_validate(data).inapplicable():
            if name not in values and name.count(".") == 1 and not name.startswith("tune."):
                _set(data, name, _field(name).default)
    return parse_config(data, source)


def check_space(cfg: ProjectConfig) -> None:
    """Refuse, before any training, a space no trial could use: every choice and both ends of every range
    must make a valid config (with a method that reads the setting), and each setting must apply somewhere."""
    spec, task = cfg.tune, cfg.task.type
    if not spec.space:
        raise ConfigError("tune.space is empty: nothing to search; give at least one field, e.g.\n"
                          "  tune:\n    space:\n      train.learning_rate: {low: 1.0e-5, high: 1.0e-3, log: true}")
    if task in GENERATIVE_TASKS and "latency_ms" in spec.objectives:
        raise ConfigError(f"tune.objectives: latency_ms is measured on classifiers and regressors; {task.value} "
                          "runs generate text (use model_mb or trainable_params)")
    if spec.objectives and spec.sampler == "cmaes":
        raise ConfigError("tune.sampler: cmaes optimises one objective; with tune.objectives use nsga2 (the default) or tpe")
    if cfg.tune.metric and cfg.train.metric and cfg.tune.metric != cfg.train.metric and task not in GENERATIVE_TASKS:
        raise ConfigError(f"tune.metric ({cfg.tune.metric}) and train.metric ({cfg.train.metric}) differ: each trial keeps "
                          "the checkpoint best by train.metric; set one of them")
    if cfg.train.nproc > 1:
        # Each trial trains in the worker's process: nproc was ignored by the trials but written into best.yaml,
        # which then trained with nproc times the effective batch of the trial it came from.
        raise ConfigError(f"train.nproc is {cfg.train.nproc}, but each trial trains in one process, the worker's; set "
                          "train.nproc: 1 and start several `tunesmith tune` workers on the study instead (one per GPU)")
    if "train.epochs" in spec.space and cfg.train.max_steps is not None:
        raise ConfigError(f"tune.space.train.epochs: train.max_steps ({cfg.train.max_steps}) overrides epochs, so every "
                          "trial would train the same steps; remove train.max_steps, or tune something else")
    if "model.max_length" in spec.space and task in GENERATIVE_TASKS:
        # A conversation is never cut: each length keeps other conversations and splits them anew, so trials would be
        # judged on different validation sets (two lengths shared one validation row of 8).
        raise ConfigError(f"tune.space.model.max_length: a {task.value} run keeps only the examples that fit, so each "
                          "length would give its trials other validation examples, and their losses could not be "
                          "compared; set model.max_length once and tune the rest")
    methods = _methods(cfg)
    for name, dim in spec.space.items():
        where = f"tune.space.{name}"
        readers = [m for m in methods if name not in CONDITIONAL or m in CONDITIONAL[name]]
        if not readers:
            raise ConfigError(f"{where}: no trial would use it: it applies to train.method {list(CONDITIONAL[name])}, "
                              f"and the trials train with {methods} (add one to tune.space.train.method choices)")
        if dim.choices is None and (dim.integer or _is_int(name)):
            bad = [v for v in (dim.low, dim.high, dim.step) if v is not None and v != int(v)]
            if bad:
                raise ConfigError(f"{where}: {name} takes whole numbers (got {bad[0]:g})")
        if name == "train.lr_scheduler":
            from typing import get_args

            from tunesmith.config import LrScheduler

            known = list(get_args(LrScheduler))
            unknown = [c for c in dim.choices or [] if c not in known]
            if dim.choices is None or unknown:
                raise ConfigError(f"{where}: give choices among the schedulers transformers knows: {known}"
                                  + (f" (unknown: {unknown})" if unknown else ""))
        candidates = dim.choices if dim.choices is not None else [dim.low, dim.high]
        for value in candidates:
            if dim.choices is None and (dim.integer or _is_int(name)):
                value = int(value)
            values = {name: value} if name == "train.method" else {"train.method": readers[0], name: value}
            try:
                build_config(cfg, values, "<tune.space>")
            except ConfigError as err:
                detail = "\n".join(line.replace("<tune.space>: ", "") for line in str(err).splitlines()[1:]) or str(err)
                raise ConfigError(f"{where}: {value!r} would make an invalid trial config:\n{detail}") from None
    _check_against_model(cfg)


def _check_against_model(cfg: ProjectConfig) -> None:
    """Values the base model cannot take, refused before any training too: a model.max_length beyond its context,
    peft.target_modules naming modules it lacks (they failed only in training, after the trial's data was prepared)."""
    space = cfg.tune.space
    if (lengths := space.get("model.max_length")) is not None:
        from tunesmith.models.catalog import context_length, load_tokenizer

        context = context_length(load_tokenizer(cfg.model.name))
        for value in lengths.choices if lengths.choices is not None else [lengths.high]:
            if context is not None and value is not None and value > context:
                raise ConfigError(f"tune.space.model.max_length: {value!r} exceeds the context of the model "
                                  f"{cfg.model.name} ({context} tokens); give lengths up to {context}")
    targets = space.get("peft.target_modules")
    if targets is None or not any(targets.choices or ()):
        return
    try:  # the model's modules without its weights: its skeleton on the meta device
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

        from tunesmith.models.catalog import resolve_model_dir

        auto = AutoModelForCausalLM if cfg.task.type in GENERATIVE_TASKS else AutoModelForSequenceClassification
        with torch.device("meta"):
            model = auto.from_config(AutoConfig.from_pretrained(resolve_model_dir(cfg.model.name)))
    except Exception:  # noqa: BLE001 - a model this cannot build (a run continued, a custom head): each trial checks
        return
    from tunesmith.training.methods import check_targets

    for value in targets.choices or ():
        if value:
            check_targets(model, value, f"tune.space.peft.target_modules: {value!r} would fail every trial drawing it")


# -- storage --------------------------------------------------------------------------------------


def _engine_kwargs(url: str) -> dict[str, Any]:
    if url.startswith("sqlite"):
        return {"connect_args": {"timeout": SQLITE_BUSY_S}}
    if url.startswith("postgresql"):
        return {"pool_pre_ping": True, "connect_args": {"connect_timeout": CONNECT_TIMEOUT_S}}
    return {"pool_pre_ping": True}


@contextlib.contextmanager
def _storage_lock(url: str) -> Iterator[None]:
    """Processes starting together would each create Optuna's tables; one at a time instead."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql":
        engine = create_engine(url, **_engine_kwargs(url))
        try:
            with engine.connect() as connection:
                connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": STORAGE_LOCK})
                try:
                    yield
                finally:
                    connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": STORAGE_LOCK})
                    connection.commit()
        finally:
            engine.dispose()
    elif parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        with file_lock(Path(parsed.database).expanduser().parent / ".optuna.lock"):
            yield
    else:
        yield


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage in the tunesmith store's database: the store is opened (migrated) first, so
    its tables and Optuna's live side by side; a URL that does not answer is a ConfigError naming it."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from tunesmith.store.db import Store, normalize_url, sqlite_file_url

    shown = shown_url(url)  # as the user wrote it
    url = normalize_url(url)
    try:
        make_url(url)
    except Exception as err:  # noqa: BLE001 - SQLAlchemy's URL errors vary by cause
        raise ConfigError(f"tune.storage {shown!r} is not a database URL (sqlite:///path.db or postgresql://user@host/db): "
                          f"{shown_url(str(err))}") from None
    # The URL the store opens (sqlite:///~/x.db expanded, its folder made), for the probe and Optuna too: given the
    # unexpanded one, they looked for a folder named "~" and the storage "did not answer".
    url = sqlite_file_url(url, "tune.storage")
    probe = None
    try:
        probe = create_engine(url, **_engine_kwargs(url))
        with probe.connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as err:  # noqa: BLE001 - refused, unknown host, bad password, unknown database kind...
        reason = str(getattr(err, "orig", None) or err).strip().splitlines()[0]
        raise ConfigError(f"tune.storage {shown} does not answer: {reason}") from None
    finally:
        if probe is not None:
            probe.dispose()
    Store(url).close()  # migrates tunesmith's own tables (and frees Optuna's `alembic_version` name)
    with warnings.catch_warnings(), _storage_lock(url):
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats are "experimental"
        retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)  # Optuna >= 4.9
        callback = {"heartbeat_stale_trial_callback": retry(max_retry=MAX_RETRY)} if retry else \
            {"failed_trial_callback": optuna.storages.RetryFailedTrialCallback(max_retry=MAX_RETRY)}
        return optuna.storages.RDBStorage(url, engine_kwargs=_engine_kwargs(url), heartbeat_interval=HEARTBEAT_S,
                                          grace_period=GRACE_S, **callback)


# -- samplers and pruners -------------------------------------------------------------------------


def trial_seed(seed: int, number: int) -> int:
    """A seed of its own per trial number: (42, 1) and (43, 0) share no stream, unlike 42 + 1 and 43 + 0."""
    import numpy as np

    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


def make_sampler(spec: TuneSpec, seed: int) -> optuna.samplers.BaseSampler:
    kind = spec.sampler or ("nsga2" if spec.objectives else "tpe")
    if kind == "tpe":  # constant_liar: running trials count as bad guesses, so parallel workers spread out
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed)
    if kind == "qmc":
        return optuna.samplers.QMCSampler(seed=seed)
    return optuna.samplers.NSGAIISampler(seed=seed)


def make_pruner(spec: TuneSpec, echo: Callable[[str], None]) -> optuna.pruners.BasePruner:
    if spec.objectives and spec.pruner != "none":
        echo(f"pruning is off: Optuna cannot prune a multi-objective study (tune.objectives {list(spec.objectives)}), "
             "so every trial trains to its end")
        return optuna.pruners.NopPruner()
    # Steps are evaluation numbers from 1; the first one a pruner may judge is grace + 1.
    first = spec.grace_evaluations + 1
    if spec.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=spec.startup_trials, n_warmup_steps=first)
    if spec.pruner == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=first, reduction_factor=spec.reduction_factor)
    if spec.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=first, reduction_factor=spec.reduction_factor)
    return optuna.pruners.NopPruner()


def _reporter(trial: Trial, metric: str, report: bool, prune_on: str = "metric") -> Any:
    """A TrainerCallback that reports each validation result to the trial (step = evaluation number, so
    trials with other batch sizes compare at the same share of training) and stops a trailing one.

    What is reported is `tune.prune_on`: the validation loss (negated when the study maximises, so the
    pruner keeps the study's direction) or the objective's own metric."""
    signal = "loss" if prune_on == "loss" else metric
    maximize = trial.study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
    sign = -1.0 if signal == "loss" and maximize else 1.0
    if report:  # the report and the log say what the curves are
        trial.set_user_attr("pruning_signal", f"-{signal}" if sign < 0 else signal)
    from transformers import TrainerCallback

    class Report(TrainerCallback):
        def __init__(self) -> None:
            self.evaluations = 0
            self.step = 0
            self.trained = False

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            # An evaluation after this (train.keep: last measuring the final weights when the last step was no
            # evaluation step) is of a trial that trained to its end: not one of its curve's, and never a reason to
            # prune it (a finished run was recorded PRUNED and its folder removed).
            self.trained = True

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.step = state.global_step

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None,
                   **kwargs: Any) -> None:
            # Logged before each evaluation's metrics and on_evaluate: NaN weights would otherwise train on to the
            # end and leave a run that cannot be judged (or a regression's metrics raise on NaN predictions).
            for key, name in DIVERGED_LOGS.items():
                value = (logs or {}).get(key)
                if isinstance(value, int | float) and not math.isfinite(value):
                    where = f"evaluation {self.evaluations + 1} (step {state.global_step})" if key == "eval_loss" \
                        else f"step {state.global_step}"
                    raise _Diverged(f"{name} is {value} at {where}: the training diverged")

        def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None,
                        **kwargs: Any) -> None:
            value = (metrics or {}).get(f"eval_{signal}")
            self.step = state.global_step
            if value is None or self.trained:
                return
            self.evaluations += 1
            if not report:  # multi-objective: Optuna keeps no intermediate values
                return
            trial.report(sign * float(value), self.evaluations)
            # The last step's evaluation (the Trainer evaluates there even off the eval_steps grid) comes once the
            # trial has trained all its steps: stopping it saves nothing, and it is a finished run, COMPLETE with its
            # objective, not a PRUNED one whose folder is removed. Its value still counts for the trials after it.
            if state.global_step < state.max_steps and trial.should_prune():
                raise optuna.TrialPruned(f"validation {signal} {value:.4g} at evaluation {self.evaluations} "
                                         f"(step {state.global_step}) trails the other trials")

    return Report()


# -- a trial --------------------------------------------------------------------------------------


def study_folder(cfg: ProjectConfig) -> Path:
    """<runs>/<study>-tune: trial runs, best.yaml and the report, beside the config's own run folder."""
    return cfg.run_dir.parent / f"{cfg.tune.study or cfg.name}-tune"


def _model_mb(run_dir: Path) -> float:
    """What the run adds on disk: the full weights, or only the adapter of a LoRA run."""
    return sum(p.stat().st_size for p in (run_dir / MODEL_DIR).rglob("*") if p.is_file()) / 1e6


def _latency_ms(run_dir: Path, texts: list[str]) -> float:
    """Milliseconds per text predicted one at a time (a served request): the fastest of a few passes, since
    other load on the machine only ever slows a pass down (2 busy cores turned 10 ms into 160 ms)."""
    from tunesmith.inference.predictor import Predictor

    predictor = Predictor(run_dir)
    predictor.predict(texts[:2])  # warm-up: first-call allocations are not latency
    passes = []
    for _ in range(LATENCY_ROUNDS):
        start = time.perf_counter()
        for text in texts:
            predictor.predict([text])
        passes.append((time.perf_counter() - start) * 1000 / len(texts))
    return min(passes)


class Objective:
    """One trial: values -> config -> training (reported, maybe pruned) -> its validation metric (and extras)."""

    def __init__(self, cfg: ProjectConfig, folder: Path, metric: str, echo: Callable[[str], None]) -> None:
        self.cfg, self.folder, self.metric, self.echo = cfg, folder, metric, echo
        self.spec = cfg.tune
        self.host = socket.gethostname()
        self.limit = cfg.tune.trials  # trials in the study, across workers (run_trials sets it)
        self.current: int | None = None  # the storage's id of the trial this worker runs (or ran last)
        folder.mkdir(parents=True, exist_ok=True)

    def __call__(self, trial: Trial) -> float | tuple[float, ...]:
        spec = self.spec
        self.current = trial._trial_id
        trial.set_user_attr("worker", {**_this_worker(), "trial": trial.number})  # a re-run here can tell it died
        if (spec.sampler or ("nsga2" if spec.objectives else "tpe")) in RESEEDED:
            # Suggestions depend on the seed, the trial's place in the study and the trials before it, not on
            # which worker runs it: two workers started together do not try the same values. The place, not the
            # number: an interrupted trial (run again as a copy) does not shift the values of the trials after it.
            trial.study.sampler = make_sampler(spec, trial_seed(spec.seed, _place(trial)))
        self._stand_down_if_surplus(trial)
        values = suggest(trial, self.cfg)
        run_dir = (self.folder / f"trial-{trial.number}").resolve()
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("host", self.host)
        dataset_dir = None
        if "model.max_length" in values:  # another token budget: a dataset of its own
            dataset_dir = self.folder / "datasets" / f"max_length-{values['model.max_length']}"
        tcfg = build_config(self.cfg, values, f"trial {trial.number} of study {trial.study.study_name}",
                            self.metric, run_dir, dataset_dir)
        self.echo(f"trial {trial.number} starts: {_params_text(values)}")
        reporter = _reporter(trial, self.metric, report=not spec.objectives, prune_on=spec.prune_on)
        from tunesmith.training import train

        start = time.monotonic()
        finished = False
        try:
            version = self.dataset(tcfg)  # in the try: a model.max_length the model refuses fails here, with its reason
            train(tcfg, dataset_dir=version.path, overwrite=True, callbacks=[reporter])
            finished = True
        except optuna.TrialPruned:
            raise
        except KeyboardInterrupt:  # run_trials queues its values again
            trial.set_user_attr("fail_reason", "interrupted")
            trial.set_user_attr("interrupted", True)
            raise
        except Exception as err:  # Optuna records FAIL but not why: the report and the log say it
            diverged = isinstance(err, _Diverged)
            reason = str(err) if diverged else f"{type(err).__name__}: {err}"
            trial.set_user_attr("fail_reason", reason[:FAIL_REASON_CHARS])
            trial.set_user_attr("diverged", diverged)
            if _refuses_values(err, values):
                # Stopping the study here stopped it for good: started again, the trial's place drew the same values.
                trial.set_user_attr("refused_values", True)
                raise _ValuesFailed(reason) from err
            if not _out_of_memory(err):
                raise  # anything else may fail every trial alike: the worker stops, as Optuna's own would
            trial.set_user_attr("out_of_memory", True)
            raise _ValuesFailed(reason) from err
        finally:
            trial.set_user_attr("steps", reporter.step)
            trial.set_user_attr("evaluations", reporter.evaluations)
            trial.set_user_attr("train_s", round(time.monotonic() - start, 1))
            if not finished:  # pruned, failed or interrupted: no half-written run folder stays behind
                shutil.rmtree(run_dir, ignore_errors=True)
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)  # the kept model is in model/
        manifest = Run(run_dir).manifest
        if self.metric not in manifest.metrics:
            raise ConfigError(f"trial {trial.number}: the run reported no validation {self.metric} "
                              f"(it has {sorted(manifest.metrics)})")
        value = float(manifest.metrics[self.metric])
        if not spec.objectives:
            return value
        extras = {"trainable_params": float(manifest.parameters["trainable"]), "model_mb": round(_model_mb(run_dir), 3)}
        if "latency_ms" in spec.objectives:
            texts = version.table("validation").column("text").to_pylist()[:LATENCY_TEXTS]
            extras["latency_ms"] = round(_latency_ms(run_dir, texts), 3)
        trial.set_user_attr("objectives", extras)
        return (value, *(extras[o] for o in spec.objectives))

    def dataset(self, tcfg: ProjectConfig) -> DatasetVersion:
        """The trial's dataset, prepared once (workers on this machine wait for the one preparing it)."""
        from tunesmith.training.dataset import ensure_dataset

        folder = Path(tcfg.dataset_dir)
        with file_lock(folder.parent / f".{folder.name}.lock"):
            return ensure_dataset(tcfg)

    def _stand_down_if_surplus(self, trial: Trial) -> None:
        """Finished trials plus the running or queued ones numbered before this one reach tune.trials:
        another worker started the last one a moment earlier."""
        others = [t for t in trial.study.get_trials(deepcopy=False) if _counted(t)]
        ahead = [t for t in others if t.number != trial.number
                 and (_done(t) or t.number < trial.number)]
        if len(ahead) >= self.limit:
            trial.set_user_attr("surplus", True)
            raise _Surplus(f"trial {trial.number}: the study already has its {self.limit} trials")


def _refuses_values(err: BaseException, values: dict[str, Any]) -> bool:
    """A configuration or data error naming a setting the trial drew (peft.target_modules the model lacks, a
    model.max_length beyond its context): those values fail; an error naming none would fail every trial alike."""
    return isinstance(err, ConfigError | DataError) and any(name in str(err) for name in values)


def _values_failed(trial: FrozenTrial) -> bool:
    """Did the trial fail through its own values (diverged, out of memory, refused by the model or its data)?"""
    attrs = trial.user_attrs
    return trial.state == TrialState.FAIL and bool(attrs.get("diverged") or attrs.get("out_of_memory")
                                                   or attrs.get("refused_values"))


def _counted(trial: FrozenTrial) -> bool:
    """Does the trial take one of the study's tune.trials? Finished, running or queued ones do, and so does one
    that failed through its values (diverged, out of memory, refused: replacing it could go on forever). An interrupted
    trial, a dead worker's (a copy is queued) and a surplus one give their place back."""
    return trial.state in COUNTED or _values_failed(trial)


def _done(trial: FrozenTrial) -> bool:
    return trial.state in FINISHED or _values_failed(trial)


def _place(trial: Trial) -> int:
    """The trial's place among the study's trials that count (its number, unless trials before it were
    interrupted, killed or surplus and gave their place back)."""
    return sum(_counted(t) for t in trial.study.get_trials(deepcopy=False) if t.number < trial.number)


def _process_start(pid: int) -> str | None:
    """When process `pid` started (Linux: clock ticks since boot); None when no such process runs (a zombie,
    killed but not yet reaped, is dead too); "" where /proc does not say."""
    if not Path("/proc/self/stat").is_file():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except OSError:  # it exists, owned by someone else
            return ""
        return ""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8").rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def _this_worker() -> dict[str, Any]:
    """Where a trial runs: the machine, its PID namespace (containers sharing a host name do not share
    processes) and the process, with its start time (a PID the system hands out again is another process)."""
    pid = os.getpid()
    namespace = ""
    with contextlib.suppress(OSError):
        namespace = os.readlink("/proc/self/ns/pid")
    return {"host": socket.gethostname(), "pid_namespace": namespace, "pid": pid, "started": _process_start(pid) or ""}


def _dead_here(trial: FrozenTrial, here: dict[str, Any]) -> bool:
    """A RUNNING trial whose worker was a process on this machine that no longer runs (killed)."""
    worker = trial.user_attrs.get("worker")
    # A queued copy of a trial carries the original's user attributes until its own worker sets them.
    if not isinstance(worker, dict) or worker.get("trial") != trial.number or trial.state != TrialState.RUNNING:
        return False
    if (worker.get("host"), worker.get("pid_namespace")) != (here["host"], here["pid_namespace"]):
        return False  # another machine's: its heartbeat tells
    started = _process_start(int(worker.get("pid", 0)))
    return started is None or (bool(started) and bool(worker.get("started")) and started != worker["started"])


def _sweep_dead_folders(study: optuna.Study) -> None:
    """Remove the half-written run folder of each trial failed for its worker's silence (a worker on another machine
    sharing runs/ died): Optuna fails the trial and queues a copy, but the folder (checkpoints and all) stayed for good.
    Trials failed with a reason (diverged, out of memory) cleaned up after themselves."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        attrs = trial.user_attrs
        if "fail_reason" not in attrs and not attrs.get("surplus") and (run_dir := attrs.get("run_dir")) \
                and Path(run_dir).exists():
            shutil.rmtree(run_dir, ignore_errors=True)


def _fail_dead_trials_here(study: optuna.Study) -> None:
    """Fail the trials of killed workers on this machine and queue a copy of each, as the heartbeat does after
    a minute of silence (a study started again at once would otherwise count them as running and stop), and
    remove their half-written run folders."""
    storage = study._storage
    retry = getattr(storage, "get_heartbeat_stale_trial_callback", None) or getattr(storage, "get_failed_trial_callback", None)
    here = _this_worker()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not _dead_here(trial, here):
            continue
        try:
            failed = storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:  # another worker here got there first
            continue
        if run_dir := trial.user_attrs.get("run_dir"):
            shutil.rmtree(run_dir, ignore_errors=True)
        if failed and retry is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna's deprecation and experimental warnings
                callback = retry()
                if callback is not None:
                    callback(study, copy.deepcopy(storage.get_trial(trial._trial_id)))


def _queue_interrupted(study: optuna.Study, trial_id: int | None) -> None:
    """The trial interrupted (Ctrl-C) in this worker: its values queued again, so the study resumes with it."""
    if trial_id is None:
        return
    with contextlib.suppress(Exception):  # the interruption is what the user sees, not a failure to queue
        trial = study._storage.get_trial(trial_id)
        attrs = trial.user_attrs  # interrupted preparing its data or training (marked), or before (unmarked)
        if trial.state != TrialState.FAIL or attrs.get("surplus") or not (attrs.get("interrupted") or "fail_reason" not in attrs):
            return
        attrs = {k: v for k, v in trial.user_attrs.items() if k not in ("interrupted", "fail_reason", "worker")}
        study.add_trial(optuna.trial.create_trial(
            state=TrialState.WAITING, params=trial.params, distributions=trial.distributions, user_attrs=attrs,
            system_attrs={**trial.system_attrs, "failed_trial": trial.system_attrs.get("failed_trial", trial.number)}))


def _params_text(values: dict[str, Any]) -> str:
    def short(v: Any) -> str:
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    return " ".join(f"{k}={short(v)}" for k, v in values.items())


def _trial_line(trial: FrozenTrial, names: list[str]) -> str:
    attrs = trial.user_attrs
    steps = f"{attrs.get('steps', 0)} steps, {attrs.get('train_s', 0):.0f} s"
    if trial.state == TrialState.COMPLETE:
        shown = ", ".join(f"{n} {_num(v)}" for n, v in zip(names, trial.values or [], strict=False))
        return f"trial {trial.number} complete: {shown} ({steps})"
    if trial.state == TrialState.PRUNED:
        last = trial.intermediate_values.get(max(trial.intermediate_values, default=0))
        signal = attrs.get("pruning_signal", names[0])
        if signal.startswith("-") and last is not None:  # reported negated so that higher is better
            signal, last = signal[1:], -last
        return (f"trial {trial.number} pruned at evaluation {attrs.get('evaluations', 0)}: validation {signal} "
                f"{_num(last)} trailed the others ({steps})")
    if trial.state == TrialState.FAIL and "fail_reason" in attrs:
        return f"trial {trial.number} failed: {attrs['fail_reason']} ({steps})"
    return f"trial {trial.number} {trial.state.name.lower()}"


def _num(v: float | None) -> str:
    return "—" if v is None else f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"


# -- the study ------------------------------------------------------------------------------------


def objective_names(cfg: ProjectConfig) -> list[str]:
    return [metric_of(cfg)[0], *cfg.tune.objectives]


def load_study(cfg: ProjectConfig, storage: optuna.storages.BaseStorage | None = None,
               echo: Callable[[str], None] = print) -> optuna.Study:
    """Create the study, or join the one of that name (refused when it optimises something else)."""
    from tunesmith.store.db import default_url

    spec = cfg.tune
    metric, direction = metric_of(cfg)
    names = objective_names(cfg)
    directions = [direction, *["minimize"] * len(spec.objectives)]
    storage = storage or open_storage(spec.storage or default_url())
    name = spec.study or cfg.name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study = optuna.create_study(study_name=name, storage=storage, directions=directions, load_if_exists=True,
                                    sampler=make_sampler(spec, spec.seed), pruner=make_pruner(spec, echo))
    stored = study.user_attrs.get("objectives")
    if (stored is not None and stored != names) or [d.name.lower() for d in study.directions] != directions:
        raise ConfigError(f"study '{name}' in {shown_url(getattr(storage, 'url', ''))} optimises "
                          f"{stored or [d.name.lower() for d in study.directions]}, not {names}; "
                          "pick another tune.study (--study) or the same metric and objectives")
    # The space as stored (through JSON), so that one read back compares equal.
    space = json.loads(json.dumps({k: v.model_dump(exclude_defaults=True) for k, v in spec.space.items()}))
    searched = study.user_attrs.get("space")
    if searched is not None and searched != space:
        # Its trials, its best and best.yaml belong to the other space; a worker with this one would mix the two.
        raise ConfigError(f"study '{name}' in {shown_url(getattr(storage, 'url', ''))} searches {searched}, not "
                          f"{space}; pick another tune.study (--study) for the new tune.space, or the study's own")
    # The curve trials report (one objective): the pruner compares a new trial's with the old ones', so a study resumed
    # with the other tune.prune_on cut every new trial (losses under F1s) or none.
    curve = None if spec.objectives else spec.prune_on
    reported = study.user_attrs.get("prune_on")
    if reported is not None and curve is not None and reported != curve:
        raise ConfigError(f"study '{name}' in {shown_url(getattr(storage, 'url', ''))} has its trials report the validation "
                          f"{'loss' if reported == 'loss' else metric}, so their curves cannot be compared with "
                          f"tune.prune_on: {curve}; set tune.prune_on: {reported} (--set tune.prune_on={reported}) "
                          "to go on with it, or pick another tune.study (--study)")
    base = _base_config(cfg)
    trained = study.user_attrs.get("base_config")
    if trained is not None and study.user_attrs.get("base_hash") != _hash(base):
        # Its trials trained under the other settings: ranked beside new ones, and best.yaml, they would mix the two.
        changed = "\n  ".join(config_diff(json.loads(trained), base))
        raise ConfigError(f"study '{name}' in {shown_url(getattr(storage, 'url', ''))} trained its trials under another "
                          f"config; changed since:\n  {changed}\npick another tune.study (--study) for the new settings, "
                          "or put them back to go on with it")
    if trained is None:
        study.set_user_attr("base_config", json.dumps(base, sort_keys=True, separators=(",", ":")))
        study.set_user_attr("base_hash", _hash(base))
    if stored is None:
        study.set_user_attr("objectives", names)
    if searched is None:
        study.set_user_attr("space", space)
    if reported is None and curve is not None:
        study.set_user_attr("prune_on", curve)
    return study


def _base_config(cfg: ProjectConfig) -> dict[str, Any]:
    """What the trials train under: the config less the settings a worker may change on the same study. Absolute paths
    count by their last part: a worker on another machine (or started from another folder) has the project elsewhere."""
    data = json.loads(json.dumps(cfg.model_dump(mode="json")))
    for key in ("trials", "timeout_s", "storage"):
        data.get("tune", {}).pop(key, None)
    return _path_names(data)


def _path_names(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _path_names(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_path_names(v) for v in value]
    return Path(value).name if isinstance(value, str) and os.path.isabs(value) else value


def _hash(data: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def claim_folder(cfg: ProjectConfig, study: optuna.Study) -> None:
    """Mark the study folder as this study's: a study of that name in another storage writes the same
    trial-N run folders, over this one's runs."""
    folder = study_folder(cfg)
    marker = folder / ".study.json"
    storage = getattr(study._storage, "_backend", study._storage)  # RDB storages come wrapped in a cache
    mine = {"storage": shown_url(getattr(storage, "url", "") or ""), "study_id": study._study_id}
    if marker.is_file():
        other = json.loads(marker.read_text(encoding="utf-8"))
        if other != mine:
            raise ConfigError(f"{folder} holds the trial runs of study '{study.study_name}' in {other.get('storage')} "
                              f"(id {other.get('study_id')}), not of this one in {mine['storage']} (id {mine['study_id']}): "
                              "its trials would overwrite them; pick another tune.study (--study) or another "
                              "train.output_dir folder")
        return
    folder.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(mine), encoding="utf-8")


def best_trial(study: optuna.Study) -> FrozenTrial | None:
    """The trial best by the validation metric (multi-objective: the best of the Pareto front by it)."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if not done:
        return None
    sign = 1 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else -1
    pool = study.best_trials if len(study.directions) > 1 else done
    return max(pool, key=lambda t: (sign * t.values[0], -t.number))


def write_best(cfg: ProjectConfig, trial: FrozenTrial, path: Path, metric: str) -> Path:
    """A full config for `tunesmith train`: the base config with the trial's values (tune: dropped)."""
    values = decode_params(cfg, trial.params)
    best = build_config(cfg, values, f"best trial {trial.number}", metric_of(cfg)[0] if cfg.tune.metric else None,
                        keep_tune=False)
    data = best.model_dump(mode="json", exclude={"tune"})
    trained = Path(trial.user_attrs.get("run_dir", "")) / RUN_CONFIG
    if trial.user_attrs.get("run_dir") and trained.is_file():
        # The settings the trial trained under, not the config as it is now; only its folders are the user's.
        own = json.loads(trained.read_text(encoding="utf-8"))
        own.pop("tune", None)
        own["train"]["output_dir"], own["data"]["output_dir"] = data["train"]["output_dir"], data["data"]["output_dir"]
        own["train"]["metric"] = data["train"]["metric"]
        data = parse_config(own, f"trial {trial.number}'s {trained}").model_dump(mode="json", exclude={"tune"})
    header = (f"# Best trial {trial.number} of study '{cfg.tune.study or cfg.name}': validation {metric} "
              f"{trial.values[0]:.4g}\n# {_params_text(values)}\n# Run: tunesmith train {path}\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


class _NoFailedTrialWarning(logging.Filter):
    """Optuna's "Trial N failed ..." warnings: a failed trial (diverged, refused) or Ctrl-C printed its whole Python
    traceback (exc_info), some 90 lines; tunesmith prints its own line for the trial."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not re.match(r"Trial \d+ failed", record.getMessage())


_NO_FAILED_TRIAL_WARNING = _NoFailedTrialWarning()


def run_study(cfg: ProjectConfig, *, echo: Callable[[str], None] = print, evaluate_test: bool = True) -> dict[str, Any]:
    """Run (or join, or resume) the config's study until it has tune.trials trials or tune.timeout_s passed;
    then best.yaml, the best trial's test evaluation and the report. Returns a summary."""
    spec = cfg.tune
    check_space(cfg)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own line per trial instead of Optuna's
    logging.getLogger("optuna.study._optimize").addFilter(_NO_FAILED_TRIAL_WARNING)  # added once: a filter is kept once
    study = load_study(cfg, echo=echo)
    claim_folder(cfg, study)
    objective = Objective(cfg, study_folder(cfg), metric_of(cfg)[0], echo)
    already = sum(_done(t) for t in study.get_trials(deepcopy=False))
    if already:
        echo(f"study '{study.study_name}' has {already} finished trial{'s' * (already != 1)}; "
             f"{'nothing to do' if already >= spec.trials else f'going on to {spec.trials}'}")
    run_trials(study, objective, spec.trials, time.monotonic() + spec.timeout_s if spec.timeout_s else None)
    return finish_study(cfg, study, echo=echo, evaluate_test=evaluate_test)


def run_trials(study: optuna.Study, objective: Objective, trials: int, deadline: float | None = None) -> None:
    """Start trials until the study holds `trials` (finished, running or queued, by any worker) or the
    deadline (time.monotonic()) passed."""
    names = objective_names(objective.cfg)
    objective.limit = trials

    def report(study: optuna.Study, trial: FrozenTrial) -> None:
        if not trial.user_attrs.get("surplus"):
            objective.echo(_trial_line(trial, names))

    while True:
        _fail_dead_trials_here(study)  # a killed worker's trial on this machine: failed, and a copy queued, now
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # a dead worker's trial: failed, and a copy queued
        _sweep_dead_folders(study)
        now = study.get_trials(deepcopy=False)
        # A queued trial (a dead or interrupted worker's, run again) is run even when it is the study's last:
        # counted, it would otherwise keep every worker from starting anything, itself included.
        if sum(_counted(t) for t in now) >= trials and not any(t.state == TrialState.WAITING for t in now):
            return
        if deadline is not None and time.monotonic() >= deadline:
            objective.echo("tune.timeout_s passed: this worker starts no further trials")
            return
        try:
            study.optimize(objective, n_trials=1, callbacks=[report], catch=(_Surplus, _ValuesFailed))
        except KeyboardInterrupt:
            _queue_interrupted(study, objective.current)
            raise


def finish_study(cfg: ProjectConfig, study: optuna.Study, *, echo: Callable[[str], None] = print,
                 evaluate_test: bool = True) -> dict[str, Any]:
    """best.yaml (and pareto/*.yaml), the best trial on the test split, the report: the study as it stands
    (other workers may still be running trials; the last to finish writes the final word)."""
    from tunesmith.tune.report import write_report

    metric = metric_of(cfg)[0]
    names = objective_names(cfg)
    folder = study_folder(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"study": study.study_name, "folder": str(folder), "metric": metric, "objectives": names}
    with file_lock(folder / ".finish.lock"):
        # Read under the lock: a worker that waited for it (another one evaluating on test) had written its stale
        # best over the newer one the other had just written.
        best = best_trial(study)
        if best is not None:
            summary["best"] = {"number": best.number, "values": dict(zip(names, best.values, strict=False)),
                               "params": decode_params(cfg, best.params), "run": best.user_attrs.get("run_dir")}
            summary["best_config"] = str(write_best(cfg, best, folder / "best.yaml", metric))
            if len(names) > 1:
                pareto = folder / "pareto"
                shutil.rmtree(pareto, ignore_errors=True)
                for t in study.best_trials:
                    write_best(cfg, t, pareto / f"trial-{t.number}.yaml", metric)
                summary["pareto"] = [{"number": t.number, "values": dict(zip(names, t.values, strict=False))}
                                     for t in sorted(study.best_trials, key=lambda t: t.number)]
            summary["test"] = _test_evaluation(best, evaluate_test, echo)
        summary["report"] = str(write_report(study, folder, names, best.number if best else None, summary.get("test")))
    trials = [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("surplus")]
    counts = {state.name.lower(): sum(t.state == state for t in trials) for state in TrialState}
    summary["trials"] = {k: v for k, v in counts.items() if v}
    return summary


def _test_evaluation(best: FrozenTrial, evaluate: bool, echo: Callable[[str], None]) -> dict[str, Any] | None:
    """The test split, once, on the best trial's run: on the machine that trained it, unless already done."""
    run_dir = Path(best.user_attrs.get("run_dir", ""))
    report = run_dir / "eval" / "test" / "report.json"
    if report.is_file():
        return {"run": str(run_dir), "metrics": json.loads(report.read_text(encoding="utf-8")).get("metrics", {})}
    if not evaluate:
        return None
    if best.user_attrs.get("host") == socket.gethostname() and not (run_dir / "run.json").is_file():
        echo(f"the best trial ({best.number})'s run folder {run_dir} is gone: retrain it with "
             f"`tunesmith train {run_dir.parent / 'best.yaml'}`")
        return None
    if best.user_attrs.get("host") != socket.gethostname():
        echo(f"the best trial ({best.number}) ran on {best.user_attrs.get('host')}: evaluate it there with "
             f"`tunesmith evaluate {run_dir} --split test`")
        return None
    from tunesmith.evaluation.run import evaluate_run

    result = evaluate_run(run_dir, split="test")
    return {"run": str(run_dir), "metrics": result["metrics"]}
