"""One node job, start to finish: fence, load, render, run the handler, report.

``run_node`` knows nothing about the queue library: it gets a ``JobPayload`` and writes a
``NodeReported`` to the dispatcher's inbox stream. The worker runs a handler at least once;
the fence below and the dispatcher's own check of (visit, attempt) make a duplicate, late or
replayed job harmless.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal

import orjson
from pydantic import BaseModel
from redis.asyncio import Redis
from redis.exceptions import (
    ClusterDownError,
    NoScriptError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from graph_core.errors import RelaygraphError, TemplateError
from graph_core.events import ErrorInfo, NodeReported
from graph_core.keys import Keys, RunKeys
from graph_core.logfmt import log_context
from graph_core.messages import JobPayload, encode_inbox
from graph_core.model import Graph, Node
from graph_core.paths import MISSING, parse_path
from graph_core.redis_url import (
    is_cluster_request_error,
    is_redis_client_fault,
    is_unavailable_reply,
)
from graph_core.resp import script_pipeline
from graph_core.schemas import violation
from graph_core.settings import BaseSettings
from graph_core.state import NodeRecord, RunRecord
from graph_core.status import TERMINAL_RUN, NodeStatus
from graph_core.templates import render
from worker.context import NodeContext, NodeResult, NonRetryableError
from worker.metrics import WorkerMetrics
from worker.preload import (
    LATEST_SCRIPT,
    GraphCache,
    Plan,
    StoreLoader,
    load_snapshot,
    parse_latest_read,
    plan_reads,
    queue_latest_read,
)
from worker.registry import HandlerRegistry, HandlerSpec
from worker.settings import DEFAULT_QUEUE

if TYPE_CHECKING:  # worker.tracing imports OpenTelemetry: only with tracing on
    from worker.tracing import NodeAttempt, NodeTracing

__all__ = [
    "DEFAULT_MAX_DELIVERIES",
    "GraphNotFound",
    "JobFailure",
    "NonJSONOutput",
    "OutputTooLarge",
    "PipelineHook",
    "Preloaded",
    "UnknownNodeType",
    "WorkerError",
    "WorkerLost",
    "execute_node",
    "redis_unavailable",
    "run_node",
    "send_report",
]

logger = logging.getLogger("relaygraph.worker")

DEFAULT_MAX_DELIVERIES: Final = 5  # a job started this often without finishing is failed


def redis_unavailable(e: BaseException) -> bool:
    """An error that says Redis cannot serve now, nothing about the job: unreachable, timed
    out, restarting, failing over (a read-only replica), out of memory or busy. The job runs
    again later instead of failing its node."""
    if isinstance(e, RedisConnectionError | RedisTimeoutError | ReadOnlyError | OutOfMemoryError):
        return True
    if isinstance(e, NoScriptError):  # still, once loaded: a failover's new primary lacks it
        return True
    if isinstance(e, RedisClusterException):  # not routed: the request's fault, or none
        return not is_cluster_request_error(e)
    if isinstance(e, ClusterDownError | TryAgainError) or is_redis_client_fault(e):
        return True  # a cluster failing over: a slot without a primary, a topology reset
    return isinstance(e, ResponseError) and is_unavailable_reply(e)


_MAX_ERROR_MESSAGE: Final = 2000  # characters of an exception message kept in a report
_REPORT_TRIES: Final = 3
_RUNNABLE = frozenset({NodeStatus.QUEUED, NodeStatus.RUNNING, NodeStatus.COMPENSATING})

Status = Literal["completed", "waiting", "failed"]


# --- failures the worker detects itself ---------------------------------------------------


class JobFailure(RelaygraphError):
    """A failure found by the worker rather than raised by a handler."""

    code: ClassVar[str] = "job_failure"
    retryable: ClassVar[bool] = False


class UnknownNodeType(JobFailure):
    code = "unknown_node_type"

    def __init__(self, node_id: str, node_type: str, queue: str, known: list[str]) -> None:
        self.node_id, self.node_type, self.queue = node_id, node_type, queue
        super().__init__(
            f"no handler for node type {node_type!r} (node {node_id!r}) on the workers of "
            f"queue {queue!r}; registered types: {', '.join(known) or 'none'}"
        )


class NonJSONOutput(JobFailure):
    code = "non_json_output"

    def __init__(self, node_id: str, where: str, type_name: str) -> None:
        self.node_id, self.where, self.type_name = node_id, where, type_name
        super().__init__(
            f"node {node_id!r} returned output that is not JSON: {where} is a {type_name}"
        )


class OutputTooLarge(JobFailure):
    code = "output_too_large"

    def __init__(self, node_id: str, size: int, limit: int) -> None:
        self.node_id, self.size, self.limit = node_id, size, limit
        super().__init__(
            f"node {node_id!r} returned {size} bytes of output (as a report), over the "
            f"{limit}-byte limit (max_message_bytes); store large data elsewhere and "
            "return a reference"
        )


class GraphNotFound(JobFailure):
    code = "graph_not_found"

    def __init__(self, graph_id: str, version: int) -> None:
        self.graph_id, self.version = graph_id, version
        super().__init__(f"graph {graph_id!r} version {version} is not registered")


class WorkerError(JobFailure):
    code = "worker_error"
    retryable = True  # the node's retry policy decides

    def __init__(self, node_id: str, error: Exception) -> None:
        self.node_id, self.error = node_id, error
        super().__init__(
            f"the worker failed to prepare node {node_id!r}: {type(error).__name__}: "
            f"{_describe(error)}"
        )


class SchemaViolation(JobFailure):
    """A node's rendered config (``input``) or output does not match its JSON Schema."""

    code = "schema_violation"
    retryable = True

    def __init__(self, node_id: str, which: str, reason: str) -> None:
        self.node_id, self.which, self.reason = node_id, which, reason
        super().__init__(
            f"node {node_id!r}: the {which} does not match its {which}_schema at {reason}"
        )


class WorkerLost(JobFailure):
    code = "worker_lost"
    retryable = True  # the node's retry policy decides, with a fresh attempt

    def __init__(self, node_id: str, deliveries: int) -> None:
        self.node_id, self.deliveries = node_id, deliveries
        super().__init__(
            f"the job of node {node_id!r} was started {deliveries - 1} times without "
            "finishing (its worker crashed or was stopped each time); not running it again"
        )


# --- running ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Outcome:
    status: Status
    output: Any = None
    error: ErrorInfo | None = None
    handler_s: float | None = None  # how long the handler ran (None: it did not run)


def _describe(error: BaseException) -> str:
    try:
        return str(error) or type(error).__name__
    except Exception:  # a broken __str__ must not lose the report
        return type(error).__name__


def _failed(error: BaseException, node_id: str, *, retryable: bool | None = None) -> _Outcome:
    message = _describe(error)
    if len(message) > _MAX_ERROR_MESSAGE:
        message = message[:_MAX_ERROR_MESSAGE] + "... (truncated)"
    if retryable is None:
        retryable = not isinstance(error, NonRetryableError) and (
            getattr(error, "retryable", True) is not False
        )
    return _Outcome(
        "failed",
        error=ErrorInfo(
            type=type(error).__name__,
            message=message,
            node_id=node_id,
            code=error.code if isinstance(error, JobFailure) else None,
            retryable=retryable,
        ),
    )


async def _call(spec: HandlerSpec, ctx: NodeContext) -> Any:
    if spec.is_async:
        result = await spec.fn(ctx)
    else:
        # A plain function runs in a thread so it cannot stall the loop (and other jobs).
        result = await asyncio.to_thread(spec.fn, ctx)
    if inspect.isawaitable(result):
        result = await result
    return result


async def _run_handler(spec: HandlerSpec, ctx: NodeContext, timeout_s: float | None) -> _Outcome:
    node_id = ctx.node.id
    deadline = asyncio.timeout(timeout_s)
    try:
        async with deadline:
            result = await _call(spec, ctx)
    except TimeoutError as e:
        if not deadline.expired():
            return _failed(e, node_id)  # the handler's own TimeoutError
        # A sync handler's thread cannot be stopped: it runs on, but its result is dropped.
        return _Outcome(
            "failed",
            error=ErrorInfo(
                type="TimeoutError",
                message=f"node {node_id!r} did not finish within its timeout of {timeout_s}s",
                node_id=node_id,
                code="timeout",
                retryable=True,
            ),
        )
    except Exception as e:
        ctx.logger.warning("handler raised %s: %s", type(e).__name__, e, exc_info=True)
        return _failed(e, node_id)
    status: Literal["completed", "waiting"] = "completed"
    if isinstance(result, NodeResult):
        status, result = result.status, result.output
    try:
        return _Outcome(status, _jsonable(result, node_id))
    except NonJSONOutput as e:
        return _failed(e, node_id)


def _json_default(value: Any) -> Any:
    if isinstance(value, BaseModel):
        try:
            return value.model_dump(mode="json")
        except Exception as e:
            raise TypeError(f"{type(value).__name__} cannot be dumped as JSON: {e}") from e
    raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")


def _encode(value: Any) -> bytes:
    return orjson.dumps(value, default=_json_default, option=orjson.OPT_NON_STR_KEYS)


def _jsonable(value: Any, node_id: str) -> Any:
    """``value`` as plain JSON data (what the store will hold), or ``NonJSONOutput``."""
    try:
        return orjson.loads(_encode(value))
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        where, type_name = _find_unencodable(value, "output") or ("output", type(value).__name__)
        raise NonJSONOutput(node_id, where, type_name) from None


def _encodes(value: Any) -> bool:
    try:
        _encode(value)
    except TypeError:
        return False
    return True


def _find_unencodable(value: Any, where: str) -> tuple[str, str] | None:
    """The first place in ``value`` that JSON cannot hold (only called on failure)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not _encodes({key: None}):
                return f"{where} key {key!r}", type(key).__name__
            found = _find_unencodable(item, f"{where}.{key}")
            if found:
                return found
        return None
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            found = _find_unencodable(item, f"{where}.{i}")
            if found:
                return found
        return None
    return None if _encodes(value) else (where, type(value).__name__)


async def send_report(redis: Any, keys: Keys, data: bytes, run_id: str) -> None:
    """XADD the report to the run's inbox, retrying connection hiccups (a duplicate report
    is harmless)."""
    inbox = keys.shard_for(run_id).inbox
    for attempt in range(1, _REPORT_TRIES + 1):
        try:
            await redis.xadd(inbox, {"m": data})
            return
        except (
            RedisConnectionError,
            RedisTimeoutError,
            ClusterDownError,
            TryAgainError,
            RedisClusterException,
        ):
            if attempt == _REPORT_TRIES:
                raise
            logger.warning("reporting to %s failed (try %d), retrying", inbox, attempt)
            await asyncio.sleep(0.1 * 2**attempt)


def _fence(run: RunRecord | None, rec: NodeRecord | None, payload: JobPayload) -> str | None:
    """Why this job must not run, or None. Reads only; the dispatcher's check is the real
    guard (a report for a stale attempt is ignored there), this one just saves the work."""
    where = f"node {payload.node_id!r} visit {payload.visit} attempt {payload.attempt}"
    if run is None:
        return f"run {payload.run_id!r} not found (finished and expired, or deleted)"
    if run.status in TERMINAL_RUN:
        return f"run {payload.run_id!r} is {run.status.value}"
    if (run.graph_id, run.graph_version) != (payload.graph_id, payload.graph_version):
        return (
            f"job names graph {payload.graph_id!r} v{payload.graph_version} but the run uses "
            f"{run.graph_id!r} v{run.graph_version}"
        )
    if rec is None:
        return f"{where}: the run has no record of this node"
    if payload.item is not None:  # a map item: the map's visit runs it at this attempt
        m = rec.map
        current = m.running.get(payload.item) if m is not None else None
        if rec.visits != payload.visit or current != payload.attempt:
            return f"{where} item {payload.item} is stale (the map moved on)"
        if m is not None and payload.item in m.held:
            return f"{where} item {payload.item} is held (the run is paused)"
        return None if rec.status == NodeStatus.RUNNING else f"{where}: the map is {rec.status}"
    if (rec.visits, rec.attempt) != (payload.visit, payload.attempt):
        return f"{where} is stale: the node is at visit {rec.visits} attempt {rec.attempt}"
    if rec.status not in _RUNNABLE:
        return f"{where}: the node is {rec.status.value}, not queued"
    return None


@dataclass(frozen=True, slots=True)
class Preloaded:
    """The fence's inputs, already read (by the queue's claim script): the raw run record
    (``meta`` field ``run``) and the raw record of the job's node, or None where missing."""

    run: bytes | None
    node: bytes | None
    # the records and latest outputs (pairs, as LATEST_SCRIPT returns them) of these nodes
    latest: tuple[list[str], list[Any]] | None = None
    item_read: bool = False  # a map item's input was read (``item``; None: the field is gone)
    item: bytes | None = None


PipelineHook = Callable[[Any], None]


async def run_node(
    redis: Redis,
    keys: Keys,
    registry: HandlerRegistry,
    payload: JobPayload,
    graph_cache: GraphCache,
    settings: BaseSettings,
    *,
    worker_id: str | None = None,
    delivery: int = 1,
    max_deliveries: int = DEFAULT_MAX_DELIVERIES,
    metrics: WorkerMetrics | None = None,
    tracing: NodeTracing | None = None,
) -> NodeReported | None:
    """Run one job and report it on the inbox stream; return the report, or None when the
    job was fenced off (its run is over, or the node moved on) and nothing was reported.

    ``delivery`` counts how often the queue started this job; past ``max_deliveries`` the
    handler is not run again and the node fails with ``WorkerLost``. Redis errors propagate
    (the queue re-runs the job).
    """
    done = await execute_node(
        redis,
        keys,
        registry,
        payload,
        graph_cache,
        settings,
        worker_id=worker_id,
        delivery=delivery,
        max_deliveries=max_deliveries,
        metrics=metrics,
        tracing=tracing,
    )
    if done is None:
        return None
    report, data = done
    await send_report(redis, keys, data, report.run_id)
    return report


async def execute_node(
    redis: Redis,
    keys: Keys,
    registry: HandlerRegistry,
    payload: JobPayload,
    graph_cache: GraphCache,
    settings: BaseSettings,
    *,
    worker_id: str | None = None,
    delivery: int = 1,
    max_deliveries: int = DEFAULT_MAX_DELIVERIES,
    preloaded: Preloaded | None = None,
    before_start: PipelineHook | None = None,
    metrics: WorkerMetrics | None = None,
    tracing: NodeTracing | None = None,
) -> tuple[NodeReported, bytes] | None:
    """``run_node`` without sending: the report and its encoded inbox message, for the
    caller to write (the worker writes it with the job's clean-up, in one round trip).

    ``preloaded`` skips reading the fence's records; ``before_start`` adds commands (the
    lease) to the pipeline of reads that precedes the handler, so they cost no round trip
    of their own. It is called only for a job that passed the fence when ``preloaded`` is
    given, and for every job that reaches the reads otherwise. ``metrics`` counts the
    attempt once its report is built; ``tracing`` makes a span of it (worker/tracing.py).

    Log lines meanwhile (the handler's own included) carry the job's ids (``log_context``).
    """
    with log_context(
        run_id=payload.run_id,
        node_id=payload.node_id,
        graph_id=payload.graph_id,
        visit=payload.visit,
        attempt=payload.attempt,
    ):
        done = await _execute_node(
            redis,
            keys,
            registry,
            payload,
            graph_cache,
            settings,
            worker_id,
            delivery,
            max_deliveries,
            preloaded,
            before_start,
            None if tracing is None else tracing.attempt(payload, graph_cache),
        )
        if done is not None and metrics is not None:
            _count(metrics, graph_cache, payload, *done)
        return None if done is None else done[:2]


def _count(
    metrics: WorkerMetrics,
    graph_cache: GraphCache,
    payload: JobPayload,
    report: NodeReported,
    data: bytes,
    handler_s: float | None,
) -> None:
    graph = graph_cache.get(payload.graph_id, payload.graph_version)
    if graph is not None and graph.has_node(payload.node_id):
        node = graph.node(payload.node_id)
        node_type, queue = node.type, node.queue or DEFAULT_QUEUE
    else:  # the graph or node is missing: the report says so
        node_type, queue = "", ""
    metrics.attempt(node_type, queue, report.status, handler_s)


async def _execute_node(
    redis: Redis,
    keys: Keys,
    registry: HandlerRegistry,
    payload: JobPayload,
    graph_cache: GraphCache,
    settings: BaseSettings,
    worker_id: str | None,
    delivery: int,
    max_deliveries: int,
    preloaded: Preloaded | None,
    before_start: PipelineHook | None,
    span: NodeAttempt | None,
) -> tuple[NodeReported, bytes, float | None] | None:
    """``execute_node``, with the time the handler ran (None: it did not run); ``span``
    (tracing on) is ended with the report, or abandoned if there is none."""
    started = time.monotonic()
    try:
        rk = keys.run(payload.run_id)
    except RelaygraphError as e:
        logger.error("dropping job for %r: %s", payload.run_id, e)
        return None
    try:
        loaded = await _load(
            redis, keys, rk, registry, payload, graph_cache, preloaded, before_start
        )
        if loaded is None:
            return None
        outcome = await _execute(loaded, registry, graph_cache, delivery, max_deliveries, span)
    except asyncio.CancelledError as e:  # an aborted node, the worker stopping
        if span is not None:
            span.abandon(e)
        raise
    except Exception as e:
        if redis_unavailable(e):
            if span is not None:
                span.abandon(e)
            raise  # the queue runs the job again
        # A bug or corrupt stored data: report it, so the run does not wait forever.
        logger.exception("preparing node %r of run %s failed", payload.node_id, payload.run_id)
        outcome = _failed(WorkerError(payload.node_id, e), payload.node_id)
    if outcome is None:
        return None
    report, data = _report(payload, outcome, worker_id, settings.max_message_bytes)
    if span is not None:
        span.end(report)
    logger.log(
        logging.INFO if report.status == "failed" else logging.DEBUG,
        "node %r visit %d attempt %d of run %s: %s in %.3fs%s",
        payload.node_id,
        payload.visit,
        payload.attempt,
        payload.run_id,
        report.status,
        time.monotonic() - started,
        f" ({report.error})" if report.error else "",
    )
    return report, data, outcome.handler_s


@dataclass(frozen=True, slots=True)
class _Loaded:
    """A job that passed the fence, with what was read for it."""

    redis: Any
    rk: RunKeys
    payload: JobPayload
    run: RunRecord
    records: dict[str, NodeRecord]
    outputs: dict[tuple[str, int], Any]  # latest outputs read with the records
    graph: Graph | None  # from the cache
    raw_graph: bytes | None  # read on a cold cache
    plan: Plan  # of the cached graph (empty on a cold cache)
    raw_item: bytes | None = None  # a map item's input, as stored

    def job(self, graph: Graph, node: Node) -> _Job:
        """This job running ``node`` (the graph's, or one made for it: a compensation, a
        map's inner node)."""
        return _Job(
            self.redis, self.rk, self.payload, graph, node, self.run, self.records, self.outputs
        )


async def _execute_pipeline(redis: Any, build: Callable[[], Any]) -> list[Any]:
    """Run the pipeline ``build`` makes; if the server lost the read script (a restart,
    SCRIPT FLUSH), load it and run the pipeline once more (every command is a read or an
    idempotent write)."""
    pipe = build()
    if not len(pipe):
        return []
    replies = list(await pipe.execute(raise_on_error=False))
    if any(isinstance(r, NoScriptError) for r in replies):
        await redis.script_load(LATEST_SCRIPT)
        replies = list(await build().execute(raise_on_error=False))
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


def _fenced(run: RunRecord | None, records: dict[str, NodeRecord], payload: JobPayload) -> bool:
    why = _fence(run, records.get(payload.node_id), payload)
    if why is not None:
        logger.info("skipping job: %s", why)
    return why is not None


def _use_preloaded(
    preloaded: Preloaded,
    payload: JobPayload,
    plan: Plan,
    records: dict[str, NodeRecord],
    outputs: dict[tuple[str, int], Any],
) -> RunRecord | None:
    """The run record if the job passes the fence on what its claim read (None: fenced
    off); fills ``records`` and ``outputs`` with what the claim read for ``plan``."""
    run = RunRecord.model_validate_json(preloaded.run) if preloaded.run is not None else None
    if preloaded.node is not None:
        records[payload.node_id] = NodeRecord.model_validate_json(preloaded.node)
    if _fenced(run, records, payload) or run is None:
        return None
    if preloaded.latest is not None and preloaded.latest[0] == plan.nodes:
        parse_latest_read(plan.nodes, preloaded.latest[1], records, outputs)
    return run


def job_plan(
    graph: Graph | None,
    node_id: str,
    item: bool,
    registry: HandlerRegistry,
    graph_cache: GraphCache,
) -> Plan:
    """What a job's handler will read (empty on a cold cache): a node's, or for a map's
    ``item``, its inner node's reads without the map's predecessors (the list it is one
    item of). The claim's plan and the job's own reads both come from here."""
    if graph is None or not graph.has_node(node_id):
        return Plan()
    node = graph.node(node_id)
    spec = registry.spec((node.job_type or node.type) if item else node.type)
    return graph_cache.plan(graph, node, spec, item=item)


def _item_to_read(payload: JobPayload, preloaded: Preloaded | None) -> str | None:
    """A map item's field of its input in the outputs hash, unless its claim read it."""
    if payload.item is None or (preloaded is not None and preloaded.item_read):
        return None
    return RunKeys.item_field(payload.node_id, payload.visit, payload.item, "in")


async def _load(
    redis: Any,
    keys: Keys,
    rk: RunKeys,
    registry: HandlerRegistry,
    payload: JobPayload,
    graph_cache: GraphCache,
    preloaded: Preloaded | None,
    before_start: PipelineHook | None,
) -> _Loaded | None:
    """Read what the job needs in one round trip: the fence's records (unless preloaded),
    the preload's node records, the graph on a cold cache, and the caller's commands.
    None: the job is fenced off. Reads only: nothing here needs to be atomic."""
    graph = graph_cache.get(payload.graph_id, payload.graph_version)
    plan = job_plan(graph, payload.node_id, payload.item is not None, registry, graph_cache)
    records: dict[str, NodeRecord] = {}
    outputs: dict[tuple[str, int], Any] = {}
    run: RunRecord | None = None
    read_latest = bool(plan.nodes)
    item_field = _item_to_read(payload, preloaded)
    if preloaded is not None:
        run = _use_preloaded(preloaded, payload, plan, records, outputs)
        if run is None:
            return None
        read_latest = read_latest and not (preloaded.latest and preloaded.latest[0] == plan.nodes)

    def build() -> Any:
        pipe = script_pipeline(redis) if read_latest else redis.pipeline(transaction=False)
        if preloaded is None:
            pipe.hget(rk.meta, "run")
            pipe.hget(rk.nodes, payload.node_id)
        if read_latest:
            queue_latest_read(pipe, rk, plan.nodes)
        if graph is None:
            pipe.hget(keys.graphs, keys.graph_field(payload.graph_id, payload.graph_version))
        if item_field is not None:
            pipe.hget(rk.outputs, item_field)
        if before_start is not None:
            before_start(pipe)
        return pipe

    replies = await _execute_pipeline(redis, build)
    if preloaded is None:
        raw_run, raw_node = replies.pop(0), replies.pop(0)
        run = RunRecord.model_validate_json(raw_run) if raw_run is not None else None
        if raw_node is not None:
            records[payload.node_id] = NodeRecord.model_validate_json(raw_node)
    if read_latest:
        parse_latest_read(plan.nodes, replies.pop(0), records, outputs)
    raw_graph = replies.pop(0) if graph is None else None
    raw_item = preloaded.item if preloaded is not None else None  # the claim's read
    if item_field is not None:
        raw_item = replies.pop(0)
    if run is None or (preloaded is None and _fenced(run, records, payload)):
        return None
    return _Loaded(redis, rk, payload, run, records, outputs, graph, raw_graph, plan, raw_item)


async def _execute(
    loaded: _Loaded,
    registry: HandlerRegistry,
    graph_cache: GraphCache,
    delivery: int,
    max_deliveries: int,
    span: NodeAttempt | None,
) -> _Outcome | None:
    """Run the handler of a loaded job; None: the job is dropped (no such node)."""
    payload, graph = loaded.payload, loaded.graph
    if graph is None and loaded.raw_graph is not None:
        graph = graph_cache.put(Graph.from_json(loaded.raw_graph, validate=False))
    if graph is None:
        return _failed(GraphNotFound(payload.graph_id, payload.graph_version), payload.node_id)
    if not graph.has_node(payload.node_id):
        logger.error(
            "dropping job: graph %r v%d has no node %r", graph.id, graph.version, payload.node_id
        )
        return None
    node = graph.node(payload.node_id)
    if payload.compensate:
        return await _compensate(loaded, graph, node, registry, delivery, max_deliveries, span)
    if payload.item is not None:
        return await _map_item(loaded, graph, node, registry, delivery, max_deliveries, span)
    spec = registry.spec(node.type)
    plan = loaded.plan if loaded.graph is not None else graph_cache.plan(graph, node, spec)
    job = loaded.job(graph, node)
    return await _prepare_and_run(job, registry, spec, plan, delivery, max_deliveries, span)


async def _compensate(
    loaded: _Loaded,
    graph: Graph,
    node: Node,
    registry: HandlerRegistry,
    delivery: int,
    max_deliveries: int,
    span: NodeAttempt | None,
) -> _Outcome:
    """A saga's compensation of ``node``: its ``compensate`` handler, with the node's
    latest output as ``ctx.original_output`` (graph_core.sagas)."""
    comp = node.compensate
    if comp is None:
        missing = LookupError(f"graph {graph.id!r} v{graph.version} gives it no compensate")
        return _failed(WorkerError(node.id, missing), node.id, retryable=False)
    undo = node.model_copy(
        update={
            "type": comp.type,
            "config": comp.config,
            "queue": comp.queue or node.queue,
            "retry": comp.retry,
            "timeout_s": comp.timeout_s,
            "compensate": None,
        }
    )
    spec = registry.spec(comp.type)
    job = loaded.job(graph, undo)
    loader = StoreLoader(loaded.redis, loaded.rk, graph, loaded.run.input)
    original = await loader.load(parse_path(f"{node.id}.output"))
    plan = plan_reads(graph, undo, spec)
    return await _prepare_and_run(
        job, registry, spec, plan, delivery, max_deliveries, span,
        original=None if original is MISSING else original,
    )  # fmt: skip


async def _map_item(
    loaded: _Loaded,
    graph: Graph,
    node: Node,
    registry: HandlerRegistry,
    delivery: int,
    max_deliveries: int,
    span: NodeAttempt | None,
) -> _Outcome:
    """One item of a ``map`` node: the map's inner node (``config.node``) on the item, read
    from the run's outputs hash (``ctx.item``, ``ctx.index``), under the map node's id."""
    payload = loaded.payload
    item = payload.item if payload.item is not None else 0
    one = node.item_node()
    if one is node:  # no inner node: the graph's validation refuses that; stay safe anyway
        missing = LookupError(f"map node {node.id!r} names no inner node type")
        return _failed(WorkerError(node.id, missing), node.id, retryable=False)
    if loaded.raw_item is None:  # the map ended meanwhile (its item fields are deleted then)
        gone = LookupError(f"item {item} of map {node.id!r} visit {payload.visit} is gone")
        return _failed(WorkerError(node.id, gone), node.id, retryable=False)
    spec = registry.spec(one.type)
    job = loaded.job(graph, one)
    plan = (
        loaded.plan
        if loaded.graph is not None
        else plan_reads(graph, one, spec, predecessors=False)
    )
    return await _prepare_and_run(
        job, registry, spec, plan, delivery, max_deliveries, span,
        item=(orjson.loads(loaded.raw_item), item),
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class _Job:
    """What one job has loaded so far."""

    redis: Any  # redis.asyncio.Redis; redis-py 5 annotates results as ``Awaitable[T] | T``
    rk: RunKeys
    payload: JobPayload
    graph: Graph
    node: Node
    run: RunRecord
    records: dict[str, NodeRecord]
    outputs: dict[tuple[str, int], Any]


async def _prepare_and_run(
    job: _Job,
    registry: HandlerRegistry,
    spec: HandlerSpec | None,
    plan: Plan,
    delivery: int,
    max_deliveries: int,
    span: NodeAttempt | None,
    original: Any = None,
    item: tuple[Any, int] | None = None,
) -> _Outcome:
    """``original``: for a compensation, the output of the node it undoes; ``item``: for a
    map item, the item and its index."""
    node, payload = job.node, job.payload
    if spec is None:
        queue = node.queue or DEFAULT_QUEUE
        return _failed(UnknownNodeType(node.id, node.type, queue, registry.types()), node.id)
    if delivery > max_deliveries:
        return _failed(WorkerLost(node.id, delivery), node.id)
    snapshot = await load_snapshot(
        job.redis, job.rk, job.graph, node.id, job.run.input, plan, job.records, job.outputs
    )
    try:
        config = render(node.config, snapshot)
    except TemplateError as e:
        error = TemplateError(e.path, f"{e.reason} (node {node.id!r})", e.template)
        return _failed(error, node.id, retryable=False)
    ctx = NodeContext(
        run_id=payload.run_id,
        node=node.model_copy(update={"config": config}),
        input=job.run.input,
        visit=payload.visit,
        attempt=payload.attempt,
        idempotency_key=payload.idempotency_key,
        source=snapshot,
        loader=StoreLoader(job.redis, job.rk, job.graph, job.run.input),
        graph_id=job.graph.id,
        graph_version=job.graph.version,
        compensating=bool(payload.compensate),
        original_output=original,
        item=item[0] if item is not None else None,
        index=item[1] if item is not None else None,
    )
    if node.input_schema is not None:
        wrong = violation(node.input_schema, config)
        if wrong is not None:  # the same config fails the same way: no retry
            return _failed(SchemaViolation(node.id, "input", wrong), node.id, retryable=False)
    started = time.perf_counter()
    if span is None:
        outcome = await _run_handler(spec, ctx, payload.timeout_s)
    else:  # the handler's own spans nest under the attempt's
        outcome = await span.around(node, _run_handler(spec, ctx, payload.timeout_s))
    took = time.perf_counter() - started
    if outcome.status == "completed" and node.output_schema is not None:
        wrong = violation(node.output_schema, outcome.output)
        if wrong is not None:  # retried per the node's policy: a handler may do better
            outcome = _failed(SchemaViolation(node.id, "output", wrong), node.id)
    return dataclasses.replace(outcome, handler_s=took)


def _report(
    payload: JobPayload, outcome: _Outcome, worker_id: str | None, max_bytes: int
) -> tuple[NodeReported, bytes]:
    report = NodeReported(
        run_id=payload.run_id,
        node_id=payload.node_id,
        visit=payload.visit,
        attempt=payload.attempt,
        status=outcome.status,
        output=outcome.output,
        error=outcome.error,
        worker=worker_id,
        item=payload.item,
    )
    data = encode_inbox(report)
    if len(data) <= max_bytes:
        return report, data
    failed = _failed(OutputTooLarge(payload.node_id, len(data), max_bytes), payload.node_id)
    report = report.model_copy(update={"status": "failed", "output": None, "error": failed.error})
    return report, encode_inbox(report)
