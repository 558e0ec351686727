"""Dispatcher and worker *processes* for the fault tests: start, SIGKILL, stop, read logs.

Every process is started exactly as an operator would start it (``relaygraph dispatcher``,
``python -m worker``) with its settings in ``RELAYGRAPH_*`` variables, its output in a log
file of its own, and ``PR_SET_PDEATHSIG`` so that nothing outlives a crashed test run.
`Fleet` owns the processes of one deployment (one server URL and key prefix) and stops
them all; `Fleet.dump_logs` prints every log, for a failed test's report.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from relaygraph.lifeline import parent_death_hook
from tests.support.waiting import wait_for, wait_until_sync

__all__ = ["ROOT", "Fleet", "Proc", "ProcessDied"]

ROOT = Path(__file__).resolve().parents[2]
RELAYGRAPH = str(Path(sys.executable).parent / "relaygraph")
HANDLERS = "tests.faults.handlers"
START_TIMEOUT_S = 30.0
DISPATCHER_READY = "serving prefix"  # what each process logs once it serves
WORKER_READY = "with handlers for"


class ProcessDied(AssertionError):
    """A dispatcher or worker exited although the test did not stop it."""


class Proc:
    """One child process with its log file."""

    def __init__(
        self, name: str, argv: list[str], env: Mapping[str, str], log: Path, ready: str
    ) -> None:
        self.name = name
        self.argv = argv
        self.log = log
        self.ready_marker = ready
        self.stopped = False  # set when the test kills or stops it on purpose
        with log.open("ab") as out:
            self.popen = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=parent_death_hook(signal.SIGKILL),  # noqa: PLW1509 - it only calls prctl
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def text(self) -> str:
        try:
            return self.log.read_bytes().decode("utf-8", "replace")
        except OSError:
            return ""

    def tail(self, n: int = 40) -> str:
        return "\n".join(collections.deque(self.text().splitlines(), maxlen=n))

    def _logged_ready(self) -> bool:
        if self.ready_marker in self.text():
            return True
        if not self.alive:
            raise AssertionError(
                f"{self.name} (pid {self.pid}) exited with {self.popen.returncode} "
                f"before logging {self.ready_marker!r}:\n{self.tail()}"
            )
        return False

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        """Wait until the process logs that it serves; fail early if it exits."""
        wait_until_sync(
            self._logged_ready, timeout=timeout, interval=0.02, message=f"{self.name} ready"
        )

    async def ready(self, timeout: float = START_TIMEOUT_S) -> None:
        """`wait_ready` without blocking the event loop."""
        await wait_for(
            self._logged_ready, timeout=timeout, interval=0.02, message=f"{self.name} ready"
        )

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill would; reaped at once."""
        self.stopped = True
        if self.alive:
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait()

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM (a graceful stop), SIGKILL after ``timeout``; the exit status."""
        self.stopped = True
        if self.alive:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.popen.wait()

    def __repr__(self) -> str:
        state = "running" if self.alive else f"exited {self.popen.returncode}"
        return f"<Proc {self.name} pid={self.pid} {state}>"


class Fleet:
    """The dispatcher and worker processes of one deployment (server URL + key prefix)."""

    def __init__(self, redis_url: str, prefix: str, log_dir: Path) -> None:
        self.redis_url = redis_url
        self.prefix = prefix
        self.log_dir = log_dir
        self.procs: list[Proc] = []
        log_dir.mkdir(parents=True, exist_ok=True)

    def env(self, settings: Mapping[str, object]) -> dict[str, str]:
        """The caller's environment without its RELAYGRAPH_* settings, plus ours."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("RELAYGRAPH_")}
        env["RELAYGRAPH_REDIS_URL"] = self.redis_url
        env["RELAYGRAPH_PREFIX"] = self.prefix
        env["PYTHONPATH"] = os.pathsep.join(
            dict.fromkeys([str(ROOT), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))])
        )
        env["PYTHONUNBUFFERED"] = "1"
        for name, value in settings.items():
            env[f"RELAYGRAPH_{name.upper()}"] = str(value)
        return env

    def _spawn(
        self, kind: str, argv: list[str], settings: Mapping[str, object], ready: str
    ) -> Proc:
        n = sum(1 for p in self.procs if p.name.startswith(kind)) + 1
        name = f"{kind}-{n}"
        proc = Proc(name, argv, self.env(settings), self.log_dir / f"{name}.log", ready)
        self.procs.append(proc)
        return proc

    def start_dispatcher(self, *, wait: bool = True, **settings: object) -> Proc:
        """``relaygraph dispatcher``; ``settings`` become ``RELAYGRAPH_<NAME>`` variables
        (e.g. ``claim_idle_s=1``). Waits until it serves, unless ``wait=False``."""
        proc = self._spawn("dispatcher", [RELAYGRAPH, "dispatcher"], settings, DISPATCHER_READY)
        if wait:
            proc.wait_ready()
        return proc

    def start_worker(self, *, concurrency: int = 10, wait: bool = True, **settings: object) -> Proc:
        """``python -m worker`` with the fault handlers on queue ``default``; ``settings``
        become ``RELAYGRAPH_<NAME>`` variables (``lease_s``, ``heartbeat_s``, ...)."""
        argv = [
            sys.executable,
            "-m",
            "worker",
            "--handlers",
            HANDLERS,
            "--queue",
            "default",
            "--concurrency",
            str(concurrency),
        ]
        proc = self._spawn("worker", argv, settings, WORKER_READY)
        if wait:
            proc.wait_ready()
        return proc

    def dispatchers(self) -> list[Proc]:
        return [p for p in self.procs if p.name.startswith("dispatcher") and p.alive]

    def died(self) -> list[Proc]:
        """Processes that exited although nobody stopped them (the test's kills excluded)."""
        return [p for p in self.procs if not p.alive and not p.stopped]

    def check_alive(self) -> None:
        """Fail at once, with its log, if a process died that the test did not stop."""
        dead = self.died()
        if dead:
            details = "\n".join(
                f"{p!r} exited with {p.popen.returncode}; its log ends:\n{p.tail(25)}" for p in dead
            )
            raise ProcessDied(f"{len(dead)} process(es) died on their own:\n{details}")

    def stop_all(self, timeout: float = 15.0) -> None:
        """SIGTERM every process at once, then wait for each (SIGKILL past ``timeout``)."""
        for proc in self.procs:
            proc.stopped = True
            if proc.alive:
                with contextlib.suppress(ProcessLookupError):
                    proc.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            try:
                proc.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()

    def dump_logs(self, write: Callable[[str], object] = print, tail: int = 60) -> None:
        for proc in self.procs:
            write(f"----- {proc!r}: {proc.log} (last {tail} lines) -----\n{proc.tail(tail)}")
