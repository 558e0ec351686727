"""Opening the dispatcher's and client's Redis connections from a URL (Sentinel included),
with the fast command packer (graph_core/resp.py)."""

from __future__ import annotations

from typing import Any

import redis
from redis.asyncio import Redis
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ReadOnlyError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.sentinel import Sentinel as SyncSentinel

from graph_core.errors import RelaygraphError
from graph_core.keys import Keys
from graph_core.redis_url import (
    RedisTarget,
    check_not_cluster,
    is_unavailable_reply,
    parse_redis_url,
)
from graph_core.resp import fast_packing

__all__ = ["connect", "connect_sync", "redis_unavailable", "refuse_cluster"]


def connect(url: str, **options: Any) -> Redis:
    """A client for ``url``; ``redis+sentinel://`` asks the sentinels for the master."""
    target = parse_redis_url(url)  # raises RedisUrlError naming what is wrong
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
    if isinstance(e, unavailable):
        return True
    return isinstance(e, ResponseError) and is_unavailable_reply(e)


async def check_layout(redis: Any, keys: Keys) -> None:
    """Record the key layout if none is (the first process of a deployment), else refuse
    one that differs: processes with different layouts would not see each other's keys.
    The worker's twin is ``worker.waking.check_layout``."""
    try:
        await redis.set(keys.layout, str(keys.shards), nx=True)
    except ResponseError as e:  # out of memory, say: recorded by a later process
        if not redis_unavailable(e):
            raise
    problem = keys.layout_problem(await redis.get(keys.layout))
    if problem is not None:
        raise RelaygraphError(problem)


async def refuse_cluster(redis: Any) -> None:
    """``ClusterUnsupported`` if the server is a Redis Cluster node, before anything else
    meets a MOVED or CROSSSLOT reply. Where ``INFO`` is refused (an ACL, a managed server)
    or the server cannot be reached, this says nothing: the caller's own commands will."""
    try:
        info = await redis.info("cluster")
    except (ResponseError, RedisConnectionError, RedisTimeoutError, OSError):
        return
    check_not_cluster(info)


def _common(target: RedisTarget) -> dict[str, Any]:
    common: dict[str, Any] = {"username": target.username, "password": target.password}
    if target.ssl:
        common.update(ssl=True, **target.ssl)
    return common
