"""Errors a user can act on. The CLI turns each into a message and an exit code scripts can test.

Exit codes: 0 success, 1 unexpected internal error, 2 bad configuration or usage, 3 bad input data.
"""

from __future__ import annotations


class TunesmithError(Exception):
    """Base class: the message is shown to the user as-is, so it must say what and where."""

    exit_code = 1


class ConfigError(TunesmithError):
    """The configuration (YAML file, CLI override or API payload) is invalid."""

    exit_code = 2


class DataError(TunesmithError):
    """The input data cannot be used: unreadable file, missing column, strict-mode rejections."""

    exit_code = 3
