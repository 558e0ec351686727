"""The transition function: ``advance(graph, view, event, env) -> Transition``.

Pure and deterministic: it reads the run through ``view`` (only the event's neighbourhood),
and returns the state changes, the actions to perform and the history to append. Everything
about routing, joins, loops, retries and waiting is decided here.

Semantics in brief (docs/semantics.md has the long form):

* Routing: a completed node's conditional edges are tried in definition order; the first
  match fires (``fan_out``: every match). When none matched, the default fires: the
  ``otherwise`` edge, or an unconditional edge (roomkit-graph's fallback).
* Branch signals: every non-back edge carries one signal per visit of its source: *taken* or
  *dead* (dead-path elimination). A node with one input starts on *taken* and is skipped on
  *dead* (the skip passes *dead* on). A node with several inputs (a join) pairs the oldest
  signal of each input: ``all`` fires once every input signalled and at least one was taken,
  ``any`` fires on the first taken, ``N`` on the N-th taken (or on all signalled, if fewer
  were taken); a generation with no taken input is skipped.
* Loops: edges that close a cycle (back edges) start their target directly and are not join
  inputs. A loop's exit edges send no *dead* signal per iteration; when the loop goes idle
  (no live token inside), every exit not taken is signalled dead at once.
* Limits: ``max_visits`` per node and ``max_steps`` per run fail the run with a clear error.
* Waiting: ``human`` nodes and handlers returning ``waiting`` pause at the node with a random
  token; an approval with that token completes the node with ``{decision, data, actor}``.
* The run completes when an ``end`` node completes (other live nodes are cancelled), and fails
  if it goes idle without reaching one.
"""

from __future__ import annotations

from collections import deque

from graph_core.events import (
    ApprovalReceived,
    CancelRequested,
    ChildFinished,
    ErrorInfo,
    Event,
    FailRequested,
    LeaseExpired,
    NodeReported,
    PauseRequested,
    RerunRequested,
    ResumeRequested,
    RetryRequested,
    RunSubmitted,
    ScheduleTimer,
    TimerFired,
)
from graph_core.flow import Flow
from graph_core.joins import Joins
from graph_core.maps import Maps
from graph_core.model import Graph
from graph_core.parallel import Parallel
from graph_core.pauses import Pauses
from graph_core.retries import Retries
from graph_core.sagas import Sagas
from graph_core.state import RunRecord, StateView, Transition
from graph_core.status import TERMINAL_RUN, RunStatus
from graph_core.subgraphs import Subgraphs
from graph_core.tx import Env, Tx
from graph_core.waits import Waits

__all__ = ["Env", "advance"]


# Statuses a transition keeps (the others settle to running or waiting).
_HELD_STATUSES = frozenset({RunStatus.COMPENSATING, RunStatus.PAUSED})


def advance(graph: Graph, view: StateView, event: Event, env: Env) -> Transition:
    """Apply one event to one run. See the module docstring for the semantics."""
    return _Machine(Tx(graph, view, env)).handle(event)


class _Machine(Flow, Joins, Parallel, Maps, Subgraphs, Waits, Sagas, Pauses, Retries):
    def __init__(self, tx: Tx) -> None:
        self.tx = tx
        self.g = tx.graph
        self.topo = tx.topo
        self.signals: deque[tuple[int, bool]] = deque()
        self.finished = False

    # --- entry --------------------------------------------------------------------------

    def handle(self, event: Event) -> Transition:
        if isinstance(event, RunSubmitted):
            reason = self._submitted(event)
        else:
            run = self.tx.maybe_run()
            if run is None:
                return Transition(ignored=f"unknown run {event.run_id!r}")
            if run.status in TERMINAL_RUN and not isinstance(
                event, RetryRequested | RerunRequested
            ):
                return Transition(ignored=f"run {run.run_id!r} is already {run.status.value}")
            reason = self._dispatch(event)
        if reason is not None:
            return Transition(ignored=reason)
        self._settle()
        run = self.tx.run
        run.rev += 1
        run.updated_at = self.tx.now
        if run.status not in TERMINAL_RUN and run.status not in _HELD_STATUSES:
            run.status = RunStatus.WAITING if run.waiting > 0 else RunStatus.RUNNING
        return self.tx.result()

    def _dispatch(self, event: Event) -> str | None:
        if isinstance(event, NodeReported):
            return self._reported(event)
        if isinstance(event, ApprovalReceived):
            return self._approval(event)
        if isinstance(event, TimerFired):
            return self._timer(event)
        if isinstance(event, LeaseExpired):
            return self._lease_expired(event)
        if isinstance(event, PauseRequested):
            return self._pause(event)
        if isinstance(event, RetryRequested):
            return self._retry(event)
        if isinstance(event, RerunRequested):
            return self._rerun(event)
        if isinstance(event, ResumeRequested):
            return self._resume(event)
        if isinstance(event, ChildFinished):
            return self._child_finished(event)
        if isinstance(event, FailRequested):
            self._fail(ErrorInfo(type="RunFailed", code=event.code, message=event.reason))
            return None
        if isinstance(event, CancelRequested):
            error = ErrorInfo(type="Cancelled", code="cancelled", message=event.reason)
            compensating = self.tx.run.status == RunStatus.COMPENSATING
            if not compensating and self._saga_applies(cancelled=True):
                self._start_saga(error, "cancel")
            else:  # a cancel while compensating stops the compensations too
                self.finished = False
                self._finish(RunStatus.CANCELLED, error=error, actor=event.actor)
            return None
        return f"unsupported event {type(event).__name__}"

    def _submitted(self, ev: RunSubmitted) -> str | None:
        existing = self.tx.maybe_run()
        if existing is not None and existing.status != RunStatus.PENDING:
            return f"run {ev.run_id!r} already exists"
        now = self.tx.now
        self.tx.set_run(
            RunRecord(
                run_id=ev.run_id,
                graph_id=ev.graph_id,
                graph_version=ev.graph_version,
                input=ev.input,
                created_at=existing.created_at if existing is not None else now,
                updated_at=now,
                idempotency_key=ev.idempotency_key,
                trace=ev.trace,
                parent=ev.parent,
                pins=ev.pins,
                priority=ev.priority,
            )
        )
        if ev.parent is None:
            self.tx.emit("run.submitted", graph_id=ev.graph_id, graph_version=ev.graph_version)
        else:
            self.tx.emit(
                "run.submitted",
                graph_id=ev.graph_id,
                graph_version=ev.graph_version,
                parent=ev.parent.model_dump(mode="json"),
            )
        if self.g.timeout_s is not None:
            self.tx.run.deadline = now + self.g.timeout_s
            self.tx.actions.append(ScheduleTimer(timer="run_timeout", due_at=self.tx.run.deadline))
        if self.topo.start is None:
            self._fail(ErrorInfo(type="InvalidGraph", code="no_start", message="no start node"))
        else:
            self._activate(self.topo.start, trigger=None)
        return None

    # --- tokens and activation ----------------------------------------------------------
