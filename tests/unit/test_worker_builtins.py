"""Built-in handlers and the handler-facing context, without a server (plus one fakeredis job)."""

from __future__ import annotations

import logging
import threading
from typing import Any

import pytest

from graph_core.errors import PathError
from graph_core.keys import Keys
from graph_core.model import Edge, Graph, Node
from graph_core.paths import MISSING
from tests.support.store_setup import completed, inbox_reports, job_for, queued, setup_run
from worker import HandlerRegistry, NodeContext, NodeResult, NonRetryableError, NotPreloaded
from worker.context import Snapshot
from worker.preload import GraphCache
from worker.runner import run_node
from worker.settings import WorkerSettings

OUTPUTS = {"triage": [{"severity": "low"}, {"severity": "critical", "score": 9}]}
INPUT = {"title": "Checkout 500", "n": 3}


async def call(registry: HandlerRegistry, node: Node, **kw: Any) -> Any:
    """Run the registry's handler for ``node`` as a worker would (config rendered)."""
    ctx = NodeContext.local(node, input=kw.pop("input", INPUT), outputs=OUTPUTS, **kw)
    spec = registry.spec(node.type)
    assert spec is not None
    if spec.is_async:
        return await spec.fn(ctx)
    return spec.fn(ctx)


REGISTRY = HandlerRegistry()


# --- function ---------------------------------------------------------------------------------


async def test_function_set_context_outputs_rendered_values() -> None:
    node = Node(
        "f",
        type="function",
        config={"action": "set_context", "values": {"sev": "{{triage.output.severity}}", "k": 1}},
    )
    assert await call(REGISTRY, node) == {"sev": "critical", "k": 1}


async def test_function_set_context_defaults_to_empty_and_requires_an_object() -> None:
    assert await call(REGISTRY, Node("f", type="function", config={"action": "set_context"})) == {}
    node = Node("f", type="function", config={"action": "set_context", "values": [1]})
    with pytest.raises(NonRetryableError, match="'values' to be an object"):
        await call(REGISTRY, node)


async def test_function_json_transform_outputs_rendered_template() -> None:
    node = Node(
        "f",
        type="function",
        config={
            "action": "json_transform",
            "template": {"title": "{{input.title}}", "all": ["{{triage.outputs.1}}"]},
        },
    )
    assert await call(REGISTRY, node) == {"title": "Checkout 500", "all": [{"severity": "low"}]}


async def test_function_delay_is_a_noop_as_in_roomkit() -> None:
    node = Node("f", type="function", config={"action": "delay", "duration": "5m"})
    assert await call(REGISTRY, node) == {"delayed": "5m"}


async def test_function_custom_calls_registered_async_and_sync_functions() -> None:
    registry = HandlerRegistry()
    threads: list[int] = []

    @registry.function("upper")
    async def upper(ctx: NodeContext) -> str:
        return str(ctx.config["text"]).upper()

    @registry.function("count")
    def count(ctx: NodeContext) -> NodeResult:
        threads.append(threading.get_ident())
        return NodeResult({"n": ctx.get("input.n")}, status="waiting")

    node = Node(
        "f",
        type="function",
        config={"action": "custom", "function": "upper", "text": "{{input.title}}"},
    )
    assert await call(registry, node) == "CHECKOUT 500"
    node = Node("f", type="function", config={"action": "custom", "function": "count"})
    assert await call(registry, node) == NodeResult({"n": 3}, status="waiting")
    assert threads and threads[0] != threading.get_ident()  # sync functions run in a thread


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"action": "custom", "function": "nope"}, "no function 'nope' is registered"),
        ({"action": "custom"}, "no function '' is registered"),
        ({"action": "http_request"}, "unknown action 'http_request'"),
        ({}, "unknown action ''"),
    ],
)
async def test_function_errors_do_not_retry(config: dict[str, Any], match: str) -> None:
    with pytest.raises(NonRetryableError, match=match):
        await call(REGISTRY, Node("f", type="function", config=config))


# --- condition --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("condition", "result"),
    [
        (
            {"type": "field", "path": "triage.output.severity", "op": "eq", "value": "critical"},
            True,
        ),
        ({"type": "field", "path": "triage.output.score", "op": "gt", "value": 10}, False),
        ({"type": "field", "path": "triage.output.nope", "op": "neq", "value": 1}, False),
        ({"type": "field", "path": "input.n", "op": "eq", "value": "{{input.n}}"}, True),
        (
            {
                "type": "all",
                "conditions": [
                    {"type": "field", "path": "input.title", "op": "contains", "value": "500"},
                    {"type": "field", "path": "triage.visits", "op": "eq", "value": 2},
                ],
            },
            True,
        ),
    ],
)
async def test_condition_outputs_result(condition: dict[str, Any], result: bool) -> None:
    node = Node("c", type="condition", config={"condition": condition})
    assert await call(REGISTRY, node) == {"result": result}


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({}, "needs 'condition'"),
        ({"condition": {"type": "field", "path": "input.x"}}, "needs 'path' and 'op'"),
        ({"condition": {"type": "field", "path": "input.x", "op": "like"}}, "condition node 'c'"),
    ],
)
async def test_condition_errors_do_not_retry(config: dict[str, Any], match: str) -> None:
    with pytest.raises(NonRetryableError, match=match):
        await call(REGISTRY, Node("c", type="condition", config=config))


def test_condition_declares_the_paths_it_reads() -> None:
    spec = REGISTRY.spec("condition")
    assert spec is not None and spec.reads is not None
    node = Node(
        "c",
        type="condition",
        config={
            "condition": {
                "type": "not",
                "conditions": [{"type": "field", "path": "a.output.x", "op": "exists"}],
            }
        },
    )
    assert list(spec.reads(node)) == ["a.output.x"]
    assert (
        list(spec.reads(Node("c", type="condition", config={"condition": {"type": "bad"}}))) == []
    )


# --- switch -----------------------------------------------------------------------------------

CASES = {"critical": "page", "low": "ticket", "1": "one", "true": "yes"}


@pytest.mark.parametrize(
    ("value", "case"),
    [
        ("{{triage.output.severity}}", "page"),
        ("medium", "fallback"),
        (1, "one"),
        (True, "yes"),
        (None, "fallback"),
    ],
)
async def test_switch_matches_cases(value: Any, case: str) -> None:
    node = Node("s", type="switch", config={"value": value, "cases": CASES, "default": "fallback"})
    out = await call(REGISTRY, node)
    assert out["case"] == case
    assert out["value"] == (
        value if not isinstance(value, str) or "{{" not in value else "critical"
    )


async def test_switch_roomkit_path_form_and_missing_default() -> None:
    node = Node("s", type="switch", config={"path": "triage.output.severity"})
    assert await call(REGISTRY, node) == {"value": "critical", "case": None}
    assert await call(REGISTRY, Node("s", type="switch")) == {"value": None, "case": None}
    spec = REGISTRY.spec("switch")
    assert spec is not None and spec.reads is not None
    assert list(spec.reads(Node("s", type="switch", config={"path": "a.output.v"}))) == [
        "a.output.v"
    ]


async def test_switch_cases_must_be_an_object() -> None:
    with pytest.raises(NonRetryableError, match="'cases' to be an object"):
        await call(REGISTRY, Node("s", type="switch", config={"value": 1, "cases": [1]}))


# --- log, noop --------------------------------------------------------------------------------


async def test_log_logs_rendered_message(caplog: pytest.LogCaptureFixture) -> None:
    node = Node(
        "l", type="log", config={"message": "sev={{triage.output.severity}}", "level": "warning"}
    )
    with caplog.at_level(logging.DEBUG):
        assert await call(REGISTRY, node, run_id="r9") == {"message": "sev=critical"}
    [record] = [r for r in caplog.records if r.name == "relaygraph.node.log"]
    assert record.levelno == logging.WARNING
    assert record.getMessage() == "[r9/l#1.1] sev=critical"
    assert record.__dict__["run_id"] == "r9"


async def test_log_non_string_message_and_bad_level(caplog: pytest.LogCaptureFixture) -> None:
    node = Node("l", type="log", config={"message": "{{triage.output}}"})
    with caplog.at_level(logging.INFO):
        assert await call(REGISTRY, node) == {"message": {"severity": "critical", "score": 9}}
    assert '{"severity":"critical","score":9}' in caplog.text
    with pytest.raises(NonRetryableError, match="unknown level 'loud'"):
        await call(REGISTRY, Node("l", type="log", config={"level": "loud"}))


async def test_noop_outputs_empty_object() -> None:
    assert await call(REGISTRY, Node("n", type="noop")) == {}


# --- context ----------------------------------------------------------------------------------


async def test_context_get_and_load_over_local_data() -> None:
    ctx = NodeContext.local(Node("x", type="agent"), input=INPUT, outputs=OUTPUTS, visit=2)
    assert ctx.get("triage.output.severity") == "critical"
    assert ctx.get("triage.outputs.1.severity") == "low"
    assert ctx.get("triage.visits") == 2
    assert ctx.get("input.title") == "Checkout 500"
    assert ctx.get("triage.output.nope") is None
    assert ctx.get("triage.output.nope", 0) == 0
    assert await ctx.load("triage.output.score") == 9
    assert ctx.idempotency_key == "local:x:2"
    with pytest.raises(PathError):
        ctx.get("triage.severity")


def test_snapshot_raises_for_nodes_it_did_not_load() -> None:
    snap = Snapshot(
        INPUT,
        {"a", "b"},
        visits={"a": (3, 2)},
        outputs={("a", 2): {"v": 2}},
        reading="me",
    )
    assert snap.latest_output("a") == {"v": 2}
    assert snap.visit_count("a") == 3
    assert snap.output_at("a", 4) is MISSING  # never begun: certainly absent
    assert snap.latest_output("ghost") is MISSING  # not in the graph: absent, no error
    with pytest.raises(NotPreloaded, match=r"'b'.*for node 'me'"):
        snap.latest_output("b")
    with pytest.raises(NotPreloaded, match=r"'a\.outputs\.1'"):
        snap.output_at("a", 1)


def test_node_result_rejects_unknown_status() -> None:
    with pytest.raises(ValueError, match="'completed' or 'waiting'"):
        NodeResult(1, status="failed")  # type: ignore[arg-type]


# --- one job on fakeredis ---------------------------------------------------------------------


async def test_run_node_on_fakeredis(fake_redis: Any) -> None:
    keys = Keys("rgunit")
    graph = Graph(
        id="g",
        nodes=[
            Node("start", type="start"),
            Node("a", type="agent"),
            Node(
                "pick",
                type="switch",
                config={"value": "{{a.output.kind}}", "cases": {"bug": "fix"}},
            ),
        ],
        edges=[Edge("start", "a"), Edge("a", "pick")],
    )
    await setup_run(
        fake_redis,
        keys,
        graph,
        nodes={"a": completed(), "pick": queued()},
        outputs={("a", 1): {"kind": "bug"}},
    )
    cache = GraphCache()
    report = await run_node(
        fake_redis, keys, HandlerRegistry(), job_for(graph, "pick"), cache, WorkerSettings()
    )
    assert report is not None
    assert (report.status, report.output) == ("completed", {"value": "bug", "case": "fix"})
    assert await inbox_reports(fake_redis, keys) == [report]
    assert cache.get("g", 1) is not None  # parsed once, served from the cache next time
