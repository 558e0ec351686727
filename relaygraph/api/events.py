"""Server-Sent Events: a run's history, then its live events; or every run's live events.

One ``EventHub`` per API process holds a single subscription to ``<prefix>:events`` and fans
it out to the open streams, so a thousand watchers cost Redis one subscriber.

A run's stream is read from the run's history stream, never from pub/sub directly: a
published event only tells the stream to read the history after the last entry it sent.
So the seam between replay and live has no gap and no duplicate (the entry id is the SSE
``id``, and the read starts after it), and an event pub/sub lost (a reconnect, a slow
client) is still sent: a lost connection makes the hub tell every stream to re-read, and a
stream re-reads after ``POLL_S`` without news anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any, Final

import orjson
from redis.exceptions import RedisClusterException, RedisError

from dispatcher.channels import open_events
from graph_core.events import history_event
from graph_core.keys import Keys, RunKeys

__all__ = ["HEARTBEAT_S", "EventHub", "all_events", "check_event_id", "run_events"]

_CLOSE_S: Final = 5.0  # the longest wait for the pump to stop

log = logging.getLogger("relaygraph.api")

HEARTBEAT_S: Final = 15.0  # a comment line this often keeps proxies from closing the stream
POLL_S: Final = 5.0  # re-read the history this long after the last news (pub/sub is lossy)
READ_BATCH: Final = 500  # history entries read per round trip
RECONNECT_S: Final = 1.0
TERMINAL_EVENTS: Final = frozenset(
    {
        "run.completed",
        "run.failed",
        "run.cancelled",
        "run.compensated",
        "run.compensation_failed",
    }
)
_EVENT_ID = re.compile(r"^\d{1,20}-\d{1,20}$")
_GAP: Final = object()  # the hub lost its subscription: what was published meanwhile is lost
_QUEUE_BOUND: Final = 1000  # a stream this far behind re-reads instead (all_events: drops)


def check_event_id(value: str | None) -> str | None:
    """A ``Last-Event-ID`` (a history entry id, ``<ms>-<seq>``) or None; ValueError otherwise."""
    if value is None or value == "":
        return None
    if not _EVENT_ID.match(value) or any(int(part) >= 2**64 for part in value.split("-")):
        raise ValueError(f"{value!r} is not an event id (expected <ms>-<seq>, as sent in id:)")
    return value


class _Listener:
    def __init__(self, run_id: str | None) -> None:
        self.run_id = run_id
        self.queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=_QUEUE_BOUND)

    def put(self, item: Any) -> None:
        with contextlib.suppress(asyncio.QueueFull):  # a run stream re-reads; see POLL_S
            self.queue.put_nowait(item)


class EventHub:
    """One subscription to the events channel, shared by every open stream."""

    def __init__(self, redis: Any, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self._listeners: set[_Listener] = set()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.subscribed = asyncio.Event()

    async def close(self) -> None:
        """Stop the subscription. The pump also looks at ``_closing`` between messages: a
        cancellation lost inside a read (seen on a cluster's merged subscription) still
        ends it within a second."""
        self._closing = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            done, _ = await asyncio.wait([task], timeout=_CLOSE_S)
            if not done:
                log.warning("the event subscription did not stop within %.0fs", _CLOSE_S)
            elif not task.cancelled() and task.exception() is not None:
                log.warning("the event subscription ended with %r", task.exception())

    @contextlib.contextmanager
    def listen(self, run_id: str | None) -> Iterator[_Listener]:
        """Receive the published events (of ``run_id`` only, when given) while in the block."""
        if not self._closing and (self._task is None or self._task.done()):  # (re)start: a
            # dead pump would starve all
            self._task = asyncio.create_task(self._pump(), name="relaygraph-api-events")
        listener = _Listener(run_id)
        self._listeners.add(listener)
        try:
            yield listener
        finally:
            self._listeners.discard(listener)

    async def _pump(self) -> None:
        while not self._closing:
            try:
                pubsub = await open_events(self.redis, self.keys)
                try:
                    self.subscribed.set()
                    self._broadcast(_GAP)  # events published before now were not heard here
                    while not self._closing:
                        msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                        if msg is not None and msg.get("type") == "message":
                            self._deliver(msg["data"])
                finally:
                    self.subscribed.clear()
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()
            except (RedisError, RedisClusterException, OSError) as e:
                log.warning("event subscription lost (%s); resubscribing", e)
                self._broadcast(_GAP)
                await asyncio.sleep(RECONNECT_S)

    def _broadcast(self, item: Any) -> None:
        for listener in list(self._listeners):
            listener.put(item)

    def _deliver(self, raw: bytes) -> None:
        try:
            event = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return
        if not isinstance(event, dict):
            return
        run_id = event.get("run_id")
        for listener in list(self._listeners):
            if listener.run_id is None or listener.run_id == run_id:
                listener.put(event)


def _frame(data: Any, event_id: str | None = None, kind: str | None = None) -> bytes:
    lines = []
    if event_id is not None:
        lines.append(f"id: {event_id}")
    if kind:
        lines.append(f"event: {kind}")
    lines.append("data: " + orjson.dumps(data).decode())
    return ("\n".join(lines) + "\n\n").encode()


HEARTBEAT_FRAME: Final = b": heartbeat\n\n"


async def run_events(
    redis: Any, hub: EventHub, run_id: str, keys: RunKeys, after: str | None
) -> AsyncIterator[bytes]:
    """The SSE frames of run ``run_id``'s history after entry ``after`` (None: from the
    start), then its live events; ends after the run's terminal event, or when the run is
    gone (expired or deleted)."""
    last = after or "0-0"
    with hub.listen(run_id) as listener:  # listen first: miss nothing
        loop = asyncio.get_running_loop()
        beat = loop.time() + HEARTBEAT_S
        try:
            while True:
                done = False
                async for frame, entry_id, terminal in _read_after(
                    redis, run_id, keys.events, last
                ):
                    yield frame
                    last, done = entry_id, terminal
                if done:
                    return
                beat, news = await _wait_for_news(listener, loop, beat)
                if not news and await _over(redis, keys):
                    # Gone, or finished with its terminal event before ``after`` (a client
                    # resuming after the end): nothing more will come.
                    async for frame, _, _ in _read_after(redis, run_id, keys.events, last):
                        yield frame
                    return
                if beat < 0:
                    yield HEARTBEAT_FRAME
                    beat = loop.time() + HEARTBEAT_S
        except (RedisError, OSError) as e:
            # Mid-stream the status line is sent: end the stream; the client resumes from
            # its Last-Event-ID when it reconnects.
            log.warning("event stream of run %s ended: Redis is unavailable (%s)", run_id, e)


async def _read_after(
    redis: Any, run_id: str, stream_key: str, last: str
) -> AsyncIterator[tuple[bytes, str, bool]]:
    """The frames of run ``run_id``'s history after entry ``last``, in batches: (frame, its
    id, whether it is the run's terminal event). An entry relaygraph did not write is
    skipped (and logged): a client resuming after it must not meet it again and again."""
    while True:
        entries = await redis.xrange(stream_key, min=f"({last}", count=READ_BATCH)
        for entry_id, fields in entries:
            last = entry_id.decode()
            try:
                event = history_event(run_id, fields)
            except orjson.JSONDecodeError as e:
                log.warning("run %s: skipping history entry %s, not an event: %s", run_id, last, e)
                continue
            kind = event.get("type")
            yield _frame(event, last, kind), last, kind in TERMINAL_EVENTS
        if len(entries) < READ_BATCH:
            return


async def stream_of_run(
    redis: Any, hub: EventHub, run_id: str, keys: RunKeys, after: str | None
) -> AsyncIterator[bytes] | None:
    """``run_events`` of an existing run, or None when a client resumes after the run's
    end (nothing will follow: answer 204, which stops an EventSource from reconnecting).
    ``LookupError`` when there is no such run. Both checks run before the response starts,
    so a Redis outage is still a 503 then."""
    if not await redis.exists(keys.meta):
        raise LookupError(run_id)
    if (
        after is not None
        and await _over(redis, keys)
        and not await redis.xrange(keys.events, min=f"({after}", count=1)
    ):
        return None
    return run_events(redis, hub, run_id, keys, after)


async def _over(redis: Any, keys: RunKeys) -> bool:
    raw = await redis.hget(keys.meta, "run")
    if raw is None:
        return True
    try:
        status = orjson.loads(raw).get("status")
    except (orjson.JSONDecodeError, AttributeError):
        return False
    return f"run.{status}" in TERMINAL_EVENTS


async def _wait_for_news(
    listener: _Listener, loop: asyncio.AbstractEventLoop, beat: float
) -> tuple[float, bool]:
    """Wait for a published event (or a gap) or ``POLL_S``. Return the heartbeat deadline
    (-1: a heartbeat is due) and whether anything was heard. Queued events are drained:
    the history read that follows sees them."""
    timeout = max(0.0, min(POLL_S, beat - loop.time()))
    news = True
    try:
        await asyncio.wait_for(listener.queue.get(), timeout)
    except TimeoutError:
        news = False
    while not listener.queue.empty():
        listener.queue.get_nowait()
    return (-1.0 if loop.time() >= beat else beat), news


async def all_events(hub: EventHub) -> AsyncIterator[bytes]:
    """Every run's events as they are published (live only, without ids), for ever."""
    loop = asyncio.get_running_loop()
    with hub.listen(None) as listener:
        beat = loop.time() + HEARTBEAT_S
        while True:
            try:
                item = await asyncio.wait_for(listener.queue.get(), max(0.0, beat - loop.time()))
            except TimeoutError:
                yield HEARTBEAT_FRAME
                beat = loop.time() + HEARTBEAT_S
                continue
            if item is _GAP:
                yield b": events may have been missed (the API's subscription reconnected)\n\n"
                continue
            yield _frame(item, None, item.get("type"))
