"""The transition function: retries and backoff, report fencing (duplicates, stale attempts,
unknown runs and nodes, finished runs), lost workers (lease expiry), run timeout, resubmission."""

from __future__ import annotations

import itertools
from typing import Any

from graph_core.engine import Env, advance
from graph_core.events import (
    EnqueueNode,
    ErrorInfo,
    Event,
    LeaseExpired,
    NodeReported,
    RunSubmitted,
    ScheduleTimer,
    TimerFired,
)
from graph_core.memory import LocalResult, MemoryRun, run_local, view_of
from graph_core.model import Graph, Node, RetryPolicy
from graph_core.routing import backoff_delay
from graph_core.state import Transition
from graph_core.status import NodeStatus, RunStatus
from graph_core.waits import MAX_LOST_ATTEMPTS

RUN = "r1"


def chain(retry: RetryPolicy | None = None, graph_retry: RetryPolicy | None = None) -> Graph:
    g = Graph(id="chain", retry=graph_retry, timeout_s=None)
    g.add_nodes(
        Node("start", type="start"),
        Node("flaky", type="task", retry=retry),
        Node("after", type="task"),
        Node("end", type="end"),
    )
    g.connect("start", "flaky", "after", "end")
    return g.validate_graph()


def failing(times: int, exc: type[Exception] = RuntimeError) -> Any:
    calls = {"n": 0}

    def handler(node_id: str, config: Any, ctx: Any) -> Any:
        if node_id != "flaky":
            return {"node": node_id}
        calls["n"] += 1
        if calls["n"] <= times:
            raise exc(f"flaky failure #{calls['n']}")
        return {"ok": True, "attempt": ctx["attempt"]}

    return handler


def delays(r: LocalResult) -> list[float]:
    return [
        h.data["delay_s"]
        for t in r.transitions
        for h in t.history
        if h.type == "node.retry_scheduled"
    ]


# --- retries ------------------------------------------------------------------------------------


def test_failing_twice_then_succeeding_with_three_attempts_completes() -> None:
    r = run_local(chain(RetryPolicy(max_attempts=3, initial_delay_s=0)), {"task": failing(2)})
    assert r.run.status == RunStatus.COMPLETED
    assert [e for e in r.executions if e[0] == "flaky"] == [
        ("flaky", 1, 1),
        ("flaky", 1, 2),
        ("flaky", 1, 3),
    ]
    rec = r.state.nodes["flaky"]
    assert rec.visits == 1 and rec.attempt == 3 and rec.status == NodeStatus.COMPLETED
    assert rec.error is None
    assert r.state.outputs[("flaky", 1)] == {"ok": True, "attempt": 3}
    assert r.history().count("node.retry_scheduled:flaky") == 2
    assert "node.failed:flaky" not in r.history()
    assert r.run.output == {"node": "after"}


def test_failing_every_attempt_fails_the_run_naming_node_type_and_message() -> None:
    r = run_local(chain(RetryPolicy(max_attempts=3, initial_delay_s=0)), {"task": failing(99)})
    assert r.run.status == RunStatus.FAILED
    err = r.run.error
    assert err is not None
    assert err.node_id == "flaky"
    assert err.type == "RuntimeError"
    assert "flaky failure #3" in err.message
    assert "3 attempt" in err.message
    assert [e[2] for e in r.executions if e[0] == "flaky"] == [1, 2, 3]
    assert r.state.nodes["flaky"].status == NodeStatus.FAILED
    assert "after" not in [e[0] for e in r.executions]
    assert r.history()[-2:] == ["node.failed:flaky", "run.failed"]


def test_no_retry_on_makes_an_error_type_final() -> None:
    policy = RetryPolicy(max_attempts=5, initial_delay_s=0, no_retry_on=["ValueError"])
    r = run_local(chain(policy), {"task": failing(99, ValueError)})
    assert r.run.status == RunStatus.FAILED
    assert r.run.error is not None and r.run.error.type == "ValueError"
    assert [e for e in r.executions if e[0] == "flaky"] == [("flaky", 1, 1)]
    assert "node.retry_scheduled:flaky" not in r.history()
    # other types are still retried under the same policy
    r = run_local(chain(policy), {"task": failing(1, KeyError)})
    assert r.run.status == RunStatus.COMPLETED
    assert len([e for e in r.executions if e[0] == "flaky"]) == 2


def test_retry_on_restricts_retries_to_listed_types() -> None:
    policy = RetryPolicy(max_attempts=3, initial_delay_s=0, retry_on=["TimeoutError"])
    r = run_local(chain(policy), {"task": failing(1, RuntimeError)})
    assert r.run.status == RunStatus.FAILED
    assert len([e for e in r.executions if e[0] == "flaky"]) == 1
    r = run_local(chain(policy), {"task": failing(1, TimeoutError)})
    assert r.run.status == RunStatus.COMPLETED


def test_graph_retry_policy_is_the_default_for_nodes_without_one() -> None:
    r = run_local(
        chain(graph_retry=RetryPolicy(max_attempts=2, initial_delay_s=0)), {"task": failing(1)}
    )
    assert r.run.status == RunStatus.COMPLETED
    assert len([e for e in r.executions if e[0] == "flaky"]) == 2
    # a node's own policy wins over the graph's
    r = run_local(
        chain(RetryPolicy(max_attempts=1), graph_retry=RetryPolicy(max_attempts=5)),
        {"task": failing(1)},
    )
    assert r.run.status == RunStatus.FAILED


def test_exponential_backoff_doubles_and_is_capped() -> None:
    policy = RetryPolicy(max_attempts=5, backoff="exponential", initial_delay_s=1, max_delay_s=3)
    r = run_local(chain(policy), {"task": failing(99)})
    assert delays(r) == [1.0, 2.0, 3.0, 3.0]
    policy = RetryPolicy(max_attempts=4, backoff="exponential", initial_delay_s=1, max_delay_s=60)
    r = run_local(chain(policy), {"task": failing(99)})
    assert delays(r) == [1.0, 2.0, 4.0]


def test_fixed_backoff_repeats_the_initial_delay() -> None:
    policy = RetryPolicy(max_attempts=3, backoff="fixed", initial_delay_s=5, max_delay_s=60)
    r = run_local(chain(policy), {"task": failing(99)})
    assert delays(r) == [5.0, 5.0]


def test_retry_timer_is_scheduled_at_now_plus_delay_for_the_next_attempt() -> None:
    policy = RetryPolicy(max_attempts=3, backoff="exponential", initial_delay_s=2)
    r = run_local(chain(policy), {"task": failing(1)})
    failed_at = next(
        t for t in r.transitions if any(h.type == "node.retry_scheduled" for h in t.history)
    )
    timers = [a for a in failed_at.actions if isinstance(a, ScheduleTimer)]
    assert len(timers) == 1
    timer = timers[0]
    assert (timer.timer, timer.node_id, timer.visit, timer.attempt) == ("retry", "flaky", 1, 2)
    assert timer.due_at == failed_at.history[0].at + 2
    assert failed_at.nodes["flaky"].status == NodeStatus.RETRY_SCHEDULED
    assert not [a for a in failed_at.actions if isinstance(a, EnqueueNode)]


def test_jitter_is_deterministic_and_only_shortens_the_delay() -> None:
    policy = RetryPolicy(max_attempts=5, initial_delay_s=8, jitter=0.5)
    a = backoff_delay(policy, 1, "run:n:1:1")
    assert a == backoff_delay(policy, 1, "run:n:1:1")
    assert 4.0 <= a <= 8.0
    spread = {backoff_delay(policy, 1, f"run{i}:n:1:1") for i in range(20)}
    assert len(spread) > 1
    assert all(4.0 <= x <= 8.0 for x in spread)


# --- fencing with advance directly ---------------------------------------------------------


class Driver:
    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.mem = MemoryRun()
        self.now = 0.0
        self._tokens = (f"tok-{i}" for i in itertools.count(1))

    def send(self, event: Event) -> Transition:
        self.now += 1
        t = advance(self.graph, view_of(self.mem), event, Env(self.now, lambda: next(self._tokens)))
        self.mem.apply(t)
        return t

    def submit(self) -> Transition:
        return self.send(RunSubmitted(run_id=RUN, graph_id=self.graph.id, graph_version=1))

    def snapshot(self) -> Any:
        m = self.mem
        return (
            m.run.model_dump() if m.run else None,
            {k: v.model_dump() for k, v in m.nodes.items()},
            dict(m.outputs),
            dict(m.joins),
            dict(m.active),
        )


def report(
    node_id: str,
    visit: int = 1,
    attempt: int = 1,
    status: str = "completed",
    output: Any = None,
    error: ErrorInfo | None = None,
    run_id: str = RUN,
) -> NodeReported:
    return NodeReported(
        run_id=run_id,
        node_id=node_id,
        visit=visit,
        attempt=attempt,
        status=status,
        output=output,
        error=error,
    )


BOOM = ErrorInfo(type="RuntimeError", message="boom")


def test_duplicate_report_after_completion_is_ignored() -> None:
    d = Driver(chain())
    d.submit()
    first = d.send(report("flaky", output={"v": 1}))
    assert first.ignored is None
    before = d.snapshot()
    dup = d.send(report("flaky", output={"v": 2}))
    assert dup.ignored is not None and "flaky" in dup.ignored
    assert dup.actions == [] and dup.history == []
    assert d.snapshot() == before
    assert d.mem.outputs[("flaky", 1)] == {"v": 1}
    assert d.mem.nodes["after"].visits == 1  # not enqueued twice


def test_report_for_an_old_attempt_after_a_retry_is_ignored() -> None:
    d = Driver(chain(RetryPolicy(max_attempts=3, initial_delay_s=0)))
    d.submit()
    t = d.send(report("flaky", status="failed", error=BOOM))
    assert [a for a in t.actions if isinstance(a, EnqueueNode)] == [
        EnqueueNode(node_id="flaky", visit=1, attempt=2, queue="default", type="task")
    ]
    before = d.snapshot()
    stale = d.send(report("flaky", attempt=1, output="late"))
    assert stale.ignored is not None and "stale" in stale.ignored
    assert d.snapshot() == before
    ok = d.send(report("flaky", attempt=2, output="fresh"))
    assert ok.ignored is None
    assert d.mem.outputs[("flaky", 1)] == "fresh"


def test_report_during_retry_backoff_and_duplicate_retry_timer_are_ignored() -> None:
    d = Driver(chain(RetryPolicy(max_attempts=3, initial_delay_s=10)))
    d.submit()
    t = d.send(report("flaky", status="failed", error=BOOM))
    timer = next(a for a in t.actions if isinstance(a, ScheduleTimer))
    assert d.mem.nodes["flaky"].status == NodeStatus.RETRY_SCHEDULED
    before = d.snapshot()
    late = d.send(report("flaky", attempt=1, output="late"))  # same attempt, but it failed
    assert late.ignored is not None
    early = d.send(report("flaky", attempt=2, output="too early"))
    assert early.ignored is not None
    assert d.snapshot() == before
    fired = TimerFired(run_id=RUN, timer="retry", node_id="flaky", visit=1, attempt=timer.attempt)
    t = d.send(fired)
    assert t.ignored is None
    assert next(a for a in t.actions if isinstance(a, EnqueueNode)).attempt == 2
    again = d.send(fired)
    assert again.ignored is not None and "stale retry timer" in again.ignored


def test_unknown_run_and_unknown_node_are_ignored_with_a_reason() -> None:
    d = Driver(chain())
    t = d.send(report("flaky"))
    assert t.ignored is not None and "unknown run" in t.ignored
    assert d.mem.run is None
    d.submit()
    before = d.snapshot()
    t = d.send(report("ghost"))
    assert t.ignored is not None and "unknown node" in t.ignored and "ghost" in t.ignored
    t = d.send(report("after"))  # a real node that was never started
    assert t.ignored is not None
    t = d.send(TimerFired(run_id=RUN, timer="retry", node_id="ghost", visit=1, attempt=2))
    assert t.ignored is not None
    assert d.snapshot() == before


def test_events_for_a_finished_run_are_ignored() -> None:
    d = Driver(chain())
    d.submit()
    d.send(report("flaky"))
    d.send(report("after", output="done"))
    assert d.mem.run is not None and d.mem.run.status == RunStatus.COMPLETED
    assert d.mem.run.output == "done"
    before = d.snapshot()
    for ev in (
        report("after", output="again"),
        report("flaky", status="failed", error=BOOM),
        TimerFired(run_id=RUN, timer="run_timeout"),
        LeaseExpired(run_id=RUN, node_id="after", visit=1, attempt=1),
    ):
        t = d.send(ev)
        assert t.ignored is not None and "already completed" in t.ignored
    assert d.snapshot() == before


def test_resubmitting_an_existing_run_is_ignored() -> None:
    d = Driver(chain())
    d.submit()
    before = d.snapshot()
    t = d.submit()
    assert t.ignored is not None and "already exists" in t.ignored
    assert d.snapshot() == before


def test_run_timeout_timer_fails_the_run_and_cancels_live_nodes() -> None:
    g = chain()
    g.timeout_s = 30
    d = Driver(g)
    t = d.submit()
    assert ScheduleTimer(timer="run_timeout", due_at=d.now + 30) in t.actions
    t = d.send(TimerFired(run_id=RUN, timer="run_timeout"))
    assert d.mem.run is not None and d.mem.run.status == RunStatus.FAILED
    assert d.mem.run.error is not None and d.mem.run.error.code == "run_timeout"
    assert d.mem.nodes["flaky"].status == NodeStatus.CANCELLED
    assert d.mem.active == {}


# --- lost workers --------------------------------------------------------------------------


def test_lost_worker_reenqueues_without_using_up_retries() -> None:
    d = Driver(chain(RetryPolicy(max_attempts=1)))
    d.submit()
    t = d.send(LeaseExpired(run_id=RUN, node_id="flaky", visit=1, attempt=1))
    assert t.ignored is None
    assert [a for a in t.actions if isinstance(a, EnqueueNode)] == [
        EnqueueNode(node_id="flaky", visit=1, attempt=2, queue="default", type="task")
    ]
    stale = d.send(report("flaky", attempt=1, output="zombie"))
    assert stale.ignored is not None
    # the retry policy allows ONE failure; the lost attempt did not count
    t = d.send(report("flaky", attempt=2, status="failed", error=BOOM))
    assert d.mem.run is not None and d.mem.run.status == RunStatus.FAILED
    assert d.mem.run.error is not None and d.mem.run.error.type == "RuntimeError"


def test_lease_past_the_deadline_is_a_timeout_failure() -> None:
    d = Driver(chain(RetryPolicy(max_attempts=2, initial_delay_s=0)))
    d.submit()
    t = d.send(LeaseExpired(run_id=RUN, node_id="flaky", visit=1, attempt=1, deadline=0.5))
    assert any(h.type == "node.retry_scheduled" for h in t.history)
    assert d.mem.nodes["flaky"].error is not None
    assert d.mem.nodes["flaky"].error.type == "TimeoutError"
    d.send(LeaseExpired(run_id=RUN, node_id="flaky", visit=1, attempt=2, deadline=0.5))
    assert d.mem.run is not None and d.mem.run.status == RunStatus.FAILED
    assert d.mem.run.error is not None and d.mem.run.error.type == "TimeoutError"


def test_worker_lost_too_often_fails_the_node() -> None:
    d = Driver(chain(RetryPolicy(max_attempts=10, initial_delay_s=0)))
    d.submit()
    for attempt in range(1, MAX_LOST_ATTEMPTS + 1):
        d.send(LeaseExpired(run_id=RUN, node_id="flaky", visit=1, attempt=attempt))
        assert d.mem.run is not None and d.mem.run.status == RunStatus.RUNNING
    assert d.mem.nodes["flaky"].attempt == MAX_LOST_ATTEMPTS + 1
    last = MAX_LOST_ATTEMPTS + 1
    d.send(LeaseExpired(run_id=RUN, node_id="flaky", visit=1, attempt=last))
    assert d.mem.run is not None and d.mem.run.status == RunStatus.FAILED
    assert d.mem.run.error is not None and d.mem.run.error.type == "WorkerLost"
    assert d.mem.run.error.node_id == "flaky"
    stale = d.send(LeaseExpired(run_id=RUN, node_id="flaky", visit=1, attempt=1))
    assert stale.ignored is not None
