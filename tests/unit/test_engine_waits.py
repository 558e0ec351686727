"""The transition function, driven event by event with ``advance`` and a ``MemoryRun``: human
waits, approvals and their fencing (token, duplicates, late), wait timeouts (approve / reject
/ fail / escalate), stale timers, waiting handlers."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from graph_core.conditions import Condition
from graph_core.engine import Env, advance
from graph_core.events import (
    ApprovalReceived,
    CancelNode,
    CancelRequested,
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
from graph_core.memory import MemoryRun, view_of
from graph_core.model import Edge, Graph, Node, WaitPolicy
from graph_core.state import Transition
from graph_core.status import NodeStatus, RunStatus

C = Condition
RUN = "r1"


class Driver:
    """Feeds events to ``advance`` one at a time and applies each transition."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.mem = MemoryRun()
        self.now = 1000.0
        self._tokens = (f"tok-{i}" for i in itertools.count(1))

    def send(self, event: Event, at: float | None = None) -> Transition:
        self.now = at if at is not None else self.now + 1
        t = advance(self.graph, view_of(self.mem), event, Env(self.now, lambda: next(self._tokens)))
        self.mem.apply(t)
        return t

    def submit(self, input: Any = None) -> Transition:
        return self.send(
            RunSubmitted(run_id=RUN, graph_id=self.graph.id, graph_version=1, input=input)
        )

    def report(self, node_id: str, output: Any = None, status: str = "completed") -> Transition:
        rec = self.mem.nodes[node_id]
        return self.send(
            NodeReported(
                run_id=RUN,
                node_id=node_id,
                visit=rec.visits,
                attempt=rec.attempt,
                status=status,
                output=output,
            )
        )

    def fail(self, node_id: str, retryable: bool = False, message: str | None = None) -> Transition:
        """The node's current attempt reports a failure (``Boom``)."""
        rec = self.mem.nodes[node_id]
        error = ErrorInfo(type="Boom", message=message or f"{node_id} broke", retryable=retryable)
        return self.send(
            NodeReported(
                run_id=RUN,
                node_id=node_id,
                visit=rec.visits,
                attempt=rec.attempt,
                status="failed",
                error=error,
            )
        )

    def approve(
        self,
        node_id: str,
        decision: str = "approve",
        token: str | None = "<current>",
        data: dict[str, Any] | None = None,
        actor: str | None = "alice",
    ) -> Transition:
        if token == "<current>":
            wait = self.mem.nodes[node_id].wait
            assert wait is not None
            token = wait.token
        return self.send(
            ApprovalReceived(
                run_id=RUN,
                node_id=node_id,
                decision=decision,
                data=data or {},
                actor=actor,
                token=token,
            )
        )

    def node(self, node_id: str) -> Any:
        return self.mem.nodes[node_id]

    @property
    def run(self) -> Any:
        assert self.mem.run is not None
        return self.mem.run

    def snapshot(self) -> Any:
        m = self.mem
        return (
            m.run.model_dump() if m.run else None,
            {k: v.model_dump() for k, v in m.nodes.items()},
            dict(m.outputs),
            dict(m.joins),
            {k: v.model_dump() for k, v in m.loops.items()},
            dict(m.active),
        )


def approval_graph(wait: WaitPolicy | None = None) -> Graph:
    g = Graph(id="approval")
    g.add_nodes(
        Node("start", type="start"),
        Node("prep", type="task"),
        Node("gate", type="human", config={"prompt": "ship {{prep.output.ver}}?"}, wait=wait),
        Node("ship", type="task"),
        Node("end", type="end"),
    )
    g.add_edges(
        Edge("start", "prep"),
        Edge("prep", "gate"),
        Edge("gate", "ship", condition=C.field("gate.output.decision").eq("approve")),
        Edge("ship", "end"),
    )
    return g.validate_graph()


def at_gate(wait: WaitPolicy | None = None) -> tuple[Driver, Transition]:
    d = Driver(approval_graph(wait))
    d.submit({"who": "me"})
    t = d.report("prep", {"ver": "1.2"})
    return d, t


def test_human_node_pauses_with_a_token_and_a_rendered_prompt() -> None:
    d, t = at_gate()
    pauses = [a for a in t.actions if isinstance(a, PauseForApproval)]
    assert len(pauses) == 1
    token = pauses[0].token
    assert pauses[0].node_id == "gate" and pauses[0].visit == 1
    assert token == "tok-1"
    gate = d.node("gate")
    assert gate.status == NodeStatus.WAITING
    assert gate.wait.token == token
    assert gate.wait.prompt == "ship 1.2?"
    assert d.run.status == RunStatus.WAITING
    assert d.run.waiting == 1
    waiting = [h for h in t.history if h.type == "node.waiting"]
    assert waiting[0].data["prompt"] == "ship 1.2?"
    assert not [a for a in t.actions if isinstance(a, ScheduleTimer)]  # no wait policy


def test_approval_with_the_right_token_completes_with_decision_data_actor() -> None:
    d, _ = at_gate()
    t = d.approve("gate", data={"note": "lgtm"})
    assert t.ignored is None
    assert d.mem.outputs[("gate", 1)] == {
        "decision": "approve",
        "data": {"note": "lgtm"},
        "actor": "alice",
    }
    gate = d.node("gate")
    assert gate.status == NodeStatus.COMPLETED
    assert gate.wait is None
    assert d.run.status == RunStatus.RUNNING
    assert d.run.waiting == 0
    assert ReleaseWait(node_id="gate") in t.actions
    assert [a.node_id for a in t.actions if hasattr(a, "node_id") and a.action == "enqueue"] == [
        "ship"
    ]
    approved = next(h for h in t.history if h.type == "node.approved")
    assert approved.data == {"decision": "approve", "actor": "alice"}
    d.report("ship", {"shipped": True})
    assert d.run.status == RunStatus.COMPLETED
    assert d.run.output == {"shipped": True}


def test_rejection_routes_by_decision() -> None:
    d, _ = at_gate()
    d.approve("gate", decision="reject", data={"why": "no"})
    # no edge matches "reject" and there is no default: the run ends with no_end_reached
    assert d.run.status == RunStatus.FAILED
    assert d.run.error.code == "no_end_reached"
    assert d.run.error.node_id == "gate"
    assert d.node("ship").status == NodeStatus.SKIPPED


@pytest.mark.parametrize(
    ("token", "reason_part"),
    [
        ("tok-999", "wrong token"),
        (None, "no token"),
        ("", "no token"),
        ("tok-1x", "wrong token"),
    ],
)
def test_approval_with_a_bad_token_is_ignored_and_changes_nothing(
    token: str | None, reason_part: str
) -> None:
    d, _ = at_gate()
    before = d.snapshot()
    t = d.approve("gate", token=token)
    assert t.ignored is not None and reason_part in t.ignored
    assert "gate" in t.ignored
    assert t.actions == [] and t.history == [] and t.run is None
    assert d.snapshot() == before
    assert d.node("gate").status == NodeStatus.WAITING


def test_duplicate_approval_after_the_first_is_ignored() -> None:
    d, _ = at_gate()
    token = d.node("gate").wait.token
    first = d.approve("gate", token=token)
    assert first.ignored is None
    before = d.snapshot()
    second = d.approve("gate", decision="reject", token=token, actor="mallory")
    assert second.ignored is not None
    assert "not waiting" in second.ignored
    assert d.snapshot() == before
    assert d.mem.outputs[("gate", 1)]["decision"] == "approve"


def test_approval_for_a_node_that_is_not_waiting_is_ignored() -> None:
    d = Driver(approval_graph())
    d.submit()
    before = d.snapshot()
    t = d.approve("prep", token="tok-1")  # prep is queued on a worker, not waiting
    assert t.ignored is not None and "prep" in t.ignored and "not waiting" in t.ignored
    assert d.snapshot() == before
    t = d.approve("gate", token="tok-1")  # gate was never reached
    assert t.ignored is not None and "not waiting" in t.ignored
    t = d.approve("nope", token="tok-1")
    assert t.ignored is not None and "unknown node" in t.ignored
    assert d.snapshot() == before


def test_approval_for_an_unknown_run_is_ignored() -> None:
    d = Driver(approval_graph())
    t = d.send(ApprovalReceived(run_id=RUN, node_id="gate", decision="approve", token="x"))
    assert t.ignored is not None and "unknown run" in t.ignored
    assert d.mem.run is None


# --- wait timeouts --------------------------------------------------------------------------


def timer_of(t: Transition) -> ScheduleTimer:
    timers = [a for a in t.actions if isinstance(a, ScheduleTimer) and a.timer == "wait_timeout"]
    assert len(timers) == 1
    return timers[0]


def fire(d: Driver, timer: ScheduleTimer, visit: int | None = None) -> Transition:
    return d.send(
        TimerFired(
            run_id=RUN,
            timer=timer.timer,
            node_id=timer.node_id,
            visit=timer.visit if visit is None else visit,
            attempt=timer.attempt,
        ),
        at=timer.due_at,
    )


def test_wait_timer_is_scheduled_at_now_plus_timeout() -> None:
    d, t = at_gate(WaitPolicy(timeout_s=60, on_timeout="fail"))
    timer = timer_of(t)
    assert timer.node_id == "gate" and timer.visit == 1
    assert timer.due_at == d.now + 60


@pytest.mark.parametrize("decision", ["approve", "reject"])
def test_wait_timeout_resolves_with_the_policy_decision(decision: str) -> None:
    d, t = at_gate(WaitPolicy(timeout_s=60, on_timeout=decision))
    out = fire(d, timer_of(t))
    assert out.ignored is None
    assert d.mem.outputs[("gate", 1)] == {
        "decision": decision,
        "data": {"timed_out": True},
        "actor": "timeout",
    }
    assert ReleaseWait(node_id="gate") in out.actions
    assert d.node("gate").status == NodeStatus.COMPLETED
    if decision == "approve":
        assert d.node("ship").status == NodeStatus.QUEUED
        assert d.run.status == RunStatus.RUNNING
    else:
        assert d.node("ship").status == NodeStatus.SKIPPED
        assert d.run.status == RunStatus.FAILED and d.run.error.code == "no_end_reached"


def test_wait_timeout_fail_fails_the_run_and_releases_the_wait() -> None:
    d, t = at_gate(WaitPolicy(timeout_s=5, on_timeout="fail"))
    out = fire(d, timer_of(t))
    assert d.run.status == RunStatus.FAILED
    assert d.run.error.code == "wait_timeout"
    assert d.run.error.node_id == "gate"
    assert d.node("gate").status == NodeStatus.CANCELLED
    assert ReleaseWait(node_id="gate") in out.actions
    assert FinishRun(status="failed") in out.actions
    assert d.run.waiting == 0


def test_wait_timer_after_the_approval_is_ignored() -> None:
    d, t = at_gate(WaitPolicy(timeout_s=5, on_timeout="reject"))
    timer = timer_of(t)
    d.approve("gate")
    before = d.snapshot()
    out = fire(d, timer)
    assert out.ignored is not None and "stale wait timer" in out.ignored
    assert d.snapshot() == before
    assert d.mem.outputs[("gate", 1)]["decision"] == "approve"


def test_stale_wait_timer_for_another_visit_is_ignored() -> None:
    d, t = at_gate(WaitPolicy(timeout_s=5, on_timeout="fail"))
    before = d.snapshot()
    out = fire(d, timer_of(t), visit=2)
    assert out.ignored is not None and "stale" in out.ignored
    assert d.snapshot() == before
    assert d.node("gate").status == NodeStatus.WAITING


def test_wait_timeout_escalates_to_another_node() -> None:
    g = Graph(id="escalate")
    g.add_nodes(
        Node("start", type="start"),
        Node(
            "gate",
            type="human",
            wait=WaitPolicy(timeout_s=5, on_timeout="escalate", escalate_to="manager"),
        ),
        Node("ship", type="task"),
        Node("manager", type="task"),
        Node("end", type="end"),
    )
    g.add_edges(
        Edge("start", "gate"),
        Edge("gate", "ship", condition=C.field("gate.output.decision").eq("approve")),
        Edge("gate", "manager", condition=C.otherwise()),
        Edge("ship", "end"),
        Edge("manager", "end"),
    )
    g.validate_graph()
    d = Driver(g)
    t = d.submit()
    out = fire(d, timer_of(t))
    assert out.ignored is None
    assert d.mem.outputs[("gate", 1)] == {
        "decision": "escalated",
        "data": {},
        "actor": "timeout",
    }
    assert d.node("manager").status == NodeStatus.QUEUED
    assert d.node("manager").visits == 1
    assert d.node("ship").status == NodeStatus.SKIPPED
    assert any(h.type == "node.escalated" for h in out.history)
    d.report("manager", {"handled": "bob"})
    assert d.run.status == RunStatus.COMPLETED
    assert d.run.output == {"handled": "bob"}
    assert d.node("manager").visits == 1


# --- waiting handlers -------------------------------------------------------------------------


def test_handler_reporting_waiting_pauses_and_an_approval_resumes() -> None:
    g = Graph(id="handler-wait")
    g.add_nodes(Node("start", type="start"), Node("job", type="task"), Node("end", type="end"))
    g.connect("start", "job", "end")
    g.validate_graph()
    d = Driver(g)
    d.submit()
    t = d.report("job", {"question": "which?"}, status="waiting")
    assert d.node("job").status == NodeStatus.WAITING
    assert d.node("job").wait.prompt == {"question": "which?"}
    assert [a.node_id for a in t.actions if isinstance(a, PauseForApproval)] == ["job"]
    assert d.run.status == RunStatus.WAITING
    dup = d.report("job", {"question": "which?"}, status="waiting")
    assert dup.ignored is not None
    late = d.report("job", {"done": 1})  # a completion report while waiting: ignored
    assert late.ignored is not None and "waiting" in late.ignored
    d.approve("job", data={"pick": "b"}, actor="carol")
    assert d.run.status == RunStatus.COMPLETED
    assert d.run.output == {"decision": "approve", "data": {"pick": "b"}, "actor": "carol"}


def test_human_in_a_loop_gets_a_new_token_each_visit_and_old_tokens_are_refused() -> None:
    g = Graph(id="loop-wait")
    g.add_nodes(
        Node("start", type="start"),
        Node("gate", type="human", max_visits=5),
        Node("fix", type="task"),
        Node("end", type="end"),
    )
    g.add_edges(
        Edge("start", "gate"),
        Edge("gate", "end", condition=C.field("gate.output.decision").eq("approve")),
        Edge("gate", "fix", condition=C.otherwise()),
        Edge("fix", "gate"),
    )
    g.validate_graph()
    d = Driver(g)
    d.submit()
    old = d.node("gate").wait.token
    d.approve("gate", decision="reject")
    d.report("fix", "fixed")
    assert d.node("gate").visits == 2
    new = d.node("gate").wait.token
    assert new != old
    before = d.snapshot()
    t = d.approve("gate", token=old)
    assert t.ignored is not None and "wrong token" in t.ignored
    assert d.snapshot() == before
    d.approve("gate", token=new)
    assert d.run.status == RunStatus.COMPLETED


def test_cancel_releases_waits_and_cancels_running_nodes() -> None:
    g = Graph(id="cancel")
    g.add_nodes(
        Node("start", type="start", fan_out=True),
        Node("work", type="task"),
        Node("gate", type="human"),
        Node("end", type="end"),
    )
    g.add_edges(
        Edge("start", "work"), Edge("start", "gate"), Edge("work", "end"), Edge("gate", "end")
    )
    g.validate_graph()
    d = Driver(g)
    d.submit()
    assert d.node("work").status == NodeStatus.QUEUED
    assert d.node("gate").status == NodeStatus.WAITING
    t = d.send(CancelRequested(run_id=RUN, reason="user asked", actor="ops"))
    assert t.ignored is None
    assert d.run.status == RunStatus.CANCELLED
    assert d.run.error.code == "cancelled"
    assert d.run.error.message == "user asked"
    assert d.node("work").status == NodeStatus.CANCELLED
    assert d.node("gate").status == NodeStatus.CANCELLED
    assert CancelNode(node_id="work", visit=1, attempt=1) in t.actions
    assert CancelNode(node_id="gate", visit=1, attempt=1) in t.actions
    assert ReleaseWait(node_id="gate") in t.actions
    assert FinishRun(status="cancelled") in t.actions
    assert d.run.waiting == 0
    assert d.mem.active == {}
    cancelled = next(h for h in t.history if h.type == "run.cancelled")
    assert cancelled.data["actor"] == "ops"
    before = d.snapshot()
    late = d.send(NodeReported(run_id=RUN, node_id="work", visit=1, attempt=1, status="completed"))
    assert late.ignored is not None and "cancelled" in late.ignored
    late = d.approve("gate", token="tok-1")
    assert late.ignored is not None and "cancelled" in late.ignored
    again = d.send(CancelRequested(run_id=RUN))
    assert again.ignored is not None
    assert d.snapshot() == before
