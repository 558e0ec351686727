"""A child run whose start (or end) message the dispatcher must reject, here for its size:
the parent is told the child failed, instead of waiting for ever."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from dispatcher.client import WorkflowClient
from dispatcher.service import Dispatcher
from dispatcher.settings import DispatcherSettings
from graph_core.events import CHILD_CANCEL_ACTOR, CancelRequested, ParentRef
from graph_core.messages import SubmitRequest, encode_inbox
from graph_core.model import Graph, Node
from tests.support.dispatching import serving
from tests.support.layout import SHARDS, ids_in_one_shard
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
async def small_messages(redis: aioredis.Redis, redis_url: str) -> AsyncIterator[Dispatcher]:
    settings = DispatcherSettings(shards=SHARDS, redis_url=redis_url, max_message_bytes=4096)
    async with serving(Dispatcher(redis, settings)) as d:
        yield d


async def test_a_rejected_child_start_fails_the_parent_node(
    redis: aioredis.Redis, small_messages: Dispatcher
) -> None:
    client = WorkflowClient(redis, shards=SHARDS)
    leaf = Graph(id="leaf").add_nodes(Node("start", type="start"), Node("end", type="end"))
    await client.register_graph(leaf.connect("start", "end").validate_graph())
    parent = Graph(id="big-parent").add_nodes(
        Node("start", type="start"),
        Node(
            "sub",
            type="subgraph",
            config={"graph": "leaf", "input": {"a": "{{ input.text }}", "b": "{{ input.text }}"}},
        ),
        Node("end", type="end"),
    )
    await client.register_graph(parent.connect("start", "sub", "end").validate_graph())
    run_id = await client.submit("big-parent", {"text": "x" * 3000})  # the child's: 6 KB
    view = await client.wait(run_id, timeout=15)
    assert view.status == "failed"
    assert view.error is not None and view.error.node_id == "sub"
    assert "was rejected" in view.error.message and "4096-byte limit" in view.error.message
    assert await redis.xlen(small_messages.keys.deadletter) == 1


async def test_a_child_cancelled_before_its_submission_never_starts(
    redis: aioredis.Redis, small_messages: Dispatcher
) -> None:
    """The parent's cancel reaches the inbox first (another dispatcher read it, or the
    submission is redelivered later): the submission then starts nothing."""
    client = WorkflowClient(redis, shards=SHARDS)
    leaf = Graph(id="leaf2").add_nodes(Node("start", type="start"), Node("end", type="end"))
    await client.register_graph(leaf.connect("start", "end").validate_graph())
    keys = small_messages.keys
    cancel = CancelRequested(run_id="orphan-1", reason="parent stopped", actor=CHILD_CANCEL_ACTOR)
    await redis.xadd(keys.shard_for("orphan-1").inbox, {"m": encode_inbox(cancel)})
    await wait_for(
        lambda: redis.exists(keys.shard_for("orphan-1").child_cancelled("orphan-1")),
        timeout=10,
        message="tombstone",
    )
    parent = ParentRef(run_id="gone", node_id="sub", visit=1, attempt=1)
    submit = SubmitRequest(graph_id="leaf2", run_id="orphan-1", parent=parent)
    await redis.xadd(keys.shard_for("orphan-1").inbox, {"m": encode_inbox(submit)})
    [after] = ids_in_one_shard("after-", 1, beside="orphan-1")  # in its inbox, handled after it
    probe = SubmitRequest(graph_id="leaf2", run_id=after)
    await redis.xadd(keys.shard_for(after).inbox, {"m": encode_inbox(probe)})

    async def probe_done() -> bool:
        view = await client.get_run(after)
        return view is not None and view.terminal

    await wait_for(probe_done, timeout=10, message="the run submitted after it")
    assert await client.get_run("orphan-1") is None
