"""Pausing and resuming a run in the transition function: nothing new is enqueued while
paused (held nodes), running nodes finish and their results are kept, timers that fall due
are held and fire on resume, a run timeout due while paused fails the run at resume; only a
running run can be paused, only a paused one resumed."""

from __future__ import annotations

from typing import Any

import pytest

from graph_core.events import (
    CancelRequested,
    EnqueueNode,
    ErrorInfo,
    NodeReported,
    PauseRequested,
    ResumeRequested,
    ScheduleTimer,
    TimerFired,
)
from graph_core.model import Graph, Node, RetryPolicy, WaitPolicy
from graph_core.status import NodeStatus, RunStatus
from tests.unit.test_engine_waits import RUN, Driver


def chain(**graph: Any) -> Graph:
    g = Graph(id="c", **graph).add_nodes(
        Node("start", type="start"),
        Node("a", type="work", retry=RetryPolicy(max_attempts=2, initial_delay_s=1)),
        Node("b", type="work"),
        Node("end", type="end"),
    )
    return g.connect("start", "a", "b", "end").validate_graph()


def jobs(t: Any) -> list[str]:
    return [a.node_id for a in t.actions if isinstance(a, EnqueueNode)]


def pause(d: Driver) -> Any:
    return d.send(PauseRequested(run_id=RUN, actor="ops"))


def resume(d: Driver) -> Any:
    return d.send(ResumeRequested(run_id=RUN, actor="ops"))


def status(d: Driver) -> RunStatus:
    assert d.mem.run is not None
    return d.mem.run.status


def test_a_paused_run_finishes_what_runs_and_starts_nothing_new() -> None:
    d = Driver(chain())
    d.submit()
    t = pause(d)
    assert status(d) == RunStatus.PAUSED and [h.type for h in t.history] == ["run.paused"]
    t = d.report("a", {"x": 1})  # a was running: its result is kept
    assert d.mem.outputs[("a", 1)] == {"x": 1}
    assert jobs(t) == [] and d.mem.nodes["b"].status == NodeStatus.HELD
    assert status(d) == RunStatus.PAUSED
    again = pause(d)
    assert again.ignored is not None and "paused" in again.ignored

    t = resume(d)
    assert jobs(t) == ["b"] and d.mem.nodes["b"].status == NodeStatus.QUEUED
    assert status(d) == RunStatus.RUNNING
    d.report("b")
    assert status(d) == RunStatus.COMPLETED
    late = resume(d)
    assert late.ignored is not None and "completed" in late.ignored


def test_a_retry_due_while_paused_waits_for_resume() -> None:
    d = Driver(chain())
    d.submit()
    rec = d.mem.nodes["a"]
    d.send(
        NodeReported(
            run_id=RUN,
            node_id="a",
            visit=rec.visits,
            attempt=rec.attempt,
            status="failed",
            error=ErrorInfo(type="Flaky", message="try again"),
        )
    )
    pause(d)
    t = d.send(TimerFired(run_id=RUN, timer="retry", node_id="a", visit=1, attempt=2))
    assert jobs(t) == [] and d.mem.nodes["a"].held_timer == "retry"
    assert d.mem.nodes["a"].status == NodeStatus.RETRY_SCHEDULED
    t = resume(d)
    assert [(a.node_id, a.attempt) for a in t.actions if isinstance(a, EnqueueNode)] == [("a", 2)]
    assert d.mem.nodes["a"].held_timer is None


def test_a_wait_timeout_due_while_paused_acts_on_resume() -> None:
    g = Graph(id="w").add_nodes(
        Node("start", type="start"),
        Node("review", type="human", wait=WaitPolicy(timeout_s=5, on_timeout="approve")),
        Node("end", type="end"),
    )
    d = Driver(g.connect("start", "review", "end").validate_graph())
    d.submit()
    pause(d)
    t = d.send(TimerFired(run_id=RUN, timer="wait_timeout", node_id="review", visit=1))
    assert t.ignored is None and d.mem.nodes["review"].status == NodeStatus.WAITING
    resume(d)
    assert status(d) == RunStatus.COMPLETED
    assert d.mem.outputs[("review", 1)]["actor"] == "timeout"


def test_a_run_timeout_due_while_paused_fails_the_run_at_resume() -> None:
    d = Driver(chain(timeout_s=10))
    d.submit()
    pause(d)
    held = d.send(TimerFired(run_id=RUN, timer="run_timeout"), at=d.now + 11)
    assert held.ignored is not None and status(d) == RunStatus.PAUSED
    resume(d)
    assert status(d) == RunStatus.FAILED
    assert d.mem.run is not None and d.mem.run.error is not None
    assert d.mem.run.error.code == "run_timeout"


@pytest.mark.parametrize("finish", ["cancel", "complete"])
def test_only_a_running_run_pauses(finish: str) -> None:
    d = Driver(chain())
    d.submit()
    if finish == "cancel":
        d.send(CancelRequested(run_id=RUN))
    else:
        d.report("a")
        d.report("b")
    t = pause(d)
    assert t.ignored is not None and status(d) in (RunStatus.CANCELLED, RunStatus.COMPLETED)


def test_cancel_while_paused_stops_the_held_nodes() -> None:
    d = Driver(chain())
    d.submit()
    pause(d)
    d.report("a")
    d.send(CancelRequested(run_id=RUN, reason="stop"))
    assert status(d) == RunStatus.CANCELLED
    assert d.mem.nodes["b"].status == NodeStatus.CANCELLED


def test_timers_scheduled_while_paused_are_ordinary_timers() -> None:
    d = Driver(chain())
    d.submit()
    pause(d)
    rec = d.mem.nodes["a"]
    t = d.send(
        NodeReported(
            run_id=RUN,
            node_id="a",
            visit=rec.visits,
            attempt=rec.attempt,
            status="failed",
            error=ErrorInfo(type="Flaky", message="try again"),
        )
    )
    assert [a.timer for a in t.actions if isinstance(a, ScheduleTimer)] == ["retry"]
