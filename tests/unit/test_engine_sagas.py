"""Sagas in the transition function: a failing (or cancelled) run with ``on_failure:
"compensate"`` undoes its completed nodes, newest first, one job at a time, each with its
own retries; ``compensated`` or ``compensation_failed``; fencing of late reports, lost
workers, cancel while compensating; and validation."""

from __future__ import annotations

from typing import Any

import pytest

from graph_core.events import (
    CancelRequested,
    EnqueueNode,
    FailRequested,
    LeaseExpired,
    NodeReported,
    ScheduleTimer,
    TimerFired,
)
from graph_core.memory import run_local
from graph_core.model import Compensation, Graph, Node, RetryPolicy
from graph_core.status import NodeStatus, RunStatus
from graph_core.validation import validate
from tests.unit.test_engine_waits import RUN, Driver


def trip(on_failure: str = "compensate", comp_retry: RetryPolicy | None = None) -> Graph:
    """start -> flight -> car -> hotel -> end; flight and car can be undone, hotel fails."""

    def undo(kind: str) -> Compensation:
        return Compensation(type=kind, config={"why": "undo"}, retry=comp_retry)

    g = Graph(id="trip", on_failure=on_failure).add_nodes(  # type: ignore[arg-type]
        Node("start", type="start"),
        Node("flight", type="book", compensate=undo("cancel_flight")),
        Node("car", type="book", compensate=undo("cancel_car")),
        Node("hotel", type="book", compensate=undo("cancel_hotel")),
        Node("end", type="end"),
    )
    return g.connect("start", "flight", "car", "hotel", "end").validate_graph()


def jobs(t: Any) -> list[EnqueueNode]:
    return [a for a in t.actions if isinstance(a, EnqueueNode)]


def fail(d: Driver, node_id: str, retryable: bool = False) -> Any:
    return d.fail(node_id, retryable)


def booked(d: Driver) -> None:
    d.submit({"who": "ada"})
    d.report("flight", {"ticket": "F1"})
    d.report("car", {"car": "C1"})


def history(d: Driver, t: Any) -> list[str]:
    return [f"{h.type}:{h.node_id}" if h.node_id else h.type for h in t.history]


def test_a_failure_undoes_the_completed_nodes_newest_first() -> None:
    d = Driver(trip())
    booked(d)
    t = fail(d, "hotel")
    run = d.mem.run
    assert run is not None and run.status == RunStatus.COMPENSATING
    assert run.error is not None and "hotel broke" in run.error.message
    (job,) = jobs(t)  # one at a time: the car first (it completed last)
    assert (job.node_id, job.compensate) == ("car", True)
    assert job.attempt == 2  # a job id of its own (the node's first attempt was 1)
    assert "run.compensating" in history(d, t) and "node.compensating:car" in history(d, t)
    assert d.mem.nodes["hotel"].status == NodeStatus.FAILED  # never completed: not undone

    t = d.report("car", {"refunded": True})
    assert d.mem.nodes["car"].status == NodeStatus.COMPENSATED
    assert [(j.node_id, j.compensate) for j in jobs(t)] == [("flight", True)]
    t = d.report("flight")
    assert d.mem.nodes["flight"].status == NodeStatus.COMPENSATED
    assert d.mem.run.status == RunStatus.COMPENSATED
    assert "run.compensated" in history(d, t)
    assert d.mem.run.error is not None and "hotel broke" in d.mem.run.error.message
    assert not jobs(t)


def test_without_the_policy_a_failure_just_fails() -> None:
    d = Driver(trip(on_failure="fail"))
    booked(d)
    t = fail(d, "hotel")
    assert d.mem.run is not None and d.mem.run.status == RunStatus.FAILED
    assert not jobs(t)


def test_a_failing_compensation_retries_then_fails_the_saga_naming_the_node() -> None:
    policy = RetryPolicy(max_attempts=2, initial_delay_s=5, backoff="fixed")
    d = Driver(trip(comp_retry=policy))
    booked(d)
    fail(d, "hotel")
    t = fail(d, "car", retryable=True)
    (timer,) = [a for a in t.actions if isinstance(a, ScheduleTimer)]
    assert (timer.timer, timer.node_id, timer.attempt) == ("compensate", "car", 3)
    assert d.mem.run is not None and d.mem.run.status == RunStatus.COMPENSATING
    late = d.send(NodeReported(run_id=RUN, node_id="car", visit=1, attempt=2, status="completed"))
    assert late.ignored is not None and "stale" in late.ignored  # the failed try's report
    t = d.send(TimerFired(run_id=RUN, timer="compensate", node_id="car", visit=1, attempt=3))
    assert [(j.node_id, j.attempt, j.compensate) for j in jobs(t)] == [("car", 3, True)]
    t = fail(d, "car", retryable=True)  # the second and last try
    run = d.mem.run
    assert run.status == RunStatus.COMPENSATION_FAILED
    assert run.error is not None and run.error.code == "compensation_failed"
    assert run.error.node_id == "car" and "car broke" in run.error.message
    assert "node.compensation_failed:car" in history(d, t)
    assert d.mem.nodes["flight"].status == NodeStatus.COMPLETED  # never reached


def test_a_lost_compensation_runs_again_as_a_new_attempt() -> None:
    d = Driver(trip())
    booked(d)
    fail(d, "hotel")
    rec = d.mem.nodes["car"]
    t = d.send(LeaseExpired(run_id=RUN, node_id="car", visit=rec.visits, attempt=rec.attempt))
    assert [(j.node_id, j.attempt, j.compensate) for j in jobs(t)] == [("car", 3, True)]
    assert d.mem.run is not None and d.mem.run.status == RunStatus.COMPENSATING


def test_cancel_with_on_cancel_compensate_and_a_cancel_while_compensating() -> None:
    g = trip().model_copy(update={"on_cancel": "compensate"})
    d = Driver(g)
    booked(d)  # hotel is queued now
    t = d.send(CancelRequested(run_id=RUN, reason="changed plans"))
    assert d.mem.run is not None and d.mem.run.status == RunStatus.COMPENSATING
    assert d.mem.nodes["hotel"].status == NodeStatus.CANCELLED
    assert [j.node_id for j in jobs(t)] == ["car"]
    d.send(CancelRequested(run_id=RUN, reason="stop it all"))
    assert d.mem.run.status == RunStatus.CANCELLED


def test_a_failure_while_compensating_ends_the_saga() -> None:
    d = Driver(trip())
    booked(d)
    fail(d, "hotel")
    d.send(FailRequested(run_id=RUN, reason="poison", code="poison"))
    assert d.mem.run is not None and d.mem.run.status == RunStatus.COMPENSATION_FAILED


def test_a_failure_before_anything_completed_is_compensated_at_once() -> None:
    d = Driver(trip())
    d.submit()
    t = fail(d, "flight")
    assert d.mem.run is not None and d.mem.run.status == RunStatus.COMPENSATED
    assert not jobs(t)


def test_run_local_runs_the_saga_in_order() -> None:
    calls: list[str] = []

    def book(nid: str, config: dict[str, Any], ctx: dict[str, Any]) -> Any:
        if nid == "hotel":
            raise RuntimeError("no rooms")
        return {"booked": nid}

    def undo(nid: str, config: dict[str, Any], ctx: dict[str, Any]) -> Any:
        calls.append(nid)
        return {"undone": nid}

    handlers = {"book": book, "cancel_flight": undo, "cancel_car": undo, "cancel_hotel": undo}
    result = run_local(trip(), handlers)
    assert result.run.status == RunStatus.COMPENSATED
    assert calls == ["car", "flight"]


@pytest.mark.parametrize("node_type", ["start", "human", "delay"])
def test_only_worker_nodes_can_be_compensated(node_type: str) -> None:
    doc = trip().to_dict()
    doc["nodes"].insert(1, {"id": "x", "type": node_type, "compensate": {"type": "undo"}})
    doc["edges"] = [{"source": "start", "target": "x"}, {"source": "x", "target": "flight"}] + [
        e for e in doc["edges"] if e["source"] != "start"
    ]
    codes = {(p.code, p.path) for p in validate(doc)}
    assert ("bad_compensation", "nodes[1].compensate") in codes, codes
