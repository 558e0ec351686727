"""``WorkflowClient``: register graphs, submit runs, follow them, answer approvals, cancel.

The client talks to Redis only; a dispatcher (any number of them, anywhere) does the work.
Writes go through the dispatchers' inbox stream, so they are durable even while no
dispatcher runs. ``SyncWorkflowClient`` (``dispatcher.sync_client``) wraps it for blocking code.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Collection
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import orjson
from pydantic import BaseModel
from redis.asyncio import Redis

from dispatcher.changes import new_stamp
from dispatcher.connect import connect, is_cluster_client
from dispatcher.errors import (
    InputError,
    NodeNotWaiting,
    RunExists,
    RunNotFound,
    RunStateError,
    WaitTimeout,
)
from dispatcher.store import DEFAULT_RETENTION_S, GraphNotFound, RunStore
from dispatcher.subscription import EventStream
from dispatcher.views import (
    RunSummary,
    RunView,
    child_waits_for,
    load_run_view,
    load_summaries,
)
from graph_core import clock
from graph_core.errors import GraphValidationError, Problem, RelaygraphError
from graph_core.events import (
    ApprovalReceived,
    CancelRequested,
    PauseRequested,
    RerunRequested,
    ResumeRequested,
    RetryRequested,
)
from graph_core.history import HistoryStep, history_steps, output_visits
from graph_core.keys import DEFAULT_PREFIX, Keys, check_run_id
from graph_core.limits import Limit, LimitError, check, parse_rate, parse_scope
from graph_core.messages import (
    DEFAULT_MAX_MESSAGE_BYTES,
    MAX_PRIORITY,
    MAX_TRACEPARENT,
    MAX_TRACESTATE,
    SubmitRequest,
    dumps,
    encode_inbox,
)
from graph_core.model import Graph
from graph_core.paths import MISSING
from graph_core.redis_url import CLUSTER_NEEDS_SHARDS
from graph_core.retries import RERUNNABLE
from graph_core.settings import BaseSettings
from graph_core.state import RunRecord
from graph_core.status import TERMINAL_RUN, RunStatus
from graph_core.triggers import next_fire, triggers_of

__all__ = [
    "GraphSource",
    "InputError",
    "NodeNotWaiting",
    "RunExists",
    "RunNotFound",
    "RunStateError",
    "WaitTimeout",
    "WorkflowClient",
    "load_graph",
]

GraphSource = Graph | dict[str, Any] | str | os.PathLike[str]
POLL_INTERVAL_S = 1.0
PAUSABLE = frozenset(
    {RunStatus.PENDING, RunStatus.RUNNING, RunStatus.WAITING}
)  # wait(): re-read the run this often even without events

# Submit atomically: claim the idempotency key, write the pending run, index it, enqueue it.
# Race site: concurrent submitters with one key; SET NX inside the script picks one run id,
# and the losers get that id back without writing anything.
# KEYS: 1 idempotency key, 2 run meta, 3 runs index, 4 pending index, 5 inbox, 6 graph's runs
# ARGV: 1 run id, 2 run record JSON, 3 score (ms), 4 inbox message, 5 "1" if keyed, 6 key TTL (s),
#       7 the run's first stamp (see dispatcher/changes.py, new_stamp)
_SUBMIT = """
if ARGV[5] == '1' then
  local holder = redis.call('GET', KEYS[1])
  if holder then return {0, holder} end
end
if redis.call('EXISTS', KEYS[2]) == 1 then return {-1, ARGV[1]} end
if ARGV[5] == '1' then redis.call('SET', KEYS[1], ARGV[1], 'EX', tonumber(ARGV[6])) end
redis.call('HSET', KEYS[2], 'run', ARGV[2], 'rev', 0, 'stamp', ARGV[7])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[6], ARGV[3], ARGV[1])
redis.call('XADD', KEYS[5], '*', 'm', ARGV[4])
return {1, ARGV[1]}
"""


def load_graph(source: GraphSource) -> Graph:
    """A validated ``Graph`` from a ``Graph``, a graph dict, or a JSON file path.

    Raises ``GraphValidationError`` listing every problem (a file that cannot be read is one).
    """
    if isinstance(source, Graph):
        return _storable(source.validate_graph())
    if isinstance(source, dict):
        return _storable(Graph.from_dict(source))
    path = Path(source)
    try:
        raw = path.read_bytes()
    except OSError as e:
        reason = e.strerror or str(e)
        raise GraphValidationError([Problem("unreadable", str(path), reason)]) from e
    return _storable(Graph.from_json(raw))


def _storable(graph: Graph) -> Graph:
    """``graph``, if its document can be stored as JSON (orjson refuses integers past 64
    bits, which Python's JSON parser reads): else a validation problem naming it."""
    try:
        dumps(graph.to_dict())
    except TypeError as e:
        problem = Problem("bad_value", "graph", f"the graph cannot be stored as JSON: {e}")
        raise GraphValidationError([problem]) from e
    return graph


class WorkflowClient:
    """Async client for one key prefix. ``async with WorkflowClient.from_url(url) as c: ...``"""

    def __init__(
        self,
        redis: Redis,
        *,
        prefix: str = DEFAULT_PREFIX,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        retention_s: int = DEFAULT_RETENTION_S,
        owns_redis: bool = False,
        shards: int = 0,
    ) -> None:
        """``shards``: the deployment's key layout (0: one server; docs/cluster-plan.md)."""
        # redis-py 5 annotates async results as ``Awaitable[T] | T``; typed as Any here.
        self.redis: Any = redis
        self.keys = Keys(prefix, shards)
        self._layout_checked = False
        self.max_message_bytes = max_message_bytes
        self.store = RunStore(redis, self.keys, retention_s=retention_s)
        self._owns_redis = owns_redis
        self._submit = redis.register_script(_SUBMIT)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        retention_s: int = DEFAULT_RETENTION_S,
        shards: int = 0,
    ) -> WorkflowClient:
        """A client with its own connection pool (closed by ``aclose``)."""
        redis = connect(url)
        return cls(
            redis,
            prefix=prefix,
            max_message_bytes=max_message_bytes,
            retention_s=retention_s,
            owns_redis=True,
            shards=shards,
        )

    @classmethod
    def from_settings(cls, settings: BaseSettings) -> WorkflowClient:
        if settings.redis_url is None:
            raise RelaygraphError("no Redis URL: pass --redis or set RELAYGRAPH_REDIS_URL")
        retention = getattr(settings, "retention_s", DEFAULT_RETENTION_S)
        return cls.from_url(
            settings.redis_url,
            prefix=settings.prefix,
            shards=settings.shards,
            max_message_bytes=settings.max_message_bytes,
            retention_s=retention,
        )

    async def aclose(self) -> None:
        if self._owns_redis:
            await self.redis.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # --- graphs -------------------------------------------------------------------------

    async def register_graph(self, graph: GraphSource) -> int:
        """Validate and store a graph; return its version. Re-registering the same content
        is a no-op; other content under an existing version is an error."""
        return await self.store.register_graph(load_graph(graph))

    async def get_graph(self, graph_id: str, version: int | None = None) -> Graph:
        """A registered graph: ``version``, or the latest. ``GraphNotFound`` if there is none."""
        if version is None:
            version = await self.store.latest_version(graph_id)
            if version is None:
                raise GraphNotFound(graph_id, None)
        return await self.store.graph(graph_id, version)

    # --- runs ---------------------------------------------------------------------------

    async def submit(
        self,
        graph_id: str,
        input: Any = None,
        *,
        idempotency_key: str | None = None,
        version: int | None = None,
        run_id: str | None = None,
        traceparent: str | None = None,
        tracestate: str | None = None,
        priority: int = 0,
    ) -> str:
        """Start a run of a registered graph (latest version unless ``version``); return its id.

        ``priority`` (0, the default and lowest, to 100): among the ready jobs of a queue,
        workers take those of higher-priority runs first (a run's child runs inherit it).

        With ``idempotency_key``, every submit with the same key returns the first run's id
        and starts nothing else (while the key is retained).

        ``traceparent`` and ``tracestate``: the caller's W3C trace context, so that a
        dispatcher that traces runs makes the run's span a child of the caller's span
        (docs/observability.md, "Tracing"); e.g. from ``opentelemetry.propagate.inject(d)``.
        """
        if version is None:
            version = await self.store.latest_version(graph_id)
            if version is None:
                raise GraphNotFound(graph_id, None)
        await self.store.graph(graph_id, version)  # raises GraphNotFound
        if idempotency_key is not None and not 1 <= len(idempotency_key) <= 256:
            raise InputError("idempotency key", "must be 1 to 256 characters")
        run_id = check_run_id(run_id) if run_id is not None else self._new_run_id(idempotency_key)
        await self.check_layout()
        if traceparent is not None and len(traceparent) > MAX_TRACEPARENT:
            raise InputError("traceparent", f"must be at most {MAX_TRACEPARENT} characters")
        if tracestate is not None and len(tracestate) > MAX_TRACESTATE:
            raise InputError("tracestate", f"must be at most {MAX_TRACESTATE} characters")
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise InputError("priority", f"must be a whole number, got {priority!r}")
        if not 0 <= priority <= MAX_PRIORITY:
            raise InputError("priority", f"must be from 0 to {MAX_PRIORITY}, got {priority}")
        payload = _json_value("input", input)
        request = SubmitRequest(
            graph_id=graph_id,
            graph_version=version,
            input=payload,
            run_id=run_id,
            idempotency_key=idempotency_key,
            traceparent=traceparent,
            tracestate=tracestate,
            priority=priority,
        )
        message = self._message("input", request)
        now = clock.now()
        record = RunRecord(
            run_id=run_id,
            graph_id=graph_id,
            graph_version=version,
            status=RunStatus.PENDING,
            input=payload,
            created_at=now,
            updated_at=now,
            idempotency_key=idempotency_key,
            priority=priority,
        )
        keyed = idempotency_key is not None
        submit_keys = self._submit_keys(run_id, graph_id, idempotency_key)
        apart, won, other = await self._claim_apart(submit_keys[0], idempotency_key, run_id)
        if other:
            return other  # the key names another run: a duplicate
        if apart:
            keyed, submit_keys[0] = False, submit_keys[1]
        outcome, winner = await self._submit(
            keys=submit_keys,
            args=[
                run_id,
                record.dump(),
                int(now * 1000),
                message,
                "1" if keyed else "0",
                self.store.retention_s,
                new_stamp(),
            ],
        )
        if int(outcome) == -1:
            if apart and await self._same_submission(apart, won, idempotency_key, run_id):
                return run_id
            raise RunExists(run_id)
        return winner.decode() if isinstance(winner, bytes) else str(winner)

    async def get_run(self, run_id: str) -> RunView | None:
        """The run's current view, or None if there is no such run."""
        return await load_run_view(self.store, check_run_id(run_id))

    async def wait(self, run_id: str, timeout: float | None = None) -> RunView:
        """Wait until the run is completed, failed or cancelled; return its final view.

        Raises ``WaitTimeout`` (a ``TimeoutError``) after ``timeout`` seconds and
        ``RunNotFound`` if the run does not exist.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        async with self.subscribe(run_id) as stream:  # subscribe first: no event slips by
            while True:
                run = await self.store.get_run(check_run_id(run_id))
                if run is None:
                    raise RunNotFound(run_id)
                if run.status in TERMINAL_RUN:
                    view = await self.get_run(run_id)
                    if view is None:  # expired in between: vanishingly unlikely
                        raise RunNotFound(run_id)
                    return view
                pause = POLL_INTERVAL_S
                if deadline is not None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise WaitTimeout(run_id, run.status.value, timeout or 0.0)
                    pause = min(pause, remaining)
                await _until_run_event(stream, pause)

    async def approve(
        self,
        run_id: str,
        node_id: str,
        data: dict[str, Any] | None = None,
        *,
        actor: str | None = None,
        token: str | None = None,
        durable: bool = True,
    ) -> None:
        """Approve a waiting node. See ``decide``."""
        await self.decide(
            run_id, node_id, "approve", data, actor=actor, token=token, durable=durable
        )

    async def reject(
        self,
        run_id: str,
        node_id: str,
        data: dict[str, Any] | None = None,
        *,
        actor: str | None = None,
        token: str | None = None,
        durable: bool = True,
    ) -> None:
        """Reject a waiting node. See ``decide``."""
        await self.decide(
            run_id, node_id, "reject", data, actor=actor, token=token, durable=durable
        )

    async def decide(
        self,
        run_id: str,
        node_id: str,
        decision: Literal["approve", "reject"],
        data: dict[str, Any] | None = None,
        *,
        actor: str | None = None,
        token: str | None = None,
        durable: bool = True,
        comment: str | None = None,
    ) -> None:
        """Send an approval decision (``comment``: the decider's words, kept in the node's
        output and the history). Without ``token`` the node's current wait token is
        used (``NodeNotWaiting`` if it has none). ``durable`` sends it through the inbox
        stream (kept until a dispatcher reads it); otherwise it is published on the
        approvals channel, which only dispatchers listening right now receive.

        The outcome (accepted, or ignored as late / duplicate / wrong token) shows up in the
        run's status and events, not here.
        """
        rk = self.keys.run(check_run_id(run_id))
        raw = await self.redis.hget(rk.waits, node_id)
        if raw is None:  # perhaps in a child run (a subgraph's, a map item's): decide there
            run_id, token = await self._child_wait(run_id, node_id, token)
        elif token is None:
            token = raw.decode()
        if data is not None and not isinstance(data, dict):
            raise InputError("approval data", f"must be a JSON object, got {type(data).__name__}")
        approval = ApprovalReceived(
            run_id=run_id,
            node_id=node_id,
            decision=decision,
            data=_json_value("approval data", data or {}),
            actor=actor,
            token=token,
            comment=comment,
        )
        message = self._message("approval data", approval)
        if durable:
            await self._to_inbox(run_id, message)
        else:
            # a cluster client has no publish(): the command reaches every node all the same
            await self.redis.execute_command("PUBLISH", self.keys.approvals_channel, message)

    async def _claim_apart(
        self, key: str, idempotency_key: str | None, run_id: str
    ) -> tuple[str, bool, str]:
        """Sharded, with a run id of the caller's in another shard than its submission
        key's, the key is claimed apart, before the submit (a crash right after leaves it
        naming no run until it expires; a run id left to the client is put in the key's
        shard instead, and the submit script claims it). (the key claimed apart or '',
        whether this call won it, the other run it names or '')."""
        if (
            idempotency_key is None
            or not self.keys.sharded
            or self.keys.idempotency_shard(idempotency_key) is self.keys.shard_for(run_id)
        ):
            return "", False, ""
        won = bool(await self.redis.set(key, run_id, nx=True, ex=self.store.retention_s))
        existing = "" if won else (await self.redis.get(key) or b"").decode()
        return key, won, existing if existing != run_id else ""

    async def _same_submission(
        self, key: str, won: bool, idempotency_key: str | None, run_id: str
    ) -> bool:
        """After a key claimed apart, the run id is taken: by this submission's run (made
        by an earlier or a racing call: the same answer), or by another run (the key this
        call claimed is let go)."""
        taken = await self.store.get_run(run_id)
        if taken is not None and taken.idempotency_key == idempotency_key:
            return True
        if won and (await self.redis.get(key) or b"").decode() == run_id:
            await self.redis.delete(key)
        return False

    def _new_run_id(self, idempotency_key: str | None) -> str:
        """A new run id; sharded with a submission key, one in the key's shard, so that
        the key and the run share a slot and the submit stays one atomic script."""
        run_id = clock.new_run_id()
        if idempotency_key is not None and self.keys.sharded:
            want = self.keys.idempotency_shard(idempotency_key)
            while self.keys.shard_for(run_id) is not want:
                run_id = clock.new_run_id()
        return run_id

    def _submit_keys(self, run_id: str, graph_id: str, idempotency_key: str | None) -> list[str]:
        """The submit script's keys: the idempotency key (a single key of its own), then the
        run's meta and its shard's indexes and inbox (the run's slot)."""
        rk = self.keys.run(run_id)
        shard = self.keys.shard_for(run_id)
        return [
            # without a key, KEYS[1] is unused: the meta key stands in (same slot)
            self.keys.idempotency(idempotency_key) if idempotency_key else rk.meta,
            rk.meta,
            shard.runs_all,
            shard.runs_by_status(RunStatus.PENDING.value),
            shard.inbox,
            shard.runs_by_graph(graph_id),
        ]

    async def _to_inbox(self, run_id: str, message: bytes) -> None:
        """Send a message about run ``run_id`` to the inbox of the run's shard."""
        await self.check_layout()
        await self.redis.xadd(self.keys.shard_for(run_id).inbox, {"m": message})

    async def check_layout(self) -> None:
        """Refuse a deployment laid out in another number of shards than this client (its
        writes would land where no process reads, its reads find nothing). Read-only; done
        once, before the client's first write, unless called before."""
        if not self._layout_checked:
            if is_cluster_client(self.redis) and not self.keys.sharded:
                raise RelaygraphError(CLUSTER_NEEDS_SHARDS)
            problem = self.keys.layout_problem(await self.redis.get(self.keys.layout))
            if problem is not None:
                raise RelaygraphError(problem)
            self._layout_checked = True

    async def cancel(
        self, run_id: str, reason: str = "cancelled", actor: str | None = None
    ) -> None:
        """Ask the dispatcher to cancel the run (a finished run stays as it is)."""
        if not await self.redis.hexists(self.keys.run(check_run_id(run_id)).meta, "run"):
            raise RunNotFound(run_id)
        request = CancelRequested(run_id=run_id, reason=reason, actor=actor)
        await self._to_inbox(run_id, self._message("cancel", request))

    async def pause(self, run_id: str, reason: str = "paused", actor: str | None = None) -> None:
        """Hold the run: running nodes finish, nothing new starts, timers wait until
        ``resume``. ``RunStateError`` unless it is pending, running or waiting."""
        await self._expect(run_id, "pause", PAUSABLE, "only a running run can be paused")
        request = PauseRequested(run_id=run_id, reason=reason, actor=actor)
        await self._to_inbox(run_id, self._message("pause", request))

    async def resume(self, run_id: str, actor: str | None = None) -> None:
        """Go on with a paused run. ``RunStateError`` unless it is paused."""
        await self._expect(run_id, "resume", {RunStatus.PAUSED}, "only a paused run resumes")
        request = ResumeRequested(run_id=run_id, actor=actor)
        await self._to_inbox(run_id, self._message("resume", request))

    async def retry(self, run_id: str, actor: str | None = None) -> None:
        """Go on with a failed run from the nodes that failed or that its failure stopped,
        keeping every completed output. ``RunStateError`` unless it is failed."""
        await self._expect(run_id, "retry", {RunStatus.FAILED}, "only a failed run is retried")
        request = RetryRequested(run_id=run_id, actor=actor)
        await self._to_inbox(run_id, self._message("retry", request))

    async def emit(
        self, event: str, data: Any = None, *, idempotency_key: str | None = None
    ) -> list[tuple[str, str]]:
        """Start a run of every graph (its latest version) whose event trigger names
        ``event`` and whose filter matches ``data``, with ``data`` as the run's input; the
        (graph id, run id) of each. ``idempotency_key``: emitting again with it starts
        nothing new (each graph's run is found by the key, the graph and the trigger)."""
        if not event or not isinstance(event, str):
            raise InputError("event", f"must be a non-empty string, got {event!r}")
        data = _json_value("event data", data)
        started: list[tuple[str, str]] = []
        members = sorted(
            m.decode() for m in await self.redis.smembers(self.keys.event_graphs(event))
        )
        for graph_id, version in (await self.store.latest_versions(members)).items():
            if version is None:
                continue
            graph = await self.store.graph(graph_id, version)
            specs = [t for t in triggers_of(graph) if t.type == "event" and t.event == event]
            if not specs:  # its latest version no longer listens for it
                await self.redis.srem(self.keys.event_graphs(event), graph_id)
            for spec in specs:
                if not spec.matches(data):
                    continue
                key = f"{idempotency_key}:{graph_id}:{spec.id}" if idempotency_key else None
                run_id = await self.submit(graph_id, data, version=version, idempotency_key=key)
                started.append((graph_id, run_id))
        return started

    async def triggers(self) -> list[dict[str, Any]]:
        """Every trigger that fires, of the latest version of every graph, with the next
        fire time of scheduled ones (and the newest tick fired): what ``relaygraph
        triggers`` shows."""
        latest = await self.redis.hgetall(self.keys.graph_latest)
        fired = await self.redis.hgetall(self.keys.triggers_last)
        now = clock.now()
        found: list[dict[str, Any]] = []
        for raw_id, raw_version in sorted(latest.items()):
            graph = await self.store.graph(raw_id.decode(), int(raw_version))
            for spec in triggers_of(graph):
                row: dict[str, Any] = {
                    "graph_id": graph.id,
                    "graph_version": graph.version,
                    "trigger_id": spec.id,
                    "type": spec.type,
                }
                if spec.type == "scheduled":
                    last = fired.get(Keys.trigger_field(graph.id, spec.id).encode())
                    row |= {
                        "cron": spec.cron,
                        "timezone": spec.timezone,
                        "catch_up": spec.catch_up,
                        "next_fire": next_fire(spec, now),
                        "last_fired": float(last) if last is not None else None,
                    }
                elif spec.type == "event":
                    row |= {
                        "event": spec.event,
                        "filter": spec.filter.to_dict() if spec.filter else None,
                    }
                else:
                    row |= {
                        "path": f"/v1/hooks/{graph.id}/{spec.id}",
                        "secret_env": spec.secret_env,
                    }
                found.append(row)
        return found

    async def set_limit(
        self,
        scope: str,
        *,
        max_running: int | None = None,
        rate: str | float | None = None,
        burst: float | None = None,
    ) -> Limit:
        """Set the fleet-wide limits of ``scope`` (a queue name, ``queue:NAME`` or
        ``type:NAME``): at most ``max_running`` of its jobs at once across every worker,
        and at most ``rate`` starts (``"60/min"``, ``"20/s"``, or per second as a number)
        with ``burst`` tokens at most (default 1). Workers apply it within a second (they
        look for limits that often, and skip them altogether while none is set); nothing
        restarts. ``LimitError`` for a bad value."""
        name = parse_scope(scope)
        per_s = parse_rate(rate) if isinstance(rate, str) else rate
        if per_s is not None and per_s <= 0:
            raise LimitError(f"rate must be more than 0, got {rate!r}")
        limit = check(Limit(max_running=max_running, rate=per_s, burst=burst))
        if limit.max_running is None and limit.rate is None:
            raise LimitError("give max_running, a rate, or both (clear_limit removes them)")
        await self.redis.hset(self.keys.limits, name, limit.encode())
        return limit

    async def clear_limit(self, scope: str) -> bool:
        """Remove ``scope``'s limits; whether it had any."""
        name = parse_scope(scope)
        removed = await self.redis.hdel(self.keys.limits, name)
        await self.redis.delete(self.keys.limit_bucket(name), self.keys.limit_held(name))
        if not await self.redis.exists(self.keys.limits):  # the last one: nothing is held
            await self.redis.delete(self.keys.limits_throttled)
        return bool(removed)

    async def limits(self) -> dict[str, dict[str, Any]]:
        """Every scope's limits, with its jobs running now (those holding a slot) and the
        jobs held back in all: what ``relaygraph limits show`` prints."""
        raw = await self.redis.hgetall(self.keys.limits)
        throttled: dict[str, int] = {}
        for value in (await self.redis.hgetall(self.keys.limits_throttled)).values():
            scope = value.decode().split("|", 1)[0]
            throttled[scope] = throttled.get(scope, 0) + 1
        specs = {name.decode(): Limit.decode(spec.decode()) for name, spec in sorted(raw.items())}
        pipe = self.redis.pipeline(transaction=False)
        seconds, micros = await self.redis.time()  # the clock the slots are scored by
        now_ms = seconds * 1000 + micros // 1000
        for name in specs:  # a slot is scored with its expiry: one lapsed is a dead worker's
            pipe.zcount(self.keys.limit_running(name), now_ms, "+inf")
        running = await pipe.execute() if specs else []
        return {
            name: {
                "max_running": limit.max_running,
                "rate_per_s": limit.rate,
                "burst": limit.burst,
                "running": held,
                "throttled": throttled.get(name, 0),
                "text": limit.describe(),
            }
            for (name, limit), held in zip(specs.items(), running, strict=True)
        }

    async def rerun(
        self,
        run_id: str,
        from_node: str,
        input: Any = MISSING,
        actor: str | None = None,
    ) -> None:
        """Run a completed, failed or cancelled run again from ``from_node``: that node and
        everything downstream of it start afresh, everything upstream is kept; ``input``
        (when given) replaces the run's input. ``RunStateError`` for a run still going,
        ``InputError`` for a node its graph does not have."""
        run = await self._expect(run_id, "rerun", RERUNNABLE, "only a finished run can be re-run")
        graph = await self.store.graph(run.graph_id, run.graph_version)
        if not graph.has_node(from_node):
            raise InputError(
                "from_node", f"graph {graph.id!r} v{graph.version} has no node {from_node!r}"
            )
        request = RerunRequested(
            run_id=run_id,
            from_node=from_node,
            input=None if input is MISSING else _json_value("input", input),
            new_input=input is not MISSING,
            actor=actor,
        )
        await self._to_inbox(run_id, self._message("rerun", request))

    async def _expect(
        self, run_id: str, operation: str, statuses: Collection[RunStatus], allowed: str
    ) -> RunRecord:
        """The run's record, if its status is one of ``statuses``."""
        run = await self.store.get_run(check_run_id(run_id))
        if run is None:
            raise RunNotFound(run_id)
        if run.status not in statuses:
            raise RunStateError(run_id, run.status.value, operation, allowed)
        return run

    async def list_runs(
        self, status: RunStatus | str | None = None, limit: int = 100, graph_id: str | None = None
    ) -> list[RunSummary]:
        """The newest runs first, optionally only those with ``status`` (newest to enter it
        first) and of one graph (``graph_id``, every version)."""
        if status is not None:
            try:
                status = RunStatus(status)
            except ValueError:
                known = ", ".join(s.value for s in RunStatus)
                raise InputError("status", f"unknown status {status!r} (known: {known})") from None
        if limit < 1:
            raise InputError("limit", "must be at least 1")
        ids = await self.store.list_runs(status.value if status else None, limit, graph_id)
        return await load_summaries(self.store, ids)

    async def history(self, run_id: str) -> list[dict[str, Any]]:
        """Every history event of the run, oldest first."""
        return await self.store.history(check_run_id(run_id))

    async def history_steps(self, run_id: str) -> list[HistoryStep]:
        """The run's history as a table (``relaygraph history``): one ``HistoryStep`` per
        event with the output keys it changed and the attempt's duration
        (``graph_core.history``). ``RunNotFound`` if the run does not exist."""
        run = await self.store.get_run(check_run_id(run_id))
        if run is None:
            raise RunNotFound(run_id)
        events = await self.store.history(run_id)
        outputs = await self.store.outputs_at(run_id, output_visits(events))
        return history_steps(events, outputs, run.input)

    def subscribe(self, run_id: str | None = None, *, children: bool = False) -> EventStream:
        """An ``EventStream`` of live events (of ``run_id`` only, when given; with
        ``children``, of its child runs too)."""
        return EventStream(self.redis, self.keys, run_id, children)

    async def events(self, run_id: str | None = None) -> AsyncIterator[dict[str, Any]]:
        """Live events as they are published (of ``run_id`` only, when given), for ever.

        Subscribes when iteration starts; use ``subscribe`` to subscribe before submitting.
        """
        async with self.subscribe(run_id) as stream:
            async for event in stream:
                yield event

    # --- helpers ------------------------------------------------------------------------

    def _message(self, what: str, message: BaseModel) -> bytes:
        raw = encode_inbox(message)
        if len(raw) > self.max_message_bytes:
            raise InputError(
                what,
                f"the message is {len(raw)} bytes, over the {self.max_message_bytes}-byte limit "
                "(max_message_bytes)",
            )
        return raw

    async def _child_wait(
        self, run_id: str, node_id: str, token: str | None
    ) -> tuple[str, str | None]:
        """The child run where ``node_id`` waits (with ``token``, if given) and its token:
        a decision through the parent run goes to it. ``NodeNotWaiting`` when no child run
        waits there, or several do and no token says which."""
        view = await self.get_run(run_id)
        if view is None:
            raise RunNotFound(run_id)
        found = child_waits_for(view, node_id, token)
        if len(found) == 1:
            return found[0].run_id or run_id, found[0].token
        if not found:
            if token is not None and node_id in view.nodes:
                return run_id, token  # the run itself judges it (late, or the wrong token)
            raise await self._not_waiting(run_id, node_id)
        runs = ", ".join(repr(w.run_id) for w in found[:5])
        raise NodeNotWaiting(
            run_id,
            node_id,
            f"waits in {len(found)} child runs ({runs}{', ...' if len(found) > 5 else ''}): "
            "decide through one of them, or give its token",
        )

    async def _not_waiting(self, run_id: str, node_id: str) -> RelaygraphError:
        view = await self.get_run(run_id)
        if view is None:
            return RunNotFound(run_id)
        node = view.nodes.get(node_id)
        if node is None:
            return NodeNotWaiting(run_id, node_id, f"does not exist in graph {view.graph_id!r}")
        return NodeNotWaiting(run_id, node_id, f"is {node.status.value}")


def _json_value(what: str, value: Any) -> Any:
    """``value`` as plain JSON data (what the run will see); InputError if it is not JSON."""
    try:
        return orjson.loads(dumps(value))
    except TypeError as e:
        raise InputError(what, f"not JSON-serializable ({e})") from e


async def _until_run_event(stream: EventStream, timeout: float) -> None:
    """Return on the next ``run.*`` event of the stream's run, or after ``timeout``."""
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        event = await stream.get(timeout=remaining)
        if event is None or str(event.get("type", "")).startswith("run."):
            return
