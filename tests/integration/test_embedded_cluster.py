"""The local cluster the cluster tests and the bench start: `EmbeddedCluster` joins real
cluster-enabled servers, and a killed primary is replaced by its replica."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
import redis

from relaygraph.embedded import EmbeddedServerError
from relaygraph.embedded_cluster import SLOTS, EmbeddedCluster

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster() -> Iterator[EmbeddedCluster]:
    with EmbeddedCluster(primaries=3) as c:
        yield c


def test_three_primaries_serve_every_slot_once(cluster: EmbeddedCluster) -> None:
    nodes = cluster.nodes()
    assert sorted(n.role for n in nodes) == ["primary"] * 3
    ranges = sorted(r for n in nodes for r in n.slots)
    assert ranges[0][0] == 0 and ranges[-1][1] == SLOTS - 1
    for (_, hi), (lo, _) in itertools.pairwise(ranges):
        assert lo == hi + 1  # no gap, no overlap
    assert {n.port for n in nodes} == set(cluster.ports)


def test_keys_spread_over_the_primaries_and_a_cross_slot_command_is_refused(
    cluster: EmbeddedCluster,
) -> None:
    client = cluster.client()
    try:
        client.flushall()
        for i in range(60):
            client.set(f"spread:{i}", i)
        per_node = [redis.Redis(port=p).dbsize() for p in cluster.ports]
        assert sum(per_node) == 60 and all(n > 0 for n in per_node), per_node
        # two keys of different slots that one node serves: the server itself refuses them
        index = cluster.primary_for(client.keyslot("spread:0"))
        same_node = [
            f"spread:{i}"
            for i in range(60)
            if cluster.primary_for(client.keyslot(f"spread:{i}")) == index
        ]
        a, b = (
            same_node[0],
            next(k for k in same_node if client.keyslot(k) != client.keyslot(same_node[0])),
        )
        direct = redis.Redis(port=cluster.ports[index])
        with pytest.raises(redis.ResponseError, match="CROSSSLOT"):
            direct.mget(a, b)
        # keys sharing a hash tag share a slot, and a multi-key command on them is fine
        assert client.mset({"{run-1}:a": 1, "{run-1}:b": 2})
        assert client.keyslot("{run-1}:a") == client.keyslot("{run-1}:b")
    finally:
        client.close()


def test_a_killed_primary_is_replaced_by_its_replica_and_keeps_acknowledged_writes() -> None:
    with EmbeddedCluster(primaries=3, replicas=1, node_timeout_ms=500) as cluster:
        client = cluster.client()
        try:
            client.set("survives", "yes")
            node = client.get_node_from_key("survives")
            # acknowledged by the replica too, so failover cannot lose it
            assert client.execute_command("WAIT", 1, 5000, target_nodes=node) == 1
            slot = client.keyslot("survives")
            old = cluster.primary_for(slot)
            [replica] = cluster.replicas_of(old)
            assert cluster.replication_offset(replica) >= cluster.replication_offset(old) > 0
            cluster.kill(old)
            cluster.wait_ok(30)
            new = cluster.primary_for(slot)
            assert new != old and cluster.servers[new].running
            assert redis.Redis(port=cluster.ports[new]).get("survives") == b"yes"
            # the killed node comes back as a replica of the one that replaced it
            cluster.restart(old)
            cluster.wait_ok(30)
            back = {n.port: n for n in cluster.nodes()}[cluster.ports[old]]
            promoted = {n.port: n for n in cluster.nodes()}[cluster.ports[new]]
            assert back.role == "replica" and back.primary_id == promoted.node_id
        finally:
            client.close()
    assert not any(s.running for s in cluster.servers)


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"primaries": 0}, ">= 1 primary"),
        ({"replicas": -1}, ">= 0 replicas"),
        ({"node_timeout_ms": 10}, "node_timeout_ms 10"),
    ],
)
def test_a_cluster_that_cannot_be_is_refused_naming_why(kwargs: dict[str, int], named: str) -> None:
    with pytest.raises(EmbeddedServerError, match=named):
        EmbeddedCluster(**kwargs)


def test_a_cluster_with_a_primary_killed_and_no_replica_is_not_healthy() -> None:
    """Right after the kill the others still name the dead node as the slots' owner: that is
    not healthy (no failover happened), and without a replica it never becomes so."""
    with EmbeddedCluster(primaries=2) as cluster:
        cluster.kill(1)
        with pytest.raises(EmbeddedServerError, match=f"port {cluster.ports[1]}|unserved"):
            cluster.wait_ok(timeout=1.0)
