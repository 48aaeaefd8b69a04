"""Conversation formats: OpenAI chat JSONL is the internal form; Alpaca, ShareGPT and
prompt/completion records are converted into it. Validation follows OpenAI's fine-tuning format
checks (unknown roles, missing content, no assistant turn, bad `weight`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from tunesmith.data.raw import Raw

ROLES = ("system", "user", "assistant")
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "chatgpt": "assistant", "bard": "assistant", "bing": "assistant", "system": "system"}


_NO_TOOLS = "OpenAI accepts tool calling, but tunesmith cannot train it yet"
# OpenAI's message keys that tunesmith cannot train, and why. A key that holds null (or `tool_calls: []`) is unset,
# as the openai SDK's `message.model_dump()` writes every key of a plain answer.
UNTRAINABLE_KEYS = {
    "tool_calls": _NO_TOOLS,
    "function_call": _NO_TOOLS,
    "tool_call_id": _NO_TOOLS,
    "refusal": "OpenAI accepts an assistant's refusal, but tunesmith cannot train it (it trains the text in content); "
               "put the refusal's text in content, or set refusal to null",
    "audio": "OpenAI accepts an earlier audio answer, but tunesmith fine-tunes text models and cannot train it; "
             "set audio to null",
}
_OPTIONAL_KEYS = {"name", *UNTRAINABLE_KEYS}


def without_unset(message: dict[str, Any]) -> dict[str, Any]:
    """The message without the optional keys that hold nothing (null, or no tool calls)."""
    return {k: v for k, v in message.items()
            if k not in _OPTIONAL_KEYS or not (v is None or (k == "tool_calls" and v == []))}


def untrainable_key(message: dict[str, Any]) -> str | None:
    """The first key of the message (already without_unset) that tunesmith cannot train, if any."""
    return next((key for key in UNTRAINABLE_KEYS if key in message), None)


class ChatFormatError(ValueError):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field


@dataclass
class Unconverted(Raw):
    """A record that was read but is not valid in its format (Alpaca's `output` a number): a validation failure of
    `field`, as the same fault in OpenAI chat data is, not a line that could not be read. Its record is None, so the
    readers' other users skip it as they skip an unreadable line."""

    field: str | None = None


def convert(kind: str, raws: Iterable[Raw]) -> Iterator[Raw]:
    to_messages = {"alpaca": _alpaca, "sharegpt": _sharegpt, "prompt_completion": _prompt_completion}[kind]
    for raw in raws:
        if raw.record is None:
            yield raw
            continue
        try:
            messages = to_messages(raw.record)
        except ChatFormatError as err:
            yield Unconverted(raw.source, raw.line, None, str(err), text=_dump(raw.record), field=err.field)
            continue
        yield Raw(raw.source, raw.line, {**raw.record, "messages": messages})


def _dump(record: dict[str, Any]) -> str:
    import json

    return json.dumps(record, ensure_ascii=False, default=str)[:4000]


def _required_text(record: dict[str, Any], key: str) -> str:
    if key not in record:
        raise ChatFormatError(key, f"missing (keys present: {sorted(record)})")
    value = record[key]
    if not isinstance(value, str):
        raise ChatFormatError(key, f"must be text, got {type(value).__name__}")
    return value


class Converted(list):  # type: ignore[type-arg]
    """Messages converted from another format, with the source record's name for each message and its fields
    (`origins[i]`: "" for the message, then role, content, weight), so that validation names the field the user
    wrote (`output`, `conversations.1.from`), not the converted one (`messages.1.content`)."""

    def __init__(self, messages: list[dict[str, Any]], origins: list[dict[str, str]], field: str) -> None:
        super().__init__(messages)
        self.origins = origins
        self.field = field  # the whole conversation, as the source record names it


def _names(where: str) -> dict[str, str]:
    return {"": where, **{key: f"{where}.{key}" for key in ("role", "content", "weight")}}


def _whole(key: str) -> dict[str, str]:
    """A message made from one field of the record (Alpaca's `output`): each of its fields is that field."""
    return dict.fromkeys(("", "role", "content", "weight"), key)


def _alpaca(record: dict[str, Any]) -> list[dict[str, Any]]:
    instruction = _required_text(record, "instruction")
    extra = record.get("input") or ""
    if not isinstance(extra, str):
        raise ChatFormatError("input", f"must be text, got {type(extra).__name__}")
    prompt = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    system = [{"role": "system", "content": record["system"]}] if record.get("system") else []
    messages = [*system, {"role": "user", "content": prompt},
                {"role": "assistant", "content": _required_text(record, "output")}]
    keys = (["system"] if system else []) + ["instruction", "output"]
    return Converted(messages, [_whole(k) for k in keys], "output")


def _sharegpt(record: dict[str, Any]) -> list[dict[str, Any]]:
    key = "conversations" if "conversations" in record else "messages"
    turns = record.get(key)
    if not isinstance(turns, list):
        raise ChatFormatError("conversations", "missing or not a list of {from, value} turns")
    messages, origins = [], []
    for i, turn in enumerate(turns):
        where = f"{key}.{i}"
        if not isinstance(turn, dict):
            raise ChatFormatError(where, "each turn must be an object")
        speaker_key = "from" if "from" in turn or "role" not in turn else "role"
        text_key = "value" if "value" in turn or ("content" not in turn and speaker_key == "from") else "content"
        speaker = turn.get(speaker_key)
        role = _SHAREGPT_ROLES.get(str(speaker).lower(), str(speaker))
        # The turn's other keys go on to validation as they are: weight is checked as OpenAI's (a weight-0 answer is
        # context, not a target) and a key nothing reads is refused, not dropped.
        extra = {k: v for k, v in turn.items() if k not in ("from", "value", "role", "content")}
        messages.append({"role": role, "content": turn.get(text_key), **extra})
        origins.append({**_names(where), "role": f"{where}.{speaker_key}", "content": f"{where}.{text_key}"})
    if record.get("system"):
        messages.insert(0, {"role": "system", "content": record["system"]})
        origins.insert(0, _whole("system"))
    return Converted(messages, origins, key)


def _prompt_completion(record: dict[str, Any]) -> list[dict[str, Any]]:
    return Converted([{"role": "user", "content": _required_text(record, "prompt")},
                      {"role": "assistant", "content": _required_text(record, "completion")}],
                     [_whole("prompt"), _whole("completion")], "completion")


def text_parts(content: Any, where: str) -> Any:
    """OpenAI's content-part form (`[{"type": "text", "text": ...}, ...]`) as the one text it reads as; anything
    else unchanged. Image, audio and file parts are refused: tunesmith fine-tunes text models."""
    if not isinstance(content, list):
        return content
    texts = []
    for k, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind != "text" or not isinstance(part.get("text"), str):
            what = f"a {kind!r} part" if kind else f"{type(part).__name__}, not a content part"
            raise ChatFormatError(f"{where}.{k}", f"{what}: only text parts ({{\"type\": \"text\", \"text\": ...}}) "
                                  "are supported; tunesmith fine-tunes text models")
        texts.append(part["text"])
    return "".join(texts)


def validate_messages(value: Any, field: str = "messages", require_assistant: bool = True) -> list[dict[str, Any]]:
    """Return the messages in canonical form {role, content, weight} or raise ChatFormatError.

    `field` is the name errors use for the list (`messages`, or a preference task's `prompt`);
    `require_assistant=False` accepts a conversation with nothing to learn from (a DPO prompt).
    """
    if not isinstance(value, list):
        raise ChatFormatError(field, f"must be a list of messages, got {type(value).__name__}")
    converted = isinstance(value, Converted)
    field = value.field if converted else field
    if not value:
        raise ChatFormatError(field, "is empty")
    out = []
    for i, msg in enumerate(value):
        names = value.origins[i] if converted else _names(f"{field}.{i}")
        if not isinstance(msg, dict):
            raise ChatFormatError(names[""], "each message must be an object with role and content")
        msg = without_unset(msg)
        unknown = sorted(set(msg) - {"role", "content", "weight", "name", *UNTRAINABLE_KEYS})
        if unknown:
            raise ChatFormatError(names[""], f"unrecognized key(s) {unknown}")
        untrainable = untrainable_key(msg)
        if untrainable:
            raise ChatFormatError(f"{names['']}.{untrainable}", UNTRAINABLE_KEYS[untrainable])
        role = msg.get("role")
        if role not in ROLES:
            raise ChatFormatError(names["role"], f"unknown role {role!r}; expected one of {list(ROLES)}")
        content = text_parts(msg.get("content"), names["content"])
        if not isinstance(content, str):
            got = "missing" if content is None else f"{type(content).__name__}, not text"
            raise ChatFormatError(names["content"], f"content is {got}")
        if not content.strip():
            raise ChatFormatError(names["content"], "content is empty")
        weight = msg.get("weight")
        if weight is not None:
            if role != "assistant":
                raise ChatFormatError(names["weight"], "weight is only allowed on assistant messages")
            if weight not in (0, 1) or isinstance(weight, bool):
                raise ChatFormatError(names["weight"], f"weight must be 0 or 1, got {weight!r}")
            weight = int(weight)
        out.append({"role": role, "content": content, "weight": weight})
    if require_assistant and not any(m["role"] == "assistant" and m["weight"] != 0 for m in out):
        raise ChatFormatError(field, "no assistant message to learn from (all missing or weight 0)")
    return out


# --- preference pairs (DPO) ----------------------------------------------------------------------

OPENAI_PREFERENCE_KEYS = ("input", "preferred_output", "non_preferred_output")


def validate_prompt(value: Any, field: str) -> list[dict[str, Any]]:
    """A preference prompt: text (one user message) or a conversation ending with a user turn.

    Weights are dropped: they mark what SFT learns from, and nothing in a DPO prompt is learned.
    """
    if isinstance(value, str):
        if not value.strip():
            raise ChatFormatError(field, "prompt is empty")
        return [{"role": "user", "content": value, "weight": None}]
    if not isinstance(value, list):
        raise ChatFormatError(field, f"must be text or a list of messages, got {type(value).__name__}")
    messages = validate_messages(value, field, require_assistant=False)
    last = messages[-1]["role"]
    if last != "user":
        raise ChatFormatError(field, f"must end with a user message (the turn both answers reply to), ends with {last!r}")
    for m in messages:
        m["weight"] = None
    return messages


def validate_answer(value: Any, field: str) -> str:
    """A preferred or non-preferred answer: text, or a list of exactly one assistant message."""
    if isinstance(value, str):
        if not value.strip():
            raise ChatFormatError(field, "answer is empty")
        return value
    if not isinstance(value, list):
        raise ChatFormatError(field, f"must be text or a list with one assistant message, got {type(value).__name__}")
    if len(value) != 1:
        raise ChatFormatError(field, f"must hold exactly one assistant message, got {len(value)} messages")
    [message] = validate_messages(value, field, require_assistant=False)
    if message["role"] != "assistant":
        raise ChatFormatError(f"{field}.0.role", f"the answer's role must be 'assistant', got {message['role']!r}")
    return message["content"]
