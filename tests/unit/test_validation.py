"""validate_graph: one test per rule, the all-at-once report, valid graphs, and fuzzing."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graph_core.conditions import Condition
from graph_core.errors import GraphValidationError, Problem
from graph_core.model import Graph, Node
from graph_core.validation import PROBLEM_CODES, validate_graph

Json = dict[str, Any]


def node(node_id: str, type_: str = "task", **fields: Any) -> Json:
    return {"id": node_id, "type": type_, **fields}


def edge(source: str, target: str, condition: Json | None = None) -> Json:
    data: Json = {"source": source, "target": target}
    if condition is not None:
        data["condition"] = condition
    return data


def field(path: str, op: str, value: Any = None) -> Json:
    return {"type": "field", "path": path, "op": op, "value": value}


OTHERWISE: Json = {"type": "otherwise"}


def load(nodes: list[Json], edges: list[Json], **extra: Any) -> Graph:
    return Graph.from_dict({"id": "g", "nodes": nodes, "edges": edges, **extra}, validate=False)


def check(nodes: list[Json], edges: list[Json]) -> list[Problem]:
    return validate_graph(load(nodes, edges))


def codes(problems: list[Problem]) -> set[str]:
    return {p.code for p in problems}


def the(problems: list[Problem], code: str) -> Problem:
    """The single problem with ``code`` (fails if there are none or several)."""
    found = [p for p in problems if p.code == code]
    assert len(found) == 1, problems
    return found[0]


START, END = node("start", "start"), node("end", "end")


# --- valid graphs ------------------------------------------------------------------------------

BUG_TRIAGE: Json = {
    "id": "bug-triage",
    "name": "Bug Triage",
    "version": 1,
    "trigger": {"type": "webhook", "source_type": "github"},
    "nodes": [
        {"id": "start", "type": "start"},
        {
            "id": "triage",
            "type": "agent",
            "config": {"agent_id": "triage-agent"},
            "retry": {
                "max_attempts": 3,
                "backoff": "exponential",
                "initial_delay_s": 1,
                "max_delay_s": 60,
            },
            "timeout_s": 30,
            "queue": "default",
        },
        {
            "id": "escalate",
            "type": "notification",
            "config": {"channel": "slack", "text": "{{triage.output.summary}}"},
        },
        {"id": "assign", "type": "agent", "config": {"agent_id": "labeler-agent"}},
        {"id": "end", "type": "end"},
    ],
    "edges": [
        {"source": "start", "target": "triage"},
        {
            "source": "triage",
            "target": "escalate",
            "condition": field("triage.output.severity", "eq", "critical"),
        },
        {"source": "triage", "target": "assign", "condition": OTHERWISE},
        {"source": "escalate", "target": "end"},
        {"source": "assign", "target": "end"},
    ],
}

REVIEW_LOOP: Json = {
    "id": "content-review",
    "nodes": [
        START,
        node("draft", "agent"),
        node("review", "human", max_visits=5),
        node("revise", "agent"),
        node("publish", "notification"),
        END,
    ],
    "edges": [
        edge("start", "draft"),
        edge("draft", "review"),
        edge("review", "publish", field("review.output.action", "eq", "approve")),
        edge("review", "revise", OTHERWISE),
        edge("revise", "review"),
        edge("publish", "end"),
    ],
}

CODE_REVIEW: Json = {
    "id": "code-review",
    "nodes": [
        START,
        node("extract", "function"),
        node("check", "agent"),
        node("detect", "agent"),
        node("suggest", "agent"),
        node("evaluate", "agent", max_visits=3),
        END,
    ],
    "edges": [
        edge("start", "extract"),
        edge("extract", "check"),
        edge("check", "detect"),
        edge("detect", "suggest"),
        edge("suggest", "evaluate"),
        # Conditions compare with literals; 0.8 stands for the run's quality threshold.
        edge("evaluate", "detect", field("evaluate.output.quality_score", "lt", 0.8)),
        edge("evaluate", "end", OTHERWISE),
    ],
}

PARALLEL: Json = {
    "id": "checks",
    "nodes": [
        START,
        node("analyze", "agent"),
        node("checks", "parallel", config={"join": 2}),
        node("security", "agent", parent="checks"),
        node("compliance", "agent", parent="checks"),
        node("notify", "notification", parent="checks"),
        node("summarize", "agent"),
        END,
    ],
    "edges": [
        edge("start", "analyze"),
        edge("analyze", "checks"),
        edge("checks", "summarize"),
        edge("summarize", "end"),
    ],
}

DIAMOND: Json = {
    "id": "diamond",
    "nodes": [START, node("a", fan_out=True), node("b"), node("c"), node("d", join=2), END],
    "edges": [
        edge("start", "a"),
        edge("a", "b"),
        edge("a", "c", field("input.also_c", "eq", True)),
        edge("b", "d"),
        edge("c", "d"),
        edge("d", "end"),
    ],
}


@pytest.mark.parametrize(
    "data",
    [BUG_TRIAGE, REVIEW_LOOP, CODE_REVIEW, PARALLEL, DIAMOND],
    ids=["bug-triage", "review-loop", "code-review", "parallel", "diamond"],
)
def test_valid_graphs_have_no_problems(data: Json) -> None:
    graph = Graph.from_dict(data)  # raises if invalid
    assert validate_graph(graph) == []


def test_builder_graph_validates() -> None:
    graph = Graph(id="built").add_nodes(Node("start", type="start"), Node("a", type="agent"))
    graph.add_node(Node("end", type="end")).connect("start", "a", "end")
    assert graph.validate_graph() is graph
    graph.add_node(Node("lost", type="agent"))
    with pytest.raises(GraphValidationError) as info:
        graph.validate_graph()
    assert info.value.codes == ["unreachable_node"]


# --- nodes and edges ---------------------------------------------------------------------------


def test_duplicate_node() -> None:
    problems = check(
        [START, node("a"), node("a", "agent"), END], [edge("start", "a"), edge("a", "end")]
    )
    assert codes(problems) == {"duplicate_node"}
    assert the(problems, "duplicate_node").path == "nodes[2].id"


def test_dangling_edge_names_the_edge_and_suggests() -> None:
    nodes = [START, node("triage"), END]
    problems = check(nodes, [edge("start", "triage"), edge("tirage", "end"), edge("triage", "end")])
    p = the(problems, "dangling_edge")
    assert p.path == "edges[1].source"
    assert "'tirage'" in p.message
    assert "did you mean 'triage'" in p.message
    assert codes(problems) == {"dangling_edge"}


def test_missing_start() -> None:
    problems = check([node("a"), END], [edge("a", "end")])
    assert codes(problems) == {"missing_start"}
    assert the(problems, "missing_start").path == "graph"


def test_multiple_starts_names_the_extra_start() -> None:
    problems = check([START, node("s2", "start"), END], [edge("start", "end"), edge("s2", "end")])
    assert codes(problems) == {"multiple_starts"}
    assert the(problems, "multiple_starts").path == "nodes[1].type"


def test_missing_end() -> None:
    problems = check([START, node("a")], [edge("start", "a")])
    assert codes(problems) == {"missing_end"}


def test_no_end_reachable() -> None:
    problems = check([START, node("a"), node("b"), END], [edge("start", "a"), edge("b", "end")])
    assert the(problems, "no_end_reachable").path == "nodes[0]"
    assert codes(problems) == {"no_end_reachable", "unreachable_node"}


def test_edge_into_start() -> None:
    problems = check(
        [START, node("a", max_visits=2), END],
        [
            edge("start", "a"),
            edge("a", "start", field("a.output.again", "eq", True)),
            edge("a", "end"),
        ],
    )
    assert codes(problems) == {"edge_into_start"}
    assert the(problems, "edge_into_start").path == "edges[1].target"


def test_edge_out_of_end() -> None:
    problems = check(
        [START, node("a"), END], [edge("start", "a"), edge("a", "end"), edge("end", "a")]
    )
    assert the(problems, "edge_out_of_end").path == "edges[2].source"
    assert "edge_out_of_end" in codes(problems)


def test_unreachable_node() -> None:
    problems = check(
        [START, node("a"), node("orphan"), END], [edge("start", "a"), edge("a", "end")]
    )
    assert codes(problems) == {"unreachable_node"}
    assert the(problems, "unreachable_node").path == "nodes[2]"


def test_children_are_reachable_through_their_parent() -> None:
    assert validate_graph(Graph.from_dict(PARALLEL)) == []


def test_child_has_edges() -> None:
    nodes = [START, node("p", "parallel"), node("c1", parent="p"), node("c2", parent="p"), END]
    problems = check(nodes, [edge("start", "p"), edge("p", "end"), edge("c1", "end")])
    assert codes(problems) == {"child_has_edges"}
    p = the(problems, "child_has_edges")
    assert p.path == "edges[2].source"
    assert "'c1'" in p.message


@pytest.mark.parametrize(
    ("parent", "why"),
    [("ghost", "is not a node"), ("a", "'task' node"), ("c", "its own parent")],
)
def test_bad_parent(parent: str, why: str) -> None:
    nodes = [START, node("a"), node("c", parent=parent), END]
    problems = check(nodes, [edge("start", "a"), edge("a", "end")])
    assert codes(problems) == {"bad_parent"}
    p = the(problems, "bad_parent")
    assert p.path == "nodes[2].parent"
    assert why in p.message
    assert repr(parent) in p.message


def test_empty_parallel() -> None:
    problems = check([START, node("p", "parallel"), END], [edge("start", "p"), edge("p", "end")])
    assert codes(problems) == {"empty_parallel"}
    assert the(problems, "empty_parallel").path == "nodes[1]"


def test_nested_parallel() -> None:
    nodes = [
        START,
        node("p", "parallel"),
        node("inner", "parallel", parent="p"),
        node("leaf", parent="inner"),
        END,
    ]
    problems = check(nodes, [edge("start", "p"), edge("p", "end")])
    assert codes(problems) == {"nested_parallel"}
    assert the(problems, "nested_parallel").path == "nodes[2].parent"


def test_start_must_not_have_a_parent() -> None:
    nodes = [node("start", "start", parent="p"), node("p", "parallel"), node("c", parent="p"), END]
    problems = check(nodes, [edge("start", "end")])
    assert the(problems, "start_has_parent").path == "nodes[0].parent"


def test_end_must_not_have_a_parent() -> None:
    nodes = [START, node("p", "parallel"), node("end", "end", parent="p")]
    problems = check(nodes, [edge("start", "p")])
    assert the(problems, "end_has_parent").path == "nodes[2].parent"


def test_end_must_not_fan_out() -> None:
    problems = check([START, node("end", "end", fan_out=True)], [edge("start", "end")])
    assert codes(problems) == {"end_fan_out"}
    assert the(problems, "end_fan_out").path == "nodes[1].fan_out"


def test_human_nodes_need_no_config() -> None:
    assert check([START, node("ok", "human"), END], [edge("start", "ok"), edge("ok", "end")]) == []


# --- conditions and routing --------------------------------------------------------------------


def test_unknown_path_node() -> None:
    nodes = [START, node("triage"), node("x"), END]
    edges = [
        edge("start", "triage"),
        edge("triage", "x", field("tirage.output.severity", "eq", "critical")),
        edge("triage", "end", field("input.severity", "exists")),  # input.* is fine
        edge("x", "end"),
    ]
    problems = check(nodes, edges)
    assert codes(problems) == {"unknown_path_node"}
    p = the(problems, "unknown_path_node")
    assert p.path == "edges[1].condition.path"
    assert "'tirage'" in p.message
    assert "did you mean 'triage'" in p.message


def test_unknown_path_node_inside_composites() -> None:
    cond = {
        "type": "not",
        "conditions": [{"type": "any", "conditions": [field("nope.visits", "gt", 2)]}],
    }
    problems = check(
        [START, node("a"), END],
        [edge("start", "a"), edge("a", "end", cond), edge("a", "end", OTHERWISE)],
    )
    assert (
        the(problems, "unknown_path_node").path
        == "edges[1].condition.conditions[0].conditions[0].path"
    )


def test_bad_path_in_a_condition_built_around_the_model() -> None:
    bad = Condition.model_construct(type="field", path="a..x", op="eq", value=1, conditions=())
    graph = load([START, node("a"), END], [edge("start", "a"), edge("a", "end")])
    graph.edges[1] = graph.edges[1].model_copy(update={"condition": bad})
    problems = validate_graph(graph)
    assert the(problems, "bad_path").path == "edges[1].condition.path"


def test_nested_otherwise() -> None:
    cond = {"type": "not", "conditions": [OTHERWISE]}
    problems = check(
        [START, node("a"), node("b"), END],
        [edge("start", "a"), edge("a", "b", cond), edge("a", "end"), edge("b", "end")],
    )
    assert codes(problems) == {"nested_otherwise"}
    assert the(problems, "nested_otherwise").path == "edges[1].condition.conditions[0]"


def test_multiple_otherwise() -> None:
    nodes = [START, node("a"), node("b"), node("c"), END]
    edges = [
        edge("start", "a"),
        edge("a", "b", OTHERWISE),
        edge("a", "c", OTHERWISE),
        edge("b", "end"),
        edge("c", "end"),
    ]
    problems = check(nodes, edges)
    assert codes(problems) == {"multiple_otherwise"}
    p = the(problems, "multiple_otherwise")
    assert p.path == "nodes[1]"
    assert "edges[1] a->b" in p.message
    assert "edges[2] a->c" in p.message


def test_otherwise_on_a_fan_out_node_is_fine() -> None:
    nodes = [START, node("a", fan_out=True), node("b"), node("c"), node("d", join="any"), END]
    edges = [
        edge("start", "a"),
        edge("a", "b", field("a.output.b", "eq", True)),
        edge("a", "c", OTHERWISE),
        edge("b", "d"),
        edge("c", "d"),
        edge("d", "end"),
    ]
    assert check(nodes, edges) == []


def test_ambiguous_unconditional_names_the_dead_edge() -> None:
    nodes = [START, node("a"), node("b"), node("c"), END]
    edges = [edge("start", "a"), edge("a", "b"), edge("a", "c"), edge("b", "end"), edge("c", "end")]
    problems = check(nodes, edges)
    assert codes(problems) == {"ambiguous_unconditional"}
    p = the(problems, "ambiguous_unconditional")
    assert p.path == "edges[2]"
    assert "edges[1] a->b" in p.message


def test_several_unconditional_edges_are_fine_with_fan_out() -> None:
    nodes = [START, node("a", fan_out=True), node("b"), node("c"), node("d"), END]
    edges = [
        edge("start", "a"),
        edge("a", "b"),
        edge("a", "c"),
        edge("b", "d"),
        edge("c", "d"),
        edge("d", "end"),
    ]
    assert check(nodes, edges) == []


def test_conditional_edges_to_different_targets_are_fine() -> None:
    nodes = [START, node("a"), node("b"), node("c"), END]
    edges = [
        edge("start", "a"),
        edge("a", "b", field("a.output.x", "gt", 1)),
        edge("a", "c", field("a.output.x", "lte", 1)),
        edge("a", "end"),  # roomkit-graph's default edge: taken when no condition matched
        edge("b", "end"),
        edge("c", "end"),
    ]
    assert check(nodes, edges) == []


def test_ambiguous_default() -> None:
    nodes = [START, node("a"), node("b"), END]
    edges = [edge("start", "a"), edge("a", "b"), edge("a", "end", OTHERWISE), edge("b", "end")]
    problems = check(nodes, edges)
    assert codes(problems) == {"ambiguous_default"}
    assert the(problems, "ambiguous_default").path == "nodes[1]"


# --- joins, loops, waits -------------------------------------------------------------------------


def test_unsatisfiable_join() -> None:
    nodes = [START, node("a", fan_out=True), node("b"), node("j", join=3), END]
    edges = [edge("start", "a"), edge("a", "b"), edge("a", "j"), edge("b", "j"), edge("j", "end")]
    problems = check(nodes, edges)
    assert codes(problems) == {"unsatisfiable_join"}
    p = the(problems, "unsatisfiable_join")
    assert p.path == "nodes[3].join"
    assert "only 2" in p.message


def test_join_inputs_do_not_count_back_edges() -> None:
    nodes = [START, node("a", join=2, max_visits=3), node("b"), END]
    edges = [
        edge("start", "a"),
        edge("a", "b"),
        edge("b", "a", OTHERWISE),
        edge("b", "end", field("b.output.done", "eq", True)),
    ]
    problems = check(nodes, edges)
    assert codes(problems) == {"unsatisfiable_join"}
    assert the(problems, "unsatisfiable_join").path == "nodes[1].join"


def test_unsatisfiable_children_join() -> None:
    nodes = [
        START,
        node("p", "parallel", config={"join": 3}),
        node("c1", parent="p"),
        node("c2", parent="p"),
        END,
    ]
    problems = check(nodes, [edge("start", "p"), edge("p", "end")])
    assert codes(problems) == {"unsatisfiable_join"}
    assert the(problems, "unsatisfiable_join").path == "nodes[1].config.join"


@pytest.mark.parametrize("join", ["most", 0, -1, True, 1.5, None, [2]])
def test_bad_children_join(join: Any) -> None:
    nodes = [START, node("p", "parallel", config={"join": join}), node("c", parent="p"), END]
    problems = check(nodes, [edge("start", "p"), edge("p", "end")])
    assert codes(problems) == {"bad_join"}
    assert the(problems, "bad_join").path == "nodes[1].config.join"
    assert repr(join) in the(problems, "bad_join").message


@pytest.mark.parametrize("join", ["all", "any", 1, 2])
def test_good_children_join(join: Any) -> None:
    nodes = [
        START,
        node("p", "parallel", config={"join": join}),
        node("c1", parent="p"),
        node("c2", parent="p"),
        END,
    ]
    assert check(nodes, [edge("start", "p"), edge("p", "end")]) == []


def test_infinite_loop() -> None:
    nodes = [START, node("a"), node("b"), node("c"), END]
    edges = [
        edge("start", "a"),
        edge("a", "b"),
        edge("b", "c"),
        edge("c", "b"),
        edge("a", "end", field("input.skip", "eq", True)),
    ]
    problems = check(nodes, edges)
    assert codes(problems) == {"infinite_loop"}
    p = the(problems, "infinite_loop")
    assert p.path == "nodes[2]"
    assert "'b', 'c'" in p.message


def test_self_loop_without_exit_is_infinite() -> None:
    nodes = [START, node("a", fan_out=True), node("spin"), END]
    edges = [edge("start", "a"), edge("a", "spin"), edge("a", "end"), edge("spin", "spin")]
    problems = check(nodes, edges)
    assert codes(problems) == {"infinite_loop"}
    assert the(problems, "infinite_loop").path == "nodes[2]"


def test_loop_without_exit_but_with_max_visits_is_fine() -> None:
    nodes = [START, node("a", fan_out=True), node("b", max_visits=4), node("c"), END]
    edges = [edge("start", "a"), edge("a", "b"), edge("a", "end"), edge("b", "c"), edge("c", "b")]
    assert check(nodes, edges) == []


def test_loop_with_an_exit_is_fine() -> None:
    assert validate_graph(Graph.from_dict(CODE_REVIEW)) == []
    no_limit = {**CODE_REVIEW, "nodes": [{**n, "max_visits": None} for n in CODE_REVIEW["nodes"]]}
    assert validate_graph(Graph.from_dict(no_limit)) == []


@pytest.mark.parametrize(
    ("wait", "why"),
    [
        ({"timeout_s": 60, "on_timeout": "escalate"}, "names no node"),
        ({"timeout_s": 60, "on_timeout": "escalate", "escalate_to": "bos"}, "did you mean 'boss'"),
        ({"timeout_s": 60, "on_timeout": "fail", "escalate_to": "ghost"}, "not a node"),
    ],
)
def test_bad_escalation(wait: Json, why: str) -> None:
    nodes = [START, node("ok", "human", wait=wait), node("boss", "human"), END]
    edges = [edge("start", "ok"), edge("ok", "end"), edge("boss", "end")]
    problems = [p for p in check(nodes, edges) if p.code != "unreachable_node"]
    assert codes(problems) == {"bad_escalation"}
    p = the(problems, "bad_escalation")
    assert p.path == "nodes[1].wait.escalate_to"
    assert why in p.message


def test_escalation_to_an_existing_node_is_fine() -> None:
    wait = {"timeout_s": 60, "on_timeout": "escalate", "escalate_to": "boss"}
    nodes = [START, node("ok", "human", wait=wait), node("boss", "human"), END]
    edges = [edge("start", "ok"), edge("ok", "end", field("ok.output.ok", "eq", True))]
    edges += [edge("ok", "boss", OTHERWISE), edge("boss", "end")]
    assert check(nodes, edges) == []


# --- everything at once --------------------------------------------------------------------------


def test_many_problems_are_reported_together() -> None:
    data = {
        "id": "broken",
        "nodes": [
            START,
            node("s2", "start"),
            node("a"),
            node("a"),
            node("p", "parallel", config={"join": "most"}),
            node("kid", parent="nowhere"),
            node("loop1"),
            node("loop2"),
            node("j", join=5),
            node("ok", "human", wait={"timeout_s": 1, "on_timeout": "escalate"}),
        ],
        "edges": [
            edge("start", "a"),
            edge("a", "ghost"),
            edge("a", "p", field("tirage.output.x", "eq", 1)),
            edge("a", "loop1"),
            edge("a", "j"),
            edge("loop1", "loop2"),
            edge("loop2", "loop1"),
            edge("p", "start"),
        ],
    }
    with pytest.raises(GraphValidationError) as info:
        Graph.from_dict(data)
    err = info.value
    assert err.graph_id == "broken"
    assert set(err.codes) == {
        "duplicate_node",
        "multiple_starts",
        "missing_end",
        "dangling_edge",
        "edge_into_start",
        "bad_parent",
        "empty_parallel",
        "bad_join",
        "unknown_path_node",
        "ambiguous_unconditional",
        "unsatisfiable_join",
        "infinite_loop",
        "bad_escalation",
    }
    assert "[infinite_loop]" in str(err)


def test_every_reported_code_is_documented() -> None:
    assert {"duplicate_node", "infinite_loop", "unsatisfiable_join"} <= PROBLEM_CODES
    parse_codes = {"bad_json", "not_an_object", "missing_field", "unknown_field", "bad_type"}
    parse_codes |= {"bad_value", "bad_node_id", "unknown_op", "unknown_condition_type"}
    assert parse_codes | {"bad_condition", "bad_path", "bad_join"} <= PROBLEM_CODES
    assert all(code.isidentifier() and code == code.lower() for code in PROBLEM_CODES)


# --- fuzzing -------------------------------------------------------------------------------------

IDS = ["start", "end", "a", "b", "c", "p"]
REFS = [*IDS, "ghost"]


def composite(kind: str, subs: list[Json | None]) -> Json:
    parts = [s or OTHERWISE for s in subs]  # a nested otherwise is a problem worth fuzzing too
    return {"type": kind, "conditions": parts[:1] if kind == "not" else parts}


conditions: st.SearchStrategy[Json | None] = st.recursive(
    st.one_of(
        st.none(),
        st.just(OTHERWISE),
        st.builds(
            field,
            st.sampled_from(["a.output.x", "ghost.output.y", "input.z", "b.visits", "c.outputs.2"]),
            st.sampled_from(["eq", "lt", "exists", "in"]),
            st.just(["v"]),
        ),
    ),
    lambda inner: st.builds(
        composite, st.sampled_from(["all", "any", "not"]), st.lists(inner, min_size=1, max_size=3)
    ),
    max_leaves=4,
)

nodes_st = st.lists(
    st.fixed_dictionaries(
        {
            "id": st.sampled_from(IDS),
            "type": st.sampled_from(["start", "end", "agent", "parallel", "human", "condition"]),
        },
        optional={
            "parent": st.sampled_from(REFS),
            "fan_out": st.booleans(),
            "join": st.sampled_from(["all", "any", 1, 2, 3]),
            "max_visits": st.sampled_from([1, 2]),
            "config": st.fixed_dictionaries(
                {"join": st.sampled_from(["all", "any", 0, 1, 3, "x", True, None])}
            ),
            "wait": st.fixed_dictionaries(
                {"timeout_s": st.just(1), "on_timeout": st.sampled_from(["fail", "escalate"])},
                optional={"escalate_to": st.sampled_from(REFS)},
            ),
        },
    ),
    max_size=8,
)

edges_st = st.lists(
    st.builds(edge, st.sampled_from(REFS), st.sampled_from(REFS), conditions), max_size=12
)


@settings(max_examples=300, deadline=None)
@given(nodes=nodes_st, edges=edges_st)
def test_validate_graph_never_raises(nodes: list[Json], edges: list[Json]) -> None:
    graph = load(nodes, edges)
    problems = validate_graph(graph)
    assert all(isinstance(p, Problem) for p in problems)
    assert {p.code for p in problems} <= PROBLEM_CODES
    assert len(problems) == len(set(problems))
    assert validate_graph(graph) == problems  # deterministic
