"""``WorkflowClient`` against a real server, an in-process dispatcher and an in-process worker:
submit, wait, the run view, listings, history, cancel, idempotency under concurrency, and
approvals by the durable inbox and by the approvals channel."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from dispatcher import SyncWorkflowClient, WorkflowClient
from dispatcher.client import InputError, NodeNotWaiting, RunExists, RunNotFound, WaitTimeout
from dispatcher.service import Dispatcher
from dispatcher.settings import DispatcherSettings
from dispatcher.store import GraphNotFound
from dispatcher.views import RunView
from graph_core.conditions import Condition as C
from graph_core.errors import GraphValidationError, RelaygraphError
from graph_core.model import Edge, Graph, Node
from graph_core.status import NodeStatus, RunStatus
from tests.support.layout import (
    SHARDS,
    client_for,
    event_subscribers,
    inbox_length,
    keys_for,
    subscribers,
    workflow_client,
)
from tests.support.waiting import wait_for
from worker.app import serve
from worker.context import NodeContext, NonRetryableError
from worker.registry import HandlerRegistry
from worker.settings import WorkerSettings

pytestmark = pytest.mark.integration

KEYS = keys_for()
RUN_VIEW_FIELDS = {
    "run_id",
    "graph_id",
    "graph_version",
    "status",
    "input",
    "output",
    "error",
    "created_at",
    "updated_at",
    "finished_at",
    "nodes",
    "waiting",
    "history_length",
}
NODE_VIEW_FIELDS = {"status", "visits", "attempts", "output", "error", "started_at", "finished_at"}


# --- graphs and handlers -------------------------------------------------------------------


def echo_graph() -> Graph:
    """start -> shout -> end; ``shout`` upper-cases ``input.text``."""
    g = Graph(id="echo").add_nodes(
        Node("start", type="start"), Node("shout", type="shout"), Node("end", type="end")
    )
    return g.connect("start", "shout", "end").validate_graph()


def approval_graph() -> Graph:
    """start -> review (human) -> ok (approve) / no (otherwise) -> end."""
    g = Graph(id="approve-me").add_nodes(
        Node("start", type="start"),
        Node("review", type="human", config={"prompt": "ship {{input.what}}?"}),
        Node("ok", type="shout"),
        Node("no", type="shout"),
        Node("end", type="end"),
    )
    g.add_edges(
        Edge("start", "review"),
        Edge("review", "ok", condition=C.field("review.output.decision").eq("approve")),
        Edge("review", "no", condition=C.otherwise()),
        Edge("ok", "end"),
        Edge("no", "end"),
    )
    return g.validate_graph()


def blocked_graph() -> Graph:
    g = Graph(id="blocked").add_nodes(
        Node("start", type="start"), Node("hang", type="hang"), Node("end", type="end")
    )
    return g.connect("start", "hang", "end").validate_graph()


def failing_graph() -> Graph:
    g = Graph(id="failing").add_nodes(
        Node("start", type="start"), Node("boom", type="boom"), Node("end", type="end")
    )
    return g.connect("start", "boom", "end").validate_graph()


def registry() -> tuple[HandlerRegistry, asyncio.Event]:
    reg = HandlerRegistry()
    hanging = asyncio.Event()

    @reg.handler("shout")
    def shout(ctx: NodeContext) -> dict[str, Any]:
        text = ctx.input.get("text", "") if isinstance(ctx.input, dict) else ""
        return {"text": text.upper(), "node": ctx.node_id}

    @reg.handler("hang")
    async def hang(ctx: NodeContext) -> None:
        hanging.set()
        await asyncio.Event().wait()  # until the job is aborted (run cancelled)

    @reg.handler("boom")
    def boom(ctx: NodeContext) -> None:
        raise NonRetryableError("the boom node always fails")

    return reg, hanging


# --- fixtures ------------------------------------------------------------------------------

Starter = Callable[[], Awaitable[None]]


@pytest.fixture
async def start_dispatcher(redis: aioredis.Redis, redis_url: str) -> AsyncIterator[Starter]:
    """Factory: start an in-process dispatcher (stopped at teardown). Depends on ``redis``
    so the server is flushed before anything starts, never under a running dispatcher."""
    stops: list[tuple[asyncio.Event, asyncio.Task[None], aioredis.Redis]] = []

    async def start() -> None:
        client = client_for(redis_url)
        dispatcher = Dispatcher(client, DispatcherSettings(shards=SHARDS, redis_url=redis_url))
        stop = asyncio.Event()
        task = asyncio.create_task(dispatcher.run(stop))
        await wait_for(dispatcher.ready.is_set, message="dispatcher ready")
        stops.append((stop, task, client))

    yield start
    for stop, task, client in stops:
        stop.set()
        await asyncio.wait_for(task, timeout=10)
        await client.aclose()


@pytest.fixture
async def hanging_started(redis: aioredis.Redis, redis_url: str) -> AsyncIterator[asyncio.Event]:
    """An in-process worker serving the test registry; yields the "hang started" event."""
    reg, hanging = registry()
    settings = WorkerSettings(shards=SHARDS, redis_url=redis_url, poll_delay=0.01)
    server = asyncio.create_task(serve(settings, reg, grace_s=0))
    yield hanging
    server.cancel()
    await asyncio.wait_for(asyncio.gather(server, return_exceptions=True), timeout=20)


@pytest.fixture
async def engine(start_dispatcher: Starter, hanging_started: asyncio.Event) -> None:
    """A dispatcher and a worker running."""
    await start_dispatcher()


@pytest.fixture
async def client(redis: aioredis.Redis, redis_url: str) -> AsyncIterator[WorkflowClient]:
    async with workflow_client(redis_url) as c:
        for graph in (echo_graph(), approval_graph(), blocked_graph(), failing_graph()):
            await c.register_graph(graph)
        yield c


async def waiting_view(client: WorkflowClient, run_id: str) -> RunView:
    async def check() -> RunView | None:
        view = await client.get_run(run_id)
        return view if view is not None and view.waiting else None

    view = await wait_for(check, timeout=10, message=f"run {run_id} waiting for an approval")
    assert view is not None
    return view


# --- submit, wait, the view -----------------------------------------------------------------


@pytest.mark.usefixtures("engine")
async def test_submit_wait_and_view_shape(client: WorkflowClient) -> None:
    run_id = await client.submit("echo", {"text": "hi"})
    view = await client.wait(run_id, timeout=10)

    assert view.status == RunStatus.COMPLETED and view.terminal
    assert view.output == {"text": "HI", "node": "shout"}
    doc = view.to_json_dict()
    assert set(doc) == RUN_VIEW_FIELDS
    assert doc["status"] == "completed" and doc["error"] is None and doc["waiting"] == []
    assert list(doc["nodes"]) == ["start", "shout", "end"]  # graph order
    assert all(set(n) == NODE_VIEW_FIELDS for n in doc["nodes"].values())
    shout = view.nodes["shout"]
    assert (shout.status, shout.visits, shout.attempts) == (NodeStatus.COMPLETED, 1, 1)
    assert shout.output == {"text": "HI", "node": "shout"}
    assert view.finished_at is not None and view.finished_at >= view.created_at
    assert view.history_length == len(await client.history(run_id))


@pytest.mark.usefixtures("engine")
async def test_history_lists_every_transition(client: WorkflowClient) -> None:
    run_id = await client.submit("echo", {"text": "x"})
    await client.wait(run_id, timeout=10)
    types = [(e["type"], e.get("node_id")) for e in await client.history(run_id)]
    assert types[0] == ("run.submitted", None)
    assert ("node.enqueued", "shout") in types
    assert ("node.completed", "shout") in types
    assert types[-1] == ("run.completed", None)
    assert all(e["run_id"] == run_id for e in await client.history(run_id))


@pytest.mark.usefixtures("engine")
async def test_failed_run_carries_the_error(client: WorkflowClient) -> None:
    view = await client.wait(await client.submit("failing"), timeout=10)
    assert view.status == RunStatus.FAILED
    assert view.error is not None and view.error.node_id == "boom"
    assert "always fails" in view.error.message
    assert view.nodes["boom"].status == NodeStatus.FAILED
    assert view.nodes["end"].status == NodeStatus.PENDING


async def test_unknown_things(client: WorkflowClient) -> None:
    assert await client.get_run("no-such-run") is None
    with pytest.raises(RunNotFound, match="no-such-run"):
        await client.wait("no-such-run", timeout=1)
    with pytest.raises(RunNotFound):
        await client.cancel("no-such-run")
    with pytest.raises(RunNotFound):
        await client.approve("no-such-run", "review")
    with pytest.raises(GraphNotFound, match="'nope' is not registered"):
        await client.submit("nope")
    with pytest.raises(GraphNotFound, match="version 9"):
        await client.submit("echo", version=9)
    with pytest.raises(RelaygraphError, match="invalid run id"):
        await client.submit("echo", run_id="bad id!")


async def test_submit_refuses_what_cannot_be_sent(
    client: WorkflowClient, redis: aioredis.Redis
) -> None:
    with pytest.raises(InputError, match="input: not JSON-serializable"):
        await client.submit("echo", {"when": object()})
    small = WorkflowClient(redis, max_message_bytes=2048, shards=SHARDS)
    with pytest.raises(InputError, match="over the 2048-byte limit"):
        await small.submit("echo", {"text": "x" * 4096})
    with pytest.raises(InputError, match="idempotency key"):
        await client.submit("echo", idempotency_key="k" * 300)
    assert await inbox_length(redis, KEYS) == 0  # nothing was sent


async def test_submit_without_dispatcher_leaves_a_pending_run(
    client: WorkflowClient, redis: aioredis.Redis, start_dispatcher: Starter
) -> None:
    run_id = await client.submit("echo", {"text": "later"}, run_id="my-run-1")
    assert run_id == "my-run-1"
    view = await client.get_run(run_id)
    assert view is not None and view.status == RunStatus.PENDING
    assert all(n.status == NodeStatus.PENDING for n in view.nodes.values())
    assert [r.run_id for r in await client.list_runs("pending")] == [run_id]
    assert await inbox_length(redis, KEYS) == 1
    pending_stamp = await redis.hget(KEYS.run(run_id).meta, "stamp")
    assert pending_stamp is not None and len(pending_stamp) == 16  # what its first apply expects
    with pytest.raises(RunExists):
        await client.submit("echo", run_id="my-run-1")

    await start_dispatcher()  # the durable inbox entry starts the run now
    view = await wait_for(
        lambda: _status_is(client, run_id, RunStatus.RUNNING), message="run started"
    )
    assert await redis.hget(KEYS.run(run_id).meta, "stamp") not in (None, pending_stamp)
    assert await client.list_runs("pending") == []
    assert [r.run_id for r in await client.list_runs("running")] == [run_id]


async def _status_is(client: WorkflowClient, run_id: str, status: RunStatus) -> RunView | None:
    view = await client.get_run(run_id)
    return view if view is not None and view.status == status else None


# --- idempotency ----------------------------------------------------------------------------


@pytest.mark.usefixtures("engine")
async def test_idempotent_submit_returns_the_same_run(client: WorkflowClient) -> None:
    first = await client.submit("echo", {"text": "a"}, idempotency_key="order-1")
    again = await client.submit("echo", {"text": "b"}, idempotency_key="order-1")
    assert again == first
    other = await client.submit("echo", {"text": "c"}, idempotency_key="order-2")
    assert other != first
    view = await client.wait(first, timeout=10)
    assert view.output == {"text": "A", "node": "shout"}  # the first input, not the second
    assert len(await client.list_runs()) == 2


@pytest.mark.usefixtures("engine")
async def test_twenty_concurrent_submitters_with_one_key_start_one_run(
    redis_url: str, client: WorkflowClient, redis: aioredis.Redis
) -> None:
    submitters = [workflow_client(redis_url) for _ in range(20)]
    try:
        ids = await asyncio.gather(
            *(
                c.submit("echo", {"text": str(i)}, idempotency_key="race")
                for i, c in enumerate(submitters)
            )
        )
    finally:
        await asyncio.gather(*(c.aclose() for c in submitters))
    assert len(set(ids)) == 1
    [run_id] = set(ids)
    assert await redis.zcard(KEYS.shard_for(run_id).runs_all) == 1
    view = await client.wait(run_id, timeout=10)
    assert view.status == RunStatus.COMPLETED
    submitted = [e for e in await client.history(run_id) if e["type"] == "run.submitted"]
    assert len(submitted) == 1


# --- listing, cancelling --------------------------------------------------------------------


@pytest.mark.usefixtures("engine")
async def test_list_runs_newest_first_with_filters(client: WorkflowClient) -> None:
    done = [await client.submit("echo", {"text": str(i)}) for i in range(3)]
    for run_id in done:
        await client.wait(run_id, timeout=10)
    failed = await client.submit("failing")
    await client.wait(failed, timeout=10)

    runs = await client.list_runs()
    # Newest first; the three echo runs may share a millisecond, so only `failed` (submitted
    # after they finished) has a certain place.
    assert runs[0].run_id == failed
    assert {r.run_id for r in runs[1:]} == set(done)
    assert [r.run_id for r in await client.list_runs(RunStatus.FAILED)] == [failed]
    limited = [r.run_id for r in await client.list_runs("completed", limit=2)]
    assert len(limited) == 2 and set(limited) <= set(done)
    assert all(r.status == RunStatus.COMPLETED for r in await client.list_runs("completed"))
    assert runs[0].error is not None and runs[0].graph_id == "failing"
    with pytest.raises(InputError, match="unknown status 'done'"):
        await client.list_runs("done")


@pytest.mark.usefixtures("engine")
async def test_list_runs_of_one_graph_client_and_raw_submissions(
    client: WorkflowClient, redis: aioredis.Redis
) -> None:
    echoes = [await client.submit("echo", {"text": str(i)}) for i in range(2)]
    failed = await client.submit("failing")
    for run_id in [*echoes, failed]:  # done before the raw one starts (shards run apart)
        await client.wait(run_id, timeout=10)
    # A raw submission (the dispatcher's apply script writes its indexes) counts as well.
    raw = orjson.dumps({"kind": "submit", "graph_id": "echo", "run_id": "raw-echo-1"})
    await redis.xadd(client.keys.shard_for("raw-echo-1").inbox, {"m": raw})
    await wait_for(lambda: client.get_run("raw-echo-1"), message="the raw run started")
    await client.wait("raw-echo-1", timeout=10)

    of_echo = [r.run_id for r in await client.list_runs(graph_id="echo")]
    assert set(of_echo) == {*echoes, "raw-echo-1"} and of_echo[0] == "raw-echo-1"
    assert all(r.graph_id == "echo" for r in await client.list_runs(graph_id="echo"))
    assert [r.run_id for r in await client.list_runs(graph_id="failing")] == [failed]
    assert [r.run_id for r in await client.list_runs("failed", graph_id="echo")] == []
    both = [r.run_id for r in await client.list_runs("completed", graph_id="echo", limit=2)]
    assert len(both) == 2 and both[0] == "raw-echo-1"  # newest to complete first
    assert await client.list_runs(graph_id="no-such-graph") == []


async def test_cancel_a_running_run(
    client: WorkflowClient, engine: None, hanging_started: asyncio.Event
) -> None:
    run_id = await client.submit("blocked")
    await asyncio.wait_for(hanging_started.wait(), timeout=10)
    running = await client.get_run(run_id)
    assert running is not None and running.nodes["hang"].status == NodeStatus.RUNNING
    await client.cancel(run_id, reason="changed my mind", actor="tester")
    view = await client.wait(run_id, timeout=10)
    assert view.status == RunStatus.CANCELLED
    assert view.error is not None and view.error.message == "changed my mind"
    assert view.nodes["hang"].status == NodeStatus.CANCELLED
    last = (await client.history(run_id))[-1]
    assert last["type"] == "run.cancelled" and last["data"]["actor"] == "tester"


@pytest.mark.usefixtures("engine")
async def test_wait_times_out_naming_run_and_status(client: WorkflowClient) -> None:
    run_id = await client.submit("approve-me", {"what": "it"})
    await waiting_view(client, run_id)
    with pytest.raises(WaitTimeout) as exc:
        await client.wait(run_id, timeout=0.2)
    assert isinstance(exc.value, TimeoutError) and isinstance(exc.value, RelaygraphError)
    assert run_id in str(exc.value) and "waiting" in str(exc.value)
    assert exc.value.status == "waiting"


# --- approvals ------------------------------------------------------------------------------


async def test_durable_approval_survives_no_dispatcher(
    client: WorkflowClient, start_dispatcher: Starter, hanging_started: asyncio.Event
) -> None:
    await start_dispatcher()
    run_id = await client.submit("approve-me", {"what": "v2", "text": "go"})
    view = await waiting_view(client, run_id)
    [wait] = view.waiting
    assert (wait.node_id, wait.prompt, wait.visit) == ("review", "ship v2?", 1)
    assert view.status == RunStatus.WAITING
    assert view.nodes["review"].status == NodeStatus.WAITING

    await client.approve(run_id, "review", {"note": "lgtm"}, actor="alice")
    view = await client.wait(run_id, timeout=10)
    assert view.status == RunStatus.COMPLETED
    assert view.nodes["ok"].status == NodeStatus.COMPLETED
    assert view.nodes["no"].status == NodeStatus.SKIPPED
    assert view.nodes["review"].output == {
        "decision": "approve",
        "data": {"note": "lgtm"},
        "actor": "alice",
    }


async def test_durable_approval_sent_while_no_dispatcher_runs(
    client: WorkflowClient, redis_url: str, hanging_started: asyncio.Event
) -> None:
    """The approval waits in the inbox stream until a dispatcher reads it."""
    client_redis = client_for(redis_url)
    dispatcher = Dispatcher(client_redis, DispatcherSettings(shards=SHARDS, redis_url=redis_url))
    stop = asyncio.Event()
    task = asyncio.create_task(dispatcher.run(stop))
    try:
        run_id = await client.submit("approve-me", {"what": "x"})
        await waiting_view(client, run_id)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)
    await client.reject(run_id, "review", {"why": "not yet"}, actor="bob")  # nobody listening
    assert (await client.get_run(run_id)).status == RunStatus.WAITING  # type: ignore[union-attr]

    task = asyncio.create_task(
        Dispatcher(client_redis, dispatcher.settings).run(stop := asyncio.Event())
    )
    try:
        view = await client.wait(run_id, timeout=10)
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=10)
        await client_redis.aclose()
    assert view.status == RunStatus.COMPLETED
    assert view.nodes["no"].status == NodeStatus.COMPLETED
    assert view.nodes["review"].output["decision"] == "reject"


@pytest.mark.usefixtures("engine")
async def test_published_approval(
    client: WorkflowClient, redis: aioredis.Redis, redis_url: str
) -> None:
    run_id = await client.submit("approve-me", {"what": "pub"})
    await waiting_view(client, run_id)

    async def dispatcher_listening() -> bool:
        return await subscribers(redis_url, KEYS.approvals_channel) > 0

    await wait_for(dispatcher_listening, message="dispatcher subscribed to approvals")
    await client.approve(run_id, "review", {"via": "pubsub"}, durable=False)
    view = await client.wait(run_id, timeout=10)
    assert view.status == RunStatus.COMPLETED
    assert view.nodes["review"].output["data"] == {"via": "pubsub"}
    assert await redis.xlen(KEYS.shard_for(run_id).inbox) >= 1  # moved into the inbox


@pytest.mark.usefixtures("engine")
async def test_approval_of_a_node_that_is_not_waiting(client: WorkflowClient) -> None:
    run_id = await client.submit("approve-me", {"what": "x"})
    view = await waiting_view(client, run_id)
    token = view.waiting[0].token
    with pytest.raises(NodeNotWaiting, match=r"node 'ok' .* is pending"):
        await client.approve(run_id, "ok")
    with pytest.raises(NodeNotWaiting, match="does not exist"):
        await client.approve(run_id, "ghost")
    with pytest.raises(InputError, match="must be a JSON object"):
        await client.approve(run_id, "review", ["not", "a", "dict"])  # type: ignore[arg-type]

    async with client.subscribe(run_id) as stream:
        await client.approve(run_id, "review", token="wrong-token")
        ignored = await _next_of(stream, "event.ignored")
        assert "wrong token" in ignored["data"]["reason"]
        await client.approve(run_id, "review", token=token)
        await _next_of(stream, "run.completed")
        await client.approve(run_id, "review", token=token)  # late duplicate
        late = await _next_of(stream, "event.ignored")
        assert "already completed" in late["data"]["reason"]
    with pytest.raises(NodeNotWaiting):
        await client.approve(run_id, "review")


async def _next_of(stream: Any, event_type: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        event = await stream.get(timeout=0.2)
        return event if event is not None and event["type"] == event_type else None

    result: dict[str, Any] | None = await wait_for(
        check, timeout=10, message=f"a {event_type} event"
    )
    assert result is not None
    return result


@pytest.mark.usefixtures("engine")
async def test_events_iterator_follows_one_run(client: WorkflowClient, redis_url: str) -> None:
    seen: list[dict[str, Any]] = []
    other = await client.submit("echo", {"text": "noise"})
    await client.wait(other, timeout=10)
    run_id = "followed-run"

    async def follow() -> None:
        async for event in client.events(run_id):
            seen.append(event)
            if event["type"] == "run.completed":
                return

    follower = asyncio.create_task(follow())
    await wait_for(lambda: _subscribed(redis_url, run_id), message="events subscription")
    await client.submit("echo", {"text": "x"}, run_id=run_id)
    await asyncio.wait_for(follower, timeout=10)
    assert {e["run_id"] for e in seen} == {run_id}
    assert seen[0]["type"] == "run.submitted"


async def _subscribed(redis_url: str, run_id: str) -> bool:
    return await event_subscribers(redis_url, run_id) > 0


# --- graphs, the sync client ----------------------------------------------------------------


async def test_register_graph_sources(client: WorkflowClient, tmp_path: Any) -> None:
    path = tmp_path / "g.json"
    path.write_bytes(echo_graph().model_copy(update={"version": 2}).to_json())
    assert await client.register_graph(str(path)) == 2
    as_dict = echo_graph().to_dict() | {"version": 3}
    assert await client.register_graph(as_dict) == 3
    assert await client.store.latest_version("echo") == 3
    with pytest.raises(GraphValidationError, match="unreadable"):
        await client.register_graph(tmp_path / "missing.json")
    with pytest.raises(GraphValidationError):
        await client.register_graph({"id": "x", "nodes": [{"id": "a", "type": "agent"}]})


@pytest.mark.usefixtures("engine")
async def test_sync_client(redis_url: str) -> None:
    def use_it() -> tuple[RunView, list[str], int]:
        with SyncWorkflowClient.from_url(redis_url, shards=SHARDS) as sync:
            sync.register_graph(echo_graph())
            run_id = sync.submit("echo", {"text": "sync"})
            view = sync.wait(run_id, timeout=10)
            assert sync.get_run(run_id) == view
            ids = [r.run_id for r in sync.list_runs()]
            return view, ids, len(sync.history(run_id))

    view, ids, history = await asyncio.to_thread(use_it)
    assert view.status == RunStatus.COMPLETED and view.output["text"] == "SYNC"
    assert ids == [view.run_id]
    assert history == view.history_length


@pytest.mark.usefixtures("engine")
async def test_sync_client_events(redis_url: str, client: WorkflowClient) -> None:
    seen: list[str] = []
    with SyncWorkflowClient.from_url(redis_url, shards=SHARDS) as sync:

        def follow() -> None:
            for event in sync.events("sync-followed"):
                seen.append(event["type"])
                if event["type"] == "run.completed":
                    return

        follower = asyncio.create_task(asyncio.to_thread(follow))
        await wait_for(
            lambda: _subscribed(redis_url, "sync-followed"), message="sync events subscription"
        )
        await asyncio.to_thread(sync.submit, "echo", {"text": "s"}, run_id="sync-followed")
        await asyncio.wait_for(follower, timeout=10)
    assert seen[0] == "run.submitted" and seen[-1] == "run.completed"
