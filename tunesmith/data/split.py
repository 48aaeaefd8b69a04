"""Train/validation/test assignment: seeded, stratified, grouped, honouring pre-assigned rows.

Rows pre-assigned to a split (a user's own test file, an OpenAI job's training file) stay there, and so do the
other rows of their groups. Every other row is shared among the remaining splits in the configured proportions. Within each stratum (class, or
score quantile for regression) units are shuffled with the seed and each goes to the split
furthest below its target; a unit is a row, or all rows of one group when `group_by` is set, so a
group never straddles splits.

Rows that may not be tested on (synthetic ones, unless their source allows it) are shared between
the other splits in those splits' own proportions, after the real rows: so the real rows keep
the configured proportions and the test split stays real.

Everything is integer codes in numpy arrays (a split is its index in SPLITS, a stratum its rank in
sorted order, a group any id), so millions of rows cost a few bytes each; only the walk over the
shuffled units of a stratum, which decides one unit at a time, is a Python loop.
"""

from __future__ import annotations

import math

import numpy as np

from tunesmith.config import SPLITS, SplitSpec

TRAIN, VALIDATION, TEST = (SPLITS.index(s) for s in ("train", "validation", "test"))


def assign(strata: list[str], groups: list[str | None], hints: list[str | None], spec: SplitSpec,
           no_test: list[bool] | None = None) -> np.ndarray:
    """The split name of every row, from plain lists (see `assign_codes`)."""
    names = sorted(set(strata))
    stratum_code = {s: k for k, s in enumerate(names)}
    group_code: dict[str, int] = {}
    codes = assign_codes(
        np.array([stratum_code[s] for s in strata], dtype=np.int64),
        np.array([-1 if g is None else group_code.setdefault(g, len(group_code)) for g in groups], dtype=np.int64),
        np.array([SPLITS.index(h) if h in SPLITS else -1 for h in hints], dtype=np.int8),
        spec, None if no_test is None else np.asarray(no_test, dtype=bool))
    return np.array(SPLITS, dtype=str)[codes] if len(codes) else np.array([], dtype=str)


def assign_codes(strata: np.ndarray, groups: np.ndarray, hints: np.ndarray, spec: SplitSpec,
                 no_test: np.ndarray | None = None) -> np.ndarray:
    """The split (index in SPLITS, int8) of every row.

    strata: the row's stratum, numbered in sorted order of the strata's names (so strata are visited
    in that order); groups: the row's group id (0, 1, ...), -1 for none; hints: TRAIN, VALIDATION or TEST for a
    row pre-assigned there, -1 for a free row; no_test: rows that may not go to test.
    """
    out = np.where((hints == TRAIN) | (hints == VALIDATION) | (hints == TEST), hints, -1).astype(np.int8)
    # A group with a pre-assigned row goes where that row goes as a whole (a user's test file names customers that
    # the main file has too): shared among the splits, its other rows leaked into train unseen by the leakage check.
    in_group = groups >= 0
    if in_group.any() and (out[in_group] >= 0).any():
        pinned = np.full(int(groups.max()) + 1, -1, dtype=np.int8)
        held = in_group & (out >= 0)
        pinned[groups[held]] = out[held]
        joining = in_group & (out < 0)
        out[joining] = pinned[groups[joining]]
    pool = [k for k in range(len(SPLITS)) if k == TRAIN or not (out == k).any()]

    # Units: one per group (rows without a group are their own unit), numbered in the order of their
    # first row; a unit with a row that may not be tested on keeps out of test as a whole.
    free = np.flatnonzero(out < 0)
    grouped = groups[free] >= 0
    if grouped.any():
        first = np.arange(len(free))  # position (in `free`) of the first row of each row's unit
        _, first_of_group, which = np.unique(groups[free][grouped], return_index=True, return_inverse=True)
        first[grouped] = np.flatnonzero(grouped)[first_of_group][which]
        _, unit = np.unique(first, return_inverse=True)
        units = int(unit.max()) + 1
        sizes = np.bincount(unit, minlength=units)
        kept_out = np.zeros(units, dtype=bool)
        if no_test is not None:
            kept_out = np.bincount(unit, weights=no_test[free], minlength=units) > 0
        stratum = _unit_strata(unit, strata[free], units) if spec.stratify else np.zeros(units, dtype=np.int64)
    else:  # every unit one row: no grouping to work out (and nothing the size of the rows to spare)
        unit, units = np.arange(len(free)), len(free)
        sizes = np.ones(units, dtype=np.int64)
        kept_out = np.zeros(units, dtype=bool) if no_test is None else no_test[free]
        stratum = strata[free] if spec.stratify else np.zeros(units, dtype=np.int64)

    rng = np.random.default_rng(spec.seed)
    unit_split = np.full(units, -1, dtype=np.int8)
    for chosen, splits in ((~kept_out, pool), (kept_out, [k for k in pool if k != TEST])):
        _share(np.flatnonzero(chosen), splits, sizes, stratum, spec, rng, unit_split, pool_few=bool(grouped.any()))
    out[free] = unit_split[unit]
    return out


def _unit_strata(unit: np.ndarray, strata: np.ndarray, units: int) -> np.ndarray:
    """Each unit's commonest stratum; on a tie, the one its earliest row has."""
    width = int(strata.max()) + 1
    pairs, first_row, count = np.unique(unit * width + strata, return_index=True, return_counts=True)
    pair_unit = pairs // width
    best = np.lexsort((first_row, -count, pair_unit))  # per unit: most rows, then earliest row
    is_first = np.r_[True, pair_unit[best][1:] != pair_unit[best][:-1]]
    out = np.empty(units, dtype=np.int64)
    out[pair_unit[best][is_first]] = strata[first_row[best][is_first]]
    return out


def _share(units: np.ndarray, pool: list[int], sizes: np.ndarray, stratum: np.ndarray, spec: SplitSpec,
           rng: np.random.Generator, out: np.ndarray, pool_few: bool = False) -> None:
    """Give each unit a split of `pool`, in proportion to the configured ratios of those splits."""
    total = sum(spec.ratio(SPLITS[k]) for k in pool)
    ratios = [spec.ratio(SPLITS[k]) / total for k in pool]
    small = [q for q, k in enumerate(pool) if k != TRAIN]
    is_train = [k == TRAIN for k in pool]
    # Grouped, strata of fewer than 3 units (classes of 1-2 groups) are pooled into one, split last: kept in train one
    # by one, data with more classes than groups lost its validation and test (6 customers, 10 classes: 240 / 0 / 0).
    # A group's stratum is only its commonest class. Rows stay as they were: a class of 1-2 examples is trained on.
    if pool_few and len(units):
        codes, counts = np.unique(stratum[units], return_counts=True)
        few = codes[counts < 3]
        if len(few) > 1:
            stratum = stratum.copy()
            stratum[units[np.isin(stratum[units], few)]] = int(stratum.max()) + 1
    by_stratum = units[np.argsort(stratum[units], kind="stable")]  # unit order kept within a stratum
    bounds = np.flatnonzero(np.diff(stratum[by_stratum])) + 1
    # What earlier strata of 3+ units fell short of (or beyond) each split's share, in whole units, added
    # to the next one's targets: a stratum that cannot split exactly (15 rows: 12 / 1.5 / 1.5) would
    # otherwise break the same tie the same way every time, and 20 classes of 15 rows came out 80/13/7.
    # Whole units only, so a split that was already right (a few large classes, shortfalls under one row)
    # comes out row for row as before this correction: same data, same seed, same split.
    owed = [0.0] * len(pool)
    for members in np.split(by_stratum, bounds) if len(units) else []:
        shuffled = rng.permutation(len(members))
        size = int(sizes[members].sum())
        spread = len(members) >= 3  # a class with fewer examples stays in train, and leaves the carry alone
        share = [r * size for r in ratios]
        target = [t + (math.trunc(o) if spread else 0) for t, o in zip(share, owed, strict=True)]
        filled = [0] * len(pool)
        # Units of a stratum seed the small splits, so a class with 3+ examples is seen in validation and test, while
        # its share there (with what earlier strata were owed) is half a unit or more: seeded whatever their share,
        # 100 classes of 4 came out 50 / 25 / 25. A seed is the first unit (in shuffled order) that fits its split:
        # a 400-row group had seeded a test split of 100.
        seeds = [q for q in small if target[q] >= 0.5] if spread else []
        seeded: list[tuple[int, int]] = []  # (position in shuffled, split)
        for q in seeds:
            fits = next((k for k, i in enumerate(shuffled) if sizes[members[i]] <= max(target[q], 1)
                         and all(k != s for s, _ in seeded)), None)
            if fits is not None:
                seeded.append((fits, q))
        # The rest largest first (a stable sort: equal units keep the shuffle, so ungrouped rows split as before):
        # placed last, a large group overshot whichever split was short, and uneven groups came out 90 / 5 / 5.
        rest = np.delete(shuffled, [k for k, _ in seeded])
        rest = rest[np.argsort(-sizes[members[rest]], kind="stable")]
        order = np.concatenate([shuffled[[k for k, _ in seeded]], rest]).astype(shuffled.dtype)
        unit_sizes = sizes[members[order]].tolist()
        chosen = []
        for rank, unit_size in enumerate(unit_sizes):
            # After the seeds, the split furthest below its target wins (on a tie, train, else the earlier split).
            if rank < len(seeded):
                q = seeded[rank][1]
            else:
                q, best = 0, (target[0] - filled[0], is_train[0])
                for p in range(1, len(pool)):
                    key = (target[p] - filled[p], is_train[p])
                    if key > best:
                        q, best = p, key
                # No unit was small enough to seed a split (a few large groups): train took them all while its
                # shortfall stayed above the small splits' targets, and test came out empty for every seed. A split
                # still empty takes a unit up to twice its target before train does.
                empty = [p for p in seeds if filled[p] == 0 and unit_size <= 2 * target[p]] if is_train[q] else []
                if empty:
                    q = max(empty, key=lambda p: target[p])
            filled[q] += unit_size
            chosen.append(pool[q])
        out[members[order]] = chosen
        if spread:
            owed = [o + t - f for o, t, f in zip(owed, share, filled, strict=True)]


def regression_strata(scores: np.ndarray, bins: int = 10) -> list[str]:
    """Quantile bins, so every split sees the whole range of the target."""
    if len(scores) == 0:
        return []
    return [f"q{b}" for b in regression_bins(scores, bins)]


def regression_bins(scores: np.ndarray, bins: int = 10) -> np.ndarray:
    """The quantile bin of every score (the number in its `regression_strata` name).

    At least ~10 scores a bin: a bin is a stratum, whose first rows seed validation and test one
    each, so 28 scores in 10 bins of 2-3 came out 12 / 8 / 8 instead of about 80/10/10.
    """
    bins = max(1, min(bins, len(scores) // 10))
    edges = np.unique(np.quantile(scores, np.linspace(0, 1, bins + 1)[1:-1]))
    return np.searchsorted(edges, scores, side="right")
