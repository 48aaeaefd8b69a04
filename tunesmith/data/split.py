"""Train/validation/test assignment: seeded, stratified, grouped, honouring pre-assigned rows.

Rows pre-assigned to validation or test (a user's own test file) stay there. Every other row is
shared among the remaining splits in the configured proportions. Within each stratum (class, or
score quantile for regression) units are shuffled with the seed and each goes to the split
furthest below its target; a unit is a row, or all rows of one group when `group_by` is set, so a
group never straddles splits.

Rows that may not be tested on (synthetic ones, unless their source allows it) are shared between
the other splits in those splits' own proportions, after the real rows: so the real rows keep
the configured proportions and the test split stays real.
"""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np

from tunesmith.config import SPLITS, SplitSpec


def assign(strata: list[str], groups: list[str | None], hints: list[str | None], spec: SplitSpec,
           no_test: list[bool] | None = None) -> np.ndarray:
    n = len(strata)
    out = np.array([h if h in ("validation", "test") else "" for h in hints], dtype=object)
    provided = {h for h in hints if h in ("validation", "test")}
    pool = [s for s in SPLITS if s not in provided]

    # Units: one per group (rows without a group are their own unit); a unit with a row that may not
    # be tested on keeps out of test as a whole.
    units: dict[str, list[int]] = defaultdict(list)
    for i in range(n):
        if not out[i]:
            units[f"g:{groups[i]}" if groups[i] is not None else f"r:{i}"].append(i)
    free = [m for m in units.values() if not (no_test and any(no_test[i] for i in m))]
    kept_out = [m for m in units.values() if no_test and any(no_test[i] for i in m)]

    rng = np.random.default_rng(spec.seed)
    _share(free, pool, strata, spec, rng, out)
    _share(kept_out, [s for s in pool if s != "test"], strata, spec, rng, out)
    return out.astype(str)


def _share(units: list[list[int]], pool: list[str], strata: list[str], spec: SplitSpec, rng: np.random.Generator,
           out: np.ndarray) -> None:
    """Give each unit a split of `pool`, in proportion to the configured ratios of those splits."""
    total = sum(spec.ratio(s) for s in pool)
    ratios = {s: spec.ratio(s) / total for s in pool}
    by_stratum: dict[str, list[list[int]]] = defaultdict(list)
    for members in units:  # stratum = the unit's commonest
        stratum = Counter(strata[i] for i in members).most_common(1)[0][0] if spec.stratify else ""
        by_stratum[stratum].append(members)

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


def regression_strata(scores: np.ndarray, bins: int = 10) -> list[str]:
    """Quantile bins, so every split sees the whole range of the target."""
    if len(scores) == 0:
        return []
    edges = np.unique(np.quantile(scores, np.linspace(0, 1, bins + 1)[1:-1]))
    return [f"q{b}" for b in np.searchsorted(edges, scores, side="right")]
