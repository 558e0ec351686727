"""Log lines as text or as JSON, and the run/node ids each line carries.

Both the dispatcher and the worker log through the standard library; this module (stdlib
logging and contextvars only) gives them the two formats ``log_format`` selects:

* ``text``: ``2026-12-05 10:11:12,345 INFO relaygraph.worker: message`` (as before);
* ``json``: one object per line, ``{"ts", "level", "logger", "message"}`` plus ``run_id``,
  ``node_id``, ``graph_id``, ``visit``, ``attempt`` where known and ``exc_info`` (the
  formatted traceback) for an exception.

The ids come from the record's ``extra`` (``log.info(..., extra={"run_id": ...})``, and the
handler's ``ctx.logger`` sets them) or else from ``log_context``, which the dispatcher and
the worker enter while they handle one run's event or job: a line logged meanwhile, by
relaygraph or by a handler's own logger, carries the ids without naming them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextvars import ContextVar, Token
from datetime import UTC, datetime
from types import MappingProxyType, TracebackType
from typing import Any, Final, Literal

import orjson

__all__ = [
    "CONTEXT_FIELDS",
    "TEXT_FORMAT",
    "JsonFormatter",
    "LogFormat",
    "current_context",
    "formatter",
    "log_context",
    "stderr_handler",
]

LogFormat = Literal["text", "json"]
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
CONTEXT_FIELDS: Final = ("run_id", "node_id", "graph_id", "visit", "attempt")

_EMPTY: Final[Mapping[str, Any]] = MappingProxyType({})
_context: ContextVar[Mapping[str, Any]] = ContextVar("relaygraph_log_context", default=_EMPTY)


class log_context:  # lower case: used like a function, ``with log_context(run_id=...):``
    """Within the block, log lines of this task (and of threads it starts with
    ``asyncio.to_thread``) carry these ids; None values are left out. Nests: an inner
    block adds to (or overrides) the ids of the outer one.

    A class, not a generator: it is entered once per event or job, so it must be cheap."""

    __slots__ = ("_ids", "_token")

    def __init__(self, **ids: Any) -> None:
        self._ids = ids
        self._token: Token[Mapping[str, Any]] | None = None

    def __enter__(self) -> None:
        outer = _context.get()
        ids = {k: v for k, v in self._ids.items() if v is not None}
        self._token = _context.set({**outer, **ids} if outer else ids)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._token is not None:
            _context.reset(self._token)
            self._token = None


def current_context() -> Mapping[str, Any]:
    """The ids ``log_context`` set for this task (empty outside any block)."""
    return _context.get()


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (a newline in a message is escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        context = _context.get()
        attrs = record.__dict__
        for field in CONTEXT_FIELDS:
            value = attrs.get(field)
            if value is None:
                value = context.get(field)
            if value is not None:
                line[field] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exc_info"] = record.exc_text
        if record.stack_info:
            line["stack_info"] = self.formatStack(record.stack_info)
        return orjson.dumps(line, default=str).decode()


def formatter(log_format: LogFormat) -> logging.Formatter:
    """The formatter of ``log_format`` (``text`` or ``json``)."""
    if log_format == "json":
        return JsonFormatter()
    if log_format == "text":
        return logging.Formatter(TEXT_FORMAT)
    raise ValueError(f"unknown log format {log_format!r} (known: text, json)")


def stderr_handler(log_format: LogFormat) -> logging.Handler:
    """A handler writing to stderr in ``log_format``: what a process's entry point passes to
    ``logging.basicConfig(handlers=[...])``."""
    handler = logging.StreamHandler()
    handler.setFormatter(formatter(log_format))
    return handler


def _timestamp(created: float) -> str:
    """RFC 3339 in UTC with milliseconds: ``2026-12-05T10:11:12.345Z``."""
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"
