"""The live events in the sharded layout (dispatcher/channels.py): each shard's channel is a
shard channel (SPUBLISH), heard on the node that serves its slot; ``open_events`` subscribes
to one run's shard or to every shard, over every primary of a cluster, and reads them as one
subscription."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import pytest
import redis
from redis.exceptions import ConnectionError as RedisConnectionError

from dispatcher.channels import open_events
from dispatcher.connect import connect
from graph_core.keys import Keys
from relaygraph.embedded_cluster import EmbeddedCluster
from tests.support.layout import subscribers
from tests.support.servers import cluster_url
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

KEYS = Keys("channels", 16)


@pytest.fixture(scope="module")
def cluster() -> Iterator[EmbeddedCluster]:
    with EmbeddedCluster(primaries=3) as c:
        yield c


@pytest.fixture
async def client(cluster: EmbeddedCluster) -> AsyncIterator[Any]:
    redis = connect(cluster_url(cluster))
    yield redis
    await redis.aclose()


async def _heard(subscription: Any, count: int) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []

    async def enough() -> bool:
        msg = await subscription.get_message(ignore_subscribe_messages=True, timeout=0.05)
        if msg is not None:
            seen.append(msg)
        return len(seen) >= count

    await wait_for(enough, timeout=10, message=lambda: f"{count} messages, heard {seen}")
    return seen


async def test_every_shards_events_reach_one_subscription_over_three_primaries(
    cluster: EmbeddedCluster, client: Any
) -> None:
    channels = [KEYS.shard(k).events_channel for k in range(KEYS.shards)]
    serving = {cluster.primary_for(client.keyslot(c)) for c in channels}
    assert serving == {0, 1, 2}  # the shards' channels live on every primary
    subscription = await open_events(client, KEYS)
    try:
        for channel in channels:  # subscribed on the node that serves each, once
            assert await subscribers(cluster_url(cluster), channel, shard_channel=True) == 1
        for k, channel in enumerate(channels):
            await client.execute_command("SPUBLISH", channel, orjson.dumps({"shard": k}))
        seen = await _heard(subscription, len(channels))
        assert {m["type"] for m in seen} == {"message"}
        assert sorted(orjson.loads(m["data"])["shard"] for m in seen) == list(range(16))
        assert {m["channel"].decode() for m in seen} == set(channels)
    finally:
        await subscription.aclose()
    for channel in channels:
        assert await subscribers(cluster_url(cluster), channel, shard_channel=True) == 0


async def test_one_runs_subscription_hears_its_shard_only(client: Any) -> None:
    mine = KEYS.shard_for("run-7")
    other = next(KEYS.shard(k) for k in range(KEYS.shards) if k != mine.shard)
    subscription = await open_events(client, KEYS, ["run-7"])
    try:
        await client.execute_command("SPUBLISH", other.events_channel, b'{"run_id": "x"}')
        await client.execute_command("SPUBLISH", mine.events_channel, b'{"run_id": "run-7"}')
        [msg] = await _heard(subscription, 1)
        assert msg["data"] == b'{"run_id": "run-7"}'
        assert await subscription.get_message(ignore_subscribe_messages=True, timeout=0.2) is None
    finally:
        await subscription.aclose()


def _move_slot(cluster: EmbeddedCluster, slot: int, to: int) -> None:
    """Hand ``slot`` (holding no key) to primary ``to``: every node is told its new owner,
    as a resharding tool does once the keys have moved."""
    target = next(n.node_id for n in cluster.nodes() if n.port == cluster.ports[to])
    for port in cluster.ports:
        node = redis.Redis(port=port)
        try:
            node.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target)
        finally:
            node.close()


async def test_a_subscription_whose_slot_moves_fails_and_a_new_one_follows_it(
    cluster: EmbeddedCluster, client: Any
) -> None:
    """Resharding: the node that gave the slot up unsubscribes its shard channel; the
    subscription says so (subscribe again), and a new one subscribes on the new owner."""
    shard = KEYS.shard_for("moving-run")
    slot = client.keyslot(shard.events_channel)
    source = cluster.primary_for(slot)
    target = (source + 1) % 3
    subscription = await open_events(client, KEYS, ["moving-run"])
    try:
        _move_slot(cluster, slot, target)
        with pytest.raises(RedisConnectionError, match="moved to another node"):
            await wait_for(  # raises once the source unsubscribes the channel
                lambda: subscription.get_message(ignore_subscribe_messages=True, timeout=0.1),
                timeout=10,
                message="the subscription to fail",
            )
        with pytest.raises(RedisConnectionError, match="subscribe again"):  # and stays failed
            await subscription.get_message(timeout=0)
    finally:
        await subscription.aclose()
    again = await open_events(client, KEYS, ["moving-run"])
    try:
        assert (
            await subscribers(cluster_url(cluster), shard.events_channel, shard_channel=True) == 1
        )
        await client.execute_command("SPUBLISH", shard.events_channel, b'{"run_id": "moving-run"}')
        [msg] = await _heard(again, 1)
        assert msg["data"] == b'{"run_id": "moving-run"}'
    finally:
        await again.aclose()
        _move_slot(cluster, slot, source)  # as it was, for the other tests
