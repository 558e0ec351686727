"""OpenTelemetry spans of node attempts, for a worker with ``tracing = "otel"`` (only then
is this module imported: it imports OpenTelemetry).

Each attempt a worker reports is one span, ``relaygraph.node <type>``, from the job's start
to its report. Its parent is the run's span, named by the job (``JobPayload.traceparent``,
which the dispatcher copies from the run record), so every attempt of every node of a run
lands in the run's trace. The span is the current span while the handler runs (also in a
synchronous handler's thread), so the spans a handler makes with the OpenTelemetry API nest
under it. A job that is not reported (fenced off: its run is over or its node moved on;
handed back before it started: the worker is stopping) has no span; a job cancelled while
its handler ran (an aborted node, the worker stopping) ends its span as an error, and a
job run again has a span per run.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from typing import Any, Final, TypeVar

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from graph_core.events import NodeReported
from graph_core.messages import JobPayload
from graph_core.model import Node
from worker.preload import GraphCache
from worker.settings import DEFAULT_QUEUE

__all__ = ["SCOPE", "NodeAttempt", "NodeTracing", "node_span_name"]

SCOPE: Final = "relaygraph.worker"  # the instrumentation scope of node spans
_PROPAGATOR: Final = TraceContextTextMapPropagator()

T = TypeVar("T")


def node_span_name(node_type: str | None) -> str:
    return f"relaygraph.node {node_type}" if node_type else "relaygraph.node"


class NodeTracing:
    """Makes the span of each attempt. ``provider``: the tracer provider (default: the
    global one; one configured after the worker started, e.g. by the handlers' module,
    counts)."""

    def __init__(self, provider: trace.TracerProvider | None = None) -> None:
        self.tracer = trace.get_tracer(SCOPE, tracer_provider=provider)

    def attempt(self, payload: JobPayload, graphs: GraphCache) -> NodeAttempt:
        """The span of the job ``payload``, begun now and started when the job is known to
        run (``NodeAttempt.around``) or is reported."""
        return NodeAttempt(self.tracer, payload, graphs)


class NodeAttempt:
    """One job's span: started once the job passed the fence, ended with its report."""

    __slots__ = ("_graphs", "_payload", "_span", "_start_ns", "_tracer")

    def __init__(self, tracer: trace.Tracer, payload: JobPayload, graphs: GraphCache) -> None:
        self._tracer = tracer
        self._payload = payload
        self._graphs = graphs
        self._start_ns = time.time_ns()
        self._span: Span | None = None

    def _start(self, node: Node | None) -> Span:
        p = self._payload
        parent = Context()  # no traced run: a trace of its own, not the worker's context
        if p.traceparent is not None:
            carrier = {"traceparent": p.traceparent}
            if p.tracestate is not None:
                carrier["tracestate"] = p.tracestate
            parent = _PROPAGATOR.extract(carrier, context=Context())
        attributes: dict[str, Any] = {
            "relaygraph.run_id": p.run_id,
            "relaygraph.graph_id": p.graph_id,
            "relaygraph.graph_version": p.graph_version,
            "relaygraph.node_id": p.node_id,
            "relaygraph.visit": p.visit,
            "relaygraph.attempt": p.attempt,
        }
        if node is not None:
            attributes["relaygraph.node_type"] = node.type
            attributes["relaygraph.queue"] = node.queue or DEFAULT_QUEUE
        self._span = self._tracer.start_span(
            node_span_name(node.type if node is not None else None),
            context=parent,
            kind=SpanKind.INTERNAL,
            attributes=attributes,
            start_time=self._start_ns,
        )
        return self._span

    async def around(self, node: Node, work: Awaitable[T]) -> T:
        """Start the span and await ``work`` (the handler) with it as the current span."""
        span = self._start(node)
        with trace.use_span(
            span, end_on_exit=False, record_exception=False, set_status_on_exception=False
        ):
            return await work

    def end(self, report: NodeReported) -> None:
        """End the span with the attempt's report (starting it now if the attempt failed
        before its handler could run: no handler for the type, a template, a missing graph)."""
        span = self._span
        if span is None:
            graph = self._graphs.get(self._payload.graph_id, self._payload.graph_version)
            node_id = self._payload.node_id
            node = graph.node(node_id) if graph is not None and graph.has_node(node_id) else None
            span = self._start(node)
        span.set_attribute("relaygraph.outcome", report.status)
        if report.error is not None:
            span.set_attribute("error.type", report.error.type)
            if report.error.code is not None:
                span.set_attribute("relaygraph.error_code", report.error.code)
            span.set_status(Status(StatusCode.ERROR, str(report.error)))
        span.end()

    def abandon(self, error: BaseException) -> None:
        """End a started span of a job that ends without a report: Redis failed it (the
        queue runs it again), or it was cancelled (an aborted node, the worker stopping)."""
        span = self._span
        if span is not None:
            span.set_attribute("error.type", type(error).__name__)
            span.set_status(
                Status(StatusCode.ERROR, f"ended without a report: {type(error).__name__}")
            )
            span.end()
