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
from redis.exceptions import AskError, MovedError
from redis.exceptions import ConnectionError as RedisConnectionError

from dispatcher.connect import is_cluster_client, open_pubsub
from graph_core.keys import Keys

__all__ = ["open_events"]

_SMESSAGE_TYPES: Final = ("message", "pmessage", "smessage")  # what a PubSub hands out
_READ_S: Final = 1.0  # a reader task's longest wait for a message (then it looks again)
_CONFIRM_S: Final = 5.0  # the longest wait for a subscription's confirmation


async def open_events(redis: Any, keys: Keys, run_ids: Iterable[str] | None = None) -> Any:
    """A subscription to the events of ``run_ids``' shards (None: of every run), open and
    confirmed when this returns. On one server it is the events channel itself (a run
    filter is the caller's, as the shard channels carry other runs of the shard too)."""
    if not keys.sharded:
        pubsub = await open_pubsub(redis)
        try:
            await pubsub.subscribe(keys.events_channel)
        except BaseException:
            await pubsub.aclose()
            raise
        return pubsub
    if run_ids is None:
        shards: Iterable[int] = range(keys.shards)
    else:
        shards = sorted({keys.shard_for(run_id).shard for run_id in run_ids})
    channels = [keys.shard(k).events_channel for k in shards]
    subscriptions: list[_ShardSubscription] = []
    try:
        if not is_cluster_client(redis):
            subscriptions.append(_ShardSubscription(redis, None, channels))
        else:
            await redis.initialize()
            by_node: dict[str, tuple[Any, list[str]]] = {}
            for channel in channels:
                node = redis.get_node_from_key(channel)  # the primary that serves its slot
                by_node.setdefault(node.name, (node, []))[1].append(channel)
            for node, node_channels in by_node.values():
                pool = ConnectionPool(
                    connection_class=node.connection_class, **node.connection_kwargs
                )
                node_client = Redis(connection_pool=pool)
                subscriptions.append(_ShardSubscription(node_client, redis, node_channels))
        for subscription in subscriptions:
            await subscription.open()
    except BaseException:
        for opened in subscriptions:
            with contextlib.suppress(Exception):
                await opened.aclose()
        raise
    return subscriptions[0] if len(subscriptions) == 1 else _Merged(subscriptions)


class _ShardSubscription:
    """``SSUBSCRIBE`` to shard channels on one server, or on one node of a cluster
    (``cluster``: the cluster client, whose slot map is refreshed when a channel turns out
    to live elsewhere; the node's client is closed with the subscription). Once it fails it
    stays failed: redis-py would reconnect it without its subscriptions."""

    def __init__(self, redis: Any, cluster: Any, channels: list[str]) -> None:
        self._redis = redis
        self._cluster = cluster
        self.channels = channels
        self._pubsub: Any = None
        self._closing = False
        self._failed: BaseException | None = None

    async def open(self) -> None:
        pubsub = self._redis.pubsub()
        pubsub.PUBLISH_MESSAGE_TYPES = _SMESSAGE_TYPES  # redis-py 5 knows no smessage
        self._pubsub = pubsub
        for channel in self.channels:  # one at a time: a cluster takes one slot per call
            await pubsub.execute_command("SSUBSCRIBE", channel)
        confirmed = 0
        while confirmed < len(self.channels):  # each confirmed: no later event slips by
            msg = await self._read(_CONFIRM_S)
            if msg is None:
                raise RedisConnectionError(f"no answer to SSUBSCRIBE {self.channels}")
            confirmed += msg.get("type") == "ssubscribe"

    async def _read(self, timeout: float | None) -> dict[str, Any] | None:
        if self._failed is not None:
            raise self._failed
        moved: BaseException | None = None
        try:
            msg: dict[str, Any] | None = await self._pubsub.get_message(
                ignore_subscribe_messages=False, timeout=timeout
            )
        except (MovedError, AskError) as e:  # subscribed on a node that no longer serves it
            moved, msg = e, None
        except Exception as e:
            self._failed = e
            raise
        if msg is not None and msg.get("type") == "sunsubscribe" and not self._closing:
            moved = RedisConnectionError(f"the server unsubscribed {msg.get('channel')!r}")
        if moved is not None:  # its slot moved (resharding): look the slots up again
            if self._cluster is not None:
                with contextlib.suppress(Exception):
                    await self._cluster.nodes_manager.initialize()
            self._failed = RedisConnectionError(
                f"shard channel(s) {self.channels} moved to another node ({moved}): subscribe again"
            )
            raise self._failed from moved
        return msg

    async def get_message(
        self, ignore_subscribe_messages: bool = False, timeout: float | None = 0.0
    ) -> dict[str, Any] | None:
        msg = await self._read(timeout)
        if msg is None:
            return None
        if msg.get("type") == "smessage":
            return {**msg, "type": "message"}
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
            if self._cluster is not None:
                await self._redis.aclose(close_connection_pool=True)


class _Merged:
    """Several nodes' subscriptions read as one: a reader task per node feeds a queue (a
    reader's error is raised by every later ``get_message``)."""

    def __init__(self, subscriptions: list[_ShardSubscription]) -> None:
        self._subscriptions = subscriptions
        self._queue: asyncio.Queue[dict[str, Any] | BaseException] = asyncio.Queue()
        self._readers = [asyncio.create_task(self._read(s)) for s in subscriptions]
        self._failed: BaseException | None = None

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
        if self._failed is not None:
            raise self._failed
        try:
            if timeout is not None and timeout <= 0:
                item = self._queue.get_nowait()
            else:  # not asyncio.wait_for: on 3.11 it can swallow a cancellation for good
                async with asyncio.timeout(timeout):
                    item = await self._queue.get()
        except (asyncio.QueueEmpty, TimeoutError):
            return None
        if isinstance(item, BaseException):
            self._failed = item
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
