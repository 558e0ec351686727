"""``map`` nodes in the pure transition function (graph_core.maps): concurrency, tolerance,
retries, lost workers, cancel, pause, the output list and the cost per item."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graph_core.engine import Env, advance
from graph_core.events import (
    CancelNode,
    CancelRequested,
    DropTimer,
    EnqueueNode,
    ErrorInfo,
    Event,
    LeaseExpired,
    NodeReported,
    PauseRequested,
    ResumeRequested,
    RunSubmitted,
    ScheduleTimer,
    TimerFired,
)
from graph_core.maps import tolerance
from graph_core.memory import MemoryRun, run_local, view_of
from graph_core.model import Graph, Node, RetryPolicy
from graph_core.state import Transition
from graph_core.status import NodeStatus, RunStatus
from graph_core.validation import validate

RUN = "m1"
BOOM = ErrorInfo(type="RuntimeError", message="boom")


def map_graph(**config: Any) -> Graph:
    retry = config.pop("retry", None)
    cfg = {"items": "{{ input.items }}", "node": {"type": "work"}, **config}
    g = Graph(id="mapper")
    g.add_nodes(
        Node("start", type="start"),
        Node("each", type="map", config=cfg, retry=retry),
        Node("end", type="end"),
    )
    g.connect("start", "each", "end")
    return g.validate_graph()


class Driver:
    """Sends events; keeps the item jobs in flight (item -> its EnqueueNode)."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.mem = MemoryRun()
        self.now = 0.0
        self.tokens = (f"tok-{i}" for i in itertools.count(1))
        self.jobs: dict[int, EnqueueNode] = {}
        self.timers: dict[int, ScheduleTimer] = {}
        self.history: list[Any] = []
        self.actions: list[Any] = []
        self.max_in_flight = 0

    def send(self, event: Event) -> Transition:
        self.now += 1
        t = advance(self.graph, view_of(self.mem), event, Env(self.now, lambda: next(self.tokens)))
        self.mem.apply(t)
        self.history.extend(t.history)
        self.actions.extend(t.actions)
        for a in t.actions:
            if isinstance(a, EnqueueNode) and a.item is not None:
                self.jobs[a.item] = a
            elif isinstance(a, ScheduleTimer) and a.item is not None:
                self.timers[a.item] = a
        self.max_in_flight = max(self.max_in_flight, len(self.jobs))
        return t

    def submit(self, items: Any) -> Transition:
        return self.send(
            RunSubmitted(
                run_id=RUN, graph_id=self.graph.id, graph_version=1, input={"items": items}
            )
        )

    def report(self, item: int, status: str = "completed", output: Any = None) -> Transition:
        job = self.jobs.pop(item)
        return self.send(
            NodeReported(
                run_id=RUN,
                node_id=job.node_id,
                visit=job.visit,
                attempt=job.attempt,
                item=item,
                status=status,
                output=output,
                error=BOOM if status == "failed" else None,
            )
        )

    def fire(self, item: int) -> Transition:
        timer = self.timers.pop(item)
        return self.send(
            TimerFired(
                run_id=RUN,
                timer=timer.timer,
                node_id=timer.node_id,
                visit=timer.visit,
                attempt=timer.attempt,
                item=item,
            )
        )

    @property
    def run_status(self) -> RunStatus:
        assert self.mem.run is not None
        return self.mem.run.status


def in_flight_from_history(history: list[Any]) -> int:
    """The most items in flight at once, counted from the history alone."""
    live: set[int] = set()
    most = 0
    for h in history:
        item = h.data.get("item")
        if h.type == "map.item_enqueued":
            live.add(item)
        elif h.type in ("map.item_completed", "map.item_failed"):
            live.discard(item)
        most = max(most, len(live))
    return most


def test_max_concurrency_3_over_20_items_never_runs_more_than_3() -> None:
    d = Driver(map_graph(max_concurrency=3))
    d.submit(list(range(20)))
    rng = random.Random(7)
    while d.jobs:
        d.report(rng.choice(sorted(d.jobs)), output="ok")
    assert d.run_status == RunStatus.COMPLETED
    assert in_flight_from_history(d.history) == 3
    assert d.max_in_flight == 3


def test_output_is_the_results_in_item_order_whatever_the_completion_order() -> None:
    d = Driver(map_graph(max_concurrency=5))
    d.submit([f"x{i}" for i in range(12)])
    rng = random.Random(3)
    while d.jobs:
        item = rng.choice(sorted(d.jobs))
        d.report(item, output={"doubled": item * 2})
    assert d.mem.run is not None
    assert d.mem.run.output == [{"doubled": i * 2} for i in range(12)]
    # the item fields are gone once the list is built
    assert not d.mem.item_inputs and not d.mem.item_outputs


def test_item_jobs_carry_their_index_and_each_item_gets_its_input() -> None:
    seen: list[tuple[int, Any]] = []

    def work(node_id: str, config: dict[str, Any], ctx: dict[str, Any]) -> Any:
        seen.append((ctx["index"], ctx["item"]))
        return ctx["item"].upper()

    result = run_local(map_graph(max_concurrency=2), {"work": work}, {"items": ["a", "b", "c"]})
    assert result.run.status == RunStatus.COMPLETED
    assert result.run.output == ["A", "B", "C"]
    assert sorted(seen) == [(0, "a"), (1, "b"), (2, "c")]


def test_an_empty_list_completes_with_an_empty_list_and_starts_no_job() -> None:
    d = Driver(map_graph())
    d.submit([])
    assert d.run_status == RunStatus.COMPLETED
    assert d.mem.run is not None and d.mem.run.output == []
    assert not any(isinstance(a, EnqueueNode) for a in d.actions)


@pytest.mark.parametrize(
    ("items", "found"), [({"a": 1}, "dict"), ("text", "str"), (None, "nothing"), (3, "int")]
)
def test_items_that_are_not_a_list_fail_the_node_naming_the_path_and_type(
    items: Any, found: str
) -> None:
    d = Driver(map_graph())
    d.submit(items)
    run = d.mem.run
    assert run is not None and run.status == RunStatus.FAILED
    assert run.error is not None and run.error.code == "bad_items"
    assert run.error.node_id == "each"
    assert "input.items" in run.error.message and found in run.error.message


def test_exactly_n_failures_are_tolerated() -> None:
    d = Driver(map_graph(max_concurrency=10, tolerated_failures=2))
    d.submit(list(range(6)))
    d.report(1, "failed")
    d.report(4, "failed")
    for item in sorted(d.jobs):
        d.report(item, output=item)
    assert d.run_status == RunStatus.COMPLETED
    assert d.mem.run is not None and d.mem.run.output == [0, None, 2, 3, None, 5]


def test_n_plus_one_failures_fail_the_map_and_cancel_the_items_in_flight() -> None:
    d = Driver(map_graph(max_concurrency=10, tolerated_failures=2))
    d.submit(list(range(6)))
    d.report(0, "failed")
    d.report(1, "failed")
    t = d.report(2, "failed")
    run = d.mem.run
    assert run is not None and run.status == RunStatus.FAILED
    assert run.error is not None and run.error.node_id == "each"
    assert "3 of 6 items failed" in run.error.message and "allows 2" in run.error.message
    cancelled = {a.item for a in t.actions if isinstance(a, CancelNode) and a.item is not None}
    assert cancelled == {3, 4, 5}
    late = d.report(3, output="late")
    assert late.ignored is not None


def test_percent_tolerance_rounds_down() -> None:
    assert tolerance("10%", 25) == 2
    assert tolerance("100%", 7) == 7
    assert tolerance("0%", 7) == 0
    assert tolerance(3, 1) == 3
    for bad in ("-1%", "101%", "ten", -1, 1.5, True):
        with pytest.raises(ValueError, match="tolerated_failures"):
            tolerance(bad, 10)


def test_percent_boundary_in_a_run() -> None:
    ok = Driver(map_graph(max_concurrency=10, tolerated_failures="20%"))
    ok.submit(list(range(10)))  # 2 tolerated
    ok.report(0, "failed")
    ok.report(1, "failed")
    while ok.jobs:
        ok.report(min(ok.jobs), output=1)
    assert ok.run_status == RunStatus.COMPLETED
    bad = Driver(map_graph(max_concurrency=10, tolerated_failures="20%"))
    bad.submit(list(range(10)))
    for item in (0, 1, 2):
        bad.report(item, "failed")
    assert bad.run_status == RunStatus.FAILED


def test_an_item_is_retried_by_the_map_node_policy_then_counted_failed() -> None:
    policy = RetryPolicy(max_attempts=3, initial_delay_s=0)
    d = Driver(map_graph(max_concurrency=2, retry=policy))
    d.submit(["a", "b"])
    d.report(0, "failed")
    assert d.jobs[0].attempt == 2
    d.report(0, "failed")
    assert d.jobs[0].attempt == 3
    d.report(0, "failed")
    assert d.run_status == RunStatus.FAILED
    types = [h.type for h in d.history if h.data.get("item") == 0]
    assert types.count("map.item_retry_scheduled") == 2 and types[-1] == "map.item_failed"


def test_a_retry_with_backoff_waits_for_its_timer_and_keeps_its_slot() -> None:
    policy = RetryPolicy(max_attempts=2, initial_delay_s=5)
    d = Driver(map_graph(max_concurrency=1, retry=policy))
    d.submit(["a", "b"])
    d.report(0, "failed")
    assert 0 in d.timers and not d.jobs  # the slot is held: item 1 does not start
    stale = d.send(
        NodeReported(run_id=RUN, node_id="each", visit=1, attempt=1, item=0, status="completed")
    )
    assert stale.ignored is not None
    d.fire(0)
    assert d.jobs[0].attempt == 2
    d.report(0, output="A")
    d.report(1, output="B")
    assert d.mem.run is not None and d.mem.run.output == ["A", "B"]


def test_duplicate_and_stale_reports_are_ignored() -> None:
    d = Driver(map_graph(max_concurrency=2))
    d.submit(["a", "b", "c"])
    job = d.jobs[0]
    d.report(0, output="A")
    again = d.send(
        NodeReported(
            run_id=RUN, node_id="each", visit=job.visit, attempt=1, item=0, status="completed"
        )
    )
    assert again.ignored is not None and "item 0" in again.ignored
    wrong_visit = d.send(
        NodeReported(run_id=RUN, node_id="each", visit=2, attempt=1, item=1, status="completed")
    )
    assert wrong_visit.ignored is not None
    d.report(1, output="B")
    d.report(2, output="C")
    assert d.mem.run is not None and d.mem.run.output == ["A", "B", "C"]


def test_a_lost_worker_reruns_the_item_without_using_its_retries() -> None:
    d = Driver(map_graph(max_concurrency=2))
    d.submit(["a"])
    d.send(LeaseExpired(run_id=RUN, node_id="each", visit=1, attempt=1, item=0))
    assert d.jobs[0].attempt == 2
    d.report(0, output="A")
    assert d.run_status == RunStatus.COMPLETED
    assert any(h.type == "map.item_lost" for h in d.history)


def test_a_worker_lost_too_often_fails_the_item() -> None:
    d = Driver(map_graph(max_concurrency=1))
    d.submit(["a"])
    for attempt in range(1, 5):
        d.send(LeaseExpired(run_id=RUN, node_id="each", visit=1, attempt=attempt, item=0))
    assert d.run_status == RunStatus.FAILED
    assert d.mem.run is not None and d.mem.run.error is not None
    assert d.mem.run.error.type == "WorkerLost"


def test_an_item_that_waits_fails_without_retry() -> None:
    d = Driver(map_graph(retry=RetryPolicy(max_attempts=3, initial_delay_s=0)))
    d.submit(["a"])
    d.report(0, "waiting", output={"prompt": "?"})
    assert d.run_status == RunStatus.FAILED
    assert d.mem.run is not None and d.mem.run.error is not None
    assert d.mem.run.error.type == "MapItemCannotWait"


def test_cancel_stops_the_items_in_flight_and_drops_their_timers() -> None:
    policy = RetryPolicy(max_attempts=2, initial_delay_s=5)
    d = Driver(map_graph(max_concurrency=3, retry=policy))
    d.submit(list(range(5)))
    d.report(1, "failed")  # a retry timer
    t = d.send(CancelRequested(run_id=RUN))
    assert d.run_status == RunStatus.CANCELLED
    cancelled = {a.item for a in t.actions if isinstance(a, CancelNode) and a.item is not None}
    dropped = {a.item for a in t.actions if isinstance(a, DropTimer) and a.item is not None}
    assert cancelled == {0, 2} and dropped == {1}
    assert not d.mem.item_inputs


def test_pause_starts_no_new_item_and_resume_fills_the_slots() -> None:
    policy = RetryPolicy(max_attempts=2, initial_delay_s=5)
    d = Driver(map_graph(max_concurrency=2, retry=policy))
    d.submit(list(range(5)))
    d.report(1, "failed")
    d.send(PauseRequested(run_id=RUN))
    d.report(0, output=0)  # finishes; item 2 must not start while paused
    assert not d.jobs
    d.fire(1)  # the retry falls due while paused: held
    assert not d.jobs
    d.send(ResumeRequested(run_id=RUN))
    assert sorted(d.jobs) == [1, 2]
    assert d.jobs[1].attempt == 2
    while d.jobs:
        d.report(min(d.jobs), output="x")
    assert d.run_status == RunStatus.COMPLETED


def test_a_map_in_a_loop_starts_fresh_on_each_visit() -> None:
    g = Graph(id="loop")
    g.add_nodes(
        Node("start", type="start"),
        Node(
            "each",
            type="map",
            config={"items": [1, 2], "node": {"type": "work"}},
            max_visits=3,
        ),
        Node("end", type="end"),
    )
    from graph_core.conditions import Condition
    from graph_core.model import Edge

    g.add_edges(
        Edge("start", "each"),
        Edge("each", "each", condition=Condition.field("each.visits").lt(2)),
        Edge("each", "end", condition=Condition.field("each.visits").gte(2)),
    )
    g.validate_graph()
    calls: list[int] = []

    def work(node_id: str, config: dict[str, Any], ctx: dict[str, Any]) -> Any:
        calls.append(ctx["visit"])
        return ctx["item"]

    result = run_local(g, {"work": work})
    assert result.run.status == RunStatus.COMPLETED
    assert result.run.output == [1, 2]
    assert calls == [1, 1, 2, 2]


def test_an_item_event_costs_the_same_with_10_or_10000_items() -> None:
    """The map's record holds only the items in flight: its size, and what an item's event
    writes, do not grow with the number of items."""

    def cost(n: int) -> tuple[int, int]:
        d = Driver(map_graph(max_concurrency=4))
        d.submit(list(range(n)))
        for _ in range(8):
            d.report(min(d.jobs), output="x")
        t = d.report(min(d.jobs), output="x")
        size = len(t.nodes["each"].dump())
        return size, len(t.item_outputs) + len(t.nodes)

    small, big = cost(10), cost(10_000)
    assert big[1] == small[1]
    assert small[0] < 256 and big[0] < 256  # counters and the 4 items in flight


def test_10000_items_complete() -> None:
    """The items come from a node's output (read once, when the map starts): each item's
    event then costs the same however long the list."""
    g = Graph(id="big")
    g.add_nodes(
        Node("start", type="start"),
        Node("make", type="make"),
        Node("each", type="map", config={"items": "{{ make.output }}", "node": {"type": "work"},
                                         "max_concurrency": 50}),
        Node("end", type="end"),
    )  # fmt: skip
    g.connect("start", "make", "each", "end")
    handlers = {
        "make": lambda n, c, ctx: list(range(10_000)),
        "work": lambda n, c, ctx: ctx["index"] * 2,
    }
    result = run_local(g.validate_graph(), handlers)
    assert result.run.status == RunStatus.COMPLETED
    assert result.run.output == [i * 2 for i in range(10_000)]


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 25),
    limit=st.integers(1, 6),
    tolerated=st.integers(0, 4),
    fails=st.sets(st.integers(0, 24), max_size=8),
    seed=st.integers(0, 1000),
)
def test_any_completion_order_respects_the_limit_and_the_tolerance(
    n: int, limit: int, tolerated: int, fails: set[int], seed: int
) -> None:
    d = Driver(map_graph(max_concurrency=limit, tolerated_failures=tolerated))
    d.submit(list(range(n)))
    rng = random.Random(seed)
    failing = {f for f in fails if f < n}
    while d.jobs and d.run_status == RunStatus.RUNNING:
        item = rng.choice(sorted(d.jobs))
        d.report(item, "failed" if item in failing else "completed", output=item)
    assert d.max_in_flight <= limit
    assert in_flight_from_history(d.history) <= limit
    run = d.mem.run
    assert run is not None
    if len(failing) > tolerated:
        assert run.status == RunStatus.FAILED
    else:
        assert run.status == RunStatus.COMPLETED
        assert run.output == [None if i in failing else i for i in range(n)]
    rec = d.mem.nodes["each"]
    assert rec.status in (NodeStatus.COMPLETED, NodeStatus.FAILED)


def test_validation_names_what_is_wrong_with_a_map() -> None:
    def problems(config: dict[str, Any]) -> list[str]:
        g = {
            "id": "g",
            "nodes": [
                {"id": "start", "type": "start"},
                {"id": "m", "type": "map", "config": config},
                {"id": "end", "type": "end"},
            ],
            "edges": [{"source": "start", "target": "m"}, {"source": "m", "target": "end"}],
        }
        return [f"{p.code} {p.path}: {p.message}" for p in validate(g)]

    assert problems({"items": [1], "node": {"type": "work"}}) == []
    (missing,) = problems({"node": {"type": "work"}})
    assert "bad_map" in missing and "no items" in missing
    (no_node,) = problems({"items": "{{ input.x }}"})
    assert "no node" in no_node
    (control,) = problems({"items": [], "node": {"type": "human"}})
    assert "'human'" in control
    (limit,) = problems({"items": [], "node": {"type": "w"}, "max_concurrency": 0})
    assert "max_concurrency" in limit and "config.max_concurrency" in limit
    (tol,) = problems({"items": [], "node": {"type": "w"}, "tolerated_failures": "lots"})
    assert "tolerated_failures" in tol
    (unknown,) = problems({"items": [], "node": {"type": "w"}, "itemz": 1})
    assert "'itemz'" in unknown
    (bad_items,) = problems({"items": 5, "node": {"type": "w"}})
    assert "template or a list" in bad_items
