"""Opening the dispatcher's and client's Redis connections from a URL (Sentinel included),
with the fast command packer (graph_core/resp.py)."""

from __future__ import annotations

import random
from typing import Any, Final, cast

import redis
from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import (
    ClusterDownError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.sentinel import Sentinel as SyncSentinel

from graph_core.errors import RelaygraphError
from graph_core.keys import Keys
from graph_core.redis_url import (
    RedisTarget,
    check_not_cluster,
    is_cluster_request_error,
    is_redis_client_fault,
    is_unavailable_reply,
    parse_redis_url,
)
from graph_core.resp import fast_packing, record_layout, restore_seeds

__all__ = [
    "MAY_BE_UNAVAILABLE",
    "check_layout",
    "connect",
    "connect_sync",
    "is_cluster_client",
    "open_pubsub",
    "redis_unavailable",
    "refuse_cluster",
    "retried",
]


def connect(url: str, **options: Any) -> Redis:
    """A client for ``url``; ``redis+sentinel://`` asks the sentinels for the master, and
    ``redis+cluster://`` gives a cluster client (redis-py's ``RedisCluster``, which routes
    each command by its keys' slot and follows MOVED and ASK)."""
    target = parse_redis_url(url)  # raises RedisUrlError naming what is wrong
    if target.is_cluster:
        cluster: Any = RedisCluster(
            startup_nodes=[ClusterNode(h, p) for h, p in target.nodes],
            **(_cluster_common(target) | options),  # options win, as with Redis.from_url
        )
        cluster.relaygraph_seeds = target.nodes  # for restore_seeds, after a failover
        return cast(Redis, cluster)
    if not target.is_sentinel:
        client: Redis = fast_packing(Redis.from_url(url, **options))
        return client
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        list(target.sentinels), sentinel_kwargs={"password": target.password}, **_common(target)
    )
    master: Redis = sentinel.master_for(target.master or "mymaster", db=target.db, **options)
    return fast_packing(master)


def connect_sync(url: str, **options: Any) -> redis.Redis:
    """``connect`` for blocking code (a metrics scrape runs in a thread of its own)."""
    target = parse_redis_url(url)
    if target.is_cluster:
        make_node: Any = redis.cluster.ClusterNode  # untyped in redis-py 5
        nodes = [make_node(h, p) for h, p in target.nodes]
        cluster: Any = redis.RedisCluster(
            startup_nodes=nodes, **(_cluster_common(target) | options)
        )
        return cast(redis.Redis, cluster)
    if not target.is_sentinel:
        client: redis.Redis = fast_packing(redis.Redis.from_url(url, **options))
        return client
    sentinel = SyncSentinel(  # type: ignore[no-untyped-call]
        list(target.sentinels), sentinel_kwargs={"password": target.password}, **_common(target)
    )
    master: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
        target.master or "mymaster", db=target.db, **options
    )
    return fast_packing(master)


def redis_unavailable(e: BaseException) -> bool:
    """An error that says Redis cannot serve now, nothing about the request: unreachable,
    timed out, a replica after a failover (READONLY), out of memory, loading, busy with a
    script, no replica in sync (``min-replicas-to-write``), a failed save that stops writes.
    A later try may succeed. (The worker has the same rule: ``worker.runner``.)"""
    unavailable = RedisConnectionError | RedisTimeoutError | ReadOnlyError | OutOfMemoryError
    # a cluster failing over: no node reachable for now, a slot without a primary
    if isinstance(e, RedisClusterException):  # not routed: the request's fault, or none
        return not is_cluster_request_error(e)
    if isinstance(e, unavailable | ClusterDownError | TryAgainError):
        return True
    if isinstance(e, NoScriptError):  # still, once loaded: a failover's new primary lacks it
        return True
    if is_redis_client_fault(e):  # redis-py caught half way through a teardown
        return True
    return isinstance(e, ResponseError) and is_unavailable_reply(e)


# What a dispatcher's loop catches around its round trips: the errors that may mean "Redis
# cannot serve now" (`retried` tells which do; the others are raised).
MAY_BE_UNAVAILABLE: Final = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    ResponseError,
    RedisClusterException,
    AttributeError,  # redis-py failing inside itself (`is_redis_client_fault`)
)


def retried(e: BaseException) -> bool:
    """Whether a loop that caught ``e`` (one of `MAY_BE_UNAVAILABLE`) backs off and tries
    again: Redis cannot serve now, or the network failed. Anything else says something is
    wrong (a reply, a request refused, a bug) and is raised."""
    return isinstance(e, OSError) or redis_unavailable(e)


def heal(client: Any) -> None:
    """After an error: a cluster client gets back the startup nodes redis-py may have
    dropped (graph_core.resp.restore_seeds); anything else is left alone."""
    restore_seeds(client, ClusterNode)


def is_cluster_client(client: Any) -> bool:
    """Whether ``client`` is a Redis Cluster client (asyncio or not)."""
    return isinstance(client, RedisCluster | redis.RedisCluster)


async def open_pubsub(redis: Any) -> Any:
    """A ``PubSub`` on ``redis``'s server. A cluster client has none: a plain client to one
    node subscribes instead (a publish reaches every node of a cluster), closed with it."""
    if not is_cluster_client(redis):
        return redis.pubsub()
    await redis.initialize()
    nodes = list(redis.get_primaries())
    random.shuffle(nodes)  # spread the fleet's subscribers; skip a node that is gone
    failed: Exception | None = None
    for node in nodes:
        pool = ConnectionPool(connection_class=node.connection_class, **node.connection_kwargs)
        client = Redis(connection_pool=pool)
        try:
            await client.ping()
        except (RedisConnectionError, RedisTimeoutError, OSError) as e:
            failed = e
            await client.aclose(close_connection_pool=True)
            continue
        return _NodePubSub(client)
    raise failed or RedisConnectionError("no primary of the cluster answers")


class _NodePubSub:
    """A node client's ``PubSub`` that closes the client with it."""

    def __init__(self, client: Redis) -> None:
        self._client = client
        self._pubsub = client.pubsub()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pubsub, name)

    async def aclose(self) -> None:
        try:
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]
        finally:
            await self._client.aclose(close_connection_pool=True)


async def check_layout(redis: Any, keys: Keys) -> None:
    """``graph_core.resp.record_layout``; sharded, the server must also know shard
    channels (the dispatcher publishes its events with SPUBLISH)."""
    await record_layout(redis, keys, _refused)
    if keys.sharded:
        await _check_shard_channels(redis, keys)


def _refused(e: BaseException) -> bool:
    """A reply saying Redis cannot serve now (``redis_unavailable``)."""
    return isinstance(e, ResponseError) and redis_unavailable(e)


async def _check_shard_channels(redis: Any, keys: Keys) -> None:
    """Refuse a server without shard channels (before Redis 7): the sharded layout publishes
    its events with SPUBLISH, and every apply would fail on it. A server that refuses the
    question otherwise (an ACL without PUBSUB) is let be: its applies will say."""
    try:
        await redis.execute_command("PUBSUB", "SHARDNUMSUB", keys.shard(0).events_channel)
    except ResponseError as e:
        if "subcommand" in str(e).lower():
            raise RelaygraphError(
                "the sharded layout (RELAYGRAPH_SHARDS) needs Redis or Valkey 7 or later: "
                f"it publishes events with SPUBLISH, and this server does not know it ({e})"
            ) from e


async def refuse_cluster(redis: Any) -> None:
    """``ClusterUnsupported`` on a Redis Cluster node reached with a plain client (its
    commands would meet MOVED and CROSSSLOT): a cluster takes ``redis+cluster://``."""
    if is_cluster_client(redis):
        return
    await _refuse_plain_cluster(redis)


async def _refuse_plain_cluster(redis: Any) -> None:
    """``ClusterUnsupported`` if the server is a Redis Cluster node, before anything else
    meets a MOVED or CROSSSLOT reply. Where ``INFO`` is refused (an ACL, a managed server)
    or the server cannot be reached, this says nothing: the caller's own commands will."""
    try:
        info = await redis.info("cluster")
    except (ResponseError, RedisConnectionError, RedisTimeoutError, OSError):
        return
    check_not_cluster(info)


def _cluster_common(target: RedisTarget) -> dict[str, Any]:
    common: dict[str, Any] = {"username": target.username, "password": target.password}
    if target.tls:
        common.update(ssl=True, **target.ssl)
    return common


def _common(target: RedisTarget) -> dict[str, Any]:
    common: dict[str, Any] = {"username": target.username, "password": target.password}
    if target.ssl:
        common.update(ssl=True, **target.ssl)
    return common
