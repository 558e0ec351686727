"""``EventStream``: the live events of every run (or of one run) from the events channel.

Pub/sub is fire-and-forget: a subscriber that is slow or reconnecting can miss events. Use it
to follow a run live; use the run's history (``WorkflowClient.history``) for the full record.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any, Self

import orjson

from dispatcher.channels import open_events
from graph_core.keys import Keys

__all__ = ["EventStream"]


class EventStream:
    """An open subscription to the live events (dispatcher/channels.py), filtered to
    ``run_id`` when given.

    Subscribe *before* causing the events you want to see (``async with`` subscribes)::

        async with client.subscribe(run_id) as stream:
            await client.submit(..., run_id=run_id)
            async for event in stream:
                ...
    """

    def __init__(
        self, redis: Any, keys: Keys, run_id: str | None = None, children: bool = False
    ) -> None:
        """``children``: with ``run_id``, also the events of its child runs (subgraph nodes'
        and map items' over a graph, at any depth), followed from their start."""
        # redis-py 5 annotates async results as ``Awaitable[T] | T``; typed as Any here.
        self._redis = redis
        self._keys = keys
        self.run_id = run_id
        self._children = children
        self.runs: set[str] = {run_id} if run_id is not None else set()
        self._pubsub: Any = None

    async def open(self) -> Self:
        if self._pubsub is None:
            # a run's children may live in other shards: then every shard's events
            one = self.run_id is not None and not self._children
            runs = [self.run_id] if one and self.run_id is not None else None
            self._pubsub = await open_events(self._redis, self._keys, runs)
        return self

    async def close(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(Exception):  # closing a dead connection must not raise
                await pubsub.unsubscribe()
            await pubsub.aclose()

    async def __aenter__(self) -> Self:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def get(self, timeout: float | None = None) -> dict[str, Any] | None:
        """The next matching event, or None once ``timeout`` seconds pass without one
        (``None``: wait for ever). Unparseable messages are skipped."""
        if self._pubsub is None:
            await self.open()
        loop_timeout = timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            msg = await self._pubsub.get_message(
                ignore_subscribe_messages=True, timeout=loop_timeout
            )
            if msg is not None and msg.get("type") == "message":
                event = _parse(msg["data"])
                if event is not None and (self.run_id is None or event["run_id"] in self.runs):
                    if self._children and event.get("type") == "subgraph.started":
                        child = (event.get("data") or {}).get("child_run_id")
                        if isinstance(child, str):
                            self.runs.add(child)
                    return event
            if deadline is not None:
                loop_timeout = deadline - time.monotonic()
                if loop_timeout <= 0:
                    return None

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[dict[str, Any]]:
        while True:
            event = await self.get(timeout=None)
            if event is not None:
                yield event


def _parse(raw: bytes | str) -> dict[str, Any] | None:
    try:
        event = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(event, dict) or not isinstance(event.get("run_id"), str | None):
        return None
    return event
