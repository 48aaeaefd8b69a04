"""Run: `make bench-feedback`  or  `.venv/bin/python bench/feedback_bench.py [--run RUN] [--pg URL]`

The monitoring loop's costs, on one machine in one run:

1. what the prediction log costs the served predict path: `tunesmith serve RUN` with a store (every
   answer logged) against the same server without one, 32 concurrent clients, the two taking turns
   (this host's speed drifts);
2. feedback throughput: `POST /v1/feedback` items/s at 32 concurrent clients, each item committed
   before its 201, on SQLite and (with --pg) PostgreSQL.

Targets (issue 11): the log costs the predict path at most 10% throughput. Feedback throughput is
reported, not judged. Exits 1 when the target is missed. Without --run it trains a short minilm run
first (about 2 minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
from pathlib import Path

import httpx
from serve_bench import load, start_server, train_quick_run

MAX_LOG_COST = 0.10


def texts_of(n: int) -> list[str]:
    from tunesmith.artifacts import DatasetVersion

    table = DatasetVersion(Path("datasets/food-reviews")).table("test") if Path("datasets/food-reviews").exists() else None
    base = table.column("text").to_pylist() if table is not None else [f"great coffee number {i}, will buy again" for i in range(50)]
    return [base[i % len(base)] for i in range(n)]


def predict_rate(run: Path, texts: list[str], extra: tuple[str, ...]) -> float:
    proc, url = start_server(run, extra)
    try:
        rate, _ = asyncio.run(load(url, texts, 32))
        return rate
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def feedback_rate(run: Path, db: str, items: int) -> float:
    proc, url = start_server(run, ("--db", db))
    try:
        ids = [httpx.post(f"{url}/v1/predict", json={"text": f"review {i}"}, timeout=60).json()["id"] for i in range(64)]
        bodies = [json.dumps({"request_id": ids[i % len(ids)], "rating": 1 + i % 5}).encode() for i in range(items)]
        rate, _ = asyncio.run(load(url, [], 32, endpoint=b"/v1/feedback", bodies=bodies, ok=b"201"))
        return rate
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a classification run folder (default: a short minilm run)")
    parser.add_argument("--requests", type=int, default=400, help="texts per predict measurement")
    parser.add_argument("--items", type=int, default=2000, help="feedback items per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="turns each predict setup gets")
    parser.add_argument("--pg", help="a PostgreSQL URL to measure feedback on as well")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = args.run or train_quick_run(Path(tmp))
        texts = texts_of(args.requests)
        plain, logged = [], []
        for i in range(args.rounds):  # in turns: drift hits both sides alike
            plain.append(predict_rate(run, texts, ()))
            logged.append(predict_rate(run, texts, ("--db", f"sqlite:///{tmp}/log{i}.db")))
        p, lg = statistics.median(plain), statistics.median(logged)
        cost = 1 - lg / p
        print(f"predict, 32 clients: no log {p:.1f} texts/s, prediction log on (SQLite) {lg:.1f} texts/s "
              f"(rounds: {[round(x, 1) for x in plain]} vs {[round(x, 1) for x in logged]})")
        print(f"log cost: {cost:+.1%} of throughput (target at most {MAX_LOG_COST:.0%}): {'PASS' if cost <= MAX_LOG_COST else 'FAIL'}")
        stores = [("SQLite", f"sqlite:///{tmp}/feedback.db")] + ([("PostgreSQL", args.pg)] if args.pg else [])
        for name, db in stores:
            print(f"feedback, 32 clients, {name}: {feedback_rate(run, db, args.items):.0f} items/s (each committed before its 201)")
    return 0 if cost <= MAX_LOG_COST else 1


if __name__ == "__main__":
    sys.exit(main())
