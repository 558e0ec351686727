"""The key layout the suite runs with: one server's by default, and with
``RELAYGRAPH_TEST_CLUSTER=1`` the sharded one on a local 3-primary Redis Cluster (the
``redis_server`` fixture starts it, and every process and settings object a test starts gets
``RELAYGRAPH_SHARDS``). Tests build their keys, clients and URLs' clients from here, so one
test runs unchanged in both modes."""

from __future__ import annotations

import itertools
import os
from typing import Any, Final

import pytest
import redis.asyncio as aioredis

from dispatcher.client import WorkflowClient
from dispatcher.connect import connect, connect_sync
from graph_core.keys import DEFAULT_PREFIX, Keys, shard_of
from graph_core.redis_url import parse_redis_url

__all__ = [
    "CLUSTER",
    "SHARDS",
    "TEST_CLUSTER_ENV",
    "client_for",
    "event_subscribers",
    "ids_in_one_shard",
    "inbox_length",
    "keys_for",
    "one_server_only",
    "plain_client_for",
    "subscribers",
    "sync_client_for",
    "workflow_client",
]

TEST_CLUSTER_ENV: Final = "RELAYGRAPH_TEST_CLUSTER"
CLUSTER: Final = os.environ.get(TEST_CLUSTER_ENV, "") not in ("", "0")
SHARDS: Final = 16 if CLUSTER else 0

one_server_only = pytest.mark.skipif(
    CLUSTER, reason="about one server's own layout or server process, not a cluster's"
)


def keys_for(prefix: str = DEFAULT_PREFIX) -> Keys:
    """The suite's key layout for ``prefix``."""
    return Keys(prefix, SHARDS)


def client_for(url: str, **options: Any) -> Any:
    """An async client for ``url`` (a cluster client for ``redis+cluster://``)."""
    return connect(url, **options)


def sync_client_for(url: str, **options: Any) -> Any:
    """A blocking client for ``url`` (a cluster client for ``redis+cluster://``)."""
    return connect_sync(url, **options)


def workflow_client(url: str, **options: Any) -> WorkflowClient:
    """A ``WorkflowClient`` on ``url`` with the suite's layout."""
    return WorkflowClient.from_url(url, shards=SHARDS, **options)


def plain_client_for(url: str) -> aioredis.Redis:
    """A plain (not cluster-aware) async client, as another language's would be: on a
    cluster, to its first node (a PUBLISH there reaches every node's subscribers)."""
    target = parse_redis_url(url)
    if target.is_cluster:
        host, port = target.nodes[0]
        return aioredis.Redis(host=host, port=port)
    return aioredis.Redis.from_url(url)


def ids_in_one_shard(stem: str, count: int, beside: str | None = None) -> list[str]:
    """``count`` run ids ``<stem><n>`` of one shard, that of run ``beside`` if given (one
    server: ``<stem>0`` onwards), for tests about the order of one inbox or queue."""
    first = shard_of(beside if beside is not None else f"{stem}0", SHARDS)
    ids = (f"{stem}{n}" for n in itertools.count())
    return list(itertools.islice((i for i in ids if shard_of(i, SHARDS) == first), count))


async def inbox_length(redis: Any, keys: Keys) -> int:
    """How many entries every shard's inbox holds (one server: the inbox)."""
    return sum([await redis.xlen(keys.shard(k).inbox) for k in range(max(1, keys.shards))])


async def subscribers(url: str, channel: str, *, shard_channel: bool = False) -> int:
    """How many clients subscribe to ``channel`` (``shard_channel``: with SSUBSCRIBE): on a
    cluster, summed over its nodes (``PUBSUB NUMSUB`` counts one node's)."""
    target = parse_redis_url(url)
    nodes = target.nodes if target.is_cluster else [None]
    ask = ("PUBSUB", "SHARDNUMSUB" if shard_channel else "NUMSUB", channel)
    count = 0
    for node in nodes:
        client = (
            plain_client_for(url) if node is None else aioredis.Redis(host=node[0], port=node[1])
        )
        try:
            reply = await client.execute_command(*ask)
            count += int(dict(zip(reply[::2], reply[1::2], strict=True)).get(channel.encode(), 0))
        finally:
            await client.aclose()
    return count


async def event_subscribers(url: str, run_id: str) -> int:
    """How many clients follow the live events of ``run_id`` (its shard's channel when
    sharded: dispatcher/channels.py)."""
    keys = keys_for()
    channel = keys.shard_for(run_id).events_channel
    return await subscribers(url, channel, shard_channel=keys.sharded)
