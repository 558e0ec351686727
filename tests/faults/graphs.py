"""The graphs the fault tests run (node types from ``tests.faults.handlers``)."""

from __future__ import annotations

from typing import Any

from graph_core.conditions import Condition as C
from graph_core.model import Edge, Graph, Node, RetryPolicy, WaitPolicy
from tests.support.graphs import busy_graph

__all__ = [
    "BUSY_EXECUTIONS",
    "CHAIN_NODES",
    "blocking_graph",
    "busy_graph",
    "chain_graph",
    "expected_output",
    "flaky_graph",
    "slow_graph",
    "timed_wait_graph",
]

BUSY_EXECUTIONS = 9  # split, a, b, c, join, 3 loop visits, big|small
CHAIN_NODES = ("a", "b", "c")  # chain_graph's nodes every run executes (plus big|small)


def expected_output(n: int) -> dict[str, Any]:
    """The output of a busy or chain run with input ``{"n": n}``: the branch's node."""
    return {"node": "big" if n >= 100 else "small", "visit": 1}


def chain_graph(graph_id: str = "chain", **retry: Any) -> Graph:
    """start -> a -> b -> c -> big (input.n >= 100) | small -> end."""
    policy = RetryPolicy(**retry) if retry else None
    g = Graph(id=graph_id, retry=policy)
    g.add_nodes(
        Node("start", type="start"),
        Node("a", type="work"),
        Node("b", type="work"),
        Node("c", type="work"),
        Node("big", type="work"),
        Node("small", type="work"),
        Node("end", type="end"),
    )
    g.connect("start", "a", "b", "c")
    g.add_edges(
        Edge("c", "big", condition=C.field("input.n").gte(100)),
        Edge("c", "small", condition=C.otherwise()),
        Edge("big", "end"),
        Edge("small", "end"),
    )
    return g.validate_graph()


def slow_graph(sleep_s: float) -> Graph:
    """start -> before -> slow (sleeps ``sleep_s`` without blocking) -> after -> end."""
    g = Graph(id="slow")
    g.add_nodes(
        Node("start", type="start"),
        Node("before", type="work"),
        Node("slow", type="slow", config={"sleep_s": sleep_s}),
        Node("after", type="work"),
        Node("end", type="end"),
    )
    g.connect("start", "before", "slow", "after", "end")
    return g.validate_graph()


def blocking_graph(graph_id: str, block_s: float, timeout_s: float) -> Graph:
    """start -> block (``time.sleep(block_s)`` on the worker's loop, ``timeout_s``, one
    attempt) -> after -> end."""
    g = Graph(id=graph_id)
    g.add_nodes(
        Node("start", type="start"),
        Node(
            "block",
            type="blocking",
            config={"block_s": block_s},
            timeout_s=timeout_s,
            retry=RetryPolicy(max_attempts=1),
        ),
        Node("after", type="work"),
        Node("end", type="end"),
    )
    g.connect("start", "block", "after", "end")
    return g.validate_graph()


def flaky_graph(delay_s: float) -> Graph:
    """start -> flaky (fails its first attempt; fixed backoff ``delay_s``) -> end."""
    g = Graph(id="flaky")
    g.add_nodes(
        Node("start", type="start"),
        Node(
            "flaky",
            type="flaky",
            config={"fail_attempts": 1},
            retry=RetryPolicy(max_attempts=3, backoff="fixed", initial_delay_s=delay_s),
        ),
        Node("end", type="end"),
    )
    g.connect("start", "flaky", "end")
    return g.validate_graph()


def timed_wait_graph(timeout_s: float, graph_id: str = "timed-wait") -> Graph:
    """start -> review (human; rejected when no approval comes within ``timeout_s``) ->
    ship (approved) | drop -> end."""
    g = Graph(id=graph_id)
    g.add_nodes(
        Node("start", type="start"),
        Node("review", type="human", wait=WaitPolicy(timeout_s=timeout_s, on_timeout="reject")),
        Node("ship", type="work"),
        Node("drop", type="work"),
        Node("end", type="end"),
    )
    g.connect("start", "review")
    g.add_edges(
        Edge("review", "ship", condition=C.field("review.output.decision").eq("approve")),
        Edge("review", "drop", condition=C.otherwise()),
        Edge("ship", "end"),
        Edge("drop", "end"),
    )
    return g.validate_graph()
