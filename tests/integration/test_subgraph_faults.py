"""A child run whose start (or end) message the dispatcher must reject, here for its size:
the parent is told the child failed, instead of waiting for ever."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from dispatcher.client import WorkflowClient
from dispatcher.service import Dispatcher
from dispatcher.settings import DispatcherSettings
from graph_core.model import Graph, Node
from tests.support.dispatching import serving

pytestmark = pytest.mark.integration


@pytest.fixture
async def small_messages(redis: aioredis.Redis, redis_url: str) -> AsyncIterator[Dispatcher]:
    settings = DispatcherSettings(redis_url=redis_url, max_message_bytes=4096)
    async with serving(Dispatcher(redis, settings)) as d:
        yield d


async def test_a_rejected_child_start_fails_the_parent_node(
    redis: aioredis.Redis, small_messages: Dispatcher
) -> None:
    client = WorkflowClient(redis)
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
