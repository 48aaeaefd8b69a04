"""The evaluation report of one run on one dataset split, and the comparison of two.

write_report(folder, result) writes report.json (for programs: `result` as given, defaults filled),
report.md and report.html (for people; every picture embedded, so the one file can be mailed).
The pictures themselves are drawn beforehand with `plots` and listed in result["figures"].

The result dict (what an evaluation produces; compare_reports reads two of them back):

    run                  str   run name or folder
    model                str   base model name the run fine-tuned
    method               str   how it was tuned: "full", "lora", "qlora", ...
    task                 str   single_label_classification | multi_label_classification | regression
    dataset              str   dataset name
    dataset_fingerprint  str   the dataset version's fingerprint (manifest.json)
    split                str   "test", "validation", ...
    n                    int   examples evaluated
    metrics              dict  the tuned model's metrics: metrics.classification_metrics,
                               multilabel_metrics or regression_metrics output
    baselines            dict  {name: metrics dict} of the same shape, e.g. majority, tfidf_logreg
    base_model           dict | None   metrics of the untuned base model, when measured
    figures              dict  {name: PNG path relative to the report folder}
    confusion_text       str | None    metrics.confusion_text output (classification)
    mistakes             list  metrics.most_confident_mistakes or largest_errors output
    notes                list[str]     anything a reader must know (truncation, skipped metrics...)
    samples              list  chat: {prompt, reference, tuned, base?} answers shown side by side

Only the first nine are required; the others default to empty.
"""

from __future__ import annotations

import html
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from tunesmith.config import LOWER_IS_BETTER as CHECKPOINT_LOWER_IS_BETTER
from tunesmith.html_report import HEADLINE, OPTIONAL, markdown_table, markdown_text, markdown_to_html

REQUIRED = ("run", "model", "method", "task", "dataset", "dataset_fingerprint", "split", "n", "metrics")
DEFAULTS: dict[str, Any] = {"baselines": {}, "base_model": None, "figures": {}, "confusion_text": None,
                            "mistakes": [], "notes": [], "samples": []}
# Training's checkpoint metrics (config.py) plus the evaluation-only ones; comparisons judge every shared
# number, so chat's answers left unparsed and its generation time belong here too.
LOWER_IS_BETTER = {*CHECKPOINT_LOWER_IS_BETTER, "mse", "log_loss", "hamming_loss", "perplexity", "full_valid_loss",
                   "full_valid_perplexity", "answer_unparsed", "seconds"}
# Neither direction is better: a longer answer is not a better one, and an answer that never stops is the longest
# (compare shows no winner and the name no arrow; "stopped" says whether answers end).
NEUTRAL = {"answer_tokens"}
NAMES = {"accuracy": "accuracy", "subset_accuracy": "subset accuracy", "hamming_loss": "Hamming loss",
         "log_loss": "log loss", "roc_auc": "ROC-AUC", "roc_auc_macro": "ROC-AUC (macro)", "mae": "MAE",
         "mse": "MSE", "rmse": "RMSE", "r2": "R²", "pearson": "Pearson", "spearman": "Spearman",
         "perplexity": "perplexity", "mean_token_accuracy": "mean token accuracy",
         "rouge_l": "ROUGE-L", "token_f1": "token F1", "exact_match": "exact match", "stopped": "answers that stop",
         "answer_accuracy": "answer accuracy", "preference_accuracy": "prefers chosen",
         "logp_margin": "log-prob per token, chosen − rejected", "reward_accuracy": "DPO reward accuracy",
         "answer_unparsed": "answers with no label found", "answer_tokens": "answer length (tokens)",
         "seconds": "evaluation time (s)", "f1_samples": "F1 per example", "full_valid_loss": "full validation loss",
         "full_valid_perplexity": "full validation perplexity",
         "full_valid_mean_token_accuracy": "full validation token accuracy"}


# -- helpers ------------------------------------------------------------------------------------


def complete(result: dict[str, Any]) -> dict[str, Any]:
    """The result with its optional keys defaulted; ValueError or TypeError when it is not an evaluation result."""
    missing = [key for key in REQUIRED if key not in result]
    if missing:
        raise ValueError(f"evaluation result is missing {missing} (see tunesmith.evaluation.report for the schema)")
    if not isinstance(result["metrics"], dict):
        raise TypeError(f"result['metrics'] must be a metrics dict, got {type(result['metrics']).__name__}")
    return {**DEFAULTS, **{k: v for k, v in result.items() if v is not None or k not in DEFAULTS}}


def metric_name(metric: str) -> str:
    """Reader's name with the good direction: 'macro F1 ↑', 'RMSE ↓'; none for a NEUTRAL one."""
    if metric in NAMES:
        name = NAMES[metric]
    else:
        score, _, average = metric.partition("_")
        name = f"{average} {'F1' if score == 'f1' else score}" if average else metric
    return name if metric in NEUTRAL else f"{name} {'↓' if metric in LOWER_IS_BETTER else '↑'}"


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float | np.number) and not isinstance(value, bool) else None


def _fmt(value: Any) -> str:
    number = _number(value)
    if number is None:
        return "–"
    return str(int(number)) if isinstance(value, int | np.integer) else f"{number:.4f}"


def _same(a: float, b: float) -> bool:
    """Equal but for float noise: an ONNX export's log loss was 3e-9 from its run's, and compare named a winner."""
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)


def _better(metric: str, a: float, b: float) -> bool:
    """Whether b is better than a on this metric (never, on a NEUTRAL one, nor within float noise)."""
    if metric in NEUTRAL or _same(a, b):
        return False
    return b < a if metric in LOWER_IS_BETTER else b > a


def _metric_keys(task: str, *metrics: dict[str, Any]) -> list[str]:
    keys = list(HEADLINE.get(task, []))
    keys += [k for k in OPTIONAL.get(task, []) if any(_number(m.get(k)) is not None for m in metrics)]
    if not keys:  # a task without a headline (e.g. chat): every number the tuned model has
        keys = sorted(k for k, v in metrics[0].items() if _number(v) is not None and k != "n")
    return keys


def _esc(text: Any) -> str:
    """Text from the data goes into Markdown that becomes HTML: keep it text (HTML and Markdown punctuation alike:
    a note quoting a label "[x](https://evil.example)" is no live link)."""
    return markdown_text(text)


def _code(text: Any) -> str:
    """Text for a `code span`, where backslash escapes show as written: HTML escaped, backticks and line breaks
    (which would close the span or the line) dropped."""
    return re.sub(r"[`\r\n]", " ", html.escape(str(text), quote=False))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    return str(value)


def _write(folder: Path, stem: str, data: dict[str, Any], md: str, title: str) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / f"{stem}.json", "md": folder / f"{stem}.md", "html": folder / f"{stem}.html"}
    paths["json"].write_text(json.dumps(data, indent=2, ensure_ascii=False, default=_json_default) + "\n", encoding="utf-8")
    paths["md"].write_text(md, encoding="utf-8")
    paths["html"].write_text(markdown_to_html(md, folder, title), encoding="utf-8")
    return paths


# -- one evaluation -----------------------------------------------------------------------------


def _headline(r: dict[str, Any]) -> str:
    columns: list[tuple[str, dict[str, Any]]] = [("tuned model", r["metrics"])]
    columns += [(f"baseline: {name}", m) for name, m in r["baselines"].items()]
    if r["base_model"]:
        columns.append(("base model (untuned)", r["base_model"]))
    rows = []
    reference = r["baselines"] or ({"base model": r["base_model"]} if r["base_model"] else {})
    for key in _metric_keys(r["task"], r["metrics"]):
        delta = "–"
        tuned = _number(r["metrics"].get(key))
        scored = [(name, v) for name, m in reference.items() if (v := _number(m.get(key))) is not None]
        if tuned is not None and scored:
            best_name, best = scored[0]
            for name, v in scored[1:]:
                if _better(key, best, v):
                    best_name, best = name, v
            delta = f"{tuned - best:+.4f} vs {best_name}"
        rows.append([metric_name(key), *(_fmt(m.get(key)) for _, m in columns), delta])
    against = "Δ vs best baseline" if r["baselines"] else "Δ vs base model"
    return markdown_table(["metric", *(c for c, _ in columns), against], rows)


def _mistakes(mistakes: list[dict[str, Any]]) -> list[str]:
    if not mistakes:
        return []
    # the example's id (file:line) where the evaluation has it: a row number alone cannot be found in the source
    ids = any("id" in m for m in mistakes)
    where = ["row", *(["id"] if ids else [])]

    def at(m: dict[str, Any]) -> list[Any]:
        return [m.get("index", ""), *([m.get("id", "")] if ids else [])]

    if "confidence" in mistakes[0]:
        return ["## Most confident mistakes", "", markdown_table(
            [*where, "true", "predicted", "confidence", "text"],
            [[*at(m), m["true"], m["predicted"], _fmt(m["confidence"]), m["text"]] for m in mistakes]), ""]
    return ["## Largest errors", "", markdown_table(
        [*where, "true", "predicted", "error", "text"],
        [[*at(m), _fmt(m["true"]), _fmt(m["predicted"]), _fmt(m["error"]), m["text"]] for m in mistakes]), ""]


def markdown(result: dict[str, Any]) -> str:
    """The report as Markdown (what report.md holds)."""
    r = complete(result)
    md = [f"# Evaluation: {_esc(r['run'])}", "",
          f"- **Model**: {_esc(r['model'])}, tuned with `{_code(r['method'])}`",
          f"- **Task**: {_esc(r['task'])}",
          (f"- **Data**: {_esc(r['dataset'])}, split `{_code(r['split'])}`, {r['n']} examples "
           f"(fingerprint `{_code(str(r['dataset_fingerprint'])[:16])}`)"), "",
          "## Headline", "", _headline(r), ""]
    if not r["baselines"] and not r["base_model"]:
        md += ["_No baselines were run: the numbers above have nothing to be compared with._", ""]
    if r["figures"]:  # the learning curve first: people look at curves before they read tables
        md += ["## Figures", ""] + [f"![{_esc(name)}]({path})\n" for name, path in r["figures"].items()]
    per_class = r["metrics"].get("per_class")
    if per_class:
        md += ["## Per class", "", markdown_table(
            ["label", "precision", "recall", "F1", "support"],
            [[label, _fmt(c["precision"]), _fmt(c["recall"]), _fmt(c["f1"]), c["support"]] for label, c in per_class.items()]), ""]
    if r["confusion_text"]:
        md += ["## Confusion matrix", "", "Rows are the true labels, columns the predicted ones.", "",
               "```text", r["confusion_text"], "```", ""]
    md += _mistakes(r["mistakes"])
    if r["samples"]:
        with_base = "base" in r["samples"][0]
        md += ["## Answers side by side", "", markdown_table(
            ["prompt", "reference", *(["base model"] if with_base else []), "tuned model"],
            [[s["prompt"], s["reference"], *([s["base"]] if with_base else []), s["tuned"]] for s in r["samples"]]), ""]
    notes = [*r["notes"], *([r["metrics"]["roc_auc_note"]] if r["metrics"].get("roc_auc_note") else [])]
    if notes:
        md += ["## Notes", ""] + [f"- {_esc(note)}" for note in notes] + [""]
    return "\n".join(md)


def write_report(folder: Path, result: dict[str, Any]) -> dict[str, Path]:
    """Write report.json, report.md and report.html into `folder`; returns {"json"|"md"|"html": path}."""
    folder = Path(folder)
    return _write(folder, "report", complete(result), markdown(result), f"Evaluation: {result['run']}")


# -- two evaluations ----------------------------------------------------------------------------

IDENTITY = ("run", "model", "method", "dataset", "dataset_fingerprint", "split", "n")


def comparison(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """The numbers behind compare_reports: metric rows with B − A and which side is better."""
    a, b = complete(a), complete(b)
    if a["task"] != b["task"]:
        raise ValueError(f"cannot compare a {a['task']} evaluation with a {b['task']} one")
    warnings = []
    if a["dataset_fingerprint"] != b["dataset_fingerprint"]:
        warnings.append(f"different data: fingerprints {str(a['dataset_fingerprint'])[:12]} and "
                        f"{str(b['dataset_fingerprint'])[:12]} differ, so differences mix model and data effects")
    if a["split"] != b["split"]:
        warnings.append(f"different splits: {a['split']} and {b['split']}")
    if a["n"] != b["n"] and not warnings:
        warnings.append(f"different numbers of examples: {a['n']} and {b['n']}")
    ma, mb = a["metrics"], b["metrics"]
    keys = _metric_keys(a["task"], ma, mb)
    keys += sorted(k for k in ma.keys() & mb.keys() if k not in keys and k != "n"
                   and _number(ma[k]) is not None and _number(mb[k]) is not None)
    rows = []
    for key in keys:
        va, vb = _number(ma.get(key)), _number(mb.get(key))
        both = va is not None and vb is not None
        better = None if not both or key in NEUTRAL else "same" if _same(va, vb) else "b" if _better(key, va, vb) else "a"
        rows.append({"metric": key, "a": va, "b": vb, "delta": vb - va if both else None, "better": better})
    per_class = []
    pa, pb = ma.get("per_class") or {}, mb.get("per_class") or {}
    for label in [*pa, *(x for x in pb if x not in pa)]:
        fa, fb = (pa.get(label) or {}).get("f1"), (pb.get(label) or {}).get("f1")
        per_class.append({"label": label, "f1_a": fa, "f1_b": fb,
                          "delta": fb - fa if fa is not None and fb is not None else None})
    return {"task": a["task"], "a": {k: a[k] for k in IDENTITY}, "b": {k: b[k] for k in IDENTITY},
            "warnings": warnings, "metrics": rows, "per_class": per_class}


def _comparison_markdown(c: dict[str, Any]) -> str:
    a, b = c["a"], c["b"]
    md = [f"# Comparison: {_esc(a['run'])} (A) vs {_esc(b['run'])} (B)", ""]
    md += [f"> ⚠ {_esc(w)}" for w in c["warnings"]] + ([""] if c["warnings"] else [])
    md += [f"Task: {_esc(c['task'])}", "", markdown_table(
        ["", "A", "B"],
        [[key.replace("_", " "), str(a[key])[:16] if key == "dataset_fingerprint" else a[key],
          str(b[key])[:16] if key == "dataset_fingerprint" else b[key]] for key in IDENTITY]), ""]
    md += ["## Metrics", "", markdown_table(
        ["metric", "A", "B", "Δ (B − A)", "better"],
        [[metric_name(m["metric"]), _fmt(m["a"]), _fmt(m["b"]), "–" if m["delta"] is None else f"{m['delta']:+.4f}",
          {"a": "A", "b": "B", "same": "="}.get(m["better"], "–")] for m in c["metrics"]]), ""]
    if c["per_class"]:
        md += ["## F1 per class", "", markdown_table(
            ["label", "A", "B", "Δ (B − A)"],
            [[p["label"], _fmt(p["f1_a"]), _fmt(p["f1_b"]), "–" if p["delta"] is None else f"{p['delta']:+.4f}"]
             for p in c["per_class"]]), ""]
    return "\n".join(md)


def compare_reports(a: dict[str, Any], b: dict[str, Any]) -> str:
    """Markdown putting two evaluation results side by side, with B − A and a warning when the data differ."""
    return _comparison_markdown(comparison(a, b))


def write_comparison(folder: Path, a: dict[str, Any], b: dict[str, Any]) -> dict[str, Path]:
    """Write compare.json, compare.md and compare.html into `folder`; returns {"json"|"md"|"html": path}."""
    c = comparison(a, b)
    return _write(Path(folder), "compare", c, _comparison_markdown(c), f"Comparison: {a['run']} vs {b['run']}")
