"""Exact and near-duplicate detection over whole columns.

Near duplicates: MinHash signatures of byte n-gram shingles (computed in Rust by `rensa`), LSH
banding to find candidate pairs, every candidate verified on its signatures, and connected
components (scipy) so that each cluster keeps exactly one member: the one with the lowest rank
(earliest split, then earliest input row).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import rensa
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

CHUNK = 20_000  # rows per signature batch: bounds the transient memory of Python digest lists
_MIX = np.uint64(0x9E3779B97F4A7C15)


def shingle_hashes(texts: list[str], size: int) -> tuple[np.ndarray, np.ndarray]:
    """uint64 hashes of every `size`-byte window of every text (lower-cased), plus row offsets."""
    encoded = [t.casefold().encode("utf-8") for t in texts]
    lengths = np.fromiter((len(b) for b in encoded), dtype=np.int64, count=len(encoded))
    # Texts shorter than one shingle are padded so that they still get one (whole-text) shingle.
    encoded = [b if len(b) >= size else b.ljust(size, b"\0") for b in encoded]
    lengths = np.maximum(lengths, size)
    buf = np.frombuffer(b"".join(encoded), dtype=np.uint8).astype(np.uint64)
    windows = len(buf) - size + 1
    value = np.zeros(windows, dtype=np.uint64)
    for k in range(size):  # pack the window's bytes into one integer (size <= 8)
        value = (value << np.uint64(8)) | buf[k : k + windows]
    ends = np.cumsum(lengths)
    valid = np.ones(windows, dtype=bool)
    for k in range(1, size):  # windows that start in a text's last size-1 bytes cross into the next text
        idx = ends - k
        valid[idx[idx < windows]] = False
    hashes = value[valid]
    hashes ^= hashes >> np.uint64(31)  # mix so that near-equal windows get unrelated hashes
    hashes *= _MIX
    hashes ^= hashes >> np.uint64(29)
    offsets = np.concatenate([[0], np.cumsum(lengths - size + 1)]).astype(np.uint64)
    return hashes, offsets


def minhash_signatures(texts: Iterable[str], count: int, num_perm: int, size: int, seed: int = 0,
                       on_progress=None) -> np.ndarray:  # noqa: ANN001
    sigs = np.empty((count, num_perm), dtype=np.uint32)
    batch: list[str] = []
    row = 0
    for text in texts:
        batch.append(text)
        if len(batch) == CHUNK:
            sigs[row : row + len(batch)] = _digest(batch, num_perm, size, seed)
            row += len(batch)
            batch = []
            if on_progress:
                on_progress(row)
    if batch:
        sigs[row : row + len(batch)] = _digest(batch, num_perm, size, seed)
        row += len(batch)
    assert row == count, (row, count)
    if on_progress:
        on_progress(row)
    return sigs


def _digest(texts: list[str], num_perm: int, size: int, seed: int) -> np.ndarray:
    hashes, offsets = shingle_hashes(texts, size)
    matrix = rensa.RMinHash.digest_matrix_from_flat_token_hashes(hashes, offsets, num_perm, seed)
    return np.asarray(matrix.to_rows(), dtype=np.uint32)


def lsh_bands(num_perm: int, threshold: float) -> tuple[int, int]:
    """(bands, rows): the split whose S-curve midpoint (1/b)^(1/r) sits just below the threshold.

    Aiming below it favours recall; precision comes from verifying every candidate pair.
    """
    target = max(0.3, threshold - 0.15)
    options = [(num_perm // r, r) for r in range(1, num_perm + 1) if num_perm % r == 0]
    return min(options, key=lambda br: abs((1 / br[0]) ** (1 / br[1]) - target))


def similar_pairs(sigs: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Verified pairs (i, j, similarity) with estimated Jaccard >= threshold, i < j."""
    n, num_perm = sigs.shape
    if n < 2:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, np.empty(0)
    bands, rows = lsh_bands(num_perm, threshold)
    firsts, others = [], []
    for b in range(bands):
        block = sigs[:, b * rows : (b + 1) * rows].astype(np.uint64)
        key = np.zeros(n, dtype=np.uint64)
        for c in range(rows):
            key = key * _MIX + block[:, c]
        order = np.argsort(key, kind="stable")
        sorted_key = key[order]
        starts = np.flatnonzero(np.r_[True, sorted_key[1:] != sorted_key[:-1]])
        run = np.repeat(starts, np.diff(np.r_[starts, n]))  # index (in `order`) of each bucket's first row
        member = np.arange(n) != run
        firsts.append(order[run[member]])
        others.append(order[member])
    i = np.concatenate(firsts)
    j = np.concatenate(others)
    lo, hi = np.minimum(i, j), np.maximum(i, j)
    pair_ids = np.unique(lo.astype(np.int64) * n + hi)
    lo, hi = pair_ids // n, pair_ids % n
    sims = pair_similarity(sigs, lo, hi)
    keep = sims >= threshold
    return lo[keep], hi[keep], sims[keep]


def pair_similarity(sigs: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    out = np.empty(len(i))
    for start in range(0, len(i), 50_000):
        sl = slice(start, start + 50_000)
        out[sl] = (sigs[i[sl]] == sigs[j[sl]]).mean(axis=1)
    return out


def cluster_representatives(n: int, i: np.ndarray, j: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """For each row, the row its cluster keeps (itself when kept or unclustered)."""
    rep = np.arange(n)
    if len(i) == 0:
        return rep
    graph = coo_matrix((np.ones(len(i), dtype=np.int8), (i, j)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    order = np.lexsort((rank, labels))  # within each component, lowest rank first
    first_of = {}
    for idx in order:
        first_of.setdefault(labels[idx], idx)
    in_pairs = np.unique(np.concatenate([i, j]))
    rep[in_pairs] = [first_of[labels[x]] for x in in_pairs]
    return rep
