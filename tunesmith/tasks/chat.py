"""Chat conversations as training examples: the chat template, which tokens carry loss, when to stop.

A conversation is rendered with the model's own chat template (or the one in `model.chat_template`)
and tokenized as one text, exactly as it will be at inference. Loss falls on the assistant turns
whose `weight` is not 0 (OpenAI's rule), from the first token of the answer through the template's
end-of-turn token, so the tuned model learns to stop. Turn boundaries are found by rendering each
prefix of the conversation, so any template works, with or without `{% generation %}` markers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunesmith.errors import ConfigError, DataError


def set_chat_template(tokenizer: Any, template: str | None, model_name: str) -> None:
    """Install `template` (inline Jinja or a .jinja file) or insist the tokenizer has its own."""
    if template:
        path = Path(template)
        if "{" not in template:
            if not path.is_file():
                raise ConfigError(f"model.chat_template: file not found: {path}")
            template = path.read_text(encoding="utf-8")
        tokenizer.chat_template = template
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            f"model {model_name} has no chat template, so tunesmith cannot tell where turns begin and end; "
            "set model.chat_template to a Jinja template (inline or a .jinja file), e.g. the ChatML one: "
            "\"{% for m in messages %}<|im_start|>{{ m.role }}\\n{{ m.content }}<|im_end|>\\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\\n{% endif %}\" (its special tokens must exist)"
        )


def plain(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def render(tokenizer: Any, messages: list[dict[str, Any]], generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(plain(messages), tokenize=False, add_generation_prompt=generation_prompt)


def assistant_spans(tokenizer: Any, messages: list[dict[str, Any]]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans that are trained (weight != 0 answers).

    A span runs from where the generation prompt ends to the end of the turn as the template closes
    it (end-of-turn token included, trailing whitespace not).
    """
    text = render(tokenizer, messages)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant" or message.get("weight") == 0:
            continue
        before = render(tokenizer, messages[:i], generation_prompt=True) if i else _opening_answer_header(tokenizer)
        through = render(tokenizer, messages[: i + 1]).rstrip()
        if not (text.startswith(before) and text.startswith(through) and len(through) > len(before)):
            raise ConfigError("the chat template renders a conversation differently from its beginnings "
                              "(e.g. it rewrites earlier turns), so answer boundaries cannot be found; "
                              "set model.chat_template to a template that appends turns")
        spans.append((len(before), len(through)))
    return text, spans


# A stand-in answer: what a template renders before it is the opening assistant turn's header (no text of its own).
_ANSWER_MARK = "tunesmith-answer-mark-7f3a"


def _opening_answer_header(tokenizer: Any) -> str:
    """What a template renders before the answer of a conversation that opens with the assistant: its header, and
    any default system prompt the template adds (SmolLM2's and Qwen's do). None of it is the answer, so none of it is
    trained. transformers refuses to render an empty conversation, so the turn is rendered with a marker for its text
    and cut where the marker begins."""
    text = render(tokenizer, [{"role": "assistant", "content": _ANSWER_MARK}])
    if _ANSWER_MARK not in text:
        raise ConfigError("the chat template does not render an assistant message's text as given, so answer "
                          "boundaries cannot be found; set model.chat_template to a template that writes content as is")
    return text[:text.index(_ANSWER_MARK)]


def encode(tokenizer: Any, messages: list[dict[str, Any]]) -> dict[str, list[int]]:
    """input_ids plus assistant_masks (1 = this token carries loss), TRL's pre-tokenized form."""
    text, spans = assistant_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = [int(any(_overlaps(token, span) for span in spans)) for token in enc["offset_mapping"]]
    return {"input_ids": list(enc["input_ids"]), "assistant_masks": mask}


def _overlaps(token: tuple[int, int], span: tuple[int, int]) -> bool:
    """Whether a token holds any of the span's text. Not "starts inside it": with a generation prompt that ends in a
    space ("### Response: ") a byte-level BPE reads the space and the answer's first word as one token ("Ġparis")
    that starts before the span, and that word would never be trained. A prompt token that only touches the span
    (ends where it begins, or is empty there) holds none of it and stays untrained."""
    (start, end), (span_start, span_end) = token, span
    return start < span_end and end > span_start


def stop_token_ids(tokenizer: Any) -> list[int]:
    """The tokens that end an answer: EOS and the template's end-of-turn token (e.g. <|im_end|>).

    Training puts loss on the end-of-turn token; generation must stop on it, or the model talks on.
    """
    probe = [{"role": "user", "content": "ping"}, {"role": "assistant", "content": "pong"}]
    text, spans = assistant_spans(tokenizer, probe)
    tail = text[spans[0][0]:spans[0][1]]
    closing = tail[tail.rfind("pong") + len("pong"):]
    ids = tokenizer(closing, add_special_tokens=False)["input_ids"] if closing else []
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    stops = [i for i in ids if i in special][-1:]
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in stops:
        stops.append(tokenizer.eos_token_id)
    if not stops:
        raise ConfigError("the chat template closes an assistant turn with no special token and the tokenizer has no "
                          "EOS token, so a tuned model could never stop; end assistant turns with {{ eos_token }}")
    if not any(i in special for i in ids):
        raise ConfigError("the chat template does not end an assistant turn with a special token "
                          f"(it closes with {closing!r}), so the model could not learn to stop; "
                          "end assistant turns with {{ eos_token }} or an end-of-turn token")
    return stops


def encode_split(tokenizer: Any, rows: Any, max_length: int, where: str) -> Any:
    """A Dataset of conversations -> input_ids/assistant_masks, checked to fit and to train something."""

    def batch(examples: dict[str, list[Any]]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {"input_ids": [], "assistant_masks": []}
        for messages in examples["messages"]:
            enc = encode(tokenizer, messages)
            out["input_ids"].append(enc["input_ids"])
            out["assistant_masks"].append(enc["assistant_masks"])
        return out

    encoded = rows.map(batch, batched=True, remove_columns=rows.column_names, desc=f"tokenizing {where}")
    lengths = [len(x) for x in encoded["input_ids"]]
    too_long = [i for i, n in enumerate(lengths) if n > max_length]
    if too_long:
        ids = rows.select(too_long[:5])["id"]
        raise DataError(f"{where}: {len(too_long)} conversation(s) longer than model.max_length={max_length} tokens "
                        f"(e.g. {ids}); raise model.max_length or set data.clean.max_tokens to drop them at prepare time")
    return encoded
