"""An in-process stand-in for arq workers: takes jobs off the queue exactly as laid out by the
dispatcher, runs a Python function per node type, reports to the inbox. It counts executions
per (run, node, visit) so tests can check effects are applied once."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson

from dispatcher.queue import JOB_KEY_PREFIX
from graph_core.events import ErrorInfo, NodeReported
from graph_core.keys import Keys
from graph_core.messages import encode_inbox, parse_job_payload

Handler = Callable[[str, dict[str, Any]], Any]  # (node_id, payload) -> output


class FakeWorker:
    def __init__(
        self, redis: Any, keys: Keys, handlers: dict[str, Handler], queue: str = "default"
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.handlers = handlers
        shards = [keys.shard(k) for k in range(max(1, keys.shards))]
        self.queues = [shard.queue(queue) for shard in shards]  # one per shard when sharded
        self.wakes = [shard.wake(queue) for shard in shards]
        self.executions: Counter[tuple[str, str, int]] = Counter()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            popped = [job for q in self.queues for job in await self.redis.zpopmin(q, 32)]
            if not popped:
                # Blocks until the dispatcher signals an enqueue (or 50 ms pass); sharded,
                # on the first shard's wake list only (one call waits on one slot's keys).
                await self.redis.blpop([self.wakes[0]], timeout=0.05)
                continue
            for job_id, _score in popped:
                await self._run_job(job_id)

    async def _run_job(self, job_id: bytes) -> None:
        raw = await self.redis.get(JOB_KEY_PREFIX.encode() + job_id)
        if raw is None:
            return
        payload = parse_job_payload(orjson.loads(raw)["a"][0])
        self.executions[(payload.run_id, payload.node_id, payload.visit)] += 1
        fn = (
            self.handlers[payload.node_id]
            if payload.node_id in self.handlers
            else self.handlers["*"]
        )
        base = dict(
            run_id=payload.run_id,
            node_id=payload.node_id,
            visit=payload.visit,
            attempt=payload.attempt,
        )
        try:
            out = fn(payload.node_id, payload.model_dump())
            report = NodeReported(**base, status="completed", output=out)
        except Exception as e:
            report = NodeReported(
                **base, status="failed", error=ErrorInfo(type=type(e).__name__, message=str(e))
            )
        inbox = self.keys.shard_for(payload.run_id).inbox
        await self.redis.xadd(inbox, {"m": encode_inbox(report)})


@contextlib.asynccontextmanager
async def running(*runners: Any) -> AsyncIterator[asyncio.Event]:
    """Run objects with ``async run(stop)`` as tasks; stop and await them on exit."""
    stop = asyncio.Event()
    tasks = [asyncio.create_task(r.run(stop)) for r in runners]
    try:
        yield stop
    finally:
        stop.set()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(t, timeout=10)
