"""``subgraph`` nodes and maps over a graph in the pure transition function
(graph_core.subgraphs), driven in-process by ``run_local`` and by a small tree driver."""

from __future__ import annotations

import itertools
from collections import deque
from typing import Any

from graph_core.engine import Env, advance
from graph_core.events import (
    CancelChild,
    CancelRequested,
    ChildFinished,
    Event,
    FinishRun,
    RunSubmitted,
    StartChild,
    child_end,
)
from graph_core.memory import MemoryRun, Waiting, run_local, view_of
from graph_core.model import Graph, Node, RetryPolicy
from graph_core.status import NodeStatus, RunStatus
from graph_core.validation import validate


def child_graph(gid: str = "child", *, human: bool = False, fail: bool = False) -> Graph:
    g = Graph(id=gid)
    middle = Node("review", type="human", config={"prompt": "{{ input.title }}?"})
    work = Node("work", type="boom" if fail else "echo")
    g.add_nodes(Node("start", type="start"), middle if human else work, Node("end", type="end"))
    g.connect("start", "review" if human else "work", "end")
    return g.validate_graph()


def parent_graph(**config: Any) -> Graph:
    retry = config.pop("retry", None)
    g = Graph(id="parent")
    g.add_nodes(
        Node("start", type="start"),
        Node("sub", type="subgraph", config={"graph": "child", **config}, retry=retry),
        Node("end", type="end"),
    )
    g.connect("start", "sub", "end")
    return g.validate_graph()


def echo(node_id: str, config: dict[str, Any], ctx: dict[str, Any]) -> Any:
    return {"echo": ctx["input"]}


def boom(node_id: str, config: dict[str, Any], ctx: dict[str, Any]) -> Any:
    raise RuntimeError("the child broke")


HANDLERS = {"echo": echo, "boom": boom}


def test_a_subgraph_completes_with_its_child_runs_output() -> None:
    result = run_local(
        parent_graph(input={"x": "{{ input.n }}"}),
        HANDLERS,
        {"n": 7},
        graphs={"child": child_graph()},
    )
    assert result.run.status == RunStatus.COMPLETED
    assert result.run.output == {"echo": {"x": 7}}
    (child,) = result.children.values()
    assert child.run is not None and child.run.parent is not None
    assert child.run.parent.run_id == "local" and child.run.parent.node_id == "sub"
    assert child.run.parent.depth == 1
    assert "subgraph.started:sub" in result.history()
    assert "subgraph.finished:sub" in result.history()


def test_the_output_mapping_reads_the_child_output_as_child_output() -> None:
    result = run_local(
        parent_graph(output={"got": "{{ child.output.echo }}", "n": "{{ input.n }}"}),
        HANDLERS,
        {"n": 3},
        graphs={"child": child_graph()},
    )
    assert result.run.output == {"got": {"n": 3}, "n": 3}


def test_without_input_the_child_gets_what_the_trigger_passed_on() -> None:
    result = run_local(parent_graph(), HANDLERS, {"n": 1}, graphs={"child": child_graph()})
    assert result.run.output == {"echo": {"n": 1}}


def test_a_failing_child_fails_the_node_naming_the_child_run_and_its_node() -> None:
    result = run_local(parent_graph(), HANDLERS, {}, graphs={"child": child_graph(fail=True)})
    run = result.run
    assert run.status == RunStatus.FAILED
    assert run.error is not None and run.error.type == "ChildRunFailed"
    assert run.error.node_id == "sub" and run.error.code == "child_failed"
    (child_id,) = result.children
    assert child_id in run.error.message
    assert "at node 'work'" in run.error.message and "the child broke" in run.error.message


def test_a_retry_policy_starts_a_new_child_run() -> None:
    calls = []

    def flaky(node_id: str, config: dict[str, Any], ctx: dict[str, Any]) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("first child fails")
        return "ok"

    result = run_local(
        parent_graph(retry=RetryPolicy(max_attempts=2, initial_delay_s=0)),
        {"echo": flaky},
        {},
        graphs={"child": child_graph()},
    )
    assert result.run.status == RunStatus.COMPLETED
    assert len(result.children) == 2
    statuses = sorted(m.run.status.value for m in result.children.values() if m.run)
    assert statuses == ["completed", "failed"]


def test_a_child_waits_and_is_approved() -> None:
    def approve(w: Waiting) -> tuple[str, dict[str, Any]]:
        assert w.node_id == "review" and w.prompt == "t?"
        return "approve", {"ok": True}

    result = run_local(
        parent_graph(input={"title": "t"}),
        HANDLERS,
        {},
        approve=approve,
        graphs={"child": child_graph(human=True)},
    )
    assert result.run.status == RunStatus.COMPLETED
    assert result.run.output["decision"] == "approve"


def test_a_graph_that_includes_itself_through_a_template_fails_at_depth_10() -> None:
    g = Graph(id="loopy")
    g.add_nodes(
        Node("start", type="start"),
        Node(
            "again", type="subgraph", config={"graph": "{{ input.name }}", "input": "{{ input }}"}
        ),
        Node("end", type="end"),
    )
    g.connect("start", "again", "end")
    g.validate_graph()
    result = run_local(g, {}, {"name": "loopy"}, graphs={"loopy": g})
    run = result.run
    assert run.status == RunStatus.FAILED
    assert run.error is not None and run.error.type == "ChildRunFailed"
    assert len(result.children) == 10
    deepest = [m for m in result.children.values() if m.run and m.run.parent.depth == 10]
    (last,) = deepest
    assert last.run is not None and last.run.error is not None
    assert last.run.error.code == "subgraph_depth" and "at most 10 deep" in last.run.error.message


def test_a_missing_child_graph_fails_the_node() -> None:
    result = run_local(parent_graph(), HANDLERS, {}, graphs={})
    assert result.run.status == RunStatus.FAILED
    assert result.run.error is not None and "not among" in result.run.error.message


def test_validation_refuses_a_graph_that_includes_itself_and_a_bad_subgraph_config() -> None:
    def codes(graph_id: str, config: dict[str, Any]) -> list[str]:
        g = {
            "id": graph_id,
            "nodes": [
                {"id": "start", "type": "start"},
                {"id": "s", "type": "subgraph", "config": config},
                {"id": "end", "type": "end"},
            ],
            "edges": [{"source": "start", "target": "s"}, {"source": "s", "target": "end"}],
        }
        return [f"{p.code}: {p.message}" for p in validate(g)]

    assert codes("a", {"graph": "b"}) == []
    (self_ref,) = codes("a", {"graph": "a"})
    assert self_ref.startswith("bad_subgraph") and "include itself" in self_ref
    (no_graph,) = codes("a", {"input": {}})
    assert "give the graph to run" in no_graph
    (version,) = codes("a", {"graph": "b", "version": 0})
    assert "version" in version
    (unknown,) = codes("a", {"graph": "b", "inputs": {}})
    assert "'inputs'" in unknown
    assert codes("a", {"graph": "{{ input.g }}"}) == []  # a template: checked when it runs


# --- a tree driver: events step by step, with cancels ----------------------------------------


class Tree:
    def __init__(self, graphs: dict[str, Graph]) -> None:
        self.graphs = graphs
        self.runs: dict[str, tuple[Graph, MemoryRun]] = {}
        self.queue: deque[Event] = deque()
        self.tokens = (f"tok{i}" for i in itertools.count(1))
        self.now = 0.0

    def submit(self, graph_id: str, run_id: str, input: Any = None) -> None:
        self.runs[run_id] = (self.graphs[graph_id], MemoryRun())
        self.queue.append(
            RunSubmitted(run_id=run_id, graph_id=graph_id, graph_version=1, input=input)
        )

    def drain(self) -> None:
        while self.queue:
            ev = self.queue.popleft()
            graph, mem = self.runs[ev.run_id]
            self.now += 1
            t = advance(graph, view_of(mem), ev, Env(self.now, lambda: next(self.tokens)))
            mem.apply(t)
            for a in t.actions:
                if isinstance(a, StartChild):
                    self.runs[a.run_id] = (self.graphs[a.graph_id], MemoryRun())
                    self.queue.append(
                        RunSubmitted(
                            run_id=a.run_id,
                            graph_id=a.graph_id,
                            graph_version=1,
                            input=a.input,
                            parent=a.parent,
                        )
                    )
                elif isinstance(a, CancelChild):
                    self.queue.append(CancelRequested(run_id=a.run_id, reason=a.reason))
            run = mem.run
            if run is not None and run.parent and any(isinstance(a, FinishRun) for a in t.actions):
                self.queue.append(
                    child_end(run.parent, run.run_id, run.status.value, run.output, run.error)
                )

    def status(self, run_id: str) -> RunStatus:
        run = self.runs[run_id][1].run
        assert run is not None
        return run.status


def test_cancelling_the_parent_cancels_its_children_recursively() -> None:
    middle = Graph(id="middle")
    middle.add_nodes(
        Node("start", type="start"),
        Node("inner", type="subgraph", config={"graph": "child"}),
        Node("end", type="end"),
    )
    middle.connect("start", "inner", "end")
    top = Graph(id="top")
    top.add_nodes(
        Node("start", type="start"),
        Node("outer", type="subgraph", config={"graph": "middle"}),
        Node("end", type="end"),
    )
    top.connect("start", "outer", "end")
    tree = Tree({"top": top, "middle": middle.validate_graph(), "child": child_graph(human=True)})
    tree.submit("top", "root", {"title": "t"})
    tree.drain()
    assert len(tree.runs) == 3
    ids = list(tree.runs)
    assert all(tree.status(r) in (RunStatus.RUNNING, RunStatus.WAITING) for r in ids)
    assert tree.status(ids[2]) == RunStatus.WAITING  # the grandchild waits for a human
    outer = tree.runs["root"][1].nodes["outer"]
    assert outer.status == NodeStatus.RUNNING and outer.child == ids[1]
    tree.queue.append(CancelRequested(run_id="root", reason="stop"))
    tree.drain()
    assert [tree.status(r) for r in ids] == [RunStatus.CANCELLED] * 3
    grandchild = tree.runs[ids[2]][1]
    assert grandchild.nodes["review"].status == NodeStatus.CANCELLED
    assert not grandchild.run or grandchild.run.waiting == 0


def test_a_late_or_forged_child_end_is_ignored() -> None:
    tree = Tree({"parent": parent_graph(), "child": child_graph(human=True)})
    tree.submit("parent", "p", {"title": "t"})
    tree.drain()
    _, mem = tree.runs["p"]
    forged = ChildFinished(
        run_id="p", node_id="sub", visit=1, attempt=1, child_run_id="someone-else",
        status="completed", output="forged",
    )  # fmt: skip
    t = advance(parent_graph(), view_of(mem), forged, Env(100.0, lambda: "x"))
    assert t.ignored is not None and "someone-else" in t.ignored


# --- maps over a graph -------------------------------------------------------------------------


def map_over_graph(limit: int = 3, tolerated: Any = 0) -> Graph:
    g = Graph(id="batch")
    g.add_nodes(
        Node("start", type="start"),
        Node(
            "each",
            type="map",
            config={
                "items": "{{ input.issues }}",
                "graph": "child",
                "max_concurrency": limit,
                "tolerated_failures": tolerated,
            },
        ),
        Node("end", type="end"),
    )
    g.connect("start", "each", "end")
    return g.validate_graph()


def test_a_map_over_a_graph_runs_a_child_per_item_with_human_waits() -> None:
    decided: list[str] = []

    def approve(w: Waiting) -> tuple[str, dict[str, Any]]:
        decided.append(w.prompt)
        return ("reject" if "spam" in w.prompt else "approve"), {}

    issues = [{"title": f"issue {i}"} for i in range(7)] + [{"title": "spam"}]
    result = run_local(
        map_over_graph(limit=3),
        {},
        {"issues": issues},
        approve=approve,
        graphs={"child": child_graph(human=True)},
    )
    assert result.run.status == RunStatus.COMPLETED
    assert [o["decision"] for o in result.run.output] == ["approve"] * 7 + ["reject"]
    assert len(result.children) == 8 and len(decided) == 8
    for mem in result.children.values():
        assert mem.run is not None and mem.run.parent is not None
        assert mem.run.parent.item is not None


def test_a_map_over_a_graph_never_has_more_children_running_than_its_limit() -> None:
    tree = Tree({"batch": map_over_graph(limit=3), "child": child_graph(human=True)})
    tree.submit("batch", "b", {"issues": [{"title": str(i)} for i in range(10)]})
    tree.drain()
    assert len(tree.runs) == 1 + 3  # three children wait for approval, no more
    tree.queue.append(CancelRequested(run_id="b"))
    tree.drain()
    children = [r for r in tree.runs if r != "b"]
    assert all(tree.status(c) == RunStatus.CANCELLED for c in children)


def test_failed_children_count_against_the_tolerance() -> None:
    result = run_local(
        map_over_graph(limit=2, tolerated=1),
        HANDLERS,
        {"issues": [1, 2, 3]},
        graphs={"child": child_graph(fail=True)},
    )
    assert result.run.status == RunStatus.FAILED
    assert result.run.error is not None and "2 of 3 items failed" in result.run.error.message


def test_subgraph_references_follow_changes_to_the_graph() -> None:
    g = Graph(id="grows").add_nodes(Node("start", type="start"), Node("end", type="end"))
    g.connect("start", "end")
    assert g.subgraph_refs() == []  # computed, and kept
    g.add_node(Node("sub", type="subgraph", config={"graph": "leaf", "version": 2}))
    g.add_node(Node("each", type="map", config={"items": [], "graph": "{{ input.g }}"}))
    assert g.subgraph_refs() == [("sub", "leaf", 2)]  # a template is no static reference


def test_an_output_mapping_that_cannot_render_fails_the_run_naming_the_template() -> None:
    result = run_local(
        parent_graph(output={"got": "{{ child.output.echo | nosuchfilter }}"}),
        HANDLERS,
        {"n": 3},
        graphs={"child": child_graph()},
    )
    run = result.run
    assert run.status == RunStatus.FAILED
    assert run.error is not None and run.error.code == "template"
    assert run.error.node_id == "sub" and run.error.type == "TemplateError"
