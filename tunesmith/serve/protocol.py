"""Request and response models of the HTTP API: tunesmith's /v1/predict and OpenAI's shapes.

The OpenAI models accept (and ignore) fields this server does not use, as the official client
sends some of them by default; fields that change the answer in ways not supported (n > 1, tools,
logprobs, echo, response_format, penalties: `SamplingParams.unsupported`) are refused with OpenAI's error
shape when set to anything but their no-op value, instead of being silently dropped.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StrictBool,
    field_validator,
    model_serializer,
)


def _encodable(value: str) -> str:
    """JSON may carry a lone surrogate escape ("\\ud800"), which no tokenizer or store can take: refused by name here,
    it failed every request batched with it (500) and took a chat request's answer down with a bare 500."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(f"holds an unpaired surrogate escape ({value[err.start]!r} at character {err.start}), which is "
                         "not a character; escape characters outside the BMP as a pair (\\ud83d\\ude00)") from None
    return value


def _each_encodable(value: str | list[str]) -> str | list[str]:
    """A string or a list of them (`prompt`, `stop`): the list's item named, which a union's error would not."""
    for i, item in enumerate([value] if isinstance(value, str) else value):
        try:
            _encodable(item)
        except ValueError as err:
            raise ValueError(str(err) if isinstance(value, str) else f"item {i} {err}") from None
    return value


Text = Annotated[str, AfterValidator(_encodable)]  # a string of the request's input: valid Unicode
Texts = Annotated[str | list[str], AfterValidator(_each_encodable)]
MAX_SEED = 2**63 - 1  # the engines' random generators take an unsigned 64-bit seed; OpenAI's are non-negative too


class ErrorBody(BaseModel):
    message: str
    type: str  # invalid_request_error | authentication_error | not_found_error | server_error | ...
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


# -- tunesmith: classification and regression -----------------------------------------------------


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: Text | None = None  # None: the only classification/regression model served
    text: Text | None = None  # one text ...
    texts: list[Text] | None = None  # ... or a batch
    user: str | None = Field(None, max_length=256)  # the end user (OpenAI's `user`): feedback and A/B assignment key on it


class Prediction(BaseModel):
    label: str | list[str] | None = None  # classification: the class (multi-label: the classes)
    probabilities: dict[str, float] | None = None
    value: float | None = None  # regression, in the user's units


class PredictResponse(BaseModel):
    id: str
    object: Literal["prediction"] = "prediction"
    model: str
    model_version: str
    predictions: list[Prediction]


# -- OpenAI ----------------------------------------------------------------------------------------


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: Text | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[Any] | None = None  # an assistant turn's function calls: refused (below), never dropped
    function_call: dict[str, Any] | None = None  # the older form of the same

    @field_validator("tool_calls", "function_call")
    @classmethod
    def _no_tool_calls(cls, calls: Any) -> None:
        """Dropped, the history the model read was not the one sent (as the `tool` role, refused by name)."""
        if calls:
            raise ValueError("function calling is not supported by tunesmith models; send the history without them")
        return None

    @field_validator("content")
    @classmethod
    def _text_parts(cls, content: Any) -> Any:
        """Content parts are text parts: an image or audio part dropped would answer a question that was not asked."""
        if isinstance(content, list):
            for i, part in enumerate(content):
                kind = part.get("type")
                if kind != "text":
                    raise ValueError(f"part {i} is of type {kind!r}; these models read text only (type 'text')")
                if not isinstance(part.get("text"), str):
                    raise ValueError(f"part {i}: 'text' must be a string, not {type(part.get('text')).__name__}")
                try:
                    _encodable(part["text"])
                except ValueError as err:
                    raise ValueError(f"part {i}: {err}") from None
        return content

    def text(self) -> str:
        if isinstance(self.content, list):  # content parts, each a text part (checked above)
            return "".join(p["text"] for p in self.content)
        return self.content or ""


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: StrictBool = False  # a final chunk with the usage; "yes" was read as true


class SamplingParams(BaseModel):
    model_config = ConfigDict(extra="ignore")

    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)  # 0: OpenAI's smallest nucleus, the likeliest token (greedy)
    max_tokens: int | None = Field(None, ge=1)
    stop: Texts | None = None
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    n: int | None = Field(None, ge=1)
    stream: bool | None = False  # null is OpenAI's "not streamed" too
    stream_options: StreamOptions | None = None
    tools: list[Any] | None = None
    user: str | None = Field(None, max_length=256)  # OpenAI's end-user id: logged with the answer, keys A/B assignment
    # Fields that change the answer in ways these engines do not: refused when asked for (`unsupported`), not dropped.
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict[str, float] | None = None

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def unsupported(self) -> str | None:
        """The first field that asks for something not supported, at a value other than its no-op default."""
        no_ops: dict[str, tuple[Any, ...]] = {"frequency_penalty": (None, 0), "presence_penalty": (None, 0),
                                              "logit_bias": (None, {}), **self._no_ops}
        return next((name for name, fine in no_ops.items() if getattr(self, name) not in fine), None)

    _no_ops: ClassVar[dict[str, tuple[Any, ...]]] = {}


class ChatCompletionRequest(SamplingParams):
    model: Text  # quoted back in a 404: a lone surrogate failed that answer with a bare 500
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = None
    response_format: dict[str, Any] | None = None  # {"type": "text"} is what every answer is
    # function calling by its older names and its choice (`tools` itself has its own message), and audio answers
    functions: list[Any] | None = None
    function_call: Any = None
    tool_choice: Any = None
    modalities: list[str] | None = None
    audio: dict[str, Any] | None = None

    _no_ops = {"logprobs": (None, False), "top_logprobs": (None, 0),
               "response_format": (None, {"type": "text"}), "functions": (None, []),
               "function_call": (None, "none"), "tool_choice": (None, "none"), "modalities": (None, ["text"]),
               "audio": (None,)}


class CompletionRequest(SamplingParams):
    model: Text
    prompt: Texts
    logprobs: int | None = None
    echo: bool | None = None
    best_of: int | None = None
    suffix: str | None = None

    _no_ops = {"logprobs": (None,), "echo": (None, False), "best_of": (None, 1), "suffix": (None, "")}


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class _OmitsAbsent(BaseModel):
    """OpenAI leaves some optional fields out instead of sending null (`usage` on stream chunks that do not
    carry it, the parts of a delta that did not change); subclasses name them in `_omit_if_none`. Every
    other None is sent as null, as OpenAI does (`logprobs`, `finish_reason`)."""

    _omit_if_none: ClassVar[tuple[str, ...]] = ()

    # No return annotation: an annotated one would replace the fields in the OpenAPI (serialization) schema.
    @model_serializer(mode="wrap")
    def _omit_absent(self, handler: SerializerFunctionWrapHandler):
        data = handler(self)
        for name in self._omit_if_none:
            if name in data and data[name] is None:  # not in data: left out by model_dump(include=/exclude=)
                del data[name]
        return data


FinishReason = Literal["stop", "length"]  # stop: the model ended (or hit a stop string); length: max_tokens ran out


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: None = None  # not computed; OpenAI sends null then
    finish_reason: FinishReason


class ChatCompletion(BaseModel):
    """`object: chat.completion`, the answer to a non-streamed /v1/chat/completions."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str  # the served run's version


class ChatDelta(_OmitsAbsent):
    _omit_if_none = ("role", "content")

    role: Literal["assistant"] | None = None  # first chunk only
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: ChatDelta
    logprobs: None = None
    finish_reason: FinishReason | None = None  # set on the last content chunk


class ChatCompletionChunk(_OmitsAbsent):
    """One server-sent event of a streamed /v1/chat/completions."""

    _omit_if_none = ("usage",)

    id: str  # the same in every chunk of a stream
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str
    choices: list[ChatChunkChoice]  # empty in the usage chunk
    usage: Usage | None = None  # only in the final chunk, when stream_options.include_usage asks for it


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: None = None
    finish_reason: FinishReason | None = None  # None on streamed chunks before the last


class Completion(BaseModel):
    """`object: text_completion`, the answer to a non-streamed /v1/completions (one choice per prompt)."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    system_fingerprint: str


class CompletionChunk(_OmitsAbsent):
    """One server-sent event of a streamed /v1/completions (OpenAI names it text_completion too)."""

    _omit_if_none = ("usage",)

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    system_fingerprint: str  # as the whole answer's, and each chat chunk's
    choices: list[CompletionChoice]  # empty in the usage chunk
    usage: Usage | None = None


def completion_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "tunesmith"
    # tunesmith extras (the OpenAI client keeps unknown fields)
    task: str
    run: str
    base_model: str
    engine: str | None = None  # what answers, and in which precision ("torch bf16", "llama.cpp F16"); None: not loaded here


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# -- operations ------------------------------------------------------------------------------------


class ReadyStatus(BaseModel):
    status: Literal["ready", "loading"]  # loading: answered with 503, so probes need not parse the body
    models: list[str]


class ServedModelStatus(BaseModel):
    id: str
    run: str
    task: str
    version: str


class BatchCounts(BaseModel):
    batches: int
    items: int


class AdminStatus(BaseModel):
    """Per batcher key (adapters over one base share a batcher, so keys are not always model ids)."""

    models: list[ServedModelStatus]
    queues: dict[str, int]  # requests waiting
    batches: dict[str, BatchCounts]  # batches run and requests in them, since start
    streams: dict[str, int]  # streams in progress
    loaded_models: int  # distinct base models in memory: adapters over one base share it
