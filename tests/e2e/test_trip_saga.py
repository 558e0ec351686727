"""The trip saga example (examples/trip_saga), run as its README shows through the CLI, and
on a deployment of several processes (``relaygraph up``, two workers): a failing step runs
the compensations of the completed steps once each, newest first."""

from __future__ import annotations

import secrets
from typing import Any

import orjson
import pytest

from dispatcher.client import WorkflowClient
from tests.e2e.test_examples_cli import relaygraph, relaygraph_up

pytestmark = [pytest.mark.integration, pytest.mark.slow]

GRAPH = "examples/trip_saga/graph.json"
HANDLERS = "examples.trip_saga.handlers"


def run_json(payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    proc = relaygraph(
        "run", GRAPH, "--handlers", HANDLERS, "--input", orjson.dumps(payload).decode(), "--json"
    )
    return proc.returncode, orjson.loads(proc.stdout)


def test_the_example_books_a_trip_or_undoes_it() -> None:
    code, view = run_json({"city": "Lisbon"})
    assert code == 0 and view["status"] == "completed"
    assert view["output"]["car"]["confirmation"].startswith("CAR-")

    code, view = run_json({"city": "Lisbon", "sold_out": ["car"]})
    assert code == 1 and view["status"] == "compensated"
    assert view["error"]["node_id"] == "car" and "no car left" in view["error"]["message"]
    nodes = {nid: n["status"] for nid, n in view["nodes"].items()}
    assert nodes == {
        "start": "completed",
        "flight": "compensated",
        "hotel": "compensated",
        "car": "failed",
        "end": "pending",
    }


async def test_a_saga_on_a_deployment_compensates_once_each_newest_first(redis_url: str) -> None:
    prefix = f"saga-{secrets.token_hex(4)}"
    flags = ["--redis", redis_url, "--prefix", prefix]
    with relaygraph_up([*flags, "--handlers", HANDLERS, "--workers", "2"]):
        async with WorkflowClient.from_url(redis_url, prefix=prefix) as client:
            await client.register_graph(GRAPH)
            runs = [
                await client.submit("trip", {"city": f"c{i}", "sold_out": ["car"]})
                for i in range(10)
            ]
            for run_id in runs:
                view = await client.wait(run_id, timeout=60)
                assert view.status == "compensated", view.error
                events = await client.history(run_id)
                undone = [(e["type"], e["node_id"]) for e in events if "compensat" in e["type"]]
                assert undone == [
                    ("run.compensating", None),
                    ("node.compensating", "hotel"),
                    ("node.compensated", "hotel"),
                    ("node.compensating", "flight"),
                    ("node.compensated", "flight"),
                    ("run.compensated", None),
                ], undone
                done = {
                    e["node_id"]: e["data"]["output"]
                    for e in events
                    if e["type"] == "node.compensated"
                }
                booked = {
                    nid: view.nodes[nid].output["confirmation"] for nid in ("flight", "hotel")
                }
                assert {nid: out["cancelled"] for nid, out in done.items()} == booked
