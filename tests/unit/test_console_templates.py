"""The console's templates and drawing escape what runs and graphs hold: a node output, a
prompt, an error or a node type with markup in it renders as text, never as markup."""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any

from dispatcher.views import RunView
from graph_core.history import HistoryStep
from graph_core.model import Graph, Node
from relaygraph.api.auth import Principal, Role
from relaygraph.console.render import templates
from relaygraph.console.svg import graph_svg

EVIL = "<script>alert('x')</script>"
ESCAPED = "&lt;script&gt;"


def evil_graph() -> Graph:
    g = Graph(id="evil").add_nodes(
        Node("start", type="start"),
        Node("work", type=EVIL),
        Node("review", type="human", config={"prompt": EVIL, "approvers": [EVIL]}),
        Node("end", type="end"),
    )
    return g.connect("start", "work", "review", "end").validate_graph()


def evil_run() -> RunView:
    node: dict[str, Any] = {"visits": 1, "attempts": 1}
    return RunView.model_validate(
        {
            "run_id": "r1",
            "graph_id": "evil",
            "graph_version": 1,
            "status": "waiting",
            "input": {"title": EVIL},
            "created_at": 1.0,
            "updated_at": 2.0,
            "nodes": {
                "start": {**node, "status": "completed", "output": {"html": EVIL}},
                "work": {
                    **node,
                    "status": "failed",
                    "error": {"type": EVIL, "code": "x", "message": EVIL},
                },
                "review": {**node, "status": "waiting"},
                "end": {"status": "pending", "visits": 0, "attempts": 0},
            },
            "waiting": [
                {"node_id": "review", "prompt": EVIL, "token": "t", "since": 1.5, "visit": 1}
            ],
            "history_length": 1,
        }
    )


def render_run(who: Principal) -> str:
    run, graph = evil_run(), evil_graph()
    waits = [
        SimpleNamespace(
            run=run, wait=run.waiting[0], approvers=[EVIL], may=True, shown=[("input.title", EVIL)]
        )
    ]
    steps = [HistoryStep(step=1, at=1.0, event="node.failed", node_id="work", detail=EVIL)]
    return templates.get_template("run_live.html").render(
        who=who,
        csrf="c",
        Role=Role,
        path="/ui/runs/r1",
        run=run,
        graph=graph,
        svg=graph_svg(graph, {"work": "failed"}),
        steps=steps,
        waits=waits,
        types={n.id: n.type for n in graph.nodes},
    )


def test_run_page_renders_markup_from_a_run_as_text() -> None:
    html = render_run(Principal("alice", frozenset({Role.ADMIN})))
    assert "<script" not in html
    # the output, the error, the prompt, the shown value, the approvers, the history detail
    # and the node's type in the drawing: all there, escaped
    assert html.count(ESCAPED) >= 7, html


def test_graph_drawing_escapes_ids_and_types() -> None:
    svg = str(graph_svg(evil_graph()))
    assert "<script" not in svg and ESCAPED in svg
    assert re.search(r'data-node="work"', svg)


def test_runs_list_escapes_errors() -> None:
    from dispatcher.views import RunSummary

    summary = RunSummary.model_validate(
        {
            "run_id": "r1",
            "graph_id": "evil",
            "graph_version": 1,
            "status": "failed",
            "created_at": 1.0,
            "error": {"type": "E", "code": "c", "message": EVIL},
        }
    )
    html = templates.get_template("runs_live.html").render(
        runs=[summary], counts={"failed": 1}, status="", graph="", q="", next_cursor=None
    )
    assert "<script" not in html and ESCAPED in html
