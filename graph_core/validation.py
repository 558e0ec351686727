"""Graph validation: every problem at once, each a ``Problem`` with a stable code and a path.

``validate`` is the front door: give it a ``Graph``, a graph dict or JSON text and it returns
every problem (``[]`` when the graph is valid) without raising. Parse problems come from
``graph_core.model`` (each node and edge is parsed on its own); the semantic checks here look
at the graph as a whole (ids, edges, reachability, joins, loops, parallel children,
conditions) and run on whatever parsed, so one malformed node does not hide the rest.

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
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from graph_core.conditions import Condition
from graph_core.delays import DELAY_KEYS, delay_due
from graph_core.errors import GraphValidationError, PathError, Problem
from graph_core.maps import MAP_KEYS, map_limit, tolerance
from graph_core.model import CONTROL_TYPES, Edge, Graph, Node
from graph_core.parsing import ParseReport
from graph_core.paths import parse_path
from graph_core.schemas import schema_problem
from graph_core.subgraphs import SUBGRAPH_KEYS
from graph_core.topology import Topology, reachable, topology

__all__ = ["PROBLEM_CODES", "validate", "validate_graph", "validate_report"]

#: Every code ``validate`` can report (stable: tools and tests match on them).
# fmt: off
PROBLEM_CODES: frozenset[str] = frozenset({
    # parsing: the JSON, and the fields of the graph, its nodes, edges and conditions
    "bad_json", "not_an_object", "missing_field", "unknown_field", "bad_type", "bad_value",
    "bad_node_id", "unknown_op", "unknown_condition_type", "bad_condition",
    # the graph as a whole
    "duplicate_node", "dangling_edge", "missing_start", "multiple_starts", "missing_end",
    "no_end_reachable", "edge_into_start", "edge_out_of_end", "unreachable_node",
    "start_has_parent", "end_has_parent", "end_fan_out",
    "child_has_edges", "bad_parent", "empty_parallel", "nested_parallel",
    "bad_path", "unknown_path_node", "nested_otherwise", "multiple_otherwise",
    "ambiguous_unconditional", "ambiguous_default",
    "unsatisfiable_join", "bad_join", "infinite_loop", "bad_escalation", "bad_delay",
    "bad_compensation", "bad_schema", "bad_map", "bad_subgraph", "bad_trigger",
})
# fmt: on


def validate(source: Graph | Mapping[str, Any] | str | bytes) -> list[Problem]:
    """Every problem with a graph, parse and semantic alike; ``[]`` when it is valid.

    ``source`` is a ``Graph``, a graph dict, or JSON text. Never raises for a bad graph: the
    problems are the same list ``Graph.from_dict`` / ``from_json`` raise in
    ``GraphValidationError``.
    """
    if isinstance(source, Graph):
        return validate_graph(source)
    try:
        if isinstance(source, str | bytes):
            Graph.from_json(source)
        else:
            Graph.from_dict(source)
    except GraphValidationError as e:
        return e.problems
    return []


def validate_graph(graph: Graph) -> list[Problem]:
    """Every semantic problem with a parsed ``graph``, in a stable order; ``[]`` when valid.

    Never raises: a malformed graph (duplicate ids, dangling edges, bad parents) is what this
    function exists to describe.
    """
    return _run(_Context.build(graph))


def validate_report(report: ParseReport) -> list[Problem]:
    """The semantic problems of what parsed in ``report`` (``graph_core.parsing.parse_graph``),
    leaving out those that only follow from a parse problem already reported."""
    if report.graph is None:
        return []
    return _run(_Context.build(report.graph, report))


def _run(ctx: _Context) -> list[Problem]:
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
    pos_of: dict[str, int]  # that node's index in the input's nodes
    start: str | None  # the start node's id when there is exactly one
    # Input positions and what failed to parse (nothing, for a graph that parsed whole).
    parsed: ParseReport
    # The readable ends (None: unknown) of edges that may be missing from the graph: the
    # dropped ones and, when nodes were dropped, those whose other end is one of them.
    loose: tuple[tuple[str | None, str | None], ...]

    @classmethod
    def build(cls, graph: Graph, report: ParseReport | None = None) -> _Context:
        if report is None:
            everything = tuple(range(len(graph.nodes))), tuple(range(len(graph.edges)))
            report = ParseReport([], graph, *everything)
        by_id: dict[str, Node] = {}
        pos_of: dict[str, int] = {}
        for pos, n in zip(report.node_pos, graph.nodes, strict=True):
            if n.id not in by_id:
                by_id[n.id] = n
                pos_of[n.id] = pos
        starts = {n.id for n in graph.nodes if n.type == "start"}
        start = next(iter(starts)) if len(starts) == 1 else None
        # topology() only follows edges whose ends both exist and tolerates duplicate ids
        # (they share one adjacency list), so it is safe on any graph that reaches here.
        loose = report.lost_edges
        if report.lost_nodes:  # an edge to a node whose id did not parse dangles
            loose += tuple(
                (e.source if e.source in by_id else None, e.target if e.target in by_id else None)
                for e in graph.edges
                if e.source not in by_id or e.target not in by_id
            )
        return cls(graph, topology(graph), by_id, pos_of, start, report, loose)

    def nodes(self) -> Iterator[tuple[int, Node]]:
        """``(input index, node)`` for every node, in definition order."""
        return zip(self.parsed.node_pos, self.graph.nodes, strict=True)

    def edges(self) -> Iterator[tuple[int, Edge]]:
        """``(input index, edge)`` for every edge, in definition order."""
        return zip(self.parsed.edge_pos, self.graph.edges, strict=True)

    def node_path(self, node_id: str, field: str | None = None) -> str:
        return f"nodes[{self.pos_of[node_id]}]" + (f".{field}" if field else "")

    def edge_name(self, index: int, edge: Edge) -> str:
        """``edges[3] a->b`` for the topology's edge ``index``."""
        return f"edges[{self.parsed.edge_pos[index]}] {edge.label}"

    def children(self, node_id: str) -> list[str]:
        """Distinct ids of the nodes whose ``parent`` is ``node_id``, in definition order."""
        return list(dict.fromkeys(self.topo.children.get(node_id, ())))

    def is_child(self, node_id: str) -> bool:
        node = self.by_id.get(node_id)
        return node is not None and node.parent is not None

    def is_broken(self, node_id: str, field: str) -> bool:
        """Whether ``node_id``'s ``field`` failed to parse (its value is a stand-in)."""
        return field in self.parsed.broken.get(node_id, ())

    # What the loose edges could have been: checks that a missing edge could make fail skip
    # the nodes it might touch instead of reporting a problem that is not there.

    def inputs_unknown(self, node_id: str) -> bool:
        """Some dropped edge may lead into ``node_id``."""
        return any(t is None or t == node_id for _, t in self.loose)

    def outputs_unknown(self, node_id: str) -> bool:
        """Some dropped edge may leave ``node_id``."""
        return any(s is None or s == node_id for s, _ in self.loose)

    def children_unknown(self) -> bool:
        """A dropped node, or one whose parent did not parse, may be some node's child."""
        broken = self.parsed.broken.values()
        return self.parsed.lost_nodes > 0 or any("parent" in b for b in broken)


def _suggest(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _a(word: str) -> str:
    return "an" if word[:1].lower() in tuple("aeiou") else "a"


def _quoted(ids: Iterable[str], limit: int = 8) -> str:
    shown = list(ids)
    text = ", ".join(repr(i) for i in shown[:limit])
    return text + (f" and {len(shown) - limit} more" if len(shown) > limit else "")


def _no_such_node(name: str, ctx: _Context) -> str:
    """The end of a message about a missing node: a suggestion, or the ids there are."""
    if not ctx.by_id:
        return " (the graph has no nodes)"
    return _suggest(name, ctx.by_id) or f" (nodes: {_quoted(ctx.by_id)})"


# --- nodes and edges -------------------------------------------------------------------------


def _check_ids(ctx: _Context) -> Iterator[Problem]:
    for pos, n in ctx.nodes():
        first = ctx.pos_of[n.id]
        if pos != first:
            yield Problem(
                "duplicate_node",
                f"nodes[{pos}].id",
                f"node id {n.id!r} is already used by nodes[{first}]; node ids must be unique",
            )


def _check_edge_ends(ctx: _Context) -> Iterator[Problem]:
    for i, e in ctx.edges():
        where = f"edges[{i}]"
        for end, node_id in (("source", e.source), ("target", e.target)):
            if node_id not in ctx.by_id:
                yield Problem(
                    "dangling_edge",
                    f"{where}.{end}",
                    f"edge {e.label}: {end} {node_id!r} is not a node{_no_such_node(node_id, ctx)}",
                )
        src, tgt = ctx.by_id.get(e.source), ctx.by_id.get(e.target)
        if tgt is not None and tgt.type == "start":
            yield Problem(
                "edge_into_start",
                f"{where}.target",
                f"edge {e.label}: target {e.target!r} is the start node, which cannot have "
                "incoming edges",
            )
        if src is not None and src.type == "end":
            yield Problem(
                "edge_out_of_end",
                f"{where}.source",
                f"edge {e.label}: source {e.source!r} is an end node, which cannot have "
                "outgoing edges",
            )
        for end, node_id in (("source", e.source), ("target", e.target)):
            if not ctx.is_child(node_id) or (end == "target" and node_id == e.source):
                continue  # a self-loop on a child is one problem, not two
            yield Problem(
                "child_has_edges",
                f"{where}.{end}",
                f"edge {e.label}: node {node_id!r} is a child of "
                f"{ctx.by_id[node_id].parent!r}: children run inside their parent and cannot "
                "have edges (connect the parent instead)",
            )


def _check_start_end(ctx: _Context) -> Iterator[Problem]:
    unknown = ctx.parsed.lost_types  # a node that did not parse may have been the start or end
    starts = [(pos, n.id) for pos, n in ctx.nodes() if n.type == "start"]
    if not starts and unknown.isdisjoint({"start", "*"}):
        yield Problem(
            "missing_start", "graph", "no node has type 'start'; a graph needs exactly one"
        )
    seen = {starts[0][1]} if starts else set()
    for pos, node_id in starts[1:]:
        if node_id not in seen:  # (a duplicate id is reported as such)
            seen.add(node_id)
            yield Problem(
                "multiple_starts",
                f"nodes[{pos}].type",
                f"node {node_id!r} is a second start node (the first is {starts[0][1]!r}); "
                "a graph has exactly one",
            )
    if not any(n.type == "end" for n in ctx.graph.nodes) and unknown.isdisjoint({"end", "*"}):
        yield Problem("missing_end", "graph", "no node has type 'end'; a graph needs at least one")
    for pos, n in ctx.nodes():
        if n.type in ("start", "end") and n.parent is not None:
            yield Problem(
                f"{n.type}_has_parent",
                f"nodes[{pos}].parent",
                f"{n.type} node {n.id!r} has parent {n.parent!r}, but a {n.type} node cannot "
                "be a child",
            )
        if n.type == "end" and n.fan_out:
            yield Problem(
                "end_fan_out",
                f"nodes[{pos}].fan_out",
                f"end node {n.id!r} has fan_out true, but an end node has no edges to fan out to",
            )


# --- reachability ----------------------------------------------------------------------------


def _check_reachability(ctx: _Context) -> Iterator[Problem]:
    if ctx.start is None:
        return  # missing_start / multiple_starts already say why nothing can be reached
    if any(t is None for _, t in ctx.loose):
        return  # an edge whose target did not parse may be the way to any node
    # A dropped edge into a node may have been the way to it: count such nodes as reached.
    seen = reachable(ctx.topo, [ctx.start, *(t for _, t in ctx.loose if t in ctx.by_id)])
    for node_id, node in ctx.by_id.items():
        # A child is reachable exactly when its parent is: report the parent (or bad_parent).
        if node_id not in seen and node.parent is None and not ctx.is_broken(node_id, "parent"):
            yield Problem(
                "unreachable_node",
                ctx.node_path(node_id),
                f"node {node_id!r} cannot be reached: no path leads to it from start node "
                f"{ctx.start!r}",
            )
    ends = [n for n in ctx.by_id.values() if n.type == "end"]
    if ends and not any(n.id in seen and n.parent is None for n in ends):
        yield Problem(
            "no_end_reachable",
            ctx.node_path(ctx.start),
            f"no end node ({_quoted(n.id for n in ends)}) can be reached from start node "
            f"{ctx.start!r}",
        )


# --- parallel nodes and their children -------------------------------------------------------


def _check_parents(ctx: _Context) -> Iterator[Problem]:
    for pos, n in ctx.nodes():
        if n.parent is None:
            continue
        where = f"nodes[{pos}].parent"
        parent = ctx.by_id.get(n.parent)
        if n.parent == n.id:
            yield Problem(
                "bad_parent",
                where,
                f"node {n.id!r} is its own parent; a parent must be another, 'parallel' node",
            )
        elif parent is None:
            yield Problem(
                "bad_parent",
                where,
                f"node {n.id!r}: parent {n.parent!r} is not a node{_no_such_node(n.parent, ctx)}",
            )
        elif parent.type != "parallel" and not ctx.is_broken(parent.id, "type"):
            yield Problem(
                "bad_parent",
                where,
                f"node {n.id!r}: parent {n.parent!r} is {_a(parent.type)} {parent.type!r} "
                "node; only 'parallel' nodes have children",
            )
        if n.type == "parallel" and parent is not None and parent.type == "parallel":
            yield Problem(
                "nested_parallel",
                where,
                f"parallel node {n.id!r} is inside parallel {n.parent!r}: nested parallel "
                "nodes are not supported",
            )


def _check_parallel_nodes(ctx: _Context) -> Iterator[Problem]:
    # A node that did not parse may be one of a parallel node's children: then its number
    # of children is unknown, and only the join's own value can be checked.
    unknown = ctx.children_unknown()
    for pos, n in ctx.nodes():
        if n.type != "parallel":
            continue
        children = ctx.children(n.id)
        if not children and not unknown:
            yield Problem(
                "empty_parallel",
                f"nodes[{pos}]",
                f'parallel node {n.id!r} has no children (set "parent": {n.id!r} on the '
                "nodes it runs)",
            )
        yield from _check_children_join(n, pos, None if unknown else len(children))


def _check_delays(ctx: _Context) -> Iterator[Problem]:
    """A delay's config: ``seconds`` (a number >= 0) or ``until`` (an ISO 8601 timestamp, or
    epoch seconds), not both; a template in either is checked when the node runs."""
    for pos, n in ctx.nodes():
        if n.type != "delay":
            continue
        where = f"nodes[{pos}].config"
        unknown = sorted(set(n.config) - DELAY_KEYS)
        if unknown:
            yield Problem(
                "bad_delay",
                f"{where}.{unknown[0]}",
                f"delay node {n.id!r}: unknown config key(s) {', '.join(map(repr, unknown))} "
                "(a delay takes seconds or until)",
            )
        given = sorted(set(n.config) & DELAY_KEYS)
        if len(given) > 1:
            yield Problem("bad_delay", where, f"delay node {n.id!r}: seconds or until, not both")
            continue
        for key in given:
            if _templated(n.config[key]):
                continue  # rendered, and checked, when the node runs
            try:
                delay_due({key: n.config[key]}, 0.0)
            except ValueError as e:
                yield Problem("bad_delay", f"{where}.{key}", f"delay node {n.id!r}: {e}")


def _check_maps(ctx: _Context) -> Iterator[Problem]:
    """A map's config: ``items`` (a template or a list), ``node: {type, config}`` with a type
    a worker runs, a valid ``max_concurrency`` and ``tolerated_failures``."""
    for pos, n in ctx.nodes():
        if n.type != "map":
            continue
        where = f"nodes[{pos}].config"
        for path, reason in _map_config_problems(n.config):
            yield Problem("bad_map", f"{where}{path}", f"map node {n.id!r}: {reason}")


def _map_config_problems(config: dict[str, Any]) -> Iterator[tuple[str, str]]:
    unknown = sorted(set(config) - MAP_KEYS)
    if unknown:
        yield (
            f".{unknown[0]}",
            f"unknown config key(s) {', '.join(map(repr, unknown))} (a map takes "
            f"{', '.join(sorted(MAP_KEYS))})",
        )
    items = config.get("items")
    if items is None:
        yield "", 'no items: give "items": "{{ node.output.list }}" or a list'
    elif not (_templated(items) or isinstance(items, list)):
        yield ".items", f"items must be a template or a list, got {_kind(items)}"
    if "graph" in config and "node" in config:
        yield "", "a map runs a node or a graph, not both"
    elif "graph" in config:
        graph = config["graph"]
        if not isinstance(graph, str) or not graph.strip():
            yield ".graph", f"graph must be a graph id, got {graph!r}"
    inner = config.get("node")
    if inner is None:
        if "graph" not in config:
            yield "", 'no node: give "node": {"type": ..., "config": {...}} or "graph": ID'
    elif not isinstance(inner, dict):
        yield ".node", f"node must be an object {{type, config}}, got {_kind(inner)}"
    else:
        yield from _inner_node_problems(inner)
    for key, check in (
        ("max_concurrency", map_limit),
        ("tolerated_failures", lambda v: tolerance(v, 100)),
    ):
        if key in config:
            try:
                check(config[key])
            except ValueError as e:
                yield f".{key}", str(e)


def _inner_node_problems(inner: dict[str, Any]) -> Iterator[tuple[str, str]]:
    kind = inner.get("type")
    extra = sorted(set(inner) - {"type", "config"})
    if extra:
        yield f".node.{extra[0]}", f"the inner node takes type and config, not {extra[0]!r}"
    if not isinstance(kind, str) or not kind.strip():
        yield ".node.type", f"the inner node needs a type, got {kind!r}"
    elif kind in CONTROL_TYPES:
        yield (
            ".node.type",
            f"the inner node is a {kind!r} node: items run on workers (use a type a handler "
            "is registered for)",
        )
    if not isinstance(inner.get("config", {}), dict):
        yield ".node.config", "the inner node's config must be an object"


def _check_subgraphs(ctx: _Context) -> Iterator[Problem]:
    """A subgraph's config: ``graph`` (a graph id, or a template), an optional ``version``
    (a whole number >= 1), ``input`` and ``output``; a graph that names itself statically
    (as a subgraph or a map's graph) would include itself without end. Graphs that include
    each other, and graphs not registered, are checked when the graph is registered."""
    for pos, n in ctx.nodes():
        if n.type not in ("subgraph", "map"):
            continue
        where = f"nodes[{pos}].config"
        graph = n.config.get("graph")
        if n.type == "subgraph":
            unknown = sorted(set(n.config) - SUBGRAPH_KEYS)
            if unknown:
                yield Problem(
                    "bad_subgraph",
                    f"{where}.{unknown[0]}",
                    f"subgraph node {n.id!r}: unknown config key(s) "
                    f"{', '.join(map(repr, unknown))} (a subgraph takes "
                    f"{', '.join(sorted(SUBGRAPH_KEYS))})",
                )
            if not isinstance(graph, str) or not graph.strip():
                yield Problem(
                    "bad_subgraph",
                    f"{where}.graph",
                    f'subgraph node {n.id!r}: give the graph to run, "graph": "<graph id>" '
                    f"(got {graph!r})",
                )
                continue
            version = n.config.get("version")
            if version is not None and (
                isinstance(version, bool) or not isinstance(version, int) or version < 1
            ):
                yield Problem(
                    "bad_subgraph",
                    f"{where}.version",
                    f"subgraph node {n.id!r}: version must be a whole number >= 1, got {version!r}",
                )
        if graph == ctx.graph.id:
            yield Problem(
                "bad_subgraph",
                f"{where}.graph",
                f"{n.type} node {n.id!r} runs graph {graph!r}, which is this graph: it would "
                "include itself without end",
            )


def _check_triggers(ctx: _Context) -> Iterator[Problem]:
    """Triggers that fire: a valid cron and time zone, an event name and a filter that
    parses, a webhook's secret variable; ids unique."""
    from graph_core.triggers import trigger_problems

    for path, reason in trigger_problems(ctx.graph):
        yield Problem("bad_trigger", path, reason)


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _check_compensations(ctx: _Context) -> Iterator[Problem]:
    """Only nodes a worker runs can be undone (start, end, parallel, human and delay have no
    effect of their own to undo)."""
    for pos, n in ctx.nodes():
        if n.compensate is not None and n.type in CONTROL_TYPES:
            yield Problem(
                "bad_compensation",
                f"nodes[{pos}].compensate",
                f"node {n.id!r} is a {n.type!r} node: only nodes that run on a worker can "
                "have a compensation",
            )


def _check_schemas(ctx: _Context) -> Iterator[Problem]:
    """A node's input_schema and output_schema must be valid JSON Schemas."""
    for pos, n in ctx.nodes():
        for field in ("input_schema", "output_schema"):
            schema = getattr(n, field)
            if schema is None:
                continue
            reason = schema_problem(schema)
            if reason is not None:
                yield Problem("bad_schema", f"nodes[{pos}].{field}", f"node {n.id!r}: {reason}")


def _templated(value: Any) -> bool:
    return isinstance(value, str) and "{{" in value


def _check_children_join(node: Node, pos: int, n_children: int | None) -> Iterator[Problem]:
    join = node.config.get("join", "all")
    where = f"nodes[{pos}].config.join"
    if (
        isinstance(join, bool)
        or not (join in ("all", "any") or isinstance(join, int))
        or (isinstance(join, int) and join < 1)
    ):
        yield Problem(
            "bad_join",
            where,
            f"parallel node {node.id!r}: config.join must be 'all', 'any' or a whole number "
            f">= 1, got {join!r}",
        )
    elif isinstance(join, int) and n_children and n_children < join:
        yield Problem(
            "unsatisfiable_join",
            where,
            f"parallel node {node.id!r}: config.join waits for {join} children but the node "
            f"has only {n_children}",
        )


# --- routing ---------------------------------------------------------------------------------


def _walk(cond: Condition, path: str) -> Iterator[tuple[str, Condition]]:
    """``(path, condition)`` for ``cond`` and every condition nested in it."""
    yield path, cond
    for k, sub in enumerate(cond.conditions):
        yield from _walk(sub, f"{path}.conditions[{k}]")


def _check_conditions(ctx: _Context) -> Iterator[Problem]:
    for i, e in ctx.edges():
        if e.condition is None:
            continue
        for where, c in _walk(e.condition, f"edges[{i}].condition"):
            if c.is_otherwise and c is not e.condition:
                yield Problem(
                    "nested_otherwise",
                    where,
                    f"edge {e.label}: 'otherwise' is only allowed as an edge's whole condition, "
                    "not inside all/any/not",
                )
            for name, path in (("path", c.path), ("value_path", c.value_path)):
                if path is not None:
                    yield from _check_path(ctx, path, f"{where}.{name}", e)


def _check_path(ctx: _Context, path: str, where: str, edge: Edge) -> Iterator[Problem]:
    try:
        parsed = parse_path(path)
    except PathError as err:  # the model parses paths, but a graph can be built around it
        yield Problem("bad_path", where, f"edge {edge.label}: {err}")
        return
    node_id = parsed.node_id
    if node_id is not None and node_id not in ctx.by_id:
        yield Problem(
            "unknown_path_node",
            where,
            f"edge {edge.label}: condition reads {path!r} but there is no node {node_id!r}"
            f"{_no_such_node(node_id, ctx)}",
        )


def _check_routing(ctx: _Context) -> Iterator[Problem]:
    for node_id, node in ctx.by_id.items():
        if node.fan_out or ctx.is_broken(node_id, "fan_out"):
            continue  # every matching edge fires: several catch-alls all fire, none is dead
        refs = ctx.topo.out_edges.get(node_id, [])
        plain = [r for r in refs if r.edge.condition is None]
        otherwise = [
            r for r in refs if r.edge.condition is not None and r.edge.condition.is_otherwise
        ]
        for r in plain[1:]:
            yield Problem(
                "ambiguous_unconditional",
                f"edges[{ctx.parsed.edge_pos[r.index]}]",
                f"edge {r.edge.label}: node {node_id!r} already has an unconditional edge "
                f"({ctx.edge_name(plain[0].index, plain[0].edge)}); without fan_out only one "
                "can fire (add conditions, or set fan_out to fire them all)",
            )
        if len(otherwise) > 1:
            yield Problem(
                "multiple_otherwise",
                ctx.node_path(node_id),
                f"node {node_id!r} has {len(otherwise)} 'otherwise' edges "
                f"({', '.join(ctx.edge_name(r.index, r.edge) for r in otherwise)}); only one "
                "can fire",
            )
        if plain and otherwise:
            yield Problem(
                "ambiguous_default",
                ctx.node_path(node_id),
                f"node {node_id!r} has both an unconditional edge "
                f"({ctx.edge_name(plain[0].index, plain[0].edge)}) and an 'otherwise' edge "
                f"({ctx.edge_name(otherwise[0].index, otherwise[0].edge)}); both are "
                "catch-alls and only one can fire",
            )


# --- joins, loops, waits -----------------------------------------------------------------------


def _check_joins(ctx: _Context) -> Iterator[Problem]:
    for node_id, node in ctx.by_id.items():
        if not isinstance(node.join, int) or node.type == "start" or node.parent is not None:
            continue  # a start has no inputs to join and a child has no edges
        if ctx.inputs_unknown(node_id):
            continue  # an edge that did not parse may be one of its inputs
        inputs = len(ctx.topo.join_inputs.get(node_id, ()))
        if node.join > inputs:
            yield Problem(
                "unsatisfiable_join",
                ctx.node_path(node_id, "join"),
                f"node {node_id!r}: join waits for {node.join} incoming branches but the node "
                f"has only {inputs} (edges that close a loop do not count)",
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
        if any(ctx.outputs_unknown(m) or ctx.is_broken(m, "max_visits") for m in ids):
            continue  # the way out, or the limit, may be what did not parse
        yield Problem(
            "infinite_loop",
            ctx.node_path(ids[0]),
            f"loop through {_quoted(ids)} has no edge leaving it and no max_visits: "
            "once entered it never ends (add an exit edge or set max_visits)",
        )


def _check_waits(ctx: _Context) -> Iterator[Problem]:
    for node_id, node in ctx.by_id.items():
        wait = node.wait
        if wait is None:
            continue
        where = ctx.node_path(node_id, "wait.escalate_to")
        target = wait.escalate_to
        if wait.on_timeout == "escalate" and target is None:
            yield Problem(
                "bad_escalation",
                where,
                f"node {node_id!r}: on_timeout is 'escalate' but escalate_to names no node",
            )
        elif target is not None and target not in ctx.by_id:
            yield Problem(
                "bad_escalation",
                where,
                f"node {node_id!r}: escalate_to {target!r} is not a node"
                f"{_no_such_node(target, ctx)}",
            )


_CHECKS = (
    _check_ids,
    _check_start_end,
    _check_edge_ends,
    _check_reachability,
    _check_parents,
    _check_parallel_nodes,
    _check_delays,
    _check_maps,
    _check_subgraphs,
    _check_triggers,
    _check_compensations,
    _check_schemas,
    _check_conditions,
    _check_routing,
    _check_joins,
    _check_loops,
    _check_waits,
)
