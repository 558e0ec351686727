"""OpenTelemetry spans of runs, for a dispatcher with ``tracing = "otel"`` (only then is
this module imported: it imports OpenTelemetry).

A run is one span, ``relaygraph.run <graph id>``, from its submission to its end. A run
outlives processes (it may wait days for an approval, and its dispatchers restart), so the
span is not kept open in memory: the dispatcher that accepts the submission only picks the
span's ids (``RunTracing.run_trace``), under the submitter's span when the submission
carries a ``traceparent``, and stores them in the run record (``RunRecord.trace``). Every
job of the run carries them, so the workers' spans of node attempts are its children
whichever dispatcher enqueued the job. The dispatcher that applies the run's end records
the span (``RunTracing.finished``), with those ids and the run record's creation and
finish times. It is recorded once: only one dispatcher applies a run's end.

Recording a span under ids chosen earlier needs the OpenTelemetry SDK's tracer (the API
has no way to): the span goes through a copy of it whose id generator returns the stored
ids, so the provider's sampler, resource, limits and span processors (the exporter) apply
as to any span. With another tracer provider (none configured: the API's no-op one) the
ids are still chosen and passed on, and nothing is recorded here.
"""

from __future__ import annotations

import copy
import logging
import random
from typing import Any, Final

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import Tracer as SdkTracer
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from dispatcher.metrics import Recorder
from graph_core.events import FinishRun, RunTrace
from graph_core.messages import SubmitRequest
from graph_core.model import Graph
from graph_core.state import RunRecord, Transition
from graph_core.status import RunStatus

__all__ = ["SCOPE", "RunTracing", "TracingRecorder", "run_span_name"]

log = logging.getLogger("relaygraph.tracing")

SCOPE: Final = "relaygraph.dispatcher"  # the instrumentation scope of run spans
_PROPAGATOR: Final = TraceContextTextMapPropagator()
_SAMPLED: Final = TraceFlags(TraceFlags.SAMPLED)
_NOT_SAMPLED: Final = TraceFlags(TraceFlags.DEFAULT)


def run_span_name(graph_id: str) -> str:
    return f"relaygraph.run {graph_id}"


def _context(traceparent: str | None, tracestate: str | None) -> Context:
    """The context W3C headers describe; an empty one if they do not parse (a new trace)."""
    carrier = {"traceparent": traceparent or ""}
    if tracestate:
        carrier["tracestate"] = tracestate
    return _PROPAGATOR.extract(carrier, context=Context())


def _headers(span_context: SpanContext) -> tuple[str, str | None]:
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, trace.set_span_in_context(NonRecordingSpan(span_context)))
    return carrier["traceparent"], carrier.get("tracestate") or None


def _nanoseconds(epoch_s: float) -> int:
    return int(epoch_s * 1_000_000_000)


class _StoredIds(IdGenerator):
    """Hands out one run's stored ids, for the one span recorded with them."""

    def __init__(self, trace_id: int, span_id: int, random_ids: bool) -> None:
        self._trace_id, self._span_id, self._random = trace_id, span_id, random_ids

    def generate_span_id(self) -> int:
        return self._span_id

    def generate_trace_id(self) -> int:
        return self._trace_id

    def is_trace_id_random(self) -> bool:
        return self._random


class RunTracing:
    """Picks the ids of each run's span at submission and records the span at its end.

    ``provider``: the tracer provider (default: the global one, looked up at each use, so
    one configured after the dispatcher started counts)."""

    def __init__(self, provider: trace.TracerProvider | None = None) -> None:
        self._provider = provider

    def tracer(self) -> trace.Tracer:
        provider = self._provider if self._provider is not None else trace.get_tracer_provider()
        return provider.get_tracer(SCOPE)

    def run_trace(self, req: SubmitRequest, run_id: str) -> RunTrace | None:
        """The span of the run ``req`` starts: a child of the submitter's span, if
        ``req`` names one, else the root of a new trace. None if that failed (logged: a
        run is never refused for its tracing)."""
        try:
            return self._run_trace(req, run_id)
        except Exception:
            log.exception("run %s: could not make its span context; the run is not traced", run_id)
            return None

    def _run_trace(self, req: SubmitRequest, run_id: str) -> RunTrace:
        parent_context = _context(req.traceparent, req.tracestate)
        parent = trace.get_current_span(parent_context).get_span_context()
        tracer = self.tracer()
        state: TraceState | None
        if isinstance(tracer, SdkTracer):
            # As the SDK's start_span decides, with the provider's ids and sampler.
            ids = tracer.id_generator
            trace_id = parent.trace_id if parent.is_valid else ids.generate_trace_id()
            span_id = ids.generate_span_id()
            result = tracer.sampler.should_sample(
                parent_context,
                trace_id,
                run_span_name(req.graph_id),
                SpanKind.INTERNAL,
                {"relaygraph.run_id": run_id, "relaygraph.graph_id": req.graph_id},
            )
            sampled = result.decision is Decision.RECORD_AND_SAMPLE
            state = result.trace_state
        else:  # nothing is recorded here; the ids still link the workers' spans
            trace_id = parent.trace_id if parent.is_valid else random.getrandbits(128) or 1
            span_id = random.getrandbits(64) or 1
            sampled = parent.trace_flags.sampled if parent.is_valid else True
            state = parent.trace_state if parent.is_valid else None
        flags = _SAMPLED if sampled else _NOT_SAMPLED
        span_context = SpanContext(trace_id, span_id, False, flags, state)
        traceparent, tracestate = _headers(span_context)
        return RunTrace(
            traceparent=traceparent,
            tracestate=tracestate,
            parent_span_id=f"{parent.span_id:016x}" if parent.is_valid else None,
        )

    def finished(self, run: RunRecord) -> None:
        """Record the span of ``run``, which just ended (a no-op for an untraced run, one
        not sampled, or without the SDK). Never raises: a failure is logged."""
        try:
            self._finished(run)
        except Exception:
            log.exception("run %s: could not record its span", run.run_id)

    def _finished(self, run: RunRecord) -> None:
        if run.trace is None:
            return
        own = trace.get_current_span(_context(run.trace.traceparent, run.trace.tracestate))
        ctx = own.get_span_context()
        if not ctx.is_valid or not ctx.trace_flags.sampled:
            return
        tracer = self.tracer()
        if not isinstance(tracer, SdkTracer):
            return
        parent = Context()  # explicitly empty: the current context is not the run's parent
        if run.trace.parent_span_id is not None:
            remote = SpanContext(
                ctx.trace_id,
                int(run.trace.parent_span_id, 16),
                is_remote=True,
                trace_flags=ctx.trace_flags,
                trace_state=ctx.trace_state,
            )
            parent = trace.set_span_in_context(NonRecordingSpan(remote), parent)
        emitter = copy.copy(tracer)  # shares the provider's processors; ids of its own
        emitter.id_generator = _StoredIds(
            ctx.trace_id, ctx.span_id, tracer.id_generator.is_trace_id_random()
        )
        span = emitter.start_span(
            run_span_name(run.graph_id),
            context=parent,
            kind=SpanKind.INTERNAL,
            attributes=_run_attributes(run),
            start_time=_nanoseconds(run.created_at),
        )
        if run.status == RunStatus.FAILED:
            span.set_status(Status(StatusCode.ERROR, str(run.error) if run.error else None))
        span.end(end_time=_nanoseconds(run.finished_at or run.updated_at))

    def recorder(self, inner: Recorder) -> TracingRecorder:
        """``inner`` (the dispatcher's metrics), also recording each run's span at its end."""
        return TracingRecorder(inner, self)


def _run_attributes(run: RunRecord) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "relaygraph.run_id": run.run_id,
        "relaygraph.graph_id": run.graph_id,
        "relaygraph.graph_version": run.graph_version,
        "relaygraph.status": run.status.value,
        "relaygraph.steps": run.steps,
    }
    if run.error is not None:
        attributes["error.type"] = run.error.type
        if run.error.code is not None:
            attributes["relaygraph.error_code"] = run.error.code
    return attributes


class TracingRecorder:
    """A ``Recorder`` that passes everything on to ``inner`` and records the span of each
    run a transition finished: the dispatcher reports every applied transition to its
    recorder once (``Processor`` and ``BatchHandler``), so a run's end is seen once."""

    def __init__(self, inner: Recorder, tracing: RunTracing) -> None:
        self.inner = inner
        self.tracing = tracing

    def applied(self, graph: Graph, transition: Transition) -> None:
        self.inner.applied(graph, transition)
        run = transition.run
        if (
            run is not None
            and run.trace is not None
            and any(isinstance(a, FinishRun) for a in transition.actions)
        ):
            self.tracing.finished(run)

    def ignored(self, kind: str) -> None:
        self.inner.ignored(kind)

    def dead_lettered(self, source: str) -> None:
        self.inner.dead_lettered(source)
