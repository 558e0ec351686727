"""Handlers for the map tests (tests/e2e/test_map.py): each item measures how many items run
at once across every worker process, in Redis (``MAP_TEST_REDIS``, key prefix
``MAP_TEST_KEY``), and counts its executions."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import redis.asyncio as aioredis

from relaygraph import HandlerRegistry, NodeContext, NonRetryableError
from tests.e2e.handler_redis import redis_for

registry = HandlerRegistry()


def _redis() -> aioredis.Redis:
    return redis_for("MAP_TEST_REDIS")


@registry.handler("numbers")
def numbers(ctx: NodeContext) -> list[dict[str, Any]]:
    n = int(ctx.input["n"])
    fail = set(ctx.input.get("fail", []))
    return [{"n": i, "fail": i in fail} for i in range(n)]


@registry.handler("square")
async def square(ctx: NodeContext) -> dict[str, Any]:
    key = os.environ["MAP_TEST_KEY"]
    r = _redis()
    now = await r.incr(f"{key}:running")
    try:
        await r.rpush(f"{key}:samples", now)
        await r.hincrby(f"{key}:runs", f"{ctx.run_id}:{ctx.index}", 1)
        await asyncio.sleep(0.01)
        if ctx.item["fail"]:
            raise NonRetryableError(f"item {ctx.index} fails")
        return {"square": ctx.item["n"] ** 2, "index": ctx.index}
    finally:
        await r.decr(f"{key}:running")
