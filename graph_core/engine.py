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

import hmac
from collections import deque
from typing import Any

from graph_core.errors import TemplateError
from graph_core.events import (
    ApprovalReceived,
    CancelNode,
    CancelRequested,
    EnqueueNode,
    ErrorInfo,
    Event,
    FinishRun,
    NodeReported,
    PauseForApproval,
    ReleaseWait,
    RunSubmitted,
    ScheduleTimer,
    TimerFired,
)
from graph_core.model import Graph, Node
from graph_core.paths import MISSING
from graph_core.routing import backoff_delay, is_retryable, join_need, select_edges
from graph_core.state import RunRecord, StateView, Transition, WaitInfo
from graph_core.status import TERMINAL_RUN, NodeStatus, RunStatus
from graph_core.tx import Env, Tx

__all__ = ["Env", "advance"]


def advance(graph: Graph, view: StateView, event: Event, env: Env) -> Transition:
    """Apply one event to one run. See the module docstring for the semantics."""
    return _Machine(Tx(graph, view, env)).handle(event)


class _Machine:
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
            if run.status in TERMINAL_RUN:
                return Transition(ignored=f"run {run.run_id!r} is already {run.status.value}")
            reason = self._dispatch(event)
        if reason is not None:
            return Transition(ignored=reason)
        self._settle()
        run = self.tx.run
        run.rev += 1
        run.updated_at = self.tx.now
        if run.status not in TERMINAL_RUN:
            run.status = RunStatus.WAITING if run.waiting > 0 else RunStatus.RUNNING
        return self.tx.result()

    def _dispatch(self, event: Event) -> str | None:
        if isinstance(event, NodeReported):
            return self._reported(event)
        if isinstance(event, ApprovalReceived):
            return self._approval(event)
        if isinstance(event, TimerFired):
            return self._timer(event)
        if isinstance(event, CancelRequested):
            self._finish(
                RunStatus.CANCELLED,
                error=ErrorInfo(type="Cancelled", code="cancelled", message=event.reason),
                actor=event.actor,
            )
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
            )
        )
        self.tx.emit("run.submitted", graph_id=ev.graph_id, graph_version=ev.graph_version)
        if self.g.timeout_s is not None:
            self.tx.actions.append(
                ScheduleTimer(timer="run_timeout", due_at=now + self.g.timeout_s)
            )
        if self.topo.start is None:
            self._fail(ErrorInfo(type="InvalidGraph", code="no_start", message="no start node"))
        else:
            self._activate(self.topo.start, trigger=None)
        return None

    # --- tokens and activation ----------------------------------------------------------

    def _tokens(self, node_id: str, delta: int) -> None:
        """Count live tokens run-wide and per loop (a loop with none left is idle)."""
        self.tx.run.tokens += delta
        loop = self.topo.loop_of.get(node_id)
        if loop is not None:
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
            self._tokens(node_id, +1)
            return
        if node.max_visits is not None and rec.visits >= node.max_visits:
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
        else:
            self._enqueue(node)

    def _enqueue(self, node: Node) -> None:
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
            )
        )
        self.tx.emit("node.enqueued", node.id, visit=rec.visits, attempt=rec.attempt, queue=queue)

    def _render(self, node: Node, value: Any) -> Any:
        from graph_core.templates import render

        try:
            return render(value, self.tx)
        except TemplateError as e:
            self._fail(
                ErrorInfo(type="TemplateError", code="template", node_id=node.id, message=str(e))
            )
            return None

    # --- completion and routing ---------------------------------------------------------

    def _complete(self, node_id: str, visit: int, output: Any) -> None:
        rec = self.tx.node(node_id)
        rec.status = NodeStatus.COMPLETED
        rec.finished_at = self.tx.now
        rec.last_ok_visit = visit
        rec.error = None
        self.tx.set_output(node_id, visit, output)
        self.tx.mark_inactive(node_id)
        self._tokens(node_id, -1)
        node = self.g.node(node_id)
        if node.parent is not None:
            self.tx.emit("node.completed", node_id, visit=visit, attempt=rec.attempt)
            self._child_completed(node)
            return
        if node.type == "end":
            self.tx.emit("node.completed", node_id, visit=visit, attempt=rec.attempt)
            self._finish(RunStatus.COMPLETED, output=output)
            return
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
            self._tokens(node_id, -1)
            self._activate(node_id, trigger=rec.trigger)

    def _signal_out(self, source: str, index: int, taken: bool) -> None:
        if index in self.topo.back_edges:
            if taken:
                self.signals.append((index, True))
            return
        if index in self.topo.exit_edges:
            if taken:  # leaving the loop; untaken exits are signalled when the loop idles
                self.tx.loop(self.topo.loop_of[source]).exits_taken.append(index)
                self.signals.append((index, True))
            return
        self.signals.append((index, taken))

    def _skip(self, node_id: str) -> None:
        rec = self.tx.node(node_id)
        if not rec.is_active:
            rec.status = NodeStatus.SKIPPED
        loop = self.topo.loop_of.get(node_id)
        if loop is not None:
            self.tx.loop(loop).touched = True
        self.tx.emit("node.skipped", node_id)
        for ref in self.topo.out_edges[node_id]:
            if ref.index not in self.topo.back_edges and ref.index not in self.topo.exit_edges:
                self.signals.append((ref.index, False))

    # --- signals, joins and loops -------------------------------------------------------

    def _settle(self) -> None:
        while not self.finished:
            while self.signals and not self.finished:
                index, taken = self.signals.popleft()
                self._deliver(index, taken)
            if self.finished or not self._idle_loops():
                break
        run = self.tx.run
        if not self.finished and run.tokens <= 0:
            where = f"; the last branch stopped at {run.last_dead_end!r}, where no edge matched"
            self._fail(
                ErrorInfo(
                    type="NoEndReached",
                    code="no_end_reached",
                    node_id=run.last_dead_end,
                    message="the run went idle without reaching an end node"
                    + (where if run.last_dead_end else ""),
                )
            )

    def _idle_loops(self) -> bool:
        """Signal *dead* on the untaken exits of every loop that went idle. True if any."""
        queued = False
        for loop_id in self.tx.touched_loops():
            rec = self.tx.loop(loop_id)
            if rec.touched and rec.tokens <= 0:
                for index in self.topo.loop_exits.get(loop_id, []):
                    if index not in rec.exits_taken:
                        self.signals.append((index, False))
                        queued = True
                rec.touched = False
                rec.exits_taken = []
        return queued

    def _deliver(self, index: int, taken: bool) -> None:
        edge = self.g.edges[index]
        target = edge.target
        if index in self.topo.back_edges or len(self.topo.join_inputs[target]) <= 1:
            if taken:
                self._activate(target, trigger=edge.source)
            else:
                self._skip(target)
            return
        signals = self.tx.arrivals(target, index)
        rec = self.tx.node(target)
        if not signals:
            rec.edges_ready += 1
            rec.head_taken += 1 if taken else 0
        self.tx.set_arrivals(target, index, signals + ("t" if taken else "d"))
        if taken:
            self._tokens(target, +1)  # parked at the join until its generation completes
        self._try_fire(target, edge.source)

    def _try_fire(self, target: str, source: str) -> None:
        node = self.g.node(target)
        rec = self.tx.node(target)
        inputs = self.topo.join_inputs[target]
        need = join_need(node.join, len(inputs))
        while not self.finished:
            complete = rec.edges_ready == len(inputs)
            if not rec.fired and (rec.head_taken >= need or (complete and rec.head_taken > 0)):
                rec.fired = True
                self._activate(target, trigger=source)
            if not complete:
                return
            if not rec.fired:
                self._skip(target)
            self._next_generation(target, inputs)

    def _next_generation(self, target: str, inputs: list[int]) -> None:
        rec = self.tx.node(target)
        consumed = ready = head_taken = 0
        for index in inputs:
            signals = self.tx.arrivals(target, index)
            if signals[:1] == "t":
                consumed += 1
            signals = signals[1:]
            self.tx.set_arrivals(target, index, signals)
            if signals:
                ready += 1
                head_taken += 1 if signals[0] == "t" else 0
        rec.edges_ready, rec.head_taken, rec.fired = ready, head_taken, False
        self._tokens(target, -consumed)

    # --- parallel -----------------------------------------------------------------------

    def _start_children(self, parent_id: str) -> None:
        prec = self.tx.node(parent_id)
        prec.children_done = prec.children_failed = 0
        for child_id in self.topo.children.get(parent_id, []):
            if not self._take_step(child_id):
                return
            child = self.g.node(child_id)
            rec = self.tx.node(child_id)
            rec.visits += 1
            rec.attempt = 1
            rec.status = NodeStatus.QUEUED
            rec.parent_visit = prec.visits
            rec.started_at, rec.finished_at, rec.error, rec.wait = self.tx.now, None, None, None
            rec.trigger = parent_id
            self._tokens(child_id, +1)
            self.tx.mark_active(child_id, rec.visits)
            if child.type == "human":
                self._wait(child_id, self._render(child, child.config.get("prompt")))
            else:
                self._enqueue(child)

    def _parallel_need(self, parent: Node) -> tuple[int, int]:
        children = self.topo.children.get(parent.id, [])
        spec = parent.config.get("join", parent.join)
        return join_need(spec if spec in ("all", "any") else int(spec), len(children)), len(
            children
        )

    def _child_completed(self, child: Node) -> None:
        parent = self.g.node(child.parent or "")
        prec = self.tx.node(parent.id)
        if not prec.is_active:
            return
        prec.children_done += 1
        need, _ = self._parallel_need(parent)
        if prec.children_done < need:
            return
        output: dict[str, Any] = {}
        for child_id in self.topo.children.get(parent.id, []):
            crec = self.tx.node(child_id)
            if crec.parent_visit != prec.visits:
                continue
            if crec.status == NodeStatus.COMPLETED:
                output[child_id] = self.tx.output_at(child_id, crec.visits)
            elif crec.is_active:
                self._stop_node(child_id)
        self._complete(parent.id, prec.visits, output)

    def _child_failed(self, child: Node, error: ErrorInfo) -> None:
        parent = self.g.node(child.parent or "")
        prec = self.tx.node(parent.id)
        if not prec.is_active:
            return
        prec.children_failed += 1
        need, total = self._parallel_need(parent)
        if total - prec.children_failed < need:
            self._fail(
                error.model_copy(
                    update={
                        "message": f"{error.message} (parallel "
                        f"{parent.id!r} cannot reach its join of {need})"
                    }
                )
            )

    # --- reports, waits and approvals ---------------------------------------------------

    def _reported(self, ev: NodeReported) -> str | None:
        if not self.g.has_node(ev.node_id):
            return f"unknown node {ev.node_id!r}"
        rec = self.tx.peek(ev.node_id)
        if (rec.visits, rec.attempt) != (ev.visit, ev.attempt):
            return (
                f"stale report for {ev.node_id!r} visit {ev.visit} attempt {ev.attempt}: "
                f"the node is at visit {rec.visits} attempt {rec.attempt}"
            )
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

    def _failed(self, node_id: str, error: ErrorInfo) -> None:
        node = self.g.node(node_id)
        rec = self.tx.node(node_id)
        policy = self.g.retry_for(node)
        if rec.attempt < policy.max_attempts and is_retryable(policy, error.type, error.retryable):
            seed = f"{self.tx.run.run_id}:{node_id}:{rec.visits}:{rec.attempt}"
            delay = backoff_delay(policy, rec.attempt, seed)
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
        self._resolve(ev.node_id, ev.decision, ev.data, ev.actor)
        return None

    def _resolve(
        self, node_id: str, decision: str, data: dict[str, Any], actor: str | None
    ) -> None:
        rec = self.tx.node(node_id)
        rec.wait = None
        self.tx.run.waiting -= 1
        self.tx.actions.append(ReleaseWait(node_id=node_id))
        kind = {"approve": "node.approved", "reject": "node.rejected"}.get(
            decision, "node.resolved"
        )
        self.tx.emit(kind, node_id, visit=rec.visits, decision=decision, actor=actor)
        self._complete(node_id, rec.visits, {"decision": decision, "data": data, "actor": actor})

    def _timer(self, ev: TimerFired) -> str | None:
        if ev.timer == "run_timeout":
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
        rec = self.tx.node(node_id)
        rec.wait = None
        self.tx.run.waiting -= 1
        self.tx.actions.append(ReleaseWait(node_id=node_id))
        self.tx.emit("node.escalated", node_id, visit=rec.visits, to=target)
        rec.status = NodeStatus.COMPLETED
        rec.finished_at = self.tx.now
        rec.last_ok_visit = rec.visits
        self.tx.set_output(
            node_id, rec.visits, {"decision": "escalated", "data": {}, "actor": "timeout"}
        )
        self.tx.mark_inactive(node_id)
        self._tokens(node_id, -1)
        self._route(node_id, set())
        if target is not None:
            self._activate(target, trigger=node_id)

    # --- finishing ----------------------------------------------------------------------

    def _fail(self, error: ErrorInfo) -> None:
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
        rec.status = NodeStatus.CANCELLED
        rec.finished_at = self.tx.now
        self.tx.mark_inactive(node_id)
        self._tokens(node_id, -1)
        self.tx.actions.append(CancelNode(node_id=node_id, visit=rec.visits, attempt=rec.attempt))
        self.tx.emit("node.cancelled", node_id, visit=rec.visits, attempt=rec.attempt)
