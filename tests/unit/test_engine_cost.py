"""The cost rule (DESIGN §2): handling one event reads O(its neighbourhood), never O(the run).

``MemoryRun`` counts the node records a transition reads (``node_reads``,
``distinct_node_reads``) and how often it reads the run's live frontier (``active_reads``).
Big graphs are driven partway with ``advance``; then ONE event is measured on fresh counters.
"""

from __future__ import annotations

import itertools
from typing import Any

from graph_core.conditions import Condition
from graph_core.engine import Env, advance
from graph_core.events import EnqueueNode, Event, NodeReported, RunSubmitted
from graph_core.memory import MemoryRun, view_of
from graph_core.model import Edge, Graph, Node
from graph_core.state import Transition
from graph_core.status import NodeStatus, RunStatus

C = Condition
N = 10_000
BOUND = 10


class Driver:
    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.mem = MemoryRun()
        self.view = view_of(self.mem)
        self.clock = itertools.count(1)
        self.tokens = (f"t{i}" for i in itertools.count())
        self.queued: dict[str, EnqueueNode] = {}

    def send(self, event: Event) -> Transition:
        t = advance(self.graph, self.view, event, Env(float(next(self.clock)), self._token))
        self.mem.apply(t)
        for a in t.actions:
            if isinstance(a, EnqueueNode):
                self.queued[a.node_id] = a
        return t

    def _token(self) -> str:
        return next(self.tokens)

    def submit(self, input: Any = None) -> Transition:
        return self.send(
            RunSubmitted(run_id="big", graph_id=self.graph.id, graph_version=1, input=input)
        )

    def complete(self, node_id: str, output: Any = None) -> Transition:
        job = self.queued.pop(node_id)
        return self.send(
            NodeReported(
                run_id="big",
                node_id=node_id,
                visit=job.visit,
                attempt=job.attempt,
                status="completed",
                output=output,
            )
        )

    def measure(self, node_id: str, output: Any = None) -> Transition:
        self.mem.reset_counters()
        return self.complete(node_id, output)


def status_of(d: Driver, node_id: str) -> NodeStatus:
    return d.mem.nodes[node_id].status


def test_one_step_of_a_10000_node_chain_reads_a_bounded_neighbourhood() -> None:
    g = Graph(id="chain")
    g.add_nodes(
        Node("start", type="start"),
        *[Node(f"n{i}", type="task") for i in range(N)],
        Node("end", type="end"),
    )
    g.connect("start", *[f"n{i}" for i in range(N)], "end")
    g.validate_graph()
    d = Driver(g)
    d.submit()
    for i in range(N // 2):
        d.complete(f"n{i}", {"i": i})
    t = d.measure(f"n{N // 2}", {"i": N // 2})
    assert t.ignored is None
    assert len(d.mem.distinct_node_reads) <= BOUND, d.mem.distinct_node_reads
    assert d.mem.node_reads <= BOUND
    assert d.mem.active_reads == 0
    assert set(t.nodes) == {f"n{N // 2}", f"n{N // 2 + 1}"}  # only the neighbourhood changed
    assert d.mem.nodes[f"n{N // 2 + 1}"].status == NodeStatus.QUEUED


def test_conditional_chain_with_a_10000_input_end_join_stays_bounded() -> None:
    """Every chain node may leave early to end: each step sends a dead signal to a join of
    10,000 inputs, which must cost O(1), not O(inputs)."""
    g = Graph(id="chain-exit")
    g.add_nodes(
        Node("start", type="start"),
        *[Node(f"n{i}", type="task") for i in range(N)],
        Node("end", type="end", join="any"),
    )
    g.add_edge(Edge("start", "n0"))
    for i in range(N):
        nxt = f"n{i + 1}" if i + 1 < N else "end"
        g.add_edge(Edge(f"n{i}", "end", condition=C.field(f"n{i}.output.stop").eq(True)))
        if nxt != "end":
            g.add_edge(Edge(f"n{i}", nxt, condition=C.otherwise()))
    g.validate_graph()
    d = Driver(g)
    d.submit()
    for i in range(N // 2):
        d.complete(f"n{i}", {"stop": False})
    t = d.measure(f"n{N // 2}", {"stop": False})
    assert len(d.mem.distinct_node_reads) <= BOUND, d.mem.distinct_node_reads
    assert d.mem.active_reads == 0
    assert set(t.nodes) <= {f"n{N // 2}", f"n{N // 2 + 1}", "end"}
    # then stop early: end fires (join any) and the run completes
    t = d.measure(f"n{N // 2 + 1}", {"stop": True})
    assert d.mem.run is not None and d.mem.run.status == RunStatus.COMPLETED
    assert d.mem.run.output == {"stop": True}
    assert len(d.mem.distinct_node_reads) <= BOUND
    assert d.mem.active_reads <= 1  # finishing reads the frontier once, to cancel it


def test_join_arrivals_of_a_10000_way_fan_out_read_a_bounded_neighbourhood() -> None:
    g = Graph(id="fan")
    g.add_nodes(
        Node("start", type="start"),
        Node("fan", type="task", fan_out=True),
        *[Node(f"b{i}", type="task") for i in range(N)],
        Node("join", type="task"),
        Node("end", type="end"),
    )
    g.connect("start", "fan")
    g.add_edges(*[Edge("fan", f"b{i}") for i in range(N)])
    g.add_edges(*[Edge(f"b{i}", "join") for i in range(N)])
    g.connect("join", "end")
    g.validate_graph()
    d = Driver(g)
    d.submit()
    t = d.complete("fan")
    assert len([a for a in t.actions if isinstance(a, EnqueueNode)]) == N
    for i in range(N // 2):
        d.complete(f"b{i}", i)

    t = d.measure(f"b{N // 2}", N // 2)  # an ordinary arrival at the join
    assert len(d.mem.distinct_node_reads) <= BOUND, d.mem.distinct_node_reads
    assert d.mem.node_reads <= BOUND
    assert d.mem.active_reads == 0
    assert set(t.nodes) == {f"b{N // 2}", "join"}
    assert status_of(d, "join") == NodeStatus.PENDING

    for i in range(N // 2 + 1, N - 1):
        d.complete(f"b{i}", i)
    t = d.measure(f"b{N - 1}", N - 1)  # the last arrival: the join fires
    assert len(d.mem.distinct_node_reads) <= BOUND, d.mem.distinct_node_reads
    assert d.mem.active_reads == 0
    assert status_of(d, "join") == NodeStatus.QUEUED
    assert d.mem.nodes["join"].visits == 1
    assert "join" in d.queued
    assert d.mem.joins == {}  # every parked signal consumed
    t = d.measure("join", "joined")
    assert d.mem.run is not None and d.mem.run.status == RunStatus.COMPLETED
    assert d.mem.run.output == "joined"
    assert len(d.mem.distinct_node_reads) <= BOUND
    assert d.mem.run.tokens == 0
