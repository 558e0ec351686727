"""The Redis client of the e2e tests' handler modules, which run in worker processes: one per
process for the URL the test put in an environment variable."""

from __future__ import annotations

import os

import redis.asyncio as aioredis

__all__ = ["redis_for"]

_clients: dict[str, aioredis.Redis] = {}


def redis_for(env_var: str) -> aioredis.Redis:
    """The client for the URL in ``env_var``, made on first use."""
    client = _clients.get(env_var)
    if client is None:
        client = _clients[env_var] = aioredis.Redis.from_url(os.environ[env_var])
    return client
