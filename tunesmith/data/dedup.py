"""Exact and near-duplicate detection over whole columns.

Near duplicates: MinHash signatures of byte n-gram shingles (computed in Rust by `rensa`), LSH
banding to find candidate pairs, every candidate verified on its signatures, and connected
components (scipy) so that each cluster keeps exactly one member: the one with the lowest rank
(earliest split, then earliest input row).

`SignatureStore` keeps the signatures of a whole dataset on disk (n x num_perm x 4 bytes: 1 GiB for
2M rows at 128 permutations), so that preparation's memory does not grow with them; the in-memory
functions serve small sets (retraining, synthetic filtering) and give the same pairs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import rensa
from scipy.sparse import coo_matrix

CHUNK = 2048  # rows per signature batch: rensa returns Python lists (40 bytes a value); small batches are faster too
PAIRS = 32_768  # candidate pairs verified at once: bounds the signature rows read back per batch
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


def signature_chunks(texts: Iterable[str], num_perm: int, size: int, seed: int = 0) -> Iterator[np.ndarray]:
    """The MinHash signatures of `texts`, CHUNK rows (uint32, num_perm columns) at a time."""
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == CHUNK:
            yield _digest(batch, num_perm, size, seed)
            batch = []
    if batch:
        yield _digest(batch, num_perm, size, seed)


def minhash_signatures(texts: Iterable[str], count: int, num_perm: int, size: int, seed: int = 0,
                       on_progress=None) -> np.ndarray:  # noqa: ANN001
    sigs = np.empty((count, num_perm), dtype=np.uint32)
    row = 0
    for chunk in signature_chunks(texts, num_perm, size, seed):
        sigs[row : row + len(chunk)] = chunk
        row += len(chunk)
        if on_progress:
            on_progress(row)
    assert row == count, (row, count)
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


def band_keys(sigs: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(bands, n) uint64: one key per band of each signature; equal keys share an LSH bucket."""
    keys = np.empty((bands, len(sigs)), dtype=np.uint64)
    for b in range(bands):
        block = sigs[:, b * rows : (b + 1) * rows].astype(np.uint64)
        key = np.zeros(len(sigs), dtype=np.uint64)
        for c in range(rows):
            key = key * _MIX + block[:, c]
        keys[b] = key
    return keys


def candidate_pairs(band: Callable[[int], np.ndarray], bands: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(lo, hi) with lo < hi, sorted and unique: in every band, each row paired with the first row of its
    bucket (a star, so a bucket of k rows gives k - 1 pairs, never k^2). `band(b)` gives band b's keys."""
    pair_ids = np.empty(0, dtype=np.int64)
    for b in range(bands):
        key = band(b)
        order = np.argsort(key, kind="stable")
        sorted_key = key[order]
        starts = np.flatnonzero(np.r_[True, sorted_key[1:] != sorted_key[:-1]])
        run = np.repeat(starts, np.diff(np.r_[starts, n]))  # index (in `order`) of each bucket's first row
        member = np.arange(n) != run
        i, j = order[run[member]], order[member]
        del key, order, sorted_key, run, member
        pair_ids = np.union1d(pair_ids, np.minimum(i, j).astype(np.int64) * n + np.maximum(i, j))
    return pair_ids // n, pair_ids % n


def similar_pairs(sigs: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Verified pairs (i, j, similarity) with estimated Jaccard >= threshold, i < j."""
    n, num_perm = sigs.shape
    if n < 2:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, np.empty(0)
    bands, rows = lsh_bands(num_perm, threshold)
    lo, hi = candidate_pairs(lambda b: band_keys(sigs[:, b * rows : (b + 1) * rows], 1, rows)[0], bands, n)
    sims = pair_similarity(sigs, lo, hi)
    keep = sims >= threshold
    return lo[keep], hi[keep], sims[keep]


def pair_similarity(sigs: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    out = np.empty(len(i))
    for start in range(0, len(i), 50_000):
        sl = slice(start, start + 50_000)
        out[sl] = (sigs[i[sl]] == sigs[j[sl]]).mean(axis=1)
    return out


class SignatureStore:
    """The signatures of n rows on disk: row by row in one file, read back only for the pairs being
    verified, and each band's LSH keys in another, read back one band at a time. Memory stays at a
    few arrays of n keys however many permutations there are; the page cache keeps the files warm."""

    def __init__(self, folder: Path, count: int, num_perm: int, threshold: float) -> None:
        self.n, self.num_perm, self.threshold = count, num_perm, threshold
        self.bands, self.rows = lsh_bands(num_perm, threshold)
        self._sig_path = folder / "signatures.u32"
        self._sig_file = self._sig_path.open("wb")
        self._band_file = (folder / "bands.u64").open("w+b")
        self._reader: BinaryIO | None = None
        self.written = 0

    def append(self, sigs: np.ndarray) -> None:
        """The next rows' signatures (in row order)."""
        self._sig_file.write(np.ascontiguousarray(sigs, dtype=np.uint32).tobytes())
        for b, key in enumerate(band_keys(sigs, self.bands, self.rows)):  # band-major: a band is one read
            self._band_file.seek((b * self.n + self.written) * 8)
            self._band_file.write(key.tobytes())
        self.written += len(sigs)

    def _finish(self) -> BinaryIO:
        if self._reader is None:
            assert self.written == self.n, (self.written, self.n)
            self._sig_file.close()
            self._band_file.flush()
            self._reader = self._sig_path.open("rb")
        return self._reader

    def band(self, b: int, subset: np.ndarray | None = None) -> np.ndarray:
        self._finish()
        self._band_file.seek(b * self.n * 8)
        key = np.frombuffer(self._band_file.read(self.n * 8), dtype=np.uint64)
        return key if subset is None else key[subset]

    def signatures(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), num_perm) signatures of the given rows (sorted, unique), read from disk."""
        reader, size = self._finish(), self.num_perm * 4
        parts = []
        for run in np.split(rows, np.flatnonzero(np.diff(rows) != 1) + 1):  # one read per run of consecutive rows
            if len(run):
                reader.seek(int(run[0]) * size)
                parts.append(reader.read(size * len(run)))
        return np.frombuffer(b"".join(parts), dtype=np.uint32).reshape(len(rows), self.num_perm)

    def similarity(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Estimated Jaccard similarity of rows i[k] and j[k], as `pair_similarity` gives it."""
        out = np.empty(len(i))
        for start in range(0, len(i), PAIRS):
            a, b = i[start : start + PAIRS], j[start : start + PAIRS]
            rows = np.unique(np.concatenate([a, b]))
            sigs = self.signatures(rows)
            out[start : start + PAIRS] = (sigs[np.searchsorted(rows, a)] == sigs[np.searchsorted(rows, b)]).mean(axis=1)
        return out

    def similar_pairs(self, subset: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`similar_pairs` over the stored rows (or the sorted `subset` of them, positions into it)."""
        m = self.n if subset is None else len(subset)
        if m < 2:
            empty = np.empty(0, dtype=np.int64)
            return empty, empty, np.empty(0)
        lo, hi = candidate_pairs(lambda b: self.band(b, subset), self.bands, m)
        sims = self.similarity(lo, hi) if subset is None else self.similarity(subset[lo], subset[hi])
        keep = sims >= self.threshold
        return lo[keep], hi[keep], sims[keep]

    def close(self) -> None:
        for f in (self._sig_file, self._band_file, self._reader):
            if f is not None:
                f.close()


def cluster_representatives(n: int, i: np.ndarray, j: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """For each row, the kept row it duplicates (itself when kept or unpaired). Rows are taken in rank order and one
    goes only when it is similar to a row already kept: whole clusters (connected components) chained A~B~C and took
    C away for A, 0.66 alike, once B had gone."""
    rep = np.arange(n)
    if len(i) == 0:
        return rep
    graph = coo_matrix((np.ones(2 * len(i), dtype=np.int8), (np.r_[i, j], np.r_[j, i])), shape=(n, n)).tocsr()
    kept = np.zeros(n, dtype=bool)
    paired = np.unique(np.concatenate([i, j]))
    for row in paired[np.argsort(rank[paired], kind="stable")].tolist():
        near = graph.indices[graph.indptr[row]:graph.indptr[row + 1]]
        near = near[kept[near]]
        if len(near):
            rep[row] = near[np.argmin(rank[near])]
        else:
            kept[row] = True
    return rep
