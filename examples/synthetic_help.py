"""Does synthetic data help? The demo task with a small real training set (200 reviews), trained twice:

    real only        the 200 real reviews
    real + synthetic the same 200 plus the reviews the packaged SmolLM2-135M wrote (examples/food_reviews_synthetic.yaml)

Both are judged on the same real test split (the demo's, 497 reviews, never synthetic), with the same
recipe and seed; the script prints both accuracies and macro-F1 and McNemar's exact test on the paired
answers (is the difference more than chance?), and writes runs/synthetic-help.json.

Run from the repository root after `make install`:  python examples/synthetic_help.py
(about 10 minutes on 2 cores: the generation is most of it; `tunesmith collect` reuses finished rows).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "examples" / "food_reviews_synthetic.yaml"


def tunesmith(*args: str) -> None:
    print(f"\n$ tunesmith {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, "-m", "tunesmith", *args], check=True, cwd=ROOT)


def real_only_config() -> Path:
    """The same config without its synthetic source, written beside it (relative paths keep working)."""
    raw = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    raw["name"] = "food-reviews-real200"
    raw["data"]["sources"] = [s for s in raw["data"]["sources"] if "synthetic" not in s]
    path = CONFIG.with_name("food_reviews_real200.generated.yaml")
    path.write_text("# written by examples/synthetic_help.py: food_reviews_synthetic.yaml without its synthetic source\n"
                    + yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def mcnemar_of(real_run: Path, synthetic_run: Path) -> dict[str, float]:
    """Both runs' answers on the same test reviews, paired: McNemar's exact test."""
    import pyarrow.parquet as pq

    from tunesmith.evaluation.paired import mcnemar
    from tunesmith.inference.predictor import Predictor

    test = pq.read_table(ROOT / "datasets" / real_run.name / "test.parquet").to_pydict()
    answers = [Predictor(run).predict(test["text"]).labels for run in (real_run, synthetic_run)]
    result = mcnemar(test["label"], *answers)
    return {"p_value": result.p_value, "only_synthetic_right": result.detail["only_candidate_right"],
            "only_real_right": result.detail["only_reference_right"]}


def main() -> None:
    if not (ROOT / "datasets" / "food-reviews" / "test.parquet").exists():
        tunesmith("data", "prepare", "examples/food_reviews.yaml", "--quiet")
    tunesmith("collect", str(CONFIG.relative_to(ROOT)))
    results = {}
    for name, config in (("real only", real_only_config()), ("real + synthetic", CONFIG)):
        rel = str(config.relative_to(ROOT))
        tunesmith("data", "prepare", rel)
        tunesmith("train", rel, "--overwrite")
        run = ROOT / "runs" / yaml.safe_load(config.read_text(encoding="utf-8"))["name"]
        tunesmith("evaluate", str(run.relative_to(ROOT)))
        report = json.loads((run / "eval" / "test" / "report.json").read_text(encoding="utf-8"))
        counts = json.loads((ROOT / "datasets" / run.name / "report.json").read_text(encoding="utf-8"))
        train = counts["provenance"]["train"] if counts.get("provenance") else {"rows": counts["counts"]["train"], "synthetic": 0}
        results[name] = {"train_rows": train["rows"], "synthetic_rows": train["synthetic"],
                         "test_accuracy": report["metrics"]["accuracy"], "test_f1_macro": report["metrics"]["f1_macro"],
                         "test_rows": counts["counts"]["test"]}
    paired = mcnemar_of(ROOT / "runs" / "food-reviews-real200", ROOT / "runs" / "food-reviews-synthetic")
    results["mcnemar"] = paired
    print(f"\n{'':18}{'train rows':>12}{'synthetic':>11}{'test acc':>10}{'test F1':>9}")
    for name, r in results.items():
        print(f"{name:18}{r['train_rows']:>12}{r['synthetic_rows']:>11}{r['test_accuracy']:>10.3f}{r['test_f1_macro']:>9.3f}")
    print(f"McNemar (exact), real + synthetic vs real only: {paired['only_synthetic_right']} test reviews only the first "
          f"gets right, {paired['only_real_right']} only the second; p = {paired['p_value']:.3f}")
    (ROOT / "runs" / "synthetic-help.json").write_text(json.dumps(results, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
