"""Reading Server-Sent Events (``text/event-stream``) from a stream of bytes as they arrive:
what ``bench.api`` times the first event of ``GET /v1/runs/{id}/events`` with."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

__all__ = ["SseEvent", "SseParser", "sse_events"]

_LINE = re.compile(rb"\r\n|\r|\n")


@dataclass(frozen=True)
class SseEvent:
    """One Server-Sent Event: its ``id:``, ``event:`` and (joined) ``data:`` lines."""

    data: str
    event: str = "message"
    id: str | None = None


@dataclass
class SseParser:
    """Server-Sent Events from the bytes of a stream, as they arrive, by the WHATWG rules: a
    blank line ends an event, ``:`` starts a comment, one space after the colon is dropped,
    an event without ``data:`` is not dispatched, the last ``id:`` carries over."""

    _buffer: bytes = b""
    _data: list[str] = field(default_factory=list)
    _event: str = ""
    _last_id: str | None = None

    def feed(self, chunk: bytes) -> list[SseEvent]:
        """The events that ``chunk`` completes, in order."""
        data, hold = self._buffer + chunk, b""
        if data.endswith(b"\r"):  # maybe half of a CRLF: decide with the next chunk
            data, hold = data[:-1], b"\r"
        *lines, rest = _LINE.split(data)
        self._buffer = rest + hold
        events = []
        for raw in lines:
            event = self._line(raw.decode())
            if event is not None:
                events.append(event)
        return events

    def _line(self, line: str) -> SseEvent | None:
        if not line:
            data, event, self._data, self._event = self._data, self._event, [], ""
            if not data:
                return None
            return SseEvent("\n".join(data), event or "message", self._last_id)
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._last_id = value
        return None


async def sse_events(chunks: AsyncIterator[bytes]) -> AsyncIterator[SseEvent]:
    """The events of a stream of bytes, each as soon as its chunk has arrived."""
    parser = SseParser()
    async for chunk in chunks:
        for event in parser.feed(chunk):
            yield event
