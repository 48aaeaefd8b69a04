"""Run: `.venv/bin/python bench/int8_calibrated_bench.py --run runs/food-reviews [--rounds 6]`

A question for the int8 serving targets (issue 14), answered per host kind: would int8 with its activations
calibrated ahead of time (onnxruntime's `quantize_static`, QDQ) and served on OpenVINO beat what `tunesmith serve`
runs today? In process, on the run's test reviews (the first 320 in batches of 32 in arrival order, each sorted by
length as the server sorts a batch; runs recorded before this change sorted all 320 together: server-shaped batches
hold about 9% more tokens), the ways taking turns round by round (each keeps every round; the host drifts up to 2x in
minutes):

- `openvino-bf16` on the fp32 graph, the default engine where the CPU has native bf16,
- the `onnx-int8` export (dynamic int8, onnxruntime), the int8 tunesmith serves today,
- onnxruntime fp32 on the fp32 graph, the default elsewhere,
- calibrated int8 on OpenVINO: QDQ, per-channel int8 weights, uint8 activations calibrated (MinMax) on the first 256
  training reviews, for the products with a weight only (every operator onnxruntime can quantise did not compile on
  OpenVINO 2026.4; every MatMul, the attention's too, ran slower on AMX), the rest of the pass in bf16 (where native)
  and in fp32.

Test accuracy of each on the whole test split, and this machine's fp32, bf16 and int8 matmul peaks (serve_bench's:
before and after, the best kept) against the model's GFLOP per text: the share of its roofline each way reaches.
Prints the host's CPU flags. Writes bench/results/int8_calibrated_bench.json. Exits 0: a measurement, not a target.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import ceiling
import serve_bench

RESULTS = Path(__file__).parent / "results" / "int8_calibrated_bench.json"
CALIBRATION_TEXTS, TIMED_TEXTS, BATCH = 256, 320, 32


def calibrated_int8(run: object, source: Path, target: Path, texts: list[str]) -> None:
    """`source` (fp32 ONNX) with its weight products in QDQ int8, activation ranges from `texts`."""
    import logging

    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from transformers import AutoTokenizer

    from tunesmith.inference.predictor import _onnx_session
    from tunesmith.models.onnx_graph import onnx_feed

    tokenizer = AutoTokenizer.from_pretrained(run.model_dir)  # type: ignore[attr-defined]
    names = [i.name for i in _onnx_session(source).get_inputs()]
    feeds = [onnx_feed(tokenizer(texts[i:i + BATCH], padding=True, truncation=True,
                                 max_length=run.manifest.max_length, return_tensors="np"), names)  # type: ignore[attr-defined]
             for i in range(0, len(texts), BATCH)]

    class Feeds(CalibrationDataReader):
        def __init__(self) -> None:
            self.left = iter(feeds)

        def get_next(self) -> dict | None:
            return next(self.left, None)

    graph = onnx.load(str(source), load_external_data=False)
    weights = {i.name for i in graph.graph.initializer}
    products = [n.name for n in graph.graph.node if n.op_type in ("MatMul", "Gemm") and n.input[1] in weights]
    logging.getLogger().setLevel(logging.ERROR)  # per-channel axis and "pre-process first" advice, for each weight
    quantize_static(str(source), str(target), Feeds(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_quantize=products)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True, help="a trained classification run (make demo's runs/food-reviews)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    import numpy as np

    from tunesmith.artifacts import DatasetVersion, Run
    from tunesmith.inference import onnx_engine, openvino_engine
    from tunesmith.inference.predictor import Predictor
    from tunesmith.inference.serve_cache import chain
    from tunesmith.models import hardware

    run = Run(args.run)
    data = DatasetVersion(run.manifest.dataset)
    calibration = data.table("train").column("text").to_pylist()[:CALIBRATION_TEXTS]
    test = data.table("test")
    texts, gold = test.column("text").to_pylist(), test.column("label").to_pylist()
    timed = texts[:TIMED_TEXTS]
    info = ceiling.host()
    bf16 = hardware.native_bf16()
    print(f"host: {ceiling.cpu_label(info)}, {info['cores']} cores, flags {' '.join(info['flags'])}", flush=True)
    model_dir = next(f for f in chain(run) if (f / "config.json").is_file())
    rates_before = serve_bench.matmul_peaks(model_dir, bf16)

    def on_openvino(path: Path, precision: str) -> Predictor:
        predictor = Predictor(run.path, onnx_model=path, session=openvino_engine.compile_model(path, precision))
        predictor.pad_multiple = hardware.BF16_PAD_MULTIPLE  # as the openvino-bf16 engine serves
        return predictor

    with tempfile.TemporaryDirectory() as tmp:
        fp32 = onnx_engine.onnx_model(run)
        export = Path(tmp) / "onnx-int8"
        subprocess.run([*serve_bench.TS, "export", str(run.path), "--format", "onnx-int8", "--out", str(export)], check=True)
        static = Path(tmp) / "static-int8.onnx"
        started = time.perf_counter()
        calibrated_int8(run, fp32, static, calibration)
        print(f"calibrated int8 graph written in {time.perf_counter() - started:.0f} s", flush=True)
        # (name, predictor, precision of its roofline)
        ways = [("onnx-int8 export (dynamic int8, onnxruntime)", Predictor(export), "int8"),
                ("fp32 onnxruntime", Predictor(run.path, onnx_model=fp32), "fp32"),
                ("calibrated int8 on OpenVINO, rest fp32", on_openvino(static, "f32"), "int8")]
        if bf16:
            ways[:0] = [("openvino-bf16 (the default here)", on_openvino(fp32, "bf16"), "bf16")]
            ways.append(("calibrated int8 on OpenVINO, rest bf16", on_openvino(static, "bf16"), "int8"))
        acc = {name: serve_bench.accuracy(p, texts, gold) for name, p, _ in ways}
        speed: dict[str, list[float]] = {name: [] for name, _, _ in ways}
        for r in range(args.rounds):
            for name, predictor, _ in (ways if r % 2 == 0 else ways[::-1]):  # each way goes first in turn
                predictor.logits(timed[:BATCH], batch_size=BATCH)  # warm: shapes compiled, threads up
                started = time.perf_counter()
                for i in range(0, len(timed), BATCH):  # one call per request of 32 in arrival order, as the server
                    predictor.logits(timed[i:i + BATCH], batch_size=BATCH)  # sorts each batch (not all 320 at once)
                speed[name].append(len(timed) / (time.perf_counter() - started))
            print(f"round {r + 1}: " + ", ".join(f"{name} {v[-1]:.0f}" for name, v in speed.items()), flush=True)
    rates_after = serve_bench.matmul_peaks(model_dir, bf16)
    peaks = serve_bench.best_peaks(rates_before, rates_after)
    gflop = serve_bench.gflop_per_text(run.path, timed)
    print("\n| way | texts/s (median; min-max) | share of its roofline | test accuracy |\n|---|---|---|---|")
    rows = []
    for name, _, kind in ways:
        median = statistics.median(speed[name])
        share = median * gflop / peaks[kind] if gflop else None
        rows.append({"way": name, "texts_s": speed[name], "median": median, "precision": kind, "roofline_share": share,
                     "accuracy": acc[name]})
        print(f"| {name} | {median:.0f}; {min(speed[name]):.0f}-{max(speed[name]):.0f} | "
              f"{f'{share:.0%} of {kind}' if share else '-'} | {acc[name]:.4f} |")
    first = rows[0]
    for row in rows[1:]:
        ratios = np.array(row["texts_s"]) / np.array(first["texts_s"])
        print(f"{row['way']}: {ratios.min():.2f}-{ratios.max():.2f}x {first['way']} round by round")
    print("matmul peaks GFLOP/s (best of before/after): " + ", ".join(f"{k} {v:.0f}" for k, v in peaks.items())
          + (f"; {gflop:.2f} GFLOP per text" if gflop else ""))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"host": info, "run": str(args.run), "rounds": args.rounds, "timed_texts": len(timed),
                                    "gflop_per_text": gflop, "peaks_gflop_s": peaks,
                                    "matmul_gflop_s": {"before": rates_before, "after": rates_after}, "ways": rows},
                                   indent=2), encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
