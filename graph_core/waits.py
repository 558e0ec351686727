"""Worker reports, retries, waits for approval, approvals and timers."""

from __future__ import annotations

import hmac
from typing import Any

from graph_core.events import (
    ApprovalReceived,
    ErrorInfo,
    LeaseExpired,
    NodeReported,
    PauseForApproval,
    ReleaseWait,
    ScheduleTimer,
    TimerFired,
)
from graph_core.machine import MachineBase
from graph_core.routing import backoff_delay, is_retryable
from graph_core.state import WaitInfo
from graph_core.status import NodeStatus, RunStatus

__all__ = ["MAX_LOST_ATTEMPTS", "Waits"]

# Re-runs of one visit whose worker was lost, before the node fails with WorkerLost. Lost
# attempts do not use up the node's retry policy: the handler did not fail, its worker died.
MAX_LOST_ATTEMPTS = 3


class Waits(MachineBase):
    def _reported(self, ev: NodeReported) -> str | None:
        if not self.g.has_node(ev.node_id):
            return f"unknown node {ev.node_id!r}"
        if ev.item is not None:
            return self._map_reported(ev)
        rec = self.tx.peek(ev.node_id)
        if (rec.visits, rec.attempt) != (ev.visit, ev.attempt):
            return (
                f"stale report for {ev.node_id!r} visit {ev.visit} attempt {ev.attempt}: "
                f"the node is at visit {rec.visits} attempt {rec.attempt}"
            )
        if rec.status == NodeStatus.COMPENSATING:
            return self._compensation_reported(ev)
        if rec.status not in (NodeStatus.QUEUED, NodeStatus.RUNNING):
            return f"node {ev.node_id!r} is {rec.status.value}, not running (duplicate report?)"
        if ev.status == "completed":
            self._complete(ev.node_id, ev.visit, ev.output)
        elif ev.status == "waiting":
            self._wait(ev.node_id, ev.output)
        else:
            error = ev.error or ErrorInfo(type="Error", message="the worker gave no error")
            self._failed(ev.node_id, error.model_copy(update={"node_id": ev.node_id}))
        return None

    def _lease_expired(self, ev: LeaseExpired) -> str | None:
        if not self.g.has_node(ev.node_id):
            return f"lease of unknown node {ev.node_id!r}"
        if ev.item is not None:
            return self._map_lease_expired(ev)
        rec = self.tx.peek(ev.node_id)
        if (rec.visits, rec.attempt) == (ev.visit, ev.attempt) and (
            rec.status == NodeStatus.COMPENSATING
        ):
            self._compensation_lost(ev.node_id)
            return None
        if (rec.visits, rec.attempt) != (ev.visit, ev.attempt) or rec.status not in (
            NodeStatus.QUEUED,
            NodeStatus.RUNNING,
        ):
            return f"stale lease of {ev.node_id!r} visit {ev.visit} attempt {ev.attempt}"
        node = self.g.node(ev.node_id)
        if ev.deadline is not None and self.tx.now >= ev.deadline:
            error = ErrorInfo(
                type="TimeoutError",
                node_id=node.id,
                message=f"no report within timeout_s={node.timeout_s} (start to close)",
            )
            self._failed(node.id, error)
            return None
        rec = self.tx.node(node.id)
        rec.lost += 1
        self.tx.emit("node.lost", node.id, visit=rec.visits, attempt=rec.attempt, lost=rec.lost)
        if rec.lost > MAX_LOST_ATTEMPTS:
            error = ErrorInfo(
                type="WorkerLost",
                node_id=node.id,
                retryable=False,
                message=f"the worker running it was lost {rec.lost} times",
            )
            self._failed(node.id, error)
            return None
        rec.attempt += 1
        rec.status = NodeStatus.QUEUED
        self._enqueue(node)
        return None

    def _failed(self, node_id: str, error: ErrorInfo) -> None:
        node = self.g.node(node_id)
        rec = self.tx.node(node_id)
        policy = self.g.retry_for(node)
        failures = rec.attempt - rec.lost  # attempts lost with their worker are not failures
        if failures < policy.max_attempts and is_retryable(policy, error.type, error.retryable):
            seed = f"{self.tx.run.run_id}:{node_id}:{rec.visits}:{rec.attempt}"
            delay = backoff_delay(policy, failures, seed)
            rec.error = error
            self.tx.emit(
                "node.retry_scheduled",
                node_id,
                visit=rec.visits,
                attempt=rec.attempt,
                delay_s=delay,
                error=error.model_dump(mode="json"),
            )
            if delay <= 0:
                rec.attempt += 1
                rec.status = NodeStatus.QUEUED
                self._enqueue(node)
            else:
                rec.status = NodeStatus.RETRY_SCHEDULED
                self.tx.actions.append(
                    ScheduleTimer(
                        timer="retry",
                        due_at=self.tx.now + delay,
                        node_id=node_id,
                        visit=rec.visits,
                        attempt=rec.attempt + 1,
                    )
                )
            return
        self._give_up(node_id, error)

    def _give_up(self, node_id: str, error: ErrorInfo) -> None:
        """The node fails for good: its run fails (or its parallel node hears of it)."""
        node = self.g.node(node_id)
        rec = self.tx.node(node_id)
        if rec.map is not None:
            self._map_stop(node_id)
        rec.status = NodeStatus.FAILED
        rec.error = error
        rec.finished_at = self.tx.now
        self.tx.mark_inactive(node_id)
        self._tokens(node_id, -1)
        self.tx.emit(
            "node.failed",
            node_id,
            visit=rec.visits,
            attempt=rec.attempt,
            error=error.model_dump(mode="json"),
        )
        if node.parent is not None:
            self._child_failed(node, error)
        else:
            self._fail(
                error.model_copy(
                    update={"message": f"{error.message} (after {rec.attempt} attempt(s))"}
                )
            )

    def _wait(self, node_id: str, prompt: Any) -> None:
        rec = self.tx.node(node_id)
        token = self.tx.env.new_token()
        rec.status = NodeStatus.WAITING
        rec.wait = WaitInfo(token=token, since=self.tx.now, visit=rec.visits, prompt=prompt)
        self.tx.run.waiting += 1
        self.tx.actions.append(PauseForApproval(node_id=node_id, visit=rec.visits, token=token))
        policy = self.g.node(node_id).wait
        if policy is not None:
            self.tx.actions.append(
                ScheduleTimer(
                    timer="wait_timeout",
                    due_at=self.tx.now + policy.timeout_s,
                    node_id=node_id,
                    visit=rec.visits,
                    attempt=rec.attempt,
                )
            )
        self.tx.emit("node.waiting", node_id, visit=rec.visits, token=token, prompt=prompt)

    def _approval(self, ev: ApprovalReceived) -> str | None:
        if not self.g.has_node(ev.node_id):
            return f"approval for unknown node {ev.node_id!r}"
        rec = self.tx.peek(ev.node_id)
        if rec.status != NodeStatus.WAITING or rec.wait is None:
            return (
                f"node {ev.node_id!r} is not waiting (it is {rec.status.value}): "
                "late or duplicate approval"
            )
        if not ev.token:
            return f"approval for {ev.node_id!r} carries no token"
        if not hmac.compare_digest(ev.token.encode(), rec.wait.token.encode()):
            return f"approval for {ev.node_id!r} carries the wrong token"
        self._resolve(ev.node_id, ev.decision, ev.data, ev.actor, ev.comment)
        return None

    def _resolve(
        self,
        node_id: str,
        decision: str,
        data: dict[str, Any],
        actor: str | None,
        comment: str | None = None,
    ) -> None:
        rec = self.tx.node(node_id)
        rec.wait = None
        self.tx.run.waiting -= 1
        self.tx.actions.append(ReleaseWait(node_id=node_id))
        kind = {"approve": "node.approved", "reject": "node.rejected"}.get(
            decision, "node.resolved"
        )
        output: dict[str, Any] = {"decision": decision, "data": data, "actor": actor}
        said: dict[str, Any] = {"decision": decision, "actor": actor}
        if comment is not None:  # only when given: outputs and events stay as they were
            output["comment"] = said["comment"] = comment
        self.tx.emit(kind, node_id, visit=rec.visits, **said)
        self._complete(node_id, rec.visits, output)

    def _timer(self, ev: TimerFired) -> str | None:
        if ev.timer == "compensate":
            return self._compensation_timer(ev)
        if self.tx.run.status == RunStatus.COMPENSATING:
            return f"the run is compensating: {ev.timer} timer ignored"
        if ev.item is not None:  # a map item's retry (held by the map itself when paused)
            return self._map_timer(ev)
        if self.tx.run.status == RunStatus.PAUSED:
            return self._hold_timer(ev)
        if ev.timer == "run_timeout":
            if ev.attempt != self.tx.run.restarts:
                return "an earlier run timeout: the run was restarted since (retry or rerun)"
            limit = self.g.timeout_s
            self._fail(
                ErrorInfo(
                    type="RunTimeout",
                    code="run_timeout",
                    message=f"the run exceeded timeout_s={limit}",
                )
            )
            return None
        if ev.node_id is None or not self.g.has_node(ev.node_id):
            return f"timer for unknown node {ev.node_id!r}"
        rec = self.tx.peek(ev.node_id)
        if ev.timer == "delay":
            if rec.status != NodeStatus.DELAYED or rec.visits != ev.visit:
                return f"stale delay timer for {ev.node_id!r} (it is {rec.status.value})"
            self._complete(ev.node_id, ev.visit, self._passed_on(self.tx.node(ev.node_id).trigger))
            return None
        if ev.timer == "retry":
            if rec.status != NodeStatus.RETRY_SCHEDULED or (rec.visits, rec.attempt + 1) != (
                ev.visit,
                ev.attempt,
            ):
                return f"stale retry timer for {ev.node_id!r}"
            rec = self.tx.node(ev.node_id)
            rec.attempt = ev.attempt
            rec.status = NodeStatus.QUEUED
            self._enqueue(self.g.node(ev.node_id))
            return None
        if rec.status != NodeStatus.WAITING or rec.wait is None or rec.wait.visit != ev.visit:
            return f"stale wait timer for {ev.node_id!r}"
        return self._wait_timed_out(ev.node_id)

    def _wait_timed_out(self, node_id: str) -> str | None:
        policy = self.g.node(node_id).wait
        if policy is None:
            return f"node {node_id!r} has no wait policy"
        if policy.on_timeout == "fail":
            self._fail(
                ErrorInfo(
                    type="WaitTimeout",
                    code="wait_timeout",
                    node_id=node_id,
                    message=f"no approval within {policy.timeout_s}s",
                )
            )
        elif policy.on_timeout in ("approve", "reject"):
            self._resolve(node_id, policy.on_timeout, {"timed_out": True}, "timeout")
        else:
            self._escalate(node_id, policy.escalate_to)
        return None

    def _escalate(self, node_id: str, target: str | None) -> None:
        """No approval in time: the node completes with decision ``escalated`` and goes to
        ``escalate_to`` — along its edge to it when there is one, else directly."""
        rec = self.tx.node(node_id)
        rec.wait = None
        self.tx.run.waiting -= 1
        self.tx.actions.append(ReleaseWait(node_id=node_id))
        self.tx.emit("node.escalated", node_id, visit=rec.visits, to=target)
        edges = {r.index for r in self.topo.out_edges[node_id] if r.edge.target == target}
        output = {"decision": "escalated", "data": {}, "actor": "timeout"}
        self._complete(node_id, rec.visits, output, chosen=edges)
        if target is not None and not edges and not self.finished:
            self._activate(target, trigger=node_id)
