"""Derived structure of a graph, computed once per graph and cached on it.

The transition function needs, per node: its outgoing edges in order, the incoming edges that
count for its join, which edges close a cycle (back edges), and which strongly connected
component (loop) it belongs to. Everything here is O(graph) once, O(1) per lookup after.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from graph_core.model import Edge, Graph

__all__ = ["Topology", "reachable", "topology"]


@dataclass(frozen=True, slots=True)
class EdgeRef:
    index: int  # position in graph.edges (stable id within a graph version)
    edge: Edge


@dataclass(slots=True)
class Topology:
    start: str | None
    out_edges: dict[str, list[EdgeRef]] = field(default_factory=dict)
    in_edges: dict[str, list[EdgeRef]] = field(default_factory=dict)
    # Incoming edges that are join inputs: every incoming edge except back edges.
    join_inputs: dict[str, list[int]] = field(default_factory=dict)
    back_edges: frozenset[int] = frozenset()
    # Loop (cyclic strongly connected component) id per node; absent when not in a loop.
    loop_of: dict[str, int] = field(default_factory=dict)
    # Edges leaving each loop: their "not taken" signal waits until the loop goes idle.
    loop_exits: dict[int, list[int]] = field(default_factory=dict)
    children: dict[str, list[str]] = field(default_factory=dict)
    # Natural loops (one per back-edge target, the loop header), nested inner within outer.
    # The engine counts live tokens per natural loop; the SCC fields above serve validation.
    loops: dict[int, frozenset[str]] = field(default_factory=dict)
    loops_of: dict[str, tuple[int, ...]] = field(default_factory=dict)  # innermost first
    # Edge -> the loop whose going idle sends its deferred "not taken" signal: the outermost
    # loop the edge leaves. Edges that leave no loop signal per visit, as usual.
    defer_loop: dict[int, int] = field(default_factory=dict)
    deferred_exits: dict[int, list[int]] = field(default_factory=dict)  # loop -> its edges
    # A node's join inputs, grouped by the innermost loop shared by source and target (-1:
    # none): inputs from inside a loop pair per iteration, entries into it only with entries.
    group_of: dict[int, int] = field(default_factory=dict)  # edge -> group
    join_groups: dict[str, dict[int, list[int]]] = field(default_factory=dict)


def topology(graph: Graph) -> Topology:
    """The graph's topology, computed on first use and cached on the graph object."""
    cache = graph.cached()
    cached = cache["_topology"]
    if isinstance(cached, Topology):
        return cached
    topo = cache["_topology"] = _compute(graph)
    return topo


def reachable(topo: Topology, starts: Iterable[str]) -> set[str]:
    """``starts`` and the nodes reachable from them along edges; a parent's children come
    with it."""
    seen = set(starts)
    todo = list(seen)
    while todo:
        node_id = todo.pop()
        nexts = [ref.edge.target for ref in topo.out_edges.get(node_id, ())]
        nexts += topo.children.get(node_id, ())
        for target in nexts:
            if target not in seen:
                seen.add(target)
                todo.append(target)
    return seen


def _compute(graph: Graph) -> Topology:
    ids = [n.id for n in graph.nodes]
    known = set(ids)
    starts = [n.id for n in graph.nodes if n.type == "start"]
    topo = Topology(start=starts[0] if len(starts) == 1 else None)
    for nid in ids:
        topo.out_edges.setdefault(nid, [])
        topo.in_edges.setdefault(nid, [])
    for i, e in enumerate(graph.edges):
        if e.source in known and e.target in known:
            ref = EdgeRef(i, e)
            topo.out_edges[e.source].append(ref)
            topo.in_edges[e.target].append(ref)
    for n in graph.nodes:
        if n.parent is not None:
            topo.children.setdefault(n.parent, []).append(n.id)

    topo.back_edges = frozenset(_back_edges(topo, ids))
    for nid in ids:
        topo.join_inputs[nid] = [
            r.index for r in topo.in_edges[nid] if r.index not in topo.back_edges
        ]

    for loop_id, members in enumerate(_cyclic_sccs(topo, ids)):
        for m in members:
            topo.loop_of[m] = loop_id
        exits = [
            r.index for m in members for r in topo.out_edges[m] if r.edge.target not in members
        ]
        topo.loop_exits[loop_id] = exits
    _natural_loops(topo, ids)
    return topo


def _natural_loops(topo: Topology, ids: list[str]) -> None:
    """Loop bodies per header: the header plus every node that reaches one of its back
    edges' sources backwards without passing the header (kept inside the header's strongly
    connected component, so an irreducible entry cannot drag outside nodes in)."""
    bodies: dict[str, set[str]] = {}
    refs = {r.index: r for out in topo.out_edges.values() for r in out}
    for ref_index in sorted(topo.back_edges):
        ref = refs[ref_index]
        header, tail = ref.edge.target, ref.edge.source
        scc = topo.loop_of.get(header)
        body = bodies.setdefault(header, {header})
        stack = [tail]
        while stack:
            nid = stack.pop()
            if nid in body or topo.loop_of.get(nid) != scc:
                continue
            body.add(nid)
            stack.extend(r.edge.source for r in topo.in_edges[nid])
    order = {nid: i for i, nid in enumerate(ids)}
    distinct: list[frozenset[str]] = []
    for header in sorted(bodies, key=order.__getitem__):
        frozen = frozenset(bodies[header])
        if frozen not in distinct:  # an irreducible loop can have several headers: one loop
            distinct.append(frozen)
    topo.loops = dict(enumerate(distinct))
    containing: dict[str, list[int]] = {nid: [] for nid in ids}
    for loop_id, members in topo.loops.items():
        for nid in members:
            containing[nid].append(loop_id)
    for nid, found in containing.items():
        topo.loops_of[nid] = tuple(sorted(found, key=lambda i: (len(topo.loops[i]), i)))
    for nid in ids:
        groups: dict[int, list[int]] = {}
        for ref in topo.in_edges[nid]:
            if ref.index in topo.back_edges:
                continue
            src = ref.edge.source
            shared = [i for i in topo.loops_of[nid] if src in topo.loops[i]]
            group = shared[0] if shared else -1
            topo.group_of[ref.index] = group
            groups.setdefault(group, []).append(ref.index)
            left = [i for i in topo.loops_of[src] if nid not in topo.loops[i]]
            if left:
                outermost = left[-1]
                topo.defer_loop[ref.index] = outermost
                topo.deferred_exits.setdefault(outermost, []).append(ref.index)
        topo.join_groups[nid] = groups


def _back_edges(topo: Topology, ids: list[str]) -> set[int]:
    """Edges that close a cycle, by an iterative DFS from start (then from any unvisited
    node, in definition order) following edges in definition order."""
    WHITE, GREY, BLACK = 0, 1, 2
    color = dict.fromkeys(ids, WHITE)
    back: set[int] = set()
    roots = ([topo.start] if topo.start else []) + ids
    for root in roots:
        if color[root] != WHITE:
            continue
        color[root] = GREY
        stack: list[tuple[str, int]] = [(root, 0)]
        while stack:
            nid, pos = stack[-1]
            outs = topo.out_edges[nid]
            if pos < len(outs):
                stack[-1] = (nid, pos + 1)
                ref = outs[pos]
                tgt = ref.edge.target
                if color[tgt] == GREY:
                    back.add(ref.index)
                elif color[tgt] == WHITE:
                    color[tgt] = GREY
                    stack.append((tgt, 0))
            else:
                color[nid] = BLACK
                stack.pop()
    return back


def _cyclic_sccs(topo: Topology, ids: list[str]) -> list[set[str]]:
    """Strongly connected components that contain a cycle (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    result: list[set[str]] = []
    counter = 0
    for root in ids:
        if root in index:
            continue
        work: list[tuple[str, int]] = [(root, 0)]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            nid, pos = work[-1]
            outs = topo.out_edges[nid]
            if pos < len(outs):
                work[-1] = (nid, pos + 1)
                tgt = outs[pos].edge.target
                if tgt not in index:
                    index[tgt] = low[tgt] = counter
                    counter += 1
                    stack.append(tgt)
                    on_stack.add(tgt)
                    work.append((tgt, 0))
                elif tgt in on_stack:
                    low[nid] = min(low[nid], index[tgt])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[nid])
            if low[nid] == index[nid]:
                comp: set[str] = set()
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    comp.add(m)
                    if m == nid:
                        break
                self_loop = any(r.edge.target == nid for r in topo.out_edges[nid])
                if len(comp) > 1 or self_loop:
                    result.append(comp)
    return result
