"""Sagas: a failed (or cancelled) run undoes what its completed nodes did.

With the graph's ``on_failure: "compensate"`` (or ``on_cancel: "compensate"``), a run that
would fail (or be cancelled) stops every live node and turns ``compensating``; then the
compensations of its completed nodes (``node.compensate``) run one at a time, the most
recently completed node first. Each is a job like an attempt (its own job id, lease and
fencing), with the compensation's retry policy. When the last one completed the run is
``compensated``; when one fails for good it is ``compensation_failed``, naming the node.
The run's ``error`` stays the failure that started it (or names the failed compensation).

Order: a node records the run's revision when its latest visit completed (``done_rev``);
the next compensation is the not yet compensated node with the highest one. Only the
latest completed visit of a node is compensated (its output is the one that stands).
"""

from __future__ import annotations

from graph_core.events import EnqueueNode, ErrorInfo, NodeReported, ScheduleTimer, TimerFired
from graph_core.machine import MachineBase
from graph_core.routing import backoff_delay, is_retryable
from graph_core.status import NodeStatus, RunStatus

__all__ = ["MAX_LOST_COMPENSATIONS", "Sagas"]

MAX_LOST_COMPENSATIONS = 3  # a compensation whose worker is lost this often fails


class Sagas(MachineBase):
    def _saga_applies(self, cancelled: bool) -> bool:
        policy = (
            self.g.on_cancel == "compensate" if cancelled else self.g.on_failure == "compensate"
        )
        return policy and bool(self.g.compensable())

    def _mark_done(self, node_id: str) -> None:
        """A node with a compensation completed a visit: remember when (its place in the
        order compensations run in)."""
        rec = self.tx.node(node_id)
        rec.done_rev = self.tx.run.rev + 1  # the revision this transition writes
        rec.comp_tries = 0

    def _start_saga(self, error: ErrorInfo, cause: str) -> None:
        """Stop the run's flow and start undoing it (``cause``: failure or cancel)."""
        run = self.tx.run
        run.error = error
        for node_id in sorted(self.tx.active_nodes()):
            self._stop_node(node_id)
        self.signals.clear()
        self.finished = True  # nothing of the flow moves any more (joins, activations)
        run.status = RunStatus.COMPENSATING
        self.tx.emit("run.compensating", cause=cause, error=error.model_dump(mode="json"))
        self._next_compensation()

    def _next_compensation(self) -> None:
        """Start the next compensation, or end the saga when none is left."""
        pending = []
        for node_id in self.g.compensable():
            rec = self.tx.peek(node_id)
            if rec.done_rev > 0 and rec.status != NodeStatus.COMPENSATED:
                pending.append((rec.done_rev, node_id))
        if not pending:
            self._end_saga(RunStatus.COMPENSATED, self.tx.run.error)
            return
        _, node_id = max(pending)
        rec = self.tx.node(node_id)
        rec.status = NodeStatus.COMPENSATING
        rec.attempt += 1  # a job id of its own: the node's attempts keep counting
        rec.lost = 0
        rec.comp_tries = 1
        rec.error = None
        self.tx.emit("node.compensating", node_id, visit=rec.last_ok_visit, attempt=rec.attempt)
        self._enqueue_compensation(node_id)

    def _enqueue_compensation(self, node_id: str) -> None:
        node = self.g.node(node_id)
        comp = node.compensate
        if comp is None:  # validated graphs cannot get here; stay safe anyway
            return
        rec = self.tx.peek(node_id)
        self.tx.actions.append(
            EnqueueNode(
                node_id=node_id,
                visit=rec.visits,
                attempt=rec.attempt,
                queue=comp.queue or node.queue or "default",
                timeout_s=comp.timeout_s,
                compensate=True,
                type=comp.type,
            )
        )

    def _end_saga(self, status: RunStatus, error: ErrorInfo | None) -> None:
        self.finished = False  # _start_saga halted the flow; now the run really finishes
        self._finish(status, error=error)

    # --- events while compensating ----------------------------------------------------------

    def _compensation_reported(self, ev: NodeReported) -> str | None:
        rec = self.tx.node(ev.node_id)
        if ev.status == "completed":
            rec.status = NodeStatus.COMPENSATED
            rec.finished_at = self.tx.now
            self.tx.emit(
                "node.compensated",
                ev.node_id,
                visit=rec.last_ok_visit,
                attempt=ev.attempt,
                output=ev.output,  # what the compensation returned, kept in the history
            )
            self.finished = True
            self._next_compensation()
            return None
        if ev.status == "waiting":
            error = ErrorInfo(type="CompensationError", message="a compensation cannot wait")
        else:
            error = ev.error or ErrorInfo(type="Error", message="the worker gave no error")
        self._compensation_failed(ev.node_id, error.model_copy(update={"node_id": ev.node_id}))
        return None

    def _compensation_failed(self, node_id: str, error: ErrorInfo) -> None:
        node = self.g.node(node_id)
        comp = node.compensate
        rec = self.tx.node(node_id)
        policy = (comp.retry if comp is not None else None) or self.g.retry_for(node)
        if rec.comp_tries < policy.max_attempts and is_retryable(
            policy, error.type, error.retryable
        ):
            seed = f"{self.tx.run.run_id}:{node_id}:compensate:{rec.comp_tries}"
            delay = backoff_delay(policy, rec.comp_tries, seed)
            rec.comp_tries += 1
            rec.attempt += 1  # a late report of the failed try is now stale
            rec.error = error
            self.tx.emit(
                "node.compensation_retry_scheduled",
                node_id,
                visit=rec.last_ok_visit,
                attempt=rec.attempt,
                delay_s=delay,
                error=error.model_dump(mode="json"),
            )
            self.tx.actions.append(
                ScheduleTimer(
                    timer="compensate",
                    due_at=self.tx.now + delay,
                    node_id=node_id,
                    visit=rec.visits,
                    attempt=rec.attempt,
                )
            )
            return
        rec.error = error
        rec.finished_at = self.tx.now
        self.tx.emit(
            "node.compensation_failed",
            node_id,
            visit=rec.last_ok_visit,
            attempt=rec.attempt,
            error=error.model_dump(mode="json"),
        )
        failed = ErrorInfo(
            type="CompensationFailed",
            code="compensation_failed",
            node_id=node_id,
            message=f"the compensation of node {node_id!r} failed: {error.message}",
        )
        self._end_saga(RunStatus.COMPENSATION_FAILED, failed)

    def _compensation_timer(self, ev: TimerFired) -> str | None:
        if ev.node_id is None or not self.g.has_node(ev.node_id):
            return f"compensation timer for unknown node {ev.node_id!r}"
        rec = self.tx.peek(ev.node_id)
        if rec.status != NodeStatus.COMPENSATING or (rec.visits, rec.attempt) != (
            ev.visit,
            ev.attempt,
        ):
            return f"stale compensation timer for {ev.node_id!r}"
        self._enqueue_compensation(ev.node_id)
        return None

    def _compensation_lost(self, node_id: str) -> None:
        """The worker running a compensation was lost: run it again (a new attempt)."""
        rec = self.tx.node(node_id)
        rec.lost += 1
        self.tx.emit("node.lost", node_id, visit=rec.visits, attempt=rec.attempt, lost=rec.lost)
        if rec.lost > MAX_LOST_COMPENSATIONS:
            error = ErrorInfo(
                type="WorkerLost",
                node_id=node_id,
                retryable=False,
                message=f"the worker running its compensation was lost {rec.lost} times",
            )
            self._compensation_failed(node_id, error)
            return
        rec.attempt += 1
        self._enqueue_compensation(node_id)
