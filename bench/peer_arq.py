"""The raw-arq peer: N ``bench.arq_worker`` processes on the same server, same worker count
and ``max_jobs`` as relaygraph's workers' concurrency.

Jobs are written in bulk the way ``ArqRedis.enqueue_job`` lays them out (the job key and its
id in the queue's sorted set), pipelined: submitting costs the driver as little as
relaygraph's pipelined ``XADD``. The hop chain uses arq's own ``enqueue_job`` from inside
each job, as an arq user would.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.constants import job_key_prefix, result_key_prefix
from arq.jobs import serialize_job

from bench.config import Sizes
from bench.procs import CpuMeter, Stack, command_stats, start_arq_workers, used_memory, wait_until
from bench.report import cpu_per_node, summarize_ms

__all__ = ["ArqPeer"]

JOB_EXPIRES_MS = 86_400_000  # arq's default expiry of an unstarted job
CHUNK = 1000


class ArqPeer:
    def __init__(
        self,
        url: str,
        sizes: Sizes,
        log_dir: Path,
        poll_delay: float,
        profile_dir: Path | None = None,
    ) -> None:
        self.url = url
        self.sizes = sizes
        self.log_dir = log_dir
        self.poll_delay = poll_delay
        self.queue = f"bench:arq:queue:{poll_delay:g}"
        self.stack = Stack()
        self.redis: Any = aioredis.Redis.from_url(url)
        self.pool: ArqRedis | None = None
        self.worker_pids: list[int] = []
        self.profile_dir = profile_dir
        self.jobs = 0  # jobs enqueued (per-job profile figures)
        self._seq = 0
        self._token = secrets.token_hex(3)  # job ids and keys unique across rounds

    async def start(self) -> None:
        procs = await start_arq_workers(
            self.stack,
            self.url,
            self.sizes.workers,
            poll_delay=self.poll_delay,
            max_jobs=self.sizes.concurrency,
            queue=self.queue,
            log_dir=self.log_dir,
            profile_dir=self.profile_dir,
        )
        self.worker_pids = [p.pid for p in procs]
        self.pool = await create_pool(RedisSettings.from_dsn(self.url))

    async def close(self) -> None:
        await self.stack.close()
        if self.pool is not None:
            await self.pool.aclose()
        await self.redis.aclose()

    async def _server_pid(self) -> int:
        return int((await self.redis.info("server"))["process_id"])

    async def throughput_and_memory(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """10 no-op jobs per "run" of the relaygraph test, all enqueued at once."""
        runs = self.sizes.throughput_runs
        n = runs * 10
        self.jobs += n
        self._seq += 1
        ids = [f"tp{self._token}{self._seq}-{i}" for i in range(n)]
        memory_before = await used_memory(self.redis)
        meter = CpuMeter({"server": [await self._server_pid()], "workers": self.worker_pids})
        await self.redis.config_resetstat()
        meter.start()
        for lo in range(0, n, CHUNK):
            now_ms = int(time.time() * 1000)
            pipe = self.redis.pipeline(transaction=False)
            for job_id in ids[lo : lo + CHUNK]:
                job = serialize_job("noop", (), {}, None, now_ms)
                pipe.psetex(job_key_prefix + job_id, JOB_EXPIRES_MS, job)
                pipe.zadd(self.queue, {job_id: now_ms})
            await pipe.execute()
        result_keys = [result_key_prefix + i for i in ids]

        async def done() -> bool:
            self.stack.check()
            if await self.redis.zcard(self.queue):
                return False
            found = 0
            for lo in range(0, n, 5 * CHUNK):
                found += int(await self.redis.exists(*result_keys[lo : lo + 5 * CHUNK]))
            return found == n

        await wait_until(done, self.sizes.timeout_s, "arq throughput jobs", interval=0.02)
        cpu, wall = meter.stop()
        commands = await command_stats(self.redis)
        memory_after = await used_memory(self.redis)
        throughput = {
            "jobs": n,
            "wall_s": wall,
            "per_s": n / wall,
            "cpu_us_per_node": cpu_per_node(cpu, n),
            "commands_per_node": {k: v / n for k, v in commands.items()},
        }
        memory = {"runs": runs, "bytes_per_run": (memory_after - memory_before) / runs}
        return throughput, memory

    async def hop(self, n: int) -> dict[str, Any]:
        """A chain of n jobs, each enqueueing the next with ``enqueue_job``."""
        if self.pool is None:
            raise RuntimeError("start() first")
        self._seq += 1
        self.jobs += n
        key = f"bench:arq:hop:{self._token}{self._seq}"
        await self.pool.enqueue_job("hop", 0, n, key, self.queue, _queue_name=self.queue)

        async def done() -> bool:
            self.stack.check()
            return int(await self.redis.llen(key)) >= n

        await wait_until(done, self.sizes.timeout_s + n * self.poll_delay, "arq hop chain")
        entries = [e.decode().split(":", 1) for e in await self.redis.lrange(key, 0, -1)]
        starts = [float(t) for _, t in sorted(entries, key=lambda e: int(e[0]))]
        return summarize_ms([b - a for a, b in itertools.pairwise(starts)])

    async def idle_cpu(self, seconds: float) -> dict[str, float]:
        meter = CpuMeter({str(p): [p] for p in self.worker_pids})
        meter.start()
        await asyncio.sleep(seconds)
        cpu, wall = meter.stop()
        return {"cpu_pct": 100 * max(cpu[str(p)] for p in self.worker_pids) / wall}
