"""The relaygraph graphs the benchmark runs: chains, fan-out/join and loops of no-op nodes,
a delay, and a map over a list of items.

Every worker node has type ``tick`` (``bench.handlers``); ``start``, ``end``, ``delay`` and
``map`` are control nodes the dispatcher runs itself, so an N-node shape has N worker jobs
(a map: one job per item).
"""

from __future__ import annotations

from graph_core.conditions import Condition
from graph_core.model import Edge, Graph, Node

__all__ = [
    "DELAY_NODE",
    "MAKE_ITEMS",
    "MAP_NODE",
    "bare",
    "chain",
    "delay",
    "fanout",
    "jobs_of",
    "loop",
    "make_only",
    "map_items",
    "single",
]

NOOP = "tick"
DELAY_NODE = "nap"
MAKE_ITEMS = "make_items"  # the handler that returns ``list(range(input.n))``
MAP_NODE = "each"


def chain(n: int) -> Graph:
    """start -> n0 -> n1 -> ... -> n{n-1} -> end."""
    g = Graph(id=f"bench-chain-{n}")
    g.add_nodes(
        Node("start", type="start"),
        *[Node(f"n{i}", type=NOOP) for i in range(n)],
        Node("end", type="end"),
    )
    g.connect("start", *[f"n{i}" for i in range(n)], "end")
    return g.validate_graph()


def fanout(n: int) -> Graph:
    """start -> split (fan-out) -> b0..b{n-1} -> join (all) -> end: n + 2 jobs."""
    g = Graph(id=f"bench-fanout-{n}")
    g.add_nodes(
        Node("start", type="start"),
        Node("split", type=NOOP, fan_out=True),
        *[Node(f"b{i}", type=NOOP) for i in range(n)],
        Node("join", type=NOOP),
        Node("end", type="end"),
    )
    g.connect("start", "split")
    g.add_edges(*[Edge("split", f"b{i}") for i in range(n)])
    g.add_edges(*[Edge(f"b{i}", "join") for i in range(n)])
    g.connect("join", "end")
    return g.validate_graph()


def loop(n: int) -> Graph:
    """start -> step, step -> step while ``step.output.i < n`` (its visit), then end:
    n visits of one node."""
    g = Graph(id=f"bench-loop-{n}")
    g.add_nodes(
        Node("start", type="start"),
        Node("step", type=NOOP, max_visits=n + 1),
        Node("end", type="end"),
    )
    g.add_edges(
        Edge("start", "step"),
        Edge("step", "step", condition=Condition.field("step.output.i").lt(n)),
        Edge("step", "end", condition=Condition.otherwise()),
    )
    return g.validate_graph()


def bare() -> Graph:
    """start -> end: no worker job; the dispatcher runs it alone."""
    return chain(0)


def single() -> Graph:
    """start -> n0 -> end: the smallest run with a worker job."""
    return chain(1)


def delay() -> Graph:
    """start -> nap (a ``delay`` node, ``input.seconds`` long) -> end: no worker job; the
    dispatcher's durable timer completes ``nap``."""
    g = Graph(id="bench-delay")
    g.add_nodes(
        Node("start", type="start"),
        Node(DELAY_NODE, type="delay", config={"seconds": "{{ input.seconds }}"}),
        Node("end", type="end"),
    )
    g.connect("start", DELAY_NODE, "end")
    return g.validate_graph()


def map_items(max_concurrency: int) -> Graph:
    """start -> make (returns ``list(range(input.n))``) -> each (a ``map`` running a no-op
    ``tick`` per item, at most ``max_concurrency`` at once) -> end: 1 + n worker jobs. The
    items come through ``make``'s output, not the run's input: the run record (which holds
    the input) is read with every event."""
    g = Graph(id=f"bench-map-{max_concurrency}")
    g.add_nodes(
        Node("start", type="start"),
        Node("make", type=MAKE_ITEMS),
        Node(
            MAP_NODE,
            type="map",
            config={
                "items": "{{ make.output }}",
                "node": {"type": NOOP},
                "max_concurrency": max_concurrency,
            },
        ),
        Node("end", type="end"),
    )
    g.connect("start", "make", MAP_NODE, "end")
    return g.validate_graph()


def make_only() -> Graph:
    """start -> make -> end: a map run without its map (what a run costs besides its items)."""
    g = Graph(id="bench-map-none")
    g.add_nodes(Node("start", type="start"), Node("make", type=MAKE_ITEMS), Node("end", type="end"))
    g.connect("start", "make", "end")
    return g.validate_graph()


def jobs_of(graph: Graph) -> int:
    """Worker jobs of one run of a bench graph (loops: their visit count)."""
    if graph.id.startswith("bench-loop-"):
        return int(graph.id.rsplit("-", 1)[1])
    return sum(1 for node in graph.nodes if not node.is_control)
