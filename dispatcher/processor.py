"""Handling one inbox message: load the neighbourhood, run the transition, apply atomically.

The transition function is pure, so a conflict (another dispatcher applied an event of the
same run first) is handled by loading again and recomputing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from dispatcher.store import GraphNotFound, NeedState, RedisView, RunStore, StoreError
from graph_core import clock
from graph_core.engine import Env, advance
from graph_core.errors import RelaygraphError
from graph_core.events import (
    ApprovalReceived,
    Event,
    NodeReported,
    RunSubmitted,
)
from graph_core.keys import check_run_id
from graph_core.messages import SubmitRequest
from graph_core.model import Graph
from graph_core.state import Transition
from graph_core.status import RunStatus
from graph_core.topology import topology

__all__ = ["Outcome", "Processor"]

log = logging.getLogger("relaygraph.dispatcher")
MAX_CONFLICTS = 100
MAX_LOADS = 10_000
GRAPH_OF_RUN_CACHE = 100_000


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
    def __init__(self, store: RunStore) -> None:
        self.store = store
        self._graph_of: dict[str, tuple[str, int]] = {}  # run id -> its graph (id, version)

    async def handle(self, message: Any, entry_id: str | None = None) -> Outcome:
        """Handle one inbox message. ``entry_id`` (the stream entry's id) names the run of a
        submission that carries no run id, so a redelivered entry creates the same run."""
        if isinstance(message, SubmitRequest):
            return await self._submit(message, entry_id)
        return await self.process(message, ack=entry_id)

    async def _submit(self, req: SubmitRequest, entry_id: str | None) -> Outcome:
        version = req.graph_version or await self.store.latest_version(req.graph_id)
        if version is None:
            raise GraphNotFound(req.graph_id, None)
        await self.store.graph(req.graph_id, version)  # raises GraphNotFound
        run_id = check_run_id(req.run_id or (entry_id or clock.new_run_id()))
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
        event = RunSubmitted(
            run_id=run_id,
            graph_id=req.graph_id,
            graph_version=version,
            input=req.input,
            idempotency_key=req.idempotency_key,
        )
        return await self.process(event, ack=entry_id)

    async def process(self, event: Event, ack: str | None = None) -> Outcome:
        """Apply ``event`` to its run; ``ack`` (an inbox entry id) is acknowledged in the same
        atomic write as the change."""
        run_id = event.run_id
        for _ in range(MAX_CONFLICTS):
            graph, view = await self._load(event)
            if graph is None:
                return Outcome(run_id, False, f"unknown run {run_id!r}")
            transition = await self._compute(graph, view, event)
            if transition.ignored is not None:
                return Outcome(run_id, False, transition.ignored)
            old = view.run_record.status.value if view.run_record is not None else None
            now_ms = int(clock.now() * 1000)
            if await self.store.apply(transition, view.rev, old, now_ms, ack=ack):
                return Outcome(run_id, True, None, transition, acked=ack is not None)
            log.debug("conflict applying %s to run %s; recomputing", event.kind, run_id)
        raise ConflictError(f"run {run_id!r}: gave up after {MAX_CONFLICTS} conflicting writes")

    async def _load(self, event: Event) -> tuple[Graph | None, RedisView]:
        if isinstance(event, RunSubmitted):
            graph = await self.store.graph(event.graph_id, event.graph_version)
            view = await self.store.load(event.run_id, _prefetch(graph, event))
            self._remember(event.run_id, event.graph_id, event.graph_version)
            return graph, view
        known = self._graph_of.get(event.run_id)
        if known is not None:
            # A run's graph never changes: load its record and the neighbourhood in one trip.
            graph = await self.store.graph(*known)
            view = await self.store.load(event.run_id, _prefetch(graph, event))
            if view.run_record is not None and view.run_record.status != RunStatus.PENDING:
                return graph, view
        view = await self.store.load(event.run_id, [])
        run = view.run_record
        if run is None or run.status == RunStatus.PENDING:
            return None, view
        try:
            graph = await self.store.graph(run.graph_id, run.graph_version)
        except GraphNotFound as e:
            raise StoreError(f"run {event.run_id!r} refers to a missing graph: {e}") from e
        self._remember(event.run_id, run.graph_id, run.graph_version)
        await self.store.fill_nodes(event.run_id, view, _prefetch(graph, event))
        return graph, view

    def _remember(self, run_id: str, graph_id: str, version: int) -> None:
        if len(self._graph_of) >= GRAPH_OF_RUN_CACHE:
            self._graph_of.pop(next(iter(self._graph_of)))  # oldest first (insertion order)
        self._graph_of[run_id] = (graph_id, version)

    async def _compute(self, graph: Graph, view: RedisView, event: Event) -> Transition:
        tokens: list[str] = []
        now = clock.now()
        for _ in range(MAX_LOADS):
            try:
                return advance(graph, view, event, Env(now, _TokenReplay(tokens)))
            except NeedState as need:
                await self.store.fill(event.run_id, view, need)
        raise StoreError(f"run {event.run_id!r}: transition needed over {MAX_LOADS} loads")


class _TokenReplay:
    """Hands out the same tokens, in order, on every recomputation of one transition."""

    def __init__(self, tokens: list[str]) -> None:
        self._tokens = tokens
        self._next = 0

    def __call__(self) -> str:
        while len(self._tokens) <= self._next:
            self._tokens.append(clock.new_token())
        self._next += 1
        return self._tokens[self._next - 1]


def _prefetch(graph: Graph, event: Event) -> list[str]:
    """The nodes a transition will most likely read, loaded in one round trip."""
    topo = topology(graph)
    if isinstance(event, RunSubmitted):
        first = topo.start
    elif isinstance(event, NodeReported | ApprovalReceived):
        first = event.node_id if graph.has_node(event.node_id) else None
    else:
        first = getattr(event, "node_id", None)
        first = first if first and graph.has_node(first) else None
    if first is None:
        return []
    wanted = [first]
    wanted.extend(ref.edge.target for ref in topo.out_edges.get(first, []))
    parent = graph.node(first).parent
    if parent is not None:
        wanted.append(parent)
    return list(dict.fromkeys(wanted))
