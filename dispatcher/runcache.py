"""The dispatcher's cache of recently touched runs' records, so the next event of a run whose
state this dispatcher wrote last needs no load: only the apply.

Safe when stale, by apply.lua's revision and stamp check: a state kept at revision R with
the stamp S its apply wrote is only ever applied on with R and S expected; if anything else
wrote the run since (another dispatcher, or a run whose keys expired or were deleted: the
script reads a missing revision as -1), the apply conflicts, the entry is evicted and the
event is handled again from a fresh load. The stamp covers what the revision cannot: after
Redis lost writes (a restart with ``appendfsync everysec``, a failover to a lagging replica)
the run may be back at R-1 and moved to R again by another dispatcher, with other content
and another stamp (a run with no stamp never matches a cached one). A load at R attaches
the cached state only if its stamp is S too. Revisions only grow, so a record read after the
run moved on can sit in a state of an older revision only until its next apply, which
conflicts.

A cached state changes only by what a successful apply wrote (``StateWrites``, the text
stored), plus the records the applied transition's view loaded at the same revision. A
finished run, a conflict or an error evicts the run; a lost connection clears the cache
(the server may have restarted and lost writes).

With several dispatchers sharing an inbox, consecutive events of a run often go to
different dispatchers, and a cached state would mostly conflict (three round trips instead
of two). The cache watches how often its states turned out stale and, while that is more
than ``STALE_LIMIT`` of the recent events, loads anyway (two round trips, as with no cache),
still comparing revisions to see when caching pays again.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Final

from dispatcher.changes import StateWrites
from dispatcher.loaded import RedisView, RunState
from dispatcher.prefetch import Prefetch
from graph_core.status import TERMINAL_RUN, RunStatus

__all__ = ["DEFAULT_RUN_CACHE", "MAX_RECORDS", "STALE_LIMIT", "RunCache"]

DEFAULT_RUN_CACHE: Final = 2048  # runs
MAX_RECORDS: Final = 200_000  # records of all cached runs together (a wide run holds many)
STALE_LIMIT: Final = 0.25  # share of recent events whose cached state was stale
_STALE_WEIGHT: Final = 1 / 32  # of the latest event in the moving share


class RunCache:
    """A bounded LRU of ``RunState``s by run id (``size`` runs, 0: off). O(1) per event
    apart from the records the event loads or writes."""

    def __init__(self, size: int, max_records: int = MAX_RECORDS) -> None:
        self.size = size
        self.max_records = max_records
        self._states: OrderedDict[str, RunState] = OrderedDict()
        self._records = 0
        self._stale = 0.0  # moving share of events whose cached state was stale
        self.hits = 0  # events computed from a cached state without a load
        self.conflicts = 0  # of those, applies that conflicted

    def __len__(self) -> int:
        return len(self._states)

    def __contains__(self, run_id: str) -> bool:
        return run_id in self._states

    @property
    def records(self) -> int:
        return self._records

    def view(self, run_id: str, prefetch: Prefetch) -> RedisView | None:
        """A view of the run's cached state, if it holds everything ``prefetch`` names (and
        cached states have not been stale too often lately); else None: load it."""
        state = self._states.get(run_id)
        if state is None or self._stale > STALE_LIMIT or not state.covers(prefetch):
            return None
        self._states.move_to_end(run_id)
        self.hits += 1
        return RedisView(
            state.run_raw,
            state.rev,
            run_record=state.run_record,
            stamp=state.stamp,
            base=state,
            cached=True,
        )

    def loaded(self, run_id: str, view: RedisView) -> None:
        """``view`` was just loaded: build it on the cached state if that is of the same
        revision and stamp (its records are then current too); drop any other."""
        state = self._states.get(run_id)
        if state is None:
            return
        fresh = view.rev == state.rev and view.stamp == state.stamp
        self._observe(stale=not fresh)
        if fresh:
            view.base = state
        else:
            self.evict(run_id)

    def applied(self, run_id: str, view: RedisView, writes: StateWrites) -> None:
        """The transition computed over ``view`` was applied, writing ``writes``: the run's
        state is the view's at its revision, changed by exactly those writes."""
        if self.size <= 0:
            return
        state = view.base
        moved = state is not None and (
            state is not self._states.get(run_id) or state.rev != view.rev
        )
        if moved or (view.rev is not None and writes.rev != view.rev + 1):
            self.evict(run_id)  # another computation of this run replaced the state meanwhile
            return
        record = writes.record  # as written: no need to parse the text again
        if record.status in TERMINAL_RUN:
            self.evict(run_id)  # no more events to apply
            return
        if view.cached:
            self._observe(stale=False)
        if state is None:
            self.evict(run_id)
            # Applied over no run, or over a pending one (the client writes only its
            # record): the run had no other records, so from now on we know all it has.
            created = view.rev is None or (
                view.run_record is not None and view.run_record.status == RunStatus.PENDING
            )
            state = RunState(b"", 0, "", record, active={} if created else None, complete=created)
            self._states[run_id] = state
            old_size = 0
        else:
            old_size = state.size()
        state.run_raw, state.rev, state.run_record = writes.run.encode(), writes.rev, record
        state.stamp = writes.stamp
        state.nodes.update(view.nodes)  # loaded at the revision the apply was made on
        state.joins.update(view.joins)
        state.loops.update(view.loops)
        if view.active is not None:
            state.active = view.active  # the whole frontier
        for nid, node_raw in writes.nodes.items():
            state.nodes[nid] = node_raw.encode()
        state.joins.update(writes.joins)
        for i, loop_raw in writes.loops.items():
            state.loops[i] = loop_raw.encode()
        if state.active is not None:
            state.active.update(writes.active_add)
            for nid in writes.active_remove:
                state.active.pop(nid, None)
        self._records += state.size() - old_size
        self._states.move_to_end(run_id)
        self._shrink()

    def conflicted(self, run_id: str, view: RedisView) -> None:
        """An apply over ``view`` found the run moved on."""
        if view.cached:
            self.conflicts += 1
            self._observe(stale=True)
        self.evict(run_id)

    def evict(self, run_id: str) -> None:
        state = self._states.pop(run_id, None)
        if state is not None:
            self._records -= state.size()

    def clear(self) -> None:
        self._states.clear()
        self._records = 0

    def _shrink(self) -> None:
        while self._states and (len(self._states) > self.size or self._records > self.max_records):
            _, state = self._states.popitem(last=False)
            self._records -= state.size()

    def _observe(self, stale: bool) -> None:
        self._stale += ((1.0 if stale else 0.0) - self._stale) * _STALE_WEIGHT
