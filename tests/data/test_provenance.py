"""Collected rows in the pipeline: provenance and synthetic columns, synthetic rows kept out of the
test split, a collector's group, per-source defaults, and old datasets without the new columns."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest

from tests.data.test_prepare import labelled, sentences, write_csv
from tunesmith.config import SPLITS
from tunesmith.data.prepare import prepare
from tunesmith.data.records import with_provenance_columns
from tunesmith.errors import ConfigError, DataError

FOODS = "soup bread coffee tea cheese honey pasta rice mango olives walnuts yogurt".split()
TEMPLATES = {"method": "templates", "per_label": 40, "seed": 1,
             "templates": {"pos": ["The {food} from {shop} was {good}, I would order it again {when}.",
                                   "Loved the {food} at {shop}; {good} and worth it {when}."],
                           "neg": ["The {food} from {shop} was {bad}, I would not order it again {when}.",
                                   "Disliked the {food} at {shop}; {bad} and not worth it {when}."]},
             "slots": {"food": FOODS, "shop": ["Mario's", "the corner deli", "Green Market", "Bakehouse"],
                       "good": ["delicious", "superb", "fresh"], "bad": ["stale", "bland", "soggy"],
                       "when": ["any day", "next week", "for sure"]}}


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def all_rows(version) -> dict[str, list[dict]]:
    return {s: version.table(s).to_pylist() for s in SPLITS}


def test_synthetic_rows_stay_out_of_test_and_real_rows_keep_the_proportions(tmp_path: Path, make_config) -> None:
    real = {"path": str(write_csv(tmp_path / "real.csv", labelled(200)))}
    version = prepare(make_config([real, {"synthetic": TEMPLATES}], collect_dir=str(tmp_path / "collected")))
    rows = all_rows(version)
    real_counts = {s: sum(not r["synthetic"] for r in rows[s]) for s in SPLITS}
    synthetic = {s: sum(r["synthetic"] for r in rows[s]) for s in SPLITS}
    assert real_counts == {"train": 160, "validation": 20, "test": 20}  # the configured 80/10/10 of the real rows
    assert synthetic["test"] == 0 and synthetic["train"] > 0 and synthetic["validation"] > 0
    assert 6 <= synthetic["train"] / synthetic["validation"] <= 10  # train:validation 8:1, as configured
    for r in (r for s in SPLITS for r in rows[s]):
        if r["synthetic"]:
            prov = json.loads(r["provenance"])
            assert prov["kind"] == "synthetic" and prov["method"] == "templates" and prov["collector"].startswith("tunesmith")
        else:
            assert r["provenance"] is None

    report = version.report()
    assert report["provenance"]["test"] == {"rows": 20, "synthetic": 0, "kinds": {"file": 20}}
    assert report["provenance"]["train"]["kinds"] == {"file": 160, "synthetic": synthetic["train"]}
    md = (version.path / "report.md").read_text(encoding="utf-8")
    assert "## Where the rows come from" in md and "| split | rows | synthetic rows | from file | from synthetic |" in md and "| test | 20 | 0 (0.0%) | 20 | 0 |" in md


def test_in_test_lets_synthetic_rows_into_the_test_split(tmp_path: Path, make_config) -> None:
    real = {"path": str(write_csv(tmp_path / "real.csv", labelled(100)))}
    source = {"synthetic": {**TEMPLATES, "in_test": True}}
    version = prepare(make_config([real, source], collect_dir=str(tmp_path / "collected")))
    assert any(version.table("test").column("synthetic").to_pylist())

    with pytest.raises(ConfigError, match=r"data.sources.1: `split: test` would test on synthetic rows"):
        prepare(make_config([real, {"synthetic": TEMPLATES, "split": "test"}], collect_dir=str(tmp_path / "collected")))


def test_collector_group_provenance_and_defaults(tmp_path: Path, make_config) -> None:
    texts = sentences(60, seed=5)
    records = [{"answer": t, "_group": f"respondent-{i // 4}",
                "_provenance": {"kind": "survey", "origin": f"survey.csv:{i + 2}", "collected_at": "x", "collector": "c"},
                **({"label": "neg"} if i % 2 else {})}  # every other answer lacks a label: the source's default fills it
               for i, t in enumerate(texts)]
    survey = {"path": str(write_jsonl(tmp_path / "survey.jsonl", records)), "fields": {"text": "answer"},
              "defaults": {"label": "pos"}}
    unlabelled = {"path": str(write_csv(tmp_path / "pages.csv", [{"text": t} for t in sentences(20, seed=9)])),
                  "defaults": {"label": "neg"}}  # no label column at all: the default is every row's label
    version = prepare(make_config([survey, unlabelled]))
    rows = [r for s in SPLITS for r in version.table(s).to_pylist()]
    from_survey = {r["text"]: r for r in rows if r["source"].endswith("survey.jsonl")}
    for i, t in enumerate(texts):
        if t in from_survey:
            r = from_survey[t]
            assert r["group"] == f"respondent-{i // 4}" and r["label"] == ("neg" if i % 2 else "pos")
            assert json.loads(r["provenance"])["kind"] == "survey" and r["synthetic"] is False
    assert len(from_survey) == 60 and all(r["label"] == "neg" for r in rows if r["source"].endswith("pages.csv"))
    split_of_group = {}
    for s in SPLITS:
        for r in version.table(s).to_pylist():
            if r["group"] is not None:
                assert split_of_group.setdefault(r["group"], s) == s  # one respondent, one split

    # A configured group_by wins over the collector's group; reserved keys are never mistaken for fields.
    version = prepare(make_config([survey], split={"group_by": "answer"}))
    assert all(r["group"] == r["text"] for r in version.table("train").to_pylist())
    with pytest.raises(DataError, match=r"no record has 'missing'") as err:
        prepare(make_config([{**survey, "fields": {"text": "missing"}}]))
    assert "keys found: ['answer', 'label']" in str(err.value)


def test_a_paraphrase_never_sits_in_another_split_than_its_original(tmp_path: Path, make_config) -> None:
    real = labelled(100)
    paraphrases = [{"text": t, "label": real[i]["label"],
                    "_provenance": {"kind": "synthetic", "origin": "m", "paraphrase_of": f"real.csv:{i + 2}"}}
                   for i, t in enumerate(sentences(100, seed=7))]
    version = prepare(make_config([{"path": str(write_csv(tmp_path / "real.csv", real))},
                                   {"path": str(write_jsonl(tmp_path / "para.jsonl", paraphrases))}]))
    split_of = {r["id"]: s for s in SPLITS for r in version.table(s).to_pylist()}
    kept = [(s, r) for s in SPLITS for r in version.table(s).to_pylist() if r["synthetic"]]
    assert kept and all(s != "test" for s, _ in kept)
    for s, r in kept:
        assert split_of[json.loads(r["provenance"])["paraphrase_of"]] == s
    removed = [q for q in version.quarantine() if q["stage"] == "leakage"]
    assert removed and all(q["reason"].startswith("paraphrase duplicate of 'real.csv:") for q in removed)
    assert "paraphrases" in version.report()["leakage"]["checked"]
    assert Counter(split_of[f"real.csv:{i + 2}"] for i in range(100))["test"] == 10


def test_old_dataset_tables_get_the_new_columns() -> None:
    old = pa.table({"id": ["a", "b"], "text": ["x", "y"]})
    filled = with_provenance_columns(old)
    assert filled.column("provenance").to_pylist() == [None, None] and filled.column("synthetic").to_pylist() == [False, False]
    assert with_provenance_columns(filled).equals(filled)


def test_synthetic_rows_read_back_from_a_csv_stay_out_of_test(tmp_path: Path, make_config) -> None:
    """A CSV (an annotation export) holds the provenance as JSON text: its synthetic rows are still synthetic, and
    the provenance is stored once, not as a JSON string of JSON."""
    rows = labelled(100)
    for i, r in enumerate(rows):
        kind = "synthetic" if i % 2 else "file"
        r["_provenance"] = json.dumps({"kind": kind, **({"method": "templates"} if i % 2 else {})})
    version = prepare(make_config([{"path": str(write_csv(tmp_path / "exported.csv", rows))}]))
    found = all_rows(version)
    assert sum(r["synthetic"] for r in found["train"]) > 0
    assert not any(r["synthetic"] for r in found["test"]) and found["test"]
    assert all(json.loads(r["provenance"])["kind"] in ("synthetic", "file") for s in SPLITS for r in found[s])
