"""The annotation report (`tunesmith annotate report TASK`): progress, who labelled what, the label
distribution and inter-annotator agreement, as report.json, report.md and a standalone report.html.

Accepted model suggestions are listed as their own annotators (`model:<name>`), counted in the label
distribution, and kept out of the human agreement; where humans also labelled an item, how often
the model's label matches the human majority is shown, which says whether the threshold is safe.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from tunesmith.collect.agreement import agreement
from tunesmith.collect.annotate import Queue, is_model
from tunesmith.collect.annotate_io import majority
from tunesmith.html_report import markdown_table, markdown_text, markdown_to_html


def summarize(queue: Queue) -> dict[str, Any]:
    items = queue.items()
    labels = queue.task.labels
    per: dict[str, Counter[str]] = {}
    for item in items:
        for who, label in item.labels.items():
            per.setdefault(who, Counter())[label] += 1
        for who in item.skipped_by:
            per.setdefault(who, Counter())["(skipped)"] += 1
    annotators = [{"annotator": who, "kind": "model" if is_model(who) else "human",
                   "labels": sum(n for k, n in c.items() if k != "(skipped)"), "skips": c.get("(skipped)", 0),
                   "by_label": {k: c[k] for k in labels if c[k]}} for who, c in sorted(per.items())]
    # Labels, ties and unlabelled items apart: a label named "none" or "tie" was counted with them
    final: Counter[str] = Counter()
    open_: Counter[str] = Counter()  # "tie", "none"
    model_checked = []  # (model's label, human majority): on a tie there is none (it took whoever labelled first)
    for item in items:
        label, source = majority(item)
        if label is None:
            open_[source] += 1
            continue
        final[label] += 1
        if source == "human":
            model_checked += [(model, label) for model in item.model.values()]
    out: dict[str, Any] = {
        "task": queue.task.name, "labels": labels, "instructions": queue.task.instructions,
        "progress": queue.progress(),
        "annotators": annotators,
        "label_distribution": {k: final[k] for k in labels if final[k]},
        "ties": open_["tie"], "unlabelled": open_["none"],
        "agreement": agreement([item.human for item in items], labels),
    }
    if model_checked:
        out["model_vs_humans"] = {"items": len(model_checked),
                                  "matches": round(sum(m == h for m, h in model_checked) / len(model_checked), 4)}
    return out


def write_report(queue: Queue, folder: str | Path) -> dict[str, Any]:
    """Write report.json, report.md and report.html for the task into `folder`; returns the summary."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data = summarize(queue)
    (folder / "report.json").write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    md = to_markdown(data)
    (folder / "report.md").write_text(md, encoding="utf-8")
    (folder / "report.html").write_text(markdown_to_html(md, folder, f"Annotation: {data['task']}"), encoding="utf-8")
    return data


def to_markdown(data: dict[str, Any]) -> str:
    p, a = data["progress"], data["agreement"]
    lines = [f"# Annotation: {markdown_text(data['task'])}", "",
             f"{p['done']} of {p['total']} items done (overlap: {p['overlap']} label(s) per item, "
             "or an accepted model label).", ""]
    if data["instructions"]:
        # every line in the quote: one unquoted line after a blank one would be read as the report's own Markdown
        lines += ["\n".join(f"> {markdown_text(line)}" for line in str(data["instructions"]).splitlines()), ""]
    lines += ["## Annotators", "", markdown_table(
        ["annotator", "kind", "labels", "skips", *data["labels"]],
        [[r["annotator"], r["kind"], r["labels"], r["skips"], *(r["by_label"].get(k, 0) for k in data["labels"])]
         for r in data["annotators"]]), ""]
    lines += ["## Label distribution", "", "The majority human label per item (a model's accepted label where no human "
              f"labelled). Besides: {data['ties']} item(s) where humans disagree evenly, {data['unlabelled']} not "
              "labelled yet.", "", markdown_table(["label", "items"], list(data["label_distribution"].items())), ""]
    lines += ["## Agreement (humans only)", ""]
    if a["method"] is None:
        lines += [a.get("note", ""), ""]
    else:
        name = "Cohen's kappa" if a["method"] == "cohen" else f"Fleiss' kappa ({a['raters_per_item']} raters per item)"
        kappa = "undefined" if a["kappa"] is None else f"{a['kappa']:.3f}"
        lines += [f"**{name}: {kappa}** ({a['interpretation']}, Landis & Koch) over {a['items_used']} items; "
                  f"observed agreement {a['observed_agreement']:.0%} over {a['items_compared']} items with 2+ labels.", ""]
        if a.get("note"):
            lines += [a["note"], ""]
        if a["pairs"]:
            lines += [markdown_table(["annotator", "annotator", "shared items", "observed", "Cohen's kappa"],
                                     [[r["a"], r["b"], r["items"], f"{r['observed']:.0%}",
                                       "undefined" if r["kappa"] is None else f"{r['kappa']:.3f}"] for r in a["pairs"]]), ""]
    if "model_vs_humans" in data:
        m = data["model_vs_humans"]
        lines += ["## Model suggestions against humans", "",
                  f"On {m['items']} items labelled by both, the model's label matched the human majority "
                  f"{m['matches']:.0%} of the time.", ""]
    return "\n".join(lines)
