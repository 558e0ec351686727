"""The transition function: routing, joins, dead-path elimination, end output, fan-out,
determinism, and a property test over random DAGs.

Graphs are driven in-process with ``run_local``; outcomes are read from the run record, the
node records, the handler executions and the history.
"""

from __future__ import annotations

import itertools
from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from graph_core.conditions import Condition
from graph_core.engine import Env, advance
from graph_core.events import Event, NodeReported, RunSubmitted
from graph_core.memory import LocalResult, MemoryRun, run_local, view_of
from graph_core.model import Edge, Graph, JoinSpec, Node
from graph_core.state import Transition
from graph_core.status import NodeStatus, RunStatus
from tests.support.graphs import bug_triage_graph as bug_triage

C = Condition


def echo(node_id: str, config: Any, ctx: Any) -> Any:
    """Default handler: ``{"node": id, **config.get("out", {})}``."""
    return {"node": node_id, **config.get("out", {})}


def statuses(result: LocalResult) -> dict[str, NodeStatus]:
    return {nid: rec.status for nid, rec in result.state.nodes.items()}


def visits(result: LocalResult) -> dict[str, int]:
    return {nid: rec.visits for nid, rec in result.state.nodes.items()}


def ran(result: LocalResult) -> list[str]:
    return [nid for nid, _, _ in result.executions]


# --- bug triage (DESIGN §3) ---------------------------------------------------------------


def triage_handlers() -> dict[str, Any]:
    def agent(node_id: str, config: Any, ctx: Any) -> Any:
        if node_id == "triage":
            return {"severity": ctx["input"]["severity"], "summary": ctx["input"]["title"]}
        return {"labels": ["bug"], "assignee": "alice"}

    def notify(node_id: str, config: Any, ctx: Any) -> Any:
        return {"sent": True, "channel": config["channel"]}

    return {"agent": agent, "notification": notify}


def test_bug_triage_critical_escalates_and_skips_assign() -> None:
    r = run_local(bug_triage(), triage_handlers(), {"severity": "critical", "title": "prod down"})
    assert r.run.status == RunStatus.COMPLETED
    assert ran(r) == ["triage", "escalate"]
    st_ = statuses(r)
    assert st_["escalate"] == NodeStatus.COMPLETED
    assert st_["assign"] == NodeStatus.SKIPPED
    assert st_["end"] == NodeStatus.COMPLETED
    assert r.run.output == {"sent": True, "channel": "slack"}  # end's trigger: escalate
    assert "node.skipped:assign" in r.history()
    assert r.history()[-1] == "run.completed"


def test_bug_triage_non_critical_assigns_and_skips_escalate() -> None:
    r = run_local(bug_triage(), triage_handlers(), {"severity": "low", "title": "typo"})
    assert r.run.status == RunStatus.COMPLETED
    assert ran(r) == ["triage", "assign"]
    assert statuses(r)["escalate"] == NodeStatus.SKIPPED
    assert statuses(r)["assign"] == NodeStatus.COMPLETED
    assert r.run.output == {"labels": ["bug"], "assignee": "alice"}
    assert visits(r)["end"] == 1


def test_end_output_template_overrides_the_default() -> None:
    g = bug_triage(
        {"output": {"summary": "{{triage.output.summary}}", "sev": "{{input.severity}}"}}
    )
    r = run_local(g, triage_handlers(), {"severity": "critical", "title": "prod down"})
    assert r.run.status == RunStatus.COMPLETED
    assert r.run.output == {"summary": "prod down", "sev": "critical"}


def test_end_output_lone_placeholder_passes_raw_value() -> None:
    g = bug_triage({"output": "{{triage.output}}"})
    r = run_local(g, triage_handlers(), {"severity": "low", "title": "typo"})
    assert r.run.output == {"severity": "low", "summary": "typo"}


def test_end_output_template_with_missing_path_fails_the_run() -> None:
    g = bug_triage({"output": "{{escalate.output.sent}}"})  # escalate skipped on "low"
    r = run_local(g, triage_handlers(), {"severity": "low", "title": "typo"})
    assert r.run.status == RunStatus.FAILED
    assert r.run.error is not None
    assert r.run.error.code == "template"
    assert r.run.error.node_id == "end"


def test_first_matching_conditional_edge_wins_in_definition_order() -> None:
    g = Graph(id="first")
    g.add_nodes(
        Node("start", type="start"),
        Node("a", type="task", config={"out": {"x": 5}}),
        Node("b1", type="task"),
        Node("b2", type="task"),
        Node("b3", type="task"),
        Node("end", type="end"),
    )
    g.connect("start", "a")
    g.add_edges(
        Edge("a", "b1", condition=C.field("a.output.x").gt(10)),
        Edge("a", "b2", condition=C.field("a.output.x").gt(1)),  # first match
        Edge("a", "b3", condition=C.field("a.output.x").gt(0)),  # also matches, not taken
        Edge("b1", "end"),
        Edge("b2", "end"),
        Edge("b3", "end"),
    )
    g.validate_graph()
    r = run_local(g, {"task": echo})
    assert r.run.status == RunStatus.COMPLETED
    assert ran(r) == ["a", "b2"]
    assert statuses(r)["b1"] == NodeStatus.SKIPPED
    assert statuses(r)["b3"] == NodeStatus.SKIPPED
    assert r.run.output == {"node": "b2"}


@pytest.mark.parametrize(("x", "expected"), [(0, "fallback"), (1, "hit")])
def test_unconditional_edge_is_the_default_when_no_condition_matched(x: int, expected: str) -> None:
    g = Graph(id="dflt")
    g.add_nodes(
        Node("start", type="start"),
        Node("a", type="task", config={"out": {"x": x}}),
        Node("hit", type="task"),
        Node("fallback", type="task"),
        Node("end", type="end"),
    )
    g.connect("start", "a")
    # the unconditional edge is listed FIRST: it is still only the default
    g.add_edges(
        Edge("a", "fallback"),
        Edge("a", "hit", condition=C.field("a.output.x").eq(1)),
        Edge("hit", "end"),
        Edge("fallback", "end"),
    )
    g.validate_graph()
    r = run_local(g, {"task": echo})
    assert r.run.status == RunStatus.COMPLETED
    assert ran(r) == ["a", expected]
    other = {"hit", "fallback"} - {expected}
    assert statuses(r)[other.pop()] == NodeStatus.SKIPPED
    assert r.run.output == {"node": expected}


# --- diamonds and joins -----------------------------------------------------------------


def diamond(join: JoinSpec, left: bool, right: bool, arms: int = 2) -> Graph:
    """start -> fork (fan_out) -> arm0..armN (conditional) -> j (join) -> end."""
    g = Graph(id="diamond")
    flags = {f"arm{i}": (left if i == 0 else right) for i in range(arms)}
    g.add_nodes(
        Node("start", type="start"),
        Node("fork", type="task", fan_out=True, config={"out": flags}),
        *[Node(f"arm{i}", type="task") for i in range(arms)],
        Node("j", type="task", join=join),
        Node("end", type="end"),
    )
    g.connect("start", "fork")
    for i in range(arms):
        g.add_edge(Edge("fork", f"arm{i}", condition=C.field(f"fork.output.arm{i}").eq(True)))
        g.add_edge(Edge(f"arm{i}", "j"))
    g.connect("j", "end")
    return g.validate_graph()


def join_handlers() -> dict[str, Any]:
    def join(node_id: str, config: Any, ctx: Any) -> Any:
        return {"seen": sorted(k for k in ctx["outputs"] if k.startswith("arm"))}

    return {"task": echo, "node:j": join}


def test_diamond_one_arm_not_taken_join_all_fires_once_with_the_taken_arm() -> None:
    r = run_local(diamond("all", left=True, right=False), join_handlers())
    assert r.run.status == RunStatus.COMPLETED
    assert ran(r) == ["fork", "arm0", "j"]
    assert statuses(r)["arm1"] == NodeStatus.SKIPPED
    assert visits(r)["j"] == 1
    assert r.run.output == {"seen": ["arm0"]}
    assert r.history().count("node.enqueued:j") == 1


def test_diamond_both_arms_taken_join_all_fires_once_after_both() -> None:
    r = run_local(diamond("all", left=True, right=True), join_handlers())
    assert r.run.status == RunStatus.COMPLETED
    assert ran(r) == ["fork", "arm0", "arm1", "j"]
    assert visits(r)["j"] == 1
    h = r.history()
    assert h.index("node.enqueued:j") > h.index("node.completed:arm1")
    assert r.run.output == {"seen": ["arm0", "arm1"]}


def test_diamond_no_arm_taken_skips_the_join_and_fails_with_no_end_reached() -> None:
    r = run_local(diamond("all", left=False, right=False), join_handlers())
    assert r.run.status == RunStatus.FAILED
    assert r.run.error is not None
    assert r.run.error.code == "no_end_reached"
    assert r.run.error.node_id == "fork"
    assert "fork" in r.run.error.message
    assert statuses(r)["j"] == NodeStatus.SKIPPED
    assert statuses(r)["end"] == NodeStatus.SKIPPED
    assert ran(r) == ["fork"]


def test_join_any_fires_on_the_first_taken_arm_once() -> None:
    r = run_local(diamond("any", left=True, right=True), join_handlers())
    assert r.run.status == RunStatus.COMPLETED
    assert visits(r)["j"] == 1
    # j fires right after arm0 completed, before arm1 reported
    h = r.history()
    assert h.index("node.enqueued:j") < h.index("node.completed:arm1")
    assert ran(r) == ["fork", "arm0", "arm1", "j"]
    assert r.history().count("node.enqueued:j") == 1


def test_join_any_with_dead_first_arm_fires_on_the_taken_one() -> None:
    r = run_local(diamond("any", left=False, right=True), join_handlers())
    assert r.run.status == RunStatus.COMPLETED
    assert ran(r) == ["fork", "arm1", "j"]
    assert visits(r)["j"] == 1


@pytest.mark.parametrize(
    ("taken", "fires_after", "fires_before"),
    [
        ((True, True, True), "arm1", "arm2"),  # the 2nd taken arm is arm1; arm2 still running
        ((True, False, True), "arm2", None),  # the 2nd taken arm is arm2
        ((True, False, False), "arm0", None),  # fewer than 2 taken: fires once all signalled
    ],
)
def test_join_n_fires_on_the_nth_taken_arm(
    taken: tuple[bool, bool, bool], fires_after: str, fires_before: str | None
) -> None:
    g = Graph(id="join-n")
    g.add_nodes(
        Node("start", type="start"),
        Node(
            "fork",
            type="task",
            fan_out=True,
            config={"out": {f"arm{i}": t for i, t in enumerate(taken)}},
        ),
        *[Node(f"arm{i}", type="task") for i in range(3)],
        Node("j", type="task", join=2),
        Node("end", type="end"),
    )
    g.connect("start", "fork")
    for i in range(3):
        g.add_edge(Edge("fork", f"arm{i}", condition=C.field(f"fork.output.arm{i}").eq(True)))
        g.add_edge(Edge(f"arm{i}", "j"))
    g.connect("j", "end")
    g.validate_graph()
    r = run_local(g, join_handlers())
    assert r.run.status == RunStatus.COMPLETED
    assert visits(r)["j"] == 1
    assert [n for n in ran(r) if n.startswith("arm")] == [
        f"arm{i}" for i, t in enumerate(taken) if t
    ]
    h = r.history()
    assert h.count("node.enqueued:j") == 1
    assert h.index("node.enqueued:j") > h.index(f"node.completed:{fires_after}")
    if fires_before is not None:
        assert h.index("node.enqueued:j") < h.index(f"node.completed:{fires_before}")


def test_join_all_fires_only_after_every_taken_arm_even_with_long_arms() -> None:
    g = Graph(id="long-arms")
    g.add_nodes(
        Node("start", type="start"),
        Node("fork", type="task", fan_out=True),
        Node("a1", type="task"),
        Node("a2", type="task"),
        Node("a3", type="task"),
        Node("b1", type="task"),
        Node("j", type="task"),
        Node("end", type="end"),
    )
    g.add_edges(Edge("start", "fork"), Edge("fork", "a1"), Edge("fork", "b1"))
    g.connect("a1", "a2", "a3", "j")
    g.connect("b1", "j", "end")
    g.validate_graph()
    r = run_local(g, {"task": echo})
    assert r.run.status == RunStatus.COMPLETED
    assert ran(r)[-1] == "j"
    assert set(ran(r)) == {"fork", "a1", "a2", "a3", "b1", "j"}
    assert visits(r)["j"] == 1


def dead_last_graph() -> Graph:
    """fork -> b -> end, and fork -> x -> y -> end where x's only edge (to y) is not taken.

    b completes first (its taken signal reaches end), then x completes and kills y: the
    *dead* signal is the last one end's join receives."""
    g = Graph(id="dead-last")
    g.add_nodes(
        Node("start", type="start"),
        Node("fork", type="task", fan_out=True),
        Node("b", type="task"),
        Node("x", type="task"),
        Node("y", type="task"),
        Node("end", type="end"),
    )
    g.add_edges(
        Edge("start", "fork"),
        Edge("fork", "b"),
        Edge("fork", "x"),
        Edge("b", "end"),
        Edge("x", "y", condition=C.field("x.output.go").eq(True)),
        Edge("y", "end"),
    )
    return g.validate_graph()


def test_join_with_dead_signal_last_still_fires_once() -> None:
    r = run_local(dead_last_graph(), {"task": lambda n, c, ctx: {"from": n, "go": False}})
    assert r.run.status == RunStatus.COMPLETED
    assert ran(r) == ["fork", "b", "x"]
    assert statuses(r)["y"] == NodeStatus.SKIPPED
    assert visits(r)["end"] == 1


def test_end_default_output_is_the_taken_predecessor_even_when_a_dead_signal_arrives_last() -> None:
    r = run_local(dead_last_graph(), {"task": lambda n, c, ctx: {"from": n, "go": False}})
    assert r.run.status == RunStatus.COMPLETED
    assert r.run.output == {"from": "b", "go": False}


# --- dead ends -----------------------------------------------------------------------------


def test_run_going_idle_without_end_fails_with_no_end_reached_naming_the_node() -> None:
    g = Graph(id="dead-end")
    g.add_nodes(
        Node("start", type="start"),
        Node("check", type="task", config={"out": {"ok": False}}),
        Node("next", type="task"),
        Node("end", type="end"),
    )
    g.add_edges(
        Edge("start", "check"),
        Edge("check", "next", condition=C.field("check.output.ok").eq(True)),
        Edge("next", "end"),
    )
    g.validate_graph()
    r = run_local(g, {"task": echo})
    assert r.run.status == RunStatus.FAILED
    assert r.run.error is not None
    assert r.run.error.code == "no_end_reached"
    assert r.run.error.node_id == "check"
    assert "'check'" in r.run.error.message
    assert ran(r) == ["check"]
    assert statuses(r)["next"] == NodeStatus.SKIPPED
    assert r.history()[-1] == "run.failed"


# --- large fan-out ----------------------------------------------------------------------------


def test_fan_out_of_1000_branches_into_a_join_completes_once() -> None:
    n = 1000
    g = Graph(id="fan1000")
    g.add_nodes(
        Node("start", type="start"),
        Node("fan", type="task", fan_out=True),
        *[Node(f"b{i}", type="task") for i in range(n)],
        Node("join", type="task", join="all"),
        Node("end", type="end"),
    )
    g.connect("start", "fan")
    g.add_edges(*[Edge("fan", f"b{i}") for i in range(n)])
    g.add_edges(*[Edge(f"b{i}", "join") for i in range(n)])
    g.connect("join", "end")
    g.validate_graph()
    r = run_local(g, {"task": lambda nid, cfg, ctx: {"i": nid}})
    assert r.run.status == RunStatus.COMPLETED
    assert r.state.nodes["join"].visits == 1
    counts = Counter(ran(r))
    assert all(counts[f"b{i}"] == 1 for i in range(n))
    assert counts["join"] == 1
    assert len(r.executions) == n + 2
    assert ran(r)[-1] == "join"
    assert r.run.output == {"i": "join"}
    assert r.run.tokens == 0


# --- determinism ----------------------------------------------------------------------------


def dump(t: Transition) -> dict[str, Any]:
    return {
        "run": t.run.model_dump(mode="json") if t.run else None,
        "nodes": {k: v.model_dump(mode="json") for k, v in t.nodes.items()},
        "outputs": sorted((list(k), v) for k, v in t.outputs.items()),
        "joins": sorted((list(k), v) for k, v in t.joins.items()),
        "loops": {k: v.model_dump(mode="json") for k, v in t.loops.items()},
        "active_add": t.active_add,
        "active_remove": sorted(t.active_remove),
        "actions": [a.model_dump(mode="json") for a in t.actions],
        "history": [h.model_dump(mode="json") for h in t.history],
        "ignored": t.ignored,
    }


def test_same_events_on_fresh_runs_give_equal_transitions() -> None:
    g = diamond("all", left=True, right=True)
    events: list[Event] = [
        RunSubmitted(run_id="r", graph_id=g.id, graph_version=1, input={"k": 1}),
        NodeReported(
            run_id="r",
            node_id="fork",
            visit=1,
            attempt=1,
            status="completed",
            output={"arm0": True, "arm1": True},
        ),
        NodeReported(run_id="r", node_id="arm1", visit=1, attempt=1, status="completed", output=1),
        NodeReported(run_id="r", node_id="arm1", visit=1, attempt=1, status="completed", output=1),
        NodeReported(run_id="r", node_id="arm0", visit=1, attempt=1, status="completed", output=0),
        NodeReported(run_id="r", node_id="j", visit=1, attempt=1, status="completed", output="j"),
    ]

    def play() -> list[dict[str, Any]]:
        mem = MemoryRun()
        toks = itertools.count()
        out = []
        for i, ev in enumerate(events):
            t = advance(g, view_of(mem), ev, Env(100.0 + i, lambda: f"t{next(toks)}"))
            mem.apply(t)
            out.append(dump(t))
        assert mem.run is not None and mem.run.status == RunStatus.COMPLETED
        return out

    first, second = play(), play()
    assert first == second
    assert first[3]["ignored"] is not None  # the duplicate report
    assert first[-1]["run"]["output"] == "j"


# --- property: random DAGs ----------------------------------------------------------------


@st.composite
def random_dags(draw: st.DrawFn) -> tuple[Graph, dict[str, bool]]:
    layers = draw(st.lists(st.integers(1, 3), min_size=1, max_size=4))
    names: list[list[str]] = []
    k = 0
    for width in layers:
        names.append([f"n{k + i}" for i in range(width)])
        k += width
    flat = [n for layer in names for n in layer]
    flags = {n: draw(st.booleans()) for n in flat}
    joins: dict[str, JoinSpec] = {
        n: draw(st.sampled_from(["all", "any", 1, 2])) for n in [*flat, "end"]
    }
    fan = {n: draw(st.booleans()) for n in flat}
    g = Graph(id="rand", max_steps=10_000)
    nodes = [Node("start", type="start")]
    edges: list[Edge] = [Edge("start", n) for n in names[0]] if len(names[0]) == 1 else []
    if len(names[0]) > 1:
        nodes[0] = Node("start", type="start", fan_out=True)
        edges = [Edge("start", n) for n in names[0]]
    for li, layer in enumerate(names):
        later = [n for lay in names[li + 1 :] for n in lay] + ["end"]
        for n in layer:
            targets = draw(st.lists(st.sampled_from(later), min_size=0, max_size=3, unique=True))
            default = draw(st.sampled_from(later))
            for t in targets:
                if t == default:
                    continue
                want = draw(st.booleans())
                edges.append(Edge(n, t, condition=C.field(f"{n}.output.flag").eq(want)))
            if draw(st.booleans()):
                edges.append(Edge(n, default, condition=C.otherwise()))
            else:
                edges.append(Edge(n, default))
    incoming = Counter(e.target for e in edges)
    for li, layer in enumerate(names[1:], start=1):
        earlier = [n for lay in names[:li] for n in lay]
        for n in layer:
            if incoming[n] == 0:  # keep every node reachable: a conditional edge into it
                src = draw(st.sampled_from(earlier))
                want = draw(st.booleans())
                edges.append(Edge(src, n, condition=C.field(f"{src}.output.flag").eq(want)))
                incoming[n] += 1
    for n in flat:
        spec = joins[n]
        if isinstance(spec, int) and spec > incoming[n]:
            spec = "all"
        nodes.append(Node(n, type="task", join=spec, fan_out=fan[n]))
    end_join = joins["end"]
    if isinstance(end_join, int) and end_join > incoming["end"]:
        end_join = "all"
    nodes.append(Node("end", type="end", join=end_join))
    g.add_nodes(*nodes)
    g.add_edges(*edges)
    g.validate_graph()
    return g, flags


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_dags())
def test_random_dags_always_terminate_and_run_each_node_at_most_once(
    case: tuple[Graph, dict[str, bool]],
) -> None:
    g, flags = case
    r = run_local(g, {"task": lambda nid, cfg, ctx: {"flag": flags[nid]}}, max_events=10_000)
    assert len(r.transitions) < 10_000, "the run did not settle"
    run = r.run
    assert run.status in (RunStatus.COMPLETED, RunStatus.FAILED)
    if run.status == RunStatus.FAILED:
        assert run.error is not None and run.error.code == "no_end_reached"
    else:
        assert r.state.nodes["end"].status == NodeStatus.COMPLETED
    counts = Counter(ran(r))
    assert all(c == 1 for c in counts.values()), counts
    for nid, rec in r.state.nodes.items():
        assert rec.visits <= 1, (nid, rec)
        assert rec.backlog == 0
        assert rec.status not in (NodeStatus.QUEUED, NodeStatus.RUNNING, NodeStatus.WAITING)
    assert r.history().count("run.completed") + r.history().count("run.failed") == 1
    # no event after the run finished changed anything
    finished_at = next(i for i, t in enumerate(r.transitions) if t.run and t.run.finished_at)
    assert all(t.ignored is not None for t in r.transitions[finished_at + 1 :])
