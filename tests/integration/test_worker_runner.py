"""The worker's job lifecycle against a real server: fence, preload, render, run, report.

Store state is written straight into the store layout (``tests.support.store_setup``), then
``run_node`` runs one job and the test reads the ``NodeReported`` from the inbox stream.
The last tests run real arq workers picking up a job enqueued the way the dispatcher does.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import itertools
import signal
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import BaseModel
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, OutOfMemoryError, ReadOnlyError, ResponseError

from graph_core.events import LeaseExpired, NodeReported
from graph_core.keys import RunKeys
from graph_core.messages import JobPayload, encode_arq_job, parse_inbox, wake_token
from graph_core.model import Edge, Graph, Node
from graph_core.resp import script_pipeline
from graph_core.state import MapState, NodeRecord
from graph_core.status import NodeStatus, RunStatus
from tests.support.cluster_fault import client_fault
from tests.support.layout import CLUSTER, SHARDS, keys_for, sync_client_for
from tests.support.store_setup import (
    completed,
    inbox_reports,
    job_for,
    queued,
    setup_run,
    wait_for_reports,
)
from tests.support.waiting import wait_for
from worker import app as worker_app
from worker import waking
from worker.app import build_workers, serve
from worker.context import NodeContext, NodeResult, NonRetryableError, NotPreloaded
from worker.heartbeat import Heartbeat
from worker.preload import GraphCache
from worker.registry import HandlerRegistry
from worker.runner import execute_node, redis_unavailable, run_node
from worker.settings import WorkerSettings
from worker.waking import ClaimPlan, WakingWorker

pytestmark = pytest.mark.integration

KEYS = keys_for()
# run1's shard (the run most tests set up): its queues, wake lists, leases and abort set
# (arq's ``arq:abort`` on one server); on one server, the fleet's only ones
SHARD1 = KEYS.shard_for("run1")
# arq's health check, named after the queue name a worker gives arq: shard 0's queue
HEALTH_CHECK = KEYS.shard(0).queue("default") + ":health-check"
ARQ_JOB_KEY_PREFIX = "arq:job:"  # arq's fixed key names, as the dispatcher writes them
ARQ_IN_PROGRESS_PREFIX = "arq:in-progress:"


def triage_graph(notify_type: str = "notify", **notify: Any) -> Graph:
    """start -> triage -> notify -> end, plus an unrelated ``audit`` node."""
    return Graph(
        id="triage",
        nodes=[
            Node("start", type="start"),
            Node("triage", type="agent"),
            Node("notify", type=notify_type, **notify),
            Node("audit", type="agent"),
            Node("end", type="end"),
        ],
        edges=[
            Edge("start", "triage"),
            Edge("triage", "notify"),
            Edge("notify", "end"),
            Edge("start", "audit"),
        ],
    )


TRIAGE_OUT = {"severity": "critical", "summary": "prod down", "tags": ["a", "b"]}
INPUT = {"title": "Checkout 500", "n": 3}


async def prepared(redis: Any, graph: Graph, node_id: str = "notify", **kw: Any) -> None:
    """A run where ``triage`` completed and ``node_id`` is queued at visit 1 attempt 1."""
    nodes = {"triage": completed(), node_id: queued()}
    nodes.update(kw.pop("nodes", {}))
    outputs = {("triage", 1): TRIAGE_OUT}
    outputs.update(kw.pop("outputs", {}))
    await setup_run(redis, KEYS, graph, input=INPUT, nodes=nodes, outputs=outputs, **kw)


async def run(
    redis: Any,
    registry: HandlerRegistry,
    graph: Graph,
    node_id: str = "notify",
    *,
    settings: WorkerSettings | None = None,
    warm: bool = False,
    **job: Any,
) -> NodeReported | None:
    """Run one job; ``warm``: with the graph cached, as a worker has it after its first job
    of the graph (the reads before the handler then go through the latest-read script)."""
    cache = GraphCache()
    if warm:
        cache.put(graph)
    return await run_node(
        redis,
        KEYS,
        registry,
        job_for(graph, node_id, **job),
        cache,
        settings or WorkerSettings(shards=SHARDS),
        worker_id="w-test",
    )


async def only_report(redis: Any) -> NodeReported:
    reports = await inbox_reports(redis, KEYS)
    assert len(reports) == 1, reports
    return reports[0]


# --- completed runs and rendering -------------------------------------------------------------


async def test_completed_output_is_reported(redis: Any) -> None:
    graph = triage_graph()
    await prepared(redis, graph)
    registry = HandlerRegistry()

    @registry.handler("notify")
    async def notify(ctx: NodeContext) -> dict[str, Any]:
        return {
            "sent": True,
            "visit": ctx.visit,
            "attempt": ctx.attempt,
            "key": ctx.idempotency_key,
        }

    returned = await run(redis, registry, graph)
    report = await only_report(redis)
    assert returned == report
    assert report.status == "completed"
    assert report.output == {"sent": True, "visit": 1, "attempt": 1, "key": "run1:notify:1"}
    assert (report.run_id, report.node_id, report.visit, report.attempt) == ("run1", "notify", 1, 1)
    assert report.worker == "w-test"
    assert report.error is None


@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
async def test_config_templates_are_rendered_from_predecessor_outputs(
    redis: Any, warm: bool
) -> None:
    graph = triage_graph(
        config={
            "text": "[{{triage.output.severity}}] {{input.title}}",
            "raw": "{{triage.output}}",
            "tags": ["{{triage.output.tags.0}}", "{{input.n}}"],
            "missing": '{{triage.output.nope | default("n/a")}}',
        }
    )
    await prepared(redis, graph)
    registry = HandlerRegistry()
    registry.register("notify", lambda ctx: ctx.config)  # a sync handler

    await run(redis, registry, graph, warm=warm)
    report = await only_report(redis)
    assert report.status == "completed"
    assert report.output == {
        "text": "[critical] Checkout 500",
        "raw": TRIAGE_OUT,
        "tags": ["a", 3],
        "missing": "n/a",
    }


@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
async def test_ctx_get_reads_predecessor_outputs_and_input(redis: Any, warm: bool) -> None:
    graph = triage_graph()
    await prepared(redis, graph, nodes={"audit": completed()}, outputs={("audit", 1): {"ok": 1}})
    registry = HandlerRegistry()
    seen: dict[str, Any] = {}

    @registry.handler("notify")
    async def notify(ctx: NodeContext) -> dict[str, Any]:
        seen["severity"] = ctx.get("triage.output.severity")
        seen["title"] = ctx.get("input.title")
        seen["default"] = ctx.get("triage.output.nope", "dflt")
        seen["visits"] = ctx.get("triage.visits")
        seen["input"] = ctx.input
        with pytest.raises(NotPreloaded, match="'audit'"):
            ctx.get("audit.output.ok")  # not a predecessor, not in config 'reads'
        seen["loaded"] = await ctx.load("audit.output.ok")
        seen["loaded_missing"] = await ctx.load("audit.output.nope", "none")
        return {}

    await run(redis, registry, graph, warm=warm)
    assert (await only_report(redis)).status == "completed"
    assert seen == {
        "severity": "critical",
        "title": "Checkout 500",
        "default": "dflt",
        "visits": 1,
        "input": INPUT,
        "loaded": 1,
        "loaded_missing": "none",
    }


@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
async def test_config_reads_preloads_other_nodes(redis: Any, warm: bool) -> None:
    graph = triage_graph(config={"reads": ["audit"]})
    await prepared(redis, graph, nodes={"audit": completed(2)}, outputs={("audit", 2): {"ok": 2}})
    registry = HandlerRegistry()
    registry.register("notify", lambda ctx: ctx.get("audit.output.ok"))

    await run(redis, registry, graph, warm=warm)
    assert (await only_report(redis)).output == 2


@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
async def test_parallel_child_sees_its_parents_predecessors(redis: Any, warm: bool) -> None:
    graph = Graph(
        id="fan",
        nodes=[
            Node("start", type="start"),
            Node("prep", type="agent"),
            Node("par", type="parallel"),
            Node("child", type="work", parent="par"),
            Node("end", type="end"),
        ],
        edges=[Edge("start", "prep"), Edge("prep", "par"), Edge("par", "end")],
    )
    await setup_run(
        redis,
        KEYS,
        graph,
        nodes={"prep": completed(), "child": queued()},
        outputs={("prep", 1): {"items": [1, 2]}},
    )
    registry = HandlerRegistry()
    registry.register("work", lambda ctx: ctx.get("prep.output.items"))

    report = await run(redis, registry, graph, "child", warm=warm)
    assert report is not None and report.status == "completed", report
    assert report.output == [1, 2]


@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
async def test_builtin_condition_preloads_the_paths_it_reads(redis: Any, warm: bool) -> None:
    condition = {"type": "field", "path": "audit.output.ok", "op": "eq", "value": 1}
    graph = triage_graph("condition", config={"condition": condition})
    await prepared(redis, graph, nodes={"audit": completed()}, outputs={("audit", 1): {"ok": 1}})

    await run(redis, HandlerRegistry(), graph, warm=warm)
    assert (await only_report(redis)).output == {"result": True}


@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
async def test_an_earlier_visit_is_read_when_named(redis: Any, warm: bool) -> None:
    """``outputs.<node>.<n>`` names a visit that is not the latest: read on its own."""
    graph = triage_graph(config={"first": "{{triage.outputs.1.n}}", "last": "{{triage.output.n}}"})
    await prepared(
        redis,
        graph,
        nodes={"triage": completed(2)},
        outputs={("triage", 1): {"n": "one"}, ("triage", 2): {"n": "two"}},
    )
    registry = HandlerRegistry()
    registry.register("notify", lambda ctx: ctx.config)

    await run(redis, registry, graph, warm=warm)
    assert (await only_report(redis)).output == {"first": "one", "last": "two"}


async def test_reads_survive_the_server_forgetting_its_scripts(redis: Any) -> None:
    """After a restart or SCRIPT FLUSH the latest-read script is loaded again."""
    graph = triage_graph(config={"text": "{{triage.output.severity}}"})
    await prepared(redis, graph)
    registry = HandlerRegistry()
    registry.register("notify", lambda ctx: ctx.config)
    await redis.script_flush()

    await run(redis, registry, graph, warm=True)
    assert (await only_report(redis)).output == {"text": "critical"}


async def test_waiting_result_is_reported_with_its_prompt(redis: Any) -> None:
    graph = triage_graph()
    await prepared(redis, graph)
    registry = HandlerRegistry()
    registry.register("notify", lambda ctx: NodeResult({"question": "ship it?"}, status="waiting"))

    await run(redis, registry, graph)
    report = await only_report(redis)
    assert (report.status, report.output) == ("waiting", {"question": "ship it?"})


# --- failures ---------------------------------------------------------------------------------


async def test_unknown_node_type_fails_without_retry(redis: Any) -> None:
    graph = triage_graph(queue="gpu")
    await prepared(redis, graph)

    await run(redis, HandlerRegistry(), graph)
    report = await only_report(redis)
    assert report.status == "failed" and report.error is not None
    assert report.error.type == "UnknownNodeType"
    assert report.error.retryable is False
    assert report.error.node_id == "notify"
    assert "'notify'" in report.error.message and "'gpu'" in report.error.message


async def test_handler_exception_is_reported_with_type_and_message(redis: Any) -> None:
    graph = triage_graph()
    await prepared(redis, graph)
    registry = HandlerRegistry()

    @registry.handler("notify")
    async def notify(ctx: NodeContext) -> None:
        raise ConnectionRefusedError("smtp is down")

    await run(redis, registry, graph)
    report = await only_report(redis)
    assert report.status == "failed" and report.error is not None
    assert (report.error.type, report.error.message) == ("ConnectionRefusedError", "smtp is down")
    assert report.error.retryable is True
    assert report.output is None


class QuotaExceeded(Exception):
    retryable = False


@pytest.mark.parametrize(
    ("error", "type_name"),
    [(NonRetryableError("bad input"), "NonRetryableError"), (QuotaExceeded("no"), "QuotaExceeded")],
)
async def test_non_retryable_errors(redis: Any, error: Exception, type_name: str) -> None:
    graph = triage_graph()
    await prepared(redis, graph)
    registry = HandlerRegistry()

    def notify(ctx: NodeContext) -> None:
        raise error

    registry.register("notify", notify)
    await run(redis, registry, graph)
    report = await only_report(redis)
    assert report.error is not None
    assert (report.error.type, report.error.retryable) == (type_name, False)


async def test_template_error_fails_without_retry_naming_node_and_path(redis: Any) -> None:
    graph = triage_graph(config={"text": "{{triage.output.missing}}"})
    await prepared(redis, graph)
    registry = HandlerRegistry()
    called = False

    def notify(ctx: NodeContext) -> None:
        nonlocal called
        called = True

    registry.register("notify", notify)
    await run(redis, registry, graph)
    report = await only_report(redis)
    assert report.error is not None and not called
    assert (report.error.type, report.error.retryable) == ("TemplateError", False)
    assert "triage.output.missing" in report.error.message
    assert "'notify'" in report.error.message


async def test_async_handler_timeout_is_enforced(redis: Any) -> None:
    graph = triage_graph()
    await prepared(redis, graph)
    registry = HandlerRegistry()
    never = asyncio.Event()

    @registry.handler("notify")
    async def notify(ctx: NodeContext) -> None:
        await never.wait()

    started = time.monotonic()
    await run(redis, registry, graph, timeout_s=0.2)
    elapsed = time.monotonic() - started
    report = await only_report(redis)
    assert report.error is not None
    assert (report.error.type, report.error.code, report.error.retryable) == (
        "TimeoutError",
        "timeout",
        True,
    )
    assert "0.2" in report.error.message
    assert elapsed < 5


async def test_sync_handler_runs_in_a_thread_without_blocking_the_loop(redis: Any) -> None:
    graph = triage_graph()
    await prepared(redis, graph)
    registry = HandlerRegistry()
    entered, release = threading.Event(), threading.Event()
    loop_thread = threading.get_ident()

    def notify(ctx: NodeContext) -> dict[str, Any]:
        entered.set()
        # Only a coroutine on the (unblocked) loop can set this; a blocked loop times out here.
        released = release.wait(timeout=10)
        return {"released": released, "other_thread": threading.get_ident() != loop_thread}

    registry.register("notify", notify)

    async def releaser() -> None:
        await wait_for(entered.is_set, timeout=10, message="sync handler entered")
        release.set()

    helper = asyncio.create_task(releaser())
    await run(redis, registry, graph)
    await helper
    assert (await only_report(redis)).output == {"released": True, "other_thread": True}


async def test_non_json_output_fails_naming_the_type(redis: Any) -> None:
    graph = triage_graph()
    await prepared(redis, graph)
    registry = HandlerRegistry()
    registry.register("notify", lambda ctx: {"ok": [1, {"ids": {1, 2}}]})

    await run(redis, registry, graph)
    report = await only_report(redis)
    assert report.error is not None
    assert (report.error.type, report.error.retryable) == ("NonJSONOutput", False)
    assert "set" in report.error.message and "output.ok.1.ids" in report.error.message


async def test_output_over_the_message_limit_fails(redis: Any) -> None:
    graph = triage_graph()
    await prepared(redis, graph)
    registry = HandlerRegistry()
    registry.register("notify", lambda ctx: {"blob": "x" * 5000})

    await run(
        redis, registry, graph, settings=WorkerSettings(shards=SHARDS, max_message_bytes=2048)
    )
    report = await only_report(redis)
    assert report.error is not None
    assert report.error.type == "OutputTooLarge" and "2048" in report.error.message
    assert report.output is None


async def test_missing_graph_fails_the_node(redis: Any) -> None:
    graph = triage_graph()
    await prepared(redis, graph, register_graph=False)

    await run(redis, HandlerRegistry(), graph)
    report = await only_report(redis)
    assert report.error is not None and report.error.type == "GraphNotFound"


class _Unavailable:
    """A client whose round trips fail with ``error``, as a busy or failing-over server's do."""

    def __init__(self, redis: Any, error: Exception) -> None:
        self.redis, self.error = redis, error

    def pipeline(self, *args: Any, **kwargs: Any) -> Any:
        # the wrapped client's pipeline for scripts too (a cluster client's refuses them:
        # ``script_pipeline`` runs them one by one), as the worker would get from it; the
        # commands queued are never sent
        pipe = script_pipeline(self.redis)

        async def execute(*_: Any, **__: Any) -> Any:
            raise self.error

        pipe.execute = execute
        return pipe

    def __getattr__(self, name: str) -> Any:
        return getattr(self.redis, name)


@pytest.mark.parametrize(
    "error",
    [
        ReadOnlyError("You can't write against a read only replica."),
        ResponseError("BUSY Redis is busy running a script. You can only call SCRIPT KILL"),
        ResponseError("Error running script: @user_script:1: -READONLY You can't write"),
    ],
    ids=["readonly", "busy", "readonly-in-a-script"],
)
@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
async def test_a_server_that_cannot_serve_now_retries_the_job_instead_of_failing_it(
    redis: Any, error: Exception, warm: bool
) -> None:
    """Reading the run fails because of the server (a failover, a long script), not the job:
    the error is raised for the queue to run the job again, no failure is reported, and the
    handler never runs."""
    graph = triage_graph()
    await prepared(redis, graph)
    registry, calls = _spy_registry()
    with pytest.raises(type(error)):
        await run(_Unavailable(redis, error), registry, graph, warm=warm)
    assert calls == [] and await inbox_reports(redis, KEYS) == []


@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
async def test_a_cluster_client_failing_mid_reset_retries_the_job_instead_of_failing_it(
    redis: Any, warm: bool
) -> None:
    """redis-py's cluster client, reset by another caller after a primary died, fails the
    job's reads inside itself (an AttributeError, redis/redis-py#3835). On the failover
    test this failed a run's node for good; the job must run again instead."""
    graph = triage_graph()
    await prepared(redis, graph)
    registry, calls = _spy_registry()
    fault = await client_fault()
    with pytest.raises(AttributeError):
        await run(_Unavailable(redis, fault), registry, graph, warm=warm)
    assert calls == [] and await inbox_reports(redis, KEYS) == []


@pytest.mark.parametrize(
    ("error", "unavailable"),
    [
        (RedisConnectionError("Connection refused"), True),
        (ReadOnlyError("You can't write against a read only replica."), True),
        (OutOfMemoryError("command not allowed when used memory > 'maxmemory'."), True),
        (ResponseError("BUSY Redis is busy running a script."), True),
        (ResponseError("MASTERDOWN Link with MASTER is down"), True),
        (ResponseError("Error running script: @user_script: 1: -READONLY You can't"), True),
        (NoScriptError("No matching script. Please use EVAL."), True),
        (ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"), False),
        (ResponseError("BUSYGROUP Consumer Group name already exists"), False),
        (ResponseError("ERR the job's own data mentions -READONLY"), False),
        (ValueError("BUSY"), False),
    ],
)
def test_which_errors_say_redis_cannot_serve_now(error: Exception, unavailable: bool) -> None:
    assert redis_unavailable(error) is unavailable


async def test_a_job_error_from_redis_still_fails_the_node(redis: Any) -> None:
    """A reply about the data (a key of the wrong type), not about the server, is not
    retried: the node fails with a report naming it."""
    graph = triage_graph()
    await prepared(redis, graph)
    registry, calls = _spy_registry()
    wrongtype = ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value")
    await run(_Unavailable(redis, wrongtype), registry, graph)
    report = await only_report(redis)
    assert report.error is not None and report.error.type == "WorkerError"
    assert "WRONGTYPE" in report.error.message and calls == []


@pytest.mark.parametrize("last", [False, True], ids=["retried", "last-delivery"])
async def test_a_job_redis_cannot_serve_is_retried_and_its_last_delivery_leaves_a_lapsed_lease(
    redis: Any, redis_url: str, monkeypatch: pytest.MonkeyPatch, last: bool
) -> None:
    """The job's reads meet a read-only replica (a failover), so the lease those reads'
    pipeline carries is never written: the job is queued again a second later by the
    server's clock. On the last delivery arq makes (a retry has no wake-up: a poll finds
    it), the job ends without a report but with its attempt's lease written as lapsed, so
    that the dispatcher runs the attempt again: the run never waits forever."""
    graph, registry = await _notify_ok(redis)
    execute_node = worker_app.execute_node

    async def on_a_replica(redis: Any, *args: Any, **kwargs: Any) -> Any:
        replica = _Unavailable(redis, ReadOnlyError("You can't write against a read only replica."))
        return await execute_node(replica, *args, **kwargs)

    monkeypatch.setattr(worker_app, "execute_node", on_a_replica)
    jid = await enqueue_like_the_dispatcher(redis, graph, "notify", "default")
    if last:
        await redis.set("arq:retry:" + jid, worker_app.ARQ_MAX_TRIES - 1)
    settings = WorkerSettings(shards=SHARDS, redis_url=redis_url, wake_fallback_s=30)

    async def delivered_and_ended() -> bool:
        if last:  # the job is over: its keys are gone
            return await _gone(redis, ARQ_JOB_KEY_PREFIX + jid)
        return await redis.get("arq:retry:" + jid) == b"1" and await _gone(
            redis, ARQ_IN_PROGRESS_PREFIX + jid
        )

    server_s, server_us = await redis.time()
    started_ms = server_s * 1000 + server_us // 1000
    async with serving(settings, registry):  # its first read of the queue finds the job
        await wait_for(delivered_and_ended, timeout=5, message="the delivery ended")
    score = await redis.zscore(SHARD1.queue("default"), jid)
    leases = await redis.zrange(SHARD1.leases, 0, -1, withscores=True)
    assert await inbox_reports(redis, KEYS) == []
    if not last:
        assert score is not None and score >= started_ms + 1000  # a second later
        assert leases == []
        return
    assert score is None
    [(member, expiry)] = leases
    lease = parse_inbox(member, 1 << 20)
    assert isinstance(lease, LeaseExpired) and expiry == 0
    assert (lease.run_id, lease.node_id, lease.visit, lease.attempt) == ("run1", "notify", 1, 1)


async def test_too_many_deliveries_fail_with_worker_lost(redis: Any) -> None:
    graph = triage_graph()
    await prepared(redis, graph)
    registry = HandlerRegistry()
    calls = 0

    def notify(ctx: NodeContext) -> None:
        nonlocal calls
        calls += 1

    registry.register("notify", notify)
    payload = job_for(graph, "notify")
    report = await run_node(
        redis,
        KEYS,
        registry,
        payload,
        GraphCache(),
        WorkerSettings(shards=SHARDS),
        delivery=6,
        max_deliveries=5,
    )
    assert report is not None and report.error is not None
    assert (report.error.type, report.error.retryable, calls) == ("WorkerLost", True, 0)


@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
@pytest.mark.parametrize("corrupt", ["output", "record"])
async def test_corrupt_stored_data_is_reported_not_dropped(
    redis: Any, warm: bool, corrupt: str
) -> None:
    graph = triage_graph()
    await prepared(redis, graph)
    rk = KEYS.run("run1")
    if corrupt == "output":
        await redis.hset(rk.outputs, "triage#1", b"{not json")
    else:
        await redis.hset(rk.nodes, "triage", b'{"status": "nonsense"}')
    registry = HandlerRegistry()
    registry.register("notify", lambda ctx: "never")

    await run(redis, registry, graph, warm=warm)
    report = await only_report(redis)
    assert report.error is not None
    assert (report.error.type, report.error.code) == ("WorkerError", "worker_error")
    assert "'notify'" in report.error.message


class Summary(BaseModel):
    severity: str
    at: datetime.date


async def test_outputs_are_normalized_to_plain_json(redis: Any) -> None:
    graph = triage_graph()
    await prepared(redis, graph)
    registry = HandlerRegistry()
    day = datetime.date(2024, 5, 1)
    registry.register(
        "notify", lambda ctx: {"model": Summary(severity="low", at=day), "pair": (1, 2), 7: day}
    )

    await run(redis, registry, graph)
    report = await only_report(redis)
    assert report.output == {
        "model": {"severity": "low", "at": "2024-05-01"},
        "pair": [1, 2],
        "7": "2024-05-01",
    }


# --- fencing ----------------------------------------------------------------------------------


def _spy_registry() -> tuple[HandlerRegistry, list[int]]:
    registry = HandlerRegistry()
    calls: list[int] = []
    registry.register("notify", lambda ctx: calls.append(ctx.attempt))
    return registry, calls


async def test_stale_attempt_does_not_call_the_handler(redis: Any) -> None:
    graph = triage_graph()
    await prepared(redis, graph, nodes={"notify": queued(visit=1, attempt=2)})
    registry, calls = _spy_registry()

    assert await run(redis, registry, graph, attempt=1) is None
    assert calls == [] and await inbox_reports(redis, KEYS) == []


async def test_finished_node_does_not_call_the_handler(redis: Any) -> None:
    graph = triage_graph()
    await prepared(redis, graph, nodes={"notify": completed()})
    registry, calls = _spy_registry()

    assert await run(redis, registry, graph) is None
    assert calls == [] and await inbox_reports(redis, KEYS) == []


@pytest.mark.parametrize("status", [RunStatus.CANCELLED, RunStatus.FAILED, RunStatus.COMPLETED])
async def test_terminal_run_does_not_call_the_handler(redis: Any, status: RunStatus) -> None:
    graph = triage_graph()
    await prepared(redis, graph, status=status)
    registry, calls = _spy_registry()

    assert await run(redis, registry, graph) is None
    assert calls == [] and await inbox_reports(redis, KEYS) == []


async def test_missing_run_does_not_call_the_handler(redis: Any) -> None:
    registry, calls = _spy_registry()
    assert await run(redis, registry, triage_graph()) is None
    assert calls == [] and await inbox_reports(redis, KEYS) == []


# --- real arq workers -------------------------------------------------------------------------


async def enqueue_like_the_dispatcher(redis: Any, graph: Graph, node_id: str, queue: str) -> str:
    """Write arq's job key and the queue zset entry exactly as the dispatcher's script does."""
    payload = job_for(graph, node_id)
    jid = KEYS.job_id(payload.run_id, node_id, payload.visit, payload.attempt)
    now_ms = int(time.time() * 1000)
    await redis.psetex(ARQ_JOB_KEY_PREFIX + jid, 86_400_000, encode_arq_job(payload, now_ms))
    await redis.zadd(KEYS.shard_for(payload.run_id).queue(queue), {jid: now_ms})
    return jid


async def test_arq_worker_runs_a_dispatcher_enqueued_job(redis: Any, redis_url: str) -> None:
    graph = triage_graph(queue="mail", config={"to": "{{triage.output.severity}}@example.com"})
    await prepared(redis, graph)
    registry = HandlerRegistry()
    registry.register("notify", lambda ctx: {"to": ctx.config["to"]})
    jid = await enqueue_like_the_dispatcher(redis, graph, "notify", "mail")
    settings = WorkerSettings(shards=SHARDS, redis_url=redis_url, queues=["mail"], poll_delay=0.01)

    [worker] = build_workers(settings, registry, burst=True)
    try:
        await asyncio.wait_for(worker.async_run(), timeout=20)
    finally:
        await worker.close()

    [report] = await wait_for_reports(redis, KEYS)
    assert report.status == "completed", report
    assert report.output == {"to": "critical@example.com"}
    assert report.worker is not None and "mail" in report.worker
    # arq finished the job: no job key, no queue entry, no result key (keep_result=0)
    assert await redis.exists(ARQ_JOB_KEY_PREFIX + jid, f"arq:result:{jid}") == 0
    assert await redis.zcard(SHARD1.queue("mail")) == 0


async def test_serve_runs_until_cancelled(redis: Any, redis_url: str) -> None:
    graph = triage_graph()
    await prepared(redis, graph)
    registry = HandlerRegistry()
    registry.register("notify", lambda ctx: "done")
    settings = WorkerSettings(
        shards=SHARDS, redis_url=redis_url, queues=["default", "other"], poll_delay=0.01
    )

    server = asyncio.create_task(serve(settings, registry, grace_s=1))
    try:
        await enqueue_like_the_dispatcher(redis, graph, "notify", "default")
        [report] = await wait_for_reports(redis, KEYS)
        assert report.output == "done"
    finally:
        server.cancel()
        await asyncio.wait_for(asyncio.gather(server, return_exceptions=True), timeout=20)
    assert server.done()


@contextlib.asynccontextmanager
async def serving(settings: WorkerSettings, registry: HandlerRegistry) -> AsyncIterator[None]:
    server = asyncio.create_task(serve(settings, registry, grace_s=0))
    try:
        yield
    finally:
        server.cancel()
        await asyncio.wait_for(asyncio.gather(server, return_exceptions=True), timeout=20)


def blocking_registry() -> tuple[HandlerRegistry, asyncio.Event, asyncio.Event, list[str]]:
    """A ``notify`` handler that signals ``started`` and then waits for ``release``."""
    registry = HandlerRegistry()
    started, release = asyncio.Event(), asyncio.Event()
    events: list[str] = []

    @registry.handler("notify")
    async def notify(ctx: NodeContext) -> str:
        started.set()
        try:
            await release.wait()
        except asyncio.CancelledError:
            events.append("cancelled")
            raise
        return "released"

    return registry, started, release, events


async def test_running_job_keeps_its_lease_beyond_the_lease_time(
    redis: Any, redis_url: str
) -> None:
    graph = triage_graph()
    await prepared(redis, graph)
    registry, started, release, _ = blocking_registry()
    settings = WorkerSettings(
        shards=SHARDS,
        redis_url=redis_url,
        poll_delay=0.01,
        job_lease_s=1,
        lease_s=1,
        heartbeat_s=0.25,
    )
    in_progress = ARQ_IN_PROGRESS_PREFIX + await enqueue_like_the_dispatcher(
        redis, graph, "notify", "default"
    )

    async with serving(settings, registry):
        await wait_for(started.is_set, timeout=10, message="handler started")
        assert 0 < await redis.pttl(in_progress) <= 1000  # the lease, not arq's job timeout
        renewals, lowest = 0, 1000

        async def renewed_three_times() -> bool:
            nonlocal renewals, lowest
            ttl = await redis.pttl(in_progress)
            assert ttl > 0, "the lease expired while the handler ran"
            if ttl > lowest + 100:
                renewals += 1
            lowest = ttl
            return renewals >= 3

        await wait_for(renewed_three_times, timeout=10, interval=0.02, message="lease renewals")
        release.set()
        [report] = await wait_for_reports(redis, KEYS)
        assert report.output == "released"
        await wait_for(
            lambda: _gone(redis, in_progress), timeout=10, message="in-progress key deleted"
        )


async def _gone(redis: Any, key: str) -> bool:
    return bool(await redis.exists(key) == 0)


async def test_aborted_job_is_cancelled_and_not_reported(redis: Any, redis_url: str) -> None:
    graph = triage_graph()
    await prepared(redis, graph)
    registry, started, _, events = blocking_registry()
    settings = WorkerSettings(shards=SHARDS, redis_url=redis_url, poll_delay=0.01)
    jid = await enqueue_like_the_dispatcher(redis, graph, "notify", "default")

    async with serving(settings, registry):
        await wait_for(started.is_set, timeout=10, message="handler started")
        await redis.zadd(SHARD1.abort, {jid: int(time.time() * 1000)})  # as CancelNode does
        await wait_for(
            lambda: _gone(redis, ARQ_JOB_KEY_PREFIX + jid), timeout=10, message="job finished"
        )
    assert events == ["cancelled"]
    assert await inbox_reports(redis, KEYS) == []


# --- wake-ups ---------------------------------------------------------------------------------


async def _first_job_warms_the_cache(redis: Any, graph: Graph) -> None:
    """Run ``audit`` (queued by ``prepared(..., nodes={"audit": queued()})``) through the
    serving worker, so that it has ``graph`` cached for the jobs after it."""
    await wait_for(lambda: _worker_idle(redis), message="worker idle")
    first = await enqueue_like_the_dispatcher(redis, graph, "audit", "default")
    await redis.rpush(SHARD1.wake("default"), wake_token(first, graph.id, graph.version))
    await wait_for_reports(redis, KEYS, timeout=5)
    await wait_for(lambda: _drained(redis), message="worker idle after the first job")


async def _wake_for_notify(redis: Any, graph: Graph) -> str:
    """Queue ``notify`` and wake the worker for it, naming its graph (so that a worker with
    the graph cached plans the claim); the job's id."""
    jid = await enqueue_like_the_dispatcher(redis, graph, "notify", "default")
    await redis.rpush(SHARD1.wake("default"), wake_token(jid, graph.id, graph.version))
    return jid


async def _audit_then_notify(redis: Any) -> tuple[Graph, HandlerRegistry]:
    """``_notify_ok`` with ``audit`` queued too, for ``_first_job_warms_the_cache``."""
    graph, registry = await _notify_ok(redis)
    await prepared(redis, graph, nodes={"audit": queued()})
    registry.register("agent", lambda ctx: "audited")
    return graph, registry


async def _notify_ok(redis: Any) -> tuple[Graph, HandlerRegistry]:
    """A run whose ``notify`` is queued, and a registry whose ``notify`` just succeeds."""
    graph = triage_graph()
    await prepared(redis, graph)
    registry = HandlerRegistry()
    registry.register("notify", lambda ctx: {"ok": True})
    return graph, registry


async def test_a_wake_up_starts_a_job_long_before_the_fallback_poll(
    redis: Any, redis_url: str
) -> None:
    graph, registry = await _notify_ok(redis)
    # The fallback poll is 30 s: only the wake-up can start the job within the deadline.
    settings = WorkerSettings(shards=SHARDS, redis_url=redis_url, wake_fallback_s=30)
    async with serving(settings, registry):
        await wait_for(lambda: _worker_idle(redis), message="worker idle")
        jid = await enqueue_like_the_dispatcher(redis, graph, "notify", "default")
        await redis.rpush(SHARD1.wake("default"), jid)  # what the dispatcher's script pushes
        [report] = await wait_for_reports(redis, KEYS, timeout=5)
    assert report.status == "completed"


async def test_a_wake_up_naming_a_cached_graph_claims_leases_and_reads_in_one_script(
    redis: Any, redis_url: str
) -> None:
    """Once the worker has the graph, a wake-up that names it is claimed by one script
    that also writes the lease and reads the predecessors: no other script before the
    handler, which still sees its predecessor's output; the finish drops the lease."""
    graph = triage_graph(config={"text": "[{{triage.output.severity}}]"}, timeout_s=30)
    await prepared(redis, graph, nodes={"audit": queued()})
    registry = HandlerRegistry()
    registry.register("agent", lambda ctx: "audited")
    registry.register("notify", lambda ctx: ctx.config)
    settings = WorkerSettings(shards=SHARDS, redis_url=redis_url, wake_fallback_s=30)
    async with serving(settings, registry):
        await _first_job_warms_the_cache(redis, graph)
        await _on_every_primary(redis, "config_resetstat")
        await _wake_for_notify(redis, graph)
        reports = await wait_for_reports(redis, KEYS, count=2, timeout=5)
        stats = await _on_every_primary(redis, "info", "commandstats")
        scripts = sum(s.get("cmdstat_evalsha", {}).get("calls", 0) for s in stats)
    # the claim and the finish; without a plan, a third one reads the predecessors
    assert scripts == 2
    assert reports[-1].node_id == "notify" and reports[-1].output == {"text": "[critical]"}
    assert await redis.zcard(SHARD1.leases) == 0


async def test_a_serving_worker_reloads_its_scripts_after_the_server_forgets_them(
    redis: Any, redis_url: str
) -> None:
    """SCRIPT FLUSH (or a restart without persistence of scripts) between two jobs: the
    claim and the finish scripts are loaded again and the second job completes."""
    graph, registry = await _audit_then_notify(redis)
    settings = WorkerSettings(shards=SHARDS, redis_url=redis_url, wake_fallback_s=30)
    async with serving(settings, registry):
        await _first_job_warms_the_cache(redis, graph)
        await redis.script_flush()
        second = await _wake_for_notify(redis, graph)
        reports = await wait_for_reports(redis, KEYS, count=2, timeout=5)
        await wait_for(lambda: _gone(redis, ARQ_JOB_KEY_PREFIX + second), message="job done")
    assert [r.status for r in reports] == ["completed", "completed"]
    assert await redis.zcard(SHARD1.leases) == 0


async def test_stopping_a_worker_puts_its_running_job_back_and_shuts_down_cleanly(
    redis: Any, redis_url: str
) -> None:
    """A job still running when the grace period ends goes back on its queue (no report,
    no lease left), and the worker still completes its shutdown: arq's health-check key
    is deleted, which happens only after every job task has ended."""
    graph = triage_graph()
    await prepared(redis, graph)
    registry, started, _, events = blocking_registry()
    settings = WorkerSettings(shards=SHARDS, redis_url=redis_url, wake_fallback_s=30)
    async with serving(settings, registry):
        await wait_for(lambda: _worker_idle(redis), message="worker idle")
        jid = await enqueue_like_the_dispatcher(redis, graph, "notify", "default")
        await redis.rpush(SHARD1.wake("default"), jid)
        await wait_for(started.is_set, timeout=5, message="handler started")
        assert await redis.exists(HEALTH_CHECK)
    assert events == ["cancelled"]
    assert not await redis.exists(HEALTH_CHECK)
    assert not await redis.exists(ARQ_IN_PROGRESS_PREFIX + jid)
    assert await redis.zscore(SHARD1.queue("default"), jid) is not None  # queued again
    assert await redis.zcard(SHARD1.leases) == 0
    assert await inbox_reports(redis, KEYS) == []


async def test_a_second_stop_signal_while_a_job_is_finishing_does_not_cut_the_stop_short(
    redis: Any, redis_url: str
) -> None:
    """close() cancels the running job, whose finish (putting it back on its queue) is under
    way when a second signal cancels the job's task again: close() still waits for the
    finish before it shuts down (the job is queued again, not left to its lease), and runs
    to its end (health check deleted, on_shutdown run, pool closed)."""
    graph = triage_graph()
    await prepared(redis, graph)
    registry, started, _, events = blocking_registry()
    [worker] = build_workers(
        WorkerSettings(shards=SHARDS, redis_url=redis_url, wake_fallback_s=30), registry
    )
    assert isinstance(worker, WakingWorker)
    finishing, go_on = asyncio.Event(), asyncio.Event()
    finish = worker._finish

    steps: list[str] = []

    async def slow_finish(*args: Any, **kwargs: Any) -> None:
        finishing.set()
        await go_on.wait()
        await finish(*args, **kwargs)
        steps.append("finished")

    async def on_shutdown(ctx: dict[str, Any], shutdown: Any = worker.on_shutdown) -> None:
        steps.append("shutdown")
        await shutdown(ctx)

    worker._finish = slow_finish  # type: ignore[method-assign]
    worker.on_shutdown = on_shutdown
    async with _running(worker):
        await wait_for(lambda: _worker_idle(redis), message="worker idle")
        jid = await enqueue_like_the_dispatcher(redis, graph, "notify", "default")
        await redis.rpush(SHARD1.wake("default"), jid)
        await wait_for(started.is_set, timeout=5, message="handler started")
        closing = asyncio.create_task(worker.close())
        await wait_for(finishing.is_set, timeout=5, message="finish under way")
        worker.handle_sig(signal.SIGTERM)  # the second signal
        ended, _ = await asyncio.wait([closing], timeout=0.3)
        assert not ended, "close() did not wait for the job's finish"
        go_on.set()
        await asyncio.wait_for(closing, timeout=10)
    assert steps == ["finished", "shutdown"]
    assert events == ["cancelled"]
    assert worker._pool is None  # close() ran to its end
    assert not await redis.exists(HEALTH_CHECK)
    assert not await redis.exists(ARQ_IN_PROGRESS_PREFIX + jid)
    assert await redis.zscore(SHARD1.queue("default"), jid) is not None  # queued again


@pytest.mark.parametrize("case", ["queued", "aborted", "taken-over"])
async def test_a_stop_during_a_claim_round_trip_hands_the_claimed_job_back(
    redis: Any, redis_url: str, case: str
) -> None:
    """The claim script has run (the job is in progress, its try counted) but its reply has
    not reached the worker when the stop cancels the worker's loop: close() waits for the
    reply and puts the job back on its queue with its try uncounted, so the next worker runs
    it at once instead of after arq's in-progress timeout. A job aborted meanwhile (the
    claim took it off the abort set) ends instead, as it would have had it started. A job
    whose claim lapsed and was taken over by another worker meanwhile is left alone."""
    graph, registry = await _notify_ok(redis)
    # job_lease_s: the claim's in-progress key must outlast the test's slowest step
    settings = WorkerSettings(
        shards=SHARDS, redis_url=redis_url, wake_fallback_s=30, job_lease_s=60
    )
    [worker] = build_workers(settings, registry)
    assert isinstance(worker, WakingWorker)
    claimed, reply = asyncio.Event(), asyncio.Event()
    claim_all = worker._claim_all

    async def slow_reply(wanted: Any) -> Any:
        claims = await claim_all(wanted)
        claimed.set()
        await reply.wait()
        return claims

    worker._claim_all = slow_reply  # type: ignore[method-assign]
    async with _running(worker) as running:
        await wait_for(lambda: _worker_idle(redis), message="worker idle")
        jid = await enqueue_like_the_dispatcher(redis, graph, "notify", "default")
        if case == "aborted":
            await redis.zadd(SHARD1.abort, {jid: int(time.time() * 1000)})
        await redis.rpush(SHARD1.wake("default"), jid)
        await wait_for(claimed.is_set, timeout=5, message="claimed")
        assert await redis.exists(ARQ_IN_PROGRESS_PREFIX + jid)
        assert await redis.get("arq:retry:" + jid) == b"1"
        closing = asyncio.create_task(worker.close())
        await wait_for(running.done, timeout=5, message="the worker's loop cancelled")
        if case == "taken-over":
            await redis.set(ARQ_IN_PROGRESS_PREFIX + jid, "another worker's claim")
            await redis.incr("arq:retry:" + jid)
        reply.set()
        await asyncio.wait_for(closing, timeout=10)
    assert await inbox_reports(redis, KEYS) == []
    if case == "taken-over":
        assert await redis.get(ARQ_IN_PROGRESS_PREFIX + jid) == b"another worker's claim"
        assert await redis.get("arq:retry:" + jid) == b"2"
        return
    assert not await redis.exists(ARQ_IN_PROGRESS_PREFIX + jid)
    if case == "aborted":
        assert not await redis.exists(ARQ_JOB_KEY_PREFIX + jid, "arq:retry:" + jid)
        assert await redis.zscore(SHARD1.queue("default"), jid) is None
        return
    assert await redis.zscore(SHARD1.queue("default"), jid) is not None
    assert await redis.get("arq:retry:" + jid) == b"0"  # the try is not counted
    async with serving(settings, registry):  # its first read of the queue finds the job
        [report] = await wait_for_reports(redis, KEYS, timeout=5)
    assert report.status == "completed"


async def test_a_finish_outlasts_a_failover_instead_of_being_lost(
    redis: Any, redis_url: str
) -> None:
    """The job's finish meets a failover: its first four tries are refused (more than the
    three tries within about a second a finish once had). It is tried again until Redis
    serves, so the result lands once and the handler does not run again after its lease
    lapses."""
    graph = triage_graph()
    await prepared(redis, graph)
    registry, calls = _spy_registry()
    [worker] = build_workers(WorkerSettings(shards=SHARDS, redis_url=redis_url), registry)
    assert isinstance(worker, WakingWorker)
    refused: list[str] = []
    async with _running(worker):
        await wait_for(lambda: worker._pool is not None, timeout=5, message="the pool")
        pool = worker.pool
        evalsha = pool.evalsha

        async def failing_over(sha: str, *args: Any) -> Any:
            if sha == waking._SHAS[waking._FINISH] and len(refused) < 4:
                refused.append(sha)
                raise RedisConnectionError("Error 111 connecting to 127.0.0.1:1. Refused.")
            return await evalsha(sha, *args)

        pool.evalsha = failing_over
        await enqueue_like_the_dispatcher(redis, graph, "notify", "default")
        [report] = await wait_for_reports(redis, KEYS, timeout=15)
    assert report.status == "completed" and len(refused) == 4 and calls == [1]


async def test_the_workers_loop_goes_on_after_the_cluster_clients_fault(
    redis: Any, redis_url: str
) -> None:
    """A poll of the queues fails inside redis-py's cluster client mid-reset (an
    AttributeError, redis/redis-py#3835): the loop counts an outage, backs off and goes on
    (it used to end, and the worker with it)."""
    graph, registry = await _notify_ok(redis)
    [worker] = build_workers(WorkerSettings(shards=SHARDS, redis_url=redis_url), registry)
    assert isinstance(worker, WakingWorker)
    poll = worker._poll_iteration
    fault = await client_fault()

    async def fails_once() -> None:
        if worker.outages == 0:
            raise fault
        await poll()

    worker._poll_iteration = fails_once  # type: ignore[method-assign]
    async with _running(worker) as running:
        await wait_for(lambda: worker.outages == 1, timeout=5, message="the fault met")
        await enqueue_like_the_dispatcher(redis, graph, "notify", "default")
        [report] = await wait_for_reports(redis, KEYS, timeout=10)
        assert report.status == "completed" and not running.done()


@contextlib.asynccontextmanager
async def _running(worker: WakingWorker) -> AsyncIterator[asyncio.Task[None]]:
    """The worker's loop, run for the block (by ``async_run``, as a test drives it), then
    cancelled and the worker closed."""
    running = asyncio.create_task(worker.async_run())
    try:
        yield running
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await worker.close()  # once only: a test may have closed it (its heartbeat stops)


class _CancelsJobsUnstarted:
    """The worker's event loop, except that a job's task is cancelled before it ever runs
    (as a stop signal landing between its creation and its first step does)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def create_task(self, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        task = self.loop.create_task(coro, **kwargs)
        if getattr(coro, "__name__", "") == "_run_claimed":
            task.cancel()
        return task

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loop, name)


@pytest.mark.parametrize("finish_fails", [False, True], ids=["handed-back", "finish-fails"])
async def test_a_job_whose_task_never_ran_is_handed_back_when_the_worker_stops(
    redis: Any, redis_url: str, finish_fails: bool
) -> None:
    """A claimed job whose task was cancelled before its first step never ran any of its
    own clean-up: close() puts it back on its queue. If that write fails, close() logs it
    and still runs to its end (health check deleted, pool closed); the job is left to its
    in-progress key's expiry."""
    graph, registry = await _notify_ok(redis)
    settings = WorkerSettings(
        shards=SHARDS, redis_url=redis_url, wake_fallback_s=30, job_lease_s=60
    )
    [worker] = build_workers(settings, registry)
    assert isinstance(worker, WakingWorker)
    worker.loop = _CancelsJobsUnstarted(worker.loop)  # type: ignore[assignment]
    if finish_fails:

        async def broken(*_: Any, **__: Any) -> None:
            raise ResponseError("ERR the finish failed")

        worker._finish = broken  # type: ignore[method-assign]
    async with _running(worker):
        await wait_for(lambda: _worker_idle(redis), message="worker idle")
        jid = await enqueue_like_the_dispatcher(redis, graph, "notify", "default")
        await redis.rpush(SHARD1.wake("default"), jid)
        await wait_for(lambda: worker._unstarted, timeout=5, message="claimed, never started")
        assert await redis.exists(ARQ_IN_PROGRESS_PREFIX + jid)
        await asyncio.wait_for(worker.close(), timeout=10)
    assert worker._pool is None
    assert not await redis.exists(HEALTH_CHECK)
    assert await redis.zscore(SHARD1.queue("default"), jid) is not None
    assert bool(await redis.exists(ARQ_IN_PROGRESS_PREFIX + jid)) is finish_fails


async def test_a_planned_claim_of_an_aborted_job_leaves_no_lease(
    redis: Any, redis_url: str
) -> None:
    """The claim wrote the lease, then the job turned out to be aborted before its start:
    the lease goes with the job, so the dispatcher never sees it lapse."""
    graph, registry = await _audit_then_notify(redis)
    settings = WorkerSettings(shards=SHARDS, redis_url=redis_url, wake_fallback_s=30)
    async with serving(settings, registry):
        await _first_job_warms_the_cache(redis, graph)
        second = await enqueue_like_the_dispatcher(redis, graph, "notify", "default")
        await redis.zadd(SHARD1.abort, {second: int(time.time() * 1000)})
        await redis.rpush(SHARD1.wake("default"), wake_token(second, graph.id, graph.version))
        await wait_for(
            lambda: _gone(redis, ARQ_JOB_KEY_PREFIX + second), timeout=5, message="job dropped"
        )
    assert [r.node_id for r in await inbox_reports(redis, KEYS)] == ["audit"]
    assert await redis.zcard(SHARD1.leases) == 0


async def test_a_wake_up_naming_a_score_the_job_no_longer_has_does_not_start_it_early(
    redis: Any, redis_url: str
) -> None:
    """A wake-up names the job's queue score: a job still at it is due (the dispatcher
    scored it with the server's clock), so its claim skips the clock. A job moved later
    since (a retry's delay, a failed claim's deferral) is not at it: its claim reads the
    clock and leaves it queued, untouched, until it is due."""
    graph, registry = await _audit_then_notify(redis)
    settings = WorkerSettings(shards=SHARDS, redis_url=redis_url, wake_fallback_s=30)
    queue, wake = SHARD1.queue("default"), SHARD1.wake("default")
    async with serving(settings, registry):
        await _first_job_warms_the_cache(redis, graph)
        jid = await enqueue_like_the_dispatcher(redis, graph, "notify", "default")
        old = int(await redis.zscore(queue, jid))
        await redis.zadd(queue, {jid: old + 60_000}, xx=True)
        await redis.rpush(wake, wake_token(jid, graph.id, graph.version, old))
        await wait_for(lambda: _drained(redis), message="the wake-up handled")
        assert not await redis.exists(ARQ_IN_PROGRESS_PREFIX + jid, "arq:retry:" + jid)
        assert await redis.zscore(queue, jid) == old + 60_000
        assert [r.node_id for r in await inbox_reports(redis, KEYS)] == ["audit"]
        await redis.zadd(queue, {jid: old}, xx=True)  # due again, at the score named
        await redis.rpush(wake, wake_token(jid, graph.id, graph.version, old))
        reports = await wait_for_reports(redis, KEYS, count=2, timeout=5)
    assert [r.node_id for r in reports] == ["audit", "notify"]


async def test_a_claim_that_cannot_write_its_lease_undoes_its_claim(
    redis: Any, redis_url: str
) -> None:
    """The lease is the claim's last write: if it fails (here the leases key holds another
    type), the in-progress key and the try it counted are taken back, so the failed claim
    leaves nothing behind (the worker then claims the job plainly, without a lease)."""
    graph, _ = await _notify_ok(redis)
    [worker] = build_workers(WorkerSettings(shards=SHARDS, redis_url=redis_url), HandlerRegistry())
    lease = b'{"kind": "lease_expired"}'
    plan = ClaimPlan(SHARD1.leases, lease, 1, None, None, KEYS.run("run1").outputs, ["triage"])
    worker.planner = lambda *_: plan
    jid = await enqueue_like_the_dispatcher(redis, graph, "notify", "default")
    keys, args, planned = worker._claim_call(jid, (graph.id, graph.version))
    assert planned is plan
    await redis.set(SHARD1.leases, "not a sorted set")
    for tried in (None, b"4"):  # a first try, and a job tried before
        if tried is not None:
            await redis.set("arq:retry:" + jid, tried)
        with pytest.raises(ResponseError, match="writing the lease"):
            await redis.eval(waking._CLAIM, len(keys), *keys, *args)
        assert not await redis.exists(ARQ_IN_PROGRESS_PREFIX + jid)
        assert await redis.get("arq:retry:" + jid) == tried
    await redis.delete(SHARD1.leases)
    reply = await redis.eval(waking._CLAIM, len(keys), *keys, *args)
    assert reply[2] == 5 and reply[6] == 1  # the fifth try, with its lease written
    assert await redis.zscore(SHARD1.leases, lease) == 1


async def _limited_worker(redis: Any, redis_url: str, *limits: tuple[str, str]) -> WakingWorker:
    """A worker whose pool is the test's client, with ``limits`` (scope, spec) set and seen."""
    [worker] = build_workers(WorkerSettings(shards=SHARDS, redis_url=redis_url), HandlerRegistry())
    assert isinstance(worker, WakingWorker)
    worker._pool = redis
    for scope, spec in limits:
        await redis.hset(KEYS.limits, scope, spec)
    await worker.gate.refresh(redis)
    return worker


async def _queued_job(redis: Any, graph: Graph, run_id: str, node_id: str = "notify") -> str:
    jid = KEYS.job_id(run_id, node_id, 1, 1)
    job = job_for(graph, node_id, run_id=run_id)
    job = job.model_copy(update={"type": graph.node(node_id).type})  # as the dispatcher's
    await redis.set(ARQ_JOB_KEY_PREFIX + jid, encode_arq_job(job, 0))
    await redis.zadd(KEYS.shard_for(run_id).queue("default"), {jid: 0})
    return jid


async def _claim_in_turn(redis: Any, worker: WakingWorker, jobs: list[str]) -> list[Any]:
    """Claim ``jobs`` one after another, each in a later millisecond of the server's clock,
    so that those a limit holds back are held in that order: the held-back zset scores a
    job with the millisecond of its hold, and holds in one millisecond tie (broken by job
    id, which sharded starts with the shard's tag)."""
    claims = []
    for jid in jobs:
        claims += await worker._claim_all([(jid, None, None)])
        claimed_by = await _server_ms(redis)

        async def later(after: int = claimed_by) -> bool:
            return await _server_ms(redis) > after

        await wait_for(later, timeout=5, interval=0.001, message="the server's clock moved on")
    return claims


async def _server_ms(redis: Any) -> int:
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


def _wake_lists(*run_ids: str) -> list[str]:
    """The default queue's wake lists of the runs' shards, each once (one on one server)."""
    return list(dict.fromkeys(KEYS.shard_for(r).wake("default") for r in run_ids))


async def _clear_wake_lists(redis: Any, *run_ids: str) -> None:
    for wake in _wake_lists(*run_ids):
        await redis.delete(wake)


async def _woken(redis: Any, *run_ids: str) -> list[bytes]:
    """Every wake-up on the runs' shards' wake lists."""
    return [token for wake in _wake_lists(*run_ids) for token in await redis.lrange(wake, 0, -1)]


async def test_a_limit_is_taken_after_the_claim_and_a_job_held_back_is_handed_back(
    redis: Any, redis_url: str
) -> None:
    """max_running 1: the first job takes the slot (scored with its expiry, as long as its
    in-progress key lives); the second is held back: handed back to its queue with its try
    not counted and nothing left claimed, noted as held back with its queue's wake list."""
    graph, _ = await _notify_ok(redis)
    worker = await _limited_worker(redis, redis_url, ("queue:default", "1||"))
    first = await _queued_job(redis, graph, "run1")
    second = await _queued_job(redis, graph, "run2")
    running = KEYS.limit_running("queue:default")
    before = int(time.time() * 1000)
    [claim] = await worker._claim_all([(first, None, None)])
    assert claim is not None and claim.slots == (running,)
    expiry = await redis.zscore(running, first)
    assert before + 2_000 < expiry < int(time.time() * 1000) + 4_000  # job_lease_s: 3 s
    assert await worker._claim_all([(second, None, None)]) == [None]
    assert worker.throttled == 1
    assert not await redis.exists(ARQ_IN_PROGRESS_PREFIX + second)
    assert await redis.get("arq:retry:" + second) in (None, b"0")  # its try not counted
    shard2 = KEYS.shard_for("run2")
    assert await redis.zscore(shard2.queue("default"), second) == 0  # keeps its place
    assert (
        await redis.hget(KEYS.limits_throttled, second)
        == b"queue:default|" + shard2.wake("default").encode()
    )
    assert await redis.zscore(KEYS.limit_held("queue:default"), second) is not None
    assert await redis.zrange(running, 0, -1) == [first.encode()]


async def test_a_running_slot_left_by_an_earlier_delivery_or_a_dead_worker_takes_no_slot(
    redis: Any, redis_url: str
) -> None:
    """A job's own entry (an earlier delivery's: a retry, a crash) is not a slot it waits
    for, and an entry whose expiry has passed (its worker died, nothing renewed it) is
    dropped: with max_running 1 both jobs run in turn."""
    graph, _ = await _notify_ok(redis)
    worker = await _limited_worker(redis, redis_url, ("queue:default", "1||"))
    first = await _queued_job(redis, graph, "run1")
    running = KEYS.limit_running("queue:default")
    far = int(time.time() * 1000) + 60_000
    await redis.zadd(running, {first: far})  # an earlier delivery's, not yet lapsed
    [claim] = await worker._claim_all([(first, None, None)])
    assert claim is not None and claim.tries == 1
    assert await redis.zrange(running, 0, -1) == [first.encode()]
    await redis.zadd(running, {first: 1})  # as if its worker died long ago
    second = await _queued_job(redis, graph, "run2")
    [claim] = await worker._claim_all([(second, None, None)])
    assert claim is not None
    assert await redis.zrange(running, 0, -1) == [second.encode()]


async def test_a_limit_holds_back_a_job_whose_id_names_no_run(redis: Any, redis_url: str) -> None:
    """A job arq queued by hand (its id names no run, its envelope no handler type) is
    claimed without the run's keys; its queue's limit still applies."""
    worker = await _limited_worker(redis, redis_url, ("queue:default", "1||"), ("type:x", "1||"))
    # such a job is queued in the first shard; sharded, its id carries that shard's tag, so
    # that arq's keys of the job share the queue's slot
    first = KEYS.shard(0)
    tag = f"{{{first.tag}}}:" if first.tag else ""
    by_hand = [f"{tag}by-hand-{n}" for n in (1, 2)]
    for jid in by_hand:
        await redis.set(ARQ_JOB_KEY_PREFIX + jid, b"{}")
        await redis.zadd(first.queue("default"), {jid: 0})
    keys, _, _ = worker._claim_call(by_hand[0], None)
    assert len(keys) == 5  # arq's keys only: no run, no limit
    assert worker.gate.scopes(b"{}") == ["queue:default"]
    [claim] = await worker._claim_all([(by_hand[0], None, None)])
    assert claim is not None
    assert await worker._claim_all([(by_hand[1], None, None)]) == [None]
    running = await redis.zrange(KEYS.limit_running("queue:default"), 0, -1)
    assert running == [by_hand[0].encode()]


async def test_a_handler_types_limit_applies_to_its_jobs_only(redis: Any, redis_url: str) -> None:
    """``type:notify`` at max_running 1 holds back a second notify job, not an agent's."""
    graph, _ = await _notify_ok(redis)
    worker = await _limited_worker(redis, redis_url, ("type:notify", "1||"))
    notify = [await _queued_job(redis, graph, f"run{i}") for i in (1, 2)]
    audit = await _queued_job(redis, graph, "run3", "audit")
    claims = await worker._claim_all([(j, None, None) for j in (*notify, audit)])
    assert [c is not None for c in claims] == [True, False, True]
    assert claims[0] is not None and claims[0].slots == (KEYS.limit_running("type:notify"),)
    assert claims[2] is not None and claims[2].slots == ()
    assert worker.gate.scopes(None) == []


async def test_a_limit_key_of_the_wrong_type_hands_the_job_back_and_defers_it(
    redis: Any, redis_url: str
) -> None:
    graph, _ = await _notify_ok(redis)
    worker = await _limited_worker(redis, redis_url, ("queue:default", "1||"))
    jid = await _queued_job(redis, graph, "run1")
    await redis.set(KEYS.limit_running("queue:default"), "not a sorted set")
    assert await worker._claim_all([(jid, None, None)]) == [None]
    assert not await redis.exists(ARQ_IN_PROGRESS_PREFIX + jid)
    assert await redis.get("arq:retry:" + jid) in (None, b"0")
    assert await redis.zscore(SHARD1.queue("default"), jid) > time.time() * 1000  # a minute on


async def test_a_finish_frees_the_slot_and_wakes_the_oldest_job_held_back(
    redis: Any, redis_url: str
) -> None:
    graph, _ = await _notify_ok(redis)
    worker = await _limited_worker(redis, redis_url, ("queue:default", "1||"))
    jobs = [await _queued_job(redis, graph, f"run{i}") for i in (1, 2, 3)]
    claims = await _claim_in_turn(redis, worker, jobs)
    assert [c is not None for c in claims] == [True, False, False]
    runs = ("run1", "run2", "run3")
    await _clear_wake_lists(redis, *runs)
    await worker._finish(jobs[0], done=True)
    assert await redis.zcard(KEYS.limit_running("queue:default")) == 0
    assert await _woken(redis, *runs) == [jobs[1].encode()]  # the oldest held back
    assert not await redis.hexists(KEYS.limits_throttled, jobs[1])
    assert await redis.hexists(KEYS.limits_throttled, jobs[2])  # still waits its turn
    [claim] = await worker._claim_all([(jobs[1], None, None)])
    assert claim is not None and claim.slots


async def test_a_job_woken_while_still_claimed_here_is_woken_again_once_handed_back(
    redis: Any, redis_url: str
) -> None:
    """The slot frees between a job's hold and its hand-back: the release pops it and wakes
    it, but a wake-up then finds it still claimed. The worker sees its note gone once it
    has handed it back, and wakes it again, so it does not wait for a poll."""
    graph, _ = await _notify_ok(redis)
    worker = await _limited_worker(redis, redis_url, ("queue:default", "1||"))
    first, second = [await _queued_job(redis, graph, f"run{i}") for i in (1, 2)]
    assert (await worker._claim_all([(first, None, None)]))[0] is not None
    wake = KEYS.shard_for("run2").wake("default")  # the second job's
    await _clear_wake_lists(redis, "run1", "run2")
    evalsha_all = worker._evalsha_all

    async def release_meanwhile(calls: Any, source: str = waking._CLAIM) -> list[Any]:
        replies = await evalsha_all(calls, source)
        if source is waking.ACQUIRE:  # another worker finishes the first job now
            keys, args = worker.gate.release_call(first, ["queue:default"])
            woken = await redis.eval(waking.RELEASE, len(keys), *keys, *args)
            assert woken == [wake.encode(), second.encode(), 1]  # 1: the first scope
            assert await redis.exists(ARQ_IN_PROGRESS_PREFIX + second)  # still claimed
        return replies

    worker._evalsha_all = release_meanwhile  # type: ignore[method-assign]
    assert await worker._claim_all([(second, None, None)]) == [None]
    # pushed after the hand-back
    assert await _woken(redis, "run1", "run2") == [second.encode()]
    assert not await redis.exists(ARQ_IN_PROGRESS_PREFIX + second)


async def test_a_job_cancelled_while_held_back_wakes_nobody_the_next_one_is_woken(
    redis: Any, redis_url: str
) -> None:
    graph, _ = await _notify_ok(redis)
    worker = await _limited_worker(redis, redis_url, ("queue:default", "1||"))
    jobs = [await _queued_job(redis, graph, f"run{i}") for i in (1, 2, 3)]
    await _claim_in_turn(redis, worker, jobs)
    await redis.delete(ARQ_JOB_KEY_PREFIX + jobs[1])  # cancelled: apply.lua drops its job
    await redis.zrem(KEYS.shard_for("run2").queue("default"), jobs[1])
    runs = ("run1", "run2", "run3")
    await _clear_wake_lists(redis, *runs)
    await worker._finish(jobs[0], done=True)
    assert await _woken(redis, *runs) == [jobs[2].encode()]
    assert await redis.hlen(KEYS.limits_throttled) == 0


async def test_a_hand_back_after_the_claim_lapsed_frees_no_slot_of_the_job_now_running(
    redis: Any, redis_url: str
) -> None:
    """This worker's claim lapsed (a stop that waited long) and another worker claimed the
    job and took the slot: handing it back here changes nothing, the slot stays taken."""
    graph, _ = await _notify_ok(redis)
    here = await _limited_worker(redis, redis_url, ("queue:default", "1||"))
    there = await _limited_worker(redis, redis_url)
    jid = await _queued_job(redis, graph, "run1")
    [claim] = await here._claim_all([(jid, None, None)])
    assert claim is not None
    await redis.delete(ARQ_IN_PROGRESS_PREFIX + jid)  # lapsed
    [theirs] = await there._claim_all([(jid, None, None)])
    assert theirs is not None and theirs.slots
    await here._hand_back(claim)
    assert await redis.zrange(KEYS.limit_running("queue:default"), 0, -1) == [jid.encode()]
    assert jid not in here._slots


async def test_claims_stand_when_the_check_for_a_job_woken_meanwhile_fails(
    redis: Any, redis_url: str
) -> None:
    graph, _ = await _notify_ok(redis)
    worker = await _limited_worker(redis, redis_url, ("queue:default", "1||"))
    jobs = [await _queued_job(redis, graph, f"run{i}") for i in (1, 2)]

    async def unreachable(*_: Any) -> list[str]:
        raise RedisConnectionError("connection lost")

    worker.gate.unheld = unreachable  # type: ignore[method-assign]
    claims = await worker._claim_all([(j, None, None) for j in jobs])
    assert claims[0] is not None and claims[1] is None  # the first runs, the second waits
    assert await redis.exists(ARQ_IN_PROGRESS_PREFIX + jobs[0])
    assert not await redis.exists(ARQ_IN_PROGRESS_PREFIX + jobs[1])


def test_the_heartbeat_renews_a_jobs_running_slots_by_the_servers_clock(
    redis_url: str,
) -> None:
    sync = sync_client_for(redis_url)
    try:
        running = KEYS.limit_running("queue:default")
        sync.zadd(running, {"job-1": 5})
        leases = KEYS.shard(0).leases  # as build_workers gives it
        heartbeat = Heartbeat(sync, leases, lease_s=3, heartbeat_s=1, arq_lease_s=3)
        heartbeat.hold(b"lease-1", None, None, job_id="job-1", slots=(running,))
        heartbeat.hold(b"lease-2", None, None, job_id="gone", slots=(running,))
        heartbeat._beat(list(heartbeat._held.items()))
        seconds, micros = sync.time()
        now_ms = seconds * 1000 + micros // 1000
        assert now_ms + 2_500 < sync.zscore(running, "job-1") <= now_ms + 3_000
        assert sync.zscore(running, "gone") is None  # released already: not brought back
        heartbeat.stop()
    finally:
        sync.close()


def _run_beside_run1(name: str) -> str:
    """A run id in run1's shard: ``name`` on one server; sharded, the first ``name-<n>``
    there."""
    if not KEYS.sharded:
        return name
    return next(
        run_id
        for run_id in (f"{name}-{n}" for n in itertools.count())
        if KEYS.shard_for(run_id).shard == SHARD1.shard
    )


async def test_a_claim_that_fails_on_bad_data_writes_nothing_and_spares_its_batch(
    redis: Any, redis_url: str
) -> None:
    """Three wake-ups popped together.

    * One job's run has a nodes key of the wrong type: the claim's reads fail, so the job is
      claimed again without them and reads the run itself, which fails the node with a
      report naming the error (the run does not wait forever).
    * Another job's try counter is not a count: its claim fails having written nothing (not
      in progress, no try counted) and the job moves a minute later in the queue, out of
      the way of polls, which read the oldest jobs first.
    * The third job runs."""
    graph, registry = await _notify_ok(redis)
    settings = WorkerSettings(shards=SHARDS, redis_url=redis_url, wake_fallback_s=30)
    # runs of run1's shard: the three wake-ups share its wake list, popped together
    broken, garbled_run = _run_beside_run1("broken"), _run_beside_run1("garbled")
    async with serving(settings, registry):
        await wait_for(lambda: _worker_idle(redis), message="worker idle")
        bad_ids = []  # queued once the worker waits for wake-ups: its first poll is done
        for run_id in (broken, garbled_run):
            bad = job_for(graph, "notify", run_id=run_id)
            bad_ids.append(KEYS.job_id(bad.run_id, "notify", 1, 1))
            job = encode_arq_job(bad, 0)
            await redis.psetex(ARQ_JOB_KEY_PREFIX + bad_ids[-1], 86_400_000, job)
            await redis.zadd(SHARD1.queue("default"), {bad_ids[-1]: 0})
        await redis.set(KEYS.run(broken).nodes, "not a hash")
        await redis.set("arq:retry:" + bad_ids[1], "garbage")
        good_id = await enqueue_like_the_dispatcher(redis, graph, "notify", "default")
        await redis.rpush(SHARD1.wake("default"), *bad_ids, good_id)
        reports = await wait_for_reports(redis, KEYS, count=2, timeout=5)
    by_run = {r.run_id: r for r in reports}
    assert by_run["run1"].status == "completed"
    error = by_run[broken].error
    assert error is not None and error.type == "WorkerError" and "WRONGTYPE" in error.message
    garbled = bad_ids[1]
    assert not await redis.exists(ARQ_IN_PROGRESS_PREFIX + garbled)
    assert await redis.zscore(SHARD1.queue("default"), garbled) > time.time() * 1000 + 50_000
    assert await redis.get("arq:retry:" + garbled) == b"garbage"


async def test_a_worker_busy_on_wake_ups_still_reads_its_queue_every_fallback(
    redis_url: str,
) -> None:
    """Wake-ups alone could keep a worker from ever reading its queue (a job whose wake-up
    was trimmed, or a retry put back with a delay, has none): once ``fallback_s`` has passed
    since its last read, the next wait is a read of the queue, whatever wake-ups wait."""
    settings = WorkerSettings(shards=SHARDS, redis_url=redis_url, wake_fallback_s=0.5)
    [worker] = build_workers(settings, HandlerRegistry())
    assert isinstance(worker, WakingWorker)
    worker._last_poll = time.monotonic() - 0.6
    assert await worker._wait_for_work() is None  # no wake-up popped: poll the queue now


async def test_a_failing_claim_planner_falls_back_to_a_plain_claim(redis_url: str) -> None:
    [worker] = build_workers(WorkerSettings(shards=SHARDS, redis_url=redis_url), HandlerRegistry())

    def broken(*_: Any) -> None:
        raise RuntimeError("planner bug")

    worker.planner = broken
    keys, args, plan = worker._claim_call(KEYS.job_id("run1", "notify", 1, 1), ("triage", 1))
    assert plan is None
    run1 = KEYS.run("run1")
    assert keys[5:] == [run1.meta, run1.nodes, SHARD1.leases, run1.outputs]  # no placeholder
    assert args[3:] == ["notify", "", "", "", ""]  # node, lease, expiry, woken, item field


async def test_a_polled_job_of_a_run_seen_is_planned_and_a_stale_wake_up_is_skipped(
    redis_url: str,
) -> None:
    """Read from the queue (a full worker polls), a job names no graph; if a wake-up named
    its run's graph before, the worker remembers it and plans the claim all the same. The
    wake-up of a job the worker claimed already (from the queue) is not claimed again."""
    [worker] = build_workers(WorkerSettings(shards=SHARDS, redis_url=redis_url), HandlerRegistry())
    planned: list[str] = []

    def planner(job_id: str, parts: Any, graph: tuple[str, int]) -> None:
        planned.append(f"{job_id}@{graph[0]}")

    worker.planner = planner
    triage, notify = KEYS.job_id("run1", "triage", 1, 1), KEYS.job_id("run1", "notify", 1, 1)
    other = KEYS.job_id("run1", "other", 1, 1)
    worker._claim_call(triage, ("triage", 1), 5)
    worker._claim_call(notify, None)  # polled: the run's graph is known
    worker._claim_call(KEYS.job_id("run2", "notify", 1, 1), None)  # a run never seen: plainly
    assert planned == [f"{triage}@triage", f"{notify}@triage"]

    asked: list[list[Any]] = []

    async def claim_all(wanted: list[Any]) -> list[None]:
        asked.append(wanted)
        return [None] * len(wanted)

    worker._claim_all = claim_all  # type: ignore[method-assign]
    worker._claimed_here[notify] = None
    await worker._start([(notify, ("triage", 1), 7), (other, ("triage", 1), 8)])
    await worker._start([(notify, None, None)])  # polled again: a retry
    assert asked == [[(other, ("triage", 1), 8)], [(notify, None, None)]]


async def test_a_wake_up_that_is_not_a_job_id_makes_the_worker_poll_its_queue(
    redis: Any, redis_url: str
) -> None:
    """An older dispatcher pushed "1": the worker cannot claim it, so it reads the queue."""
    graph, registry = await _notify_ok(redis)
    settings = WorkerSettings(shards=SHARDS, redis_url=redis_url, wake_fallback_s=30)
    async with serving(settings, registry):
        await wait_for(lambda: _worker_idle(redis), message="worker idle")
        await enqueue_like_the_dispatcher(redis, graph, "notify", "default")
        await redis.rpush(SHARD1.wake("default"), "1")
        [report] = await wait_for_reports(redis, KEYS, timeout=5)
    assert report.status == "completed"


async def test_a_wake_up_for_a_job_that_is_gone_starts_nothing_and_the_worker_goes_on(
    redis: Any, redis_url: str
) -> None:
    """Stale wake-ups (the job ran already, or another worker claimed it) are claimed in
    vain; the next real one still starts its job."""
    graph, registry = await _notify_ok(redis)
    settings = WorkerSettings(shards=SHARDS, redis_url=redis_url, wake_fallback_s=30)
    async with serving(settings, registry):
        await wait_for(lambda: _worker_idle(redis), message="worker idle")
        for run_id, node_id in (("nosuchrun", "notify"), ("bad id", "x")):
            stale = KEYS.job_id(run_id, node_id, 1, 1)  # as the dispatcher names its jobs
            await redis.rpush(KEYS.shard_for(run_id).wake("default"), stale)
        taken = ("nosuchrun", "bad id")
        await wait_for(lambda: _drained(redis, *taken), message="stale wake-ups taken")
        jid = await enqueue_like_the_dispatcher(redis, graph, "notify", "default")
        await redis.rpush(SHARD1.wake("default"), jid)
        [report] = await wait_for_reports(redis, KEYS, timeout=5)
    assert report.status == "completed"


async def test_a_lost_wake_up_only_delays_the_job_until_the_fallback_poll(
    redis: Any, redis_url: str
) -> None:
    graph, registry = await _notify_ok(redis)
    settings = WorkerSettings(shards=SHARDS, redis_url=redis_url, wake_fallback_s=0.3)
    async with serving(settings, registry):
        await wait_for(lambda: _worker_idle(redis), message="worker idle")
        await enqueue_like_the_dispatcher(redis, graph, "notify", "default")  # no wake-up
        [report] = await wait_for_reports(redis, KEYS, timeout=10)
    assert report.status == "completed"
    assert await redis.llen(SHARD1.wake("default")) == 0


async def _drained(redis: Any, *run_ids: str) -> bool:
    """The wake lists of the runs' shards (run1's unless told) are empty, the worker idle."""
    for wake in _wake_lists(*(run_ids or ("run1",))):
        if await redis.llen(wake):
            return False
    return await _worker_idle(redis)


async def _worker_idle(redis: Any) -> bool:
    """The worker is idle: blocked in BLMPOP on its wake-up list, or sharded on each
    shard's (a cluster blocks on keys of one slot only: one pop per shard)."""
    blocked = 0
    for clients in await _on_every_primary(redis, "client_list"):
        blocked += sum(c.get("cmd") in ("blmpop", "blpop") for c in clients)
    return blocked >= max(1, KEYS.shards)


async def _on_every_primary(redis: Any, command: str, *args: Any) -> list[Any]:
    """A server command's reply from the one server, or from each primary of a cluster
    (the cluster client sends such commands to one node unless told)."""
    if not CLUSTER:
        return [await getattr(redis, command)(*args)]
    replies = await getattr(redis, command)(*args, target_nodes=redis.PRIMARIES)
    # a dict, node -> reply; merged by the client for some commands (CONFIG RESETSTAT: all OK)
    return list(replies.values()) if isinstance(replies, dict) else [replies]


class _NoRedis:
    """A Redis client that must not be used: a job that has all it needs makes no call
    (an empty pipeline is made, and not sent)."""

    def pipeline(self, transaction: bool = True) -> _NoRedis:
        return self

    def __len__(self) -> int:
        return 0

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"unexpected Redis call: {name}")


async def test_a_map_items_claim_leases_it_and_reads_what_it_runs_on(
    redis: Any, redis_url: str
) -> None:
    """A map item's claim is planned like a node's: it writes the item's lease and reads the
    item's input and the records its inner node reads, so the item's handler starts right
    after the claim, with no other round trip."""
    graph = Graph(
        id="squares",
        nodes=[
            Node("start", type="start"),
            Node("conf", type="agent"),
            Node("numbers", type="agent"),
            Node(
                "each",
                type="map",
                timeout_s=30,
                config={
                    "items": "{{ numbers.output }}",
                    "node": {"type": "square", "config": {"factor": "{{ conf.output.factor }}"}},
                },
            ),
            Node("end", type="end"),
        ],
        edges=[
            Edge("start", "conf"),
            Edge("conf", "numbers"),
            Edge("numbers", "each"),
            Edge("each", "end"),
        ],
    )
    running = MapState(total=2, limit=2, tolerated=0, next=2, running={0: 1, 1: 1})
    rk = await setup_run(
        redis,
        KEYS,
        graph,
        nodes={
            "conf": completed(),
            "numbers": completed(),
            "each": NodeRecord(status=NodeStatus.RUNNING, visits=1, attempt=1, map=running),
        },
        outputs={("conf", 1): {"factor": 3}, ("numbers", 1): [5, 6]},
    )
    await redis.hset(rk.outputs, RunKeys.item_field("each", 1, 1, "in"), b"6")
    registry = HandlerRegistry()
    registry.register("square", lambda ctx: {"sq": ctx.item**2, "factor": ctx.config["factor"]})
    graphs = GraphCache()
    graphs.put(graph)
    heartbeat = Heartbeat(None, SHARD1.leases, lease_s=30, heartbeat_s=10, arq_lease_s=60)  # type: ignore[arg-type]
    [worker] = build_workers(WorkerSettings(shards=SHARDS, redis_url=redis_url), registry)
    assert isinstance(worker, WakingWorker)
    worker.planner = worker_app._planner(KEYS, registry, graphs, heartbeat)
    now_ms = int(time.time() * 1000)
    claims = {}
    for item in (0, 1):  # item 0's input is gone (the map ended meanwhile): read as missing
        payload = JobPayload(
            run_id="run1",
            graph_id=graph.id,
            graph_version=graph.version,
            node_id="each",
            visit=1,
            attempt=1,
            item=item,
            type="square",
            timeout_s=30,  # the map node's, as the dispatcher enqueues an item
        )
        jid = KEYS.job_id("run1", "each", 1, 1, item)
        await redis.psetex(ARQ_JOB_KEY_PREFIX + jid, 60_000, encode_arq_job(payload, now_ms))
        await redis.zadd(SHARD1.queue("default"), {jid: now_ms})
        keys, args, plan = worker._claim_call(jid, (graph.id, graph.version))
        assert plan is not None and plan.reads == ["conf"]
        assert plan.item_field == RunKeys.item_field("each", 1, item, "in")
        # the item's own lease (the LeaseExpired the dispatcher reads back), with the map
        # node's timeout: the one the job keeps (relaygraph_run_node compares the timeouts)
        assert plan.timeout_s == payload.timeout_s
        lease = LeaseExpired.model_validate_json(plan.lease)
        assert (lease.node_id, lease.visit, lease.attempt, lease.item) == ("each", 1, 1, item)
        assert lease.deadline is not None and 0 < lease.deadline - time.time() <= 30
        claim = waking._claim(
            jid, await redis.eval(waking._CLAIM, len(keys), *keys, *args), loaded=True, plan=plan
        )
        assert claim is not None and claim.leased and claim.item_read
        assert await redis.zscore(SHARD1.leases, plan.lease) is not None
        claims[item] = (payload, claim)
    assert claims[0][1].item is None and claims[1][1].item == b"6"

    reports = {}
    for item, (payload, claim) in claims.items():
        done = await execute_node(
            _NoRedis(),  # type: ignore[arg-type]
            KEYS,
            registry,
            payload,
            graphs,
            WorkerSettings(shards=SHARDS, redis_url=redis_url),
            preloaded=worker_app.preloaded_by(claim),
        )
        assert done is not None
        reports[item] = done[0]
    assert reports[1].status == "completed", reports[1]
    assert reports[1].item == 1 and reports[1].output == {"sq": 36, "factor": 3}
    gone = reports[0]  # its input is gone: it fails for good, as when it reads for itself
    assert gone.status == "failed" and gone.error is not None and not gone.error.retryable
    assert "item 0 of map 'each' visit 1 is gone" in gone.error.message
