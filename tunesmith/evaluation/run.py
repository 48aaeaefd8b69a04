"""`tunesmith evaluate` and `tunesmith compare`: a run folder + a dataset split -> metrics, pictures,
baselines and a report in `<run>/eval/<split>/` (another dataset's: `<run>/eval/<split>-<dataset>-<fingerprint>/`).

Every number is computed on the held-out split (test by default). Classifiers and regressors
(sequence.py) are scored next to a majority (or mean) baseline and a TF-IDF + linear model trained on
the same training split; chat and preference runs (chat.py) next to their untuned base model; so
the report says what fine-tuning bought. Every report also shows the run's learning curve, drawn from
its training log.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunesmith.artifacts import RUN_TRAINED_ROWS, TRAINING_LOG, DatasetVersion, Run
from tunesmith.config import GENERATIVE_TASKS, SPLITS, TaskType
from tunesmith.errors import ConfigError, DataError
from tunesmith.evaluation.report import complete, write_comparison, write_report


def evaluate_run(run_dir: str | Path, dataset_dir: str | Path | None = None, split: str | None = None,
                 baselines: bool | None = None, base_model: bool | None = None) -> dict[str, Any]:
    from tunesmith.model_card import write_model_card

    run = Run(run_dir)
    m = run.manifest
    cfg = run.config
    task = TaskType(m.task)
    split = split or cfg.eval.split
    if split not in SPLITS:
        raise ConfigError(f"unknown split '{split}'; choose from {list(SPLITS)}")
    version = DatasetVersion(dataset_dir or m.dataset)
    notes: list[str] = []
    if version.manifest.task != m.task:
        raise DataError(f"{version.path}: a {version.manifest.task} dataset cannot evaluate a {m.task} run")
    table = None
    if version.manifest.fingerprint != m.dataset_fingerprint:
        notes.append(f"evaluated on dataset {version.path} (fingerprint {version.manifest.fingerprint[:12]}), "
                     f"not the one the run trained on ({m.dataset_fingerprint[:12]})")
        table = unseen_rows(run, version, split, notes)
    folder = report_folder(run, version, split)
    if task in GENERATIVE_TASKS:
        from tunesmith.evaluation.chat import evaluate_chat

        with_base = cfg.eval.base_model is not False if base_model is None else base_model
        result = evaluate_chat(run, version, split, notes, base_model=with_base, table=table)
    else:
        from tunesmith.evaluation.sequence import evaluate_sequence

        result = evaluate_sequence(run, version, split, notes, cfg.eval.baselines if baselines is None else baselines,
                                   bool(cfg.eval.base_model) if base_model is None else base_model, folder, table=table)
    _add_learning_curve(run, folder, result)
    write_report(folder, result)
    write_model_card(run.path)
    result["report_dir"] = str(folder)
    return result


def unseen_rows(run: Run, version: DatasetVersion, split: str, notes: list[str]) -> Any:
    """The split without the rows this run trained on (their keys are in its RUN_TRAINED_ROWS): a dataset prepared
    again (rows added) draws its splits anew, and its test split held rows of the run's training split."""
    from tunesmith.training.run import row_keys

    table = version.table(split)
    path = run.path / RUN_TRAINED_ROWS
    if not path.is_file():  # a run from before the file, or its export: scored as before
        notes.append(f"{run.path} has no {RUN_TRAINED_ROWS} (made before runs recorded it): whether these rows were in "
                     "its training data could not be checked")
        return table
    try:
        trained = set(json.loads(path.read_text(encoding="utf-8"))["keys"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"{path}: unreadable ({err}); it lists the rows this run trained on") from None
    keep = [key not in trained for key in row_keys(table)]
    left_out = keep.count(False)
    if left_out == len(keep) and keep:
        raise DataError(f"{version.path}: all {len(keep)} rows of split '{split}' were in the training data of run "
                        f"{run.path}: scores on them say nothing of unseen data; evaluate on a dataset with new rows")
    if left_out:
        notes.append(f"{left_out} of {len(keep)} {split} rows were in this run's training data and are left out")
        table = table.filter(keep)
    return table


def report_folder(run: Run, version: DatasetVersion, split: str) -> Path:
    """eval/<split> for the run's own dataset; another dataset's scores go beside it (eval/<split>-<dataset>-<fingerprint>),
    as `evaluate --dataset OTHER` overwrote the held-out report and the model card showed OTHER's scores as the run's."""
    if version.manifest.fingerprint == run.manifest.dataset_fingerprint:
        return run.path / "eval" / split
    return run.path / "eval" / f"{split}-{version.path.resolve().name}-{version.manifest.fingerprint[:8]}"


def _add_learning_curve(run: Run, folder: Path, result: dict[str, Any]) -> None:
    """Draw learning_curve.png from the run's training log and list it first among the figures:
    people look at curves before they read tables. A run without a log (an export that dropped it)
    simply gets no curve."""
    from tunesmith.evaluation import plots

    path = folder / "learning_curve.png"
    log = run.path / TRAINING_LOG
    entries = []
    if log.is_file():
        for line in log.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:  # a half-written last line (a killed run) must not cost the report
                continue
            if isinstance(entry, dict):
                entries.append(entry)
    metric, best = next(iter(run.manifest.best_metric.items()), ("loss", None))
    if plots.learning_curve_png(entries, metric, path, best=best) is None:
        path.unlink(missing_ok=True)  # no stale curve from an earlier evaluation next to this report
        return
    result["figures"] = {"learning curve": path.name, **(result.get("figures") or {})}


def compare_runs(a: str | Path, b: str | Path, split: str = "test", out: str | Path | None = None) -> Path:
    reports = []
    for run_dir in (a, b):
        path = Path(run_dir) / "eval" / split / "report.json"
        if not path.exists():
            raise DataError(f"{run_dir}: no evaluation on '{split}' yet; run `tunesmith evaluate {run_dir} --split {split}`")
        try:
            report = json.loads(path.read_text(encoding="utf-8"))
            complete(report)
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError, TypeError) as err:
            raise DataError(f"{path}: not a complete evaluation report ({err}); run `tunesmith evaluate {run_dir} "
                            f"--split {split}` again") from None
        reports.append(report)
    if reports[0]["task"] != reports[1]["task"]:
        raise DataError(f"{a} is a {reports[0]['task']} run and {b} a {reports[1]['task']} one: their metrics do not "
                        "compare; compare runs of one task")
    folder = Path(out) if out else Path(a) / "eval" / f"compare-{Path(b).name}"
    write_comparison(folder, reports[0], reports[1])
    return folder
