"""What the processes do about redis-py's cluster client: the startup nodes it drops after
a failover are put back, and the lease heartbeat outlives its errors (a cluster's
"cannot be connected" is no RedisError)."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from redis.asyncio.cluster import ClusterNode
from redis.exceptions import NoScriptError, RedisClusterException, ResponseError

from dispatcher.connect import check_layout
from dispatcher.connect import redis_unavailable as dispatcher_unavailable
from graph_core.errors import RelaygraphError
from graph_core.keys import Keys
from graph_core.redis_url import is_cluster_request_error, is_redis_client_fault
from graph_core.resp import restore_seeds
from tests.support.cluster_fault import client_fault
from tests.support.waiting import wait_until_sync
from worker.heartbeat import Heartbeat
from worker.runner import redis_unavailable as worker_unavailable


def test_a_cluster_clients_dropped_startup_nodes_are_put_back() -> None:
    manager = SimpleNamespace(startup_nodes={}, connection_kwargs={})
    client = SimpleNamespace(nodes_manager=manager, relaygraph_seeds=(("127.0.0.1", 7000),))
    restore_seeds(client, ClusterNode)
    assert list(manager.startup_nodes) == ["127.0.0.1:7000"]
    known = manager.startup_nodes["127.0.0.1:7000"]
    restore_seeds(client, ClusterNode)  # one there already stays as it is
    assert manager.startup_nodes == {"127.0.0.1:7000": known}
    plain = SimpleNamespace()  # not a cluster client: nothing to do
    restore_seeds(plain, ClusterNode)


class _Unreachable:
    """A sync cluster client whose every pipeline finds no node (or, ``broken``, fails
    inside redis-py as its cluster client did once mid-reset: no default node)."""

    def __init__(self, broken: bool = False) -> None:
        self.tries = 0
        self.broken = broken

    def pipeline(self, transaction: bool = True) -> Any:
        return self

    def zadd(self, *args: Any, **kwargs: Any) -> None:
        return None

    def execute(self) -> None:
        self.tries += 1
        if self.broken:
            raise AttributeError("'NoneType' object has no attribute 'redis_connection'")
        raise RedisClusterException("Redis Cluster cannot be connected")

    def close(self) -> None:
        return None


@pytest.mark.parametrize("broken", [False, True], ids=["unreachable", "client-bug"])
def test_the_heartbeat_keeps_beating_through_a_cluster_that_cannot_be_connected(
    broken: bool,
) -> None:
    client = _Unreachable(broken)
    heartbeat = Heartbeat(client, "leases", lease_s=3, heartbeat_s=0.01, arq_lease_s=3)  # type: ignore[arg-type]
    try:
        heartbeat.hold(b"lease", None, None)
        wait_until_sync(lambda: client.tries >= 3, timeout=5, message="three beats tried")
        assert heartbeat._thread is not None and heartbeat._thread.is_alive()
    finally:
        heartbeat.stop()


@pytest.mark.parametrize("unavailable", [dispatcher_unavailable, worker_unavailable])
def test_a_cluster_client_refusing_the_request_is_no_outage(
    unavailable: Callable[[BaseException], bool],
) -> None:
    """Keys of several slots in one call fail the same way every time: the request's fault
    (a job id without its shard's tag, say), not a failover to wait out. The cluster
    client's other refusals (no node reachable, slots not yet covered) are outages."""
    for said in (
        "EVALSHA - all keys must map to the same key slot",
        "No way to dispatch this command to Redis Cluster. Missing key.",
        "transaction is deprecated in cluster mode",
    ):
        assert is_cluster_request_error(said)
        assert not unavailable(RedisClusterException(said)), said
    for said in (
        "Redis Cluster cannot be connected. Please provide at least one reachable node: x",
        "All slots are not covered after query all startup_nodes. 0 of 16384 covered...",
        "No targets were found to execute ('GET', 'k') command on",
    ):
        assert not is_cluster_request_error(said)
        assert unavailable(RedisClusterException(said)), said


class _Redis6:
    """Enough of an async client on a Redis 6 server (no shard channels) for
    ``check_layout``, its deployment laid out in ``layout`` shards."""

    def __init__(self, layout: bytes) -> None:
        self.layout = layout

    async def set(self, *args: Any, **kwargs: Any) -> bool:
        return False  # recorded already

    async def get(self, key: str) -> bytes:
        return self.layout

    async def execute_command(self, *args: Any) -> Any:
        raise ResponseError(
            "ERR Unknown subcommand or wrong number of arguments for 'SHARDNUMSUB'. "
            "Try PUBSUB HELP."
        )


async def test_a_dispatcher_refuses_the_sharded_layout_on_a_server_without_shard_channels() -> None:
    with pytest.raises(RelaygraphError, match="needs Redis or Valkey 7 or later: it publishes"):
        await check_layout(_Redis6(b"4"), Keys("r6", 4))
    await check_layout(_Redis6(b"0"), Keys("r6"))  # one server's layout: nothing to ask


@pytest.mark.parametrize("unavailable", [dispatcher_unavailable, worker_unavailable])
async def test_redis_pys_cluster_client_failing_mid_reset_is_an_outage_not_a_job_failure(
    unavailable: Callable[[BaseException], bool],
) -> None:
    """Seen on the failover test: a worker's reads met the reset and the node was failed
    for good. The error is redis-py's, about no request: the job runs again. An
    AttributeError raised anywhere else is a bug and stays one."""
    fault = await client_fault()
    assert is_redis_client_fault(fault) and unavailable(fault)
    # and the script a failover's new primary never loaded, after loading it once more
    assert unavailable(NoScriptError("No matching script. Please use EVAL."))

    def ours() -> None:
        None.name  # type: ignore[attr-defined]  # noqa: B018

    try:
        ours()
    except AttributeError as e:
        assert not is_redis_client_fault(e) and not unavailable(e)
    assert not is_redis_client_fault(AttributeError("never raised"))
    assert not is_redis_client_fault(RedisClusterException("x"))
