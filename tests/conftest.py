"""Fixtures shared by the whole suite: a real throwaway server, clients, server factories.

Tests that use a real server (``redis_server``, ``redis_url``, ``redis``, ``server_factory``)
are marked ``integration`` automatically, so ``pytest -m "not integration"`` runs the pure
and fakeredis tests alone.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import fakeredis
import pytest
import redis.asyncio as aioredis

from dispatcher.connect import connect
from relaygraph.embedded import EmbeddedServer
from relaygraph.embedded_cluster import EmbeddedCluster
from tests.support.layout import CLUSTER, SHARDS
from tests.support.servers import ExternalServer, ServerFactory, cluster_url

TEST_REDIS_URL_ENV = "RELAYGRAPH_TEST_REDIS_URL"
_REAL_SERVER_FIXTURES = frozenset({"redis_server", "redis_url", "redis", "server_factory"})


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedServer | ExternalServer]:
    """One throwaway server for the whole session.

    Setting ``RELAYGRAPH_TEST_REDIS_URL`` points the suite at an existing server instead.
    That is for debugging only (e.g. watching with MONITOR): the ``redis`` fixture runs
    FLUSHALL on it before every test. Tests that kill or restart a server must use
    ``server_factory``, never this shared one.
    """
    external = os.environ.get(TEST_REDIS_URL_ENV)
    if CLUSTER:
        with EmbeddedCluster(primaries=3) as cluster:
            yield ExternalServer(cluster_url(cluster))
        return
    if external:
        yield ExternalServer(external)
        return
    with EmbeddedServer() as server:
        yield server


@pytest.fixture(scope="session")
def redis_url(redis_server: EmbeddedServer | ExternalServer) -> str:
    return redis_server.url


@pytest.fixture(name="redis")
async def redis_client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """An async client (bytes replies) on the session server, emptied before the test."""
    client = connect(redis_url, decode_responses=False)
    await client.flushall()
    yield client
    await client.aclose()


@pytest.fixture
async def fake_redis() -> AsyncIterator[fakeredis.FakeAsyncRedis]:
    """An async fakeredis client on its own fresh in-memory server (store-logic tests only)."""
    client = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer(), decode_responses=False)
    yield client
    await client.aclose()


@pytest.fixture
def server_factory() -> Iterator[ServerFactory]:
    factory = ServerFactory()
    yield factory
    factory.stop_all()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _REAL_SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


def pytest_configure(config: pytest.Config) -> None:
    if CLUSTER:  # every process a test starts is sharded
        os.environ["RELAYGRAPH_SHARDS"] = str(SHARDS)
