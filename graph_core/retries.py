"""Retrying a failed run: it goes on from the nodes that failed, or that the failure stopped,
keeping every completed node's output; no node that completed runs again.

The run turns ``running`` again (``run.retried``, with the actor), its error is cleared, and
each such node starts a new visit, as if its trigger had just fired: the graph version, the
visits so far and the step count are the run's own. A run whose failure named no node (a run
timeout, a run that went idle without an end) has nothing to go on from, and a failure inside
a parallel node's children is not retried this way yet: both are refused with the reason.
"""

from __future__ import annotations

from graph_core.events import ReopenRun, RetryRequested
from graph_core.machine import MachineBase
from graph_core.status import NodeStatus, RunStatus

__all__ = ["Retries"]

_RESTART = frozenset({NodeStatus.FAILED, NodeStatus.CANCELLED})


class Retries(MachineBase):
    def _retry(self, ev: RetryRequested) -> str | None:
        run = self.tx.run
        if run.status != RunStatus.FAILED:
            return f"run {run.run_id!r} is {run.status.value}: only a failed run can be retried"
        restart = []
        for node in self.g.nodes:
            rec = self.tx.peek(node.id)
            if rec.visits == 0 or rec.status not in _RESTART:
                continue
            if node.parent is not None:
                return (
                    f"node {node.id!r} failed inside parallel node {node.parent!r}: retrying "
                    "a run from inside a parallel node is not supported"
                )
            restart.append(node.id)
        if not restart:
            code = run.error.code if run.error is not None else None
            return f"nothing to retry: no node failed or was stopped (the run failed: {code})"
        run.status = RunStatus.RUNNING
        run.error = None
        run.output = None
        run.finished_at = None
        self.tx.actions.append(ReopenRun())
        self.tx.emit("run.retried", actor=ev.actor, nodes=restart)
        for node_id in restart:
            if self.finished:
                break
            self._activate(node_id, trigger=self.tx.peek(node_id).trigger)
        return None
