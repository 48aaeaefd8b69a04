"""Behaviour of the whole preparation pipeline on small generated files."""

from __future__ import annotations

import csv
import json
import random
import re
from pathlib import Path

import pytest

from tunesmith.data.prepare import prepare
from tunesmith.errors import ConfigError, DataError

WORDS = ("apple banana cherry coffee tea bread butter cheese honey lemon mango olive pepper rice salt sugar "
         "vanilla walnut yogurt almond basil cocoa ginger garlic oat pasta soup sauce steak tofu").split()
ADJ = "great awful tasty bland fresh stale sweet bitter crunchy soggy fragrant cheap pricey lovely".split()


def sentences(n: int, seed: int = 0) -> list[str]:
    """Distinct sentences, different enough that none is a near duplicate of another."""
    rng = random.Random(seed)
    out: set[str] = set()
    while len(out) < n:
        words = rng.sample(WORDS, 6) + rng.sample(ADJ, 4)
        rng.shuffle(words)
        out.add(" ".join(words) + f" item {rng.randint(0, 10**6)}")
    return sorted(out)


def write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def labelled(n: int, seed: int = 0, labels: tuple[str, ...] = ("pos", "neg")) -> list[dict]:
    return [{"text": t, "label": labels[i % len(labels)]} for i, t in enumerate(sentences(n, seed))]


def test_every_row_is_in_a_split_or_in_quarantine(tmp_path: Path, make_config) -> None:
    rows = labelled(100)
    rows += [dict(rows[3]), {"text": "", "label": "pos"}, {"text": "fine", "label": ""}]
    version = prepare(make_config([{"path": str(write_csv(tmp_path / "d.csv", rows))}]))
    c = version.manifest.counts
    assert c["input"] == 103
    assert c["train"] + c["validation"] + c["test"] + c["quarantine"] == 103
    assert c["quarantine"] == len(version.quarantine()) == 3
    assert (c["train"], c["validation"], c["test"]) == (80, 10, 10)


def test_same_data_same_fingerprint_and_seed_changes_split(tmp_path: Path, make_config) -> None:
    src = [{"path": str(write_csv(tmp_path / "d.csv", labelled(60)))}]
    a = prepare(make_config(src)).manifest.fingerprint
    b = prepare(make_config(src)).manifest.fingerprint
    c = prepare(make_config(src, split={"seed": 1})).manifest.fingerprint
    assert a == b != c


def test_the_same_project_moved_elsewhere_has_the_same_fingerprint(tmp_path: Path, tiny_tokenizer: Path) -> None:
    # A row's source is its file's absolute path: a copied or moved project had another fingerprint, and evaluation
    # called the same data "different data".
    import shutil

    from tunesmith.config import load_config

    here = tmp_path / "here"
    here.mkdir()
    write_csv(here / "d.csv", labelled(40))
    (here / "p.yaml").write_text(f"name: t\ndata:\n  sources: [{{path: d.csv}}]\nmodel: {{name: {tiny_tokenizer}}}\n")
    shutil.copytree(here, tmp_path / "there")

    def prepared(folder: str):
        cfg = load_config(tmp_path / folder / "p.yaml")
        cfg.data.output_dir = tmp_path / folder / "datasets"
        return prepare(cfg)

    a, b = prepared("here"), prepared("there")
    assert a.path != b.path and a.manifest.fingerprint == b.manifest.fingerprint


def test_cleaning_strips_markup_and_normalises(tmp_path: Path, make_config) -> None:
    rows = labelled(20)
    rows[0]["text"] = "Loved it!<br /><br />Would buy   again &amp; again. ｆｕｌｌ marks, 3 < 5"
    version = prepare(make_config([{"path": str(write_csv(tmp_path / "d.csv", rows))}]))
    texts = [t for s in ("train", "validation", "test") for t in version.table(s).column("text").to_pylist()]
    cleaned = next(t for t in texts if t.startswith("Loved"))
    assert cleaned == "Loved it!\n\nWould buy again & again. full marks, 3 < 5"


def test_text_of_invisible_characters_only_is_empty(tmp_path: Path, make_config) -> None:
    # Zero-width spaces, a stray BOM, a soft hyphen: no visible character, yet the row was kept as an example.
    rows = labelled(20)
    rows[2]["text"] = "\u200b\u200b"
    rows[5]["text"] = " \ufeff\u00ad \u2060 "
    rows[8]["text"] = "\u200bNice tea\u200d"  # visible text around them stays
    version = prepare(make_config([{"path": str(write_csv(tmp_path / "d.csv", rows))}]))
    entries = {q["line"]: q for q in version.quarantine()}
    assert set(entries) == {4, 7}
    assert all(q["stage"] == "clean" and q["field"] == "text" and "empty after cleaning" in q["reason"]
               for q in entries.values())
    assert version.manifest.counts["input"] == 20


@pytest.mark.parametrize("strip_html", [None, True])
def test_chat_messages_are_kept_as_written_unless_cleaning_is_asked_for(tmp_path: Path, tiny_llama: Path,
                                                                        strip_html: bool | None) -> None:
    """Markup, indentation and blank lines in an answer are content (code, HTML, lists): the default keeps them, as
    OpenAI's fine-tuning does; `strip_html: true` cleans messages as text tasks' texts are cleaned."""
    from tests.test_train_chat import chat_raw
    from tunesmith.config import parse_config

    raw = chat_raw(tmp_path, tiny_llama, n=20)
    code = "def names() -> List<String>:\n    return  [\"a\",\n\n\n            \"b\"]  # ｆｕｌｌ &amp;"
    lines = (tmp_path / "chat.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    first["messages"][-1]["content"] = f"  {code}\n"
    (tmp_path / "chat.jsonl").write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    if strip_html is not None:
        raw["data"]["clean"] = {"strip_html": strip_html}
    cfg = parse_config(raw)
    assert cfg.data.clean.strip_html is bool(strip_html)
    version = prepare(cfg)
    answers = [m[-1]["content"] for split in ("train", "validation", "test")
               for m in version.table(split).column("messages").to_pylist()]
    kept = next(a for a in answers if a.startswith("def names"))
    assert kept == (code if strip_html is None else 'def names() -> List :\nreturn ["a",\n\n"b"] # full &')


def test_text_tasks_still_strip_markup_by_default(make_config, tmp_path: Path) -> None:
    assert make_config([{"path": str(write_csv(tmp_path / "d.csv", labelled(20)))}]).data.clean.strip_html is True


def test_lowercase_option(tmp_path: Path, make_config) -> None:
    rows = labelled(20)
    rows[0]["text"] = "SHOUTING Review Text here"
    version = prepare(make_config([{"path": str(write_csv(tmp_path / "d.csv", rows))}], clean={"lowercase": True}))
    texts = [t for s in ("train", "validation", "test") for t in version.table(s).column("text").to_pylist()]
    assert "shouting review text here" in texts


def test_exact_duplicates_ignore_case_and_spacing(tmp_path: Path, make_config) -> None:
    rows = labelled(30)
    rows.append({"text": "  " + rows[5]["text"].upper() + " ", "label": rows[5]["label"]})
    version = prepare(make_config([{"path": str(write_csv(tmp_path / "d.csv", rows))}]))
    [entry] = version.quarantine()
    assert entry["stage"] == "exact_duplicate" and entry["line"] == 32
    assert entry["reason"] == "exact duplicate of 'd.csv:7'"
    assert version.report()["duplicates"]["exact_removed"] == 1


@pytest.mark.parametrize(("policy", "kept"), [("majority", "neg"), ("drop", None), ("first", "pos")])
def test_conflicting_duplicates_follow_the_policy(tmp_path: Path, make_config, policy: str, kept: str | None) -> None:
    rows = labelled(30)
    text = "the same review text appears three times with different labels"
    rows += [{"text": text, "label": "pos"}, {"text": text, "label": "neg"}, {"text": text, "label": "neg"}]
    version = prepare(make_config([{"path": str(write_csv(tmp_path / "d.csv", rows))}], dedup={"conflicts": policy}))
    found = [(r["label"]) for s in ("train", "validation", "test") for r in version.table(s).to_pylist() if r["text"] == text]
    assert found == ([kept] if kept else [])
    conflicts = [q for q in version.quarantine() if q["stage"] == "conflict"]
    assert len(conflicts) == (3 if kept is None else 2)
    assert "values {'pos': 1, 'neg': 2}" in conflicts[0]["reason"]
    assert version.report()["duplicates"]["conflicts"] == 1


def test_regression_conflicts_average_the_scores(tmp_path: Path, make_config) -> None:
    rows = [{"text": t, "score": str(i / 10)} for i, t in enumerate(sentences(30))]
    rows += [{"text": "a duplicated snippet of movie review text", "score": "1.0"},
             {"text": "a duplicated snippet of movie review text", "score": "2.0"}]
    version = prepare(make_config([{"path": str(write_csv(tmp_path / "d.csv", rows))}], task={"type": "regression"}))
    scores = {r["text"]: r["score"] for s in ("train", "validation", "test") for r in version.table(s).to_pylist()}
    assert scores["a duplicated snippet of movie review text"] == pytest.approx(1.5)


def test_near_duplicates_are_removed_and_reported(tmp_path: Path, make_config) -> None:
    base = "this dark roast coffee has a rich smoky flavour and arrives fresh every single month from the shop"
    rows = labelled(40) + [{"text": base, "label": "pos"}, {"text": base.replace("rich", "deep"), "label": "pos"}]
    version = prepare(make_config([{"path": str(write_csv(tmp_path / "d.csv", rows))}]))
    [entry] = version.quarantine()
    assert entry["stage"] == "near_duplicate"
    assert entry["line"] == 43 and "of 'd.csv:42'" in entry["reason"]
    [example] = version.report()["duplicates"]["near_examples"]
    assert example["similarity"] >= 0.8
    off = prepare(make_config([{"path": str(tmp_path / "d.csv")}], dedup={"near": False}))
    # Kept within a split when near-dedup is off; the leakage check still catches it across splits.
    assert {q["stage"] for q in off.quarantine()} <= {"leakage"}


def test_price_tier_labels_are_drawn_as_text(tmp_path: Path, make_config) -> None:
    """The class-balance figure parsed "$$" as math and the whole prepare failed with a ParseException."""
    rows = [{"text": t, "label": "$" * (1 + i % 3)} for i, t in enumerate(sentences(60))]
    version = prepare(make_config([{"path": str(write_csv(tmp_path / "d.csv", rows))}]))
    assert sorted(version.manifest.labels or []) == ["$", "$$", "$$$"]
    assert (version.path / "figures" / "class_balance.png").stat().st_size > 2000


def test_near_duplicates_do_not_chain_and_must_share_the_label(tmp_path: Path, make_config) -> None:
    """Clusters chained A~B (0.85) and B~C (0.81): C went for A, 0.66 alike, with nothing like it left. And the
    opposite-label twin of a review went like a copy."""
    import random

    rng = random.Random(3)
    words = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike oscar papa".split()
    seq = [rng.choice(words) + str(i) for i in range(80)]
    review = "The hotel room was clean, the staff were friendly and the breakfast was excellent. I would {}recommend it."
    rows = [{"text": review.format(""), "label": "pos"}, {"text": review.format("not "), "label": "neg"}]
    rows += [{"text": " ".join(seq[12 + k * 4:52 + k * 4]), "label": "pos"} for k in range(3)]  # each shifted 4 words on
    rows += [{"text": " ".join(rng.sample(words, 12)) + f" filler {i}", "label": ["neg", "pos"][i % 2]} for i in range(40)]
    version = prepare(make_config([{"path": str(write_csv(tmp_path / "d.csv", rows))}]))
    removed = [(q["line"], q["reason"]) for q in version.quarantine() if q["stage"] == "near_duplicate"]
    assert [line for line, _ in removed] == [5] and "of 'd.csv:4'" in removed[0][1]  # the middle one only


INSTRUCTION = ("Name the ingredient this recipe card is about. Answer with one word only, lower case, no punctuation, "
               "and nothing else at all. Card: ")


def chat_rows(inputs: list[str], answers: list[str]) -> list[dict]:
    return [{"messages": [{"role": "user", "content": INSTRUCTION + x}, {"role": "assistant", "content": a}]}
            for x, a in zip(inputs, answers, strict=True)]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_chat_near_duplicates_must_share_the_answers(tmp_path: Path, make_config, tiny_chat_tokenizer: Path) -> None:
    """One long instruction over short inputs makes every conversation 0.8+ alike: rows with other answers went as
    near duplicates (Alpaca data kept 6 of 12). Like a classifier's label, the answers must be near-equal too."""
    rows = chat_rows([f"card {k}" for k in range(24)], WORDS[:24])
    rows.append(chat_rows(["card 3."], [WORDS[3]])[0])  # line 25: a copy of line 4 up to a dot, the same answer
    version = prepare(make_config([{"path": str(write_jsonl(tmp_path / "c.jsonl", rows))}], task={"type": "chat"},
                                  model=tiny_chat_tokenizer))
    removed = [(q["line"], q["stage"]) for q in version.quarantine()]
    assert removed == [(25, "near_duplicate")] and "of 'c.jsonl:4'" in version.quarantine()[0]["reason"]
    assert version.manifest.counts["input"] == 25


def test_chat_leakage_near_check_compares_the_answers(tmp_path: Path, make_config, tiny_chat_tokenizer: Path) -> None:
    """A near-identical question answered otherwise in test leaks no answer; the same answer does."""
    train = write_jsonl(tmp_path / "train.jsonl", chat_rows([f"card {k}" for k in range(20)], WORDS[:20]))
    test = write_jsonl(tmp_path / "test.jsonl", chat_rows(["card 3.", "card 21"], [WORDS[3], WORDS[21]]))
    version = prepare(make_config([{"path": str(train), "split": "train"}, {"path": str(test), "split": "test"}],
                                  task={"type": "chat"}, model=tiny_chat_tokenizer, dedup={"near": False}))
    [leak] = version.quarantine()
    assert (Path(leak["source"]).name, leak["line"], leak["stage"]) == ("test.jsonl", 1, "leakage")
    assert leak["reason"].startswith("near (similarity") and "of 'train.jsonl:4' in train" in leak["reason"]
    assert version.manifest.counts["test"] == 1


def test_a_conversation_the_chat_template_refuses_is_quarantined(tmp_path: Path, make_config,
                                                                 tiny_chat_tokenizer: Path) -> None:
    """Llama 2's, Mistral's and Gemma's templates raise on roles out of turn: one such row failed the whole prepare
    with "internal error: TemplateError" and no line."""
    rows = chat_rows([f"card {k}" for k in range(12)], WORDS[:12])
    rows.insert(3, {"messages": [{"role": "user", "content": "hello"}, {"role": "user", "content": "again"},
                                 {"role": "assistant", "content": "fine"}]})
    cfg = make_config([{"path": str(write_jsonl(tmp_path / "c.jsonl", rows))}], task={"type": "chat"},
                      model=tiny_chat_tokenizer)
    cfg.model.chat_template = ALTERNATING
    version = prepare(cfg)
    [entry] = version.quarantine()
    assert (entry["line"], entry["stage"], entry["field"]) == (4, "template", "messages")
    assert "cannot render this conversation: Conversation roles must alternate" in entry["reason"]
    assert version.manifest.counts == {"train": 10, "validation": 1, "test": 1, "quarantine": 1, "input": 13}

    cfg.data.sources = [cfg.data.sources[0].model_copy(update={"path": write_jsonl(tmp_path / "bad.jsonl", rows[3:4] * 2)})]
    with pytest.raises(DataError, match=r"refused all 2 conversations \(the first, \S*bad.jsonl:1: field 'messages': "):
        prepare(cfg)
    cfg.model.chat_template = "{% for m in messages %}{{ m.content }"
    with pytest.raises(ConfigError, match="chat template is not valid Jinja"):
        prepare(cfg)


# Roles must alternate user/assistant, as Llama 2's, Mistral's and Gemma's templates insist.
ALTERNATING = ("{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
               "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
               "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
               "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_split_is_stratified(tmp_path: Path, make_config) -> None:
    rows = [{"text": t, "label": "rare" if i % 5 == 0 else "common"} for i, t in enumerate(sentences(200))]
    version = prepare(make_config([{"path": str(write_csv(tmp_path / "d.csv", rows))}]))
    balance = version.report()["class_balance"]
    assert balance["train"] == {"common": 128, "rare": 32}
    assert balance["validation"] == {"common": 16, "rare": 4}
    assert balance["test"] == {"common": 16, "rare": 4}


def test_many_classes_keep_the_configured_ratios() -> None:
    # 20 classes of 15 rows: no class splits exactly (12 / 1.5 / 1.5). Rounded class by class, the
    # same tie went to validation each time and the splits came out 240 / 40 / 20, not 240 / 30 / 30.
    from tunesmith.config import SplitSpec
    from tunesmith.data.split import assign

    strata = [f"c{i // 15:02d}" for i in range(300)]
    splits = assign(strata, [None] * 300, [None] * 300, SplitSpec()).tolist()
    train, validation, test = (splits.count(s) for s in ("train", "validation", "test"))
    assert train == 240 and abs(validation - 30) <= 1 and abs(test - 30) <= 1  # whole rows carried: within one
    for c in set(strata):  # still stratified: every class in every split, near its own share
        mine = [s for s, k in zip(splits, strata, strict=True) if k == c]
        assert 11 <= mine.count("train") <= 13 and 1 <= mine.count("validation") <= 2 and 1 <= mine.count("test") <= 2
    # A class with fewer than 3 examples stays in train, however the others round.
    few = assign([*strata, "once", "twice", "twice"], [None] * 303, [None] * 303, SplitSpec()).tolist()
    assert few[300:] == ["train"] * 3


def test_many_small_classes_keep_the_configured_ratios() -> None:
    # 100 intents of 4 examples: each seeded validation and test with one, and the split came out 50 / 25 / 25
    # (200 classes of 3: a third each), silently, though such ratios are refused when asked for.
    from tunesmith.config import SplitSpec
    from tunesmith.data.split import assign

    for classes, size in ((100, 4), (200, 3), (50, 5)):
        n = classes * size
        splits = assign([f"c{i // size:03d}" for i in range(n)], [None] * n, [None] * n, SplitSpec()).tolist()
        counts = [splits.count(s) for s in ("train", "validation", "test")]
        assert all(abs(c - r * n) <= 2 for c, r in zip(counts, (0.8, 0.1, 0.1), strict=True)), (classes, size, counts)


def test_uneven_groups_keep_the_configured_ratios() -> None:
    # One 400-row customer among sixty of 10 rows: the first shuffled groups seeded validation and test whatever
    # their size (seed 3: test 400 rows, validation 10), and Zipf-sized groups came out 90 / 5 / 5.
    from tunesmith.config import SplitSpec
    from tunesmith.data.split import assign

    for sizes in ([400] + [10] * 60, [max(1, int(300 / (k + 1))) for k in range(60)]):
        groups = [f"g{k}" for k, n in enumerate(sizes) for _ in range(n)]
        n = len(groups)
        for seed in range(10):
            splits = assign(["all"] * n, groups, [None] * n, SplitSpec(seed=seed)).tolist()
            shares = [splits.count(s) / n for s in ("train", "validation", "test")]
            assert abs(shares[0] - 0.8) <= 0.03 and all(abs(x - 0.1) <= 0.03 for x in shares[1:]), (sizes[:2], seed, shares)
            assert len({s for s, g in zip(splits, groups, strict=True) if g == "g0"}) == 1  # still never straddled


def test_a_train_source_stays_in_train_and_pre_assigned_groups_stay_whole(tmp_path: Path, make_config) -> None:
    """`split: train` pre-assigned nothing: an OpenAI job's training file (beside its validation file) lost a ninth of
    its rows to test. And a group with a row in the user's test file had its other rows shared out, train included."""
    rows = [{"text": t, "label": "ab"[i % 2], "user": f"u{i % 20}"} for i, t in enumerate(sentences(200))]
    main, own_test = rows[:120], [{**r, "user": "u3"} for r in rows[180:]]
    own_train = [{**r, "user": f"t{i}"} for i, r in enumerate(rows[120:180])]
    sources = [{"path": str(write_csv(tmp_path / "main.csv", main))},
               {"path": str(write_csv(tmp_path / "train.csv", own_train)), "split": "train"},
               {"path": str(write_csv(tmp_path / "test.csv", own_test)), "split": "test"}]
    version = prepare(make_config(sources, split={"group_by": "user"}))
    where = {r["text"]: s for s in ("train", "validation", "test") for r in version.table(s).to_pylist()}
    assert all(where[r["text"]] == "train" for r in own_train)
    assert all(where[r["text"]] == "test" for r in own_test)
    assert {where[r["text"]] for r in main if r["user"] == "u3"} == {"test"}  # u3 has rows in the test file
    assert sum(where[r["text"]] == "validation" for r in main) > 0


def test_small_regression_set_keeps_the_configured_ratios(tmp_path: Path, make_config) -> None:
    # 10 score bins of 3 rows each seeded validation and test with one row apiece: 10 / 10 / 10.
    rows = [{"text": t, "score": str(i / 10)} for i, t in enumerate(sentences(30))]
    version = prepare(make_config([{"path": str(write_csv(tmp_path / "d.csv", rows))}], task={"type": "regression"}))
    c = version.manifest.counts
    assert (c["train"], c["validation"], c["test"]) == (24, 3, 3)
    stats = version.report()["score_stats"]
    assert stats["validation"]["min"] < 1.5 < stats["validation"]["max"]  # still spread over the range
    assert stats["test"]["min"] < 1.5 < stats["test"]["max"]


def test_groups_never_straddle_splits(tmp_path: Path, make_config) -> None:
    rows = [{"text": t, "label": "ab"[i % 2], "user": f"u{i % 23}"} for i, t in enumerate(sentences(230))]
    version = prepare(make_config([{"path": str(write_csv(tmp_path / "d.csv", rows))}], split={"group_by": "user"}))
    where: dict[str, set[str]] = {}
    for s in ("train", "validation", "test"):
        for g in version.table(s).column("group").to_pylist():
            where.setdefault(g, set()).add(s)
    assert len(where) == 23 and all(len(v) == 1 for v in where.values())
    counts = version.manifest.counts
    assert counts["test"] > 0 and counts["validation"] > 0


def test_user_test_file_is_honoured(tmp_path: Path, make_config) -> None:
    train = write_csv(tmp_path / "train.csv", labelled(90, seed=1))
    test = write_csv(tmp_path / "test.csv", labelled(20, seed=2))
    version = prepare(make_config([{"path": str(train)}, {"path": str(test), "split": "test"}]))
    assert version.table("test").column("source").unique().to_pylist() == [str(test)]
    assert version.manifest.counts["test"] == 20
    assert version.manifest.counts["validation"] == 10  # 90 * 0.1 / (0.8 + 0.1)


def test_class_missing_from_test_is_warned(tmp_path: Path, make_config) -> None:
    rows = labelled(40) + [{"text": "the only example of a tiny class here", "label": "tiny"}]
    version = prepare(make_config([{"path": str(write_csv(tmp_path / "d.csv", rows))}]))
    warnings = version.report()["warnings"]
    assert any("class 'tiny' has no example in ['validation', 'test']" in w for w in warnings)


def test_labels_that_differ_only_in_case_or_spacing_are_warned(tmp_path: Path, make_config) -> None:
    # "Pos" and "pos" became two classes, the second a class of one example, with no word of why.
    rows = labelled(40)
    rows[3]["label"], rows[9]["label"] = "Pos", "NEG"
    version = prepare(make_config([{"path": str(write_csv(tmp_path / "d.csv", rows))}]))
    assert version.manifest.labels == ["NEG", "Pos", "neg", "pos"]
    warnings = version.report()["warnings"]
    assert any("labels 'Pos' and 'pos' differ only in case or spacing" in w and "data.annotate.label_map" in w
               for w in warnings), warnings
    assert any("labels 'NEG' and 'neg'" in w for w in warnings)


def test_leakage_across_splits_is_removed_from_the_later_split(tmp_path: Path, make_config) -> None:
    rows = labelled(50)
    test_rows = [dict(rows[0]), *labelled(10, seed=9)]
    train = write_csv(tmp_path / "train.csv", rows)
    test = write_csv(tmp_path / "test.csv", test_rows)
    sources = [{"path": str(train)}, {"path": str(test), "split": "test"}]
    version = prepare(make_config(sources, dedup={"exact": False, "near": False}))
    leaks = [q for q in version.quarantine() if q["stage"] == "leakage"]
    assert [(q["source"], q["line"]) for q in leaks] == [(str(test), 2)]
    assert "duplicate of 'train.csv:2' in train" in leaks[0]["reason"]
    assert version.report()["leakage"]["found"] == 1
    with pytest.raises(DataError, match="leak across splits"):
        prepare(make_config(sources, dedup={"exact": False, "near": False}, split={"leakage": "fail"}))


def test_corrections_and_label_map(tmp_path: Path, make_config) -> None:
    rows = [{"text": t, "label": ["good", "fine", "bad"][i % 3]} for i, t in enumerate(sentences(30))]
    data = write_csv(tmp_path / "d.csv", rows)
    fixes = write_csv(tmp_path / "fixes.csv", [{"id": "d.csv:2", "label": "bad"}, {"id": "nope:1", "label": "bad"}])
    version = prepare(make_config([{"path": str(data)}], annotate={"label_map": {"fine": "good"}, "corrections": str(fixes)}))
    assert version.manifest.labels == ["bad", "good"]
    rows_out = {r["id"]: r for s in ("train", "validation", "test") for r in version.table(s).to_pylist()}
    assert rows_out["d.csv:2"]["label"] == "bad"  # was "good", corrected by id
    assert rows_out["d.csv:3"]["label"] == "good"  # was "fine", merged by the label map
    report = version.report()
    assert report["annotation"]["corrections_applied"] == 1
    assert report["annotation"]["corrections_unused"] == ["nope:1"]
    assert any("nope:1" in w for w in report["warnings"])


def test_corrections_with_ids_read_as_floats_apply(tmp_path: Path, make_config) -> None:
    """A corrections column of floats (pandas, a gap in it) had keys "1.0": no correction matched an example."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"id": i, "text": t, "label": ["good", "bad"][i % 2]} for i, t in enumerate(sentences(30))]
    pq.write_table(pa.table({"id": [1.0, 2.0], "label": ["good", "bad"]}), tmp_path / "fixes.parquet")
    version = prepare(make_config([{"path": str(write_csv(tmp_path / "d.csv", rows))}], task={"id": "id"},
                                  annotate={"corrections": str(tmp_path / "fixes.parquet")}))
    out = {r["id"]: r["label"] for s in ("train", "validation", "test") for r in version.table(s).to_pylist()}
    assert (out["1"], out["2"]) == ("good", "bad")  # were bad and good
    assert version.report()["annotation"]["corrections_applied"] == 2


def test_length_filter_in_tokens(tmp_path: Path, make_config) -> None:
    rows = labelled(30) + [{"text": "ok", "label": "pos"}]  # sentences are 12+ words; "ok" is a few tokens
    version = prepare(make_config([{"path": str(write_csv(tmp_path / "d.csv", rows))}], clean={"min_tokens": 10}))
    [entry] = version.quarantine()
    assert entry["stage"] == "length" and "below data.clean.min_tokens=10" in entry["reason"]
    assert min(version.table("train").column("n_tokens").to_pylist()) >= 10


def test_token_counts_ignore_the_tokenizers_fixed_padding_and_truncation(tmp_path: Path, make_config) -> None:
    # all-MiniLM-L6-v2's tokenizer.json pads and truncates every text to 128 tokens; counted through
    # that setting, every review was 128 tokens, the length histogram one bar, min/max_tokens moot.
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    from tests.tiny_models import CORPUS, build_tokenizer

    folder = build_tokenizer(tmp_path / "padded-tokenizer")
    fixed = Tokenizer.from_file(str(folder / "tokenizer.json"))
    fixed.enable_padding(length=32, pad_id=fixed.token_to_id("[PAD]"), pad_token="[PAD]")
    fixed.enable_truncation(max_length=32)
    fixed.save(str(folder / "tokenizer.json"))

    words = list(dict.fromkeys(re.findall(r"[a-z]+", " ".join(CORPUS))))  # each one token in the tiny vocabulary
    short = [" ".join(words[i : i + 2]) for i in range(0, 16, 2)]  # distinct two-word texts
    medium = [" ".join(words[i : i + 3]) for i in range(16, 40, 3)]  # distinct three-word texts
    long = " ".join(CORPUS[:4])
    texts = [*short, *medium, long]
    real = {t: len(n) for t, n in zip(texts, AutoTokenizer.from_pretrained(folder)(texts)["input_ids"], strict=True)}
    assert max(real[t] for t in short + medium) < 10 < 32 < real[long]
    threshold = min(real[t] for t in medium)
    assert max(real[t] for t in short) < threshold  # so min_tokens=threshold drops exactly the short ones

    rows = [{"text": t, "label": ("pos", "neg")[i % 2]} for i, t in enumerate(texts)]
    cfg = make_config([{"path": str(write_csv(tmp_path / "d.csv", rows))}], model=folder, clean={"min_tokens": threshold})
    version = prepare(cfg)
    kept = {r["text"]: r["n_tokens"] for s in ("train", "validation", "test") for r in version.table(s).to_pylist()}
    assert kept == {t: real[t] for t in [*medium, long]}  # the real counts, neither padded nor truncated to 32
    removed = version.quarantine()
    assert sorted(e["record"]["text"] for e in removed) == sorted(short)
    assert all(e["stage"] == "length" and e["reason"] == f"{real[e['record']['text']]} tokens, below "
               f"data.clean.min_tokens={threshold}" for e in removed)


def test_multi_label_is_split_and_encoded(tmp_path: Path, make_config) -> None:
    rows = [{"text": t, "tags": ["food", "price", "food,price", "delivery"][i % 4]} for i, t in enumerate(sentences(40))]
    version = prepare(make_config([{"path": str(write_csv(tmp_path / "d.csv", rows))}],
                                  task={"type": "multi_label_classification", "label": "tags"}))
    assert version.manifest.labels == ["delivery", "food", "price"]
    row = next(r for s in ("train", "validation", "test") for r in version.table(s).to_pylist() if r["labels"] == ["food", "price"])
    assert row["label_ids"] == [1, 2]


def test_report_files_and_pictures(tmp_path: Path, make_config) -> None:
    version = prepare(make_config([{"path": str(write_csv(tmp_path / "d.csv", labelled(40)))}]))
    for name in ("report.json", "report.md", "report.html", "figures/token_lengths.png", "figures/class_balance.png"):
        assert (version.path / name).exists(), name
    html = (version.path / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2
    report = json.loads((version.path / "report.json").read_text())
    assert [s["step"] for s in report["steps"]] == ["read and validate", "length filter", "exact duplicates",
                                                    "near duplicates", "leakage across splits"]
    assert report["lengths"]["train"]["count"] == 32


def test_output_folder_is_replaced_atomically(tmp_path: Path, make_config) -> None:
    good = write_csv(tmp_path / "d.csv", labelled(30))
    first = prepare(make_config([{"path": str(good)}]))
    bad = tmp_path / "empty.csv"
    bad.write_text("")
    with pytest.raises(DataError, match="empty"):
        prepare(make_config([{"path": str(bad)}]))
    assert (first.path / "manifest.json").exists()  # the earlier version survives a failed run
    assert not list(first.path.parent.glob(".*staging"))


def test_an_output_that_is_a_file_is_refused_before_any_work(tmp_path: Path, make_config, monkeypatch) -> None:
    """It failed at the very end, after the whole prepare, with "internal error: NotADirectoryError"."""
    from tunesmith.data import prepare as module

    good = write_csv(tmp_path / "d.csv", labelled(30))
    taken = tmp_path / "dataset.csv"
    taken.write_text("a file\n")

    def no_work(*args, **kwargs):
        raise AssertionError("prepared before the output was checked")

    monkeypatch.setattr(module._Preparation, "run", no_work)
    for out in (taken, taken / "inside"):
        with pytest.raises(DataError, match=rf"{re.escape(str(taken))}: is a file; choose a folder for the dataset"):
            prepare(make_config([{"path": str(good)}]), out)
    assert taken.read_text() == "a file\n"
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("x")
    with pytest.raises(DataError, match="exists and is not a tunesmith dataset"):
        prepare(make_config([{"path": str(good)}]), other)


def test_guessed_legacy_encoding_is_recorded_and_warned(tmp_path: Path, make_config) -> None:
    rows = labelled(20)
    rows[0]["text"] = "Le café était très bon, la crème brûlée délicieuse"
    path = tmp_path / "legacy.csv"
    with path.open("w", newline="", encoding="cp1252") as f:
        writer = csv.DictWriter(f, fieldnames=["text", "label"])
        writer.writeheader()
        writer.writerows(rows)
    report = prepare(make_config([{"path": str(path)}])).report()
    assert report["sources"][0]["encoding"] == "cp1252"
    assert any("not UTF-8; read as cp1252" in w and "set the source's `encoding:`" in w for w in report["warnings"])
    utf8 = prepare(make_config([{"path": str(write_csv(tmp_path / "u.csv", rows))}])).report()
    assert utf8["sources"][0]["encoding"] == "utf-8" and not utf8["warnings"]


def test_max_rows_reads_only_the_first_rows_of_a_source(tmp_path: Path, make_config) -> None:
    rows = labelled(100)
    version = prepare(make_config([{"path": str(write_csv(tmp_path / "d.csv", rows)), "max_rows": 40}]))
    assert version.manifest.counts["input"] == 40
    kept = {r["text"] for split in ("train", "validation", "test") for r in version.table(split).to_pylist()}
    assert kept == {r["text"] for r in rows[:40]}



@pytest.mark.parametrize(("great", "other", "digest"), [(3227, 1742, "82d4de72d1e5"), (3333, 1636, "e0ddcb279caa"),
                                                        (1234, 567, "370a63a67a2d")])
def test_a_split_that_was_right_stays_row_for_row_the_same(great: int, other: int, digest: str) -> None:
    """Same data, same seed, same split, also across versions: carrying shortfalls across classes (for many small
    classes, above) must not move a row of two large classes whose shares fall short by less than a row. Carried as
    fractions, it did: half of the demo's test reviews changed places with validation ones. The digests are the
    assignments of the code before the carry."""
    import hashlib

    from tunesmith.config import SplitSpec
    from tunesmith.data.split import assign

    strata = ["great"] * great + ["other"] * other
    out = assign(strata, [None] * len(strata), [None] * len(strata), SplitSpec()).tolist()
    assert hashlib.sha256("".join(s[0] for s in out).encode()).hexdigest()[:12] == digest


def test_grouped_data_with_more_classes_than_groups_keeps_validation_and_test() -> None:
    """Each group was filed under its commonest class, and a class of 1-2 groups stayed in train: 6 customers with
    10 classes came out 240 / 0 / 0."""
    from tunesmith.config import SplitSpec
    from tunesmith.data.split import assign

    strata = [f"c{i % 10}" for i in range(240)]
    groups = [f"u{(i // 10) % 6}" for i in range(240)]
    splits = assign(strata, groups, [None] * 240, SplitSpec()).tolist()
    assert splits.count("validation") > 0 and splits.count("test") > 0
    for user in set(groups):  # still grouped
        assert len({s for s, g in zip(splits, groups, strict=True) if g == user}) == 1


def test_a_few_large_groups_leave_no_split_empty() -> None:
    """No group was small enough to seed test: train took them all while its shortfall stayed above test's target,
    and 6 groups of about 90 rows came out 457 / 83 / 0 for every seed."""
    from tunesmith.config import SplitSpec
    from tunesmith.data.split import assign

    sizes = [97, 95, 93, 91, 89, 87]
    groups = [f"g{k}" for k, n in enumerate(sizes) for _ in range(n)]
    for seed in (0, 7):
        splits = assign(["x"] * len(groups), groups, [None] * len(groups), SplitSpec(stratify=False, seed=seed)).tolist()
        assert all(splits.count(s) > 0 for s in ("train", "validation", "test")), seed


def test_labels_and_description_quoted_in_the_report_stay_text(tmp_path: Path, make_config) -> None:
    """Warnings quote labels, the Label map line the changes, the description the user's words; all went into
    the Markdown as written: "![pixel](https://tracker.example/p.png)" made the report fetch a remote picture,
    "[click me](https://evil.example)" was a live link."""
    picture, link = "![pixel](https://tracker.example/p.png)", "[click me](https://evil.example)"
    rows = labelled(40) + [{"text": "the only example of a tiny class here", "label": picture},
                           {"text": "one more lonely example of another class", "label": "fine"}]
    cfg = make_config([{"path": str(write_csv(tmp_path / "d.csv", rows))}], annotate={"label_map": {"fine": link}},
                      task={"description": "Sort `reviews` ![d](https://tracker.example/d.png)\n# not a heading"})
    version = prepare(cfg)
    md = (version.path / "report.md").read_text()
    assert f"class '{picture}'" in " ".join(version.report()["warnings"])  # the JSON keeps the label as it is
    page = (version.path / "report.html").read_text()
    assert "<img" not in page.replace('<img alt="token lengths"', "").replace('<img alt="class balance"', "")
    assert "<a " not in page and "<h1>not a heading" not in page and "<code>reviews" not in page
    assert "class '![pixel](https://tracker.example/p.png)' has no example" in page
    assert f"fine -&gt; {link}" in page and "> \\# not a heading" in md


def test_multi_label_class_balance_is_a_share_of_the_rows(tmp_path: Path, make_config) -> None:
    """A row counts once per label: "food" in every row read 66.7% "of split" when divided by the label count."""
    rows = [{"text": t, "tags": ["food", "food,price"][i % 2]} for i, t in enumerate(sentences(40))]
    version = prepare(make_config([{"path": str(write_csv(tmp_path / "d.csv", rows))}],
                                  task={"type": "multi_label_classification", "label": "tags"}))
    n = version.manifest.counts["train"]
    row = next(x for x in (version.path / "report.md").read_text().splitlines() if x.startswith("| food |"))
    assert row.split(" | ")[1] == f"{n} (100.0%)"


def test_a_long_label_is_shortened_on_the_class_balance_axis(tmp_path: Path, make_config, monkeypatch) -> None:
    """One long label made tight_layout give up, and every tick label was cut off."""
    from matplotlib.axes import Axes

    long = "customer asked about the refund policy for orders shipped abroad before the price change"
    ticks: list[list[str]] = []
    set_xticks = Axes.set_xticks

    def spy(self, positions, labels=None, **kw):
        ticks.append(list(labels or []))
        return set_xticks(self, positions, labels, **kw)

    monkeypatch.setattr(Axes, "set_xticks", spy)
    prepare(make_config([{"path": str(write_csv(tmp_path / "d.csv", labelled(40, labels=("pos", long))))}]))
    assert ticks and max(len(x) for x in ticks[-1]) <= 18 and "pos" in ticks[-1]


def test_a_second_preparation_of_a_folder_waits_for_the_first(tmp_path: Path, make_config, capsys) -> None:
    """Two preparations of one folder at once (two terminals, two `train` runs): the second deleted the fixed staging
    folder under the first, which crashed or published a folder whose manifest and quarantine came from different
    runs. The second waits for the first now, and says so."""
    import threading

    from tunesmith.data.prepare import _preparation_lock

    rows = labelled(60) + [{"text": f"unlabelled {i}", "label": ""} for i in range(5)]
    cfg = make_config([{"path": str(write_csv(tmp_path / "d.csv", rows))}])
    out = tmp_path / "out"
    done: list = []
    with _preparation_lock(out):  # another preparation of out holds it (and deletes the lock file as it ends)
        worker = threading.Thread(target=lambda: done.append(prepare(cfg)))
        worker.start()
        worker.join(3)
        assert worker.is_alive() and not (out / "manifest.json").exists()
    worker.join(60)
    assert f"waiting for another preparation of {out} to finish" in capsys.readouterr().err
    [version] = done
    counts = version.manifest.counts
    assert counts["quarantine"] == len(version.quarantine()) == 5 and counts["input"] == 65
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no lock or staging left beside it


def test_an_interrupted_swap_is_recovered(tmp_path: Path, make_config) -> None:
    """A run stopped between moving the old version aside and the new one in: the old one is put back. A folder
    an interrupted run left without its manifest was refused forever as "not a tunesmith dataset"."""
    cfg = make_config([{"path": str(write_csv(tmp_path / "d.csv", labelled(60)))}])
    out = tmp_path / "out"
    prepare(cfg)
    out.rename(tmp_path / ".out.old")  # stopped right after the first rename
    broken = make_config([{"path": str(write_csv(tmp_path / "e.csv", [{"text": "", "label": "pos"}] * 3))}])
    with pytest.raises(DataError, match="no usable rows"):
        prepare(broken)
    assert (out / "manifest.json").exists() and not (tmp_path / ".out.old").exists()  # the previous version, back
    (out / "manifest.json").unlink()  # a leftover without its manifest: says what to delete
    with pytest.raises(DataError, match=rf"{re.escape(str(out))}: holds an incomplete dataset .* delete the folder"):
        prepare(cfg)


def contrastive_pairs(n: int) -> list[dict]:
    """Pairs 0.9 alike that mean the opposite: both worth learning, wherever each lands."""
    rows = []
    for s in sentences(n, seed=5):
        rows += [{"text": f"I would recommend this place: {s}", "label": "pos"},
                 {"text": f"I would not recommend this place: {s}", "label": "neg"}]
    return rows


@pytest.mark.parametrize("near", [True, False])
def test_leakage_near_check_applies_the_near_dedup_pair_rule(tmp_path: Path, make_config, near: bool) -> None:
    """With near-dedup off, the leakage check took "would recommend" (pos) in train and "would not recommend" (neg)
    in test for a leak and emptied the test split, while the report said near duplicates were removed before
    splitting."""
    cfg = make_config([{"path": str(write_csv(tmp_path / "d.csv", contrastive_pairs(40)))}], dedup={"near": near})
    version = prepare(cfg)
    assert version.manifest.counts["quarantine"] == 0
    assert (version.manifest.counts["validation"], version.manifest.counts["test"]) == (8, 8)
    rule = "pairs with equal labels"
    assert version.report()["leakage"]["checked"] == ["exact", f"near ({rule}, removed before splitting)" if near
                                                      else f"near ({rule})"]


def test_leakage_near_check_still_catches_a_same_label_twin(tmp_path: Path, make_config) -> None:
    rows = contrastive_pairs(40)
    rows = rows + [{"text": r["text"].replace("place", "spot"), "label": r["label"]} for r in rows]
    version = prepare(make_config([{"path": str(write_csv(tmp_path / "d.csv", rows))}], dedup={"near": False}))
    leaks = [q for q in version.quarantine() if q["stage"] == "leakage"]
    assert leaks and all(q["reason"].startswith("near (similarity") for q in leaks)


def test_near_duplicates_do_not_depend_on_the_split_seed(tmp_path: Path, make_config) -> None:
    """The MinHash permutations came from data.split.seed: a new split seed removed other near duplicates."""
    rng = random.Random(3)
    words = WORDS[:20]
    rows = []
    for _ in range(200):
        a = [rng.choice(words) for _ in range(30)]
        b = list(a)
        for _ in range(2):
            b[rng.randrange(30)] = rng.choice(words)
        rows += [{"text": " ".join(a), "label": "pos"}, {"text": " ".join(b), "label": "pos"}]
    src = [{"path": str(write_csv(tmp_path / "d.csv", rows))}]
    removed = []
    for seed in (42, 7, 1):
        version = prepare(make_config(src, split={"seed": seed}))
        removed.append({(q["line"], q["reason"]) for q in version.quarantine() if q["stage"] == "near_duplicate"})
    assert removed[0] and removed[0] == removed[1] == removed[2]


def test_reason_categories_blank_values_not_names() -> None:
    from tunesmith.data.prepare import category

    assert category("contains bytes that are not valid utf-8; set the source's `encoding:` (e.g. cp1252)") == \
        "contains bytes that are not valid utf-8; set the source's `encoding:`"
    assert category("not valid cp1252 at byte 12") == "not valid cp1252 at byte N"
    assert category("3 tokens, below data.clean.min_tokens=5") == "N tokens, below data.clean.min_tokens=N"
    assert category("score 2.5 is over 10") == "score N is over N"
