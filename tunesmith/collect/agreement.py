"""Inter-annotator agreement over items that two or more humans labelled.

Two annotators: Cohen's kappa (scikit-learn) over the items both labelled. Three or more: Fleiss'
kappa (statsmodels) over the items with the most common number k >= 2 of labels (Fleiss assumes
every item has the same number of raters; items with another count are left out and counted), and
Cohen's kappa for every pair that shares MIN_PAIR_ITEMS items, which shows who disagrees with whom.
Kappa is undefined when every label is the same (no variation to agree on): reported as None.
"""

from __future__ import annotations

import math
from collections import Counter
from itertools import combinations
from typing import Any

import numpy as np

MIN_PAIR_ITEMS = 2  # a pairwise kappa over fewer shared items says nothing
# Landis & Koch (1977), "The measurement of observer agreement for categorical data": the usual bands,
# below 0 poor, then upper bounds (0.00-0.20 slight: a kappa of exactly 0, chance agreement, is slight, not poor).
BANDS = [(0.2, "slight"), (0.4, "fair"), (0.6, "moderate"), (0.8, "substantial"), (1.0, "almost perfect")]


def finite(value: float | None) -> float | None:
    """NaN (the kappa of raters who never vary) is no JSON number: None."""
    return None if value is None or math.isnan(value) else round(float(value), 4)


def interpret(kappa: float | None) -> str:
    if kappa is None:
        return "undefined"
    if kappa < 0:
        return "poor"
    for bound, name in BANDS:
        if kappa <= bound:
            return name
    return "almost perfect"


def cohen(a: list[str], b: list[str], labels: list[str]) -> float | None:
    from sklearn.metrics import cohen_kappa_score

    if len(set(a) | set(b)) < 2:
        return None  # both always gave one and the same label: chance agreement is 1, kappa 0/0
    return finite(cohen_kappa_score(a, b, labels=labels))


def fleiss(rows: list[list[str]], labels: list[str]) -> float | None:
    """`rows`: per item, the labels its raters gave (the same number per item)."""
    from statsmodels.stats.inter_rater import aggregate_raters, fleiss_kappa

    index = {label: i for i, label in enumerate(labels)}
    table, _ = aggregate_raters(np.array([[index[v] for v in row] for row in rows]), n_cat=len(labels))
    if np.count_nonzero(table.sum(axis=0)) < 2:
        return None
    return finite(fleiss_kappa(table, method="fleiss"))


def agreement(items: list[dict[str, str]], labels: list[str]) -> dict[str, Any]:
    """`items`: per item, annotator -> label (humans only). Labels outside `labels` are added at the end."""
    labels = list(labels) + sorted({v for item in items for v in item.values()} - set(labels))
    multi = [item for item in items if len(item) >= 2]
    annotators = sorted({a for item in multi for a in item})
    out: dict[str, Any] = {"items_compared": len(multi), "annotators": annotators, "method": None, "kappa": None,
                           "interpretation": "undefined", "pairs": []}
    if not multi:
        out["note"] = "no item has labels from two annotators yet: set an overlap of 2 or more to measure agreement"
        return out
    out["observed_agreement"] = round(sum(len(set(item.values())) == 1 for item in multi) / len(multi), 4)
    for a, b in combinations(annotators, 2):
        shared = [item for item in multi if a in item and b in item]
        if len(shared) >= MIN_PAIR_ITEMS:
            kappa = cohen([i[a] for i in shared], [i[b] for i in shared], labels)
            out["pairs"].append({"a": a, "b": b, "items": len(shared), "kappa": kappa,
                                 "observed": round(sum(i[a] == i[b] for i in shared) / len(shared), 4)})
    if len(annotators) == 2:
        out["method"] = "cohen"
        out["kappa"] = out["pairs"][0]["kappa"] if out["pairs"] else None
        out["items_used"] = out["pairs"][0]["items"] if out["pairs"] else 0
    else:
        counts = Counter(len(item) for item in multi)
        k = max(counts, key=lambda n: (counts[n], n))
        rows = [list(item.values()) for item in multi if len(item) == k]
        out.update(method="fleiss", kappa=fleiss(rows, labels), items_used=len(rows), raters_per_item=k)
        if len(rows) < len(multi):
            out["note"] = (f"Fleiss' kappa over the {len(rows)} items with {k} labels each; "
                           f"{len(multi) - len(rows)} with another count left out")
    if out["kappa"] is None and "note" not in out:
        out["note"] = "kappa is undefined: every compared label is the same, or too few shared items"
    out["interpretation"] = interpret(out["kappa"])
    return out
