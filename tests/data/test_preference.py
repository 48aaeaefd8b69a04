"""Preference (DPO) data, end to end through `prepare`.

Two input shapes: OpenAI's DPO format (`input.messages`, `preferred_output`, `non_preferred_output`),
recognised by its keys, and the common `prompt` / `chosen` / `rejected` records (text or TRL's
conversational form). Every test writes a small file, prepares it with the tiny chat tokenizer, and
checks where every row went: the canonical columns of the kept pairs, or the quarantine entry with
file, line, field and reason. Near-duplicate removal is off unless a test is about it: the
generated pairs share most of their words.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.data.test_sources import accounted, by_line, kept_rows, write_csv, write_jsonl, write_lines
from tunesmith.data.prepare import prepare
from tunesmith.errors import DataError

# OpenAI's DPO example, exactly as their fine-tuning guide shows it.
SF_QUESTION = "Hello, can you tell me how cold San Francisco is today?"
SF_CHOSEN = ("Today in San Francisco, it is not quite cold as expected. Morning clouds will give away to sunshine, "
             "with a high near 68°F (20°C) and a low around 57°F (14°C).")
SF_REJECTED = "It is not particularly cold in San Francisco today."
OPENAI_EXAMPLE = {
    "input": {"messages": [{"role": "user", "content": SF_QUESTION}], "tools": [], "parallel_tool_calls": True},
    "preferred_output": [{"role": "assistant", "content": SF_CHOSEN}],
    "non_preferred_output": [{"role": "assistant", "content": SF_REJECTED}],
}
SYSTEM = "You are a weather assistant. Give numbers, not vague impressions."
CITIES = [("Oslo", 41, 5, 30, -1), ("Madrid", 77, 25, 55, 13), ("Tokyo", 64, 18, 52, 11), ("Lima", 72, 22, 63, 17),
          ("Cairo", 86, 30, 66, 19), ("Denver", 50, 10, 28, -2), ("Nairobi", 75, 24, 55, 13), ("Quebec", 23, -5, 9, -13),
          ("Perth", 84, 29, 61, 16), ("Reykjavik", 37, 3, 30, -1), ("Hanoi", 88, 31, 75, 24), ("Santiago", 68, 20, 45, 7),
          ("Vienna", 59, 15, 43, 6), ("Chicago", 34, 1, 21, -6), ("Mumbai", 91, 33, 77, 25), ("Lisbon", 66, 19, 54, 12),
          ("Warsaw", 45, 7, 32, 0), ("Seoul", 55, 13, 39, 4), ("Boston", 48, 9, 36, 2), ("Dakar", 82, 28, 70, 21),
          ("Athens", 70, 21, 57, 14), ("Helsinki", 39, 4, 27, -3), ("Bogota", 66, 19, 48, 9), ("Manila", 90, 32, 78, 26),
          ("Zurich", 52, 11, 37, 3), ("Dublin", 54, 12, 43, 6), ("Havana", 84, 29, 70, 21), ("Kyiv", 43, 6, 30, -1),
          ("Auckland", 63, 17, 52, 11), ("Montreal", 28, -2, 14, -10)]


def openai_pairs(n: int = 30) -> list[dict[str, Any]]:
    """OpenAI's example first, then variants; every fourth has a system prompt and an earlier exchange."""
    pairs = [OPENAI_EXAMPLE]
    for i in range(1, n):
        city, hi_f, hi_c, lo_f, lo_c = CITIES[i % len(CITIES)]
        warm = i % 2 == 1
        question = f"How warm will it get in {city} this afternoon?" if warm else f"Hello, can you tell me how cold {city} is today?"
        messages = [{"role": "user", "content": question}]
        if i % 4 == 0:
            messages = [{"role": "system", "content": SYSTEM},
                        {"role": "user", "content": f"I am flying to {city} tomorrow morning."},
                        {"role": "assistant", "content": f"Have a good trip to {city}! Ask me about the weather there."},
                        *messages]
        chosen = (f"{city} reaches a high near {hi_f}°F ({hi_c}°C) and drops to about {lo_f}°F ({lo_c}°C) tonight"
                  + (", so pack a light jacket." if warm else ", so dress in layers."))
        rejected = f"It is {'warm' if warm else 'cold'} in {city}, I think."
        pairs.append({"input": {"messages": messages, "tools": [], "parallel_tool_calls": True},
                      "preferred_output": [{"role": "assistant", "content": chosen}],
                      "non_preferred_output": [{"role": "assistant", "content": rejected}]})
    return pairs


def common_pairs(n: int = 30) -> list[dict[str, Any]]:
    """`prompt` / `chosen` / `rejected`: plain text, a message-list prompt, and TRL's conversational answers."""
    out = []
    for i in range(n):
        city, hi_f, hi_c, _, _ = CITIES[i % len(CITIES)]
        question = f"What is the high temperature in {city} today? (query {i})"
        chosen, rejected = f"The high in {city} is {hi_c}°C ({hi_f}°F).", f"Weather in {city} is unpredictable, check later."
        if i % 3 == 0:
            out.append({"prompt": question, "chosen": chosen, "rejected": rejected})
        elif i % 3 == 1:
            out.append({"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": question}],
                        "chosen": chosen, "rejected": rejected})
        else:
            out.append({"prompt": [{"role": "user", "content": question}],
                        "chosen": [{"role": "assistant", "content": chosen}],
                        "rejected": [{"role": "assistant", "content": rejected}]})
    return out


def run(make_config, sources: list[dict[str, Any]], model: Path, task: dict | None = None,
        max_length: int | None = 1024, **data: Any):
    data.setdefault("dedup", {"near": False})
    cfg = make_config(sources=sources, task={"type": "preference", **(task or {})}, model=model, **data)
    cfg.model.max_length = max_length
    return prepare(cfg)


def prompt_of(record: dict[str, Any]) -> list[dict[str, Any]]:
    """What the canonical `messages` column should hold for an input record: the prompt, weights null."""
    value = record["input"]["messages"] if "input" in record else record["prompt"]
    if isinstance(value, str):
        value = [{"role": "user", "content": value}]
    return [{"role": m["role"], "content": m["content"], "weight": None} for m in value]


def answer_of(value: Any) -> str:
    return value if isinstance(value, str) else value[0]["content"]


def expected_row(record: dict[str, Any]) -> tuple[Any, str, str]:
    if "input" in record:
        return prompt_of(record), answer_of(record["preferred_output"]), answer_of(record["non_preferred_output"])
    return prompt_of(record), answer_of(record["chosen"]), answer_of(record["rejected"])


def rendered_length(tokenizer: Any, prompt: list[dict[str, Any]], answer: str) -> int:
    convo = [{"role": m["role"], "content": m["content"]} for m in prompt] + [{"role": "assistant", "content": answer}]
    return len(tokenizer.apply_chat_template(convo, tokenize=True, return_dict=False))


# === the two input shapes =========================================================================


def test_openai_dpo_format_is_accepted_unchanged(tmp_path, make_config, tiny_chat_tokenizer):
    from transformers import AutoTokenizer

    pairs = openai_pairs(30)
    path = write_jsonl(tmp_path / "dpo.jsonl", pairs)
    version = run(make_config, [{"path": str(path)}], tiny_chat_tokenizer)
    accounted(version, 30)
    assert version.manifest.counts["quarantine"] == 0
    assert version.manifest.task == "preference" and version.manifest.labels is None
    assert {s: version.manifest.counts[s] for s in ("train", "validation", "test")} == {"train": 24, "validation": 3, "test": 3}

    for split in ("train", "validation", "test"):
        schema = pq.read_schema(version.path / f"{split}.parquet")
        assert schema.names == ["id", "source", "line", "group", "messages", "chosen", "rejected", "provenance", "synthetic",
                                "n_tokens"]
        assert schema.field("messages").type == pa.list_(pa.struct([("role", pa.string()), ("content", pa.string()),
                                                                     ("weight", pa.int8())]))
        assert schema.field("chosen").type == schema.field("rejected").type == pa.string()

    rows = {r["line"]: r for r in kept_rows(version)}
    assert {line: (r["messages"], r["chosen"], r["rejected"]) for line, r in rows.items()} == \
        {line: expected_row(p) for line, p in enumerate(pairs, start=1)}
    first = rows[1]
    assert first["id"] == "dpo.jsonl:1" and first["source"] == str(path)
    assert first["messages"] == [{"role": "user", "content": SF_QUESTION, "weight": None}]
    assert (first["chosen"], first["rejected"]) == (SF_CHOSEN, SF_REJECTED)
    assert [m["role"] for m in rows[5]["messages"]] == ["system", "user", "assistant", "user"]

    # n_tokens: the longer of prompt + chosen and prompt + rejected, rendered with the chat template
    tok = AutoTokenizer.from_pretrained(tiny_chat_tokenizer)
    for r in (rows[1], rows[5]):
        assert r["n_tokens"] == max(rendered_length(tok, r["messages"], r["chosen"]),
                                    rendered_length(tok, r["messages"], r["rejected"]))


def test_prompt_chosen_rejected_records(tmp_path, make_config, tiny_chat_tokenizer):
    pairs = common_pairs(30)
    path = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    version = run(make_config, [{"path": str(path)}], tiny_chat_tokenizer)
    accounted(version, 30)
    assert version.manifest.counts["quarantine"] == 0
    got = {r["line"]: (r["messages"], r["chosen"], r["rejected"]) for r in kept_rows(version)}
    assert got == {line: expected_row(p) for line, p in enumerate(pairs, start=1)}
    assert got[1][0] == [{"role": "user", "content": "What is the high temperature in Oslo today? (query 0)", "weight": None}]
    assert [m["role"] for m in got[2][0]] == ["system", "user"]
    assert got[3][1] == "The high in Tokyo is 18°C (64°F)."  # from [{"role": "assistant", "content": ...}]


def test_field_names_from_task_and_per_source_fields(tmp_path, make_config, tiny_chat_tokenizer):
    renamed = [{"question": p["prompt"], "better": p["chosen"], "worse": p["rejected"]} for p in common_pairs(15)]
    nested = [{"q": {"text": f"Is it raining in {c[0]} right now?"}, "good": f"No, {c[0]} is dry today.",
               "bad": "Maybe."} for c in CITIES[:15]]
    a = write_jsonl(tmp_path / "a.jsonl", renamed)
    b = write_jsonl(tmp_path / "b.jsonl", nested)
    version = run(make_config, [{"path": str(a)}, {"path": str(b), "fields": {"prompt": "q.text", "chosen": "good", "rejected": "bad"}}],
                  tiny_chat_tokenizer, task={"prompt": "question", "chosen": "better", "rejected": "worse"})
    accounted(version, 30)
    assert version.manifest.counts["quarantine"] == 0
    rows = {(Path(r["source"]).name, r["line"]): r for r in kept_rows(version)}
    assert rows[("b.jsonl", 2)]["messages"] == [{"role": "user", "content": "Is it raining in Madrid right now?", "weight": None}]
    assert (rows[("b.jsonl", 2)]["chosen"], rows[("b.jsonl", 2)]["rejected"]) == ("No, Madrid is dry today.", "Maybe.")
    assert rows[("a.jsonl", 3)]["chosen"] == renamed[2]["better"][0]["content"]


@pytest.mark.parametrize("shape", ["openai", "common"])
def test_parquet_source(tmp_path, make_config, tiny_chat_tokenizer, shape):
    pairs = openai_pairs(20) if shape == "openai" else [
        {"prompt": p["prompt"] if isinstance(p["prompt"], str) else p["prompt"][-1]["content"],
         "chosen": answer_of(p["chosen"]), "rejected": answer_of(p["rejected"])} for p in common_pairs(20)]
    path = tmp_path / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist(pairs), path)
    version = run(make_config, [{"path": str(path)}], tiny_chat_tokenizer)
    accounted(version, 20)
    assert version.manifest.counts["quarantine"] == 0
    got = {r["line"]: (r["messages"], r["chosen"], r["rejected"]) for r in kept_rows(version)}
    assert got == {line: expected_row(p) for line, p in enumerate(pairs, start=1)}


def test_csv_source_and_missing_columns(tmp_path, make_config, tiny_chat_tokenizer):
    pairs = [{"prompt": f"Describe the weather in {c[0]}.", "chosen": f"{c[0]}: high {c[2]}°C, low {c[4]}°C.",
              "rejected": "Nice."} for c in CITIES]
    version = run(make_config, [{"path": str(write_csv(tmp_path / "p.csv", pairs))}], tiny_chat_tokenizer)
    accounted(version, len(CITIES))
    assert kept_rows(version)[0]["chosen"] == "Oslo: high 5°C, low -1°C."

    bad = write_csv(tmp_path / "qa.csv", [{"question": "Hi?", "answer": "Hello."}] * 3)
    with pytest.raises(DataError) as err:
        run(make_config, [{"path": str(bad)}], tiny_chat_tokenizer)
    assert "qa.csv" in str(err.value) and "prompt -> 'prompt' or OpenAI's 'input' + 'preferred_output'" in str(err.value)

    keys = write_jsonl(tmp_path / "qa.jsonl", [{"question": "Hi?", "answer": "Hello."}] * 3)
    with pytest.raises(DataError, match=r"no record has 'prompt' \(for prompt\).*OpenAI's DPO form"):
        run(make_config, [{"path": str(keys)}], tiny_chat_tokenizer)


# === bad input ====================================================================================


def oa(messages: Any = None, preferred: Any = "default", non_preferred: Any = "default", **extra: Any) -> dict[str, Any]:
    """An OpenAI DPO record with one part replaced (a missing argument keeps the good value)."""
    record: dict[str, Any] = {"input": {"messages": messages or [{"role": "user", "content": "Is it cold in Oslo?"}], **extra},
                              "preferred_output": [{"role": "assistant", "content": "Yes, about 5°C."}],
                              "non_preferred_output": [{"role": "assistant", "content": "Who knows."}]}
    if preferred != "default":
        record["preferred_output"] = preferred
    if non_preferred is None:
        del record["non_preferred_output"]
    elif non_preferred != "default":
        record["non_preferred_output"] = non_preferred
    return record


USER = {"role": "user", "content": "Is it cold in Oslo?"}
ASSISTANT = {"role": "assistant", "content": "Yes, about 5°C."}
BAD_PAIRS = [  # (record, stage, field, reason fragment)
    (oa([{"role": "bot", "content": "Is it cold?"}]), "validate", "input.messages.0.role", "unknown role 'bot'"),
    (oa([{"role": "system", "content": SYSTEM}, {"role": "user", "content": "   "}]),
     "validate", "input.messages.1.content", "content is empty"),
    (oa([USER, ASSISTANT]), "validate", "input.messages", "must end with a user message"),
    (oa(non_preferred=None), "validate", "non_preferred_output",
     "missing value: no value for 'rejected' (from 'non_preferred_output')"),
    (oa(preferred=[{"role": "assistant", "content": ""}]), "validate", "preferred_output.0.content", "content is empty"),
    (oa(preferred=[{"role": "user", "content": "Yes, about 5°C."}]), "validate", "preferred_output.0.role",
     "role must be 'assistant', got 'user'"),
    (oa(preferred=[ASSISTANT, {"role": "assistant", "content": "Also windy."}]), "validate", "preferred_output",
     "exactly one assistant message, got 2"),
    (oa(non_preferred=[{"role": "assistant", "content": "Yes, about 5°C. "}]), "validate", "non_preferred_output",
     "preferred_output and non_preferred_output are the same answer"),
    (oa(tools=[{"type": "function", "function": {"name": "get_weather"}}]), "validate", "input.tools", "tools are not supported"),
    ({"input": "Is it cold in Oslo?", "preferred_output": "Yes."}, "validate", "input", "must be an object with `messages`"),
    ({"prompt": "Is it cold in Oslo?", "rejected": "Who knows."}, "validate", "chosen", "missing value: no value for 'chosen'"),
    ({"prompt": "Is it cold in Oslo?", "chosen": "Yes.", "rejected": ""}, "validate", "rejected", "missing value"),
    ({"prompt": "Is it cold in Oslo?", "chosen": "Yes.", "rejected": "Yes."}, "validate", "rejected",
     "chosen and rejected are the same answer, so there is nothing to prefer"),
    ({"prompt": [USER, ASSISTANT], "chosen": "Yes.", "rejected": "No."}, "validate", "prompt",
     "must end with a user message (the turn both answers reply to), ends with 'assistant'"),
    ({"prompt": [{"role": "human", "content": "Cold?"}], "chosen": "Yes.", "rejected": "No."}, "validate", "prompt.0.role",
     "unknown role 'human'"),
    ({"prompt": "Cold?", "chosen": [{"role": "user", "content": "Yes."}], "rejected": "No."}, "validate", "chosen.0.role",
     "must be 'assistant'"),
    ({"prompt": "Cold?", "chosen": 42, "rejected": "No."}, "validate", "chosen", "must be text or a list with one assistant message, got int"),
    ({"prompt": "Cold?", "chosen": "<b>Yes</b>", "rejected": "Yes"}, "clean", "rejected", "(after cleaning)"),
    ({"prompt": "<br/>", "chosen": "Yes.", "rejected": "No."}, "clean", "prompt", "a prompt message is empty after cleaning"),
]


def test_bad_pairs_are_quarantined_with_line_and_field(tmp_path, make_config, tiny_chat_tokenizer):
    good = openai_pairs(8)
    bad = [record for record, *_ in BAD_PAIRS]
    path = write_jsonl(tmp_path / "dpo.jsonl", good + bad)
    # markup cleaning asked for (preference messages are kept as written by default): the two "clean" cases
    version = run(make_config, [{"path": str(path)}], tiny_chat_tokenizer, clean={"strip_html": True})
    accounted(version, len(good) + len(bad))
    entries = by_line(version)
    assert set(entries) == set(range(len(good) + 1, len(good) + len(bad) + 1))
    for line, (record, stage, field, reason) in enumerate(BAD_PAIRS, start=len(good) + 1):
        entry = entries[line]
        assert (entry["stage"], entry["field"], entry["source"]) == (stage, field, str(path)), (line, entry)
        assert reason in entry["reason"], (line, entry["reason"])
        assert entry["record"] == record
    report = version.report()
    assert report["quarantine"]["by_stage"] == {"validate": len(bad) - 2, "clean": 2}


def test_malformed_json_line_is_quarantined(tmp_path, make_config, tiny_chat_tokenizer):
    lines = [json.dumps(p) for p in openai_pairs(12)]
    lines[4] = lines[4][:-1]  # line 5: the closing brace is gone
    path = write_lines(tmp_path / "broken.jsonl", lines)
    version = run(make_config, [{"path": str(path)}], tiny_chat_tokenizer)
    accounted(version, 12)
    [entry] = version.quarantine()
    assert (entry["line"], entry["stage"], entry["source"]) == (5, "read", str(path))
    assert entry["reason"].startswith("not valid JSON:") and entry["record"] == lines[4]


def test_missing_answer_policy_fail(tmp_path, make_config, tiny_chat_tokenizer):
    pairs = openai_pairs(10)
    del pairs[6]["non_preferred_output"]  # line 7
    path = write_jsonl(tmp_path / "dpo.jsonl", pairs)
    with pytest.raises(DataError, match=r"dpo\.jsonl:7: no value for 'rejected' \(from 'non_preferred_output'\)"):
        run(make_config, [{"path": str(path)}], tiny_chat_tokenizer, missing={"fields": {"rejected": "fail"}})


# === the rest of the pipeline =====================================================================


def test_token_length_filter_uses_the_longer_answer(tmp_path, make_config, tiny_chat_tokenizer):
    from transformers import AutoTokenizer

    pairs = common_pairs(20)
    long_answer = " ".join(f"In {c[0]} the high is {c[2]} degrees." for c in CITIES)
    pairs.append({"prompt": "Tell me everything about the weather.", "chosen": "It varies.", "rejected": long_answer})
    path = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    tok = AutoTokenizer.from_pretrained(tiny_chat_tokenizer)
    prompt = [{"role": "user", "content": "Tell me everything about the weather."}]
    short, long = rendered_length(tok, prompt, "It varies."), rendered_length(tok, prompt, long_answer)
    kept_max = max(max(rendered_length(tok, m, c), rendered_length(tok, m, r)) for m, c, r in map(expected_row, pairs[:20]))
    assert short <= kept_max < 300 < long  # only the rejected answer makes line 21 too long

    version = run(make_config, [{"path": str(path)}], tiny_chat_tokenizer, max_length=300)
    accounted(version, 21)
    [entry] = version.quarantine()
    assert (entry["line"], entry["stage"]) == (21, "length")
    assert entry["reason"] == f"{long} tokens, over model.max_length=300"
    assert entry["record"]["rejected"] == long_answer
    assert max(r["n_tokens"] for r in kept_rows(version)) == kept_max
    assert version.report()["lengths"]["train"]["max"] <= 300


def test_duplicates_are_whole_pairs(tmp_path, make_config, tiny_chat_tokenizer):
    pairs = common_pairs(20)
    pairs.append(dict(pairs[0]))  # line 21: the same pair again
    pairs.append({**pairs[0], "chosen": "  the HIGH in Oslo is 5°C (41°F). "})  # line 22: same up to case and spacing
    pairs.append({**pairs[0], "rejected": "No idea, sorry."})  # line 23: same prompt and chosen, another rejected: kept
    path = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    version = run(make_config, [{"path": str(path)}], tiny_chat_tokenizer)
    accounted(version, 23)
    entries = by_line(version)
    assert set(entries) == {21, 22}
    assert all(e["stage"] == "exact_duplicate" and e["reason"] == "exact duplicate of 'pairs.jsonl:1'" for e in entries.values())
    assert {r["line"] for r in kept_rows(version)} == set(range(1, 21)) | {23}


def test_near_duplicates_compare_prompt_and_answers(tmp_path, make_config, tiny_chat_tokenizer):
    pairs = common_pairs(20)
    near = dict(pairs[0], rejected=pairs[0]["rejected"] + "!")  # line 21: one character more
    path = write_jsonl(tmp_path / "pairs.jsonl", [*pairs, near])
    version = run(make_config, [{"path": str(path)}], tiny_chat_tokenizer, dedup={"near": True, "near_threshold": 0.95})
    accounted(version, 21)
    [entry] = version.quarantine()
    assert (entry["line"], entry["stage"]) == (21, "near_duplicate") and "of 'pairs.jsonl:1'" in entry["reason"]
    [example] = version.report()["duplicates"]["near_examples"]
    assert example["removed_text"].startswith("user: What is the high temperature in Oslo today? (query 0)\nchosen: ")
    assert "\nrejected: " in example["removed_text"]


def test_pairs_on_one_prompt_with_other_answers_are_not_near_duplicates(tmp_path, make_config, tiny_chat_tokenizer):
    """UltraFeedback-style data has several pairs per prompt: the prompt dominates the text, so all but one went as
    near duplicates (16 pairs kept 4). Both answers must be near-equal too, as a classifier's label must be equal."""
    prompt = "Write a one line slogan for a shop that sells tea. Keep it short, friendly and under ten words, please."
    answers = ["Sip happy!", "Fresh every day.", "Taste the joy.", "meh", "Leaves of gold."]
    pairs = [{"prompt": prompt, "chosen": answers[a], "rejected": answers[b]}
             for a, b in ((0, 3), (1, 3), (2, 3), (0, 1), (4, 3), (4, 0))]
    pairs += [{"prompt": prompt + " ", "chosen": "sip happy!!", "rejected": "meh"},  # line 7: line 1 again, nearly
              {"prompt": prompt, "chosen": "Sip happy!", "rejected": "Leaves of gold."}]  # line 8: another rejected
    pairs += common_pairs(12)
    path = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    version = run(make_config, [{"path": str(path)}], tiny_chat_tokenizer, dedup={"near": True})
    accounted(version, 20)
    [entry] = version.quarantine()
    assert (entry["line"], entry["stage"]) == (7, "near_duplicate") and "of 'pairs.jsonl:1'" in entry["reason"]

    # Near-dedup off: the same prompt with other answers in another split is no leak of an answer either.
    version = run(make_config, [{"path": str(path)}], tiny_chat_tokenizer, split={"leakage": "fail"})
    assert {r["line"] for r in kept_rows(version)} >= set(range(1, 7)) | {8}


def test_a_pair_the_chat_template_refuses_is_quarantined(tmp_path, make_config, tiny_chat_tokenizer):
    from tests.data.test_prepare import ALTERNATING

    pairs = [p for p in common_pairs(18) if isinstance(p["prompt"], str) or p["prompt"][0]["role"] == "user"]
    pairs.insert(4, {"prompt": [{"role": "user", "content": "hello"}, {"role": "user", "content": "again"}],
                     "chosen": "Hi.", "rejected": "Go away."})
    cfg = make_config(sources=[{"path": str(write_jsonl(tmp_path / "pairs.jsonl", pairs))}], task={"type": "preference"},
                      model=tiny_chat_tokenizer)
    cfg.model.chat_template = ALTERNATING
    version = prepare(cfg)
    accounted(version, 13)
    [entry] = version.quarantine()
    assert (entry["line"], entry["stage"], entry["field"]) == (5, "template", "prompt")
    assert entry["reason"].startswith("the model's chat template cannot render this conversation (with the chosen "
                                      "answer): Conversation roles must alternate")


def test_report_and_data_show(tmp_path, make_config, tiny_chat_tokenizer, capsys):
    from tunesmith.cli import run as cli

    path = write_jsonl(tmp_path / "dpo.jsonl", openai_pairs(30))
    version = run(make_config, [{"path": str(path)}], tiny_chat_tokenizer)
    report = json.loads((version.path / "report.json").read_text())
    assert "chat" not in report and "class_balance" not in report
    pref = report["preference"]
    assert sum(v["pairs"] for v in pref.values()) == 30
    assert sum(v["with_earlier_answers"] for v in pref.values()) == sum(v["with_system_prompt"] for v in pref.values()) == 7
    assert sum(v["chosen_longer"] for v in pref.values()) == 30
    assert pref["train"]["tokens"]["count"] == 24 and pref["train"]["tokens_total"] == report["lengths"]["train"]["total_tokens"]
    assert pref["train"]["prompt_turns"]["max"] <= 4
    md = (version.path / "report.md").read_text()
    assert "## Preference pairs" in md and "distinct prompts" in md and "## Conversations" not in md
    html = (version.path / "report.html").read_text()
    assert "Preference pairs" in html and html.count("data:image/png;base64,") == 1  # token lengths; no class balance

    assert cli(["data", "show", str(version.path), "--split", "train", "--n", "3"]) == 0
    shown = capsys.readouterr().out
    assert all(col in shown for col in ("messages", "chosen", "rejected", "n_tokens"))
    assert cli(["data", "show", str(version.path), "--n", "1", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert set(row) == {"id", "source", "line", "group", "messages", "chosen", "rejected", "provenance", "synthetic", "n_tokens"}
