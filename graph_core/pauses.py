"""Pausing and resuming a whole run.

A paused run goes on with what is already running: reports, approvals and routing are
applied as usual, and control nodes (start, end, human, delay, parallel) move as usual. What
it does not do is start work: a node that would be enqueued is ``held`` instead, and a node
timer that falls due (a retry, a delay, a wait timeout) is recorded on its node
(``held_timer``) instead of acting. ``resume`` enqueues the held nodes and fires the held
timers; a run timeout that came due while paused fails the run at resume. Both act on the
run's live frontier only (its active nodes), never on the whole run.
"""

from __future__ import annotations

from graph_core.events import ErrorInfo, PauseRequested, ResumeRequested, TimerFired
from graph_core.machine import MachineBase
from graph_core.status import NodeStatus, RunStatus

__all__ = ["Pauses"]

_PAUSABLE = frozenset({RunStatus.PENDING, RunStatus.RUNNING, RunStatus.WAITING})


class Pauses(MachineBase):
    @property
    def _paused(self) -> bool:
        return self.tx.run.status == RunStatus.PAUSED

    def _pause(self, ev: PauseRequested) -> str | None:
        run = self.tx.run
        if run.status not in _PAUSABLE:
            return f"run {run.run_id!r} is {run.status.value}: only a running run can be paused"
        run.status = RunStatus.PAUSED
        self.tx.emit("run.paused", reason=ev.reason, actor=ev.actor)
        return None

    def _resume(self, ev: ResumeRequested) -> str | None:
        run = self.tx.run
        if run.status != RunStatus.PAUSED:
            return f"run {run.run_id!r} is {run.status.value}, not paused"
        run.status = RunStatus.RUNNING  # handle() settles running / waiting
        self.tx.emit("run.resumed", actor=ev.actor)
        timeout = self.g.timeout_s
        deadline = (
            run.deadline
            if run.deadline is not None
            else (run.created_at + timeout if timeout is not None else None)
        )
        if deadline is not None and self.tx.now >= deadline:
            self._fail(
                ErrorInfo(
                    type="RunTimeout",
                    code="run_timeout",
                    message=f"the run exceeded timeout_s={timeout} (it fell due while paused)",
                )
            )
            return None
        for node_id in sorted(self.tx.active_nodes()):
            if self.finished:
                break
            rec = self.tx.peek(node_id)
            if rec.map is not None and rec.status == NodeStatus.RUNNING:
                self._map_resume(node_id)
            elif rec.status == NodeStatus.HELD:
                self.tx.node(node_id).status = NodeStatus.QUEUED
                self._enqueue(self.g.node(node_id))
            elif rec.held_timer is not None:
                held = self.tx.node(node_id)
                kind, held.held_timer = held.held_timer, None
                attempt = held.attempt + 1 if kind == "retry" else 0
                visit = held.wait.visit if kind == "wait_timeout" and held.wait else held.visits
                timer = TimerFired(
                    run_id=run.run_id,
                    timer=kind,
                    node_id=node_id,
                    visit=visit,
                    attempt=attempt,
                )
                self._timer(timer)
        return None

    def _hold(self, node_id: str) -> None:
        """The run is paused: the node is held instead of enqueued."""
        rec = self.tx.node(node_id)
        rec.status = NodeStatus.HELD
        self.tx.emit("node.held", node_id, visit=rec.visits, attempt=rec.attempt)

    def _hold_timer(self, ev: TimerFired) -> str | None:
        """A timer fell due while the run is paused: remember it on its node (it fires on
        resume), or ignore a stale one; the run's own timeout is checked on resume."""
        if ev.timer == "run_timeout":
            return "the run is paused: its timeout is checked when it resumes"
        if ev.node_id is None or not self.g.has_node(ev.node_id):
            return f"timer for unknown node {ev.node_id!r}"
        rec = self.tx.peek(ev.node_id)
        current = {
            "retry": rec.status == NodeStatus.RETRY_SCHEDULED
            and (rec.visits, rec.attempt + 1) == (ev.visit, ev.attempt),
            "delay": rec.status == NodeStatus.DELAYED and rec.visits == ev.visit,
            "wait_timeout": rec.status == NodeStatus.WAITING
            and rec.wait is not None
            and rec.wait.visit == ev.visit,
        }.get(ev.timer, False)
        if not current:
            return f"stale {ev.timer} timer for {ev.node_id!r}"
        self.tx.node(ev.node_id).held_timer = ev.timer
        self.tx.emit("node.timer_held", ev.node_id, visit=ev.visit, timer=ev.timer)
        return None
