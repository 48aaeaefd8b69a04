"""Train/validation/test assignment: seeded, stratified, grouped, honouring pre-assigned rows.

Rows pre-assigned to validation or test (a user's own test file) stay there. Every other row is
shared among the remaining splits in the configured proportions. Within each stratum (class, or
score quantile for regression) units are shuffled with the seed and each goes to the split
furthest below its target; a unit is a row, or all rows of one group when `group_by` is set, so a
group never straddles splits.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np

from tunesmith.config import SPLITS, SplitSpec


def assign(strata: list[str], groups: list[str | None], hints: list[str | None], spec: SplitSpec) -> np.ndarray:
    n = len(strata)
    out = np.array([h if h in ("validation", "test") else "" for h in hints], dtype=object)
    provided = {h for h in hints if h in ("validation", "test")}
    pool = [s for s in SPLITS if s not in provided]
    total = sum(spec.ratio(s) for s in pool)
    ratios = {s: spec.ratio(s) / total for s in pool}

    # Units: one per group (rows without a group are their own unit); stratum = the unit's commonest.
    units: dict[str, list[int]] = defaultdict(list)
    for i in range(n):
        if not out[i]:
            units[f"g:{groups[i]}" if groups[i] is not None else f"r:{i}"].append(i)
    by_stratum: dict[str, list[list[int]]] = defaultdict(list)
    for members in units.values():
        stratum = Counter(strata[i] for i in members).most_common(1)[0][0] if spec.stratify else ""
        by_stratum[stratum].append(members)

    rng = np.random.default_rng(spec.seed)
    for stratum in sorted(by_stratum):
        members_list = by_stratum[stratum]
        order = rng.permutation(len(members_list))
        size = sum(len(m) for m in members_list)
        target = {s: ratios[s] * size for s in pool}
        filled = dict.fromkeys(pool, 0)
        for rank, u in enumerate(order):
            members = members_list[u]
            # The first units of a stratum seed the small splits, so a class with 3+ examples is
            # seen in validation and test; after that, the split furthest below its target wins.
            small = [s for s in pool if s != "train"]
            if len(members_list) >= 3 and rank < len(small):
                split = small[rank]
            else:
                split = max(pool, key=lambda s: (target[s] - filled[s], s == "train"))
            filled[split] += len(members)
            out[members] = split
    return out.astype(str)


def regression_strata(scores: np.ndarray, bins: int = 10) -> list[str]:
    """Quantile bins, so every split sees the whole range of the target."""
    if len(scores) == 0:
        return []
    edges = np.unique(np.quantile(scores, np.linspace(0, 1, bins + 1)[1:-1]))
    return [f"q{b}" for b in np.searchsorted(edges, scores, side="right")]
