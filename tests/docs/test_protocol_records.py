"""What a raw reader sees, against docs/protocol.md's tables: runs on a real server (a
loop, waits, an approval, a cancel, retries, a join, a parallel node, failures), then
their meta hashes, run records, node records, histories and run views read with plain
Redis commands, each field looked up in the doc's table for it."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from dispatcher.client import load_graph
from dispatcher.service import Dispatcher
from dispatcher.settings import DispatcherSettings
from dispatcher.views import load_run_view
from graph_core.model import Edge, Graph, Node, RetryPolicy
from tests.docs.protocol_doc import FieldRow, doc_text, field_tables, table_after
from tests.support.fake_worker import FakeWorker, running
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

TEXT = doc_text()
TABLES = {name: {row.name for row in rows} for name, rows in field_tables(TEXT).items()}
APPROVAL = "examples/approval/graph.json"
PREFIX = "relaygraph"


def event_types() -> dict[str, set[str]]:
    """Documented event type -> the ``data`` keys its row names."""
    documented: dict[str, set[str]] = {}
    row: FieldRow
    for row in table_after(TEXT, "event types"):
        data = set(re.findall(r"`([a-z_]+)`", row.cells["data"]))
        for name in row.names:
            documented[name] = data
    return documented


def branches_graph() -> Graph:
    """A parallel node (two children), a fan-out to a join, and a node that fails twice
    (one retry): the run fails."""
    g = Graph(id="branches")
    g.add_nodes(
        Node("start", type="start"),
        Node("par", type="parallel"),
        Node("p1", type="work", parent="par"),
        Node("p2", type="work", parent="par"),
        Node("fan", type="work", fan_out=True),
        Node("ok", type="work"),
        Node(
            "bad",
            type="work",
            retry=RetryPolicy(max_attempts=2, backoff="fixed", initial_delay_s=0),
        ),
        Node("join", type="work"),
        Node("end", type="end"),
    )
    g.connect("start", "par", "fan")
    g.add_edges(Edge("fan", "ok"), Edge("fan", "bad"), Edge("ok", "join"), Edge("bad", "join"))
    g.connect("join", "end")
    return g.validate_graph()


def fail_bad(node_id: str, payload: dict[str, Any]) -> Any:
    raise RuntimeError("bad broke")


class Raw:
    """Plain Redis reads of one run's records, as a service in another language makes them."""

    def __init__(self, redis: aioredis.Redis, run_id: str) -> None:
        self.redis = redis
        self.run_id = run_id
        self.base = f"{PREFIX}:run:{{{run_id}}}"

    async def meta(self) -> dict[str, str]:
        raw = await self.redis.hgetall(f"{self.base}:meta")
        return {k.decode(): v.decode() for k, v in raw.items()}

    async def run(self) -> dict[str, Any] | None:
        raw = await self.redis.hget(f"{self.base}:meta", "run")
        return json.loads(raw) if raw is not None else None

    async def nodes(self) -> dict[str, dict[str, Any]]:
        raw = await self.redis.hgetall(f"{self.base}:nodes")
        return {k.decode(): json.loads(v) for k, v in raw.items()}

    async def token(self, node_id: str) -> str | None:
        raw = await self.redis.hget(f"{self.base}:waits", node_id)
        return raw.decode() if raw is not None else None

    async def history(self) -> list[dict[str, Any]]:
        # as documented: one field per key of the event, each its JSON; the run id is the key's
        entries = await self.redis.xrange(f"{self.base}:events")
        documented = ["v", "type", "at", "node_id", "visit", "attempt", "data"]
        assert all([k.decode() for k in fields] == documented for _, fields in entries)
        return [
            {"run_id": self.run_id, **{k.decode(): json.loads(v) for k, v in fields.items()}}
            for _, fields in entries
        ]


@pytest.fixture
async def dispatcher(redis: aioredis.Redis) -> AsyncIterator[Dispatcher]:
    d = Dispatcher(redis, DispatcherSettings(claim_idle_s=1.0))
    await d.store.register_graph(load_graph(APPROVAL))
    await d.store.register_graph(branches_graph())
    handlers = {
        "draft": lambda n, p: {"title": "a post"},  # review's prompt is templated from it
        "bad": fail_bad,
        "*": lambda n, p: {"node": n},
    }
    worker = FakeWorker(redis, d.keys, handlers)
    async with running(d, worker):
        yield d


async def submit(redis: aioredis.Redis, graph_id: str, run_id: str) -> Raw:
    message = {"kind": "submit", "graph_id": graph_id, "run_id": run_id, "input": {"topic": "t"}}
    await redis.xadd(f"{PREFIX}:inbox", {"m": json.dumps(message)})
    return Raw(redis, run_id)


async def waiting_token(raw: Raw, visit: int) -> str:
    async def token() -> str | None:
        nodes = await raw.nodes()
        wait = nodes.get("review", {}).get("wait")
        return await raw.token("review") if wait and wait["visit"] == visit else None

    return await wait_for(token, timeout=15, message=f"review waiting (visit {visit})")


async def decide(redis: aioredis.Redis, run_id: str, decision: str, token: str) -> None:
    approval = {"run_id": run_id, "node_id": "review", "decision": decision, "token": token}
    assert await redis.publish(f"{PREFIX}:approvals", json.dumps(approval)) == 1


async def finished(raw: Raw) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        run = await raw.run()
        return run if run is not None and run["finished_at"] is not None else None

    result: dict[str, Any] = await wait_for(done, timeout=20, message=f"{raw.base} finished")
    return result


def check_error(error: dict[str, Any], *, complete: bool) -> None:
    """An error object's fields are the documented ones (all of them in run records and
    events; in node records the defaults are left out)."""
    if complete:
        assert set(error) == TABLES["error"], error
    else:
        assert {"type", "message"} <= set(error) <= TABLES["error"], error


def check_node_records(nodes: dict[str, dict[str, Any]], seen: set[str]) -> None:
    for node_id, record in nodes.items():
        undocumented = set(record) - TABLES["node record"]
        assert not undocumented, f"node {node_id!r}: {undocumented} are not documented"
        seen.update(record)
        if "error" in record:
            check_error(record["error"], complete=False)
        if "wait" in record:
            assert {"token", "since", "visit"} <= set(record["wait"]) <= TABLES["wait"]
        for counters in record.get("joins", {}).values():
            assert set(counters) <= TABLES["join counters"], counters


async def check_run(raw: Raw, seen_fields: set[str], seen_types: set[str]) -> dict[str, Any]:
    meta = await raw.meta()
    assert set(meta) == TABLES["meta hash"]
    run = json.loads(meta["run"])
    assert set(run) == TABLES["run record"], "a run record holds every documented field"
    assert run["rev"] == int(meta["rev"])
    if run["error"] is not None:
        check_error(run["error"], complete=True)
    check_node_records(await raw.nodes(), seen_fields)
    types = event_types()
    for event in await raw.history():
        assert set(event) == TABLES["event"], event
        assert event["v"] == 1
        assert event["type"] in types, f"event type {event['type']!r} is not documented"
        assert set(event["data"]) <= types[event["type"]], event
        if "error" in event["data"]:
            check_error(event["data"]["error"], complete=True)
        seen_types.add(event["type"])
    return run


def check_view(view: dict[str, Any]) -> None:
    assert set(view) == TABLES["run view"]
    for node in view["nodes"].values():
        assert set(node) == TABLES["node view"]
    for wait in view["waiting"]:
        assert set(wait) == TABLES["wait view"]
    if view["error"] is not None:
        check_error(view["error"], complete=True)


async def test_raw_records_hold_exactly_the_documented_fields(
    redis: aioredis.Redis, dispatcher: Dispatcher
) -> None:
    seen_fields: set[str] = set()
    seen_types: set[str] = set()

    # A loop through a wait, rejected until review's max_visits fails the run.
    looped = await submit(redis, "approval", "looped")
    for visit in (1, 2, 3):
        token = await waiting_token(looped, visit)
        if visit == 1:  # the records while a node waits: its wait, the view's waiting list
            check_node_records(await looped.nodes(), seen_fields)
            view = await load_run_view(dispatcher.store, "looped")
            assert view is not None and view.waiting
            check_view(view.to_json_dict())
        await decide(redis, "looped", "reject", token)
    run = await finished(looped)
    assert (run["status"], run["error"]["code"]) == ("failed", "max_visits")

    approved = await submit(redis, "approval", "approved")
    await decide(redis, "approved", "approve", await waiting_token(approved, 1))
    assert (await finished(approved))["status"] == "completed"

    cancelled = await submit(redis, "approval", "cancelled")
    await waiting_token(cancelled, 1)
    cancel = {"kind": "cancel", "run_id": "cancelled", "reason": "no"}
    await redis.xadd(f"{PREFIX}:inbox", {"m": json.dumps(cancel)})
    assert (await finished(cancelled))["status"] == "cancelled"

    branches = await submit(redis, "branches", "branches")
    run = await finished(branches)
    assert run["status"] == "failed" and run["error"]["node_id"] == "bad"

    for raw, run_id in ((looped, "looped"), (approved, "approved"), (cancelled, "cancelled")):
        await check_run(raw, seen_fields, seen_types)
        view = await load_run_view(dispatcher.store, run_id)
        assert view is not None
        check_view(view.to_json_dict())
    await check_run(branches, seen_fields, seen_types)
    view = await load_run_view(dispatcher.store, "branches")
    assert view is not None
    check_view(view.to_json_dict())

    # The runs above did reach the fields and events this test is meant to look at.
    assert {
        "status",
        "visits",
        "attempt",
        "last_ok_visit",
        "started_at",
        "finished_at",
        "error",
        "wait",
        "trigger",
        "children_done",
        "parent_visit",
        "joins",
    } <= seen_fields, seen_fields
    assert {
        "run.submitted",
        "run.completed",
        "run.failed",
        "run.cancelled",
        "node.enqueued",
        "node.completed",
        "node.waiting",
        "node.approved",
        "node.rejected",
        "node.retry_scheduled",
        "node.failed",
        "node.cancelled",
    } <= seen_types, seen_types
