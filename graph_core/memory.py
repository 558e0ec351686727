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
    ApprovalReceived,
    EnqueueNode,
    ErrorInfo,
    Event,
    NodeReported,
    PauseForApproval,
    RunSubmitted,
    ScheduleTimer,
    TimerFired,
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
) -> LocalResult:
    """Run ``graph`` in-process. ``handlers`` maps a node type (or ``"node:<id>"``) to
    ``fn(node_id, config, ctx) -> output``; ``ctx`` has ``input``, ``visit``, ``attempt`` and
    ``outputs`` (latest output per node). Raising fails the attempt. Returning the dict
    ``{"__wait__": prompt}`` pauses the node; ``approve`` answers waits. Timers fire at once."""
    tokens = (f"tok{i}" for i in itertools.count(1))
    clock = itertools.count(1)
    mem = MemoryRun()
    view = view_of(mem)
    result = LocalResult(mem, [], [])
    queue: deque[Event] = deque(
        [RunSubmitted(run_id=run_id, graph_id=graph.id, graph_version=graph.version, input=input)]
    )
    events = 0
    while queue and events < max_events:
        events += 1
        t = advance(graph, view, queue.popleft(), Env(float(next(clock)), lambda: next(tokens)))
        mem.apply(t)
        result.transitions.append(t)
        for action in t.actions:
            queue.extend(_perform(graph, mem, action, handlers, approve, result, run_id))
    return result


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
    else:
        fn = handlers.get(f"node:{node.id}") or handlers.get(node.type)
    result.executions.append((job.node_id, job.visit, job.attempt))
    base = {"run_id": run_id, "node_id": job.node_id, "visit": job.visit, "attempt": job.attempt}
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
    try:
        out = fn(node.id, config, ctx)
    except Exception as e:  # a handler's failure becomes a report, as on a worker
        err = ErrorInfo(type=type(e).__name__, message=str(e))
        return NodeReported(**base, status="failed", error=err)
    if isinstance(out, dict) and "__wait__" in out:
        return NodeReported(**base, status="waiting", output=out["__wait__"])
    return NodeReported(**base, status="completed", output=out)
