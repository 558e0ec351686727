"""An arq worker that is woken when work arrives, claims jobs atomically, and rides out
Redis restarts.

* Wake-ups: arq polls its queue every ``poll_delay``: either latency (0.5 s by default) or
  idle CPU (a tight poll). The dispatcher pushes a token on ``Keys.wake(queue)`` with every
  enqueue (in the same script); this worker blocks on that list and polls the moment a token
  arrives. When no token comes for ``fallback_s`` it polls anyway, so a lost wake-up only
  delays a job, never strands it.
* Claims: a job is claimed with one script (in-progress key set unless it exists, the job
  still queued and due) instead of arq's WATCH/MULTI, and a failed claim gives its worker
  slot back, so a connection lost mid-claim neither leaks concurrency nor kills the worker.
* Outages: a Redis error in a poll is logged and the loop waits and polls again; jobs
  already running carry on (their reports retry), and the dispatcher's leases cover any
  attempt lost meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from arq.connections import create_pool, log_redis_info
from arq.constants import in_progress_key_prefix
from arq.utils import timestamp_ms
from arq.worker import Worker
from redis.exceptions import RedisError

__all__ = ["WakingWorker"]

logger = logging.getLogger("relaygraph.worker")

# Claim a job: only if nobody runs it, it is still queued and it is due. Returns its score.
_CLAIM = """
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not score or tonumber(score) > tonumber(ARGV[2]) then return false end
redis.call('PSETEX', KEYS[1], ARGV[3], '1')
return score
"""
_OUTAGE_BACKOFF_S = (0.05, 0.1, 0.25, 0.5, 1.0)


class WakingWorker(Worker):
    def __init__(self, *args: Any, wake_key: str, fallback_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.wake_key = wake_key
        self.fallback_s = fallback_s
        self.wakeups = 0
        self.outages = 0
        self._slot_freed = asyncio.Event()
        self._claim: Any = None

    async def main(self) -> None:
        if self._pool is None:
            self._pool = await create_pool(
                self.redis_settings,
                job_deserializer=self.job_deserializer,
                job_serializer=self.job_serializer,
                default_queue_name=self.queue_name,
                expires_extra_ms=self.expires_extra_ms,
            )
        await log_redis_info(self.pool, lambda *a: None)
        self.ctx["redis"] = self.pool
        self._claim = self.pool.register_script(_CLAIM)
        if self.on_startup:
            await self.on_startup(self.ctx)
        failures = 0
        while True:
            try:
                await self._poll_iteration()
                if self.burst and await self._burst_done():
                    return
                await self._wait_for_work()
                failures = 0
            except RedisError as e:  # Redis restarting or unreachable: wait, then poll again
                self.outages += 1
                delay = _OUTAGE_BACKOFF_S[min(failures, len(_OUTAGE_BACKOFF_S) - 1)]
                failures += 1
                logger.warning(
                    "queue %s: Redis error (%s); polling again in %.2fs", self.queue_name, e, delay
                )
                await asyncio.sleep(delay)

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """Claim and start each job (one script per claim); a failed claim frees its slot."""
        for job_id_b in job_ids:
            await self.sem.acquire()
            if self.job_counter >= self.max_jobs:
                self.sem.release()
                return
            self.job_counter += 1
            job_id = job_id_b.decode()
            try:
                score = await self._claim(
                    keys=[in_progress_key_prefix + job_id, self.queue_name],
                    args=[job_id, timestamp_ms(), int(self.in_progress_timeout_s * 1000)],
                )
            except BaseException:
                self._release_sem_dec_counter_on_complete()
                raise
            if score is None:  # running elsewhere, finished, or deferred
                self._release_sem_dec_counter_on_complete()
                continue
            task = self.loop.create_task(self.run_job(job_id, int(float(score))))
            task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[job_id] = task

    async def _burst_done(self) -> bool:
        if 0 <= self.max_burst_jobs <= self._jobs_started() or not await self.pool.zcard(
            self.queue_name
        ):
            await asyncio.gather(*self.tasks.values())
            return True
        return False

    async def _wait_for_work(self) -> None:
        if self.job_counter >= self.max_jobs:
            # Full: taking a wake-up token now would steal it from an idle worker. Wait for
            # one of our own jobs to finish (or the fallback), then poll.
            self._slot_freed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._slot_freed.wait(), timeout=self.fallback_s)
            return
        pool: Any = self.pool  # redis-py 5 types async results as Awaitable[T] | T
        woke = await pool.blpop([self.wake_key], timeout=self.fallback_s)
        if woke is not None:
            self.wakeups += 1

    def _release_sem_dec_counter_on_complete(self) -> None:
        super()._release_sem_dec_counter_on_complete()
        self._slot_freed.set()
