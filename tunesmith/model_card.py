"""The model card (README.md in a run folder): what the model does, on what data, how well."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunesmith.artifacts import RUN_DATASET, DatasetVersion, Run
from tunesmith.errors import DataError
from tunesmith.html_report import HEADLINE, OPTIONAL, markdown_text


def write_model_card(run_dir: Path) -> Path:
    run_dir = run_dir.resolve()  # the card's commands must work from anywhere, not only where the last command ran
    run = Run(run_dir)
    m = run.manifest
    cfg = run.config
    info_path = run_dir / "export.json"  # an export's: where it came from, and what it changed
    exported = json.loads(info_path.read_text(encoding="utf-8")) if info_path.is_file() else {}
    # user text stays text: a label "<b>x</b>" or a description line "# y" made no markup
    described = "\n".join(f"> {markdown_text(line)}" for line in (m.description or "").splitlines())
    lines = [f"# {markdown_text(m.name)}", "", described or "_No task description given (task.description)._", "",
             *_intended_use(m.task), "## Model", "",
             f"- Task: {m.task}" + (f", labels: {', '.join(map(markdown_text, m.labels))}" if m.labels else ""),
             f"- Base model: {m.base_model}", f"- Method: {m.method} ({m.parameters['trainable']:,} of "
             f"{m.parameters['total']:,} parameters trained)",
             f"- Max length: {m.max_length} tokens",
             f"- Trained by tunesmith {m.tunesmith_version} on {m.created_at} in {m.train_runtime_s:.0f} s "
             f"({m.processes} process{'es' * (m.processes > 1)})", ""]
    if m.target_scaling:
        lines += [f"- Target standardised with mean {m.target_scaling['mean']:.4g}, std {m.target_scaling['std']:.4g}; "
                  "predictions are in the original units", ""]
    lines += ["## Data", "", f"- Dataset: `{m.dataset}`", f"- Fingerprint: `{m.dataset_fingerprint}`"]
    counts, missing = _trained_counts(run_dir, m.dataset, m.dataset_fingerprint)
    lines.append(f"- Rows: {counts['train']} train / {counts['validation']} validation / {counts['test']} test"
                 if counts else missing)
    t, hp = cfg.train, m.hyperparameters
    kept = "best checkpoint" if t.keep == "best" else "last weights, train.keep: last"  # whose numbers run.json holds
    lines += ["", "## Training", "", f"- Learning rate {hp.get('learning_rate', '?')}, " + _schedule(hp, t.max_steps)
              + f", batch {hp.get('batch_size', '?')}" + (f" x {m.processes} processes" if m.processes > 1 else "")
              + f" x grad_accum {t.grad_accum}, weight decay {t.weight_decay}, warmup {t.warmup_ratio}, seed {t.seed}",
              *([f"- Numerics: {hp['precision']}" + ("; matrix products in bfloat16, weights kept and saved in fp32"
                                                     if hp["precision"] != "fp32" else "")
                 + (f"; token embeddings {hp['token_embeddings']}" if hp.get("token_embeddings") else "")
                 + (f"; attention dropout {hp['attention_dropout']:g}" if hp.get("attention_dropout") is not None else "")
                 + (f"; hidden dropout {hp['hidden_dropout']:g}" if hp.get("hidden_dropout") is not None else "")]
                if hp.get("precision") else []),
              *_export_numerics(exported),
              *([f"- OpenAI hyperparameters: {m.openai_hyperparameters}"] if m.openai_hyperparameters else []),
              "", "## Results", "", f"Validation ({kept}"
              + (f", {counts['validation']} examples" if "validation" in counts else "") + "): "
              + ", ".join(f"{k} {v:.4f}" for k, v in m.metrics.items() if k not in ("runtime", "samples_per_second", "steps_per_second", "epoch")),
              ""]
    reports = sorted((run_dir / "eval").glob("*/report.json"))
    own = False
    for report in reports:
        r = json.loads(report.read_text(encoding="utf-8"))
        numbers = {k: v for k, v in r["metrics"].items() if isinstance(v, int | float) and not isinstance(v, bool) and k != "n"}
        main = _headline_first(r.get("task"), numbers)[:8]
        # another dataset's scores say so: they read as the run's own test results
        other = "" if r.get("dataset_fingerprint", m.dataset_fingerprint) == m.dataset_fingerprint else f" on {r.get('dataset')}"
        # only the run's own test split is held out: validation picked the checkpoint, so it does not count
        own = own or (r["split"] == "test" and not other)
        lines.append(f"{r['split'].capitalize()}{other} ({r['n']} examples): " + ", ".join(f"{k} {v:.4f}" for k, v in main))
        lines.append("")
    if not own:  # validation picked the checkpoint, so only a held-out split's scores are unbiased
        lines += [f"_Not scored on the held-out test split yet: `tunesmith evaluate {run_dir}`._", ""]
    lines += ["## Use", "", "```bash", f"tunesmith evaluate {run_dir}", "```", ""]
    lines += _export_section(exported)
    path = run_dir / "README.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _trained_counts(run_dir: Path, dataset: str, fingerprint: str) -> tuple[dict[str, int], str]:
    """The split row counts the run trained on, or ({}, why they are unknown). dataset.json records them at the start;
    an older run's are the dataset folder's only while it holds the same data (prepared again, it counts other rows)."""
    try:
        started = json.loads((run_dir / RUN_DATASET).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        started = None
    if isinstance(started, dict) and started.get("fingerprint") == fingerprint and isinstance(started.get("counts"), dict):
        return started["counts"], ""
    try:
        now = DatasetVersion(dataset).manifest
    except DataError:
        return {}, "- (dataset folder no longer available)"
    if now.fingerprint != fingerprint:
        return {}, (f"- Rows: not known (the dataset folder was prepared again since; it now has fingerprint "
                    f"`{now.fingerprint[:12]}`)")
    return now.counts, ""


def _schedule(hp: dict[str, Any], max_steps: int | None) -> str:
    """The epochs and steps trained, as run.json records them (train.max_steps overrides the epochs configured);
    an older run recorded the configured epochs only."""
    if "epochs_trained" in hp:
        return f"{hp['epochs_trained']} epochs, {hp.get('steps', '?')} steps" + (
            f" (train.max_steps {max_steps})" if max_steps else "")
    return f"{hp.get('epochs', '?')} epochs" + (f" (max {max_steps} steps)" if max_steps else "")


def _headline_first(task: str | None, numbers: dict[str, float]) -> list[tuple[str, float]]:
    """The evaluation report's headline metrics for the task first (then its optional ones, then the rest in the
    report's order): the card shows only a few, and dict order put precision_micro before f1_weighted."""
    first = [k for k in (*HEADLINE.get(task or "", []), *OPTIONAL.get(task or "", [])) if k in numbers]
    return [(k, numbers[k]) for k in first] + [(k, v) for k, v in numbers.items() if k not in first]


_PURPOSE = {
    "single_label_classification": "assigning one label to a text",
    "multi_label_classification": "assigning any number of labels to a text",
    "regression": "predicting a score for a text",
    "chat": "answering in conversations",
    "preference": "answering in conversations, steered towards the preferred answers (DPO)",
}


def _intended_use(task: str) -> list[str]:
    """What the model is for, and where its scores say nothing: a card must state both."""
    return ["## Intended use", "",
            f"- Made for {_PURPOSE.get(task, task)}, on inputs like its training data (the same sources, language and kind of text).",
            "- Out of scope: other kinds of input. The scores below hold for data like the test split only: "
            "score your own data with `tunesmith evaluate RUN --dataset DATASET` before relying on it.",
            ""]


def _export_section(info: dict[str, Any]) -> list[str]:
    """Where an export came from, from its export.json: written with the card each time (an evaluation of the export
    rewrote the card, and the section appended once was lost)."""
    if not info.get("format"):
        return []
    return ["## Export", "", f"Exported as `{info['format']}` from `{info.get('source_run')}` by tunesmith "
            f"{info.get('tunesmith_version')}; the self-check is in `export.json`.", ""]


def _export_numerics(info: dict[str, Any]) -> list[str]:
    """An export that changed the arithmetic (int8 weights): the card must say so, and that the
    validation figures are the source run's (`info`: its export.json)."""
    if not info.get("quantization"):
        return []
    return [f"- Exported as {info.get('format')}: weights quantised, {info['quantization']}; the validation figures "
            "below are the source run's (before quantisation); its self-check is in export.json"]
