"""OpenTelemetry tracing (``tracing = "otel"``) against a real server, an in-process
dispatcher and an in-process worker, with the SDK exporting to memory: one span per run,
a child span per node attempt (retries included), handlers' own spans under their node's,
one trace id throughout, and a submitter's trace context carried into the run."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from opentelemetry import trace
from opentelemetry.propagate import inject
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from dispatcher import WorkflowClient
from dispatcher.service import Dispatcher
from dispatcher.settings import DispatcherSettings
from graph_core.messages import INBOX_FIELD
from graph_core.model import Graph, Node, RetryPolicy
from graph_core.state import RunRecord
from graph_core.status import RunStatus
from tests.support.api import as_key, in_process_api
from tests.support.layout import SHARDS, client_for, keys_for, workflow_client
from tests.support.waiting import wait_for
from worker.app import serve
from worker.context import NodeContext, NonRetryableError
from worker.registry import HandlerRegistry
from worker.settings import WorkerSettings

pytestmark = pytest.mark.integration

KEYS = keys_for()
EXPORTER = InMemorySpanExporter()
HANDLER_TRACER = "tests.handlers"  # the scope of the spans the test's handlers make


@pytest.fixture(scope="module", autouse=True)
def tracer_provider() -> Iterator[TracerProvider]:
    """The process's global SDK tracer provider, exporting to ``EXPORTER``. The global
    provider can be set once per process: if something set an SDK one already, the
    exporter is added to it."""
    current = trace.get_tracer_provider()
    provider = current if isinstance(current, TracerProvider) else TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
    if provider is not current:
        trace.set_tracer_provider(provider)
    assert trace.get_tracer_provider() is provider
    yield provider
    EXPORTER.clear()


@pytest.fixture(autouse=True)
def spans() -> Iterator[InMemorySpanExporter]:
    EXPORTER.clear()
    yield EXPORTER
    EXPORTER.clear()


# --- the graph and its handlers ------------------------------------------------------------


def traced_graph() -> Graph:
    """start -> fetch -> flaky -> nest -> end: three nodes run by workers; ``flaky`` fails
    its first attempt and is retried at once."""
    g = Graph(id="traced").add_nodes(
        Node("start", type="start"),
        Node("fetch", type="fetch"),
        Node(
            "flaky",
            type="flaky",
            retry=RetryPolicy(max_attempts=2, backoff="fixed", initial_delay_s=0),
        ),
        Node("nest", type="nest"),
        Node("end", type="end"),
    )
    return g.connect("start", "fetch", "flaky", "nest", "end").validate_graph()


def failing_graph() -> Graph:
    g = Graph(id="traced-fail").add_nodes(
        Node("start", type="start"), Node("boom", type="boom"), Node("end", type="end")
    )
    return g.connect("start", "boom", "end").validate_graph()


def ghost_graph() -> Graph:
    """A node of a type no worker has a handler for: it fails before any handler runs."""
    g = Graph(id="traced-ghost").add_nodes(
        Node("start", type="start"), Node("ghost", type="ghost"), Node("end", type="end")
    )
    return g.connect("start", "ghost", "end").validate_graph()


def hanging_graph() -> Graph:
    g = Graph(id="traced-hang").add_nodes(
        Node("start", type="start"), Node("hang", type="hang"), Node("end", type="end")
    )
    return g.connect("start", "hang", "end").validate_graph()


HANGING = asyncio.Event()


def registry() -> HandlerRegistry:
    reg = HandlerRegistry()
    tracer = trace.get_tracer(HANDLER_TRACER)

    @reg.handler("fetch")
    async def fetch(ctx: NodeContext) -> dict[str, Any]:
        with tracer.start_as_current_span("fetch work"):  # an async handler's own span,
            await ctx.load("start.output")  # across an await that reads Redis
        return {"n": 1}

    @reg.handler("flaky")
    def flaky(ctx: NodeContext) -> dict[str, Any]:
        if ctx.attempt == 1:
            raise ValueError("first attempt fails")
        return {"attempt": ctx.attempt}

    @reg.handler("nest")
    def nest(ctx: NodeContext) -> dict[str, Any]:
        with tracer.start_as_current_span("nest work"):  # a sync handler's, in its thread
            return {"nested": True}

    @reg.handler("hang")
    async def hang(ctx: NodeContext) -> None:
        HANGING.set()
        await asyncio.Event().wait()  # until the job is aborted (the run is cancelled)

    @reg.handler("boom")
    def boom(ctx: NodeContext) -> None:
        raise NonRetryableError("boom always fails")

    return reg


# --- fixtures ------------------------------------------------------------------------------


@pytest.fixture
async def engine(redis: aioredis.Redis, redis_url: str) -> AsyncIterator[None]:
    """A dispatcher and a worker, both with ``tracing = "otel"``."""
    client = client_for(redis_url)
    dispatcher = Dispatcher(
        client, DispatcherSettings(shards=SHARDS, redis_url=redis_url, tracing="otel")
    )
    stop = asyncio.Event()
    task = asyncio.create_task(dispatcher.run(stop))
    await wait_for(dispatcher.ready.is_set, message="dispatcher ready")
    settings = WorkerSettings(shards=SHARDS, redis_url=redis_url, poll_delay=0.01, tracing="otel")
    server = asyncio.create_task(serve(settings, registry(), grace_s=0))
    yield
    server.cancel()
    await asyncio.wait_for(asyncio.gather(server, return_exceptions=True), timeout=20)
    stop.set()
    await asyncio.wait_for(task, timeout=10)
    await client.aclose()


@pytest.fixture
async def client(redis: aioredis.Redis, redis_url: str) -> AsyncIterator[WorkflowClient]:
    async with workflow_client(redis_url) as c:
        await c.register_graph(traced_graph())
        await c.register_graph(failing_graph())
        await c.register_graph(ghost_graph())
        await c.register_graph(hanging_graph())
        yield c


# --- helpers -------------------------------------------------------------------------------


def named(spans: Sequence[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def span_id(span: ReadableSpan) -> int:
    ctx = span.get_span_context()
    assert ctx is not None
    return ctx.span_id


def trace_id(span: ReadableSpan) -> int:
    ctx = span.get_span_context()
    assert ctx is not None
    return ctx.trace_id


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


async def run_span(run_id: str, graph_id: str = "traced") -> ReadableSpan:
    """The run's span, once its dispatcher recorded it (just after it stored the run's end:
    a waiting client can see the end first)."""

    def find() -> ReadableSpan | None:
        for span in named(EXPORTER.get_finished_spans(), f"relaygraph.run {graph_id}"):
            if span.attributes and span.attributes.get("relaygraph.run_id") == run_id:
                return span
        return None

    found = await wait_for(find, timeout=10, message=f"the span of run {run_id}")
    assert isinstance(found, ReadableSpan)
    return found


def attempts(spans: Sequence[ReadableSpan], node_type: str) -> list[ReadableSpan]:
    found = named(spans, f"relaygraph.node {node_type}")
    return sorted(found, key=lambda s: (s.attributes or {}).get("relaygraph.attempt", 0))


# --- tests ---------------------------------------------------------------------------------


@pytest.mark.usefixtures("engine")
async def test_a_run_is_a_span_with_a_child_per_node_attempt(client: WorkflowClient) -> None:
    run_id = await client.submit("traced", {"x": 1})
    view = await client.wait(run_id, timeout=15)
    assert view.status == RunStatus.COMPLETED
    run = await run_span(run_id)
    spans = EXPORTER.get_finished_spans()

    assert len(named(spans, "relaygraph.run traced")) == 1
    assert run.parent is None  # no trace context submitted: the run starts a trace
    assert run.status.status_code == StatusCode.UNSET
    assert dict(run.attributes or {}) == {
        "relaygraph.run_id": run_id,
        "relaygraph.graph_id": "traced",
        "relaygraph.graph_version": 1,
        "relaygraph.status": "completed",
        "relaygraph.steps": 5,  # node activations: a retry is not one
    }

    fetch, flaky, nest = attempts(spans, "fetch"), attempts(spans, "flaky"), attempts(spans, "nest")
    assert (len(fetch), len(flaky), len(nest)) == (1, 2, 1)  # the retry is a span of its own
    nodes = [*fetch, *flaky, *nest]
    assert len([s for s in spans if s.name.startswith("relaygraph.node")]) == len(nodes)
    for span in nodes:
        assert parent_id(span) == span_id(run)
        attributes = span.attributes or {}
        assert attributes["relaygraph.run_id"] == run_id
        assert attributes["relaygraph.graph_id"] == "traced"
        assert attributes["relaygraph.visit"] == 1
        assert attributes["relaygraph.queue"] == "default"
    first, second = flaky
    assert (first.attributes or {})["relaygraph.attempt"] == 1
    assert (first.attributes or {})["relaygraph.outcome"] == "failed"
    assert (first.attributes or {})["error.type"] == "ValueError"
    assert first.status.status_code == StatusCode.ERROR
    assert "first attempt fails" in (first.status.description or "")
    assert (second.attributes or {})["relaygraph.attempt"] == 2
    assert (second.attributes or {})["relaygraph.outcome"] == "completed"
    assert second.status.status_code == StatusCode.UNSET
    assert (nest[0].attributes or {})["relaygraph.node_id"] == "nest"
    assert (nest[0].attributes or {})["relaygraph.node_type"] == "nest"

    # the handlers' own spans nest under their attempt's span (async and in a thread)
    (fetch_work,) = named(spans, "fetch work")
    (nest_work,) = named(spans, "nest work")
    assert parent_id(fetch_work) == span_id(fetch[0])
    assert parent_id(nest_work) == span_id(nest[0])

    # one trace; the run span covers its nodes' spans
    mine = [run, *nodes, fetch_work, nest_work]
    assert {trace_id(s) for s in mine} == {trace_id(run)}
    assert run.start_time is not None and run.end_time is not None
    assert all(s.start_time is not None and run.start_time <= s.start_time for s in nodes)
    assert all(s.end_time is not None and s.end_time <= run.end_time for s in nodes)


@pytest.mark.usefixtures("engine")
async def test_the_run_record_keeps_the_runs_span(
    client: WorkflowClient, redis: aioredis.Redis
) -> None:
    run_id = await client.submit("traced", {})
    await client.wait(run_id, timeout=15)
    run = await run_span(run_id)
    raw = await redis.hget(KEYS.run(run_id).meta, "run")
    record = RunRecord.model_validate_json(raw)
    assert record.trace is not None and record.trace.parent_span_id is None
    version, trace_hex, span_hex, flags = record.trace.traceparent.split("-")
    assert (version, flags) == ("00", "01")
    assert (int(trace_hex, 16), int(span_hex, 16)) == (trace_id(run), span_id(run))


@pytest.mark.usefixtures("engine")
async def test_a_submitters_span_is_the_runs_parent(client: WorkflowClient) -> None:
    caller_tracer = trace.get_tracer("tests.caller")
    with caller_tracer.start_as_current_span("caller") as caller:
        carrier: dict[str, str] = {}
        inject(carrier)
        run_id = await client.submit("traced", {}, traceparent=carrier["traceparent"])
    await client.wait(run_id, timeout=15)
    run = await run_span(run_id)
    spans = EXPORTER.get_finished_spans()

    caller_ctx = caller.get_span_context()
    assert run.parent is not None and run.parent.is_remote
    assert parent_id(run) == caller_ctx.span_id
    assert trace_id(run) == caller_ctx.trace_id
    nodes = [s for s in spans if s.name.startswith("relaygraph.node")]
    assert len(nodes) == 4
    assert all(parent_id(s) == span_id(run) for s in nodes)
    assert {trace_id(s) for s in [run, *nodes, *named(spans, "nest work")]} == {caller_ctx.trace_id}


@pytest.mark.usefixtures("engine")
async def test_a_raw_submit_carries_traceparent_and_tracestate(
    client: WorkflowClient, redis: aioredis.Redis
) -> None:
    trace_hex, parent_hex = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    message = {
        "kind": "submit",
        "graph_id": "traced",
        "run_id": "raw-traced",
        "traceparent": f"00-{trace_hex}-{parent_hex}-01",
        "tracestate": "vendor=abc,other=1",
    }
    await redis.xadd(KEYS.shard_for("raw-traced").inbox, {INBOX_FIELD: orjson.dumps(message)})
    await wait_for(lambda: client.get_run("raw-traced"), message="the raw run started")
    await client.wait("raw-traced", timeout=15)
    run = await run_span("raw-traced")
    spans = EXPORTER.get_finished_spans()

    assert trace_id(run) == int(trace_hex, 16)
    assert parent_id(run) == int(parent_hex, 16)
    nodes = [s for s in spans if s.name.startswith("relaygraph.node")]
    assert len(nodes) == 4
    for span in [run, *nodes]:
        ctx = span.get_span_context()
        assert ctx is not None and ctx.trace_state.get("vendor") == "abc", span.name
    assert all(parent_id(s) == span_id(run) for s in nodes)


@pytest.mark.usefixtures("engine")
async def test_an_unparseable_traceparent_starts_a_trace_of_the_runs_own(
    client: WorkflowClient,
) -> None:
    run_id = await client.submit("traced", {}, traceparent="not-a-traceparent")
    view = await client.wait(run_id, timeout=15)
    assert view.status == RunStatus.COMPLETED  # a bad trace context never stops a run
    run = await run_span(run_id)
    assert run.parent is None
    nodes = [s for s in EXPORTER.get_finished_spans() if s.name.startswith("relaygraph.node")]
    assert nodes and all(parent_id(s) == span_id(run) for s in nodes)


@pytest.mark.usefixtures("engine")
async def test_a_failed_run_is_an_error_span(client: WorkflowClient) -> None:
    run_id = await client.submit("traced-fail", {})
    view = await client.wait(run_id, timeout=15)
    assert view.status == RunStatus.FAILED
    run = await run_span(run_id, "traced-fail")
    assert run.status.status_code == StatusCode.ERROR
    assert (run.attributes or {})["relaygraph.status"] == "failed"
    (boom,) = attempts(EXPORTER.get_finished_spans(), "boom")
    assert boom.status.status_code == StatusCode.ERROR
    assert (boom.attributes or {})["error.type"] == "NonRetryableError"
    assert parent_id(boom) == span_id(run)


@pytest.mark.usefixtures("engine")
async def test_an_attempt_that_fails_before_its_handler_has_a_span(
    client: WorkflowClient,
) -> None:
    run_id = await client.submit("traced-ghost", {})
    assert (await client.wait(run_id, timeout=15)).status == RunStatus.FAILED
    run = await run_span(run_id, "traced-ghost")
    (ghost,) = attempts(EXPORTER.get_finished_spans(), "ghost")
    attributes = ghost.attributes or {}
    assert attributes["relaygraph.outcome"] == "failed"
    assert attributes["relaygraph.error_code"] == "unknown_node_type"
    assert ghost.status.status_code == StatusCode.ERROR
    assert parent_id(ghost) == span_id(run) and trace_id(ghost) == trace_id(run)


@pytest.mark.usefixtures("engine")
async def test_a_cancelled_run_and_its_aborted_attempt(client: WorkflowClient) -> None:
    HANGING.clear()
    run_id = await client.submit("traced-hang", {})
    await wait_for(HANGING.is_set, message="the hang handler started")
    await client.cancel(run_id, reason="enough")
    assert (await client.wait(run_id, timeout=15)).status == RunStatus.CANCELLED
    run = await run_span(run_id, "traced-hang")
    assert run.status.status_code == StatusCode.UNSET  # a cancellation is not an error
    attributes = run.attributes or {}
    assert (attributes["relaygraph.status"], attributes["error.type"]) == (
        "cancelled",
        "Cancelled",
    )

    def aborted() -> list[ReadableSpan]:
        return attempts(EXPORTER.get_finished_spans(), "hang")

    (hang,) = await wait_for(aborted, timeout=10, message="the aborted attempt's span")
    assert hang.status.status_code == StatusCode.ERROR
    assert hang.status.description == "ended without a report: CancelledError"
    assert "relaygraph.outcome" not in (hang.attributes or {})
    assert parent_id(hang) == span_id(run)


@pytest.mark.usefixtures("engine")
async def test_an_http_submit_with_a_traceparent_header_is_a_child_of_the_caller(
    client: WorkflowClient, redis_url: str
) -> None:
    trace_hex, parent_hex = "5bf92f3577b34da6a3ce929d0e0e4736", "10f067aa0ba902b7"
    async with in_process_api(redis_url) as api:
        r = await api.post(
            "/v1/runs",
            json={"graph_id": "traced", "input": {}},
            headers={**as_key("submitter"), "traceparent": f"00-{trace_hex}-{parent_hex}-01"},
        )
        assert r.status_code == 201, r.text
    run_id = r.json()["run_id"]
    await client.wait(run_id, timeout=15)
    run = await run_span(run_id)
    assert trace_id(run) == int(trace_hex, 16) and parent_id(run) == int(parent_hex, 16)
