"""Fixtures of the fault tests: process fleets (with their logs on failure), clients on a
fresh key prefix, and the measurements file."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from dispatcher.client import WorkflowClient
from relaygraph.embedded import EmbeddedServer
from tests.faults.handlers import Marks
from tests.faults.observe import Observer
from tests.faults.procs import Fleet
from tests.support.servers import ServerFactory

MEASUREMENTS_FILE = "faults-measurements.json"


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep each phase's report on the item, so fixtures can tell that the test failed."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def failed(request: pytest.FixtureRequest) -> bool:
    node = request.node
    return any(
        getattr(getattr(node, f"rep_{when}", None), "failed", False) for when in ("setup", "call")
    )


def new_prefix(label: str) -> str:
    return f"faults-{label}-{secrets.token_hex(3)}"


class Deployment:
    """A fleet of processes plus the clients a test uses on its key prefix."""

    def __init__(self, redis_url: str, prefix: str, log_dir: Path) -> None:
        self.redis_url = redis_url
        self.prefix = prefix
        self.fleet = Fleet(redis_url, prefix, log_dir)
        self.client = WorkflowClient.from_url(redis_url, prefix=prefix)
        self.redis: Any = aioredis.Redis.from_url(redis_url)
        self.marks = Marks(prefix)
        self.observe = Observer(self.redis, self.client.keys, self.marks)

    async def aclose(self) -> None:
        await self.client.aclose()
        await self.redis.aclose()


@pytest.fixture
async def deployment(
    request: pytest.FixtureRequest, redis_url: str, tmp_path: Path
) -> AsyncIterator[Deployment]:
    """A fresh key prefix on the session server, with no processes yet (the test starts
    what it needs through ``deployment.fleet``); every process is stopped afterwards and
    all their logs are printed if the test failed."""
    dep = Deployment(redis_url, new_prefix(request.node.name[:20]), tmp_path / "logs")
    try:
        yield dep
    finally:
        dep.fleet.stop_all()
        if failed(request):
            dep.fleet.dump_logs()
        await dep.aclose()


@pytest.fixture
async def aof(
    request: pytest.FixtureRequest, server_factory: ServerFactory, tmp_path: Path
) -> AsyncIterator[tuple[EmbeddedServer, Deployment]]:
    """A server of its own that fsyncs every write (appendfsync always), and a deployment on
    it, for tests that crash the server and bring it back from its AOF."""
    server = server_factory(appendonly=True, appendfsync="always")
    dep = Deployment(server.url, new_prefix(request.node.name[:20]), tmp_path / "logs")
    try:
        yield server, dep
    finally:
        dep.fleet.stop_all()
        if failed(request):
            dep.fleet.dump_logs()
        await dep.aclose()


@pytest.fixture(scope="session")
def measurements(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Numbers the tests measured; written as JSON into pytest's temp dir at the end."""
    found: dict[str, Any] = {}
    yield found
    if found:
        path = tmp_path_factory.getbasetemp() / MEASUREMENTS_FILE
        path.write_text(json.dumps(found, indent=2, sort_keys=True))
        print(f"\nfault measurements written to {path}")
