"""Dispatchers that serve assigned shards (``serve_shards``, ``--shards 0-1``) in the sharded
layout (4 shards on one server), and take over the shards of one that died
(dispatcher/ownership.py): each reads only its own shards' inboxes; when one stops without
releasing anything (a crash), the other takes its shards once their leases lapse, with an
inbox entry the dead one had read and not acknowledged; when it comes back, the shards are
handed back, and the other leases go on being renewed while a handed-back shard finishes
its batch. A clean stop releases the leases."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from dispatcher.connect import connect
from dispatcher.ownership import Ownership
from dispatcher.service import Dispatcher
from dispatcher.settings import DispatcherSettings
from graph_core.keys import Keys
from graph_core.messages import SubmitRequest, encode_inbox
from graph_core.model import Graph, Node
from tests.support.fake_worker import FakeWorker, running
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

SHARDS = 4
PREFIX = "shard-assign"
LEASE_S = 1.0
KEYS = Keys(PREFIX, SHARDS)

# A dead dispatcher's last read, while its lease still stands (so nobody else serves the
# shard yet): a submission put in the shard's inbox and read by that consumer, never acked.
_READ_BY_THE_DEAD = """
if not redis.call('GET', KEYS[1]) then return false end
local id = redis.call('XADD', KEYS[2], '*', 'm', ARGV[1])
redis.call('XREADGROUP', 'GROUP', ARGV[2], ARGV[3], 'COUNT', 1000, 'STREAMS', KEYS[2], '>')
return id
"""


def _graph() -> Graph:
    g = Graph(id="chain").add_nodes(
        Node("start", type="start"),
        Node("a", type="work"),
        Node("b", type="work"),
        Node("end", type="end"),
    )
    return g.connect("start", "a", "b", "end").validate_graph()


def _runs_in(shard: int, tag: str, n: int) -> list[str]:
    """``n`` run ids of ``shard``."""
    ids = (f"{tag}-{i}" for i in range(10_000))
    found = [r for r in ids if KEYS.shard_for(r).shard == shard]
    return found[:n]


class Served:
    """A dispatcher serving in a task, on a client of its own."""

    def __init__(self, url: str, consumer: str, spec: str) -> None:
        settings = DispatcherSettings(
            prefix=PREFIX,
            shards=SHARDS,
            serve_shards=spec,
            shard_lease_s=LEASE_S,
            claim_idle_s=1.0,
            consumer=consumer,
        )
        self.redis = connect(url)
        self.dispatcher = Dispatcher(self.redis, settings)
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(self.dispatcher.run(self.stop))

    async def ready(self) -> None:
        await wait_for(self.dispatcher.ready.is_set, message="dispatcher ready")

    def served(self) -> set[int]:
        return set(self.dispatcher.ownership.served)

    async def crash(self) -> None:
        """Stop at once, releasing nothing and leaving what it read unacknowledged."""
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await self.redis.aclose()

    async def close(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, timeout=20)
        await self.redis.aclose()


@contextlib.asynccontextmanager
async def worker(redis: Any) -> AsyncIterator[FakeWorker]:
    """Takes jobs off queue ``default`` of every shard, reports each to its run's inbox."""
    w = FakeWorker(redis, KEYS, {"*": lambda node_id, payload: {"node": node_id}})
    async with running(w):
        yield w


async def _submit(redis: Any, run_ids: list[str]) -> None:
    for run_id in run_ids:
        msg = SubmitRequest(graph_id="chain", run_id=run_id, input={})
        await redis.xadd(KEYS.shard_for(run_id).inbox, {"m": encode_inbox(msg)})


async def _completed(d: Dispatcher, run_ids: list[str]) -> None:
    left: list[str] = []

    async def done() -> bool:
        left[:] = []
        for run_id in run_ids:
            run = await d.store.get_run(run_id)
            if run is None or run.status.value != "completed":
                left.append(run_id)
        return not left

    await wait_for(done, timeout=20, interval=0.05, message=lambda: f"runs to complete: {left}")


async def _lease(redis: Any, shard: int) -> bytes | None:
    value: bytes | None = await redis.get(KEYS.shard(shard).dispatcher)
    return value


async def _readers(redis: Any, shard: int) -> set[str]:
    """The consumers that ever read shard ``shard``'s inbox."""
    found = await redis.xinfo_consumers(KEYS.shard(shard).inbox, KEYS.inbox_group)
    return {c["name"].decode() for c in found}


async def test_assigned_shards_taken_over_after_a_crash_and_handed_back(
    redis: aioredis.Redis, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="relaygraph.dispatcher")
    first, second = Served(redis_url, "d1", "0-1"), Served(redis_url, "d2", "2-3")
    await first.dispatcher.store.register_graph(_graph())
    runs = {k: _runs_in(k, "before", 3) for k in range(SHARDS)}
    async with worker(redis) as w:
        try:
            # 1. each serves its own shards; runs of every shard complete
            await first.ready()
            await second.ready()
            await _submit(redis, [r for k in runs for r in runs[k]])
            await _completed(first.dispatcher, [r for k in runs for r in runs[k]])
            assert (first.served(), second.served()) == ({0, 1}, {2, 3})
            assert [await _readers(redis, k) for k in range(SHARDS)] == [
                {"d1"},
                {"d1"},
                {"d2"},
                {"d2"},
            ]
            assert await _lease(redis, 0) == b"a:d1" and await _lease(redis, 3) == b"a:d2"

            # 2. the second crashes with a submission read and not acknowledged
            await second.crash()
            orphan = _runs_in(2, "orphan", 1)[0]
            read_by_the_dead = redis.register_script(_READ_BY_THE_DEAD)
            msg = encode_inbox(SubmitRequest(graph_id="chain", run_id=orphan, input={}))
            shard2 = KEYS.shard(2)
            entry = await read_by_the_dead(
                keys=[shard2.dispatcher, shard2.inbox], args=[msg, KEYS.inbox_group, "d2"]
            )
            assert entry, "the crashed dispatcher's lease lapsed before the test's read"
            pending = await redis.xpending_range(shard2.inbox, KEYS.inbox_group, "-", "+", 10)
            assert [(p["message_id"], p["consumer"]) for p in pending] == [(entry, b"d2")]
            during = {k: _runs_in(k, "during", 2) for k in (2, 3)}
            await _submit(redis, during[2] + during[3])
            await wait_for(
                lambda: first.served() == {0, 1, 2, 3},
                timeout=10,
                message=lambda: f"shards 2-3 taken over (served: {first.served()})",
            )
            assert first.dispatcher.ownership.taken == {2, 3}
            await _completed(first.dispatcher, [orphan, *during[2], *during[3]])
            assert await _lease(redis, 2) == b"t:d1"
            assert "taking over shard 2" in caplog.text and "taking over shard 3" in caplog.text
            assert "taking over shard 2 from d2: nobody has served it for" in caplog.text
            assert await redis.xpending(shard2.inbox, KEYS.inbox_group) == {
                "pending": 0,
                "min": None,
                "max": None,
                "consumers": [],
            }

            # 3. it comes back: the shards are handed back
            second = Served(redis_url, "d2", "2-3")
            await second.ready()
            await wait_for(
                lambda: first.served() == {0, 1} and "handed shard 3 back to d2" in caplog.text,
                timeout=10,
                message=lambda: f"shards 2-3 handed back (first serves {first.served()})",
            )
            assert "handed shard 2 back to d2" in caplog.text
            assert second.served() == {2, 3} and first.dispatcher.ownership.taken == set()
            assert await _lease(redis, 2) == b"a:d2"
            after = {k: _runs_in(k, "after", 2) for k in range(SHARDS)}
            await _submit(redis, [r for k in after for r in after[k]])
            await _completed(first.dispatcher, [r for k in after for r in after[k]])
        finally:
            await first.close()
            if not second.task.done():
                await second.close()
    # every node ran once, the crash and the hand-overs notwithstanding
    ran = [r for k in (runs, during, after) for rs in k.values() for r in rs] + [orphan]
    assert {(r, n) for r, n, _ in w.executions} == {(r, n) for r in ran for n in ("a", "b")}
    assert set(w.executions.values()) == {1}
    # a clean stop released every lease: another dispatcher may take the shards at once
    assert [await _lease(redis, k) for k in range(SHARDS)] == [None] * SHARDS


async def test_a_lone_dispatcher_takes_unserved_shards_after_one_lease(
    redis: aioredis.Redis, redis_url: str
) -> None:
    """Shards nobody is assigned are taken over (after one lease period, so that peers
    starting at the same time claim theirs first), and their runs complete."""
    lone = Served(redis_url, "lone", "0")
    await lone.dispatcher.store.register_graph(_graph())
    runs = [r for k in range(SHARDS) for r in _runs_in(k, "lone", 2)]
    async with worker(redis):
        try:
            await lone.ready()
            assert lone.served() == {0}
            await _submit(redis, runs)
            await wait_for(lambda: lone.served() == {0, 1, 2, 3}, message="shards 1-3 taken")
            await _completed(lone.dispatcher, runs)
            assert [await _lease(redis, k) for k in range(SHARDS)] == [
                b"a:lone",
                b"t:lone",
                b"t:lone",
                b"t:lone",
            ]
        finally:
            await lone.close()


async def test_leases_are_renewed_while_a_handed_back_shard_finishes_its_batch(
    redis: aioredis.Redis,
) -> None:
    """Shard 1 was taken over; its assigned dispatcher writes its lease again, so it is
    handed back: its loops are told to stop and finish the batch in hand, which takes a
    while here. Meanwhile the lease of shard 0 (assigned here) goes on being renewed: a
    slow batch must not let every other lease lapse (and the shards be taken by others)."""
    finishing = asyncio.Event()  # shard 1's loop, told to stop, is finishing its batch
    finished = asyncio.Event()  # ... until this is set

    def start_loops(shard: Any, stop: asyncio.Event) -> list[asyncio.Task[None]]:
        async def loop() -> None:
            await stop.wait()
            if shard.shard == 1:
                finishing.set()
                await finished.wait()

        return [asyncio.create_task(loop())]

    keys = Keys(PREFIX + "-renew", SHARDS)
    owner = Ownership(redis, keys, "here", frozenset({0}), LEASE_S, start_loops)
    owner.start()
    stop = asyncio.Event()
    running_ = asyncio.create_task(owner.run(stop))
    try:
        await wait_for(lambda: 1 in owner.served, timeout=10, message="shard 1 taken over")
        await redis.set(keys.shard(1).dispatcher, "a:assigned", px=60_000)  # it is back
        await wait_for(finishing.is_set, timeout=10, message="shard 1 handed back")
        renewals, last = 0, None

        async def renewed_twice() -> bool:  # pttl rises at each renewal
            nonlocal renewals, last
            ttl = await redis.pttl(keys.shard(0).dispatcher)
            assert ttl > 0, "shard 0's lease lapsed while shard 1 finished its batch"
            renewals += last is not None and ttl > last
            last = ttl
            return renewals >= 2

        await wait_for(renewed_twice, timeout=10, message="shard 0's lease renewed twice")
        assert await redis.get(keys.shard(0).dispatcher) == b"a:here"
        assert not running_.done() and 1 not in owner.served
    finally:
        finished.set()
        stop.set()
        await asyncio.wait_for(running_, timeout=10)
