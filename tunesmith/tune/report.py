"""The report of a study: report.md, report.html (standalone, pictures inlined), report.json (the same for
programs) and figures/*.png, all read from the study's storage, so any worker's report shows the whole study.

Figures are Optuna's own (optuna.visualization.matplotlib): optimisation history, validation curves
(what the pruner saw), parameter importances, parallel coordinates, and the Pareto front of a
multi-objective study. Then a table of every trial: state, values, validation metric, time, where a
pruned trial stopped and the validation value it last reported (objective values are complete trials' only).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tunesmith.html_report import markdown_table, markdown_to_html

DPI = 110  # as the other reports


def _num(v: Any) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"
    return str(v)


def _params(trial: FrozenTrial) -> str:
    return ", ".join(f"{k.split('.')[-1]}={_num(v)}" for k, v in trial.params.items())


def _figure(name: str, folder: Path, draw: Callable[[], Any], notes: list[str]) -> str | None:
    """Draw one Optuna figure into figures/<name>.png; a figure the study cannot have yet becomes a note."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window (the CLI may run where a display exists)
    import matplotlib.pyplot as plt

    path = folder / "figures" / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # parse_math off: a categorical choice such as "models/$x^{$" is text, not a formula; matplotlib parses
        # mathtext only when it lays out and saves, so those stay inside the try: a failure is a note, the
        # report is still written
        with warnings.catch_warnings(), matplotlib.rc_context({"text.parse_math": False}):
            warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
            axes = draw()
            figure = axes.ravel()[0].figure if hasattr(axes, "ravel") else axes.figure
            figure.set_size_inches(9, 5)
            figure.tight_layout()
            figure.savefig(path, dpi=DPI)
    except (ValueError, RuntimeError, ZeroDivisionError, IndexError) as err:
        notes.append(f"{name}: not drawn ({err})")
        return None
    finally:
        plt.close("all")
    return f"figures/{name}.png"


def _importances(study: optuna.Study, target: Callable[[FrozenTrial], float] | None,
                 metric: str) -> tuple[dict[str, float], str | None]:
    """Parameter importances, or why there are none (a note for the report)."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        return {}, "parameter importances need at least two complete trials"
    values = {(target or (lambda t: t.value))(t) for t in complete}
    if len(values) < 2:
        # Nothing to explain: Optuna then gives every parameter the same share, which read as measured.
        return {}, (f"parameter importances not measured: every complete trial has the same validation {metric} "
                    f"({_num(next(iter(values)))}), so no parameter explains a difference")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found = {k: float(v) for k, v in optuna.importance.get_param_importances(study, target=target).items()}
    except (ValueError, RuntimeError):  # no parameter varied across the complete trials
        found = {}
    return found, None if found else "parameter importances need at least two complete trials whose parameters differ"


def _objective_values(trial: FrozenTrial) -> list[float] | None:
    """A complete trial's objective values. Optuna gives a pruned trial its last reported curve value (the negated
    validation loss by default), which the report had shown as its F1."""
    return trial.values if trial.state == TrialState.COMPLETE else None


def _last_reported(trial: FrozenTrial) -> dict[str, Any] | None:
    """Where a pruned trial stopped: the last validation value it reported to the pruner, un-negated, and what it is."""
    if trial.state != TrialState.PRUNED or not trial.intermediate_values:
        return None
    evaluation = max(trial.intermediate_values)
    value = trial.intermediate_values[evaluation]
    signal = trial.user_attrs.get("pruning_signal", "")
    if signal.startswith("-"):  # reported negated so that higher is better
        signal, value = signal[1:], -value
    return {"metric": signal or None, "value": value, "evaluation": evaluation, "step": trial.user_attrs.get("steps")}


def _trial_row(trial: FrozenTrial, names: list[str]) -> dict[str, Any]:
    attrs = trial.user_attrs
    values = _objective_values(trial)
    return {
        "number": trial.number, "state": trial.state.name.lower(), "params": trial.params,
        "values": dict(zip(names, values, strict=False)) if values else None, "last_reported": _last_reported(trial),
        "duration_s": round(trial.duration.total_seconds(), 1) if trial.duration else None,
        "steps": attrs.get("steps"), "evaluations": attrs.get("evaluations"),
        "intermediate": {str(k): v for k, v in sorted(trial.intermediate_values.items())},
        "pruning_signal": attrs.get("pruning_signal"),
        "run": attrs.get("run_dir"), "host": attrs.get("host"), "surplus": bool(attrs.get("surplus")),
        "objectives": attrs.get("objectives"), "fail_reason": attrs.get("fail_reason"),
    }


def write_report(study: optuna.Study, folder: Path, names: list[str], best: int | None,
                 test: dict[str, Any] | None) -> Path:
    """Write folder/report.md, report.html, report.json and figures/*.png; returns report.html."""
    folder = Path(folder)
    multi = len(names) > 1
    metric = names[0]
    target = (lambda t: t.values[0]) if multi else None
    target_kw: dict[str, Any] = {"target": target, "target_name": metric} if multi else {"target_name": metric}
    trials = [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("surplus")]
    counts = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    notes: list[str] = []
    vis = optuna.visualization.matplotlib
    figures: dict[str, str | None] = {
        "history": _figure("history", folder, lambda: vis.plot_optimization_history(study, **target_kw), notes),
    }
    if not multi and any(t.intermediate_values for t in trials):
        def curves() -> Any:
            axes = vis.plot_intermediate_values(study)
            axes.set_xlabel("evaluation (step reported to the pruner)")
            signal = next((t.user_attrs["pruning_signal"] for t in trials if "pruning_signal" in t.user_attrs), metric)
            axes.set_ylabel(f"validation {signal[1:]}, negated (higher is better)" if signal.startswith("-")
                            else f"validation {signal}")
            return axes

        figures["curves"] = _figure("curves", folder, curves, notes)
    importances, why_not = _importances(study, target, metric)
    if importances:
        figures["importances"] = _figure("importances", folder, lambda: vis.plot_param_importances(study, **target_kw), notes)
    else:
        notes.append(str(why_not))
    figures["parallel"] = _figure("parallel", folder, lambda: vis.plot_parallel_coordinate(study, **target_kw), notes)
    if multi:
        shown = names[:3]  # Optuna draws fronts in two or three dimensions
        figures["pareto"] = _figure("pareto", folder, lambda: vis.plot_pareto_front(
            study, target_names=shown, targets=lambda t: tuple(t.values[: len(shown)])), notes)
    pareto = sorted(t.number for t in study.best_trials) if multi and counts["complete"] else []

    summary = {
        "study": study.study_name, "objectives": names,
        "directions": [d.name.lower() for d in study.directions],
        "counts": {k: v for k, v in counts.items() if v}, "best": best, "test": test, "pareto": pareto,
        "importances": importances, "figures": {k: v for k, v in figures.items() if v}, "notes": notes,
        "trials": [_trial_row(t, names) for t in trials],
    }
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")

    direction = summary["directions"][0]
    md = [f"# Tuning report: study `{study.study_name}`", "",
          f"Objective: validation **{metric}** ({direction})"
          + (f", with {', '.join(names[1:])} (minimised): a Pareto front" if multi else "") + ". "
          + f"Trials: {len(trials)} ({', '.join(f'{v} {k}' for k, v in summary['counts'].items()) or 'none'}).", ""]
    by_number = {t.number: t for t in trials}
    if best is not None and best in by_number:
        t = by_number[best]
        md += ["## Best trial", "", f"Trial {best}: {metric} {_num(t.values[0])} on validation; {_params(t)}.",
               "", "`best.yaml` in this folder is its full config: `tunesmith train best.yaml` trains it again.", ""]
        if test and test.get("metrics"):
            shown_test = {k: v for k, v in test["metrics"].items() if isinstance(v, int | float)}
            md += ["Test split, evaluated once on this trial only:", "",
                   markdown_table(["metric", "test"], [[k, _num(float(v))] for k, v in shown_test.items()]), ""]
    else:
        md += ["No trial completed yet.", ""]
    if pareto:
        md += ["## Pareto front", "", "Trials no other trial beats on every objective (configs in `pareto/`).", "",
               markdown_table(["trial", *names, "parameters"],
                              [[n, *(_num(v) for v in by_number[n].values), _params(by_number[n])]
                               for n in pareto if n in by_number]), ""]
        if figures.get("pareto"):
            md += [f"![Pareto front]({figures['pareto']})", ""]
    captions = {"history": "Optimisation history", "curves": "Validation curves (what the pruner compared)",
                "importances": "Parameter importances", "parallel": "Parallel coordinates"}
    for key, caption in captions.items():
        if figures.get(key):
            md += [f"## {caption}", "", f"![{caption}]({figures[key]})", ""]
            if key == "importances":
                md += [markdown_table(["parameter", "importance"], [[k, f"{v:.3f}"] for k, v in importances.items()]), ""]
    rows = []
    for t in trials:
        stopped = ""
        if t.state == TrialState.PRUNED:
            stopped = f"evaluation {t.user_attrs.get('evaluations', '?')} (step {t.user_attrs.get('steps', '?')})"
            if (last := _last_reported(t)) and last["metric"]:
                stopped += f": validation {last['metric']} {_num(last['value'])}"
        elif t.state == TrialState.FAIL:
            stopped = t.user_attrs.get("fail_reason", "")
        values = ", ".join(_num(v) for v in _objective_values(t) or []) or "—"
        rows.append([t.number, t.state.name.lower(), _params(t), values,
                     _num(round(t.duration.total_seconds(), 1)) if t.duration else "—",
                     _num(t.user_attrs.get("steps")), stopped])
    md += ["## Trials", "", markdown_table(["trial", "state", "parameters", " / ".join(names), "seconds", "steps",
                                            "pruned at (or why it failed)"], rows), ""]
    if notes:
        md += ["## Notes", "", *(f"- {n}" for n in notes), ""]
    text = "\n".join(md)
    (folder / "report.md").write_text(text, encoding="utf-8")
    page = folder / "report.html"
    page.write_text(markdown_to_html(text, folder, f"Tuning report: {study.study_name}"), encoding="utf-8")
    return page
