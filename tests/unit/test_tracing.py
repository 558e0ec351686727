"""Tracing without a server: off, nothing imports OpenTelemetry and jobs carry no trace
context; on without the packages, a settings error; the dispatcher's run spans (their ids
at submission, their record at the end) against an SDK provider of the test's own."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import NoOpTracerProvider, StatusCode

from dispatcher.tracing import RunTracing
from graph_core.errors import MessageError
from graph_core.events import ErrorInfo, RunTrace
from graph_core.messages import (
    MAX_TRACEPARENT,
    JobPayload,
    SubmitRequest,
    decode_arq_job,
    encode_arq_job,
    parse_inbox,
)
from graph_core.settings import BaseSettings, SettingsError, load_settings
from graph_core.state import RunRecord
from graph_core.status import RunStatus

TRACE_HEX = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_HEX = "00f067aa0ba902b7"


def _python(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


# --- off: nothing imported, nothing carried -------------------------------------------------


def test_with_tracing_off_nothing_imports_opentelemetry() -> None:
    code = """
import asyncio, sys
from redis.asyncio import Redis
from dispatcher import WorkflowClient
from dispatcher.processor import run_tracing
from dispatcher.service import Dispatcher
from dispatcher.settings import DispatcherSettings
from worker.app import node_tracing
from worker.runner import execute_node
from worker.settings import WorkerSettings
import relaygraph, relaygraph.cli

d = Dispatcher(Redis(), DispatcherSettings(redis_url="redis://localhost:1"))
assert d.processor.tracing is None and run_tracing(d.settings) is None
assert node_tracing(WorkerSettings(redis_url="redis://localhost:1")) is None
print(",".join(sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry")))
"""
    assert _python(code) == ""


def test_a_job_of_an_untraced_run_carries_no_trace_context() -> None:
    payload = JobPayload(run_id="r", graph_id="g", graph_version=1, node_id="n", visit=1, attempt=1)
    (args,) = decode_arq_job(encode_arq_job(payload, 0))["a"]
    assert "traceparent" not in args and "tracestate" not in args


def test_tracing_on_without_opentelemetry_is_a_settings_error() -> None:
    code = """
import sys
sys.modules["opentelemetry"] = None  # as if the otel extra were not installed
from dispatcher.processor import run_tracing
from dispatcher.settings import DispatcherSettings
from graph_core.settings import SettingsError
from worker.app import WorkerConfigError, node_tracing
from worker.settings import WorkerSettings

for make, settings, error in (
    (run_tracing, DispatcherSettings(tracing="otel"), SettingsError),
    (node_tracing, WorkerSettings(tracing="otel"), WorkerConfigError),
):
    try:
        make(settings)
    except error as e:
        assert "relaygraph[otel]" in str(e), e
    else:
        raise AssertionError(f"{make.__name__} did not refuse")
print("ok")
"""
    assert _python(code) == "ok"


def test_the_tracing_setting() -> None:
    assert load_settings(BaseSettings, env={}).tracing == "off"
    assert load_settings(BaseSettings, env={"RELAYGRAPH_TRACING": "otel"}).tracing == "otel"
    with pytest.raises(SettingsError, match="tracing"):
        load_settings(BaseSettings, env={"RELAYGRAPH_TRACING": "jaeger"})


def test_submit_messages_carry_an_optional_trace_context() -> None:
    req = parse_inbox(
        '{"kind":"submit","graph_id":"g",'
        f'"traceparent":"00-{TRACE_HEX}-{PARENT_HEX}-01","tracestate":"a=1"}}'
    )
    assert isinstance(req, SubmitRequest)
    assert (req.traceparent, req.tracestate) == (f"00-{TRACE_HEX}-{PARENT_HEX}-01", "a=1")
    with pytest.raises(MessageError, match="traceparent"):
        parse_inbox(
            '{"kind":"submit","graph_id":"g","traceparent":"' + "0" * (MAX_TRACEPARENT + 1) + '"}'
        )


# --- the dispatcher's run spans --------------------------------------------------------------


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    yield InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def _parts(traceparent: str) -> tuple[str, str, str, str]:
    version, trace_id, span_id, flags = traceparent.split("-")
    return version, trace_id, span_id, flags


def _record(trace: RunTrace, status: RunStatus = RunStatus.COMPLETED) -> RunRecord:
    return RunRecord(
        run_id="r1",
        graph_id="g",
        graph_version=2,
        status=status,
        created_at=1000.5,
        updated_at=1002.25,
        finished_at=1002.25,
        steps=3,
        error=ErrorInfo(type="Boom", message="it broke", node_id="n")
        if status == RunStatus.FAILED
        else None,
        trace=trace,
    )


def test_a_run_without_a_submitted_context_is_a_root(provider: TracerProvider) -> None:
    trace = RunTracing(provider).run_trace(SubmitRequest(graph_id="g"), "r1")
    assert trace is not None and trace.parent_span_id is None and trace.tracestate is None
    version, trace_id, span_id, flags = _parts(trace.traceparent)
    assert (version, flags) == ("00", "01")
    assert len(trace_id) == 32 and len(span_id) == 16 and int(trace_id, 16) and int(span_id, 16)


def test_a_submitted_context_is_the_runs_parent(provider: TracerProvider) -> None:
    req = SubmitRequest(
        graph_id="g", traceparent=f"00-{TRACE_HEX}-{PARENT_HEX}-01", tracestate="vendor=x"
    )
    trace = RunTracing(provider).run_trace(req, "r1")
    assert trace is not None
    _, trace_id, span_id, flags = _parts(trace.traceparent)
    assert (trace_id, flags, trace.parent_span_id) == (TRACE_HEX, "01", PARENT_HEX)
    assert span_id != PARENT_HEX
    assert trace.tracestate == "vendor=x"


def test_an_unparseable_context_is_ignored(provider: TracerProvider) -> None:
    req = SubmitRequest(graph_id="g", traceparent="00-nope-nope-01", tracestate="vendor=x")
    trace = RunTracing(provider).run_trace(req, "r1")
    assert trace is not None and trace.parent_span_id is None
    assert _parts(trace.traceparent)[1] != TRACE_HEX


def test_the_run_span_is_recorded_at_the_end_under_the_stored_ids(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    tracing = RunTracing(provider)
    req = SubmitRequest(graph_id="g", traceparent=f"00-{TRACE_HEX}-{PARENT_HEX}-01")
    trace = tracing.run_trace(req, "r1")
    assert trace is not None
    tracing.finished(_record(trace, RunStatus.FAILED))

    (span,) = exporter.get_finished_spans()
    ctx = span.get_span_context()
    assert ctx is not None
    _, trace_hex, span_hex, _ = _parts(trace.traceparent)
    assert (ctx.trace_id, ctx.span_id) == (int(trace_hex, 16), int(span_hex, 16))
    assert span.parent is not None and span.parent.span_id == int(PARENT_HEX, 16)
    assert span.name == "relaygraph.run g"
    assert (span.start_time, span.end_time) == (1_000_500_000_000, 1_002_250_000_000)
    assert span.status.status_code == StatusCode.ERROR
    assert span.status.description == "Boom at node 'n': it broke"
    assert dict(span.attributes or {}) == {
        "relaygraph.run_id": "r1",
        "relaygraph.graph_id": "g",
        "relaygraph.graph_version": 2,
        "relaygraph.status": "failed",
        "relaygraph.steps": 3,
        "error.type": "Boom",
    }


def test_an_unsampled_run_is_not_recorded(exporter: InMemorySpanExporter) -> None:
    provider = TracerProvider(sampler=ALWAYS_OFF)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = RunTracing(provider)
    trace = tracing.run_trace(SubmitRequest(graph_id="g"), "r1")
    assert trace is not None and _parts(trace.traceparent)[3] == "00"
    tracing.finished(_record(trace))
    assert exporter.get_finished_spans() == ()


def test_an_unsampled_submitter_makes_an_unsampled_run(provider: TracerProvider) -> None:
    req = SubmitRequest(graph_id="g", traceparent=f"00-{TRACE_HEX}-{PARENT_HEX}-00")
    trace = RunTracing(provider).run_trace(req, "r1")
    assert trace is not None and _parts(trace.traceparent)[3] == "00"  # the default sampler


def test_without_the_sdk_ids_are_made_and_nothing_is_recorded() -> None:
    tracing = RunTracing(NoOpTracerProvider())
    req = SubmitRequest(graph_id="g", traceparent=f"00-{TRACE_HEX}-{PARENT_HEX}-01")
    trace = tracing.run_trace(req, "r1")
    assert trace is not None and trace.parent_span_id == PARENT_HEX
    assert _parts(trace.traceparent)[1] == TRACE_HEX
    tracing.finished(_record(trace))  # nothing to record it with: no error either
