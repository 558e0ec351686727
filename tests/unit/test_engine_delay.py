"""``delay`` nodes in the transition function: a durable timer, no job, completion when the
timer fires (once), the trigger's output passed on, ``until`` timestamps, bad configs,
cancelling drops the timer; and their validation."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from graph_core.delays import delay_due
from graph_core.errors import GraphValidationError
from graph_core.events import (
    CancelRequested,
    DropTimer,
    EnqueueNode,
    ScheduleTimer,
    TimerFired,
)
from graph_core.memory import run_local
from graph_core.model import Graph, Node
from graph_core.status import NodeStatus, RunStatus
from graph_core.validation import validate
from tests.unit.test_engine_waits import RUN, Driver


def delay_graph(config: dict[str, Any]) -> Graph:
    """start -> work -> pause (delay) -> after -> end."""
    g = Graph(id="d").add_nodes(
        Node("start", type="start"),
        Node("work", type="agent"),
        Node("pause", type="delay", config=config),
        Node("after", type="agent"),
        Node("end", type="end"),
    )
    return g.connect("start", "work", "pause", "after", "end").validate_graph()


def timers(t: Any) -> list[ScheduleTimer]:
    return [a for a in t.actions if isinstance(a, ScheduleTimer)]


def fire(d: Driver, node_id: str = "pause", visit: int = 1, at: float | None = None) -> Any:
    return d.send(TimerFired(run_id=RUN, timer="delay", node_id=node_id, visit=visit), at=at)


def test_a_delay_waits_for_its_timer_and_passes_the_output_on() -> None:
    d = Driver(delay_graph({"seconds": 30}))
    d.submit({"x": 1})
    t = d.report("work", {"made": "it"})
    (timer,) = timers(t)
    assert (timer.timer, timer.node_id, timer.visit) == ("delay", "pause", 1)
    assert timer.due_at == pytest.approx(d.now + 30)
    assert not [a for a in t.actions if isinstance(a, EnqueueNode) and a.node_id == "pause"]
    assert d.mem.nodes["pause"].status == NodeStatus.DELAYED
    assert d.mem.run is not None and d.mem.run.status == RunStatus.RUNNING
    delayed = [h for h in t.history if h.type == "node.delayed"]
    assert delayed and delayed[0].data["due_at"] == pytest.approx(timer.due_at)

    t = fire(d, at=timer.due_at)
    assert d.mem.nodes["pause"].status == NodeStatus.COMPLETED
    assert d.mem.outputs[("pause", 1)] == {"made": "it"}
    assert [a.node_id for a in t.actions if isinstance(a, EnqueueNode)] == ["after"]

    again = fire(d)  # the same timer twice: the second changes nothing
    assert again.ignored is not None and "stale delay timer" in again.ignored


def test_a_delay_until_a_rendered_timestamp() -> None:
    d = Driver(delay_graph({"until": "{{ work.output.at }}"}))
    d.submit()
    t = d.report("work", {"at": "2030-01-02T03:04:05Z"})
    (timer,) = timers(t)
    assert timer.due_at == 1893553445.0
    naive = Driver(delay_graph({"until": "2030-01-02T03:04:05"}))  # no zone: UTC
    naive.submit()
    assert timers(naive.report("work"))[0].due_at == 1893553445.0


def test_a_delay_already_due_or_without_config_completes_at_once() -> None:
    for config in ({}, {"seconds": 0}, {"until": 500}):  # the driver's clock starts at 1000
        d = Driver(delay_graph(config))
        d.submit()
        t = d.report("work", 5)
        assert not timers(t), config
        assert d.mem.nodes["pause"].status == NodeStatus.COMPLETED
        assert d.mem.outputs[("pause", 1)] == 5


def test_a_bad_rendered_delay_fails_the_run_naming_the_value() -> None:
    d = Driver(delay_graph({"seconds": "{{ work.output.s }}"}))
    d.submit()
    d.report("work", {"s": "soon"})
    run = d.mem.run
    assert run is not None and run.status == RunStatus.FAILED
    assert run.error is not None and run.error.code == "bad_delay"
    assert "'soon'" in run.error.message and run.error.node_id == "pause"


def test_cancelling_drops_the_timer_and_a_late_timer_changes_nothing() -> None:
    d = Driver(delay_graph({"seconds": 60}))
    d.submit()
    d.report("work")
    t = d.send(CancelRequested(run_id=RUN, reason="no longer needed"))
    drops = [a for a in t.actions if isinstance(a, DropTimer)]
    assert [(a.timer, a.node_id, a.visit) for a in drops] == [("delay", "pause", 1)]
    assert d.mem.nodes["pause"].status == NodeStatus.CANCELLED
    late = fire(d)
    assert late.ignored is not None and "cancelled" in late.ignored


def test_a_timer_of_an_earlier_visit_is_stale() -> None:
    d = Driver(delay_graph({"seconds": 5}))
    d.submit()
    d.report("work")
    stale = fire(d, visit=2)
    assert stale.ignored is not None and "stale" in stale.ignored
    assert d.mem.nodes["pause"].status == NodeStatus.DELAYED


def test_run_local_fires_delays_at_once() -> None:
    result = run_local(delay_graph({"seconds": 3600}), {"agent": lambda nid, cfg, ctx: nid})
    assert result.run.status == RunStatus.COMPLETED
    assert "node.delayed:pause" in result.history()


@given(st.floats(min_value=0, max_value=10**6, allow_nan=False))
def test_seconds_from_now(seconds: float) -> None:
    assert delay_due({"seconds": seconds}, 100.0) == pytest.approx(100.0 + seconds)


@pytest.mark.parametrize(
    ("config", "needle"),
    [
        ({"seconds": -1}, "between 0 and"),
        ({"seconds": True}, "must be a number"),
        ({"seconds": [1]}, "must be a number"),
        ({"until": "tomorrow"}, "ISO 8601"),
        ({"until": {"at": 1}}, "ISO 8601"),
        ({"seconds": 1, "until": "2030-01-01"}, "not both"),
    ],
)
def test_bad_delay_configs(config: dict[str, Any], needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        delay_due(config, 0.0)


def test_validation_reports_bad_delays_and_leaves_templates_for_the_run() -> None:
    doc = delay_graph({"seconds": 1}).to_dict()
    doc["nodes"][2]["config"] = {"seconds": -5, "minutes": 3}
    problems = validate(doc)
    assert {(p.code, p.path) for p in problems} == {
        ("bad_delay", "nodes[2].config.minutes"),
        ("bad_delay", "nodes[2].config.seconds"),
    }
    doc["nodes"][2]["config"] = {"seconds": 1, "until": "2030-01-01"}
    assert [p.code for p in validate(doc)] == ["bad_delay"]
    doc["nodes"][2]["config"] = {"until": "{{ work.output.at }}"}
    assert validate(doc) == []
    both = {"id": "pause", "type": "delay", "config": {"seconds": 1, "until": 2}}
    with pytest.raises(GraphValidationError, match="not both"):
        Graph.from_dict({**doc, "nodes": [*doc["nodes"][:2], both, *doc["nodes"][3:]]})
