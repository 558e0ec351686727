"""The worker's queue layer: arq workers that run ``run_node`` (the only module that knows arq).

The dispatcher writes jobs in arq's layout itself (``arq:job:<id>`` plus the id in the zset
``Keys.queue(name)``); this module runs one ``arq.Worker`` per queue to execute them.

arq choices, and why:

* ``keep_result=0``: results live in relaygraph's store, so arq keeps none (no ``arq:result:*``
  keys to expire, no exception objects to serialize). arq's duplicate-id check on
  ``enqueue_job`` is not used: the dispatcher enqueues in its own script, skipping an id whose
  job key exists, and a replayed job that runs anyway is fenced off by ``run_node``.
* ``max_tries``: arq re-runs a job whose worker died (its in-progress key expires) or was
  stopped (cancelled jobs go back to the queue). Those re-runs keep a handler at-least-once,
  so arq may try a job ``DEFAULT_MAX_DELIVERIES + 1`` times; the last delivery reports
  ``WorkerLost`` instead of running the handler, so a job arq would drop still ends in a
  report. Handler failures are never arq retries: they are reported, and the dispatcher
  applies the node's retry policy with a new attempt (a new job).
* Leases: arq marks a running job with an in-progress key whose TTL is normally the job
  timeout. Node timeouts are ours (``timeout_s``), so arq's job timeout is effectively off and
  the in-progress key is instead a lease of ``job_lease_s`` that the worker renews while the
  handler runs: a crashed worker's jobs run elsewhere after one lease, however long handlers
  may legitimately take.
* Serialization: orjson both ways (``encode_arq_job`` / ``decode_arq_job``), never pickle.
* ``allow_abort_jobs=True``: the dispatcher aborts jobs of cancelled nodes through arq's abort
  set; the handler's task is cancelled and nothing is reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import orjson
import redis
from arq.connections import RedisSettings
from arq.constants import in_progress_key_prefix
from arq.typing import StartupShutdown
from arq.worker import Retry, Worker, func
from redis.asyncio import Redis
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.exceptions import RedisError

from graph_core.errors import MessageError, RelaygraphError
from graph_core.keys import Keys, RunKeys
from graph_core.messages import (
    ARQ_FUNCTION,
    JobPayload,
    decode_arq_job,
    encode_lease,
    job_item,
    parse_job_id,
    parse_job_payload,
)
from graph_core.redis_url import RedisUrlError, parse_redis_url
from worker.heartbeat import Heartbeat, sync_client
from worker.metrics import MetricsServer, WorkerMetrics
from worker.preload import GraphCache
from worker.registry import HandlerRegistry, load_registry
from worker.runner import (
    DEFAULT_MAX_DELIVERIES,
    PipelineHook,
    Preloaded,
    execute_node,
    job_plan,
    redis_unavailable,
)
from worker.settings import WorkerSettings
from worker.waking import Claim, ClaimPlan, ClaimPlanner, Finish, WakingWorker

if TYPE_CHECKING:  # worker.tracing imports OpenTelemetry: only with tracing on
    from worker.tracing import NodeTracing

__all__ = [
    "ARQ_MAX_TRIES",
    "WorkerConfigError",
    "build_workers",
    "node_tracing",
    "redis_settings_from_url",
    "relaygraph_run_node",
    "serve",
]

logger = logging.getLogger("relaygraph.worker")

ARQ_MAX_TRIES: Final = DEFAULT_MAX_DELIVERIES + 1
_ARQ_JOB_TIMEOUT_S: Final = 30 * 86_400  # arq's own timeout, effectively off (see above)
_STATE: Final = "relaygraph"  # key of the worker state in arq's ctx
_RETRY_BACKOFF_MAX_S: Final = 30.0  # the longest wait before a job Redis failed runs again


class WorkerConfigError(RelaygraphError):
    """The worker cannot start with these settings."""


# --- the job function ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _WorkerState:
    redis: Redis
    keys: Keys
    registry: HandlerRegistry
    graphs: GraphCache
    settings: WorkerSettings
    worker_id: str
    heartbeat: Heartbeat
    metrics: WorkerMetrics | None = None
    tracing: NodeTracing | None = None

    def lease_member(self, job: JobPayload) -> tuple[bytes, float | None]:
        """The attempt's lease (the ``LeaseExpired`` message the dispatcher acts on if it
        lapses) and its deadline (``timeout_s`` from now)."""
        return _lease_member(
            job.run_id, job.node_id, job.visit, job.attempt, job.timeout_s, job.item
        )


def _lease_member(
    run_id: str,
    node_id: str,
    visit: int,
    attempt: int,
    timeout_s: float | None,
    item: int | None = None,
) -> tuple[bytes, float | None]:
    deadline = time.time() + timeout_s if timeout_s else None
    return encode_lease(run_id, node_id, visit, attempt, deadline, item), deadline


def _planner(
    keys: Keys, registry: HandlerRegistry, graphs: GraphCache, heartbeat: Heartbeat
) -> ClaimPlanner:
    """Plans a claim for a job whose graph is cached: its lease and the reads its handler
    will need (``plan_reads``), so the claim script does them and the handler starts after
    one round trip."""

    def plan(
        job_id: str, parts: tuple[str, str, int, int], graph_ref: tuple[str, int]
    ) -> ClaimPlan | None:
        graph = graphs.get(*graph_ref)
        run_id, node_id, visit, attempt = parts
        if graph is None or not graph.has_node(node_id):
            return None
        node = graph.node(node_id)
        item = job_item(job_id)
        # a map item: leased with the map node's timeout, reading its input and what the
        # map's inner node reads (but the list the item is one of)
        member, deadline = _lease_member(run_id, node_id, visit, attempt, node.timeout_s, item)
        return ClaimPlan(
            lease_key=keys.shard_for(run_id).leases,
            lease=member,
            lease_expiry_ms=int(heartbeat.expiry(deadline) * 1000),
            deadline=deadline,
            timeout_s=node.timeout_s,
            outputs_key=keys.run(run_id).outputs,
            reads=job_plan(graph, node_id, item is not None, registry, graphs).nodes,
            item_field=(RunKeys.item_field(node_id, visit, item, "in") if item is not None else ""),
        )

    return plan


def preloaded_by(claim: Claim | None) -> Preloaded | None:
    """What the claim script read for the job (None: nothing; the job reads for itself)."""
    if claim is None or not claim.loaded:
        return None
    latest = None
    if claim.plan is not None and claim.latest is not None:
        latest = (claim.plan.reads, claim.latest)
    return Preloaded(claim.run, claim.node, latest, claim.item_read, claim.item)


async def relaygraph_run_node(ctx: dict[str, Any], payload: Any) -> Finish:
    """The job function (registered as ``ARQ_FUNCTION``, run by ``WakingWorker``): parse the
    payload, hold the attempt's lease while the node runs, and return the report and the
    lease for the worker to write and drop with the job's clean-up.

    The lease is written before the handler can start: by the claim when it was planned
    (``ClaimPlan``), else in the round trip of reads before the handler. The heartbeat
    thread renews it meanwhile; it is removed with the report, or here if the job ends any
    other way (a Redis error, the worker stopping)."""
    state: _WorkerState = ctx[_STATE]
    job_id: str | None = ctx.get("job_id")
    claim: Claim | None = ctx.get("claim")
    planned = claim.plan if claim is not None and claim.leased else None
    parts = parse_job_id(job_id) if job_id else None
    shard = state.keys.shard_for(parts[0]) if parts else state.keys.shard(0)
    leases = shard.leases  # the job's run's (its id names it; a payload could lie)
    try:
        job = parse_job_payload(payload)
    except MessageError as e:
        logger.error("dropping job %s: %s", job_id, e)
        return Finish(lease_key=leases, leases=(planned.lease,) if planned else ())
    heartbeat = state.heartbeat
    before_start: PipelineHook | None = None
    held: tuple[bytes, ...]
    if planned is not None and planned.timeout_s == job.timeout_s:
        member, deadline = planned.lease, planned.deadline
        held = (member,)
    else:
        member, deadline = state.lease_member(job)
        expiry_ms = int(heartbeat.expiry(deadline) * 1000)
        # planned with another timeout (not expected: both come from the graph): replace it
        held = (member, planned.lease) if planned is not None else (member,)

        def before_start(pipe: Any) -> None:
            pipe.zadd(leases, {member: expiry_ms})

    heartbeat.hold(
        member,
        in_progress_key_prefix + job_id if job_id else None,
        deadline,
        leases_key=leases,
        job_id=job_id or "",
        slots=claim.slots if claim is not None else (),
    )
    preloaded = preloaded_by(claim)
    try:
        done = await execute_node(
            state.redis,
            state.keys,
            state.registry,
            job,
            state.graphs,
            state.settings,
            worker_id=state.worker_id,
            delivery=int(ctx.get("job_try") or 1),
            preloaded=preloaded,
            before_start=before_start,
            metrics=state.metrics,
            tracing=state.tracing,
        )
    except BaseException as e:
        heartbeat.release(member)
        delivery = int(ctx.get("job_try") or 1)
        if redis_unavailable(e) and delivery >= ARQ_MAX_TRIES:
            # Redis failed the job's reads on the last delivery arq makes: the job ends with
            # its lease lapsed (written if the reads' pipeline never wrote it), so that the
            # dispatcher runs the attempt again, as for a lost worker.
            logger.error("job %s: Redis unavailable on its last delivery: %s", job_id, e)
            return Finish(lease_key=leases, lapse=held)
        with contextlib.suppress(RedisError):  # else the lease lapses
            await state.redis.zrem(leases, *held)
        if redis_unavailable(e):
            # Reading the run failed, not the job: run it again, backing off (1, 2, 4... s).
            defer = min(2.0 ** (delivery - 1), _RETRY_BACKOFF_MAX_S)
            logger.warning("job %s hit a Redis error, retrying in %.0fs: %s", job_id, defer, e)
            raise Retry(defer=defer) from e
        raise
    heartbeat.release(member)
    message = done[1] if done is not None else None
    return Finish(shard.inbox, message, leases, held)


def _serialize(data: dict[str, Any]) -> bytes:
    """arq's job serializer: orjson; anything else (an exception arq wants to record as a
    result) becomes its repr."""
    return orjson.dumps(data, default=repr, option=orjson.OPT_NON_STR_KEYS)


# --- building and running workers ---------------------------------------------------------


def cluster_client(url: str, *, sync: bool = False) -> Any:
    """For a ``redis+cluster://`` URL, a cluster client (redis-py's ``RedisCluster``,
    asyncio unless ``sync``), which arq cannot make; None for any other URL. The
    dispatcher's twin is ``dispatcher.connect.connect``."""
    try:
        t = parse_redis_url(url)
    except RedisUrlError as e:
        raise WorkerConfigError(str(e)) from e
    if not t.is_cluster:
        return None
    # connect timeouts as arq's pool and the heartbeat's client have (the heartbeat also
    # a read timeout: a blocking pop is never sent on it)
    common: dict[str, Any] = {
        "username": t.username,
        "password": t.password,
        "socket_connect_timeout": 5,
    }
    if t.tls:
        common.update(ssl=True, **t.ssl)
    if sync:
        common["socket_timeout"] = 5
        make_sync: Any = redis.cluster.ClusterNode
        return redis.RedisCluster(startup_nodes=[make_sync(h, p) for h, p in t.nodes], **common)
    client: Any = AsyncRedisCluster(startup_nodes=[ClusterNode(h, p) for h, p in t.nodes], **common)
    client.relaygraph_seeds = t.nodes  # for graph_core.resp.restore_seeds after a failover
    return client


def redis_settings_from_url(url: str) -> RedisSettings:
    """arq ``RedisSettings`` from a URL (the forms ``graph_core.redis_url`` accepts:
    ``redis://``, ``rediss://`` with TLS options, ``unix://`` and ``redis+sentinel://``)."""
    try:
        t = parse_redis_url(url)
    except RedisUrlError as e:
        raise WorkerConfigError(str(e)) from e
    common: dict[str, Any] = {
        "database": t.db,
        "username": t.username,
        "password": t.password,
        "ssl": t.tls,
        **t.ssl,
    }
    if t.is_sentinel:
        return RedisSettings(
            host=list(t.sentinels), sentinel=True, sentinel_master=t.master or "mymaster", **common
        )
    if t.unix_path is not None:
        return RedisSettings(unix_socket_path=t.unix_path, **common)
    return RedisSettings(host=t.host, port=t.port, **common)


def _worker_id(queue: str) -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{queue}"


def node_tracing(settings: WorkerSettings) -> NodeTracing | None:
    """The spans of node attempts for these settings: None unless ``tracing`` is ``otel``
    (only then is OpenTelemetry imported). ``WorkerConfigError`` if it is not installed."""
    if settings.tracing != "otel":
        return None
    try:
        from worker.tracing import NodeTracing
    except ImportError as e:
        raise WorkerConfigError(
            f"tracing 'otel' needs the OpenTelemetry API and SDK (pip install "
            f"'relaygraph[otel]'): {e}"
        ) from e
    return NodeTracing()


def build_workers(
    settings: WorkerSettings,
    registry: HandlerRegistry,
    *,
    burst: bool = False,
    handle_signals: bool = False,
    metrics: WorkerMetrics | None = None,
) -> list[Worker]:
    """One arq ``Worker`` per queue in ``settings.queues``; call inside a running loop.
    ``metrics``: where their jobs are counted (None: nowhere).

    ``handle_signals`` should stay False when several workers share a loop (each would
    replace the others' handlers); ``serve`` handles SIGTERM/SIGINT for all of them.
    ``burst=True`` makes each worker stop once its queue is empty (tests, one-off drains).
    """
    if settings.redis_url is None:
        raise WorkerConfigError("the worker needs redis_url (RELAYGRAPH_REDIS_URL)")
    redis_settings = redis_settings_from_url(settings.redis_url)
    keys = settings.keys
    graphs = GraphCache()  # shared by the queues of this process
    tracing = node_tracing(settings)
    heartbeat = Heartbeat(
        cluster_client(settings.redis_url, sync=True) or sync_client(redis_settings),
        keys.shard(0).leases,  # each lease names its own: its run's shard's
        lease_s=settings.lease_s,
        heartbeat_s=settings.heartbeat_s,
        arq_lease_s=settings.job_lease_s,
    )
    workers: list[Worker] = []
    for name in settings.queues:
        worker = WakingWorker(
            keys=keys,
            queue=name,
            planner=_planner(keys, registry, graphs, heartbeat),
            fallback_s=settings.wake_fallback_s,
            functions=[
                func(
                    relaygraph_run_node,
                    name=ARQ_FUNCTION,
                    max_tries=ARQ_MAX_TRIES,
                    timeout=_ARQ_JOB_TIMEOUT_S,
                    keep_result=0,
                )
            ],
            queue_name=keys.shard(0).queue(name),  # arq's (its health check is named after it)
            redis_settings=redis_settings,
            redis_pool=cluster_client(settings.redis_url),  # None: arq makes its own
            burst=burst,
            on_startup=_startup(
                keys, registry, graphs, settings, _worker_id(name), heartbeat, metrics, tracing
            ),
            on_shutdown=_shutdown_hook(heartbeat),
            handle_signals=handle_signals,
            max_jobs=settings.concurrency,
            job_timeout=_ARQ_JOB_TIMEOUT_S,
            keep_result=0,
            poll_delay=settings.poll_delay,
            max_tries=ARQ_MAX_TRIES,
            allow_abort_jobs=True,
            job_serializer=_serialize,
            job_deserializer=decode_arq_job,
        )
        # arq sizes the in-progress key from the job timeout; ours is a renewed lease.
        worker.in_progress_timeout_s = settings.job_lease_s
        workers.append(worker)
    return workers


def _startup(
    keys: Keys,
    registry: HandlerRegistry,
    graphs: GraphCache,
    settings: WorkerSettings,
    worker_id: str,
    heartbeat: Heartbeat,
    metrics: WorkerMetrics | None,
    tracing: NodeTracing | None,
) -> StartupShutdown:
    async def on_startup(ctx: dict[str, Any]) -> None:
        # arq's own pool (ctx["redis"]) serves the store too: one connection setup, same
        # URL handling (TLS, sentinel) for jobs and state.
        ctx[_STATE] = _WorkerState(
            ctx["redis"], keys, registry, graphs, settings, worker_id, heartbeat, metrics, tracing
        )
        logger.info(
            "worker %s serving %s with handlers for %s",
            worker_id,
            keys.prefix,
            ", ".join(registry.types()),
        )

    return on_startup


def _shutdown_hook(heartbeat: Heartbeat) -> StartupShutdown:
    async def on_shutdown(ctx: dict[str, Any]) -> None:
        await asyncio.to_thread(heartbeat.stop)

    return on_shutdown


async def serve(
    settings: WorkerSettings,
    registry: HandlerRegistry | None = None,
    *,
    grace_s: float = 10.0,
    metrics: WorkerMetrics | None = None,
) -> None:
    """Run a worker per queue until cancelled, SIGTERM or SIGINT, then stop gracefully:
    stop taking jobs, give running ones ``grace_s`` to finish, cancel the rest (arq puts them
    back on their queue) and close the connections.

    ``registry`` defaults to ``load_registry(settings.handlers)``, or the built-ins alone.
    If a worker fails (e.g. Redis unreachable at start), the others stop and its error is
    raised.

    Jobs are counted into ``metrics``; with ``settings.metrics_port`` (and counters of their
    own unless ``metrics`` is given) they are served on that port meanwhile. A port that
    cannot be listened on raises ``MetricsPortError`` before any job is taken.
    """
    if registry is None:
        registry = load_registry(settings.handlers) if settings.handlers else HandlerRegistry()
    server = None
    if settings.metrics_port is not None:
        metrics = metrics if metrics is not None else WorkerMetrics()
        server = MetricsServer(metrics.registry, settings.metrics_port)
        logger.info("serving metrics on port %d", settings.metrics_port)
    try:
        await _serve_workers(build_workers(settings, registry, metrics=metrics), grace_s)
    finally:
        if server is not None:
            server.close()


async def _serve_workers(workers: list[Worker], grace_s: float) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = _install_signals(loop, stop)
    runs = [asyncio.create_task(w.async_run(), name=f"arq:{w.queue_name}") for w in workers]
    stopper = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait([*runs, stopper], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
        for sig in signals:
            loop.remove_signal_handler(sig)
        await _shutdown(workers, runs, grace_s)
    for task in runs:  # a worker that ended on its own failed
        error = task.exception() if task.done() and not task.cancelled() else None
        if error is not None:
            raise error


def _install_signals(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> list[int]:
    installed: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError, ValueError):
            continue  # not the main thread, or no signal support: cancellation still works
        installed.append(sig)
    return installed


async def _shutdown(workers: list[Worker], runs: list[asyncio.Task[None]], grace_s: float) -> None:
    for w in workers:
        w.allow_pick_jobs = False
    running = [t for w in workers for t in w.tasks.values() if not t.done()]
    if running:
        logger.info("stopping: waiting up to %.1fs for %d running job(s)", grace_s, len(running))
        await asyncio.wait(running, timeout=grace_s)
    # close() cancels what still runs (arq re-queues it) and closes each worker's pool.
    await asyncio.gather(*(w.close() for w in workers), return_exceptions=True)
    for task in runs:
        task.cancel()
    await asyncio.gather(*runs, return_exceptions=True)
