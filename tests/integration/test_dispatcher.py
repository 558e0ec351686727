"""The dispatcher against a real server: routing over Redis, several dispatchers at once,
approvals published by a plain Redis client, poison messages, durable timers."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from dispatcher.service import Dispatcher
from dispatcher.settings import DispatcherSettings
from graph_core.conditions import Condition as C
from graph_core.messages import SubmitRequest, encode_inbox
from graph_core.model import Edge, Graph, Node, RetryPolicy
from graph_core.state import RunRecord
from tests.support.fake_worker import FakeWorker, running
from tests.support.graphs import bug_triage_graph as triage_graph
from tests.support.graphs import busy_graph
from tests.support.layout import SHARDS, ids_in_one_shard, keys_for, plain_client_for
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration


def make_dispatcher(redis: aioredis.Redis, **kw: Any) -> Dispatcher:
    return Dispatcher(redis, DispatcherSettings(shards=SHARDS, claim_idle_s=1.0, **kw))


async def submit(
    redis: aioredis.Redis, d: Dispatcher, graph_id: str, run_id: str, input: Any
) -> None:
    msg = SubmitRequest(graph_id=graph_id, run_id=run_id, input=input)
    await redis.xadd(d.keys.shard_for(run_id).inbox, {"m": encode_inbox(msg)})


def inboxes(d: Dispatcher) -> list[str]:
    """Every shard's inbox (one server: the inbox)."""
    return [d.keys.shard(k).inbox for k in range(max(1, d.keys.shards))]


async def run_status(d: Dispatcher, run_id: str) -> str | None:
    run = await d.store.get_run(run_id)
    return None if run is None else run.status.value


async def finished(d: Dispatcher, run_id: str) -> RunRecord:
    async def done() -> RunRecord | None:
        run = await d.store.get_run(run_id)
        return run if run is not None and run.finished_at is not None else None

    return await wait_for(done, timeout=15, message=f"run {run_id} to finish")


def triage_handlers() -> dict[str, Any]:
    return {
        "triage": lambda n, p: {"severity": "critical" if "down" in p["run_id"] else "low"},
        "*": lambda n, p: {"node": n},
    }


async def test_bug_triage_routes_over_redis(redis: aioredis.Redis) -> None:
    d = make_dispatcher(redis)
    await d.store.register_graph(triage_graph())
    w = FakeWorker(redis, d.keys, triage_handlers())
    async with running(d, w):
        await submit(redis, d, "bug-triage", "prod-down", {"title": "x"})
        await submit(redis, d, "bug-triage", "typo", {"title": "y"})
        down, typo = await finished(d, "prod-down"), await finished(d, "typo")
    assert (down.status.value, down.output) == ("completed", {"node": "escalate"})
    assert (typo.status.value, typo.output) == ("completed", {"node": "assign"})
    nodes = await d.store.node_records("typo")
    assert nodes["escalate"].status.value == "skipped"
    types = [e["type"] for e in await d.store.history("typo")]
    assert types[0] == "run.submitted" and types[-1] == "run.completed"


async def test_two_dispatchers_many_runs_each_effect_once(redis: aioredis.Redis) -> None:
    d1, d2 = make_dispatcher(redis, consumer="d1"), make_dispatcher(redis, consumer="d2")
    await d1.store.register_graph(busy_graph())
    workers = [FakeWorker(redis, d1.keys, {"*": lambda n, p: {"node": n}}) for _ in range(3)]
    runs = [f"r{i}" for i in range(200)]
    async with running(d1, d2, *workers):
        for i, rid in enumerate(runs):
            await submit(redis, d1, "busy", rid, {"n": 150 if i % 2 else 5})
        records = [await finished(d1, rid) for rid in runs]
    for i, rec in enumerate(records):
        assert rec.status.value == "completed", rec.error
        assert rec.output == {"node": "big" if i % 2 else "small"}
    executions: dict[tuple[str, str, int], int] = {}
    for w in workers:
        for key, n in w.executions.items():
            executions[key] = executions.get(key, 0) + n
    assert max(executions.values()) == 1, "a node visit ran twice"
    per_run = {rid: sum(1 for k in executions if k[0] == rid) for rid in runs}
    # split, a, b, c, join, 3 loop visits, big|small = 9 executions per run
    assert set(per_run.values()) == {9}
    assert d1.processed > 0 and d2.processed > 0, "both dispatchers should have worked"


async def _waiting_token(d: Dispatcher, run_id: str, node_id: str) -> str:
    async def token() -> str | None:
        raw = await d.redis.hget(d.keys.run(run_id).waits, node_id)
        return raw.decode() if raw else None

    return await wait_for(token, timeout=10, message=f"{node_id} to wait")


def approval_graph() -> Graph:
    g = Graph(id="approval")
    g.add_nodes(
        Node("start", type="start"),
        Node("review", type="human", config={"prompt": "ship {{input.what}}?"}),
        Node("ship", type="work"),
        Node("drop", type="work"),
        Node("end", type="end"),
    )
    g.connect("start", "review")
    g.add_edges(
        Edge("review", "ship", condition=C.field("review.output.decision").eq("approve")),
        Edge("review", "drop", condition=C.otherwise()),
        Edge("ship", "end"),
        Edge("drop", "end"),
    )
    return g.validate_graph()


async def test_approval_published_by_a_plain_client_with_the_token(
    redis: aioredis.Redis, redis_url: str
) -> None:
    d = make_dispatcher(redis)
    await d.store.register_graph(approval_graph())
    w = FakeWorker(redis, d.keys, {"*": lambda n, p: {"node": n}})
    async with running(d, w):
        await submit(redis, d, "approval", "a1", {"what": "v2"})
        token = await _waiting_token(d, "a1", "review")
        nodes = await d.store.node_records("a1")
        assert nodes["review"].wait is not None and nodes["review"].wait.prompt == "ship v2?"
        plain = plain_client_for(redis_url)  # no relaygraph code on this side
        bad = [
            b"not json",
            b'{"run_id": "a1", "node_id": "review", "decision": "approve"}',  # no token
            orjson.dumps(
                {"run_id": "a1", "node_id": "review", "decision": "approve", "token": "x"}
            ),
            b'{"run_id": "a1", "node_id": "review", "decision": "maybe", "token": "t"}',
        ]
        for raw in bad:
            await plain.publish("relaygraph:approvals", raw)
        assert await run_status(d, "a1") == "waiting"
        good = {
            "run_id": "a1",
            "node_id": "review",
            "decision": "approve",
            "data": {"ok": 1},
            "actor": "alice",
            "token": token,
        }
        await plain.publish("relaygraph:approvals", orjson.dumps(good))
        run = await finished(d, "a1")
        await plain.aclose()
        dead = await redis.xrange(d.keys.deadletter)
    assert run.status.value == "completed" and run.output == {"node": "ship"}
    out = orjson.loads(await redis.hget(d.keys.run("a1").outputs, "review#1"))
    assert out == {"decision": "approve", "data": {"ok": 1}, "actor": "alice"}
    reasons = [f[b"reason"].decode() for _, f in dead]
    assert any("not JSON" in r for r in reasons) and any("decision" in r for r in reasons)


async def test_racing_approvals_exactly_one_wins(redis: aioredis.Redis, redis_url: str) -> None:
    d1, d2 = make_dispatcher(redis, consumer="d1"), make_dispatcher(redis, consumer="d2")
    await d1.store.register_graph(approval_graph())
    w = FakeWorker(redis, d1.keys, {"*": lambda n, p: {"node": n}})
    async with running(d1, d2, w):
        await submit(redis, d1, "approval", "race", {"what": "x"})
        token = await _waiting_token(d1, "race", "review")
        clients = [plain_client_for(redis_url) for _ in range(20)]
        msgs = [
            orjson.dumps(
                {
                    "run_id": "race",
                    "node_id": "review",
                    "decision": "approve" if i % 2 else "reject",
                    "actor": f"p{i}",
                    "token": token,
                }
            )
            for i in range(20)
        ]
        await asyncio.gather(
            *(c.publish("relaygraph:approvals", m) for c, m in zip(clients, msgs, strict=True))
        )
        run = await finished(d1, "race")
        for c in clients:
            await c.aclose()
    history = await d1.store.history("race")
    resolutions = [e for e in history if e["type"] in ("node.approved", "node.rejected")]
    assert len(resolutions) == 1
    winner = resolutions[0]["data"]["actor"]
    expected = {"node": "ship"} if resolutions[0]["type"] == "node.approved" else {"node": "drop"}
    assert run.output == expected and winner.startswith("p")
    assert w.executions[("race", "ship", 1)] + w.executions[("race", "drop", 1)] == 1


async def test_poison_inbox_messages_are_dead_lettered_and_work_goes_on(
    redis: aioredis.Redis,
) -> None:
    d = make_dispatcher(redis)
    await d.store.register_graph(triage_graph())
    w = FakeWorker(redis, d.keys, triage_handlers())
    garbage = [
        {"m": b"\xff\xfe"},
        {"m": b"[1, 2]"},
        {"m": b'{"kind": "reported", "run_id": "nope"}'},
        {"m": b'{"kind": "submit", "graph_id": "no-such-graph"}'},
        {"x": b"no m field"},
        {
            "m": b'{"kind": "approval", "run_id": "ghost", "node_id": "n", '
            b'"decision": "approve", "token": "t"}'
        },
    ]
    async with running(d, w):
        for fields in garbage:
            await redis.xadd(d.keys.shard(0).inbox, fields)  # no run: any shard's inbox
        await submit(redis, d, "bug-triage", "after-garbage", {})
        run = await finished(d, "after-garbage")
        dead = await wait_for(lambda: redis.xrange(d.keys.deadletter), message="dead letters")
    assert run.status.value == "completed"
    reasons = " | ".join(f[b"reason"].decode() for _, f in dead)
    assert (
        "not JSON" in reasons and "no-such-graph" in reasons and "expected a JSON object" in reasons
    )
    assert len(dead) == 5  # the approval for an unknown run is ignored, not poison
    assert await _no_pending(redis, d)


async def test_retry_timer_fires_after_the_dispatcher_was_down(redis: aioredis.Redis) -> None:
    g = Graph(id="flaky")
    g.add_nodes(
        Node("start", type="start"),
        Node(
            "flaky",
            type="work",
            retry=RetryPolicy(max_attempts=3, backoff="fixed", initial_delay_s=0.3),
        ),
        Node("end", type="end"),
    )
    g.connect("start", "flaky", "end")
    d = make_dispatcher(redis)
    await d.store.register_graph(g.validate_graph())
    calls: list[int] = []

    def flaky(n: str, p: dict[str, Any]) -> Any:
        calls.append(p["attempt"])
        if p["attempt"] < 2:
            raise ConnectionError("upstream hiccup")
        return {"attempt": p["attempt"]}

    w = FakeWorker(redis, d.keys, {"*": flaky})
    async with running(d, w):
        await submit(redis, d, "flaky", "f1", {})
        timers = d.keys.shard_for("f1").timers
        await wait_for(lambda: redis.zcard(timers), message="a retry timer")
    # The dispatcher is down now; the timer comes due while nobody runs.
    due = (await redis.zrange(timers, 0, 0, withscores=True))[0][1] / 1000
    await wait_for(
        lambda: asyncio.get_running_loop().time() > 0 and __import__("time").time() > due,
        message="the timer's due time to pass",
    )
    d2 = make_dispatcher(redis)
    async with running(d2, w):
        run = await finished(d2, "f1")
    assert run.status.value == "completed" and run.output == {"attempt": 2}
    assert calls == [1, 2]
    types = [e["type"] for e in await d2.store.history("f1")]
    assert "node.retry_scheduled" in types


async def test_the_inbox_loop_trims_what_it_handled(redis: aioredis.Redis) -> None:
    d = make_dispatcher(redis)  # inbox_trim_s: 1 s by default
    await d.store.register_graph(triage_graph())
    w = FakeWorker(redis, d.keys, triage_handlers())
    *runs, later = ids_in_one_shard("a", 6)  # one inbox's
    inbox = d.keys.shard_for(later).inbox
    async with running(d, w):
        for run_id in runs:
            await submit(redis, d, "bug-triage", run_id, {})
        for run_id in runs:
            await finished(d, run_id)

        async def trimmed() -> bool:
            await submit(redis, d, "bug-triage", later, {})  # a batch (a duplicate after one)
            return bool(await redis.xlen(inbox) < 10)

        await wait_for(trimmed, timeout=10, interval=0.3, message="the inbox trimmed")


async def test_handled_inbox_entries_are_trimmed_but_pending_ones_kept(
    redis: aioredis.Redis,
) -> None:
    d = make_dispatcher(redis, inbox_trim_s=3600)  # trimmed only when the test says
    await d.store.register_graph(triage_graph())
    w = FakeWorker(redis, d.keys, triage_handlers())
    *runs, stuck, unread = ids_in_one_shard("t", 7)  # one inbox's
    inbox = d.keys.shard_for(stuck).inbox
    async with running(d, w):
        for run_id in runs:
            await submit(redis, d, "bug-triage", run_id, {})
        for run_id in runs:
            await finished(d, run_id)
        await wait_for(lambda: _no_pending(redis, d), message="every inbox entry acknowledged")
    assert await redis.xlen(inbox) > 10
    # One entry read by a consumer that never acknowledges it (a crashed dispatcher).
    await submit(redis, d, "bug-triage", stuck, {})
    await redis.xreadgroup(d.keys.inbox_group, "crashed", {inbox: ">"}, count=1)
    await submit(redis, d, "bug-triage", unread, {})
    await d.trim_inbox()
    left = [f[b"m"] for _, f in await redis.xrange(inbox)]
    assert len(left) == 2
    assert f'"{stuck}"'.encode() in left[0] and f'"{unread}"'.encode() in left[1]


async def _no_pending(redis: aioredis.Redis, d: Dispatcher) -> bool:
    for inbox in inboxes(d):
        info = await redis.xpending(inbox, d.keys.inbox_group)
        if info["pending"]:
            return False
    return True


async def test_sweeper_reruns_a_queued_node_whose_job_vanished(redis: aioredis.Redis) -> None:
    from dispatcher.queue import JOB_KEY_PREFIX
    from dispatcher.sweeper import sweep

    d = make_dispatcher(redis)
    await d.store.register_graph(triage_graph())
    async with running(d):  # no worker: the job waits in the queue
        await submit(redis, d, "bug-triage", "lost", {})
        shard = d.keys.shard_for("lost")
        queue = shard.queue("default")
        await wait_for(lambda: redis.zcard(queue), message="a queued job")
        assert await sweep(redis, d.keys, grace_s=0, shard=shard) == 0  # the job is there
        # Something outside relaygraph loses the job (e.g. the last second of writes).
        [job] = await redis.zrange(queue, 0, -1)
        await redis.delete(JOB_KEY_PREFIX.encode() + job)
        await redis.zrem(queue, job)
        assert await sweep(redis, d.keys, grace_s=0, shard=shard) == 1
        w = FakeWorker(redis, d.keys, triage_handlers())
        async with running(w):
            run = await finished(d, "lost")
    assert run.status.value == "completed"
    nodes = await d.store.node_records("lost")
    assert nodes["triage"].attempt == 2 and nodes["triage"].lost == 1
    assert w.executions[("lost", "triage", 1)] == 1


async def test_housekeeping_drops_abort_entries_nobody_will_take_off(
    redis: aioredis.Redis,
) -> None:
    """A finishing job does not look at arq's abort set, so a cancel that came too late to
    stop its job leaves the job's id there: the dispatcher's housekeeping drops such ids once
    they are ``ABORT_KEEP_MS`` old, and keeps the recent ones a worker may still act on."""
    from dispatcher.queue import ABORT_KEEP_MS
    from dispatcher.sweeper import trim_aborts

    shard = keys_for().shard(0)
    abort_key = shard.abort  # one server: arq's own ``arq:abort``
    now_ms = int(time.time() * 1000)
    old = {"rg:a:n:1:1": now_ms - ABORT_KEEP_MS - 5_000, "rg:b:n:1:1": now_ms - ABORT_KEEP_MS - 1}
    await redis.zadd(abort_key, {**old, "rg:c:n:1:1": now_ms - 1_000})
    assert await trim_aborts(redis, shard) == 2
    assert await redis.zrange(abort_key, 0, -1) == [b"rg:c:n:1:1"]
    await redis.zadd(abort_key, old)
    async with running(make_dispatcher(redis)):  # its housekeeping runs as it starts

        async def trimmed() -> bool:
            return await redis.zcard(abort_key) == 1

        await wait_for(trimmed, message="the old abort entries dropped")


async def test_a_redelivered_raw_submit_creates_one_run_named_by_its_entry(
    redis: aioredis.Redis,
) -> None:
    from graph_core.messages import parse_inbox

    d = make_dispatcher(redis)
    await d.store.register_graph(triage_graph())
    raw = encode_inbox(SubmitRequest(graph_id="bug-triage", input={"x": 1}))  # no run id
    entry_id = (await redis.xadd(d.keys.shard(0).inbox, {"m": raw})).decode()
    first = await d.processor.handle(parse_inbox(raw), entry_id)
    again = await d.processor.handle(parse_inbox(raw), entry_id)  # a crash before the ack
    assert first.applied and first.run_id == entry_id
    assert (
        not again.applied and again.run_id == entry_id and "already exists" in (again.reason or "")
    )
    assert await redis.zcard(d.keys.shard_for(entry_id).runs_all) == 1


async def test_a_raw_submit_with_a_bad_run_id_claims_nothing(redis: aioredis.Redis) -> None:
    d = make_dispatcher(redis)
    await d.store.register_graph(triage_graph())
    bad = {
        "m": b'{"kind":"submit","graph_id":"bug-triage","run_id":"bad id!","idempotency_key":"k1"}'
    }
    async with running(d):
        await redis.xadd(d.keys.shard(0).inbox, bad)
        await submit_keyed(redis, d, "good", "k1")
        dead = await wait_for(lambda: redis.xrange(d.keys.deadletter), message="dead letter")
        await wait_for(lambda: d.store.get_run("good"), message="the keyed run")
    assert "invalid run id" in dead[0][1][b"reason"].decode()
    assert await redis.get(d.keys.idempotency("k1")) == b"good"


async def submit_keyed(redis: aioredis.Redis, d: Dispatcher, run_id: str, key: str) -> None:
    msg = SubmitRequest(graph_id="bug-triage", run_id=run_id, idempotency_key=key)
    await redis.xadd(d.keys.shard_for(run_id).inbox, {"m": encode_inbox(msg)})


async def test_a_server_out_of_memory_stops_no_dispatcher_and_fails_no_run(
    server_factory: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A real server that refuses writes (over its ``maxmemory``) while a dispatcher starts
    and serves: it says so and waits, and the run submitted before goes on once memory is
    back; nothing is dead-lettered."""
    server = server_factory()
    redis = aioredis.Redis.from_url(server.url)
    d = make_dispatcher(redis, max_inbox_attempts=2)
    stop = asyncio.Event()
    task: asyncio.Task[None] | None = None
    try:
        await d.store.register_graph(triage_graph())
        await submit(redis, d, "bug-triage", "before-oom", {"title": "t", "body": "b"})
        await redis.config_set("maxmemory", 1)  # every write is refused: OOM
        with caplog.at_level("WARNING", logger="relaygraph.dispatcher"):
            task = asyncio.create_task(d.run(stop))

            def waited() -> bool:
                return sum("Redis unavailable" in r.getMessage() for r in caplog.records) >= 3

            await wait_for(waited, timeout=10, message="the dispatcher to retry")
        assert not task.done() and await run_status(d, "before-oom") is None
        assert "cannot serve yet" in caplog.text  # at start: the inbox's group waits too
        await redis.config_set("maxmemory", 0)
        await wait_for(lambda: run_status(d, "before-oom"), timeout=15, message="the run")
        assert await redis.xlen(d.keys.deadletter) == 0
    finally:
        stop.set()
        if task is not None:
            await asyncio.wait_for(task, timeout=10)
        await redis.aclose()
