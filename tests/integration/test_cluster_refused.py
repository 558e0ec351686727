"""A Redis Cluster is reached with ``redis+cluster://`` and the sharded layout
(docs/cluster-plan.md). Pointed at a cluster node with a plain URL, every process says so
plainly, before writing anything, instead of failing later on a MOVED or CROSSSLOT reply
with a traceback; with a cluster URL but without shards, a dispatcher says what to set."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio as aioredis

from dispatcher.connect import connect, refuse_cluster
from dispatcher.service import Dispatcher
from dispatcher.settings import DispatcherSettings
from graph_core.errors import RelaygraphError
from graph_core.redis_url import ClusterUnsupported
from relaygraph.cli import main
from relaygraph.embedded_cluster import EmbeddedCluster
from tests.support.layout import one_server_only

pytestmark = pytest.mark.integration

GRAPH = "examples/bug_triage/graph.json"
HANDLERS = "examples.bug_triage.handlers"
SAID = "is a Redis Cluster node (cluster mode on), reached with a plain redis:// URL"


@pytest.fixture(autouse=True)
def _one_servers_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    """What these processes are started with: no shards (the suite's cluster mode sets some)."""
    monkeypatch.delenv("RELAYGRAPH_SHARDS", raising=False)


@pytest.fixture(scope="module")
def cluster() -> Iterator[EmbeddedCluster]:
    with EmbeddedCluster(primaries=3) as c:
        yield c


def _keys_stored(cluster: EmbeddedCluster) -> int:
    return sum(redis.Redis(port=p).dbsize() for p in cluster.ports)


async def test_a_dispatcher_refuses_a_cluster_before_writing_anything(
    cluster: EmbeddedCluster,
) -> None:
    client = connect(cluster.url)
    try:
        dispatcher = Dispatcher(client, DispatcherSettings(redis_url=cluster.url))
        with pytest.raises(ClusterUnsupported, match="Redis Cluster node"):
            await dispatcher.run()
        assert not dispatcher.ready.is_set()
    finally:
        await client.aclose()
    assert _keys_stored(cluster) == 0


@pytest.mark.parametrize(
    "argv",
    [
        ["register", GRAPH],  # a client command: its first write meets MOVED or CROSSSLOT
        ["submit", "bug-triage", "--input", '{"title": "t", "body": "b"}'],
        ["dispatcher"],
        ["api", "--port", "1"],  # refused before it would try to listen
    ],
    ids=["register", "submit", "dispatcher", "api"],
)
def test_the_cli_says_a_cluster_is_not_supported_without_a_traceback(
    cluster: EmbeddedCluster, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*argv, "--redis", cluster.url]) == 1
    err = capsys.readouterr().err
    assert err.startswith("relaygraph: error: the Redis server") and SAID in err, err
    assert "Traceback" not in err
    assert _keys_stored(cluster) == 0


def test_a_worker_refuses_a_cluster(cluster: EmbeddedCluster) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "worker", "--redis", cluster.url, "--handlers", HANDLERS],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert SAID in done.stderr and "Traceback" not in done.stderr
    assert _keys_stored(cluster) == 0


@one_server_only  # the suite's server is the one server here
async def test_a_single_server_or_a_user_who_may_not_run_info_is_not_refused(
    redis: aioredis.Redis, redis_url: str
) -> None:
    await refuse_cluster(redis)  # the suite's own server: cluster mode off
    user, password = "rg-no-info", "pw-2f9a"
    await redis.acl_setuser(
        user, enabled=True, reset=True, passwords=[f"+{password}"], commands=["+@all", "-info"]
    )
    limited = aioredis.Redis.from_url(redis_url, username=user, password=password)
    try:
        await refuse_cluster(limited)  # cannot tell: says nothing, its commands will
    finally:
        await limited.aclose()
        await redis.acl_deluser(user)


def test_where_info_is_refused_the_cli_names_the_cluster_from_its_replies(
    cluster: EmbeddedCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    """A user who may not run INFO: the start-up check cannot tell, so the CLI reads the
    first MOVED or CROSSSLOT reply for what it is, and says the same, without a traceback."""
    user, password = "rg-no-info", "pw-5d1c"
    nodes = [redis.Redis(port=p) for p in cluster.ports]
    for node in nodes:
        node.acl_setuser(
            user, enabled=True, reset=True, passwords=[f"+{password}"], keys=["*"],
            channels=["*"], commands=["+@all", "-info"],
        )  # fmt: skip
    url = cluster.url.replace("redis://", f"redis://{user}:{password}@")
    try:
        assert main(["register", GRAPH, "--redis", url]) == 1
        err = capsys.readouterr().err
        assert SAID in err and "Traceback" not in err, err
    finally:
        for node in nodes:
            node.acl_deluser(user)
            node.flushall()  # what the register wrote before its first MOVED
            node.close()


async def test_a_cluster_url_without_shards_is_refused_naming_the_setting(
    cluster: EmbeddedCluster,
) -> None:
    url = f"redis+cluster://127.0.0.1:{cluster.ports[0]}"
    redis_client = connect(url)
    try:
        with pytest.raises(RelaygraphError, match="RELAYGRAPH_SHARDS"):
            await Dispatcher(redis_client, DispatcherSettings(redis_url=url)).run()
    finally:
        await redis_client.aclose()
    assert _keys_stored(cluster) == 0
