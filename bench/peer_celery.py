"""The Celery peer: one ``celery worker`` (prefork pool, as many children as relaygraph has
worker processes) on the same server, broker and result backend both Redis. Chains of
``tick`` tasks for throughput, hop latency and chain scaling; chords for fan-out/join.

Celery's client is synchronous: these methods block, and the orchestrator runs them in a
thread.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import time
from pathlib import Path
from statistics import median
from typing import Any

import redis
import redis.asyncio as aioredis
from celery import chain, chord
from celery.result import AsyncResult, ResultSet

from bench.celery_app import make_app
from bench.config import Sizes
from bench.procs import CpuMeter, tree_cpu_seconds, used_memory
from bench.report import cpu_per_node, scale_entry, summarize_ms

__all__ = ["CeleryPeer"]


async def _used_memory(url: str) -> int:
    client = aioredis.Redis.from_url(url)
    try:
        return await used_memory(client)
    finally:
        await client.aclose()


# Celery 5.4's AsyncResult.__del__ unsubscribes from the result channel. Run by a refcount
# drop inside redis-py's PubSub.execute_command (hiredis packing a command), it re-enters the
# PubSub's lock and deadlocks the client: `make bench` hung in the Celery phase twice in a row
# on 2026-12-07 (py-spy: AsyncResult.__del__ -> ResultConsumer.cancel_for -> unsubscribe,
# inside unsubscribe). The results expire on their own; this process needs no finalizer.
AsyncResult.__del__ = lambda self: None  # type: ignore[method-assign]


class CeleryPeer:
    def __init__(self, url: str, sizes: Sizes, log_dir: Path, worker_pid: int) -> None:
        self.sizes = sizes
        self.log_dir = log_dir
        self.worker_pid = worker_pid
        self.app = make_app(url)
        self.tick = self.app.signature("bench.tick", immutable=True)
        self.url = url
        self.redis = redis.Redis.from_url(url)

    def close(self) -> None:
        # Results form reference cycles (parent links); collected later, their __del__
        # would talk to a server that is gone by then.
        gc.collect()
        self.redis.close()
        self.app.close()

    def _server_pid(self) -> int:
        return int(self.redis.info("server")["process_id"])  # type: ignore[index]

    def _memory(self) -> int:
        return asyncio.run(_used_memory(self.url))

    def _chain(self, n: int) -> Any:
        return chain(*(self.tick.clone() for _ in range(n)))

    def _chord(self, n: int) -> Any:
        return chord([self.tick.clone() for _ in range(n)], self.tick.clone())

    def throughput_and_memory(self) -> tuple[dict[str, Any], dict[str, Any]]:
        runs = self.sizes.throughput_runs
        n = runs * 10
        memory_before = self._memory()
        meter = CpuMeter({"server": [self._server_pid()], "workers": [self.worker_pid]})
        meter.start()
        results = [self._chain(10).apply_async() for _ in range(runs)]
        ResultSet(results).join_native(timeout=self.sizes.timeout_s, propagate=True)
        cpu, wall = meter.stop()
        memory_after = self._memory()
        throughput = {
            "tasks": n,
            "wall_s": wall,
            "per_s": n / wall,
            "cpu_us_per_node": cpu_per_node(cpu, n),
        }
        memory = {"runs": runs, "bytes_per_run": (memory_after - memory_before) / runs}
        return throughput, memory

    def hop(self, n: int) -> dict[str, Any]:
        """A chain of n tasks; each returns its start time (kept by the result backend)."""
        last = self._chain(n).apply_async()
        last.get(timeout=self.sizes.timeout_s)
        results: list[AsyncResult] = []
        node: AsyncResult | None = last
        while node is not None:
            results.append(node)
            node = node.parent
        starts = [float(r.get(timeout=10)) for r in reversed(results)]
        return summarize_ms([b - a for a, b in itertools.pairwise(starts)])

    def _once(self, build: Any, n: int) -> float:
        started = time.monotonic()
        build(n).apply_async().get(timeout=self.sizes.timeout_s)
        return time.monotonic() - started

    def scaling(self) -> dict[str, Any]:
        small, large = self.sizes.scale_small, self.sizes.scale_large
        result: dict[str, Any] = {}
        for shape, build, extra in (("chain", self._chain, 0), ("fanout", self._chord, 1)):
            self._once(build, small)  # warm
            self._once(build, large)
            half = max(1, self.sizes.scale_repeats // 2)  # small runs around the large one
            smalls = [self._once(build, small) for _ in range(half)]
            big = self._once(build, large)
            smalls += [self._once(build, small) for _ in range(half)]
            result[shape] = scale_entry(
                small, large, median(smalls) / (small + extra), big / (large + extra)
            )
        return result

    def idle_cpu(self, seconds: float) -> dict[str, float]:
        before, t0 = tree_cpu_seconds(self.worker_pid), time.monotonic()
        time.sleep(seconds)
        used, wall = tree_cpu_seconds(self.worker_pid) - before, time.monotonic() - t0
        return {"cpu_pct": 100 * used / wall}
