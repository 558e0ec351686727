"""Handling inbox messages of different runs together (``BatchHandler.handle_many``): their
loads share one round trip, and so do their applies. What the batch cannot settle (a
conflict, a run not created yet, an unexpected error in one of its stages) is handed to the
processor's one-by-one path, ``Processor.handle``, which retries conflicts and whose errors
the service counts towards an entry's poison limit. So one bad entry never fails the others,
nor the inbox loop: only a lost connection raises.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from dispatcher.changes import StateWrites
from dispatcher.loaded import NeedState, RedisView
from dispatcher.processor import (
    MAX_LOADS,
    REDIS_GONE,
    Outcome,
    Processor,
    TokenReplay,
    widen,
)
from dispatcher.store import StoreError
from graph_core import clock
from graph_core.engine import Env, advance
from graph_core.events import Event, RunSubmitted
from graph_core.messages import SubmitRequest
from graph_core.model import Graph
from graph_core.state import Transition
from graph_core.status import RunStatus

__all__ = ["BatchHandler"]

log = logging.getLogger("relaygraph.dispatcher")

# (index, message or event, ack): handled by ``Processor.handle``, one by one
_Alone = list[tuple[int, Any, str | None]]
_Results = list[Outcome | Exception | None]


@dataclass(eq=False)
class _Batched:
    """One message of a ``handle_many`` call, loaded, on its way to its transition."""

    index: int
    event: Event
    ack: str | None
    graph: Graph
    view: RedisView
    now: float
    tokens: list[str] = field(default_factory=list)  # replayed on every recomputation
    transition: Transition | None = None
    writes: StateWrites | None = None


class BatchHandler:
    """The batched path of a ``Processor``: shares its store, run cache and graph memory."""

    def __init__(self, processor: Processor) -> None:
        self.processor = processor

    async def handle_many(
        self, messages: Sequence[tuple[Any, str | None]]
    ) -> list[Outcome | Exception]:
        """Handle inbox messages (each with its entry id) of different runs together: one
        pipelined load, one pipelined apply, and one pipelined load per round of state the
        transitions asked for. Returns, per message, its outcome or the error handling it
        raised (the caller tells poison from failure). A lost connection raises; nothing
        else does.

        Messages of one run must not share a call: the caller hands them over in order, one
        per call, so each sees the state the one before left. (If two did share one, the
        second would conflict on the revision and be handled again, one by one.)"""
        results: _Results = [None] * len(messages)
        alone: _Alone = []
        try:
            events = await self._batch_events(messages, results, alone)
            batch = await self._loaded(events, alone)
            await self._compute_many(batch, results, alone)
            await self._apply_many(batch, results, alone)
        except REDIS_GONE:
            self.processor.cache.clear()  # the server may have restarted and lost our writes
            raise
        except Exception:  # a bug of the batched path: never a reason to stop the inbox loop
            log.exception("batched handling failed; handling its unsettled entries one by one")
            self.processor.cache.clear()
            queued = {index for index, _, _ in alone}
            alone += [
                (i, message, ack)
                for i, (message, ack) in enumerate(messages)
                if results[i] is None and i not in queued
            ]
        if alone:
            settled = await asyncio.gather(*(self._alone(m, ack) for _, m, ack in alone))
            for (index, _, _), outcome in zip(alone, settled, strict=True):
                results[index] = outcome
        for r in results:
            if isinstance(r, REDIS_GONE):
                self.processor.cache.clear()
                raise r
        # None: a bug left the entry unhandled. Not a RelaygraphError (which would mean a
        # poison entry, dead-lettered unapplied): the entry stays pending and is retried.
        return [
            r if r is not None else RuntimeError("batched handling left the entry unhandled")
            for r in results
        ]

    def _fall_back(self, alone: _Alone, index: int, event: Any, ack: str | None) -> None:
        """An unexpected error in a stage of the batch for this entry alone: the one-by-one
        path handles it again (and fails the same way, counted, if it is the entry's fault)."""
        log.exception("batched handling of an entry failed; handling it alone")
        run_id = getattr(event, "run_id", None)
        if run_id:
            self.processor.cache.evict(run_id)
        alone.append((index, event, ack))

    async def _batch_events(
        self, messages: Sequence[tuple[Any, str | None]], results: _Results, alone: _Alone
    ) -> list[tuple[int, Event, str | None, Graph]]:
        """The events of ``messages`` whose run's graph is known, with it."""
        p = self.processor
        unversioned = [
            m.graph_id for m, _ in messages if isinstance(m, SubmitRequest) and not m.graph_version
        ]
        latest: dict[str, int | None] = {}
        if unversioned:
            try:
                latest = await p.store.latest_versions(unversioned)
            except REDIS_GONE:
                raise
            except Exception:  # e.g. a corrupt version: find out whose, one by one
                log.exception("batched graph versions failed; resolving them one by one")
        events = []
        for index, (message, ack) in enumerate(messages):
            try:
                event = message
                if isinstance(message, SubmitRequest):
                    if not message.graph_version and message.graph_id not in latest:
                        alone.append((index, message, ack))
                        continue
                    version = message.graph_version or latest[message.graph_id]
                    prepared = await p.submitted(message, ack, version)
                    if isinstance(prepared, Outcome):
                        results[index] = prepared
                        continue
                    event = prepared
                    p.remember(event.run_id, event.graph_id, event.graph_version)
                known = p.graph_of(event.run_id)
                if known is None:
                    alone.append((index, event, ack))
                    continue
                events.append((index, event, ack, await p.store.graph(*known)))
            except REDIS_GONE:
                raise
            except Exception as e:
                results[index] = e
        return events

    async def _loaded(
        self, events: list[tuple[int, Event, str | None, Graph]], alone: _Alone
    ) -> list[_Batched]:
        """Load every event's run and neighbourhood in one round trip (those of runs in the
        run cache: none)."""
        p = self.processor
        batch = []
        loading = []
        for index, event, ack, graph in events:
            try:
                prefetch = p.prefetch(graph, event)
                cached = None
                if not isinstance(event, RunSubmitted):
                    cached = p.cache.view(event.run_id, prefetch)
            except Exception:
                self._fall_back(alone, index, event, ack)
                continue
            if cached is not None:
                batch.append(_Batched(index, event, ack, graph, cached, clock.now()))
            else:
                loading.append((index, event, ack, graph, prefetch))
        if not loading:
            return batch
        try:
            views = await p.store.load_many([(e.run_id, pf) for _, e, _, _, pf in loading])
        except REDIS_GONE:
            raise
        except Exception:  # e.g. a key of the wrong type: find out whose, one by one
            log.exception("batched load failed; handling %d entries one by one", len(loading))
            alone.extend((index, event, ack) for index, event, ack, _, _ in loading)
            return batch
        for (index, event, ack, graph, _), view in zip(loading, views, strict=True):
            try:
                p.cache.loaded(event.run_id, view)
                run = view.run_record
                created = run is not None and run.status != RunStatus.PENDING
            except Exception:
                self._fall_back(alone, index, event, ack)
                continue
            if isinstance(event, RunSubmitted) or created:
                batch.append(_Batched(index, event, ack, graph, view, clock.now()))
            else:  # not created yet (or gone): the one-by-one path says so
                alone.append((index, event, ack))
        return batch

    async def _compute_many(self, batch: list[_Batched], results: _Results, alone: _Alone) -> None:
        """Run every transition; load what they asked for in one round trip; again."""
        p = self.processor
        pending = batch
        for _ in range(MAX_LOADS):
            needs: list[tuple[str, RedisView, NeedState]] = []
            asking = []
            for b in pending:
                try:
                    env = Env(b.now, TokenReplay(b.tokens))
                    b.transition = advance(b.graph, b.view, b.event, env)
                except NeedState as need:
                    try:
                        needs.append((b.event.run_id, b.view, widen(b.graph, b.view, need)))
                    except Exception:  # e.g. a key the graph does not know
                        self._fall_back(alone, b.index, b.event, b.ack)
                        continue
                    asking.append(b)
                except Exception as e:
                    p.cache.evict(b.event.run_id)
                    if b.view.cached:  # perhaps only because the cache was stale
                        alone.append((b.index, b.event, b.ack))
                    else:
                        results[b.index] = e
            if not needs:
                return
            try:
                await p.store.fill_many(needs)
            except REDIS_GONE:
                raise
            except Exception:
                log.exception("batched state load failed; handling the entries one by one")
                for b in asking:
                    p.cache.evict(b.event.run_id)
                    alone.append((b.index, b.event, b.ack))
                return
            pending = asking
        for b in pending:
            b.transition = None
            results[b.index] = StoreError(
                f"run {b.event.run_id!r}: transition needed over {MAX_LOADS} loads"
            )

    async def _apply_many(self, batch: list[_Batched], results: _Results, alone: _Alone) -> None:
        p = self.processor
        calls, applying = [], []
        for b in batch:
            t, view = b.transition, b.view
            if t is None or results[b.index] is not None:
                continue
            if t.ignored is not None:
                if view.cached:  # no revision check confirms an ignore: decide it on a load
                    p.cache.evict(b.event.run_id)
                    alone.append((b.index, b.event, b.ack))
                else:
                    results[b.index] = Outcome(b.event.run_id, False, t.ignored)
                continue
            old = view.run_record.status.value if view.run_record is not None else None
            try:
                call, b.writes = p.store.prepare(
                    t, view.rev, old, int(clock.now() * 1000), b.ack, stamp=view.stamp
                )
            except Exception as e:
                p.cache.evict(b.event.run_id)
                results[b.index] = e
                continue
            calls.append(call)
            applying.append(b)
        if not calls:
            return
        try:
            applied_all = await p.store.apply_many(calls)
        except REDIS_GONE:
            raise
        except Exception:  # whatever was applied conflicts (or is ignored) when redone
            log.exception("batched apply failed; handling %d entries one by one", len(applying))
            for b in applying:
                p.cache.evict(b.event.run_id)
                alone.append((b.index, b.event, b.ack))
            return
        for b, applied in zip(applying, applied_all, strict=True):
            run_id = b.event.run_id
            if isinstance(applied, Exception):
                p.cache.evict(run_id)
                results[b.index] = applied
            elif applied:
                results[b.index] = self._applied(b)
            else:  # another dispatcher moved the run on: load again and recompute
                log.debug("conflict applying %s to run %s", b.event.kind, run_id)
                p.cache.conflicted(run_id, b.view)
                alone.append((b.index, b.event, b.ack))

    def _applied(self, b: _Batched) -> Outcome:
        """The outcome of an entry whose transition was applied: counted, its writes cached."""
        p = self.processor
        if b.transition is not None:
            p.metrics.applied(b.graph, b.transition)
        if b.writes is not None:
            p.cache_applied(b.event.run_id, b.view, b.writes)
        return Outcome(b.event.run_id, True, None, b.transition, acked=b.ack is not None)

    async def _alone(self, message: Any, ack: str | None) -> Outcome | Exception:
        try:
            return await self.processor.handle(message, ack)
        except Exception as e:  # a lost connection too: handle_many raises it after gather
            return e
