"""Preparation works a chunk at a time (table passes, signatures, pair checks, report statistics) and
keeps MinHash signatures on disk: the result must not depend on where the chunks break."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from tests.data.test_prepare import sentences, write_csv
from tunesmith.data import dedup, prepare, report


def reviews(n: int, seed: int = 0) -> list[str]:
    """Distinct texts, a tenth of them followed by a near copy (a few characters more)."""
    texts = sentences(n, seed)
    return texts + [t + rng.choice([" !!", " ok", ", yes"]) for rng in [random.Random(seed)] for t in rng.sample(texts, n // 10)]


def test_stored_signatures_find_the_pairs_the_in_memory_ones_do(tmp_path: Path) -> None:
    texts = reviews(300)
    sigs = dedup.minhash_signatures(texts, len(texts), 64, 5, seed=3)
    store = dedup.SignatureStore(tmp_path, len(texts), 64, 0.5)
    for start, stop in [(0, 7), (7, 150), (150, len(texts))]:  # uneven appends
        store.append(sigs[start:stop])
    try:
        expected = dedup.similar_pairs(sigs, 0.5)
        assert len(expected[0]) > 10  # the near copies are found
        for got, want in zip(store.similar_pairs(), expected, strict=True):
            np.testing.assert_array_equal(got, want)
        subset = np.sort(np.random.default_rng(0).choice(len(texts), 200, replace=False))
        for got, want in zip(store.similar_pairs(subset), dedup.similar_pairs(sigs[subset], 0.5), strict=True):
            np.testing.assert_array_equal(got, want)
        i, j = np.array([0, 5, 5, 299]), np.array([1, 6, 7, 3])
        np.testing.assert_array_equal(store.similarity(i, j), dedup.pair_similarity(sigs, i, j))
        np.testing.assert_array_equal(store.signatures(np.array([2, 3, 4, 10])), sigs[[2, 3, 4, 10]])
    finally:
        store.close()


def outputs(version) -> dict[str, object]:
    rep = json.loads((version.path / "report.json").read_text(encoding="utf-8"))
    rep.pop("seconds")
    rep.pop("created_at")
    return {"fingerprint": version.manifest.fingerprint, "counts": version.manifest.counts, "report": rep,
            "quarantine": (version.path / "quarantine.jsonl").read_text(encoding="utf-8")}


@pytest.mark.parametrize("near", [True, False])
def test_tiny_chunks_give_the_same_dataset(tmp_path: Path, make_config, monkeypatch: pytest.MonkeyPatch, near: bool) -> None:
    rng = random.Random(1)
    texts = reviews(400, seed=1)
    rows = [{"text": t, "label": rng.choice("ab"), "user": f"u{rng.randrange(60)}" if rng.random() < 0.5 else ""}
            for t in texts]
    rows += [dict(rows[i], text=rows[i]["text"].upper()) for i in range(0, 60, 3)]  # exact copies
    rows += [dict(rows[i], label="b" if rows[i]["label"] == "a" else "a") for i in range(1, 40, 7)]  # conflicting
    held_out = [{"text": t, "label": "a", "user": ""} for t in texts[100:120]]  # copies in a pre-assigned test split
    sources = [{"path": str(write_csv(tmp_path / "d.csv", rows))},
               {"path": str(write_csv(tmp_path / "test.csv", held_out)), "split": "test"}]
    config = lambda: make_config(sources, dedup={"near": near, "conflicts": "majority"}, split={"group_by": "user"})  # noqa: E731

    whole = outputs(prepare.prepare(config()))
    for module, name, size in [(prepare, "CHUNK", 7), (dedup, "CHUNK", 5), (dedup, "PAIRS", 3), (report, "CHUNK", 4)]:
        monkeypatch.setattr(module, name, size)
    chunked = outputs(prepare.prepare(config()))
    assert chunked == whole
    stages = {json.loads(line)["stage"] for line in whole["quarantine"].splitlines()}
    assert {"exact_duplicate", "conflict"} <= stages
    assert ("near_duplicate" in stages) == near
    assert ("leakage" in stages) == (not near)  # near copies in different splits, when not removed before


def test_take_rows_is_arrow_take() -> None:
    def batch(a: int, b: int) -> pa.RecordBatch:
        return pa.record_batch({"text": pa.array([f"t{i}" if i % 4 else None for i in range(a, b)], pa.string()),
                                "n": pa.array(range(a, b), pa.int64())})

    table = pa.Table.from_batches([batch(0, 5), batch(5, 5), batch(5, 17), batch(17, 20)])
    table = table.append_column("m", pa.array([i * 2 for i in range(20)]))  # a column chunked otherwise
    rng = np.random.default_rng(0)
    for rows in [[], [3], [19, 0, 7, 7, 5], np.sort(rng.integers(0, 20, 30)), rng.integers(0, 20, 30)]:
        assert prepare.take_rows(table, rows).equals(table.take(pa.array(rows, pa.int64())))
    with pytest.raises(IndexError):
        prepare.take_rows(table, [20])
