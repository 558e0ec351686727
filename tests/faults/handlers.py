"""Handlers for the fault tests: every execution is counted in Redis, across processes.

A worker process started by ``tests.faults.procs`` loads ``tests.faults.handlers``. Each
handler first records that it started (``INCR`` of a counter per (run, node, visit), keyed
on ``ctx.idempotency_key``, plus the worker's pid and the start time), then does its work,
then records that it finished. The tests read the same keys (`Marks`) to count duplicate
effects, find the process running a node, and time how fast a lost node is re-run.

Node types (parameters in the node's ``config``):

* ``work``: returns ``{"node": <node id>}`` at once.
* ``slow``: ``await asyncio.sleep(config["sleep_s"])`` first (the loop stays free).
* ``blocking``: ``time.sleep(config["block_s"])`` inside an async handler: blocks the
  worker's event loop, as a badly written handler would.
* ``flaky``: raises ``ConnectionError`` on attempts up to ``config["fail_attempts"]``.

The marks live under ``<RELAYGRAPH_PREFIX>:faults:`` on the server of
``RELAYGRAPH_REDIS_URL`` (the worker's own settings), so tests with different prefixes do
not see each other's marks.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.exceptions import BusyLoadingError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from worker import HandlerRegistry, NodeContext

__all__ = ["Marks", "registry"]

_RECORD_TRIES = 50  # a record survives a server restart of a few seconds
_RETRYABLE = (RedisConnectionError, RedisTimeoutError, BusyLoadingError, OSError)


@dataclass(frozen=True)
class Marks:
    """The keys the handlers write, for one key prefix (tests build the same ones)."""

    prefix: str

    @property
    def base(self) -> str:
        return f"{self.prefix}:faults"

    def started(self, idempotency_key: str) -> str:
        """Counter: how often a handler started for this (run, node, visit)."""
        return f"{self.base}:started:{idempotency_key}"

    def finished(self, idempotency_key: str) -> str:
        """Counter: how often a handler finished (returned or raised) for it."""
        return f"{self.base}:finished:{idempotency_key}"

    def starts(self, idempotency_key: str) -> str:
        """List of ``"<pid> <epoch seconds> <attempt>"``, one per start, in order."""
        return f"{self.base}:starts:{idempotency_key}"

    @property
    def started_pattern(self) -> str:
        return f"{self.base}:started:*"

    @staticmethod
    def key_of(run_id: str, node_id: str, visit: int) -> str:
        """``ctx.idempotency_key`` of (run, node, visit), as the worker builds it."""
        return f"{run_id}:{node_id}:{visit}"


registry = HandlerRegistry()

_clients: dict[int, aioredis.Redis] = {}


def _client() -> aioredis.Redis:
    """One client per event loop of this process (a worker runs one loop)."""
    loop_id = id(asyncio.get_running_loop())
    client = _clients.get(loop_id)
    if client is None:
        client = aioredis.Redis.from_url(
            os.environ["RELAYGRAPH_REDIS_URL"], socket_timeout=5, socket_connect_timeout=2
        )
        _clients[loop_id] = client
    return client


def _marks() -> Marks:
    return Marks(os.environ.get("RELAYGRAPH_PREFIX", "relaygraph"))


async def _retrying(op: Any) -> Any:
    """Run a recording command, riding out a server restart (the server may be down for a
    few seconds in the restart test; a lost record would be a false finding)."""
    for attempt in range(1, _RECORD_TRIES + 1):
        try:
            return await op()
        except _RETRYABLE:
            if attempt == _RECORD_TRIES:
                raise
            await asyncio.sleep(0.1)  # back-off between reconnects, not a wait for a condition
    return None


async def _record_start(ctx: NodeContext) -> None:
    marks, key = _marks(), ctx.idempotency_key
    entry = f"{os.getpid()} {time.time():.6f} {ctx.attempt}"

    async def op() -> None:
        pipe = _client().pipeline(transaction=True)
        pipe.incr(marks.started(key))
        pipe.rpush(marks.starts(key), entry)
        await pipe.execute()

    await _retrying(op)


async def _record_finish(ctx: NodeContext) -> None:
    marks = _marks()
    await _retrying(lambda: _client().incr(marks.finished(ctx.idempotency_key)))


def _output(ctx: NodeContext) -> dict[str, Any]:
    return {"node": ctx.node_id, "visit": ctx.visit}


@registry.handler("work")
async def work(ctx: NodeContext) -> dict[str, Any]:
    await _record_start(ctx)
    await _record_finish(ctx)
    return _output(ctx)


@registry.handler("slow")
async def slow(ctx: NodeContext) -> dict[str, Any]:
    await _record_start(ctx)
    await asyncio.sleep(float(ctx.config.get("sleep_s", 1.0)))
    await _record_finish(ctx)
    return _output(ctx)


@registry.handler("blocking")
async def blocking(ctx: NodeContext) -> dict[str, Any]:
    await _record_start(ctx)
    time.sleep(float(ctx.config.get("block_s", 1.0)))  # deliberately blocks the event loop
    # Recorded without awaiting: past its timeout the handler is cancelled at its next await,
    # and the test wants to see when the blocking call returned.
    with redis.Redis.from_url(os.environ["RELAYGRAPH_REDIS_URL"]) as client:
        client.incr(_marks().finished(ctx.idempotency_key))
    return _output(ctx)


@registry.handler("flaky")
async def flaky(ctx: NodeContext) -> dict[str, Any]:
    await _record_start(ctx)
    await _record_finish(ctx)
    if ctx.attempt <= int(ctx.config.get("fail_attempts", 1)):
        raise ConnectionError(f"upstream hiccup on attempt {ctx.attempt}")
    return {**_output(ctx), "attempt": ctx.attempt}
