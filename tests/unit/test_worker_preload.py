"""The worker's graph cache and its per-node read plans (no server needed)."""

from __future__ import annotations

import pytest

from graph_core.model import Edge, Graph, Node
from worker.preload import GraphCache, plan_reads


def _graph(graph_id: str = "g", version: int = 1) -> Graph:
    return Graph(
        id=graph_id,
        version=version,
        nodes=[
            Node("start", type="start"),
            Node("a", type="work"),
            Node("b", type="work", config={"text": "{{a.output.x}} {{start.output}}"}),
            Node("end", type="end"),
        ],
        edges=[Edge("start", "a"), Edge("a", "b"), Edge("b", "end")],
    )


def test_a_cached_graphs_plan_is_computed_once_and_equals_plan_reads() -> None:
    cache = GraphCache()
    graph = cache.put(_graph())
    node = graph.node("b")
    plan = cache.plan(graph, node, None)
    assert plan is cache.plan(graph, node, None)
    assert plan == plan_reads(graph, node, None)
    assert plan.nodes == ["a", "start"]


def test_a_graph_put_again_or_not_cached_is_planned_afresh() -> None:
    cache = GraphCache()
    graph = cache.put(_graph())
    first = cache.plan(graph, graph.node("b"), None)
    again = cache.put(_graph())  # same id and version, a new object
    assert cache.plan(again, again.node("b"), None) is not first
    stranger = _graph()  # never put: computed each time, nothing kept
    assert cache.plan(stranger, stranger.node("b"), None) is not cache.plan(
        stranger, stranger.node("b"), None
    )


def test_evicting_a_graph_drops_its_plans() -> None:
    cache = GraphCache(maxsize=1)
    old = cache.put(_graph("old"))
    cache.plan(old, old.node("b"), None)
    cache.put(_graph("new"))
    assert cache.get("old", 1) is None
    assert ("old", 1) not in cache._plans


def test_a_cache_needs_room_for_one_graph() -> None:
    with pytest.raises(ValueError, match="maxsize"):
        GraphCache(maxsize=0)
