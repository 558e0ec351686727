"""``map`` nodes on a deployment of several processes (``relaygraph up``: a dispatcher and
three worker processes): the items of many runs at once never exceed max_concurrency per
map in total, each item runs once, results come back in item order, and failures past the
tolerance fail the run."""

from __future__ import annotations

import secrets
from typing import Any

import pytest
import redis.asyncio as aioredis

from dispatcher.client import WorkflowClient
from graph_core.model import Graph, Node
from tests.e2e.test_examples_cli import cli_env, relaygraph_up

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HANDLERS = "tests.e2e.map_handlers"


def graph(limit: int, tolerated: Any = 0, version: int = 1) -> Graph:
    g = Graph(id="squares", version=version)
    g.add_nodes(
        Node("start", type="start"),
        Node("numbers", type="numbers"),
        Node(
            "each",
            type="map",
            config={
                "items": "{{ numbers.output }}",
                "node": {"type": "square"},
                "max_concurrency": limit,
                "tolerated_failures": tolerated,
            },
        ),
        Node("end", type="end"),
    )
    g.connect("start", "numbers", "each", "end")
    return g.validate_graph()


async def test_a_map_over_200_items_on_three_workers(redis_url: str, redis: aioredis.Redis) -> None:
    prefix = f"map-{secrets.token_hex(4)}"
    key = f"{prefix}:probe"
    env = {**cli_env(), "MAP_TEST_REDIS": redis_url, "MAP_TEST_KEY": key}
    flags = ["--redis", redis_url, "--prefix", prefix, "--handlers", HANDLERS]
    with relaygraph_up([*flags, "--workers", "3"], env=env):
        async with WorkflowClient.from_url(redis_url, prefix=prefix) as client:
            await client.register_graph(graph(limit=4))
            run_id = await client.submit("squares", {"n": 200})
            view = await client.wait(run_id, timeout=120)
            assert view.status == "completed", view.error
            assert view.output == [{"square": i * i, "index": i} for i in range(200)]
            samples = [int(s) for s in await redis.lrange(f"{key}:samples", 0, -1)]
            assert len(samples) == 200 and max(samples) <= 4
            runs = await redis.hgetall(f"{key}:runs")
            assert len(runs) == 200 and set(runs.values()) == {b"1"}
            events = await client.history(run_id)
            started = [e for e in events if e["type"] == "map.item_enqueued"]
            assert len(started) == 200
            # the item fields are gone: only the nodes' outputs stay
            fields = await redis.hkeys(f"{prefix}:run:{{{run_id}}}:outputs")
            assert all(b"|" not in f for f in fields)

            await client.register_graph(graph(limit=8, tolerated=2, version=2))
            ok = await client.submit("squares", {"n": 30, "fail": [3, 17]})
            bad = await client.submit("squares", {"n": 30, "fail": [3, 17, 25]})
            ok_view = await client.wait(ok, timeout=60)
            bad_view = await client.wait(bad, timeout=60)
            assert ok_view.status == "completed"
            assert ok_view.output[3] is None and ok_view.output[17] is None
            assert ok_view.output[4] == {"square": 16, "index": 4}
            assert bad_view.status == "failed"
            assert bad_view.error is not None and bad_view.error.node_id == "each"
            assert "3 of 30 items failed" in bad_view.error.message
