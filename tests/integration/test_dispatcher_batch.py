"""The dispatcher handles a batch of inbox entries in rounds: one pipelined load and one
pipelined apply per round, each run's entries in inbox order. Batched or one by one, the end
state is the same; conflicts, poison and a lost connection behave as for a single entry."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ReadOnlyError, ResponseError

from dispatcher import batch as batch_module
from dispatcher import processor as processor_module
from dispatcher.loaded import NeedState
from dispatcher.prefetch import JOIN_GROUP_PREFETCH
from dispatcher.processor import Outcome
from dispatcher.queue import JOB_KEY_PREFIX
from dispatcher.runcache import DEFAULT_RUN_CACHE
from dispatcher.service import Dispatcher
from dispatcher.settings import DispatcherSettings
from dispatcher.store import ApplyCall, RedisView
from graph_core import clock
from graph_core.engine import advance
from graph_core.events import NodeReported
from graph_core.keys import ShardKeys
from graph_core.messages import SubmitRequest, encode_inbox, parse_inbox, parse_job_payload
from graph_core.model import Edge, Graph, Node
from tests.support.graphs import busy_graph
from tests.support.inbox import Entry, completed_report, drop_stamp, push, read
from tests.support.layout import SHARDS, ids_in_one_shard
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

NOW = 1_750_000_000.25  # one fixed time: the two ways of handling write the same bytes
RUNS = ids_in_one_shard("r", 6)  # ``_drive``'s: one inbox's, so that a batch holds them all


@pytest.fixture(autouse=True)
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clock, "now", lambda: NOW)


async def _dispatcher(redis: aioredis.Redis, run_cache: int = DEFAULT_RUN_CACHE) -> Dispatcher:
    """``run_cache=0``: every event loads its run (the tests of what a load holds)."""
    d = Dispatcher(
        redis, DispatcherSettings(shards=SHARDS, consumer="batch-test", run_cache=run_cache)
    )
    await d.store.register_graph(busy_graph())
    await d._ensure_group()
    return d


def _submit(run_id: str, n: int) -> bytes:
    return encode_inbox(SubmitRequest(graph_id="busy", run_id=run_id, input={"n": n}))


def _shards(d: Dispatcher) -> list[ShardKeys]:
    """Every shard (one server: the only one)."""
    return [d.keys.shard(k) for k in range(max(1, d.keys.shards))]


async def _handle(d: Dispatcher, entries: list[Entry], one_by_one: bool = False) -> None:
    """Have ``d`` handle ``entries`` (as ``read`` gives them: shard by shard) as its inbox
    loops would: each shard's entries a batch of their own (``one_by_one``: each entry)."""

    def shard_of(entry: Entry) -> ShardKeys:
        return d.keys.shard_for(parse_inbox(entry[1][b"m"]).run_id)

    for shard, of_shard in itertools.groupby(entries, key=shard_of):
        batch = list(of_shard)
        for part in [[entry] for entry in batch] if one_by_one else [batch]:
            await d._handle_batch(part, shard)


async def _pending(redis: aioredis.Redis, d: Dispatcher) -> list[bytes]:
    """The ids of the inbox entries pending, shard by shard."""
    pending = []
    for shard in _shards(d):
        entries = await redis.xpending_range(shard.inbox, d.keys.inbox_group, "-", "+", 100)
        pending += [p["message_id"] for p in entries]
    return pending


async def _work_off_queue(
    redis: aioredis.Redis, d: Dispatcher, reported: set[tuple[str, str]]
) -> list[bytes]:
    """What workers would do: take every queued job (in queue order) and report it done,
    unless its report went in early (``reported``)."""
    reports = []
    for shard in _shards(d):
        queue = shard.queue("default")
        for jid in await redis.zrange(queue, 0, -1):
            job = orjson.loads(await redis.get(JOB_KEY_PREFIX.encode() + jid))
            p = parse_job_payload(job["a"][0])
            if (p.run_id, p.node_id) not in reported:
                reports.append(completed_report(p.run_id, p.node_id, p.visit, p.attempt))
        await redis.delete(queue)
    return reports


async def _drive(redis: aioredis.Redis, d: Dispatcher, one_by_one: bool) -> None:
    """Six runs; three get their first report (for a job not enqueued yet) in the batch
    that submits them, so that batch holds two entries of one run, the second valid only
    after the first. Then report every queued job, wave after wave, until nothing is left."""
    first: list[bytes] = []
    early = {(run_id, "split") for run_id in RUNS[:3]}
    for i, run_id in enumerate(RUNS):
        first.append(_submit(run_id, 150 if i % 2 else 5))
        if (run_id, "split") in early:
            first.append(completed_report(run_id, "split"))
    await push(redis, d, first)
    for _ in range(20):
        entries = await read(redis, d)
        if not entries:
            return
        await _handle(d, entries, one_by_one)
        await push(redis, d, await _work_off_queue(redis, d, early))
    raise AssertionError("the runs did not settle")


async def _snapshot(redis: aioredis.Redis, d: Dispatcher) -> dict[str, Any]:
    state: dict[str, Any] = {}
    for i, run_id in enumerate(RUNS):
        rk = d.keys.run(run_id)
        for name in ("meta", "nodes", "outputs", "joins", "loops", "active", "waits"):
            state[f"r{i}:{name}"] = await redis.hgetall(getattr(rk, name))
        drop_stamp(state[f"r{i}:meta"])
        state[f"r{i}:events"] = [f for _, f in await redis.xrange(rk.events)]
    jobs = sorted({k async for k in redis.scan_iter(match=JOB_KEY_PREFIX + "*")})  # every node's
    state["jobs"] = {k: await redis.get(k) for k in jobs}
    state["pending"] = len(await _pending(redis, d))
    state["dead"] = await redis.xlen(d.keys.deadletter)
    return state


async def test_a_batch_ends_where_one_by_one_ends(redis: aioredis.Redis) -> None:
    d = await _dispatcher(redis)
    await _drive(redis, d, one_by_one=False)
    batched = await _snapshot(redis, d)
    await redis.flushall()
    d = await _dispatcher(redis)
    await _drive(redis, d, one_by_one=True)
    one_by_one = await _snapshot(redis, d)

    assert batched == one_by_one
    for i in range(6):
        run = orjson.loads(batched[f"r{i}:meta"][b"run"])
        assert run["status"] == "completed", run
        assert run["output"] == {"node": "big" if i % 2 else "small", "visit": 1}
    assert batched["pending"] == 0 and batched["dead"] == 0


async def test_one_load_and_one_apply_per_round(
    redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = await _dispatcher(redis, run_cache=0)
    calls: dict[str, list[int]] = {"load": [], "apply": []}
    _spy(monkeypatch, d, "load_many", lambda wanted: calls["load"].append(len(wanted)))
    _spy(monkeypatch, d, "apply_many", lambda batch: calls["apply"].append(len(batch)))
    runs = ids_in_one_shard("s", 10)  # one inbox's: one batch
    await push(redis, d, [_submit(run_id, 1) for run_id in runs])
    await push(redis, d, [completed_report(run_id, "split") for run_id in runs[:2]])
    await _handle(d, await read(redis, d))
    # Round 1: ten submits; round 2: the reports of the first two, after their submits.
    assert calls == {"load": [10, 2], "apply": [10, 2]}
    assert d.processed == 12
    nodes = await d.store.node_records(runs[1])
    assert nodes["split"].status.value == "completed" and nodes["a"].status.value == "queued"


async def test_a_conflict_inside_a_batch_is_handled_again_alone(
    redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = await _dispatcher(redis, run_cache=0)  # the cached way: tests/integration/test_run_cache.py
    other = Dispatcher(redis, DispatcherSettings(shards=SHARDS, consumer="other"))
    c1, c2 = ids_in_one_shard("c", 2)  # one inbox's: one batch
    await push(redis, d, [_submit(c1, 1), _submit(c2, 1)])
    await _handle(d, await read(redis, d))
    moved: list[str] = []

    async def move_c1(views: list[RedisView]) -> None:
        # Between the batch's load and its apply, another dispatcher applies the same report.
        if not moved:
            moved.append(c1)
            outcome = await other.processor.process(
                NodeReported(
                    run_id=c1,
                    node_id="split",
                    visit=1,
                    attempt=1,
                    status="completed",
                    output={"node": "split", "visit": 1},
                )
            )
            assert outcome.applied

    _spy_after(monkeypatch, d, "load_many", move_c1)
    alone = _count_calls(monkeypatch, d.processor, "process")
    await push(redis, d, [completed_report(c1, "split"), completed_report(c2, "split")])
    await _handle(d, await read(redis, d))

    assert alone == [c1]  # only the run that moved went the one-by-one way
    history = await d.store.history(c1)
    assert [e["node_id"] for e in history if e["type"] == "node.completed"] == ["start", "split"]
    assert (await d.store.node_records(c2))["split"].status.value == "completed"
    assert await _pending(redis, d) == []
    queue = d.keys.shard_for(c1).queue("default")
    queued = sorted(j.decode() for j in await redis.zrange(queue, 0, -1))
    expected = sorted(d.keys.job_id(r, n, 1, 1) for r in (c1, c2) for n in ("a", "b", "c", "split"))
    assert queued == expected  # split from the submits (never taken), then a, b, c once


async def test_an_invalid_run_id_is_dead_lettered_where_it_was_read(
    redis: aioredis.Redis,
) -> None:
    """Sharded, a message of another shard's run is handed on to that shard's inbox; a
    run id that is no run id belongs to no shard (whatever its hash says): it is
    dead-lettered in the shard that read it, not handed on first (16 shards, here on one
    server as well)."""
    d = Dispatcher(redis, DispatcherSettings(shards=16, prefix="badid", consumer="batch-test"))
    await d.store.register_graph(busy_graph())
    await d._ensure_group()
    here = d.keys.shard(0)
    bad_ids = (f"bad id {n}!" for n in itertools.count())
    bad = next(i for i in bad_ids if d.keys.shard_for(i).shard != here.shard)
    raw = b'{"kind":"submit","graph_id":"busy","run_id":"%s"}' % bad.encode()
    await redis.xadd(here.inbox, {"m": raw})
    await d._handle_batch(await read(redis, d), here)

    [(_, dead)] = await redis.xrange(d.keys.deadletter)
    assert "invalid run id" in dead[b"reason"].decode() and dead[b"raw"] == raw
    assert [await redis.xlen(d.keys.shard(k).inbox) for k in range(1, 16)] == [0] * 15


async def test_poison_in_the_middle_of_a_batch_is_dead_lettered_the_rest_applied(
    redis: aioredis.Redis,
) -> None:
    d = await _dispatcher(redis)
    p1, p2, p9, wrongtype, ghost = ids_in_one_shard("p", 5)  # one inbox's: one batch
    shard = d.keys.shard_for(p1)
    # an invalid run id (test_an_invalid_run_id_is_dead_lettered_where_it_was_read: in any
    # shard's inbox)
    bad_ids = (f"bad id {n}!" for n in itertools.count())
    bad_id = next(i for i in bad_ids if d.keys.shard_for(i) == shard)
    await redis.set(d.keys.run(wrongtype).meta, "not a hash")  # fails with a Redis error
    messages = [
        _submit(p1, 1),
        b"not json",
        b'{"kind":"submit","graph_id":"busy","run_id":"%s"}' % bad_id.encode(),
        b'{"kind":"submit","graph_id":"no-such-graph","run_id":"%s"}' % p9.encode(),
        completed_report(wrongtype, "split"),
        completed_report(p1, "split"),
        completed_report(ghost, "split"),  # an unknown run: ignored, not poison
        _submit(p2, 1),
    ]
    for m in messages:  # as they are: ``push`` reads the run of each
        await redis.xadd(shard.inbox, {"m": m})
    entries = await read(redis, d)
    await d._handle_batch(entries, shard)

    dead = await redis.xrange(d.keys.deadletter)
    reasons = " | ".join(f[b"reason"].decode() for _, f in dead)
    assert len(dead) == 3, reasons
    assert "not JSON" in reasons and "invalid run id" in reasons and "no-such-graph" in reasons
    for run_id in (p1, p2):
        assert (await d.store.get_run(run_id)) is not None
    assert (await d.store.node_records(p1))["split"].status.value == "completed"
    # The entry that hit a Redis error is not poison yet: it stays pending, counted.
    assert await _pending(redis, d) == [entries[4][0]]
    assert await redis.hget(shard.inbox_attempts, entries[4][0]) == b"1"
    assert d.processed == 4  # p1, p1's report, the ignored ghost report, p2


async def test_a_lost_connection_propagates_and_leaves_the_batch_pending(
    redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = await _dispatcher(redis)

    async def gone(calls: Sequence[ApplyCall]) -> list[bool | Exception]:
        raise RedisConnectionError("server went away")

    monkeypatch.setattr(d.store, "apply_many", gone)
    runs = ids_in_one_shard("l", 2)  # one inbox's: one batch
    await push(redis, d, [_submit(run_id, 1) for run_id in runs])
    with pytest.raises(RedisConnectionError):
        await _handle(d, await read(redis, d))
    assert len(await _pending(redis, d)) == 2
    attempts = [shard.inbox_attempts for shard in _shards(d)]
    assert await redis.exists(*attempts, d.keys.deadletter) == 0


async def test_a_flushed_script_cache_is_reloaded_within_the_batch(
    redis: aioredis.Redis,
) -> None:
    d = await _dispatcher(redis)
    n1, n2 = ids_in_one_shard("n", 2)  # one inbox's: one batch
    await push(redis, d, [_submit(n1, 1)])
    await _handle(d, await read(redis, d))
    await redis.script_flush()  # a cluster: every primary's
    await push(redis, d, [completed_report(n1, "split"), _submit(n2, 1)])
    await _handle(d, await read(redis, d))
    assert (await d.store.node_records(n1))["split"].status.value == "completed"
    assert await d.store.get_run(n2) is not None
    assert await _pending(redis, d) == []


def _spy(
    monkeypatch: pytest.MonkeyPatch, d: Dispatcher, name: str, seen: Callable[[Any], None]
) -> None:
    real = getattr(d.store, name)

    async def spy(arg: Any) -> Any:
        seen(arg)
        return await real(arg)

    monkeypatch.setattr(d.store, name, spy)


def _spy_after(
    monkeypatch: pytest.MonkeyPatch,
    d: Dispatcher,
    name: str,
    then: Callable[[Any], Awaitable[None]],
) -> None:
    real = getattr(d.store, name)

    async def spy(arg: Any) -> Any:
        result = await real(arg)
        await then(result)
        return result

    monkeypatch.setattr(d.store, name, spy)


def _count_calls(monkeypatch: pytest.MonkeyPatch, processor: Any, name: str) -> list[str]:
    runs: list[str] = []
    real = getattr(processor, name)

    async def spy(event: Any, ack: str | None = None) -> Outcome:
        runs.append(event.run_id)
        result: Outcome = await real(event, ack=ack)
        return result

    monkeypatch.setattr(processor, name, spy)
    return runs


async def test_loops_and_small_joins_come_with_the_load(
    redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = await _dispatcher(redis, run_cache=0)
    asked: list[tuple[str, Any]] = []
    _spy(
        monkeypatch, d, "fill_many", lambda needs: asked.extend((n.kind, n.key) for *_, n in needs)
    )
    await _drive(redis, d, one_by_one=False)
    # Never a loop record, nor the three-input join: they come with the run's record. What
    # is left: the skip that the loop's exit sends down to ``end`` (its arrivals and record)
    # and the live frontier, read once to finish: three loads per run, each shared by the
    # runs of its round.
    assert sorted(asked, key=str) == sorted(
        [("joins", [("end", 11), ("end", 12)]), ("node", "end"), ("active", None)] * 6, key=str
    )


async def test_a_wide_join_loads_its_inputs_once_when_it_fires(
    redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    width = JOIN_GROUP_PREFETCH + 4
    g = Graph(id="wide")
    g.add_nodes(
        Node("start", type="start"),
        Node("split", type="work", fan_out=True),
        *[Node(f"b{i}", type="work") for i in range(width)],
        Node("join", type="work"),
        Node("end", type="end"),
    )
    g.connect("start", "split")
    g.add_edges(*[Edge("split", f"b{i}") for i in range(width)])
    g.add_edges(*[Edge(f"b{i}", "join") for i in range(width)])
    g.connect("join", "end")
    d = await _dispatcher(redis, run_cache=0)
    await d.store.register_graph(g.validate_graph())
    asked: list[tuple[str, Any]] = []
    _spy(
        monkeypatch, d, "fill_many", lambda needs: asked.extend((n.kind, n.key) for *_, n in needs)
    )
    await push(redis, d, [encode_inbox(SubmitRequest(graph_id="wide", run_id="w"))])
    for _ in range(10):
        await _handle(d, await read(redis, d))
        reports = await _work_off_queue(redis, d, set())
        if not reports:
            break
        await push(redis, d, reports)
    run = await d.store.get_run("w")
    assert run is not None and run.status.value == "completed"
    first_input = width + 1  # edges: start->split, split->b*, then b*->join
    [(kind, keys)] = [(k, v) for k, v in asked if k in ("join", "joins")]
    assert kind == "joins" and len(keys) == width - 1  # all but the last arrival's own
    assert {i for _, i in keys} < set(range(first_input, first_input + width))


def _asking_for_an_unknown_join(bad_run: str, real: Callable[..., Any]) -> Callable[..., Any]:
    """``advance`` that, for reports of ``bad_run``, asks for a join the graph does not have:
    widening that request to the join's group fails (KeyError) before any load."""

    def advance(graph: Graph, view: RedisView, event: Any, env: Any) -> Any:
        if event.run_id == bad_run and event.kind == "reported":
            raise NeedState("join", ("no-such-node", 99))
        return real(graph, view, event, env)

    return advance


def _break_stage(monkeypatch: pytest.MonkeyPatch, d: Dispatcher, stage: str, bad: str) -> None:
    """Make one stage of the batch fail for run ``bad`` (or, ``round`` and ``apply``, for
    everyone) with an error that is no Redis error. ``versions`` is broken by data (see the
    test)."""
    if stage == "prefetch":
        real_prefetch = d.processor.prefetch

        def prefetch(graph: Graph, event: Any) -> Any:
            if event.run_id == bad:
                raise KeyError("a prefetch that fails")
            return real_prefetch(graph, event)

        monkeypatch.setattr(d.processor, "prefetch", prefetch)
    elif stage == "widen":
        for module in (batch_module, processor_module):
            monkeypatch.setattr(module, "advance", _asking_for_an_unknown_join(bad, advance))
    elif stage == "cache":
        real_applied = d.processor.cache.applied

        def applied(run_id: str, view: RedisView, writes: Any) -> None:
            if run_id == bad:
                raise ValueError("a cache that fails")
            real_applied(run_id, view, writes)

        monkeypatch.setattr(d.processor.cache, "applied", applied)
    elif stage == "round":  # a bug of the batched path itself, outside any one entry

        async def compute_many(*args: Any) -> None:
            raise RuntimeError("a batched path that fails")

        monkeypatch.setattr(d.batches, "_compute_many", compute_many)
    elif stage == "apply":

        async def apply_many(calls: Sequence[ApplyCall]) -> list[bool | Exception]:
            raise ValueError("a pipelined apply that fails")

        monkeypatch.setattr(d.store, "apply_many", apply_many)


@pytest.mark.parametrize(
    ("stage", "bad_is_poison"),
    [
        ("versions", True),
        ("prefetch", True),
        ("widen", True),
        ("cache", False),
        ("apply", False),
        ("round", False),
    ],
)
async def test_an_entry_that_breaks_a_stage_of_the_batch_fails_alone(
    redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch, stage: str, bad_is_poison: bool
) -> None:
    d = await _dispatcher(redis)
    runs = ok1, bad, ok2 = ids_in_one_shard("k", 3)  # one inbox's: one batch
    if stage == "versions":  # a corrupt latest version of the bad submit's graph
        other = busy_graph()
        other.id = "other"
        await d.store.register_graph(other.validate_graph())
        await redis.hset(d.keys.graph_latest, "other", "garbage")
        bad_submit = encode_inbox(SubmitRequest(graph_id="other", run_id=bad))
        batch = [_submit(ok1, 1), bad_submit, _submit(ok2, 1)]
    else:
        await push(redis, d, [_submit(r, 1) for r in runs])
        await _handle(d, await read(redis, d))
        batch = [completed_report(r, "split") for r in runs]
    _break_stage(monkeypatch, d, stage, bad)
    await push(redis, d, batch)
    entries = await read(redis, d)

    await _handle(d, entries)  # raises nothing

    for run_id in (ok1, ok2):
        if stage == "versions":
            assert await d.store.get_run(run_id) is not None
        else:
            assert (await d.store.node_records(run_id))["split"].status.value == "completed"
    pending = await _pending(redis, d)
    if bad_is_poison:  # counted towards the poison limit, like any failing entry
        assert pending == [entries[1][0]]
        attempts = d.keys.shard_for(bad).inbox_attempts
        assert await redis.hget(attempts, entries[1][0]) == b"1"
    else:  # the stage failed for no fault of the entry: it is applied all the same
        assert pending == []
        assert (await d.store.node_records(bad))["split"].status.value == "completed"
    assert await redis.xlen(d.keys.deadletter) == 0


async def test_an_entry_a_bug_leaves_unhandled_stays_pending_and_is_not_dead_lettered(
    redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batched stage that returns without settling its entries (a bug, not the entries'
    fault): they are not dead-lettered unapplied but stay pending, to be handled again."""
    d = await _dispatcher(redis)

    async def forgets(*_: Any) -> None:
        return None

    monkeypatch.setattr(d.batches, "_apply_many", forgets)
    runs = ids_in_one_shard("u", 2)  # one inbox's: one batch
    await push(redis, d, [_submit(run_id, 1) for run_id in runs])
    entries = await read(redis, d)

    await _handle(d, entries)

    assert sorted(await _pending(redis, d)) == sorted(e[0] for e in entries)
    assert await redis.xlen(d.keys.deadletter) == 0
    assert await d.store.get_run(runs[0]) is None


_XADD_ALL = "for i = 1, #ARGV do redis.call('XADD', KEYS[1], '*', 'm', ARGV[i]) end"


async def test_a_poison_entry_in_a_batch_is_dead_lettered_and_the_dispatcher_keeps_going(
    redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = DispatcherSettings(
        shards=SHARDS, consumer="poison", claim_idle_s=0.1, max_inbox_attempts=2
    )
    d = Dispatcher(redis, settings)
    await d.store.register_graph(busy_graph())
    stop = asyncio.Event()
    serving = asyncio.create_task(d.run(stop))
    try:
        runs = ok1, bad, ok2 = ids_in_one_shard("k", 3)  # one inbox's
        await push(redis, d, [_submit(r, 1) for r in runs])
        await wait_for(lambda: _all_exist(d, runs), message="the runs to be submitted", timeout=10)
        _break_stage(monkeypatch, d, "widen", bad)
        # One XREADGROUP sees all three, one batch: a script adds them at once (a
        # transaction would, but a cluster client has none).
        reports = [completed_report(r, "split") for r in runs]
        await redis.eval(_XADD_ALL, 1, d.keys.shard_for(bad).inbox, *reports)

        async def bad_failed() -> bool:
            run = await d.store.get_run(bad)
            return run is not None and run.status.value == "failed"

        await wait_for(bad_failed, message="the poisoned run to fail", timeout=15)
        for run_id in (ok1, ok2):
            assert (await d.store.node_records(run_id))["split"].status.value == "completed"
        [(_, dead)] = await redis.xrange(d.keys.deadletter)
        assert dead[b"reason"] == b"handling failed 2 times"
        assert f'"run_id":"{bad}"'.encode() in dead[b"raw"]
        run = await d.store.get_run(bad)
        assert run is not None and run.error is not None and run.error.code == "poison"
        assert not serving.done()  # the inbox loop survived the entry

        await push(redis, d, [_submit("after", 1)])
        await wait_for(lambda: _all_exist(d, ["after"]), message="a later submit", timeout=10)
        assert not serving.done()
    finally:
        stop.set()
        await asyncio.wait_for(serving, timeout=10)


async def _all_exist(d: Dispatcher, run_ids: list[str]) -> bool:
    for run_id in run_ids:
        run = await d.store.get_run(run_id)
        if run is None or run.status.value == "pending":
            return False
    return True


@pytest.mark.parametrize(
    "refusal",
    [
        OutOfMemoryError("command not allowed when used memory > 'maxmemory'."),
        ReadOnlyError("You can't write against a read only replica."),  # a failover
        ResponseError("NOREPLICAS Not enough good replicas to write."),
    ],
    ids=["oom", "readonly", "noreplicas"],
)
async def test_an_apply_refused_by_a_server_that_cannot_serve_now_is_retried_not_counted(
    redis: aioredis.Redis, monkeypatch: pytest.MonkeyPatch, refusal: Exception
) -> None:
    """A server out of memory, demoted to a replica or short of replicas refuses the
    applies for a while: no entry's fault. The dispatcher waits and tries again; nothing is
    counted towards dead-lettering (2 attempts here), no run is failed as poisoned."""
    settings = DispatcherSettings(
        shards=SHARDS, consumer="refused", claim_idle_s=0.1, max_inbox_attempts=2
    )
    d = Dispatcher(redis, settings)
    await d.store.register_graph(busy_graph())
    refusals = 0
    real = d.store.apply_many

    async def apply_many(calls: Sequence[ApplyCall]) -> list[bool | Exception]:
        nonlocal refusals
        if refusals < 4:  # twice the attempts that would dead-letter an entry
            refusals += 1
            return [refusal for _ in calls]
        return await real(calls)

    monkeypatch.setattr(d.store, "apply_many", apply_many)
    stop = asyncio.Event()
    serving = asyncio.create_task(d.run(stop))
    try:
        await push(redis, d, [_submit("patient", 1)])
        await wait_for(lambda: _all_exist(d, ["patient"]), message="the run", timeout=15)
        assert refusals == 4 and not serving.done()
        run = await d.store.get_run("patient")
        assert run is not None and run.status.value == "running"
        assert await redis.xlen(d.keys.deadletter) == 0
        assert [await redis.hlen(s.inbox_attempts) for s in _shards(d)] == [0] * len(_shards(d))
    finally:
        stop.set()
        await asyncio.wait_for(serving, timeout=10)
