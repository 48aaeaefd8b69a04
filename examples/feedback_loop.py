"""The monitor-and-iterate loop on the demo model, end to end with the real commands:

    1. train the demo recipe on 4,000 of the packaged reviews (examples/food_reviews_loop.yaml)
    2. register it as production of 'food-reviews' and serve it (`tunesmith serve --model food-reviews`)
    3. traffic: the other 1,000 reviews are sent by simulated users; a reviewer labels what the model
       answered (POST /v1/feedback with the right label: a correction when the model was wrong, a
       confirmation when it was right), so the held-out feedback is a fair sample, not only mistakes
    4. `tunesmith retrain --model food-reviews`: new dataset version, candidate, paired tests, decision
    5. `tunesmith registry list`, and the retrain report

Run from the repository root after `make install`:  python examples/feedback_loop.py [--reviews 300]
Everything it writes is under runs/loop/ (the store, the server log, the retrain folder).
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "examples" / "food_reviews_loop.yaml"
RUN = ROOT / "runs" / "food-reviews-loop"
WORK = ROOT / "runs" / "loop"


def tunesmith(*args: str) -> None:
    print(f"\n$ tunesmith {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, "-m", "tunesmith", *args], check=True, cwd=ROOT)


def traffic(n: int) -> list[tuple[str, str]]:
    """(review, true label) of the packaged reviews the production model never saw."""
    from tunesmith.config import SourceSpec
    from tunesmith.data.packaged import read

    rows = [r.record for r in read(SourceSpec(name="food-reviews", subset="test"))]
    return [(r["text"], r["label"]) for r in rows[:n]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reviews", type=int, default=300, help="reviews sent and labelled (of 1,000)")
    parser.add_argument("--mode", choices=["full", "incremental"], default=None, help="retrain mode (default: the config's)")
    parser.add_argument("--set", action="append", default=[], metavar="retrain.KEY=VALUE", help="passed to tunesmith retrain")
    args = parser.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    os.environ["TUNESMITH_DB"] = f"sqlite:///{WORK / 'store.db'}"
    if not (RUN / "run.json").exists():
        tunesmith("train", str(CONFIG))
    from tunesmith.registry.service import Registry
    from tunesmith.store.db import Store

    if Registry(Store(os.environ["TUNESMITH_DB"])).production("food-reviews") is None:
        tunesmith("registry", "add", str(RUN), "--model", "food-reviews", "--stage", "production")

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    print(f"\n$ tunesmith serve --model food-reviews --port {port}", flush=True)
    log = (WORK / "server.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "tunesmith", "serve", "--model", "food-reviews", "--port", str(port)],
                              stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        with httpx.Client(base_url=url, timeout=120) as http:
            for _ in range(600):
                try:
                    if http.get("/readyz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.5)
            reviews = traffic(args.reviews)
            right = sent = 0
            for start in range(0, len(reviews), 16):  # users send small batches; a reviewer labels every answer
                batch = reviews[start:start + 16]
                answer = http.post("/v1/predict", json={"model": "food-reviews", "texts": [t for t, _ in batch],
                                                        "user": f"user-{start // 16 % 40}"}).json()
                for i, ((_, truth), prediction) in enumerate(zip(batch, answer["predictions"], strict=True)):
                    ok = prediction["label"] == truth
                    right += ok
                    r = http.post("/v1/feedback", json={"request_id": answer["id"], "index": i, "label": truth,
                                                       "rating": "up" if ok else "down", "user_id": "reviewer-1"})
                    r.raise_for_status()
                    sent += 1
            print(f"{sent} answers labelled by the reviewer: production was right on {right} ({right / sent:.1%})")
    finally:
        server.terminate()
        server.wait(timeout=30)

    tunesmith("retrain", "--model", "food-reviews", "--out", str(WORK / f"retrain-{int(time.time())}"),
              *(["--mode", args.mode] if args.mode else []), *(x for o in args.set for x in ("--set", o)))
    tunesmith("registry", "list", "--model", "food-reviews")


if __name__ == "__main__":
    main()
