"""The history table (graph_core.history): steps, keys changed and durations from a run's
events and stored outputs, including on a real run of the in-process engine."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from graph_core.conditions import Condition
from graph_core.history import history_steps, output_visits
from graph_core.memory import run_local
from graph_core.model import Edge, Graph, Node


def ev(
    kind: str, at: float, node: str | None = None, visit: int | None = None, **data: Any
) -> dict[str, Any]:
    attempt = data.pop("attempt", 1 if node else None)
    return {
        "type": kind,
        "at": at,
        "node_id": node,
        "visit": visit,
        "attempt": attempt,
        "data": data,
    }


def test_keys_changed_compare_each_visit_with_the_nodes_previous_one() -> None:
    events = [
        ev("run.submitted", 10.0, graph_id="g", graph_version=1),
        ev("node.enqueued", 10.0, "a", 1, queue="default"),
        ev("node.completed", 10.5, "a", 1, next=["a"]),
        ev("node.enqueued", 10.5, "a", 2, queue="default"),
        ev("node.completed", 11.25, "a", 2, next=["end"]),
        ev("run.completed", 12.0, output={"n": 2}),
    ]
    outputs = {("a", 1): {"n": 1, "label": "x"}, ("a", 2): {"n": 2, "label": "x", "new": True}}
    steps = history_steps(events, outputs, run_input={"title": "t"})
    assert [s.step for s in steps] == [1, 2, 3, 4, 5, 6]
    assert steps[0].keys_changed == ["input.title"]
    assert steps[2].keys_changed == ["a.output.n", "a.output.label"]
    assert steps[4].keys_changed == ["a.output.n", "a.output.new"]  # label did not change
    assert steps[2].duration_s == 0.5 and steps[4].duration_s == 0.75
    assert steps[5].duration_s == 2.0  # the run, from its submission
    assert steps[1].duration_s is None and steps[1].keys_changed == []
    assert steps[2].detail == "-> a"


def test_a_failed_attempt_has_a_duration_and_its_error_as_detail() -> None:
    error = {"type": "ValueError", "message": "boom"}
    events = [
        ev("run.submitted", 0.0),
        ev("node.enqueued", 1.0, "b", 1),
        ev("node.retry_scheduled", 1.5, "b", 1, delay_s=1, error=error),
        ev("node.enqueued", 2.5, "b", 1, attempt=2),
        ev("node.failed", 3.0, "b", 1, attempt=2, error=error),
        ev("run.failed", 3.0, error=error),
    ]
    steps = history_steps(events, {})
    assert steps[2].duration_s == 0.5 and steps[2].detail == "ValueError: boom"
    assert steps[4].duration_s == 0.5 and steps[4].attempt == 2  # from the second enqueue
    assert steps[5].duration_s == 3.0 and steps[5].detail == "ValueError: boom"
    assert all(s.keys_changed == [] for s in steps)


def test_non_object_outputs_count_as_one_key() -> None:
    events = [ev("node.completed", 1.0, "c", v) for v in (1, 2, 3)]
    steps = history_steps(events, {("c", 1): 5, ("c", 2): 5, ("c", 3): [1]})
    assert [s.keys_changed for s in steps] == [["c.output"], [], ["c.output"]]


def test_output_visits_lists_each_completed_visit_once() -> None:
    events = [
        ev("node.completed", 1.0, "a", 1),
        ev("node.approved", 1.0, "h", 1),
        ev("node.completed", 1.0, "h", 1),
        ev("node.completed", 2.0, "a", 2),
        ev("node.completed", 2.0, "a", 2),  # a duplicate never counts twice
        ev("run.completed", 3.0),
    ]
    assert output_visits(events) == [("a", 1), ("h", 1), ("a", 2)]


def test_the_table_of_a_real_loop_run() -> None:
    graph = Graph(id="loop").add_nodes(
        Node("start", type="start"),
        Node("count", type="counter", max_visits=5),
        Node("end", type="end"),
    )
    graph.add_edges(
        Edge("start", "count"),
        Edge("count", "count", condition=Condition.field("count.output.n").lt(3)),
        Edge("count", "end", condition=Condition.otherwise()),
    )

    def counter(node_id: str, config: dict[str, Any], ctx: dict[str, Any]) -> dict[str, Any]:
        return {"n": ctx["visit"], "constant": "same"}

    result = run_local(graph, {"counter": counter})
    assert result.run.status == "completed"
    events = [h.model_dump() for t in result.transitions for h in t.history]
    outputs = result.state.outputs
    steps = history_steps(events, outputs)
    done = [s for s in steps if s.event == "node.completed" and s.node_id == "count"]
    assert [s.visit for s in done] == [1, 2, 3]
    assert done[0].keys_changed == ["count.output.n", "count.output.constant"]
    assert done[1].keys_changed == ["count.output.n"] == done[2].keys_changed


@given(
    st.lists(
        st.fixed_dictionaries(
            {
                "type": st.sampled_from(
                    ["node.completed", "node.enqueued", "node.failed", "run.failed", "x", 3]
                ),
                "at": st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.none()),
                "node_id": st.one_of(st.sampled_from(["a", "b"]), st.none(), st.integers()),
                "visit": st.one_of(st.integers(1, 3), st.none(), st.text(max_size=2)),
                "data": st.one_of(st.dictionaries(st.text(max_size=3), st.integers()), st.none()),
            }
        ),
        max_size=12,
    ),
    st.dictionaries(
        st.tuples(st.sampled_from(["a", "b"]), st.integers(1, 3)),
        st.one_of(st.integers(), st.dictionaries(st.text(max_size=2), st.integers())),
    ),
)
def test_any_history_gives_one_row_per_event_and_never_raises(
    events: list[dict[str, Any]], outputs: dict[tuple[str, int], Any]
) -> None:
    steps = history_steps(events, outputs)
    assert [s.step for s in steps] == list(range(1, len(events) + 1))
    assert all(s.duration_s is None or s.duration_s >= 0 for s in steps)
