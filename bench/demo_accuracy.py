"""Run: `make bench-accuracy`  or  `.venv/bin/python bench/demo_accuracy.py [--run runs/food-reviews] [--seed N]`

The demo's test accuracy against the plain Hugging Face Trainer's, trained on the same prepared split (issue 14:
tunesmith's speed levers may not cost accuracy: "final test accuracy on the demo within 1 point of the plain
Trainer's").

- plain Trainer: the best-configured one of `bench/train_bench.py` (`AutoModelForSequenceClassification`, dynamic
  padding, length-grouped batches, fp32), with the demo's epochs, learning rate, batch size and seed, validated each
  epoch and keeping the best checkpoint by validation accuracy, as `tunesmith train` keeps its best; seeded before
  its model is built, as transformers' examples do (Trainer seeds only in its constructor, after the new head's random
  init);
- tunesmith: `tunesmith train examples/food_reviews.yaml` (what `make demo` runs; or `--run` an existing demo run).

Both are scored on the test split by the same code (`tunesmith evaluate`'s accuracy and macro F1). Prints the wall time of
each training too (validation and checkpoints included). Exits 1 when tunesmith is more than 1 point below.
Writes bench/results/demo_accuracy.json (or --out). About 25 minutes on 2 AVX2 cores in fp32. One seed is one draw
(497 test reviews: a point is 5 of them); `--seed N` trains both sides with another training seed, same split.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import ceiling

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "examples" / "food_reviews.yaml"
RESULTS = Path(__file__).parent / "results" / "demo_accuracy.json"
MAX_LOSS = 0.01  # the "within 1 point"


def scores(gold: list[int], predicted: list[int], labels: list[str]) -> dict[str, float]:
    """Accuracy and macro F1 as `tunesmith evaluate` computes them (scikit-learn, through its metrics module)."""
    from tunesmith.evaluation.metrics import classification_metrics

    metrics = classification_metrics(gold, predicted, labels)
    return {"accuracy": metrics["accuracy"], "macro_f1": metrics["f1_macro"]}


def plain_trainer(dataset: Path, cfg: Any, model_dir: Path, work: Path, seed: int) -> dict[str, Any]:
    """The demo trained the way the transformers documentation shows, on tunesmith's prepared splits."""
    import numpy as np
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    import datasets

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    splits = {}
    for split in ("train", "validation", "test"):
        rows = datasets.Dataset.from_parquet(str(dataset / f"{split}.parquet"))
        rows = rows.select_columns(["text", "label_id"]).rename_column("label_id", "label")
        splits[split] = rows.map(lambda b: tokenizer(b["text"], truncation=True, max_length=cfg.model.max_length),
                                 batched=True)
    set_seed(seed)  # before the model, as transformers' run_glue.py does: the new head's init is part of the draw
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=len(cfg.task.labels))

    def metrics(p: Any) -> dict[str, float]:
        return scores(list(p.label_ids), list(np.argmax(p.predictions, axis=1)), cfg.task.labels)

    args = TrainingArguments(
        output_dir=str(work / "plain"), num_train_epochs=cfg.train.epochs, learning_rate=cfg.train.learning_rate or 5e-5,
        per_device_train_batch_size=cfg.train.batch_size, per_device_eval_batch_size=64, seed=seed,
        eval_strategy="epoch", save_strategy="epoch", load_best_model_at_end=True, metric_for_best_model="accuracy",
        save_total_limit=1, train_sampling_strategy="group_by_length", report_to="none", use_cpu=True,
    )
    trainer = Trainer(model=model, args=args, train_dataset=splits["train"], eval_dataset=splits["validation"],
                      data_collator=DataCollatorWithPadding(tokenizer), compute_metrics=metrics)
    started = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - started
    test = trainer.predict(splits["test"])
    return {"train_wall_s": wall, **metrics(test)}


def tunesmith_run(run: Path | None, work: Path, seed: int) -> tuple[Path, float | None]:
    if run is not None:
        return run, None
    run = work / "run"
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "tunesmith", "train", str(CONFIG), "--overwrite", "--set",
                    f"train.output_dir={run}", "--set", f"train.seed={seed}"], check=True, cwd=ROOT)
    return run, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, help="a finished demo run (default: train one now)")
    parser.add_argument("--seed", type=int, help="training seed of both sides (default: the demo config's)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where the JSON goes")
    args = parser.parse_args()
    if args.run is not None and args.seed is not None:
        parser.error("--seed trains both sides; a --run was trained with its own seed")
    import pyarrow.parquet as pq
    from train_bench import prepared

    from tunesmith.config import load_config
    from tunesmith.inference.predictor import Predictor
    from tunesmith.models.catalog import resolve_model_dir

    cfg = load_config(CONFIG)
    seed = cfg.train.seed if args.seed is None else args.seed
    dataset = prepared(CONFIG)
    test = pq.read_table(dataset / "test.parquet")
    gold = test.column("label_id").to_pylist()
    info = ceiling.host()
    print(f"host: {ceiling.cpu_label(info)}, flags {info['flags']}; dataset {dataset} ({test.num_rows} test rows)", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        run, ts_wall = tunesmith_run(args.run, work, seed)
        predictor = Predictor(run)
        predicted = predictor.predict(test.column("text").to_pylist()).label_ids
        ours = scores(gold, list(predicted), predictor.manifest.labels or [])
        ours["train_wall_s"] = ts_wall
        print(f"tunesmith: {ours}", flush=True)
        plain = plain_trainer(dataset, cfg, resolve_model_dir(cfg.model.name), work, seed)
        print(f"plain Trainer: {plain}", flush=True)
    ok = ours["accuracy"] >= plain["accuracy"] - MAX_LOSS
    print("| side | test accuracy | macro F1 | training wall time |\n|---|---|---|---|")
    for name, r in (("plain Trainer (dynamic padding, length-grouped, fp32)", plain), ("`tunesmith train`", ours)):
        wall = f"{r['train_wall_s'] / 60:.1f} min" if r["train_wall_s"] else "-"
        print(f"| {name} | {r['accuracy']:.4f} | {r['macro_f1']:.4f} | {wall} |")
    print(f"{'PASS' if ok else 'FAIL'}: tunesmith's test accuracy within {100 * MAX_LOSS:.0f} point of the plain "
          f"Trainer's ({100 * (ours['accuracy'] - plain['accuracy']):+.2f} points)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"host": info, "config": str(CONFIG.relative_to(ROOT)), "seed": seed,
                                    "test_rows": test.num_rows, "tunesmith": ours, "plain_trainer": plain, "pass": ok},
                                   indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
