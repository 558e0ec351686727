"""validate(): every problem at once, parse and semantic alike, each in plain words.

Each message names where (the path), what was found (the offending value) and what is allowed;
none of pydantic's wording reaches the user; a node or edge that fails to parse hides nothing
else and makes up no follow-on problem; ``Graph.from_dict`` raises exactly what ``validate``
returns.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import graph_core
import graph_core.parsing
from graph_core.errors import GraphValidationError, Problem
from graph_core.model import Graph
from graph_core.validation import PROBLEM_CODES, validate

Json = dict[str, Any]

# Phrases of pydantic's own messages: none of them may reach a user.
PYDANTIC_WORDING = (
    "Input should",
    "Value error",
    "Field required",
    "Extra inputs are not permitted",
    "validation error",
    "valid dictionary",
    "valid integer",
    "valid string",
    "valid number",
    "valid boolean",
    "valid list",
    "valid tuple",
    "type=",
    "pydantic",
    "Unable to parse",
    "Input tag",
)


def base() -> Json:
    """A valid graph using every kind of thing that can go wrong: conditions, a parallel
    node with children, retries, joins."""
    field = {"type": "field", "path": "triage.output.severity", "op": "eq", "value": "critical"}
    return {
        "id": "triage",
        "trigger": {"type": "webhook", "source_type": "github"},
        "nodes": [
            {"id": "start", "type": "start"},
            {"id": "triage", "type": "agent", "retry": {"max_attempts": 3}},
            {"id": "checks", "type": "parallel", "config": {"join": "all"}},
            {"id": "security", "type": "agent", "parent": "checks"},
            {"id": "compliance", "type": "agent", "parent": "checks"},
            {"id": "escalate", "type": "notification"},
            {"id": "assign", "type": "agent"},
            {"id": "end", "type": "end"},
        ],
        "edges": [
            {"source": "start", "target": "triage"},
            {"source": "triage", "target": "escalate", "condition": field},
            {
                "source": "triage",
                "target": "checks",
                "condition": {
                    "type": "all",
                    "conditions": [
                        {"type": "field", "path": "triage.output.score", "op": "gt", "value": 1},
                        {"type": "field", "path": "input.team", "op": "exists"},
                    ],
                },
            },
            {"source": "triage", "target": "assign", "condition": {"type": "otherwise"}},
            {"source": "checks", "target": "end"},
            {"source": "escalate", "target": "end"},
            {"source": "assign", "target": "end"},
        ],
    }


def test_the_base_graph_is_valid() -> None:
    assert validate(base()) == []


def assert_plain(problems: list[Problem]) -> None:
    for p in problems:
        assert isinstance(p, Problem)
        assert p.code in PROBLEM_CODES, p
        assert p.path and p.message, p
        for phrase in PYDANTIC_WORDING:
            assert phrase not in p.message, p


# --- a catalogue of independent faults ---------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    """One thing to break in ``base()`` and the one problem it must be reported as."""

    name: str
    apply: Callable[[Json], None]
    code: str
    path: str
    says: tuple[str, ...]  # parts of the message: the offending value, what is allowed

    def __repr__(self) -> str:  # hypothesis prints the faults it drew
        return self.name


def _set(path: tuple[Any, ...], value: Any) -> Callable[[Json], None]:
    def apply(data: Json) -> None:
        target: Any = data
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return apply


def _delete(path: tuple[Any, ...]) -> Callable[[Json], None]:
    def apply(data: Json) -> None:
        target: Any = data
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return apply


def _append_node(node: Json) -> Callable[[Json], None]:
    return lambda data: data["nodes"].append(node)


FAULTS = [
    # parse problems
    Fault(
        "unknown op",
        _set(("edges", 1, "condition", "op"), "frobnicate"),
        "unknown_op",
        "edges[1].condition.op",
        ("'frobnicate'", "known operators: eq, neq, gt, gte, lt, lte, in, not_in"),
    ),
    Fault(
        "unknown field on a node",
        _set(("nodes", 6, "colour"), "red"),
        "unknown_field",
        "nodes[6].colour",
        ("'colour'", "'red'", "known fields: id, type"),
    ),
    Fault(
        "edge without a source",
        _delete(("edges", 5, "source")),
        "missing_field",
        "edges[5].source",
        ("'source'", "missing"),
    ),
    Fault(
        "non-integer max_visits",
        _set(("nodes", 1, "max_visits"), "three"),
        "bad_type",
        "nodes[1].max_visits",
        ("'three'", "whole number >= 1", "node 'triage'"),
    ),
    Fault(
        "bad 'not' inside all",
        _set(("edges", 2, "condition", "conditions", 1), {"type": "not", "conditions": []}),
        "bad_condition",
        "edges[2].condition.conditions[1].conditions",
        ("exactly one", "got 0"),
    ),
    Fault(
        "unknown condition type inside all",
        _set(("edges", 2, "condition", "conditions", 0, "type"), "maybe"),
        "unknown_condition_type",
        "edges[2].condition.conditions[0].type",
        ("'maybe'", "field, all, any, not, otherwise"),
    ),
    Fault(
        "bad backoff",
        _set(("nodes", 1, "retry", "backoff"), "linear"),
        "bad_value",
        "nodes[1].retry.backoff",
        ("'linear'", "'fixed' or 'exponential'"),
    ),
    Fault(
        "retry out of range",
        _set(("nodes", 1, "retry", "max_attempts"), 0),
        "bad_value",
        "nodes[1].retry.max_attempts",
        ("got 0", "from 1 to 1000"),
    ),
    Fault(
        "bad node join",
        _set(("nodes", 7, "join"), "most"),
        "bad_join",
        "nodes[7].join",
        ("'most'", "'all', 'any' or a whole number >= 1"),
    ),
    Fault(
        "empty node type",
        _set(("nodes", 5, "type"), ""),
        "bad_value",
        "nodes[5].type",
        ("got ''", "non-empty string"),
    ),
    Fault(
        "unknown field on an edge",
        _set(("edges", 0, "weight"), 3),
        "unknown_field",
        "edges[0].weight",
        ("'weight'", "3", "known fields: source, target, condition, metadata"),
    ),
    Fault(
        "bad max_steps",
        _set(("max_steps",), 0),
        "bad_value",
        "max_steps",
        ("got 0", ">= 1"),
    ),
    Fault(
        "trigger is not an object",
        _set(("trigger",), "webhook"),
        "bad_type",
        "trigger",
        ("'webhook'", "a trigger object"),
    ),
    # semantic problems
    Fault(
        "parent is not parallel",
        _set(("nodes", 3, "parent"), "assign"),
        "bad_parent",
        "nodes[3].parent",
        ("'security'", "'assign'", "an 'agent' node", "only 'parallel' nodes"),
    ),
    Fault(
        "dangling edge",
        _set(("edges", 6, "target"), "asign"),
        "dangling_edge",
        "edges[6].target",
        ("'asign'", "did you mean 'assign'"),
    ),
    Fault(
        "unreachable node",
        _append_node({"id": "orphan", "type": "agent"}),
        "unreachable_node",
        "nodes[8]",
        ("'orphan'", "start node 'start'"),
    ),
    Fault(
        "unsatisfiable children join",
        _set(("nodes", 2, "config", "join"), 3),
        "unsatisfiable_join",
        "nodes[2].config.join",
        ("waits for 3",),
    ),
    Fault(
        "unknown node in a condition",
        _set(("edges", 2, "condition", "conditions", 0, "path"), "triag.output.score"),
        "unknown_path_node",
        "edges[2].condition.conditions[0].path",
        ("'triag.output.score'", "did you mean 'triage'"),
    ),
]
FAULTS_BY_NAME = {f.name: f for f in FAULTS}
# Two faults on the same spot replace each other: never draw both.
CLASHES = {
    frozenset({"bad 'not' inside all", "unknown condition type inside all"}),
    # a condition of an unknown type is not read further, its path included
    frozenset({"unknown condition type inside all", "unknown node in a condition"}),
}


def broken(faults: list[Fault]) -> Json:
    data = base()
    for f in faults:
        f.apply(data)
    return data


def check_reports_exactly(faults: list[Fault]) -> None:
    data = broken(faults)
    problems = validate(data)
    assert_plain(problems)
    found = sorted((p.code, p.path) for p in problems)
    assert found == sorted((f.code, f.path) for f in faults), [str(p) for p in problems]
    by_path = {p.path: p for p in problems}
    for f in faults:
        for part in f.says:
            assert part in by_path[f.path].message, (f.name, part, str(by_path[f.path]))
    # from_dict and from_json raise exactly what validate returns
    with pytest.raises(GraphValidationError) as info:
        Graph.from_dict(copy.deepcopy(data))
    assert info.value.problems == problems
    with pytest.raises(GraphValidationError) as info:
        Graph.from_json(orjson.dumps(data))
    assert info.value.problems == problems
    text = str(info.value)
    assert text.splitlines()[0] == f"graph 'triage' is invalid ({len(problems)} problem(s)):"
    for p in problems:
        assert f"\n  {p.path}: {p.message} [{p.code}]" in text


@pytest.mark.parametrize("fault", FAULTS, ids=[f.name for f in FAULTS])
def test_each_fault_alone(fault: Fault) -> None:
    check_reports_exactly([fault])


def test_the_issue_example_reports_both_problems() -> None:
    """An unknown operator no longer hides that a child's parent is not a parallel node."""
    check_reports_exactly([FAULTS_BY_NAME["unknown op"], FAULTS_BY_NAME["parent is not parallel"]])


def test_five_problems_parse_and_semantic() -> None:
    names = [
        "unknown field on a node",
        "edge without a source",
        "non-integer max_visits",
        "bad 'not' inside all",
        "unreachable node",
    ]
    check_reports_exactly([FAULTS_BY_NAME[n] for n in names])


def _compatible(faults: list[Fault]) -> bool:
    names = {f.name for f in faults}
    return not any(clash <= names for clash in CLASHES)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(FAULTS), min_size=2, max_size=5, unique=True).filter(_compatible))
@example([FAULTS_BY_NAME["unknown op"], FAULTS_BY_NAME["parent is not parallel"]])
@example([FAULTS_BY_NAME["dangling edge"], FAULTS_BY_NAME["edge without a source"]])
def test_any_mix_of_faults_reports_every_one(faults: list[Fault]) -> None:
    check_reports_exactly(faults)


# --- no follow-on problems from what did not parse ----------------------------------------------


def test_a_node_that_fails_to_parse_keeps_its_id() -> None:
    data = base()
    data["nodes"][6]["retry"] = {"max_attempts": "many"}  # 'assign' fails to parse
    problems = validate(data)
    assert [(p.code, p.path) for p in problems] == [("bad_type", "nodes[6].retry.max_attempts")]


def test_a_node_with_an_unreadable_type_does_not_lose_the_start() -> None:
    data = base()
    data["nodes"][0]["type"] = 7  # was the start node
    problems = validate(data)
    assert [(p.code, p.path) for p in problems] == [("bad_type", "nodes[0].type")]
    assert "got 7" in problems[0].message


def test_an_edge_without_a_target_hides_nothing_it_could_explain() -> None:
    data = base()
    del data["edges"][6]["target"]  # assign->? : 'end' may still be reachable through it
    data["edges"][5]["target"] = "nowhere"
    problems = validate(data)
    assert sorted((p.code, p.path) for p in problems) == [
        ("dangling_edge", "edges[5].target"),
        ("missing_field", "edges[6].target"),
    ]


def test_a_node_without_an_id_still_makes_its_edges_dangle_but_nothing_more() -> None:
    data = base()
    del data["nodes"][1]["id"]  # triage: the only way from start to anything else
    problems = validate(data)
    assert [(p.code, p.path) for p in problems] == [
        ("missing_field", "nodes[1].id"),
        ("dangling_edge", "edges[0].target"),
        ("dangling_edge", "edges[1].source"),
        ("dangling_edge", "edges[2].source"),
        ("dangling_edge", "edges[3].source"),
        ("unknown_path_node", "edges[1].condition.path"),
        ("unknown_path_node", "edges[2].condition.conditions[0].path"),
    ]  # ... but no unreachable nodes: the node that lost its id may be the way to them


def test_an_edge_without_a_target_may_be_the_way_to_any_node() -> None:
    data = base()
    del data["edges"][0]["target"]  # start->? : nothing else leads out of start
    problems = validate(data)
    assert [(p.code, p.path) for p in problems] == [("missing_field", "edges[0].target")]


def test_an_edge_without_a_source_may_be_a_join_input() -> None:
    data = base()
    data["nodes"][7]["join"] = 3  # end: checks, escalate and assign lead to it
    del data["edges"][6]["source"]
    problems = validate(data)
    assert [(p.code, p.path) for p in problems] == [("missing_field", "edges[6].source")]


def test_an_edge_without_a_target_may_be_a_loop_exit() -> None:
    data = base()
    data["edges"].append({"source": "assign", "target": "assign"})
    data["edges"][6]["target"] = None  # assign->? : the loop's only way out
    problems = validate(data)
    assert [(p.code, p.path) for p in problems] == [("bad_type", "edges[6].target")]
    assert "got null" in problems[0].message


def test_a_broken_fan_out_does_not_make_edges_ambiguous() -> None:
    data = base()
    data["nodes"][6]["fan_out"] = "sometimes"
    data["nodes"].append({"id": "extra", "type": "agent"})
    data["edges"] += [{"source": "assign", "target": "extra"}, {"source": "extra", "target": "end"}]
    problems = validate(data)
    assert [(p.code, p.path) for p in problems] == [("bad_type", "nodes[6].fan_out")]


def test_a_broken_max_visits_does_not_make_a_loop_infinite() -> None:
    data = base()
    data["nodes"][6]["max_visits"] = 1.5
    data["edges"][6] = {"source": "assign", "target": "assign"}  # a loop without an exit
    problems = validate(data)
    assert [(p.code, p.path) for p in problems] == [("bad_type", "nodes[6].max_visits")]
    assert "1.5" in problems[0].message


def test_a_child_whose_parent_does_not_parse_leaves_its_parallel_alone() -> None:
    data = base()
    data["nodes"][3]["parent"] = 2
    data["nodes"][4]["parent"] = ["checks"]
    problems = validate(data)
    assert sorted((p.code, p.path) for p in problems) == [
        ("bad_type", "nodes[3].parent"),
        ("bad_type", "nodes[4].parent"),
    ]


def test_semantic_checks_are_skipped_when_the_structure_is_unknown() -> None:
    problems = validate({"id": "g", "nodes": "start,end", "edges": [{"source": 1}]})
    assert [(p.code, p.path) for p in problems] == [
        ("bad_type", "nodes"),
        ("bad_type", "edges[0].source"),
        ("missing_field", "edges[0].target"),
    ]
    assert_plain(problems)


def test_duplicate_ids_count_nodes_that_failed_to_parse() -> None:
    data = base()
    data["nodes"].append({"id": "assign", "type": "agent", "queue": 5})
    problems = validate(data)
    assert sorted((p.code, p.path) for p in problems) == [
        ("bad_type", "nodes[8].queue"),
        ("duplicate_node", "nodes[8].id"),
    ]


# --- the front door ---------------------------------------------------------------------------


def test_validate_takes_a_graph_a_dict_or_json_text() -> None:
    data = base()
    assert validate(Graph.from_dict(data)) == []
    assert validate(data) == []
    assert validate(orjson.dumps(data)) == []
    assert validate(orjson.dumps(data).decode()) == []
    assert graph_core.validate is validate
    assert "validate" in graph_core.__all__


@pytest.mark.parametrize(
    ("source", "code"),
    [(b"{nope", "bad_json"), ("", "bad_json"), ("[1]", "not_an_object"), ("42", "not_an_object")],
)
def test_validate_reports_unreadable_json(source: str | bytes, code: str) -> None:
    problems = validate(source)
    assert [(p.code, p.path) for p in problems] == [(code, "graph")]
    assert_plain(problems)


@pytest.mark.parametrize("source", [None, 42, [base()], ("a", "b")])
def test_validate_never_raises_on_a_non_object(source: Any) -> None:
    problems = validate(source)
    assert [p.code for p in problems] == ["not_an_object"]


def test_a_valid_graph_is_loaded_in_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """The item-by-item parse is only for graphs that fail: loading stays fast."""

    def fail(data: Any) -> Any:
        raise AssertionError("parse_graph called for a valid graph")

    monkeypatch.setattr(graph_core.parsing, "parse_graph", fail)
    assert Graph.from_dict(base()).id == "triage"
    assert validate(base()) == []


def test_problem_is_data_with_a_where_alias() -> None:
    p = Problem("unknown_op", "edges[2].condition.op", "unknown operator 'x'")
    assert (p.code, p.path, p.message) == (
        "unknown_op",
        "edges[2].condition.op",
        "unknown operator 'x'",
    )
    assert p.where == p.path
    assert p.to_dict() == {"code": "unknown_op", "path": p.path, "message": p.message}
    assert str(p) == "edges[2].condition.op: unknown operator 'x' [unknown_op]"
    with pytest.raises(AttributeError):
        p.path = "x"  # type: ignore[misc]


def test_the_error_message_lists_each_problem_on_its_own_line() -> None:
    problems = [Problem("missing_start", "graph", "no start"), Problem("bad_type", "nodes[0]", "x")]
    err = GraphValidationError(problems, graph_id="g")
    assert str(err).splitlines() == [
        "graph 'g' is invalid (2 problem(s)):",
        "  graph: no start [missing_start]",
        "  nodes[0]: x [bad_type]",
    ]
    assert err.problems == problems


# --- fuzzing: garbage anywhere, never an exception, never pydantic's words ---------------------

GARBAGE = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=6)
    | st.sampled_from(["start", "end", "eq", "field", "not", "all", "parallel", "a..b", "input"]),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)


def _locations(value: Any, here: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place inside ``value`` (a key path), the whole value included."""
    found = [here]
    if isinstance(value, dict):
        for k, v in value.items():
            found += _locations(v, (*here, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += _locations(v, (*here, i))
    return found


@st.composite
def mutated_graphs(draw: st.DrawFn) -> Any:
    data: Any = base()
    for _ in range(draw(st.integers(1, 4))):
        spots = _locations(data)
        spot = draw(st.sampled_from(spots))
        action = draw(st.sampled_from(["replace", "delete", "add_key"]))
        if not spot:
            data = draw(GARBAGE) if action == "replace" else data
            continue
        parent: Any = data
        for key in spot[:-1]:
            parent = parent[key]
        target = parent[spot[-1]]
        if action == "add_key" and isinstance(target, dict):
            target[draw(st.text(max_size=6))] = draw(GARBAGE)
        elif action == "delete":
            del parent[spot[-1]]
        else:
            parent[spot[-1]] = draw(GARBAGE)
    return data


@settings(max_examples=400, deadline=None)
@given(mutated_graphs())
def test_garbage_never_raises_and_is_explained_in_plain_words(data: Any) -> None:
    problems = validate(data)
    assert_plain(problems)
    assert len(problems) == len(set(problems))
    try:
        graph = Graph.from_json(data) if isinstance(data, str) else Graph.from_dict(data)
    except GraphValidationError as e:
        assert e.problems == problems
        assert problems
    else:
        assert problems == []
        assert validate(graph) == []


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=200))
def test_any_text_gives_problems_not_exceptions(raw: bytes | str) -> None:
    assert_plain(validate(raw))
