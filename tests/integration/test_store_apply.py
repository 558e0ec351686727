"""apply.lua gets a transition as one JSON change set (decoded with cjson in the script): every
value must land in Redis byte for byte, and every number exactly, however large."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from redis.exceptions import NoPermissionError

from dispatcher.channels import open_events
from dispatcher.queue import JOB_KEY_PREFIX
from dispatcher.store import RunStore
from graph_core.events import (
    HISTORY_FIELDS,
    CancelNode,
    EnqueueNode,
    FinishRun,
    HistoryEvent,
    PauseForApproval,
    ReleaseWait,
    ReopenRun,
    ScheduleTimer,
    history_event,
    history_json,
    history_values,
)
from graph_core.messages import decode_arq_job, dumps, wake_token
from graph_core.state import JoinState, LoopRecord, NodeRecord, RunRecord, Transition
from graph_core.status import NodeStatus, RunStatus
from tests.support.layout import CLUSTER, client_for, keys_for
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

BIG = 2**62 + 12345  # far beyond a double's 53 bits
NOW_MS = 4_102_444_800_123  # 2100-01-01, with milliseconds: more digits than %.14g keeps
NASTY: dict[str, Any] = {
    "quote": 'say "hi"\\n',
    "control": "nul\x00 tab\t newline\n bell\x07",
    "unicode": "é 😀 \u2028 </script>",
    "big": BIG,
    "negative": -BIG,
    "float": 0.1 + 0.2,
    "empty": [{}, [], ""],
}


def _run(rev: int, status: RunStatus = RunStatus.RUNNING) -> RunRecord:
    return RunRecord(
        run_id="blob",
        graph_id="g",
        graph_version=BIG,
        status=status,
        input=NASTY,
        created_at=1.5,
        updated_at=2.5,
        rev=rev,
    )


async def _on_every_primary(redis: Any, command: str, *args: Any, **kwargs: Any) -> list[Any]:
    """A server command's reply from the one server, or from each primary of a cluster
    (the cluster client sends such commands to one node unless told)."""
    if not CLUSTER:
        return [await getattr(redis, command)(*args, **kwargs)]
    replies = await getattr(redis, command)(*args, target_nodes=redis.PRIMARIES, **kwargs)
    # a dict, node -> reply; merged by the client for some commands (CONFIG RESETSTAT: all OK)
    return list(replies.values()) if isinstance(replies, dict) else [replies]


async def test_every_value_survives_the_change_set_exactly(
    redis: aioredis.Redis, redis_url: str
) -> None:
    keys = keys_for("blobtest")
    store = RunStore(redis, keys)
    rk, shard = keys.run("blob"), keys.shard_for("blob")
    node = NodeRecord(
        status=NodeStatus.QUEUED,
        visits=BIG,
        joins={"0": JoinState(ready=1, taken=1, trigger='a"b')},
    )
    timer_due = NOW_MS / 1000 + 3600
    t = Transition(
        run=_run(BIG),
        nodes={"n:1": node},
        outputs={("n:1", 7): NASTY},
        joins={("j", 3): "td"},
        loops={2: LoopRecord(tokens=BIG, touched=True, exits_taken=[1, 2])},
        active_add={"n:1": BIG},
        actions=[
            EnqueueNode(node_id="n:1", visit=7, attempt=1, queue="q", timeout_s=0.25),
            ScheduleTimer(timer="retry", due_at=timer_due, node_id="n:1", visit=7, attempt=2),
            PauseForApproval(node_id="h", visit=1, token='tok"\\'),
        ],
        history=[HistoryEvent(type="node.completed", at=1.25, node_id="n:1", data=NASTY)],
    )
    channel = await open_events(redis, keys, ["blob"])  # sharded: the run's shard channel
    try:
        assert await store.apply(t, None, None, NOW_MS, ack=None, stamp=None)
        assert not await store.apply(t, None, None, NOW_MS, ack=None, stamp=None)  # exists now

        async def heard() -> Any:
            return await channel.get_message(ignore_subscribe_messages=True, timeout=0.1)

        published = await wait_for(heard, timeout=5, message="the event published")
    finally:
        await channel.aclose()

    meta = await redis.hgetall(rk.meta)
    stamp = meta.pop(b"stamp")
    assert meta == {b"run": _run(BIG).dump(), b"rev": str(BIG).encode()}
    assert len(stamp) == 16 and int(stamp, 16) >= 0  # random hex, new with every write
    assert await redis.hget(rk.nodes, "n:1") == node.dump()
    assert await redis.hget(rk.outputs, "n:1#7") == dumps(NASTY)
    assert orjson.loads(await redis.hget(rk.outputs, "n:1#7")) == NASTY
    assert await redis.hget(rk.joins, "j#3") == b"td"
    loop = await redis.hget(rk.loops, "2")
    assert LoopRecord.model_validate_json(loop).tokens == BIG
    assert await redis.hget(rk.active, "n:1") == str(BIG).encode()
    assert await redis.hget(rk.waits, "h") == b'tok"\\'
    [(_, fields)] = await redis.xrange(rk.events)
    event = t.history[0].model_dump(mode="json")
    # one field per key of the event, each its JSON text; the key names the run
    assert fields == {k.encode(): dumps(v) for k, v in event.items()}
    assert list(fields) == [k.encode() for k in HISTORY_FIELDS]
    assert orjson.loads(fields[b"data"]) == NASTY
    # the channel carries the event's JSON as it always did (joined by the script), and
    # the entry reads back as that same text
    assert published is not None
    assert published["data"] == dumps({"run_id": "blob", **event})
    assert history_json("blob", fields) == published["data"]

    jid = keys.job_id("blob", "n:1", 7, 1)
    job = await redis.get(JOB_KEY_PREFIX + jid)
    assert decode_arq_job(job)["et"] == NOW_MS
    # The queue's score is the server's clock, whatever the dispatcher's says (2100 here):
    # the worker's claim compares it with the server's clock, so a skew never holds a job.
    server_s, server_us = await redis.time()
    score = await redis.zscore(shard.queue("q"), jid)
    assert score == int(score) and 0 <= server_s * 1000 + server_us // 1000 - score < 5_000
    # the wake-up names the job's score, with which a claim knows the job due
    [token] = await redis.lrange(shard.wake("q"), 0, -1)
    assert token == wake_token(jid, "g", BIG, int(score)).encode()
    assert 0 < await redis.pttl(JOB_KEY_PREFIX + jid) <= 86_400_000
    [(member, due)] = await redis.zrange(shard.timers, 0, -1, withscores=True)
    assert due == int(timer_due * 1000) and b'"timer":"retry"' in member
    assert await redis.zscore(shard.runs_all, "blob") == NOW_MS
    assert await redis.zscore(shard.runs_by_status("running"), "blob") == NOW_MS


async def test_a_run_is_scored_in_its_status_index_by_when_it_entered_the_status(
    redis: aioredis.Redis,
) -> None:
    """The status index is written when the status changes, not with every transition (the
    score is when the run entered the status: the approvals inbox lists the oldest first)."""
    keys = keys_for("blobtest")
    store = RunStore(redis, keys, retention_s=600)
    rk, shard = keys.run("blob"), keys.shard_for("blob")
    running, completed = shard.runs_by_status("running"), shard.runs_by_status("completed")
    assert await store.apply(Transition(run=_run(1)), None, None, NOW_MS, stamp=None)
    for rev in (1, 2):  # transitions that keep the run running
        stamp = (await redis.hget(rk.meta, "stamp")).decode()
        later = Transition(run=_run(rev + 1))
        assert await store.apply(later, rev, "running", NOW_MS + rev, stamp=stamp)
    assert await redis.zscore(running, "blob") == NOW_MS
    stamp = (await redis.hget(rk.meta, "stamp")).decode()
    done = Transition(run=_run(4, RunStatus.COMPLETED))
    assert await store.apply(done, 3, "running", NOW_MS + 9, stamp=stamp)
    assert await redis.zscore(running, "blob") is None
    assert await redis.zscore(completed, "blob") == NOW_MS + 9
    assert await redis.zscore(shard.runs_all, "blob") == NOW_MS
    # a finished run's write that sets its retention (its keys' expiry) moves its score
    # too: the index keeps it as long as its keys live
    stamp = (await redis.hget(rk.meta, "stamp")).decode()
    again = Transition(run=_run(5, RunStatus.COMPLETED), actions=[FinishRun(status="completed")])
    assert await store.apply(again, 4, "completed", NOW_MS + 20, stamp=stamp)
    assert await redis.zscore(completed, "blob") == NOW_MS + 20
    assert 0 < await redis.ttl(rk.meta) <= 600


async def test_deletes_releases_aborts_expiry_and_ack_in_one_change_set(
    redis: aioredis.Redis,
) -> None:
    keys = keys_for("blobtest")
    store = RunStore(redis, keys, retention_s=600)
    rk, shard = keys.run("blob"), keys.shard_for("blob")
    await redis.xgroup_create(shard.inbox, keys.inbox_group, "0", mkstream=True)
    entry = (await redis.xadd(shard.inbox, {"m": b"{}"})).decode()
    await redis.xreadgroup(keys.inbox_group, "c", {shard.inbox: ">"})
    first = Transition(
        run=_run(1),
        joins={("j", 3): "t"},
        active_add={"a": 1, "b": 2},
        actions=[PauseForApproval(node_id="h", visit=1, token="t1")],
    )
    assert await store.apply(first, None, None, NOW_MS, stamp=None)
    stamp = (await redis.hget(rk.meta, "stamp")).decode()
    assert not await store.apply(first, 0, "running", NOW_MS, stamp=stamp)  # stale revision
    assert not await store.apply(first, 1, "running", NOW_MS, stamp=None)  # stale stamp
    assert not await store.apply(first, 1, "running", NOW_MS, stamp="0" * 16)
    finish = Transition(
        run=_run(2, RunStatus.COMPLETED),
        joins={("j", 3): ""},  # an empty signal list deletes the field
        active_remove={"a", "b"},
        actions=[
            ReleaseWait(node_id="h"),
            CancelNode(node_id="a", visit=1, attempt=3),
            FinishRun(status="completed"),
        ],
    )
    assert await store.apply(finish, 1, "running", NOW_MS + 1, ack=entry, stamp=stamp)

    assert await redis.hget(rk.meta, "rev") == b"2"
    assert await redis.hget(rk.meta, "stamp") not in (None, stamp.encode())
    assert await redis.hlen(rk.joins) == 0 and await redis.hlen(rk.active) == 0
    assert await redis.hlen(rk.waits) == 0
    # one server: arq's own abort set (``arq:abort``)
    assert await redis.zscore(shard.abort, keys.job_id("blob", "a", 1, 3)) == NOW_MS + 1
    assert await redis.zscore(shard.runs_by_status("completed"), "blob") == NOW_MS + 1
    assert await redis.zscore(shard.runs_by_status("running"), "blob") is None
    assert 0 < await redis.ttl(rk.meta) <= 600
    pending = await redis.xpending(shard.inbox, keys.inbox_group)
    assert pending["pending"] == 0


async def test_a_finished_runs_history_is_rewritten_at_its_size(redis: aioredis.Redis) -> None:
    """A stream's newest node keeps the ~4 KB the server allocates ahead for it; the apply
    that finishes a run rewrites a short history at its size. The entries, their ids, the
    expiry and a follower blocked on the stream all come through it."""
    keys = keys_for("blobtest")
    store = RunStore(redis, keys, retention_s=600)
    rk = keys.run("blob")
    await redis.delete(*rk.all())

    def step(rev: int, n: int) -> Transition:
        history = [
            HistoryEvent(type="node.completed", at=1.5 + i, node_id=f"n{i}", visit=1, attempt=1)
            for i in range(n)
        ]
        status = RunStatus.COMPLETED if n == 1 else RunStatus.RUNNING
        actions = [FinishRun(status="completed")] if n == 1 else []
        return Transition(run=_run(rev, status), history=history, actions=actions)

    assert await store.apply(step(1, 20), None, None, NOW_MS, stamp=None)
    before = await redis.memory_usage(rk.events, samples=0)
    [(last, _)] = await redis.xrevrange(rk.events, count=1)
    follower = asyncio.create_task(redis.xread({rk.events: last}, block=10_000))
    await asyncio.sleep(0)  # the follower blocks before the run finishes
    stamp = (await redis.hget(rk.meta, "stamp")).decode()
    kept = await redis.xrange(rk.events)
    assert await store.apply(step(2, 1), 1, "running", NOW_MS + 1, stamp=stamp)

    after = await redis.xrange(rk.events)
    assert after[:-1] == kept and len(after) == 21
    assert history_event("blob", after[-1][1])["type"] == "node.completed"
    [[_, [(entry_id, fields)]]] = await asyncio.wait_for(follower, 10)
    assert (entry_id, fields) == after[-1]
    assert await redis.memory_usage(rk.events, samples=0) < before - 1000
    assert 0 < await redis.ttl(rk.events) <= 600
    # a finished run that goes on (a retry) appends to the rewritten history
    stamp = (await redis.hget(rk.meta, "stamp")).decode()
    again = Transition(
        run=_run(3),
        history=[HistoryEvent(type="run.retried", at=9.5)],
        actions=[ReopenRun()],
    )
    assert await store.apply(again, 2, "completed", NOW_MS + 2, stamp=stamp)
    [(_, fields)] = await redis.xrevrange(rk.events, count=1)
    assert history_event("blob", fields)["type"] == "run.retried"
    assert await redis.ttl(rk.events) == -1 and await redis.xlen(rk.events) == 22


async def test_history_entries_of_the_earlier_layout_still_read(
    redis: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """Runs started before the per-key layout hold the whole event in field ``e``; a history
    can mix both (a run in flight through an upgrade). An entry that is no event (added by
    hand) is skipped and logged, not an error that hides the rest."""
    keys = keys_for("blobtest")
    rk = keys.run("mixed")
    await redis.delete(rk.events)
    old = {"run_id": "mixed", "v": 1, "type": "run.started", "at": 1.5, "data": {}}
    await redis.xadd(rk.events, {"e": dumps(old)})
    bad = (await redis.xadd(rk.events, {"type": "not json"})).decode()
    new = HistoryEvent(type="node.enqueued", at=2.5, node_id="a", visit=1, attempt=1)
    await redis.xadd(rk.events, dict(zip(HISTORY_FIELDS, history_values(new), strict=True)))
    with caplog.at_level("WARNING", logger="relaygraph.dispatcher"):
        events = await RunStore(redis, keys).history("mixed")
    assert events == [old, {"run_id": "mixed", **new.model_dump(mode="json")}]
    assert f"skipping history entry {bad}, not an event" in caplog.text


async def test_a_run_finishes_for_a_user_without_dangerous_commands(
    redis: aioredis.Redis, redis_url: str
) -> None:
    """deploy/README's ACL user has ``+@all -@dangerous``: no RESTORE. The apply that
    finishes a run still does all it must (state, expiry, acknowledgement); only the
    history's rewrite at its size is left out. (A cluster's users are per node: it is
    made on every primary.)"""
    user, password = "rg-no-dangerous", "pw-7c1e"
    await _on_every_primary(
        redis,
        "acl_setuser",
        user,
        enabled=True,
        reset=True,
        passwords=[f"+{password}"],
        keys=["*"],
        channels=["*"],
        commands=["+@all", "-@dangerous", "+info"],
    )
    limited = client_for(redis_url, username=user, password=password)
    try:
        keys = keys_for("acltest")
        store = RunStore(limited, keys, retention_s=600)
        rk, inbox = keys.run("blob"), keys.shard_for("blob").inbox
        await redis.delete(*rk.all(), inbox)
        await redis.xgroup_create(inbox, keys.inbox_group, "0", mkstream=True)
        entry = (await redis.xadd(inbox, {"m": b"{}"})).decode()
        await redis.xreadgroup(keys.inbox_group, "c", {inbox: ">"})
        with pytest.raises(NoPermissionError):
            await limited.restore("acltest:probe", 0, b"x")
        started = Transition(run=_run(1), history=[HistoryEvent(type="run.started", at=1.0)])
        assert await store.apply(started, None, None, NOW_MS, stamp=None)
        stamp = (await redis.hget(rk.meta, "stamp")).decode()
        done = Transition(
            run=_run(2, RunStatus.COMPLETED),
            history=[HistoryEvent(type="run.completed", at=2.0)],
            actions=[FinishRun(status="completed")],
        )
        assert await store.apply(done, 1, "running", NOW_MS + 1, ack=entry, stamp=stamp)
        assert await redis.hget(rk.meta, "rev") == b"2"
        assert [e["type"] for e in await store.history("blob")] == ["run.started", "run.completed"]
        assert 0 < await redis.ttl(rk.events) <= 600 and 0 < await redis.ttl(rk.meta) <= 600
        assert (await redis.xpending(inbox, keys.inbox_group))["pending"] == 0
        assert await redis.memory_usage(rk.events, samples=0) > 4000  # not rewritten
    finally:
        await limited.aclose()
        await _on_every_primary(redis, "acl_deluser", user)


@pytest.mark.parametrize(
    ("runs", "of_graph"),
    [(1_300, 0.3), (1_300, 0.02)],  # the status index walked; the graph's index read whole
    ids=["walk-the-status-index", "read-the-smaller-graph-index"],
)
async def test_a_graphs_runs_in_a_status_page_newest_first_without_gaps_or_repeats(
    redis: aioredis.Redis, runs: int, of_graph: float
) -> None:
    """Listing one graph's runs in one status reads the two indexes key by key (no ZINTER:
    no multi-key command, and no whole intersection held for a page). Pages follow the
    status index's order, ties included, and together give each run once."""
    import random

    rng = random.Random(runs + int(of_graph * 100))
    keys = keys_for("listtest")
    store = RunStore(redis, keys)
    shards = [keys.shard(k) for k in range(max(1, keys.shards))]  # sharded: each run in its own
    indexes = ("runs_by_status", "completed"), ("runs_by_graph", "g"), ("runs_by_graph", "other")
    await redis.delete(*[getattr(s, index)(of) for s in shards for index, of in indexes])
    expected: list[tuple[str, int]] = []
    for i in range(runs):
        run_id, created = f"r{i:05d}", 1_000 + i
        shard = keys.shard_for(run_id)
        finished = 50_000 + rng.randrange(runs // 3)  # many runs finish in the same ms
        mine = rng.random() < of_graph
        await redis.zadd(shard.runs_by_graph("g" if mine else "other"), {run_id: created})
        if rng.random() < 0.8:  # the rest are in another status
            await redis.zadd(shard.runs_by_status("completed"), {run_id: finished})
            if mine:
                expected.append((run_id, finished))
        elif mine:
            await redis.zadd(shard.runs_by_status("failed"), {run_id: finished})
    expected.sort(key=lambda p: (p[1], p[0]), reverse=True)
    in_graph = sum([await redis.zcard(s.runs_by_graph("g")) for s in shards])
    in_status = sum([await redis.zcard(s.runs_by_status("completed")) for s in shards])
    assert (in_graph < in_status) == (of_graph < 0.5)
    assert expected and len(expected) < 800

    await _on_every_primary(redis, "config_resetstat")
    assert await store.list_runs("completed", 25, "g") == [r for r, _ in expected[:25]]
    seen: list[tuple[str, int]] = []
    before = None
    while True:
        page = await store.page_runs("completed", "g", 37, before)
        if not page:
            break
        seen += page
        before = (page[-1][1], page[-1][0])
    assert seen == expected
    assert await store.page_runs("completed", "nothing-of-it", 10) == []
    for used in await _on_every_primary(redis, "info", "commandstats"):
        assert not any(c.startswith(("cmdstat_zinter", "cmdstat_zunion")) for c in used), used
