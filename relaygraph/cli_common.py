"""What every ``relaygraph`` command shares: exit statuses, flag parsing, settings."""

from __future__ import annotations

import argparse
import logging
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

from graph_core.errors import RelaygraphError
from graph_core.logfmt import LogFormat, stderr_handler
from graph_core.settings import BaseSettings, SettingsError, load_settings
from graph_core.status import RunStatus

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "UsageError",
    "exit_code_for",
    "parse_json",
    "parse_json_object",
    "redact_url",
    "require_url",
    "settings_from",
    "setup_logging",
]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(RelaygraphError):
    """A command was called wrongly (bad flag value, missing setting): exit status 2."""


def parse_json(text: str | None, flag: str) -> Any:
    """The JSON value of a flag (None when the flag is absent); UsageError naming it."""
    if text is None:
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as e:
        raise UsageError(f"{flag} is not valid JSON ({e}): {text!r}") from e


def parse_json_object(text: str | None, flag: str) -> dict[str, Any] | None:
    value = parse_json(text, flag)
    if value is not None and not isinstance(value, dict):
        raise UsageError(f"{flag} must be a JSON object, got {text!r}")
    return value


def settings_from(args: argparse.Namespace, cls: type[Any] = BaseSettings, **extra: Any) -> Any:
    """Settings for this command: flags over ``RELAYGRAPH_*`` variables over defaults."""
    flags = {"redis_url": getattr(args, "redis", None), "prefix": getattr(args, "prefix", None)}
    flags.update(extra)
    try:
        settings = load_settings(cls, flags)
    except SettingsError:
        raise
    except RelaygraphError as e:  # a validator's own error (e.g. a bad prefix) escaped
        raise SettingsError([str(e)]) from e
    args._redis_url = settings.redis_url
    return settings


def require_url(settings: BaseSettings, command: str) -> str:
    if settings.redis_url is None:
        raise UsageError(
            f"`relaygraph {command}` needs a Redis server: pass --redis URL or set "
            "RELAYGRAPH_REDIS_URL"
        )
    return settings.redis_url


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for messages)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))


def exit_code_for(status: RunStatus) -> int:
    return EXIT_OK if status == RunStatus.COMPLETED else EXIT_FAILED


def setup_logging(level: str, log_format: LogFormat = "text") -> None:
    """Log to stderr at ``level``, as text or one JSON object per line (graph_core.logfmt)."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise UsageError(f"--log-level: unknown level {level!r}")
    logging.basicConfig(level=numeric, handlers=[stderr_handler(log_format)])
