"""The graph model: builder, JSON round trips, roomkit-graph 0.4 dicts, malformed input."""

from __future__ import annotations

import copy
import importlib.util
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graph_core.conditions import Condition
from graph_core.errors import GraphValidationError, RelaygraphError
from graph_core.model import Edge, Graph, Node, RetryPolicy, Trigger, WaitPolicy

# validation.py is written alongside this module; use full validation once it exists.
VALIDATE = importlib.util.find_spec("graph_core.validation") is not None

BUG_TRIAGE: dict[str, Any] = {
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
            "condition": {
                "type": "field",
                "path": "triage.output.severity",
                "op": "eq",
                "value": "critical",
            },
        },
        {"source": "triage", "target": "assign", "condition": {"type": "otherwise"}},
        {"source": "escalate", "target": "end"},
        {"source": "assign", "target": "end"},
    ],
}


def load(data: Any) -> Graph:
    return Graph.from_dict(data, validate=VALIDATE)


def assert_round_trips(g: Graph) -> None:
    data = g.to_dict()
    assert Graph.from_dict(data, validate=False).to_dict() == data
    raw = g.to_json()
    again = Graph.from_json(raw, validate=False)
    assert again.to_dict() == data
    assert again.to_json() == raw
    assert Graph.from_json(g.to_json(indent=True), validate=False).to_dict() == data


# --- builder --------------------------------------------------------------------------------


def build_triage() -> Graph:
    g = Graph(
        id="bug-triage", name="Bug Triage", trigger=Trigger(type="webhook", source_type="github")
    )
    g.add_nodes(
        Node("start", type="start"),
        Node(
            "triage",
            type="agent",
            config={"agent_id": "triage-agent"},
            retry=RetryPolicy(
                max_attempts=3, backoff="exponential", initial_delay_s=1, max_delay_s=60
            ),
            timeout_s=30,
            queue="default",
        ),
        Node(
            "escalate",
            type="notification",
            config={"channel": "slack", "text": "{{triage.output.summary}}"},
        ),
        Node("assign", type="agent", config={"agent_id": "labeler-agent"}),
    )
    g.add_node(Node("end", type="end"))
    g.connect("start", "triage")
    g.add_edges(
        Edge(
            "triage",
            "escalate",
            condition=Condition.field("triage.output.severity").equals("critical"),
        ),
        Edge("triage", "assign", condition=Condition.otherwise()),
    )
    g.add_edge(Edge("escalate", "end"))
    g.add_edge(Edge("assign", "end"))
    return g


def test_builder_matches_the_design_json() -> None:
    built = build_triage()
    assert built.to_dict() == load(BUG_TRIAGE).to_dict()
    if VALIDATE:
        assert built.validate_graph() is built


def test_builder_methods_chain() -> None:
    g = Graph(id="g").add_node(Node("start", type="start")).add_nodes(Node("a", type="x"))
    g = g.add_edge(Edge("start", "a")).add_edges(Edge("a", "start")).connect("a", "b", "c")
    assert [e.label for e in g.edges] == ["start->a", "a->start", "a->b", "b->c"]


def test_node_lookup_sees_added_nodes() -> None:
    g = Graph(id="g", nodes=[Node("a", type="x")])
    assert g.node("a").type == "x"
    assert not g.has_node("b")
    g.add_node(Node("b", type="y"))
    assert g.has_node("b")
    assert g.node("b").type == "y"
    with pytest.raises(KeyError, match="no node 'zzz'"):
        g.node("zzz")


def test_node_and_edge_keyword_construction() -> None:
    assert Node(id="a", type="x") == Node("a", type="x")
    assert Edge(source="a", target="b") == Edge("a", "b")
    assert Edge("a", "b", condition={}).condition is None


def test_retry_for_falls_back_to_graph_then_default() -> None:
    own = RetryPolicy(max_attempts=5)
    graph_wide = RetryPolicy(max_attempts=2)
    g = Graph(id="g", retry=graph_wide, nodes=[Node("a", type="x", retry=own), Node("b", type="x")])
    assert g.retry_for(g.node("a")) is own
    assert g.retry_for(g.node("b")) is graph_wide
    assert Graph(id="g").retry_for(Node("a", type="x")) == RetryPolicy()


def test_control_types() -> None:
    assert Node("s", type="start").is_control
    assert Node("h", type="human").is_control
    assert not Node("a", type="agent").is_control


# --- round trips ----------------------------------------------------------------------------


def test_bug_triage_loads_and_round_trips() -> None:
    g = load(copy.deepcopy(BUG_TRIAGE))
    assert [n.id for n in g.nodes] == ["start", "triage", "escalate", "assign", "end"]
    triage = g.node("triage")
    assert triage.retry == RetryPolicy(
        max_attempts=3, backoff="exponential", initial_delay_s=1, max_delay_s=60
    )
    assert triage.timeout_s == 30
    assert triage.queue == "default"
    assert g.trigger.type == "webhook"
    assert g.trigger.to_dict() == {"type": "webhook", "source_type": "github"}
    cond = g.edges[1].condition
    assert cond == Condition.field("triage.output.severity").eq("critical")
    assert g.edges[2].condition is not None and g.edges[2].condition.is_otherwise
    assert g.edges[0].condition is None
    assert_round_trips(g)


def test_from_json_accepts_str_and_bytes() -> None:
    raw = orjson.dumps(BUG_TRIAGE)
    assert (
        Graph.from_json(raw, validate=VALIDATE).to_dict()
        == Graph.from_json(raw.decode(), validate=VALIDATE).to_dict()
    )


def test_relaygraph_fields_round_trip() -> None:
    g = Graph(
        id="full",
        name="Full",
        version=3,
        description="every field",
        metadata={"owner": "ops"},
        max_steps=500,
        retry=RetryPolicy(max_attempts=2, backoff="fixed", jitter=0.5, retry_on=["Timeout"]),
        timeout_s=3600,
        nodes=[
            Node("start", type="start"),
            Node("fan", type="router", fan_out=True, max_visits=3),
            Node("j", type="agent", join=2, queue="gpu", timeout_s=1.5),
            Node("k", type="agent", join="any"),
            Node(
                "h",
                type="human",
                wait=WaitPolicy(timeout_s=60, on_timeout="escalate", escalate_to="boss"),
            ),
            Node("end", type="end"),
        ],
        edges=[Edge("start", "fan", metadata={"label": "go"})],
    )
    data = g.to_dict()
    assert data["max_steps"] == 500
    assert data["retry"] == {
        "max_attempts": 2,
        "backoff": "fixed",
        "jitter": 0.5,
        "retry_on": ["Timeout"],
    }
    assert data["nodes"][1] == {"id": "fan", "type": "router", "max_visits": 3, "fan_out": True}
    assert data["nodes"][2]["join"] == 2
    assert data["nodes"][4]["wait"] == {
        "timeout_s": 60.0,
        "on_timeout": "escalate",
        "escalate_to": "boss",
    }
    assert data["edges"][0] == {"source": "start", "target": "fan", "metadata": {"label": "go"}}
    assert_round_trips(g)


def test_defaults_are_left_out_of_to_dict() -> None:
    data = Graph(id="g", nodes=[Node("a", type="x")]).to_dict()
    assert data == {
        "id": "g",
        "name": "",
        "version": 1,
        "trigger": {"type": "manual"},
        "nodes": [{"id": "a", "type": "x"}],
        "edges": [],
    }


# --- roomkit-graph 0.4 dicts ----------------------------------------------------------------


@pytest.mark.parametrize(
    "trigger",
    [
        {"type": "webhook", "source_type": "github"},
        {"type": "webhook", "source_type": "generic", "config": {"secret_ref": "gh"}},
        {"type": "scheduled", "schedule": {"cron": "0 9 * * 1", "timezone": "UTC"}},
        {"type": "event", "event": "ticket.created"},
        {"type": "manual"},
        {"type": "manual", "config": {"who": "ops"}},
    ],
)
def test_roomkit_triggers_are_kept(trigger: dict[str, Any]) -> None:
    data = {**copy.deepcopy(BUG_TRIAGE), "trigger": trigger}
    g = load(data)
    assert g.trigger.type == trigger["type"]
    assert g.to_dict()["trigger"] == trigger
    assert_round_trips(g)


def roomkit_graph() -> dict[str, Any]:
    """What roomkit-graph 0.4's ``Graph.to_dict()`` writes (no ``version`` when it is 1)."""
    return {
        "id": "weekly-report",
        "name": "Weekly report",
        "trigger": {
            "type": "scheduled",
            "schedule": {"cron": "0 9 * * 1"},
            "config": {"tz": "UTC"},
        },
        "nodes": [
            {"id": "start", "type": "start"},
            {
                "id": "gather",
                "type": "parallel",
                "config": {"join": "all"},
                "metadata": {"x": 10, "y": 20},
            },
            {
                "id": "fetch-a",
                "type": "function",
                "config": {"action": "set_context", "values": {"a": 1}},
                "parent": "gather",
            },
            {
                "id": "fetch-b",
                "type": "log",
                "config": {"paths": ["gather.output"]},
                "parent": "gather",
            },
            {
                "id": "check",
                "type": "condition",
                "config": {
                    "condition": {"type": "field", "path": "input.a", "op": "eq", "value": 1}
                },
            },
            {
                "id": "review",
                "type": "human",
                "config": {"prompt": "Send it?"},
                "metadata": {"ui": {"color": "red"}},
            },
            {"id": "end", "type": "end"},
        ],
        "edges": [
            {"source": "start", "target": "gather", "condition": {}},
            {"source": "gather", "target": "check", "metadata": {"label": "then"}},
            {
                "source": "check",
                "target": "review",
                "condition": {
                    "type": "field",
                    "path": "check.output.result",
                    "op": "eq",
                    "value": True,
                },
                "metadata": {"label": "yes"},
            },
            {"source": "check", "target": "end", "condition": {"type": "otherwise"}},
            {"source": "review", "target": "end"},
        ],
        "description": "Collects numbers every Monday",
        "metadata": {"owner": "ops", "layout": {"zoom": 1.5}},
    }


def test_roomkit_graph_loads() -> None:
    data = roomkit_graph()
    g = load(data)
    assert g.version == 1
    assert g.description == "Collects numbers every Monday"
    assert g.metadata == data["metadata"]
    gather = g.node("gather")
    assert gather.config == {"join": "all"}
    assert gather.metadata == {"x": 10, "y": 20}
    assert gather.join == "all"
    assert [n.id for n in g.nodes if n.parent == "gather"] == ["fetch-a", "fetch-b"]
    assert g.node("review").metadata == {"ui": {"color": "red"}}
    assert g.edges[0].condition is None  # roomkit's "condition": {} means no condition
    assert g.edges[1].metadata == {"label": "then"}
    assert g.edges[2].metadata == {"label": "yes"}
    assert g.edges[2].condition == Condition.field("check.output.result").eq(True)


def test_roomkit_graph_writes_back_the_same_data() -> None:
    data = roomkit_graph()
    out = load(data).to_dict()
    # Only two differences: an explicit "version", and the empty condition is dropped.
    assert out.pop("version") == 1
    expected = roomkit_graph()
    del expected["edges"][0]["condition"]
    assert out == expected
    assert_round_trips(load(data))


def test_roomkit_empty_or_null_condition_means_none() -> None:
    cond: dict[str, Any] | None
    for cond in ({}, None):
        g = Graph.from_dict(
            {"id": "g", "nodes": [], "edges": [{"source": "a", "target": "b", "condition": cond}]},
            validate=False,
        )
        assert g.edges[0].condition is None
        assert "condition" not in g.edges[0].to_dict()


def test_roomkit_node_type_strings_are_free_form() -> None:
    g = Graph.from_dict(
        {
            "id": "g",
            "nodes": [{"id": "a", "type": "orchestration"}, {"id": "b", "type": "my-custom"}],
        },
        validate=False,
    )
    assert [n.type for n in g.nodes] == ["orchestration", "my-custom"]


# --- malformed input ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "code", "where"),
    [
        (42, "not_an_object", "graph"),
        ([BUG_TRIAGE], "not_an_object", "graph"),
        (None, "not_an_object", "graph"),
        ("bug-triage", "not_an_object", "graph"),
        ({"nodes": []}, "missing_field", "id"),
        ({"id": ""}, "bad_value", "id"),
        ({"id": "g", "nodes": "start,end"}, "bad_type", "nodes"),
        ({"id": "g", "edges": {"a": "b"}}, "bad_type", "edges"),
        ({"id": "g", "nodes": [{"id": "a"}]}, "missing_field", "nodes[0].type"),
        ({"id": "g", "nodes": [{"type": "agent"}]}, "missing_field", "nodes[0].id"),
        ({"id": "g", "nodes": [42]}, "bad_type", "nodes[0]"),
        ({"id": "g", "nodes": [{"id": "a.b", "type": "x"}]}, "bad_node_id", "nodes[0].id"),
        ({"id": "g", "nodes": [{"id": "input", "type": "x"}]}, "bad_node_id", "nodes[0].id"),
        ({"id": "g", "nodes": [{"id": "a", "type": " "}]}, "bad_value", "nodes[0].type"),
        (
            {"id": "g", "nodes": [{"id": "a", "type": "x", "colour": "red"}]},
            "unknown_field",
            "nodes[0].colour",
        ),
        (
            {"id": "g", "nodes": [{"id": "a", "type": "x", "join": 0}]},
            "bad_join",
            "nodes[0].join",
        ),
        (
            {"id": "g", "nodes": [{"id": "a", "type": "x", "retry": {"max_attempts": 0}}]},
            "bad_value",
            "nodes[0].retry.max_attempts",
        ),
        (
            {"id": "g", "nodes": [{"id": "a", "type": "x", "timeout_s": -1}]},
            "bad_value",
            "nodes[0].timeout_s",
        ),
        ({"id": "g", "edges": [{"source": "a"}]}, "missing_field", "edges[0].target"),
        (
            {
                "id": "g",
                "edges": [
                    {
                        "source": "a",
                        "target": "b",
                        "condition": {
                            "type": "field",
                            "path": "a.output.x",
                            "op": "like",
                            "value": 1,
                        },
                    }
                ],
            },
            "unknown_op",
            "edges[0].condition.op",
        ),
        (
            {
                "id": "g",
                "edges": [
                    {
                        "source": "a",
                        "target": "b",
                        "condition": {"type": "field", "path": "a.nope", "op": "eq"},
                    }
                ],
            },
            "bad_path",
            "edges[0].condition.path",
        ),
        ({"id": "g", "colour": "red"}, "unknown_field", "colour"),
        ({"id": "g", "version": 0}, "bad_value", "version"),
        ({"id": "g", "trigger": "webhook"}, "bad_type", "trigger"),
    ],
)
def test_malformed_input_names_the_problem(data: Any, code: str, where: str) -> None:
    with pytest.raises(GraphValidationError) as info:
        Graph.from_dict(data, validate=False)
    problems = info.value.problems
    assert (code, where) in [(p.code, p.where) for p in problems], [str(p) for p in problems]
    assert isinstance(info.value, RelaygraphError)
    assert where in str(info.value)


def test_every_problem_is_listed_at_once() -> None:
    data = {
        "id": "g",
        "colour": "red",
        "nodes": [
            {"id": "a.b", "type": "x"},
            {"id": "c"},
            {"id": "d", "type": "x", "size": 3},
        ],
        "edges": [
            {
                "source": "c",
                "target": "d",
                "condition": {"type": "field", "path": "c.output.x", "op": "bogus"},
            }
        ],
    }
    with pytest.raises(GraphValidationError) as info:
        Graph.from_dict(data, validate=False)
    err = info.value
    assert err.graph_id == "g"
    paths = [p.path for p in err.problems]
    assert paths == [
        "nodes[0].id",
        "nodes[1].type",
        "nodes[2].size",
        "edges[0].condition.op",
        "colour",
    ]
    assert [p.where for p in err.problems] == paths  # the old name still works
    message = str(err)
    assert message.startswith("graph 'g' is invalid (5 problem(s)):")
    assert "unknown field 'colour'" in message
    assert "unknown field 'size'" in message
    assert "must not contain dots" in message
    assert "Value error" not in message


def test_parse_problems_do_not_hide_semantic_ones() -> None:
    data = copy.deepcopy(BUG_TRIAGE)
    data["nodes"][1]["retry"]["backoff"] = "linear"
    data["edges"][3]["target"] = "ned"
    with pytest.raises(GraphValidationError) as info:
        Graph.from_dict(data, validate=False)
    assert [(p.code, p.path) for p in info.value.problems] == [
        ("bad_value", "nodes[1].retry.backoff")
    ]
    if not VALIDATE:
        return
    with pytest.raises(GraphValidationError) as info:
        Graph.from_dict(data)
    assert [(p.code, p.path) for p in info.value.problems] == [
        ("bad_value", "nodes[1].retry.backoff"),
        ("dangling_edge", "edges[3].target"),
    ]
    assert "'linear'" in info.value.problems[0].message
    assert "did you mean 'end'" in info.value.problems[1].message


def test_bad_json_is_a_validation_error() -> None:
    with pytest.raises(GraphValidationError) as info:
        Graph.from_json(b"{not json")
    assert info.value.codes == ["bad_json"]


# --- properties -----------------------------------------------------------------------------

IDS = st.sampled_from(["start", "a", "b", "c", "end", "n-1", "n_2"])
SMALL_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-1000, 1000)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=2) | st.dictionaries(st.text(max_size=3), inner, max_size=2)
    ),
    max_leaves=4,
)
CONFIGS = st.dictionaries(st.text(min_size=1, max_size=5), SMALL_JSON, max_size=3)


@st.composite
def nodes(draw: st.DrawFn, node_id: str) -> Node:
    opts: dict[str, Any] = {}
    if draw(st.booleans()):
        opts["config"] = draw(CONFIGS)
    if draw(st.booleans()):
        opts["metadata"] = draw(CONFIGS)
    if draw(st.booleans()):
        opts["retry"] = RetryPolicy(
            max_attempts=draw(st.integers(1, 5)),
            backoff=draw(st.sampled_from(["fixed", "exponential"])),
        )
    if draw(st.booleans()):
        opts["timeout_s"] = draw(st.floats(min_value=0.1, max_value=1e6))
    opts["join"] = draw(st.sampled_from(["all", "any", 1, 2]))
    opts["fan_out"] = draw(st.booleans())
    opts["max_visits"] = draw(st.none() | st.integers(1, 50))
    opts["queue"] = draw(st.none() | st.sampled_from(["default", "gpu"]))
    opts["parent"] = draw(st.none() | IDS)
    return Node(
        node_id, type=draw(st.sampled_from(["start", "end", "agent", "parallel", "human"])), **opts
    )


@st.composite
def graphs(draw: st.DrawFn) -> Graph:
    ids = draw(st.lists(IDS, min_size=1, max_size=5, unique=True))
    edges = [
        Edge(
            draw(st.sampled_from(ids)),
            draw(st.sampled_from(ids)),
            condition=draw(
                st.none()
                | st.just(Condition.otherwise())
                | SMALL_JSON.map(lambda v: Condition.field("a.output.x").eq(v))
                | st.lists(st.integers(-(2**63), 2**63 - 1), max_size=3).map(
                    lambda v: Condition.any_(
                        Condition.field("input.y").in_(v), Condition.field("b.visits").gt(1)
                    )
                )
            ),
            metadata=draw(CONFIGS),
        )
        for _ in range(draw(st.integers(0, 6)))
    ]
    return Graph(
        id=draw(st.text(min_size=1, max_size=8)),
        name=draw(st.text(max_size=8)),
        version=draw(st.integers(1, 9)),
        description=draw(st.none() | st.text(max_size=8)),
        trigger=Trigger(
            type=draw(st.sampled_from(["manual", "webhook", "event"])), **draw(CONFIGS)
        ),
        nodes=[draw(nodes(i)) for i in ids],
        edges=edges,
        metadata=draw(CONFIGS),
        max_steps=draw(st.integers(1, 200_000)),
        timeout_s=draw(st.none() | st.floats(min_value=1, max_value=1e5)),
    )


@settings(max_examples=75)
@given(graphs())
def test_random_graphs_round_trip_exactly(g: Graph) -> None:
    assert_round_trips(g)


@settings(max_examples=150)
@given(
    st.dictionaries(
        st.sampled_from(
            ["id", "name", "version", "trigger", "nodes", "edges", "metadata", "max_steps", "extra"]
        ),
        SMALL_JSON
        | st.lists(
            st.dictionaries(
                st.sampled_from(["id", "type", "source", "target", "condition", "join"]),
                SMALL_JSON | IDS,
                max_size=4,
            ),
            max_size=3,
        ),
        max_size=6,
    )
)
def test_arbitrary_input_gives_a_graph_or_a_validation_error(data: dict[str, Any]) -> None:
    try:
        g = Graph.from_dict(data, validate=VALIDATE)
    except GraphValidationError as e:
        assert e.problems
        for p in e.problems:
            assert p.code and p.where and p.message
    else:
        assert_round_trips(g)
