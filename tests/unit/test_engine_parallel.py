"""The transition function: ``parallel`` nodes with children (join all / any / N), child
failures and retries, cancellation of the children that lost, human children, parallel in a
loop."""

from __future__ import annotations

from typing import Any

from graph_core.conditions import Condition
from graph_core.memory import LocalResult, Waiting, run_local
from graph_core.model import Edge, Graph, JoinSpec, Node, RetryPolicy
from graph_core.status import NodeStatus, RunStatus

C = Condition
CHILDREN = ("c1", "c2", "c3")


def ran(result: LocalResult) -> list[str]:
    return [nid for nid, _, _ in result.executions]


def status(result: LocalResult, node_id: str) -> NodeStatus:
    return result.state.nodes[node_id].status


def parallel_graph(
    join: JoinSpec = "all",
    config_join: JoinSpec | None = None,
    retry: RetryPolicy | None = None,
) -> Graph:
    g = Graph(id="par")
    config: dict[str, Any] = {} if config_join is None else {"join": config_join}
    g.add_nodes(
        Node("start", type="start"),
        Node("par", type="parallel", join=join, config=config),
        *[Node(c, type="task", parent="par", retry=retry) for c in CHILDREN],
        Node("after", type="task"),
        Node("end", type="end"),
    )
    g.connect("start", "par", "after", "end")
    return g.validate_graph()


def handlers(fail: str | None = None, fail_times: int = 10**9) -> dict[str, Any]:
    calls: dict[str, int] = {}

    def child(node_id: str, config: Any, ctx: Any) -> Any:
        calls[node_id] = calls.get(node_id, 0) + 1
        if node_id == fail and calls[node_id] <= fail_times:
            raise RuntimeError(f"{node_id} broke")
        return {"from": node_id}

    def after(node_id: str, config: Any, ctx: Any) -> Any:
        return {"got": ctx["outputs"]["par"]}

    return {"task": child, "node:after": after}


def test_parallel_join_any_takes_the_first_child_and_cancels_the_others() -> None:
    r = run_local(parallel_graph("any"), handlers())
    assert r.run.status == RunStatus.COMPLETED
    assert r.state.outputs[("par", 1)] == {"c1": {"from": "c1"}}
    assert r.run.output == {"got": {"c1": {"from": "c1"}}}
    assert status(r, "c1") == NodeStatus.COMPLETED
    assert status(r, "c2") == NodeStatus.CANCELLED
    assert status(r, "c3") == NodeStatus.CANCELLED
    assert ran(r).count("after") == 1
    assert r.state.nodes["after"].visits == 1
    h = r.history()
    assert h.index("node.cancelled:c2") < h.index("node.completed:par")
    # the losers' reports arrive later and are ignored, not applied
    ignored = [t.ignored for t in r.transitions if t.ignored]
    assert any("c2" in why for why in ignored)
    assert any("c3" in why for why in ignored)
    assert r.state.outputs.get(("c2", 1)) is None


def test_parallel_join_any_via_the_node_field_or_the_config_means_the_same() -> None:
    a = run_local(parallel_graph("any"), handlers())
    b = run_local(parallel_graph(config_join="any"), handlers())
    assert a.run.output == b.run.output == {"got": {"c1": {"from": "c1"}}}


def test_parallel_join_all_aggregates_every_child() -> None:
    r = run_local(parallel_graph("all"), handlers())
    assert r.run.status == RunStatus.COMPLETED
    expected = {c: {"from": c} for c in CHILDREN}
    assert r.state.outputs[("par", 1)] == expected
    assert r.run.output == {"got": expected}
    assert all(status(r, c) == NodeStatus.COMPLETED for c in CHILDREN)
    assert ran(r) == ["c1", "c2", "c3", "after"]
    h = r.history()
    assert h.index("node.completed:par") > h.index("node.completed:c3")
    assert h.count("node.completed:par") == 1


def test_parallel_join_n_from_config() -> None:
    r = run_local(parallel_graph(config_join=2), handlers())
    assert r.run.status == RunStatus.COMPLETED
    assert r.state.outputs[("par", 1)] == {"c1": {"from": "c1"}, "c2": {"from": "c2"}}
    assert status(r, "c3") == NodeStatus.CANCELLED
    assert ran(r).count("after") == 1


def test_failing_child_fails_the_run_under_join_all_after_its_retries() -> None:
    retry = RetryPolicy(max_attempts=2, initial_delay_s=0)
    r = run_local(parallel_graph("all", retry=retry), handlers(fail="c2"))
    assert r.run.status == RunStatus.FAILED
    err = r.run.error
    assert err is not None
    assert err.node_id == "c2"
    assert err.type == "RuntimeError"
    assert "c2 broke" in err.message
    assert "par" in err.message
    assert [e for e in r.executions if e[0] == "c2"] == [("c2", 1, 1), ("c2", 1, 2)]
    assert status(r, "c2") == NodeStatus.FAILED
    assert status(r, "par") == NodeStatus.CANCELLED
    assert "after" not in ran(r)
    assert r.history()[-1] == "run.failed"


def test_child_that_recovers_on_retry_lets_join_all_complete() -> None:
    retry = RetryPolicy(max_attempts=3, initial_delay_s=0)
    r = run_local(parallel_graph("all", retry=retry), handlers(fail="c2", fail_times=2))
    assert r.run.status == RunStatus.COMPLETED
    assert r.state.outputs[("par", 1)] == {c: {"from": c} for c in CHILDREN}
    assert r.state.nodes["c2"].attempt == 3


def test_failing_child_does_not_fail_join_any_when_another_succeeds() -> None:
    r = run_local(parallel_graph("any"), handlers(fail="c1"))
    assert r.run.status == RunStatus.COMPLETED
    assert r.state.outputs[("par", 1)] == {"c2": {"from": "c2"}}
    assert status(r, "c1") == NodeStatus.FAILED
    assert status(r, "c2") == NodeStatus.COMPLETED
    assert status(r, "c3") == NodeStatus.CANCELLED
    assert r.run.output == {"got": {"c2": {"from": "c2"}}}


def test_failing_child_under_join_n_completes_when_n_others_succeed() -> None:
    r = run_local(parallel_graph(config_join=2), handlers(fail="c2"))
    assert r.run.status == RunStatus.COMPLETED
    assert r.state.outputs[("par", 1)] == {"c1": {"from": "c1"}, "c3": {"from": "c3"}}
    assert status(r, "c2") == NodeStatus.FAILED


def test_every_child_failing_fails_join_any() -> None:
    def boom(node_id: str, config: Any, ctx: Any) -> Any:
        raise KeyError(node_id)

    r = run_local(parallel_graph("any"), {"task": boom})
    assert r.run.status == RunStatus.FAILED
    assert r.run.error is not None
    assert r.run.error.node_id == "c3"  # the last one, when the join became unreachable
    assert r.run.error.type == "KeyError"
    assert all(status(r, c) == NodeStatus.FAILED for c in CHILDREN)


def test_retry_pending_child_is_cancelled_when_join_any_is_met() -> None:
    retry = RetryPolicy(max_attempts=3, initial_delay_s=5)
    r = run_local(parallel_graph("any", retry=retry), handlers(fail="c1"))
    assert r.run.status == RunStatus.COMPLETED
    assert r.state.outputs[("par", 1)] == {"c2": {"from": "c2"}}
    assert status(r, "c1") == NodeStatus.CANCELLED
    # the retry timer fired after the join was met: stale, nothing ran
    assert [e for e in r.executions if e[0] == "c1"] == [("c1", 1, 1)]
    assert any(t.ignored and "retry timer" in t.ignored for t in r.transitions)


def test_human_child_waits_and_its_approval_is_aggregated() -> None:
    g = Graph(id="par-human")
    g.add_nodes(
        Node("start", type="start"),
        Node("par", type="parallel"),
        Node("auto", type="task", parent="par"),
        Node("sign", type="human", parent="par", config={"prompt": "sign?"}),
        Node("end", type="end"),
    )
    g.connect("start", "par", "end")
    g.validate_graph()
    asked: list[Waiting] = []

    def approve(w: Waiting) -> tuple[str, dict[str, Any]]:
        asked.append(w)
        return "approve", {"by": "bob"}

    r = run_local(g, {"task": lambda n, c, ctx: 42}, approve=approve)
    assert r.run.status == RunStatus.COMPLETED
    assert [w.node_id for w in asked] == ["sign"]
    assert asked[0].prompt == "sign?"
    assert r.run.output == {
        "auto": 42,
        "sign": {"decision": "approve", "data": {"by": "bob"}, "actor": "local"},
    }


def test_waiting_child_is_released_when_join_any_is_met() -> None:
    g = Graph(id="par-human-any")
    g.add_nodes(
        Node("start", type="start"),
        Node("par", type="parallel", join="any"),
        Node("auto", type="task", parent="par"),
        Node("sign", type="human", parent="par"),
        Node("end", type="end"),
    )
    g.connect("start", "par", "end")
    g.validate_graph()
    r = run_local(g, {"task": lambda n, c, ctx: "fast"})  # nobody approves
    assert r.run.status == RunStatus.COMPLETED
    assert r.run.output == {"auto": "fast"}
    assert status(r, "sign") == NodeStatus.CANCELLED
    assert r.state.nodes["sign"].wait is None
    assert r.run.waiting == 0
    done = next(
        t
        for t in r.transitions
        if any(h.type == "node.completed" and h.node_id == "par" for h in t.history)
    )
    kinds = [type(a).__name__ for a in done.actions]
    assert "ReleaseWait" in kinds and "CancelNode" in kinds


def test_parallel_in_a_loop_aggregates_only_the_current_visit() -> None:
    g = Graph(id="par-loop")
    g.add_nodes(
        Node("start", type="start"),
        Node("par", type="parallel", join="any"),
        Node("a", type="task", parent="par"),
        Node("b", type="task", parent="par"),
        Node("check", type="task"),
        Node("end", type="end"),
    )
    g.add_edges(
        Edge("start", "par"),
        Edge("par", "check"),
        Edge("check", "par", condition=C.field("check.output.again").eq(True)),
        Edge("check", "end", condition=C.otherwise()),
    )
    g.validate_graph()

    def child(node_id: str, config: Any, ctx: Any) -> Any:
        if node_id == "a" and ctx["visit"] == 2:
            raise RuntimeError("a fails on the 2nd pass")
        return f"{node_id}{ctx['visit']}"

    r = run_local(
        g,
        {"task": child, "node:check": lambda n, c, ctx: {"again": ctx["visit"] < 2}},
    )
    assert r.run.status == RunStatus.COMPLETED
    assert r.state.outputs[("par", 1)] == {"a": "a1"}
    assert r.state.outputs[("par", 2)] == {"b": "b2"}  # not the stale a1
    assert r.state.nodes["par"].visits == 2
    assert r.state.nodes["a"].visits == 2 and r.state.nodes["b"].visits == 2
