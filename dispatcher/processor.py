"""Handling inbox messages one by one: load the neighbourhood, run the transition, apply
atomically. The transition function is pure, so a conflict (another dispatcher applied an
event of the same run first) is handled by loading again and recomputing.

A run whose state this dispatcher wrote last is usually in its run cache
(dispatcher/runcache.py): its next event is computed from the cache and only applied, one
round trip instead of two; a stale cache conflicts like any other dispatcher's write would.

Messages of different runs are handled together by ``BatchHandler`` (dispatcher/batch.py),
which shares this processor's cache and falls back to ``process`` for what it cannot settle.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from dispatcher.changes import StateWrites
from dispatcher.loaded import NeedState, RedisView
from dispatcher.metrics import NO_METRICS, Recorder
from dispatcher.prefetch import Prefetch, neighbourhood
from dispatcher.runcache import DEFAULT_RUN_CACHE, RunCache
from dispatcher.store import GraphNotFound, RunStore, StoreError
from graph_core import clock
from graph_core.engine import Env, advance
from graph_core.errors import RelaygraphError
from graph_core.events import (
    CHILD_CANCEL_ACTOR,
    CancelRequested,
    Event,
    RunSubmitted,
)
from graph_core.keys import check_run_id
from graph_core.logfmt import log_context
from graph_core.messages import SubmitRequest
from graph_core.model import Graph
from graph_core.settings import BaseSettings, SettingsError
from graph_core.state import Transition
from graph_core.status import RunStatus
from graph_core.topology import topology

if TYPE_CHECKING:  # dispatcher.tracing imports OpenTelemetry: only with tracing on
    from dispatcher.tracing import RunTracing

__all__ = [
    "MAX_LOADS",
    "REDIS_GONE",
    "Outcome",
    "Processor",
    "TokenReplay",
    "run_tracing",
    "widen",
]

log = logging.getLogger("relaygraph.dispatcher")
REDIS_GONE: Final = (RedisConnectionError, RedisTimeoutError)  # not a message's fault: raised
MAX_CONFLICTS = 100
MAX_LOADS = 10_000
GRAPH_OF_RUN_CACHE = 100_000
PREFETCH_CACHE = 10_000


class ConflictError(RelaygraphError):
    pass


@dataclass(frozen=True)
class Outcome:
    run_id: str | None
    applied: bool
    reason: str | None = None  # why nothing changed
    transition: Transition | None = None
    acked: bool = False  # the inbox entry was acknowledged together with the change


class Processor:
    def __init__(
        self,
        store: RunStore,
        run_cache: int = DEFAULT_RUN_CACHE,
        metrics: Recorder = NO_METRICS,
        tracing: RunTracing | None = None,
    ) -> None:
        """``run_cache``: how many runs' states to keep for their next event (0: none);
        ``metrics``: counts every applied transition (``BatchHandler``'s too); ``tracing``:
        gives each new run a span, recorded when the run ends (None: runs are not traced)."""
        self.store = store
        self.tracing = tracing
        # A run's end is seen where transitions are counted: tracing wraps the recorder, so
        # with tracing off an applied transition costs nothing more.
        self.metrics = metrics if tracing is None else tracing.recorder(metrics)
        self.cache = RunCache(run_cache)
        self._graph_of: dict[str, tuple[str, int]] = {}  # run id -> its graph (id, version)
        # (graph id, version, event kind, node id) -> what its events' transitions read
        self._prefetches: dict[tuple[str, int, str, str | None], Prefetch] = {}

    async def handle(self, message: Any, entry_id: str | None = None) -> Outcome:
        """Handle one inbox message. ``entry_id`` (the stream entry's id) names the run of a
        submission that carries no run id, so a redelivered entry creates the same run (and
        a raw submitter knows the id from XADD's reply: docs/protocol.md documents it)."""
        if isinstance(message, SubmitRequest):
            return await self._submit(message, entry_id)
        return await self.process(message, ack=entry_id)

    async def _submit(self, req: SubmitRequest, entry_id: str | None) -> Outcome:
        version = req.graph_version or await self.store.latest_version(req.graph_id)
        prepared = await self.submitted(req, entry_id, version)
        if isinstance(prepared, Outcome):
            return prepared
        return await self.process(prepared, ack=entry_id)

    async def submitted(
        self, req: SubmitRequest, entry_id: str | None, version: int | None
    ) -> RunSubmitted | Outcome:
        """The event a submission makes (``version``: the graph's, resolved), or the outcome
        of a duplicate."""
        try:
            if version is None:
                raise GraphNotFound(req.graph_id, None)
            graph = await self.store.graph(req.graph_id, version)  # raises GraphNotFound
        except GraphNotFound as e:
            if req.parent is None or req.run_id is None:
                raise
            # a child run whose graph is gone: its parent hears of it instead of waiting
            await self.store.child_failed(req.run_id, req.parent, "GraphNotFound", str(e))
            return Outcome(req.run_id, False, f"child run's graph is missing: {e}")
        run_id = check_run_id(req.run_id or (entry_id or clock.new_run_id()))
        if req.parent is not None and await self.store.redis.exists(
            self.store.keys.shard_for(run_id).child_cancelled(run_id)
        ):
            return Outcome(run_id, False, "its parent cancelled it before it started")
        if req.idempotency_key is not None:
            # Race site: two submitters with one key. SET NX decides which run id wins. A
            # claim whose run is not created yet belongs to an entry that will be redelivered
            # with the same run id, so "duplicate" stays the right answer for everyone else.
            key = self.store.keys.idempotency(req.idempotency_key)
            won = await self.store.redis.set(key, run_id, nx=True, ex=self.store.retention_s)
            if not won:
                existing = (await self.store.redis.get(key) or b"").decode()
                if existing != run_id:
                    return Outcome(existing, False, f"duplicate of run {existing!r}")
        return RunSubmitted(
            run_id=run_id,
            graph_id=req.graph_id,
            graph_version=version,
            input=req.input,
            idempotency_key=req.idempotency_key,
            trace=self.tracing.run_trace(req, run_id) if self.tracing is not None else None,
            parent=req.parent,
            pins=await self._pins(graph),
            priority=req.priority,
        )

    async def _pins(self, graph: Graph) -> dict[str, int]:
        """The versions of the graphs ``graph`` runs as children (named statically, with no
        version of their own): the latest now, fixed for the run (a missing one: none)."""
        refs = [ref for _, ref, version in graph.subgraph_refs() if version is None]
        if not refs:
            return {}
        latest = await self.store.latest_versions(refs)
        return {ref: v for ref, v in latest.items() if v is not None}

    async def process(self, event: Event, ack: str | None = None) -> Outcome:
        """Apply ``event`` to its run; ``ack`` (an inbox entry id) is acknowledged in the same
        atomic write as the change."""
        try:
            with self._log_ids(event):
                return await self._process(event, ack)
        except REDIS_GONE:
            self.cache.clear()  # the server may have restarted and lost our latest writes
            raise
        except Exception:
            self.cache.evict(event.run_id)
            raise

    def _log_ids(self, event: Event) -> log_context:
        """Log lines while handling ``event`` carry its run's, node's and graph's ids."""
        known = self._graph_of.get(event.run_id)
        return log_context(
            run_id=event.run_id,
            node_id=getattr(event, "node_id", None),
            graph_id=known[0] if known is not None else getattr(event, "graph_id", None),
        )

    async def _process(self, event: Event, ack: str | None) -> Outcome:
        run_id = event.run_id
        for _ in range(MAX_CONFLICTS):
            graph, view = await self._load(event)
            if graph is None:
                if isinstance(event, CancelRequested) and event.actor == CHILD_CANCEL_ACTOR:
                    # a parent cancelled its child before the child's submission was handled:
                    # remembered, so that the submission starts nothing
                    key = self.store.keys.shard_for(run_id).child_cancelled(check_run_id(run_id))
                    await self.store.redis.set(key, "1", ex=self.store.retention_s)
                return Outcome(run_id, False, f"unknown run {run_id!r}")
            try:
                transition = await self._compute(graph, view, event)
            except REDIS_GONE:
                raise
            except Exception:
                if not view.cached:
                    raise
                self.cache.evict(run_id)  # perhaps only because the cache was stale
                continue
            if transition.ignored is not None:
                if view.cached:  # no revision check confirms an ignore: decide it on a load
                    self.cache.evict(run_id)
                    continue
                return Outcome(run_id, False, transition.ignored)
            old = view.run_record.status.value if view.run_record is not None else None
            now_ms = int(clock.now() * 1000)
            call, writes = self.store.prepare(
                transition, view.rev, old, now_ms, ack, stamp=view.stamp
            )
            if await self.store.apply_prepared(call):
                self.metrics.applied(graph, transition)
                self.cache_applied(run_id, view, writes)
                return Outcome(run_id, True, None, transition, acked=ack is not None)
            log.debug("conflict applying %s to run %s; recomputing", event.kind, run_id)
            self.cache.conflicted(run_id, view)
        raise ConflictError(f"run {run_id!r}: gave up after {MAX_CONFLICTS} conflicting writes")

    async def _load(self, event: Event) -> tuple[Graph | None, RedisView]:
        if isinstance(event, RunSubmitted):
            graph = await self.store.graph(event.graph_id, event.graph_version)
            view = await self.store.load(event.run_id, self.prefetch(graph, event))
            self.cache.loaded(event.run_id, view)
            self.remember(event.run_id, event.graph_id, event.graph_version)
            return graph, view
        known = self._graph_of.get(event.run_id)
        if known is not None:
            # A run's graph never changes: load its record and the neighbourhood in one trip
            # (or none: the run cache has them).
            graph = await self.store.graph(*known)
            prefetch = self.prefetch(graph, event)
            cached = self.cache.view(event.run_id, prefetch)
            if cached is not None:
                return graph, cached
            view = await self.store.load(event.run_id, prefetch)
            self.cache.loaded(event.run_id, view)
            if view.run_record is not None and view.run_record.status != RunStatus.PENDING:
                return graph, view
        self.cache.evict(event.run_id)
        view = await self.store.load(event.run_id)
        run = view.run_record
        if run is None or run.status == RunStatus.PENDING:
            return None, view
        try:
            graph = await self.store.graph(run.graph_id, run.graph_version)
        except GraphNotFound as e:
            raise StoreError(f"run {event.run_id!r} refers to a missing graph: {e}") from e
        self.remember(event.run_id, run.graph_id, run.graph_version)
        await self.store.fill_nodes(event.run_id, view, self.prefetch(graph, event).nodes)
        return graph, view

    def prefetch(self, graph: Graph, event: Event) -> Prefetch:
        """``neighbourhood`` of the event's node, computed once per graph and node."""
        # by kind too: a submit reads the start's neighbourhood, a retry every node
        key = (graph.id, graph.version, event.kind, getattr(event, "node_id", None))
        found = self._prefetches.get(key)
        if found is None:
            if len(self._prefetches) >= PREFETCH_CACHE:  # bogus node ids must not grow it
                self._prefetches.pop(next(iter(self._prefetches)))
            found = self._prefetches[key] = neighbourhood(graph, event)
        return found

    def graph_of(self, run_id: str) -> tuple[str, int] | None:
        """The (id, version) of the run's graph, if this processor has seen the run."""
        return self._graph_of.get(run_id)

    def cache_applied(self, run_id: str, view: RedisView, writes: StateWrites) -> None:
        """The run cache takes over an applied change; if it cannot, it forgets the run (the
        change is stored and acknowledged either way: not the entry's failure)."""
        try:
            self.cache.applied(run_id, view, writes)
        except Exception:
            log.exception("run %s: the run cache could not take over an applied change", run_id)
            self.cache.evict(run_id)

    def remember(self, run_id: str, graph_id: str, version: int) -> None:
        """Note the run's graph, so its next events need no load to find it."""
        if len(self._graph_of) >= GRAPH_OF_RUN_CACHE:
            self._graph_of.pop(next(iter(self._graph_of)))  # oldest first (insertion order)
        self._graph_of[run_id] = (graph_id, version)

    async def _compute(self, graph: Graph, view: RedisView, event: Event) -> Transition:
        tokens: list[str] = []
        now = clock.now()
        for _ in range(MAX_LOADS):
            try:
                return advance(graph, view, event, Env(now, TokenReplay(tokens)))
            except NeedState as need:
                await self.store.fill(event.run_id, view, widen(graph, view, need))
        raise StoreError(f"run {event.run_id!r}: transition needed over {MAX_LOADS} loads")


def run_tracing(settings: BaseSettings) -> RunTracing | None:
    """The run spans of a dispatcher with these settings: None unless ``tracing`` is
    ``otel`` (only then is OpenTelemetry imported). ``SettingsError`` if it is not installed."""
    if settings.tracing != "otel":
        return None
    try:
        from dispatcher.tracing import RunTracing
    except ImportError as e:
        raise SettingsError(
            [
                "tracing: 'otel' needs the OpenTelemetry API and SDK "
                f"(pip install 'relaygraph[otel]'): {e}"
            ]
        ) from e
    return RunTracing()


class TokenReplay:
    """Hands out the same tokens, in order, on every recomputation of one transition."""

    def __init__(self, tokens: list[str]) -> None:
        self._tokens = tokens
        self._next = 0

    def __call__(self) -> str:
        while len(self._tokens) <= self._next:
            self._tokens.append(clock.new_token())
        self._next += 1
        return self._tokens[self._next - 1]


def widen(graph: Graph, view: RedisView, need: NeedState) -> NeedState:
    """A join arrival that was not prefetched is read when its join's generation completes,
    together with every other input of the group: load the group's missing ones at once."""
    if need.kind != "join":
        return need
    target, index = need.key
    topo = topology(graph)
    inputs = topo.join_groups[target][topo.group_of[index]]
    return NeedState("joins", [(target, i) for i in inputs if not view.knows_join((target, i))])
