"""Render a graph as Mermaid or Graphviz DOT, optionally coloured by a run's node statuses.

Both renderers are pure string builders that never raise on a graph object, valid or not:
node ids are mapped to safe identifiers (``n_<id>``, made unique), and every label is escaped
for its format, so ids and condition values with quotes, pipes or angle brackets cannot break
the output. Parallel nodes are drawn as a box (Mermaid subgraph, DOT cluster) holding their
children; edges that close a loop are dashed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from enum import Enum
from typing import Any

import orjson

from graph_core.conditions import Condition
from graph_core.model import Graph, Node
from graph_core.topology import topology

__all__ = ["condition_label", "to_dot", "to_mermaid"]

_OPS = {
    "eq": "==",
    "neq": "!=",
    "gt": ">",
    "gte": ">=",
    "lt": "<",
    "lte": "<=",
    "in": "in",
    "not_in": "not in",
    "contains": "contains",
}
_MAX_VALUE = 40  # longer literal values are shortened in labels

# status -> (fill, stroke, text); other status strings get _OTHER_STATUS.
_PALETTE: dict[str, tuple[str, str, str]] = {
    "pending": ("#ffffff", "#9e9e9e", "#424242"),
    "queued": ("#e8eaf6", "#5c6bc0", "#1a237e"),
    "running": ("#cce5ff", "#1e88e5", "#0d47a1"),
    "waiting": ("#fff3cd", "#f9a825", "#6d4c00"),
    "retry_scheduled": ("#ffe0b2", "#fb8c00", "#6d3a00"),
    "completed": ("#d4edda", "#2e7d32", "#1b5e20"),
    "failed": ("#f8d7da", "#c62828", "#7f0000"),
    "skipped": ("#eeeeee", "#bdbdbd", "#757575"),
    "cancelled": ("#e0e0e0", "#616161", "#212121"),
}
_OTHER_STATUS = ("#f5f5f5", "#616161", "#212121")


# --- condition labels ------------------------------------------------------------------------


def condition_label(cond: Condition) -> str:
    """A compact, readable rendering: ``triage.output.severity == "critical"``, ``otherwise``.

    Composites read ``a and b``, ``a or b``, ``not (a)``; long literal values are shortened.
    The result is plain text: each exporter escapes it for its own format.
    """
    if cond.type == "field":
        path = cond.path or "?"
        if cond.op == "exists":
            return f"{path} exists"
        return f"{path} {_OPS.get(cond.op or '', cond.op or '?')} {_value_text(cond.value)}"
    if cond.type == "otherwise":
        return "otherwise"
    if cond.type == "not":
        inner = cond.conditions[0] if cond.conditions else None
        return "not (" + (condition_label(inner) if inner else "?") + ")"
    if not cond.conditions:
        return "true" if cond.type == "all" else "false"  # all() is true, any() is false
    joiner = " and " if cond.type == "all" else " or "
    return joiner.join(_operand(c) for c in cond.conditions)


def _operand(cond: Condition) -> str:
    label = condition_label(cond)
    return f"({label})" if cond.type in ("all", "any") and len(cond.conditions) > 1 else label


def _value_text(value: Any) -> str:
    try:
        text = orjson.dumps(value).decode()
    except TypeError:  # not JSON data (a graph built in code can hold anything)
        text = repr(value)
    return text if len(text) <= _MAX_VALUE else text[: _MAX_VALUE - 3] + "..."


# --- shared layout ---------------------------------------------------------------------------


class _Ids:
    """Maps node ids (and dangling edge ends) to unique identifiers safe in both formats."""

    def __init__(self) -> None:
        self._safe: dict[str, str] = {}
        self._used: set[str] = set()

    def __call__(self, node_id: str) -> str:
        safe = self._safe.get(node_id)
        if safe is None:
            base = "n_" + re.sub(r"[^A-Za-z0-9_]", "_", node_id)
            safe, k = base, 1
            while safe in self._used:
                k += 1
                safe = f"{base}_{k}"
            self._safe[node_id] = safe
            self._used.add(safe)
        return safe


class _Layout:
    """What both renderers need: unique nodes, containment, back edges, statuses."""

    def __init__(self, graph: Graph, statuses: Mapping[str, str] | None) -> None:
        self.graph = graph
        self.ids = _Ids()
        self.nodes: dict[str, Node] = {}
        for n in graph.nodes:
            self.nodes.setdefault(n.id, n)
        self.children: dict[str, list[str]] = {}
        for n in self.nodes.values():
            if self._container(n) is not None:
                self.children.setdefault(n.parent or "", []).append(n.id)
        self.back_edges = topology(graph).back_edges
        self.dangling = [
            x
            for x in dict.fromkeys(y for e in graph.edges for y in (e.source, e.target))
            if x not in self.nodes
        ]
        self.status: dict[str, str] = {
            nid: _status_text(s) for nid, s in (statuses or {}).items() if nid in self.nodes
        }

    def _container(self, node: Node) -> str | None:
        parent = self.nodes.get(node.parent or "")
        if parent is None or parent.id == node.id or parent.type != "parallel":
            return None
        return parent.id

    def roots(self) -> list[str]:
        return [nid for nid, n in self.nodes.items() if self._container(n) is None]

    def is_box(self, node_id: str) -> bool:
        return self.nodes[node_id].type == "parallel" and bool(self.children.get(node_id))

    def label(self, node_id: str) -> str:
        node = self.nodes[node_id]
        return node_id if node.type in ("start", "end") else f"{node_id}\n{node.type}"

    def edge_label(self, index: int) -> str:
        cond = self.graph.edges[index].condition
        return condition_label(cond) if cond is not None else ""


def _status_text(status: Any) -> str:
    return str(status.value) if isinstance(status, Enum) else str(status)


def _status_class(status: str) -> str:
    return "st_" + (re.sub(r"[^a-z0-9_]", "_", status.lower()) or "_")


def _colours(status: str) -> tuple[str, str, str]:
    return _PALETTE.get(status.lower(), _OTHER_STATUS)


# --- Mermaid ---------------------------------------------------------------------------------


def to_mermaid(
    graph: Graph, statuses: Mapping[str, str] | None = None, *, legend: bool = False
) -> str:
    """The graph as a Mermaid ``flowchart TD``; ``statuses`` (node id -> status) colour nodes
    (one ``classDef`` per status). ``legend`` adds a box naming each status's colour."""
    lay = _Layout(graph, statuses)
    lines = ["flowchart TD"]
    placed: set[str] = set()
    for nid in lay.roots():
        lines.extend(_mermaid_node(lay, nid, placed, depth=1))
    for nid in lay.nodes:  # nodes in a parent cycle have no root: draw them at the top level
        if nid not in placed:
            lines.extend(_mermaid_node(lay, nid, placed, depth=1, leaf=True))
    for x in lay.dangling:
        lines.append(f'    {lay.ids(x)}["{_mm(x)} (missing)"]:::rg_missing')
    if legend and lay.status:
        lines.append('    subgraph rg_legend["legend"]')
        lines.append("        direction LR")
        for status in _legend_statuses(lay):
            lines.append(f'        lg_{_status_class(status)}["{_mm(status)}"]')
        lines.append("    end")
    lines.extend(_mermaid_edges(lay))
    lines.extend(_mermaid_classes(lay, legend=legend))
    return "\n".join(lines) + "\n"


def _legend_statuses(lay: _Layout) -> list[str]:
    """The statuses present, known ones in the palette's order, then the others by name."""
    present = set(lay.status.values())
    known = [s for s in _PALETTE if s in present]
    return known + sorted(present - set(known))


def _mermaid_node(
    lay: _Layout, nid: str, placed: set[str], depth: int, *, leaf: bool = False
) -> Iterator[str]:
    placed.add(nid)
    pad = "    " * depth
    sid = lay.ids(nid)
    text = _mm(lay.label(nid))
    if not leaf and lay.is_box(nid):
        yield f'{pad}subgraph {sid}["{text}"]'
        for child in lay.children[nid]:
            if child not in placed:
                yield from _mermaid_node(lay, child, placed, depth + 1)
        yield f"{pad}end"
        return
    opening, closing = _MERMAID_SHAPES.get(lay.nodes[nid].type, ('["', '"]'))
    yield f"{pad}{sid}{opening}{text}{closing}"


_MERMAID_SHAPES = {
    "start": ('(["', '"])'),
    "end": ('(["', '"])'),
    "condition": ('{"', '"}'),
    "switch": ('{"', '"}'),
    "human": ('{{"', '"}}'),
    "parallel": ('[["', '"]]'),  # a parallel node without children
}


def _mermaid_edges(lay: _Layout) -> Iterator[str]:
    for i, e in enumerate(lay.graph.edges):
        arrow = "-.->" if i in lay.back_edges else "-->"
        label = lay.edge_label(i)
        mid = f'{arrow}|"{_mm(label)}"|' if label else arrow
        yield f"    {lay.ids(e.source)} {mid} {lay.ids(e.target)}"


def _mermaid_classes(lay: _Layout, *, legend: bool = False) -> Iterator[str]:
    if lay.dangling:
        yield "    classDef rg_missing fill:#fff,stroke:#c62828,stroke-dasharray:4 3,color:#c62828"
    by_class: dict[str, tuple[str, list[str]]] = {}
    for nid, status in lay.status.items():
        by_class.setdefault(_status_class(status), (status, []))[1].append(lay.ids(nid))
    if legend:
        for cls, (_, sids) in by_class.items():
            sids.append(f"lg_{cls}")
    for cls, (status, sids) in by_class.items():
        fill, stroke, text = _colours(status)
        yield f"    classDef {cls} fill:{fill},stroke:{stroke},color:{text}"
        yield f"    class {','.join(sids)} {cls}"


def _mm(text: str) -> str:
    """Escape text for a quoted Mermaid label (entity codes; ``#`` first)."""
    for raw, code in (
        ("#", "#35;"),
        ('"', "#quot;"),
        ("&", "#amp;"),
        ("<", "#lt;"),
        (">", "#gt;"),
        ("|", "#124;"),
        ("`", "#96;"),
    ):
        text = text.replace(raw, code)
    return "<br/>".join(text.splitlines())


# --- Graphviz DOT ----------------------------------------------------------------------------


def to_dot(graph: Graph, statuses: Mapping[str, str] | None = None, *, legend: bool = False) -> str:
    """The graph as a Graphviz ``digraph``; ``statuses`` (node id -> status) fill nodes
    (``fillcolor``). ``legend`` adds a cluster naming each status's colour."""
    lay = _Layout(graph, statuses)
    lines = [
        f"digraph {_dq(graph.id)} {{",
        "    rankdir=TB;",
        '    node [shape=box, style="rounded", fontname="Helvetica"];',
        '    edge [fontname="Helvetica", fontsize=10];',
    ]
    placed: set[str] = set()
    for nid in lay.roots():
        lines.extend(_dot_node(lay, nid, placed, depth=1))
    for nid in lay.nodes:
        if nid not in placed:
            lines.extend(_dot_node(lay, nid, placed, depth=1, leaf=True))
    for x in lay.dangling:
        lines.append(
            f'    {lay.ids(x)} [label={_dq(x + " (missing)")}, style="dashed", color="#c62828"];'
        )
    for i, e in enumerate(graph.edges):
        attrs = []
        label = lay.edge_label(i)
        if label:
            attrs.append(f"label={_dq(label)}")
        if i in lay.back_edges:
            attrs.append("style=dashed, constraint=false")
        tail = f" [{', '.join(attrs)}]" if attrs else ""
        lines.append(f"    {lay.ids(e.source)} -> {lay.ids(e.target)}{tail};")
    if legend and lay.status:
        lines.append("    subgraph cluster_rg_legend {")
        lines.append('        label="legend"; style="dashed"; rank=sink;')
        for status in _legend_statuses(lay):
            fill, stroke, text = _colours(status)
            lines.append(
                f'        lg_{_status_class(status)} [label={_dq(status)}, style="filled", '
                f'fillcolor="{fill}", color="{stroke}", fontcolor="{text}"];'
            )
        lines.append("    }")
    lines.append("}")
    return "\n".join(lines) + "\n"


_DOT_SHAPES = {
    "start": "shape=oval",
    "end": "shape=oval, peripheries=2",
    "condition": "shape=diamond",
    "switch": "shape=diamond",
    "human": "shape=hexagon",
    "parallel": "shape=component",
}


def _dot_node(
    lay: _Layout, nid: str, placed: set[str], depth: int, *, leaf: bool = False
) -> Iterator[str]:
    placed.add(nid)
    pad = "    " * depth
    sid = lay.ids(nid)
    node = lay.nodes[nid]
    styles = ["rounded"] if node.type not in _DOT_SHAPES else []
    attrs = [f"label={_dq(lay.label(nid))}"]
    if node.type in _DOT_SHAPES:
        attrs.append(_DOT_SHAPES[node.type])
    status = lay.status.get(nid)
    if status is not None:
        fill, stroke, text = _colours(status)
        styles.append("filled")
        attrs.append(f'fillcolor="{fill}", color="{stroke}", fontcolor="{text}"')
        attrs.append(f"tooltip={_dq(status)}")
    if styles:
        attrs.append(f"style={_dq(','.join(styles))}")
    if leaf or not lay.is_box(nid):
        yield f"{pad}{sid} [{', '.join(attrs)}];"
        return
    # A parallel node: a dashed cluster holding the node itself and its children.
    yield f"{pad}subgraph cluster_{sid} {{"
    yield f'{pad}    label={_dq(nid)}; style="dashed";'
    yield f"{pad}    {sid} [{', '.join(attrs)}];"
    for child in lay.children[nid]:
        if child not in placed:
            yield from _dot_node(lay, child, placed, depth + 1)
        yield f"{pad}    {sid} -> {lay.ids(child)} [style=dotted, arrowhead=none];"
    yield f"{pad}}}"


def _dq(text: str) -> str:
    """A double-quoted DOT string: backslashes and quotes escaped, newlines as ``\\n``."""
    text = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + text.replace("\r\n", "\\n").replace("\n", "\\n").replace("\r", "\\n") + '"'
