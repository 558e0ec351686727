"""The raw Redis protocol (docs/protocol.md) as a service with only a Redis client uses it,
against a real server and a dispatcher: run ids of raw submissions (its own, the default,
the lookup by idempotency key), inbox entries that are not one field ``m``, malformed
published approvals, and the version on events. The steps use plain redis-py only."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from dispatcher.service import Dispatcher
from dispatcher.settings import DispatcherSettings
from graph_core.model import Graph, Node
from tests.support.dispatching import serving
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

INBOX = "relaygraph:inbox"
DEADLETTER = "relaygraph:deadletter"
RETENTION_S = 3600


def quick_graph() -> Graph:
    """start -> end: a run completes as soon as a dispatcher handles its submission."""
    g = Graph(id="quick")
    g.add_nodes(Node("start", type="start"), Node("end", type="end"))
    g.connect("start", "end")
    return g.validate_graph()


def make_dispatcher(redis: aioredis.Redis) -> Dispatcher:
    return Dispatcher(redis, DispatcherSettings(claim_idle_s=1.0, retention_s=RETENTION_S))


@pytest.fixture
async def dispatcher(redis: aioredis.Redis) -> AsyncIterator[Dispatcher]:
    d = make_dispatcher(redis)
    await d.store.register_graph(quick_graph())
    async with serving(d):
        yield d


async def xadd(redis: aioredis.Redis, message: dict[str, Any]) -> str:
    entry: bytes = await redis.xadd(INBOX, {"m": json.dumps(message)})
    return entry.decode()


async def run_record(redis: aioredis.Redis, run_id: str) -> dict[str, Any]:
    """The run record once a dispatcher has written it (HGET of the meta hash)."""

    async def stored() -> dict[str, Any] | None:
        raw = await redis.hget(f"relaygraph:run:{{{run_id}}}:meta", "run")
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
    """The events channel, subscribed before the test sends anything."""

    def __init__(self, pubsub: Any) -> None:
        self.pubsub = pubsub

    async def next(self, type_: str) -> dict[str, Any]:
        async def heard() -> dict[str, Any] | None:
            msg = await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
            if msg is None or msg["type"] != "message":
                return None
            event: dict[str, Any] = json.loads(msg["data"])
            return event if event["type"] == type_ else None

        found: dict[str, Any] = await wait_for(heard, timeout=10, message=f"a {type_} event")
        return found


@pytest.fixture
async def events(redis_url: str) -> AsyncIterator[Events]:
    client = aioredis.Redis.from_url(redis_url)
    pubsub = client.pubsub()
    await pubsub.subscribe("relaygraph:events")
    await wait_for(
        lambda: pubsub.get_message(timeout=0.1), message="subscribed to relaygraph:events"
    )
    yield Events(pubsub)
    await pubsub.aclose()
    await client.aclose()


# --- run ids ----------------------------------------------------------------------------


async def test_a_raw_submission_with_its_own_run_id(
    redis: aioredis.Redis, dispatcher: Dispatcher
) -> None:
    await xadd(redis, {"kind": "submit", "graph_id": "quick", "run_id": "mine-1"})
    record = await run_record(redis, "mine-1")
    assert record["run_id"] == "mine-1"
    assert await redis.zscore("relaygraph:runs", "mine-1") is not None


async def test_the_default_run_id_is_the_entry_id_xadd_replies(
    redis: aioredis.Redis, dispatcher: Dispatcher, events: Events
) -> None:
    entry_id = await xadd(redis, {"kind": "submit", "graph_id": "quick", "input": {"n": 1}})
    record = await run_record(redis, entry_id)
    assert (record["run_id"], record["input"]) == (entry_id, {"n": 1})
    submitted = await events.next("run.submitted")
    assert submitted["run_id"] == entry_id and submitted["v"] == 1


async def test_a_raw_submission_is_found_by_its_idempotency_key(
    redis: aioredis.Redis, dispatcher: Dispatcher, events: Events
) -> None:
    key = "relaygraph:idem:order 17/a:b{c}"  # the key verbatim, whatever it holds
    entry_id = await xadd(
        redis, {"kind": "submit", "graph_id": "quick", "idempotency_key": "order 17/a:b{c}"}
    )

    async def holder() -> bytes | None:
        value: bytes | None = await redis.get(key)
        return value

    assert await wait_for(holder, message="the idempotency key claimed") == entry_id.encode()
    assert 0 < await redis.ttl(key) <= RETENTION_S
    await run_record(redis, entry_id)

    # The same key again, with a run id of its own: nothing starts, the key stays put.
    again = {
        "kind": "submit",
        "graph_id": "quick",
        "run_id": "second",
        "idempotency_key": "order 17/a:b{c}",
    }
    await xadd(redis, again)
    ignored = await events.next("event.ignored")
    assert ignored == {
        "v": 1,
        "type": "event.ignored",
        "run_id": entry_id,
        "at": ignored["at"],
        "data": {"kind": "submit", "reason": f"duplicate of run {entry_id!r}", "node_id": None},
    }
    assert await redis.get(key) == entry_id.encode()
    assert await redis.exists("relaygraph:run:{second}:meta") == 0


async def test_a_refused_submission_claims_no_idempotency_key(
    redis: aioredis.Redis, dispatcher: Dispatcher
) -> None:
    await xadd(redis, {"kind": "submit", "graph_id": "nope", "idempotency_key": "k1"})
    [letter] = await dead_letters(redis, 1)
    assert letter["reason"] == "graph 'nope' is not registered"
    assert await redis.get("relaygraph:idem:k1") is None


# --- inbox entries that are not one field m --------------------------------------------------


async def test_inbox_entries_not_shaped_as_one_field_m_are_dead_lettered_saying_so(
    redis: aioredis.Redis, dispatcher: Dispatcher
) -> None:
    cancel = json.dumps({"kind": "cancel", "run_id": "r"})
    await redis.xadd(INBOX, {"msg": cancel})
    await redis.xadd(INBOX, {"m": cancel, "trace": "abc"})
    await redis.xadd(INBOX, {"m": ""})
    await redis.xadd(INBOX, {f"f{i}": "x" for i in range(7)})
    await xadd(redis, {"kind": "submit", "graph_id": "quick", "run_id": "after"})
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
    assert (await run_record(redis, "after"))["status"] == "completed"
    pending = await redis.xpending(INBOX, "dispatchers")
    assert pending["pending"] == 0


# --- published approvals ------------------------------------------------------------------


async def test_a_malformed_published_approval_is_dead_lettered_once(
    redis: aioredis.Redis, dispatcher: Dispatcher
) -> None:
    assert await redis.publish("relaygraph:approvals", b'{"run_id": "r", "node_id": ') == 1
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
