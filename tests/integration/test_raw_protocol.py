"""The raw Redis protocol (docs/protocol.md) as a service with only a Redis client uses it,
against a real server and a dispatcher: run ids of raw submissions (its own, the default,
the lookup by idempotency key), inbox entries that are not one field ``m``, malformed
published approvals, and the version on events. The steps use plain redis-py only, and key
names worked out from the doc: the one-server names, or on a cluster (the suite's
``RELAYGRAPH_TEST_CLUSTER``) the rule of "A sharded deployment", with the slots the
cluster itself computes (``CLUSTER KEYSLOT``)."""

from __future__ import annotations

import json
import zlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from dispatcher.service import Dispatcher
from dispatcher.settings import DispatcherSettings
from graph_core.model import Graph, Node
from tests.support.dispatching import serving
from tests.support.layout import SHARDS, plain_client_for, subscribers
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

DEADLETTER = "relaygraph:deadletter"
RETENTION_S = 3600
SLOTS = 16_384


class Names:
    """docs/protocol.md's key names, as a client in another language works them out."""

    def __init__(self, tags: list[str]) -> None:
        self.tags = tags  # shard k's hash tag; none on one server

    @classmethod
    async def of(cls, redis: Any) -> Names:
        """Shard k's tag is s<k>-<n> with the smallest n whose slot lies in shard k's
        share of the slots: asked of the cluster, one KEYSLOT at a time."""
        tags = []
        for k in range(SHARDS):
            low, high = k * SLOTS // SHARDS, (k + 1) * SLOTS // SHARDS
            n = 0
            while not low <= await redis.execute_command("CLUSTER KEYSLOT", f"s{k}-{n}") < high:
                n += 1
            tags.append(f"s{k}-{n}")
        return cls(tags)

    def base(self, shard: int) -> str:
        return f"relaygraph:{{{self.tags[shard]}}}" if self.tags else "relaygraph"

    def shard(self, run_id: str) -> int:
        """``crc32(run_id) mod S`` (0 on one server)."""
        return zlib.crc32(run_id.encode()) % len(self.tags) if self.tags else 0

    def inbox(self, run_id: str | None = None) -> str:
        """The inbox of the run's shard (no run: the first shard's)."""
        return f"{self.base(self.shard(run_id) if run_id else 0)}:inbox"

    def meta(self, run_id: str) -> str:
        if self.tags:
            return f"{self.base(self.shard(run_id))}:run:{run_id}:meta"
        return f"relaygraph:run:{{{run_id}}}:meta"

    def runs(self, run_id: str) -> str:
        return f"{self.base(self.shard(run_id))}:runs"

    def idempotency(self, key: str) -> str:
        return f"{self.base(self.shard(key))}:idem:{key}"


@pytest.fixture
async def names(redis: Any) -> Names:
    return await Names.of(redis)


def quick_graph() -> Graph:
    """start -> end: a run completes as soon as a dispatcher handles its submission."""
    g = Graph(id="quick")
    g.add_nodes(Node("start", type="start"), Node("end", type="end"))
    g.connect("start", "end")
    return g.validate_graph()


def make_dispatcher(redis: aioredis.Redis) -> Dispatcher:
    return Dispatcher(
        redis, DispatcherSettings(shards=SHARDS, claim_idle_s=1.0, retention_s=RETENTION_S)
    )


@pytest.fixture
async def dispatcher(redis: aioredis.Redis) -> AsyncIterator[Dispatcher]:
    d = make_dispatcher(redis)
    await d.store.register_graph(quick_graph())
    async with serving(d):
        yield d


async def xadd(redis: aioredis.Redis, names: Names, message: dict[str, Any]) -> str:
    """To the inbox of the message's run's shard (without a run id: the first shard's)."""
    entry: bytes = await redis.xadd(names.inbox(message.get("run_id")), {"m": json.dumps(message)})
    return entry.decode()


async def run_record(redis: aioredis.Redis, names: Names, run_id: str) -> dict[str, Any]:
    """The run record once a dispatcher has written it (HGET of the meta hash)."""

    async def stored() -> dict[str, Any] | None:
        raw = await redis.hget(names.meta(run_id), "run")
        return json.loads(raw) if raw is not None else None

    record: dict[str, Any] = await wait_for(stored, timeout=10, message=f"run {run_id} stored")
    return record


async def dead_letters(redis: aioredis.Redis, count: int) -> list[dict[str, str]]:
    async def enough() -> list[dict[str, str]] | None:
        entries = await redis.xrange(DEADLETTER)
        decoded = [{k.decode(): v.decode() for k, v in f.items()} for _, f in entries]
        return decoded if len(decoded) >= count else None

    found: list[dict[str, str]] = await wait_for(
        enough, timeout=10, message=f"{count} dead letter(s)"
    )
    return found


class Events:
    """The live events, subscribed before the test sends anything: one server's channel, or
    every shard's channel on the node serving its slot (``SSUBSCRIBE``)."""

    def __init__(self, pubsubs: list[Any]) -> None:
        self.pubsubs = pubsubs

    async def next(self, type_: str) -> dict[str, Any]:
        async def heard() -> dict[str, Any] | None:
            for pubsub in self.pubsubs:
                msg = await pubsub.get_message(timeout=0.05)
                if msg is not None and msg["type"] in ("message", "smessage"):
                    event: dict[str, Any] = json.loads(msg["data"])
                    if event["type"] == type_:
                        return event
            return None

        found: dict[str, Any] = await wait_for(heard, timeout=10, message=f"a {type_} event")
        return found


@pytest.fixture
async def events(redis_url: str, names: Names) -> AsyncIterator[Events]:
    clients, pubsubs = [], []
    if not names.tags:
        channels_of: dict[tuple[str, int] | None, list[str]] = {None: ["relaygraph:events"]}
    else:  # each shard's channel, on the primary CLUSTER SLOTS names for its slot
        channels_of = {}
        plain = plain_client_for(redis_url)
        ranges = await plain.execute_command("CLUSTER SLOTS")  # [[first, last, [host, port..
        for k in range(len(names.tags)):
            channel = f"{names.base(k)}:events"
            slot = await plain.execute_command("CLUSTER KEYSLOT", channel)
            [(host, port)] = [(r[2][0], r[2][1]) for r in ranges if int(r[0]) <= slot <= int(r[1])]
            node = (host.decode() if isinstance(host, bytes) else host, int(port))
            channels_of.setdefault(node, []).append(channel)
        await plain.aclose()
    for node, channels in channels_of.items():
        client = (
            plain_client_for(redis_url)
            if node is None
            else aioredis.Redis(host=node[0], port=node[1])
        )
        pubsub = client.pubsub()
        clients.append(client)
        pubsubs.append(pubsub)
        if node is None:
            await pubsub.subscribe(*channels)
        else:  # one call per channel: a cluster takes one slot's channels in a call
            for channel in channels:
                await pubsub.execute_command("SSUBSCRIBE", channel)
        for _ in channels:  # each subscription confirmed
            await wait_for(lambda p=pubsub: p.get_message(timeout=0.1), message="subscribed")
    yield Events(pubsubs)
    for pubsub in pubsubs:
        await pubsub.aclose()
    for client in clients:
        await client.aclose()


# --- run ids ----------------------------------------------------------------------------


async def test_a_raw_submission_with_its_own_run_id(
    redis: aioredis.Redis, dispatcher: Dispatcher, names: Names
) -> None:
    await xadd(redis, names, {"kind": "submit", "graph_id": "quick", "run_id": "mine-1"})
    record = await run_record(redis, names, "mine-1")
    assert record["run_id"] == "mine-1"
    assert await redis.zscore(names.runs("mine-1"), "mine-1") is not None


async def test_the_default_run_id_is_the_entry_id_xadd_replies(
    redis: aioredis.Redis, dispatcher: Dispatcher, events: Events, names: Names
) -> None:
    message = {"kind": "submit", "graph_id": "quick", "input": {"n": 1}}
    entry_id = await xadd(redis, names, message)
    record = await run_record(redis, names, entry_id)
    assert (record["run_id"], record["input"]) == (entry_id, {"n": 1})
    submitted = await events.next("run.submitted")
    assert submitted["run_id"] == entry_id and submitted["v"] == 1


async def test_a_raw_submission_is_found_by_its_idempotency_key(
    redis: aioredis.Redis, dispatcher: Dispatcher, events: Events, names: Names
) -> None:
    key = names.idempotency("order 17/a:b{c}")  # the key verbatim, whatever it holds
    entry_id = await xadd(
        redis,
        names,
        {"kind": "submit", "graph_id": "quick", "idempotency_key": "order 17/a:b{c}"},
    )

    async def holder() -> bytes | None:
        value: bytes | None = await redis.get(key)
        return value

    assert await wait_for(holder, message="the idempotency key claimed") == entry_id.encode()
    assert 0 < await redis.ttl(key) <= RETENTION_S
    await run_record(redis, names, entry_id)

    # The same key again, with a run id of its own: nothing starts, the key stays put.
    again = {
        "kind": "submit",
        "graph_id": "quick",
        "run_id": "second",
        "idempotency_key": "order 17/a:b{c}",
    }
    await xadd(redis, names, again)
    ignored = await events.next("event.ignored")
    assert ignored == {
        "v": 1,
        "type": "event.ignored",
        "run_id": entry_id,
        "at": ignored["at"],
        "data": {"kind": "submit", "reason": f"duplicate of run {entry_id!r}", "node_id": None},
    }
    assert await redis.get(key) == entry_id.encode()
    assert await redis.exists(names.meta("second")) == 0


async def test_a_refused_submission_claims_no_idempotency_key(
    redis: aioredis.Redis, dispatcher: Dispatcher, names: Names
) -> None:
    await xadd(redis, names, {"kind": "submit", "graph_id": "nope", "idempotency_key": "k1"})
    [letter] = await dead_letters(redis, 1)
    assert letter["reason"] == "graph 'nope' is not registered"
    assert await redis.get(names.idempotency("k1")) is None


# --- inbox entries that are not one field m --------------------------------------------------


async def test_inbox_entries_not_shaped_as_one_field_m_are_dead_lettered_saying_so(
    redis: aioredis.Redis, dispatcher: Dispatcher, names: Names
) -> None:
    cancel = json.dumps({"kind": "cancel", "run_id": "r"})
    inbox = names.inbox("r")
    await redis.xadd(inbox, {"msg": cancel})
    await redis.xadd(inbox, {"m": cancel, "trace": "abc"})
    await redis.xadd(inbox, {"m": ""})
    await redis.xadd(inbox, {f"f{i}": "x" for i in range(7)})
    await xadd(redis, names, {"kind": "submit", "graph_id": "quick", "run_id": "after"})
    letters = await dead_letters(redis, 4)
    assert [(d["source"], d["reason"]) for d in letters] == [
        ("inbox", "malformed inbox message: the entry has no field 'm' (its fields: 'msg')"),
        (
            "inbox",
            "malformed inbox message: the entry has fields other than 'm' ('trace'); "
            "an inbox entry has exactly one field, 'm'",
        ),
        ("inbox", "malformed inbox message: field 'm' is empty"),
        (
            "inbox",
            "malformed inbox message: the entry has no field 'm' "
            "(its fields: 'f0', 'f1', 'f2', 'f3', 'f4' and 2 more)",
        ),
    ]
    # raw: the entry's fields as one JSON object when it is not exactly one field m
    assert json.loads(letters[0]["raw"]) == {"msg": cancel}
    assert json.loads(letters[1]["raw"]) == {"m": cancel, "trace": "abc"}
    assert letters[2]["raw"] == ""
    # every one is acknowledged, and the inbox goes on
    assert (await run_record(redis, names, "after"))["status"] == "completed"
    pending = await redis.xpending(inbox, "dispatchers")
    assert pending["pending"] == 0


# --- published approvals ------------------------------------------------------------------


async def test_a_malformed_published_approval_is_dead_lettered_once(
    redis: aioredis.Redis, dispatcher: Dispatcher, redis_url: str
) -> None:
    async def listening() -> bool:  # the dispatcher, and only it
        return await subscribers(redis_url, "relaygraph:approvals") == 1

    await wait_for(listening, message="the dispatcher subscribed to approvals")
    publisher = plain_client_for(redis_url)  # on a cluster: one node's, heard on every node
    try:
        await publisher.publish("relaygraph:approvals", b'{"run_id": "r", "node_id": ')
    finally:
        await publisher.aclose()
    [letter] = await dead_letters(redis, 1)
    assert letter["source"] == "approvals" and letter["reason"].startswith(
        "malformed approval message: not JSON"
    )
    # Every dispatcher hears a publish; only the first of them dead-letters it.
    raw = b'{"run_id": "r", "node_id": "n", "decision": "maybe", "token": "t"}'
    others = [make_dispatcher(redis) for _ in range(3)]
    for d in others:
        await d._approval_published(raw)
    letters = await dead_letters(redis, 2)
    assert len(letters) == 2 and "decision" in letters[1]["reason"]
