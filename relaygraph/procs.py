"""``WorkerPool``: worker *processes* (``python -m worker``) started and stopped by the CLI.

The dispatcher package never imports ``worker``; the CLI runs workers as subprocesses and
learns what they serve from the records they write into ``<prefix>:workers`` at start-up.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson

from graph_core.errors import RelaygraphError
from graph_core.keys import Keys
from relaygraph.lifeline import parent_death_hook

__all__ = ["ApiProcess", "WorkerInfo", "WorkerPool", "WorkerStartError"]


class WorkerStartError(RelaygraphError):
    """A worker process exited, or did not register, during start-up."""

    def __init__(self, message: str, *, returncode: int | None = None, log_tail: str = "") -> None:
        self.returncode = returncode
        self.log_tail = log_tail
        super().__init__(message + (f"\n{_indent(log_tail)}" if log_tail else ""))


@dataclass(frozen=True)
class WorkerInfo:
    """What a worker process registered about itself."""

    worker_id: str
    pid: int
    host: str
    queues: list[str]
    types: list[str]


class WorkerPool:
    """N worker processes serving ``queues`` with the handlers of module ``handlers``.

    The Redis URL and prefix reach the children through ``RELAYGRAPH_*`` variables, not
    argv, so a password in the URL does not show up in ``ps``. With ``log_dir`` each
    worker's output goes to its own file there (shown when it fails); otherwise it is
    inherited. The current directory is put on the children's ``PYTHONPATH`` so handler
    modules of the project the CLI runs in import.

    With ``metrics_port`` the worker in slot ``i`` (0, 1, ...) serves its metrics on port
    ``metrics_port + i``, and a respawned worker takes over the slot (and port) of the one it
    replaces; ``RELAYGRAPH_METRICS_PORT`` is never passed on, so that workers never try to
    listen on the port of the process that started them.
    """

    def __init__(
        self,
        *,
        redis_url: str,
        prefix: str,
        handlers: str,
        queues: Sequence[str],
        concurrency: int | None = None,
        grace_s: float | None = None,
        log_dir: Path | None = None,
        metrics_port: int | None = None,
        log_format: str | None = None,
        log_level: str | None = None,
    ) -> None:
        self.redis_url = redis_url
        self.prefix = prefix
        self.handlers = handlers
        self.queues = list(queues)
        self.concurrency = concurrency
        self.grace_s = grace_s
        self.log_dir = log_dir
        self.metrics_port = metrics_port
        self.log_format = log_format
        self.log_level = log_level
        self.procs: list[subprocess.Popen[bytes]] = []
        self._slots: dict[int, int] = {}  # pid -> the worker's slot (its metrics port)
        self._logs: dict[int, Path] = {}
        self._started = 0

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "worker", "--handlers", self.handlers]
        for queue in self.queues:
            cmd += ["--queue", queue]
        if self.concurrency is not None:
            cmd += ["--concurrency", str(self.concurrency)]
        if self.grace_s is not None:
            cmd += ["--grace", str(self.grace_s)]
        if self.log_format is not None:
            cmd += ["--log-format", self.log_format]
        if self.log_level is not None:
            cmd += ["--log-level", self.log_level]
        return cmd

    def slot_arguments(self, slot: int) -> list[str]:
        """The flags of the worker in ``slot``: its metrics port."""
        if self.metrics_port is None:
            return []
        return ["--metrics-port", str(self.metrics_port + slot)]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env["RELAYGRAPH_REDIS_URL"] = self.redis_url
        env["RELAYGRAPH_PREFIX"] = self.prefix
        env.pop("RELAYGRAPH_METRICS_PORT", None)  # each worker gets its own (slot_arguments)
        path = [os.getcwd(), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(path))
        return env

    def start(self, n: int) -> None:
        for _ in range(n):
            self.spawn()

    def spawn(self, slot: int | None = None) -> subprocess.Popen[bytes]:
        """Start a worker in ``slot`` (default: the lowest no running worker holds)."""
        if slot is None:
            held = {self._slots.get(p.pid) for p in self.procs}
            slot = next(i for i in range(len(self.procs) + 1) if i not in held)
        self._started += 1
        out: IO[bytes] | None = None
        log_path = None
        if self.log_dir is not None:
            log_path = self.log_dir / f"worker-{self._started}.log"
            out = log_path.open("wb")
        try:
            proc = subprocess.Popen(
                self.command() + self.slot_arguments(slot),
                env=self.environment(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT if out is not None else None,
                preexec_fn=parent_death_hook(signal.SIGTERM),  # noqa: PLW1509 - it only calls prctl
            )
        finally:
            if out is not None:
                out.close()
        if log_path is not None:
            self._logs[proc.pid] = log_path
        self._slots[proc.pid] = slot
        self.procs.append(proc)
        return proc

    def respawn(self, proc: subprocess.Popen[bytes]) -> subprocess.Popen[bytes]:
        """Replace an exited worker with a new process (in its slot)."""
        self.procs.remove(proc)
        return self.spawn(self._slots.pop(proc.pid, None))

    def exited(self) -> list[subprocess.Popen[bytes]]:
        """Workers that are no longer running."""
        return [p for p in self.procs if p.poll() is not None]

    def log_tail(self, proc: subprocess.Popen[bytes], n: int = 20) -> str:
        path = self._logs.get(proc.pid)
        if path is None:
            return ""
        try:
            with path.open("rb") as fh:
                lines = collections.deque(fh, maxlen=n)
        except OSError:
            return ""
        return b"".join(lines).decode("utf-8", "replace").rstrip("\n")

    def check_alive(self) -> None:
        """Raise ``WorkerStartError`` (with its output) for the first worker that exited."""
        for proc in self.exited():
            raise WorkerStartError(
                f"worker process {proc.pid} exited with status {proc.returncode}",
                returncode=proc.returncode,
                log_tail=self.log_tail(proc),
            )

    async def wait_registered(
        self, redis: Any, keys: Keys, timeout: float = 30.0
    ) -> list[WorkerInfo]:
        """Wait until every worker process has registered; return their records."""
        deadline = time.monotonic() + timeout
        host = socket.gethostname()
        while True:
            self.check_alive()
            found = await read_workers(redis, keys)
            pids = {p.pid for p in self.procs}
            mine = [w for w in found if w.pid in pids and w.host == host]
            if len({w.pid for w in mine}) >= len(pids):
                return mine
            if time.monotonic() >= deadline:
                missing = sorted(pids - {w.pid for w in mine})
                raise WorkerStartError(
                    f"worker process(es) {missing} did not register within {timeout:g}s"
                )
            await asyncio.sleep(0.05)  # polling a hash we do not own; no event to wait on

    async def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM every worker, SIGKILL those still running after ``timeout`` seconds."""
        running = [p for p in self.procs if p.poll() is None]
        for proc in running:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in running:
            remaining = max(0.0, deadline - time.monotonic())
            try:
                await asyncio.to_thread(proc.wait, remaining)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait)


async def read_workers(redis: Any, keys: Keys) -> list[WorkerInfo]:
    """Every worker record in ``<prefix>:workers`` (malformed entries are skipped)."""
    raw = await redis.hgetall(keys.workers)
    found = []
    for field, value in raw.items():
        try:
            data = orjson.loads(value)
            found.append(
                WorkerInfo(
                    worker_id=field.decode(),
                    pid=int(data["pid"]),
                    host=str(data["host"]),
                    queues=[str(q) for q in data["queues"]],
                    types=[str(t) for t in data["types"]],
                )
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
    return found


class ApiProcess:
    """``relaygraph api`` as a child process of ``relaygraph up`` (so that a busy API never
    slows the dispatcher's loop), with the same Redis URL and prefix, passed as for workers.
    ``argv``: the API's own flags (``--port``, ``--host``, ``--keys``, ...)."""

    def __init__(self, redis_url: str, prefix: str, host: str, port: int, argv: list[str]) -> None:
        self.redis_url = redis_url
        self.prefix = prefix
        self.host = host
        self.port = port
        self.argv = argv
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        env["RELAYGRAPH_REDIS_URL"] = self.redis_url
        env["RELAYGRAPH_PREFIX"] = self.prefix
        cmd = [sys.executable, "-m", "relaygraph", "api", "--host", self.host]
        self.proc = subprocess.Popen(
            [*cmd, "--port", str(self.port), *self.argv],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,  # its banner: see wait_listening; its log goes to stderr
            preexec_fn=parent_death_hook(signal.SIGTERM),  # noqa: PLW1509 - it only calls prctl
        )
        return self.proc

    async def wait_listening(self, timeout: float = 30.0) -> None:
        """Wait for the API's banner ("listening"): it prints it once its own socket is
        bound, so another process on the port cannot pass for it. ``WorkerStartError`` if
        it exits or stays silent past ``timeout``."""
        proc = self.proc
        if proc is None or proc.stdout is None:
            raise WorkerStartError("the API process was not started")
        stdout = proc.stdout
        reading = asyncio.ensure_future(asyncio.to_thread(stdout.readline))
        try:
            line = await asyncio.wait_for(asyncio.shield(reading), timeout)
        except TimeoutError:
            proc.kill()  # its stdout closes: the read ends
            await reading
            raise WorkerStartError(
                f"the API did not listen on port {self.port} within {timeout:g}s"
            ) from None
        finally:
            if reading.done():
                stdout.close()  # it prints nothing else there (its log goes to stderr)
        if b"listening" not in line:
            code = proc.wait()
            raise WorkerStartError(f"the API process exited with status {code}", returncode=code)

    def exited(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.returncode

    async def stop(self, timeout: float = 10.0) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(proc.wait, timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            await asyncio.to_thread(proc.wait)


def _indent(text: str) -> str:
    return "\n".join(f"  | {line}" for line in text.splitlines())
