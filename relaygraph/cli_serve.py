"""Long-running processes: ``relaygraph dispatcher``, ``worker`` and ``up``, and the pieces
``run`` shares with them (a Redis connection, an in-process dispatcher, worker processes)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from dispatcher.connect import connect
from dispatcher.service import Dispatcher
from dispatcher.settings import DispatcherSettings
from relaygraph.cli_common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
    redact_url,
    require_url,
    settings_from,
    setup_logging,
)
from relaygraph.procs import ApiProcess, WorkerPool, WorkerStartError
from worker.loop import run_loop

__all__ = [
    "add_process_commands",
    "cmd_dispatcher",
    "cmd_up",
    "cmd_worker",
    "dispatcher_task",
    "redis_connection",
    "worker_argv",
    "worker_pool",
]

WORKER_START_TIMEOUT_S = 30.0
MAX_RESTARTS = 5  # per worker slot and minute, before `up` gives up


def add_process_commands(sub: Any, redis_opts: argparse.ArgumentParser) -> None:
    ops = argparse.ArgumentParser(add_help=False)  # what every long-running process takes
    ops.add_argument(
        "--metrics-port",
        type=int,
        metavar="N",
        help="serve Prometheus metrics on port N (RELAYGRAPH_METRICS_PORT; default: none)",
    )
    ops.add_argument(
        "--log-format",
        choices=["text", "json"],
        help="log lines as text or one JSON object each (RELAYGRAPH_LOG_FORMAT; default text)",
    )

    p = sub.add_parser(
        "dispatcher", parents=[redis_opts, ops], help="run a dispatcher until stopped"
    )
    p.add_argument("--consumer", help="consumer name in the inbox group (default host-pid-rand)")
    p.add_argument(
        "--shards",
        metavar="SPEC",
        help="sharded layout (RELAYGRAPH_SHARDS=S): the shards this dispatcher is assigned, "
        "e.g. 0-7 or 0-3,8,12-15 (RELAYGRAPH_SERVE_SHARDS; default: all). It also takes "
        "over any other shard whose dispatchers stopped renewing its lease "
        "(RELAYGRAPH_SHARD_LEASE_S, default 5 s), and hands it back when they return",
    )
    p.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    p.set_defaults(func=cmd_dispatcher)

    p = sub.add_parser("worker", parents=[redis_opts, ops], help="run a worker (python -m worker)")
    p.add_argument("--handlers", metavar="MODULE[:ATTR]", help="module with a HandlerRegistry")
    p.add_argument("--queue", action="append", metavar="Q", help="queue to serve (repeatable)")
    p.add_argument("--concurrency", type=int, metavar="N", help="jobs at once per queue")
    p.add_argument("--log-level", help="logging level (default INFO)")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser(
        "up",
        parents=[redis_opts, ops],
        help="run a dispatcher and N workers until stopped",
        epilog="With --metrics-port P the dispatcher serves metrics on port P and worker i "
        "(1, 2, ...) on port P+i.",
    )
    p.add_argument("--handlers", required=True, metavar="MODULE[:ATTR]")
    p.add_argument("--workers", type=int, default=2, metavar="N", help="worker processes (2)")
    p.add_argument("--queue", action="append", metavar="Q", help="queue to serve (repeatable)")
    p.add_argument("--concurrency", type=int, metavar="N", help="jobs at once per queue")
    p.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    p.add_argument("--api", type=int, metavar="PORT", help="also serve the HTTP API on PORT")
    p.add_argument(
        "--api-host", default="127.0.0.1", metavar="HOST", help="the API's address (127.0.0.1)"
    )
    p.add_argument("--keys", metavar="FILE", help="the API's keys document (see `relaygraph api`)")
    p.set_defaults(func=cmd_up)


def _ops_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The observability flags as settings (None: not given, the environment decides)."""
    return {
        "metrics_port": getattr(args, "metrics_port", None),
        "log_format": getattr(args, "log_format", None),
    }


@contextlib.asynccontextmanager
async def redis_connection(url: str) -> AsyncIterator[Any]:
    """A client for ``url``, checked with a PING, closed on exit."""
    redis = connect(url)
    try:
        await redis.ping()
        yield redis
    finally:
        await redis.aclose()


@contextlib.asynccontextmanager
async def dispatcher_task(
    redis: Any, settings: DispatcherSettings
) -> AsyncIterator[asyncio.Task[None]]:
    """A dispatcher serving in a task of this loop; yields the task once it is ready."""
    dispatcher = Dispatcher(redis, settings)
    stop = asyncio.Event()
    task = asyncio.create_task(dispatcher.run(stop), name="dispatcher")
    try:
        ready = asyncio.create_task(dispatcher.ready.wait())
        await asyncio.wait([ready, task], return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        if task.done():
            task.result()  # raises what stopped it
        yield task
    finally:
        stop.set()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(task, timeout=5.0)


@contextlib.asynccontextmanager
async def worker_pool(
    args: argparse.Namespace,
    settings: DispatcherSettings,
    queues: list[str],
    *,
    capture: bool,
    grace_s: float | None = None,
) -> AsyncIterator[WorkerPool]:
    """Worker processes; with ``capture`` their output goes to files (shown on failure).
    ``grace_s``: how long a stopping worker lets running jobs finish (None: its default)."""
    tmp = tempfile.TemporaryDirectory(prefix="relaygraph-workers-") if capture else None
    # The dispatcher in this process serves metrics on metrics_port; the workers the next ones.
    base = settings.metrics_port + 1 if settings.metrics_port is not None else None
    pool = WorkerPool(
        redis_url=settings.redis_url or "",
        prefix=settings.prefix,
        handlers=args.handlers,
        queues=queues,
        concurrency=args.concurrency,
        grace_s=grace_s,
        log_dir=Path(tmp.name) if tmp is not None else None,
        metrics_port=base,
        log_format=settings.log_format,
        log_level=getattr(args, "log_level", None),
    )
    try:
        pool.start(args.workers)
        yield pool
    finally:
        await pool.stop(timeout=(10.0 if grace_s is None else grace_s) + 2.0)
        if tmp is not None:
            tmp.cleanup()


def cmd_dispatcher(args: argparse.Namespace) -> int:
    settings = settings_from(
        args,
        DispatcherSettings,
        consumer=args.consumer,
        serve_shards=args.shards,
        **_ops_settings(args),
    )
    url = require_url(settings, "dispatcher")
    setup_logging(args.log_level, settings.log_format)

    async def go() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        redis = connect(url)
        try:
            await redis.ping()
            await Dispatcher(redis, settings).run(stop)
        finally:
            await redis.aclose()
        return EXIT_OK

    return run_loop(go())


def worker_argv(args: argparse.Namespace) -> list[str]:
    """``python -m worker`` with this command's flags."""
    argv = [sys.executable, "-m", "worker"]
    if args.redis:
        argv += ["--redis", args.redis]
    if args.prefix:
        argv += ["--prefix", args.prefix]
    if args.handlers:
        argv += ["--handlers", args.handlers]
    for queue in args.queue or []:
        argv += ["--queue", queue]
    if args.concurrency is not None:
        argv += ["--concurrency", str(args.concurrency)]
    for flag, value in (
        ("--metrics-port", getattr(args, "metrics_port", None)),
        ("--log-format", getattr(args, "log_format", None)),
        ("--log-level", getattr(args, "log_level", None)),
    ):
        if value is not None:
            argv += [flag, str(value)]
    return argv


def cmd_worker(args: argparse.Namespace) -> int:
    """Become ``python -m worker`` (exec), the current directory on ``PYTHONPATH``."""
    argv = worker_argv(args)
    env = dict(os.environ)
    path = [os.getcwd(), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(path))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, env)  # replaces this process; does not return


def cmd_up(args: argparse.Namespace) -> int:
    if args.workers < 1:
        raise UsageError("--workers must be at least 1")
    if args.api is not None and not 0 < args.api < 65536:
        raise UsageError(f"--api {args.api}: not a port (1-65535)")
    settings = settings_from(args, DispatcherSettings, **_ops_settings(args))
    require_url(settings, "up")
    if settings.metrics_port is not None and settings.metrics_port + args.workers > 65535:
        raise UsageError(
            f"--metrics-port {settings.metrics_port} leaves no port for {args.workers} "
            "worker(s): they serve on the ports after it"
        )
    setup_logging(args.log_level, settings.log_format)
    return run_loop(_up(args, settings))


async def _up(args: argparse.Namespace, settings: DispatcherSettings) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    queues = args.queue or ["default"]
    async with contextlib.AsyncExitStack() as stack:
        redis = await stack.enter_async_context(redis_connection(settings.redis_url or ""))
        task = await stack.enter_async_context(dispatcher_task(redis, settings))
        pool = await stack.enter_async_context(worker_pool(args, settings, queues, capture=False))
        try:
            workers = await pool.wait_registered(redis, settings.keys, WORKER_START_TIMEOUT_S)
        except WorkerStartError as e:
            code = EXIT_USAGE if e.returncode == EXIT_USAGE else EXIT_FAILED
            print(f"relaygraph: error: a worker failed to start: {e}", file=sys.stderr)
            return code
        types = sorted({t for w in workers for t in w.types})
        try:
            api = await _start_api(stack, args, settings)
        except WorkerStartError as e:
            print(f"relaygraph: error: the API failed to start: {e}", file=sys.stderr)
            return EXIT_USAGE if e.returncode == EXIT_USAGE else EXIT_FAILED
        print(
            f"relaygraph up: dispatcher + {len(workers)} worker(s) on "
            f"{redact_url(settings.redis_url or '')} (queues {', '.join(queues)}; "
            f"types {', '.join(types)}{_metrics_ports(settings, args.workers)}"
            f"{_api_address(args)}); stop with Ctrl-C or SIGTERM",
            flush=True,
        )
        restarts: list[float] = []
        api_restarts: list[float] = []
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            if task.done():
                print(f"relaygraph: error: the dispatcher stopped: {task.exception()}")
                return EXIT_FAILED
            for proc in pool.exited():
                if proc.returncode == EXIT_USAGE:
                    print("relaygraph: error: a worker exited with a configuration error")
                    return EXIT_USAGE
                now = time.monotonic()
                restarts = [t for t in restarts if now - t < 60] + [now]
                if len(restarts) > MAX_RESTARTS * args.workers:
                    print("relaygraph: error: workers keep exiting; giving up", file=sys.stderr)
                    return EXIT_FAILED
                print(f"relaygraph: worker {proc.pid} exited ({proc.returncode}); restarting")
                pool.respawn(proc)
            if api is not None and api.exited():
                if api.returncode == EXIT_USAGE:
                    print("relaygraph: error: the API exited with a configuration error")
                    return EXIT_USAGE
                now = time.monotonic()
                api_restarts = [t for t in api_restarts if now - t < 60] + [now]
                if len(api_restarts) > MAX_RESTARTS:
                    print("relaygraph: error: the API keeps exiting; giving up", file=sys.stderr)
                    return EXIT_FAILED
                print(f"relaygraph: the API exited ({api.returncode}); restarting")
                api.start()
        print("relaygraph up: stopping", flush=True)
    return EXIT_OK


async def _start_api(
    stack: contextlib.AsyncExitStack, args: argparse.Namespace, settings: DispatcherSettings
) -> ApiProcess | None:
    """With ``--api PORT``, the API process, listening (None without); ``WorkerStartError``
    if it exits or does not listen in time."""
    if args.api is None:
        return None
    argv = ["--keys", args.keys] if args.keys else []
    if settings.log_format is not None:
        argv += ["--log-format", settings.log_format]
    api = ApiProcess(settings.redis_url or "", settings.prefix, args.api_host, args.api, argv)
    api.start()
    stack.push_async_callback(api.stop)
    await api.wait_listening()
    return api


def _api_address(args: argparse.Namespace) -> str:
    return "" if args.api is None else f"; API on http://{args.api_host}:{args.api}"


def _metrics_ports(settings: DispatcherSettings, workers: int) -> str:
    port = settings.metrics_port
    if port is None:
        return ""
    return f"; metrics: dispatcher on port {port}, workers on {port + 1}-{port + workers}"
