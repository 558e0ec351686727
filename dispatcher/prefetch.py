"""What a transition will most likely read, loaded with the run's record in the same round
trip: planned from the graph's topology and the event's node alone (no Redis here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from graph_core.events import (
    ApprovalReceived,
    Event,
    NodeReported,
    RerunRequested,
    RetryRequested,
    RunSubmitted,
)
from graph_core.model import Graph
from graph_core.topology import topology

__all__ = ["JOIN_GROUP_PREFETCH", "NOTHING", "Prefetch", "neighbourhood"]

JOIN_GROUP_PREFETCH: Final = 16  # joins with up to this many inputs are prefetched whole


@dataclass(frozen=True)
class Prefetch:
    """Node records, join arrivals (node id, edge index) and loop records to load."""

    nodes: list[str] = field(default_factory=list)
    joins: list[tuple[str, int]] = field(default_factory=list)
    loops: list[int] = field(default_factory=list)


NOTHING: Final = Prefetch()


def neighbourhood(graph: Graph, event: Event) -> Prefetch:
    """What a transition will most likely read, loaded with the run's record: the event's
    node, its parent and the targets of their edges (node records); the arrivals at joins
    those edges lead to (of every input of a small join); the records of the loops the
    event's node and the targets are in, and of the loops an edge leaves. O(the node's edges
    and small joins), never O(the run)."""
    topo = topology(graph)
    if isinstance(event, RetryRequested | RerunRequested):  # every node once: one load, not N
        return Prefetch([n.id for n in graph.nodes], [], [])
    if isinstance(event, RunSubmitted):
        first = topo.start
    elif isinstance(event, NodeReported | ApprovalReceived):
        first = event.node_id if graph.has_node(event.node_id) else None
    else:
        first = getattr(event, "node_id", None)
        first = first if first and graph.has_node(first) else None
    if first is None:
        return NOTHING
    parent = graph.node(first).parent
    routing = [first] if parent is None else [first, parent]  # a parent completes with it
    nodes = list(routing)
    joins: list[tuple[str, int]] = []
    loops: list[int] = []
    for source in routing:
        loops.extend(topo.loops_of.get(source, ()))
        for ref in topo.out_edges.get(source, []):
            target = ref.edge.target
            nodes.append(target)
            loops.extend(topo.loops_of.get(target, ()))
            if ref.index in topo.back_edges:
                continue  # starts its target directly: no join arrival
            if ref.index in topo.defer_loop:
                loops.append(topo.defer_loop[ref.index])
            inputs = topo.join_groups[target][topo.group_of[ref.index]]
            if len(inputs) > JOIN_GROUP_PREFETCH:  # its own arrivals; the rest on completion
                joins.append((target, ref.index))
            elif len(inputs) > 1:  # a small join: all inputs, read when a generation completes
                joins.extend((target, i) for i in inputs)
    return Prefetch(
        list(dict.fromkeys(nodes)), list(dict.fromkeys(joins)), list(dict.fromkeys(loops))
    )
