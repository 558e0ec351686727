"""An in-memory run store and a synchronous in-process driver.

``MemoryRun`` implements ``StateView`` over dicts and applies ``Transition`` objects; it counts
reads so tests can prove the transition function touches only a neighbourhood. ``run_local``
drives a whole run in-process with plain Python callables as handlers: handy to unit-test a
graph's semantics without Redis. It is not durable and runs handlers one at a time.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from graph_core.engine import Env, advance
from graph_core.events import (
    CHILD_CANCEL_ACTOR,
    ApprovalReceived,
    CancelChild,
    CancelRequested,
    EnqueueNode,
    ErrorInfo,
    Event,
    FinishRun,
    NodeReported,
    PauseForApproval,
    RunSubmitted,
    ScheduleTimer,
    StartChild,
    TimerFired,
    child_end,
)
from graph_core.model import Graph
from graph_core.paths import MISSING
from graph_core.state import LoopRecord, NodeRecord, RunRecord, Transition

__all__ = ["LocalResult", "MemoryRun", "Waiting", "run_local"]


@dataclass
class MemoryRun:
    """One run's state in memory."""

    run: RunRecord | None = None
    nodes: dict[str, NodeRecord] = field(default_factory=dict)
    outputs: dict[tuple[str, int], Any] = field(default_factory=dict)
    joins: dict[tuple[str, int], str] = field(default_factory=dict)
    loops: dict[int, LoopRecord] = field(default_factory=dict)
    active: dict[str, int] = field(default_factory=dict)
    # map items: (node, visit, item) -> the item's input / result
    item_inputs: dict[tuple[str, int, int], Any] = field(default_factory=dict)
    item_outputs: dict[tuple[str, int, int], Any] = field(default_factory=dict)
    # JSON copies: reads return fresh objects (the transition changes what it reads)
    _json: dict[str, bytes] = field(default_factory=dict)
    node_reads: int = 0
    distinct_node_reads: set[str] = field(default_factory=set)
    active_reads: int = 0

    # StateView
    def node(self, node_id: str) -> NodeRecord | None:
        self.node_reads += 1
        self.distinct_node_reads.add(node_id)
        raw = self._json.get(f"n:{node_id}")
        return NodeRecord.model_validate_json(raw) if raw is not None else None

    def output(self, node_id: str, visit: int) -> Any:
        return self.outputs.get((node_id, visit), MISSING)

    def arrivals(self, node_id: str, edge_index: int) -> str:
        return self.joins.get((node_id, edge_index), "")

    def loop(self, loop_id: int) -> LoopRecord | None:
        raw = self._json.get(f"l:{loop_id}")
        return LoopRecord.model_validate_json(raw) if raw is not None else None

    def active_nodes(self) -> dict[str, int]:
        self.active_reads += 1
        return dict(self.active)

    def item_input(self, node_id: str, visit: int, item: int) -> Any:
        return self.item_inputs.get((node_id, visit, item), MISSING)

    def item_results(self, node_id: str, visit: int, total: int) -> list[Any]:
        return [self.item_outputs.get((node_id, visit, i), MISSING) for i in range(total)]

    def get_run(self) -> RunRecord | None:
        raw = self._json.get("run")
        return RunRecord.model_validate_json(raw) if raw is not None else None

    def reset_counters(self) -> None:
        self.node_reads = 0
        self.distinct_node_reads = set()
        self.active_reads = 0

    def apply(self, t: Transition) -> None:
        if t.ignored is not None or t.run is None:
            return
        self.run = t.run
        self._json["run"] = t.run.model_dump_json().encode()
        for nid, rec in t.nodes.items():
            self.nodes[nid] = rec
            self._json[f"n:{nid}"] = rec.dump()
        self.outputs.update(t.outputs)
        for (nid, visit), items in t.item_inputs.items():
            for i, value in enumerate(items):
                self.item_inputs[(nid, visit, i)] = value
        self.item_outputs.update(t.item_outputs)
        for (nid, visit), total in t.items_dropped.items():
            for i in range(total):
                self.item_inputs.pop((nid, visit, i), None)
                self.item_outputs.pop((nid, visit, i), None)
        for key, signals in t.joins.items():
            if signals:
                self.joins[key] = signals
            else:
                self.joins.pop(key, None)
        for lid, lrec in t.loops.items():
            self.loops[lid] = lrec
            self._json[f"l:{lid}"] = lrec.model_dump_json().encode()
        for nid in t.active_remove:
            self.active.pop(nid, None)
        self.active.update(t.active_add)


class _RunView:
    """Adapts MemoryRun to StateView (``run`` is a method there, a field here)."""

    def __init__(self, mem: MemoryRun) -> None:
        self._mem = mem

    def run(self) -> RunRecord | None:
        return self._mem.get_run()

    def node(self, node_id: str) -> NodeRecord | None:
        return self._mem.node(node_id)

    def output(self, node_id: str, visit: int) -> Any:
        return self._mem.output(node_id, visit)

    def arrivals(self, node_id: str, edge_index: int) -> str:
        return self._mem.arrivals(node_id, edge_index)

    def loop(self, loop_id: int) -> LoopRecord | None:
        return self._mem.loop(loop_id)

    def active_nodes(self) -> dict[str, int]:
        return self._mem.active_nodes()

    def item_input(self, node_id: str, visit: int, item: int) -> Any:
        return self._mem.item_input(node_id, visit, item)

    def item_results(self, node_id: str, visit: int, total: int) -> list[Any]:
        return self._mem.item_results(node_id, visit, total)


def view_of(mem: MemoryRun) -> _RunView:
    return _RunView(mem)


@dataclass(frozen=True)
class Waiting:
    """What a ``run_local`` approval callback is shown."""

    node_id: str
    visit: int
    token: str
    prompt: Any


Handler = Callable[[str, Any, Mapping[str, Any]], Any]
Approver = Callable[[Waiting], tuple[str, dict[str, Any]]]


class _LatestOutputs(Mapping[str, Any]):
    """node id -> latest output, read on demand (a handler's ``ctx["outputs"]``)."""

    def __init__(self, mem: MemoryRun) -> None:
        self._mem = mem

    def __getitem__(self, node_id: str) -> Any:
        rec = self._mem.nodes.get(node_id)
        if rec is None or not rec.last_ok_visit:
            raise KeyError(node_id)
        return self._mem.outputs[(node_id, rec.last_ok_visit)]

    def __iter__(self) -> Iterator[str]:
        return (nid for nid, rec in self._mem.nodes.items() if rec.last_ok_visit)

    def __len__(self) -> int:
        return sum(1 for _ in self)


@dataclass
class LocalResult:
    state: MemoryRun
    transitions: list[Transition]
    executions: list[tuple[str, int, int]]  # (node, visit, attempt) per handler call
    children: dict[str, MemoryRun] = field(default_factory=dict)  # child runs, by run id

    @property
    def run(self) -> RunRecord:
        if self.state.run is None:
            raise LookupError("no run")
        return self.state.run

    def history(self) -> list[str]:
        return [
            f"{h.type}:{h.node_id}" if h.node_id else h.type
            for t in self.transitions
            for h in t.history
        ]


def run_local(
    graph: Graph,
    handlers: Mapping[str, Handler],
    input: Any = None,
    approve: Approver | None = None,
    run_id: str = "local",
    max_events: int = 1_000_000,
    graphs: Mapping[str, Graph] | None = None,
) -> LocalResult:
    """Run ``graph`` in-process. ``handlers`` maps a node type (or ``"node:<id>"``) to
    ``fn(node_id, config, ctx) -> output``; ``ctx`` has ``input``, ``visit``, ``attempt`` and
    ``outputs`` (latest output per node), and a map item's ``item`` and ``index``. Raising
    fails the attempt. Returning the dict ``{"__wait__": prompt}`` pauses the node;
    ``approve`` answers waits (of child runs too). Timers fire at once. ``graphs``: the
    graphs that ``subgraph`` nodes (and maps over a graph) run, by id; their child runs are
    in ``LocalResult.children`` (``transitions`` and ``executions`` are the root run's)."""
    tokens = (f"tok{i}" for i in itertools.count(1))
    clock = itertools.count(1)
    mem = MemoryRun()
    result = LocalResult(mem, [], [])
    local = _Local(graph, dict(graphs or {}), handlers, approve, result, run_id)
    local.runs[run_id] = (graph, mem)
    queue: deque[Event] = deque(
        [RunSubmitted(run_id=run_id, graph_id=graph.id, graph_version=graph.version, input=input)]
    )
    events = 0
    while queue and events < max_events:
        events += 1
        event = queue.popleft()
        found = local.runs.get(event.run_id)
        if found is None:
            continue
        run_graph, run_mem = found
        env = Env(float(next(clock)), lambda: next(tokens))
        t = advance(run_graph, view_of(run_mem), event, env)
        run_mem.apply(t)
        if run_mem is mem:
            result.transitions.append(t)
        for action in t.actions:
            queue.extend(local.perform(event.run_id, action))
        if any(isinstance(a, FinishRun) for a in t.actions):
            queue.extend(local.ended(run_mem))
    return result


@dataclass
class _Local:
    """``run_local``'s runs (the root and its children) and what their actions do."""

    graph: Graph
    graphs: dict[str, Graph]
    handlers: Mapping[str, Handler]
    approve: Approver | None
    result: LocalResult
    root: str
    runs: dict[str, tuple[Graph, MemoryRun]] = field(default_factory=dict)

    def perform(self, run_id: str, action: object) -> list[Event]:
        graph, mem = self.runs[run_id]
        if isinstance(action, StartChild):
            return self._start(action)
        if isinstance(action, CancelChild):
            cancel = CancelRequested(
                run_id=action.run_id, reason=action.reason, actor=CHILD_CANCEL_ACTOR
            )
            return [cancel]
        if run_id != self.root and isinstance(action, EnqueueNode):  # a child's job
            scratch = LocalResult(mem, [], [])
            return [_execute(graph, mem, action, self.handlers, scratch, run_id)]
        return _perform(graph, mem, action, self.handlers, self.approve, self.result, run_id)

    def _start(self, action: StartChild) -> list[Event]:
        child = self.graphs.get(action.graph_id)
        if child is None and action.graph_id == self.graph.id:
            child = self.graph
        if child is None:
            error = ErrorInfo(
                type="GraphNotFound",
                message=f"graph {action.graph_id!r} is not among run_local's graphs",
                retryable=False,
            )
            return [child_end(action.parent, action.run_id, "failed", error=error)]
        mem = MemoryRun()
        self.runs[action.run_id] = (child, mem)
        self.result.children[action.run_id] = mem
        return [
            RunSubmitted(
                run_id=action.run_id,
                graph_id=child.id,
                graph_version=child.version,
                input=action.input,
                parent=action.parent,
            )
        ]

    def ended(self, mem: MemoryRun) -> list[Event]:
        run = mem.run
        if run is None or run.parent is None:
            return []
        return [child_end(run.parent, run.run_id, run.status.value, run.output, run.error)]


def _perform(
    graph: Graph,
    mem: MemoryRun,
    action: object,
    handlers: Mapping[str, Handler],
    approve: Approver | None,
    result: LocalResult,
    run_id: str,
) -> list[Event]:
    if isinstance(action, EnqueueNode):
        return [_execute(graph, mem, action, handlers, result, run_id)]
    if isinstance(action, ScheduleTimer):
        return [
            TimerFired(
                run_id=run_id,
                timer=action.timer,
                node_id=action.node_id,
                visit=action.visit,
                attempt=action.attempt,
                item=action.item,
            )
        ]
    if isinstance(action, PauseForApproval) and approve is not None:
        node_id = action.node_id
        rec = mem.nodes[node_id]
        waiting = Waiting(node_id, rec.visits, action.token, rec.wait.prompt if rec.wait else None)
        decision, data = approve(waiting)
        return [
            ApprovalReceived(
                run_id=run_id,
                node_id=node_id,
                decision=decision,
                data=data,
                actor="local",
                token=waiting.token,
            )
        ]
    return []


def _execute(
    graph: Graph,
    mem: MemoryRun,
    job: EnqueueNode,
    handlers: Mapping[str, Handler],
    result: LocalResult,
    run_id: str,
) -> NodeReported:
    node = graph.node(job.node_id)
    config = node.config
    undo = node.compensate if job.compensate else None
    if undo is not None:  # a saga step: the compensation's handler
        fn = handlers.get(undo.type)
        node, config = node.model_copy(update={"type": undo.type}), undo.config
    elif job.item is not None:  # a map item: the map's inner node
        inner = node.item_node()
        fn = handlers.get(f"node:{node.id}") or handlers.get(inner.type)
        node, config = inner, inner.config
    else:
        fn = handlers.get(f"node:{node.id}") or handlers.get(node.type)
    result.executions.append((job.node_id, job.visit, job.attempt))
    base: dict[str, Any] = {
        "run_id": run_id,
        "node_id": job.node_id,
        "visit": job.visit,
        "attempt": job.attempt,
        "item": job.item,
    }
    if fn is None:
        err = ErrorInfo(
            type="UnknownNodeType", message=f"no handler for type {node.type!r}", retryable=False
        )
        return NodeReported(**base, status="failed", error=err)
    latest = _LatestOutputs(mem)
    ctx = {
        "input": mem.run.input if mem.run else None,
        "visit": job.visit,
        "attempt": job.attempt,
        "outputs": latest,
    }
    if job.compensate:
        ctx["original_output"] = latest.get(job.node_id)
    if job.item is not None:
        ctx["index"] = job.item
        ctx["item"] = mem.item_inputs.get((job.node_id, job.visit, job.item))
    try:
        out = fn(node.id, config, ctx)
    except Exception as e:  # a handler's failure becomes a report, as on a worker
        err = ErrorInfo(type=type(e).__name__, message=str(e))
        return NodeReported(**base, status="failed", error=err)
    if isinstance(out, dict) and "__wait__" in out:
        return NodeReported(**base, status="waiting", output=out["__wait__"])
    return NodeReported(**base, status="completed", output=out)
