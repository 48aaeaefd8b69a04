"""The `tunesmith` command: one function per verb. Imports anything; nothing imports it.

Exit codes: 0 success, 1 internal error, 2 bad configuration or usage, 3 bad input data.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tunesmith import __version__
from tunesmith.errors import TunesmithError

EPILOG = "Exit codes: 0 success, 1 internal error, 2 bad configuration or usage, 3 bad input data."
app = typer.Typer(help="Self-hosted fine-tuning workbench: data -> train -> evaluate -> serve.",
                  epilog=EPILOG, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None)
data_app = typer.Typer(help="Prepare, inspect and report on datasets.", epilog=EPILOG, no_args_is_help=True)
config_app = typer.Typer(help="Inspect configurations.", epilog=EPILOG, no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(config_app, name="config")

# Markup off by default: names, paths, labels and reasons are the user's text ("reviews [draft]" lost its brackets,
# "[/b]" crashed the command); the few styled lines ask for it.
# emoji off: rich turned a `:joy:` in a text, label or description into 😂, and JSON output no longer matched the data
out = Console(markup=False, emoji=False, soft_wrap=True)  # soft wrap: piped JSON, Markdown and paths come out as written, not cut at 80 columns
err = Console(stderr=True, markup=False, emoji=False, soft_wrap=True)
_state = {"debug": False, "abort_hint": ""}  # abort_hint: what Ctrl-C's "aborted" adds

Overrides = Annotated[list[str] | None, typer.Option(
    "--set", "-s", metavar="KEY=VALUE", help="Override a config value by dotted path, e.g. --set data.split.seed=7 (repeatable).")]


def _home_expanded(value: Path | None) -> Path | None:
    """An --out path with its `~` expanded: a quoted `~/x` (or `--out=~/x`, which shells leave) made a folder named ~."""
    return None if value is None else Path(value).expanduser()


def _print_version(value: bool) -> None:
    # A parsing callback: the group's own callback only runs once a command is given, and
    # `tunesmith --version` gives none ("Missing command").
    if value:
        out.print(f"tunesmith {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show the full traceback on errors.")] = False,
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.", is_eager=True,
                                          callback=_print_version, expose_value=False)] = False,
) -> None:
    _state["debug"] = debug
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-file "Loading weights" bars; training keeps its own progress bar


# -- config ---------------------------------------------------------------------------------------


@config_app.command("show", epilog=EPILOG)
def config_show(
    config: Annotated[Path, typer.Argument(metavar="CONFIG", help="Project config YAML.")],
    overrides: Overrides = None,
) -> None:
    """Print the fully resolved config: your values plus every default, each with its reason as a comment."""
    from tunesmith.config import annotated_yaml, load_config

    cfg = load_config(config, overrides or [])
    out.print(annotated_yaml(cfg), end="", markup=False, highlight=False, soft_wrap=True)


# -- data -----------------------------------------------------------------------------------------


class _RichProgress:
    """Adapter from the pipeline's (task, done, total) callback to a rich progress display."""

    def __init__(self, progress: Any) -> None:
        self.progress = progress
        self.tasks: dict[str, Any] = {}

    def __call__(self, task: str, done: int, total: int | None) -> None:
        if task not in self.tasks:
            self.tasks[task] = self.progress.add_task(task, total=total)
        self.progress.update(self.tasks[task], completed=done, total=total)


@data_app.command("prepare", epilog=EPILOG)
def data_prepare(
    config: Annotated[Path, typer.Argument(metavar="CONFIG", help="Project config YAML (see examples/).")],
    overrides: Overrides = None,
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", callback=_home_expanded, help="Dataset folder to write (default: data.output_dir, else datasets/<name>).")] = None,
    strict: Annotated[bool, typer.Option("--strict", help="Fail on any rejected row instead of quarantining it.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or summary.")] = False,
) -> None:
    """Load, clean, deduplicate, split and report: writes a dataset version folder."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from tunesmith.config import load_config
    from tunesmith.data.prepare import prepare

    cfg = load_config(config, [*(overrides or []), *(["data.strict=true"] if strict else [])])
    if quiet:
        dataset = prepare(cfg, out_dir)
    else:
        columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=err, transient=True) as progress:
            dataset = prepare(cfg, out_dir, progress=_RichProgress(progress))
        _print_summary(dataset.path)


def _print_summary(path: Path) -> None:
    from tunesmith.artifacts import DatasetVersion

    report = DatasetVersion(path).report()
    c = report["counts"]
    table = Table(title=f"{report['name']}: {report['task']}", show_lines=False)
    for col in ("step", "in", "out", "removed", "why"):
        table.add_column(col, overflow="fold")
    for s in report["steps"]:
        why = "; ".join(f"{k}: {v}" for k, v in s["reasons"].items()) or "-"
        table.add_row(s["step"], str(s["rows_in"]), str(s["rows_out"]), str(s["removed"]), why)
    out.print(table)
    out.print(f"[bold]train[/] {c['train']}  [bold]validation[/] {c['validation']}  [bold]test[/] {c['test']}  "
              f"[bold]quarantine[/] {c['quarantine']}  (of {c['input']} input rows)", markup=True)
    for warning in report["warnings"]:
        out.print(f"[yellow]warning:[/] {escape(warning)}", markup=True)
    out.print(f"fingerprint {report['fingerprint'][:16]}…  report: {path / 'report.html'}")


@app.command("collect", epilog=EPILOG)
def collect_cmd(
    config: Annotated[Path, typer.Argument(metavar="CONFIG", help="Project config YAML with web, rest, hub or synthetic sources.")],
    overrides: Overrides = None,
    source: Annotated[list[int] | None, typer.Option("--source", min=1, help="Only this source (1-based position in data.sources; repeatable).")] = None,
    refresh: Annotated[bool, typer.Option("--refresh", help="Collect again even when a finished collection is there (the HTTP cache still answers what it holds).")] = False,
) -> None:
    """Fetch web pages, REST APIs and Hub datasets, or generate synthetic rows, into JSONL files (data.collect_dir)
    that `data prepare` reads; each row carries its provenance, each failed item is listed with why."""
    from tunesmith.collect.run import collect_sources
    from tunesmith.config import load_config

    cfg = load_config(config, overrides or [])
    results = collect_sources(cfg, only=source, refresh=refresh, say=lambda line: err.print(line, highlight=False, markup=False))
    table = Table(title=f"{cfg.name}: collected")
    for col in ("#", "source", "rows", "failed", "file", "notes"):
        table.add_column(col, overflow="fold")
    for r in results:
        table.add_row(str(r.index + 1), r.describe, str(r.rows), str(r.failures), str(r.path), "; ".join(r.notes))
    out.print(table)
    for r in results:
        if r.failures_path and r.failures:
            out.print(f"{r.failures} item(s) of source {r.index + 1} failed; why: {r.failures_path}", highlight=False)
    out.print(f"next: tunesmith data prepare {config}", highlight=False, markup=False)


@data_app.command("report", epilog=EPILOG)
def data_report(
    dataset: Annotated[Path, typer.Argument(metavar="DATASET", help="Dataset folder written by `data prepare`.")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="summary (tables), md, json, or html (prints the file path).")] = "summary",
) -> None:
    """Show the data-quality report of a dataset version."""
    from tunesmith.artifacts import DatasetVersion

    version = DatasetVersion(dataset)
    if fmt == "summary":
        _print_summary(version.path)
    elif fmt in ("md", "json"):
        out.print(version.file(f"report.{fmt}").read_text(encoding="utf-8"), markup=False, highlight=False)
    elif fmt == "html":
        out.print(str(version.file("report.html").resolve()))
    else:
        raise click.BadParameter(f"'{fmt}' is not one of summary, md, json, html", param_hint="--format")


@data_app.command("show", epilog=EPILOG)
def data_show(
    dataset: Annotated[Path, typer.Argument(metavar="DATASET", help="Dataset folder written by `data prepare`.")],
    split: Annotated[str, typer.Option("--split", help="train, validation, test, or quarantine.")] = "train",
    n: Annotated[int, typer.Option("--n", "-n", min=1, help="How many rows to show.")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines instead of a table.")] = False,
) -> None:
    """Show the first rows of a split (or of the quarantine, with reasons)."""
    from tunesmith.artifacts import DatasetVersion

    version = DatasetVersion(dataset)
    if split == "quarantine":
        rows = version.quarantine()[:n]
        columns = ["stage", "source", "line", "field", "reason"]
    else:
        if split not in ("train", "validation", "test"):
            raise click.BadParameter(f"'{split}' is not one of train, validation, test, quarantine", param_hint="--split")
        rows = version.table(split).slice(0, n).to_pylist()
        columns = [c for c in ("id", "label", "labels", "score", "n_tokens", "text", "messages", "chosen", "rejected")
                   if rows and c in rows[0]]
    if as_json:
        for row in rows:
            out.print(json.dumps(row, ensure_ascii=False, default=str), markup=False, highlight=False, soft_wrap=True)
        return
    table = Table(title=f"{version.manifest.name} / {split} (first {len(rows)})", show_lines=True)
    for col in columns:
        table.add_column(col, overflow="fold", max_width=90 if col in ("text", "messages", "chosen", "rejected", "reason") else None)
    for row in rows:
        table.add_row(*(_cell(row.get(col)) for col in columns))
    out.print(table)


def _cell(value: Any) -> str:
    if isinstance(value, list) and value and isinstance(value[0], dict):
        value = "\n".join(f"{m['role']}: {m['content']}" for m in value)
    text = "" if value is None else str(value)
    return text if len(text) <= 400 else text[:400] + "…"


@data_app.command("packaged", epilog=EPILOG)
def data_packaged() -> None:
    """List the datasets that ship inside Python packages (usable offline by name)."""
    from tunesmith.data.packaged import CATALOG

    table = Table(title="packaged datasets (use as `sources: [{name: NAME}]`)")
    table.add_column("name", no_wrap=True)
    for col in ("task", "fields", "subsets", "description"):
        table.add_column(col, overflow="fold")
    for name, entry in CATALOG.items():
        table.add_row(name, entry.task, entry.fields, ", ".join(entry.subsets) or "(categories)", entry.description)
    out.print(table)


@data_app.command("fetch", epilog=EPILOG)
def data_fetch(
    names: Annotated[list[str] | None, typer.Argument(help="Packaged dataset names.")] = None,
    fetch_all: Annotated[bool, typer.Option("--all", help="Fetch every packaged dataset.")] = False,
) -> None:
    """Make packaged datasets available offline (downloads the vaderSentiment sdist once)."""
    from tunesmith.data.packaged import CATALOG, fetch

    chosen = list(CATALOG) if fetch_all else (names or [])
    if not chosen:
        raise click.UsageError("name a packaged dataset or pass --all")
    for name in chosen:
        out.print(f"{name}: {fetch(name)}")


# -- train / evaluate -----------------------------------------------------------------------------


@app.command("train", epilog=EPILOG)
def train_cmd(
    config: Annotated[Path | None, typer.Argument(metavar="CONFIG", help="Project config YAML (optional with --resume).")] = None,
    overrides: Overrides = None,
    resume: Annotated[Path | None, typer.Option("--resume", metavar="RUN", help="Continue an interrupted run from its last complete checkpoint.")] = None,
    dataset: Annotated[Path | None, typer.Option("--dataset", metavar="DATASET", help="Train on this dataset folder instead of the config's.")] = None,
    nproc: Annotated[int | None, typer.Option("--nproc", min=1, help="Processes to train with (torchrun DDP); default train.nproc.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing run folder.")] = False,
) -> None:
    """Fine-tune the base model on the prepared dataset; writes a run folder (runs/<name>)."""
    import os

    errors = os.environ.get(WORKER_ERRORS) if "LOCAL_RANK" in os.environ else None
    if not errors:
        return _train(config, overrides, resume, dataset, nproc, overwrite)
    try:  # a worker of the --nproc launcher: it tells the error, once, with its exit code (torchrun's is 1 for all)
        return _train(config, overrides, resume, dataset, nproc, overwrite)
    except TunesmithError as e:
        (Path(errors) / f"rank-{os.environ.get('RANK', '0')}.json").write_text(
            json.dumps({"code": e.exit_code, "message": str(e)}), encoding="utf-8")
        raise typer.Exit(e.exit_code) from e


WORKER_ERRORS = "TUNESMITH_WORKER_ERRORS"  # the folder where the --nproc launcher's workers leave a user error


def _train(config: Path | None, overrides: list[str] | None, resume: Path | None, dataset: Path | None,
           nproc: int | None, overwrite: bool) -> None:
    import os
    import signal
    import subprocess
    import tempfile

    from tunesmith.artifacts import RUN_CONFIG
    from tunesmith.config import apply_override, load_config, parse_config
    from tunesmith.training import train
    from tunesmith.training.dataset import run_dataset
    from tunesmith.errors import ConfigError
    from tunesmith.training.run import check_run_dir, run_inputs, run_lock, settle_replaced, started

    if config is None and resume is None:
        raise click.UsageError("give a CONFIG, or --resume RUN")
    if config is not None:
        cfg = load_config(config, overrides or [])
    else:
        saved = resume / RUN_CONFIG if resume else None
        if saved is None or not saved.exists():
            raise click.UsageError(f"{resume}: no config.json to resume from")
        data = _saved_config(saved)
        for override in overrides or []:  # applied, never dropped silently: resuming then names what changed
            apply_override(data, override)
        cfg = parse_config(data, str(saved), overrides=overrides or [])
    worker = "LOCAL_RANK" in os.environ  # under torchrun: tunesmith's launcher's, or one started by hand
    # A resumed run goes on with as many processes as trained it: its own config.json says so, not CONFIG's.
    saved_nproc = None
    if resume is not None and (resume / RUN_CONFIG).is_file():
        saved_nproc = (_saved_config(resume / RUN_CONFIG).get("train") or {}).get("nproc", 1)
    processes = int(os.environ.get("WORLD_SIZE", "1")) if worker else nproc or saved_nproc or cfg.train.nproc
    if saved_nproc is not None and processes != saved_nproc:
        # the effective batch is batch x processes: the saved step fell elsewhere in the data, and epochs repeated
        how = f"torchrun --nproc_per_node {saved_nproc}" if worker else f"--nproc {saved_nproc}"
        raise ConfigError(f"{resume}: this run trained with {saved_nproc} process(es) (train.nproc in its {RUN_CONFIG}), "
                          f"not {processes}; resume it with {how}, or start a new run")
    if processes != cfg.train.nproc:  # the run's config records how many trained it (a resume relaunches as many)
        overrides = [*(overrides or []), f"train.nproc={processes}"]
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"nproc": processes})})
    if processes > 1 and "LOCAL_RANK" not in os.environ:
        # Checks and data preparation happen once, here; then torchrun starts the workers. Under the run's lock: an
        # --overwrite deleted the folder of a training still running in it before the workers found it locked.
        run_path = Path(resume or cfg.run_dir)
        with run_lock(run_path):  # a refused dataset puts back the earlier run --overwrite set aside
            check_run_dir(run_path, resume is not None, overwrite, run_inputs(cfg, dataset))
            run_dataset(cfg, dataset, run_path, resume is not None)  # a resume's own dataset, never prepared again
        child = ["train", *([str(config)] if config else []), *(x for o in overrides or [] for x in ("--set", o)),
                 *(["--dataset", str(dataset)] if dataset else []), *(["--resume", str(resume)] if resume else [])]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               "-m", "tunesmith", *child]
        out.print(f"launching {processes} processes: torchrun ... {' '.join(child)}", highlight=False)
        stopped: list[int] = []

        def forward(signum: int, _frame: Any) -> None:
            stopped.append(signum)
            proc.send_signal(signum)  # torchrun stops its workers (each in a session of its own) and exits

        with tempfile.TemporaryDirectory(prefix="tunesmith-workers-") as errors:
            # torchrun in a session of its own too: a terminal's Ctrl-C reaches it once, forwarded from here
            proc = subprocess.Popen(cmd, env={**os.environ, WORKER_ERRORS: errors}, start_new_session=True)
            handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
            previous = {s: signal.signal(s, forward) for s in handled}
            try:
                code = proc.wait()
            finally:
                for s, handler in previous.items():
                    signal.signal(s, handler)
                # the workers refused (a mistyped model name) or were stopped before training: the earlier run is back
                settle_replaced(run_path, keep_new=started(run_path))
            reported = sorted(Path(errors).glob("rank-*.json"), key=lambda f: int(f.stem.split("-")[1]))
            failure = json.loads(reported[0].read_text(encoding="utf-8")) if reported else None
        if stopped:  # as Ctrl-C: "aborted", and how to go on with the run
            _state["abort_hint"] = _resume_hint(run_path)
            raise KeyboardInterrupt
        if failure:  # the workers' error, once and last (after torchrun's ChildFailedError), with its exit code
            error = TunesmithError(failure["message"])
            error.exit_code = failure["code"]
            raise error
        if code:
            raise typer.Exit(code)
        return
    try:
        run_dir = train(cfg, dataset_dir=dataset, resume=resume, overwrite=overwrite)
    except KeyboardInterrupt:
        _state["abort_hint"] = _resume_hint(Path(resume or cfg.run_dir))
        raise
    if int(os.environ.get("RANK", "0")) == 0:
        out.print(f"run written to {run_dir}; next: tunesmith evaluate {run_dir}", highlight=False)


def _resume_hint(run_dir: Path) -> str:
    """What Ctrl-C's "aborted" adds for a run that started training and did not finish: how to go on with it."""
    from tunesmith.artifacts import RUN_MANIFEST
    from tunesmith.training.run import started

    if not started(run_dir) or (run_dir / RUN_MANIFEST).is_file():
        return ""
    return f"; the run goes on from its last checkpoint with `tunesmith train --resume {run_dir}`"


@app.command("evaluate", epilog=EPILOG)
def evaluate_cmd(
    run: Annotated[Path, typer.Argument(metavar="RUN", help="Run folder written by `tunesmith train`.")],
    dataset: Annotated[Path | None, typer.Option("--dataset", metavar="DATASET", help="Dataset folder (default: the one the run trained on).")] = None,
    split: Annotated[str | None, typer.Option("--split", help="Split to evaluate on (default eval.split: test).")] = None,
    baselines: Annotated[bool | None, typer.Option("--baselines/--no-baselines", help="Majority and TF-IDF baselines on the same split.")] = None,
    base_model: Annotated[bool | None, typer.Option("--base-model/--no-base-model", help="Score the untuned base model too (classifiers: a head-only model is trained on the frozen base; chat: on by default).")] = None,
) -> None:
    """Metrics, confusion matrix, baselines and an HTML report for a run on a held-out split."""
    from tunesmith.evaluation.run import evaluate_run

    result = evaluate_run(run, dataset, split, baselines, base_model)
    table = Table(title=f"{Path(result['run']).name} on {result['split']} ({result['n']} examples)")
    table.add_column("metric")
    table.add_column("tuned model")
    for name in result["baselines"]:
        table.add_column(name)
    if result["base_model"]:
        table.add_column("base model")
    keys = ["accuracy", "f1_macro", "f1_weighted", "roc_auc", "log_loss", "subset_accuracy", "f1_micro",
            "mae", "rmse", "r2", "pearson", "spearman", "loss", "perplexity", "mean_token_accuracy",
            "preference_accuracy", "reward_accuracy", "rouge_l", "token_f1", "exact_match", "answer_accuracy", "stopped"]
    columns = [result["metrics"], *result["baselines"].values(), *([result["base_model"]] if result["base_model"] else [])]
    for key in keys:
        if key in result["metrics"]:
            table.add_row(key, *(_fmt(c.get(key)) for c in columns))
    out.print(table)
    if result.get("confusion_text"):
        out.print(result["confusion_text"], markup=False, highlight=False)
    for note in result["notes"]:
        out.print(f"note: {note}", highlight=False)
    out.print(f"report: {Path(result['report_dir']) / 'report.html'}", highlight=False)


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "-"


@app.command("compare", epilog=EPILOG)
def compare_cmd(
    run_a: Annotated[Path, typer.Argument(metavar="RUN_A", help="First evaluated run.")],
    run_b: Annotated[Path, typer.Argument(metavar="RUN_B", help="Second evaluated run.")],
    split: Annotated[str, typer.Option("--split", help="Split both were evaluated on.")] = "test",
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", callback=_home_expanded, help="Folder for compare.md/html/json.")] = None,
) -> None:
    """Side-by-side metrics of two evaluated runs."""
    from tunesmith.evaluation.run import compare_runs

    folder = compare_runs(run_a, run_b, split, out_dir)
    out.print((folder / "compare.md").read_text(encoding="utf-8"), markup=False, highlight=False)
    out.print(f"written to {folder}", highlight=False)


@app.command("tune", epilog=EPILOG)
def tune_cmd(
    config: Annotated[Path, typer.Argument(metavar="CONFIG", help="Project config YAML with a tune: section (its search space).")],
    overrides: Overrides = None,
    trials: Annotated[int | None, typer.Option("--trials", "-n", min=1, help="Trials in the study, across all workers (tune.trials).")] = None,
    study: Annotated[str | None, typer.Option("--study", help="Study name: workers with the same name and storage share it (tune.study; default: the project name).")] = None,
    storage: Annotated[str | None, typer.Option("--storage", metavar="URL", help="Database URL (tune.storage; default: the tunesmith store, SQLite).")] = None,
    timeout: Annotated[float | None, typer.Option("--timeout", metavar="SECONDS", help="Start no trial after this long (tune.timeout_s).")] = None,
    sampler: Annotated[str | None, typer.Option("--sampler", help="tpe, random, cmaes, qmc or nsga2 (tune.sampler).")] = None,
    pruner: Annotated[str | None, typer.Option("--pruner", help="median, successive_halving, hyperband or none (tune.pruner).")] = None,
) -> None:
    """Hyperparameter search: an Optuna study, each trial a training run judged (and pruned) on validation;
    then best.yaml for `tunesmith train`, the best trial on the test split, and an HTML report."""
    from tunesmith.config import TuneSpec, load_config, override_of
    from tunesmith.tune.study import run_study

    flags = {"trials": trials, "study": study, "storage": storage, "timeout_s": timeout, "sampler": sampler, "pruner": pruner}
    given = {k: v for k, v in flags.items() if v is not None}
    try:  # checked as the flags typed: the config's error named a `--set tune.sampler="bogus"` nobody wrote
        TuneSpec.model_validate(given)
    except ValueError as err:
        raise _flag_error("tune", err, section="tune") from None
    cfg = load_config(config, [*(overrides or []), *(f"tune.{k}={json.dumps(v)}" for k, v in given.items())])
    summary = run_study(cfg, echo=lambda line: out.print(line, highlight=False, markup=False))
    counts = ", ".join(f"{n} {state}" for state, n in summary["trials"].items())
    out.print(f"study '{summary['study']}': {counts}", highlight=False)
    best = summary.get("best")
    if best is None:
        out.print("no trial completed, so no best config", highlight=False)
    else:
        shown = ", ".join(f"{k} {v:.4g}" for k, v in best["values"].items())
        params = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in best["params"].items())
        out.print(f"best trial {best['number']}: {shown} (validation); {params}", highlight=False, markup=False)
        for point in summary.get("pareto", []):
            out.print(f"  Pareto front: trial {point['number']}: "
                      + ", ".join(f"{k} {v:.4g}" for k, v in point["values"].items()), highlight=False)
        test = (summary.get("test") or {}).get("metrics", {})
        if summary["metric"] in test:
            out.print(f"test {summary['metric']} of the best trial: {test[summary['metric']]:.4f}", highlight=False)
        out.print(f"best config: {summary['best_config']} (train it: tunesmith train {summary['best_config']})", highlight=False)
        import shlex

        settings = {**best["params"], **dict(_best_settings(cfg, summary["best_config"]))}
        sets = " ".join("--set " + shlex.quote(override_of(k, v)) for k, v in settings.items())
        out.print(f"the same settings on another config (the full data, say): tunesmith train CONFIG {sets}",
                  highlight=False, markup=False)
    out.print(f"report: {summary['report']}", highlight=False)
    if best is None and not {"running", "waiting"} & set(summary["trials"]):
        from tunesmith.errors import TunesmithError

        # exit 0 let `tune X && tunesmith train best.yaml` go on to a missing file
        raise TunesmithError(f"study '{summary['study']}': no trial completed ({counts}); the report says why each "
                             "failed or was pruned")


def _best_settings(cfg: Any, best_config: str) -> list[tuple[str, Any]]:
    """Every field best.yaml sets otherwise than the base config: the trial's values, and the settings its method
    does not read (reset) or the study set (train.metric), so this config with them trains what best.yaml does."""
    import yaml

    from tunesmith.config import config_diff

    best = yaml.safe_load(Path(best_config).read_text(encoding="utf-8"))
    out = []
    for line in config_diff(cfg.model_dump(mode="json", exclude={"tune"}), best):
        key = line.split(": ", 1)[0]
        value: Any = best
        for part in key.split("."):
            value = (value or {}).get(part)
        out.append((key, value))
    return out


@app.command("export", epilog=EPILOG)
def export_cmd(
    run: Annotated[Path, typer.Argument(metavar="RUN", help="Run folder written by `tunesmith train` (docker: or an export of one).")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="merged, onnx, onnx-int8, joblib, docker, gguf (f16), or gguf-q8_0.")],
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", callback=_home_expanded, help="Folder to write (default: <RUN>-<format> beside the run).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing, non-empty --out folder.")] = False,
    check: Annotated[bool, typer.Option("--check/--no-check", help="Predict the test split with the run and the export and compare.")] = True,
) -> None:
    """Export a run for deployment: merged weights, ONNX (fp32 or int8), a joblib bundle, a Docker build context, or GGUF (llama.cpp, Ollama)."""
    from tunesmith.export import export_run

    result = export_run(run, fmt, out_dir, overwrite=overwrite, check=check)
    out.print(f"{result.format} export written to {result.path}", highlight=False)
    c = result.check
    if "skipped" in c:
        out.print(f"note: {c['skipped']}", highlight=False)
    elif "agreement" in c:
        line = f"self-check on {c['n']} test texts: {c['agreement']:.2%} of the predictions agree with the run"
        if "accuracy_diff" in c:
            line += f"; accuracy {c['accuracy_run']:.4f} -> {c['accuracy_export']:.4f} ({c['accuracy_diff'] * 100:+.2f} points)"
        out.print(line, highlight=False, soft_wrap=True)
    elif "max_abs_diff" in c:
        line = f"self-check on {c['n']} test texts: max |difference| {c['max_abs_diff']:.3g}, mean {c['mean_abs_diff']:.3g}"
        if "r2_diff" in c:
            line += f"; R² {c['r2_run']:.4f} -> {c['r2_export']:.4f} ({c['r2_diff']:+.4f})"
        out.print(line, highlight=False, soft_wrap=True)
    elif "loss_diff" in c:
        out.print(f"self-check on {c['n']} test conversations: loss {c['loss_run']:.4f} (run) vs {c['loss_export']:.4f} (export)",
                  highlight=False)
    for note in c.get("notes", []):  # why the accuracy is missing or on another split (a dataset prepared again)
        out.print(f"note: {note}", highlight=False, soft_wrap=True)
    for warning in result.warnings:
        out.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True, markup=True)
    if result.commands:
        out.print("build and run the image with:" if result.format == "docker" else "use it with:", highlight=False)
        for command in result.commands:
            out.print(f"  {command}", markup=False, highlight=False)


def _serve_default(name: str) -> Any:
    """ServeSpec's default for a `serve` flag: config.py holds every default, so the two cannot drift apart.
    Called while `serve_cmd` is defined, so importing the CLI imports config (pydantic, no torch)."""
    from tunesmith.config import ServeSpec

    return ServeSpec.model_fields[name].default


@app.command("serve", epilog=EPILOG)
def serve_cmd(
    runs: Annotated[list[Path] | None, typer.Argument(metavar="[RUN]...", help="Run folders (or exports) to serve; several at once. None: the fine-tuning API alone.")] = None,
    host: Annotated[str, typer.Option(help="Interface to bind; 0.0.0.0 for every interface.")] = _serve_default("host"),
    port: Annotated[int, typer.Option(help="Port; 0 picks a free one.")] = _serve_default("port"),
    api_key: Annotated[list[str] | None, typer.Option("--api-key", help="Bearer key for /v1/* (repeatable; also TUNESMITH_API_KEYS, comma-separated).")] = None,
    admin_key: Annotated[str | None, typer.Option("--admin-key", envvar="TUNESMITH_ADMIN_KEY", help="Bearer key for /admin/* (off without one).")] = None,
    cors_origin: Annotated[list[str] | None, typer.Option("--cors-origin", help="Browser origin allowed to call the API (repeatable); CORS is off otherwise.")] = None,
    max_batch_size: Annotated[int, typer.Option(help="Requests folded into one forward pass.")] = _serve_default("max_batch_size"),
    batch_wait_ms: Annotated[float, typer.Option(help="How long a request waits for others to batch with.")] = _serve_default("batch_wait_ms"),
    max_queue: Annotated[int, typer.Option(help="Waiting requests per model before 503 + Retry-After.")] = _serve_default("max_queue"),
    timeout: Annotated[float, typer.Option(help="Seconds before a request is answered 504.")] = _serve_default("timeout_s"),
    max_tokens: Annotated[int, typer.Option(help="Cap on generated tokens per request.")] = _serve_default("max_tokens"),
    classifier_engine: Annotated[str, typer.Option("--classifier-engine", help="Classification/regression runs on: auto (a classifier in bf16 on a CPU with native bf16, AMX or AVX512-BF16: OpenVINO, else PyTorch; else onnxruntime on a CPU, the run converted to ONNX once; PyTorch on a GPU), openvino-bf16, torch-bf16, onnxruntime, or torch.")] = _serve_default("classifier_engine"),
    chat_engine: Annotated[str, typer.Option("--chat-engine", help="Chat runs on: auto (llama.cpp where the model converts to GGUF, else CTranslate2 int8, else transformers), llama.cpp, ctranslate2, or transformers.")] = _serve_default("chat_engine"),
    chat_kv_tokens: Annotated[int, typer.Option("--chat-kv-tokens", help="llama.cpp: tokens of KV cache the concurrent answers of a chat model share (prompts + answers).")] = _serve_default("chat_kv_tokens"),
    db: Annotated[str | None, typer.Option("--db", envvar="TUNESMITH_DB", help="Store URL for the fine-tuning API (sqlite:///file.db or postgresql://...); turns it on. Without RUNs it is on with the default SQLite store.")] = None,
    workers: Annotated[int, typer.Option("--workers", min=0, help="Training workers started beside the server (processes running `tunesmith worker`).")] = 0,
    base_model: Annotated[list[str] | None, typer.Option("--base-model", help="A base model fine-tuning jobs may use (repeatable); default: smollm2-135m.")] = None,
    max_file_mb: Annotated[float | None, typer.Option("--max-file-mb", help="Largest upload accepted by POST /v1/files, in MB (default 512, OpenAI's).")] = None,
    model: Annotated[list[str] | None, typer.Option("--model", help="Serve this registry model's production version, following promotions and rollbacks (repeatable).")] = None,
    log_inputs: Annotated[bool, typer.Option("--log-inputs/--no-log-inputs", help="Keep each request's input and answer in the store's prediction log (with --db or --model); off for sensitive data.")] = _serve_default("log_inputs"),
    log_retention_days: Annotated[float, typer.Option("--log-retention-days", help="Clear logged inputs and answers after this many days.")] = _serve_default("log_retention_days"),
    prepare: Annotated[bool, typer.Option("--prepare", help="Convert each RUN for its engine (and a classifier served with auto also to ONNX, the engine of hosts without native bf16; cached in RUN/.serve-cache/), load it once, and exit without serving: for image builds and deploy scripts, so that the first start does not convert.")] = False,
) -> None:
    """Serve runs over HTTP: /v1/predict, OpenAI-compatible /v1/chat/completions, /v1/completions, /v1/models,
    and OpenAI's files and fine-tuning jobs API (with --db, or when no RUN is given)."""
    import os

    from tunesmith.config import ServeSpec
    from tunesmith.serve.server import serve

    keys = list(api_key or []) + [k.strip() for k in os.environ.get("TUNESMITH_API_KEYS", "").split(",") if k.strip()]
    try:
        spec = ServeSpec(host=host, port=port, api_keys=keys, admin_key=admin_key, cors_origins=list(cors_origin or []),
                         max_batch_size=max_batch_size, batch_wait_ms=batch_wait_ms, max_queue=max_queue,
                         timeout_s=timeout, max_tokens=max_tokens, classifier_engine=classifier_engine,
                         chat_engine=chat_engine, chat_kv_tokens=chat_kv_tokens, log_inputs=log_inputs,
                         log_retention_days=log_retention_days)
    except ValueError as err:
        raise _flag_error("serve", err) from None
    if max_file_mb is not None and max_file_mb <= 0:  # 0 read as "not given": the 512 MB default, without a word
        from tunesmith.errors import ConfigError

        raise ConfigError(f"serve: --max-file-mb: must be above 0 (got {max_file_mb:g})")
    if prepare:
        from tunesmith.errors import ConfigError
        from tunesmith.serve.models import prepare as prepare_runs

        if not runs:
            raise ConfigError("serve --prepare: name the RUN folders to prepare")
        for served, also in prepare_runs(runs, spec):
            print(f"{served.id}: ready ({served.run})" + "".join(f"; {note}" for note in also))
        return
    jobs = _jobs_spec(db, base_model, max_file_bytes=int(max_file_mb * 1024**2) if max_file_mb is not None else None) \
        if db or workers or not (runs or model) else None
    serve(runs or [], spec, jobs=jobs, workers=workers, registry_models=list(model or []), db=db)


def _saved_config(path: Path) -> dict[str, Any]:
    """A run's config.json, as a user error when damaged (it was an internal JSONDecodeError)."""
    from tunesmith.errors import ConfigError

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not valid JSON ({err}); the run's saved config is damaged: restore it, "
                          "or start a new run from its YAML config") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object (the run's saved config); it is damaged")
    return data


def _jobs_spec(db: str | None, base_models: list[str] | None, **settings: float | int | None) -> Any:
    from tunesmith.config import JobsSpec

    given = {k: v for k, v in settings.items() if v is not None}  # unset flags keep JobsSpec's defaults
    try:
        return JobsSpec(db=db, **({"base_models": base_models} if base_models else {}), **given)
    except ValueError as err:
        raise _flag_error("jobs", err) from None


# the flags whose setting's name differs from the flag's (the others: --max-queue for max_queue)
_FLAGS = {"timeout_s": "--timeout", "api_keys": "--api-key (or TUNESMITH_API_KEYS)", "cors_origins": "--cors-origin",
          "poll_s": "--poll", "heartbeat_s": "--heartbeat", "stale_after_s": "--stale-after",
          "max_file_bytes": "--max-file-mb", "base_models": "--base-model", "admin_key": "--admin-key (or TUNESMITH_ADMIN_KEY)",
          "db": "--db (or TUNESMITH_DB)"}
_SECRETS = ("api_keys", "admin_key")  # never echoed: a typo's error had printed every key, TUNESMITH_API_KEYS' too


def _flag_error(command: str, err: ValueError, section: str | None = None) -> Exception:
    """A settings error as the flags the user typed: pydantic's dump named timeout_s, with its type code and URL.
    `section`: the config section the flags set, named beside each flag (`--sampler (tune.sampler)`)."""
    from pydantic import ValidationError

    from tunesmith.config import without_password
    from tunesmith.errors import ConfigError

    if not isinstance(err, ValidationError):
        return ConfigError(f"{command}: {err}")
    lines = []
    for e in err.errors():
        name = str(e["loc"][0]) if e["loc"] else ""
        flag = _FLAGS.get(name, "--" + name.replace("_", "-")) + (f" ({section}.{name})" if section else "")
        shown = without_password(e["input"]) if name in ("db", "storage") and isinstance(e["input"], str) else e["input"]
        quiet = name in ("max_file_bytes", *_SECRETS) or isinstance(e["input"], dict)
        got = "" if quiet else f" (got {shown!r})"
        lines.append(f"{flag}: {e['msg'].removeprefix('Value error, ')}{got}")
    return ConfigError(f"{command}: " + "; ".join(lines))


# -- model registry ---------------------------------------------------------------------------------

DbOption = Annotated[str | None, typer.Option("--db", envvar="TUNESMITH_DB", help="Store URL (default: the SQLite file in TUNESMITH_HOME).")]

registry_app = typer.Typer(help="Named models and their versions (run folders): candidate, production, archived.",
                           epilog=EPILOG, no_args_is_help=True)
app.add_typer(registry_app, name="registry")


def _registry(db: str | None) -> Any:
    from tunesmith.registry.service import Registry
    from tunesmith.store.db import Store

    return Registry(Store(db))


def _print_versions(versions: list[Any], title: str) -> None:
    table = Table(title=title)
    for col in ("model", "version", "stage", "task", "metrics", "run"):
        table.add_column(col, overflow="fold", no_wrap=col in ("model", "version", "stage"))
    for v in versions:
        metrics = ", ".join(f"{k} {x:.4f}" for k, x in list(v.metrics.items())[:3] if isinstance(x, int | float))
        gone = " (missing)" if not Path(v.run).exists() else ""  # moved or deleted: promote and serve would fail on it
        table.add_row(v.model, str(v.version), v.stage, v.task, metrics, v.run + gone)
    out.print(table)


@registry_app.command("add", epilog=EPILOG)
def registry_add(
    run: Annotated[Path, typer.Argument(metavar="RUN", help="A finished run folder (or an export of one).")],
    model: Annotated[str, typer.Option("--model", help="The registry model it becomes a version of (created on first use).")],
    stage: Annotated[str, typer.Option("--stage", help="candidate (default), production or archived.")] = "candidate",
    db: DbOption = None,
) -> None:
    """Register a run folder as the next version of a named model."""
    v = _registry(db).add(run, model, stage=stage)  # type: ignore[arg-type]
    out.print(f"registered {run} as '{v.model}' version {v.version} ({v.stage})", highlight=False)


@registry_app.command("list", epilog=EPILOG)
def registry_list(model: Annotated[str | None, typer.Option("--model", help="Only this model.")] = None,
                  db: DbOption = None) -> None:
    """Every registered version (or one model's)."""
    _print_versions(_registry(db).versions(model), "registry")


@registry_app.command("show", epilog=EPILOG)
def registry_show(model: Annotated[str, typer.Argument(metavar="MODEL")], db: DbOption = None) -> None:
    """A model's versions, lineage and the history of its stages."""
    import datetime as dt

    registry = _registry(db)
    versions = registry.versions(model)
    _print_versions(versions, model)
    for v in versions:
        out.print(f"v{v.version} lineage: {json.dumps(v.lineage)}", markup=False, highlight=False)
    for e in registry.events(model):
        when = dt.datetime.fromtimestamp(e.created_at, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
        out.print(f"{when} {e.action:8} v{e.version}: {e.from_stage or '-'} -> {e.to_stage}", markup=False, highlight=False)


@registry_app.command("promote", epilog=EPILOG)
def registry_promote(model: Annotated[str, typer.Argument(metavar="MODEL")],
                     version: Annotated[int, typer.Argument(metavar="VERSION")], db: DbOption = None) -> None:
    """Put a version in production (the one there before is archived); `serve --model` follows within seconds."""
    v = _registry(db).promote(model, version)
    out.print(f"'{model}' version {v.version} is in production", highlight=False)


@registry_app.command("rollback", epilog=EPILOG)
def registry_rollback(model: Annotated[str, typer.Argument(metavar="MODEL")], db: DbOption = None) -> None:
    """Put the version that was in production before the latest promotion back in production."""
    v = _registry(db).rollback(model)
    skipped = f" (passed over version(s) {', '.join(map(str, v.skipped))}: archived or their weights are gone)" \
        if v.skipped else ""
    out.print(f"'{model}' rolled back: version {v.version} is in production{skipped}", highlight=False)


# -- A/B tests --------------------------------------------------------------------------------------

ab_app = typer.Typer(help="A/B tests between versions of a registry model served with `serve --model`.",
                     epilog=EPILOG, no_args_is_help=True)
app.add_typer(ab_app, name="ab")
ModelOption = Annotated[str, typer.Option("--model", help="The registry model under test.")]


def _ab(db: str | None) -> Any:
    from tunesmith.monitor.ab import ABService
    from tunesmith.store.db import Store

    return ABService(Store(db))


def _print_ab(status: Any) -> None:
    table = Table(title=f"A/B test {status.id} on '{status.model}' ({status.status}; horizon {status.horizon} users with a rated answer per variant)")
    for col in ("variant", "weight", "requests", "rated", "positive rate", "mean score", "corrected accuracy", "p50 ms"):
        table.add_column(col)
    for v in status.variants:
        table.add_row(v.name, f"{v.weight:g}", str(v.requests), str(v.feedback), _pct(v.positive_rate), _fmt(v.mean_score),
                      _pct(v.corrected_accuracy), f"{v.latency_p50_ms:.0f}" if v.latency_p50_ms is not None else "-")
    out.print(table)
    if status.shadow:
        out.print(f"shadow: {status.shadow['name']} answers a copy of the traffic (logged, not returned)", highlight=False)
    out.print(f"verdict: {status.verdict}", highlight=False, soft_wrap=True)
    if status.scores:
        out.print(f"scores (1-5): {status.scores['verdict']}", highlight=False, soft_wrap=True)
    out.print(f"method: {status.method}", highlight=False, soft_wrap=True)


def _pct(value: float | None) -> str:
    return f"{value:.1%}" if value is not None else "-"


@ab_app.command("start", epilog=EPILOG)
def ab_start(
    model: ModelOption,
    variants: Annotated[str, typer.Option("--variants", help="Registered versions and their traffic shares, e.g. v3=0.5,v4=0.5 (sum 1).")],
    shadow: Annotated[str | None, typer.Option("--shadow", help="A version that answers a copy of the traffic, logged but never returned.")] = None,
    mde: Annotated[float, typer.Option("--mde", help="Smallest difference in positive-feedback rate worth detecting (0.05 = 5 points).")] = 0.05,
    baseline: Annotated[float, typer.Option("--baseline", help="Expected positive-feedback rate, for the sample size.")] = 0.5,
    alpha: Annotated[float, typer.Option("--alpha", help="Significance level (two-sided).")] = 0.05,
    horizon: Annotated[int | None, typer.Option("--horizon", min=1, help="Users with a rated answer per variant before a verdict (each counts once) (default: from --mde, --baseline, --alpha and 80% power).")] = None,
    db: DbOption = None,
) -> None:
    """Start an A/B test; `serve --model` applies it within seconds (sticky per user id)."""
    from tunesmith.monitor.ab import parse_variants

    _print_ab(_ab(db).start(model, parse_variants(variants), shadow=shadow, alpha=alpha, baseline=baseline,
                            minimum_detectable_effect=mde, horizon=horizon))


@ab_app.command("size", epilog=EPILOG)
def ab_size(
    baseline: Annotated[float, typer.Option("--baseline", help="Expected positive-feedback rate of the current model.")] = 0.5,
    mde: Annotated[float, typer.Option("--mde", help="Smallest difference worth detecting (0.05 = 5 points).")] = 0.05,
    alpha: Annotated[float, typer.Option("--alpha", help="Significance level (two-sided).")] = 0.05,
    power: Annotated[float, typer.Option("--power", help="Chance of detecting a real difference of --mde.")] = 0.8,
) -> None:
    """How many rated feedback items each variant needs (the horizon `ab start` uses)."""
    from tunesmith.monitor.stats import sample_size_proportions

    try:
        n = sample_size_proportions(baseline, mde, alpha=alpha, power=power)
    except ValueError as err:  # a rate outside 0-1, a power of 1: said as the options' error, not an internal one
        from tunesmith.errors import ConfigError

        raise ConfigError(f"ab size: {err}") from None
    out.print(f"{n} users (each with a rated answer) per variant to detect {baseline:.0%} -> {baseline + mde:.0%} "
              f"(alpha {alpha:g}, two-sided, power {power:.0%})", highlight=False)


@ab_app.command("status", epilog=EPILOG)
def ab_status(model: ModelOption, db: DbOption = None,
              as_json: Annotated[bool, typer.Option("--json", help="Print the status as JSON.")] = False) -> None:
    """Per-variant outcomes from feedback, the test's numbers and a plain-words verdict."""
    status = _ab(db).status(model)
    if as_json:
        out.print(status.model_dump_json(indent=2), markup=False, highlight=False, soft_wrap=True)
    else:
        _print_ab(status)


@ab_app.command("stop", epilog=EPILOG)
def ab_stop(model: ModelOption, db: DbOption = None,
            promote: Annotated[str | None, typer.Option("--promote", help="Put this variant's version in production.")] = None) -> None:
    """End the running test (and promote the winner)."""
    _print_ab(_ab(db).stop(model, promote))


# -- monitoring report -----------------------------------------------------------------------------

monitor_app = typer.Typer(help="How served models are doing: live figures, drift, A/B tests.", epilog=EPILOG,
                          no_args_is_help=True)
app.add_typer(monitor_app, name="monitor")


@monitor_app.command("report", epilog=EPILOG)
def monitor_report(
    model: Annotated[str, typer.Option("--model", help="The served model (registry name or model id).")],
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", callback=_home_expanded, help="Folder to write (default: monitor/<model>).")] = None,
    since_hours: Annotated[float | None, typer.Option("--since-hours", help="Only the last N hours of traffic.")] = None,
    db: DbOption = None,
) -> None:
    """An HTML report: per-version requests, latency, labels, feedback over time, drift against the training data,
    the registry's versions and the A/B tests."""
    import time as _time

    from tunesmith.monitor.report import write_report
    from tunesmith.store.db import Store

    # `is not None`: 0 hours is an empty window, not all traffic (NaN fails the comparison too)
    if since_hours is not None and not 0 <= since_hours < float("inf"):
        raise click.BadParameter(f"must be a number of hours, 0 or more, got {since_hours}", param_hint="--since-hours")
    since = _time.time() - since_hours * 3600 if since_hours is not None else None
    path = write_report(Store(db), model, out_dir or Path("monitor") / model.replace(":", "_"), since=since)
    out.print(f"report: {path}", highlight=False)


# -- feedback -------------------------------------------------------------------------------------

feedback_app = typer.Typer(help="User feedback gathered by the server (POST /v1/feedback).", epilog=EPILOG,
                           no_args_is_help=True)
app.add_typer(feedback_app, name="feedback")


@feedback_app.command("export", epilog=EPILOG)
def feedback_export(
    model: Annotated[str, typer.Option("--model", help="The served model (registry name or model id) whose corrections to export.")],
    out_file: Annotated[Path, typer.Option("--out", "-o", callback=_home_expanded, help="File to write: CSV (id,text,label|score) for classifiers and regressors, chat JSONL for chat models.")],
    db: DbOption = None,
    separator: Annotated[str | None, typer.Option("--label-separator", help="Joins a multi-label correction's labels; default the model's task.label_separator (its registered run's config, else ',').")] = None,
) -> None:
    """Write the corrections users sent as a file `tunesmith data prepare` reads (a `sources:` entry)."""
    from tunesmith.monitor.feedback import FeedbackService
    from tunesmith.store.db import Store

    n = FeedbackService(Store(db)).export(model, out_file, separator=separator)
    out.print(f"{n} correction(s) of '{model}' written to {out_file}", highlight=False)


@app.command("retrain", epilog=EPILOG)
def retrain_cmd(
    model: Annotated[str, typer.Option("--model", help="The registry model to improve (its production version is the starting point).")],
    mode: Annotated[str | None, typer.Option("--mode", help="full (from the base on all data) or incremental (from production's weights); default retrain.mode.")] = None,
    promote: Annotated[str | None, typer.Option("--promote", help="if_better, ab_test or never: what a candidate that passes the rule gets; default retrain.promote.")] = None,
    if_needed: Annotated[bool, typer.Option("--if-needed", help="Only when due: enough new corrections, or drift past its threshold (for cron).")] = False,
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", callback=_home_expanded, help="Folder for the corrections, dataset, run and report (default: beside production's run).")] = None,
    overrides: Annotated[list[str] | None, typer.Option("--set", metavar="retrain.KEY=VALUE", help="Replace a retrain: setting of production's config for this round (repeatable), e.g. --set retrain.replay=2.")] = None,
    db: DbOption = None,
) -> None:
    """Retrain from the corrections users sent: a new dataset version (test split frozen), a candidate trained on
    it, judged against production with paired tests, and promoted (or A/B tested) only if the rule in the
    config's retrain: section holds."""
    from tunesmith.store.db import Store
    from tunesmith.tune.retrain import retrain

    if mode not in (None, "full", "incremental"):
        raise click.BadParameter(f"'{mode}': use full or incremental", param_hint="--mode")
    if promote not in (None, "if_better", "ab_test", "never"):
        raise click.BadParameter(f"'{promote}': use if_better, ab_test or never", param_hint="--promote")
    from tunesmith.config import apply_override

    settings: dict[str, Any] = {}
    for override in overrides or []:
        if not override.startswith("retrain."):
            raise click.BadParameter(f"'{override}': only retrain.* settings apply here", param_hint="--set")
        apply_override(settings, override.removeprefix("retrain."))
    outcome = retrain(Store(db), model, mode=mode, promote=promote, out=out_dir, if_needed=if_needed, settings=settings,
                      say=lambda line: out.print(line, highlight=False))
    if outcome.decision == "not_due":
        out.print(f"'{model}': no retrain due ({'; '.join(outcome.reasons)})", highlight=False)
        return
    title = {"promoted": f"promoted: version {outcome.candidate.version} is in production",  # type: ignore[union-attr]
             "ab_test": "passed: an A/B test against production started",
             "candidate": f"version {outcome.candidate.version} stays a candidate"}[outcome.decision]  # type: ignore[union-attr]
    out.print(f"'{model}' {title}", highlight=False)
    for reason in outcome.reasons:
        out.print(f"  - {reason}", highlight=False)
    out.print(f"report: {outcome.folder / 'report.html'}", highlight=False)


# -- fine-tuning jobs -------------------------------------------------------------------------------

@app.command("worker", epilog=EPILOG)
def worker_cmd(
    db: DbOption = None,
    base_model: Annotated[list[str] | None, typer.Option("--base-model", help="Base models jobs may use (as the server's --base-model).")] = None,
    name: Annotated[str | None, typer.Option("--name", help="This worker's name in the store (default host:pid).")] = None,
    once: Annotated[bool, typer.Option("--once", help="Run the waiting jobs, then exit.")] = False,
    heartbeat: Annotated[float | None, typer.Option("--heartbeat", help="Seconds between heartbeats (and cancel/pause checks).")] = None,
    stale_after: Annotated[float | None, typer.Option("--stale-after", help="Take over running jobs whose heartbeat is older than this.")] = None,
    poll: Annotated[float | None, typer.Option("--poll", help="Seconds between looks for new jobs when idle.")] = None,
    max_attempts: Annotated[int | None, typer.Option("--max-attempts", help="Workers that may die holding one job before it fails (default 3).")] = None,
) -> None:
    """Run fine-tuning jobs from the store, one at a time (several workers may share a store)."""
    import signal
    import threading

    from tunesmith.jobs.worker import Worker
    from tunesmith.store.db import Store

    spec = _jobs_spec(db, base_model, heartbeat_s=heartbeat, stale_after_s=stale_after, poll_s=poll, max_attempts=max_attempts)
    worker = Worker(Store(spec.db), spec, name)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    err.print(f"worker {worker.name} on {worker.store.shown}", highlight=False)
    worker.run(stop, once=once)


jobs_app = typer.Typer(help="Fine-tuning jobs in the store (what the OpenAI-compatible API shows).", epilog=EPILOG,
                       no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")
KeyOption = Annotated[str | None, typer.Option("--api-key", envvar="TUNESMITH_API_KEY", help="Act as the owner of this API key (default: the open server's owner).")]


def _jobs_service(db: str | None) -> Any:
    from tunesmith.jobs.service import JobsService
    from tunesmith.store.db import Store

    spec = _jobs_spec(db, None)
    return JobsService(Store(spec.db), spec)


def _check(result: Any) -> Any:
    from tunesmith.errors import ApiError, ConfigError

    if isinstance(result, ApiError):
        raise ConfigError(result.message)
    return result


@jobs_app.command("list", epilog=EPILOG)
def jobs_list(db: DbOption = None, api_key: KeyOption = None,
              limit: Annotated[int, typer.Option("--limit", min=1, help="How many jobs, newest first.")] = 20) -> None:
    """The newest fine-tuning jobs."""
    from tunesmith.jobs.service import owner_of

    page = _check(_jobs_service(db).list_jobs(owner_of(api_key), limit=limit))
    table = Table(title="fine-tuning jobs")
    table.add_column("id", no_wrap=True)  # ids are copied into other commands whole
    for col in ("status", "model", "fine_tuned_model", "created"):
        table.add_column(col, overflow="fold")
    import datetime as dt

    for job in page.data:
        table.add_row(job.id, job.status, job.model, job.fine_tuned_model or "-",
                      dt.datetime.fromtimestamp(job.created_at, dt.UTC).strftime("%Y-%m-%d %H:%M"))
    out.print(table)


@jobs_app.command("show", epilog=EPILOG)
def jobs_show(job_id: Annotated[str, typer.Argument(metavar="JOB")], db: DbOption = None, api_key: KeyOption = None) -> None:
    """A job as the API returns it (JSON)."""
    from tunesmith.jobs.service import owner_of

    job = _check(_jobs_service(db).get_job(owner_of(api_key), job_id))
    out.print(job.model_dump_json(indent=2), markup=False, highlight=False, soft_wrap=True)


@jobs_app.command("events", epilog=EPILOG)
def jobs_events(job_id: Annotated[str, typer.Argument(metavar="JOB")], db: DbOption = None, api_key: KeyOption = None,
                limit: Annotated[int, typer.Option("--limit", min=1, help="How many events, oldest of them first.")] = 50) -> None:
    """A job's events (validation, steps, checkpoints, the outcome)."""
    import datetime as dt

    from tunesmith.jobs.service import owner_of

    page = _check(_jobs_service(db).list_events(owner_of(api_key), job_id, limit=limit))
    for event in reversed(page.data):
        when = dt.datetime.fromtimestamp(event.created_at, dt.UTC).strftime("%H:%M:%S")
        out.print(f"{when} {event.level:5} {event.message}", markup=False, highlight=False)


@jobs_app.command("cancel", epilog=EPILOG)
def jobs_cancel(job_id: Annotated[str, typer.Argument(metavar="JOB")], db: DbOption = None, api_key: KeyOption = None) -> None:
    """Cancel a job (a running one stops at its next step)."""
    from tunesmith.jobs.service import owner_of

    job = _check(_jobs_service(db).cancel_job(owner_of(api_key), job_id))
    out.print(f"{job.id}: {job.status}", highlight=False)


# -- annotate -------------------------------------------------------------------------------------


class _DefaultLabel(typer.core.TyperGroup):
    """`tunesmith annotate DATA ...` means `tunesmith annotate label DATA ...`: labelling is what the verb
    is for; export/import/labelstudio/report are its helpers."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h"):
            args = ["label", *args]
        return super().parse_args(ctx, args)


annotate_app = typer.Typer(cls=_DefaultLabel, epilog=EPILOG, no_args_is_help=True, help=(
    "Label data in the browser or the terminal (`tunesmith annotate DATA --labels a,b`); labels are saved in the "
    "store as they are given. Several annotators, agreement (kappa), model suggestions, Label Studio/Argilla/CSV."))
app.add_typer(annotate_app, name="annotate")


def _queue(db: str | None, task: str) -> Any:
    from tunesmith.collect.annotate import Queue
    from tunesmith.store.db import Store

    return Queue(Store(db), task)


@annotate_app.command("label", epilog=EPILOG)
def annotate_label(
    data: Annotated[Path | None, typer.Argument(metavar="[DATA]", help="Rows to label: JSONL/CSV/Parquet (e.g. a collected file) or a dataset folder; omit to reopen --task.")] = None,
    labels: Annotated[str | None, typer.Option("--labels", help="The label set, comma-separated (needed for a new task).")] = None,
    task: Annotated[str | None, typer.Option("--task", help="Task name (default: DATA's file name).")] = None,
    instructions: Annotated[str | None, typer.Option("--instructions", help="Shown above each example.")] = None,
    overlap: Annotated[int | None, typer.Option("--overlap", min=1, help="Annotators per item before it is done (2+ gives agreement).")] = None,
    text_field: Annotated[str, typer.Option("--text-field", help="The column holding the text.")] = "text",
    id_field: Annotated[str, typer.Option("--id-field", help="The column holding a stable item id (else a hash of the text).")] = "id",
    split: Annotated[str | None, typer.Option("--split", help="Dataset folder: only this split.")] = None,
    annotator: Annotated[str | None, typer.Option("--annotator", help="Your id (terminal mode; the page asks for it or takes ?annotator=).")] = None,
    terminal: Annotated[bool, typer.Option("--terminal", help="Label in this terminal instead of the browser.")] = False,
    host: Annotated[str, typer.Option("--host", help="Page address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Page port.")] = 8765,
    suggest_from: Annotated[str | None, typer.Option("--suggest-from", metavar="RUN|zero-shot[:MODEL]", help="Proposals from a fine-tuned run or a zero-shot encoder (a weak prior); the most uncertain come first.")] = None,
    accept_above: Annotated[float | None, typer.Option("--accept-above", help="Accept proposals this confident as labels (by annotator model:<name>).")] = None,
    db: DbOption = None,
) -> None:
    """Load rows into a labelling task and label them: a web page (keys 1-9 label, s skips, u undoes) or --terminal."""
    import getpass

    from tunesmith.collect.annotate import Queue, create_task
    from tunesmith.collect.annotate_io import load_data
    from tunesmith.store.db import Store

    if data is None and task is None:
        raise typer.BadParameter("give DATA (rows to label) or --task NAME (an existing task)")
    # before the store, the rows and the model are touched: without --suggest-from the threshold was silently ignored
    if accept_above is not None and not suggest_from:
        raise click.UsageError("--accept-above needs --suggest-from (RUN or zero-shot[:MODEL]): the proposals it accepts")
    if accept_above is not None and not 0.0 < accept_above <= 1.0:
        raise click.BadParameter(f"must be in (0, 1] (a top probability), got {accept_above}", param_hint="--accept-above")
    name = task or (data.stem if data is not None else "")
    store = Store(db)
    info = create_task(store, name, [x.strip() for x in labels.split(",") if x.strip()] if labels else None, instructions, overlap)
    queue = Queue(store, info.name)
    if data is not None:
        added, already, blank = load_data(queue, data, text_field, id_field, split)
        out.print(f"task '{info.name}' {info.labels}: {added} item(s) added, {already} already there"
                  + (f", {blank} blank text(s) skipped" if blank else ""), highlight=False)
    if suggest_from:
        from tunesmith.collect.annotate_assist import scorer_for, suggest

        s = suggest(queue, scorer_for(suggest_from, info.labels), accept_above)
        out.print(f"{s.annotator}: scored {s.scored}, accepted {s.accepted} at >= {accept_above}, "
                  f"{s.queued} left for people (most uncertain first)", highlight=False)
    p = queue.progress()
    out.print(f"progress: {json.dumps(p)}", highlight=False, markup=False)
    if terminal:
        from tunesmith.collect.annotate_terminal import annotate_terminal

        counts = annotate_terminal(queue, annotator or getpass.getuser(), console=Console(emoji=False))  # it styles, escaping text
        out.print(f"this session: {counts}", highlight=False)
        return
    from tunesmith.collect.annotate_app import serve

    who = f"?annotator={annotator}" if annotator else ""
    out.print(f"labelling page: http://{host}:{port}/{who}  (Ctrl-C stops; every label is already saved)", highlight=False)
    serve(queue, host, port)


@annotate_app.command("export", epilog=EPILOG)
def annotate_export(
    task: Annotated[str, typer.Argument(metavar="TASK")],
    out_file: Annotated[Path, typer.Option("--out", "-o", callback=_home_expanded, help="JSONL or CSV file: text, label (human majority), n_annotations, agreement, provenance.")],
    db: DbOption = None,
) -> None:
    """Labelled items as a file that `data.sources` reads (ties are left out and counted)."""
    from tunesmith.collect.annotate_io import export_labelled

    done = export_labelled(_queue(db, task), out_file)
    out.print(f"{done.rows} labelled row(s) -> {done.path} ({done.ties} tie(s) left out, {done.unlabelled} not labelled yet)",
              highlight=False)


@annotate_app.command("import", epilog=EPILOG)
def annotate_import(
    task: Annotated[str, typer.Argument(metavar="TASK")],
    file: Annotated[Path, typer.Argument(metavar="FILE", help="A Label Studio JSON export, an Argilla export, or a CSV (text/id, label, annotator).")],
    fmt: Annotated[str, typer.Option("--format", help="label-studio, argilla or csv.")],
    annotator: Annotated[str | None, typer.Option("--annotator", help="CSV without an annotator column: whose labels these are.")] = None,
    question: Annotated[str | None, typer.Option("--question", help="The labelling question's name, when the export has several.")] = None,
    text_field: Annotated[str, typer.Option("--text-field")] = "text",
    db: DbOption = None,
) -> None:
    """Read labels given in another tool back into the task, one annotator per person (for agreement)."""
    from tunesmith.collect.annotate_interop import import_annotations

    r = import_annotations(_queue(db, task), file, fmt, annotator=annotator, question=question, text_field=text_field)
    out.print(f"imported: {json.dumps(r.__dict__, default=str)}", highlight=False, markup=False)


@annotate_app.command("labelstudio", epilog=EPILOG)
def annotate_labelstudio(
    task: Annotated[str, typer.Argument(metavar="TASK")],
    out_file: Annotated[Path, typer.Option("--out", "-o", callback=_home_expanded, help="Label Studio tasks JSON to write.")],
    db: DbOption = None,
) -> None:
    """The task's unlabelled items as Label Studio tasks, plus its labelling config (XML) beside them."""
    from tunesmith.collect.annotate_io import export_label_studio

    n, xml = export_label_studio(_queue(db, task), out_file)
    out.print(f"{n} task(s) -> {out_file}; labelling config: {xml}", highlight=False)


@annotate_app.command("report", epilog=EPILOG)
def annotate_report(
    task: Annotated[str, typer.Argument(metavar="TASK")],
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", callback=_home_expanded, help="Folder for report.md/html/json (default: annotation/<task>).")] = None,
    db: DbOption = None,
) -> None:
    """Progress, label distribution, per-annotator counts and agreement (Cohen's kappa for 2, Fleiss' for 3+)."""
    from tunesmith.collect.annotate_report import write_report

    folder = out_dir or Path("annotation") / task
    data = write_report(_queue(db, task), folder)
    agreement = data.get("agreement") or {}
    out.print(f"report: {folder / 'report.md'}; agreement: {json.dumps(agreement, default=str)}", highlight=False, markup=False)


# -- entry point ----------------------------------------------------------------------------------


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code (tests call this; `main` exits with it)."""
    _state["abort_hint"] = ""
    try:
        result = app(args=argv, prog_name="tunesmith", standalone_mode=False)
        code = result if isinstance(result, int) else 0
    except (click.exceptions.Exit, typer.Exit) as e:
        code = e.exit_code
    except (click.ClickException, typer.TyperException) as e:  # typer parses with its own copy of click
        e.show()
        return e.exit_code
    except (click.exceptions.Abort, typer.Abort, KeyboardInterrupt):
        code = 130
    except TunesmithError as e:
        if _state["debug"]:  # the traceback, and still the exit code scripts test (it was 1 for every error)
            import traceback

            traceback.print_exc()
        # soft_wrap: a long file:line: field message stays one line (rich would break it at 80 columns in a log)
        err.print(f"[red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True, markup=True)
        return e.exit_code
    except Exception as e:  # noqa: BLE001 - the one place that turns surprises into a message
        if _state["debug"]:
            raise
        lines = str(e).strip().splitlines() or [""]
        short = lines[0][:300] + (" ..." if len(lines) > 1 or len(lines[0]) > 300 else "")
        saved = _save_traceback(sys.argv[1:] if argv is None else argv)
        where = f"traceback in {saved}; " if saved else ""
        err.print(f"[red]internal error:[/] {type(e).__name__}: {escape(short)}\n"
                  f"({escape(where)}rerun with `tunesmith --debug ...` to see it here)", highlight=False, soft_wrap=True,
                  markup=True)
        return 1
    if code == 130:  # Ctrl-C: typer turns it into Exit(130) before it gets here, which had ended every command silently
        err.print(f"aborted{_state['abort_hint']}", highlight=False, soft_wrap=True, markup=False)
    return code


def _save_traceback(argv: list[str]) -> str | None:
    """The traceback being handled, written to a file: a failure an hour into a run is diagnosed without
    running it again with --debug, and the terminal gets a short message instead of a wall of frames."""
    import os
    import tempfile
    import traceback

    try:
        fd, path = tempfile.mkstemp(prefix="tunesmith-error-", suffix=".txt")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(f"tunesmith {__version__}: tunesmith {' '.join(argv)}\n\n")
            traceback.print_exc(file=f)
    except OSError:
        return None
    return path


def main() -> None:
    sys.exit(run())
