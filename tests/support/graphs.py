"""Graphs several test modules run: built once here."""

from __future__ import annotations

from typing import Any

from graph_core.conditions import Condition as C
from graph_core.model import Edge, Graph, Node

__all__ = ["bug_triage_graph", "busy_graph"]


def bug_triage_graph(end_config: dict[str, Any] | None = None) -> Graph:
    """DESIGN.md's example: triage -> escalate (critical) | assign (otherwise) -> end."""
    g = Graph(id="bug-triage", name="Bug Triage")
    g.add_nodes(
        Node("start", type="start"),
        Node("triage", type="agent", config={"agent_id": "triage-agent"}),
        Node("escalate", type="notification", config={"channel": "slack"}),
        Node("assign", type="agent", config={"agent_id": "labeler-agent"}),
        Node("end", type="end", config=end_config or {}),
    )
    g.add_edges(
        Edge("start", "triage"),
        Edge("triage", "escalate", condition=C.field("triage.output.severity").eq("critical")),
        Edge("triage", "assign", condition=C.otherwise()),
        Edge("escalate", "end"),
        Edge("assign", "end"),
    )
    return g.validate_graph()


def busy_graph() -> Graph:
    """A fan-out/join, a condition and a loop (node type ``work``): start -> split => a, b, c
    -> join -> loop (3 visits) -> big (input.n >= 100) | small -> end."""
    g = Graph(id="busy")
    g.add_nodes(
        Node("start", type="start"),
        Node("split", type="work", fan_out=True),
        Node("a", type="work"),
        Node("b", type="work"),
        Node("c", type="work"),
        Node("join", type="work"),
        Node("loop", type="work", max_visits=10),
        Node("big", type="work"),
        Node("small", type="work"),
        Node("end", type="end"),
    )
    g.connect("start", "split")
    g.add_edges(Edge("split", "a"), Edge("split", "b"), Edge("split", "c"))
    g.add_edges(Edge("a", "join"), Edge("b", "join"), Edge("c", "join"))
    g.connect("join", "loop")
    g.add_edges(
        Edge("loop", "loop", condition=C.field("loop.visits").lt(3)),
        Edge("loop", "big", condition=C.field("input.n").gte(100)),
        Edge("loop", "small", condition=C.otherwise()),
        Edge("big", "end"),
        Edge("small", "end"),
    )
    return g.validate_graph()
