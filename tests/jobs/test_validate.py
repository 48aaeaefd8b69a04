from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunesmith.jobs.validate import MAX_LISTED, validate_file


def chat(i: int = 0, **extra) -> dict:
    return {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": f"question {i}"},
                         {"role": "assistant", "content": f"answer {i}"}], **extra}


def pair(i: int = 0) -> dict:
    return {"input": {"messages": [{"role": "user", "content": f"question {i}"}]},
            "preferred_output": [{"role": "assistant", "content": "good answer"}],
            "non_preferred_output": [{"role": "assistant", "content": "bad answer"}]}


def write(tmp_path: Path, lines: list, name: str = "train.jsonl") -> Path:
    path = tmp_path / name
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines), encoding="utf-8")
    return path


def test_a_valid_chat_file_passes(tmp_path):
    check = validate_file(write(tmp_path, [chat(i) for i in range(10)]))
    assert check.ok and check.problems == []
    assert check.examples == 10 and check.tokens == 0


def test_weights_tools_flag_and_name_are_accepted(tmp_path):
    weighted = {"messages": [{"role": "user", "content": "hi", "name": "ann"},
                             {"role": "assistant", "content": "draft", "weight": 0},
                             {"role": "user", "content": "again"}, {"role": "assistant", "content": "final", "weight": 1}],
                "parallel_tool_calls": False}
    check = validate_file(write(tmp_path, [weighted] + [chat(i) for i in range(9)]))
    assert check.ok, check.problems


BAD_LINES = [
    ("invalid_json", '{"messages": [', None),
    ("data_type", "[1, 2]", None),
    ("missing_messages_list", {"prompt": "hi", "completion": "there"}, "messages"),
    ("missing_messages_list", {"messages": []}, "messages"),
    ("data_type", {"messages": ["hi"]}, "messages.0"),
    ("message_missing_key", {"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]}, "messages.0.content"),
    ("message_unrecognized_key", {"messages": [{"role": "user", "content": "a", "mood": "ok"},
                                               {"role": "assistant", "content": "b"}]}, "messages.0"),
    ("unrecognized_role", {"messages": [{"role": "bot", "content": "a"}, {"role": "assistant", "content": "b"}]},
     "messages.0.role"),
    ("missing_content", {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "  "}]},
     "messages.1.content"),
    ("missing_content", {"messages": [{"role": "user", "content": None}, {"role": "assistant", "content": "b"}]},
     "messages.0.content"),
    ("example_missing_assistant_message", {"messages": [{"role": "user", "content": "a"}]}, "messages"),
    ("example_missing_assistant_message", {"messages": [{"role": "user", "content": "a"},
                                                        {"role": "assistant", "content": "b", "weight": 0}]}, "messages"),
    ("invalid_weight", {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "weight": 0.5}]},
     "messages.1.weight"),
    ("invalid_weight", {"messages": [{"role": "user", "content": "a", "weight": 1}, {"role": "assistant", "content": "b"}]},
     "messages.0.weight"),
    ("unsupported_feature", {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": None,
                                          "tool_calls": [{"id": "c1", "type": "function"}]}]}, "messages.1.tool_calls"),
    ("unsupported_feature", chat(tools=[{"type": "function", "function": {"name": "f"}}]), "tools"),
    ("unsupported_feature", {"messages": [{"role": "user", "content": "a"},
                                          {"role": "assistant", "content": "b", "refusal": "I can't"}]},
     "messages.1.refusal"),
    ("unsupported_feature", {"messages": [{"role": "user", "content": "a"},
                                          {"role": "assistant", "content": "b", "audio": {"id": "audio_1"}}]},
     "messages.1.audio"),
    ("unsupported_feature", {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": "https://x/a.png"}}]},
        {"role": "assistant", "content": "a cat"}]}, "messages.0.content.1"),
    ("missing_content", {"messages": [{"role": "user", "content": "a"},
                                      {"role": "assistant", "content": [{"type": "text", "text": " "}]}]},
     "messages.1.content"),
]


def test_text_content_parts_are_accepted_and_trained_as_their_text(tmp_path, make_config, tiny_chat_tokenizer):
    # OpenAI's files may write content as parts: refused as "content must be non-empty text, got list"
    from tunesmith.data.prepare import prepare

    parted = {"messages": [{"role": "user", "content": [{"type": "text", "text": "question "}, {"type": "text", "text": "9"}]},
                           {"role": "assistant", "content": [{"type": "text", "text": "answer 9"}]}]}
    path = write(tmp_path, [chat(i) for i in range(9)] + [parted])
    assert validate_file(path).ok, validate_file(path).problems
    cfg = make_config(sources=[{"path": str(path)}], task={"type": "chat"}, model=tiny_chat_tokenizer,
                      dedup={"near": False})
    cfg.model.max_length = 1024
    version = prepare(cfg)
    rows = [r for split in ("train", "validation", "test") for r in version.table(split).to_pylist()]
    [kept] = [r for r in rows if r["line"] == 10]
    assert [(m["role"], m["content"]) for m in kept["messages"]] == [("user", "question 9"), ("assistant", "answer 9")]


def test_an_sdk_dump_of_a_plain_answer_is_accepted_and_a_refusal_is_refused(tmp_path, make_config, tiny_chat_tokenizer):
    # openai's `message.model_dump()` writes every key: OpenAI's schema lists refusal and audio, and null (or no tool
    # calls) is no tool call; they were refused as unrecognized keys and as tool calling
    from tunesmith.data.prepare import prepare

    dumped = {"role": "assistant", "content": "answer 7", "refusal": None, "audio": None, "function_call": None,
              "tool_calls": None, "name": None}
    no_calls = {"role": "assistant", "content": "answer 8", "tool_calls": []}
    refused = {"role": "assistant", "content": "answer 9", "refusal": "I can't help with that"}
    lines = [chat(i) for i in range(7)] + [{"messages": [{"role": "user", "content": f"question {i}"}, m]}
                                           for i, m in ((7, dumped), (8, no_calls), (9, refused))]
    path = write(tmp_path, lines)
    [problem] = validate_file(path).problems
    assert (problem.code, problem.line) == ("unsupported_feature", 10)
    assert problem.message.startswith("line 10: messages.1.refusal: ") and "cannot train it" in problem.message
    cfg = make_config(sources=[{"path": str(path)}], task={"type": "chat"}, model=tiny_chat_tokenizer,
                      dedup={"near": False})
    cfg.model.max_length = 1024
    version = prepare(cfg)
    rows = {r["line"]: r for split in ("train", "validation", "test") for r in version.table(split).to_pylist()}
    assert rows[8]["messages"][-1] == {"role": "assistant", "content": "answer 7", "weight": None}
    assert rows[9]["messages"][-1]["content"] == "answer 8"
    [rejected] = [q for q in version.quarantine() if q["line"] == 10]
    assert (rejected["stage"], rejected["field"]) == ("validate", "messages.1.refusal")
    assert "cannot train it" in rejected["reason"]


@pytest.mark.parametrize(("code", "line", "field"), BAD_LINES)
def test_each_bad_line_gets_openais_code_and_its_line_number(tmp_path, code, line, field):
    lines = [chat(i) for i in range(10)]
    lines.insert(6, line)  # the 7th line of the file
    check = validate_file(write(tmp_path, lines))
    assert not check.ok and check.examples == 10
    [problem] = check.problems
    assert (problem.code, problem.line) == (code, 7)
    assert problem.message.startswith(f"line 7: {field}: " if field else "line 7: ")


def test_blank_lines_are_skipped_but_counted_in_line_numbers(tmp_path):
    lines = [chat(i) for i in range(10)]
    lines[2:2] = ["", "{not json"]
    [problem] = validate_file(write(tmp_path, lines)).problems
    assert (problem.code, problem.line) == ("invalid_json", 4)


def test_an_empty_file(tmp_path):
    for text in ("", "\n\n"):
        path = tmp_path / "empty.jsonl"
        path.write_text(text)
        check = validate_file(path)
        assert [(p.code, p.line) for p in check.problems] == [("empty_file", None)]
        assert check.job_error("training_file")["code"] == "invalid_training_file"


def test_too_few_examples(tmp_path):
    check = validate_file(write(tmp_path, [chat(i) for i in range(9)]))
    assert check.examples == 9
    [problem] = check.problems
    assert problem.code == "invalid_n_examples" and problem.line is None
    assert problem.message == "Training file has 9 example(s), but must have at least 10 examples"
    assert validate_file(write(tmp_path, [chat(i) for i in range(3)]), min_examples=3).ok


def test_job_error_is_openais_error_object(tmp_path):
    check = validate_file(write(tmp_path, [chat(i) for i in range(9)]))
    assert check.job_error("training_file") == {
        "code": "invalid_n_examples", "param": "training_file",
        "message": "Training file has 9 example(s), but must have at least 10 examples"}
    assert check.job_error("validation_file")["message"].startswith("Validation file has 9 example(s)")

    lines = [chat(i) for i in range(12)]
    lines[1] = {"messages": [{"role": "bot", "content": "a"}]}
    lines[4] = "nope"
    error = validate_file(write(tmp_path, lines)).job_error("training_file")
    assert error["code"] == "invalid_training_file" and error["param"] == "training_file"
    assert error["message"].startswith("The job failed due to an invalid training file. Invalid file format. "
                                       "line 2: messages.0.role: unrecognized role 'bot'")
    assert "; line 5: " in error["message"]

    with pytest.raises(ValueError):
        validate_file(write(tmp_path, [chat(i) for i in range(10)])).job_error("training_file")


def test_problems_past_the_limit_are_counted_not_kept(tmp_path):
    check = validate_file(write(tmp_path, ["oops"] * (MAX_LISTED + 5)))
    assert len(check.problems) == MAX_LISTED and check.more_problems == 5
    assert "(and 102 more problem(s))" in check.job_error("training_file")["message"]


def test_a_valid_dpo_file_passes(tmp_path):
    check = validate_file(write(tmp_path, [pair(i) for i in range(10)]), "dpo")
    assert check.ok and check.examples == 10


@pytest.mark.parametrize(("code", "mutate", "field"), [
    ("missing_input", lambda r: r.pop("input"), "input"),
    ("missing_preferred_output", lambda r: r.pop("preferred_output"), "preferred_output"),
    ("missing_non_preferred_output", lambda r: r.pop("non_preferred_output"), "non_preferred_output"),
    ("missing_preferred_output", lambda r: r.update(preferred_output="good"), "preferred_output"),
    ("missing_messages_list", lambda r: r.update(input={"messages": []}), "input.messages"),
    ("unrecognized_role", lambda r: r["input"]["messages"][0].update(role="human"), "input.messages.0.role"),
    ("example_missing_assistant_message", lambda r: r["non_preferred_output"][0].update(role="user"),
     "non_preferred_output.0.role"),
    ("missing_content", lambda r: r["preferred_output"][0].update(content=""), "preferred_output.0.content"),
    ("unsupported_feature", lambda r: r["input"].update(tools=[{"type": "function"}]), "input.tools"),
    # the pipeline's own rule: the prompt must end with the user turn both answers reply to
    ("invalid_example", lambda r: r["input"]["messages"].append({"role": "assistant", "content": "x"}), "input.messages"),
    # training drops these: the job trained on fewer lines than it said, or failed as a server_error
    ("invalid_example", lambda r: r.update(non_preferred_output=[dict(r["preferred_output"][0])]), "non_preferred_output"),
    ("missing_content", lambda r: r["preferred_output"][0].update(content="\u200b"), "preferred_output.0.content"),
])
def test_bad_dpo_lines(tmp_path, code, mutate, field):
    lines = [pair(i) for i in range(10)]
    mutate(lines[3])
    [problem] = validate_file(write(tmp_path, lines), "dpo").problems
    assert (problem.code, problem.line) == (code, 4)
    assert problem.message.startswith(f"line 4: {field}: ")


def test_a_file_for_the_other_method_says_so(tmp_path):
    [first, *_] = validate_file(write(tmp_path, [chat(i) for i in range(10)]), "dpo").problems
    assert first.code == "missing_input" and "the job's method is dpo" in first.message
    [first, *_] = validate_file(write(tmp_path, [pair(i) for i in range(10)])).problems
    assert first.code == "missing_messages_list" and "the job's method is supervised" in first.message


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    from tests.tiny_models import build_tokenizer

    return AutoTokenizer.from_pretrained(build_tokenizer(tmp_path_factory.mktemp("tok"), chat=True))


def test_tokens_are_counted_and_an_over_long_example_is_a_problem(tmp_path, tokenizer):
    lines = [chat(i) for i in range(10)]
    rendered = [len(tokenizer.apply_chat_template(line["messages"], tokenize=True, return_dict=False)) for line in lines]
    check = validate_file(write(tmp_path, lines), tokenizer=tokenizer)
    assert check.ok and check.tokens == sum(rendered)

    limit = max(rendered) + 5
    lines[7]["messages"][2]["content"] = "the food was great " * 20
    check = validate_file(write(tmp_path, lines), tokenizer=tokenizer, max_tokens=limit)
    [problem] = check.problems
    assert (problem.code, problem.line) == ("example_too_long", 8)
    assert problem.message.startswith("line 8: messages: ") and f"over the {limit} token limit" in problem.message
    assert check.examples == 9 and check.tokens == sum(rendered) - rendered[7]
    error = check.job_error("training_file")
    assert error["code"] == "invalid_training_file" and "Invalid file format" not in error["message"]


def test_a_conversation_the_chat_template_refuses_is_a_problem(tmp_path, tokenizer):
    import copy

    no_system = copy.deepcopy(tokenizer)
    no_system.chat_template = ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
                               "{% endif %}" + tokenizer.chat_template)
    lines = [chat(i) for i in range(10)]
    for line in lines[1:]:
        line["messages"].pop(0)
    [problem] = validate_file(write(tmp_path, lines), tokenizer=no_system).problems
    assert (problem.code, problem.line) == ("invalid_example", 1)
    assert "System role not supported" in problem.message


def test_dpo_tokens_count_both_answers(tmp_path, tokenizer):
    lines = [pair(i) for i in range(10)]
    check = validate_file(write(tmp_path, lines), "dpo", tokenizer=tokenizer, max_tokens=10_000)
    assert check.ok
    one = lines[0]["input"]["messages"]
    expected = sum(len(tokenizer.apply_chat_template(one + out, tokenize=True, return_dict=False))
                   for out in (lines[0]["preferred_output"], lines[0]["non_preferred_output"]))
    assert validate_file(write(tmp_path, lines[:1]), "dpo", tokenizer=tokenizer, min_examples=1).tokens == expected


def test_bad_arguments_are_refused(tmp_path):
    path = write(tmp_path, [chat()])
    with pytest.raises(ValueError, match="method"):
        validate_file(path, "reinforcement")
    with pytest.raises(ValueError, match="tokenizer"):
        validate_file(path, max_tokens=100)


def test_a_lone_surrogate_escape_is_named_with_its_field(tmp_path):
    """`\\ud83d` alone (a truncated emoji) is valid JSON but no text: the reader refuses the line, and the job's
    error says which field holds it rather than blaming the file's encoding."""
    lines = [chat(i) for i in range(10)]
    path = write(tmp_path, lines)
    text = path.read_text().splitlines()
    text[3] = text[3].replace('"content": "', '"content": "broken \\ud83d ', 1)
    path.write_text("\n".join(text) + "\n")
    [problem] = validate_file(path).problems
    assert (problem.code, problem.line) == ("invalid_json", 4)
    assert "messages.0.content" in problem.message and "unpaired surrogate" in problem.message
