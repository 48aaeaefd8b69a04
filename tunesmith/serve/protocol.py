"""Request and response models of the HTTP API: tunesmith's /v1/predict and OpenAI's shapes.

The OpenAI models accept (and ignore) fields this server does not use, as the official client
sends some of them by default; fields that change the answer in ways not supported (n > 1, tools)
are refused with OpenAI's error shape instead of being silently dropped.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


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

    model: str | None = None  # None: the only classification/regression model served
    text: str | None = None  # one text ...
    texts: list[str] | None = None  # ... or a batch


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
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, list):  # content parts: only text parts carry meaning here
            return "".join(p.get("text", "") for p in self.content if p.get("type") == "text")
        return self.content or ""


class SamplingParams(BaseModel):
    model_config = ConfigDict(extra="ignore")

    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = Field(None, ge=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    tools: list[Any] | None = None

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class ChatCompletionRequest(SamplingParams):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionRequest(SamplingParams):
    model: str
    prompt: str | list[str]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


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


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
