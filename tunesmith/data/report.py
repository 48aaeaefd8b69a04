"""The data-quality report of a dataset version: report.json (for programs), report.md and
report.html (for people, pictures embedded), figures/*.png.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tunesmith.artifacts import DatasetManifest
from tunesmith.config import SPLITS, TaskType
from tunesmith.html_report import markdown_table, markdown_text, markdown_to_html, short_labels

CHUNK = 50_000  # rows turned into Python objects at a time when a statistic needs them


@dataclass(frozen=True)
class PreparationSummary:
    """What a `data prepare` run did, as plain values: everything the report shows besides the
    manifest and the split tables. `data.prepare` fills it in; this module never sees the run itself."""

    task: TaskType
    sources: list[dict[str, Any]]  # per source: source, kind, encoding, split, rows, rejected
    steps: list[dict[str, Any]]  # per step: step, rows_in, rows_out, removed, reasons
    missing_values: dict[str, int]  # "field: policy" -> rows with that field missing
    removed_by_stage: dict[str, int]  # rows removed after reading, by stage (exact_duplicate, near_duplicate, ...)
    near_threshold: float
    near_examples: list[dict[str, Any]]
    conflict_policy: str | None
    conflicts: list[dict[str, Any]]  # one per group of duplicates with different targets
    leakage_checked: list[str]
    leakage_policy: str
    leaks: list[dict[str, Any]]
    label_map_changes: dict[str, int]  # "old -> new" -> rows
    corrections_applied: int
    corrections_unused: list[str]  # correction ids that matched no example
    quarantine_rows: int
    quarantine_by_stage: dict[str, int]
    quarantine_examples: dict[str, list[dict[str, Any]]]  # stage -> first few entries
    warnings: list[str]
    seconds: float  # time the run took up to the report


def build(manifest: DatasetManifest, summary: PreparationSummary, tables: dict[str, pa.Table]) -> dict[str, Any]:
    task = summary.task
    warnings = list(summary.warnings)
    if summary.corrections_unused:
        warnings.append(f"{len(summary.corrections_unused)} correction id(s) matched no example: "
                        f"{summary.corrections_unused[:10]}")
    total = sum(t.num_rows for t in tables.values())
    report: dict[str, Any] = {
        "name": manifest.name, "task": manifest.task, "description": manifest.description,
        "fingerprint": manifest.fingerprint, "created_at": manifest.created_at, "tokenizer": manifest.tokenizer,
        "context_length": manifest.context_length, "max_length": manifest.max_length, "counts": manifest.counts,
        "split_fractions": {s: round(t.num_rows / total, 4) if total else 0.0 for s, t in tables.items()},
        "sources": summary.sources, "steps": summary.steps,
        "missing_values": summary.missing_values, "labels": manifest.labels,
        "provenance": {s: _provenance_stats(t) for s, t in tables.items()},
        "lengths": {s: _length_stats(t.column("n_tokens").to_numpy(), manifest.max_length) for s, t in tables.items()},
        "duplicates": {
            "exact_removed": summary.removed_by_stage.get("exact_duplicate", 0),
            "near_removed": summary.removed_by_stage.get("near_duplicate", 0),
            "near_threshold": summary.near_threshold,
            "near_examples": summary.near_examples,
            "conflicts": len(summary.conflicts), "conflict_policy": summary.conflict_policy,
            "conflict_examples": summary.conflicts[:5],
        },
        "leakage": {"checked": summary.leakage_checked, "policy": summary.leakage_policy,
                    "found": len(summary.leaks), "examples": summary.leaks[:10]},
        "annotation": {"label_map_changes": summary.label_map_changes, "corrections_applied": summary.corrections_applied,
                       "corrections_unused": summary.corrections_unused},
        "quarantine": {"rows": summary.quarantine_rows,
                       "by_stage": summary.quarantine_by_stage,
                       "examples": summary.quarantine_examples},
        "warnings": warnings,
        "seconds": round(summary.seconds, 2),
    }
    if task in (TaskType.single_label, TaskType.multi_label):
        column = "labels" if task == TaskType.multi_label else "label"
        report["class_balance"] = {s: _counts(t.column(column)) for s, t in tables.items()}
    elif task == TaskType.regression:
        report["score_stats"] = {s: _stats(t.column("score").to_numpy()) for s, t in tables.items()}
    elif task == TaskType.preference:
        report["preference"] = {s: _preference_stats(t) for s, t in tables.items()}
    else:
        report["chat"] = {s: _chat_stats(t) for s, t in tables.items()}
    return report


def _provenance_stats(table: pa.Table) -> dict[str, Any]:
    """Rows per source kind (web, rest, survey, hub, synthetic; `file` for plain files) and how many are synthetic."""
    names = table.column_names
    kinds: Counter[str] = Counter()
    if "provenance" in names:
        for batch in table.select(["provenance"]).to_batches(max_chunksize=CHUNK):  # a chunk at a time: splits can be big
            kinds.update((json.loads(p).get("kind") if p else None) or "file" for p in batch.column(0).to_pylist())
    elif table.num_rows:
        kinds["file"] = table.num_rows
    synthetic = int(np.sum(table.column("synthetic").to_numpy(zero_copy_only=False))) if "synthetic" in names else 0
    return {"rows": table.num_rows, "synthetic": synthetic, "kinds": dict(sorted(kinds.items()))}


def _counts(column: pa.ChunkedArray) -> dict[str, int]:
    """How often each value (each label of a list) occurs, by value."""
    values = pc.list_flatten(column) if pa.types.is_list(column.type) else column
    counts = pc.value_counts(values)
    return dict(sorted(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True)))


def _stats(values: np.ndarray) -> dict[str, float]:
    if len(values) == 0:
        return {"count": 0}
    return {"count": int(len(values)), "mean": round(float(np.mean(values)), 4), "std": round(float(np.std(values)), 4),
            "min": round(float(np.min(values)), 4), "median": round(float(np.median(values)), 4),
            "max": round(float(np.max(values)), 4)}


def _length_stats(lengths: np.ndarray, max_length: int | None) -> dict[str, Any]:
    if len(lengths) == 0:
        return {"count": 0}
    stats: dict[str, Any] = {"count": int(len(lengths)), "total_tokens": int(lengths.sum()),
                             "mean": round(float(lengths.mean()), 1),
                             **{f"p{q}": int(np.percentile(lengths, q)) for q in (50, 90, 95, 99)},
                             "max": int(lengths.max())}
    if max_length:
        stats["over_max_length"] = int((lengths > max_length).sum())  # classification: truncated in training
    return stats


def _chat_stats(table: pa.Table) -> dict[str, Any]:
    turns: list[int] = []
    roles: Counter[str] = Counter()
    system = weight_0 = 0
    for convos in _chunks(table, "messages"):
        turns += [len(c) for c in convos]
        roles.update(m["role"] for c in convos for m in c)
        system += sum(any(m["role"] == "system" for m in c) for c in convos)
        weight_0 += sum(m["weight"] == 0 for c in convos for m in c)
    return {"conversations": table.num_rows, "turns": _stats(np.array(turns) if turns else np.array([0])), "roles": dict(roles),
            "with_system_prompt": system, "assistant_turns_weight_0": weight_0,
            "training_tokens_per_epoch": int(table.column("n_tokens").to_numpy().sum())}


def _preference_stats(table: pa.Table) -> dict[str, Any]:
    distinct: set[tuple[tuple[str, str], ...]] = set()
    turns: list[int] = []
    chosen_chars: list[int] = []
    rejected_chars: list[int] = []
    system = earlier = chosen_longer = 0
    for prompts, chosen, rejected in zip(*(_chunks(table, c) for c in ("messages", "chosen", "rejected")), strict=True):
        distinct.update(tuple((m["role"], m["content"]) for m in p) for p in prompts)
        turns += [len(p) for p in prompts]
        system += sum(any(m["role"] == "system" for m in p) for p in prompts)
        earlier += sum(any(m["role"] == "assistant" for m in p) for p in prompts)
        # DPO readily learns "longer is better" when the preferred answers are mostly the longer ones
        chosen_longer += sum(len(c) > len(r) for c, r in zip(chosen, rejected, strict=True))
        chosen_chars += [len(c) for c in chosen]
        rejected_chars += [len(r) for r in rejected]
    tokens = table.column("n_tokens").to_numpy()
    return {"pairs": table.num_rows, "distinct_prompts": len(distinct), "prompt_turns": _stats(np.array(turns)),
            "with_system_prompt": system, "with_earlier_answers": earlier, "chosen_longer": chosen_longer,
            "chosen_chars": _stats(np.array(chosen_chars)), "rejected_chars": _stats(np.array(rejected_chars)),
            "tokens": _stats(tokens), "tokens_total": int(tokens.sum())}


def _chunks(table: pa.Table, column: str) -> Iterator[list[Any]]:
    """A column's values as Python objects, a chunk of rows at a time."""
    for start in range(0, table.num_rows, CHUNK):
        yield table.column(column).slice(start, CHUNK).to_pylist()


# -- pictures -----------------------------------------------------------------------------------


def _figures(folder: Path, report: dict[str, Any], tables: dict[str, pa.Table]) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = folder / "figures"
    figures.mkdir(exist_ok=True)
    out = {}
    fig, ax = plt.subplots(figsize=(7, 3.6))
    all_lengths = np.concatenate([t.column("n_tokens").to_numpy() for t in tables.values()])
    bins = np.histogram_bin_edges(all_lengths, bins=40) if len(all_lengths) else 10
    for name, table in tables.items():
        if table.num_rows:
            ax.hist(table.column("n_tokens").to_numpy(), bins=bins, alpha=0.55, label=f"{name} ({table.num_rows})")
    budget = report.get("max_length")
    if budget and len(all_lengths) and all_lengths.max() > budget * 0.8:
        ax.axvline(budget, color="red", linestyle="--", label=f"max_length {budget}")
    ax.set_xlabel(f"tokens ({report['tokenizer']} tokenizer)")
    out["token_lengths"] = _save(fig, ax, "examples", "Length distribution per split", figures / "token_lengths.png")

    if "class_balance" in report:
        balance = report["class_balance"]
        labels = sorted({label for counts in balance.values() for label in counts})
        fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(labels) + 3), 3.6))
        width = 0.8 / len(SPLITS)
        for k, name in enumerate(SPLITS):
            n = max(1, _balance_base(report, name))
            ax.bar(np.arange(len(labels)) + k * width, [100 * balance[name].get(x, 0) / n for x in labels], width, label=name)
        # parse_math off: a class named "$10-$20" was drawn as a formula, and "$$" failed the whole report
        # short tick labels: one long label made tight_layout give up, and every tick was clipped
        ax.set_xticks(np.arange(len(labels)) + width, short_labels(labels, width=18), rotation=45 if len(labels) > 6 else 0,
                      ha="right" if len(labels) > 6 else "center", parse_math=False)
        out["class_balance"] = _save(fig, ax, "% of split", "Class balance per split", figures / "class_balance.png")
    return out


def _balance_base(report: dict[str, Any], split: str) -> int:
    """What a class's count is a share of: the split's rows. A multi-label row counts once per label it has, so the
    sum of the counts would make a label every row has read as less than 100% "of split"."""
    if report.get("task") == TaskType.multi_label.value:
        return report["provenance"][split]["rows"]
    return sum(report["class_balance"][split].values())


def _save(fig: Any, ax: Any, ylabel: str, title: str, path: Path) -> str:
    import matplotlib.pyplot as plt

    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"{path.parent.name}/{path.name}"


# -- Markdown and HTML --------------------------------------------------------------------------


def markdown(report: dict[str, Any]) -> str:
    c = report["counts"]
    md = [f"# Data report: {markdown_text(report['name'])}", ""]
    if report["description"]:
        md += ["\n".join(f"> {markdown_text(line)}" for line in str(report["description"]).splitlines()), ""]
    md += [
        f"- **Task**: {report['task']}",
        f"- **Rows**: {c['input']} read → {c['train']} train / {c['validation']} validation / {c['test']} test; "
        f"{c['quarantine']} in quarantine (`quarantine.jsonl`)",
        "- **Split fractions**: " + ", ".join(f"{s} {v:.1%}" for s, v in report["split_fractions"].items()),
        f"- **Fingerprint**: `{report['fingerprint']}`",
        f"- **Tokenizer**: {report['tokenizer']} (context {report['context_length'] or 'unknown'}; "
        f"token budget per example, model.max_length: {report.get('max_length') or 'unknown'})",
        "",
    ]
    if report["warnings"]:
        md += ["## Warnings", ""] + [f"- ⚠ {markdown_text(w)}" for w in report["warnings"]] + [""]
    md += ["## Sources", "", markdown_table(["source", "kind", "encoding", "split", "rows", "rejected"],
                                    [[s["source"], s["kind"], s.get("encoding") or "-", s["split"] or "auto", s["rows"], s["rejected"]]
                                     for s in report["sources"]]), ""]
    md += ["## Rows in and out at every step", "", markdown_table(
        ["step", "in", "out", "removed", "why"],
        [[s["step"], s["rows_in"], s["rows_out"], s["removed"], "; ".join(f"{k}: {v}" for k, v in s["reasons"].items()) or "-"]
         for s in report["steps"]]), ""]
    provenance = report.get("provenance", {})
    if any(set(v["kinds"]) != {"file"} or v["synthetic"] for v in provenance.values()):
        kinds = sorted({k for v in provenance.values() for k in v["kinds"]})
        md += ["## Where the rows come from", "", markdown_table(
            ["split", "rows", "synthetic rows", *(f"from {k}" for k in kinds)],
            [[s, v["rows"], f"{v['synthetic']} ({v['synthetic'] / (v['rows'] or 1):.1%})", *(v["kinds"].get(k, 0) for k in kinds)]
             for s, v in provenance.items()]), "",
            "Synthetic rows stay out of the test split unless their source sets `synthetic.in_test`; "
            "each row's origin is in its `provenance` column.", ""]
    if report["missing_values"]:
        md += ["## Missing values", "", markdown_table(["field: policy", "rows"], [[k, v] for k, v in report["missing_values"].items()]), ""]
    if "class_balance" in report:
        labels = report["labels"] or []
        rows = []
        for label in labels:
            row = [label]
            for s in SPLITS:
                n = _balance_base(report, s) or 1
                k = report["class_balance"][s].get(label, 0)
                row.append(f"{k} ({k / n:.1%})")
            rows.append(row)
        md += ["## Class balance", "", markdown_table(["label", *SPLITS], rows), "", "![class balance](figures/class_balance.png)", ""]
    if "score_stats" in report:
        md += ["## Target (score) per split", "", markdown_table(["split", "count", "mean", "std", "min", "median", "max"],
               [[s, *(v.get(k, "") for k in ("count", "mean", "std", "min", "median", "max"))] for s, v in report["score_stats"].items()]), ""]
    if "chat" in report:
        md += ["## Conversations", "", markdown_table(
            ["split", "conversations", "mean turns", "max turns", "roles", "with system", "weight-0 turns", "training tokens/epoch"],
            [[s, v["conversations"], v["turns"].get("mean", 0), v["turns"].get("max", 0), v["roles"], v["with_system_prompt"],
              v["assistant_turns_weight_0"], v["training_tokens_per_epoch"]] for s, v in report["chat"].items()]), ""]
    if "preference" in report:
        rows = []
        for s, v in report["preference"].items():
            n = v["pairs"] or 1
            rows.append([s, v["pairs"], v["distinct_prompts"], round(v["prompt_turns"].get("mean", 0), 1),
                         int(v["prompt_turns"].get("max", 0)), v["with_system_prompt"], v["with_earlier_answers"],
                         f"{v['chosen_longer']} ({v['chosen_longer'] / n:.0%})", round(v["chosen_chars"].get("mean", 0)),
                         round(v["rejected_chars"].get("mean", 0)), round(v["tokens"].get("mean", 0), 1), int(v["tokens"].get("max", 0))])
        md += ["## Preference pairs", "", markdown_table(
            ["split", "pairs", "distinct prompts", "mean prompt turns", "max prompt turns", "with system",
             "with earlier answers", "chosen longer", "mean chosen chars", "mean rejected chars", "mean tokens", "max tokens"],
            rows), "", "Tokens per pair: the longer of prompt + chosen and prompt + rejected, rendered with the chat template.", ""]
    md += ["## Length in tokens", "", markdown_table(
        ["split", "count", "mean", "p50", "p95", "p99", "max", "over max_length"],
        [[s, v.get("count"), v.get("mean", ""), v.get("p50", ""), v.get("p95", ""), v.get("p99", ""), v.get("max", ""),
          v.get("over_max_length", "n/a")] for s, v in report["lengths"].items()]), "", "![token lengths](figures/token_lengths.png)", ""]
    d = report["duplicates"]
    md += ["## Duplicates", "", f"- Exact duplicates removed: {d['exact_removed']}",
           f"- Near duplicates removed (similarity ≥ {d['near_threshold']}): {d['near_removed']}",
           f"- Conflicting duplicates (same text, different target): {d['conflicts']} groups, policy `{d['conflict_policy']}`", ""]
    if d["near_examples"]:
        md += [markdown_table(["removed", "kept", "similarity", "removed text", "kept text"],
                      [[e["removed"], e["kept"], e["similarity"], e["removed_text"][:120], e["kept_text"][:120]] for e in d["near_examples"]]), ""]
    if d["conflict_examples"]:
        md += [markdown_table(["ids", "values", "kept"], [[", ".join(e["ids"][:4]), e["values"], e["kept"] or "none"] for e in d["conflict_examples"]]), ""]
    leak = report["leakage"]
    md += ["## Leakage across splits", "", f"Checked: {', '.join(leak['checked'])}. Found: {leak['found']} "
           f"(policy `{leak['policy']}`).", ""]
    if leak["examples"]:
        md += [markdown_table(["id", "split", "duplicates", "in", "match"],
                      [[e["id"], e["split"], e["duplicates"], e["of_split"], e["match"]] for e in leak["examples"]]), ""]
    a = report["annotation"]
    if a["label_map_changes"] or a["corrections_applied"] or a["corrections_unused"]:
        md += ["## Annotation", "", f"- Label map: {markdown_text(a['label_map_changes'] or 'no changes')}",
               f"- Corrections applied: {a['corrections_applied']}; unused ids: {len(a['corrections_unused'])}", ""]
    q = report["quarantine"]
    md += ["## Quarantine", "", f"{q['rows']} rows, every one with its file, line and reason in `quarantine.jsonl`.", ""]
    examples = [[stage, e["location"], e["reason"]] for stage, items in q["examples"].items() for e in items]
    if examples:
        md += [markdown_table(["stage", "where", "reason"], examples[:25]), ""]
    md += [f"_Prepared in {report['seconds']} s._", ""]
    return "\n".join(md)


def write(folder: Path, manifest: DatasetManifest, summary: PreparationSummary, tables: dict[str, pa.Table]) -> dict[str, Any]:
    report = build(manifest, summary, tables)
    report["figures"] = _figures(folder, report, tables)
    (folder / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    md = markdown(report)
    (folder / "report.md").write_text(md, encoding="utf-8")
    (folder / "report.html").write_text(markdown_to_html(md, folder, f"Data report: {report['name']}"), encoding="utf-8")
    return report
