"""The study report (report.py) on studies built directly in Optuna: no training needed."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from tunesmith.tune.report import write_report


def _study(values: list[float]) -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    space = {"train.learning_rate": FloatDistribution(1e-4, 1e-2), "train.method": CategoricalDistribution(["full", "lora"])}
    for i, value in enumerate(values):
        study.add_trial(create_trial(state=TrialState.COMPLETE, distributions=space, value=value,
                                     params={"train.learning_rate": 1e-4 * (i + 1), "train.method": ["full", "lora"][i % 2]}))
    return study


def test_importances_are_left_out_when_every_complete_trial_ties(tmp_path: Path) -> None:
    """All complete trials at one F1 (a majority-class model each): Optuna shares importance out equally, with a
    warning the report hid, and the report showed 0.5 / 0.5 as if measured."""
    write_report(_study([0.5, 0.5, 0.5]), tmp_path, ["f1_macro"], 0, None)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["importances"] == {} and "importances" not in report["figures"]
    assert not (tmp_path / "figures" / "importances.png").exists()
    assert any("every complete trial has the same validation f1_macro (0.5)" in n for n in report["notes"])
    md = (tmp_path / "report.md").read_text()
    assert "## Parameter importances" not in md and "no parameter explains a difference" in md


def test_importances_are_measured_when_the_values_differ(tmp_path: Path) -> None:
    write_report(_study([0.5, 0.7, 0.6, 0.9]), tmp_path, ["f1_macro"], 3, None)
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report["importances"]) == {"train.learning_rate", "train.method"}
    assert report["figures"]["importances"] == "figures/importances.png"
    assert "## Parameter importances" in (tmp_path / "report.md").read_text()


def test_a_choice_that_reads_as_a_formula_is_drawn_as_text(tmp_path: Path) -> None:
    """A categorical choice "models/$x^{$" is invalid mathtext; matplotlib parsed it at savefig, outside the figure's
    try, so write_report raised and the study ended without a report."""
    study = optuna.create_study(direction="maximize")
    space = {"train.learning_rate": FloatDistribution(1e-4, 1e-2), "model.name": CategoricalDistribution(["models/$x^{$", "plain"])}
    for i, value in enumerate([0.5, 0.7, 0.6, 0.9]):
        study.add_trial(create_trial(state=TrialState.COMPLETE, distributions=space, value=value,
                                     params={"train.learning_rate": 1e-4 * (i + 1), "model.name": space["model.name"].choices[i % 2]}))
    write_report(study, tmp_path, ["f1_macro"], 3, None)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["figures"] and all((tmp_path / path).is_file() for path in report["figures"].values())
    assert not any("not drawn" in note for note in report["notes"])
