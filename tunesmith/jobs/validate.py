"""A fine-tuning file checked the way OpenAI checks it, so a job on a bad file fails with OpenAI's error
code and a message that names the line and the field ("line 7: messages.1.role: ...").

Where the codes come from:
- per-line format codes data_type, missing_messages_list, message_missing_key, message_unrecognized_key,
  unrecognized_role, missing_content, example_missing_assistant_message: the format checks of OpenAI's
  cookbook notebook "Data preparation and analysis for chat model fine-tuning"
  (openai/openai-cookbook, examples/Chat_finetuning_data_prep.ipynb);
- the job's error: OpenAI's failed jobs as its API returns them, e.g. {code: invalid_n_examples, message:
  "Training file has 7 example(s), but must have at least 10 examples", param: training_file} and {code:
  invalid_training_file, message: "The job failed due to an invalid training file. Invalid file format.
  Example 100, message 2 Discriminator 'role' is missing in value", param: training_file} (quoted in users'
  logs of the openai SDK and in openai-php/client's test fixtures);
- ours, in the same style, where no OpenAI code could be found: invalid_json, empty_file, invalid_weight,
  missing_input / missing_preferred_output / missing_non_preferred_output (DPO), example_too_long (the
  cookbook only warns that examples "may be over the 16,385 token limit"), unsupported_feature (tool
  calling, an assistant's refusal or audio: OpenAI accepts them, tunesmith cannot train them), invalid_example
  (a rule of tunesmith's training pipeline beyond OpenAI's checks, or a chat template that cannot render the
  example), and invalid_validation_file (the job code for a bad validation file, by analogy).

The checks live here because they must report OpenAI's codes; role names, the file reader and the
canonical form come from tunesmith's data pipeline, which each valid example is also run through, so a
file that passes here is one training will accept.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunesmith.data.chat_formats import (
    OPENAI_PREFERENCE_KEYS,
    ROLES,
    UNTRAINABLE_KEYS,
    ChatFormatError,
    text_parts,
    untrainable_key,
    validate_answer,
    validate_messages,
    validate_prompt,
    without_unset,
)
from tunesmith.data.raw import Raw
from tunesmith.data.records import VISIBLE
from tunesmith.data.sources import read_jsonl
from tunesmith.errors import DataError
from tunesmith.tasks.chat import plain

METHODS = ("supervised", "dpo")
MAX_LISTED = 100  # problems kept with their message; past that a broken file is only counted
# OpenAI's message keys: the cookbook's (role, content, name, function_call, weight), tool calling, and the fine-tuning
# schema's refusal and audio of an assistant message.
_MESSAGE_KEYS = {"role", "content", "name", "weight", *UNTRAINABLE_KEYS}
_TOOL_ROLES = ("tool", "function")
_NO_TOOLS = UNTRAINABLE_KEYS["tool_calls"]


@dataclass
class FileProblem:
    code: str  # OpenAI's code, e.g. "missing_messages_list"
    message: str  # what is wrong and where: "line 7: messages.1.role: ..."
    line: int | None  # 1-based; None for the file as a whole


@dataclass
class FileCheck:
    examples: int  # valid examples
    tokens: int  # tokens of the valid examples, as the chat template renders them (0 without a tokenizer)
    problems: list[FileProblem]
    more_problems: int = 0  # found after the first MAX_LISTED: counted, not kept

    @property
    def ok(self) -> bool:
        return not self.problems

    def job_error(self, param: str) -> dict[str, str | None]:
        """OpenAI's job `error` {code, message, param} for a job that failed on this file; `param` is the
        request field that named it (training_file or validation_file)."""
        if self.ok:
            raise ValueError("the file has no problems, so a job on it has no error")
        label = param.replace("_", " ")  # "training file"
        first, shown = self.problems[0], self.problems[:3]
        rest = len(self.problems) + self.more_problems - len(shown)
        text = "; ".join(p.message for p in shown) + (f" (and {rest} more problem(s))" if rest else "")
        text = text.replace("Training file", label.capitalize())  # the problems are worded for a training file
        if first.code == "invalid_n_examples":  # OpenAI's own code and wording, nothing around it
            return {"code": first.code, "message": text, "param": param}
        kind = "" if first.code == "example_too_long" else "Invalid file format. "
        return {"code": f"invalid_{param}", "message": f"The job failed due to an invalid {label}. {kind}{text}",
                "param": param}


class _Bad(Exception):
    """One problem with the line being checked; `where` is the field at fault, None for the whole line."""

    def __init__(self, code: str, where: str | None, reason: str) -> None:
        super().__init__(reason)
        self.code, self.where, self.reason = code, where, reason


def validate_file(path: Path, method: str = "supervised", *, tokenizer: Any = None, max_tokens: int | None = None,
                  min_examples: int = 10) -> FileCheck:
    """Check every line of a JSONL fine-tuning file for `method` ("supervised": OpenAI chat format, "dpo":
    OpenAI preference format). With a tokenizer (one with a chat template) the valid examples' tokens are
    counted, and with `max_tokens` an example rendered longer than that is a problem."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")
    if max_tokens is not None and tokenizer is None:
        raise ValueError("max_tokens needs a tokenizer to count with")
    check = FileCheck(examples=0, tokens=0, problems=[])

    def report(code: str, message: str, line: int | None) -> None:
        if len(check.problems) < MAX_LISTED:
            check.problems.append(FileProblem(code, message, line))
        else:
            check.more_problems += 1

    lines = 0
    try:
        for raw in read_jsonl(path, None):  # tunesmith's reader: blank lines skipped, line numbers kept
            lines += 1
            try:
                if raw.record is None:
                    raise _unreadable(raw)
                where, sequences = _chat(raw.record) if method == "supervised" else _dpo(raw.record)
                tokens = _count(tokenizer, sequences, max_tokens, where) if tokenizer is not None else 0
            except _Bad as bad:
                report(bad.code, f"line {raw.line}: {bad.where + ': ' if bad.where else ''}{bad.reason}", raw.line)
                continue
            check.examples += 1
            check.tokens += tokens
    except DataError:  # read_jsonl found no line at all
        report("empty_file", "the file has no examples: it is empty or holds only blank lines", None)
        return check
    if lines < min_examples:  # OpenAI counts the file's examples, valid or not
        report("invalid_n_examples", f"Training file has {lines} example(s), but must have at least {min_examples} examples",
               None)
    return check


def _unreadable(raw: Raw) -> _Bad:
    """A line the reader could not turn into a record: bad JSON, bad bytes, or JSON that is not an object."""
    try:
        value = json.loads(raw.text or "")
    except ValueError:
        return _Bad("invalid_json", None, raw.error or "not valid JSON")
    if isinstance(value, dict):  # a whole object the reader refused: bad bytes, or a lone `\ud83d` escape in a string
        return _Bad("invalid_json", None, raw.error or "contains bytes that are not valid text (save the file as UTF-8)")
    return _Bad("data_type", None, raw.error or "not a JSON object")  # each line is one example, an object


def _chat(record: dict[str, Any]) -> tuple[str, list[list[dict[str, Any]]]]:
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        hint = " (this is the DPO format, but the job's method is supervised)" if "preferred_output" in record else ""
        raise _Bad("missing_messages_list", "messages", f"missing, or not a non-empty list of messages{hint}")
    _no_tools(record, "")
    _check_messages(messages, "messages")
    if not any(m["role"] == "assistant" and m.get("weight") != 0 for m in messages):
        all_zero = any(m["role"] == "assistant" for m in messages)
        raise _Bad("example_missing_assistant_message", "messages",
                   "no assistant message to learn from" + (" (every one has weight 0)" if all_zero else ""))
    return "messages", [_pipeline(validate_messages, messages, "messages")]


def _dpo(record: dict[str, Any]) -> tuple[str, list[list[dict[str, Any]]]]:
    missing = [key for key in OPENAI_PREFERENCE_KEYS if key not in record]
    if missing:
        hint = " (this is the supervised chat format, but the job's method is dpo)" if "messages" in record else ""
        raise _Bad(f"missing_{missing[0]}", missing[0], f"missing: a DPO example has {', '.join(OPENAI_PREFERENCE_KEYS)}{hint}")
    inp = record["input"]
    if not isinstance(inp, dict):
        raise _Bad("missing_input", "input", f"must be an object with messages, got {type(inp).__name__}")
    _no_tools(inp, "input.")
    messages = inp.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _Bad("missing_messages_list", "input.messages", "missing, or not a non-empty list of messages")
    _check_messages(messages, "input.messages")
    for key in OPENAI_PREFERENCE_KEYS[1:]:
        answer = record[key]
        if not isinstance(answer, list) or len(answer) != 1:
            got = f"{len(answer)} messages" if isinstance(answer, list) else type(answer).__name__
            raise _Bad(f"missing_{key}", key, f"must be a list holding one assistant message, got {got}")
        _check_messages(answer, key)
        if answer[0]["role"] != "assistant":
            raise _Bad("example_missing_assistant_message", f"{key}.0.role",
                       f"the answer's role must be 'assistant', got {answer[0]['role']!r}")
    prompt = _pipeline(validate_prompt, messages, "input.messages")
    answers = [_pipeline(validate_answer, record[key], key) for key in OPENAI_PREFERENCE_KEYS[1:]]
    if answers[0].strip() == answers[1].strip():  # training drops these: the job trained on fewer lines, or failed
        raise _Bad("invalid_example", OPENAI_PREFERENCE_KEYS[2],
                   "preferred_output and non_preferred_output are the same answer, so there is nothing to prefer")
    return "input", [[*prompt, {"role": "assistant", "content": a}] for a in answers]  # DPO trains on both


def _no_tools(container: dict[str, Any], prefix: str) -> None:
    for key in ("tools", "functions"):
        if container.get(key):
            raise _Bad("unsupported_feature", prefix + key, f"tool definitions: {_NO_TOOLS}")


def _check_messages(messages: list[Any], field: str) -> None:
    """The cookbook's per-message checks (first failure wins), plus OpenAI's rule for `weight`."""
    for i, msg in enumerate(messages):
        where = f"{field}.{i}"
        if not isinstance(msg, dict):
            raise _Bad("data_type", where, f"each message must be a JSON object, got {type(msg).__name__}")
        msg = without_unset(msg)  # `refusal: null`, `tool_calls: null` or `[]`: an SDK's dump of a plain answer
        unknown = sorted(set(msg) - _MESSAGE_KEYS)
        if unknown:
            raise _Bad("message_unrecognized_key", where,
                       f"unrecognized key(s) {unknown} (a message has role and content, optionally name and weight)")
        untrainable = untrainable_key(msg)
        if untrainable:
            raise _Bad("unsupported_feature", f"{where}.{untrainable}", UNTRAINABLE_KEYS[untrainable])
        if msg.get("role") in _TOOL_ROLES:
            raise _Bad("unsupported_feature", f"{where}.role", _NO_TOOLS)
        for key in ("role", "content"):
            if key not in msg:
                raise _Bad("message_missing_key", f"{where}.{key}", f"the message has no '{key}'")
        role, content = msg["role"], msg["content"]
        if isinstance(content, list):  # content parts (OpenAI's vision fine-tuning form): text ones read as one text
            try:
                content = text_parts(content, f"{where}.content")
            except ChatFormatError as err:
                raise _Bad("unsupported_feature", err.field, str(err)) from None
        if role not in ROLES:
            raise _Bad("unrecognized_role", f"{where}.role", f"unrecognized role {role!r} (expected one of {', '.join(ROLES)})")
        # VISIBLE: training drops a message of invisible characters only ("\u200b"), which passed here
        if not isinstance(content, str) or not VISIBLE.search(content):
            got = ("empty" if not content.strip() else "invisible characters only") if isinstance(content, str) \
                else f"{type(content).__name__}, not text"
            raise _Bad("missing_content", f"{where}.content", f"content must be non-empty text, got {got}")
        weight = msg.get("weight")
        if weight is not None and (isinstance(weight, bool) or weight not in (0, 1)):
            raise _Bad("invalid_weight", f"{where}.weight", f"weight must be 0 or 1, got {weight!r}")
        if weight is not None and role != "assistant":
            raise _Bad("invalid_weight", f"{where}.weight", f"weight is only allowed on assistant messages, not {role!r}")


def _pipeline(convert: Any, value: Any, field: str) -> Any:
    """The canonical form training will use; a rule of the pipeline the checks above missed is still reported."""
    try:
        return convert(value, field)
    except ChatFormatError as err:
        raise _Bad("invalid_example", err.field, str(err)) from None


def _count(tokenizer: Any, sequences: list[list[dict[str, Any]]], max_tokens: int | None, where: str) -> int:
    """Tokens of the rendered conversations; _Bad if the longest is over `max_tokens`."""
    # Templates raise it for conversations they refuse (roles not alternating, no system role, ...).
    from jinja2 import TemplateError

    try:
        lengths = [len(tokenizer.apply_chat_template(plain(m), tokenize=True, return_dict=False)) for m in sequences]
    except TemplateError as err:
        raise _Bad("invalid_example", where, f"the model's chat template cannot render it: {err}") from None
    if max_tokens is not None and max(lengths) > max_tokens:
        raise _Bad("example_too_long", where, f"{max(lengths)} tokens, over the {max_tokens} token limit of the model's "
                   "context (shorten it or split it)")
    return sum(lengths)
