"""relaygraph's engine in-process, no Redis: ``graph_core.memory.run_local`` (the in-process
driver) and a bare loop around ``advance`` (what the dispatcher computes per event), on the
shapes the LoopGraph peer runs."""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from bench import graphs
from bench.config import Sizes
from bench.report import rates as _rates
from bench.report import scale_entry
from graph_core.engine import Env, advance
from graph_core.events import EnqueueNode, Event, NodeReported, RunSubmitted
from graph_core.memory import MemoryRun, run_local, view_of
from graph_core.model import Graph
from graph_core.status import RunStatus

__all__ = ["Runner", "advance_only", "measure", "run_local_counted", "scaling"]

SLOW_S = 1.0  # a run this slow is measured once

# runs one graph in-process; returns how many node handlers ran
Runner = Callable[[Graph], int]

SHAPES: Mapping[str, Callable[[int], Graph]] = {
    "chain": graphs.chain,
    "loop": graphs.loop,
    "fanout": graphs.fanout,
}


def _tick(node_id: str, config: Any, ctx: Mapping[str, Any]) -> dict[str, Any]:
    return {"i": ctx["visit"]}


def run_local_counted(graph: Graph) -> int:
    result = run_local(graph, {graphs.NOOP: _tick}, run_id="bench")
    if result.run.status != RunStatus.COMPLETED:
        raise RuntimeError(f"{graph.id}: run ended {result.run.status.value}")
    return len(result.executions)


def advance_only(graph: Graph) -> int:
    """``advance`` + ``MemoryRun.apply`` per event, every job answered at once: the engine's
    own cost, without run_local's per-job snapshot of all outputs."""
    mem = MemoryRun()
    view = view_of(mem)
    clock = itertools.count(1)
    tokens = (f"t{i}" for i in itertools.count())
    queue: deque[Event] = deque([RunSubmitted(run_id="bench", graph_id=graph.id, graph_version=1)])
    jobs = 0
    while queue:
        t = advance(graph, view, queue.popleft(), Env(float(next(clock)), lambda: next(tokens)))
        mem.apply(t)
        for action in t.actions:
            if isinstance(action, EnqueueNode):
                jobs += 1
                queue.append(
                    NodeReported(
                        run_id="bench",
                        node_id=action.node_id,
                        visit=action.visit,
                        attempt=action.attempt,
                        status="completed",
                        output={"i": action.visit},
                    )
                )
    if mem.run is None or mem.run.status != RunStatus.COMPLETED:
        raise RuntimeError(f"{graph.id}: run did not complete")
    return jobs


def _rate(runner: Runner, graph: Graph, repeats: int) -> tuple[float, int]:
    """Median seconds per node over up to ``repeats`` runs after a warm-up, and nodes per
    run. A warm-up slower than ``SLOW_S`` is the measurement (no repeats)."""
    started = time.perf_counter()
    nodes = runner(graph)
    cold = time.perf_counter() - started
    if cold > SLOW_S:
        return cold / nodes, nodes
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        runner(graph)
        times.append(time.perf_counter() - started)
    times.sort()
    return times[len(times) // 2] / nodes, nodes


def measure(sizes: Sizes) -> dict[str, Any]:
    """Nodes per second of each shape, for run_local and advance() alone."""
    size = {"chain": sizes.inproc_chain, "loop": sizes.inproc_large, "fanout": sizes.inproc_large}
    out: dict[str, Any] = {}
    for name, runner in (("ours", run_local_counted), ("ours-advance", advance_only)):
        out[name] = {}
        for shape, build in SHAPES.items():
            per_node, nodes = _rate(runner, build(size[shape]), sizes.inproc_repeats)
            out[name][shape] = _rates(shape, size[shape], nodes, per_node)
    return out


def scaling(sizes: Sizes) -> dict[str, Any]:
    """Per-node cost of each shape, small vs large, with run_local."""
    out = {}
    for shape, build in SHAPES.items():
        small, _ = _rate(run_local_counted, build(sizes.scale_small), sizes.inproc_repeats)
        large, _ = _rate(run_local_counted, build(sizes.scale_large), 1)
        out[shape] = scale_entry(sizes.scale_small, sizes.scale_large, small, large)
    return out
