"""``python -m worker``: one worker process serving one or more queues.

    python -m worker --redis redis://localhost:6379/0 --handlers myapp.handlers \\
        [--queue default --queue gpu] [--concurrency 10] [--prefix relaygraph] [--grace 10] \\
        [--metrics-port 9101] [--log-format text|json] [--log-level INFO]

Settings come from the flags, then ``RELAYGRAPH_*`` variables. Exit status 2 for bad
settings, a handlers module that does not load or a metrics port that cannot be listened
on, 1 when the worker fails while running, 0 after a graceful stop (SIGTERM or SIGINT).

While it runs, the process is listed in the ``<prefix>:workers`` hash (field ``host:pid``,
value ``{"queues", "types", "pid", "host", "started_at"}``), so ``relaygraph run`` can check
that every node type of a graph has a handler before it submits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from typing import Any

from redis.exceptions import RedisError

from graph_core import clock
from graph_core.errors import RelaygraphError
from graph_core.logfmt import stderr_handler
from graph_core.messages import dumps
from graph_core.redis_url import ClusterUnsupported, is_cluster_reply
from graph_core.settings import SettingsError, load_settings
from worker.loop import run_loop
from worker.registry import HandlerRegistry, RegistryLoadError, load_registry
from worker.settings import WorkerSettings

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m worker", description="Run a relaygraph worker.")
    p.add_argument("--redis", metavar="URL", help="Redis URL (RELAYGRAPH_REDIS_URL)")
    p.add_argument("--handlers", metavar="MODULE[:ATTR]", help="module with a HandlerRegistry")
    p.add_argument("--queue", action="append", metavar="Q", help="queue to serve (repeatable)")
    p.add_argument("--concurrency", type=int, metavar="N", help="jobs at once per queue")
    p.add_argument("--prefix", help="key prefix (RELAYGRAPH_PREFIX; default relaygraph)")
    p.add_argument(
        "--grace",
        type=float,
        default=10.0,
        metavar="S",
        help="on SIGTERM, let running jobs finish for up to S seconds (default 10)",
    )
    p.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    p.add_argument(
        "--log-format",
        choices=["text", "json"],
        help="log lines as text or one JSON object each (RELAYGRAPH_LOG_FORMAT; default text)",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        metavar="N",
        help="serve Prometheus metrics on port N (RELAYGRAPH_METRICS_PORT; default: none)",
    )
    return p


def _fail(message: str, code: int = EXIT_USAGE) -> int:
    print(f"relaygraph worker: error: {message}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    flags = {
        "redis_url": args.redis,
        "prefix": args.prefix,
        "handlers": args.handlers,
        "queues": args.queue,
        "concurrency": args.concurrency,
        "metrics_port": args.metrics_port,
        "log_format": args.log_format,
    }
    try:
        settings = load_settings(WorkerSettings, flags)
    except SettingsError as e:
        return _fail(str(e))
    if settings.redis_url is None:
        return _fail("no Redis URL: pass --redis URL or set RELAYGRAPH_REDIS_URL")
    if not settings.handlers:
        return _fail("no handlers: pass --handlers MODULE[:ATTR] or set RELAYGRAPH_HANDLERS")
    if args.grace < 0:
        return _fail("--grace must be >= 0")
    level = logging.getLevelName(args.log_level.upper())
    if not isinstance(level, int):
        return _fail(f"--log-level: unknown level {args.log_level!r}")
    from worker.app import WorkerConfigError, redis_settings_from_url  # loads arq: not for --help
    from worker.metrics import MetricsPortError

    try:
        registry = load_registry(settings.handlers)
        redis_settings_from_url(settings.redis_url)  # a bad URL is a settings error
    except (RegistryLoadError, WorkerConfigError) as e:
        return _fail(str(e))
    logging.basicConfig(level=level, handlers=[stderr_handler(settings.log_format)])
    try:
        run_loop(_serve(settings, registry, args.grace))
    except (KeyboardInterrupt, asyncio.CancelledError):  # stopped before serving began
        return EXIT_OK
    except MetricsPortError as e:
        return _fail(str(e))
    except (OSError, RedisError, RelaygraphError) as e:
        if is_cluster_reply(e):  # a command met a cluster node before the worker's check
            e = ClusterUnsupported()
        return _fail(f"{type(e).__name__}: {e}", EXIT_FAILED)
    return EXIT_OK


async def _serve(settings: WorkerSettings, registry: HandlerRegistry, grace_s: float) -> None:
    from arq.connections import create_pool

    from graph_core.resp import fast_packing
    from worker.app import cluster_client, redis_settings_from_url, serve
    from worker.waking import check_layout, close_client, refuse_cluster

    # Until ``serve`` installs its own handlers, a signal cancels start-up (cleanly).
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    if task is not None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
    # redis-py 5 annotates async results as ``Awaitable[T] | T``; typed as Any here.
    url = settings.redis_url or ""
    redis: Any = cluster_client(url) or fast_packing(
        await create_pool(redis_settings_from_url(url))
    )
    keys = settings.keys
    host, pid = socket.gethostname(), os.getpid()
    worker_id = f"{host}:{pid}"
    record = {
        "queues": settings.queues,
        "types": registry.types(),
        "pid": pid,
        "host": host,
        "started_at": clock.now(),
    }
    try:
        await refuse_cluster(redis)  # before the registration is written
        await check_layout(redis, keys)
        await redis.hset(keys.workers, worker_id, dumps(record))
        await serve(settings, registry, grace_s=grace_s)
    finally:
        with contextlib.suppress(Exception):  # best effort: the server may be gone already
            await redis.hdel(keys.workers, worker_id)
        await close_client(redis)


if __name__ == "__main__":
    sys.exit(main())
