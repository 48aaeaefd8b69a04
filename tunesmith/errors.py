"""Errors a user can act on. The CLI turns each into a message and an exit code scripts can test.

Exit codes: 0 success, 1 unexpected internal error, 2 bad configuration or usage, 3 bad input data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class TunesmithError(Exception):
    """Base class: the message is shown to the user as-is, so it must say what and where."""

    exit_code = 1


class ConfigError(TunesmithError):
    """The configuration (YAML file, CLI override or API payload) is invalid."""

    exit_code = 2


class NotFound(ConfigError):
    """Something the request names does not exist: a registered model or version, an A/B test (HTTP 404)."""


class RunBusy(ConfigError):
    """Another training holds the run folder's lock: for a jobs worker, a stalled one it took a job over from, so the
    job waits for it rather than failing."""


class DataError(TunesmithError):
    """The input data cannot be used: unreadable file, missing column, strict-mode rejections."""

    exit_code = 3


@dataclass
class ApiError:
    """An HTTP API error in OpenAI's shape, returned (not raised) by the service layers, so they stay
    free of HTTP and are tested without a server; the routers turn it into the response."""

    status: int
    message: str
    type: str = "invalid_request_error"  # invalid_request_error | authentication_error | not_found_error | server_error
    param: str | None = None  # the request field at fault
    code: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}
