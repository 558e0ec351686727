"""An arq worker that is woken when work arrives instead of polling on a timer.

arq polls its queue every ``poll_delay``: either latency (0.5 s by default) or idle CPU (a
tight poll). The dispatcher pushes a token on ``Keys.wake(queue)`` with every enqueue (in the
same script); this worker blocks on that list and polls the moment a token arrives. When no
token comes for ``fallback_s`` it polls anyway, so a lost wake-up only delays a job, never
strands it.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from arq.connections import create_pool, log_redis_info
from arq.worker import Worker
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["WakingWorker"]


class WakingWorker(Worker):
    def __init__(self, *args: Any, wake_key: str, fallback_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.wake_key = wake_key
        self.fallback_s = fallback_s
        self.wakeups = 0
        self._slot_freed = asyncio.Event()

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
        if self.on_startup:
            await self.on_startup(self.ctx)
        while True:
            await self._poll_iteration()
            if self.burst and await self._burst_done():
                return
            await self._wait_for_work()

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
        try:
            woke = await pool.blpop([self.wake_key], timeout=self.fallback_s)
        except (RedisConnectionError, RedisTimeoutError):
            await asyncio.sleep(self.fallback_s)  # Redis is away: poll slowly until it is back
            return
        if woke is not None:
            self.wakeups += 1

    def _release_sem_dec_counter_on_complete(self) -> None:
        super()._release_sem_dec_counter_on_complete()
        self._slot_freed.set()
