"""Subscribing to the live events, whatever the key layout (``open_events``).

* One server: every event is published (``PUBLISH``) on ``<prefix>:events``.
* Sharded: a run's events are published with ``SPUBLISH`` on its shard's channel,
  ``<prefix>:{<shard tag>}:events``, in the slot of the run's keys (apply.lua publishes
  them in the same script). On a Redis Cluster a shard channel's messages go to the
  subscribers of the node that serves its slot only, instead of over the cluster bus to
  every node as a plain ``PUBLISH`` does. A subscriber ``SSUBSCRIBE``s to the channels of
  the shards it follows (one run's, or all), on the node that serves each.

The subscription returned reads like a redis-py ``PubSub``: ``get_message`` gives
``{"type": "message", "channel": ..., "data": ...}`` dicts, and ``aclose`` closes it. If a
shard's slot moves to another node (resharding), ``get_message`` raises
``ConnectionError``: subscribe again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Any, Final

from redis.asyncio import ConnectionPool, Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from dispatcher.connect import is_cluster_client, open_pubsub
from graph_core.keys import Keys

__all__ = ["open_events"]

_SMESSAGE_TYPES: Final = ("message", "pmessage", "smessage")  # what a PubSub hands out
_READ_S: Final = 1.0  # a reader task's longest wait for a message (then it looks again)


async def open_events(redis: Any, keys: Keys, run_ids: Iterable[str] | None = None) -> Any:
    """A subscription to the events of ``run_ids``' shards (None: of every run), open when
    this returns. On one server it is the events channel itself (a run filter is the
    caller's, as the shard channels carry other runs of the shard too)."""
    if not keys.sharded:
        pubsub = await open_pubsub(redis)
        await pubsub.subscribe(keys.events_channel)
        return pubsub
    if run_ids is None:
        shards: Iterable[int] = range(keys.shards)
    else:
        shards = sorted({keys.shard_for(run_id).shard for run_id in run_ids})
    channels = [keys.shard(k).events_channel for k in shards]
    if not is_cluster_client(redis):
        subscription = _ShardSubscription(redis, None, channels)
        await subscription.open()
        return subscription
    await redis.initialize()
    by_node: dict[str, tuple[Any, list[str]]] = {}
    for channel in channels:
        node = redis.get_node_from_key(channel)  # the primary that serves its slot
        by_node.setdefault(node.name, (node, []))[1].append(channel)
    subscriptions = []
    try:
        for node, node_channels in by_node.values():
            pool = ConnectionPool(connection_class=node.connection_class, **node.connection_kwargs)
            subscription = _ShardSubscription(Redis(connection_pool=pool), pool, node_channels)
            subscriptions.append(subscription)
            await subscription.open()
    except BaseException:
        for opened in subscriptions:
            await opened.aclose()
        raise
    return subscriptions[0] if len(subscriptions) == 1 else _Merged(subscriptions)


class _ShardSubscription:
    """``SSUBSCRIBE`` to shard channels on one server (or one node of a cluster)."""

    def __init__(self, redis: Any, own_pool: ConnectionPool | None, channels: list[str]) -> None:
        self._redis = redis
        self._own_pool = own_pool  # a node's client this closes with it
        self.channels = channels
        self._pubsub: Any = None
        self._closing = False

    async def open(self) -> None:
        pubsub = self._redis.pubsub()
        pubsub.PUBLISH_MESSAGE_TYPES = _SMESSAGE_TYPES  # redis-py 5 knows no smessage
        self._pubsub = pubsub
        for channel in self.channels:  # one at a time: a cluster takes one slot per call
            await pubsub.execute_command("SSUBSCRIBE", channel)

    async def get_message(
        self, ignore_subscribe_messages: bool = False, timeout: float | None = 0.0
    ) -> dict[str, Any] | None:
        msg: dict[str, Any] | None = await self._pubsub.get_message(
            ignore_subscribe_messages=False, timeout=timeout
        )
        if msg is None:
            return None
        kind = msg.get("type")
        if kind == "smessage":
            return {**msg, "type": "message"}
        if kind == "sunsubscribe" and not self._closing:  # the slot moved to another node
            raise RedisConnectionError(
                f"shard channel {msg.get('channel')!r} moved to another node: subscribe again"
            )
        return None if ignore_subscribe_messages else msg

    async def unsubscribe(self) -> None:
        self._closing = True
        if self._pubsub is not None:
            await self._pubsub.execute_command("SUNSUBSCRIBE")

    async def aclose(self) -> None:
        self._closing = True
        try:
            if self._pubsub is not None:
                await self._pubsub.aclose()
        finally:
            if self._own_pool is not None:
                await self._redis.aclose(close_connection_pool=True)


class _Merged:
    """Several nodes' subscriptions read as one: a reader task per node feeds a queue (a
    reader's error is raised by the next ``get_message``)."""

    def __init__(self, subscriptions: list[_ShardSubscription]) -> None:
        self._subscriptions = subscriptions
        self._queue: asyncio.Queue[dict[str, Any] | BaseException] = asyncio.Queue()
        self._readers = [asyncio.create_task(self._read(s)) for s in subscriptions]

    async def _read(self, subscription: _ShardSubscription) -> None:
        try:
            while True:
                msg = await subscription.get_message(
                    ignore_subscribe_messages=True, timeout=_READ_S
                )
                if msg is not None:
                    self._queue.put_nowait(msg)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # the caller hears it and subscribes again
            self._queue.put_nowait(e)

    async def get_message(
        self, ignore_subscribe_messages: bool = False, timeout: float | None = 0.0
    ) -> dict[str, Any] | None:
        try:
            if timeout is None:
                item = await self._queue.get()
            elif timeout <= 0:
                item = self._queue.get_nowait()
            else:
                item = await asyncio.wait_for(self._queue.get(), timeout)
        except (asyncio.QueueEmpty, TimeoutError):
            return None
        if isinstance(item, BaseException):
            raise item
        return item

    async def unsubscribe(self) -> None:
        for subscription in self._subscriptions:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()

    async def aclose(self) -> None:
        for reader in self._readers:
            reader.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
        for subscription in self._subscriptions:
            with contextlib.suppress(Exception):
                await subscription.aclose()
