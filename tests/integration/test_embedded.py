"""The embedded throwaway server: lifecycle, crash recovery, discovery errors, fixtures."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from relaygraph import embedded
from relaygraph.embedded import EmbeddedServer, EmbeddedServerError
from tests.support.servers import ServerFactory
from tests.support.waiting import wait_until_sync

pytestmark = pytest.mark.integration  # every test here runs a real server, fixture or not


def _port_is_closed(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except ConnectionRefusedError:
        return True
    return False


def _process_gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (a zombie waiting for a reaper counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in {"Z", "X"}


async def test_server_answers_ping_set_get(server_factory: ServerFactory) -> None:
    server = server_factory()
    assert server.url == f"redis://127.0.0.1:{server.port}/0"
    client = aioredis.Redis.from_url(server.url)
    try:
        assert await client.ping() is True
        assert await client.set(b"k", b"v") is True
        assert await client.get(b"k") == b"v"
    finally:
        await client.aclose()


def test_two_servers_get_different_ports(server_factory: ServerFactory) -> None:
    first, second = server_factory(), server_factory()
    assert first.port != second.port
    assert first.workdir != second.workdir
    assert first.running and second.running


def test_stop_is_idempotent_and_closes_port(server_factory: ServerFactory) -> None:
    server = server_factory()
    port, workdir = server.port, server.workdir
    assert workdir.is_dir()
    server.stop()
    server.stop()
    assert not server.running
    assert server.pid is None
    assert _port_is_closed(port)
    assert not workdir.exists(), "the temporary working dir must be removed on stop"


async def test_kill_then_restart_keeps_aof_data(server_factory: ServerFactory) -> None:
    server = server_factory(appendonly=True, appendfsync="always")
    url = server.url
    client = aioredis.Redis.from_url(url)
    try:
        await client.set(b"survivor", b"1")
        await client.rpush(b"list", b"a", b"b")
    finally:
        await client.aclose()

    server.kill()
    assert not server.running
    assert _port_is_closed(server.port)
    server.kill()  # idempotent too

    server.restart()
    assert server.url == url, "restart keeps the port"
    client = aioredis.Redis.from_url(url)
    try:
        assert await client.get(b"survivor") == b"1"
        assert await client.lrange(b"list", 0, -1) == [b"a", b"b"]
    finally:
        await client.aclose()


async def test_data_dir_survives_stop_and_restart(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    server = server_factory(appendonly=True, data_dir=data_dir)
    client = aioredis.Redis.from_url(server.url)
    try:
        await client.set(b"kept", b"yes")
    finally:
        await client.aclose()
    server.stop()
    assert (data_dir / "server.log").is_file(), "a given data_dir is not deleted"

    server.restart()
    client = aioredis.Redis.from_url(server.url)
    try:
        assert await client.get(b"kept") == b"yes"
    finally:
        await client.aclose()


def test_restart_after_stop_with_temp_dir_is_refused(server_factory: ServerFactory) -> None:
    server = server_factory()
    server.stop()
    with pytest.raises(EmbeddedServerError, match="cannot restart"):
        server.restart()


def test_sync_context_manager_starts_and_stops() -> None:
    with EmbeddedServer() as server:
        assert server.running
        port, workdir = server.port, server.workdir
        assert "Ready to accept connections" in server.log_tail()
    assert not server.running
    assert _port_is_closed(port)
    assert not workdir.exists()


async def test_async_context_manager_starts_and_stops() -> None:
    async with EmbeddedServer() as server:
        client = aioredis.Redis.from_url(server.url)
        try:
            assert await client.ping() is True
        finally:
            await client.aclose()
        port = server.port
    assert not server.running
    assert _port_is_closed(port)


def test_missing_binary_names_what_was_tried(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(embedded.REDIS_BIN_ENV, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(
        embedded, "_WHEEL_BINARIES", (("relaygraph_no_such_wheel", "bin/valkey-server"),)
    )
    with pytest.raises(EmbeddedServerError) as info:
        EmbeddedServer()
    message = str(info.value)
    for probe in ("RELAYGRAPH_REDIS_BIN", "relaygraph_no_such_wheel", "valkey-server"):
        assert probe in message
    assert "'redis-server' on PATH (not found)" in info.value.tried


def test_explicit_binary_that_does_not_exist_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-server"
    with pytest.raises(EmbeddedServerError, match="no-such-server"):
        EmbeddedServer(missing)


def test_env_binary_that_does_not_exist_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(embedded.REDIS_BIN_ENV, "relaygraph-no-such-server")
    with pytest.raises(EmbeddedServerError, match="RELAYGRAPH_REDIS_BIN") as info:
        EmbeddedServer()
    assert "relaygraph-no-such-server" in str(info.value)


def test_early_exit_reports_the_server_log() -> None:
    server = EmbeddedServer(extra_args=["--no-such-directive", "1"])
    with pytest.raises(EmbeddedServerError, match="exited with status") as info:
        server.start()
    assert info.value.returncode not in (None, 0)
    assert info.value.log_tail and "no-such-directive" in info.value.log_tail
    server.stop()


@pytest.fixture
def occupied_port() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_lost_port_race_is_retried_on_another_port(
    monkeypatch: pytest.MonkeyPatch, server_factory: ServerFactory, occupied_port: int
) -> None:
    real_free_port = embedded._free_port
    offered: list[int] = []

    def racy_free_port(host: str) -> int:
        # The first probe "loses the race": another process already listens there.
        port = occupied_port if not offered else real_free_port(host)
        offered.append(port)
        return port

    monkeypatch.setattr(embedded, "_free_port", racy_free_port)
    server = server_factory()
    assert offered[0] == occupied_port
    assert server.port == offered[-1] != occupied_port
    assert len(offered) == 2


def test_given_port_in_use_fails_without_retry(occupied_port: int) -> None:
    server = EmbeddedServer(port=occupied_port)
    with pytest.raises(EmbeddedServerError, match="exited with status") as info:
        server.start()
    assert info.value.log_tail and "Address already in use" in info.value.log_tail
    server.stop()


def test_another_server_on_the_given_port_is_not_mistaken_for_ours(
    server_factory: ServerFactory,
) -> None:
    other = server_factory()
    with (
        pytest.raises(EmbeddedServerError, match="exited with status") as info,
        EmbeddedServer(port=other.port),
    ):
        pytest.fail("a server that did not bind its port must not count as started")
    assert info.value.log_tail and "Address already in use" in info.value.log_tail
    assert other.running


_ORPHAN_SCRIPT = """
import sys
from relaygraph.embedded import EmbeddedServer
server = EmbeddedServer(data_dir=sys.argv[1]).start()  # a dir pytest cleans up
print(server.pid, flush=True)
sys.stdin.read()  # block until the test kills us
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_server_dies_with_its_parent(tmp_path: Path) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", _ORPHAN_SCRIPT, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert parent.stdout is not None
        line = parent.stdout.readline()
        assert line.strip(), "the parent process failed to start a server"
        server_pid = int(line)
        assert not _process_gone(server_pid)
        os.kill(parent.pid, signal.SIGKILL)  # no chance to clean up: only the kernel can
        parent.wait()
        wait_until_sync(
            lambda: _process_gone(server_pid),
            timeout=5.0,
            message=f"server pid {server_pid} to die with its parent",
        )
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


# The two tests below each start by asserting an empty database and leave a key behind:
# whichever runs second passes only because the ``redis`` fixture flushes between tests.


async def test_redis_fixture_starts_empty_first(redis: aioredis.Redis) -> None:
    assert await redis.dbsize() == 0
    await redis.set(b"relaygraph:test:leftover", b"first")


async def test_redis_fixture_starts_empty_second(redis: aioredis.Redis) -> None:
    assert await redis.dbsize() == 0
    await redis.set(b"relaygraph:test:leftover", b"second")
