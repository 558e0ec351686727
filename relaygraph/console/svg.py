"""A graph drawn as SVG on the server: no JavaScript renderer, nothing fetched by the browser.

Layered top to bottom: a node sits one layer below its deepest predecessor along forward
edges (edges that close a loop are drawn as curves on the right), nodes of a layer are
ordered by where their predecessors are. Each node is a ``<g class="node st-<status>"
data-node="<id>">`` so the page's script can recolour it when an event arrives.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from markupsafe import Markup, escape

from graph_core.model import Graph

__all__ = ["graph_svg"]

BOX_W, BOX_H = 150, 44
GAP_X, GAP_Y = 30, 56
MARGIN = 24
LABEL_MAX = 20


@dataclass(frozen=True)
class _Edge:
    source: str
    target: str
    back: bool  # closes a loop: drawn as a curve
    child: bool  # a parallel node to one of its children
    label: str


def _edges(graph: Graph) -> list[tuple[str, str, bool, str]]:
    """(source, target, child link?, label) of every drawn edge."""
    found = []
    for edge in graph.edges:
        label = ""
        if edge.condition is not None:
            kind = getattr(edge.condition, "type", "")
            label = "otherwise" if kind == "otherwise" else "if"
        found.append((edge.source, edge.target, False, label))
    for node in graph.nodes:
        if node.parent:
            found.append((node.parent, node.id, True, ""))
    return found


def _back_edges(ids: list[str], out: dict[str, list[str]]) -> set[tuple[str, str]]:
    """Edges that close a cycle in a depth-first walk from the nodes in order."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    back: set[tuple[str, str]] = set()
    for root in ids:
        if root in state:
            continue
        stack = [(root, iter(out.get(root, ())))]
        state[root] = 1
        while stack:
            node, children = stack[-1]
            nxt = next(children, None)
            if nxt is None:
                state[node] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                back.add((node, nxt))
            elif nxt not in state:
                state[nxt] = 1
                stack.append((nxt, iter(out.get(nxt, ()))))
    return back


def _layout(graph: Graph) -> tuple[dict[str, tuple[float, float]], list[_Edge], float, float]:
    ids = [n.id for n in graph.nodes]
    known = set(ids)
    raw = [(s, t, c, lbl) for s, t, c, lbl in _edges(graph) if s in known and t in known]
    out: dict[str, list[str]] = {}
    for s, t, _, _ in raw:
        out.setdefault(s, []).append(t)
    starts = [n.id for n in graph.nodes if n.type == "start"]
    back = _back_edges(starts + ids, out)
    preds: dict[str, list[str]] = {i: [] for i in ids}
    for s, t, _, _ in raw:
        if (s, t) not in back:
            preds[t].append(s)
    # longest path over the forward edges (a DAG once the back edges are set aside)
    layer = {i: 0 for i in ids}
    indegree = {i: len(preds[i]) for i in ids}
    ready = [i for i in ids if indegree[i] == 0]
    while ready:
        node = ready.pop()
        for t in out.get(node, ()):
            if (node, t) in back:
                continue
            layer[t] = max(layer[t], layer[node] + 1)
            indegree[t] -= 1
            if indegree[t] == 0:
                ready.append(t)
    rows: dict[int, list[str]] = {}
    for i in ids:
        rows.setdefault(layer[i], []).append(i)
    pos: dict[str, tuple[float, float]] = {}
    widest = max((len(r) for r in rows.values()), default=1)
    width = 2 * MARGIN + widest * BOX_W + (widest - 1) * GAP_X
    order: dict[str, float] = {}
    for depth_ in sorted(rows):
        row = rows[depth_]
        # order by the mean place of the predecessors already placed (fewer crossings)
        row.sort(key=lambda n: _mean([order[p] for p in preds[n] if p in order], ids.index(n)))
        span = len(row) * BOX_W + (len(row) - 1) * GAP_X
        left = (width - span) / 2
        for k, node in enumerate(row):
            order[node] = k
            x = left + k * (BOX_W + GAP_X)
            pos[node] = (x, MARGIN + depth_ * (BOX_H + GAP_Y))
    height = 2 * MARGIN + len(rows) * BOX_H + max(len(rows) - 1, 0) * GAP_Y
    edges = [_Edge(s, t, (s, t) in back or layer[t] <= layer[s], c, lbl) for s, t, c, lbl in raw]
    if any(e.back for e in edges):
        width += 60  # room for the loop curves on the right
    return pos, edges, width, height


def _mean(values: list[float], fallback: float) -> float:
    return sum(values) / len(values) if values else fallback


def _label(text: str) -> str:
    return text if len(text) <= LABEL_MAX else text[: LABEL_MAX - 1] + "…"


def graph_svg(graph: Graph, statuses: Mapping[str, str] | None = None) -> Markup:
    """The graph as an inline SVG element; ``statuses`` (node id -> status) colour nodes."""
    pos, edges, width, height = _layout(graph)
    statuses = statuses or {}
    parts = [
        f'<svg class="graph" viewBox="0 0 {width:.0f} {height:.0f}" '
        f'width="{width:.0f}" height="{height:.0f}" role="img" '
        f'aria-label="graph {escape(graph.id)}" xmlns="http://www.w3.org/2000/svg">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" '
        'class="arrowhead"/></marker></defs>',
    ]
    for e in edges:
        parts.append(_edge_svg(e, pos, width))
    for node in graph.nodes:
        x, y = pos[node.id]
        status = statuses.get(node.id, "pending")
        parts.append(
            f'<g class="node st-{escape(status)}" data-node="{escape(node.id)}" tabindex="0" '
            f'role="button" aria-label="node {escape(node.id)}: {escape(status)}">'
            f"<title>{escape(node.id)} ({escape(node.type)}): {escape(status)}</title>"
            f'<rect x="{x:.0f}" y="{y:.0f}" width="{BOX_W}" height="{BOX_H}" rx="8"/>'
            f'<text x="{x + BOX_W / 2:.0f}" y="{y + 19:.0f}" class="nid">'
            f"{escape(_label(node.id))}</text>"
            f'<text x="{x + BOX_W / 2:.0f}" y="{y + 35:.0f}" class="ntype">'
            f"{escape(_label(node.type))}</text></g>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def _edge_svg(e: _Edge, pos: Mapping[str, tuple[float, float]], width: float) -> str:
    sx, sy = pos[e.source]
    tx, ty = pos[e.target]
    cls = "edge" + (" child" if e.child else "") + (" back" if e.back else "")
    if e.back:  # leave on the right, come back in on the right
        x1, y1 = sx + BOX_W, sy + BOX_H / 2
        x2, y2 = tx + BOX_W, ty + BOX_H / 2
        bend = max(x1, x2) + 50
        d = f"M{x1:.0f},{y1:.0f} C{bend:.0f},{y1:.0f} {bend:.0f},{y2:.0f} {x2:.0f},{y2:.0f}"
    else:
        x1, y1 = sx + BOX_W / 2, sy + BOX_H
        x2, y2 = tx + BOX_W / 2, ty
        mid = (y1 + y2) / 2
        d = f"M{x1:.0f},{y1:.0f} C{x1:.0f},{mid:.0f} {x2:.0f},{mid:.0f} {x2:.0f},{y2:.0f}"
    label = ""
    if e.label:
        lx, ly = (x1 + x2) / 2 + 4, (y1 + y2) / 2
        label = f'<text x="{lx:.0f}" y="{ly:.0f}" class="elabel">{escape(e.label)}</text>'
    return f'<path d="{d}" class="{cls}" marker-end="url(#arrow)"/>{label}'
