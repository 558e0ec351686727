"""The batch triage example (examples/batch_triage: a map over issues, each through the
issue-triage graph as a child run with a human review), through the CLI as its README shows,
and on a deployment of several processes (``relaygraph up`` with two workers, plus a second
dispatcher): 200 items, their waits decided through the parent run, each child run once;
cancelling the parent cancels its children; child graph versions are fixed at the parent's
start; registration refuses unknown and self-including child graphs."""

from __future__ import annotations

import secrets
import signal
import subprocess
from collections import Counter
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from dispatcher.client import NodeNotWaiting, WorkflowClient
from graph_core.errors import GraphValidationError
from graph_core.model import Graph, Node
from tests.e2e.test_examples_cli import RELAYGRAPH, ROOT, cli_env, relaygraph, relaygraph_up
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BATCH = "examples/batch_triage/graph.json"
ISSUE = "examples/batch_triage/issue.json"
HANDLERS = "examples.batch_triage.handlers"


def test_the_example_through_the_cli() -> None:
    proc = relaygraph(
        "run", BATCH, "--graph", ISSUE, "--handlers", HANDLERS, "--approve", "review",
        "--input", '{"count": 12}', "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    view = orjson.loads(proc.stdout)
    assert view["status"] == "completed"
    # 12 issues over 6 titles: 2 x (two critical + one high) reviewed, 6 low labelled
    assert view["output"] == {
        "issues": 12,
        "decisions": {"approve": 6, "labelled": 6},
        "severities": {"critical": 4, "low": 6, "high": 2},
    }


def test_the_cli_names_a_missing_child_graph() -> None:
    proc = relaygraph("run", BATCH, "--handlers", HANDLERS, "--input", '{"count": 1}')
    assert proc.returncode != 0
    assert "issue-triage" in proc.stderr and "not registered" in proc.stderr


class SecondDispatcher:
    def __init__(self, redis_url: str, prefix: str) -> None:
        self.proc = subprocess.Popen(
            [RELAYGRAPH, "dispatcher", "--redis", redis_url, "--prefix", prefix],
            cwd=ROOT,
            env=cli_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


async def decide_waits(client: WorkflowClient, run_id: str, seen: set[str]) -> int:
    """Decide every wait the parent's view lists, through the parent's run id."""
    view = await client.get_run(run_id)
    assert view is not None
    decided = 0
    for wait in view.waiting:
        if wait.token in seen:
            continue
        assert wait.run_id is not None and wait.run_id != run_id  # a child's wait
        seen.add(wait.token)
        await client.approve(run_id, wait.node_id, {"via": "parent"}, token=wait.token)
        decided += 1
    return decided


async def test_200_items_with_human_waits_on_a_deployment(
    redis_url: str, redis: aioredis.Redis
) -> None:
    prefix = f"batch-{secrets.token_hex(4)}"
    flags = ["--redis", redis_url, "--prefix", prefix]
    second = SecondDispatcher(redis_url, prefix)
    try:
        with relaygraph_up([*flags, "--handlers", HANDLERS, "--workers", "2"]):
            async with WorkflowClient.from_url(redis_url, prefix=prefix) as client:
                await client.register_graph(ISSUE)
                await client.register_graph(BATCH)
                run_id = await client.submit("batch-triage", {"count": 200})
                seen: set[str] = set()

                async def finished() -> Any:
                    await decide_waits(client, run_id, seen)
                    view = await client.get_run(run_id)
                    return view if view is not None and view.terminal else None

                view = await wait_for(finished, timeout=180, interval=0.05, message="the batch")
                assert view.status == "completed", view.error
                assert view.output["issues"] == 200
                assert view.output["decisions"]["approve"] == len(seen)
                # titles 0, 2 and 4 of each 6 are critical or high: reviewed by a human
                assert len(seen) == sum(1 for i in range(200) if i % 6 in (0, 2, 4))
                # one child run per item, each started once, each completed
                events = await client.history(run_id)
                started = [e for e in events if e["type"] == "subgraph.started"]
                assert len(started) == 200
                assert sorted(e["data"]["item"] for e in started) == list(range(200))
                children = [e["data"]["child_run_id"] for e in started]
                assert len(set(children)) == 200
                statuses = Counter()
                for child in children:
                    child_view = await client.get_run(child)
                    assert child_view is not None
                    statuses[child_view.status.value] += 1
                assert statuses == {"completed": 200}
                # never more than max_concurrency children at once, from the history
                live, most = set(), 0
                for e in events:
                    item = (e.get("data") or {}).get("item")
                    if e["type"] == "map.item_enqueued":
                        live.add(item)
                    elif e["type"] in ("map.item_completed", "map.item_failed"):
                        live.discard(item)
                    most = max(most, len(live))
                assert most == 5
    finally:
        second.stop()


async def test_cancelling_the_parent_cancels_every_child_run(redis_url: str) -> None:
    prefix = f"batchc-{secrets.token_hex(4)}"
    with relaygraph_up(["--redis", redis_url, "--prefix", prefix, "--handlers", HANDLERS]):
        async with WorkflowClient.from_url(redis_url, prefix=prefix) as client:
            await client.register_graph(ISSUE)
            await client.register_graph(BATCH)
            issues = [{"number": i, "title": "login is down"} for i in range(8)]
            run_id = await client.submit("batch-triage", {"issues": issues})

            async def five_waiting() -> Any:
                view = await client.get_run(run_id)
                return view if view is not None and len(view.waiting) == 5 else None

            view = await wait_for(five_waiting, timeout=30, message="five child runs waiting")
            with pytest.raises(NodeNotWaiting, match="waits in 5 child runs"):
                await client.approve(run_id, "review")  # ambiguous without a token
            children = [w.run_id for w in view.waiting if w.run_id is not None]
            await client.cancel(run_id, reason="stop the batch")
            final = await client.wait(run_id, timeout=30)
            assert final.status == "cancelled"
            for child in children:
                child_view = await client.wait(child, timeout=30)
                assert child_view.status == "cancelled"
                assert child_view.error is not None and run_id in child_view.error.message


def pinned_parent(version: int) -> Graph:
    g = Graph(id="pinned", version=version)
    g.add_nodes(
        Node("start", type="start"),
        Node("hold", type="human"),
        Node("sub", type="subgraph", config={"graph": "leaf", "input": {"n": 1}}),
        Node("end", type="end"),
    )
    g.connect("start", "hold", "sub", "end")
    return g.validate_graph()


def leaf(version: int, label: str) -> Graph:
    g = Graph(id="leaf", version=version)
    g.add_nodes(
        Node("start", type="start"),
        Node("end", type="end", config={"output": {"leaf": label}}),
    )
    g.connect("start", "end")
    return g.validate_graph()


async def test_child_versions_are_fixed_when_the_parent_starts(redis_url: str) -> None:
    prefix = f"pin-{secrets.token_hex(4)}"
    with relaygraph_up(["--redis", redis_url, "--prefix", prefix, "--handlers", HANDLERS]):
        async with WorkflowClient.from_url(redis_url, prefix=prefix) as client:
            await client.register_graph(leaf(1, "one"))
            await client.register_graph(pinned_parent(1))
            run_id = await client.submit("pinned", None)
            await wait_for(lambda: client_waiting(client, run_id), timeout=20, message="the hold")
            await client.register_graph(leaf(2, "two"))  # after the parent started
            await client.approve(run_id, "hold")
            view = await client.wait(run_id, timeout=20)
            assert view.status == "completed" and view.output == {"leaf": "one"}
            later = await client.submit("pinned", None)
            await wait_for(lambda: client_waiting(client, later), timeout=20, message="hold")
            await client.approve(later, "hold")
            assert (await client.wait(later, timeout=20)).output == {"leaf": "two"}


async def client_waiting(client: WorkflowClient, run_id: str) -> bool:
    view = await client.get_run(run_id)
    return view is not None and bool(view.waiting)


async def test_registration_refuses_unknown_and_cyclic_child_graphs(redis_url: str) -> None:
    prefix = f"reg-{secrets.token_hex(4)}"
    async with WorkflowClient.from_url(redis_url, prefix=prefix) as client:

        def calls(gid: str, target: str) -> Graph:
            g = Graph(id=gid)
            g.add_nodes(
                Node("start", type="start"),
                Node("sub", type="subgraph", config={"graph": target}),
                Node("end", type="end"),
            )
            g.connect("start", "sub", "end")
            return g

        with pytest.raises(GraphValidationError, match="'b', which is not registered"):
            await client.register_graph(calls("a", "b"))
        await client.register_graph(leaf(1, "x"))
        await client.register_graph(calls("b", "leaf"))
        await client.register_graph(calls("a", "b"))
        # b v2 would run a, which runs b: a cycle through the registry
        b2 = calls("b", "a").model_copy(update={"version": 2})
        with pytest.raises(GraphValidationError, match="b -> a -> b"):
            await client.register_graph(b2)
        with pytest.raises(GraphValidationError, match="include itself"):
            await client.register_graph(calls("c", "c"))
