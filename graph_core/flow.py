"""Activation, completion, routing, skipping and finishing: the main line of a run."""

from __future__ import annotations

from typing import Any

from graph_core.delays import delay_due
from graph_core.errors import TemplateError
from graph_core.events import (
    CancelNode,
    DropTimer,
    EnqueueNode,
    ErrorInfo,
    FinishRun,
    ReleaseWait,
    ScheduleTimer,
)
from graph_core.machine import MachineBase
from graph_core.model import Node
from graph_core.paths import MISSING
from graph_core.routing import select_edges
from graph_core.status import NodeStatus, RunStatus

__all__ = ["Flow"]


class Flow(MachineBase):
    def _tokens(self, node_id: str, delta: int, parked: bool = False) -> None:
        """Count tokens run-wide and per loop (a loop with none left is idle). ``parked``
        tokens wait at a join or behind a node's current visit; the others are live."""
        run = self.tx.run
        run.tokens += delta
        if not parked:
            run.live += delta
        for loop in self.topo.loops_of.get(node_id, ()):
            rec = self.tx.loop(loop)
            rec.tokens += delta
            rec.touched = True

    def _activate(self, node_id: str, trigger: str | None) -> None:
        if self.finished:
            return
        node = self.g.node(node_id)
        rec = self.tx.node(node_id)
        if rec.is_active:  # one visit at a time: queue this activation behind the current one
            rec.backlog += 1
            self._tokens(node_id, +1, parked=True)
            return
        if node.max_visits is not None and rec.visits - rec.base_visits >= node.max_visits:
            self._fail(
                ErrorInfo(
                    type="MaxVisitsExceeded",
                    code="max_visits",
                    node_id=node_id,
                    message=f"node {node_id!r} reached max_visits={node.max_visits}; "
                    "the loop through it did not exit",
                )
            )
            return
        if not self._take_step(node_id):
            return
        rec.visits += 1
        rec.attempt = 1
        rec.lost = 0
        rec.status = NodeStatus.QUEUED
        rec.started_at = self.tx.now
        rec.finished_at = None
        rec.error = None
        rec.wait = None
        rec.trigger = trigger
        self._tokens(node_id, +1)
        self.tx.mark_active(node_id, rec.visits)
        self._start(node, trigger)

    def _take_step(self, node_id: str) -> bool:
        run = self.tx.run
        if run.steps >= self.g.max_steps:
            self._fail(
                ErrorInfo(
                    type="StepLimitExceeded",
                    code="step_limit",
                    node_id=node_id,
                    message=f"the run reached max_steps={self.g.max_steps} node activations",
                )
            )
            return False
        run.steps += 1
        return True

    def _start(self, node: Node, trigger: str | None) -> None:
        rec = self.tx.node(node.id)
        if node.type == "start":
            self._complete(node.id, rec.visits, self.tx.run.input)
        elif node.type == "end":
            output = self._render(node, node.config["output"]) if "output" in node.config else None
            if "output" not in node.config and trigger is not None:
                output = self.tx.latest_output(trigger)
            if not self.finished:
                self._complete(node.id, rec.visits, None if output is MISSING else output)
        elif node.type == "human":
            prompt = self._render(node, node.config.get("prompt"))
            if not self.finished:
                self._wait(node.id, prompt)
        elif node.type == "parallel":
            self._start_children(node.id)
        elif node.type == "delay":
            self._start_delay(node)
        elif node.type == "map":
            self._start_map(node)
        else:
            self._enqueue(node)

    def _start_delay(self, node: Node) -> None:
        """A delay node waits for a durable timer (no worker holds it): due ``seconds`` from
        now, or at ``until`` (ISO 8601, or epoch seconds); due already: it completes now."""
        config = self._render(node, node.config)
        if self.finished:
            return
        try:
            due = delay_due(config if isinstance(config, dict) else {}, self.tx.now)
        except ValueError as e:
            self._fail(
                ErrorInfo(type="DelayError", code="bad_delay", node_id=node.id, message=str(e))
            )
            return
        rec = self.tx.node(node.id)
        if due <= self.tx.now:
            self._complete(node.id, rec.visits, self._passed_on(rec.trigger))
            return
        rec.status = NodeStatus.DELAYED
        self.tx.actions.append(
            ScheduleTimer(timer="delay", due_at=due, node_id=node.id, visit=rec.visits)
        )
        self.tx.emit("node.delayed", node.id, visit=rec.visits, due_at=due)

    def _passed_on(self, trigger: str | None) -> Any:
        """What a delay hands on: its trigger's latest output (the run's input at the start)."""
        if trigger is None:
            return self.tx.run.input
        output = self.tx.latest_output(trigger)
        return None if output is MISSING else output

    def _enqueue(self, node: Node) -> None:
        if self._paused:  # nothing new starts while the run is paused (graph_core.pauses)
            self._hold(node.id)
            return
        if node.type == "subgraph":  # its "job" is a child run
            self._start_child(node)
            return
        rec = self.tx.peek(node.id)
        queue = node.queue or "default"
        self.tx.actions.append(
            EnqueueNode(
                node_id=node.id,
                visit=rec.visits,
                attempt=rec.attempt,
                queue=queue,
                timeout_s=node.timeout_s,
                parent=node.parent,
                type=node.type,
            )
        )
        self.tx.emit("node.enqueued", node.id, visit=rec.visits, attempt=rec.attempt, queue=queue)

    def _render(self, node: Node, value: Any, source: Any = None) -> Any:
        """``value``'s templates rendered over the run (or ``source``); a template that
        fails fails the run (``self.finished``)."""
        from graph_core.templates import render

        try:
            return render(value, self.tx if source is None else source)
        except TemplateError as e:
            self._fail(
                ErrorInfo(type="TemplateError", code="template", node_id=node.id, message=str(e))
            )
            return None

    # --- completion and routing ---------------------------------------------------------

    def _complete(
        self, node_id: str, visit: int, output: Any, chosen: set[int] | None = None
    ) -> None:
        """Record the visit's output and route: ``chosen`` overrides the node's edges'
        conditions (an escalation picks its own way)."""
        rec = self.tx.node(node_id)
        rec.status = NodeStatus.COMPLETED
        rec.finished_at = self.tx.now
        rec.last_ok_visit = visit
        rec.error = None
        self.tx.set_output(node_id, visit, output)
        self.tx.mark_inactive(node_id)
        self._tokens(node_id, -1)
        node = self.g.node(node_id)
        if node.compensate is not None:
            self._mark_done(node_id)
        if node.parent is not None:
            self.tx.emit("node.completed", node_id, visit=visit, attempt=rec.attempt)
            self._child_completed(node)
            return
        if node.type == "end":
            self.tx.emit("node.completed", node_id, visit=visit, attempt=rec.attempt)
            self._finish(RunStatus.COMPLETED, output=output)
            return
        if chosen is None:
            chosen = select_edges(node, self.topo.out_edges[node_id], self.tx)
        targets = [self.g.edges[i].target for i in sorted(chosen)]
        self.tx.emit("node.completed", node_id, visit=visit, attempt=rec.attempt, next=targets)
        self._route(node_id, chosen)
        self._drain_backlog(node_id)

    def _route(self, node_id: str, chosen: set[int]) -> None:
        if not chosen:
            self.tx.run.last_dead_end = node_id
        for ref in self.topo.out_edges[node_id]:
            self._signal_out(node_id, ref.index, ref.index in chosen)

    def _drain_backlog(self, node_id: str) -> None:
        rec = self.tx.node(node_id)
        if rec.backlog > 0 and not self.finished:
            rec.backlog -= 1
            self._tokens(node_id, -1, parked=True)
            self._activate(node_id, trigger=rec.trigger)

    def _signal_out(self, source: str, index: int, taken: bool) -> None:
        if index in self.topo.back_edges:
            if taken:
                self.signals.append((index, True))
            return
        loop = self.topo.defer_loop.get(index)
        if loop is not None:
            if taken:  # leaving the loop; untaken exits are signalled when the loop idles
                self.tx.loop(loop).exits_taken.append(index)
                self.signals.append((index, True))
            return
        self.signals.append((index, taken))

    def _skip(self, node_id: str) -> None:
        rec = self.tx.node(node_id)
        if not rec.is_active:
            rec.status = NodeStatus.SKIPPED
        for loop in self.topo.loops_of.get(node_id, ()):
            self.tx.loop(loop).touched = True
        self.tx.emit("node.skipped", node_id)
        for ref in self.topo.out_edges[node_id]:
            if ref.index not in self.topo.back_edges and ref.index not in self.topo.defer_loop:
                self.signals.append((ref.index, False))

    def _fail(self, error: ErrorInfo) -> None:
        if self.tx.run.status == RunStatus.COMPENSATING:  # failing while undoing: give up
            self._end_saga(RunStatus.COMPENSATION_FAILED, error)
        elif not self.finished and self._saga_applies(cancelled=False):
            self._start_saga(error, "failure")
        else:
            self._finish(RunStatus.FAILED, error=error)

    def _finish(
        self,
        status: RunStatus,
        output: Any = None,
        error: ErrorInfo | None = None,
        actor: str | None = None,
    ) -> None:
        if self.finished:
            return
        self.finished = True
        run = self.tx.run
        run.status = status
        run.output = output
        run.error = error
        run.finished_at = self.tx.now
        for node_id in sorted(self.tx.active_nodes()):
            self._stop_node(node_id)
        self.signals.clear()
        self.tx.actions.append(FinishRun(status=status.value))
        data: dict[str, Any] = {"output": output} if status == RunStatus.COMPLETED else {}
        if error is not None:
            data["error"] = error.model_dump(mode="json")
        if actor is not None:
            data["actor"] = actor
        self.tx.emit(f"run.{status.value}", **data)

    def _stop_node(self, node_id: str) -> None:
        rec = self.tx.node(node_id)
        if not rec.is_active:
            self.tx.mark_inactive(node_id)
            return
        if rec.status == NodeStatus.WAITING:
            rec.wait = None
            self.tx.run.waiting -= 1
            self.tx.actions.append(ReleaseWait(node_id=node_id))
        elif rec.status == NodeStatus.DELAYED:  # its timer can no longer matter
            self.tx.actions.append(DropTimer(timer="delay", node_id=node_id, visit=rec.visits))
        elif rec.map is not None:  # a map: its items in flight stop
            self._map_stop(node_id)
        elif rec.child is not None:  # a subgraph: its child run is cancelled
            self._stop_child(rec.child, node_id)
            rec.child = None
        rec.status = NodeStatus.CANCELLED
        rec.finished_at = self.tx.now
        self.tx.mark_inactive(node_id)
        self._tokens(node_id, -1)
        self.tx.actions.append(CancelNode(node_id=node_id, visit=rec.visits, attempt=rec.attempt))
        self.tx.emit("node.cancelled", node_id, visit=rec.visits, attempt=rec.attempt)
