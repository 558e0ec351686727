"""A plain arq worker, the raw-arq peer: ``python -m bench.arq_worker --redis URL ...``.

Configured as arq's own CLI would run it (default serializer, results kept, INFO logging),
except for the settings the benchmark varies: ``poll_delay``, ``max_jobs`` and the queue.
"""

from __future__ import annotations

import argparse
import logging.config
import os
import time
from collections.abc import Sequence
from typing import Any

from arq.connections import RedisSettings
from arq.logs import default_log_config
from arq.worker import Worker

__all__ = ["hop", "main", "noop"]


async def noop(ctx: dict[str, Any]) -> None:
    """The throughput job: nothing at all."""


async def hop(ctx: dict[str, Any], i: int, n: int, key: str, queue: str) -> None:
    """Job ``i`` of a chain: note when it started, enqueue job ``i + 1``. The start time is
    written after the enqueue, so it does not delay the next job."""
    started = time.time()
    if i + 1 < n:
        await ctx["redis"].enqueue_job("hop", i + 1, n, key, queue, _queue_name=queue)
    await ctx["redis"].rpush(key, f"{i}:{started!r}")


async def _ready(ctx: dict[str, Any]) -> None:
    await ctx["redis"].set(f"bench:arq:ready:{os.getpid()}", 1, ex=3600)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.arq_worker")
    p.add_argument("--redis", required=True)
    p.add_argument("--queue", required=True)
    p.add_argument("--poll-delay", type=float, default=0.5)
    p.add_argument("--max-jobs", type=int, default=10)
    args = p.parse_args(argv)
    logging.config.dictConfig(default_log_config(verbose=False))
    Worker(
        functions=[noop, hop],
        queue_name=args.queue,
        redis_settings=RedisSettings.from_dsn(args.redis),
        poll_delay=args.poll_delay,
        max_jobs=args.max_jobs,
        on_startup=_ready,
        handle_signals=True,
    ).run()


if __name__ == "__main__":
    main()
