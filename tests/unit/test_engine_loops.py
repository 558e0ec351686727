"""The transition function: loops (back edges, visits, exits), loop-exit dead-signal deferral,
and the limits that stop runaway loops (``max_visits``, ``max_steps``)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graph_core.conditions import Condition
from graph_core.memory import LocalResult, Waiting, run_local
from graph_core.model import Edge, Graph, Node
from graph_core.status import NodeStatus, RunStatus
from graph_core.topology import topology

C = Condition


def ran(result: LocalResult) -> list[str]:
    return [nid for nid, _, _ in result.executions]


def visits(result: LocalResult) -> dict[str, int]:
    return {nid: rec.visits for nid, rec in result.state.nodes.items()}


# --- review loop with a human node ------------------------------------------------------------


def review_loop() -> Graph:
    g = Graph(id="review")
    g.add_nodes(
        Node("start", type="start"),
        Node("draft", type="task"),
        Node("review", type="human", max_visits=3, config={"prompt": "{{draft.output.text}}"}),
        Node("revise", type="task"),
        Node("publish", type="task"),
        Node("end", type="end"),
    )
    g.add_edges(
        Edge("start", "draft"),
        Edge("draft", "review"),
        Edge("review", "publish", condition=C.field("review.output.decision").eq("approve")),
        Edge("review", "revise", condition=C.otherwise()),
        Edge("revise", "review"),
        Edge("publish", "end"),
    )
    return g.validate_graph()


def review_handlers() -> dict[str, Any]:
    def task(node_id: str, config: Any, ctx: Any) -> Any:
        if node_id == "publish":
            return {"published": ctx["outputs"]["review"]["data"]}
        return {"text": f"{node_id} v{ctx['visit']}"}

    return {"task": task}


def test_review_loop_approve_on_second_visit_publishes_once() -> None:
    seen: list[Waiting] = []

    def approve(w: Waiting) -> tuple[str, dict[str, Any]]:
        seen.append(w)
        return ("approve", {"ok": w.visit}) if w.visit == 2 else ("reject", {"why": "meh"})

    r = run_local(review_loop(), review_handlers(), approve=approve)
    assert r.run.status == RunStatus.COMPLETED
    assert ran(r) == ["draft", "revise", "publish"]
    assert [w.node_id for w in seen] == ["review", "review"]
    assert [w.visit for w in seen] == [1, 2]
    assert seen[0].prompt == "draft v1"
    assert seen[0].token != seen[1].token  # a fresh token per wait
    assert visits(r) == {
        "start": 1,
        "draft": 1,
        "review": 2,
        "revise": 1,
        "publish": 1,
        "end": 1,
    }
    assert r.run.output == {"published": {"ok": 2}}
    assert r.state.outputs[("review", 1)] == {
        "decision": "reject",
        "data": {"why": "meh"},
        "actor": "local",
    }
    h = r.history()
    assert h.count("node.rejected:review") == 1
    assert h.count("node.approved:review") == 1
    assert h.count("node.waiting:review") == 2


def test_review_loop_always_rejected_fails_with_max_visits_naming_review() -> None:
    r = run_local(review_loop(), review_handlers(), approve=lambda w: ("reject", {}))
    assert r.run.status == RunStatus.FAILED
    err = r.run.error
    assert err is not None
    assert err.code == "max_visits"
    assert err.node_id == "review"
    assert "review" in err.message and "3" in err.message
    assert r.state.nodes["review"].visits == 3
    assert ran(r) == ["draft", "revise", "revise", "revise"]
    assert "publish" not in r.state.nodes or r.state.nodes["publish"].visits == 0
    assert r.history()[-1] == "run.failed"


# --- the seed code-review loop ------------------------------------------------------------


def code_review() -> Graph:
    g = Graph(id="code-review")
    g.add_nodes(
        Node("start", type="start"),
        Node("extract", type="task"),
        Node("check", type="task"),
        Node("detect", type="task"),
        Node("suggest", type="task"),
        Node("evaluate", type="task"),
        Node("end", type="end", config={"output": {"score": "{{evaluate.output.quality_score}}"}}),
    )
    g.connect("start", "extract", "check", "detect", "suggest", "evaluate")
    g.add_edges(
        Edge(
            "evaluate",
            "detect",
            condition=C.field("evaluate.output.quality_score").lt(C.ref("input.quality_threshold")),
        ),
        Edge("evaluate", "end", condition=C.otherwise()),
    )
    return g.validate_graph()


def test_code_review_loop_iterates_until_the_score_reaches_the_threshold() -> None:
    g = code_review()
    topo = topology(g)
    assert {g.edges[i].label for i in topo.back_edges} == {"evaluate->detect"}

    def evaluate(node_id: str, config: Any, ctx: Any) -> Any:
        return {"quality_score": 0.5 + 0.1 * ctx["visit"]}  # 0.6, 0.7, 0.8, 0.9

    def task(node_id: str, config: Any, ctx: Any) -> Any:
        return {"node": node_id, "visit": ctx["visit"]}

    r = run_local(g, {"task": task, "node:evaluate": evaluate}, input={"quality_threshold": 0.85})
    assert r.run.status == RunStatus.COMPLETED
    counts = Counter(ran(r))
    assert counts == {"extract": 1, "check": 1, "detect": 4, "suggest": 4, "evaluate": 4}
    v = visits(r)
    assert (v["detect"], v["suggest"], v["evaluate"]) == (4, 4, 4)
    assert v["end"] == 1
    assert r.run.output == {"score": pytest.approx(0.9)}
    # every visit's output is kept
    assert [r.state.outputs[("evaluate", i)]["quality_score"] for i in (1, 2, 3, 4)] == [
        pytest.approx(x) for x in (0.6, 0.7, 0.8, 0.9)
    ]
    assert r.history().count("node.completed:end") == 1


def test_code_review_loop_exits_after_one_pass_when_good_enough() -> None:
    r = run_local(
        code_review(),
        {"task": lambda n, c, ctx: {"quality_score": 0.99}},
        input={"quality_threshold": 0.85},
    )
    assert r.run.status == RunStatus.COMPLETED
    assert Counter(ran(r)) == {"extract": 1, "check": 1, "detect": 1, "suggest": 1, "evaluate": 1}
    assert r.run.output == {"score": 0.99}


def test_code_review_loop_missing_threshold_takes_the_otherwise_exit() -> None:
    # a missing path is false for every field op: the loop edge does not fire
    r = run_local(code_review(), {"task": lambda n, c, ctx: {"quality_score": 0.1}}, input={})
    assert r.run.status == RunStatus.COMPLETED
    assert visits(r)["evaluate"] == 1


# --- LoopGraph-style switch ---------------------------------------------------------------


def test_switch_node_loops_via_eq_conditions_until_done() -> None:
    g = Graph(id="switch-loop")
    g.add_nodes(
        Node("start", type="start"),
        Node("work", type="task"),
        Node("switch", type="switch"),
        Node("again", type="task"),
        Node("done", type="task"),
        Node("end", type="end"),
    )
    g.add_edges(
        Edge("start", "work"),
        Edge("work", "switch"),
        Edge("switch", "again", condition=C.field("switch.output.case").eq("again")),
        Edge("switch", "done", condition=C.field("switch.output.case").eq("done")),
        Edge("again", "work"),
        Edge("done", "end"),
    )
    g.validate_graph()

    def switch(node_id: str, config: Any, ctx: Any) -> Any:
        return {"case": "again" if ctx["visit"] < 4 else "done"}

    def task(node_id: str, config: Any, ctx: Any) -> Any:
        return {"node": node_id, "visit": ctx["visit"]}

    r = run_local(g, {"switch": switch, "task": task})
    assert r.run.status == RunStatus.COMPLETED
    assert Counter(ran(r)) == {"work": 4, "switch": 4, "again": 3, "done": 1}
    assert ran(r) == ["work", "switch", "again"] * 3 + ["work", "switch", "done"]
    assert r.run.output == {"node": "done", "visit": 1}
    # "done" is outside the loop: its untaken-exit signals were deferred, so it was never
    # skipped on iterations 1..3
    assert "node.skipped:done" not in r.history()
    assert r.state.nodes["done"].status == NodeStatus.COMPLETED


def test_switch_with_unknown_case_goes_idle_and_fails_no_end_reached() -> None:
    g = Graph(id="switch-bad")
    g.add_nodes(
        Node("start", type="start"),
        Node("switch", type="switch", max_visits=5),
        Node("again", type="task"),
        Node("done", type="task"),
        Node("end", type="end"),
    )
    g.add_edges(
        Edge("start", "switch"),
        Edge("switch", "again", condition=C.field("switch.output.case").eq("again")),
        Edge("switch", "done", condition=C.field("switch.output.case").eq("done")),
        Edge("again", "switch"),
        Edge("done", "end"),
    )
    g.validate_graph()
    cases = iter(["again", "again", "bogus"])
    r = run_local(g, {"switch": lambda n, c, ctx: {"case": next(cases)}, "task": lambda *a: {}})
    assert r.run.status == RunStatus.FAILED
    assert r.run.error is not None
    assert r.run.error.code == "no_end_reached"
    assert r.run.error.node_id == "switch"
    assert visits(r)["switch"] == 3
    assert r.state.nodes["done"].status == NodeStatus.SKIPPED  # dead at loop idle
    assert r.state.nodes["end"].status == NodeStatus.SKIPPED


# --- loops and joins: the loop-exit dead-signal deferral --------------------------------------


def loop_then_join() -> Graph:
    """fork (fan_out) -> x <-> y loop -> j ; fork -> p -> p2 -> j ; j (join all) -> end.

    y's output chooses: loop again, leave by y -> j, or leave by y -> alt -> j."""
    g = Graph(id="loop-join")
    g.add_nodes(
        Node("start", type="start"),
        Node("fork", type="task", fan_out=True),
        Node("x", type="task"),
        Node("y", type="task"),
        Node("alt", type="task"),
        Node("p", type="task"),
        Node("p2", type="task"),
        Node("j", type="task"),
        Node("end", type="end"),
    )
    g.add_edges(
        Edge("start", "fork"),
        Edge("fork", "x"),
        Edge("fork", "p"),
        Edge("x", "y"),
        Edge("y", "x", condition=C.field("y.output.again").eq(True)),
        Edge("y", "j", condition=C.field("y.output.alt").eq(False)),
        Edge("y", "alt", condition=C.otherwise()),
        Edge("alt", "j"),
        Edge("p", "p2"),
        Edge("p2", "j"),
        Edge("j", "end"),
    )
    return g.validate_graph()


def loop_join_handlers(exit_via_alt: bool) -> dict[str, Any]:
    def task(node_id: str, config: Any, ctx: Any) -> Any:
        if node_id == "y":
            return {"again": ctx["visit"] < 3, "alt": exit_via_alt}
        if node_id == "j":
            return {"seen": sorted(ctx["outputs"])}
        return {"node": node_id}

    return {"task": task}


def test_join_after_a_loop_waits_for_the_loop_to_exit() -> None:
    r = run_local(loop_then_join(), loop_join_handlers(exit_via_alt=False))
    assert r.run.status == RunStatus.COMPLETED
    v = visits(r)
    assert (v["x"], v["y"], v["j"], v["p"], v["p2"]) == (3, 3, 1, 1, 1)
    order = ran(r)
    assert order.count("j") == 1
    # j ran after the LAST y visit, not after the first iteration (p2 finished long before)
    assert order.index("j") > max(i for i, n in enumerate(order) if n == "y")
    assert order.index("p2") < order.index("j")
    assert r.state.nodes["alt"].status == NodeStatus.SKIPPED
    assert r.history().count("node.enqueued:j") == 1
    assert r.run.output is not None and "p2" in r.run.output["seen"]


def test_join_after_a_loop_gets_the_deferred_dead_signal_when_the_loop_exits_elsewhere() -> None:
    r = run_local(loop_then_join(), loop_join_handlers(exit_via_alt=True))
    assert r.run.status == RunStatus.COMPLETED
    v = visits(r)
    assert (v["x"], v["y"], v["alt"], v["j"]) == (3, 3, 1, 1)
    order = ran(r)
    assert order.index("j") > order.index("alt")
    assert order.count("j") == 1
    assert r.run.tokens == 0


@pytest.mark.parametrize(("leave_at", "via"), [(2, "x"), (3, "y")])
def test_two_exits_of_one_loop_into_a_join_fire_it_once(leave_at: int, via: str) -> None:
    """Loop x <-> y leaves either from x (x -> j) or from y (y -> j); the exit not taken is
    signalled dead once, when the loop goes idle, so j fires exactly once."""
    g = Graph(id="two-exits")
    g.add_nodes(
        Node("start", type="start"),
        Node("x", type="task"),
        Node("y", type="task"),
        Node("j", type="task"),
        Node("end", type="end"),
    )
    g.add_edges(
        Edge("start", "x"),
        Edge("x", "j", condition=C.field("x.output.leave").eq(True)),
        Edge("x", "y", condition=C.otherwise()),
        Edge("y", "j", condition=C.field("y.output.leave").eq(True)),
        Edge("y", "x", condition=C.otherwise()),
        Edge("j", "end"),
    )
    g.validate_graph()

    def task(node_id: str, config: Any, ctx: Any) -> Any:
        return {"leave": node_id == via and ctx["visit"] == leave_at, "by": node_id}

    r = run_local(g, {"task": task})
    assert r.run.status == RunStatus.COMPLETED
    assert visits(r)["j"] == 1
    assert visits(r)[via] == leave_at
    assert ran(r)[-1] == "j"
    assert r.run.tokens == 0


@pytest.mark.parametrize(("leave_at", "via"), [(2, "x"), (3, "y")])
def test_end_after_a_loop_with_two_exits_outputs_the_exiting_node(leave_at: int, via: str) -> None:
    g = Graph(id="two-exits-end")
    g.add_nodes(
        Node("start", type="start"),
        Node("x", type="task"),
        Node("y", type="task"),
        Node("end", type="end"),
    )
    g.add_edges(
        Edge("start", "x"),
        Edge("x", "end", condition=C.field("x.output.leave").eq(True)),
        Edge("x", "y", condition=C.otherwise()),
        Edge("y", "end", condition=C.field("y.output.leave").eq(True)),
        Edge("y", "x", condition=C.otherwise()),
    )
    g.validate_graph()

    def task(node_id: str, config: Any, ctx: Any) -> Any:
        return {"leave": node_id == via and ctx["visit"] == leave_at, "by": node_id}

    r = run_local(g, {"task": task})
    assert r.run.status == RunStatus.COMPLETED
    assert r.run.output == {"leave": True, "by": via}


def test_join_inside_a_loop_fires_once_per_iteration() -> None:
    g = Graph(id="loop-inner-join")
    g.add_nodes(
        Node("start", type="start"),
        Node("x", type="task", fan_out=True),
        Node("y1", type="task"),
        Node("y2", type="task"),
        Node("z", type="task"),
        Node("end", type="end"),
    )
    g.add_edges(
        Edge("start", "x"),
        Edge("x", "y1", condition=C.field("x.output.visit").gt(1)),  # not taken on visit 1
        Edge("x", "y2"),
        Edge("y1", "z"),
        Edge("y2", "z"),
        Edge("z", "x", condition=C.field("z.output.visit").lt(3)),
        Edge("z", "end", condition=C.otherwise()),
    )
    g.validate_graph()
    r = run_local(g, {"task": lambda n, c, ctx: {"visit": ctx["visit"]}})
    assert r.run.status == RunStatus.COMPLETED
    assert Counter(ran(r)) == {"x": 3, "y1": 2, "y2": 3, "z": 3}
    order = ran(r)
    # every z visit comes after the y2 visit of its own iteration
    z_at = [i for i, n in enumerate(order) if n == "z"]
    y2_at = [i for i, n in enumerate(order) if n == "y2"]
    assert all(y < z for y, z in zip(y2_at, z_at, strict=True))
    assert r.run.output == {"visit": 3}


def test_nested_loops_in_one_component() -> None:
    g = Graph(id="nested")
    g.add_nodes(
        Node("start", type="start"),
        Node("a", type="task"),
        Node("b", type="task"),
        Node("c", type="task"),
        Node("end", type="end"),
    )
    g.add_edges(
        Edge("start", "a"),
        Edge("a", "b"),
        Edge("b", "c"),
        Edge("c", "b", condition=C.field("c.output.inner").eq(True)),
        Edge("c", "a", condition=C.field("c.output.outer").eq(True)),
        Edge("c", "end", condition=C.otherwise()),
    )
    g.validate_graph()

    def c(node_id: str, config: Any, ctx: Any) -> Any:
        v = ctx["visit"]  # two inner passes per outer pass, three outer passes
        return {"inner": v % 2 == 1, "outer": v % 2 == 0 and v < 6, "v": v}

    r = run_local(g, {"task": lambda *a: {}, "node:c": c})
    assert r.run.status == RunStatus.COMPLETED
    assert visits(r) == {"start": 1, "a": 3, "b": 6, "c": 6, "end": 1}
    assert r.run.output == {"inner": False, "outer": False, "v": 6}


def test_loop_entered_at_two_nodes_iterates_instead_of_hanging() -> None:
    """n has an entry from outside the loop (fork) and an input from inside it (m). They are
    separate join groups: n runs once for the entry and once per pass of m, and never waits
    for an entry signal that can only come once."""
    g = Graph(id="two-entry-loop")
    g.add_nodes(
        Node("start", type="start"),
        Node("fork", type="task", fan_out=True),
        Node("m", type="task"),
        Node("n", type="task"),
        Node("end", type="end"),
    )
    g.add_edges(
        Edge("start", "fork"),
        Edge("fork", "m"),
        Edge("fork", "n"),
        Edge("m", "n"),
        Edge("n", "m", condition=C.field("n.output.again").eq(True)),
        Edge("n", "end", condition=C.otherwise()),
    )
    g.validate_graph()
    r = run_local(g, {"task": lambda n, c, ctx: {"again": n == "n" and ctx["visit"] < 3}})
    assert r.run.status == RunStatus.COMPLETED
    assert visits(r) == {"start": 1, "fork": 1, "m": 3, "n": 4, "end": 1}


# --- limits ---------------------------------------------------------------------------------


def test_max_steps_stops_a_loop_whose_exit_is_never_taken() -> None:
    g = Graph(id="steps", max_steps=20)
    g.add_nodes(
        Node("start", type="start"),
        Node("x", type="task"),
        Node("y", type="task"),
        Node("end", type="end"),
    )
    g.add_edges(
        Edge("start", "x"),
        Edge("x", "y"),
        Edge("y", "end", condition=C.field("y.output.done").eq(True)),
        Edge("y", "x", condition=C.otherwise()),
    )
    g.validate_graph()
    r = run_local(g, {"task": lambda n, c, ctx: {"done": False}})
    assert r.run.status == RunStatus.FAILED
    err = r.run.error
    assert err is not None
    assert err.code == "step_limit"
    assert err.type == "StepLimitExceeded"
    assert "20" in err.message
    assert r.run.steps == 20
    # start + 19 activations of x/y; the 21st activation was refused
    assert len(r.executions) == 19
    assert r.history()[-1] == "run.failed"


def test_max_visits_fails_even_without_approval_nodes() -> None:
    g = Graph(id="visits")
    g.add_nodes(
        Node("start", type="start"),
        Node("x", type="task", max_visits=4),
        Node("end", type="end"),
    )
    g.add_edges(
        Edge("start", "x"),
        Edge("x", "x", condition=C.field("x.output.more").eq(True)),  # self-loop
        Edge("x", "end", condition=C.otherwise()),
    )
    g.validate_graph()
    r = run_local(g, {"task": lambda n, c, ctx: {"more": True}})
    assert r.run.status == RunStatus.FAILED
    assert r.run.error is not None
    assert r.run.error.code == "max_visits"
    assert r.run.error.node_id == "x"
    assert ran(r) == ["x"] * 4

    r = run_local(g, {"task": lambda n, c, ctx: {"more": ctx["visit"] < 4}})
    assert r.run.status == RunStatus.COMPLETED
    assert ran(r) == ["x"] * 4


# --- inner loops feeding a join ------------------------------------------------------------


def self_loop_into_join(outer_loop: bool) -> Graph:
    """a (fan_out) -> b (self-loop while b.output.again) -> j ; a -> d -> j ; j -> end.

    With ``outer_loop``, j -> a closes an outer loop, so b's self-loop is nested in it."""
    g = Graph(id="inner-loop")
    g.add_nodes(
        Node("start", type="start"),
        Node("a", type="task", fan_out=True),
        Node("b", type="task"),
        Node("d", type="task"),
        Node("j", type="task"),
        Node("end", type="end"),
    )
    g.add_edges(
        Edge("start", "a"),
        Edge("a", "b"),
        Edge("a", "d"),
        Edge("b", "b", condition=C.field("b.output.again").eq(True)),
        Edge("b", "j"),
        Edge("d", "j"),
    )
    if outer_loop:
        g.add_edges(
            Edge("j", "a", condition=C.field("j.output.again").eq(True)),
            Edge("j", "end", condition=C.otherwise()),
        )
    else:
        g.add_edge(Edge("j", "end"))
    return g.validate_graph()


def inner_loop_handlers() -> dict[str, Any]:
    def task(node_id: str, config: Any, ctx: Any) -> Any:
        if node_id == "b":
            return {"again": ctx["visit"] == 1, "b_visit": ctx["visit"]}
        if node_id == "j":
            return {"again": False, "b_seen": ctx["outputs"]["b"]["b_visit"]}
        return {}

    return {"task": task}


def test_join_after_a_self_loop_waits_for_its_last_pass() -> None:
    r = run_local(self_loop_into_join(outer_loop=False), inner_loop_handlers())
    assert r.run.status == RunStatus.COMPLETED
    assert visits(r)["b"] == 2
    assert visits(r)["j"] == 1
    assert r.run.output == {"again": False, "b_seen": 2}
    assert r.run.tokens == 0


def test_join_after_a_nested_self_loop_waits_for_its_last_pass() -> None:
    r = run_local(self_loop_into_join(outer_loop=True), inner_loop_handlers())
    assert r.run.status == RunStatus.COMPLETED
    assert visits(r)["b"] == 2
    assert visits(r)["j"] == 1
    assert r.run.output == {"again": False, "b_seen": 2}
    assert r.run.tokens == 0


# --- property: random graphs with bounded loops ------------------------------------------------


@st.composite
def looped_graphs(draw: st.DrawFn) -> tuple[Graph, dict[str, bool]]:
    widths = draw(st.lists(st.integers(1, 3), min_size=1, max_size=4))
    layers: list[list[str]] = []
    k = 0
    for w in widths:
        layers.append([f"n{k + i}" for i in range(w)])
        k += w
    flat = [n for layer in layers for n in layer]
    flags = {n: draw(st.booleans()) for n in flat}
    edges = [Edge("start", n) for n in layers[0]]
    back: set[int] = set()
    for li, layer in enumerate(layers):
        later = [n for lay in layers[li + 1 :] for n in lay] + ["end"]
        upto = [n for lay in layers[: li + 1] for n in lay]
        for n in layer:
            if draw(st.integers(0, 2)) == 0:  # a bounded loop back to an earlier node
                limit = draw(st.integers(2, 3))
                target = draw(st.sampled_from(upto))
                edges.append(Edge(n, target, condition=C.field(f"{n}.visits").lt(limit)))
                back.add(len(edges) - 1)
            default = draw(st.sampled_from(later))
            for t in draw(st.lists(st.sampled_from(later), max_size=2, unique=True)):
                if t != default:
                    want = draw(st.booleans())
                    edges.append(Edge(n, t, condition=C.field(f"{n}.output.flag").eq(want)))
            edges.append(
                Edge(n, default, condition=C.otherwise())
                if draw(st.booleans())
                else Edge(n, default)
            )
    forward_in = Counter(e.target for i, e in enumerate(edges) if i not in back)
    for li, layer in enumerate(layers[1:], start=1):
        earlier = [n for lay in layers[:li] for n in lay]
        for n in layer:
            if forward_in[n] == 0:
                src = draw(st.sampled_from(earlier))
                edges.append(Edge(src, n, condition=C.field(f"{src}.output.flag").eq(True)))
    g = Graph(id="looped", max_steps=500)
    g.add_node(Node("start", type="start", fan_out=len(layers[0]) > 1))
    for n in flat:
        join = draw(st.sampled_from(["all", "any", 1, 2]))
        g.add_node(Node(n, type="task", join=join, fan_out=draw(st.booleans()), max_visits=10))
    g.add_node(Node("end", type="end"))
    g.add_edges(*edges)
    topo = topology(g)
    for node in g.nodes:
        if isinstance(node.join, int) and node.join > len(topo.join_inputs[node.id]):
            node.join = "all"
    g._invalidate()
    g.validate_graph()
    return g, flags


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(looped_graphs())
def test_random_graphs_with_bounded_loops_always_finish(
    case: tuple[Graph, dict[str, bool]],
) -> None:
    g, flags = case
    r = run_local(g, {"task": lambda nid, cfg, ctx: {"flag": flags[nid]}}, max_events=5_000)
    assert len(r.transitions) < 5_000, "the run did not settle"
    # never left "running" with nothing to do: it completes or fails with a clear code
    assert r.run.status in (RunStatus.COMPLETED, RunStatus.FAILED), r.history()
    if r.run.status == RunStatus.FAILED:
        assert r.run.error is not None
        assert r.run.error.code in ("no_end_reached", "max_visits", "step_limit")
    for nid, rec in r.state.nodes.items():
        assert not rec.is_active, nid
        assert rec.visits <= 10
    topo = topology(g)
    # With fan-out, several tokens may enter a loop (or one may leave it on every pass), and
    # each one goes on independently; without any, a node outside every loop runs at most once.
    fan_out_in_loop = any(n.fan_out for n in g.nodes)
    for nid in (n.id for n in g.nodes):
        if not fan_out_in_loop and nid not in topo.loop_of and nid in r.state.nodes:
            assert r.state.nodes[nid].visits <= 1, nid  # outside loops: at most once
