"""What the dispatcher loads with a run's record: planned from the graph alone."""

from __future__ import annotations

from dispatcher.prefetch import JOIN_GROUP_PREFETCH, NOTHING, neighbourhood
from graph_core.events import CancelRequested, NodeReported, RunSubmitted
from graph_core.model import Edge, Graph, Node
from graph_core.topology import topology
from tests.support.graphs import busy_graph


def _reported(node_id: str) -> NodeReported:
    return NodeReported(run_id="r", node_id=node_id, visit=1, attempt=1, status="completed")


def _edge(g: Graph, source: str, target: str) -> int:
    return next(i for i, e in enumerate(g.edges) if (e.source, e.target) == (source, target))


def test_a_small_join_comes_whole_with_each_branch() -> None:
    g = busy_graph()
    p = neighbourhood(g, _reported("a"))
    assert p.nodes == ["a", "join"] and p.loops == []
    assert p.joins == [("join", _edge(g, x, "join")) for x in ("a", "b", "c")]


def test_a_loop_node_brings_its_loop_and_the_loop_its_exits_leave() -> None:
    g = busy_graph()
    [loop] = topology(g).loops_of["loop"]
    p = neighbourhood(g, _reported("loop"))
    assert p.nodes == ["loop", "big", "small"]
    assert p.loops == [loop]
    assert p.joins == []  # the back edge starts the loop again; big and small have one input
    entering = neighbourhood(g, _reported("join"))
    assert entering.loops == [loop] and entering.nodes == ["join", "loop"]


def test_a_wide_join_comes_with_the_arriving_branch_only() -> None:
    width = JOIN_GROUP_PREFETCH + 1
    g = Graph(id="wide")
    g.add_nodes(
        Node("start", type="start", fan_out=True),
        *[Node(f"b{i}", type="work") for i in range(width)],
        Node("join", type="work"),
        Node("end", type="end"),
    )
    g.add_edges(*[Edge("start", f"b{i}") for i in range(width)])
    g.add_edges(*[Edge(f"b{i}", "join") for i in range(width)])
    g.connect("join", "end")
    g.validate_graph()
    assert neighbourhood(g, _reported("b3")).joins == [("join", _edge(g, "b3", "join"))]


def test_submits_start_at_start_and_run_wide_events_prefetch_nothing() -> None:
    g = busy_graph()
    submitted = RunSubmitted(run_id="r", graph_id="busy", graph_version=1)
    assert neighbourhood(g, submitted).nodes == ["start", "split"]
    assert neighbourhood(g, CancelRequested(run_id="r")) is NOTHING
    assert neighbourhood(g, _reported("no-such-node")) is NOTHING
