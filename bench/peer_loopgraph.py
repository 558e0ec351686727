"""The LoopGraph peer (in-process, asyncio): the same shapes as relaygraph's in-process
figures. Its API, from the installed package: ``Graph(nodes={id: Node}, edges={id: Edge})``,
``Node(id, kind, handler, max_visits=..., allow_partial_upstream=...)``, loops through a
``SWITCH`` node whose handler returns a route named in its edges' ``metadata["route"]``, and
``Scheduler(registry, EventBus(), SemaphorePolicy(limit)).run(graph)``.

LoopGraph's cycle finder recurses once per node of a path (it also runs inside ``run``), so
a 1,000-node chain needs a higher recursion limit than Python's default 1,000.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from loopgraph.bus.eventbus import EventBus
from loopgraph.concurrency import SemaphorePolicy
from loopgraph.core.graph import Edge, Graph, Node, NodeKind
from loopgraph.registry.function_registry import FunctionRegistry
from loopgraph.scheduler.scheduler import Scheduler

from bench.config import Sizes
from bench.report import rates as _rates
from bench.report import scale_entry

__all__ = ["chain", "fanout", "loop", "measure", "scaling"]

CONCURRENCY = 10
SLOW_S = 1.0  # a run this slow is measured once
_RECURSION = 20_000


def _task(node_id: str, **kw: Any) -> Node:
    return Node(id=node_id, kind=NodeKind.TASK, handler="tick", **kw)


def chain(n: int) -> Graph:
    nodes = {f"n{i}": _task(f"n{i}") for i in range(n)}
    edges = {f"e{i}": Edge(id=f"e{i}", source=f"n{i}", target=f"n{i + 1}") for i in range(n - 1)}
    return Graph(nodes=nodes, edges=edges)


def fanout(n: int) -> Graph:
    """split -> b0..b{n-1} -> join (an AGGREGATE waits for all): n + 2 nodes."""
    nodes = {"split": _task("split"), **{f"b{i}": _task(f"b{i}") for i in range(n)}}
    nodes["join"] = Node(id="join", kind=NodeKind.AGGREGATE, handler="tick")
    edges = {}
    for i in range(n):
        edges[f"s{i}"] = Edge(id=f"s{i}", source="split", target=f"b{i}")
        edges[f"j{i}"] = Edge(id=f"j{i}", source=f"b{i}", target="join")
    return Graph(nodes=nodes, edges=edges)


def loop(n: int) -> Graph:
    """start -> step -> route (SWITCH) -> step ... n visits of step, then route's exit edge
    to out: 2n + 2 nodes run."""
    nodes = {
        "start": _task("start"),
        "step": _task("step", max_visits=n, allow_partial_upstream=True),
        "route": Node(id="route", kind=NodeKind.SWITCH, handler="route"),
        "out": _task("out"),
    }
    edges = {
        "a": Edge(id="a", source="start", target="step"),
        "b": Edge(id="b", source="step", target="route"),
        "c": Edge(id="c", source="route", target="step", metadata={"route": "again"}),
        "d": Edge(id="d", source="route", target="out", metadata={"route": "exit"}),
    }
    return Graph(nodes=nodes, edges=edges)


SHAPES: Mapping[str, Callable[[int], Graph]] = {"chain": chain, "loop": loop, "fanout": fanout}


class _Counted:
    def __init__(self) -> None:
        self.calls = 0
        self.registry = FunctionRegistry()
        self.registry.register("tick", self._tick)
        self.registry.register("route", self._route)

    def _tick(self, payload: Any) -> dict[str, int]:
        self.calls += 1
        return {"i": self.calls}

    def _route(self, payload: Any) -> str:
        self.calls += 1
        return "again"  # "again" to a step without visits left falls back to "exit"

    async def run(self, graph: Graph) -> int:
        self.calls = 0
        scheduler = Scheduler(self.registry, EventBus(), SemaphorePolicy(limit=CONCURRENCY))
        await scheduler.run(graph)
        return self.calls


async def _rate(graph: Graph, repeats: int) -> tuple[float, int]:
    """As ``bench.inprocess._rate``: median of warm runs, or one run when it is slow."""
    runner = _Counted()
    started = time.perf_counter()
    nodes = await runner.run(graph)
    cold = time.perf_counter() - started
    if cold > SLOW_S:
        return cold / nodes, nodes
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        await runner.run(graph)
        times.append(time.perf_counter() - started)
    times.sort()
    return times[len(times) // 2] / nodes, nodes


async def measure(sizes: Sizes) -> dict[str, Any]:
    size = {"chain": sizes.inproc_chain, "loop": sizes.inproc_large, "fanout": sizes.inproc_large}
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, _RECURSION))
    try:
        out = {}
        for shape, build in SHAPES.items():
            per_node, nodes = await _rate(build(size[shape]), sizes.inproc_repeats)
            out[shape] = _rates(shape, size[shape], nodes, per_node)
        return out
    finally:
        sys.setrecursionlimit(old)


async def scaling(sizes: Sizes) -> dict[str, Any]:
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, _RECURSION))
    try:
        out = {}
        for shape, build in SHAPES.items():
            small, _ = await _rate(build(sizes.scale_small), sizes.inproc_repeats)
            large, _ = await _rate(build(sizes.scale_large), 1)
            out[shape] = scale_entry(sizes.scale_small, sizes.scale_large, small, large)
        return out
    finally:
        sys.setrecursionlimit(old)
