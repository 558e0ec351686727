"""Opening the dispatcher's and client's Redis connections from a URL (Sentinel included)."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.asyncio.sentinel import Sentinel

from graph_core.redis_url import parse_redis_url

__all__ = ["connect"]


def connect(url: str, **options: Any) -> Redis:
    """A client for ``url``; ``redis+sentinel://`` asks the sentinels for the master."""
    target = parse_redis_url(url)  # raises RedisUrlError naming what is wrong
    if not target.is_sentinel:
        client: Redis = Redis.from_url(url, **options)
        return client
    common: dict[str, Any] = {"username": target.username, "password": target.password}
    if target.ssl:
        common.update(ssl=True, **target.ssl)
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        list(target.sentinels), sentinel_kwargs={"password": target.password}, **common
    )
    master: Redis = sentinel.master_for(target.master or "mymaster", db=target.db, **options)
    return master
