"""Retrying a failed run: it goes on from its failed (and stopped) nodes as new visits,
keeps every completed output, starts no completed node; refused for a run that is not
failed, for a failure that named no node, and inside a parallel node."""

from __future__ import annotations

from typing import Any

from graph_core.conditions import Condition as C
from graph_core.events import (
    CancelRequested,
    EnqueueNode,
    ReopenRun,
    RetryRequested,
    TimerFired,
)
from graph_core.model import Edge, Graph, Node
from graph_core.status import NodeStatus, RunStatus
from tests.unit.test_engine_waits import RUN, Driver


def branches() -> Graph:
    """start -> a -> (b, c) -> join -> end: b fails while c runs."""
    g = Graph(id="r", timeout_s=100).add_nodes(
        Node("start", type="start"),
        Node("a", type="work", fan_out=True),
        Node("b", type="work"),
        Node("c", type="work"),
        Node("join", type="work"),
        Node("end", type="end"),
    )
    g.connect("start", "a").connect("a", "b", "join").connect("a", "c", "join")
    return g.connect("join", "end").validate_graph()


def fail(d: Driver, node_id: str, retryable: bool = False) -> Any:
    return d.fail(node_id, retryable)


def retry(d: Driver) -> Any:
    return d.send(RetryRequested(run_id=RUN, actor="ops"))


def test_a_retry_goes_on_from_the_failed_and_stopped_nodes() -> None:
    d = Driver(branches())
    d.submit()
    d.report("a", {"a": 1})
    fail(d, "b")  # the run fails; c, still running, is stopped
    assert d.mem.run is not None and d.mem.run.status == RunStatus.FAILED
    assert d.mem.nodes["c"].status == NodeStatus.CANCELLED
    t = retry(d)
    assert d.mem.run.status == RunStatus.RUNNING and d.mem.run.error is None
    assert any(isinstance(a, ReopenRun) for a in t.actions)
    started = sorted(a.node_id for a in t.actions if isinstance(a, EnqueueNode))
    assert started == ["b", "c"]  # a completed: it does not run again
    assert (d.mem.nodes["b"].visits, d.mem.nodes["a"].visits) == (2, 1)
    assert d.mem.outputs[("a", 1)] == {"a": 1}
    assert t.history[0].type == "run.retried"
    d.report("b")
    d.report("c")
    d.report("join")
    assert d.mem.run.status == RunStatus.COMPLETED


def test_only_a_failed_run_is_retried() -> None:
    d = Driver(branches())
    d.submit()
    running = retry(d)
    assert running.ignored is not None and "only a failed run" in running.ignored
    d.send(CancelRequested(run_id=RUN))
    cancelled = retry(d)
    assert cancelled.ignored is not None and "cancelled" in cancelled.ignored


def test_a_run_timeout_stopped_nodes_go_on_and_a_dead_end_has_nothing_to_retry() -> None:
    d = Driver(branches())
    d.submit()
    d.report("a")
    d.send(TimerFired(run_id=RUN, timer="run_timeout"))
    assert d.mem.run is not None and d.mem.run.status == RunStatus.FAILED
    t = retry(d)  # the timeout stopped b and c: they go on
    assert t.ignored is None
    assert sorted(a.node_id for a in t.actions if isinstance(a, EnqueueNode)) == ["b", "c"]

    g = Graph(id="dead").add_nodes(
        Node("start", type="start"), Node("a", type="work"), Node("end", type="end")
    )
    g.connect("start", "a").add_edges(Edge("a", "end", condition=C.field("a.output.ok").eq(True)))
    dead = Driver(g.validate_graph())
    dead.submit()
    dead.report("a", {"ok": False})  # no edge matches: the run goes idle without an end
    assert dead.mem.run is not None and dead.mem.run.status == RunStatus.FAILED
    nothing = dead.send(RetryRequested(run_id=RUN))
    assert nothing.ignored is not None and "nothing to retry" in nothing.ignored


def test_a_failure_inside_a_parallel_node_is_refused() -> None:
    g = Graph(id="p").add_nodes(
        Node("start", type="start"),
        Node("fan", type="parallel"),
        Node("x", type="work", parent="fan"),
        Node("y", type="work", parent="fan"),
        Node("end", type="end"),
    )
    d = Driver(g.connect("start", "fan", "end").validate_graph())
    d.submit()
    fail(d, "x")
    assert d.mem.run is not None and d.mem.run.status == RunStatus.FAILED
    t = retry(d)
    assert t.ignored is not None and "parallel" in t.ignored


def test_a_retry_makes_the_apply_persist_the_runs_keys() -> None:
    import orjson

    from dispatcher.changes import pack_changes
    from graph_core.keys import Keys

    d = Driver(branches())
    d.submit()
    d.report("a")
    fail(d, "b")
    t = retry(d)
    assert d.mem.run is not None
    packed = orjson.loads(pack_changes(Keys(), t, d.mem.run, 0, None, 3600, []))
    assert packed[22] == "1"  # apply.lua: PERSIST the run's keys (their retention was set)
    plain = orjson.loads(pack_changes(Keys(), d.report("c"), d.mem.run, 0, None, 3600, []))
    assert plain[22] == ""
