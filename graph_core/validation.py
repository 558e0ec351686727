"""Semantic validation of a parsed graph: every problem at once, each with a stable code.

``validate_graph`` runs after pydantic has checked the shape of each node and edge. It looks at
the graph as a whole (ids, edges, reachability, joins, loops, parallel children, conditions) and
returns a list of ``Problem``; an empty list means the graph is valid. It never raises, whatever
the graph: duplicate ids and dangling edges are reported, not tripped over.

Differences from roomkit-graph 0.4's ``Graph.validate()`` (which checks only start/end, edge
references and reachability):

- several unconditional edges out of a node without ``fan_out`` are an error
  (``ambiguous_unconditional``): roomkit-graph silently used the last one;
- an unconditional edge next to an ``otherwise`` edge on such a node is an error too
  (``ambiguous_default``): both are catch-alls, so one of them can never fire;
- loops with no way out, impossible joins, unknown nodes in condition paths and malformed
  parallel children are reported here instead of hanging or failing a run later.
"""

from __future__ import annotations

import difflib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from graph_core.conditions import Condition
from graph_core.errors import PathError, Problem
from graph_core.model import Edge, Graph, Node
from graph_core.paths import parse_path
from graph_core.topology import Topology, topology

__all__ = ["PROBLEM_CODES", "validate_graph"]

#: Every code ``validate_graph`` can report (stable: tools and tests match on them).
# fmt: off
PROBLEM_CODES: frozenset[str] = frozenset({
    "duplicate_node", "dangling_edge", "missing_start", "multiple_starts", "missing_end",
    "no_end_reachable", "edge_into_start", "edge_out_of_end", "unreachable_node",
    "start_has_parent", "end_has_parent", "end_fan_out",
    "child_has_edges", "bad_parent", "empty_parallel", "nested_parallel",
    "bad_path", "unknown_path_node", "nested_otherwise", "multiple_otherwise",
    "ambiguous_unconditional", "ambiguous_default",
    "unsatisfiable_join", "bad_join", "infinite_loop", "bad_escalation",
})
# fmt: on


def validate_graph(graph: Graph) -> list[Problem]:
    """Every problem with ``graph``, in a stable order; ``[]`` when it is valid.

    Never raises: a malformed graph (duplicate ids, dangling edges, bad parents) is what this
    function exists to describe.
    """
    ctx = _Context.build(graph)
    problems: list[Problem] = []
    for check in _CHECKS:
        problems.extend(check(ctx))
    return list(dict.fromkeys(problems))  # duplicate node ids can yield the same problem twice


# --- shared context ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Context:
    graph: Graph
    topo: Topology
    by_id: dict[str, Node]  # first node with each id
    start: str | None  # the start node's id when there is exactly one

    @classmethod
    def build(cls, graph: Graph) -> _Context:
        by_id: dict[str, Node] = {}
        for n in graph.nodes:
            by_id.setdefault(n.id, n)
        starts = {n.id for n in graph.nodes if n.type == "start"}
        start = next(iter(starts)) if len(starts) == 1 else None
        # topology() only follows edges whose ends both exist and tolerates duplicate ids
        # (they share one adjacency list), so it is safe on any graph that reaches here.
        return cls(graph, topology(graph), by_id, start)

    def children(self, node_id: str) -> list[str]:
        """Distinct ids of the nodes whose ``parent`` is ``node_id``, in definition order."""
        return list(dict.fromkeys(self.topo.children.get(node_id, ())))

    def is_child(self, node_id: str) -> bool:
        node = self.by_id.get(node_id)
        return node is not None and node.parent is not None


def _node(node_id: str, field: str | None = None) -> str:
    return f"node {node_id!r}" + (f".{field}" if field else "")


def _edge(index: int, edge: Edge) -> str:
    return f"edge[{index}] {edge.label}"


def _suggest(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _quoted(ids: Iterable[str]) -> str:
    return ", ".join(repr(i) for i in ids)


# --- nodes and edges -------------------------------------------------------------------------


def _check_ids(ctx: _Context) -> Iterator[Problem]:
    counts = Counter(n.id for n in ctx.graph.nodes)
    for node_id, count in counts.items():
        if count > 1:
            yield Problem(
                "duplicate_node",
                _node(node_id),
                f"{count} nodes share the id {node_id!r}; node ids must be unique",
            )


def _check_edge_ends(ctx: _Context) -> Iterator[Problem]:
    for i, e in enumerate(ctx.graph.edges):
        missing = [x for x in (e.source, e.target) if x not in ctx.by_id]
        if missing:
            hints = "; ".join(
                f"no node {m!r}{_suggest(m, ctx.by_id)}" for m in dict.fromkeys(missing)
            )
            yield Problem("dangling_edge", _edge(i, e), f"edge refers to a missing node: {hints}")
        src, tgt = ctx.by_id.get(e.source), ctx.by_id.get(e.target)
        if tgt is not None and tgt.type == "start":
            yield Problem(
                "edge_into_start",
                _edge(i, e),
                f"start node {e.target!r} cannot have incoming edges",
            )
        if src is not None and src.type == "end":
            yield Problem(
                "edge_out_of_end", _edge(i, e), f"end node {e.source!r} cannot have outgoing edges"
            )
        children = [x for x in dict.fromkeys((e.source, e.target)) if ctx.is_child(x)]
        for c in children:
            parent = ctx.by_id[c].parent
            yield Problem(
                "child_has_edges",
                _edge(i, e),
                f"node {c!r} is a child of {parent!r}: children run inside their parent "
                "and cannot have edges (connect the parent instead)",
            )


def _check_start_end(ctx: _Context) -> Iterator[Problem]:
    starts = list(dict.fromkeys(n.id for n in ctx.graph.nodes if n.type == "start"))
    if not starts:
        yield Problem("missing_start", "graph", "the graph has no node of type 'start'")
    for extra in starts[1:]:
        yield Problem(
            "multiple_starts",
            _node(extra),
            f"the graph already has start node {starts[0]!r}; exactly one start is allowed",
        )
    if not any(n.type == "end" for n in ctx.graph.nodes):
        yield Problem("missing_end", "graph", "the graph has no node of type 'end'")
    for n in ctx.graph.nodes:
        if n.type == "start" and n.parent is not None:
            yield Problem(
                "start_has_parent", _node(n.id, "parent"), "a start node cannot be a child"
            )
        if n.type == "end" and n.parent is not None:
            yield Problem("end_has_parent", _node(n.id, "parent"), "an end node cannot be a child")
        if n.type == "end" and n.fan_out:
            yield Problem(
                "end_fan_out", _node(n.id, "fan_out"), "an end node has no edges to fan out to"
            )


# --- reachability ----------------------------------------------------------------------------


def _reachable(ctx: _Context, start: str) -> set[str]:
    """Nodes reachable from ``start`` along edges; a parent's children come with it."""
    seen = {start}
    todo = [start]
    while todo:
        nid = todo.pop()
        nexts = [r.edge.target for r in ctx.topo.out_edges.get(nid, ())] + ctx.children(nid)
        for nxt in nexts:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def _check_reachability(ctx: _Context) -> Iterator[Problem]:
    if ctx.start is None:
        return  # missing_start / multiple_starts already say why nothing can be reached
    seen = _reachable(ctx, ctx.start)
    for node_id, node in ctx.by_id.items():
        # A child is reachable exactly when its parent is: report the parent (or bad_parent).
        if node_id not in seen and node.parent is None:
            yield Problem(
                "unreachable_node",
                _node(node_id),
                f"no path leads from start {ctx.start!r} to this node",
            )
    ends = [n for n in ctx.by_id.values() if n.type == "end"]
    if ends and not any(n.id in seen and n.parent is None for n in ends):
        yield Problem(
            "no_end_reachable",
            _node(ctx.start),
            f"no end node ({_quoted(n.id for n in ends)}) can be reached from this start node",
        )


# --- parallel nodes and their children -------------------------------------------------------


def _check_parents(ctx: _Context) -> Iterator[Problem]:
    for n in ctx.graph.nodes:
        if n.parent is None:
            continue
        parent = ctx.by_id.get(n.parent)
        if n.parent == n.id:
            yield Problem("bad_parent", _node(n.id, "parent"), "a node cannot be its own parent")
        elif parent is None:
            yield Problem(
                "bad_parent",
                _node(n.id, "parent"),
                f"parent {n.parent!r} is not a node{_suggest(n.parent, ctx.by_id)}",
            )
        elif parent.type != "parallel":
            yield Problem(
                "bad_parent",
                _node(n.id, "parent"),
                f"parent {n.parent!r} is a {parent.type!r} node; only 'parallel' nodes have "
                "children",
            )
        if n.type == "parallel" and parent is not None and parent.type == "parallel":
            yield Problem(
                "nested_parallel",
                _node(n.id),
                f"parallel node inside parallel {n.parent!r}: nested parallel nodes are not "
                "supported",
            )


def _check_parallel_nodes(ctx: _Context) -> Iterator[Problem]:
    for n in ctx.graph.nodes:
        if n.type != "parallel":
            continue
        children = ctx.children(n.id)
        if not children:
            yield Problem(
                "empty_parallel",
                _node(n.id),
                f'parallel node has no children (set "parent": {n.id!r} on the nodes it runs)',
            )
        yield from _check_children_join(n, len(children))


def _check_children_join(node: Node, n_children: int) -> Iterator[Problem]:
    join = node.config.get("join", "all")
    where = _node(node.id, "config.join")
    if isinstance(join, bool) or not (join in ("all", "any") or isinstance(join, int)):
        yield Problem(
            "bad_join", where, f'join must be "all", "any" or a number >= 1, got {join!r}'
        )
    elif isinstance(join, int) and join < 1:
        yield Problem("bad_join", where, f"a numeric join must be >= 1, got {join}")
    elif isinstance(join, int) and 0 < n_children < join:
        yield Problem(
            "unsatisfiable_join",
            where,
            f"join waits for {join} children but the node has only {n_children}",
        )


# --- routing ---------------------------------------------------------------------------------


def _contains_otherwise(cond: Condition) -> bool:
    return any(c.is_otherwise or _contains_otherwise(c) for c in cond.conditions)


def _check_conditions(ctx: _Context) -> Iterator[Problem]:
    for i, e in enumerate(ctx.graph.edges):
        if e.condition is None:
            continue
        if _contains_otherwise(e.condition):
            yield Problem(
                "nested_otherwise",
                _edge(i, e),
                "'otherwise' only makes sense as an edge's whole condition, not inside all/any/not",
            )
        for path in dict.fromkeys(e.condition.paths()):
            yield from _check_path(ctx, path, _edge(i, e))


def _check_path(ctx: _Context, path: str, where: str) -> Iterator[Problem]:
    try:
        parsed = parse_path(path)
    except PathError as err:  # the model parses paths, but a graph can be built around it
        yield Problem("bad_path", where, str(err))
        return
    node_id = parsed.node_id
    if node_id is not None and node_id not in ctx.by_id:
        yield Problem(
            "unknown_path_node",
            where,
            f"condition reads {path!r} but there is no node {node_id!r}"
            f"{_suggest(node_id, ctx.by_id)}",
        )


def _check_routing(ctx: _Context) -> Iterator[Problem]:
    for node_id, node in ctx.by_id.items():
        if node.fan_out:
            continue  # every matching edge fires: several catch-alls all fire, none is dead
        refs = ctx.topo.out_edges.get(node_id, [])
        plain = [r for r in refs if r.edge.condition is None]
        otherwise = [
            r for r in refs if r.edge.condition is not None and r.edge.condition.is_otherwise
        ]
        for r in plain[1:]:
            yield Problem(
                "ambiguous_unconditional",
                _edge(r.index, r.edge),
                f"node {node_id!r} already has an unconditional edge "
                f"({_edge(plain[0].index, plain[0].edge)}); without fan_out only one can fire "
                "(add conditions, or set fan_out to fire them all)",
            )
        if len(otherwise) > 1:
            yield Problem(
                "multiple_otherwise",
                _node(node_id),
                f"{len(otherwise)} 'otherwise' edges "
                f"({', '.join(_edge(r.index, r.edge) for r in otherwise)}); only one can fire",
            )
        if plain and otherwise:
            yield Problem(
                "ambiguous_default",
                _node(node_id),
                f"both an unconditional edge ({_edge(plain[0].index, plain[0].edge)}) and an "
                f"'otherwise' edge ({_edge(otherwise[0].index, otherwise[0].edge)}) are "
                "catch-alls; only one can fire",
            )


# --- joins, loops, waits -----------------------------------------------------------------------


def _check_joins(ctx: _Context) -> Iterator[Problem]:
    for node_id, node in ctx.by_id.items():
        if not isinstance(node.join, int) or node.type == "start" or node.parent is not None:
            continue  # a start has no inputs to join and a child has no edges
        inputs = len(ctx.topo.join_inputs.get(node_id, ()))
        if node.join > inputs:
            yield Problem(
                "unsatisfiable_join",
                _node(node_id, "join"),
                f"join waits for {node.join} incoming branches but the node has only {inputs} "
                "(edges that close a loop do not count)",
            )


def _check_loops(ctx: _Context) -> Iterator[Problem]:
    members: dict[int, list[str]] = {}
    for node_id in ctx.by_id:  # definition order, so the report is stable
        loop = ctx.topo.loop_of.get(node_id)
        if loop is not None:
            members.setdefault(loop, []).append(node_id)
    for loop, ids in members.items():
        if ctx.topo.loop_exits.get(loop):
            continue
        if any(ctx.by_id[m].max_visits is not None for m in ids):
            continue  # the run fails cleanly once a node's visits run out
        yield Problem(
            "infinite_loop",
            _node(ids[0]),
            f"loop through {_quoted(ids)} has no edge leaving it and no max_visits: "
            "once entered it never ends (add an exit edge or set max_visits)",
        )


def _check_waits(ctx: _Context) -> Iterator[Problem]:
    for node_id, node in ctx.by_id.items():
        wait = node.wait
        if wait is None:
            continue
        target = wait.escalate_to
        if wait.on_timeout == "escalate" and target is None:
            yield Problem(
                "bad_escalation",
                _node(node_id, "wait.escalate_to"),
                "on_timeout is 'escalate' but escalate_to names no node",
            )
        elif target is not None and target not in ctx.by_id:
            yield Problem(
                "bad_escalation",
                _node(node_id, "wait.escalate_to"),
                f"escalate_to {target!r} is not a node{_suggest(target, ctx.by_id)}",
            )


_CHECKS = (
    _check_ids,
    _check_start_end,
    _check_edge_ends,
    _check_reachability,
    _check_parents,
    _check_parallel_nodes,
    _check_conditions,
    _check_routing,
    _check_joins,
    _check_loops,
    _check_waits,
)
