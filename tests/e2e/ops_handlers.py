"""Handlers for the run-operation tests (tests/e2e/test_run_operations.py): each execution is
counted per (run, node) in Redis (``OPS_TEST_REDIS``, key prefix ``OPS_TEST_KEY``), and how
many run at once is tracked; ``config.sleep`` holds a handler, ``config.fail_once`` fails a
node's first execution in a run for good."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import redis.asyncio as aioredis

from relaygraph import HandlerRegistry, NodeContext, NonRetryableError
from tests.e2e.handler_redis import redis_for

registry = HandlerRegistry()


def _redis() -> aioredis.Redis:
    return redis_for("OPS_TEST_REDIS")


@registry.handler("count")
async def count(ctx: NodeContext) -> dict[str, Any]:
    key = os.environ["OPS_TEST_KEY"]
    r = _redis()
    n = await r.hincrby(f"{key}:runs", f"{ctx.run_id}:{ctx.node_id}", 1)
    await r.incr(f"{key}:running")
    try:
        await asyncio.sleep(float(ctx.config.get("sleep", 0)))
    finally:
        await r.decr(f"{key}:running")
    if ctx.config.get("fail_once") and n == 1:
        raise NonRetryableError(f"{ctx.node_id} fails its first time")
    return {"node": ctx.node_id, "n": n}


@registry.handler("order")
async def order(ctx: NodeContext) -> dict[str, Any]:
    """Notes the order jobs start in (the run input's ``label``); with ``input.hold``, then
    waits for the test's release (a push on ``<key>:release``)."""
    key = os.environ["OPS_TEST_KEY"]
    await _redis().rpush(f"{key}:order", ctx.input["label"])
    if ctx.input.get("hold"):
        await _redis().blpop([f"{key}:release"], timeout=30)
    return {"label": ctx.input["label"]}


@registry.handler("limited")
async def limited(ctx: NodeContext) -> dict[str, Any]:
    """Measures how many run at once, fleet-wide (``<key>:samples``), and when each started
    (``<key>:starts``); holds ``config.sleep``."""
    key = os.environ["OPS_TEST_KEY"]
    r = _redis()
    now = await r.incr(f"{key}:now")
    try:
        await r.rpush(f"{key}:samples", now)
        await r.rpush(f"{key}:starts", repr(time.time()))
        await asyncio.sleep(float(ctx.config.get("sleep", 0)))
    finally:
        await r.decr(f"{key}:now")
    return {"ok": True}
