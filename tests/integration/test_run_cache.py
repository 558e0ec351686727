"""The dispatcher's run cache: the next event of a run this dispatcher wrote last is computed
from the cache and only applied (one round trip instead of two). A cache that went stale
(another dispatcher, a direct write, a run deleted) conflicts or is checked on a load, so the
end state is the one a dispatcher without the cache reaches."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError

from dispatcher.queue import JOB_KEY_PREFIX
from dispatcher.runcache import RunCache
from dispatcher.service import Dispatcher
from dispatcher.settings import DispatcherSettings
from graph_core import clock
from graph_core.events import CancelRequested
from graph_core.keys import ShardKeys
from graph_core.messages import SubmitRequest, encode_inbox, parse_inbox, parse_job_payload
from graph_core.model import Graph, Node
from tests.support.cluster_fault import client_fault
from tests.support.graphs import busy_graph
from tests.support.inbox import Entry, completed_report, drop_stamp, push, read
from tests.support.layout import SHARDS, ids_in_one_shard

pytestmark = pytest.mark.integration

NOW = 1_750_000_000.25  # one fixed time: with and without the cache write the same bytes
CHAIN = 6


@pytest.fixture(autouse=True)
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clock, "now", lambda: NOW)


def chain_graph() -> Graph:
    g = Graph(id="chain")
    g.add_nodes(
        Node("start", type="start"),
        *[Node(f"n{i}", type="work") for i in range(CHAIN)],
        Node("end", type="end"),
    )
    g.connect("start", *[f"n{i}" for i in range(CHAIN)], "end")
    return g.validate_graph()


async def _dispatcher(
    redis: aioredis.Redis, consumer: str = "d1", run_cache: int = 2048
) -> Dispatcher:
    d = Dispatcher(redis, DispatcherSettings(shards=SHARDS, consumer=consumer, run_cache=run_cache))
    await d.store.register_graph(chain_graph())
    await d.store.register_graph(busy_graph())
    await d._ensure_group()
    return d


def _submit(graph_id: str, run_id: str, n: int = 5) -> bytes:
    return encode_inbox(SubmitRequest(graph_id=graph_id, run_id=run_id, input={"n": n}))


def _shards(d: Dispatcher) -> list[ShardKeys]:
    """Every shard (one server: the only one)."""
    return [d.keys.shard(k) for k in range(max(1, d.keys.shards))]


def _shard_of(d: Dispatcher, entry: Entry) -> ShardKeys:
    """The shard whose inbox holds ``entry``: its run's."""
    return d.keys.shard_for(parse_inbox(entry[1][b"m"]).run_id)


async def _handle(redis: aioredis.Redis, d: Dispatcher, *messages: bytes) -> None:
    """Push ``messages`` and have ``d`` handle them, one entry at a time (light load)."""
    await push(redis, d, messages)
    for entry in await read(redis, d):
        await d._handle_batch([entry], _shard_of(d, entry))


async def _queued_reports(redis: aioredis.Redis, d: Dispatcher) -> list[bytes]:
    """What workers would do: take every queued job, in queue order, and report it done."""
    reports = []
    for shard in _shards(d):
        queue = shard.queue("default")
        for jid in await redis.zrange(queue, 0, -1):
            job = orjson.loads(await redis.get(JOB_KEY_PREFIX.encode() + jid))
            p = parse_job_payload(job["a"][0])
            reports.append(completed_report(p.run_id, p.node_id, p.visit, p.attempt))
        await redis.delete(queue)
    return reports


async def _pending(redis: aioredis.Redis, d: Dispatcher) -> int:
    """How many inbox entries are pending, over every shard."""
    return sum([(await redis.xpending(s.inbox, d.keys.inbox_group))["pending"] for s in _shards(d)])


async def _drive(redis: aioredis.Redis, d: Dispatcher, submits: list[bytes], batched: bool) -> None:
    await push(redis, d, submits)
    for _ in range(30):
        entries = await read(redis, d)
        if not entries:
            return
        # as the inbox loops would: each shard's entries (read shard by shard) are a batch
        for shard, of_shard in itertools.groupby(entries, key=lambda e: _shard_of(d, e)):
            batch = list(of_shard)
            for part in [batch] if batched else [[entry] for entry in batch]:
                await d._handle_batch(part, shard)
        await push(redis, d, await _queued_reports(redis, d))
    raise AssertionError("the runs did not settle")


async def _snapshot(redis: aioredis.Redis, d: Dispatcher, run_ids: list[str]) -> dict[str, Any]:
    state: dict[str, Any] = {}
    for run_id in run_ids:
        rk = d.keys.run(run_id)
        for name in ("meta", "nodes", "outputs", "joins", "loops", "active", "waits"):
            state[f"{run_id}:{name}"] = await redis.hgetall(getattr(rk, name))
        drop_stamp(state[f"{run_id}:meta"])
        state[f"{run_id}:events"] = [f for _, f in await redis.xrange(rk.events)]
    jobs = sorted({k async for k in redis.scan_iter(match=JOB_KEY_PREFIX + "*")})  # every node's
    state["jobs"] = {k: await redis.get(k) for k in jobs}
    state["pending"] = await _pending(redis, d)
    state["dead"] = await redis.xlen(d.keys.deadletter)
    return state


@pytest.mark.parametrize("batched", [False, True], ids=["one-by-one", "batched"])
async def test_runs_end_the_same_with_and_without_the_cache(
    redis: aioredis.Redis, batched: bool
) -> None:
    c1, c2, b1, b2 = ids_in_one_shard("r", 4)  # one inbox's: batched, one batch
    runs = [("chain", c1), ("chain", c2), ("busy", b1), ("busy", b2)]
    submits = [_submit(g, r, 150 if r == b2 else 5) for g, r in runs]
    ids = [r for _, r in runs]
    ends = []
    for run_cache in (2048, 0):
        await redis.flushall()
        d = await _dispatcher(redis, run_cache=run_cache)
        await _drive(redis, d, submits, batched)
        ends.append(await _snapshot(redis, d, ids))
        if run_cache:
            assert d.processor.cache.hits > 0 and d.processor.cache.conflicts == 0
            assert len(d.processor.cache) == 0  # every run finished: nothing left to cache
        else:
            assert d.processor.cache.hits == 0
    cached, uncached = ends
    assert cached == uncached
    for run_id in ids:
        run = orjson.loads(cached[f"{run_id}:meta"][b"run"])
        assert run["status"] == "completed", run
    assert cached["pending"] == 0 and cached["dead"] == 0


@contextmanager
def _counting_sends() -> Iterator[list[int]]:
    """Count the requests written to any Redis connection (a pipeline is one write: one
    round trip) while the block runs."""
    sent = [0]
    real = AbstractConnection.send_packed_command

    async def counted(self: AbstractConnection, command: Any, check_health: bool = True) -> None:
        sent[0] += 1
        await real(self, command, check_health)

    mp = pytest.MonkeyPatch()
    mp.setattr(AbstractConnection, "send_packed_command", counted)
    try:
        yield sent
    finally:
        mp.undo()


async def _round_trips_per_report(redis: aioredis.Redis, run_cache: int) -> list[int]:
    """Round trips ``_handle_batch`` makes for each report along a chain, one at a time."""
    d = await _dispatcher(redis, run_cache=run_cache)
    await _handle(redis, d, _submit("chain", "rt"))
    trips = []
    for i in range(CHAIN):
        await push(redis, d, [completed_report("rt", f"n{i}")])
        [entry] = await read(redis, d)
        with _counting_sends() as sent:
            await d._handle_batch([entry], d.keys.shard_for("rt"))
        trips.append(sent[0])
    run = await d.store.get_run("rt")
    assert run is not None and run.status.value == "completed"
    return trips


async def test_a_transition_under_light_load_takes_one_round_trip(redis: aioredis.Redis) -> None:
    uncached = await _round_trips_per_report(redis, run_cache=0)
    await redis.flushall()
    cached = await _round_trips_per_report(redis, run_cache=2048)
    # Without the cache: the load, then the apply; the last report also reads the live
    # frontier to finish the run. With it: the apply alone (the cache knows the frontier).
    assert uncached == [2] * (CHAIN - 1) + [3]
    assert cached == [1] * CHAIN


async def test_a_run_moved_by_a_direct_write_conflicts_and_is_reloaded(
    redis: aioredis.Redis,
) -> None:
    d = await _dispatcher(redis)
    await _handle(redis, d, _submit("chain", "w"), completed_report("w", "n0"))
    assert "w" in d.processor.cache
    rk = d.keys.run("w")
    # Someone else's write (as apply.lua makes them): the cached state is stale.
    run = orjson.loads(await redis.hget(rk.meta, "run"))
    run["rev"] += 1
    rev = run["rev"]
    await redis.hset(rk.meta, mapping={"run": orjson.dumps(run), "rev": rev})

    await _handle(redis, d, completed_report("w", "n1"))

    assert d.processor.cache.conflicts == 1
    assert int(await redis.hget(rk.meta, "rev")) == rev + 1  # applied once, after a reload
    nodes = await d.store.node_records("w")
    assert nodes["n1"].status.value == "completed" and nodes["n2"].status.value == "queued"
    history = await d.store.history("w")
    assert [e["node_id"] for e in history if e["type"] == "node.completed"] == [
        "start",
        "n0",
        "n1",
    ]
    assert await _pending(redis, d) == 0


async def test_a_run_moved_by_another_dispatcher_is_reloaded(redis: aioredis.Redis) -> None:
    d1 = await _dispatcher(redis, consumer="d1")
    d2 = await _dispatcher(redis, consumer="d2")
    await _handle(redis, d1, _submit("chain", "m"), completed_report("m", "n0"))
    await _handle(
        redis, d2, completed_report("m", "n1")
    )  # d1's cached state no longer is the run's
    # By d1's stale state, n2 was never queued: its report would be ignored as stale. An
    # ignore is never taken from the cache: d1 loads the run and applies the report.
    await _handle(redis, d1, completed_report("m", "n2"), completed_report("m", "n3"))
    for i in range(4, CHAIN):
        await _handle(redis, d1, completed_report("m", f"n{i}"))

    run = await d1.store.get_run("m")
    assert run is not None and run.status.value == "completed"
    history = await d1.store.history("m")
    completed = [e["node_id"] for e in history if e["type"] == "node.completed"]
    assert completed == ["start", *[f"n{i}" for i in range(CHAIN)], "end"]
    assert await _pending(redis, d1) == 0
    assert "m" not in d1.processor.cache  # finished


async def test_a_deleted_run_is_not_resurrected_by_its_cached_state(
    redis: aioredis.Redis,
) -> None:
    d = await _dispatcher(redis)
    await _handle(redis, d, _submit("chain", "gone"), completed_report("gone", "n0"))
    assert "gone" in d.processor.cache
    rk = d.keys.run("gone")
    queue = d.keys.shard_for("gone").queue("default")
    await redis.delete(*rk.all())  # retention expired the run's keys, or it was pruned
    await redis.delete(queue)

    await _handle(redis, d, completed_report("gone", "n1"))

    # apply.lua reads the missing revision as -1: the cached apply conflicts, the reload
    # finds no run, and the report is ignored. Nothing of the run is written again.
    assert d.processor.cache.conflicts == 1
    assert "gone" not in d.processor.cache
    assert await redis.exists(*rk.all()) == 0
    assert await redis.zcard(queue) == 0
    assert await _pending(redis, d) == 0


async def test_the_cache_keeps_at_most_its_size_most_recent_runs(
    redis: aioredis.Redis,
) -> None:
    d = await _dispatcher(redis, run_cache=3)
    runs = ids_in_one_shard("s", 8)  # one inbox's: handled in the order submitted
    await _handle(redis, d, *[_submit("chain", run_id) for run_id in runs])
    assert [run_id in d.processor.cache for run_id in runs] == [False] * 5 + [True] * 3
    await _handle(redis, d, completed_report(runs[0], "n0"))  # loaded again, most recent now
    assert [runs[i] in d.processor.cache for i in (0, 5, 6, 7)] == [True, False, True, True]
    assert len(d.processor.cache) == 3


async def test_the_cache_keeps_at_most_its_records(redis: aioredis.Redis) -> None:
    d = await _dispatcher(redis)
    d.processor.cache = RunCache(size=100, max_records=20)
    runs = ids_in_one_shard("r", 8)  # one inbox's: handled in the order submitted
    await _handle(redis, d, *[_submit("chain", run_id) for run_id in runs])
    cache = d.processor.cache
    assert 0 < cache.records <= 20 and 0 < len(cache) < 8
    assert runs[7] in cache and runs[0] not in cache


async def test_without_the_cache_nothing_is_kept(redis: aioredis.Redis) -> None:
    d = await _dispatcher(redis, run_cache=0)
    await _handle(redis, d, _submit("chain", "z"), completed_report("z", "n0"))
    assert len(d.processor.cache) == 0 and d.processor.cache.records == 0


async def _dump_run(redis: aioredis.Redis, d: Dispatcher, run_id: str) -> dict[str, bytes]:
    """The run's keys as a snapshot (RDB, a replica) holds them."""
    dumped = {}
    for key in d.keys.run(run_id).all():
        raw = await redis.dump(key)
        if raw is not None:
            dumped[key] = raw
    return dumped


async def _restore_run(
    redis: aioredis.Redis, d: Dispatcher, run_id: str, dumped: dict[str, bytes]
) -> None:
    """Redis lost the writes made since ``dumped`` (a restart with appendfsync everysec, a
    failover to a lagging replica): the run's keys are back as they were."""
    await redis.delete(*d.keys.run(run_id).all())
    for key, raw in dumped.items():
        await redis.restore(key, 0, raw)


async def test_a_run_rewritten_at_the_cached_revision_after_lost_writes_conflicts(
    redis: aioredis.Redis,
) -> None:
    d1 = await _dispatcher(redis, consumer="d1")
    d2 = await _dispatcher(redis, consumer="d2")
    await _handle(redis, d1, _submit("chain", "lost"))
    before = await _dump_run(redis, d1, "lost")  # at revision R-1
    await _handle(redis, d1, completed_report("lost", "n0"))  # R: n0 completed, n1 queued; cached
    rk = d1.keys.run("lost")
    rev = int(await redis.hget(rk.meta, "rev"))
    assert "lost" in d1.processor.cache
    await _restore_run(redis, d1, "lost", before)  # Redis lost d1's write: back at R-1
    # d2 moves the run from R-1 to R, with other content: it cancels it.
    await _handle(redis, d2, encode_inbox(CancelRequested(run_id="lost", reason="lost write")))
    assert int(await redis.hget(rk.meta, "rev")) == rev
    queue = d1.keys.shard_for("lost").queue("default")
    await redis.delete(queue)

    # By d1's cached state (R, n1 queued) the report completes n1 and queues n2. Only the
    # stamp tells the two states at R apart: the cached apply conflicts, the reload finds
    # the run cancelled, and the report is ignored.
    await _handle(redis, d1, completed_report("lost", "n1"))

    assert d1.processor.cache.conflicts == 1
    assert "lost" not in d1.processor.cache
    run = await d1.store.get_run("lost")
    assert run is not None and run.status.value == "cancelled" and run.rev == rev
    nodes = await d1.store.node_records("lost")
    assert nodes["n0"].status.value == "cancelled" and "n1" not in nodes  # never queued
    assert await redis.zcard(queue) == 0
    history = await d1.store.history("lost")
    assert [e["type"] for e in history][-1] == "run.cancelled"
    assert await _pending(redis, d1) == 0


async def test_a_cached_state_never_matches_a_run_without_a_stamp(
    redis: aioredis.Redis,
) -> None:
    d = await _dispatcher(redis)
    await _handle(redis, d, _submit("chain", "bare"), completed_report("bare", "n0"))
    rk = d.keys.run("bare")
    rev = int(await redis.hget(rk.meta, "rev"))
    # The same revision, written by something that sets no stamp (restored from a backup of
    # an older version, say): a missing stamp is "cannot use the cache", never a match.
    await redis.hdel(rk.meta, "stamp")

    await _handle(redis, d, completed_report("bare", "n1"))

    assert d.processor.cache.conflicts == 1
    assert int(await redis.hget(rk.meta, "rev")) == rev + 1  # applied once, after a reload
    assert len(await redis.hget(rk.meta, "stamp")) == 16
    nodes = await d.store.node_records("bare")
    assert nodes["n1"].status.value == "completed" and nodes["n2"].status.value == "queued"
    assert "bare" in d.processor.cache  # cached again, with the stamp it wrote
    await _handle(redis, d, completed_report("bare", "n2"))
    assert d.processor.cache.conflicts == 1  # and used: no second conflict


async def test_losing_redis_in_any_loop_clears_the_cache(redis: aioredis.Redis) -> None:
    d = await _dispatcher(redis)
    await _handle(redis, d, _submit("chain", "c"), completed_report("c", "n0"))
    assert "c" in d.processor.cache
    stop = asyncio.Event()

    async def reclaim(stop: asyncio.Event) -> None:  # e.g. XAUTOCLAIM on a dead connection
        stop.set()
        raise RedisConnectionError("server went away")

    await d._supervise("reclaim", reclaim, stop)

    assert len(d.processor.cache) == 0 and d.processor.cache.records == 0


async def test_a_loop_survives_the_cluster_clients_fault_but_not_a_bug(
    redis: aioredis.Redis,
) -> None:
    """redis-py's cluster client failing inside itself mid-reset (redis/redis-py#3835) is
    an outage: the loop backs off and goes on. Any other AttributeError is a bug, raised."""
    d = await _dispatcher(redis)
    fault = await client_fault()
    stop = asyncio.Event()
    seen: list[str] = []

    async def reads(stop: asyncio.Event) -> None:
        seen.append("try")
        if len(seen) == 1:
            raise fault
        stop.set()

    await d._supervise("inbox", reads, stop)
    assert seen == ["try", "try"]  # tried again after the fault

    async def buggy(stop: asyncio.Event) -> None:
        None.name  # type: ignore[attr-defined]  # noqa: B018

    with pytest.raises(AttributeError):
        await d._supervise("inbox", buggy, asyncio.Event())
