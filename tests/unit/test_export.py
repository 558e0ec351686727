"""Mermaid and DOT export: every node and edge, labels, status colours, safe escaping."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from graph_core.conditions import Condition
from graph_core.export import condition_label, to_dot, to_mermaid
from graph_core.model import Edge, Graph, Node
from graph_core.status import NodeStatus

Json = dict[str, Any]


def triage_graph() -> Graph:
    """Bug triage with a review loop and a parallel block: every shape and edge kind."""
    graph = Graph(id="bug-triage").add_nodes(
        Node("start", type="start"),
        Node("triage", type="agent"),
        Node("route", type="switch"),
        Node("checks", type="parallel", config={"join": "all"}),
        Node("security", type="agent", parent="checks"),
        Node("compliance", type="agent", parent="checks"),
        Node("review", type="human", max_visits=3),
        Node("end", type="end"),
    )
    graph.connect("start", "triage", "route")
    graph.add_edges(
        Edge("route", "checks", condition=Condition.field("triage.output.severity").eq("critical")),
        Edge("route", "review", condition=Condition.otherwise()),
        Edge("checks", "review"),
        Edge("review", "triage", condition=Condition.field("review.output.action").eq("redo")),
        Edge("review", "end", condition=Condition.otherwise()),
    )
    return graph


# --- condition labels ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cond", "label"),
    [
        (
            Condition.field("triage.output.severity").eq("critical"),
            'triage.output.severity == "critical"',
        ),
        (Condition.field("a.output.n").neq(1), "a.output.n != 1"),
        (Condition.field("a.output.n").gte(2.5), "a.output.n >= 2.5"),
        (Condition.field("input.threshold").lt(0.8), "input.threshold < 0.8"),
        (Condition.field("a.output.tag").in_(["x", "y"]), 'a.output.tag in ["x","y"]'),
        (Condition.field("a.output.tag").not_in(["x"]), 'a.output.tag not in ["x"]'),
        (Condition.field("a.output.tags").contains("urgent"), 'a.output.tags contains "urgent"'),
        (Condition.field("a.output.flag").eq(None), "a.output.flag == null"),
        (Condition.field("a.visits").exists(), "a.visits exists"),
        (Condition.otherwise(), "otherwise"),
        (
            Condition.field("a.output.x").gt(1) & Condition.field("a.output.y").eq(True),
            "a.output.x > 1 and a.output.y == true",
        ),
        (
            Condition.any_(
                Condition.field("a.output.x").gt(1),
                Condition.field("a.output.y").lt(0) & Condition.field("a.output.z").exists(),
            ),
            "a.output.x > 1 or (a.output.y < 0 and a.output.z exists)",
        ),
        (~Condition.field("a.output.ok").eq(True), "not (a.output.ok == true)"),
        (Condition.field("a.output.n").eq(2**70), "a.output.n == 1180591620717411303424"),
        (Condition.all_(), "true"),
        (Condition.any_(), "false"),
    ],
)
def test_condition_label(cond: Condition, label: str) -> None:
    assert condition_label(cond) == label


def test_condition_label_shortens_long_values() -> None:
    label = condition_label(Condition.field("a.output.x").eq("z" * 500))
    assert label.startswith('a.output.x == "zzz')
    assert label.endswith("...")
    assert len(label) < 70


# --- Mermaid -------------------------------------------------------------------------------------

_MM_NODE = re.compile(
    r'^\s+n_\w+(\(\["|\{\{"|\{"|\[\["|\[")[^"]*("\]\)|"\}\}|"\}|"\]\]|"\])(:::\w+)?$'
)
_MM_EDGE = re.compile(r'^\s+(n_\w+) (-->|-\.->)(\|"[^"|]*"\|)? (n_\w+)$')
_MM_OTHER = re.compile(r'^\s+(subgraph n_\w+\["[^"]*"\]|end|classDef \w+ \S.*|class [\w,]+ \w+)$')


def mermaid_structure(text: str) -> tuple[set[str], list[tuple[str, str, str]]]:
    """Check every line's shape; return the declared ids and the (source, arrow, target) edges."""
    lines = text.splitlines()
    assert lines[0] == "flowchart TD"
    declared: set[str] = set()
    edges: list[tuple[str, str, str]] = []
    depth = 0
    for line in lines[1:]:
        if m := _MM_EDGE.match(line):
            edges.append((m[1], m[2], m[4]))
        elif _MM_NODE.match(line):
            declared.add(line.split()[0].split("(")[0].split("[")[0].split("{")[0])
        elif _MM_OTHER.match(line):
            word = line.split()[0]
            if word == "subgraph":
                depth += 1
                declared.add(line.split()[1].split("[")[0])
            elif word == "end":
                depth -= 1
                assert depth >= 0, line
        else:
            pytest.fail(f"unexpected mermaid line: {line!r}")
    assert depth == 0
    return declared, edges


def test_mermaid_has_every_node_and_edge() -> None:
    graph = triage_graph()
    text = to_mermaid(graph)
    declared, edges = mermaid_structure(text)
    assert declared == {f"n_{n.id}" for n in graph.nodes}
    assert [(s, t) for s, _, t in edges] == [
        (f"n_{e.source}", f"n_{e.target}") for e in graph.edges
    ]
    assert '|"triage.output.severity == #quot;critical#quot;"|' in text
    assert '-->|"otherwise"| n_review' in text


def test_mermaid_shapes_and_parallel_subgraph() -> None:
    text = to_mermaid(triage_graph())
    assert '    n_start(["start"])' in text
    assert '    n_end(["end"])' in text
    assert '    n_route{"route<br/>switch"}' in text
    assert '    n_review{{"review<br/>human"}}' in text
    block = text.split('subgraph n_checks["checks<br/>parallel"]', 1)[1].split("\n    end\n", 1)[0]
    assert "n_security" in block
    assert "n_compliance" in block
    assert "n_triage" not in block


def test_mermaid_back_edges_are_dashed() -> None:
    _, edges = mermaid_structure(to_mermaid(triage_graph()))
    arrows = {(s, t): a for s, a, t in edges}
    assert arrows[("n_review", "n_triage")] == "-.->"
    assert arrows[("n_start", "n_triage")] == "-->"


def test_mermaid_statuses_become_classes() -> None:
    statuses = {
        "start": NodeStatus.COMPLETED,
        "triage": "completed",
        "checks": "running",
        "review": "waiting",
        "security": "failed",
        "compliance": "Not Yet",  # unknown statuses still get a (neutral) class
        "ghost": "completed",  # not a node: ignored
    }
    text = to_mermaid(triage_graph(), statuses)
    mermaid_structure(text)
    assert "classDef st_completed fill:#d4edda" in text
    assert "class n_start,n_triage st_completed" in text
    assert "class n_checks st_running" in text
    assert "class n_review st_waiting" in text
    assert "class n_security st_failed" in text
    assert "class n_compliance st_not_yet" in text
    assert "n_ghost" not in text
    assert "classDef" not in to_mermaid(triage_graph())


def test_mermaid_escapes_labels() -> None:
    graph = Graph(id="g").add_nodes(Node("start", type="start"), Node("a", type="agent"))
    graph.add_node(Node("end", type="end")).connect("start", "a")
    nasty = 'say "hi" | <b>#1</b> `x` & more'
    graph.add_edge(Edge("a", "end", condition=Condition.field("a.output.s").eq(nasty)))
    text = to_mermaid(graph)
    mermaid_structure(text)
    assert "#quot;" in text
    assert "#124;" in text
    assert "#lt;b#gt;" in text
    assert "#35;1" in text
    assert "<b>" not in text


def test_ids_are_sanitised_and_unique() -> None:
    graph = Graph(id="g").add_nodes(
        Node("start", type="start"),
        Node("a-b", type="agent"),
        Node("a_b", type="agent"),
        Node("what?", type="condition"),
        Node("end", type="end"),
    )
    graph.connect("start", "a-b", "a_b", "what?", "end")
    graph.add_edge(Edge("what?", 'gh"ost\nx'))  # dangling, with a quote and a newline
    declared, edges = mermaid_structure(to_mermaid(graph))
    assert {"n_a_b", "n_a_b_2", "n_what_", "n_end"} <= declared
    assert {s for s, _, _ in edges} | {t for _, _, t in edges} <= declared
    dot_ids = dot_structure(to_dot(graph))[0]
    assert dot_ids == declared


# --- DOT -----------------------------------------------------------------------------------------

_DOT_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


def dot_structure(text: str) -> tuple[set[str], list[tuple[str, str]]]:
    """Strip quoted strings, check braces balance, return declared node ids and edges."""
    bare = _DOT_STRING.sub('""', text)
    assert '"' not in bare.replace('""', ""), "unterminated string"
    depth = 0
    for ch in bare:
        depth += {"{": 1, "}": -1}.get(ch, 0)
        assert depth >= 0
    assert depth == 0
    assert bare.startswith('digraph "" {')
    declared = set(re.findall(r"^\s*(n_\w+) \[", bare, flags=re.M))
    edges = re.findall(r"^\s*(n_\w+) -> (n_\w+)", bare, flags=re.M)
    for s, t in edges:
        assert s in declared, s
        assert t in declared, t
    return declared, edges


def test_dot_has_every_node_and_edge() -> None:
    graph = triage_graph()
    text = to_dot(graph)
    declared, edges = dot_structure(text)
    assert declared == {f"n_{n.id}" for n in graph.nodes}
    for e in graph.edges:
        assert (f"n_{e.source}", f"n_{e.target}") in edges
    assert 'label="triage.output.severity == \\"critical\\""' in text
    assert "subgraph cluster_n_checks {" in text
    assert "n_review -> n_triage [" in text
    assert "style=dashed" in text.split("n_review -> n_triage [", 1)[1].split("\n", 1)[0]


def test_dot_statuses_fill_nodes() -> None:
    text = to_dot(triage_graph(), {"start": "completed", "security": NodeStatus.FAILED})
    dot_structure(text)
    start_line = next(line for line in text.splitlines() if line.strip().startswith("n_start ["))
    assert 'fillcolor="#d4edda"' in start_line
    assert "filled" in start_line
    sec_line = next(line for line in text.splitlines() if line.strip().startswith("n_security ["))
    assert 'fillcolor="#f8d7da"' in sec_line
    assert "fillcolor" not in to_dot(triage_graph())


def test_dot_escapes_quotes_and_backslashes() -> None:
    graph = Graph(id='weird "id" \\').add_nodes(
        Node("start", type="start"), Node("end", type="end")
    )
    graph.add_edge(Edge("start", "end", condition=Condition.field("input.p").eq('C:\\dir\\"x"')))
    text = to_dot(graph)
    dot_structure(text)
    assert text.startswith('digraph "weird \\"id\\" \\\\" {')


# --- fuzzing -------------------------------------------------------------------------------------

IDS = ["start", "end", "a", "b-1", "b_1", "p"]
REFS = [*IDS, "ghost", 'q"uote']

node_st = st.fixed_dictionaries(
    {
        "id": st.sampled_from(IDS),
        "type": st.sampled_from(["start", "end", "agent", "parallel", "human", "condition"]),
    },
    optional={"parent": st.sampled_from(REFS)},
)
edge_st = st.fixed_dictionaries(
    {"source": st.sampled_from(REFS), "target": st.sampled_from(REFS)},
    optional={
        "condition": st.sampled_from(
            [
                {"type": "otherwise"},
                {"type": "field", "path": "a.output.x", "op": "eq", "value": 'q"|<>'},
            ]
        )
    },
)


@settings(max_examples=200, deadline=None)
@given(
    nodes=st.lists(node_st, max_size=8),
    edges=st.lists(edge_st, max_size=10),
    statuses=st.dictionaries(st.sampled_from(REFS), st.sampled_from(["completed", "x y", ""])),
)
def test_exports_never_break_on_any_graph(
    nodes: list[Json], edges: list[Json], statuses: dict[str, str]
) -> None:
    graph = Graph.from_dict({"id": "g", "nodes": nodes, "edges": edges}, validate=False)
    declared, mm_edges = mermaid_structure(to_mermaid(graph, statuses))
    dot_ids, dot_edges = dot_structure(to_dot(graph, statuses))
    assert declared == dot_ids
    assert len(mm_edges) == len(graph.edges)
    assert len(dot_edges) >= len(graph.edges)
