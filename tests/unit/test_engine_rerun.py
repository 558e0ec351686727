"""Re-running a finished run from a node (graph_core.retries): that node and everything
downstream start afresh with new visit numbers, upstream is kept, joins that also wait on
kept nodes get their signals again; refused for a running run and unknown or child nodes."""

from __future__ import annotations

from typing import Any

from graph_core.conditions import Condition as C
from graph_core.events import (
    EnqueueNode,
    NodeReported,
    ReopenRun,
    RerunRequested,
    TimerFired,
)
from graph_core.model import Edge, Graph, Node
from graph_core.status import NodeStatus, RunStatus
from tests.unit.test_engine_waits import RUN, Driver


def diamond() -> Graph:
    """start -> a -> (b, c) -> join -> end."""
    g = Graph(id="d").add_nodes(
        Node("start", type="start"),
        Node("a", type="work", fan_out=True),
        Node("b", type="work"),
        Node("c", type="work"),
        Node("join", type="work"),
        Node("end", type="end"),
    )
    g.connect("start", "a").connect("a", "b", "join").connect("a", "c", "join")
    return g.connect("join", "end").validate_graph()


def rerun(d: Driver, node: str, **kw: Any) -> Any:
    return d.send(RerunRequested(run_id=RUN, from_node=node, actor="ops", **kw))


def finish_diamond(d: Driver) -> None:
    d.submit()
    d.report("a", {"a": 1})
    d.report("b", {"b": 1})
    d.report("c", {"c": 1})
    d.report("join", {"j": 1})
    assert d.mem.run is not None and d.mem.run.status == RunStatus.COMPLETED


def started(t: Any) -> list[str]:
    return sorted(a.node_id for a in t.actions if isinstance(a, EnqueueNode))


def test_rerun_from_a_middle_node_runs_exactly_the_nodes_from_there_on() -> None:
    d = Driver(diamond())
    finish_diamond(d)
    t = rerun(d, "b")
    run = d.mem.run
    assert run is not None and run.status == RunStatus.RUNNING and run.output is None
    assert any(isinstance(a, ReopenRun) for a in t.actions)
    assert started(t) == ["b"]  # the join waits for c's kept signal and b's new one
    assert t.history[0].type == "run.rerun"
    assert t.history[0].data["nodes"] == ["b", "end", "join"]
    assert d.mem.nodes["b"].visits == 2  # visits go on: visit 1's late report stays stale
    assert d.mem.nodes["c"].status == NodeStatus.COMPLETED  # upstream of nothing: kept
    stale = d.send(NodeReported(run_id=RUN, node_id="b", visit=1, attempt=1, status="completed"))
    assert stale.ignored is not None
    t2 = d.report("b", {"b": 2})
    assert started(t2) == ["join"]
    d.report("join", {"j": 2})
    assert d.mem.run.status == RunStatus.COMPLETED
    assert d.mem.outputs[("b", 1)] == {"b": 1} and d.mem.outputs[("b", 2)] == {"b": 2}


def test_rerun_from_the_top_with_a_new_input_runs_everything_again() -> None:
    d = Driver(diamond())
    finish_diamond(d)
    t = rerun(d, "a", input={"new": True}, new_input=True)
    assert started(t) == ["a"]
    assert d.mem.run is not None and d.mem.run.input == {"new": True}
    t = d.report("a", {"a": 2})
    assert started(t) == ["b", "c"]


def test_a_failed_or_cancelled_run_can_be_rerun_but_not_a_running_one() -> None:
    d = Driver(diamond())
    d.submit()
    running = rerun(d, "a")
    assert running.ignored is not None and "is running" in running.ignored
    d.report("a")
    d.fail("b", retryable=False)
    assert d.mem.run is not None and d.mem.run.status == RunStatus.FAILED
    t = rerun(d, "b")
    assert t.ignored is None and started(t) == ["b", "c"]  # c was cancelled: it runs too


def test_rerun_names_an_unknown_node_and_refuses_a_parallel_child() -> None:
    d = Driver(diamond())
    finish_diamond(d)
    unknown = rerun(d, "nope")
    assert unknown.ignored is not None and "no node 'nope'" in unknown.ignored
    g = Graph(id="p").add_nodes(
        Node("start", type="start"),
        Node("par", type="parallel"),
        Node("x", type="work", parent="par"),
        Node("end", type="end"),
    )
    g.connect("start", "par", "end").validate_graph()
    p = Driver(g)
    p.submit()
    p.report("x")
    child = rerun(p, "x")
    assert child.ignored is not None and "re-run from the parallel node" in child.ignored


def test_a_loop_reruns_with_max_visits_counted_from_the_rerun() -> None:
    g = Graph(id="loop").add_nodes(
        Node("start", type="start"),
        Node("step", type="work", max_visits=2),
        Node("end", type="end"),
    )
    g.add_edges(
        Edge("start", "step"),
        Edge("step", "step", condition=C.field("step.output.again").eq(True)),
        Edge("step", "end", condition=C.otherwise()),
    )
    d = Driver(g.validate_graph())
    d.submit()
    d.report("step", {"again": True})
    d.report("step", {"again": False})
    assert d.mem.run is not None and d.mem.run.status == RunStatus.COMPLETED
    rerun(d, "step")
    d.report("step", {"again": True})  # the 2nd visit since the rerun: allowed
    assert d.mem.run.status == RunStatus.RUNNING
    d.report("step", {"again": False})
    assert d.mem.run.status == RunStatus.COMPLETED


def test_rerun_from_the_failed_node_restarts_the_sibling_its_failure_cancelled() -> None:
    d = Driver(diamond())
    d.submit()
    d.report("a")
    d.fail("b", retryable=False)  # c, still running, is cancelled with the run
    assert d.mem.nodes["c"].status == NodeStatus.CANCELLED
    t = rerun(d, "b")
    assert started(t) == ["b", "c"]  # the join needs c's signal: c runs again too
    d.report("b")
    d.report("c")
    d.report("join")
    assert d.mem.run is not None and d.mem.run.status == RunStatus.COMPLETED


def test_a_rerun_gets_its_own_run_timeout() -> None:
    g = diamond().model_copy(update={"timeout_s": 100.0})
    d = Driver(g)
    finish_diamond(d)
    first_deadline = d.mem.run.deadline if d.mem.run else None
    assert first_deadline is not None
    t = rerun(d, "b")
    timers = [a for a in t.actions if getattr(a, "timer", None) == "run_timeout"]
    assert len(timers) == 1 and timers[0].due_at > first_deadline
    stale = d.send(TimerFired(run_id=RUN, timer="run_timeout"))  # the first run's timer
    assert stale.ignored is not None and "earlier run timeout" in stale.ignored
    assert d.mem.run is not None and d.mem.run.status == RunStatus.RUNNING
