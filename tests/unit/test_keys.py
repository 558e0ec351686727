"""The key layouts (graph_core/keys.py): one server's names as documented, and the sharded
layout's promise that a run's keys and its shard's share one Redis Cluster slot."""

from __future__ import annotations

import collections
import random
import string
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.crc import key_slot as redis_key_slot

from graph_core.errors import RelaygraphError
from graph_core.keys import (
    CLUSTER_SLOTS,
    MAX_SHARDS,
    Keys,
    ShardKeys,
    key_slot,
    shard_of,
    shard_tag,
)

run_ids = st.text(alphabet=string.ascii_letters + string.digits + "_-", min_size=1, max_size=128)
shard_counts = st.integers(min_value=1, max_value=MAX_SHARDS)


def _shard_keys(sk: ShardKeys) -> list[str]:
    return [
        sk.inbox,
        sk.timers,
        sk.leases,
        sk.inbox_attempts,
        sk.runs_all,
        sk.abort,
        sk.runs_by_status("running"),
        sk.runs_by_graph("a graph {with} braces"),
        sk.queue("default"),
        sk.wake("default"),
        sk.child_cancelled("child-1"),
        sk.approval_seen("ab" * 32),
    ]


@given(st.binary(max_size=40) | st.text(alphabet="{}ab:-", max_size=12))
def test_key_slot_is_redis_clusters(key: bytes | str) -> None:
    raw = key.encode() if isinstance(key, str) else key
    assert key_slot(key) == redis_key_slot(raw)


def test_one_server_names_are_the_documented_ones() -> None:
    keys = Keys("rg")
    assert not keys.sharded
    assert (keys.inbox, keys.timers, keys.leases) == ("rg:inbox", "rg:timers", "rg:leases")
    assert (keys.inbox_attempts, keys.runs_all) == ("rg:inbox:attempts", "rg:runs")
    assert keys.runs_by_status("failed") == "rg:runs:failed"
    assert keys.runs_by_graph("g") == "rg:graph-runs:g"
    assert (keys.queue("q"), keys.wake("q")) == ("rg:queue:q", "rg:wake:q")
    assert keys.child_cancelled("r") == "rg:child-cancelled:r"
    assert keys.approval_seen("d") == "rg:approvals:seen:d"
    assert keys.shard(0).abort == "arq:abort"  # arq's own
    assert keys.run("r1").meta == "rg:run:{r1}:meta"
    assert (keys.limits, keys.limit_running("queue:q")) == (
        "rg:limits",
        "rg:limits:running:queue:q",
    )
    assert keys.shard_for("anything") is keys.shard(0)


@settings(max_examples=300)
@given(run_id=run_ids, shards=shard_counts)
def test_a_runs_keys_and_its_shards_share_one_slot_in_the_shards_share(
    run_id: str, shards: int
) -> None:
    keys = Keys("relaygraph", shards=shards)
    shard = keys.shard_for(run_id)
    assert shard.shard == zlib.crc32(run_id.encode()) % shards
    slots = {key_slot(k) for k in (*keys.run(run_id).all(), *_shard_keys(shard))}
    assert len(slots) == 1
    [slot] = slots
    assert (
        shard.shard * CLUSTER_SLOTS // shards <= slot < (shard.shard + 1) * CLUSTER_SLOTS // shards
    )
    assert all(k.startswith("relaygraph:") for k in keys.run(run_id).all())  # ACLs by prefix


def test_the_limits_share_a_slot_of_their_own() -> None:
    keys = Keys("relaygraph", shards=16)
    limits = [
        keys.limits,
        keys.limits_throttled,
        keys.limit_running("queue:llm"),
        keys.limit_bucket("type:agent"),
        keys.limit_held("queue:{odd}"),
    ]
    assert len({key_slot(k) for k in limits}) == 1


def test_sharded_the_fleet_wide_names_of_per_shard_keys_are_refused() -> None:
    keys = Keys("relaygraph", shards=4)
    for name in ("inbox", "timers", "leases", "inbox_attempts", "runs_all"):
        with pytest.raises(RelaygraphError, match="per shard"):
            getattr(keys, name)
    with pytest.raises(RelaygraphError, match="per shard"):
        keys.queue("default")
    with pytest.raises(RelaygraphError, match="no shard 4"):
        keys.shard(4)
    assert keys.graphs == "relaygraph:graphs"  # single keys keep their names


@pytest.mark.parametrize("bad", [-1, MAX_SHARDS + 1, True, 2.0, "16"])
def test_a_bad_shard_count_is_refused(bad: object) -> None:
    with pytest.raises(RelaygraphError, match="invalid shard count"):
        Keys("relaygraph", shards=bad)  # type: ignore[arg-type]


def test_shard_tags_are_stable_and_spread_like_the_slots() -> None:
    """The rule raw submitters are told: fixed values, not just self-consistency."""
    assert zlib.crc32(b"run-1") == 711_764_195 and shard_of("run-1", 16) == 3
    assert shard_of("run-1", 1) == shard_of("run-1", 0) == 0
    assert [shard_tag(k, 16) for k in range(4)] == ["s0-60", "s1-63", "s2-40", "s3-43"]
    assert Keys("rg", shards=16).shard_for("run-1").inbox == "rg:{s3-43}:inbox"
    assert Keys("rg", shards=16).run("run-1").meta == "rg:{s3-43}:run:run-1:meta"
    for shards in (1, 3, 16, MAX_SHARDS):
        tags = [shard_tag(k, shards) for k in range(shards)]
        assert len(set(tags)) == shards and all(t.startswith(f"s{k}-") for k, t in enumerate(tags))
        # three primaries holding even ranges of slots hold even numbers of shards
        per_primary = collections.Counter(key_slot(t) * 3 // CLUSTER_SLOTS for t in tags)
        assert max(per_primary.values()) - min(per_primary.values(), default=0) <= 1


def test_runs_spread_over_the_shards() -> None:
    rng = random.Random(7)
    counts = collections.Counter(
        shard_of("".join(rng.choices(string.ascii_lowercase, k=12)), 16) for _ in range(16_000)
    )
    assert len(counts) == 16 and all(800 <= n <= 1200 for n in counts.values())
