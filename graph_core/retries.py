"""Retrying a failed run, and re-running a finished one from a node.

Retry: a failed run goes on from the nodes that failed, or that the failure stopped,
keeping every completed node's output; no node that completed runs again.

The run turns ``running`` again (``run.retried``, with the actor), its error is cleared, and
each such node starts a new visit, as if its trigger had just fired: the graph version, the
visits so far and the step count are the run's own. A run whose failure named no node (a run
timeout, a run that went idle without an end) has nothing to go on from, and a failure inside
a parallel node's children is not retried this way yet: both are refused with the reason.
"""

from __future__ import annotations

from graph_core.events import ReopenRun, RerunRequested, RetryRequested, ScheduleTimer
from graph_core.machine import MachineBase
from graph_core.routing import select_edges
from graph_core.status import NodeStatus, RunStatus
from graph_core.topology import reachable

__all__ = ["RERUNNABLE", "Retries"]

_RESTART = frozenset({NodeStatus.FAILED, NodeStatus.CANCELLED})
RERUNNABLE = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED})


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
        self._restart_timeout()
        self.tx.actions.append(ReopenRun())
        self.tx.emit("run.retried", actor=ev.actor, nodes=restart)
        for node_id in restart:
            if self.finished:
                break
            self._activate(node_id, trigger=self.tx.peek(node_id).trigger)
        return None

    def _rerun(self, ev: RerunRequested) -> str | None:
        run = self.tx.run
        if run.status not in RERUNNABLE:
            return (
                f"run {run.run_id!r} is {run.status.value}: only a completed, failed or "
                "cancelled run can be re-run"
            )
        if not self.g.has_node(ev.from_node):
            return f"graph {self.g.id!r} v{self.g.version} has no node {ev.from_node!r}"
        origin = self.g.node(ev.from_node)
        if origin.parent is not None:
            return (
                f"node {origin.id!r} is a child of parallel node {origin.parent!r}: re-run "
                "from the parallel node"
            )
        downstream = self._downstream(origin.id)
        trigger = self.tx.peek(origin.id).trigger
        for node_id in downstream:
            self.tx.reset_node(node_id)  # as if the run never reached it (visits go on)
            self.tx.mark_inactive(node_id)
            for group in self.topo.join_groups.get(node_id, {}).values():
                if len(group) > 1:
                    for index in group:
                        self.tx.set_arrivals(node_id, index, "")
            for loop_id in self.topo.loops_of.get(node_id, ()):
                self.tx.reset_loop(loop_id)
        run.status = RunStatus.RUNNING
        run.error = None
        run.output = None
        run.finished_at = None
        run.tokens = run.live = run.waiting = 0
        run.last_dead_end = None
        if ev.new_input:
            run.input = ev.input
        self._restart_timeout()
        self.tx.actions.append(ReopenRun())
        self.tx.emit(
            "run.rerun",
            actor=ev.actor,
            from_node=origin.id,
            nodes=sorted(downstream),
            new_input=ev.new_input,
        )
        stopped = self._resignal(downstream, origin.id)
        self._activate(origin.id, trigger=trigger)
        for node_id in stopped:  # kept nodes a downstream join needs, but that never ended
            if self.finished:
                break
            self._activate(node_id, trigger=self.tx.peek(node_id).trigger)
        return None

    def _restart_timeout(self) -> None:
        """The run's timeout counts afresh from a retry or rerun: a new timer, and the
        earlier one (``attempt``: the restarts then) is stale when it fires."""
        run = self.tx.run
        run.restarts += 1
        if self.g.timeout_s is not None:
            run.deadline = self.tx.now + self.g.timeout_s
            self.tx.actions.append(
                ScheduleTimer(timer="run_timeout", due_at=run.deadline, attempt=run.restarts)
            )

    def _downstream(self, origin: str) -> set[str]:
        """``origin`` and every node reachable from it, with parallel nodes' children."""
        return reachable(self.topo, [origin])

    def _resignal(self, downstream: set[str], origin: str) -> list[str]:
        """Joins downstream get the branch signals of their inputs from kept nodes again;
        the kept inputs that failed or were cancelled (a sibling branch the run's end
        stopped) are returned, to run again too: the join needs their signal."""
        stopped: list[str] = []
        for node_id in sorted(downstream - {origin}):
            for ref in self.topo.in_edges.get(node_id, []):
                source = ref.edge.source
                if (
                    source in downstream
                    or ref.index in self.topo.back_edges
                    or ref.index in self.topo.defer_loop
                ):
                    continue
                group = self.topo.join_groups[node_id][self.topo.group_of[ref.index]]
                if len(group) <= 1:
                    continue
                rec = self.tx.peek(source)
                if rec.status == NodeStatus.COMPLETED:
                    chosen = select_edges(self.g.node(source), self.topo.out_edges[source], self.tx)
                    self.signals.append((ref.index, ref.index in chosen))
                elif rec.status == NodeStatus.SKIPPED:
                    self.signals.append((ref.index, False))
                elif rec.status in _RESTART and source not in stopped:
                    stopped.append(source)
        return stopped
